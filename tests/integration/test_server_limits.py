"""Limits against well-formed but harmful requests, on a real in-process Server over TCP (found
in review): configurations the server or the coder cannot serve, oversized batches, extreme tags,
values that pin whole frames, values whose replies could not fit a frame, and group pages that
must stay below the frame limit. The server answers with an error and keeps serving; the client
refuses what would leave an object unreadable."""

from __future__ import annotations

import pytest
from frames import ask

from aresdsm.client import Store
from aresdsm.config import Configuration, ServerInfo
from aresdsm.errors import AresError, ConfigurationError
from aresdsm.integrity import digest
from aresdsm.protocol.server_core import MAX_KEYS_PAGE
from aresdsm.server import Server
from aresdsm.storage import MemoryStorage
from aresdsm.storage.base import ValueRef
from aresdsm.tags import Tag
from aresdsm.wire import Blob, Encoder, Envelope
from aresdsm.wire.messages import (
    BatchItem,
    ErrorReply,
    Finalized,
    InstallConfig,
    NextEntry,
    Ping,
    PutBatch,
    PutData,
    QueryTag,
)


async def test_stored_values_do_not_pin_their_frame(
    inproc_cluster: tuple[Configuration, list[Server]],
) -> None:
    """A received value is a view of its whole frame: stored as such, a 1-byte value sent in a
    batch next to a 4 MiB one would keep the 4 MiB alive for as long as the key exists. The
    server keeps a reference to the stored record (issue 12), and the write batch that held the
    view is gone once committed."""
    cfg, servers = inproc_cluster
    s1 = servers[0]
    items = (
        BatchItem("small", Tag(1, "w"), Blob(b"x"), digest(b"x")),
        BatchItem("big", Tag(1, "w"), Blob(b"b" * (4 << 20)), digest(b"b" * (4 << 20))),
    )
    reply = await ask(
        s1.port, Encoder().encode_bytes(Envelope(1, PutBatch("default", cfg.id, items)))
    )
    assert reply is not None and type(reply.body).__name__ == "Ack"
    value = s1.core.registers[("default", cfg.id, "small")].value
    assert isinstance(value, ValueRef) and len(value) == 1
    assert s1.core.value_bytes_in_memory() == 0
    assert s1.storage.barrier() is None and not s1.storage._inflight_index
    assert not s1.storage._open_index
    assert s1.storage.read_value(value) == b"x"


async def test_a_batch_beyond_the_page_limit_is_refused(
    inproc_cluster: tuple[Configuration, list[Server]],
) -> None:
    """One PutBatch of 300,000 empty items (a ~6 MB frame, under max_frame_bytes) used to block
    the event loop for seconds; batches hold at most MAX_KEYS_PAGE objects."""
    cfg, servers = inproc_cluster
    s1 = servers[0]
    items = tuple(BatchItem(f"k{i:07d}", Tag(1, "w"), Blob(b"")) for i in range(MAX_KEYS_PAGE + 1))
    reply = await ask(  # (a 6 MB frame: a generous deadline for a loaded machine)
        s1.port,
        Encoder().encode_bytes(Envelope(1, PutBatch("default", cfg.id, items))),
        timeout_s=30.0,
    )
    assert reply is not None and isinstance(reply.body, ErrorReply)
    assert reply.body.code == "bad-request"
    assert not any(k[0] == "default" for k in s1.core.registers)
    pong = await ask(s1.port, Encoder().encode_bytes(Envelope(2, Ping())))
    assert pong is not None and type(pong.body).__name__ == "Pong"


async def _single_server() -> tuple[Server, ServerInfo]:
    s = Server(server_id="s1", host="127.0.0.1", port=0, storage=MemoryStorage())
    await s.start()
    return s, ServerInfo("s1", f"127.0.0.1:{s.port}")


async def test_treas_configuration_beyond_coder_limit_is_refused() -> None:
    """validate_configuration accepts TREAS with n > 32 (coding.MAX_N); the server installs and
    persists it, then every data request on it raises ValueError inside data_received."""
    s, me = await _single_server()
    try:
        others = tuple(ServerInfo(f"x{i}", f"127.0.0.1:{20000 + i}") for i in range(32))
        big = Configuration("c33", (me, *others), "treas", 3, 1)
        inst = await ask(s.port, Encoder().encode_bytes(Envelope(1, InstallConfig(big))))
        assert inst is not None
        assert isinstance(inst.body, ErrorReply), f"accepted: {inst.body}"
    finally:
        await s.stop()


async def test_treas_configuration_beyond_coder_limit_gives_clear_error() -> None:
    """Even once such a configuration is installed, a request on it must get an error reply,
    not a dropped connection (today: ValueError in data_received, connection closed)."""
    s, me = await _single_server()
    try:
        others = tuple(ServerInfo(f"x{i}", f"127.0.0.1:{20000 + i}") for i in range(32))
        big = Configuration("c33", (me, *others), "treas", 3, 1)
        await ask(s.port, Encoder().encode_bytes(Envelope(1, InstallConfig(big))))
        reply = await ask(s.port, Encoder().encode_bytes(Envelope(2, QueryTag("g", "c33", "k"))))
        assert reply is not None, "server closed the connection without a reply"
    finally:
        await s.stop()


async def test_finalized_with_invalid_configuration_is_refused() -> None:
    """Finalized installs its entry's configuration without validate_configuration (InstallConfig
    validates): a TREAS config with k > n gets installed, then data requests on it crash."""
    s, me = await _single_server()
    try:
        bad = Configuration("cbad", (me,), "treas", 5, 0)
        fin = Finalized("g", NextEntry(bad, "F"))
        reply = await ask(s.port, Encoder().encode_bytes(Envelope(1, fin)))
        assert reply is not None
        assert isinstance(reply.body, ErrorReply), f"accepted: {reply.body}"
    finally:
        await s.stop()


async def test_reconfig_to_treas_over_32_servers_is_refused_before_consensus() -> None:
    """The library (and `ares reconfig`) must refuse a TREAS proposal the coder cannot handle
    *before* Paxos decides it; today consensus decides it, the transfer raises ValueError (not an
    AresError), and the group's chain ends in a configuration nobody can read or write."""
    servers = []
    for i in range(33):
        srv = Server(server_id=f"s{i + 1}", host="127.0.0.1", port=0, storage=MemoryStorage())
        await srv.start()
        servers.append(srv)
    infos = tuple(ServerInfo(s.server_id, f"127.0.0.1:{s.port}") for s in servers)
    c0 = Configuration("c0", infos[:3])
    for srv in servers[:3]:
        await srv.bootstrap(c0)
    try:
        async with Store(c0) as store:
            await store.write("k", b"v")
            with pytest.raises(AresError):  # today: ValueError, after consensus decided c1
                await store.reconfigure(Configuration("c1", infos, "treas", 3, 1))
        async with Store(c0) as fresh:  # the group must still work
            assert await fresh.read("k") == b"v"
    finally:
        for srv in servers:
            await srv.stop()


async def test_tag_at_integer_limit_does_not_poison_the_key(
    inproc_cluster: tuple[Configuration, list[Server]],
) -> None:
    """One PutData with z = 2**64 - 1 is acknowledged; afterwards no client can write the key
    (the successor tag cannot be encoded: OverflowError, not even an AresError)."""
    cfg, servers = inproc_cluster
    for s in servers:
        await ask(
            s.port,
            Encoder().encode_bytes(
                Envelope(1, PutData("default", cfg.id, "p", Tag(2**64 - 1, "x"), Blob(b"x")))
            ),
        )
    async with Store(cfg) as store:
        await store.write("p", b"after")
        assert await store.read("p") == b"after"


async def _servers(n: int, frame_bytes: int) -> list[Server]:
    out = []
    for i in range(n):
        s = Server(
            server_id=f"s{i + 1}",
            host="127.0.0.1",
            port=0,
            storage=MemoryStorage(),
            max_frame_bytes=frame_bytes,
        )
        await s.start()
        out.append(s)
    return out


async def test_treas_object_stays_readable_after_acknowledged_writes() -> None:
    """A TREAS server answers a read with up to delta+1 coded elements: with [3, 1], delta=10
    and 8 MiB frames, 1 MiB values used to be acknowledged until the reply outgrew the frame and
    the object could never be read again. The client now refuses such a value before writing
    it, and everything it acknowledged stays readable."""
    from aresdsm.config import ClientOptions

    frame = 8 << 20
    servers = await _servers(3, frame)
    c = Configuration(
        "c0", tuple(ServerInfo(s.server_id, f"127.0.0.1:{s.port}") for s in servers), "treas", 1, 10
    )
    for s in servers:
        await s.bootstrap(c)
    try:
        async with Store(c, options=ClientOptions(max_frame_bytes=frame, timeout_s=3)) as st:
            with pytest.raises(ConfigurationError, match="too large"):
                await st.write("k", b"x" * (1 << 20))
            for i in range(12):  # 11 x 512 KiB = 5.5 MiB per reply at most: fits
                await st.write("k", bytes([i]) * (512 << 10))
            assert await st.read("k") == bytes([11]) * (512 << 10)
    finally:
        for s in servers:
            await s.stop()


async def test_group_page_never_exceeds_the_frame_limit() -> None:
    """GetGroup checks the page's byte budget *before* adding the next object, so a page can be
    limit_bytes + one whole object: objects of 3 MiB and 6 MiB (each written fine with 8 MiB
    frames) make the first page 9 MiB, every server answers bad-request, and the group can never
    be reconfigured (the same page is asked for on every attempt). Default sizes: 7 MiB + 60 MiB
    with 64 MiB frames."""
    from aresdsm.config import ClientOptions

    frame = 8 << 20
    servers = await _servers(4, frame)
    infos = tuple(ServerInfo(s.server_id, f"127.0.0.1:{s.port}") for s in servers)
    c0 = Configuration("c0", infos[:3])
    for s in servers[:3]:
        await s.bootstrap(c0)
    try:
        async with Store(c0, options=ClientOptions(max_frame_bytes=frame, timeout_s=3)) as st:
            await st.write("a", b"a" * (3 << 20))
            await st.write("b", b"b" * (6 << 20))
            decided = await st.reconfigure(Configuration("c1", infos[1:]))
            assert decided.id == "c1"
    finally:
        for s in servers:
            await s.stop()
