"""Storage engines: durability across reopen, group commit, deletes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from aresdsm.errors import StorageError
from aresdsm.storage import Delete, MemoryStorage, Record, SqliteStorage, Storage


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
    assert loaded["k7"].data == b"v" * 7 and loaded["k7"].meta == b"meta-k7"
    again.close()


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
    assert {r.key: r.data for r in st.load()} == {"a": b"one"}
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
    assert {r.key: r.data for r in again.load()} == {"big": big2, "small": b"tiny"}
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
