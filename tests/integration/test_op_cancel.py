"""Cancelling an operation cancels its attempt (found by ``ares chaos``: a client whose
operation was cancelled -- a deadline of its caller, a crash -- left the attempt running on its
own, and when it failed asyncio logged "Task exception was never retrieved")."""

from __future__ import annotations

import asyncio
import contextlib
import gc

import pytest

from aresdsm.client import Store
from aresdsm.config import ClientOptions, Configuration, ServerInfo


async def test_a_cancelled_operation_leaves_no_attempt_running() -> None:
    writers: list[asyncio.StreamWriter] = []

    async def silent(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        writers.append(w)
        with contextlib.suppress(ConnectionError):
            while await r.read(65536):  # accepts, reads, never answers (a paused server)
                pass

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    c0 = Configuration("c0", (ServerInfo("s1", f"127.0.0.1:{port}"),))
    store = Store(c0, options=ClientOptions(timeout_s=1.0, connect_timeout_s=1.0))
    unretrieved: list[object] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, ctx: unretrieved.append(ctx.get("message")))
    try:
        for op in (store.write("k", b"v"), store.read("k")):
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(op, 0.05)  # before the hedge: the first attempt runs
            await asyncio.sleep(0.05)
            left = [
                t
                for t in asyncio.all_tasks()
                if any(n in repr(t.get_coro()) for n in ("_write_once", "_read_once"))
            ]
            assert left == [], "the operation's attempt still runs after it was cancelled"
        await asyncio.sleep(1.2)  # past timeout_s: a detached attempt would have failed by now
        gc.collect()
        assert unretrieved == []
    finally:
        loop.set_exception_handler(None)
        await store.close()
        server.close()
        for w in writers:
            w.close()
            with contextlib.suppress(ConnectionError):
                await w.wait_closed()
        await server.wait_closed()
