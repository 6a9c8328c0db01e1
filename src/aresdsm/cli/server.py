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
@click.option(
    "--insecure",
    is_flag=True,
    help="Run plaintext when the cluster file has no [tls] table: no encryption, no "
    "authentication, every client may do everything. Loopback clients only, unless "
    "--allow-remote-plaintext.",
)
@click.option(
    "--allow-remote-plaintext",
    is_flag=True,
    help="With --insecure: also accept clients that are not on the loopback network.",
)
@click.option(
    "--audit-log",
    type=click.Path(dir_okay=False),
    help="Where admin operations are logged (default: DATA_DIR/audit.log).",
)
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
    insecure: bool,
    allow_remote_plaintext: bool,
    audit_log: str | None,
) -> None:
    """Run one server until SIGTERM (mutual TLS with the [tls] identity of the cluster file)."""
    from .. import tracing
    from ..server import run_server

    cf = load_cluster_file(cluster_path, insecure=insecure)
    me = cf.server(server_id)
    tls = cf.server_tls.get(server_id)
    if tls is None and not cf.insecure:
        raise click.UsageError(
            f"the cluster file has a [tls] table but no cert/key for server {server_id!r} "
            "(ares certs server)"
        )
    if tls is None:
        err_console.print(
            "[yellow]warning:[/] plaintext (insecure): no encryption, no authentication"
            + ("" if allow_remote_plaintext else "; loopback clients only")
        )
    elif allow_remote_plaintext:
        raise click.UsageError("--allow-remote-plaintext applies to --insecure servers only")
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
                tls=tls,
                deny_file=cf.deny_file,
                audit_log=audit_log,
                allow_remote_plaintext=allow_remote_plaintext,
            )
        )
    sys.exit(code)
