"""Round trips per operation, counted on the wire (docs/protocol.md §11): exact in steady state."""

from __future__ import annotations

import pytest

from aresdsm.config import Configuration
from aresdsm.protocol.ops import CLASSIC, OpSwitches
from aresdsm.sim.scenario import Scenario
from aresdsm.tags import TAG0
from aresdsm.wire.messages import PutData


@pytest.mark.parametrize(
    ("switches", "write_rounds", "read_rounds", "contended_read_rounds"),
    [(OpSwitches(), 2, 1, 2), (CLASSIC, 4, 4, 4)],
    ids=["ares2", "classic"],
)
def test_steady_state_rounds(
    switches: OpSwitches, write_rounds: int, read_rounds: int, contended_read_rounds: int
) -> None:
    async def script(sc: Scenario) -> None:
        a = sc.client("a", switches)
        w = sc.client("w", switches)
        await a.write("k", b"v0")  # a first write (and InstallConfig-free steady state)
        for _ in range(3):
            before = a.channel.rounds
            await a.write("k", b"v")
            assert a.channel.rounds - before == write_rounds
            before = a.channel.rounds
            await a.read("k")
            assert a.channel.rounds - before == read_rounds
        # a write in flight on one server only: the read's quorum disagrees and it writes back
        sc.hold(
            "w-put",
            lambda m: m.sender == "w" and m.server != "s0" and isinstance(m.request, PutData),
        )
        sc.start(w.write("k", b"concurrent"))
        await sc.run_for(0.01)
        before = a.channel.rounds
        await a.read("k")
        assert a.channel.rounds - before == contended_read_rounds
        sc.release("w-put")
        await sc.run_for(0.01)

    Scenario.play(servers=3, script=script)


BATCHED_CLASSIC = OpSwitches(piggyback=False, fast_read=False, gc=False)


@pytest.mark.parametrize(
    ("switches", "decisions", "rounds"),
    [
        # read-config 1, Paxos 2, [put-config 1 without piggyback], 4 pages of
        # SET_NEXT_AND_GET, 4 batches of put-data, finalize 1
        (OpSwitches(), 1, 12),
        (BATCHED_CLASSIC, 1, 13),
        # batch off (the original Ares): 4 pages listing the objects, then per object
        # read-config, Paxos 2, put-config, SET_NEXT_AND_GET, put-data, finalize
        (CLASSIC, 1000, 4 + 1000 * 7),
    ],
    ids=["ares2", "classic-rounds-batched", "classic"],
)
def test_reconfiguring_1000_objects(switches: OpSwitches, decisions: int, rounds: int) -> None:
    """docs/protocol.md §8.4 and §11: one consensus decision for a whole group with ``batch``, one
    per object without."""

    async def script(sc: Scenario) -> None:
        admin = sc.client("admin", switches)
        for i in range(1000):
            await admin.write(f"obj-{i}", b"x" * 16)
        before = dict(admin.channel.rounds_by_phase)
        start = admin.channel.rounds
        await admin.reconfig(Configuration("c1", tuple(sc.pool[3:6])))
        phases = {p: n - before.get(p, 0) for p, n in admin.channel.rounds_by_phase.items()}
        assert phases["consensus.prepare"] == decisions, phases
        assert phases["consensus.accept"] == decisions, phases
        assert admin.channel.rounds - start == rounds, phases
        for i in range(0, 1000, 111):
            assert await admin.read(f"obj-{i}") == b"x" * 16
        # every object now lives in c1 alone: the old servers can go
        for s in ("s0", "s1", "s2"):
            sc.crash(s)
        for i in range(0, 1000, 111):
            assert await admin.read(f"obj-{i}") == b"x" * 16

    Scenario.play(servers=6, initial=3, script=script)


@pytest.mark.parametrize(
    ("switches", "ok_rounds", "stale_rounds"),
    [(OpSwitches(), 3, 2), (CLASSIC, 5, 6)],
    ids=["ares2", "classic"],
)
def test_coverable_write_rounds(switches: OpSwitches, ok_rounds: int, stale_rounds: int) -> None:
    """docs/protocol.md §9.1: an ok coverable write is prepare, accept, put (classic: + the
    discovery before and after); a stale one is prepare and a read (classic: discovery, prepare,
    and a classic read of 4)."""

    async def script(sc: Scenario) -> None:
        a = sc.client("a", switches)
        b = sc.client("b", switches)
        first = await a.cvr_write("k", b"v0", TAG0)
        await b.read("k")  # b's chain view is known: steady state
        tag = first.tag
        for i in range(3):
            before = a.channel.rounds
            out = await a.cvr_write("k", f"v{i}".encode(), tag)
            assert out.ok and a.channel.rounds - before == ok_rounds
            before = b.channel.rounds
            stale = await b.cvr_write("k", b"late", tag)
            assert not stale.ok and b.channel.rounds - before == stale_rounds
            tag = out.tag

    Scenario.play(servers=3, script=script)
