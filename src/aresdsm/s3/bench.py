"""``ares s3 bench``: the gateway against the native paths on one local cluster, in one run.

* a large object: boto3's ``upload_file`` / ``download_file`` (the transfer manager: multipart,
  8 MiB parts, 10 threads) through ``ares s3 serve``, against ``ares file put`` / ``ares file
  get`` of the same bytes (each a process, as a user runs them);
* small objects: 1 KiB PutObject of new keys from ``clients`` concurrent boto3 clients, against
  the native client writing 1 KiB objects with as many operations in flight.

The gateway is a process of its own (``python -m aresdsm s3 serve``); its peak RSS is reported
(the memory bound of streaming). The boto3 clients of the small writes run in processes of their
own (``clients`` threads spread over up to CLIENT_PROCESSES processes; one process's threads
share one interpreter lock, which would cap them below the gateway). The CPU time every party
spends per small write (the gateway, the boto3 clients, the servers; the native client and the
servers) is measured from /proc and reported: on a machine with few cores they compete for the
same cores, and the ratio follows their sum. Figures go to docs/benchmarks.md; the machine they
were taken on is named there.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..local import LocalCluster

MIB = 1024 * 1024
_KEY = ("AKBENCH0000000000001", "bench-secret-0001")
CLIENT_PROCESSES = 4
BOTO3_CONFIG = (
    "default: request_checksum_calculation=when_supported (a CRC32 header; over http the body"
    " is sent plain, not aws-chunked), Expect: 100-continue"
)
"""The boto3 configuration the bench measures: what a user gets without configuring anything
(docs/benchmarks.md, "S3 gateway vs native", compares ``when_required``)."""


@dataclass
class S3BenchResult:
    object_bytes: int
    native_put_mb_s: float
    native_get_mb_s: float
    s3_put_mb_s: float
    s3_get_mb_s: float
    small_clients: int
    native_small_ops_s: float
    s3_small_ops_s: float
    gateway_peak_rss_mb: float
    native_small_cpu_ms: dict[str, float]
    """CPU milliseconds per native 1 KiB write: ``client``, ``servers``."""
    s3_small_cpu_ms: dict[str, float]
    """CPU milliseconds per 1 KiB PutObject: ``gateway``, ``clients`` (boto3), ``servers``."""
    small_boto3_config: str = BOTO3_CONFIG
    """Which boto3 configuration the small PutObjects used (its defaults)."""

    def ratios(self) -> dict[str, float]:
        return {
            "put": self.s3_put_mb_s / self.native_put_mb_s,
            "get": self.s3_get_mb_s / self.native_get_mb_s,
            "small_put": self.s3_small_ops_s / self.native_small_ops_s,
        }


def _timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL, capture_output=True)
    return time.perf_counter() - t0


def run_s3_bench(
    *,
    object_bytes: int = 256 * MIB,
    clients: int = 16,
    duration_s: float = 5.0,
    n: int = 3,
    log: Any = print,
) -> S3BenchResult:
    with tempfile.TemporaryDirectory(prefix="ares-s3-bench-") as tmp:
        base = Path(tmp)
        lc = LocalCluster.create(base / "c", n=n, timeout_s=30.0)
        lc.start_all()
        gw: subprocess.Popen[bytes] | None = None
        put_s = get_s = s3_put_s = s3_get_s = math.nan
        try:
            ares = [sys.executable, "-m", "aresdsm"]
            cluster = ["--cluster", str(lc.cluster_path)]
            gw = subprocess.Popen(
                [*ares, "s3", "serve", *cluster, "--listen", "127.0.0.1:0",
                 "--key", f"{_KEY[0]}:{_KEY[1]}:admin"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
            )  # fmt: skip
            assert gw.stdout is not None
            line = gw.stdout.readline().decode()
            endpoint = line.strip().split()[-1]
            s3 = _client(endpoint)
            s3.create_bucket(Bucket="bench")
            if object_bytes:
                put_s, get_s, s3_put_s, s3_get_s = _large(
                    lc, s3, base, object_bytes, ares, cluster, log
                )
            servers = [p.pid for p in lc.procs.values()]
            t0 = _cpu_s(servers)
            native_ops, native_n, native_client_s = asyncio.run(
                _native_small(lc, clients, duration_s)
            )
            native_cpu = {
                "client": native_client_s / native_n * 1e3,
                "servers": (_cpu_s(servers) - t0) / native_n * 1e3,
            }
            t0, g0 = _cpu_s(servers), _cpu_s([gw.pid])
            s3_ops, s3_n, s3_clients_s = _s3_small(endpoint, clients, duration_s)
            s3_cpu = {
                "gateway": (_cpu_s([gw.pid]) - g0) / s3_n * 1e3,
                "clients": s3_clients_s / s3_n * 1e3,
                "servers": (_cpu_s(servers) - t0) / s3_n * 1e3,
            }
            log(f"1 KiB writes, {clients} at once: native {native_ops:.0f}/s, boto3 {s3_ops:.0f}/s")
            log(
                "CPU ms per write: native "
                + ", ".join(f"{k} {v:.2f}" for k, v in native_cpu.items())
                + "; boto3 via the gateway "
                + ", ".join(f"{k} {v:.2f}" for k, v in s3_cpu.items())
            )
            rss = _peak_rss_mb(gw.pid)
        finally:
            if gw is not None:
                gw.terminate()
                gw.wait(timeout=30)
                if gw.stdout is not None:
                    gw.stdout.close()
            lc.stop()
    mb = object_bytes / MIB
    return S3BenchResult(
        object_bytes, mb / put_s, mb / get_s, mb / s3_put_s, mb / s3_get_s, clients,
        native_ops, s3_ops, rss, native_cpu, s3_cpu,
    )  # fmt: skip


def _client(endpoint: str) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id=_KEY[0],
        aws_secret_access_key=_KEY[1], region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, max_pool_connections=16),
    )  # fmt: skip


def _large(
    lc: LocalCluster, s3: Any, base: Path, object_bytes: int, ares: list[str],
    cluster: list[str], log: Any,
) -> tuple[float, float, float, float]:  # fmt: skip
    """Seconds of: ares file put, ares file get, boto3 upload_file, boto3 download_file."""
    from boto3.s3.transfer import TransferConfig

    src = base / "object.bin"
    with open(src, "wb") as f:
        left = object_bytes
        while left:
            f.write(os.urandom(min(left, 4 * MIB)))
            left -= min(left, 4 * MIB)
    put_s = _timed([*ares, "file", "put", str(src), "native.bin", *cluster])
    get_s = _timed([*ares, "file", "get", "native.bin", str(base / "native.back"), *cluster])
    log(
        f"native: put {object_bytes / MIB / put_s:.1f} MiB/s, "
        f"get {object_bytes / MIB / get_s:.1f} MiB/s"
    )
    cfg = TransferConfig()
    t0 = time.perf_counter()
    s3.upload_file(str(src), "bench", "object.bin", Config=cfg)
    s3_put_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    s3.download_file("bench", "object.bin", str(base / "s3.back"), Config=cfg)
    s3_get_s = time.perf_counter() - t0
    if (base / "s3.back").stat().st_size != object_bytes:
        raise RuntimeError("the object read back has the wrong size")
    log(
        f"boto3:  put {object_bytes / MIB / s3_put_s:.1f} MiB/s, "
        f"get {object_bytes / MIB / s3_get_s:.1f} MiB/s"
    )
    for p in (src, base / "native.back", base / "s3.back"):
        p.unlink()
    return put_s, get_s, s3_put_s, s3_get_s


async def _native_small(
    lc: LocalCluster, clients: int, duration_s: float
) -> tuple[float, int, float]:
    """(writes/s, writes, CPU seconds of this process) of ``clients`` concurrent 1 KiB writes."""
    from ..client import Store

    store = Store(lc.cluster.initial, options=lc.cluster.client)
    value = os.urandom(1024)
    done = 0
    end = time.perf_counter() + duration_s

    async def worker(i: int) -> None:
        nonlocal done
        j = 0
        while time.perf_counter() < end:
            await store.write(f"small-{i}-{j}", value, group="bench-native")
            done += 1
            j += 1

    c0 = time.process_time()
    t0 = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(clients)))
    elapsed = time.perf_counter() - t0
    cpu_s = time.process_time() - c0
    await store.close()
    return done / elapsed, done, cpu_s


def _s3_small(endpoint: str, clients: int, duration_s: float) -> tuple[float, int, float]:
    """(PutObject/s, PutObjects, CPU seconds of the clients): ``clients`` boto3 clients, one per
    thread, the threads spread over up to CLIENT_PROCESSES processes, each writing new 1 KiB
    objects back to back; they start together once every process has made its clients."""
    procs = max(1, min(CLIENT_PROCESSES, clients))
    threads = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(procs)
    results: Any = ctx.Queue()
    workers = [
        ctx.Process(
            target=_s3_small_process,
            args=(endpoint, sum(threads[:i]), threads[i], duration_s, barrier, results),
            daemon=True,
        )
        for i in range(procs)
    ]
    for w in workers:
        w.start()
    try:
        got = [results.get(timeout=120 + duration_s) for _ in workers]
    finally:
        for w in workers:
            w.join(timeout=30)
            if w.is_alive():
                w.kill()
    errors = [g for g in got if isinstance(g, str)]
    if errors:
        raise RuntimeError(f"a boto3 client process failed: {errors[0]}")
    done = sum(g[0] for g in got)
    elapsed = max(g[1] for g in got)
    return done / elapsed, done, sum(g[2] for g in got)


def _s3_small_process(
    endpoint: str, first: int, threads: int, duration_s: float, barrier: Any, results: Any
) -> None:
    """One client process: puts (PutObjects, seconds, CPU seconds while writing), or the error
    as a string, on ``results``."""
    try:
        s3s = [_client(endpoint) for _ in range(threads)]
        value = os.urandom(1024)
        done = [0] * threads
        barrier.wait(timeout=120)
        end = time.perf_counter() + duration_s

        def worker(i: int) -> None:
            j = 0
            while time.perf_counter() < end:
                s3s[i].put_object(Bucket="bench", Key=f"small-{first + i}-{j}", Body=value)
                done[i] += 1
                j += 1

        ts = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
        c0 = time.process_time()
        t0 = time.perf_counter()
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        results.put((sum(done), time.perf_counter() - t0, time.process_time() - c0))
    except Exception as e:  # reported by the parent
        barrier.abort()
        results.put(f"{type(e).__name__}: {e}")


def _cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds of the processes (0 for one that is gone)."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _peak_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")
