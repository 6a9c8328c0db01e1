"""Client algorithms over an in-memory Channel: results and exact round counts."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import pytest

from aresdsm.config import Configuration, ServerInfo
from aresdsm.errors import QuorumUnavailable
from aresdsm.protocol import ops
from aresdsm.protocol.channel import RequestFor
from aresdsm.protocol.server_core import ServerCore
from aresdsm.storage.values import LocalServer
from aresdsm.tags import TAG0, Tag
from aresdsm.wire import Blob
from aresdsm.wire.messages import ErrorReply, QueryTag, Reply, TagReply

R = TypeVar("R", bound=Reply)


class LocalChannel:
    """Calls the servers' cores directly; servers in ``down`` never answer."""

    def __init__(self, cores: Sequence[ServerCore]) -> None:
        self.cores = {c.server_id: c for c in cores}
        self.disks: dict[str, LocalServer] = {c.server_id: LocalServer(c) for c in cores}
        self.down: set[str] = set()
        self.rounds: list[str] = []
        self.stale: set[str] = set()  # servers whose answers are taken first

    async def round(
        self,
        c: Configuration,
        request: RequestFor,
        *,
        expect: type[R],
        phase: str,
        need: int | None = None,
        accept: Callable[[Any], bool] | None = None,
    ) -> list[tuple[ServerInfo, R]]:
        need = c.quorum_size if need is None else need
        self.rounds.append(phase)
        order = sorted(c.servers, key=lambda s: s.id not in self.stale)
        out: list[tuple[ServerInfo, R]] = []
        failed = 0
        for s in order:
            if s.id in self.down:
                failed += 1
                continue
            req = request(c.servers.index(s), s) if callable(request) else request
            reply, _ = self.disks[s.id].handle(req)
            if isinstance(reply, expect) and (accept is None or accept(reply)):
                out.append((s, reply))
            elif isinstance(reply, ErrorReply | expect):
                failed += 1
            if len(out) == need:
                return out
        raise QuorumUnavailable(f"{failed} servers failed")


def setup(n: int = 3) -> tuple[Configuration, LocalChannel]:
    cfg = Configuration("c0", tuple(ServerInfo(f"s{i}", f"h:{i}") for i in range(n)))
    cores = [ServerCore(f"s{i}") for i in range(n)]
    for c in cores:
        c.install_config(cfg)
    return cfg, LocalChannel(cores)


def test_write_then_read_two_rounds_each() -> None:
    cfg, ch = setup()

    async def go() -> None:
        tag = await ops.write(ch, cfg, group="g", key="k", value=Blob(b"v"), writer="w.1")
        assert tag == Tag(1, "w.1")
        assert ch.rounds == ["get-tag", "put-data"]
        ch.rounds.clear()
        res = await ops.read(ch, cfg, group="g", key="k", switches=ops.OpSwitches(fast_read=False))
        assert (res.tag, bytes(res.value), res.wrote_back) == (Tag(1, "w.1"), b"v", True)
        assert ch.rounds == ["get-data", "put-data"]

    asyncio.run(go())


def test_fast_read_takes_one_round_only_when_the_quorum_agrees() -> None:
    cfg, ch = setup()

    async def go() -> None:
        await ops.write(ch, cfg, group="g", key="k", value=Blob(b"v1"), writer="a.1")
        ch.rounds.clear()
        res = await ops.read(ch, cfg, group="g", key="k")
        assert not res.wrote_back and ch.rounds == ["get-data"]
        # s2 missed the write: a quorum {s2, s0} disagrees -> write-back
        ch.down = {"s0"}
        await ops.write(ch, cfg, group="g", key="k", value=Blob(b"v2"), writer="a.2")
        ch.down = set()
        ch.stale = {"s0"}
        ch.rounds.clear()
        res = await ops.read(ch, cfg, group="g", key="k")
        assert bytes(res.value) == b"v2" and res.wrote_back
        assert ch.rounds == ["get-data", "put-data"]
        # the write-back repaired s0
        reply, _ = ch.cores["s0"].handle(QueryTag("g", "c0", "k"))
        assert reply == TagReply(Tag(2, "a.2"))

    asyncio.run(go())


def test_reads_see_completed_writes_with_a_minority_down() -> None:
    cfg, ch = setup(5)

    async def go() -> None:
        ch.down = {"s0", "s1"}
        await ops.write(ch, cfg, group="g", key="k", value=Blob(b"x"), writer="w.1")
        ch.down = {"s3", "s4"}
        res = await ops.read(ch, cfg, group="g", key="k")
        assert bytes(res.value) == b"x"

    asyncio.run(go())


def test_majority_down_raises_quorum_unavailable() -> None:
    cfg, ch = setup()
    ch.down = {"s0", "s1"}
    with pytest.raises(QuorumUnavailable):
        asyncio.run(ops.write(ch, cfg, group="g", key="k", value=Blob(b"x"), writer="w.1"))


def test_unwritten_object_reads_empty() -> None:
    cfg, ch = setup()
    res = asyncio.run(ops.read(ch, cfg, group="g", key="nothing"))
    assert res.tag == TAG0 and bytes(res.value) == b""
