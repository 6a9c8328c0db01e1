"""Real `ares mount` processes (FUSE) on a local cluster of real server processes.

Skipped only when this machine cannot mount FUSE file systems at all (no /dev/fuse or no
fusermount3: CI has both). Every mount is unmounted in a ``finally`` (``fusermount3 -u -z``), and
its process is stopped by its own pid.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from aresdsm.local import LocalCluster

if not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:
    pytest.skip(
        "FUSE is not available here (/dev/fuse or fusermount3 missing: install Debian's fuse3 "
        "with scripts/install-system-deps.sh)",
        allow_module_level=True,
    )

ATTR_TIMEOUT_S = 0.2


def wait_for(cond: object, timeout_s: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if cond():  # type: ignore[operator]
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def unmount(mp: Path) -> None:
    subprocess.run(["fusermount3", "-u", "-z", str(mp)], capture_output=True, check=False)


@contextlib.contextmanager
def mounted(lc: LocalCluster, mp: Path, *extra: str) -> Iterator[subprocess.Popen[bytes]]:
    """``ares mount MP --foreground`` as a process of its own; unmounted and stopped after."""
    mp.mkdir(parents=True, exist_ok=True)
    log = mp.with_name(mp.name + ".log")
    args = [sys.executable, "-m", "aresdsm", "mount", str(mp), "--foreground"]
    args += ["--cluster", str(lc.cluster_path), "--attr-timeout-s", str(ATTR_TIMEOUT_S), *extra]
    with open(log, "ab") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=out)
    try:
        wait_for(lambda: os.path.ismount(mp) or proc.poll() is not None, what=f"the mount of {mp}")
        assert proc.poll() is None, log.read_text()
        yield proc
    finally:
        unmount(mp)
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    """One cluster per module: 3 ABD servers and 2 spares."""
    with tempfile.TemporaryDirectory(prefix="ares-mount-") as tmp:
        lc = LocalCluster.create(Path(tmp) / "c", n=3, spares=2, timeout_s=5.0)
        lc.start_all()
        try:
            yield lc
        finally:
            lc.stop()


@pytest.fixture(scope="module")
def mnt(cluster: LocalCluster) -> Iterator[Path]:
    """One mount of the module's cluster."""
    mp = cluster.base_dir.parent / "mnt"
    with mounted(cluster, mp):
        yield mp


def make_tree(root: Path, files: int = 6, seed: int = 1) -> Path:
    """A small source tree: nested directories, text and binary files, an empty file and an
    empty directory, an executable."""
    import random

    rnd = random.Random(seed)
    (root / "pkg" / "sub").mkdir(parents=True)
    (root / "empty-dir").mkdir()
    (root / "README.md").write_text("# tree\n" * 20)
    (root / "empty.txt").write_bytes(b"")
    for i in range(files):
        d = root / "pkg" / ("sub" if i % 2 else "")
        (d / f"m{i}.py").write_text(
            "".join(f"x{i}_{j} = {j}\n" for j in range(rnd.randint(1, 300)))
        )
    (root / "pkg" / "blob.bin").write_bytes(rnd.randbytes(300_000))
    run = root / "run.sh"
    run.write_text("#!/bin/sh\necho hi\n")
    run.chmod(0o755)
    return root
