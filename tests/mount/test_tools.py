"""Ordinary programs in an `ares mount` (docs/mount.md): cp -r, rsync -a, tar, git, sqlite3, and
the POSIX semantics they rely on (directories, rename, truncate, random access, stat, statfs,
what answers ENOTSUP); the background ``ares mount`` and ``ares umount``."""

from __future__ import annotations

import errno
import os
import re
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from aresdsm.local import LocalCluster

from .conftest import make_tree, mounted, unmount, wait_for

pytestmark = pytest.mark.slow

ARES = [sys.executable, "-m", "aresdsm"]


def sh(*args: str, cwd: Path | None = None) -> str:
    r = subprocess.run(args, cwd=cwd, capture_output=True, text=True, check=False, timeout=120)
    assert r.returncode == 0, f"{args}: {r.stderr}"
    return r.stdout


def test_cp_r_in_and_out_diff_clean(mnt: Path, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    sh("cp", "-r", str(src), str(mnt / "cp"))
    sh("diff", "-r", str(src), str(mnt / "cp"))
    sh("cp", "-r", str(mnt / "cp"), str(tmp_path / "back"))
    sh("diff", "-r", str(src), str(tmp_path / "back"))
    assert os.access(mnt / "cp" / "run.sh", os.X_OK)  # cp -r keeps the mode bits


def test_rsync_a_round_trip(mnt: Path, tmp_path: Path, cluster: LocalCluster) -> None:
    src = make_tree(tmp_path / "src", files=3, seed=2)
    for i, q in enumerate(sorted(src.rglob("*"))):  # (in the past: rsync skips a directory
        t = 1_600_000_000_123_456_789 + i * 1_000_001_000  # whose mtime is in the same second)
        os.utime(q, ns=(t, t))
    sh("rsync", "-a", f"{src}/", f"{mnt / 'rs'}/")
    sh("rsync", "-a", f"{mnt / 'rs'}/", f"{tmp_path / 'back'}/")
    sh("diff", "-r", str(src), str(tmp_path / "back"))
    # -a kept the mtimes (the mount's record holds them) and the modes
    for p in src.rglob("*"):
        q = tmp_path / "back" / p.relative_to(src)
        assert p.stat().st_mtime_ns // 1000 == q.stat().st_mtime_ns // 1000, p
        assert p.stat().st_mode == q.stat().st_mode, p
    # a second rsync finds nothing to copy (sizes and mtimes match)
    out = sh("rsync", "-ai", f"{src}/", f"{mnt / 'rs'}/")
    assert not [ln for ln in out.splitlines() if ln.startswith((">", "c"))], out
    # the files are the layer's files: `ares file get` reads what the mount wrote
    got = tmp_path / "got.md"
    sh(*ARES, "file", "get", "rs/README.md", str(got), "--cluster", str(cluster.cluster_path))
    assert got.read_bytes() == (src / "README.md").read_bytes()


def test_tar_extract_into_the_mount(mnt: Path, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", seed=3)
    tarball = tmp_path / "t.tar"
    sh("tar", "-C", str(src), "-cf", str(tarball), ".")
    (mnt / "tar").mkdir()
    sh("tar", "-C", str(mnt / "tar"), "-xf", str(tarball))
    sh("diff", "-r", str(src), str(mnt / "tar"))


def test_git_init_add_commit(mnt: Path, tmp_path: Path) -> None:
    repo = mnt / "repo"
    repo.mkdir()
    (repo / "a.txt").write_text("alpha\n")
    (repo / "d").mkdir()
    (repo / "d" / "b.txt").write_text("beta\n" * 100)
    env = ["-c", "user.email=t@example.com", "-c", "user.name=t"]
    sh("git", "init", "-q", ".", cwd=repo)
    sh("git", "add", ".", cwd=repo)
    sh("git", *env, "commit", "-qm", "first", cwd=repo)
    assert sh("git", "log", "--format=%s", cwd=repo).split() == ["first"]
    assert sh("git", "status", "--porcelain", cwd=repo) == ""
    clone = tmp_path / "clone"  # a clone out of the mount reads every object back
    sh("git", "clone", "-q", str(repo), str(clone))
    assert (clone / "d" / "b.txt").read_text() == "beta\n" * 100


def test_sqlite_database_in_the_mount(mnt: Path) -> None:
    db = mnt / "db" / "small.sqlite"
    db.parent.mkdir()
    with sqlite3.connect(db) as c:
        c.execute("create table t (k integer primary key, v text)")
        c.executemany("insert into t values (?, ?)", [(i, f"v{i}" * i) for i in range(300)])
    c.close()
    with sqlite3.connect(db) as c:
        c.execute("update t set v = 'changed' where k % 7 = 0")
    c.close()
    with sqlite3.connect(db) as c:
        assert c.execute("select count(*), sum(k) from t").fetchone() == (300, 44850)
        assert c.execute("select v from t where k = 14").fetchone() == ("changed",)
        assert c.execute("pragma integrity_check").fetchone() == ("ok",)
    c.close()
    assert not (mnt / "db" / "small.sqlite-journal").exists()


def test_directories_rename_unlink(mnt: Path) -> None:
    d = mnt / "ops"
    (d / "x" / "y").mkdir(parents=True)
    (d / "x" / "y" / "f").write_bytes(b"f" * 1000)
    (d / "x" / "g").write_bytes(b"g")
    assert sorted(os.listdir(d / "x")) == ["g", "y"]
    with pytest.raises(OSError) as e:
        os.rmdir(d / "x")
    assert e.value.errno == errno.ENOTEMPTY
    os.rename(d / "x", d / "z")  # a directory: every name below it moves
    assert not (d / "x").exists()
    assert (d / "z" / "y" / "f").read_bytes() == b"f" * 1000
    os.rename(d / "z" / "g", d / "z" / "y" / "g2")  # a file, into another directory
    assert sorted(os.listdir(d / "z" / "y")) == ["f", "g2"]
    os.replace(d / "z" / "y" / "g2", d / "z" / "y" / "f")  # onto an existing file
    assert (d / "z" / "y" / "f").read_bytes() == b"g"
    os.unlink(d / "z" / "y" / "f")
    os.rmdir(d / "z" / "y")
    os.rmdir(d / "z")
    assert os.listdir(d) == []
    (d / "e").mkdir()  # an empty directory exists (its record), and survives a listing
    assert os.listdir(d) == ["e"]
    os.symlink("target/path", d / "ln")
    assert os.readlink(d / "ln") == "target/path"


def test_directory_rename_keeps_the_kernels_inodes(cluster: LocalCluster) -> None:
    """A directory rename keeps the inode numbers of every name below it: the kernel moves its
    cached entries with the rename and, within the entry timeout, opens ``z/y/f`` by the inode it
    had for ``x/y/f`` without asking the mount again (in the past the mount dropped those
    numbers at the end of a directory rename: such an open, and the close of a file open across
    the rename, failed with ENOENT — only when the read came soon enough, so the test above
    failed now and then). A long entry timeout here makes the kernel keep them every time."""
    mp = cluster.base_dir.parent / "warm"
    with mounted(cluster, mp, "--attr-timeout-s", "60"):
        d = mp / "ren"
        (d / "x" / "y").mkdir(parents=True)
        (d / "x" / "y" / "f").write_bytes(b"f" * 1000)
        (d / "x" / "g").write_bytes(b"g")
        ino_f = (d / "x" / "y" / "f").stat().st_ino
        with open(d / "x" / "g", "r+b") as held:  # open across the rename, written after it
            os.rename(d / "x", d / "z")
            assert (d / "z" / "y" / "f").stat().st_ino == ino_f
            assert (d / "z" / "y" / "f").read_bytes() == b"f" * 1000
            held.seek(0, os.SEEK_END)
            held.write(b"h")
        assert (d / "z" / "g").read_bytes() == b"gh"
        assert sorted(os.listdir(d)) == ["z"]


def test_truncate_random_access_stat_statfs(mnt: Path) -> None:
    p = mnt / "ra.bin"
    data = bytearray(os.urandom(3_000_000))
    p.write_bytes(data)
    with open(p, "rb") as f:  # random access within an open file
        f.seek(2_500_000)
        assert f.read(1000) == data[2_500_000:2_501_000]
        f.seek(10)
        assert f.read(5) == data[10:15]
    with open(p, "r+b") as f:  # an edit in the middle, published on close
        f.seek(1_000_000)
        f.write(b"EDIT")
    data[1_000_000:1_000_004] = b"EDIT"
    assert p.read_bytes() == data
    os.truncate(p, 100)
    assert p.stat().st_size == 100 and p.read_bytes() == data[:100]
    with open(p, "r+b") as f:
        f.truncate(10)
        f.seek(20)
        f.write(b"Z")
    assert p.read_bytes() == data[:10] + b"\0" * 10 + b"Z"
    os.utime(p, ns=(1_500_000_000_000_000_000, 1_500_000_000_000_000_000))
    assert p.stat().st_mtime_ns == 1_500_000_000_000_000_000
    st = os.statvfs(mnt)
    assert st.f_bsize > 0 and st.f_blocks > 0 and st.f_namemax == 255


def test_not_supported_answers_enotsup(mnt: Path) -> None:
    p = mnt / "ns.txt"
    p.write_text("x")
    with pytest.raises(OSError) as e:
        os.link(p, mnt / "ns-hard.txt")
    assert e.value.errno == errno.ENOTSUP
    with pytest.raises(OSError) as e:
        os.setxattr(p, "user.k", b"v")
    assert e.value.errno == errno.ENOTSUP
    with pytest.raises(OSError) as e:
        os.mkfifo(mnt / "fifo")
    assert e.value.errno == errno.ENOTSUP


def test_background_mount_and_umount(cluster: LocalCluster, tmp_path: Path) -> None:
    mp = tmp_path / "bg"
    mp.mkdir()
    pid = None
    try:
        r = subprocess.run(
            [*ARES, "mount", str(mp), "--cluster", str(cluster.cluster_path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert r.returncode == 0, r.stderr
        pid = int(re.search(r"pid (\d+)", r.stderr).group(1))  # type: ignore[union-attr]
        assert os.path.ismount(mp)
        (mp / "bg.txt").write_text("background\n")
        assert (mp / "bg.txt").read_text() == "background\n"
        r = subprocess.run([*ARES, "umount", str(mp)], capture_output=True, text=True, check=False)
        assert r.returncode == 0, r.stderr
        assert not os.path.ismount(mp)
        wait_for(lambda: not Path(f"/proc/{pid}").exists(), what="the mount process to exit")
    finally:
        unmount(mp)
        if pid is not None and Path(f"/proc/{pid}").exists():
            os.kill(pid, signal.SIGTERM)


def test_bad_mount_and_umount_arguments_are_one_line_errors(tmp_path: Path) -> None:
    cases = [
        [*ARES, "mount", str(tmp_path / "missing")],
        [*ARES, "mount", str(tmp_path), "--cluster", str(tmp_path / "none.toml")],
        [*ARES, "umount", str(tmp_path)],
    ]
    for args in cases:
        r = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
        assert r.returncode == 1, (args, r.stderr)
        assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
