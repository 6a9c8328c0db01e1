"""store.list / iter_keys and ares ls (issue 15 item 1): keys of one group with a prefix, in
order, across pages and a reconfiguration; deleted keys left out (each listed key is read)."""

from __future__ import annotations

import asyncio

from aresdsm.client import Store
from aresdsm.config import Configuration, ServerInfo
from aresdsm.protocol import ares
from aresdsm.server import Server
from aresdsm.storage import MemoryStorage


async def _servers(n: int) -> list[Server]:
    out = []
    for i in range(n):
        s = Server(server_id=f"s{i + 1}", host="127.0.0.1", port=0, storage=MemoryStorage())
        await s.start()
        out.append(s)
    return out


async def test_list_prefix_pages_deletes_and_a_reconfiguration() -> None:
    servers = await _servers(6)
    info = tuple(ServerInfo(s.server_id, f"127.0.0.1:{s.port}") for s in servers)
    c0 = Configuration("c0", info[:3])
    for s in servers[:3]:
        await s.bootstrap(c0)
    try:
        n = ares.GROUP_PAGE + 50  # more than one page
        names = sorted(f"a/{i:05}" for i in range(n))
        async with Store(c0) as st:
            for i in range(0, n, 200):
                await asyncio.gather(*(st.write(k, b"v") for k in names[i : i + 200]))
            await st.write("b/1", b"v")
            await st.write("a/x", b"v", group="other")  # another group: not listed
            await st.write("empty", b"")  # written empty: present
            assert await st.list("a/") == names
            assert await st.list("a/", limit=3) == names[:3]
            assert await st.list("b") == ["b/1"]
            assert await st.list("a/", group="other") == ["a/x"]
            assert await st.list("nothing") == []
            assert "empty" in await st.list()
            for k in names[:10]:
                await st.delete(k)
            await st.write("gone", b"v", group="emptied")
            assert "emptied" in await st.groups()
            await st.delete("gone", group="emptied")
            assert await st.groups() == ["default", "other"]  # all its keys deleted
            assert await st.list("a/") == names[10:]
            # the servers still hold the tombstones; without the check they are listed
            raw = [k async for k in st.iter_keys("a/", verify=False)]
            assert raw == names
            assert (await st.reconfigure(Configuration("c1", info[3:]))).id == "c1"
            assert await st.list("a/", limit=5) == names[10:15]
            await st.write(names[0], b"back")
            assert (await st.list("a/", limit=1)) == [names[0]]
    finally:
        for s in servers:
            await s.stop()
