"""Issue 13's resource attacks against an in-process server over real loopback TCP (the stdlib
event loop, where the issue measured the worst growth): each failed before the limits of
:mod:`aresdsm.limits` and passes with them.

- a client that never reads its replies while reads wait for a commit: the replies held for it
  are bounded by ``max_conn_reply_bytes`` (was: every reply of the backlog, 64 -> 828 MiB);
- object keys of 33 MiB are refused by the server (was: accepted; the client checked alone);
- bad frames are logged rate-limited and with a short escaped prefix of the peer's text (was:
  one line per frame with all of it: one frame grew the log by 30 MiB);
- GetStats reads running totals, never the objects or the database (was: a scan of every object
  and a SQL SUM on the event loop: 130-220 ms at 250k objects);
- connections: at ``max_connections`` the one idle longest makes room, a busy server refuses;
  idle connections time out; an incomplete frame has a deadline; incomplete frames share a budget.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from pathlib import Path

import msgspec
import pytest
from frames import ask

from aresdsm.client import Store
from aresdsm.config import Configuration, ServerInfo
from aresdsm.integrity import digest
from aresdsm.limits import MAX_GROUP_BYTES, MAX_KEY_FIELD_BYTES, ServerLimits
from aresdsm.protocol.ares import CLUSTER_CHAIN as CHAIN
from aresdsm.server import Server
from aresdsm.storage import MemoryStorage, SqliteStorage
from aresdsm.tags import Tag
from aresdsm.wire import Blob, Encoder, Envelope
from aresdsm.wire.codec import FORMAT_VERSION
from aresdsm.wire.messages import ErrorReply, GetStats, PutData, QueryData, QueryTag, Stats


async def _server(
    tmp_path: Path | None = None, limits: ServerLimits | None = None
) -> tuple[Server, Configuration]:
    storage = SqliteStorage(tmp_path / "s1" / "state.sqlite3") if tmp_path else MemoryStorage()
    s = Server(server_id="s1", host="127.0.0.1", port=0, storage=storage, limits=limits)
    await s.start()
    cfg = Configuration("c0", (ServerInfo("s1", f"127.0.0.1:{s.port}"),))
    await s.bootstrap(cfg)
    return s, cfg


async def _until(cond: object, timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not cond():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def test_client_that_never_reads_cannot_grow_the_server(tmp_path: Path) -> None:
    """40 reads of a 4 MiB value pipelined behind a write (so they wait for its commit) from a
    client that never reads: before, all 40 replies (160 MiB) went to the write buffer at the
    commit; now reading stops once the replies held exceed max_conn_reply_bytes."""
    s, cfg = await _server(tmp_path)
    try:
        async with Store(cfg) as store:
            await store.write("big", b"v" * (4 << 20))
        enc = Encoder()
        put = enc.encode_bytes(
            Envelope(1, PutData(CHAIN, "c0", "default\x00w", Tag(1, "x"), Blob(b"1")))
        )
        reads = b"".join(
            enc.encode_bytes(Envelope(2 + i, QueryData(CHAIN, "c0", "default\x00big")))
            for i in range(40)
        )
        reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
        writer.write(put + reads)  # about 1.5 KiB of requests
        await writer.drain()
        held = 0
        for _ in range(50):  # 1 s: long enough for the commit and every write
            await asyncio.sleep(0.02)
            for c in list(s.connections):
                if c.transport is not None:
                    held = max(held, c.transport.get_write_buffer_size() + c.reply_bytes)
        cap = s.limits.max_conn_reply_bytes + (4 << 20) + (1 << 20)  # one reply beyond the cap
        assert held <= cap, f"{held >> 20} MiB of replies held for a client that does not read"
        got = 0  # ... and nothing is lost: every reply arrives once the client reads
        while got < 41:
            (n,) = struct.unpack(">I", await asyncio.wait_for(reader.readexactly(4), 10))
            await asyncio.wait_for(reader.readexactly(n), 10)
            got += 1
        writer.close()
    finally:
        await s.stop()


async def test_huge_keys_and_group_names_are_refused_by_the_server() -> None:
    s, _ = await _server()
    try:
        enc = Encoder()

        async def put(group: str, key: str) -> object:
            env = Envelope(1, PutData(group, "c0", key, Tag(1, "x"), Blob(b"v"), digest(b"v")))
            reply = await ask(s.port, enc.encode_bytes(env))
            assert reply is not None
            return reply.body

        huge = await put("default", "k" * (33 << 20))  # was: acknowledged and stored
        assert isinstance(huge, ErrorReply) and huge.code == "bad-request"
        assert "exceeds the limit" in huge.message and len(huge.message) < 200
        assert not s.core.registers
        # a composite key (group + NUL + key, both at their limit) fits the key field
        ok = await put("default", "k" * MAX_KEY_FIELD_BYTES)
        assert type(ok).__name__ == "Ack"
        assert isinstance(await put("default", "k" * (MAX_KEY_FIELD_BYTES + 1)), ErrorReply)
        assert isinstance(await put("g" * (MAX_GROUP_BYTES + 1), "k"), ErrorReply)
        assert isinstance(await put("default", "é" * (MAX_KEY_FIELD_BYTES // 2 + 1)), ErrorReply)
    finally:
        await s.stop()


def _bad_frame(text: str) -> bytes:
    header = msgspec.msgpack.encode([1, [text, 1]])  # an unknown message type named `text`
    body = struct.pack(">BI", FORMAT_VERSION, len(header)) + header
    return struct.pack(">I", len(body)) + body


async def test_bad_input_logging_is_bounded_and_escaped(caplog: pytest.LogCaptureFixture) -> None:
    s, _ = await _server()
    try:
        caplog.set_level(logging.INFO, logger="aresdsm.server")
        caplog.clear()
        evil = "\x1b[31mINJECTED\n" + "A" * (1 << 20)
        for _ in range(60):
            assert await ask(s.port, _bad_frame(evil)) is None
        assert s.core.counters["bad-frames"] == 60
        lines = [r.getMessage() for r in caplog.records if "bad input" in r.getMessage()]
        assert 1 <= len(lines) <= s.limits.log_bad_input_burst + 5  # rate-limited
        assert sum(len(x) for x in lines) < 400 * len(lines)  # was: 1 MiB per line
        for line in lines:
            assert "\n" not in line and "\x1b" not in line  # escaped, one line
    finally:
        await s.stop()


async def test_get_stats_reads_running_totals_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s, cfg = await _server(tmp_path)
    try:
        async with Store(cfg) as store:
            for i in range(20):
                await store.write(f"k{i}", b"x" * i)
            await store.write("k3", b"yy")  # replaced: 3 -> 2 bytes
        expected = sum(range(20)) - 3 + 2

        def scan(*_: object) -> int:
            raise AssertionError("GetStats scanned the storage")

        monkeypatch.setattr(s.storage, "stored_bytes", scan)

        class NoIteration(dict):  # type: ignore[type-arg]
            def items(self) -> object:
                raise AssertionError("GetStats iterated over every object")

            def __iter__(self) -> object:
                raise AssertionError("GetStats iterated over every object")

        s.core.registers = NoIteration(s.core.registers)
        reply = await ask(s.port, Encoder().encode_bytes(Envelope(1, GetStats())))
        assert reply is not None and isinstance(reply.body, Stats)
        assert reply.body.objects == 20 and reply.body.stored_bytes == expected
        assert reply.body.bytes_by_config == {f"{CHAIN}/c0": expected}
    finally:
        await s.stop()


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setblocking(False)
    return sock


def _closed_by_peer(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except ConnectionError:
        return True


async def test_connection_limit_evicts_the_idle_and_refuses_when_busy() -> None:
    limits = ServerLimits(max_connections=5, evict_idle_after_s=0.3)
    s, cfg = await _server(limits=limits)
    socks = []
    try:
        socks = [_connect(s.port) for _ in range(5)]
        await _until(lambda: len(s.connections) == 5)
        extra = _connect(s.port)  # none idle long enough yet: refused
        await _until(lambda: _closed_by_peer(extra))
        assert s.core.counters["connections-refused"] >= 1
        await asyncio.sleep(0.4)  # now the five are idle: a client gets in, evicting one
        async with Store(cfg) as store:
            await store.write("k", b"v")
            assert await store.read("k") == b"v"
        assert s.core.counters["connections-evicted"] >= 1
        assert len(s.connections) <= 5
        extra.close()
    finally:
        for x in socks:
            x.close()
        await s.stop()


async def test_connections_per_address_are_limited() -> None:
    s, _ = await _server(limits=ServerLimits(max_connections_per_address=3))
    socks = [_connect(s.port) for _ in range(3)]
    try:
        await _until(lambda: len(s.connections) == 3)
        extra = _connect(s.port)
        await _until(lambda: _closed_by_peer(extra))
        assert len(s.connections) == 3
        extra.close()
    finally:
        for x in socks:
            x.close()
        await s.stop()


async def test_idle_connections_time_out() -> None:
    s, _ = await _server(limits=ServerLimits(idle_timeout_s=0.3))
    sock = _connect(s.port)
    try:
        await _until(lambda: len(s.connections) == 1)
        await _until(lambda: _closed_by_peer(sock), timeout_s=5)
        assert s.core.counters["connections-idle-closed"] == 1
    finally:
        sock.close()
        await s.stop()


async def test_an_incomplete_frame_has_a_deadline() -> None:
    """Slowloris: a frame header, then a byte now and then; closed after frame_timeout_s
    although the connection is never idle."""
    s, _ = await _server(limits=ServerLimits(frame_timeout_s=0.5, idle_timeout_s=60))
    sock = _connect(s.port)
    try:
        sock.send(struct.pack(">I", 1 << 20))
        closed = False
        for _ in range(100):  # up to 5 s
            await asyncio.sleep(0.05)
            if _closed_by_peer(sock):
                closed = True
                break
            with __import__("contextlib").suppress(OSError):
                sock.send(b"x")
        assert closed and s.core.counters["frames-timed-out"] == 1
    finally:
        sock.close()
        await s.stop()


async def test_incomplete_frames_share_one_memory_budget() -> None:
    limits = ServerLimits(max_partial_frame_bytes_total=3 << 20, small_frame_bytes=1024)
    s, cfg = await _server(limits=limits)
    socks = [_connect(s.port) for _ in range(4)]
    try:
        for x in socks:
            x.setblocking(True)
            x.sendall(struct.pack(">I", 60 << 20) + b"x" * (1 << 20))
        await _until(lambda: s.core.counters.get("frames-over-budget", 0) >= 1)
        assert s.partial_bytes <= limits.max_partial_frame_bytes_total
        for x in socks:
            x.setblocking(False)
        # small well-behaved requests are not affected
        reply = await ask(
            s.port, Encoder().encode_bytes(Envelope(1, QueryTag("default", "c0", "k")))
        )
        assert reply is not None and type(reply.body).__name__ == "TagReply"
        async with Store(cfg) as store:
            await store.write("k", b"v")
    finally:
        for x in socks:
            x.close()
        await s.stop()


async def test_largest_legal_tag_and_ballot_fail_clearly_and_stay_contained(
    inproc_cluster: tuple[Configuration, list[Server]],
) -> None:
    """A tag number or ballot round of 2^62 - 1 is legal (a server may be far behind, so no bound
    relative to its state is: docs/design.md "Limits and bad input"), and its successor is not.
    Only a credentialed writer or admin can send one; what it costs is that key or that
    instance, with a clear error -- was: a quorum of "bad-request" replies from every server."""
    from aresdsm.errors import ConsensusFailed, OperationError
    from aresdsm.limits import MAX_COUNTER
    from aresdsm.wire.messages import Ballot, Prepare

    cfg, servers = inproc_cluster
    enc = Encoder()
    for s in servers:
        evil = PutData(
            CHAIN,
            cfg.id,
            "default\x00p",
            Tag(MAX_COUNTER - 1, "x"),
            Blob(b"evil"),
            digest(b"evil"),
        )
        assert (await ask(s.port, enc.encode_bytes(Envelope(1, evil)))) is not None
        prep = Prepare(CHAIN, cfg.id, Ballot(MAX_COUNTER - 1, "x"))
        assert (await ask(s.port, enc.encode_bytes(Envelope(2, prep)))) is not None
    async with Store(cfg) as store:
        with pytest.raises(OperationError, match="tag space is exhausted"):
            await store.write("p", b"after")
        await store.write("q", b"other keys are unaffected")
        assert await store.read("q") == b"other keys are unaffected"
        with pytest.raises(ConsensusFailed, match="ballot rounds are exhausted"):
            await store.reconfigure(Configuration("c1", cfg.servers))


async def test_a_client_that_stops_reading_is_closed_after_the_idle_timeout() -> None:
    """Its replies are bounded (above), but it must not keep them -- and its connection slot --
    forever: no progress for idle_timeout_s closes it."""
    s, cfg = await _server(limits=ServerLimits(idle_timeout_s=0.5))
    try:
        async with Store(cfg) as store:
            await store.write("big", b"v" * (4 << 20))
        sock = socket.create_connection(("127.0.0.1", s.port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        q = Encoder().encode_bytes(Envelope(1, QueryData(CHAIN, "c0", "default\x00big")))
        sock.sendall(q * 8)
        await _until(lambda: s.core.counters.get("connections-stalled-closed", 0) == 1, 10)
        assert not s.connections
        sock.close()
    finally:
        await s.stop()
