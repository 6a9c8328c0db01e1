"""``ares sim``: run many seeds of the simulator, in parallel processes, and report."""

from __future__ import annotations

import multiprocessing
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import click
from rich.console import Console

from .run import BROKEN_VARIANTS, SimOptions, run_simulation

console = Console(highlight=False)


@dataclass(frozen=True)
class _Outcome:
    seed: int
    ok: bool
    ops: int
    failed_ops: int
    messages: int
    reconfigs: int
    trace_hash: str
    report: str


def _one(args: tuple[int, dict[str, Any]]) -> _Outcome:
    seed, overrides = args
    try:
        r = run_simulation(seed, **overrides)
    except Exception:  # an exception escaping a run is a bug: report the seed, keep going
        opts = SimOptions(seed=seed, **overrides).resolved()
        report = f"seed {seed} raised:\n{traceback.format_exc()}\nreplay:  {opts.command()}"
        return _Outcome(seed, False, 0, 0, 0, 0, "", report)
    return _Outcome(
        seed,
        r.ok,
        r.ops_ok + r.ops_failed,
        r.ops_failed,
        r.messages,
        r.reconfigs_done,
        r.trace_hash,
        "" if r.ok else r.explain(),
    )


@click.command("sim")
@click.option("--seed", type=int, help="Run this one seed (and print its trace hash).")
@click.option("--seeds", "count", type=int, default=100, show_default=True, help="How many seeds.")
@click.option("--start", type=int, default=0, show_default=True, help="First seed.")
@click.option("--jobs", type=int, default=0, help="Worker processes (default: CPU count).")
@click.option("--servers", type=int, help="Server pool size (default: drawn per seed).")
@click.option("--initial-servers", type=int)
@click.option("--clients", type=int)
@click.option("--ops", type=int, help="Operations per run.")
@click.option("--keys", type=int)
@click.option("--reconfigs", type=int, help="Reconfigurations per reconfigurer.")
@click.option("--reconfigurers", type=int)
@click.option("--mode", type=click.Choice(["ares2", "classic"]))
@click.option("--treas/--no-treas", default=None)
@click.option("--fast-read/--no-fast-read", default=None)
@click.option("--coverable/--no-coverable", default=None, help="Mix in coverable objects (§9.1).")
@click.option("--loss", type=float)
@click.option("--duplicate", type=float)
@click.option("--fsync-max-s", type=float)
@click.option("--fault-interval-s", type=float)
@click.option("--crashes/--no-crashes", default=None, help="Server crashes (default: per seed).")
@click.option("--partitions/--no-partitions", default=None)
@click.option("--client-crashes/--no-client-crashes", default=None)
@click.option("--park/--no-park", default=None, help="Partitions delay messages until healed.")
@click.option("--heavy-tail/--no-heavy-tail", default=None, help="Pareto message delays.")
@click.option(
    "--adversary/--no-adversary",
    default=None,
    help="Hold hand-off messages on chosen servers until a later finalization.",
)
@click.option("--long-holds/--no-long-holds", default=None, help="Hold a few messages 30-600 ms.")
@click.option("--store/--no-store", default=None, help="Clients are real Stores.")
@click.option("--mixed/--no-mixed", default=None, help="Every other client has piggyback off.")
@click.option(
    "--retire/--no-retire", default=None, help="Shut down old servers after reconfiguring."
)
@click.option("--restarts/--no-restarts", default=None, help="Store clients restart, same name.")
@click.option("--cache/--no-cache", default=None, help="A Store restarts from its chain cache.")
@click.option("--deletes/--no-deletes", default=None, help="A key written and deleted.")
@click.option("--macs/--no-macs", default=None, help="Writers sign values; servers check (§13).")
@click.option("--rogue/--no-rogue", default=None, help="A reader forges a value (with --macs).")
@click.option("--twins/--no-twins", default=None, help="Two Store processes under one name.")
@click.option("--bulk-keys", type=int, help="Write this many more keys first (Ares II).")
@click.option("--sqlite/--no-sqlite", default=None, help="Servers also use the SQLite engine.")
@click.option(
    "--eager/--no-eager",
    default=None,
    help="Reconfigurers propose on top of a pending configuration (the original Ares rule).",
)
@click.option("--focus/--no-focus", default=None, help="The adversary focuses on one hand-off.")
@click.option("--focus-chance", type=float, help="Chance of each of the adversary's focus holds.")
@click.option(
    "--others-put-now/--no-others-put-now",
    default=None,
    help="Adversary focus rule: servers neither fast nor victims answer writes at once.",
)
@click.option("--reconfig-cuts/--no-reconfig-cuts", default=None, help="Adversary: cut links.")
@click.option("--stall-writes/--no-stall-writes", default=None, help="Adversary focus rule.")
@click.option("--cut-queries/--no-cut-queries", default=None, help="Adversary focus rule.")
@click.option("--stagger-s", type=float, help="Reconfigurer i starts i times this late.")
@click.option("--real-codec", is_flag=True, help="Send every message through the wire codec.")
@click.option(
    "--clients-finalize/--no-clients-finalize",
    default=True,
    help="Data clients write discovered F entries back as F (admins) or as P (other roles).",
)
@click.option(
    "--broken",
    multiple=True,
    type=click.Choice(BROKEN_VARIANTS),
    help="Test only: run a deliberately broken protocol variant (must be caught).",
)
def sim(seed: int | None, count: int, start: int, jobs: int, **options: Any) -> None:
    """Run the deterministic simulator over many seeds; exit 1 on any violation."""
    overrides = {k: v for k, v in options.items() if v is not None}
    overrides["broken"] = tuple(overrides.get("broken", ()))
    try:
        SimOptions(**overrides)
    except TypeError as e:  # pragma: no cover - options mirror SimOptions
        raise click.UsageError(str(e)) from None
    seeds = [seed] if seed is not None else list(range(start, start + count))
    if count < 1:
        raise click.BadParameter("--seeds must be at least 1")
    t0 = time.perf_counter()
    outcomes = _run_all(seeds, overrides, jobs)
    elapsed = time.perf_counter() - t0
    failures = [o for o in outcomes if not o.ok]
    for o in failures[:10]:
        console.print(f"[red]{o.report}[/]\n")
    ops = sum(o.ops for o in outcomes)
    console.print(
        f"{len(outcomes)} seeds, {ops} operations ({sum(o.failed_ops for o in outcomes)} failed "
        f"cleanly), {sum(o.reconfigs for o in outcomes)} reconfigurations, "
        f"{sum(o.messages for o in outcomes)} messages in {elapsed:.1f} s: "
        + (
            "[green]all linearizable, all invariants hold[/]"
            if not failures
            else f"[red]{len(failures)} failing seeds[/]: {[o.seed for o in failures][:20]}"
        )
    )
    if seed is not None:
        console.print(f"trace hash {outcomes[0].trace_hash}")
    sys.exit(1 if failures else 0)


def _run_all(seeds: list[int], overrides: dict[str, Any], jobs: int) -> list[_Outcome]:
    work = [(s, overrides) for s in seeds]
    workers = jobs or multiprocessing.cpu_count()
    if workers <= 1 or len(seeds) < 8:
        return [_one(w) for w in work]
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        return list(pool.map(_one, work, chunksize=max(1, len(work) // (workers * 8))))
