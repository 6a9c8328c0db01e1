"""``ares bench --server-memory-gib``: a server's resident memory holding many GiB of values,
and its restart time (issue 12 item 3; docs/benchmarks.md "Server memory with values on disk").

On a local cluster of real server processes (plaintext: the figure is about the server's state,
not TLS) one client writes ``objects`` values of ``value_bytes`` each through the real
:class:`~aresdsm.client.Store` (``concurrency`` writes in flight). Then, per server:

* RSS after storing (``VmRSS`` of ``/proc/<pid>/status``) and its peak so far (``VmHWM``);
* every server killed (SIGKILL) and started again: the restart time (process start to
  listening, and the recovery time the server logs) and RSS after the restart;
* a sample of the objects read back and compared (every ``verify_every``-th; they come from
  disk: the server holds no value in memory) and RSS after the reads.

With ``layout="files"`` the same bytes are stored as fragmented files instead (issue 12 item 2:
each block a coverable register, ~1 MiB blocks by content-defined chunking) -- ``objects`` files
of ``value_bytes`` each, streamed from an async iterator -- and every ``verify_every``-th file is
read back block by block. ``ares bench --server-memory-gib 4 --server-memory-layout files --dap
treas --k 3 --servers 5`` is the issue's figure: 4 GiB of TREAS blocks.

The figure to reach: every server's RSS at or below ``RSS_BOUND_BYTES`` after storing and after
restarting, and a restart in seconds. The data directory is removed at the end (the disk is
shared); the run refuses to start when the disk has less free space than the values need twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import shutil
import signal
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

from .client import Store
from .errors import AresError
from .local import LocalCluster

RSS_BOUND_BYTES = 300 * 1024 * 1024
"""Documented bound of a server's resident memory whatever the data it stores (issue 12)."""
_RECOVERED = re.compile(r"recovered (\d+) records in ([0-9.]+) s")
_HELD = re.compile(r"value bytes on disk, (\d+) held in memory\)")


@dataclass
class ServerMemory:
    server: str
    rss_after_store_bytes: int
    peak_rss_during_store_bytes: int
    restart_s: float
    """From spawning the process to its listening (interpreter start, recovery, bind)."""
    recovery_s: float
    """The recovery the server logs (loading every record's metadata)."""
    records: int
    rss_after_restart_bytes: int
    rss_after_reads_bytes: int
    value_bytes_held: int = 0
    """Value bytes the server's state held itself after the restart, as it logs them (0: every
    value is a reference to the disk; -1: not logged)."""


LAYOUTS = ("objects", "files")
FILE_CHUNK_BYTES = 1 << 20
"""A file of the ``files`` layout is produced in pieces of this size (the client holds no more)."""


@dataclass
class MemoryBenchResult:
    servers: int
    dap: str
    layout: str
    objects: int
    value_bytes: int
    stored_bytes: int
    write_s: float
    write_mb_s: float
    verified_objects: int
    read_mb_s: float
    per_server: list[ServerMemory] = field(default_factory=list)
    rss_bound_bytes: int = RSS_BOUND_BYTES

    @property
    def ok(self) -> bool:
        return all(
            s.rss_after_store_bytes <= self.rss_bound_bytes
            and s.rss_after_restart_bytes <= self.rss_bound_bytes
            and s.value_bytes_held == 0
            for s in self.per_server
        )


def _status(pid: int, field_name: str) -> int:
    """A ``/proc/<pid>/status`` size in bytes (VmRSS, VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) * 1024
    raise AresError(f"no {field_name} for pid {pid}")


def _value(i: int, base: bytes) -> bytes:
    """Object i's value: distinct per object (a rotation of one random buffer plus its index),
    cheap to make and to check."""
    r = (i * 7919) % len(base)
    return (i.to_bytes(8, "big") + base[r:] + base[:r])[: len(base)]


async def _file_pieces(i: int, size: int, base: bytes) -> AsyncIterator[bytes]:
    """File i's content, ``size`` bytes in pieces of ``len(base)``: each piece distinct (file
    and piece index, then a rotation of ``base``), so no two blocks are alike."""
    done = 0
    piece = 0
    while done < size:
        n = min(len(base), size - done)
        yield _value(i * 1_000_003 + piece, base)[:n]
        done += n
        piece += 1


def check_free_space(directory: Path, need_bytes: int) -> None:
    free = shutil.disk_usage(directory).free
    if free < 2 * need_bytes:
        raise AresError(
            f"{directory} has {free / 2**30:.1f} GiB free; storing {need_bytes / 2**30:.1f} GiB "
            "needs twice that (choose a smaller --server-memory-gib)"
        )


async def run_memory_bench(
    *,
    n: int,
    objects: int,
    value_bytes: int,
    dap: str = "abd",
    k: int | None = None,
    delta: int = 0,
    concurrency: int = 8,
    verify_every: int = 16,
    base_dir: Path | None = None,
    layout: str = "objects",
    log: Callable[[str], None] = print,
) -> MemoryBenchResult:
    if layout not in LAYOUTS:
        raise AresError(f"layout must be one of {', '.join(LAYOUTS)}, not {layout!r}")
    k = k if k is not None else (max(1, n - 2) if dap == "treas" else 1)
    parent = base_dir or Path(tempfile.gettempdir())
    per_server_bytes = objects * value_bytes * (1 if dap == "abd" else n) // k
    check_free_space(parent, per_server_bytes * (n if dap == "abd" else 1))
    tmp = Path(tempfile.mkdtemp(prefix="ares-bench-memory-", dir=parent))
    try:
        lc = await asyncio.to_thread(
            LocalCluster.create,
            tmp / "c",
            n=n,
            dap=dap,
            k=k,
            delta=delta,
            insecure=True,
            timeout_s=60.0,
        )
        await asyncio.to_thread(lc.start)
        try:
            return await _measure(
                lc, n, objects, value_bytes, dap, concurrency, verify_every, layout, log
            )
        finally:
            await asyncio.to_thread(lc.stop)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


async def _measure(
    lc: LocalCluster,
    n: int,
    objects: int,
    value_bytes: int,
    dap: str,
    concurrency: int,
    verify_every: int,
    layout: str,
    log: Callable[[str], None],
) -> MemoryBenchResult:
    ids = list(lc.cluster.initial.server_ids)
    files = layout == "files"
    base = os.urandom(min(value_bytes, FILE_CHUNK_BYTES) if files else value_bytes)
    log(
        f"writing {objects} {layout} of {value_bytes} bytes "
        f"({objects * value_bytes / 2**30:.2f} GiB) to {dap} n={n} ..."
    )
    started = time.perf_counter()
    async with Store(lc.cluster.initial, options=lc.cluster.client) as store:
        nxt = 0

        async def writer() -> None:
            nonlocal nxt
            while nxt < objects:
                i = nxt
                nxt += 1
                if files:
                    await store.files.write(f"file-{i:07d}", _file_pieces(i, value_bytes, base))
                else:
                    await store.write(f"block-{i:07d}", _value(i, base))
                if i and i % max(1, 512 * (1 << 20) // max(1, value_bytes)) == 0:
                    rate = i * value_bytes / (time.perf_counter() - started) / 1e6
                    log(f"  {i} written, {rate:.0f} MB/s")

        await asyncio.gather(*(writer() for _ in range(1 if files else concurrency)))
    write_s = time.perf_counter() - started
    pids = {sid: lc.procs[sid].pid for sid in ids}
    after_store = {sid: _status(pid, "VmRSS") for sid, pid in pids.items()}
    peak = {sid: _status(pid, "VmHWM") for sid, pid in pids.items()}
    log(f"stored in {write_s:.1f} s; RSS {_mib(after_store)}")
    for sid in ids:
        await asyncio.to_thread(lc.kill, sid, signal.SIGKILL)
    restart_s: dict[str, float] = {}
    for sid in ids:
        t0 = time.perf_counter()
        await asyncio.to_thread(lc.restart, sid)
        restart_s[sid] = time.perf_counter() - t0
    after_restart = {sid: _status(lc.procs[sid].pid, "VmRSS") for sid in ids}
    log(f"restarted in {max(restart_s.values()):.2f} s at most; RSS {_mib(after_restart)}")
    verified = 0
    t0 = time.perf_counter()
    async with Store(lc.cluster.initial, options=lc.cluster.client) as store:
        for i in range(0, objects, verify_every):
            if files:
                h, want_h = hashlib.sha256(), hashlib.sha256()
                async for block in store.files.iter_blocks(f"file-{i:07d}"):
                    h.update(block)
                async for piece in _file_pieces(i, value_bytes, base):
                    want_h.update(piece)
                ok = h.digest() == want_h.digest()
            else:
                got = await store.read(f"block-{i:07d}")
                want = _value(i, base)
                ok = (
                    got is not None
                    and hashlib.sha256(got).digest() == hashlib.sha256(want).digest()
                )
            if not ok:
                raise AresError(f"{layout[:-1]} {i} read back wrong after the restart")
            verified += 1
    read_s = time.perf_counter() - t0
    after_reads = {sid: _status(lc.procs[sid].pid, "VmRSS") for sid in ids}
    log(f"{verified} {layout} read back and checked; RSS {_mib(after_reads)}")
    per_server = []
    for sid in ids:
        text = (lc.data_dir(sid) / "server.log").read_text(errors="replace")
        rec = _RECOVERED.findall(text)
        records, recovery_s = (int(rec[-1][0]), float(rec[-1][1])) if rec else (0, 0.0)
        held = _HELD.findall(text)
        per_server.append(
            ServerMemory(
                sid,
                after_store[sid],
                peak[sid],
                restart_s[sid],
                recovery_s,
                records,
                after_restart[sid],
                after_reads[sid],
                int(held[-1]) if held else -1,
            )
        )
    return MemoryBenchResult(
        servers=n,
        dap=dap,
        layout=layout,
        objects=objects,
        value_bytes=value_bytes,
        stored_bytes=objects * value_bytes,
        write_s=write_s,
        write_mb_s=objects * value_bytes / write_s / 1e6,
        verified_objects=verified,
        read_mb_s=verified * value_bytes / read_s / 1e6 if read_s > 0 else 0.0,
        per_server=per_server,
    )


def _mib(rss: dict[str, int]) -> str:
    return ", ".join(f"{sid} {v / 2**20:.0f} MiB" for sid, v in rss.items())
