"""store.groups() (docs/protocol.md §2, §8.4): every group with a completed write is listed, in
order, from keys only -- across pages (a group's remaining keys are skipped once seen), across a
reconfiguration, and with ``batch`` off from the per-object chains."""

from __future__ import annotations

import asyncio
from pathlib import Path

from aresdsm.client import Store
from aresdsm.config import Configuration, ServerInfo
from aresdsm.protocol.ops import CLASSIC
from aresdsm.server import Server
from aresdsm.storage import MemoryStorage


async def _servers(n: int) -> list[Server]:
    out = []
    for i in range(n):
        s = Server(server_id=f"s{i + 1}", host="127.0.0.1", port=0, storage=MemoryStorage())
        await s.start()
        out.append(s)
    return out


async def test_groups_across_pages_and_a_reconfiguration(tmp_path: Path) -> None:
    servers = await _servers(6)
    info = tuple(ServerInfo(s.server_id, f"127.0.0.1:{s.port}") for s in servers)
    c0 = Configuration("c0", info[:3])
    for s in servers[:3]:
        await s.bootstrap(c0)
    try:
        names = sorted(f"g{i:03}" for i in range(300))
        async with Store(c0) as st:
            for i in range(0, 300, 50):
                await asyncio.gather(
                    *(st.write(f"k{j}", b"v", group=g) for g in names[i : i + 50] for j in (1, 2))
                )
            await st.write("only", b"v", group="a")  # a group that sorts first
            assert await st.groups() == ["a", *names]
            assert (await st.reconfigure(Configuration("c1", info[3:]))).id == "c1"
            await st.write("k", b"v", group="zz")
        async with Store(c0, known_servers=info) as fresh:
            assert await fresh.groups() == ["a", *names, "zz"]
        async with Store(c0, switches=CLASSIC) as classic:
            await classic.write("k", b"v", group="classic-group")
            assert await classic.groups() == ["classic-group"]
    finally:
        for s in servers:
            await s.stop()
