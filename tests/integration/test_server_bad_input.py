"""Hostile frames and hostile clients cost the server bounded work and memory (in-process servers,
real TCP, and the codec directly): input nested deep enough to exhaust the stack is a counted bad
frame, not a RecursionError; blob references cannot overlap, so a small frame cannot make the
server store many times its size; a client that never reads its replies cannot make them pile up.

Found in review (review 3): each of these failed before the fix.
"""

from __future__ import annotations

import asyncio
import struct

import msgspec
import pytest
from frames import ask, frame

from aresdsm.client import Store
from aresdsm.config import Configuration, ServerInfo
from aresdsm.errors import FrameError
from aresdsm.protocol.ares import CLUSTER_CHAIN
from aresdsm.server import Server
from aresdsm.storage import MemoryStorage
from aresdsm.tags import Tag
from aresdsm.wire import Blob, Decoder, Encoder, Envelope
from aresdsm.wire.messages import BatchItem, DataReply, PutBatch, PutData, QueryData

_enc = msgspec.msgpack.encode


def _deep_install_config(depth: int) -> bytes:
    """InstallConfig whose Configuration map carries an unknown field nested `depth` deep
    (msgspec skips unknown fields of map-encoded structs, recursively)."""
    cfg = (
        b"\x83"
        + _enc("id")
        + _enc("c9")
        + _enc("servers")
        + _enc([["s1", "127.0.0.1:1"]])
        + _enc("zz")
        + b"\x91" * depth
        + b"\xc0"
    )
    return frame(b"\x92" + _enc(1) + b"\x92" + _enc("inst") + cfg)


def test_deeply_nested_msgpack_raises_frame_error() -> None:
    body = _deep_install_config(5000)[4:]
    with pytest.raises(FrameError):  # was: RecursionError escaped the decoder
        Decoder().decode_body(body)


async def test_deeply_nested_frame_is_counted_as_bad_input(
    inproc_cluster: tuple[Configuration, list[Server]],
) -> None:
    _, servers = inproc_cluster
    s1 = servers[0]
    assert await ask(s1.port, _deep_install_config(5000)) is None
    # was: the RecursionError escaped data_received (asyncio logged a fatal protocol error with
    # a traceback) and it was not counted as a bad frame
    assert s1.core.counters.get("bad-frames", 0) == 1


async def test_overlapping_blob_references_are_refused(
    inproc_cluster: tuple[Configuration, list[Server]],
) -> None:
    """Blobs are 'concatenated' after the header; a PutBatch whose items all point at the same
    256 KiB region made the server store (and fsync) items x 256 KiB from one small frame."""
    cfg, servers = inproc_cluster
    s1 = servers[0]
    region = b"v" * (256 << 10)
    items = [[f"k{i}", [1, "w"], [0, len(region)]] for i in range(64)]
    header = _enc([1, ["putb", "default", cfg.id, items]])
    reply = await ask(s1.port, frame(header, region))
    stored = s1.storage.stored_bytes()
    # acceptable: refused (bad-request / connection closed) -- not 64 x 256 KiB stored
    assert stored < 4 * len(region), (
        f"{len(header) + len(region)}-byte frame made the server store {stored} bytes; "
        f"reply {reply and reply.body}"
    )


def _put_batch_frame(refs: list[list[int]], region: bytes) -> bytes:
    items = [[f"k{i}", [1, "w"], ref] for i, ref in enumerate(refs)]
    return frame(_enc([1, ["putb", "g", "c0", items]]), region)


@pytest.mark.parametrize(
    ("refs", "region_bytes", "why"),
    [
        ([[0, 4], [0, 4]], 4, "offset 0, expected 4"),  # the same bytes twice
        ([[4, 4], [0, 4]], 8, "offset 4, expected 0"),  # out of order
        ([[0, 4], [2, 4]], 6, "offset 2, expected 4"),  # overlapping
        ([[0, 2], [4, 2]], 6, "offset 4, expected 2"),  # a gap
        ([[0, 2], [2, 2]], 6, "2 bytes of the blob region are not referenced"),  # trailing bytes
        ([[0, 4], [4, 4]], 6, "out of range"),
    ],
)
def test_blob_references_must_tile_the_blob_region(
    refs: list[list[int]], region_bytes: int, why: str
) -> None:
    body = _put_batch_frame(refs, b"x" * region_bytes)[4:]
    with pytest.raises(FrameError, match=why):
        Decoder().decode_body(body)


def test_frames_of_the_encoder_still_decode() -> None:
    """The rule above is the encoder's own layout, including empty blobs and optional ones."""
    items = tuple(BatchItem(f"k{i}", Tag(i, "w"), Blob(b"v" * i)) for i in range(5))
    for msg in (
        PutBatch("g", "c0", items),
        PutData("g", "c0", "k", Tag(1, "w"), Blob(b"")),
        DataReply(Tag(1, "w"), Blob(b"abc")),
    ):
        frame = Encoder().encode_bytes(Envelope(7, msg))
        assert Decoder().decode_frame(frame, max_frame_bytes=1 << 20) == Envelope(7, msg)


def test_unencodable_message_raises_frame_error() -> None:
    """An integer beyond 64 bits fails that one message with FrameError (was: OverflowError)."""
    with pytest.raises(FrameError, match="OverflowError"):
        Encoder().encode(Envelope(1, PutData("g", "c0", "k", Tag(2**64, "w"), Blob(b"x"))))


async def test_unread_replies_are_bounded() -> None:
    """A client that pipelines reads of a 1 MiB value and never reads the replies: the server's
    write buffer for that connection must stay bounded (flow control), not grow per request."""
    s = Server(server_id="s1", host="127.0.0.1", port=0, storage=MemoryStorage())
    await s.start()
    cfg = Configuration("c0", (ServerInfo("s1", f"127.0.0.1:{s.port}"),))
    await s.bootstrap(cfg)
    try:
        async with Store(cfg) as store:
            await store.write("big", b"x" * (1 << 20))
        reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
        q = Encoder().encode_bytes(Envelope(1, QueryData(CLUSTER_CHAIN, "c0", "default\x00big")))
        writer.write(q * 300)
        await writer.drain()
        await asyncio.sleep(1.0)
        buffered = max(
            c.transport.get_write_buffer_size() for c in s.connections if c.transport is not None
        )
        # the requests not handled yet wait, undecoded, until the client reads
        assert any(c.backlog for c in s.connections)
        # ... and are answered once it does
        got = 0
        while got < 300:
            (n,) = struct.unpack(">I", await asyncio.wait_for(reader.readexactly(4), 10))
            await asyncio.wait_for(reader.readexactly(n), 10)
            got += 1
        writer.close()
        assert buffered < 64 << 20, f"{buffered >> 20} MiB of replies buffered for one client"
    finally:
        await s.stop()
