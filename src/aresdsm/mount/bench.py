"""``ares bench --mount-mb N``: the mount against the native file layer on one local cluster
(docs/benchmarks.md): sequential write and read of one N MiB file through ``ares mount`` and
through ``store.files`` in the same run, and ``ls -l`` of a directory of many files.

The mount runs as a process of its own (``ares mount --foreground``), as users run it; the
native side runs in this process. Both read the same local source file and write into the same
cluster.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..client import Store
from ..local import LocalCluster

CHUNK_BYTES = 1024 * 1024


@dataclass
class MountBenchResult:
    servers: int
    file_bytes: int
    native_write_mb_s: float
    native_read_mb_s: float
    mount_write_mb_s: float
    mount_read_mb_s: float
    ls_files: int
    ls_cold_s: float
    ls_warm_s: float

    def line(self) -> str:
        mib = self.file_bytes / 2**20
        return (
            f"mount n={self.servers}: {mib:.0f} MiB write {self.mount_write_mb_s:.1f} MB/s "
            f"(native {self.native_write_mb_s:.1f}, "
            f"{self.mount_write_mb_s / self.native_write_mb_s:.2f}x), read "
            f"{self.mount_read_mb_s:.1f} MB/s (native {self.native_read_mb_s:.1f}, "
            f"{self.mount_read_mb_s / self.native_read_mb_s:.2f}x); ls -l of {self.ls_files} "
            f"files {self.ls_cold_s:.2f} s cold, {self.ls_warm_s:.2f} s warm"
        )


class _Discard:
    def write(self, b: bytes) -> int:
        return len(b)


@contextlib.contextmanager
def _mounted(cluster: LocalCluster, mp: Path) -> Iterator[None]:
    mp.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, "-m", "aresdsm", "mount", str(mp), "--foreground"]
    args += ["--cluster", str(cluster.cluster_path)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not os.path.ismount(mp):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ares mount {mp} did not come up")
            time.sleep(0.05)
        yield
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(mp)], capture_output=True, check=False)
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _copy(src: Path, dst: Path) -> None:
    with open(src, "rb") as i, open(dst, "wb") as o:
        while piece := i.read(CHUNK_BYTES):
            o.write(piece)


def _make_source(p: Path, size: int) -> None:
    with open(p, "wb") as f:
        left = size
        while left > 0:
            f.write(os.urandom(min(left, CHUNK_BYTES)))
            left -= CHUNK_BYTES


def _read_all(p: Path) -> None:
    with open(p, "rb") as f:
        while f.read(CHUNK_BYTES):
            pass


async def run_mount_bench(
    *,
    n: int = 3,
    file_bytes: int = 256 * 2**20,
    ls_files: int = 1000,
    storage: str = "sqlite",
    base_dir: str | Path | None = None,
    log: Any = print,
) -> MountBenchResult:
    with tempfile.TemporaryDirectory(prefix="ares-bench-mount-", dir=base_dir) as tmp:
        root = Path(tmp)
        src = root / "source.bin"
        await asyncio.to_thread(_make_source, src, file_bytes)
        cluster = LocalCluster.create(root / "cluster", n=n, storage=storage, timeout_s=30.0)
        await asyncio.to_thread(cluster.start_all)
        try:
            cf = cluster.cluster
            async with Store(cf.initial, options=cf.client) as store:
                t0 = time.perf_counter()
                with open(src, "rb") as source:  # noqa: ASYNC230 (read in a thread by the layer)
                    await store.files.write("native.bin", source)
                native_w = time.perf_counter() - t0
                t0 = time.perf_counter()
                await store.files.read_into("native.bin", _Discard())
                native_r = time.perf_counter() - t0
            log(f"native: write {native_w:.2f} s, read {native_r:.2f} s")
            mp = root / "mnt"
            with _mounted(cluster, mp):
                mount_w = await asyncio.to_thread(_timed, lambda: _copy(src, mp / "mount.bin"))
            with _mounted(cluster, mp):  # a fresh mount: nothing cached
                mount_r = await asyncio.to_thread(_timed, lambda: _read_all(mp / "mount.bin"))
                log(f"mount: write {mount_w:.2f} s, read {mount_r:.2f} s")
                d = mp / "many"
                d.mkdir()

                def one(i: int) -> None:
                    (d / f"f{i:05d}.txt").write_bytes(b"x" * 100)

                with concurrent.futures.ThreadPoolExecutor(32) as pool:
                    await asyncio.to_thread(lambda: list(pool.map(one, range(ls_files))))
            with _mounted(cluster, mp):  # cold: a fresh mount lists the directory
                cmd = ["ls", "-l", str(mp / "many")]

                def ls() -> None:
                    lines = subprocess.run(cmd, capture_output=True, check=True).stdout.count(b"\n")
                    if lines != ls_files + 1:
                        raise RuntimeError(f"ls -l listed {lines - 1} files, not {ls_files}")

                ls_cold = await asyncio.to_thread(_timed, ls)
                ls_warm = await asyncio.to_thread(_timed, ls)
        finally:
            await asyncio.to_thread(cluster.stop)
    result = MountBenchResult(
        n,
        file_bytes,
        file_bytes / native_w / 1e6,
        file_bytes / native_r / 1e6,
        file_bytes / mount_w / 1e6,
        file_bytes / mount_r / 1e6,
        ls_files,
        ls_cold,
        ls_warm,
    )
    log(result.line())
    return result
