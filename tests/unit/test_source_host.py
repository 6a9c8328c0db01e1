"""``[client] source_host``: the local address a client's connections leave from (multi-homed
hosts; ``ares chaos`` tells its clients apart by it)."""

from __future__ import annotations

import asyncio

import pytest

from aresdsm.config import ClientOptions, ServerInfo, dump_cluster_file, parse_cluster
from aresdsm.errors import AresError, ConfigurationError
from aresdsm.net.client import TcpChannel
from aresdsm.wire.messages import Ping

BASE = {
    "cluster": {"insecure": True},  # (plaintext: this test is about addresses, not TLS)
    "servers": [{"id": "s1", "address": "127.0.0.1:7001"}],
    "initial": {"servers": ["s1"]},
}


def test_parsed_validated_and_dumped() -> None:
    cf = parse_cluster({**BASE, "client": {"source_host": "127.0.0.5"}})
    assert cf.client.source_host == "127.0.0.5"
    again = dump_cluster_file(cf)
    assert 'source_host = "127.0.0.5"' in again
    assert parse_cluster(BASE).client.source_host is None
    assert "source_host" not in dump_cluster_file(parse_cluster(BASE))
    with pytest.raises(ConfigurationError, match="source_host must be an IP address"):
        parse_cluster({**BASE, "client": {"source_host": "my laptop"}})


async def test_connections_leave_from_it() -> None:
    seen: list[str] = []

    def accept(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        seen.append(w.get_extra_info("peername")[0])
        w.close()

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    channel = TcpChannel(ClientOptions(timeout_s=1.0, source_host="127.0.0.33"))
    try:
        with pytest.raises(AresError):
            await channel.request(ServerInfo("s1", f"127.0.0.1:{port}"), Ping(None))
        assert seen and set(seen) == {"127.0.0.33"}
    finally:
        await channel.close()
        server.close()
        await server.wait_closed()
