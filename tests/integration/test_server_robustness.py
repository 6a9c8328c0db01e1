"""Bad input from the network never stops a server (in-process servers, real TCP)."""

from __future__ import annotations

import asyncio
import struct

from aresdsm.client import Store
from aresdsm.config import Configuration
from aresdsm.protocol.ares import CLUSTER_CHAIN
from aresdsm.server import Server
from aresdsm.tags import Tag
from aresdsm.wire import Blob, Encoder, Envelope
from aresdsm.wire.messages import Ack, ErrorReply, PutData, QueryTag, TagReply


async def _raw(port: int, payload: bytes, *, read: bool = True) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload)
    await writer.drain()
    data = b""
    if read:
        try:
            data = await asyncio.wait_for(reader.read(65536), 2.0)
        except TimeoutError:
            data = b"<timeout>"
    writer.close()
    await writer.wait_closed()
    return data


async def test_garbage_oversized_and_wrong_messages(
    inproc_cluster: tuple[Configuration, list[Server]],
) -> None:
    cfg, servers = inproc_cluster
    s1 = servers[0]
    store = Store(cfg)
    await store.write("k", b"before")
    # garbage bytes: the connection is closed (EOF), the server counts it
    assert await _raw(s1.port, struct.pack(">I", 20) + b"\x01" + b"\xff" * 19) == b""
    # a length prefix beyond max_frame_bytes
    assert await _raw(s1.port, struct.pack(">I", 2**31)) == b""
    # a well-formed reply sent as if it were a request: answered with bad-request
    enc = Encoder()
    answer = await _raw(s1.port, enc.encode_bytes(Envelope(5, Ack())))
    from aresdsm.wire import Decoder

    env = Decoder().decode_frame(answer, max_frame_bytes=1 << 20)
    assert isinstance(env.body, ErrorReply) and env.body.code == "bad-request" and env.rid == 5
    # a request naming an unknown configuration: unknown-config, nothing stored
    answer = await _raw(
        s1.port, enc.encode_bytes(Envelope(6, PutData("g", "nope", "k", Tag(9, "x"), Blob(b"z"))))
    )
    env = Decoder().decode_frame(answer, max_frame_bytes=1 << 20)
    assert isinstance(env.body, ErrorReply) and env.body.code == "unknown-config"
    # a connection that sends half a frame and hangs up
    await _raw(s1.port, struct.pack(">I", 100) + b"\x01abc", read=False)
    assert s1.core.counters["bad-frames"] == 2
    assert s1.core.counters["bad-requests"] == 1
    # and the server still serves, with nothing lost
    assert await store.read("k") == b"before"
    await store.write("k", b"after")
    query = QueryTag(CLUSTER_CHAIN, "c0", "default\x00k")  # the chain, group NUL key
    answer = await _raw(s1.port, enc.encode_bytes(Envelope(7, query)))
    env = Decoder().decode_frame(answer, max_frame_bytes=1 << 20)
    assert isinstance(env.body, TagReply) and env.body.tag.z == 2
    await store.close()


async def test_many_concurrent_operations_from_one_client(
    inproc_cluster: tuple[Configuration, list[Server]],
) -> None:
    cfg, _ = inproc_cluster
    async with Store(cfg) as store:
        tags = await asyncio.gather(*(store.write("hot", f"v{i}".encode()) for i in range(200)))
        assert len(set(tags)) == 200  # writer ids are per operation: no two writes share a tag
        final_tag, value = await store.read_tagged("hot")
        assert final_tag == max(tags)
        assert value == f"v{tags.index(max(tags))}".encode()
