"""``ares demo|check|bench|trace``: demonstrations, checks and measurements."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import click
from rich.table import Table

from .. import runtime
from ..errors import AresError
from .common import _tracing_for, console, main, trace_options


@main.command()
@click.option("--servers", default=3, show_default=True)
@click.option("--clients", default=4, show_default=True)
@click.option("--duration-s", default=9.0, show_default=True, help="Length of the workload.")
@click.option("--no-crash", is_flag=True, help="Do not kill and restart a server.")
@click.option("--no-reconfig", is_flag=True, help="Do not reconfigure ABD -> TREAS.")
@click.option(
    "--keep", type=click.Path(file_okay=False), help="Keep cluster data and history here."
)
@click.option("--insecure", is_flag=True, help="Plaintext cluster (default: mutual TLS).")
@trace_options
def demo(
    servers: int,
    clients: int,
    duration_s: float,
    no_crash: bool,
    no_reconfig: bool,
    keep: str | None,
    insecure: bool,
    trace_file: str | None,
    otlp_endpoint: str | None,
    trace_sample: float | None,
) -> None:
    """Local cluster + workload through a crash, a restart and a live reconfiguration (ABD on 3
    servers -> TREAS on 5), then a linearizability check of the recorded history."""
    from ..demo import run_demo

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
                insecure=insecure,
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
    from ..check import check_file

    try:
        result = check_file(history, max_steps=max_steps)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    console.print(
        result.explain() if result.verdict != "ok" else f"[green]ok[/]: {history} is linearizable"
    )
    sys.exit({"ok": 0, "violation": 1}.get(result.verdict, 2))


def _bench_server_memory(
    n: int,
    gib: float,
    value_size: int,
    dap: str,
    k: int | None,
    delta: int,
    json_out: str,
    layout: str = "objects",
) -> None:
    from ..bench_memory import run_memory_bench

    source = click.get_current_context().get_parameter_source("value_size")
    value_bytes = 1024 * 1024 if source == click.core.ParameterSource.DEFAULT else value_size
    if layout == "files":  # the data as files of 256 MiB (or fewer bytes), in ~1 MiB blocks
        value_bytes = min(int(gib * 2**30), 256 << 20)
    objects = max(1, int(gib * 2**30) // max(1, value_bytes))
    try:
        result = runtime.run(
            run_memory_bench(
                n=n,
                objects=objects,
                value_bytes=value_bytes,
                dap=dap,
                k=k,
                delta=delta if dap == "treas" else 0,
                layout=layout,
                log=console.print,
            )
        )
    except AresError as e:
        raise click.ClickException(str(e)) from None
    out = Path(json_out).with_name("server-memory.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dataclasses.asdict(result), indent=1))
    table = Table(
        "server",
        "RSS stored MiB",
        "peak MiB",
        "restart s",
        "recovery s",
        "records",
        "RSS restarted MiB",
        "RSS after reads MiB",
    )
    for s in result.per_server:
        table.add_row(
            s.server,
            f"{s.rss_after_store_bytes / 2**20:.0f}",
            f"{s.peak_rss_during_store_bytes / 2**20:.0f}",
            f"{s.restart_s:.2f}",
            f"{s.recovery_s:.3f}",
            str(s.records),
            f"{s.rss_after_restart_bytes / 2**20:.0f}",
            f"{s.rss_after_reads_bytes / 2**20:.0f}",
        )
    console.print(table)
    console.print(
        f"{result.stored_bytes / 2**30:.2f} GiB in {result.objects} {result.layout}, written at "
        f"{result.write_mb_s:.0f} MB/s; {result.verified_objects} read back at "
        f"{result.read_mb_s:.0f} MB/s; bound {result.rss_bound_bytes / 2**20:.0f} MiB: "
        + ("[green]ok[/]" if result.ok else "[red]over[/]")
        + f" ({out})"
    )
    if not result.ok:
        sys.exit(1)


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
    "--reconfig-groups",
    type=int,
    default=1,
    show_default=True,
    help="Spread the --reconfig-objects over this many groups.",
)
@click.option(
    "--relocation",
    is_flag=True,
    help="Also time a new client's first read after the initial servers were retired and "
    "paused, then stopped.",
)
@click.option(
    "--link-delay-ms",
    type=float,
    default=0.0,
    show_default=True,
    help="One-way delay added between the client and every server (a relay process).",
)
@click.option("--insecure", is_flag=True, help="Plaintext clusters (default: mutual TLS).")
@click.option(
    "--tls-cost",
    is_flag=True,
    help="Run every cell with TLS and with --insecure; print the throughput ratio.",
)
@click.option(
    "--file-mb",
    type=click.FloatRange(min=0, min_open=True),
    help="Instead of the object cells: the fragmented-file benchmark with a file of this many "
    "MB (put/get MB/s, client peak RSS, a 1 KiB edit, concurrent writers, the file's "
    "reconfiguration in --modes: one decision in ares2, one per block in classic).",
)
@click.option(
    "--file-put-get-only",
    is_flag=True,
    help="With --file-mb: only the put and the get (throughput, client peak RSS), for a big "
    "file (e.g. --file-mb 2147.483648: 2 GiB) without the edits and reconfigurations.",
)
@click.option(
    "--mount-mb",
    type=click.FloatRange(min=0, min_open=True),
    help="Instead of the object cells: `ares mount` against the native file layer with a file "
    "of this many MiB (sequential write and read MB/s) and `ls -l` of 1,000 files.",
)
@click.option(
    "--file-avg-kib",
    type=click.IntRange(1, 4096),
    default=1024,
    show_default=True,
    help="Average block size of --file-mb.",
)
@click.option(
    "--json",
    "json_out",
    type=click.Path(dir_okay=False),
    default="bench-results/bench.json",
    show_default=True,
)
@click.option(
    "--attack",
    is_flag=True,
    help="Measure one client's write throughput with and without an attacker process holding "
    "--idle-conns idle and --slowloris slowloris connections to every server (issue 13).",
)
@click.option(
    "--client-procs",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Run each cell's load from this many processes (the concurrency split between them) "
    "and merge their figures: the client is then not the bottleneck.",
)
@click.option(
    "--peer",
    type=click.Choice(["etcd"]),
    help="Also run the cells against a 3-member etcd on loopback (an etcd binary on PATH; the "
    "bench extra) in the same run and print aresdsm's ops/s over etcd's.",
)
@click.option(
    "--server-memory-gib",
    type=click.FloatRange(min=0, min_open=True),
    help="Instead of the object cells: store this many GiB of --value-size values (default "
    "1 MiB) through a client, then report each server's RSS after storing and after a "
    "restart, and the restart time (issue 12); the data is removed afterwards.",
)
@click.option(
    "--server-memory-layout",
    type=click.Choice(["objects", "files"]),
    default="objects",
    show_default=True,
    help="With --server-memory-gib: store the data as objects of --value-size, or as files "
    "of 256 MiB in ~1 MiB blocks (coverable registers).",
)
@click.option("--idle-conns", type=click.IntRange(0), default=5000, show_default=True)
@click.option("--slowloris", type=click.IntRange(0), default=32, show_default=True)
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
    reconfig_groups: int,
    relocation: bool,
    link_delay_ms: float,
    file_mb: float | None,
    mount_mb: float | None,
    file_put_get_only: bool,
    file_avg_kib: int,
    insecure: bool,
    tls_cost: bool,
    json_out: str,
    attack: bool,
    client_procs: int,
    peer: str | None,
    server_memory_gib: float | None,
    server_memory_layout: str,
    idle_conns: int,
    slowloris: int,
    trace_file: str | None,
    otlp_endpoint: str | None,
    trace_sample: float | None,
) -> None:
    """Measure throughput, latency and round trips on a local cluster of real processes."""
    from ..bench import MODES, run_bench

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
    if reconfig_groups < 1:
        raise click.BadParameter("--reconfig-groups must be positive")
    if duration_s <= 0 or reconfig_objects < 0 or reconfigs < 1 or reconfig_concurrency < 1:
        raise click.BadParameter("duration and reconfiguration counts must be positive")
    if link_delay_ms < 0:
        raise click.BadParameter("--link-delay-ms must not be negative")
    if attack:
        out = str(Path(json_out).with_name("attack.json"))
        _bench_attack(
            servers[0], max(conc), value_size, duration_s, idle_conns, slowloris, storage, out
        )
        return
    if server_memory_gib is not None:
        _bench_server_memory(
            servers[0],
            server_memory_gib,
            value_size,
            dap,
            k,
            delta,
            json_out,
            server_memory_layout,
        )
        return
    if mount_mb is not None:
        from ..mount.bench import run_mount_bench

        mres = runtime.run(
            run_mount_bench(n=servers[0], file_bytes=int(mount_mb * 2**20), log=console.print)
        )
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).with_name("mount.json").write_text(
            json.dumps(dataclasses.asdict(mres), indent=1)
        )
        return
    if file_mb is not None:
        from ..bench import run_file_bench

        with _tracing_for(trace_file, otlp_endpoint, trace_sample):
            for n in servers:
                result = runtime.run(
                    run_file_bench(
                        n=n,
                        file_bytes=int(file_mb * 1e6),
                        avg_block_bytes=file_avg_kib * 1024,
                        dap=dap,
                        k=k,
                        delta=delta,
                        storage=storage,
                        modes=mode_list,
                        log=console.print,
                        skip_edit=file_put_get_only,
                    )
                )
                Path(json_out).parent.mkdir(parents=True, exist_ok=True)
                Path(json_out).write_text(json.dumps(dataclasses.asdict(result), indent=1))
        return
    if insecure and tls_cost:
        raise click.UsageError("--tls-cost already runs both; drop --insecure")
    security = ("tls", "insecure") if tls_cost else ("insecure",) if insecure else ("tls",)
    if peer == "etcd":
        import shutil

        if shutil.which("etcd") is None:
            raise click.UsageError("--peer etcd: no etcd binary on PATH (Debian: etcd-server)")
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
                reconfig_groups=reconfig_groups,
                relocation=relocation,
                link_delay_ms=link_delay_ms,
                trace_file=str(Path(trace_file).resolve()) if trace_file else None,
                log=console.print,
                security=security,
                client_procs=client_procs,
                peer=peer,
            )
        )
    Path(json_out).parent.mkdir(parents=True, exist_ok=True)
    Path(json_out).write_text(json.dumps(report.to_json(), indent=1))
    table = Table(
        "N",
        "security",
        "mode",
        "dap",
        "C",
        "op",
        "ops/s",
        "p50 ms",
        "p99 ms",
        "rounds",
        "msgs",
        "client µs/op",
        "server µs/op",
    )
    for c in report.cells:
        table.add_row(
            str(c.servers),
            c.security,
            c.mode,
            c.dap,
            str(c.concurrency),
            c.kind,
            f"{c.ops_per_s:.0f}",
            f"{c.p50_ms:.3f}",
            f"{c.p99_ms:.3f}",
            f"{c.rounds_per_op:.2f}",
            f"{c.messages_per_op:.2f}",
            f"{c.client_cpu_us_per_op:.0f}" + (f" ({c.client_procs} procs)" * (c.client_procs > 1)),
            f"{c.server_cpu_us_per_op:.0f}",
        )
    console.print(table)
    peer_ratios = report.peer_ratios()
    if report.peer_cells:
        vs = Table(
            "N",
            "security",
            "mode",
            "C",
            "op",
            "aresdsm ops/s",
            "peer",
            "peer ops/s",
            "ratio",
            "peer CPU µs/op (client / member)",
        )
        for c, p, r in peer_ratios:
            vs.add_row(
                str(c.servers),
                c.security,
                c.mode,
                str(c.concurrency),
                c.kind,
                f"{c.ops_per_s:.0f}",
                p.system,
                f"{p.ops_per_s:.0f}",
                f"{r:.2f}x",
                f"{p.client_cpu_us_per_op:.0f} / {p.server_cpu_us_per_op:.0f}",
            )
        console.print(vs)
    ratios = report.tls_ratios()
    if ratios:
        cost = Table("N", "mode", "C", "op", "TLS ops/s", "plaintext ops/s", "TLS / plaintext")
        for t, p, r in ratios:
            cost.add_row(
                str(t.servers),
                t.mode,
                str(t.concurrency),
                t.kind,
                f"{t.ops_per_s:.0f}",
                f"{p.ops_per_s:.0f}",
                f"{r:.2f}",
            )
        console.print(cost)
    console.print(f"machine: {report.machine}; saved {json_out}")


@main.group()
def trace() -> None:
    """Tracing tools (spans written with --trace / --trace-file)."""


@trace.command("report")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), help="Also draw a PNG.")
def trace_report(files: tuple[str, ...], plot_path: str | None) -> None:
    """Share of each phase in the latency of each kind of operation, per mode."""
    from ..trace_report import (
        breakdown,
        file_breakdown,
        file_table,
        load_spans,
        plot,
        summarize,
        table,
    )

    spans = load_spans(files)
    rows = summarize(breakdown(spans))
    if not rows:
        raise click.ClickException("no operation spans ('op') in these files")
    console.print(table(rows))
    file_rows = file_breakdown(spans)
    if file_rows:  # fragmented files: chunking, block rounds, linking (docs/protocol.md §9.2)
        console.print(file_table(file_rows))
    if plot_path:
        plot(rows, plot_path)
        console.print(f"saved {plot_path}")


def _bench_attack(
    n: int,
    concurrency: int,
    value_size: int,
    duration_s: float,
    idle: int,
    slowloris: int,
    storage: str,
    json_out: str,
) -> None:
    from ..bench_attack import result_json, run_attack_bench

    result = runtime.run(
        run_attack_bench(
            servers=n,
            concurrency=concurrency,
            value_bytes=value_size,
            duration_s=duration_s,
            idle=idle,
            slowloris=slowloris,
            storage=storage,
            log=console.print,
        )
    )
    Path(json_out).parent.mkdir(parents=True, exist_ok=True)
    Path(json_out).write_text(json.dumps(result_json(result), indent=1))
    console.print(result.line())
