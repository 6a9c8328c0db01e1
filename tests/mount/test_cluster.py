"""`ares mount` on a changing cluster: two mounts see each other's closed files; two closes of
the same version from two mounts (one wins, the other gets ESTALE, nothing torn); a
reconfiguration ABD -> TREAS while a large ``cp`` runs; a server SIGKILLed during a write."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import random
import subprocess
import time
from pathlib import Path

import pytest

from aresdsm.client import Store
from aresdsm.config import Configuration
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
    cp = subprocess.Popen(["cp", str(tmp_path / "w.bin"), str(a / "w.bin")])
    try:
        wait_for(lambda: (a / "w.bin").exists() or cp.poll() is not None, what="cp to start")
        time.sleep(0.2)  # the data is being published (a 4 MB close)
        cluster.kill("s2")  # SIGKILL: one server of the configuration (ABD or TREAS) is gone
        assert cp.wait(timeout=120) == 0
    finally:
        if cp.poll() is None:
            cp.kill()
            cp.wait()
    assert (a / "w.bin").read_bytes() == data
    time.sleep(ATTR_TIMEOUT_S * 2)
    assert (b / "w.bin").read_bytes() == data
