"""Coverable register (docs/protocol.md §9.1): the dangerous schedules, scripted.

Every scenario checks the recorded history against the coverable sequential spec (at most one
write per base takes effect; a stale answer is the current version; a write that failed may or
may not have taken effect). Each broken variant is shown caught by the same schedule.
"""

from __future__ import annotations

import contextlib

import pytest

from aresdsm.config import Configuration
from aresdsm.errors import CoverableConflict
from aresdsm.protocol.ops import CLASSIC, OpSwitches
from aresdsm.protocol.server_core import ServerSwitches
from aresdsm.sim.scenario import Scenario
from aresdsm.tags import TAG0
from aresdsm.testing import broken_switches
from aresdsm.wire.messages import CvrAccept, CvrPrepare, GetGroup, PutData, QueryData

MODES = {"ares2": OpSwitches(), "classic": CLASSIC}


@pytest.mark.parametrize("mode", sorted(MODES))
def test_two_writers_one_base(mode: str) -> None:
    """Two writers on TAG0 at once: exactly one ok, the other stale with the winner's version."""
    sw = MODES[mode]
    outs = []

    async def script(sc: Scenario) -> None:
        a, b, r = sc.client("a", sw), sc.client("b", sw), sc.client("r", sw)
        ta = sc.start(a.cvr_write("k", b"A", TAG0))
        tb = sc.start(b.cvr_write("k", b"B", TAG0))
        outs.extend([await ta, await tb])
        await r.read_tagged("k")
        win = next(o for o in outs if o.ok)
        again = await a.cvr_write("k", b"A2", win.tag)
        assert again.ok and again.tag.z == 2
        await r.read_tagged("k")

    sc = Scenario.play(servers=3, script=script)
    assert sorted(o.ok for o in outs) == [False, True]
    loser, winner = sorted(outs, key=lambda o: o.ok)
    assert (loser.tag, loser.value) == (winner.tag, winner.value)
    assert sc.check_cvr("k").verdict == "ok"


def test_naive_unconditional_write_is_caught() -> None:
    """The naive CoARES write (query, then put the successor): both writers of one base win."""
    sw = broken_switches(broken_cvr_unconditional=True)
    outs = []

    async def script(sc: Scenario) -> None:
        a, b, r = sc.client("a", sw), sc.client("b", sw), sc.client("r", sw)
        ta = sc.start(a.cvr_write("k", b"A", TAG0))
        tb = sc.start(b.cvr_write("k", b"B", TAG0))
        outs.extend([await ta, await tb])
        await r.read_tagged("k")

    sc = Scenario.play(servers=3, script=script)
    assert [o.ok for o in outs] == [True, True]
    assert sc.check_cvr("k").verdict == "violation"


@pytest.mark.parametrize("broken", [False, True])
def test_reader_never_returns_an_undecided_value(broken: bool) -> None:
    """z prepares first; a outvotes it and decides (1, a) on s1 s2. With the broken switch z's
    value was put on s0 before it was decided: a reader of {s0, s1} returns it after a's ok."""
    sw = broken_switches(broken_cvr_put_undecided=broken)

    async def script(sc: Scenario) -> None:
        z, a, r = sc.client("z", sw), sc.client("a", sw), sc.client("r", sw)
        sc.hold(
            "z-put",
            lambda m: m.sender == "z" and isinstance(m.request, PutData) and m.server != "s0",
        )
        sc.hold("z-acc", lambda m: m.sender == "z" and isinstance(m.request, CvrAccept))
        tz = sc.start(z.cvr_write("k", b"Z", TAG0))
        await sc.run_for(0.05)
        sc.hold("a-s0", lambda m: m.sender == "a" and m.server == "s0")
        out = await a.cvr_write("k", b"A", TAG0)
        assert out.ok
        sc.hold("r-s2", lambda m: m.sender == "r" and m.server == "s2")
        await r.read_tagged("k")
        for rule in ("z-put", "z-acc", "a-s0", "r-s2"):
            sc.release(rule)
        with contextlib.suppress(CoverableConflict):
            await tz
        await r.read_tagged("k")

    sc = Scenario.play(servers=3, script=script)
    assert sc.check_cvr("k").verdict == ("violation" if broken else "ok")


@pytest.mark.parametrize(
    ("variant", "caught"),
    [
        ("correct", False),
        ("correct_late_accept", False),
        ("transfer_ignores_open", True),
        ("no_freeze", True),
    ],
)
def test_reconfiguration_in_the_middle_of_a_cvr_write(variant: str, caught: bool) -> None:
    """a's value is decided in c0 (accepted by s0 s1) but its put is held; r reconfigures c0 ->
    c1; b writes on TAG0 in c1. The transfer must carry a's accepted value (b answers stale)
    and c0's acceptors must be frozen once they know c1 (else a decides after the transfer:
    variant no_freeze holds a's accepts until the transfer has read c0, without GC)."""
    late = variant in ("no_freeze", "correct_late_accept")
    sw = broken_switches(
        broken_cvr_transfer_ignores_open=variant == "transfer_ignores_open",
        gc=not late,  # with GC, c0 answers OBSOLETE: no freeze needed after it
    )
    server_sw = ServerSwitches(broken_cvr_no_freeze=variant == "no_freeze")
    outs = []

    async def script(sc: Scenario) -> None:
        for s in sc.cluster.servers.values():
            s.switches = server_sw
            s.core.switches = server_sw
        a, b = sc.client("a", sw), sc.client("b", sw)
        r, q = sc.client("r", sw), sc.client("q", sw)
        sc.hold("a-put", lambda m: m.sender == "a" and isinstance(m.request, PutData))
        sc.hold("a-s2", lambda m: m.sender == "a" and m.server == "s2")
        if late:  # a's accepts arrive after the transfer read c0
            sc.hold("a-acc", lambda m: m.sender == "a" and isinstance(m.request, CvrAccept))
        ta = sc.start(a.cvr_write("k", b"A", TAG0))
        await sc.run_for(0.05)
        sc.hold(
            "r-s2",
            lambda m: m.sender == "r" and isinstance(m.request, GetGroup) and m.server == "s2",
        )
        await r.reconfig(Configuration("c1", tuple(sc.pool[3:6])))
        if late:
            sc.release("a-acc")
            await sc.run_for(0.05)
        await b.read_tagged("k")  # b learns c1
        outs.append(await b.cvr_write("k", b"B", TAG0))
        for rule in ("a-put", "a-s2", "r-s2"):
            sc.release(rule)
        with contextlib.suppress(CoverableConflict):
            outs.append(await ta)
        await q.read_tagged("k")

    sc = Scenario.play(servers=6, initial=3, script=script)
    result = sc.check_cvr("k")
    assert result.verdict == ("violation" if caught else "ok"), result
    if not caught:
        assert not outs[0].ok and outs[0].value is not None
        assert bytes(outs[0].value.data) == b"A"


@pytest.mark.parametrize("mode", sorted(MODES))
def test_writer_crash_midway_then_gc(mode: str) -> None:
    """A writer whose accept reached one server only and who then stops for good: another
    writer completes or overrides its level; a reconfiguration (with GC in Ares II) later keeps
    exactly what was decided."""
    sw = MODES[mode]

    async def script(sc: Scenario) -> None:
        a, b, r, q = (sc.client(n, sw) for n in "abrq")
        sc.hold("a-half", lambda m: m.sender == "a" and m.server != "s0")
        sc.start(a.cvr_write("k", b"A", TAG0))  # never completes: a "crashed"
        await sc.run_for(0.05)
        sc.hold("a-all", lambda m: m.sender == "a")
        sc.release("a-half")  # dropped for good: a's requests are all held
        out = await b.cvr_write("k", b"B", TAG0)
        await r.reconfig(Configuration("c1", tuple(sc.pool[3:6])))
        tag, value = await q.read_tagged("k")
        assert out.value is not None
        assert (tag, value) == (out.tag, bytes(out.value.data))
        nxt = await b.cvr_write("k", b"B2", tag)
        assert nxt.ok
        await q.read_tagged("k")

    sc = Scenario.play(servers=6, initial=3, script=script)
    assert sc.check_cvr("k").verdict == "ok"


@pytest.mark.parametrize("dap", ["abd", "treas"])
def test_round_counts(dap: str) -> None:
    """Uncontended coverable write: 3 rounds (prepare, accept, put); a stale answer: the
    prepare and a read (1 round when the quorum agrees)."""
    counts: dict[str, int] = {}

    async def script(sc: Scenario) -> None:
        a, b = sc.client("a"), sc.client("b")
        seen: list[str] = []
        original = sc.cluster.send

        def count(client, server, rid, req, on_reply):  # type: ignore[no-untyped-def]
            if client in ("a", "b") and server == "s0":
                seen.append(type(req).__name__)
            original(client, server, rid, req, on_reply)

        sc.cluster.send = count  # type: ignore[method-assign]
        await a.cvr_write("k", b"A", TAG0)
        counts["ok"] = len(seen)
        seen.clear()
        await b.cvr_write("k", b"B", TAG0)
        counts["stale"] = len(seen)
        assert CvrPrepare.__name__ in seen

    c0 = "treas" if dap == "treas" else "abd"
    sc = Scenario.play(servers=5 if c0 == "treas" else 3, script=script, dap=c0)
    assert counts == {"ok": 3, "stale": 2}
    assert sc.check_cvr("k").verdict == "ok"


def test_a_stale_answer_is_newer_than_its_base() -> None:
    """Level 1 is decided and put on s0 only (a's other puts held). b's prepare sees it on s0,
    but b's read asks s1 and s2, which still hold TAG0: answering stale with TAG0 -- its own
    base -- is not linearizable (found by the swarm, seed 97 with reconfigurations). b asks
    again until the version shows, here once a's put goes on."""
    outs = []

    async def script(sc: Scenario) -> None:
        a, b, r = sc.client("a"), sc.client("b"), sc.client("r")
        sc.hold(
            "a-put",
            lambda m: m.sender == "a" and isinstance(m.request, PutData) and m.server != "s0",
        )
        ta = sc.start(a.cvr_write("k", b"A", TAG0))
        await sc.run_for(0.05)
        sc.hold(
            "b-s2",
            lambda m: m.sender == "b" and isinstance(m.request, CvrPrepare) and m.server == "s2",
        )
        sc.hold(
            "b-read-s0",
            lambda m: m.sender == "b" and isinstance(m.request, QueryData) and m.server == "s0",
        )
        tb = sc.start(b.cvr_write("k", b"B", TAG0))
        await sc.run_for(0.01)
        sc.release("a-put")
        outs.extend([await ta, await tb])
        sc.release("b-s2")
        sc.release("b-read-s0")
        await r.read_tagged("k")

    sc = Scenario.play(servers=3, script=script)
    a_out, b_out = outs
    assert a_out.ok and not b_out.ok and b_out.tag == a_out.tag
    assert sc.check_cvr("k").verdict == "ok"
