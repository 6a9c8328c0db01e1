"""Garbage collection of obsolete configurations (docs/protocol.md §8.3): storage stays flat over
reconfigurations with ``gc``, and grows linearly without it; obsolete configurations answer
OBSOLETE and clients move on."""

from __future__ import annotations

import itertools

import pytest

from aresdsm.config import Configuration
from aresdsm.protocol.ops import OpSwitches
from aresdsm.sim.scenario import Scenario
from aresdsm.testing import broken_switches
from aresdsm.wire.messages import PutData

OBJECTS = 100
VALUE = 1000
RECONFIGS = 50


def _stored(sc: Scenario) -> int:
    total = 0
    for srv in sc.cluster.servers.values():
        assert srv.core is not None
        total += srv.core.stats().stored_bytes
    return total


@pytest.mark.parametrize("gc", [True, False])
def test_storage_after_many_reconfigurations(gc: bool) -> None:
    switches = OpSwitches(gc=gc)
    sizes: list[int] = []

    async def script(sc: Scenario) -> None:
        admin = sc.client("admin", switches)
        for i in range(OBJECTS):
            await admin.write(f"obj-{i}", bytes([i % 256]) * VALUE)
        await sc.run_for(0.01)
        sizes.append(_stored(sc))
        pools = [sc.pool[0:3], sc.pool[3:6], sc.pool[1:4]]
        for r in range(1, RECONFIGS + 1):
            await admin.reconfig(Configuration(f"c{r}", tuple(pools[r % 3])))
            await sc.run_for(0.01)  # the F entry reaches the servers outside the quorum too
            sizes.append(_stored(sc))
        for i in range(0, OBJECTS, 17):  # everything is still there
            assert await admin.read(f"obj-{i}") == bytes([i % 256]) * VALUE

    sc = Scenario.play(servers=6, initial=3, script=script)
    assert sc.check().verdict == "ok"
    one_config = sizes[0]
    assert one_config == 3 * OBJECTS * VALUE
    if gc:
        assert max(sizes) <= 1.1 * one_config, sizes
    else:
        # every configuration keeps its copy: one more full configuration per reconfiguration
        assert sizes[-1] == (RECONFIGS + 1) * one_config
        assert all(b - a == one_config for a, b in itertools.pairwise(sizes))


def test_a_late_client_is_redirected_by_obsolete_answers() -> None:
    """A client that still believes in c0 after c0 was collected gets OBSOLETE and moves on;
    with the broken switch it would finish its write on the obsolete configuration."""

    for broken in (False, True):
        switches = broken_switches(broken_finish_on_obsolete=broken)

        async def script(sc: Scenario, switches: OpSwitches = switches) -> None:
            admin = sc.client("admin", switches)
            late = sc.client("late", switches)
            await admin.write("k", b"old")
            await sc.run_for(0.01)
            # `late` asks c0 for the tag, but its put-data reaches c0 only after c0 is collected
            sc.hold("late-put", lambda m: m.sender == "late" and isinstance(m.request, PutData))
            write = sc.start(late.write("k", b"new"))
            await sc.run_for(0.01)
            await admin.reconfig(Configuration("c1", tuple(sc.pool[3:6])))
            await sc.run_for(0.01)
            sc.release("late-put")
            await write
            await sc.run_for(0.01)
            await admin.read("k")

        sc = Scenario.play(servers=6, initial=3, script=script)
        assert sc.check().verdict == ("violation" if broken else "ok"), sc.check().explain()
