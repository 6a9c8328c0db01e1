"""``ares demo``: a local cluster, a concurrent workload, a crash, a restart and a live
reconfiguration, and a checked history.

Starts real server processes (3 in the initial ABD configuration, 2 spares), runs several clients
(each its own :class:`~aresdsm.client.Store` with its own connections and writer ids) that read
and write a few hot keys with unique values, SIGKILLs one server, restarts it, then reconfigures
the cluster from ABD on 3 servers to TREAS on all 5 (k=3) while the clients keep going. At the end
it reads every key once more and checks the whole recorded history for linearizability
(docs/protocol.md §10 invariant 1; acknowledged writes surviving the crash and the reconfiguration,
invariant 8, is part of that check: a lost write would make a later read return an older value).
"""

from __future__ import annotations

import asyncio
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .check import check_file
from .client import HistoryRecorder, Store
from .config import Configuration
from .errors import OperationError
from .local import LocalCluster


@dataclass
class DemoResult:
    ops_ok: int = 0
    ops_failed: int = 0
    writes_ok: int = 0
    reads_ok: int = 0
    events: list[str] = field(default_factory=list)
    verdict: str = "unknown"
    explanation: str = ""
    history_path: str = ""
    duration_s: float = 0.0
    latencies_s: list[float] = field(default_factory=list)


async def _client(
    store: Store,
    rng: random.Random,
    keys: list[str],
    deadline: float,
    value_size: int,
    res: DemoResult,
) -> None:
    n = 0
    while time.monotonic() < deadline:
        key = rng.choice(keys)
        t0 = time.perf_counter()
        try:
            if rng.random() < 0.5:
                n += 1
                stamp = f"{store.client_id}-{n}|".encode()
                await store.write(key, stamp + b"." * max(0, value_size - len(stamp)))
                res.writes_ok += 1
            else:
                await store.read(key)
                res.reads_ok += 1
            res.ops_ok += 1
            res.latencies_s.append(time.perf_counter() - t0)
        except OperationError:
            res.ops_failed += 1
            await asyncio.sleep(0.05)


async def run_demo(
    *,
    servers: int = 3,
    clients: int = 4,
    duration_s: float = 9.0,
    keys: int = 3,
    value_size: int = 256,
    crash: bool = True,
    reconfigure: bool = True,
    base_dir: str | Path | None = None,
    seed: int = 1,
    trace_file: str | None = None,
    log: object = print,
    insecure: bool = False,
) -> DemoResult:
    say = log if callable(log) else print
    tmp = None
    if base_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="ares-demo-")
        base_dir = tmp.name
    res = DemoResult()
    spares = 2 if reconfigure else 0
    cluster = LocalCluster.create(
        Path(base_dir) / "cluster", n=servers, spares=spares, timeout_s=2.0, insecure=insecure
    )
    cluster.trace_file = trace_file
    history_path = Path(base_dir) / "history.jsonl"
    res.history_path = str(history_path)
    try:
        say(
            f"starting {servers} server processes and {spares} spares "
            + ("(plaintext, --insecure) ..." if insecure else "(mutual TLS) ...")
        )
        await asyncio.to_thread(cluster.start_all)
        victim = cluster.cluster.initial.server_ids[-1]
        with open(history_path, "wb") as out:  # noqa: ASYNC230 - small, line-buffered appends
            rec = HistoryRecorder(out)
            # least privilege (docs/security.md): the workload holds write certificates, only
            # the reconfigurer an admin one
            stores = [
                Store(
                    cluster.cluster.initial,
                    options=cluster.client_options("write"),
                    recorder=rec,
                    cluster_id=cluster.cluster.cluster_id,
                )
                for _ in range(clients)
            ]
            key_names = [f"key-{i}" for i in range(keys)]
            start = time.monotonic()
            deadline = start + duration_s
            rng = random.Random(seed)
            say(f"running {clients} clients on {keys} keys for {duration_s:.0f}s ...")
            tasks = [
                asyncio.create_task(
                    _client(s, random.Random(rng.random()), key_names, deadline, value_size, res)
                )
                for s in stores
            ]
            admin = Store(
                cluster.cluster.initial,
                options=cluster.client_options("admin"),
                cluster_id=cluster.cluster.cluster_id,
            )

            def event(text: str) -> None:
                res.events.append(f"t={time.monotonic() - start:4.1f}s  {text}")
                say(res.events[-1])

            step = duration_s / 4
            if crash:
                await asyncio.sleep(step)
                await asyncio.to_thread(cluster.kill, victim)
                event(f"SIGKILL server {victim}")
                await asyncio.sleep(step)
                await asyncio.to_thread(cluster.restart, victim)
                event(f"restarted server {victim}")
            if reconfigure:
                await asyncio.sleep(max(0.0, start + 3 * step - time.monotonic()))
                target = Configuration("c1", cluster.cluster.servers, dap="treas", k=3, delta=4)
                t0 = time.monotonic()
                decided = await admin.reconfigure(target)
                event(
                    f"reconfigured {cluster.cluster.initial.describe()} -> {decided.describe()} "
                    f"in {(time.monotonic() - t0) * 1e3:.0f} ms"
                )
            await admin.close()
            await asyncio.gather(*tasks)
            for key in key_names:  # final reads: every acknowledged write must still be visible
                await stores[0].read(key)
            res.duration_s = time.monotonic() - start
            for s in stores:
                await s.close()
        result = check_file(history_path)
        res.verdict = result.verdict
        res.explanation = "" if result.verdict == "ok" else result.explain()
    finally:
        await asyncio.to_thread(cluster.stop)
        if tmp is not None:
            res.history_path = ""
            tmp.cleanup()
    return res
