"""Coverable writes (docs/protocol.md §9.1) over real TCP to in-process servers: concurrent
writers on shared bases, a reconfiguration ABD -> TREAS in the middle, and the history checked
against the coverable model."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import pytest

from aresdsm import CvrResult, Store
from aresdsm.check import CoverableModel, Op, check_operations
from aresdsm.config import Configuration, ServerInfo
from aresdsm.errors import CoverableConflict, OperationError
from aresdsm.protocol.ops import CLASSIC, DEFAULT_SWITCHES, OpSwitches
from aresdsm.server import Server
from aresdsm.storage import SqliteStorage
from aresdsm.tags import TAG0


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


async def _writer(
    store: Store, name: str, ops: list[Op], stop: asyncio.Event, loop: asyncio.AbstractEventLoop
) -> int:
    rng = random.Random(name)
    base = TAG0
    wins = 0
    n = 0
    while not stop.is_set():
        n += 1
        start = loop.time()
        if rng.random() < 0.3:
            try:
                tag, value = await store.read_tagged("k")
            except OperationError:
                await asyncio.sleep(0.01)
                continue
            # an absent object reads as None; the model's initial value is b""
            got = value if value is not None else b""
            ops.append(Op(len(ops) + 1, "read", start, loop.time(), got, tag, client=name))
            base = tag
            continue
        value = f"{name}-{n}".encode()
        try:
            out: CvrResult = await store.cvr_write("k", value, base)
        except CoverableConflict as e:  # may or may not have taken effect, under e.tag
            ops.append(Op(len(ops) + 1, "cvr-ok", start, value=value, tag=e.tag, base=base))
            base = TAG0
            await asyncio.sleep(0.01)
            continue
        except OperationError:  # failed before its value was accepted anywhere: no effect
            await asyncio.sleep(0.01)
            continue
        kind = "cvr-ok" if out.ok else "cvr-stale"
        got = out.value if out.value is not None else b""
        ops.append(Op(len(ops) + 1, kind, start, loop.time(), got, out.tag, base, name))
        wins += out.ok
        base = out.tag
    return wins


@pytest.mark.slow
@pytest.mark.parametrize("switches", [DEFAULT_SWITCHES, CLASSIC], ids=["ares2", "classic"])
async def test_concurrent_cvr_writers_with_a_reconfiguration(
    tmp_path: Path, switches: OpSwitches
) -> None:
    servers = await _servers(tmp_path, 5)
    info = tuple(ServerInfo(s.server_id, f"127.0.0.1:{s.port}") for s in servers)
    c0 = Configuration("c0", info[:3])
    for s in servers[:3]:
        await s.bootstrap(c0)
    loop = asyncio.get_running_loop()
    stores = [Store(c0, switches=switches) for _ in range(3)]
    ops: list[Op] = []
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(_writer(s, f"w{i}", ops, stop, loop)) for i, s in enumerate(stores)
    ]
    await asyncio.sleep(0.4)
    async with Store(c0, switches=switches) as admin:
        c1 = Configuration("c1", info, dap="treas", k=3, delta=4)
        assert (await admin.reconfigure(c1, force=True)).id == "c1"
    await asyncio.sleep(0.4)
    stop.set()
    wins = sum(await asyncio.gather(*tasks))
    final = await stores[0].read_tagged("k")
    ops.append(Op(len(ops) + 1, "read", loop.time(), loop.time(), final[1] or b"", final[0]))
    for s in stores:
        await s.close()
    for s in servers:
        await s.stop()
    stale = sum(1 for o in ops if o.kind == "cvr-stale")
    assert wins >= 5 and stale >= 1, (wins, stale)
    model: Any = CoverableModel(TAG0, b"")
    result = check_operations("k", ops, model=model)
    assert result.verdict == "ok", result


async def test_a_store_without_a_history_does_not_hash_coverable_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every block a file write puts is a coverable write: hashing it for a history nobody
    keeps cost the client ~1 ms per MiB (the file bench's profile)."""
    import aresdsm.client

    hashed: list[int] = []
    real = aresdsm.client.value_digest

    def counting(v: bytes | bytearray | memoryview) -> str:
        hashed.append(len(v))
        return real(v)

    monkeypatch.setattr(aresdsm.client, "value_digest", counting)
    servers = await _servers(tmp_path, 3)
    info = tuple(ServerInfo(s.server_id, f"127.0.0.1:{s.port}") for s in servers)
    c0 = Configuration("c0", info)
    for s in servers:
        await s.bootstrap(c0)
    try:
        async with Store(c0) as store:
            big = b"x" * (1 << 20)
            r = await store.cvr_write("blk", big, TAG0, fresh=True)
            assert r.ok
            assert (await store.cvr_write("blk", big + b"y", r.tag)).ok
        assert hashed == []
    finally:
        for s in servers:
            await s.stop()
