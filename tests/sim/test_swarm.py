"""The simulator over many seeds (docs/protocol.md §10), and the broken variants it must catch."""

from __future__ import annotations

from typing import Any

import pytest

from aresdsm.sim import run_simulation

CI_SEEDS = 320
CHUNK = 40


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


@pytest.mark.parametrize("first", range(0, 300, 100))
@pytest.mark.parametrize("mode", ["ares2", "classic"])
def test_each_mode_swarm(mode: str, first: int) -> None:
    """300 seeds per mode (Ares II, and the original Ares) under the same fault model."""
    for seed in range(10_000 + first, 10_000 + first + 100):
        r = run_simulation(seed, mode=mode)
        assert r.ok, r.explain()


def test_every_fault_kind_and_both_modes_are_exercised() -> None:
    seen: dict[str, int] = {}
    for seed in range(60):
        r = run_simulation(seed)
        text = "\n".join(r.events)
        for kind in ("crash", "restart", "partition", "heal", "installed"):
            if kind in text:
                seen[kind] = seen.get(kind, 0) + 1
        seen[r.options.mode or ""] = seen.get(r.options.mode or "", 0) + 1
        if r.options.loss:
            seen["loss"] = seen.get("loss", 0) + 1
    for kind in ("crash", "restart", "partition", "heal", "installed", "ares2", "classic", "loss"):
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


def test_failing_runs_print_a_replay_command() -> None:
    r = run_simulation(0, broken=("no-query-before-write",))
    assert not r.ok
    text = r.explain()
    assert "ares sim --seed 0" in text and "--broken no-query-before-write" in text
    # and the command's options reproduce the run exactly
    again = run_simulation(0, broken=("no-query-before-write",))
    assert again.trace_hash == r.trace_hash


BROKEN: list[tuple[str, dict[str, Any], int]] = [
    # (variant, workload shape, seed budget)
    ("skip-write-back", {}, 400),
    ("ack-before-durable", {"reconfigs": 0}, 400),
    ("ack-before-durable", {}, 100),
    ("no-query-before-write", {}, 20),
    ("quorum-minus-one", {}, 20),
    ("skip-update-config", {}, 50),
    ("forgetful-acceptor", {}, 50),
    ("forgets-accepts", {}, 50),
    ("decode-below-k", {"treas": True}, 100),
    ("gc-on-pending", {}, 50),
    ("fast-read-short", {}, 50),
    # needs two reconfigurations in flight and a client between them: rare (5 in 3,000 seeds of
    # this shape; the first at seed 1028); tests/sim/test_obsolete_race.py scripts it exactly
    (
        "no-requery-after-obsolete",
        {"mode": "ares2", "reconfigurers": 2, "reconfigs": 3},
        3000,
    ),
    # coverable registers (§9.1); tests/sim/test_coverable.py scripts each exactly, also
    # cvr-transfer-ignores-open and cvr-no-freeze, which need a coverable write decided but not
    # put across a reconfiguration: the swarm did not meet that in 100 seeds
    ("cvr-unconditional", {"coverable": True}, 20),
    ("cvr-put-undecided", {"coverable": True}, 100),
]


@pytest.mark.parametrize(
    ("variant", "shape", "budget"), BROKEN, ids=[f"{v}-{len(s)}" for v, s, _ in BROKEN]
)
def test_broken_variant_is_caught(variant: str, shape: dict[str, Any], budget: int) -> None:
    for seed in range(budget):
        r = run_simulation(seed, broken=(variant,), **shape)
        if not r.ok:
            # the correct protocol passes the very same seed and shape
            good = run_simulation(seed, **shape)
            assert good.ok, good.explain()
            return
    pytest.fail(f"broken variant {variant} not caught in {budget} seeds")
