"""Scripted schedules for the interleavings that matter; each broken switch is caught exactly
where the spec says it must be, and the correct protocol survives the same schedule."""

from __future__ import annotations

import pytest

from aresdsm.config import Configuration
from aresdsm.protocol.ops import CLASSIC, OpSwitches
from aresdsm.sim.scenario import Message, Scenario
from aresdsm.testing import broken_switches
from aresdsm.wire.messages import GetGroup, PutData, ReadConfig, WriteConfig


def to(sender: str, *servers: str, kind: type | None = None):  # type: ignore[no-untyped-def]
    def rule(m: Message) -> bool:
        return (
            m.sender == sender
            and m.server in servers
            and (kind is None or isinstance(m.request, kind))
        )

    return rule


@pytest.mark.parametrize("broken", [False, True])
def test_section_8_2_hand_off_counterexample(broken: bool) -> None:
    """docs/protocol.md §8.2, step by step: put-config and get-data split (the rule off), a write
    that completed with only ⊥ answers is lost by the reconfiguration; with SET_NEXT_AND_GET,
    never."""
    switches = broken_switches(broken_split_handoff=broken)

    async def script(sc: Scenario) -> None:
        w = sc.client("w", switches)
        r = sc.client("r", switches)
        d = Configuration("d", tuple(sc.pool[3:6]))
        # 1. W's PUT_DATA(t) reaches s0 only (s1 held until step 4, s2 for ever)
        sc.hold("w-put", to("w", "s1", kind=PutData))
        sc.hold("w-put-s2", to("w", "s2", kind=PutData))
        write = sc.start(w.write("k", b"t"))
        await sc.run_for(0.05)
        # 2./3. R: its put-config and SET_NEXT_AND_GET never reach s0 when split, and its
        # reads are answered by s1, s2; nothing of R reaches s1 but what step 3 needs
        sc.hold("r-config-s1", to("r", "s1", kind=WriteConfig))
        sc.hold("r-group-s0", to("r", "s0", kind=GetGroup))
        await r.reconfig(d)
        # 4. W's PUT_DATA reaches s1 now: ⊥ unless s1 processed R's SET_NEXT_AND_GET
        sc.release("w-put")
        await write
        await sc.run_for(0.01)
        # 5. a read that starts at the finalized d
        await r.read("k")

    sc = Scenario.play(servers=6, initial=3, script=script)
    verdict = sc.check().verdict
    assert verdict == ("violation" if broken else "ok"), sc.check().explain()


@pytest.mark.parametrize("broken", [False, True])
def test_classic_discovery_needs_its_write_back(broken: bool) -> None:
    """docs/protocol.md §6/§7.2: a successor found on a minority must be written back before use."""
    switches = broken_switches(piggyback=False, fast_read=False, broken_no_config_write_back=broken)

    async def script(sc: Scenario) -> None:
        rc = sc.client("rc", switches)
        a = sc.client("a", switches)
        b = sc.client("b", switches)
        d = Configuration("d", tuple(sc.pool[3:6]))
        # the reconfigurer's put-config (d, P) reaches s0 only, then it crashes
        sc.hold("rc-config", to("rc", "s1", "s2", kind=WriteConfig))
        task = sc.start(rc.reconfig(d))
        await sc.run_for(0.2)
        task.cancel()
        # A discovers d through {s0, s1} and writes into d
        sc.hold("a-s2", to("a", "s2", kind=ReadConfig))
        await a.write("k", b"v1")
        await sc.run_for(0.01)
        # B discovers through {s1, s2}
        sc.hold("b-s0", to("b", "s0", kind=ReadConfig))
        await b.read("k")

    sc = Scenario.play(servers=6, initial=3, script=script)
    assert sc.check().verdict == ("violation" if broken else "ok"), sc.check().explain()


@pytest.mark.parametrize("switches", [CLASSIC, OpSwitches()], ids=["classic", "ares2"])
@pytest.mark.parametrize("broken", [False, True])
def test_reads_must_write_back(broken: bool, switches: OpSwitches) -> None:
    """ABD (§4.1): a read that returns a value seen on a minority without writing it back lets a
    later read return an older value (new/old inversion)."""
    sw = broken_switches(
        piggyback=switches.piggyback, fast_read=switches.fast_read, broken_skip_write_back=broken
    )

    async def script(sc: Scenario) -> None:
        w = sc.client("w", sw)
        a = sc.client("a", sw)
        b = sc.client("b", sw)
        sc.hold("w-put", to("w", "s1", "s2", kind=PutData))
        sc.start(w.write("k", b"new"))  # stays in flight: only s0 has it
        await sc.run_for(0.05)
        sc.hold("a-s2", to("a", "s2"))
        assert await a.read("k") == b"new"
        await sc.run_for(0.01)
        sc.hold("b-s0", to("b", "s0"))
        await b.read("k")

    sc = Scenario.play(servers=3, script=script)
    assert sc.check().verdict == ("violation" if broken else "ok"), sc.check().explain()
