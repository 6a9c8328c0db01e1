"""The TCP client stays bounded and correct against misbehaving servers (fake servers speaking the
frame format): a server that never answers cannot make the send queue grow, duplicate replies
cannot defeat max_in_flight, garbage fails requests promptly, and a request that cannot be encoded
fails alone.

Found in review (review 3): the first two failed before the fix (cancel() dropped only the
callback; every reply frame decremented the in-flight count), as did encoding (an OverflowError
escaped PeerConnection._write).
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import AsyncIterator, Callable

import pytest

from aresdsm.config import ClientOptions, Configuration, ServerInfo
from aresdsm.errors import FrameError, OperationError
from aresdsm.net.client import PeerConnection, TcpChannel
from aresdsm.tags import Tag
from aresdsm.wire import Blob, Decoder, Encoder, Envelope
from aresdsm.wire.codec import FrameBuffer
from aresdsm.wire.messages import PutData, QueryTag, Reply, TagReply

_OPEN: list[asyncio.Transport] = []
Behaviour = Callable[[Envelope, asyncio.Transport], None]


class _Fake(asyncio.Protocol):
    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.frames = FrameBuffer()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        _OPEN.append(self.transport)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        for body in self.frames.feed(data):
            assert self.transport is not None
            self.behaviour(Decoder().decode_body(body), self.transport)


async def _fake_server(behaviour: Behaviour) -> AsyncIterator[ServerInfo]:
    loop = asyncio.get_running_loop()
    srv = await loop.create_server(lambda: _Fake(behaviour), "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    try:
        yield ServerInfo("f1", f"127.0.0.1:{port}")
    finally:
        srv.close()
        for t in _OPEN:
            t.close()
        _OPEN.clear()
        await srv.wait_closed()


def _reply(env: Envelope, t: asyncio.Transport, times: int = 1) -> None:
    for _ in range(times):
        t.writelines(Encoder().encode(Envelope(env.rid, TagReply(Tag(0, "")))))


@pytest.fixture
async def silent() -> AsyncIterator[ServerInfo]:
    async for s in _fake_server(lambda env, t: None):
        yield s


@pytest.fixture
async def doubling() -> AsyncIterator[ServerInfo]:
    async for s in _fake_server(lambda env, t: _reply(env, t, 2)):
        yield s


async def test_silent_server_keeps_the_send_queue_bounded(silent: ServerInfo) -> None:
    """A server that accepts but never answers: every round fails within timeout_s, and the
    requests of finished rounds leave the queue (they stayed in PeerConnection._waiting forever
    when cancel() only dropped the callback, so a client that kept retrying grew unboundedly)."""
    opts = ClientOptions(timeout_s=0.05, max_in_flight=4)
    ch = TcpChannel(opts)
    c = Configuration("c0", (silent,))
    try:
        t0 = time.monotonic()
        for _ in range(200):
            with pytest.raises(OperationError):
                await ch.round(c, QueryTag("g", "c0", "k"), expect=TagReply, phase="t")
        assert time.monotonic() - t0 < 200 * 0.05 + 2  # each round failed within its timeout
        queued = len(ch.peer(silent)._waiting)
        assert queued <= opts.max_in_flight, f"{queued} dead requests queued"
    finally:
        await ch.close()


async def test_duplicate_replies_do_not_break_the_in_flight_limit(doubling: ServerInfo) -> None:
    """A server that answers every request twice: the extra frame must not count (it used to
    decrement the in-flight count below zero, so max_in_flight no longer limited anything)."""
    opts = ClientOptions(timeout_s=1.0, max_in_flight=4)
    ch = TcpChannel(opts)
    c = Configuration("c0", (doubling,))
    try:
        for _ in range(20):
            await ch.round(c, QueryTag("g", "c0", "k"), expect=TagReply, phase="t")
        await asyncio.sleep(0.1)
        inflight = ch.peer(doubling).in_flight
        assert inflight == 0, f"in_flight = {inflight} with every request answered"
    finally:
        await ch.close()


async def test_garbage_and_mid_frame_close_fail_cleanly() -> None:
    """(Passed already when found: kept as the record of what was checked.)"""

    def garbage(env: Envelope, t: asyncio.Transport) -> None:
        t.write(struct.pack(">I", 8) + b"\x01\xff\xff\xff\xff\x00\x00\x00")

    def half(env: Envelope, t: asyncio.Transport) -> None:
        t.write(struct.pack(">I", 100) + b"\x01abc")
        t.close()

    for behaviour in (garbage, half):
        async for info in _fake_server(behaviour):
            ch = TcpChannel(ClientOptions(timeout_s=2.0))
            c = Configuration("c0", (info,))
            t0 = time.monotonic()
            with pytest.raises(OperationError):
                await ch.round(c, QueryTag("g", "c0", "k"), expect=TagReply, phase="t")
            assert time.monotonic() - t0 < 1.0
            await ch.close()


async def test_send_queue_has_a_hard_bound(silent: ServerInfo) -> None:
    """Requests beyond max_queued_requests fail at once instead of waiting."""
    peer = PeerConnection(
        silent,
        options=ClientOptions(max_in_flight=1),
        encoder=Encoder(),
        decoder=Decoder(),
        max_queued_requests=3,
    )
    got: dict[int, Reply | BaseException] = {}
    try:
        for rid in range(1, 6):  # not connected yet: every request waits for the connection
            peer.send(rid, QueryTag("g", "c0", "k"), lambda r, rid=rid: got.setdefault(rid, r))
        assert len(peer._waiting) == 3
        assert sorted(got) == [4, 5]
        assert all(isinstance(e, OperationError) for e in got.values())
        peer.cancel(2)  # a cancelled request leaves the queue at once
        assert list(peer._waiting) == [1, 3]
    finally:
        peer.close()
        await asyncio.sleep(0)


async def test_unencodable_request_fails_alone(doubling: ServerInfo) -> None:
    """A request that cannot be encoded (a tag beyond 64 bits) fails with FrameError; the
    connection and the other requests on it are unaffected."""
    ch = TcpChannel(ClientOptions(timeout_s=1.0))
    c = Configuration("c0", (doubling,))
    try:
        await ch.round(c, QueryTag("g", "c0", "k"), expect=TagReply, phase="t")  # connected
        bad = PutData("g", "c0", "k", Tag(2**64, "w"), Blob(b"x"))
        with pytest.raises(FrameError, match="OverflowError"):
            await ch.request(doubling, bad)
        await ch.round(c, QueryTag("g", "c0", "k"), expect=TagReply, phase="t")
        assert ch.peer(doubling).in_flight == 0
    finally:
        await ch.close()
