"""What one uncontended operation costs the client in event-loop objects (issue 18): no task of
its own -- the attempt runs in the caller's task, the relocation hedge is a timer, phase 1 over
one configuration is awaited without a gather -- and every round sends one request to each
server (2 rounds per write, 1 per uncontended read). Counted, not timed: the earlier code made
two tasks per operation (the attempt, phase 1's gather child), which cost about a quarter of the
client's CPU per operation in the profile of docs/benchmarks.md."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import aresdsm
from aresdsm.client import Store
from aresdsm.config import Configuration
from aresdsm.server import Server

CLIENT_CODE = tuple(
    str(Path(aresdsm.__file__).parent / p) for p in ("client.py", "protocol", "net")
)


async def test_uncontended_operations_create_no_client_task(
    inproc_cluster: tuple[Configuration, list[Server]],
) -> None:
    cfg, _ = inproc_cluster
    store = Store(cfg)
    loop = asyncio.get_running_loop()
    made: list[str] = []
    factory = loop.get_task_factory()

    def counting(
        lp: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any], **kw: Any
    ) -> asyncio.Future[Any]:
        code = getattr(coro, "cr_code", None)
        if code is not None and code.co_filename.startswith(CLIENT_CODE):
            made.append(code.co_qualname)
        if factory is not None:
            return factory(lp, coro, **kw)
        return asyncio.Task(coro, loop=lp, **kw)

    try:
        await store.write("k", b"v0")  # connects (a task per connection, once)
        rounds0, msgs0 = store.channel.rounds, store.channel.messages
        loop.set_task_factory(counting)  # type: ignore[arg-type]
        for i in range(10):
            await store.write("k", b"v%d" % i)
            assert await store.read("k") == b"v%d" % i
    finally:
        loop.set_task_factory(factory)
        await store.close()
    assert made == []
    assert store.channel.rounds - rounds0 == 10 * 2 + 10 * 1
    assert store.channel.messages - msgs0 == (10 * 2 + 10 * 1) * 3
