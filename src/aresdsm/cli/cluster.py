"""``ares cluster start|stop``: a cluster of server processes on this machine."""

from __future__ import annotations

import click

from .common import DEFAULT_DIR, console, main


@main.group()
def cluster() -> None:
    """Run a cluster of server processes on this machine."""


@cluster.command("start")
@click.option(
    "-n",
    "--servers",
    "n",
    default=3,
    show_default=True,
    help="Servers in the initial configuration.",
)
@click.option(
    "--spares", default=0, show_default=True, help="Extra servers not in any configuration yet."
)
@click.option(
    "--dir", "base_dir", default=DEFAULT_DIR, show_default=True, type=click.Path(file_okay=False)
)
@click.option(
    "--storage", type=click.Choice(["sqlite", "memory"]), default="sqlite", show_default=True
)
@click.option(
    "--insecure",
    is_flag=True,
    help="Plaintext: no certificates, no authentication (loopback clients only).",
)
@click.option(
    "--metrics",
    is_flag=True,
    help="Give every server a Prometheus /metrics, /healthz and /readyz endpoint.",
)
def cluster_start(
    n: int, spares: int, base_dir: str, storage: str, insecure: bool, metrics: bool
) -> None:
    """Start a local cluster in the background and write DIR/cluster.toml.

    Secure by default: a cluster CA, a certificate per server and client certificates for the
    roles admin, write and read are created in DIR/certs; the cluster file uses the admin one
    (see ares certs)."""
    from ..local import LocalCluster

    if n < 1 or spares < 0:
        raise click.BadParameter("need at least one server and no negative spares")
    lc = LocalCluster.create(
        base_dir, n=n, spares=spares, storage=storage, insecure=insecure, metrics=metrics
    )
    lc.start_all(detach=True)
    console.print(f"started {n + spares} servers; cluster file: [bold]{lc.cluster_path}[/]")
    for s in lc.cluster.servers:
        member = "member of c0" if lc.cluster.initial.has_member(s.id) else "spare"
        console.print(f"  {s.id}  {s.address}  ({member})  data: {lc.data_dir(s.id)}")
        if s.id in lc.metrics:
            console.print(f"      metrics: http://{lc.metrics[s.id]}/metrics")
    tls = lc.cluster.client.tls
    if tls is None:
        console.print("[yellow]plaintext (--insecure):[/] no encryption, no authentication")
    else:
        console.print(
            f"mutual TLS: CA {tls.ca}; this cluster file uses the [bold]admin[/] client "
            "certificate (write and read ones are next to it; ares certs issues more)"
        )
    console.print(f"try:  ares put hello world --cluster {lc.cluster_path}")


@cluster.command("stop")
@click.option(
    "--dir", "base_dir", default=DEFAULT_DIR, show_default=True, type=click.Path(file_okay=False)
)
@click.option("--purge", is_flag=True, help="Also delete the data directory.")
def cluster_stop(base_dir: str, purge: bool) -> None:
    """Stop the local cluster in DIR (SIGTERM, then SIGKILL after 10 s)."""
    from ..local import LocalCluster

    lc = LocalCluster.open(base_dir)
    lc.stop()
    console.print(f"stopped the cluster in {lc.base_dir}")
    if purge:
        import shutil

        shutil.rmtree(lc.base_dir)
        console.print(f"deleted {lc.base_dir}")
