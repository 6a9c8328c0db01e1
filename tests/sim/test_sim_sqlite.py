"""The real SQLite engine in the simulator: every simulated commit is committed to it (the
virtual commit time is the durable point) and a restart recovers from what it loads, checked
against the simulator's model of the disk."""

from __future__ import annotations

import pytest

from aresdsm.sim import run_simulation
from aresdsm.storage.base import Delete
from aresdsm.storage.sqlite import SqliteStorage


def test_sqlite_seeds_recover_from_the_engine() -> None:
    restarts = 0
    for seed in (0, 3, 4):
        r = run_simulation(seed, sqlite=True, crashes=True)
        assert r.ok, r.explain()
        restarts += sum(1 for e in r.events if " restart " in e)
    assert restarts > 0


def test_an_engine_that_loses_deletes_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    real = SqliteStorage._commit

    def lossy(self: SqliteStorage, batch: list) -> None:  # type: ignore[type-arg]
        real(self, [w for w in batch if not isinstance(w, Delete)])

    monkeypatch.setattr(SqliteStorage, "_commit", lossy)
    for seed in range(40):
        r = run_simulation(seed, sqlite=True, crashes=True, mode="ares2", reconfigs=2)
        if any("SQLite engine recovered other records" in f for f in r.invariant_failures):
            assert not r.ok
            return
    pytest.fail("an engine that drops deletes went unnoticed in 40 seeds")
