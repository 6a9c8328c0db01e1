"""Tags: the version numbers of atomic registers (docs/protocol.md §2).

A tag is ``(z, writer)``: an integer and a writer id, ordered lexicographically with ``z`` first.
The initial tag ``TAG0 = (0, "")`` goes with the empty value. Writer ids must be unique per
*operation in flight*: a client that runs several writes to one key at once gives each its own
writer id (:func:`writer_id`), otherwise two writes could pick the same tag for different values.
"""

from __future__ import annotations

import msgspec


class Tag(msgspec.Struct, frozen=True, order=True, array_like=True):
    """A register version ``(z, writer)``, compared lexicographically (``z`` first)."""

    z: int
    writer: str

    def successor(self, writer: str) -> Tag:
        """The tag a writer that saw ``self`` as the maximum picks: ``(z + 1, writer)``."""
        return Tag(self.z + 1, writer)

    def __str__(self) -> str:
        return f"{self.z}:{self.writer}"


TAG0 = Tag(0, "")
"""The initial tag, paired with the empty value."""


def writer_id(client_id: str, op_seq: int) -> str:
    """The writer id of operation number ``op_seq`` of client ``client_id`` (unique per write)."""
    return f"{client_id}.{op_seq}"
