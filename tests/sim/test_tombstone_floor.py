"""Tombstones are dropped by reconfiguration, and the new configuration gets a tag floor
(docs/protocol.md §8.4 "Deleted objects").

The schedule: a key is written and deleted in c0; r reconfigures c0 -> c1 (with GC off, so c0
keeps answering: the state of a configuration not yet collected everywhere); the tombstone is not
transferred. r, whose chain now starts at c1, writes the key again; then a client whose chain
still starts at c0 reads it. It sees the tombstone in c0 and r's write in c1, and must return
the write. Without the floor (test-only ``broken_drop_tombstones_without_floor``) r's write gets
the tag (1, r) -- below the tombstone's (2, ...) -- and the read returns "deleted" after the write
completed: the checker reports the violation.
"""

from __future__ import annotations

import pytest

from aresdsm.config import Configuration
from aresdsm.sim.scenario import DELETED, Scenario
from aresdsm.testing import broken_switches


@pytest.mark.parametrize("dap", ["abd", "treas"])
@pytest.mark.parametrize("broken", [False, True])
def test_write_after_dropped_tombstone_beats_it(broken: bool, dap: str) -> None:
    switches = broken_switches(gc=False, broken_drop_tombstones_without_floor=broken)
    seen: list[bytes] = []

    async def script(sc: Scenario) -> None:
        a, r = sc.client("a", switches), sc.client("r", switches)
        await a.write("k", b"v1")
        await a.delete("k")
        c1 = await r.reconfig(Configuration("c1", tuple(sc.pool[3:6]), dap=dap))
        assert c1.id == "c1"
        # the tombstone is gone from c1's servers
        for s in sc.pool[3:6]:
            core = sc.cluster.servers[s.id].core
            assert core is not None
            assert not any(key[1] == "c1" for key in (*core.registers, *core.lists))
        await r.write("k", b"v2")
        seen.append(await sc.client("old", switches).read("k"))

    sc = Scenario.play(servers=6, initial=3, script=script, dap=dap)
    result = sc.check()
    if broken:
        assert result.verdict == "violation", result.explain()
        assert sc.history[-1].value == DELETED
    else:
        assert result.verdict == "ok", result.explain()
        assert seen == [b"v2"]
