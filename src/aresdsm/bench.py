"""``ares bench``: throughput and latency of a local cluster of real server processes.

For every cell of the matrix (servers N, concurrency C, operation kind) it runs a closed loop of C
operations in flight from one client process for a fixed time, and reports ops/s, latency
percentiles, and the messages and rounds each operation cost (counted by the client's channel,
so "2 round trips per write" is measured, not assumed). Before each cluster's cells it measures the
transport floor: the round-trip time of a no-op Ping to one server, so every latency is also
printed as a multiple of that floor.
"""

from __future__ import annotations

import asyncio
import platform
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .client import Store
from .local import LocalCluster
from .protocol.ops import OpSwitches
from .runtime import loop_name


@dataclass
class CellResult:
    servers: int
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

    def line(self) -> str:
        return (
            f"N={self.servers} C={self.concurrency:<3} {self.kind:<5} {self.ops_per_s:9.0f} ops/s"
            f"  p50 {self.p50_ms:6.3f} ms  p99 {self.p99_ms:6.3f} ms"
            f"  rounds/op {self.rounds_per_op:.2f}  msgs/op {self.messages_per_op:.2f}"
            f"  p50/floor {self.p50_over_floor:.1f}"
        )


@dataclass
class BenchReport:
    machine: dict[str, Any] = field(default_factory=dict)
    cells: list[CellResult] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"machine": self.machine, "cells": [asdict(c) for c in self.cells]}


def machine_info() -> dict[str, Any]:
    import os

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loop": loop_name(),
        "date": time.strftime("%Y-%m-%d"),
    }


def _summarize(
    run: tuple[list[float], int, int, int, float],
    *,
    servers: int,
    concurrency: int,
    kind: str,
    value_bytes: int,
    storage: str,
    floor_s: float,
) -> CellResult:
    lat, errors, rounds, msgs, elapsed = run
    lat.sort()
    ops = len(lat)
    total = max(1, ops + errors)
    p50 = _pct(lat, 0.50)
    return CellResult(
        servers=servers,
        concurrency=concurrency,
        kind=kind,
        value_bytes=value_bytes,
        storage=storage,
        ops=ops,
        errors=errors,
        duration_s=elapsed,
        ops_per_s=ops / elapsed if elapsed else 0.0,
        p50_ms=p50 * 1e3,
        p99_ms=_pct(lat, 0.99) * 1e3,
        mean_ms=(sum(lat) / ops * 1e3) if ops else float("nan"),
        rounds_per_op=rounds / total,
        messages_per_op=msgs / total,
        floor_rtt_ms=floor_s * 1e3,
        p50_over_floor=p50 / floor_s if floor_s else float("nan"),
    )


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


async def run_cell(
    store: Store,
    *,
    kind: str,
    concurrency: int,
    duration_s: float,
    value_bytes: int,
    keys: int = 1000,
) -> tuple[list[float], int, int, int, float]:
    """Closed loop; returns (latencies_s, errors, rounds, messages, elapsed_s)."""
    value = b"v" * value_bytes
    latencies: list[float] = []
    errors = 0
    if kind == "read":  # make sure reads read real values
        await asyncio.gather(*(store.write(f"bench-{i}", value) for i in range(min(keys, 200))))
    ch = store.channel
    r0, m0 = ch.rounds, ch.messages
    deadline = time.perf_counter() + duration_s
    counter = 0

    async def worker() -> None:
        nonlocal errors, counter
        while time.perf_counter() < deadline:
            counter += 1
            key = f"bench-{counter % min(keys, 200)}"
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

    t_start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - t_start
    return latencies, errors, ch.rounds - r0, ch.messages - m0, elapsed


async def run_bench(
    *,
    servers: list[int],
    concurrency: list[int],
    kinds: list[str],
    value_bytes: int = 1024,
    duration_s: float = 3.0,
    storage: str = "sqlite",
    base_dir: str | Path | None = None,
    fast_read: bool = True,
    log: Any = print,
) -> BenchReport:
    report = BenchReport(machine=machine_info() | {"fast_read": fast_read})
    for n in servers:
        with tempfile.TemporaryDirectory(prefix="ares-bench-", dir=base_dir) as tmp:
            cluster = LocalCluster.create(Path(tmp) / "cluster", n=n, storage=storage)
            await asyncio.to_thread(cluster.start)
            try:
                store = Store(
                    cluster.cluster.initial,
                    options=cluster.cluster.client,
                    switches=OpSwitches(fast_read=fast_read),
                )
                floor = await measure_floor(store)
                log(f"N={n}: transport floor (ping RTT p50) {floor * 1e3:.3f} ms")
                for c in concurrency:
                    for kind in kinds:
                        cell = _summarize(
                            await run_cell(
                                store,
                                kind=kind,
                                concurrency=c,
                                duration_s=duration_s,
                                value_bytes=value_bytes,
                            ),
                            servers=n,
                            concurrency=c,
                            kind=kind,
                            value_bytes=value_bytes,
                            storage=storage,
                            floor_s=floor,
                        )
                        report.cells.append(cell)
                        log(cell.line())
                await store.close()
            finally:
                await asyncio.to_thread(cluster.stop)
    return report
