"""CPU per operation of one client and of each of 3 server processes, for a fixed number of
operations (issue 18). Works against older commits too (for bisecting a regression):

    git archive <commit> src | tar -x -C /tmp/old
    PYTHONPATH=/tmp/old/src python scripts/cpu_per_op.py write 4000 64 insecure sqlite

Arguments: KIND (write|read) OPS CONCURRENCY [tls|insecure] [sqlite|memory]. Prints client and
server CPU microseconds per operation (process CPU from time.process_time and /proc/<pid>/stat;
the client's also split into user and system time: on loopback a send does the receiving
side's TCP work too, in the sender's system time),
read/write system calls per operation (/proc/<pid>/io: syscr/syscw; with uvloop every send is a
write/writev), rounds and messages per operation (counted by the channel) and wall-clock ops/s
(which, unlike CPU per operation, depends on what else the machine runs). Linux only."""

from __future__ import annotations

import asyncio
import inspect
import os
import sys
import tempfile
import time
from pathlib import Path

from aresdsm.client import Store
from aresdsm.local import LocalCluster

TCK = os.sysconf("SC_CLK_TCK")


def _io(pid: int) -> tuple[int, int]:
    with open(f"/proc/{pid}/io") as f:
        d = dict(line.split(": ") for line in f.read().splitlines())
    return int(d["syscr"]), int(d["syscw"])


def _cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TCK


async def main(tmp: str, kind: str, ops: int, conc: int, sec: str, storage: str) -> None:
    kw = {}
    if "insecure" in inspect.signature(LocalCluster.create).parameters:
        kw["insecure"] = sec == "insecure"
    cl = LocalCluster.create(Path(tmp) / "c", n=3, storage=storage, timeout_s=10.0, **kw)
    await asyncio.to_thread(cl.start_all)
    try:
        skw = {}
        if "cluster_id" in inspect.signature(Store.__init__).parameters:
            skw["cluster_id"] = getattr(cl.cluster, "cluster_id", "")
        st = Store(cl.cluster.initial, options=cl.cluster.client, **skw)
        v = b"v" * 1024
        for i in range(0, 200, 16):
            await asyncio.gather(*(st.write(f"k{j}", v) for j in range(i, i + 16)))
        pids = [p.pid for p in cl.procs.values()]
        me = os.getpid()
        io0 = [_io(p) for p in [*pids, me]]
        s0 = [_cpu(p) for p in pids]
        r0, m0 = st.channel.rounds, st.channel.messages
        u0 = os.times()
        c0, t0 = time.process_time(), time.perf_counter()
        left = ops

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                if kind == "write":
                    await st.write(f"k{left % 200}", v)
                else:
                    await st.read(f"k{left % 200}")

        await asyncio.gather(*(worker() for _ in range(conc)))
        el, c1 = time.perf_counter() - t0, time.process_time()
        u1 = os.times()
        s1 = [_cpu(p) for p in pids]
        io1 = [_io(p) for p in [*pids, me]]
        srv = [(b - a) / ops * 1e6 for a, b in zip(s0, s1, strict=True)]
        print(
            f"{kind} {sec} {storage} C={conc} ops={ops}: client {(c1 - c0) / ops * 1e6:.0f} us/op"
            f" (user {(u1.user - u0.user) / ops * 1e6:.0f}, system"
            f" {(u1.system - u0.system) / ops * 1e6:.0f}),"
            f" servers {' '.join(f'{x:.0f}' for x in srv)} us/op (mean {sum(srv) / 3:.0f});"
            f" syscalls r/w per op: server s1 {(io1[0][0] - io0[0][0]) / ops:.2f}/"
            f"{(io1[0][1] - io0[0][1]) / ops:.2f}, client {(io1[-1][0] - io0[-1][0]) / ops:.2f}/"
            f"{(io1[-1][1] - io0[-1][1]) / ops:.2f}; rounds/op {(st.channel.rounds - r0) / ops:.2f}"
            f" msgs/op {(st.channel.messages - m0) / ops:.2f}; wall {ops / el:.0f} ops/s",
            flush=True,
        )
        await st.close()
    finally:
        await asyncio.to_thread(cl.stop)


if __name__ == "__main__":
    a = sys.argv[1:]
    args = (
        a[0],
        int(a[1]),
        int(a[2]),
        a[3] if len(a) > 3 else "insecure",
        a[4] if len(a) > 4 else "sqlite",
    )
    with tempfile.TemporaryDirectory() as tmp:
        try:
            import uvloop
        except ImportError:
            asyncio.run(main(tmp, *args))
        else:
            uvloop.run(main(tmp, *args))
