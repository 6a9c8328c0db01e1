"""Online backup and restore (issue 15 item 2), with real server processes and the CLI: back up a
cluster while clients write and delete, restore into a fresh cluster, compare; a damaged archive
is refused before anything is written; ``--overwrite`` semantics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import aresdsm
from aresdsm.backup import ROOT
from aresdsm.local import LocalCluster

pytestmark = pytest.mark.slow


def ares(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aresdsm", *args],
        capture_output=True,
        check=False,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "200"},
    )


@pytest.fixture
def two_clusters() -> Iterator[tuple[LocalCluster, LocalCluster]]:
    with tempfile.TemporaryDirectory(prefix="ares-backup-") as tmp:
        a = LocalCluster.create(Path(tmp) / "a", n=3, timeout_s=3.0)
        b = LocalCluster.create(Path(tmp) / "b", n=3, timeout_s=3.0)
        a.start()
        b.start()
        try:
            yield a, b
        finally:
            a.stop()
            b.stop()


def _index(path: Path) -> list[dict[str, object]]:
    with tarfile.open(path) as tar:
        f = tar.extractfile(f"{ROOT}/index.jsonl")
        assert f is not None
        return [json.loads(line) for line in f.read().splitlines()]


def test_backup_under_load_restore_into_a_fresh_cluster(
    two_clusters: tuple[LocalCluster, LocalCluster], tmp_path: Path
) -> None:
    a, b = two_clusters
    stable = {("default", f"k{i}"): os.urandom(i * 37 % 3000) for i in range(60)}
    stable |= {("photos", f"p/{i}"): os.urandom(70_000 + i) for i in range(4)}  # value files
    with aresdsm.connect_sync(a.cluster_path) as store:
        for (g, k), v in stable.items():
            store.write(k, v, group=g)
        store.write("doomed", b"x")
        store.delete("doomed")

        stop = threading.Event()
        churned: list[int] = []

        def load() -> None:  # writes, overwrites and deletes while the backup runs
            n = 0
            while not stop.is_set():
                n += 1
                try:
                    store.write(f"hot{n % 7}", f"v{n}".encode(), group="busy")
                    if n % 5 == 0:
                        store.delete(f"hot{(n * 3) % 7}", group="busy")
                except aresdsm.OperationError:  # a loaded machine: the load goes on
                    pass
            churned.append(n)

        threads = [threading.Thread(target=load) for _ in range(2)]
        for t in threads:
            t.start()
        archive = tmp_path / "backup.tar"
        r = ares("backup", str(archive), "--cluster", str(a.cluster_path))
        stop.set()
        for t in threads:
            t.join()
        assert r.returncode == 0, r.stderr
        assert "backed up" in r.stdout
        assert sum(churned) > 5  # the load really ran
        assert not archive.with_name("backup.tar.partial").exists()

    index = _index(archive)
    archived = {(e["group"], e["key"]) for e in index}
    assert set(stable) <= archived
    assert ("default", "doomed") not in archived  # deleted before the backup: not in it
    assert {g for g, _ in archived} <= {"default", "photos", "busy"}
    assert ares("restore", "--verify-only", str(archive)).returncode == 0

    r = ares("restore", str(archive), "--cluster", str(b.cluster_path))
    assert r.returncode == 0, r.stderr
    with tarfile.open(archive) as tar, aresdsm.connect_sync(b.cluster_path) as target:
        for e in index:
            f = tar.extractfile(f"{ROOT}/{e['member']}")
            assert f is not None
            assert target.read(str(e["key"]), group=str(e["group"])) == f.read()
        for (g, k), v in stable.items():
            assert target.read(k, group=g) == v
        assert target.read("doomed") is None
        assert sorted(target.groups()) == sorted({g for g, _ in archived})


def test_restore_refuses_damage_and_states_overwrite(
    two_clusters: tuple[LocalCluster, LocalCluster], tmp_path: Path
) -> None:
    a, b = two_clusters
    with aresdsm.connect_sync(a.cluster_path) as store:
        store.write("x", b"from-a")
        store.write("y", b"also-a")
    archive = tmp_path / "b.tar"
    assert ares("backup", str(archive), "--cluster", str(a.cluster_path)).returncode == 0

    # a flipped byte in a value: refused, nothing written
    damaged = tmp_path / "damaged.tar"
    raw = bytearray(archive.read_bytes())
    at = raw.find(b"from-a")
    raw[at] ^= 0xFF
    damaged.write_bytes(bytes(raw))
    r = ares("restore", str(damaged), "--cluster", str(b.cluster_path))
    assert r.returncode == 1 and "checksum" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    with aresdsm.connect_sync(b.cluster_path) as target:
        assert target.read("y") is None
        target.write("x", b"b-own")

    r = ares("restore", str(archive), "--cluster", str(b.cluster_path))
    assert r.returncode == 0 and "1 already existed" in r.stdout, r.stdout
    with aresdsm.connect_sync(b.cluster_path) as target:
        assert target.read("x") == b"b-own"  # kept without --overwrite
        assert target.read("y") == b"also-a"
    r = ares("restore", str(archive), "--overwrite", "--cluster", str(b.cluster_path))
    assert r.returncode == 0, r.stderr
    with aresdsm.connect_sync(b.cluster_path) as target:
        assert target.read("x") == b"from-a"

    (tmp_path / "junk.tar").write_bytes(b"not a tar file at all")
    r = ares("restore", str(tmp_path / "junk.tar"), "--cluster", str(b.cluster_path))
    assert r.returncode == 1 and "error:" in r.stderr
