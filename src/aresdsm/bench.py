"""``ares bench``: throughput and latency of a local cluster of real server processes.

For every cell of the matrix (servers N, mode, concurrency C, operation kind) it runs a closed loop
of C operations in flight from one client process for a fixed time, and reports ops/s, latency
percentiles, and the messages and rounds each operation cost -- counted by the client's channel,
so "2 round trips per write" is measured, not assumed. Modes are Ares II (default) and classic
(the original Ares, docs/protocol.md §6) on the same cluster in the same run, so their ratio is
reported directly. Before each cluster's cells it measures the transport floor: the round-trip
time of a no-op Ping to one server; every latency is also printed as a multiple of that floor.

Clusters run mutual TLS 1.3 (docs/security.md) unless ``--insecure``; ``--tls-cost`` runs every
cell on a TLS cluster and on a plaintext one and reports the ratio of their throughputs
(:meth:`BenchReport.tls_ratios`): the price of security, measured on the same run.

Every cell also reports the CPU each operation cost (issue 18): the client process's CPU
seconds (all client processes' with ``--client-procs N``) and the mean of each server process's
(from ``/proc``), divided by the operations completed -- on a machine shared with other work,
a steadier figure than throughput. ``--client-procs N`` runs a cell's load from N processes
(the concurrency C split between them) and merges their figures, so the client is not the
bottleneck when server capacity is measured. ``--peer etcd`` runs the same cells against a
3-member etcd in the same run and prints the ratios (:mod:`aresdsm.bench_etcd`).

``--reconfig-objects M`` adds a reconfiguration benchmark: M objects are written (spread over
``--reconfig-groups G`` groups), then the cluster is reconfigured back and forth between two
disjoint server sets, timing each reconfiguration and counting its rounds and consensus
decisions. In Ares II one reconfiguration moves every object of every group (docs/protocol.md §8.4),
so 10,000 objects in 100 groups should cost about what 10,000 in one group cost.

``--relocation`` adds issue 11's figure: a new client's first operation after the initial servers
were retired by a reconfiguration and then paused (SIGSTOP: they accept connections and never
answer), and then stopped -- against ``timeout_s``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import multiprocessing
import os
import platform
import signal
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import runtime
from .bench_etcd import process_cpu_s
from .client import Store
from .config import Configuration
from .local import LocalCluster
from .protocol.ares import CLUSTER_CHAIN, OBJECT_CHAIN
from .protocol.ops import CLASSIC, OpSwitches
from .runtime import loop_name

MODES = {"ares2": OpSwitches(), "classic": CLASSIC}


@dataclass
class CellResult:
    servers: int
    mode: str
    dap: str
    concurrency: int
    kind: str
    value_bytes: int
    storage: str
    ops: int
    errors: int
    duration_s: float
    ops_per_s: float
    p50_ms: float
    p99_ms: float
    mean_ms: float
    rounds_per_op: float
    messages_per_op: float
    floor_rtt_ms: float
    p50_over_floor: float
    security: str = "tls"
    """"tls" (mutual TLS 1.3) or "insecure" (plaintext)."""
    client_procs: int = 1
    client_cpu_us_per_op: float = float("nan")
    """CPU of the client process(es) per completed operation."""
    server_cpu_us_per_op: float = float("nan")
    """CPU of one server process per completed operation (mean over the servers)."""

    def line(self) -> str:
        procs = f" x{self.client_procs} procs" if self.client_procs > 1 else ""
        return (
            f"N={self.servers} {self.security:<8} {self.mode:<7} {self.dap:<5} "
            f"C={self.concurrency:<3} {self.kind:<5}"
            f" {self.ops_per_s:8.0f} ops/s  p50 {self.p50_ms:7.3f} ms  p99 {self.p99_ms:7.3f} ms"
            f"  rounds/op {self.rounds_per_op:.2f}  msgs/op {self.messages_per_op:.2f}"
            f"  CPU/op client {self.client_cpu_us_per_op:.0f} us{procs},"
            f" server {self.server_cpu_us_per_op:.0f} us"
        )


@dataclass
class ReconfigResult:
    servers: int
    mode: str
    objects: int
    value_bytes: int
    reconfigs: int
    p50_ms: float
    max_ms: float
    rounds_per_reconfig: float
    consensus_per_reconfig: float
    group_bytes: list[int] = field(default_factory=list)
    """Bytes of the group's object state on all servers: after the writes, then after each
    reconfiguration (and its background finalize) -- docs/protocol.md §8.3's storage claim."""

    @property
    def storage_ratio(self) -> float:
        """Stored bytes after the last reconfiguration over the bytes of one configuration."""
        return self.group_bytes[-1] / self.group_bytes[0] if self.group_bytes else float("nan")

    def line(self) -> str:
        return (
            f"N={self.servers} {self.mode:<7} reconfiguration of {self.objects} objects:"
            f" p50 {self.p50_ms:.1f} ms (max {self.max_ms:.1f})"
            f"  rounds {self.rounds_per_reconfig:.1f}  consensus decisions"
            f" {self.consensus_per_reconfig:.1f}  storage after {self.reconfigs}:"
            f" {self.storage_ratio:.2f}x one configuration"
        )


@dataclass
class RelocationResult:
    servers: int
    timeout_s: float
    paused_first_op_s: float
    """A new client's first read after the initial servers were retired and paused."""
    stopped_first_op_s: float
    """The same after they were stopped."""

    def line(self) -> str:
        return (
            f"N={self.servers} new client's first read, initial servers retired: paused"
            f" {self.paused_first_op_s * 1e3:.0f} ms"
            f" ({self.paused_first_op_s / self.timeout_s:.2f} x timeout_s={self.timeout_s:g}),"
            f" stopped {self.stopped_first_op_s * 1e3:.1f} ms"
        )


@dataclass
class BenchReport:
    machine: dict[str, Any] = field(default_factory=dict)
    cells: list[CellResult] = field(default_factory=list)
    reconfigs: list[ReconfigResult] = field(default_factory=list)
    relocations: list[RelocationResult] = field(default_factory=list)
    peer_cells: list[Any] = field(default_factory=list)
    """Cells of the peer system (``--peer etcd``: :class:`~aresdsm.bench_etcd.PeerCell`)."""

    def peer_ratios(self) -> list[tuple[CellResult, Any, float]]:
        """(aresdsm cell, peer cell, aresdsm ops/s over the peer's) for every cell of the same
        concurrency and kind, on clusters of as many servers as the peer has members."""
        out = []
        for c in self.cells:
            for p in self.peer_cells:
                same = (c.servers, c.concurrency, c.kind) == (p.members, p.concurrency, p.kind)
                if same and p.ops_per_s:
                    out.append((c, p, c.ops_per_s / p.ops_per_s))
        return out

    def tls_ratios(self) -> list[tuple[CellResult, CellResult, float]]:
        """(TLS cell, plaintext cell, TLS ops/s over plaintext ops/s) for every cell measured
        both ways."""
        plain = {
            (c.servers, c.mode, c.dap, c.concurrency, c.kind): c
            for c in self.cells
            if c.security == "insecure"
        }
        out = []
        for c in self.cells:
            p = plain.get((c.servers, c.mode, c.dap, c.concurrency, c.kind))
            if c.security == "tls" and p is not None and p.ops_per_s:
                out.append((c, p, c.ops_per_s / p.ops_per_s))
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "machine": self.machine,
            "cells": [asdict(c) for c in self.cells],
            "reconfigs": [asdict(r) for r in self.reconfigs],
            "relocations": [asdict(r) for r in self.relocations],
            "peer_cells": [asdict(p) for p in self.peer_cells],
            "peer_ratios": [
                {
                    "system": p.system,
                    "servers": c.servers,
                    "security": c.security,
                    "mode": c.mode,
                    "concurrency": c.concurrency,
                    "kind": c.kind,
                    "aresdsm_ops_per_s": c.ops_per_s,
                    "peer_ops_per_s": p.ops_per_s,
                    "ratio": r,
                }
                for c, p, r in self.peer_ratios()
            ],
            "tls_ratios": [
                {
                    "servers": t.servers,
                    "mode": t.mode,
                    "concurrency": t.concurrency,
                    "kind": t.kind,
                    "tls_ops_per_s": t.ops_per_s,
                    "insecure_ops_per_s": p.ops_per_s,
                    "ratio": r,
                }
                for t, p, r in self.tls_ratios()
            ],
        }


def machine_info() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loop": loop_name(),
        "date": time.strftime("%Y-%m-%d"),
    }


def _pct(sorted_vals: list[float], q: float) -> float:
    if not sorted_vals:
        return float("nan")
    return sorted_vals[min(len(sorted_vals) - 1, int(q * len(sorted_vals)))]


async def measure_floor(store: Store, *, count: int = 500) -> float:
    """Median round-trip time of a Ping to the first server, in seconds."""
    for _ in range(50):
        await store.ping(0)
    samples = []
    for _ in range(count):
        t0 = time.perf_counter()
        await store.ping(0)
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


@dataclass
class _Run:
    latencies: list[float]
    errors: int
    rounds: int
    messages: int
    elapsed_s: float
    client_cpu_s: float = float("nan")
    server_cpu_s: float = float("nan")
    """Of one server, mean over the servers."""
    procs: int = 1


async def run_cell(
    store: Store,
    *,
    kind: str,
    concurrency: int,
    duration_s: float,
    value_bytes: int,
    keys: int = 200,
    preload: bool = True,
) -> _Run:
    """A closed loop of ``concurrency`` operations in flight for ``duration_s``."""
    value = b"v" * value_bytes
    latencies: list[float] = []
    errors = 0
    if kind == "read" and preload:  # reads of real values
        await _preload(store, value, keys)
    ch = store.channel
    r0, m0 = ch.rounds, ch.messages
    deadline = time.perf_counter() + duration_s
    counter = 0

    async def worker() -> None:
        nonlocal errors, counter
        while time.perf_counter() < deadline:
            counter += 1
            key = f"bench-{counter % keys}"
            t0 = time.perf_counter()
            try:
                if kind == "write":
                    await store.write(key, value)
                else:
                    await store.read(key)
            except Exception:
                errors += 1
                continue
            latencies.append(time.perf_counter() - t0)

    t_start, cpu0 = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - t_start
    cpu = time.process_time() - cpu0
    return _Run(latencies, errors, ch.rounds - r0, ch.messages - m0, elapsed, cpu)


async def _preload(store: Store, value: bytes, keys: int) -> None:
    for i in range(0, keys, 16):
        await asyncio.gather(*(store.write(f"bench-{j}", value) for j in range(i, i + 16)))


def _summarize(run: _Run, *, floor_s: float, **shape: Any) -> CellResult:
    lat = sorted(run.latencies)
    ops = len(lat)
    total = max(1, ops + run.errors)
    p50 = _pct(lat, 0.50)
    per = max(1, ops)
    return CellResult(
        **shape,
        client_procs=run.procs,
        client_cpu_us_per_op=run.client_cpu_s / per * 1e6,
        server_cpu_us_per_op=run.server_cpu_s / per * 1e6,
        ops=ops,
        errors=run.errors,
        duration_s=run.elapsed_s,
        ops_per_s=ops / run.elapsed_s if run.elapsed_s else 0.0,
        p50_ms=p50 * 1e3,
        p99_ms=_pct(lat, 0.99) * 1e3,
        mean_ms=(sum(lat) / ops * 1e3) if ops else float("nan"),
        rounds_per_op=run.rounds / total,
        messages_per_op=run.messages / total,
        floor_rtt_ms=floor_s * 1e3,
        p50_over_floor=p50 / floor_s if floor_s else float("nan"),
    )


async def run_bench(
    *,
    servers: list[int],
    concurrency: list[int],
    kinds: list[str],
    modes: list[str] | None = None,
    value_bytes: int = 1024,
    duration_s: float = 3.0,
    storage: str = "sqlite",
    dap: str = "abd",
    k: int | None = None,
    delta: int = 4,
    fast_read: bool = True,
    reconfig_objects: int = 0,
    reconfigs: int = 6,
    reconfig_concurrency: int = 1,
    reconfig_groups: int = 1,
    relocation: bool = False,
    link_delay_ms: float = 0.0,
    base_dir: str | Path | None = None,
    trace_file: str | None = None,
    log: Any = print,
    security: tuple[str, ...] = ("tls",),
    client_procs: int = 1,
    peer: str | None = None,
) -> BenchReport:
    """``security``: "tls" and/or "insecure"; each cluster size runs once per entry.
    ``client_procs``: processes the load of each cell runs from (``concurrency`` split between
    them). ``peer``: "etcd" runs the same cells against a 3-member etcd afterwards."""
    report = BenchReport(
        machine=machine_info() | {"fast_read": fast_read, "link_delay_ms": link_delay_ms}
    )
    for n, sec in [(n, sec) for n in servers for sec in security]:
        kk = k if k is not None else max(1, n - 2)
        with tempfile.TemporaryDirectory(prefix="ares-bench-", dir=base_dir) as tmp:
            cluster = LocalCluster.create(
                Path(tmp) / "cluster",
                n=n,
                spares=n if reconfig_objects else 0,
                storage=storage,
                dap=dap,
                k=kk,
                delta=delta,
                timeout_s=10.0,
                link_delay_ms=link_delay_ms,
                insecure=sec == "insecure",
            )
            cluster.trace_file = f"{trace_file}.n{n}" if trace_file else None
            await asyncio.to_thread(cluster.start_all)
            try:
                await _bench_cluster(
                    report,
                    cluster,
                    n=n,
                    modes=modes or ["ares2"],
                    concurrency=concurrency,
                    kinds=kinds,
                    value_bytes=value_bytes,
                    duration_s=duration_s,
                    storage=storage,
                    fast_read=fast_read,
                    log=log,
                    security=sec,
                    client_procs=client_procs,
                )
                if reconfig_objects and sec == security[0]:
                    for mode in modes or ["ares2"]:
                        result = await _bench_reconfig(
                            cluster,
                            n=n,
                            mode=mode,
                            objects=reconfig_objects,
                            value_bytes=value_bytes,
                            count=reconfigs,
                            concurrency=reconfig_concurrency,
                            groups=reconfig_groups,
                        )
                        report.reconfigs.append(result)
                        log(result.line())
            finally:
                await asyncio.to_thread(cluster.stop)
        if relocation:
            with tempfile.TemporaryDirectory(prefix="ares-bench-", dir=base_dir) as tmp:
                cluster = LocalCluster.create(
                    Path(tmp) / "cluster", n=n, spares=n, storage=storage, timeout_s=2.0
                )
                await asyncio.to_thread(cluster.start_all)
                try:
                    moved = await _bench_relocation(cluster, n=n)
                finally:
                    await asyncio.to_thread(cluster.stop)
                report.relocations.append(moved)
                log(moved.line())
    if peer == "etcd":
        from .bench_etcd import run_etcd_cells

        with tempfile.TemporaryDirectory(prefix="ares-bench-etcd-", dir=base_dir) as tmp:
            report.peer_cells = await run_etcd_cells(
                Path(tmp),
                kinds=kinds,
                concurrency=concurrency,
                duration_s=duration_s,
                value_bytes=value_bytes,
                log=log,
            )
        for c, p, r in report.peer_ratios():
            log(
                f"N={c.servers} {c.security} {c.mode} C={c.concurrency} {c.kind}: aresdsm / "
                f"{p.system} = {c.ops_per_s:.0f} / {p.ops_per_s:.0f} ops/s = {r:.2f}x"
            )
    elif peer is not None:
        raise ValueError(f"unknown peer {peer!r}; expected 'etcd'")
    return report


async def _bench_relocation(cluster: LocalCluster, *, n: int) -> RelocationResult:
    """Issue 11's figure: retire the initial servers by a reconfiguration, pause them, time a new
    client's first read; then stop them and time it again."""
    cf = cluster.cluster
    async with Store(cf.initial, options=cf.client) as admin:
        await admin.write("k", b"v")
        await admin.reconfigure(Configuration("c1", cf.servers[n : 2 * n]), force=True)
        await admin.settle(timeout_s=10.0)
    pids = [cluster.procs[s.id].pid for s in cf.initial.servers]

    async def first_read() -> float:
        async with Store(cf.initial, options=cf.client, known_servers=cf.servers) as st:
            t0 = time.perf_counter()
            await st.read("k")
            return time.perf_counter() - t0

    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        paused = await first_read()
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    for s in cf.initial.servers:
        await asyncio.to_thread(cluster.kill, s.id)
    stopped = await first_read()
    return RelocationResult(n, cf.client.timeout_s, paused, stopped)


async def _bench_cluster(
    report: BenchReport,
    cluster: LocalCluster,
    *,
    n: int,
    modes: list[str],
    concurrency: list[int],
    kinds: list[str],
    value_bytes: int,
    duration_s: float,
    storage: str,
    fast_read: bool,
    log: Any,
    security: str = "tls",
    client_procs: int = 1,
) -> None:
    initial = cluster.cluster.initial
    floor = 0.0
    pids = [p.pid for p in cluster.procs.values()]
    for mode in modes:
        switches = _switches(mode, fast_read)
        store = Store(
            initial,
            options=cluster.cluster.client,
            switches=switches,
            cluster_id=cluster.cluster.cluster_id,
        )
        if not floor:
            floor = await measure_floor(store)
            log(f"N={n} {security}: transport floor (ping RTT p50) {floor * 1e3:.3f} ms")
        for c in concurrency:
            for kind in kinds:
                s0 = [process_cpu_s(pid) for pid in pids]
                if client_procs > 1:
                    if kind == "read":
                        await _preload(store, b"v" * value_bytes, 200)
                    run = await _run_cell_procs(
                        cluster,
                        mode=mode,
                        fast_read=fast_read,
                        procs=client_procs,
                        kind=kind,
                        concurrency=c,
                        duration_s=duration_s,
                        value_bytes=value_bytes,
                    )
                else:
                    run = await run_cell(
                        store,
                        kind=kind,
                        concurrency=c,
                        duration_s=duration_s,
                        value_bytes=value_bytes,
                    )
                s1 = [process_cpu_s(pid) for pid in pids]
                run.server_cpu_s = sum(b - a for a, b in zip(s0, s1, strict=True)) / len(pids)
                cell = _summarize(
                    run,
                    floor_s=floor,
                    servers=n,
                    mode=mode,
                    dap=initial.dap,
                    concurrency=c,
                    kind=kind,
                    value_bytes=value_bytes,
                    storage=storage,
                    security=security,
                )
                report.cells.append(cell)
                log(cell.line())
        await store.close()


def _switches(mode: str, fast_read: bool) -> OpSwitches:
    base = MODES[mode]
    return dataclasses.replace(base, fast_read=base.fast_read and fast_read)


def _load_process(conn: Any, args: dict[str, Any]) -> None:
    """A ``--client-procs`` load process: connect, say ready, wait for go, run the cell's closed
    loop, send back its figures."""
    try:
        result = runtime.run(_load_process_main(conn, args))
    except BaseException as e:  # the parent reports it
        conn.send({"error": f"{type(e).__name__}: {e}"})
    else:
        conn.send(result)
    finally:
        conn.close()


async def _load_process_main(conn: Any, args: dict[str, Any]) -> dict[str, Any]:
    cf = LocalCluster.open(args["cluster_dir"]).cluster
    store = Store(
        cf.initial,
        options=cf.client,
        switches=_switches(args["mode"], args["fast_read"]),
        cluster_id=cf.cluster_id,
    )
    try:
        for _ in range(20):  # connections and handshakes before the clock starts
            await store.ping(0)
        await store.read("bench-0")  # the configuration chain, discovered
        conn.send("ready")
        await asyncio.to_thread(conn.recv)  # go
        run = await run_cell(
            store,
            kind=args["kind"],
            concurrency=args["concurrency"],
            duration_s=args["duration_s"],
            value_bytes=args["value_bytes"],
            preload=False,
        )
    finally:
        await store.close()
    return dataclasses.asdict(run)


LOAD_PROCESS_START_S = 60.0
"""How long a ``--client-procs`` load process may take to start and connect (and, after its
load, to report)."""


def _recv(end: Any, timeout_s: float) -> Any:
    if not end.poll(timeout_s):
        raise RuntimeError(f"a load process did not answer within {timeout_s:g} s")
    return end.recv()


async def _run_cell_procs(
    cluster: LocalCluster,
    *,
    mode: str,
    fast_read: bool,
    procs: int,
    kind: str,
    concurrency: int,
    duration_s: float,
    value_bytes: int,
) -> _Run:
    """One cell's load from ``procs`` processes (``concurrency`` split between them), started
    together once every one is connected; their figures merged."""
    ctx = multiprocessing.get_context("spawn")
    shares = [concurrency // procs + (1 if i < concurrency % procs else 0) for i in range(procs)]
    children = []
    for share in (s for s in shares if s > 0):
        parent_end, child_end = ctx.Pipe()
        args = {
            "cluster_dir": str(cluster.base_dir),
            "mode": mode,
            "fast_read": fast_read,
            "kind": kind,
            "concurrency": share,
            "duration_s": duration_s,
            "value_bytes": value_bytes,
        }
        proc = ctx.Process(target=_load_process, args=(child_end, args), daemon=True)
        proc.start()
        child_end.close()
        children.append((proc, parent_end))
    try:
        for _, end in children:
            msg = await asyncio.to_thread(_recv, end, LOAD_PROCESS_START_S)
            if msg != "ready":
                raise RuntimeError(f"a load process failed to start: {msg}")
        for _, end in children:
            end.send("go")
        results = [
            await asyncio.to_thread(_recv, end, duration_s + LOAD_PROCESS_START_S)
            for _, end in children
        ]
    finally:
        for proc, end in children:
            await asyncio.to_thread(proc.join, 30)
            if proc.is_alive():
                proc.kill()
            end.close()
    for r in results:
        if "error" in r:
            raise RuntimeError(f"a load process failed: {r['error']}")
    return _Run(
        latencies=[x for r in results for x in r["latencies"]],
        errors=sum(r["errors"] for r in results),
        rounds=sum(r["rounds"] for r in results),
        messages=sum(r["messages"] for r in results),
        elapsed_s=max(r["elapsed_s"] for r in results),
        client_cpu_s=sum(r["client_cpu_s"] for r in results),
        procs=len(results),
    )


async def _bench_reconfig(
    cluster: LocalCluster,
    *,
    n: int,
    mode: str,
    objects: int,
    value_bytes: int,
    count: int,
    concurrency: int,
    groups: int = 1,
) -> ReconfigResult:
    """Reconfigure ``objects`` objects (in ``groups`` groups) back and forth between two server
    sets. With ``batch`` off (classic) every object is reconfigured on its own."""
    group = f"reconf-{mode}"
    names = [group] if groups <= 1 else [f"{group}-{g}" for g in range(groups)]
    store = Store(
        cluster.cluster.initial,
        options=cluster.cluster.client,
        switches=MODES[mode],
        cluster_id=cluster.cluster.cluster_id,
    )
    value = b"r" * value_bytes
    for i in range(0, objects, 64):
        await asyncio.gather(
            *(
                store.write(f"obj-{j}", value, group=names[j % len(names)])
                for j in range(i, min(objects, i + 64))
            )
        )
    pools = [cluster.cluster.servers[:n], cluster.cluster.servers[n : 2 * n]]
    base = cluster.cluster.initial
    times: list[float] = []
    group_bytes = [await _group_bytes(store, cluster, group)]
    r0 = store.channel.rounds
    c0 = store.channel.rounds_by_phase.get("consensus.prepare", 0)
    for i in range(count):
        proposal = Configuration(
            f"{group}-{i + 1}", tuple(pools[(i + 1) % 2]), dap=base.dap, k=base.k, delta=base.delta
        )
        t0 = time.perf_counter()
        if store.switches.batch:  # one reconfiguration moves every group
            await store.reconfigure(proposal, force=True)
        else:  # the original Ares: every object of every group on its own chain
            for name in names:
                await store.reconfigure(proposal, group=name, concurrency=concurrency, force=True)
        times.append(time.perf_counter() - t0)
        # not timed; Stats are single requests, not rounds, so the round count is unchanged
        group_bytes.append(await _group_bytes(store, cluster, group))
    rounds = store.channel.rounds - r0
    decisions = store.channel.rounds_by_phase.get("consensus.prepare", 0) - c0
    await store.close()
    times.sort()
    return ReconfigResult(
        servers=n,
        mode=mode,
        objects=objects,
        value_bytes=value_bytes,
        reconfigs=count,
        p50_ms=_pct(times, 0.5) * 1e3,
        max_ms=times[-1] * 1e3,
        rounds_per_reconfig=rounds / count,
        consensus_per_reconfig=decisions / count,
        group_bytes=group_bytes,
    )


async def _group_bytes(store: Store, cluster: LocalCluster, group: str) -> int:
    """The object bytes of the group's chain on every server -- in Ares II the cluster's one
    chain (every group, the benchmark's own objects included); with ``batch`` off, the chains
    of the group's objects -- once the background finalize of the last reconfiguration is
    done."""
    await store.settle()
    total = 0
    for st in await store.stats(cluster.cluster.servers):
        if isinstance(st, str):
            raise RuntimeError(f"a server did not report its storage: {st}")
        total += sum(
            b
            for name, b in st.bytes_by_config.items()
            if name.startswith((f"{group}/", f"{group}{OBJECT_CHAIN}"))
            or (store.switches.batch and name.startswith(f"{CLUSTER_CHAIN}/"))
        )
    return total


# -- fragmented files (issue 12, docs/protocol.md §9.2) ----------------------------------------


@dataclass
class FileBenchResult:
    """One file benchmark on one cluster: put/get throughput, the client's peak RSS, a small
    edit, concurrent writers, and the file's reconfiguration in both modes."""

    servers: int
    dap: str
    k: int
    file_bytes: int
    avg_block_bytes: int
    blocks: int
    put_mb_s: float
    get_mb_s: float
    client_peak_rss_mb: float
    """The larger of the two below."""
    edit_blocks_written: int
    """Registers the 1 KiB edit wrote (blocks, marks, links, tombstones, journal, index)."""
    edit_time_share: float
    """Time of the 1 KiB edit / time of writing the whole file."""
    disjoint_writers_ok: int
    same_block_outcomes: dict[str, int]
    put_peak_rss_mb: float = 0.0
    """The client's peak RSS during the put (VmHWM reset before it)."""
    get_peak_rss_mb: float = 0.0
    edit_new_blocks: int = 0
    """New blocks the 1 KiB edit wrote."""
    edit_data_blocks: int = 0
    """Block writes of the edit that carry data: new blocks, marks, relinks."""
    patch_time_share: float = 0.0
    """The same kind of 1 KiB change with ``files.write_at`` (re-chunks only around it): the
    median of PATCH_SAMPLES, each / the time of writing the whole file."""
    patch_new_blocks: int = 0
    patch_data_blocks: int = 0
    reconfig_ms: dict[str, float] = field(default_factory=dict)
    reconfig_decisions: dict[str, int] = field(default_factory=dict)

    def line(self, *, skip_edit: bool = False) -> str:
        mb = self.file_bytes / 1e6
        if skip_edit:
            return (
                f"file n={self.servers} {self.dap}: {mb:.0f} MB in {self.blocks} blocks: put "
                f"{self.put_mb_s:.1f} MB/s, get {self.get_mb_s:.1f} MB/s, client peak RSS put "
                f"{self.put_peak_rss_mb:.0f} MB / get {self.get_peak_rss_mb:.0f} MB"
            )
        r = ", ".join(
            f"{m}: {self.reconfig_ms[m]:.0f} ms / {self.reconfig_decisions[m]} decision(s)"
            for m in self.reconfig_ms
        )
        return (
            f"file n={self.servers} {self.dap}: {mb:.0f} MB in {self.blocks} blocks: put "
            f"{self.put_mb_s:.1f} MB/s, get {self.get_mb_s:.1f} MB/s, client peak RSS put "
            f"{self.put_peak_rss_mb:.0f} MB / get {self.get_peak_rss_mb:.0f} MB; 1 KiB edit: "
            f"{self.edit_new_blocks} new block(s), {self.edit_data_blocks} block writes with "
            f"data, {self.edit_blocks_written} register writes in all, "
            f"{100 * self.edit_time_share:.1f} % of a whole write; write_at 1 KiB: "
            f"{self.patch_new_blocks} new, {self.patch_data_blocks} with data, "
            f"{100 * self.patch_time_share:.2f} %; disjoint writers ok "
            f"{self.disjoint_writers_ok}/2; same block {self.same_block_outcomes}; reconfig {r}"
        )


PATCH_SAMPLES = 3
"""write_at samples per file bench (at 1/8, 2/8, 3/8 of the file); the median is reported."""


class _Zeros:
    """A pseudo-random file of ``size`` bytes produced as it is read (the bench never holds
    the file in memory), cheaply: every 64 KiB segment is a slice of one random 1 MiB pool at a
    pseudo-random offset, so producing it costs a copy, not a random generator (which runs at
    ~170 MB/s here and would be timed as part of a put), and no two blocks are alike.
    ``edit_at``: 1 KiB there is ``E`` bytes. Seekable, so a write that lost a race retries."""

    SEGMENT = 64 * 1024
    POOL = 4 * 1024 * 1024

    def __init__(self, size: int, seed: int = 1, edit_at: int | None = None) -> None:
        import random

        self.size = size
        self.pos = 0
        self._seed = seed
        self._pool = random.Random(seed).randbytes(self.POOL + self.SEGMENT)
        self._edit_at = edit_at

    def _segment(self, i: int) -> bytes:
        off = (i * 2654435761 + self._seed * 40503) % self.POOL
        return self._pool[off : off + self.SEGMENT]

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, pos: int) -> int:
        self.pos = pos
        return pos

    def read(self, n: int) -> bytes:
        n = min(n, self.size - self.pos)
        if n <= 0:
            return b""
        seg = self.SEGMENT
        first, last = self.pos // seg, (self.pos + n - 1) // seg
        data = b"".join(self._segment(i) for i in range(first, last + 1))
        lo = self.pos - first * seg
        out = data[lo : lo + n]
        if self._edit_at is not None and self.pos <= self._edit_at < self.pos + n:
            i = self._edit_at - self.pos
            buf = bytearray(out)
            buf[i : i + 1024] = b"E" * len(buf[i : i + 1024])
            out = bytes(buf)
        self.pos += n
        return out


class _Discard:
    def write(self, b: bytes) -> int:
        return len(b)


async def run_file_bench(
    *,
    n: int,
    file_bytes: int,
    avg_block_bytes: int = 1024 * 1024,
    dap: str = "abd",
    k: int | None = None,
    delta: int = 4,
    storage: str = "sqlite",
    modes: list[str] | None = None,
    base_dir: str | Path | None = None,
    log: Any = print,
    skip_edit: bool = False,
) -> FileBenchResult:
    """Write and read one file of ``file_bytes``, change 1 KiB in its middle, run two writers
    on disjoint regions and four on one block, then reconfigure the file in each mode (Ares II:
    one decision for the whole file; classic: one per block). ``skip_edit``: only the put and
    the get (a big file's throughput and peak RSS, without rewriting it again)."""
    from .files import ChunkParams, FileConflict
    from .files.memory import bound_malloc_cache, peak_rss_mb, reset_peak_rss

    bound_malloc_cache()

    params = ChunkParams(
        min_bytes=max(64, avg_block_bytes // 4),
        avg_bytes=avg_block_bytes,
        max_bytes=min(16 * 1024 * 1024, avg_block_bytes * 4),
    )
    kk = k if k is not None else max(1, n - 2)
    with tempfile.TemporaryDirectory(prefix="ares-bench-files-", dir=base_dir) as tmp:
        cluster = LocalCluster.create(
            Path(tmp) / "cluster",
            n=n,
            spares=n,
            storage=storage,
            dap=dap,
            k=kk,
            delta=delta,
            timeout_s=30.0,
        )
        await asyncio.to_thread(cluster.start_all)
        try:
            cf = cluster.cluster
            store = Store(cf.initial, options=cf.client)
            await store.write("bench-warm-up", b"")  # connections up before the clock starts
            reset_peak_rss()
            t0 = time.perf_counter()
            await store.files.write("bench.bin", _Zeros(file_bytes), params=params)
            put_s = time.perf_counter() - t0
            put_rss_mb = peak_rss_mb()
            reset_peak_rss()
            t0 = time.perf_counter()
            await store.files.read_into("bench.bin", _Discard())
            get_s = time.perf_counter() - t0
            get_rss_mb = peak_rss_mb()
            st = await store.files.stat("bench.bin")
            log(
                f"file: {file_bytes} bytes, {st.blocks} blocks, "
                f"put {put_s:.2f} s, get {get_s:.2f} s"
            )
            f = store.files
            if skip_edit:
                await store.close()
                result = FileBenchResult(
                    n,
                    dap,
                    kk if dap == "treas" else 1,
                    file_bytes,
                    avg_block_bytes,
                    st.blocks,
                    file_bytes / put_s / 1e6,
                    file_bytes / get_s / 1e6,
                    max(put_rss_mb, get_rss_mb),
                    0,
                    0.0,
                    0,
                    {},
                    put_peak_rss_mb=put_rss_mb,
                    get_peak_rss_mb=get_rss_mb,
                )
                log(result.line(skip_edit=True))
                return result
            before = (f.blocks_written, f.new_blocks_written, f.data_blocks_written)
            t0 = time.perf_counter()
            await f.write("bench.bin", _Zeros(file_bytes, edit_at=file_bytes // 2))
            edit_s = time.perf_counter() - t0
            edit_blocks = f.blocks_written - before[0]
            edit_new = f.new_blocks_written - before[1]
            edit_data = f.data_blocks_written - before[2]
            pbefore = (f.new_blocks_written, f.data_blocks_written)
            patch_times = []
            for i in range(PATCH_SAMPLES):  # one sample of ~20 round trips is noisy: median
                t0 = time.perf_counter()
                await f.write_at("bench.bin", file_bytes * (i + 1) // 8, b"P" * 1024)
                patch_times.append(time.perf_counter() - t0)
            patch_s = sorted(patch_times)[PATCH_SAMPLES // 2]
            patch = (
                (f.new_blocks_written - pbefore[0]) // PATCH_SAMPLES,
                (f.data_blocks_written - pbefore[1]) // PATCH_SAMPLES,
            )
            # two writers, disjoint regions of one (smaller) file
            small = min(file_bytes, 8 * avg_block_bytes)
            await store.files.write("shared.bin", _Zeros(small, seed=2), params=params)
            others = [Store(cf.initial, options=cf.client) for _ in range(4)]
            res: Sequence[int | BaseException] = await asyncio.gather(
                others[0].files.write("shared.bin", _Zeros(small, seed=2, edit_at=small // 8)),
                others[1].files.write("shared.bin", _Zeros(small, seed=2, edit_at=7 * small // 8)),
                return_exceptions=True,
            )
            disjoint_ok = sum(not isinstance(r, BaseException) for r in res)
            for o in others:
                o.files.max_retries = 0
            res = await asyncio.gather(
                *(
                    o.files.write("shared.bin", _Zeros(small, seed=3 + i, edit_at=small // 2))
                    for i, o in enumerate(others)
                ),
                return_exceptions=True,
            )
            outcomes: dict[str, int] = {}
            for r in res:
                key = "ok" if not isinstance(r, BaseException) else type(r).__name__
                outcomes[key] = outcomes.get(key, 0) + 1
            assert all(isinstance(r, int | FileConflict) for r in res), res
            for o in others:
                await o.close()
            await store.close()
            result = FileBenchResult(
                n,
                dap,
                kk if dap == "treas" else 1,
                file_bytes,
                avg_block_bytes,
                st.blocks,
                file_bytes / put_s / 1e6,
                file_bytes / get_s / 1e6,
                max(put_rss_mb, get_rss_mb),
                edit_blocks,
                edit_s / put_s,
                disjoint_ok,
                outcomes,
                put_peak_rss_mb=put_rss_mb,
                get_peak_rss_mb=get_rss_mb,
                edit_new_blocks=edit_new,
                edit_data_blocks=edit_data,
                patch_time_share=patch_s / put_s,
                patch_new_blocks=patch[0],
                patch_data_blocks=patch[1],
            )
            await _bench_file_reconfig(cluster, result, params, modes or ["ares2", "classic"])
        finally:
            await asyncio.to_thread(cluster.stop)
    log(result.line())
    return result


async def _bench_file_reconfig(
    cluster: LocalCluster, result: FileBenchResult, params: Any, modes: list[str]
) -> None:
    """Reconfigure one file of ``result.blocks`` blocks: Ares II moves it with the cluster's
    one decision; classic Ares reconfigures each block's chain (and the genesis) on its own."""
    cf = cluster.cluster
    n = result.servers
    pools = [cf.servers[:n], cf.servers[n : 2 * n]]
    for i, mode in enumerate(modes):
        store = Store(cf.initial, options=cf.client, switches=MODES[mode])
        name = f"reconf-{mode}.bin"
        blocks = max(1, result.blocks)
        await store.files.write(name, _Zeros(blocks * params.avg_bytes, seed=9), params=params)
        proposal = Configuration(
            f"file-{mode}-{i}",
            tuple(pools[1]) if mode == "ares2" else tuple(pools[0][::-1]),
            dap=cf.initial.dap,
            k=cf.initial.k,
            delta=cf.initial.delta,
        )
        c0 = store.channel.rounds_by_phase.get("consensus.prepare", 0)
        t0 = time.perf_counter()
        if store.switches.batch:
            await store.reconfigure(proposal, force=True)
        else:
            keys = ["file:" + name, *await store.keys(f"file-block:{name}:")]
            await store.reconfigure(proposal, keys=keys, concurrency=8, force=True)
        result.reconfig_ms[mode] = (time.perf_counter() - t0) * 1e3
        result.reconfig_decisions[mode] = (
            store.channel.rounds_by_phase.get("consensus.prepare", 0) - c0
        )
        await store.close()
