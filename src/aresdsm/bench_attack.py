"""``ares bench --attack``: a well-behaved client's throughput under a resource attack (issue 13's
figure; docs/benchmarks.md "Under attack", docs/design.md "Limits and bad input").

On a local cluster of real server processes it measures the closed-loop write throughput of one
client (C operations in flight), then starts an attacker *process* that holds ``idle`` idle
connections and ``slowloris`` slowloris connections to every server, and measures again. A
slowloris connection declares a 64 MiB frame and sends it at ``slowloris_rate_bytes_s``; when
the server closes it (frame deadline, memory budget) the attacker opens another. Idle connections
come from several loopback source addresses (127.0.0.2, ...), as an attack from many hosts would,
so the per-address limit alone cannot stop them. While attacked, the servers' resident memory is
sampled (``/proc``). The figure to reach: loaded throughput >= 50 % of unloaded, and every
server's RSS below ``RSS_BOUND_BYTES``.

The attacker runs as ``python -m aresdsm.bench_attack`` so its work does not slow the measuring
client's event loop; it raises its own descriptor limit to the hard limit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import socket
import struct
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

RSS_BOUND_BYTES = 768 * 1024 * 1024
"""Documented bound of a server's RSS under the attack with default limits: the budget of
incomplete frames (256 MiB), per-connection buffers of the well-behaved client and the
interpreter, SQLite and the connection objects (about 2 KiB each)."""
SOURCE_ADDRESSES = 8
"""Loopback source addresses the idle connections come from."""


@dataclass
class AttackResult:
    servers: int
    concurrency: int
    value_bytes: int
    idle_per_server: int
    slowloris_per_server: int
    idle_connected: int
    unloaded_ops_per_s: float
    loaded_ops_per_s: float
    ratio: float
    loaded_errors: int
    max_server_rss_bytes: int
    rss_bound_bytes: int

    @property
    def ok(self) -> bool:
        return self.ratio >= 0.5 and self.max_server_rss_bytes < self.rss_bound_bytes

    def line(self) -> str:
        return (
            f"N={self.servers} C={self.concurrency} {self.value_bytes} B writes: unloaded "
            f"{self.unloaded_ops_per_s:.0f} ops/s, under {self.idle_per_server} idle + "
            f"{self.slowloris_per_server} slowloris connections per server "
            f"{self.loaded_ops_per_s:.0f} ops/s ({self.ratio:.0%}, {self.loaded_errors} errors); "
            f"max server RSS {self.max_server_rss_bytes >> 20} MiB "
            f"(bound {self.rss_bound_bytes >> 20} MiB) -> {'ok' if self.ok else 'NOT MET'}"
        )


def rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


async def run_attack_bench(
    *,
    servers: int = 3,
    concurrency: int = 64,
    value_bytes: int = 1024,
    duration_s: float = 3.0,
    idle: int = 5000,
    slowloris: int = 32,
    slowloris_rate_bytes_s: int = 256 * 1024,
    storage: str = "sqlite",
    base_dir: str | Path | None = None,
    log: Any = print,
) -> AttackResult:
    from .bench import run_cell
    from .client import Store
    from .local import LocalCluster

    with tempfile.TemporaryDirectory(prefix="ares-bench-attack-", dir=base_dir) as tmp:
        cluster = LocalCluster.create(
            Path(tmp) / "cluster", n=servers, storage=storage, timeout_s=10.0
        )
        await asyncio.to_thread(cluster.start_all)
        attacker: subprocess.Popen[str] | None = None
        try:
            store = Store(cluster.cluster.initial, options=cluster.cluster.client)
            unloaded = await run_cell(
                store,
                kind="write",
                concurrency=concurrency,
                duration_s=duration_s,
                value_bytes=value_bytes,
            )
            unloaded_ops = len(unloaded.latencies) / unloaded.elapsed_s
            log(f"unloaded: {unloaded_ops:.0f} ops/s")
            addresses = [s.address for s in cluster.cluster.servers]
            attacker = await asyncio.to_thread(
                _spawn,
                [
                    sys.executable,
                    "-m",
                    "aresdsm.bench_attack",
                    "--addresses",
                    ",".join(addresses),
                    "--idle",
                    str(idle),
                    "--slowloris",
                    str(slowloris),
                    "--rate",
                    str(slowloris_rate_bytes_s),
                ],
            )
            assert attacker.stdout is not None
            ready = await asyncio.to_thread(attacker.stdout.readline)
            connected = json.loads(ready)["idle_connected"] if ready.strip() else 0
            log(f"attacker: {connected} idle connections open, slowloris running")
            pids = list(cluster.running().values())
            peak = max(rss_bytes(p) for p in pids)
            sampling = True

            async def sample() -> None:
                nonlocal peak
                while sampling:
                    peak = max(peak, *(rss_bytes(p) for p in pids))
                    await asyncio.sleep(0.2)

            sampler = asyncio.get_running_loop().create_task(sample())
            loaded = await run_cell(
                store,
                kind="write",
                concurrency=concurrency,
                duration_s=duration_s,
                value_bytes=value_bytes,
            )
            sampling = False
            await sampler
            await store.close()
            loaded_ops = len(loaded.latencies) / loaded.elapsed_s
            return AttackResult(
                servers=servers,
                concurrency=concurrency,
                value_bytes=value_bytes,
                idle_per_server=idle,
                slowloris_per_server=slowloris,
                idle_connected=connected,
                unloaded_ops_per_s=unloaded_ops,
                loaded_ops_per_s=loaded_ops,
                ratio=loaded_ops / unloaded_ops if unloaded_ops else 0.0,
                loaded_errors=loaded.errors,
                max_server_rss_bytes=peak,
                rss_bound_bytes=RSS_BOUND_BYTES,
            )
        finally:
            if attacker is not None:
                attacker.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    attacker.wait(timeout=10)
                if attacker.poll() is None:
                    attacker.kill()
                    attacker.wait()
            await asyncio.to_thread(cluster.stop)


def _spawn(cmd: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)


# -- the attacker process ---------------------------------------------------------------------


def _open_idle(addresses: list[tuple[str, int]], per_server: int) -> list[socket.socket]:
    held = []
    for host, port in addresses:
        for i in range(per_server):
            s = socket.socket()
            s.settimeout(2.0)
            try:
                if host.startswith("127."):
                    s.bind((f"127.0.0.{2 + i % SOURCE_ADDRESSES}", 0))
                s.connect((host, port))
            except OSError:
                s.close()
                continue
            held.append(s)
    return held


async def _slowloris(host: str, port: int, rate_bytes_s: int) -> None:
    chunk = b"\0" * max(1, rate_bytes_s // 10)
    while True:
        try:
            _, writer = await asyncio.open_connection(host, port)
            writer.write(struct.pack(">I", (64 << 20) - 16))
            sent = 0
            while sent < (60 << 20):
                writer.write(chunk)
                sent += len(chunk)
                await writer.drain()
                await asyncio.sleep(0.1)
        except OSError:
            await asyncio.sleep(0.2)  # closed by the server: come back


async def _attack(args: argparse.Namespace) -> None:
    from .config import parse_address

    addresses = [parse_address(a) for a in args.addresses.split(",")]
    held = await asyncio.to_thread(_open_idle, addresses, args.idle)
    tasks = [
        asyncio.get_running_loop().create_task(_slowloris(h, p, args.rate))
        for h, p in addresses
        for _ in range(args.slowloris)
    ]
    print(json.dumps({"idle_connected": len(held) // max(1, len(addresses))}), flush=True)
    try:
        await asyncio.gather(*tasks)
    finally:
        for s in held:
            s.close()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="attacker process of `ares bench --attack`")
    p.add_argument("--addresses", required=True)
    p.add_argument("--idle", type=int, default=5000)
    p.add_argument("--slowloris", type=int, default=32)
    p.add_argument("--rate", type=int, default=256 * 1024)
    args = p.parse_args(argv)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_attack(args))


def result_json(result: AttackResult) -> dict[str, Any]:
    return asdict(result) | {"ok": result.ok}


if __name__ == "__main__":
    main()
