"""Delete (issue 15 item 1): a tombstone write, atomic like any write, distinct from an empty
value, through reconfigurations to ABD and TREAS (in-process servers, real TCP)."""

from __future__ import annotations

import asyncio
import io
import random
from pathlib import Path
from typing import Any

import pytest

from aresdsm.check import check_history
from aresdsm.client import HistoryRecorder, Store
from aresdsm.config import Configuration, ServerInfo
from aresdsm.errors import ConfigurationError, OperationError
from aresdsm.history import read_records
from aresdsm.server import Server
from aresdsm.storage import SqliteStorage
from aresdsm.tags import TAG0, Tag, tombstone_writer


def test_tombstone_tags() -> None:
    assert Tag(3, tombstone_writer("c.1")).deleted
    assert not Tag(3, "c.1").deleted and not TAG0.deleted
    with pytest.raises(ConfigurationError, match="NUL"):
        Store(Configuration("c0", (ServerInfo("s1", "127.0.0.1:1"),)), client_id="a\x00b")


async def test_delete_is_distinct_from_empty_and_from_never_written(inproc_cluster: Any) -> None:
    cfg, _ = inproc_cluster
    async with Store(cfg) as store:
        assert await store.read("k") is None
        assert await store.read_tagged("k") == (TAG0, None)
        await store.write("k", b"")
        assert await store.read("k") == b""
        tag = await store.delete("k")
        assert tag.deleted
        got_tag, value = await store.read_tagged("k")
        assert value is None and got_tag == tag
        await store.write("k", b"back")
        assert await store.read("k") == b"back"
        assert (await store.delete("never-written")).deleted
        assert await store.read("never-written") is None


async def _servers(tmp_path: Path, n: int) -> list[Server]:
    out = []
    for i in range(n):
        s = Server(
            server_id=f"s{i + 1}",
            host="127.0.0.1",
            port=0,
            storage=SqliteStorage(tmp_path / f"s{i + 1}" / "state.sqlite3"),
        )
        await s.start()
        out.append(s)
    return out


async def _mixed(store: Store, keys: list[str], stop: asyncio.Event, rng: random.Random) -> int:
    n = 0
    while not stop.is_set():
        key = rng.choice(keys)
        try:
            x = rng.random()
            if x < 0.35:
                n += 1
                await store.write(key, f"{store.client_id}-{n}".encode())
            elif x < 0.55:
                await store.delete(key)
            else:
                await store.read(key)
        except OperationError:
            await asyncio.sleep(0.01)
    return n


@pytest.mark.slow
async def test_deletes_are_linearizable_through_reconfigurations(tmp_path: Path) -> None:
    """Writers, deleters and readers while the cluster moves ABD -> TREAS -> other servers; the
    history (a delete recorded as a write of the empty value, a read of an absent key as a read
    of it) is linearizable, and a key deleted before a reconfiguration stays deleted after."""
    servers = await _servers(tmp_path, 8)
    info = tuple(ServerInfo(s.server_id, f"127.0.0.1:{s.port}") for s in servers)
    c0 = Configuration("c0", info[:3])
    for s in servers[:3]:
        await s.bootstrap(c0)
    out = io.BytesIO()
    rec = HistoryRecorder(out)
    admin = Store(c0)
    await admin.write("gone", b"soon")
    await admin.delete("gone")
    stores = [Store(c0, recorder=rec) for _ in range(3)]
    keys = ["a", "b", "c"]
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(_mixed(s, keys, stop, random.Random(i))) for i, s in enumerate(stores)
    ]
    await asyncio.sleep(0.3)
    assert (
        await admin.reconfigure(Configuration("c1", info[:5], dap="treas", k=3, delta=4))
    ).id == "c1"
    assert await admin.read("gone") is None
    await asyncio.sleep(0.3)
    assert (await admin.reconfigure(Configuration("c2", info[5:8]))).id == "c2"
    await asyncio.sleep(0.3)
    stop.set()
    assert sum(await asyncio.gather(*tasks)) > 10
    assert await admin.read("gone") is None
    await admin.write("gone", b"again")
    assert await admin.read("gone") == b"again"
    for s in [*stores, admin]:
        await s.close()
    for s in servers:
        await s.stop()
    path = tmp_path / "h.jsonl"
    path.write_bytes(out.getvalue())
    records = list(read_records(path))
    result = check_history(records)
    assert result.verdict == "ok", result.explain()


@pytest.mark.parametrize("dap", ["abd", "treas"])
async def test_tombstones_are_transferred_by_reconfiguration(tmp_path: Path, dap: str) -> None:
    """A reconfiguration transfers tombstones like any pair (docs/protocol.md §8.4 "Deleted
    objects": dropping them let an older value left in an older configuration win a read after
    the delete). The new configuration's servers hold the live object and the tombstone; the key
    reads as absent, and written again afterwards it is read back by a client whose chain still
    starts at the old configuration."""
    servers = await _servers(tmp_path, 6)
    info = tuple(ServerInfo(s.server_id, f"127.0.0.1:{s.port}") for s in servers)
    c0 = Configuration("c0", info[:3])
    for s in servers[:3]:
        await s.bootstrap(c0)
    admin, old = Store(c0), Store(c0)
    try:
        await admin.write("kept", b"v")
        for _ in range(3):  # the tombstone's tag number is above 1
            await admin.write("gone", b"x")
        await admin.delete("gone")
        assert await old.read("gone") is None  # old's chain: c0 only
        c1 = Configuration("c1", info[3:6], dap=dap)  # (TREAS [3, 1]: survives one crash)
        assert (await admin.reconfigure(c1)).id == "c1"
        stats = await admin.stats(info[3:6])
        assert all(not isinstance(s, str) and s.objects == 2 for s in stats), stats
        assert await admin.read("gone") is None
        await admin.write("gone", b"again")
        assert await old.read("gone") == b"again"
        assert await Store(c0).read("gone") == b"again"
        assert sorted(await admin.list()) == ["gone", "kept"]
    finally:
        await admin.close()
        await old.close()
        for s in servers:
            await s.stop()
