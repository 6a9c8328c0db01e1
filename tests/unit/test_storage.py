"""Storage engines: durability across reopen, group commit, deletes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from aresdsm.errors import StorageError
from aresdsm.storage import Delete, MemoryStorage, Record, SqliteStorage, Storage
from aresdsm.storage.base import DamagedRecord, DamagedValue, ValueRef


def rec(key: str, data: bytes, cfg: str = "c0") -> Record:
    return Record("abd", "g", cfg, key, b"meta-" + key.encode(), data)


async def _submit_many(st: Storage, n: int) -> None:
    futs = [st.submit([rec(f"k{i}", b"v" * i)]) for i in range(n)]
    await asyncio.gather(*futs)


def test_sqlite_survives_reopen_and_group_commits(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    st = SqliteStorage(path)
    asyncio.run(_submit_many(st, 200))
    assert st.records_written == 200
    assert st.commits < 200  # writes queued during a commit share the next one
    st.close()
    again = SqliteStorage(path)
    loaded = {r.key: r for r in again.load()}
    assert len(loaded) == 200
    assert values(again) == {f"k{i}": b"v" * i for i in range(200)}
    assert loaded["k7"].meta == b"meta-k7"
    again.close()


def values(st: Storage) -> dict[str, bytes]:
    """Every record's value, read by reference as a server reads it (load() reads none)."""
    out = {}
    for r in st.load():
        assert isinstance(r, Record)
        data = st.read_value(r.data) if isinstance(r.data, ValueRef) else r.data
        out[r.key] = bytes(data) if data is not None else None
    return out


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_replace_and_delete(kind: str, tmp_path: Path) -> None:
    st: Storage = MemoryStorage() if kind == "memory" else SqliteStorage(tmp_path / "d.sqlite3")

    async def go() -> None:
        await st.submit([rec("a", b"1"), rec("b", b"2"), rec("c", b"3", cfg="c1")])
        await st.submit([rec("a", b"one")])
        await st.submit([Delete("abd", "g", "c0", "b")])
        assert st.barrier() is None
        await st.submit([Delete("abd", "g", "c1")])

    asyncio.run(go())
    assert values(st) == {"a": b"one"}
    assert st.stored_bytes() == len(b"meta-a") + 3
    st.close()


def test_barrier_covers_everything_submitted(tmp_path: Path) -> None:
    st = SqliteStorage(tmp_path / "b.sqlite3")

    async def go() -> None:
        f1 = st.submit([rec("a", b"1")])
        b = st.barrier()
        assert b is f1
        await b
        assert st.barrier() is None

    asyncio.run(go())
    st.close()


def test_storage_failure_propagates(tmp_path: Path) -> None:
    st = SqliteStorage(tmp_path / "f.sqlite3")
    st.close()  # commits on a closed database fail

    async def go() -> None:
        with pytest.raises(StorageError, match="closed"):
            await st.submit([rec("a", b"1")])
        assert isinstance(st.failed, StorageError)
        with pytest.raises(StorageError):  # nothing is accepted after a failed commit
            await st.submit([rec("b", b"2")])

    asyncio.run(go())


def test_large_values_live_in_durable_files_and_follow_their_rows(tmp_path: Path) -> None:
    path = tmp_path / "db" / "s.sqlite3"
    st = SqliteStorage(path, blob_threshold_bytes=100)
    big1, big2 = b"a" * 500, b"b" * 700

    async def go() -> None:
        await st.submit([rec("big", big1), rec("small", b"tiny")])
        assert len(list(st.blob_dir.iterdir())) == 1
        await st.submit([rec("big", big2)])  # replaced: the old file goes
        assert len(list(st.blob_dir.iterdir())) == 1
        assert st.stored_bytes() == len(b"meta-big") + 700 + len(b"meta-small") + 4

    asyncio.run(go())
    st.close()
    (st.blob_dir / "orphan-from-a-crash.blob").write_bytes(b"x")
    again = SqliteStorage(path, blob_threshold_bytes=100)
    assert values(again) == {"big": big2, "small": b"tiny"}
    assert not (again.blob_dir / "orphan-from-a-crash.blob").exists()

    async def delete() -> None:
        await again.submit([Delete("abd", "g", "c0")])

    asyncio.run(delete())
    assert list(again.blob_dir.iterdir()) == []
    again.close()


def _recount(st: SqliteStorage) -> dict[tuple[str, str], int]:
    out: dict[tuple[str, str], int] = {}
    for r in st.load():
        n = len(r.meta) + (len(r.data) if r.data is not None else 0)
        out[(r.group, r.config_id)] = out.get((r.group, r.config_id), 0) + n
    return {k: v for k, v in out.items() if v}


def test_sqlite_bytes_per_instance_are_running_totals(tmp_path: Path) -> None:
    """The metrics' bytes per (group, configuration) follow every commit without a scan and
    match a recount, after replacements, large values, deletes of one record and of a whole
    configuration, and after a reopen."""
    path = tmp_path / "db.sqlite3"
    st = SqliteStorage(path, blob_threshold_bytes=100)

    async def go() -> None:
        await st.submit(
            [Record("abd", "g", "c0", f"k{i}", b"m" * i, b"v" * (i * 30)) for i in range(8)]
        )
        await st.submit([Record("abd", "g", "c0", "k1", b"mm", b"w" * 500)])  # replace: file
        await st.submit(
            [Record("abd", "g", "c1", "k1", b"t", b"x" * 7), Delete("abd", "g", "c0", "k2")]
        )
        assert st.bytes_by_instance() == _recount(st)
        await st.submit([Delete("abd", "g", "c0")])

    asyncio.run(go())
    assert st.bytes_by_instance() == _recount(st) == {("g", "c1"): 8}
    assert st.stored_bytes() == 8
    st.close()
    again = SqliteStorage(path)
    assert again.bytes_by_instance() == {("g", "c1"): 8}
    again.close()


def test_load_reads_no_value_and_values_are_read_by_reference(tmp_path: Path) -> None:
    """Issue 12: a restart loads metadata only (each value is a reference: its record and
    length); read_value reads one value -- from the pending batches while they wait for their
    commit (the group-commit window), from the engine after."""
    path = tmp_path / "r.sqlite3"
    st = SqliteStorage(path, blob_threshold_bytes=100)
    big, small = b"B" * 1000, b"small"

    async def go() -> None:
        await st.submit([rec("big", big), rec("small", small)])
        st.submit([rec("big", b"N" * 1000)])  # not awaited: still in the open batch
        assert st.read_value(ValueRef(("abd", "g", "c0", "big"), 1000)) == b"N" * 1000
        assert st.values_read == 0  # served from the pending batch, not the disk
        assert st.read_value(ValueRef(("abd", "g", "c0", "small"), 5)) == small
        assert st.values_read == 1
        await st.drain()
        assert st.read_value(ValueRef(("abd", "g", "c0", "big"), 1000)) == b"N" * 1000
        with pytest.raises(KeyError):  # a reference to another version of the record: a bug
            st.read_value(ValueRef(("abd", "g", "c0", "big"), 999))

    asyncio.run(go())
    st.close()
    (blob,) = (tmp_path / "blobs").iterdir()
    again = SqliteStorage(path, blob_threshold_bytes=100)
    blob.unlink()  # (after open: so load's stat is what notices, below)
    loaded = {r.key: r for r in again.load()}
    assert loaded["small"].data == ValueRef(("abd", "g", "c0", "small"), 5)
    assert isinstance(loaded["big"], DamagedRecord)  # a value file gone: a stat at load
    assert again.values_read == 0
    again.close()


def test_a_value_damaged_on_disk_is_found_when_read(tmp_path: Path) -> None:
    path = tmp_path / "v.sqlite3"
    st = SqliteStorage(path, blob_threshold_bytes=100)

    async def go() -> None:
        await st.submit([rec("big", b"B" * 1000)])

    asyncio.run(go())
    (blob,) = (tmp_path / "blobs").iterdir()
    blob.write_bytes(b"C" + b"B" * 999)  # same length: load cannot tell
    (r,) = st.load()
    assert isinstance(r, Record) and isinstance(r.data, ValueRef)
    with pytest.raises(DamagedValue, match="checksum"):
        st.read_value(r.data)
    st.close()
