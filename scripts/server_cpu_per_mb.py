"""Server CPU per MB of a large file's put and get (issue 12, server side: "server CPU per byte
on the large-value path"). Works against older commits too, for a same-run A/B:

    git archive <commit> src | tar -x -C /tmp/old
    PYTHONPATH=/tmp/old/src python scripts/server_cpu_per_mb.py 64 abd tls
    python scripts/server_cpu_per_mb.py 64 abd tls

Arguments: MIB [abd|treas] [tls|insecure] [ROUNDS]. Starts a local cluster of real server
processes (3 for ABD, 5 for TREAS [5,3]), writes one file of MIB MiB (~1 MiB blocks) and reads it
back, ROUNDS times (default 2, each round a new file name); prints, per round, the servers' CPU
seconds (user + system, /proc/<pid>/stat, all servers together) per MB put and per MB got, and
the wall-clock MB/s (which, unlike CPU per MB, depends on what else the machine runs). Compare
commits by CPU per MB, alternating A and B runs on a busy machine. Linux only."""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

from aresdsm.client import Store
from aresdsm.local import LocalCluster

TCK = os.sysconf("SC_CLK_TCK")


def _cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TCK


async def _chunks(size: int, seed: int) -> object:
    piece = os.urandom(1 << 20)
    done = 0
    while done < size:
        n = min(len(piece), size - done)
        yield seed.to_bytes(8, "big") + piece[8:n]
        done += n
        seed += 1


async def _run(lc: LocalCluster, size: int, rounds: int) -> None:
    pids = [p.pid for p in lc.procs.values()]
    mb = size / 1e6
    async with Store(lc.cluster.initial, options=lc.cluster.client) as st:
        for r in range(rounds):
            name = f"cpu-{r}"
            c0, t0 = sum(map(_cpu, pids)), time.perf_counter()
            await st.files.write(name, _chunks(size, r << 32))
            c1, t1 = sum(map(_cpu, pids)), time.perf_counter()
            got = 0
            async for block in st.files.iter_blocks(name):
                got += len(block)
            c2, t2 = sum(map(_cpu, pids)), time.perf_counter()
            assert got == size, (got, size)
            print(
                f"round {r}: put {(c1 - c0) / mb * 1e3:.2f} ms CPU/MB ({mb / (t1 - t0):.0f} MB/s),"
                f" get {(c2 - c1) / mb * 1e3:.2f} ms CPU/MB ({mb / (t2 - t1):.0f} MB/s)",
                flush=True,
            )
            await st.files.delete(name)


def main() -> None:
    mib = int(sys.argv[1]) if len(sys.argv) > 1 else 64
    dap = sys.argv[2] if len(sys.argv) > 2 else "abd"
    insecure = (sys.argv[3] if len(sys.argv) > 3 else "tls") == "insecure"
    rounds = int(sys.argv[4]) if len(sys.argv) > 4 else 2
    n, k = (3, 1) if dap == "abd" else (5, 3)
    with tempfile.TemporaryDirectory(prefix="ares-cpu-mb-") as tmp:
        lc = LocalCluster.create(
            Path(tmp) / "c", n=n, dap=dap, k=k, delta=1, insecure=insecure, timeout_s=60.0
        )
        lc.start()
        try:
            asyncio.run(_run(lc, mib << 20, rounds))
        finally:
            lc.stop()


if __name__ == "__main__":
    main()
