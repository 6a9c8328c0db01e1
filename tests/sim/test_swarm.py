"""The simulator over many seeds (docs/protocol.md §10), and the broken variants it must catch."""

from __future__ import annotations

from typing import Any

import pytest

from aresdsm.sim import BROKEN_VARIANTS, run_simulation

CI_SEEDS = 90
CHUNK = 30
"""Seeds got heavier with the hand-off profile and focus rules of issue 14 (1.77x the CPU per
seed): 90 + 2 x 56 of them cost what 160 + 200 did before."""


@pytest.mark.parametrize("first", range(0, CI_SEEDS, CHUNK))
def test_swarm_seeds_are_linearizable_and_keep_every_invariant(first: int) -> None:
    """All fault kinds on: delays, reordering, loss, duplication, partitions, crashes and
    restarts, client and reconfigurer crashes, concurrent reconfigurations (ABD <-> TREAS)."""
    shapes = set()
    for seed in range(first, first + CHUNK):
        r = run_simulation(seed)
        assert r.ok, r.explain()
        assert r.check.verdict == "ok"
        shapes.add((r.options.mode, r.options.treas, r.options.reconfigs))
    assert len(shapes) > 3  # swarm: the seeds really draw different shapes


@pytest.mark.parametrize("mode", ["ares2", "classic"])
def test_coverable_swarm(mode: str) -> None:
    """Coverable objects (§9.1) next to plain ones in every run, both modes, ABD and TREAS,
    with reconfigurations: each coverable object's history checks against the coverable model."""
    outcomes = set()
    for seed in range(20_000, 20_040):
        r = run_simulation(seed, mode=mode, coverable=True)
        assert r.ok, r.explain()
        outcomes |= {k.key for k in r.check.keys if k.key.startswith("cvr/") and k.ops > 0}
    assert outcomes == {"cvr/v0", "cvr/v1"}


@pytest.mark.parametrize("first", range(0, 56, 28))
@pytest.mark.parametrize("mode", ["ares2", "classic"])
def test_each_mode_swarm(mode: str, first: int) -> None:
    """56 seeds per mode (Ares II, and the original Ares) under the same fault model (each seed
    is heavier than it was: the hand-off adversary and profile, the Store, SQLite; `ares sim
    --seeds 10000` is the long run)."""
    for seed in range(10_000 + first, 10_000 + first + 28):
        r = run_simulation(seed, mode=mode)
        assert r.ok, r.explain()


ADVERSARY_RULES = (
    "cut (victim)",
    "hold read (fast)",
    "hold read-config (fast)",
    "hold read-config (other)",
    "hold put (victim)",
    "stall write",
    "stall queries",
    "hold transfer",
)
"""The hand-off adversary's focus rules (sim/adversary.py), as its event log names them."""


def test_every_fault_kind_and_both_modes_are_exercised() -> None:
    """The swarm's draws: every fault kind, both modes, and every focus rule of the hand-off
    adversary occur in the first 60 seeds (each rule is drawn per seed)."""
    seen: dict[str, int] = {}
    for seed in range(60):
        r = run_simulation(seed)
        text = "\n".join(r.events)
        for kind in ("crash", "restart", "partition", "heal", "installed", *ADVERSARY_RULES):
            if kind in text:
                seen[kind] = seen.get(kind, 0) + 1
        seen[r.options.mode or ""] = seen.get(r.options.mode or "", 0) + 1
        if r.options.loss:
            seen["loss"] = seen.get("loss", 0) + 1
        if r.options.eager:
            seen["eager"] = seen.get("eager", 0) + 1
    kinds = ("crash", "restart", "partition", "heal", "installed", "ares2", "classic", "loss")
    for kind in (*kinds, "eager", *ADVERSARY_RULES):
        assert seen.get(kind, 0) > 0, (kind, seen)


def test_real_codec_runs() -> None:
    for seed in range(10):
        r = run_simulation(seed, real_codec=True)
        assert r.ok, r.explain()


def test_same_seed_same_trace_and_different_seeds_differ() -> None:
    a = run_simulation(7)
    b = run_simulation(7)
    c = run_simulation(8)
    assert a.trace_hash == b.trace_hash
    assert a.history == b.history
    assert a.trace_hash != c.trace_hash
    # Store runs too (the Store's Paxos back-off draws from the global generator, which each run
    # seeds; seed 0 with this shape replayed differently before)
    shape: dict[str, Any] = {"store": True, "reconfigurers": 2, "reconfigs": 3}
    assert run_simulation(0, **shape).trace_hash == run_simulation(0, **shape).trace_hash


def test_failing_runs_print_a_replay_command() -> None:
    r = run_simulation(0, broken=("no-query-before-write",))
    assert not r.ok
    text = r.explain()
    assert "ares sim --seed 0" in text and "--broken no-query-before-write" in text
    # and the command's options reproduce the run exactly
    again = run_simulation(0, broken=("no-query-before-write",))
    assert again.trace_hash == r.trace_hash


# Every broken variant, found by the plain swarm -- `ares sim --seeds 300 --broken VARIANT` with
# default options, every option drawn from the seed, no scripted schedule: the first seed that
# finds each (docs/testing.md has the table; re-measure with that command when the simulator
# changes, and update both).
CAUGHT: list[tuple[str, dict[str, Any], list[int]]] = [
    ("cvr-unconditional", {}, [0]),
    ("gc-on-pending", {}, [0]),
    ("no-query-before-write", {}, [0]),
    ("skip-update-config", {}, [0]),
    ("skip-write-back", {}, [0]),
    ("fast-read-short", {}, [1]),
    ("forgets-accepts", {}, [1]),
    ("quorum-minus-one", {}, [1]),
    ("skip-value-mac", {}, [1]),
    ("paxos-own-value", {}, [6]),
    ("split-handoff", {}, [6]),
    ("no-requery-after-obsolete", {}, [8]),
    ("finish-on-obsolete", {}, [10]),
    ("ack-before-durable", {}, [11]),
    ("cvr-put-undecided", {}, [14]),
    ("plain-get-older-sources", {}, [16]),
    ("decode-below-k", {}, [22]),
    ("writer-ids-without-incarnation", {}, [26]),
    ("forgetful-acceptor", {}, [28]),
    ("cvr-no-freeze", {}, [37]),
    ("classic-ignores-ack-next", {}, [71]),
    ("no-config-write-back", {}, [107]),
    ("cvr-transfer-ignores-open", {}, [143]),
]
NOT_FOUND_BY_THE_SWARM: set[str] = {
    # needs --deletes, which the swarm does not draw yet: with it the correct protocol fails
    # (docs/testing.md); tests/sim/test_tombstone_floor.py scripts the variant
    "drop-tombstones-without-floor",
    # not found in 300 seeds since the client's scheduling changed (issue 18, merged last);
    # tests/sim/test_store_retry.py scripts it
    "retry-write-with-new-tag",
}
"""Variants the plain swarm does not find within 300 seeds (docs/testing.md says why): each
is caught by its scripted scenario."""


@pytest.mark.parametrize(
    ("variant", "shape", "seeds"), CAUGHT, ids=[f"{v}-{len(s)}" for v, s, _ in CAUGHT]
)
def test_broken_variant_is_caught_by_its_seeds(
    variant: str, shape: dict[str, Any], seeds: list[int]
) -> None:
    for seed in seeds:
        r = run_simulation(seed, broken=(variant,), **shape)
        assert not r.ok, f"--broken {variant} seed {seed} {shape} no longer caught"
        # the correct protocol passes the very same seed and shape
        good = run_simulation(seed, **shape)
        assert good.ok, good.explain()


def test_every_broken_variant_has_ci_seeds() -> None:
    assert {v for v, _, _ in CAUGHT} | NOT_FOUND_BY_THE_SWARM == set(BROKEN_VARIANTS)


def test_store_swarm_relocates_restarts_and_pages() -> None:
    """Seeds with the real Store: relocation after the old servers are shut down, restarts
    under a reused name, and a group of 300+ keys transferred over several pages."""
    seen: dict[str, int] = {}
    for seed in range(24):
        r = run_simulation(seed, store=True, retire=True, restarts=True, reconfigs=2)
        assert r.ok, r.explain()
        text = "\n".join(r.events)
        for what in ("retired", "LatestConfig", "restarting under the same name"):
            seen[what] = seen.get(what, 0) + (what in text)
    assert all(n > 0 for n in seen.values()), seen
    calm = {"crashes": False, "partitions": False, "client_crashes": False, "adversary": False}
    r = run_simulation(  # (seed 5's probe of a new member timed out once the draws changed)
        6, store=True, bulk_keys=320, reconfigs=1, reconfigurers=1, mode="ares2", keys=2, **calm
    )
    assert r.ok, r.explain()
    assert r.reconfigs_done >= 1
    assert sum(1 for h in r.history if h.key.startswith("bulk") and h.client == "final") == 320
    pages = sum(1 for e in r.events if "GetGroup" in e and "deliver r" in e)
    assert pages > (r.options.initial_servers or 0)  # some source server sent several pages
