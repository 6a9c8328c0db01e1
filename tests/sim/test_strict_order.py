"""Histories order operations strictly in real time (issue: in virtual time
``await op1(); await op2()`` gave op2 an invocation time *equal* to op1's completion, which the
checker -- rightly, for times from different clocks -- reads as concurrent, so a scripted
scenario without gaps passed when it should have failed). Every recorder now stamps events with
:class:`aresdsm.history.StrictClock`."""

from __future__ import annotations

import io
import threading

from aresdsm.client import HistoryRecorder
from aresdsm.history import StrictClock
from aresdsm.sim import run_simulation
from aresdsm.sim.scenario import Message, Scenario
from aresdsm.testing import broken_switches
from aresdsm.wire.messages import PutData


def test_strict_clock_never_repeats_a_stamp_of_a_stopped_clock() -> None:
    stamps = StrictClock(lambda: 5.0)
    a, b, c = stamps(), stamps(), stamps()
    assert 5.0 == a < b < c < 5.0 + 1e-12
    moving = [1.0, 1.0, 3.0, 2.0]  # a clock that stands still, then jumps back
    clock = StrictClock(lambda: moving.pop(0))
    got = [clock() for _ in range(4)]
    assert got == sorted(got) and len(set(got)) == 4 and got[2] == 3.0


def test_strict_clock_is_thread_safe() -> None:
    clock = StrictClock(lambda: 0.0)
    out: list[float] = []

    def work() -> None:
        out.extend(clock() for _ in range(500))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(out)) == 2000


def test_real_client_recorder_stamps_strictly() -> None:
    rec = HistoryRecorder(io.BytesIO(), clock=lambda: 42.0)
    first, second = rec.now(), rec.now()
    assert first < second


def test_back_to_back_operations_without_a_gap_are_ordered() -> None:
    """Reads that skip their write-back (test-only switch): a reads the new value from s0 and s1,
    b -- invoked at the very instant a returned -- reads the old one from s1 and s2. That is a
    new/old inversion only if b is ordered after a; with equal stamps it passed as ok."""
    sw = broken_switches(broken_skip_write_back=True)

    def to(sender: str, *servers: str, kind: type | None = None):  # type: ignore[no-untyped-def]
        def rule(m: Message) -> bool:
            return (
                m.sender == sender
                and m.server in servers
                and (kind is None or isinstance(m.request, kind))
            )

        return rule

    async def script(sc: Scenario) -> None:
        w, a, b = sc.client("w", sw), sc.client("a", sw), sc.client("b", sw)
        sc.hold("w-put", to("w", "s1", "s2", kind=PutData))
        sc.start(w.write("k", b"new"))  # stays in flight: only s0 has it
        await sc.run_for(0.05)
        sc.hold("a-s2", to("a", "s2"))
        sc.hold("b-s0", to("b", "s0"))
        assert await a.read("k") == b"new"
        assert await b.read("k") == b""  # no gap: invoked at a's completion instant

    sc = Scenario.play(servers=3, script=script)
    ra, rb = sc.history[1], sc.history[2]
    assert (ra.client, rb.client) == ("a", "b")
    assert ra.complete_s is not None and rb.invoke_s > ra.complete_s
    assert rb.invoke_s - ra.complete_s < 1e-12  # the same virtual instant, a tie broken
    assert sc.check().verdict == "violation", sc.check().explain()


def test_simulated_histories_are_strictly_stamped() -> None:
    r = run_simulation(3)
    stamps = [t for rec in r.history for t in (rec.invoke_s, rec.complete_s) if t is not None]
    assert len(set(stamps)) == len(stamps)
