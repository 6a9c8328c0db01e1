"""Issue 10 with real server processes: a wiped disk, a foreign cluster file, flipped bytes in
every kind of stored record and value file, and a damaged database (items 1-3)."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import pytest

from aresdsm.client import Store, connect
from aresdsm.config import Configuration, dump_cluster_file
from aresdsm.errors import AresError, OperationError
from aresdsm.identity import new_cluster_id
from aresdsm.local import LocalCluster
from aresdsm.wire.messages import Stats

pytestmark = pytest.mark.slow


def _ares(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aresdsm", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _flip(path: Path, pattern: bytes) -> None:
    """Flip one bit in the middle of the first occurrence of ``pattern`` in a file."""
    raw = bytearray(path.read_bytes())
    at = raw.find(pattern)
    assert at >= 0, f"{pattern!r} not found in {path}"
    raw[at + len(pattern) // 2] ^= 0x04
    path.write_bytes(bytes(raw))


def _flip_meta(db: Path, ns: str) -> int:
    """Flip one bit of the meta of every record of kind ``ns`` (SQLite's pages stay valid; an
    empty meta gains a byte). Returns how many records were changed."""
    con = sqlite3.connect(db)
    rows = con.execute("SELECT rowid, meta FROM state WHERE ns = ?", (ns,)).fetchall()
    assert rows, f"no {ns} record in {db}"
    for rowid, meta in rows:
        flipped = bytearray(meta or b"\x00")
        flipped[-1] ^= 0x01
        con.execute("UPDATE state SET meta = ? WHERE rowid = ?", (bytes(flipped), rowid))
    con.commit()
    con.close()
    return len(rows)


async def _until_damaged(lc: LocalCluster, sid: str, what: set[str], timeout_s: float = 20) -> None:
    """Poll the server's stats until it lists ``what`` as damaged (it finds a damaged value
    when a reply first needs it; the reply of a read's slowest server may come after the read)."""
    deadline = time.monotonic() + timeout_s
    while not what <= set((await _stats(lc, sid)).damaged):
        assert time.monotonic() < deadline, (await _stats(lc, sid)).damaged
        await asyncio.sleep(0.1)


async def _stats(lc: LocalCluster, sid: str) -> Stats:
    async with connect(lc.cluster) as st:
        # (the server whatever its incarnation: the stats of a re-created one too)
        (s,) = await st.stats([msgspec.structs.replace(lc.cluster.server(sid), uid="")])
    assert isinstance(s, Stats), s
    return s


def test_a_wiped_server_never_comes_back_under_its_old_id(tmp_path: Path) -> None:
    """Item 1: s1 loses its disk after v2 was acknowledged by {s1, s2}. Restarted under its old
    id it must not answer: with s2 down, the only quorum left would be {s1 (empty), s3 (v1)}."""
    lc = LocalCluster.create(tmp_path / "c", n=3, timeout_s=1.5)
    lc.start()
    try:

        async def write_both() -> None:
            async with connect(lc.cluster) as st:
                await st.write("k", b"v1")
                await asyncio.to_thread(lc.kill, "s3")
                await st.write("k", b"v2")  # acknowledged by s1 and s2

        asyncio.run(write_both())
        lc.kill("s1")
        shutil.rmtree(lc.data_dir("s1"))
        with pytest.raises(AresError, match="is empty"):  # a forgotten --new: refused
            lc.restart("s1")
        assert "is empty" in (lc.data_dir("s1") / "server.log").read_text()
        lc.restart("s1", extra=("--new", "initial"))  # the operator insists: a new incarnation
        lc.restart("s3")
        lc.kill("s2")

        async def read() -> None:
            async with connect(lc.cluster) as st:
                with pytest.raises(OperationError, match="re-created"):
                    await st.read("k")  # never v1
            # the new incarnation itself refuses the configuration that names the old one (a
            # client whose configuration names no uids passes the handshake)
            bare = tuple(msgspec.structs.replace(s, uid="") for s in lc.cluster.initial.servers)
            async with Store(
                msgspec.structs.replace(lc.cluster.initial, servers=bare), options=lc.cluster.client
            ) as raw:
                with pytest.raises(OperationError):
                    await raw.read("k")
            stats = await _stats(lc, "s1")
            assert stats.counters.get("wrong-incarnation", 0) >= 1

        asyncio.run(read())
    finally:
        lc.stop()


def test_a_foreign_cluster_file_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    """Item 2: a client whose cluster file names another cluster (TREAS, another id) or an
    edited initial configuration writes nothing; a server never starts on another cluster's
    data directory."""
    lc = LocalCluster.create(tmp_path / "c", n=3, timeout_s=1.5)
    lc.start()
    try:
        ours = str(lc.cluster_path)
        assert _ares("put", "k", "v1", "--cluster", ours).returncode == 0
        bare = tuple(msgspec.structs.replace(s, uid="") for s in lc.cluster.servers)
        treas = Configuration("c0", bare, dap="treas", k=2, delta=1)
        foreign = msgspec.structs.replace(  # (the same certificates: TLS passes, Hello not)
            lc.cluster,
            servers=bare,
            initial=treas,
            name="other",
            cluster_id=new_cluster_id(),
            data_dirs={},
        )
        edited = msgspec.structs.replace(foreign, cluster_id=lc.cluster.cluster_id)
        for cf, why in ((foreign, "names cluster"), (edited, "another initial configuration")):
            path = tmp_path / "foreign.toml"
            path.write_text(dump_cluster_file(cf))
            r = _ares("put", "k", "v2", "--cluster", str(path))
            assert r.returncode == 1, r.stdout + r.stderr
            err = " ".join(r.stderr.split())  # (rich wraps the one line at the terminal width)
            assert "refused" in err and why in err, err
            assert r.stderr.startswith("error:") and "Traceback" not in r.stderr
        r = _ares("get", "k", "--cluster", ours)
        assert r.returncode == 0 and r.stdout == "v1"
        path = tmp_path / "foreign.toml"
        path.write_text(dump_cluster_file(foreign))
        r = _ares(
            "server", "--id", "s1", "--cluster", str(path), "--data-dir", str(lc.data_dir("s1"))
        )
        assert r.returncode == 1 and "belongs to cluster" in " ".join(r.stderr.split()), r.stderr
        assert "Traceback" not in r.stderr
        r = _ares("server", "--id", "s1", "--cluster", str(path))  # no data directory named
        assert r.returncode != 0 and "no data directory" in " ".join(r.stderr.split()), r.stderr
    finally:
        lc.stop()


def test_flipped_bytes_in_every_kind_of_record_are_never_served(tmp_path: Path) -> None:
    """Item 3: byte flips in an inline ABD value, a truncated and a flipped value file, TREAS
    elements (inline and in a file), and configuration, Paxos, nextC, GC and finalized records.
    The server starts, reports what is damaged, and never answers for it: with another server
    down the reads fail rather than return a wrong value; with it up they return the right
    value; a newer write repairs an object. A restart reads no value (issue 12): a value file's
    absence or length is found at start, a value's checksum when the value is first read."""
    lc = LocalCluster.create(tmp_path / "c", n=3, timeout_s=1.5)
    lc.start()
    db = lc.data_dir("s1") / "state.sqlite3"
    blobs = lc.data_dir("s1") / "blobs"
    small = b"small-inline-value-" + b"s" * 64
    large = b"LARGE-file-value-" + bytes(range(256)) * 400  # > 64 KiB: a value file
    small2 = b"second-small-value-" + b"t" * 64
    large2 = b"SECOND-large-value-" + bytes(range(255, -1, -1)) * 400
    try:

        async def phase1() -> None:
            async with connect(lc.cluster) as st:
                await st.write("small", small)
                await st.write("large", large)

        asyncio.run(phase1())
        lc.kill("s1", 15)  # a clean stop: the write-ahead log is folded into the database
        _flip(db, small[20:60])
        (blob,) = blobs.iterdir()
        blob.write_bytes(blob.read_bytes()[: len(large) // 2])  # truncated
        lc.restart("s1")

        async def check1() -> None:
            stats = await _stats(lc, "s1")
            assert stats.damaged_count == 1, stats  # the truncated file: a stat at start
            async with connect(lc.cluster) as st:
                for _ in range(5):
                    assert await st.read("small") == small
                    assert await st.read("large") == large
            # the flipped inline value: found when s1 read it for a reply
            await _until_damaged(lc, "s1", {"cluster/c0/default/small"})
            assert (await _stats(lc, "s1")).damaged_count == 2
            r = await asyncio.to_thread(_ares, "status", "--cluster", str(lc.cluster_path))
            out = " ".join(r.stdout.split())
            assert r.returncode == 0 and "damaged on disk" in out and "c0/default/small" in out
            await asyncio.to_thread(lc.kill, "s2")
            async with connect(lc.cluster) as st:
                for key in ("small", "large"):
                    with pytest.raises(OperationError, match="damaged"):
                        await st.read(key)
            await asyncio.to_thread(lc.restart, "s2")
            async with connect(lc.cluster) as st:
                await st.write("small", b"repaired")  # a newer write repairs the object
            assert (await _stats(lc, "s1")).damaged_count == 1

        asyncio.run(check1())

        async def phase2() -> None:
            async with connect(lc.cluster) as st:
                t = Configuration("c1", lc.cluster.initial.servers, dap="treas", k=1, delta=1)
                assert (await st.reconfigure(t)).id == "c1"
                await st.settle()
                await st.write("small2", small2)
                await st.write("large2", large2)

        asyncio.run(phase2())
        lc.kill("s1", 15)
        _flip(db, small2[20:60])  # a TREAS element (k=1: the value is in it)
        (blob,) = [b for b in blobs.iterdir() if large2[1000:1100] in b.read_bytes()]
        _flip(blob, large2[1000:1100])
        lc.restart("s1")

        async def check2() -> None:
            # nothing found at start: the flips keep the lengths (c0's damaged object went
            # with c0's garbage collection)
            assert (await _stats(lc, "s1")).damaged_count == 0
            async with connect(lc.cluster) as st:
                for _ in range(3):
                    assert await st.read("small2") == small2
                    assert await st.read("large2") == large2
            await _until_damaged(
                lc, "s1", {"cluster/c1/default/small2", "cluster/c1/default/large2"}
            )
            await asyncio.to_thread(lc.kill, "s2")
            async with connect(lc.cluster) as st:
                for key in ("small2", "large2"):
                    with pytest.raises(OperationError):
                        await st.read(key)  # never the flipped copy
            await asyncio.to_thread(lc.restart, "s2")

        asyncio.run(check2())
        lc.kill("s1", 15)
        flipped = sum(_flip_meta(db, ns) for ns in ("cfg", "paxos", "next", "gc", "final"))
        lc.restart("s1")

        async def check3() -> None:
            stats = await _stats(lc, "s1")
            damaged = set(stats.damaged)
            assert {"cluster/c0", "configuration c1"} <= damaged, damaged
            assert stats.counters["damaged-records"] == flipped, stats.counters
            async with connect(lc.cluster) as st:
                assert await st.read("small2") == small2
                assert await st.read("large2") == large2

        asyncio.run(check3())
    finally:
        lc.stop()


def test_a_damaged_database_is_a_one_line_error(tmp_path: Path) -> None:
    lc = LocalCluster.create(tmp_path / "c", n=3, timeout_s=1.5)
    lc.start()
    try:

        async def fill() -> None:
            async with connect(lc.cluster) as st:
                for i in range(200):
                    await st.write(f"key-{i:04d}", b"x" * 200)

        asyncio.run(fill())
        lc.kill("s1", 15)
        db = lc.data_dir("s1") / "state.sqlite3"
        raw = bytearray(db.read_bytes())
        page = 4096
        raw[page : page + 16] = b"\xff" * 16  # the header of page 2 (a b-tree page)
        db.write_bytes(bytes(raw))
        with pytest.raises(AresError) as e:
            lc.restart("s1")
        log = (lc.data_dir("s1") / "server.log").read_text()
        assert "Traceback" not in log, log
        assert "damaged" in log or "malformed" in log, log
        assert "error:" in str(e.value)
    finally:
        lc.stop()
