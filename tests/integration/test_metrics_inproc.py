"""The metrics endpoint in process: bad HTTP input, a storage that cannot be written, fail-stop,
off by default (aresdsm.metrics)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from aresdsm.client import Store
from aresdsm.config import Configuration, ServerInfo
from aresdsm.metrics import MAX_HTTP_HEAD_BYTES, MetricsHttp
from aresdsm.server import Server
from aresdsm.storage import SqliteStorage


async def _http(port: int, raw: bytes) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    await writer.wait_closed()
    if not data:
        return 0, b""
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def _get(port: int, path: str) -> tuple[int, bytes]:
    return await _http(port, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[Server, MetricsHttp, Configuration]]:
    srv = Server(
        server_id="s1",
        host="127.0.0.1",
        port=0,
        storage=SqliteStorage(tmp_path / "s1" / "state.sqlite3"),
    )
    await srv.start()
    cfg = Configuration("c0", (ServerInfo("s1", f"127.0.0.1:{srv.port}"),))
    await srv.bootstrap(cfg)
    http = MetricsHttp(srv, srv.enable_metrics(), "127.0.0.1", 0)
    await http.start()
    yield srv, http, cfg
    await http.close()
    await srv.stop()


async def test_bad_http_input_is_answered_and_the_endpoint_keeps_serving(served: Any) -> None:
    _srv, http, cfg = served
    assert (await _http(http.port, b"garbage\r\n\r\n"))[0] == 400
    assert (await _http(http.port, b"POST /metrics HTTP/1.1\r\n\r\n"))[0] == 405
    # a head beyond the limit: the connection is closed without an answer
    assert (await _http(http.port, b"GET /" + b"a" * MAX_HTTP_HEAD_BYTES * 2))[0] == 0
    assert (await _http(http.port, b"\xff\xfe\r\n\r\n"))[0] == 400
    code, body = await _get(http.port, "/metrics?x=1")
    assert code == 200 and b"aresdsm_server_up 1.0" in body
    # the data path is unaffected
    async with Store(cfg) as store:
        await store.write("k", b"v")
        assert await store.read("k") == b"v"


async def test_healthz_fails_when_storage_cannot_be_written(
    served: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    srv, http, _ = served
    assert await _get(http.port, "/healthz") == (200, b"ok\n")

    def refuse() -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(srv.storage, "probe_writable", refuse)
    code, body = await _get(http.port, "/healthz")
    assert code == 503 and b"No space left on device" in body
    assert (await _get(http.port, "/readyz"))[0] == 503
    _, metrics = await _get(http.port, "/metrics")
    assert b"aresdsm_server_healthz_failures_total 2.0" in metrics


async def test_not_ready_after_fail_stop(served: Any) -> None:
    srv, http, _ = served
    assert (await _get(http.port, "/readyz"))[0] == 200
    srv.fatal = RuntimeError("commit failed")
    code, body = await _get(http.port, "/readyz")
    assert code == 503 and b"fail-stop" in body
    assert (await _get(http.port, "/healthz"))[0] == 503
    srv.fatal = None


async def test_metrics_are_off_by_default(inproc_cluster: Any) -> None:
    cfg, servers = inproc_cluster
    assert all(s.metrics is None for s in servers)
    assert all(s.storage.on_commit is None for s in servers)
    async with Store(cfg) as store:
        assert store.metrics is None and store.channel.metrics is None
        await store.write("k", b"v")
