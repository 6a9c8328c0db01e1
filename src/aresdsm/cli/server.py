"""``ares server``: run one server process; ``ares init``: give a cluster file its cluster id."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from .. import runtime, serverlog
from ..config import MAX_FRAME_BYTES_LIMIT, load_cluster_file, parse_address
from .common import cluster_option, console, err_console, log_options, main


@main.command()
@click.option("--id", "server_id", required=True, help="This server's id, as in the cluster file.")
@cluster_option
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False),
    help="Where state is kept (default: data_dir of this server in the cluster file).",
)
@click.option(
    "--new",
    "new",
    type=click.Choice(["initial", "join"]),
    help="Create this server's state in an empty data directory: 'initial' for a member of the "
    "initial configuration, 'join' for a server added later by reconfiguration. Only once per "
    "server id.",
)
@click.option("--listen", help="host:port to listen on (default: the address in the cluster file).")
@click.option(
    "--storage",
    type=click.Choice(["sqlite", "memory"]),
    default="sqlite",
    show_default=True,
    help="Storage engine; 'memory' is NOT durable (tests and protocol benchmarks only).",
)
@click.option(
    "--metrics-address",
    help="host:port of an HTTP endpoint serving /metrics (Prometheus), /healthz and /readyz.",
)
@click.option("--ready-file", type=click.Path(dir_okay=False), hidden=True)
@click.option("--otlp-endpoint", help="Export spans over OTLP/HTTP (e.g. http://localhost:4318).")
@click.option("--trace-file", type=click.Path(dir_okay=False), help="Write spans as JSON lines.")
@click.option("--trace-sample", type=float, help="Sampling ratio of new traces (default 1.0).")
@log_options("info")
@click.option(
    "--max-frame-bytes",
    type=click.IntRange(1024, MAX_FRAME_BYTES_LIMIT),
    help="Largest frame accepted or sent (default: [client] max_frame_bytes of the cluster file).",
)
@click.option(
    "--max-connections",
    type=click.IntRange(1),
    help="Default: RLIMIT_NOFILE - 256 (at most 10,000).",
)
@click.option("--max-connections-per-address", type=click.IntRange(1), help="Default: 1024.")
@click.option("--idle-timeout-s", type=click.FloatRange(min=0, min_open=True), help="Default 300.")
@click.option(
    "--frame-timeout-s",
    type=click.FloatRange(min=0, min_open=True),
    help="Deadline for a whole frame once its first byte arrived. Default: 60.",
)
@click.option(
    "--handshake-timeout-s",
    type=click.FloatRange(min=0, min_open=True),
    help="Deadline of a TLS handshake (the connection counts against the limits meanwhile). "
    "Default: 10.",
)
@click.option(
    "--max-partial-frame-bytes-total",
    type=click.IntRange(1),
    help="Incomplete frames held for all connections together. Default: 256 MiB.",
)
@click.option(
    "--max-conn-request-bytes",
    type=click.IntRange(1),
    help="Requests waiting per connection before reading pauses. Default: 8 MiB.",
)
@click.option(
    "--max-conn-reply-bytes",
    type=click.IntRange(1),
    help="Replies held per connection before reading pauses. Default: 8 MiB.",
)
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
    new: str | None,
    listen: str | None,
    storage: str,
    metrics_address: str | None,
    ready_file: str | None,
    otlp_endpoint: str | None,
    trace_file: str | None,
    trace_sample: float | None,
    insecure: bool,
    allow_remote_plaintext: bool,
    audit_log: str | None,
    log_level: str | None,
    log_format: str | None,
    max_frame_bytes: int | None,
    **limit_options: Any,
) -> None:
    """Run one server until SIGTERM (mutual TLS with the [tls] identity of the cluster file).

    Limits come from the [server] table of the cluster file; the options here override it
    (docs/operations.md lists every limit and its default)."""
    from .. import tracing
    from ..limits import ServerLimits
    from ..server import run_server, server_identity

    parent = click.get_current_context().obj or {}
    level = log_level or parent.get("log_level") or "info"
    serverlog.configure(level, log_format or parent.get("log_format") or "text")
    cf = load_cluster_file(cluster_path, insecure=insecure)
    limits = ServerLimits.from_table(cf.server_limits, where=f"{cluster_path}: [server]")
    limits = limits.replace(**limit_options)
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
    metrics = parse_address(metrics_address) if metrics_address else None
    ddir = data_dir or cf.data_dirs.get(server_id)
    if not ddir:
        raise click.UsageError(
            f"no data directory for {server_id}: give --data-dir, or data_dir in its "
            "[[servers]] entry of the cluster file"
        )
    if storage == "memory":
        err_console.print("[yellow]warning:[/] storage 'memory' is not durable")
    identity = server_identity(
        storage_kind=storage,
        data_dir=ddir,
        cluster_id=cf.cluster_id,
        server_id=server_id,
        initial=cf.initial,
        new=new,  # type: ignore[arg-type]
    )
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
                identity=identity,
                limits=limits,
                max_frame_bytes=max_frame_bytes or cf.client.max_frame_bytes,
                metrics_address=metrics,
            )
        )
    sys.exit(code)


@main.command()
@cluster_option
def init(cluster_path: str) -> None:
    """Give a hand-made cluster file its cluster id ([cluster] id), once, at creation.

    Every server is created from the file with `ares server --new initial|join`, and every
    client connection proves it belongs to this cluster. Copy the file to every machine after
    this step; never run it again for a running cluster.
    """
    from ..identity import new_cluster_id

    path = Path(cluster_path)
    cf = load_cluster_file(path)
    if cf.cluster_id:
        raise click.ClickException(f"{path} already has cluster id {cf.cluster_id}")
    cid = new_cluster_id()
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    for i, line in enumerate(lines):
        if line.strip() == "[cluster]":
            lines.insert(i + 1, f'id = "{cid}"\n')
            break
    else:
        lines.insert(0, f'[cluster]\nid = "{cid}"\n\n')
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(lines), encoding="utf-8")
    if load_cluster_file(tmp).cluster_id != cid:  # (a [cluster] line inside a string?)
        tmp.unlink()
        raise click.ClickException(f"could not add the cluster id to {path}; add it by hand")
    tmp.replace(path)
    console.print(f"cluster id {cid} written to {path}")
