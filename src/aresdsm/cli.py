"""The ``ares`` command line: a thin layer over the library (click + rich)."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import runtime
from .config import (
    DEFAULT_GROUP,
    Configuration,
    load_cluster_file,
    parse_address,
    validate_configuration,
)
from .errors import AresError

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)

DEFAULT_DIR = "./ares-data"


def _default_cluster() -> str:
    return os.environ.get("ARES_CLUSTER", str(Path(DEFAULT_DIR) / "cluster.toml"))


cluster_option = click.option(
    "--cluster",
    "cluster_path",
    default=_default_cluster,
    show_default="$ARES_CLUSTER or ./ares-data/cluster.toml",
    help="Cluster file (TOML) naming the servers and the initial configuration.",
)


def _connect(cluster_path: str, **kwargs: Any) -> Any:
    """A Store that keeps the configuration chains it learns next to the cluster file."""
    from .client import connect

    return connect(cluster_path, cseq_cache=chain_cache_path(cluster_path), **kwargs)


def chain_cache_path(cluster_path: str) -> Path:
    return Path(cluster_path).with_name(Path(cluster_path).name + ".chains.json")


def trace_options(f: Any) -> Any:
    """--trace FILE / --otlp-endpoint / --trace-sample for commands that run clients."""
    f = click.option("--trace-sample", type=float, help="Sampling ratio of new traces.")(f)
    f = click.option(
        "--otlp-endpoint", help="Also export spans over OTLP/HTTP, e.g. http://localhost:4318."
    )(f)
    return click.option(
        "--trace",
        "trace_file",
        type=click.Path(dir_okay=False),
        help="Write spans (JSON lines) to FILE; servers started here write FILE.<server id>.",
    )(f)


def _tracing_for(
    trace_file: str | None, otlp_endpoint: str | None, trace_sample: float | None
) -> Any:
    from . import tracing

    if otlp_endpoint:  # inherited by the server processes started from here
        os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = otlp_endpoint
    if trace_sample is not None:
        os.environ["OTEL_TRACES_SAMPLER_ARG"] = str(trace_sample)
    return tracing.traced_process(
        "ares-client", otlp_endpoint=otlp_endpoint, trace_file=trace_file, sample_ratio=trace_sample
    )


class AresGroup(click.Group):
    """Turns aresdsm errors into a one-line message and exit code 1 instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except AresError as e:  # (escaped: messages name TOML tables like [client])
            err_console.print(f"[bold red]error:[/] {escape(str(e))}")
            sys.exit(1)


@click.group(cls=AresGroup)
@click.version_option(package_name="aresdsm")
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
def main(verbose: int) -> None:
    """aresdsm: Ares II, an atomic, reconfigurable distributed shared memory."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")


# --- server ------------------------------------------------------------------------------------


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
@click.option("--ready-file", type=click.Path(dir_okay=False), hidden=True)
@click.option("--otlp-endpoint", help="Export spans over OTLP/HTTP (e.g. http://localhost:4318).")
@click.option("--trace-file", type=click.Path(dir_okay=False), help="Write spans as JSON lines.")
@click.option("--trace-sample", type=float, help="Sampling ratio of new traces (default 1.0).")
def server(
    server_id: str,
    cluster_path: str,
    data_dir: str | None,
    new: str | None,
    listen: str | None,
    storage: str,
    ready_file: str | None,
    otlp_endpoint: str | None,
    trace_file: str | None,
    trace_sample: float | None,
) -> None:
    """Run one server until SIGTERM."""
    from . import tracing
    from .server import run_server, server_identity

    cf = load_cluster_file(cluster_path)
    me = cf.server(server_id)
    host, port = parse_address(listen or me.address)
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
                identity=identity,
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
    from .identity import new_cluster_id

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


# --- local clusters -----------------------------------------------------------------------------


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
def cluster_start(n: int, spares: int, base_dir: str, storage: str) -> None:
    """Start a local cluster in the background and write DIR/cluster.toml."""
    from .local import LocalCluster

    if n < 1 or spares < 0:
        raise click.BadParameter("need at least one server and no negative spares")
    lc = LocalCluster.create(base_dir, n=n, spares=spares, storage=storage)
    lc.start_all(detach=True)
    console.print(f"started {n + spares} servers; cluster file: [bold]{lc.cluster_path}[/]")
    for s in lc.cluster.servers:
        member = "member of c0" if lc.cluster.initial.has_member(s.id) else "spare"
        console.print(f"  {s.id}  {s.address}  ({member})  data: {lc.data_dir(s.id)}")
    console.print(f"try:  ares put hello world --cluster {lc.cluster_path}")


@cluster.command("stop")
@click.option(
    "--dir", "base_dir", default=DEFAULT_DIR, show_default=True, type=click.Path(file_okay=False)
)
@click.option("--purge", is_flag=True, help="Also delete the data directory.")
def cluster_stop(base_dir: str, purge: bool) -> None:
    """Stop the local cluster in DIR (SIGTERM, then SIGKILL after 10 s)."""
    from .local import LocalCluster

    lc = LocalCluster.open(base_dir)
    lc.stop()
    console.print(f"stopped the cluster in {lc.base_dir}")
    if purge:
        import shutil

        shutil.rmtree(lc.base_dir)
        console.print(f"deleted {lc.base_dir}")


# --- data --------------------------------------------------------------------------------


@main.command()
@click.argument("key")
@click.argument("value", required=False)
@click.option(
    "-f",
    "--file",
    "path",
    type=click.Path(exists=True, dir_okay=False),
    help="Read the value from a file.",
)
@click.option("--group", default=DEFAULT_GROUP, show_default=True)
@cluster_option
def put(key: str, value: str | None, path: str | None, group: str, cluster_path: str) -> None:
    """Write VALUE (or the contents of --file) to object KEY."""
    if (value is None) == (path is None):
        raise click.UsageError("give exactly one of VALUE or --file")
    data = Path(path).read_bytes() if path is not None else (value or "").encode()

    async def go() -> Any:
        async with _connect(cluster_path) as store:
            return await store.write(key, data, group=group)

    tag = runtime.run(go())
    console.print(f"wrote {len(data)} bytes to {key!r} (tag {tag})")


@main.command()
@click.argument("key")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write the value to a file.")
@click.option("--group", default=DEFAULT_GROUP, show_default=True)
@click.option("--tag", "show_tag", is_flag=True, help="Also print the value's tag on stderr.")
@cluster_option
def get(key: str, output: str | None, group: str, show_tag: bool, cluster_path: str) -> None:
    """Read object KEY and print its value (raw bytes) or save it with -o."""

    async def go() -> Any:
        async with _connect(cluster_path) as store:
            return await store.read_tagged(key, group=group)

    tag, data = runtime.run(go())
    if show_tag:
        err_console.print(f"tag {tag}")
    if output:
        try:
            Path(output).write_bytes(data)
        except OSError as e:
            raise click.ClickException(f"cannot write {output}: {e.strerror or e}") from None
        err_console.print(f"saved {len(data)} bytes to {output}")
    else:
        sys.stdout.buffer.write(data)
        if sys.stdout.isatty():
            sys.stdout.buffer.write(b"\n")
        sys.stdout.flush()


@main.command()
@click.option("--group", default=DEFAULT_GROUP, show_default=True)
@click.option("--storage", "show_storage", is_flag=True, help="Bytes held per configuration.")
@cluster_option
def status(group: str, show_storage: bool, cluster_path: str) -> None:
    """Show the group's configuration chain and every server's state and counters."""
    cf = load_cluster_file(cluster_path)

    async def go() -> Any:
        async with _connect(cluster_path) as store:
            try:
                chain = await store.configurations(group)
                error = ""
            except AresError as e:
                chain, error = store.cseq(group), str(e)
            return chain, error, await store.stats(cf.servers)

    chain, error, stats = runtime.run(go())
    table = Table(
        "#", "configuration", "status", "dap", "quorum", "servers", title=f"group {group!r}"
    )
    for i, e in enumerate(chain):
        c = e.config
        dap = f"treas [n={c.n}, k={c.k}, δ={c.delta}]" if c.dap == "treas" else f"abd [n={c.n}]"
        table.add_row(str(i), c.id, e.status, dap, str(c.quorum_size), ",".join(c.server_ids))
    console.print(table)
    if error:
        console.print(f"[yellow]discovery stopped:[/] {error}")
    last = chain[-1].config if chain else cf.initial
    servers = Table(
        "server",
        "address",
        "state",
        "in last config",
        "objects",
        "stored bytes",
        "requests",
        "damaged",
    )
    damaged: list[str] = []
    for s, st in zip(cf.servers, stats, strict=True):
        member = "yes" if last.has_member(s.id) else ""
        if isinstance(st, str):
            state = "refused" if "refused the connection" in st else "down"
            why = "" if state == "refused" else f" ({escape(st[:50])})"
            servers.add_row(s.id, s.address, f"[red]{state}[/]{why}", member, "", "", "", "")
            if state == "refused":
                damaged.append(f"{s.id}: {st}")
        else:
            reqs = sum(v for k, v in st.counters.items() if k[0].isupper())
            servers.add_row(
                s.id,
                s.address,
                "[green]up[/]",
                member,
                str(st.objects),
                str(st.stored_bytes),
                str(reqs),
                f"[red]{st.damaged_count}[/]" if st.damaged_count else "0",
            )
            damaged += [f"{s.id}: damaged on disk, not answered for: {d}" for d in st.damaged]
    console.print(servers)
    for line in damaged:
        console.print(f"[yellow]{escape(line)}[/]")
    if show_storage:
        _storage_table(group, [e.config.id for e in chain], cf.servers, stats)


def _storage_table(group: str, config_ids: list[str], servers: Any, stats: list[Any]) -> None:
    """Stored bytes per (server, configuration of the group): §8.3 made measurable."""
    table = Table("server", *config_ids, "total", title=f"stored object bytes, group {group!r}")
    totals = dict.fromkeys(config_ids, 0)
    for s, st in zip(servers, stats, strict=True):
        if isinstance(st, str):
            continue
        row = [st.bytes_by_config.get(f"{group}/{cid}", 0) for cid in config_ids]
        for cid, b in zip(config_ids, row, strict=True):
            totals[cid] += b
        table.add_row(s.id, *(str(b) for b in row), str(sum(row)))
    table.add_row("all", *(str(totals[c]) for c in config_ids), str(sum(totals.values())))
    console.print(table)


@main.command()
@click.option("--group", default=DEFAULT_GROUP, show_default=True)
@click.option(
    "--servers", "servers_s", help="The new configuration's servers (ids), comma separated."
)
@click.option("--add", "add_s", help="Servers to add to the current configuration.")
@click.option("--remove", "remove_s", help="Servers to remove from the current configuration.")
@click.option("--dap", type=click.Choice(["abd", "treas"]), help="Default: the current one.")
@click.option("--k", type=int, help="TREAS code dimension (default: current, or n - 2).")
@click.option("--delta", type=int, help="TREAS concurrency bound (default: current, or 4).")
@click.option(
    "--classic",
    is_flag=True,
    help="Run the original Ares rounds (discovery, separate put-config) on the group's chain.",
)
@cluster_option
def reconfig(
    group: str,
    servers_s: str | None,
    add_s: str | None,
    remove_s: str | None,
    dap: str | None,
    k: int | None,
    delta: int | None,
    classic: bool,
    cluster_path: str,
) -> None:
    """Replace the group's configuration: new servers and/or another DAP, while clients run."""
    import uuid

    from .protocol.ops import CLASSIC, DEFAULT_SWITCHES

    # the objects `ares put` wrote follow the group's chain (batch on): so does --classic
    classic_switches = dataclasses.replace(CLASSIC, batch=True)

    if servers_s is not None and (add_s or remove_s):
        raise click.UsageError("give --servers, or --add/--remove, not both")
    cf = load_cluster_file(cluster_path)

    async def go() -> Any:
        switches = classic_switches if classic else DEFAULT_SWITCHES
        async with _connect(cluster_path, switches=switches) as st:
            chain = await st.configurations(group)
            current = chain[-1].config
            ids = _new_members(current.server_ids, servers_s, add_s, remove_s)
            members = tuple(cf.server(i) for i in ids)
            kind = dap or current.dap
            proposal = Configuration(
                id=f"c{len(chain)}-{uuid.uuid4().hex[:6]}",
                servers=members,
                dap=kind,  # type: ignore[arg-type]
                k=k
                if k is not None
                else (current.k if current.dap == "treas" else max(1, len(ids) - 2)),
                delta=delta
                if delta is not None
                else (current.delta if current.dap == "treas" else 4),
            )
            validate_configuration(proposal)
            t0 = time.perf_counter()
            decided = await st.reconfigure(proposal, group=group)
            return current, proposal, decided, time.perf_counter() - t0, st.channel.rounds

    current, proposal, decided, took, rounds = runtime.run(go())
    if decided.id != proposal.id:
        console.print(f"[yellow]another reconfiguration won:[/] {decided.describe()}")
        sys.exit(1)
    console.print(
        f"{current.describe()}\n  -> {decided.describe()}  ({took * 1e3:.0f} ms, {rounds} rounds)"
    )


def _new_members(
    current: tuple[str, ...], servers_s: str | None, add_s: str | None, remove_s: str | None
) -> list[str]:
    if servers_s is not None:
        ids = [x.strip() for x in servers_s.split(",") if x.strip()]
    else:
        add = [x.strip() for x in (add_s or "").split(",") if x.strip()]
        remove = {x.strip() for x in (remove_s or "").split(",") if x.strip()}
        unknown = remove - set(current)
        if unknown:
            raise click.BadParameter(
                f"--remove: {sorted(unknown)} not in the current configuration"
            )
        ids = [i for i in current if i not in remove] + [i for i in add if i not in current]
    if not ids:
        raise click.BadParameter("the new configuration needs at least one server")
    if len(set(ids)) != len(ids):
        raise click.BadParameter(f"duplicate servers in {ids}")
    return ids


# --- demo, check, bench ------------------------------------------------------------------


@main.command()
@click.option("--servers", default=3, show_default=True)
@click.option("--clients", default=4, show_default=True)
@click.option("--duration-s", default=9.0, show_default=True, help="Length of the workload.")
@click.option("--no-crash", is_flag=True, help="Do not kill and restart a server.")
@click.option("--no-reconfig", is_flag=True, help="Do not reconfigure ABD -> TREAS.")
@click.option(
    "--keep", type=click.Path(file_okay=False), help="Keep cluster data and history here."
)
@trace_options
def demo(
    servers: int,
    clients: int,
    duration_s: float,
    no_crash: bool,
    no_reconfig: bool,
    keep: str | None,
    trace_file: str | None,
    otlp_endpoint: str | None,
    trace_sample: float | None,
) -> None:
    """Local cluster + workload through a crash, a restart and a live reconfiguration (ABD on 3
    servers -> TREAS on 5), then a linearizability check of the recorded history."""
    from .demo import run_demo

    if servers < 3 and not no_crash:
        raise click.BadParameter("a crash needs at least 3 servers (or pass --no-crash)")
    with _tracing_for(trace_file, otlp_endpoint, trace_sample):
        res = runtime.run(
            run_demo(
                servers=servers,
                clients=clients,
                duration_s=duration_s,
                crash=not no_crash,
                reconfigure=not no_reconfig,
                base_dir=keep,
                trace_file=str(Path(trace_file).resolve()) if trace_file else None,
                log=lambda m: console.print(f"[dim]{m}[/]"),
            )
        )
    lat = sorted(res.latencies_s)
    p50 = lat[len(lat) // 2] * 1e3 if lat else float("nan")
    p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1e3 if lat else float("nan")
    table = Table(title="ares demo", show_header=False)
    table.add_row("servers / clients", f"{servers} / {clients}")
    table.add_row("operations ok", f"{res.ops_ok} ({res.writes_ok} writes, {res.reads_ok} reads)")
    table.add_row(
        "operations failed",
        f"{res.ops_failed} (during the crash; failed writes may or may not count)",
    )
    table.add_row(
        "throughput", f"{res.ops_ok / res.duration_s:.0f} ops/s" if res.duration_s else "-"
    )
    table.add_row("latency p50 / p99", f"{p50:.2f} ms / {p99:.2f} ms")
    for ev in res.events:
        table.add_row("event", ev)
    colour = "green" if res.verdict == "ok" else "red"
    table.add_row("linearizable", f"[bold {colour}]{res.verdict}[/]")
    if res.history_path:
        table.add_row("history", res.history_path)
    console.print(table)
    if res.verdict != "ok":
        console.print(res.explanation)
        sys.exit(1)


@main.command()
@click.argument("history", type=click.Path(exists=True, dir_okay=False))
@click.option("--max-steps", default=1_000_000, show_default=True, help="Search bound per key.")
def check(history: str, max_steps: int) -> None:
    """Check a recorded history (JSON lines) for linearizability, per key."""
    from .check import check_file

    try:
        result = check_file(history, max_steps=max_steps)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    console.print(
        result.explain() if result.verdict != "ok" else f"[green]ok[/]: {history} is linearizable"
    )
    sys.exit({"ok": 0, "violation": 1}.get(result.verdict, 2))


@main.command()
@click.option("--servers", "servers_s", default="3,5", show_default=True, help="Cluster sizes.")
@click.option("--concurrency", "conc_s", default="1,64", show_default=True, help="Ops in flight.")
@click.option("--kinds", default="write,read", show_default=True)
@click.option("--modes", default="ares2", show_default=True, help="ares2 and/or classic.")
@click.option("--dap", type=click.Choice(["abd", "treas"]), default="abd", show_default=True)
@click.option("--k", type=int, help="TREAS code dimension (default n - 2).")
@click.option("--delta", type=int, default=4, show_default=True, help="TREAS delta.")
@click.option("--value-size", default=1024, show_default=True, help="Value size in bytes.")
@click.option("--duration-s", default=3.0, show_default=True, help="Per cell.")
@click.option(
    "--storage", type=click.Choice(["sqlite", "memory"]), default="sqlite", show_default=True
)
@click.option("--fast-read/--no-fast-read", default=True, show_default=True, help="§8.6 reads.")
@click.option(
    "--reconfig-objects", type=int, default=0, help="Also time reconfiguring this many objects."
)
@click.option("--reconfigs", type=int, default=6, show_default=True)
@click.option(
    "--reconfig-concurrency",
    type=int,
    default=1,
    show_default=True,
    help="Objects reconfigured at once with one chain per object (classic).",
)
@click.option(
    "--link-delay-ms",
    type=float,
    default=0.0,
    show_default=True,
    help="One-way delay added between the client and every server (a relay process).",
)
@click.option(
    "--json",
    "json_out",
    type=click.Path(dir_okay=False),
    default="bench-results/bench.json",
    show_default=True,
)
@trace_options
def bench(
    servers_s: str,
    conc_s: str,
    kinds: str,
    modes: str,
    dap: str,
    k: int | None,
    delta: int,
    value_size: int,
    duration_s: float,
    storage: str,
    fast_read: bool,
    reconfig_objects: int,
    reconfigs: int,
    reconfig_concurrency: int,
    link_delay_ms: float,
    json_out: str,
    trace_file: str | None,
    otlp_endpoint: str | None,
    trace_sample: float | None,
) -> None:
    """Measure throughput, latency and round trips on a local cluster of real processes."""
    from .bench import MODES, run_bench

    try:
        servers = [int(x) for x in servers_s.split(",")]
        conc = [int(x) for x in conc_s.split(",")]
    except ValueError:
        raise click.BadParameter(
            "--servers and --concurrency take comma-separated integers"
        ) from None
    kind_list = [x.strip() for x in kinds.split(",")]
    mode_list = [x.strip() for x in modes.split(",")]
    if not set(kind_list) <= {"read", "write"}:
        raise click.BadParameter("--kinds takes read and/or write")
    if not set(mode_list) <= set(MODES):
        raise click.BadParameter(f"--modes takes {' and/or '.join(MODES)}")
    if any(n < 1 for n in servers) or any(c < 1 for c in conc) or value_size < 0:
        raise click.BadParameter("sizes and concurrency must be positive")
    if duration_s <= 0 or reconfig_objects < 0 or reconfigs < 1 or reconfig_concurrency < 1:
        raise click.BadParameter("duration and reconfiguration counts must be positive")
    if link_delay_ms < 0:
        raise click.BadParameter("--link-delay-ms must not be negative")
    with _tracing_for(trace_file, otlp_endpoint, trace_sample):
        report = runtime.run(
            run_bench(
                servers=servers,
                concurrency=conc,
                kinds=kind_list,
                modes=mode_list,
                dap=dap,
                k=k,
                delta=delta,
                value_bytes=value_size,
                duration_s=duration_s,
                storage=storage,
                fast_read=fast_read,
                reconfig_objects=reconfig_objects,
                reconfigs=reconfigs,
                reconfig_concurrency=reconfig_concurrency,
                link_delay_ms=link_delay_ms,
                trace_file=str(Path(trace_file).resolve()) if trace_file else None,
                log=console.print,
            )
        )
    Path(json_out).parent.mkdir(parents=True, exist_ok=True)
    Path(json_out).write_text(json.dumps(report.to_json(), indent=1))
    table = Table("N", "mode", "dap", "C", "op", "ops/s", "p50 ms", "p99 ms", "rounds", "msgs")
    for c in report.cells:
        table.add_row(
            str(c.servers),
            c.mode,
            c.dap,
            str(c.concurrency),
            c.kind,
            f"{c.ops_per_s:.0f}",
            f"{c.p50_ms:.3f}",
            f"{c.p99_ms:.3f}",
            f"{c.rounds_per_op:.2f}",
            f"{c.messages_per_op:.2f}",
        )
    console.print(table)
    console.print(f"machine: {report.machine}; saved {json_out}")


@main.group()
def trace() -> None:
    """Tracing tools (spans written with --trace / --trace-file)."""


@trace.command("report")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), help="Also draw a PNG.")
def trace_report(files: tuple[str, ...], plot_path: str | None) -> None:
    """Share of each phase in the latency of each kind of operation, per mode."""
    from .trace_report import breakdown, load_spans, plot, summarize, table

    rows = summarize(breakdown(load_spans(files)))
    if not rows:
        raise click.ClickException("no operation spans ('op') in these files")
    console.print(table(rows))
    if plot_path:
        plot(rows, plot_path)
        console.print(f"saved {plot_path}")


def _register_optional() -> None:
    try:
        from .sim.command import sim
    except ImportError:  # pragma: no cover - the simulator ships with the package
        return
    main.add_command(sim)


_register_optional()
