"""``ares s3 bench``: the gateway against the native paths on one local cluster, in one run.

* a large object: boto3's ``upload_file`` / ``download_file`` (the transfer manager: multipart,
  8 MiB parts, 10 threads) through ``ares s3 serve``, against ``ares file put`` / ``ares file
  get`` of the same bytes (each a process, as a user runs them);
* small objects: 1 KiB PutObject from ``clients`` concurrent boto3 clients, against the native
  client writing 1 KiB objects with as many operations in flight.

The gateway is a process of its own (``python -m aresdsm s3 serve``); its peak RSS is reported
(the memory bound of streaming). Figures go to docs/benchmarks.md; the machine they were taken
on is named there.
"""

from __future__ import annotations

import asyncio
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
    import boto3
    from boto3.s3.transfer import TransferConfig
    from botocore.config import Config

    with tempfile.TemporaryDirectory(prefix="ares-s3-bench-") as tmp:
        base = Path(tmp)
        lc = LocalCluster.create(base / "c", n=n, timeout_s=30.0)
        lc.start_all()
        gw: subprocess.Popen[bytes] | None = None
        try:
            src = base / "object.bin"
            with open(src, "wb") as f:
                left = object_bytes
                while left:
                    f.write(os.urandom(min(left, 4 * MIB)))
                    left -= min(left, 4 * MIB)
            ares = [sys.executable, "-m", "aresdsm"]
            cluster = ["--cluster", str(lc.cluster_path)]
            put_s = _timed([*ares, "file", "put", str(src), "native.bin", *cluster])
            get_s = _timed(
                [*ares, "file", "get", "native.bin", str(base / "native.back"), *cluster]
            )
            log(
                f"native: put {object_bytes / MIB / put_s:.1f} MiB/s, "
                f"get {object_bytes / MIB / get_s:.1f} MiB/s"
            )
            gw = subprocess.Popen(
                [*ares, "s3", "serve", *cluster, "--listen", "127.0.0.1:0",
                 "--key", f"{_KEY[0]}:{_KEY[1]}:admin"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
            )  # fmt: skip
            assert gw.stdout is not None
            line = gw.stdout.readline().decode()
            endpoint = line.strip().split()[-1]

            def client() -> Any:
                return boto3.client(
                    "s3", endpoint_url=endpoint, aws_access_key_id=_KEY[0],
                    aws_secret_access_key=_KEY[1], region_name="us-east-1",
                    config=Config(s3={"addressing_style": "path"}, max_pool_connections=16),
                )  # fmt: skip

            s3 = client()
            s3.create_bucket(Bucket="bench")
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
            native_ops = asyncio.run(_native_small(lc, clients, duration_s))
            s3_ops = _s3_small([client() for _ in range(clients)], duration_s)
            log(f"1 KiB writes, {clients} at once: native {native_ops:.0f}/s, boto3 {s3_ops:.0f}/s")
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
        native_ops, s3_ops, rss,
    )  # fmt: skip


async def _native_small(lc: LocalCluster, clients: int, duration_s: float) -> float:
    from ..client import Store

    store = Store(lc.cluster.initial, options=lc.cluster.client)
    value = os.urandom(1024)
    done = 0
    end = time.perf_counter() + duration_s

    async def worker(i: int) -> None:
        nonlocal done
        j = 0
        while time.perf_counter() < end:
            await store.write(f"small-{i}-{j % 64}", value, group="bench-native")
            done += 1
            j += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(clients)))
    elapsed = time.perf_counter() - t0
    await store.close()
    return done / elapsed


def _s3_small(s3s: list[Any], duration_s: float) -> float:
    """One boto3 client per thread, each writing 1 KiB objects back to back."""
    clients = len(s3s)
    value = os.urandom(1024)
    done = [0] * clients
    end = time.perf_counter() + duration_s

    def worker(i: int) -> None:
        j = 0
        while time.perf_counter() < end:
            s3s[i].put_object(Bucket="bench", Key=f"small-{i}-{j % 64}", Body=value)
            done[i] += 1
            j += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) / (time.perf_counter() - t0)


def _peak_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")
