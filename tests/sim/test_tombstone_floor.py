"""Deleted objects across reconfiguration (docs/protocol.md §8.4 "Deleted objects").

Tombstones are transferred like any value. The earlier rule dropped them (and set a tag floor
in the new configuration); the test-only ``broken_drop_tombstones_without_floor`` drops them
without the floor. The schedule: a key is written and deleted in c0; r reconfigures c0 -> c1
(with GC off, so c0 keeps answering: the state of a configuration not yet collected
everywhere). r, whose chain now starts at c1, writes the key again; then a client whose chain
still starts at c0 reads it. It sees the tombstone in c0 and r's write in c1, and must return
the write. With the tombstone dropped and no floor, r's write gets the tag (1, r) -- below the
tombstone's (2, ...) -- and the read returns "deleted" after the write completed.

``test_a_dropped_tombstone_lets_an_older_value_win``: why the floor was not enough (seeds the
swarm found with ``--deletes``): a value written in c0, then overwritten and deleted in later
configurations; the tombstone dropped, a reader whose chain still starts at c0 took c0's old
value as the newest pair and returned it after the delete.
"""

from __future__ import annotations

import pytest

from aresdsm.config import Configuration
from aresdsm.sim import run_simulation
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
        # the tombstone is in c1's servers (dropped only by the broken variant)
        held = []
        for s in sc.pool[3:6]:
            core = sc.cluster.servers[s.id].core
            assert core is not None
            held.append(any(key[1] == "c1" for key in (*core.registers, *core.lists)))
        assert not any(held) if broken else any(held)
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


@pytest.mark.parametrize("seed", [68, 116])
def test_a_dropped_tombstone_lets_an_older_value_win(seed: int) -> None:
    """Failed on the rule that dropped tombstones (with its floor): the final read returned
    d.1, written before a completed delete."""
    r = run_simulation(seed, deletes=True)
    assert r.ok, r.explain()
