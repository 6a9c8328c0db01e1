"""A configuration that turns OBSOLETE (docs/protocol.md §8.3) while an operation reads it and its
successor in parallel: the successor holds everything only from the moment the configuration was
finalized, so an answer it gave before may miss a write that completed long ago. The successor
must be read again *after* the OBSOLETE answer -- by reads and writes (§8.1 phase 1) and by
reconfiguration's update-config (§8.4). Found while reviewing the GC code: with the re-read
switched off (test-only switch) the checker reports the lost write."""

from __future__ import annotations

import pytest

from aresdsm.config import Configuration
from aresdsm.sim.scenario import Message, Scenario
from aresdsm.testing import broken_switches
from aresdsm.wire.messages import GetGroup, PutBatch, QueryData


def _to_c0(sender: str, kind: type) -> object:
    def rule(m: Message) -> bool:
        return m.sender == sender and isinstance(m.request, kind) and m.server in ("s0", "s1", "s2")

    return rule


@pytest.mark.parametrize("broken", [False, True])
def test_read_asks_the_successor_again_after_an_obsolete_answer(broken: bool) -> None:
    switches = broken_switches(broken_no_requery_after_obsolete=broken)

    async def script(sc: Scenario) -> None:
        a, b, r1 = sc.client("a", switches), sc.client("b", switches), sc.client("r1", switches)
        await a.write("k", b"v1")
        # r1 reconfigures c0 -> c1; its transfer into c1 is held back
        sc.hold("transfer", lambda m: m.sender == "r1" and isinstance(m.request, PutBatch))
        reconf = sc.start(r1.reconfig(Configuration("c1", tuple(sc.pool[3:6]))))
        await sc.run_for(0.05)
        # b learns c1 (pending) from the piggybacked next of a read of another object
        assert await b.read("other") == b""
        # b reads k: c0 and c1 in parallel; c1 answers at once (it has nothing yet), c0's
        # answers are held until c0 is finalized and collected, then say OBSOLETE
        sc.hold("b-c0", _to_c0("b", QueryData))  # type: ignore[arg-type]
        read = sc.start(b.read("k"))
        await sc.run_for(0.05)
        sc.release("transfer")
        await reconf
        await sc.run_for(0.05)
        sc.release("b-c0")
        await read

    sc = Scenario.play(servers=6, initial=3, script=script)
    assert sc.check().verdict == ("violation" if broken else "ok"), sc.check().explain()


def test_update_config_reads_the_successor_again_after_an_obsolete_answer() -> None:
    """Two reconfigurers: r1 moves c0 -> c1 (transfer held), r2 moves c1 -> c2 reading c0 and c1;
    c1 answers r2 before r1's transfer, c0 answers r2 only after r1 finalized c1 (OBSOLETE).
    r2 must read c1 again, or c2 starts without the value written into c0."""

    async def script(sc: Scenario) -> None:
        a, r1, r2 = sc.client("a"), sc.client("r1"), sc.client("r2")
        await a.write("k", b"v1")
        sc.hold("transfer", lambda m: m.sender == "r1" and isinstance(m.request, PutBatch))
        first = sc.start(r1.reconfig(Configuration("c1", tuple(sc.pool[3:6]))))
        await sc.run_for(0.05)
        sc.hold("r2-c0", _to_c0("r2", GetGroup))  # type: ignore[arg-type]
        second = sc.start(r2.reconfig(Configuration("c2", tuple(sc.pool[0:3]))))
        await sc.run_for(0.05)
        sc.release("transfer")
        await first
        await sc.run_for(0.05)
        sc.release("r2-c0")
        assert (await second).id == "c2"
        await sc.run_for(0.05)
        assert await sc.client("late").read("k") == b"v1"

    sc = Scenario.play(servers=6, initial=3, script=script)
    assert sc.check().verdict == "ok", sc.check().explain()
