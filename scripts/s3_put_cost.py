"""Per-request cost of a small S3 PutObject against the native writes (issue 16; the figures
are in docs/benchmarks.md, "S3 gateway vs native").

    python scripts/s3_put_cost.py [N] [CLIENTS] [GATEWAY OPTION ...]

One local cluster (ABD, 3 servers, mutual TLS) and one ``ares s3 serve`` process. N writes of new
1 KiB keys, CLIENTS at once, each way (options after CLIENTS go to ``ares s3 serve``, e.g.
``--commit-hold-ms 0``): native ``Store.write``, native ``Store.cvr_write`` on
TAG0, boto3 ``put_object`` with the default config (flexible checksum: CRC32, aws-chunked body),
and boto3 with ``request_checksum_calculation="when_required"`` (plain body). For each it
prints the server requests per write (the servers' counters per request kind, summed over the
servers) and the CPU milliseconds per write of every party (from /proc). CPU per write, unlike
writes per second, barely depends on what else the machine runs.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from aresdsm.client import Store
from aresdsm.local import LocalCluster
from aresdsm.s3.bench import _KEY, _cpu_s
from aresdsm.tags import TAG0

VALUE = os.urandom(1024)


async def _counters(lc: LocalCluster) -> Counter[str]:
    store = Store(lc.cluster.initial, options=lc.cluster.client)
    try:
        total: Counter[str] = Counter()
        for st in await store.stats():
            assert not isinstance(st, str), st
            total.update(st.counters)
        return total
    finally:
        await store.close()


async def _native(lc: LocalCluster, n: int, clients: int, cvr: bool) -> tuple[int, float]:
    store = Store(lc.cluster.initial, options=lc.cluster.client)
    q = iter(range(n))
    tag = f"{'cvr' if cvr else 'w'}-{time.time_ns()}"

    async def worker() -> None:
        for j in q:
            if cvr:
                r = await store.cvr_write(f"{tag}-{j}", VALUE, TAG0, group="native")
                assert r.ok
            else:
                await store.write(f"{tag}-{j}", VALUE, group="native")

    await store.write("warm", VALUE, group="native")
    c0 = time.process_time()
    await asyncio.gather(*(worker() for _ in range(clients)))
    cpu = time.process_time() - c0
    await store.close()
    return n, cpu


def _boto(endpoint: str, n: int, clients: int, when_required: bool) -> tuple[int, float]:
    import boto3
    from botocore.config import Config

    extra: dict[str, Any] = {}
    if when_required:
        extra["request_checksum_calculation"] = "when_required"
    s3s = [
        boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=_KEY[0],
            aws_secret_access_key=_KEY[1],
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}, **extra),
        )
        for _ in range(clients)
    ]
    for s in s3s:
        s.put_object(Bucket="bench", Key="warm", Body=VALUE)
    q = iter(range(n))
    lock = threading.Lock()
    pre = f"{'req' if when_required else 'def'}-{time.time_ns()}"

    def worker(i: int) -> None:
        while True:
            with lock:
                j = next(q, None)
            if j is None:
                return
            s3s[i].put_object(Bucket="bench", Key=f"{pre}-{j}", Body=VALUE)

    ts = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    c0 = time.process_time()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return n, time.process_time() - c0


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 400
    clients = int(sys.argv[2]) if len(sys.argv) > 2 else 16
    print(f"load average {os.getloadavg()}")
    with tempfile.TemporaryDirectory(prefix="ares-s3-cost-") as tmp:
        lc = LocalCluster.create(Path(tmp) / "c", n=3, timeout_s=30.0)
        lc.start_all()
        gw = subprocess.Popen(
            [sys.executable, "-m", "aresdsm", "s3", "serve", "--cluster", str(lc.cluster_path),
             "--listen", "127.0.0.1:0", "--key", f"{_KEY[0]}:{_KEY[1]}:admin", *sys.argv[3:]],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            assert gw.stdout is not None
            endpoint = gw.stdout.readline().decode().strip().split()[-1]
            import boto3

            boto3.client(
                "s3", endpoint_url=endpoint, aws_access_key_id=_KEY[0],
                aws_secret_access_key=_KEY[1], region_name="us-east-1",
            ).create_bucket(Bucket="bench")  # fmt: skip
            servers = [p.pid for p in lc.procs.values()]
            runs: list[tuple[str, Any]] = [
                ("native write", lambda: asyncio.run(_native(lc, n, clients, False))),
                ("native cvr_write", lambda: asyncio.run(_native(lc, n, clients, True))),
                ("boto3 default", lambda: _boto(endpoint, n, clients, False)),
                ("boto3 when_required", lambda: _boto(endpoint, n, clients, True)),
            ]
            for name, run in runs:
                c0 = asyncio.run(_counters(lc))
                s0, g0 = _cpu_s(servers), _cpu_s([gw.pid])
                t0 = time.perf_counter()
                done, client_cpu = run()
                wall = time.perf_counter() - t0
                s1, g1 = _cpu_s(servers), _cpu_s([gw.pid])
                c1 = asyncio.run(_counters(lc))
                per = {k: (c1[k] - c0[k]) / done for k in c1 if c1[k] != c0[k]}
                ms = {
                    "client": client_cpu,
                    "gateway": g1 - g0,
                    "servers": s1 - s0,
                }
                print(
                    f"{name:22s} {done / wall:7.0f}/s  CPU ms/op: "
                    + " ".join(f"{k} {v / done * 1e3:.2f}" for k, v in ms.items())
                )
                print("    server requests per op (3 servers):",
                      ", ".join(f"{k} {v:.2f}" for k, v in sorted(per.items())))  # fmt: skip
        finally:
            gw.terminate()
            gw.wait(timeout=30)
            lc.stop()
    print(f"load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
