"""The swarm's newer dimensions (issue 14): two processes under one client name, writer MACs
with a rogue reader, a chain cache reused across a redeployment, deletes -- each drawn per seed
(docs/testing.md), each with the check that sees what it breaks."""

from __future__ import annotations

from aresdsm.history import OpRecord
from aresdsm.sim import run_simulation
from aresdsm.sim.run import _shared_tags


def _write(op_id: int, client: str, value: str, tag: tuple[int, str]) -> OpRecord:
    return OpRecord(op_id, client, "write", "k", 0.0, 1.0, value=value, outcome="ok", tag=tag)


def test_one_tag_names_one_write() -> None:
    """§10.9 on a history: two ok writes of one key under one tag with different values fail
    the run; the same tag on another key, or a failed write, does not."""
    same = [_write(1, "c0", "a", (1, "c0.1")), _write(2, "c0+", "b", (1, "c0.1"))]
    assert _shared_tags(same) == [
        "§10.9: writes #1 (c0) and #2 (c0+) of k both returned tag (1, 'c0.1')"
    ]
    other_key = [same[0], OpRecord(2, "c0+", "write", "j", 0.0, 1.0, "b", "ok", tag=(1, "c0.1"))]
    failed = [same[0], OpRecord(2, "c0+", "write", "k", 0.0, 1.0, "b", "fail")]
    assert _shared_tags(other_key) == [] and _shared_tags(failed) == []


def test_twins_write_under_tags_of_their_own() -> None:
    """A second Store under client c0's name runs c0's very program at once; with the
    incarnation in every writer id their tags never collide (the broken variant's do, seed
    list in test_swarm.py)."""
    r = run_simulation(3, store=True, twins=True)
    assert r.ok, r.explain()
    assert any("client c0 runs twice" in e for e in r.events)
    twins = {h.client for h in r.history if h.kind == "write" and h.outcome == "ok"}
    assert {"c0", "c0+"} <= twins


def test_a_rogue_readers_forgeries_are_refused() -> None:
    """With writer MACs, a client without the write key reads and then puts a value of its own
    under a newer tag: every forgery is refused by the servers (the MAC check of the server
    shell, run by the simulated servers) and no read returns it."""
    refused = 0
    for seed in range(2):
        r = run_simulation(seed, macs=True, rogue=True)
        assert r.ok, r.explain()
        events = "\n".join(r.events)
        assert "accepted" not in "".join(e for e in r.events if "rogue: forged" in e)
        refused += events.count("refused (QuorumUnavailable)")
    assert refused > 0


def test_chain_cache_reused_across_a_redeployment() -> None:
    """A Store closes with its chain cache on disk, the cluster moves on and the servers outside
    the newest configuration are shut down; a new Store on the same cache file relocates
    (LATEST_CONFIG) before its first operation, and every operation is checked."""
    relocated = 0
    for seed in (0, 2):
        r = run_simulation(seed, store=True, retire=True, restarts=True, cache=True, reconfigs=2)
        assert r.ok, r.explain()
        at = next(i for i, e in enumerate(r.events) if "restarts from its chain cache" in e)
        relocated += any("cached->" in e and "LatestConfig" in e for e in r.events[at:])
        assert any(h.client == "cached" and h.outcome == "ok" for h in r.history)
    assert relocated == 2
