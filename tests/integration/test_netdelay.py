"""The delaying relay behind ``ares bench --link-delay-ms`` (aresdsm.netdelay): bytes arrive
intact and in order, each way later by at least the delay, and closing propagates."""

from __future__ import annotations

import asyncio
import sys
import time

import pytest

from aresdsm.local import free_ports

pytestmark = pytest.mark.slow
DELAY_MS = 25


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


async def test_relay_delays_each_way_and_keeps_order() -> None:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    target = server.sockets[0].getsockname()[1]
    (listen,) = free_ports(1)
    relay = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "aresdsm.netdelay",
        "--delay-ms",
        str(DELAY_MS),
        f"127.0.0.1:{listen}=127.0.0.1:{target}",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert relay.stdout is not None
        assert (await relay.stdout.readline()).strip() == b"ready"
        reader, writer = await asyncio.open_connection("127.0.0.1", listen)
        chunks = [bytes([i]) * (1 + 1000 * i) for i in range(20)]
        t0 = time.perf_counter()
        for c in chunks:
            writer.write(c)
        expected = b"".join(chunks)
        got = await asyncio.wait_for(reader.readexactly(len(expected)), 10)
        assert got == expected
        assert time.perf_counter() - t0 >= 2 * DELAY_MS / 1e3  # there and back
        writer.close()
        assert await asyncio.wait_for(reader.read(), 10) == b""  # the close came through
    finally:
        relay.terminate()
        assert await asyncio.wait_for(relay.wait(), 10) == 0
        server.close()
        await server.wait_closed()
