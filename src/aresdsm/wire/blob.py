"""Blob: a value carried next to the encoded message header, never copied into it.

Message fields of type :class:`Blob` are replaced by ``[offset, length]`` in the MessagePack header
and their bytes are written after the header, as separate buffers (``transport.writelines``).
On receipt a Blob is a zero-copy ``memoryview`` slice of the received frame.
"""

from __future__ import annotations

from typing import Any


class Blob:
    """An immutable byte value (bytes or a read-only memoryview over received bytes)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes | memoryview = b"") -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __bytes__(self) -> bytes:
        return bytes(self.data)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Blob):
            return self.data == other.data
        return NotImplemented

    def __hash__(self) -> int:
        return hash(bytes(self.data))

    def __repr__(self) -> str:
        head = bytes(self.data[:16])
        more = "..." if len(self.data) > 16 else ""
        return f"Blob({head!r}{more}, {len(self.data)} bytes)"

    def __reduce__(self) -> Any:  # pragma: no cover - never pickled on the wire, but copyable
        return (Blob, (bytes(self.data),))


EMPTY = Blob(b"")
