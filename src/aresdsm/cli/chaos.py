"""``ares chaos``: real processes under a nemesis (issue 14; the work is in aresdsm.chaos)."""

from __future__ import annotations

import sys

import click
from rich.markup import escape

from .. import runtime
from .common import console, main


@main.command()
@click.option("--duration-s", default=30.0, show_default=True, help="How long the nemesis runs.")
@click.option("--seed", default=1, show_default=True, help="Fixes the nemesis's choices.")
@click.option("--servers", default=3, show_default=True, help="Servers of the initial config.")
@click.option("--spares", default=3, show_default=True, help="Servers to move the cluster onto.")
@click.option("--clients", default=4, show_default=True, help="Client tasks recording a history.")
@click.option("--keys", default=3, show_default=True, help="Objects the clients share.")
@click.option(
    "--faults",
    default="all",
    show_default=True,
    help="Comma-separated fault kinds, 'all' or 'none' (see docs/testing.md).",
)
@click.option("--dap", type=click.Choice(["abd", "treas"]), default="abd", show_default=True)
@click.option("--timeout-s", default=1.0, show_default=True, help="Client round deadline.")
@click.option(
    "--storage", type=click.Choice(["sqlite", "memory"]), default="sqlite", show_default=True
)
@click.option(
    "--cluster",
    "cluster_path",
    type=click.Path(exists=True, dir_okay=False),
    help="Burn in this cluster instead of a local one (client-side faults only).",
)
@click.option(
    "--keep", type=click.Path(file_okay=False), help="Keep data, logs and the history in DIR."
)
@click.option("--broken", multiple=True, hidden=True)
def chaos(
    duration_s: float,
    seed: int,
    servers: int,
    spares: int,
    clients: int,
    keys: int,
    faults: str,
    dap: str,
    timeout_s: float,
    storage: str,
    cluster_path: str | None,
    keep: str | None,
    broken: tuple[str, ...],
) -> None:
    """Real processes, a nemesis (partitions, delays, resets, kills, pauses, reconfigurations,
    retiring servers) and recording clients; checks the history. Exit 1 on a violation."""
    from ..chaos import ALL_FAULTS, REMOTE_DEFAULT_FAULTS, ChaosOptions, run_chaos, summary

    kinds: tuple[str, ...]
    if faults == "all":
        kinds = REMOTE_DEFAULT_FAULTS if cluster_path else ALL_FAULTS
    else:
        kinds = tuple(k.strip() for k in faults.split(",") if k.strip() and k.strip() != "none")
    opts = ChaosOptions(
        duration_s=duration_s,
        seed=seed,
        servers=servers,
        spares=spares,
        clients=clients,
        keys=keys,
        faults=kinds,
        dap=dap,
        timeout_s=timeout_s,
        storage=storage,
        cluster_file=cluster_path,
        base_dir=keep,
        broken=broken,
    )
    res = runtime.run(run_chaos(opts, log=lambda m: console.print(f"[dim]{escape(m)}[/]")))
    console.print(summary(res))
    if not res.ok:
        if res.explanation:
            console.print(escape(res.explanation))
        sys.exit(1)
