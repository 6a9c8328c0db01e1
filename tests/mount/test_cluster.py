"""`ares mount` on a changing cluster: two mounts see each other's closed files; two closes of
the same version from two mounts (one wins, the other gets ESTALE, nothing torn); locks hold
within one mount and mean nothing to another; a reconfiguration ABD -> TREAS while a large
``cp`` runs; a server SIGKILLed during a write."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aresdsm.client import Store
from aresdsm.config import Configuration
from aresdsm.files.layer import BLOCK_PREFIX
from aresdsm.local import LocalCluster

from .conftest import ATTR_TIMEOUT_S, mounted, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two(cluster: LocalCluster) -> tuple[Path, Path]:
    a, b = cluster.base_dir.parent / "a", cluster.base_dir.parent / "b"
    with mounted(cluster, a), mounted(cluster, b):
        yield a, b  # type: ignore[misc]


def store(lc: LocalCluster) -> Store:
    return Store(lc.cluster.initial, options=lc.client_options(), known_servers=lc.cluster.servers)


def test_two_mounts_see_each_others_closed_files(two: tuple[Path, Path]) -> None:
    a, b = two
    (a / "shared").mkdir()
    (a / "shared" / "from-a.txt").write_text("written on a\n")
    wait_for((b / "shared" / "from-a.txt").exists, what="a's file on b")
    assert (b / "shared" / "from-a.txt").read_text() == "written on a\n"
    (b / "shared" / "from-b.txt").write_text("written on b\n")
    (b / "shared" / "from-a.txt").write_text("rewritten on b\n")
    time.sleep(ATTR_TIMEOUT_S * 2)  # a's attribute cache expires (close-to-open)
    assert sorted(os.listdir(a / "shared")) == ["from-a.txt", "from-b.txt"]
    assert (a / "shared" / "from-a.txt").read_text() == "rewritten on b\n"
    os.unlink(a / "shared" / "from-b.txt")
    wait_for(lambda: not (b / "shared" / "from-b.txt").exists(), what="the unlink on b")


def test_concurrent_close_one_wins_the_other_gets_estale(two: tuple[Path, Path]) -> None:
    a, b = two
    base = random.Random(5).randbytes(400_000)
    (a / "race.bin").write_bytes(base)
    time.sleep(ATTR_TIMEOUT_S * 2)
    fa = open(a / "race.bin", "r+b")  # noqa: SIM115 (closed below, in order)
    fb = open(b / "race.bin", "r+b")  # noqa: SIM115
    try:
        assert fb.read(10) == base[:10]  # both opened the same version
        fa.seek(1000)
        fa.write(b"A" * 5000)
        fb.seek(300_000)
        fb.write(b"B" * 5000)
        fa.close()  # publishes first: wins
        with pytest.raises(OSError) as e:
            fb.close()  # its version is no longer the newest: ESTALE, nothing written
        assert e.value.errno == errno.ESTALE
    finally:
        fa.close()
        with contextlib.suppress(OSError):
            fb.close()
    want = bytearray(base)
    want[1000:6000] = b"A" * 5000
    time.sleep(ATTR_TIMEOUT_S * 2)
    for m in (a, b):  # a's version, whole: none of b's bytes
        assert (m / "race.bin").read_bytes() == bytes(want)
    (b / "race.bin").write_bytes(b"after")  # a new open on b works again
    wait_for(lambda: (a / "race.bin").read_bytes() == b"after", what="b's later version on a")


def _lockf_in_another_process(path: Path) -> int:
    """Try an exclusive POSIX record lock (fcntl F_SETLK) on ``path`` from a process of its
    own: 0 if granted, 1 if another process holds a conflicting lock."""
    code = (
        "import fcntl, sys\n"
        f"f = open({str(path)!r}, 'r+b')\n"
        "try:\n    fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
        "except BlockingIOError:\n    sys.exit(1)\n"
    )
    return subprocess.run([sys.executable, "-c", code], check=False, timeout=60).returncode


def test_locks_hold_within_one_mount_and_mean_nothing_to_another(two: tuple[Path, Path]) -> None:
    """docs/mount.md "Operations": pyfuse3 has no lock handlers, so the kernel keeps flock and
    fcntl locks of the mount itself -- they never answer ENOTSUP, they exclude the processes of
    one mount, and a second mount of the same cluster does not see them."""
    a, b = two
    (a / "locked").write_bytes(b"x" * 100)
    wait_for((b / "locked").exists, what="the file on b")
    with open(a / "locked", "r+b") as f1, open(a / "locked", "r+b") as f2:
        fcntl.flock(f1, fcntl.LOCK_EX | fcntl.LOCK_NB)  # granted (not ENOTSUP)
        with pytest.raises(BlockingIOError):
            fcntl.flock(f2, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the same mount: excluded
        with open(b / "locked", "r+b") as g:
            fcntl.flock(g, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another mount: not seen
            fcntl.flock(g, fcntl.LOCK_UN)
        fcntl.lockf(f1, fcntl.LOCK_EX | fcntl.LOCK_NB)  # POSIX record lock: granted
        assert _lockf_in_another_process(a / "locked") == 1  # the same mount: excluded
        assert _lockf_in_another_process(b / "locked") == 0  # another mount: not seen
        fcntl.lockf(f1, fcntl.LOCK_UN)
        assert _lockf_in_another_process(a / "locked") == 0  # released: granted


def _tree(root: Path, files: int, size: int) -> None:
    rnd = random.Random(9)
    for i in range(files):
        d = root / f"d{i % 3}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i}.bin").write_bytes(rnd.randbytes(size))


def test_reconfiguration_abd_to_treas_during_a_large_cp(
    cluster: LocalCluster, two: tuple[Path, Path], tmp_path: Path
) -> None:
    a, b = two
    src = tmp_path / "big"
    _tree(src, 16, 200_000)
    cp = subprocess.Popen(["cp", "-r", str(src), str(a / "big")])
    try:
        wait_for(lambda: (a / "big").exists() or cp.poll() is not None, what="cp to start")
        running_at_start = cp.poll() is None
        servers = cluster.cluster.servers

        async def reconf() -> str:
            async with store(cluster) as s:
                c1 = Configuration("c1", servers[:5], dap="treas", k=3, delta=4)
                return (await s.reconfigure(c1)).id

        assert asyncio.run(reconf()) == "c1"
        assert cp.wait(timeout=120) == 0
    finally:
        if cp.poll() is None:
            cp.kill()
            cp.wait()
    assert running_at_start, "cp ended before the reconfiguration began (make the tree larger)"
    r = subprocess.run(["diff", "-r", str(src), str(a / "big")], capture_output=True, check=False)
    assert r.returncode == 0, r.stdout
    time.sleep(ATTR_TIMEOUT_S * 2)
    r = subprocess.run(["diff", "-r", str(src), str(b / "big")], capture_output=True, check=False)
    assert r.returncode == 0, r.stdout


def test_server_sigkilled_during_a_write(
    cluster: LocalCluster, two: tuple[Path, Path], tmp_path: Path
) -> None:
    a, b = two
    data = random.Random(11).randbytes(4_000_000)
    (tmp_path / "w.bin").write_bytes(data)

    async def kill_when_blocks_flow() -> None:
        """SIGKILL one server of the configuration (ABD or TREAS) once the first block of the
        file's publication (the close) reached the servers: the write is under way."""
        async with store(cluster) as s:
            deadline = time.monotonic() + 120
            while not await s.keys(f"{BLOCK_PREFIX}w.bin:"):
                assert cp.poll() in (None, 0), "cp failed before any block was written"
                assert time.monotonic() < deadline, "no block of w.bin reached the servers"
                await asyncio.sleep(0.02)
        cluster.kill("s2")

    cp = subprocess.Popen(["cp", str(tmp_path / "w.bin"), str(a / "w.bin")])
    try:
        asyncio.run(kill_when_blocks_flow())
        assert cp.wait(timeout=120) == 0
    finally:
        if cp.poll() is None:
            cp.kill()
            cp.wait()
    assert (a / "w.bin").read_bytes() == data
    time.sleep(ATTR_TIMEOUT_S * 2)
    assert (b / "w.bin").read_bytes() == data
