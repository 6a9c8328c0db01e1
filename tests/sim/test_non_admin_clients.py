"""Clients without the admin role write discovered F entries back as P entries, never as F
(docs/security.md: finalizing is the reconfigurer's right; `OpSwitches.write_back_final` off).
The simulator's swarm, with every fault, stays linearizable and keeps its invariants with such
clients in both modes -- the classic one discovers with read-config, so its write-backs are the
ones this changes."""

from __future__ import annotations

import pytest

from aresdsm.sim import run_simulation


@pytest.mark.parametrize("mode", ["ares2", "classic"])
def test_swarm_with_clients_that_may_not_finalize(mode: str) -> None:
    reconfigured = 0
    for seed in range(20_000, 20_040):
        r = run_simulation(seed, mode=mode, clients_finalize=False)
        assert r.ok, r.explain()
        reconfigured += bool(r.options.reconfigs)
    assert reconfigured > 8
