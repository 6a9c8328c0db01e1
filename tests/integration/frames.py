"""Raw frames against a server, for the tests of bad input and limits."""

from __future__ import annotations

import asyncio
import struct

from aresdsm.wire import Decoder, Envelope
from aresdsm.wire.codec import FORMAT_VERSION


async def ask(port: int, frame: bytes, timeout_s: float = 3.0) -> Envelope | None:
    """Send one frame; the decoded reply, or None if the server closed without replying."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(frame)
    await writer.drain()
    try:
        head = await asyncio.wait_for(reader.readexactly(4), timeout_s)
        (n,) = struct.unpack(">I", head)
        body = await asyncio.wait_for(reader.readexactly(n), timeout_s)
    except asyncio.IncompleteReadError:
        return None
    finally:
        writer.close()
    return Decoder().decode_body(body)


def frame(header: bytes, blobs: bytes = b"") -> bytes:
    """A frame around a hand-made MessagePack header and blob region."""
    body = struct.pack(">BI", FORMAT_VERSION, len(header)) + header + blobs
    return struct.pack(">I", len(body)) + body
