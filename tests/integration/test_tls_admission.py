"""TLS handshakes count against the connection limits (docs/security.md "Limits and TLS").

Before, the listener did the TLS handshake itself (``create_server(ssl=...)``): a connection
reached the server's admission -- ``max_connections``, the per-address limit, eviction -- only
after its handshake completed, so any number of half-open handshakes held descriptors, memory
and handshake timers unseen. Now the plain TCP connection is admitted first and upgraded with
``loop.start_tls`` under ``handshake_timeout_s``. Run on the stdlib loop and on uvloop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import uvloop

from aresdsm.config import ClientOptions, ServerInfo, TlsFiles
from aresdsm.limits import ServerLimits
from aresdsm.net.client import TcpChannel
from aresdsm.security import certs
from aresdsm.security.tls import server_context
from aresdsm.server import Server
from aresdsm.storage import MemoryStorage
from aresdsm.wire.messages import Ping, Pong

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}
pytestmark = pytest.mark.slow  # (waits for the handshake deadline, on two loops: ~6 s)

FLOOD_ADDRESSES = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
PER_ADDRESS = 3
HALF_OPEN_PER_ADDRESS = 8


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    certs.create_ca(d, "test")
    certs.issue_server(d, "s1", hosts=("127.0.0.1",))
    certs.issue_client(d, "reader", "read")
    return d


async def _until(cond: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        await asyncio.sleep(0.02)


async def _flood_and_serve(pki: Path) -> None:
    server = Server(
        server_id="s1",
        host="127.0.0.1",
        port=0,
        storage=MemoryStorage(),
        tls=server_context(
            TlsFiles(str(pki / "ca.pem"), str(pki / "server-s1.pem"), str(pki / "server-s1.key"))
        ),
        limits=ServerLimits(
            max_connections=PER_ADDRESS * len(FLOOD_ADDRESSES),
            max_connections_per_address=PER_ADDRESS,
            evict_idle_after_s=0.3,
            handshake_timeout_s=3.0,
        ),
    )
    await server.start()
    half_open: list[asyncio.StreamWriter] = []
    try:
        # half-open handshakes: TCP connected, not a byte of TLS sent
        for addr in FLOOD_ADDRESSES:
            for _ in range(HALF_OPEN_PER_ADDRESS):
                _, w = await asyncio.open_connection("127.0.0.1", server.port, local_addr=(addr, 0))
                half_open.append(w)
        flood = len(FLOOD_ADDRESSES) * HALF_OPEN_PER_ADDRESS
        refused = flood - PER_ADDRESS * len(FLOOD_ADDRESSES)
        counters = server.core.counters

        def turned_away() -> int:  # (refused, or admitted by evicting an idle older one)
            return counters.get("connections-refused", 0) + counters.get("connections-evicted", 0)

        await _until(
            lambda: turned_away() == refused, 10.0, "the handshakes beyond the limit turned away"
        )
        # every admitted one is counted while in its handshake: the server is full
        assert len(server.connections) == server.limits.max_connections
        assert all(len(server._by_address[a]) == PER_ADDRESS for a in FLOOD_ADDRESSES)
        # a legitimate client is still served: it evicts a handshake idle for
        # evict_idle_after_s, completes its own and gets its answer
        await asyncio.sleep(server.limits.evict_idle_after_s)
        evicted = counters.get("connections-evicted", 0)
        opts = ClientOptions(
            timeout_s=5.0,
            connect_timeout_s=5.0,
            tls=TlsFiles(
                str(pki / "ca.pem"), str(pki / "client-reader.pem"), str(pki / "client-reader.key")
            ),
        )
        ch = TcpChannel(opts)
        try:
            reply = await ch.request(ServerInfo("s1", f"127.0.0.1:{server.port}"), Ping())
            assert isinstance(reply, Pong)
        finally:
            await ch.close()
        assert counters.get("connections-evicted", 0) == evicted + 1
        # the handshake deadline closes the rest of the flood
        await _until(lambda: not server.connections, 15.0, "half-open handshakes timed out")
        assert counters.get("tls-handshakes-failed", 0) >= 1
    finally:
        for w in half_open:
            w.close()
        await server.stop()


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_half_open_tls_handshakes_count_against_the_limits(loop: str, pki: Path) -> None:
    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        runner.run(_flood_and_serve(pki))
