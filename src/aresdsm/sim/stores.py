"""The real :class:`~aresdsm.client.Store` in the swarm (protocol.md §8.5), over the simulated
network.

In a share of the seeds (``SimOptions.store``) the clients and reconfigurers are real Stores --
the object applications use -- instead of bare calls of the client algorithms, so that the swarm
drives what only the Store does:

* relocation (§8.5): with ``retire``, once the reconfigurers are done, every server outside the
  newest configuration is shut down for good; a client whose chain still leads there fails its
  round, asks the servers it knows for LATEST_CONFIG, adopts the answer and retries -- a write
  is then finished with the tag its first attempt chose;
* finalization everywhere in the background, the chain views a Store keeps between operations;
* restarts with a reused client name (``restarts``): a client crashes mid-operation and a new
  Store with the same ``client_id`` carries on (its writer ids must not collide with the first
  incarnation's);
* mixed client modes (``mixed``): some clients run with piggyback off (the original Ares' rounds
  on the group's chain) next to Ares II clients and reconfigurers.

Operations are recorded by the simulator around each Store call (invocation before, completion
after), exactly as an application sees them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from ..client import Store
from ..config import ClientOptions, Configuration
from ..errors import AresError, ConfigurationError, InvariantViolation
from ..history import OpRecord, value_digest
from ..protocol import ares
from ..protocol.ops import OpSwitches

if TYPE_CHECKING:
    from .run import _World

OPTIONS = ClientOptions(timeout_s=0.5, connect_timeout_s=0.1)


def client_switches(world: _World, index: int) -> OpSwitches:
    """Client ``index``'s switches: with ``mixed``, every other client has piggyback off."""
    sw = world.client_switches
    if world.opts.mixed and sw.batch and index % 2 == 1:
        return dataclasses.replace(sw, piggyback=False, fast_read=False)
    return sw


def new_store(
    world: _World,
    name: str,
    switches: OpSwitches,
    *,
    channel_name: str | None = None,
    cseq_cache: Path | None = None,
) -> Store:
    return Store(
        world.c0,
        options=OPTIONS,
        client_id=name,
        switches=switches,
        known_servers=world.pool,
        channel=world.channel(channel_name or name, timeout_s=OPTIONS.timeout_s),
        incarnation=str(store_incarnations(world, name)),  # seeded: the run stays replayable
        cseq_cache=cseq_cache,
    )


async def load(world: _World, keys: list[str]) -> None:
    """Write every key once before the workload starts (a group of 300+ objects, so that every
    reconfiguration transfers it over several pages, §8.4)."""
    store = new_store(world, "loader", world.switches)
    slots = asyncio.Semaphore(16)

    async def one(key: str) -> None:
        async with slots:
            await store_operation(world, store, "loader", key, f"load-{key}|".encode())

    await asyncio.gather(*(one(k) for k in keys))


async def late_client(world: _World, keys: list[str], start: asyncio.Event) -> None:
    """A client that learned the chain at the start and comes back after the old servers were
    shut down: its rounds on configurations that are gone fail, it relocates (§8.5)."""
    rng = random.Random(world.rng.random())
    store = new_store(world, "late", world.switches)
    await store_operation(world, store, "late", rng.choice(keys), None)
    await start.wait()
    for n in range(1, 6):
        value = f"late-{n}|".encode() if rng.random() < 0.5 else None
        await store_operation(world, store, "late", rng.choice(keys), value)


async def cached_client(world: _World, keys: list[str], retired: asyncio.Event) -> None:
    """A client that keeps its chain cache on disk (``cache``; issue 11, docs/protocol.md §8.5)
    across a redeployment: it runs until a reconfiguration happened, closes (the Store saves
    the chains it learned), and its process comes back -- a new Store on the same cache file --
    after the cluster moved on and the servers outside the newest configuration were shut down
    for good. The cache is only a hint: the chain it names leads to servers that are gone, and
    the new Store must confirm it with live servers and relocate before its first operation."""
    rng = random.Random(f"cache-{world.opts.seed}")
    name = "cached"
    with tempfile.TemporaryDirectory(prefix="ares-sim-cache-") as d:
        path = Path(d) / "chains.json"
        store = new_store(world, name, world.switches, cseq_cache=path)
        n = 0
        while not world.reconfigs_done and not retired.is_set():
            n += 1
            await _cached_op(world, store, name, rng, keys, n)
            await asyncio.sleep(rng.uniform(0.001, 0.01))
        n += 1
        await _cached_op(world, store, name, rng, keys, n)
        await store.close()
        world.cluster.log(f"client {name} closed; chain cache saved ({path.stat().st_size} bytes)")
        await retired.wait()
        world.incarnations[name] = store_incarnations(world, name) + 1
        store = new_store(world, name, world.switches, cseq_cache=path)
        world.cluster.log(f"client {name} restarts from its chain cache")
        for _ in range(4):
            n += 1
            await _cached_op(world, store, name, rng, keys, n)
        await store.close()


async def _cached_op(
    world: _World, store: Store, name: str, rng: random.Random, keys: list[str], n: int
) -> None:
    inc = store_incarnations(world, name)
    value = f"{name}@{inc}-{n}|".encode() if rng.random() < 0.5 else None
    await store_operation(world, store, name, rng.choice(keys), value)


async def store_client(world: _World, name: str, index: int, ops: int, keys: list[str]) -> None:
    """A Store client; with ``restarts`` it crashes once, mid-operation, and a new Store with
    the same name runs the rest of its operations."""
    seed = world.client_seeds[name] = world.rng.random()
    rng = random.Random(seed)
    switches = client_switches(world, index)
    store = new_store(world, name, switches)
    inc = store_incarnations(world, name)  # (a twin or a restart takes the next one)
    crash_at = (
        world.loop.time() + rng.choice([0.0005, 0.005, 0.05]) * rng.random()
        if world.opts.restarts
        else None
    )
    n = 0
    while n < ops:
        n += 1
        key = rng.choice(keys)
        is_write = rng.random() < (world.opts.write_ratio or 0.5)
        value = f"{name}@{inc}-{n}|".encode() + b"x" * rng.randint(
            0, world.opts.value_max_bytes or 16
        )
        op = asyncio.ensure_future(
            store_operation(world, store, name, key, value if is_write else None)
        )
        if crash_at is not None:
            done, _ = await asyncio.wait({op}, timeout=max(0.0, crash_at - world.loop.time()))
            if not done:  # the client process dies here; its operation stays pending
                op.cancel()
                await asyncio.gather(op, return_exceptions=True)
                crash_at = None
                world.cluster.log(f"client {name} crashed; restarting under the same name")
                world.incarnations[name] = world.incarnations.get(name, 1) + 1
                store = new_store(world, name, switches)
                inc = store_incarnations(world, name)
                continue
        ok = await op
        if not ok:
            await asyncio.sleep(rng.uniform(0.001, 0.01))
        await asyncio.sleep(rng.uniform(0, 0.002))


async def twin_client(world: _World, ops: int, keys: list[str]) -> None:
    """A second process under client ``c0``'s name, running at the same time as the first
    (``twins``: a copied deployment, or a restart while the first process was only paused). It
    runs the same program -- the same keys, reads and writes, in the same order, its values
    its own -- and counts its operations from 1 as well, so only the incarnation in its writer
    ids keeps its tags apart from the first one's (tests/sim/test_reused_client_name.py). In the
    history it is ``c0+``, so the event log tells the two apart."""
    name, seen_as = "c0", "c0+"
    rng = random.Random(world.client_seeds[name])  # the same draws as c0's
    world.incarnations[name] = store_incarnations(world, name) + 1
    inc = store_incarnations(world, name)
    store = new_store(world, name, client_switches(world, 0), channel_name=seen_as)
    world.cluster.log(f"client {name} runs twice (incarnation {inc})")
    if world.opts.restarts:
        rng.choice([0.0005, 0.005, 0.05]) * rng.random()  # c0's crash time (the twin's: never)
    for n in range(1, ops + 1):
        key = rng.choice(keys)
        is_write = rng.random() < (world.opts.write_ratio or 0.5)
        value = f"{name}@{inc}-{n}|".encode() + b"x" * rng.randint(
            0, world.opts.value_max_bytes or 16
        )
        if not await store_operation(world, store, seen_as, key, value if is_write else None):
            await asyncio.sleep(rng.uniform(0.001, 0.01))
        await asyncio.sleep(rng.uniform(0, 0.002))


def store_incarnations(world: _World, name: str) -> int:
    return world.incarnations.get(name, 1)


async def store_operation(
    world: _World, store: Store, name: str, key: str, value: bytes | None
) -> bool:
    """One recorded Store read (``value`` None) or write; returns whether it returned ok."""
    rec_index = len(world.history)
    world.history.append(
        OpRecord(
            rec_index + 1,
            name,
            "write" if value is not None else "read",
            key,
            world.stamp(),
            value=value_digest(value) if value is not None else None,
        )
    )
    try:
        if value is not None:
            tag = await store.write(key, value)
            digest = value_digest(value)
        else:
            tag, got = await store.read_tagged(key)
            digest = value_digest(got if got is not None else b"")  # absent: the initial b""
    except AresError as e:
        if isinstance(e, InvariantViolation):  # never swallowed: the run fails
            world.failures.append(f"{name}: InvariantViolation: {e}")
        world.history[rec_index] = msgspec.structs.replace(
            world.history[rec_index], complete_s=world.stamp(), outcome="fail", error=str(e)[:200]
        )
        return False
    finally:
        chain = ares.chain_of(world.group, key, store.switches)
        world.learn(name, chain, store.cseq(chain))
    world.history[rec_index] = msgspec.structs.replace(
        world.history[rec_index],
        complete_s=world.stamp(),
        value=digest,
        outcome="ok",
        tag=(tag.z, tag.writer),
    )
    return True


async def store_reconfigurer(
    world: _World, name: str, count: int, keys: list[str], proposal: Configuration | None = None
) -> None:
    """A Store reconfigurer (finalizes everywhere in the background, as ``ares reconfig``)."""
    rng = random.Random(world.rng.random())
    store = new_store(world, name, world.switches)
    await asyncio.sleep(world.stagger_s * int(name[1:]))
    for _ in range(count):
        await asyncio.sleep(rng.uniform(0.001, 0.03))
        target = proposal or world.proposal()
        try:
            decided = await store.reconfigure(target, keys=keys, concurrency=2)
            world.reconfigs_done += 1
            world.cluster.log(f"{name} installed {decided.id}")
        except AresError as e:
            if isinstance(e, InvariantViolation):
                world.failures.append(f"{name}: InvariantViolation: {e}")
            if not isinstance(e, ConfigurationError):  # refused up front: nothing decided
                world.reconfig_failed = True
            world.cluster.log(f"{name} reconfig failed: {type(e).__name__}: {e}")
        for chain in sorted({ares.chain_of(world.group, k, store.switches) for k in keys}):
            world.learn(name, chain, store.cseq(chain))
    await store.settle()


__all__ = [
    "cached_client",
    "client_switches",
    "late_client",
    "load",
    "store_client",
    "store_operation",
    "store_reconfigurer",
    "twin_client",
]
