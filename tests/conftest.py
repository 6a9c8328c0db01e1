"""Shared fixtures: in-process servers (unit level) and local clusters of real processes."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from aresdsm.config import Configuration, ServerInfo
from aresdsm.local import LocalCluster
from aresdsm.server import Server
from aresdsm.storage import SqliteStorage


@pytest.fixture
async def inproc_cluster(tmp_path: Path) -> AsyncIterator[tuple[Configuration, list[Server]]]:
    """Three in-process servers on loopback with SQLite storage (fast; not crash tests)."""
    servers = []
    for i in range(3):
        s = Server(
            server_id=f"s{i + 1}",
            host="127.0.0.1",
            port=0,
            storage=SqliteStorage(tmp_path / f"s{i + 1}" / "state.sqlite3"),  # own blobs/
        )
        await s.start()
        servers.append(s)
    cfg = Configuration(
        "c0", tuple(ServerInfo(s.server_id, f"127.0.0.1:{s.port}") for s in servers)
    )
    for s in servers:
        await s.bootstrap(cfg)
    yield cfg, servers
    for s in servers:
        await s.stop()


@pytest.fixture
def process_cluster() -> Iterator[LocalCluster]:
    """Three real server processes (``python -m aresdsm server``), stopped afterwards."""
    with tempfile.TemporaryDirectory(prefix="ares-test-") as tmp:
        lc = LocalCluster.create(Path(tmp) / "c", n=3, timeout_s=2.0)
        lc.start()
        try:
            yield lc
        finally:
            lc.stop()
