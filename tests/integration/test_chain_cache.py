"""The client's chain cache on disk (docs/protocol.md §8.5). Found in review: it was trusted on the
initial configuration's *id* alone (default "c0" in every cluster file), so a cache left over from
an earlier deployment of the same cluster file (servers re-created empty at the same addresses)
made the client skip the real chain -- it installed a cached configuration these servers never
decided and read and wrote there, a world apart from every other client. Now the cache is keyed
by the whole initial descriptor, and a cached chain is checked against the initial
configuration before its first use.

1. Deployment A: client x (with a cache file) writes k = old, reconfigures c0 -> c1-a (s4..s6),
   closes: the cache holds [c0 F, c1-a F].
2. The servers are replaced by fresh ones at the same addresses (deployment B), same cluster
   file.
3. Client y (no cache) writes k = new (into c0) and completes.
4. Client x2 (same cache file) reads k: new (it returned b"" before the fix).
"""

from __future__ import annotations

from pathlib import Path

from aresdsm.client import Store
from aresdsm.config import ClientOptions, Configuration, ServerInfo
from aresdsm.local import free_ports
from aresdsm.server import Server
from aresdsm.storage import MemoryStorage


async def _start(ports: list[int]) -> list[Server]:
    servers = []
    for i, p in enumerate(ports):
        s = Server(server_id=f"s{i + 1}", host="127.0.0.1", port=p, storage=MemoryStorage())
        await s.start()
        servers.append(s)
    return servers


async def test_a_cache_from_another_deployment_is_not_followed(tmp_path: Path) -> None:
    ports = free_ports(6)
    info = tuple(ServerInfo(f"s{i + 1}", f"127.0.0.1:{p}") for i, p in enumerate(ports))
    c0 = Configuration("c0", info[:3])
    cache = tmp_path / "cluster.toml.chains.json"
    opts = ClientOptions(timeout_s=2.0)

    # incarnation A
    servers = await _start(ports)
    for s in servers[:3]:
        await s.bootstrap(c0)
    x = Store(c0, options=opts, cseq_cache=cache)
    await x.write("k", b"old")
    assert (await x.reconfigure(Configuration("c1-a", info[3:]))).id == "c1-a"
    await x.close()
    for s in servers:
        await s.stop()

    # incarnation B: fresh servers, same addresses, same cluster file (initial id "c0")
    servers = await _start(ports)
    try:
        for s in servers[:3]:
            await s.bootstrap(c0)
        y = Store(c0, options=opts)
        await y.write("k", b"new")
        await y.close()

        x2 = Store(c0, options=opts, cseq_cache=cache)
        got = await x2.read("k")
        chain = [e.config.id for e in x2.cseq()]
        await x2.close()
        assert got == b"new", f"read {got!r} after 'new' was written; chain used: {chain}"
    finally:
        for s in servers:
            await s.stop()


async def test_an_adopted_cache_from_another_deployment_is_not_followed(tmp_path: Path) -> None:
    """Issue 10 item 5: the cache check returned early when the cached chain did not start at
    the initial configuration -- a client that once relocated through LATEST_CONFIG (§8.5) cached
    [c1-a] alone -- so such a cache from an earlier deployment was trusted, and the client read
    b"" after a completed write. Now no cached entry is used before a server confirmed it."""
    ports = free_ports(6)
    info = tuple(ServerInfo(f"s{i + 1}", f"127.0.0.1:{p}") for i, p in enumerate(ports))
    c0 = Configuration("c0", info[:3])
    cache = tmp_path / "cluster.toml.chains.json"
    opts = ClientOptions(timeout_s=2.0)

    # incarnation A: the data moves to s4..s6; the initial servers go; x relocates and caches
    servers = await _start(ports)
    for s in servers[:3]:
        await s.bootstrap(c0)
    admin = Store(c0, options=opts)
    await admin.write("k", b"old")
    assert (await admin.reconfigure(Configuration("c1-a", info[3:]))).id == "c1-a"
    await admin.settle()
    await admin.close()
    for s in servers[:3]:
        await s.stop()
    x = Store(c0, options=opts, cseq_cache=cache, known_servers=info)
    assert await x.read("k") == b"old"
    assert [e.config.id for e in x.cseq()] == ["c1-a"]  # adopted: does not start at c0
    await x.close()
    for s in servers[3:]:
        await s.stop()

    # incarnation B: fresh servers, same addresses, same cluster file
    servers = await _start(ports)
    try:
        for s in servers[:3]:
            await s.bootstrap(c0)
        y = Store(c0, options=opts)
        await y.write("k", b"new")
        await y.close()

        x2 = Store(c0, options=opts, cseq_cache=cache, known_servers=info)
        got = await x2.read("k")
        chain = [e.config.id for e in x2.cseq()]
        await x2.close()
        assert got == b"new", f"read {got!r} after 'new' was written; chain used: {chain}"
    finally:
        for s in servers:
            await s.stop()
