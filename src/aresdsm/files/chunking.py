"""Content-defined chunking as the bytes pass (docs/protocol.md §9.2), with pyfastcdc.

FastCDC restarts its rolling hash at every cut point, so cutting a buffer that starts at a cut
point finds the same cuts as cutting the whole file, except that the last chunk of the buffer
may only end because the buffer does. :class:`StreamChunker` therefore keeps the last chunk of
each buffer back until more bytes (or the end) arrive: memory stays below ``2 * max_bytes`` plus
one read, whatever the file size, and the chunks are exactly those of the whole file.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterable, AsyncIterator
from typing import IO, Any

from pyfastcdc import FastCDC

from ..errors import ConfigurationError
from .codec import ChunkParams

READ_BYTES = 1024 * 1024
"""Bytes read from a source at a time."""


def check_params(p: ChunkParams) -> ChunkParams:
    """Refuse bounds FastCDC does not accept, with one line saying which."""
    if not (64 <= p.min_bytes <= 1024 * 1024):
        raise ConfigurationError(f"min_bytes={p.min_bytes}: must be in [64, 1 MiB]")
    if not (256 <= p.avg_bytes <= 4 * 1024 * 1024):
        raise ConfigurationError(f"avg_bytes={p.avg_bytes}: must be in [256, 4 MiB]")
    if not (1024 <= p.max_bytes <= 16 * 1024 * 1024):
        raise ConfigurationError(f"max_bytes={p.max_bytes}: must be in [1 KiB, 16 MiB]")
    if not (p.min_bytes <= p.avg_bytes <= p.max_bytes):
        raise ConfigurationError("chunk sizes must satisfy min_bytes <= avg_bytes <= max_bytes")
    return p


def digest(data: bytes) -> bytes:
    """The content hash blocks are compared by: SHA-256 (hardware-accelerated on x86-64 and
    arm64, about three times BLAKE2b there), the first 16 bytes."""
    return hashlib.sha256(data).digest()[:16]


class StreamChunker:
    def __init__(self, params: ChunkParams) -> None:
        check_params(params)
        self._cdc = FastCDC(params.avg_bytes, min_size=params.min_bytes, max_size=params.max_bytes)
        self._max = params.max_bytes
        self._buf = bytearray()

    def feed(self, data: bytes, *, eager: bool = False) -> list[bytes]:
        """Add bytes; return the chunks now final. The buffer is cut once it holds two maximal
        chunks (each cut scans it), or ``eager``: at once (a patch wants the first cut that
        meets an old boundary, a few blocks away, not two maximal chunks away)."""
        self._buf += data
        if len(self._buf) < 2 * self._max and not eager:
            return []
        return self._cut(final=False)

    def finish(self) -> list[bytes]:
        return self._cut(final=True) if self._buf else []

    def _cut(self, *, final: bool) -> list[bytes]:
        with memoryview(self._buf) as view:
            cuts = [(c.offset, c.length) for c in self._cdc.cut_buf(view)]
            if not final:
                cuts = cuts[:-1]
            out = [bytes(view[o : o + n]) for o, n in cuts]
        used = sum(n for _, n in cuts)
        del self._buf[:used]
        return out

    def feed_hashed(self, data: bytes, *, eager: bool = False) -> list[tuple[bytes, bytes]]:
        """:meth:`feed`, each chunk with its :func:`digest` (run off the event loop: hashing
        releases the GIL, so it overlaps the block writes in flight)."""
        return [(c, digest(c)) for c in self.feed(data, eager=eager)]

    def finish_hashed(self) -> list[tuple[bytes, bytes]]:
        return [(c, digest(c)) for c in self.finish()]


async def read_source(source: Any) -> AsyncIterator[bytes]:
    """Bytes from ``bytes``, a binary file-like object (``read(n)``) or an async iterable of
    bytes, one piece at a time."""
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        for i in range(0, len(data), READ_BYTES):
            yield data[i : i + READ_BYTES]
        return
    if isinstance(source, AsyncIterable):
        async for piece in source:
            if not isinstance(piece, bytes | bytearray | memoryview):
                raise ConfigurationError(f"the source yielded {type(piece).__name__}, not bytes")
            yield bytes(piece)
        return
    if hasattr(source, "read"):
        f: IO[bytes] = source
        while True:
            piece = await asyncio.to_thread(f.read, READ_BYTES)
            if not piece:
                return
            if not isinstance(piece, bytes | bytearray):
                raise ConfigurationError("the source must be opened in binary mode")
            yield bytes(piece)
    raise ConfigurationError(
        f"cannot read a file from {type(source).__name__}: give bytes, a binary file object "
        "or an async iterator of bytes"
    )
