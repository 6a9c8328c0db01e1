"""``ares server``: run one server process."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .. import runtime
from ..config import load_cluster_file, parse_address
from .common import DEFAULT_DIR, cluster_option, err_console, main


@main.command()
@click.option("--id", "server_id", required=True, help="This server's id, as in the cluster file.")
@cluster_option
@click.option("--data-dir", type=click.Path(file_okay=False), help="Where state is kept.")
@click.option("--listen", help="host:port to listen on (default: the address in the cluster file).")
@click.option(
    "--storage",
    type=click.Choice(["sqlite", "memory"]),
    default="sqlite",
    show_default=True,
    help="Storage engine; 'memory' is NOT durable (tests and protocol benchmarks only).",
)
@click.option("--ready-file", type=click.Path(dir_okay=False), hidden=True)
@click.option("--otlp-endpoint", help="Export spans over OTLP/HTTP (e.g. http://localhost:4318).")
@click.option("--trace-file", type=click.Path(dir_okay=False), help="Write spans as JSON lines.")
@click.option("--trace-sample", type=float, help="Sampling ratio of new traces (default 1.0).")
def server(
    server_id: str,
    cluster_path: str,
    data_dir: str | None,
    listen: str | None,
    storage: str,
    ready_file: str | None,
    otlp_endpoint: str | None,
    trace_file: str | None,
    trace_sample: float | None,
) -> None:
    """Run one server until SIGTERM."""
    from .. import tracing
    from ..server import run_server

    cf = load_cluster_file(cluster_path)
    me = cf.server(server_id)
    host, port = parse_address(listen or me.address)
    ddir = data_dir or cf.data_dirs.get(server_id) or str(Path(DEFAULT_DIR) / server_id)
    if storage == "memory":
        err_console.print("[yellow]warning:[/] storage 'memory' is not durable")
    with tracing.traced_process(
        f"ares-server-{server_id}",
        otlp_endpoint=otlp_endpoint,
        trace_file=trace_file,
        sample_ratio=trace_sample,
    ):
        code = runtime.run(
            run_server(
                server_id=server_id,
                host=host,
                port=port,
                data_dir=ddir,
                storage_kind=storage,
                initial=cf.initial,
                ready_file=ready_file,
            )
        )
    sys.exit(code)
