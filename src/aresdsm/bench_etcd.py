"""``ares bench --peer etcd``: the same load against a 3-member etcd on loopback, in the same run.

etcd is only a yardstick (issue 18): the project never depends on it. This module starts an
``etcd`` binary found on PATH (Debian's etcd-server; ``scripts/install-system-deps.sh``) as a
3-member cluster on free loopback ports with data directories of its own, and drives it with a
closed loop of C requests in flight -- durable writes (``put``: etcd commits them through Raft
and fsyncs its WAL before answering) and linearizable reads (``range`` without
``serializable``: a ReadIndex round through the leader) -- of the benchmark's value size, over
etcd's v3 JSON gateway (``/v3/kv/put``, ``/v3/kv/range``, base64 keys and values) with aiohttp,
the ``bench`` extra. Requests are spread over the three members like a client balancer does.

The gateway is HTTP/1.1 + JSON in front of etcd's gRPC server (one more hop inside each member),
so etcd's figures here are somewhat below what a gRPC client gets; docs/benchmarks.md says so
next to the ratios. CPU per operation is counted for etcd's members (``/proc``) and for this
process, as for aresdsm.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import AresError
from .local import free_ports

START_TIMEOUT_S = 30.0
"""How long the members may take to elect a leader and answer /health."""


@dataclass
class PeerCell:
    """One cell of the peer's load (same shape as the aresdsm cells it is compared with)."""

    system: str
    members: int
    concurrency: int
    kind: str
    value_bytes: int
    ops: int
    errors: int
    duration_s: float
    ops_per_s: float
    p50_ms: float
    p99_ms: float
    client_cpu_us_per_op: float
    server_cpu_us_per_op: float
    """Mean over the members."""

    def line(self) -> str:
        return (
            f"{self.system} x{self.members} C={self.concurrency:<3} {self.kind:<5}"
            f" {self.ops_per_s:8.0f} ops/s  p50 {self.p50_ms:7.3f} ms  p99 {self.p99_ms:7.3f} ms"
            f"  CPU/op client {self.client_cpu_us_per_op:.0f} us, member"
            f" {self.server_cpu_us_per_op:.0f} us"
            + (f"  ({self.errors} errors)" if self.errors else "")
        )


def etcd_binary() -> str | None:
    return shutil.which("etcd")


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc); NaN elsewhere or if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class EtcdCluster:
    """``members`` etcd processes on loopback, data under ``base_dir`` (removed by the caller)."""

    def __init__(self, base_dir: Path, members: int = 3, host: str = "127.0.0.1") -> None:
        binary = etcd_binary()
        if binary is None:
            raise AresError("no etcd binary on PATH (Debian: apt-get install etcd-server)")
        self.binary = binary
        self.base_dir = base_dir
        self.members = members
        ports = free_ports(2 * members, host)
        self.client_urls = [f"http://{host}:{p}" for p in ports[:members]]
        self.peer_urls = [f"http://{host}:{p}" for p in ports[members:]]
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        initial = ",".join(f"e{i}={u}" for i, u in enumerate(self.peer_urls))
        token = f"ares-bench-{os.getpid()}-{time.monotonic_ns()}"
        for i, (client, peer) in enumerate(zip(self.client_urls, self.peer_urls, strict=True)):
            data = self.base_dir / f"e{i}"
            data.mkdir(parents=True, exist_ok=True)
            log = (self.base_dir / f"e{i}.log").open("wb")
            self.procs.append(
                subprocess.Popen(
                    [
                        self.binary,
                        "--name",
                        f"e{i}",
                        "--data-dir",
                        str(data),
                        "--listen-client-urls",
                        client,
                        "--advertise-client-urls",
                        client,
                        "--listen-peer-urls",
                        peer,
                        "--initial-advertise-peer-urls",
                        peer,
                        "--initial-cluster",
                        initial,
                        "--initial-cluster-state",
                        "new",
                        "--initial-cluster-token",
                        token,
                        "--logger",
                        "zap",
                        "--log-level",
                        "warn",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            )
            log.close()

    async def wait_healthy(self, session: Any) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        for url in self.client_urls:
            while True:
                with contextlib.suppress(Exception):
                    async with session.get(f"{url}/health") as r:
                        if (await r.json(content_type=None)).get("health") == "true":
                            break
                if time.monotonic() > deadline or any(p.poll() is not None for p in self.procs):
                    raise AresError(
                        f"etcd did not become healthy within {START_TIMEOUT_S:g} s "
                        f"(logs in {self.base_dir})"
                    )
                await asyncio.sleep(0.1)

    def cpu_s(self) -> list[float]:
        return [process_cpu_s(p.pid) for p in self.procs]

    def stop(self) -> None:
        """Kill the members: their data is thrown away, and a graceful stop of a 3.4 cluster
        (leadership transfers between members that are all stopping) takes seconds."""
        for p in self.procs:
            if p.poll() is None:
                p.kill()
        for p in self.procs:
            p.wait()
        self.procs.clear()


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


async def run_etcd_cells(
    base_dir: Path,
    *,
    kinds: list[str],
    concurrency: list[int],
    duration_s: float,
    value_bytes: int,
    members: int = 3,
    keys: int = 200,
    log: Any = print,
) -> list[PeerCell]:
    """Start etcd, run every (concurrency, kind) cell against it, stop it."""
    try:
        import aiohttp
    except ImportError:
        raise AresError(
            "ares bench --peer etcd needs aiohttp: pip install 'aresdsm[bench]'"
        ) from None
    cluster = EtcdCluster(base_dir, members)
    cluster.start()
    cells: list[PeerCell] = []
    try:
        limit = max(concurrency) + members
        connector = aiohttp.TCPConnector(limit=limit, limit_per_host=limit)
        async with aiohttp.ClientSession(connector=connector) as session:
            await cluster.wait_healthy(session)
            value = _b64(b"v" * value_bytes)
            # the keys the reads read, written once (as the aresdsm read cells do)
            for i in range(0, keys, 20):
                await asyncio.gather(
                    *(
                        _put(session, cluster.client_urls[j % members], f"bench-{j}", value)
                        for j in range(i, min(keys, i + 20))
                    )
                )
            for c in concurrency:
                for kind in kinds:
                    cell = await _etcd_cell(
                        session, cluster, kind, c, duration_s, value, value_bytes, keys
                    )
                    cells.append(cell)
                    log(cell.line())
    finally:
        await asyncio.to_thread(cluster.stop)
    return cells


async def _put(session: Any, url: str, key: str, value_b64: str) -> None:
    async with session.post(
        f"{url}/v3/kv/put", json={"key": _b64(key.encode()), "value": value_b64}
    ) as r:
        body = await r.json(content_type=None)
        if r.status != 200 or "header" not in body:
            raise AresError(f"etcd put failed: HTTP {r.status}: {body}")


async def _get(session: Any, url: str, key: str, value_bytes: int) -> None:
    async with session.post(f"{url}/v3/kv/range", json={"key": _b64(key.encode())}) as r:
        body = await r.json(content_type=None)
        kvs = body.get("kvs") if isinstance(body, dict) else None
        if r.status != 200 or not kvs or len(base64.b64decode(kvs[0]["value"])) != value_bytes:
            raise AresError(f"etcd range failed: HTTP {r.status}: {str(body)[:200]}")


async def _etcd_cell(
    session: Any,
    cluster: EtcdCluster,
    kind: str,
    concurrency: int,
    duration_s: float,
    value_b64: str,
    value_bytes: int,
    keys: int,
) -> PeerCell:
    latencies: list[float] = []
    errors = 0
    counter = itertools.count()
    urls = cluster.client_urls
    deadline = time.perf_counter() + duration_s

    async def worker(w: int) -> None:
        nonlocal errors
        url = urls[w % len(urls)]  # spread over the members, like a client balancer
        while time.perf_counter() < deadline:
            key = f"bench-{next(counter) % keys}"
            t0 = time.perf_counter()
            try:
                if kind == "write":
                    await _put(session, url, key, value_b64)
                else:
                    await _get(session, url, key, value_bytes)
            except Exception:
                errors += 1
                continue
            latencies.append(time.perf_counter() - t0)

    s0, c0, t0 = cluster.cpu_s(), time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    elapsed = time.perf_counter() - t0
    c1, s1 = time.process_time(), cluster.cpu_s()
    lat = sorted(latencies)
    ops = len(lat)
    per = max(1, ops)
    return PeerCell(
        system="etcd",
        members=cluster.members,
        concurrency=concurrency,
        kind=kind,
        value_bytes=value_bytes,
        ops=ops,
        errors=errors,
        duration_s=elapsed,
        ops_per_s=ops / elapsed if elapsed else 0.0,
        p50_ms=lat[len(lat) // 2] * 1e3 if lat else float("nan"),
        p99_ms=lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1e3 if lat else float("nan"),
        client_cpu_us_per_op=(c1 - c0) / per * 1e6,
        server_cpu_us_per_op=sum(b - a for a, b in zip(s0, s1, strict=True)) / len(s0) / per * 1e6,
    )
