"""Reconfiguration with real TCP and in-process servers: ABD -> TREAS -> other servers, while
clients keep reading and writing (docs/protocol.md §6, §8.1, §8.2), Ares II and classic."""

from __future__ import annotations

import asyncio
import io
import random
from pathlib import Path

import pytest

from aresdsm.check import check_history
from aresdsm.client import HistoryRecorder, Store
from aresdsm.config import Configuration, ServerInfo
from aresdsm.errors import OperationError
from aresdsm.history import read_records
from aresdsm.protocol import ares
from aresdsm.protocol.ops import CLASSIC, DEFAULT_SWITCHES, OpSwitches
from aresdsm.server import Server
from aresdsm.storage import SqliteStorage


async def _servers(tmp_path: Path, n: int) -> list[Server]:
    out = []
    for i in range(n):
        s = Server(
            server_id=f"s{i + 1}",
            host="127.0.0.1",
            port=0,
            storage=SqliteStorage(tmp_path / f"s{i + 1}" / "state.sqlite3"),  # own blobs/
        )
        await s.start()
        out.append(s)
    return out


def _info(servers: list[Server]) -> tuple[ServerInfo, ...]:
    return tuple(ServerInfo(s.server_id, f"127.0.0.1:{s.port}") for s in servers)


async def _client(store: Store, keys: list[str], stop: asyncio.Event, rng: random.Random) -> int:
    n = 0
    while not stop.is_set():
        key = rng.choice(keys)
        try:
            if rng.random() < 0.5:
                n += 1
                await store.write(key, f"{store.client_id}-{n}".encode() * rng.randint(1, 50))
            else:
                await store.read(key)
        except OperationError:
            await asyncio.sleep(0.01)
    return n


@pytest.mark.parametrize("switches", [DEFAULT_SWITCHES, CLASSIC], ids=["ares2", "classic"])
async def test_live_reconfiguration_abd_to_treas_to_new_servers(
    tmp_path: Path, switches: OpSwitches
) -> None:
    servers = await _servers(tmp_path, 8)
    info = _info(servers)
    c0 = Configuration("c0", info[:3])
    for s in servers[:3]:
        await s.bootstrap(c0)  # s4..s8 start empty: they learn configurations when installed
    out = io.BytesIO()
    rec = HistoryRecorder(out)
    stores = [Store(c0, recorder=rec, switches=switches) for _ in range(3)]
    keys = ["a", "b", "c", "d"]
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(_client(s, keys, stop, random.Random(i))) for i, s in enumerate(stores)
    ]
    admin = Store(c0, switches=switches)
    await asyncio.sleep(0.3)
    c1 = Configuration("c1", info[:5], dap="treas", k=3, delta=4)
    assert (await admin.reconfigure(c1)).id == "c1"
    await asyncio.sleep(0.3)
    c2 = Configuration("c2", info[5:8])
    assert (await admin.reconfigure(c2)).id == "c2"
    # the group's chain, or with batch off (classic) the chain of each object
    for name in {ares.chain_of("default", key, switches) for key in keys}:
        chain = await admin.configurations(name)
        assert [(e.config.id, e.status) for e in chain] == [("c0", "F"), ("c1", "F"), ("c2", "F")]
    await asyncio.sleep(0.3)
    for s in servers[:5]:  # the old servers are gone; everything lives on s6..s8
        await s.stop()
    await asyncio.sleep(0.2)
    stop.set()
    writes = sum(await asyncio.gather(*tasks))
    assert writes > 20
    await admin.settle()  # the new servers have heard that c2 is final (§8.5)
    late = Store(c0, switches=switches)  # a client that only knows c0 can no longer reach it...
    with pytest.raises(OperationError):
        await late.read("a")
    expected = {key: await stores[0].read(key) for key in keys}  # ...clients that followed can
    # and so can a late client that knows the servers: it asks them for LATEST_CONFIG
    relocating = Store(c0, switches=switches, known_servers=info)
    assert {key: await relocating.read(key) for key in keys} == expected
    assert [e.config.id for e in relocating.cseq(ares.chain_of("default", "a", switches))] == ["c2"]
    for s in [*stores, admin, late, relocating]:
        await s.close()
    for s in servers[5:]:
        await s.stop()
    path = tmp_path / "h.jsonl"
    path.write_bytes(out.getvalue())
    result = check_history(read_records(path))
    assert result.verdict == "ok", result.explain()


async def test_classic_objects_created_between_reconfigurations_stay_reconfigurable(
    tmp_path: Path,
) -> None:
    """With ``batch`` off every object has a chain of its own, and an object created after a
    reconfiguration starts at c0: chains of different lengths end in one proposal. The
    proposal's epoch once followed each chain (one id, two descriptors), and the third
    reconfiguration was refused by every server ("successor c3 of c2 must have epoch 3")."""
    servers = await _servers(tmp_path, 5)
    info = _info(servers)
    c0 = Configuration("c0", info[:3])
    for s in servers[:3]:
        await s.bootstrap(c0)
    async with Store(c0, switches=CLASSIC, known_servers=info) as store:
        await store.write("a", b"1")
        await store.reconfigure(Configuration("c1", info[:3]))
        await store.write("b", b"2")  # b's chain starts at c0
        await store.reconfigure(Configuration("c2", info[1:4]), force=True)
        await store.reconfigure(Configuration("c3", info[2:5]), force=True)
        assert (await store.read("a"), await store.read("b")) == (b"1", b"2")
        for key in "ab":
            chain = await store.configurations(ares.chain_of("default", key, CLASSIC))
            assert chain[-1].config.id == "c3"
    for s in servers:
        await s.stop()
