"""Files and coverable writes over real TCP to in-process servers (docs/protocol.md §9, §8.5):
a coverable write and a file write relocate and go on when the configuration they started in is
replaced and its servers are gone; coverable operations are recorded in the history and two
writers racing on one block check as coverable-linearizable (the naive unconditional write of
``broken_cvr_unconditional`` does not)."""

from __future__ import annotations

import asyncio
import dataclasses
import random
from pathlib import Path
from typing import Any

import pytest

from aresdsm import Store
from aresdsm.check import check_file
from aresdsm.client import HistoryRecorder
from aresdsm.config import ClientOptions, Configuration, ServerInfo
from aresdsm.errors import QuorumUnavailable
from aresdsm.files import ChunkParams, FileConflict
from aresdsm.history import read_records
from aresdsm.protocol.ops import DEFAULT_SWITCHES, OpSwitches
from aresdsm.server import Server
from aresdsm.storage import SqliteStorage
from aresdsm.tags import TAG0
from aresdsm.testing import Broken

P = ChunkParams(min_bytes=4096, avg_bytes=16384, max_bytes=65536)
OPTS = ClientOptions(timeout_s=10.0, connect_timeout_s=0.5)


def blob(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


async def _servers(tmp_path: Path, n: int) -> tuple[list[Server], tuple[ServerInfo, ...]]:
    out = []
    for i in range(n):
        s = Server(
            server_id=f"s{i + 1}",
            host="127.0.0.1",
            port=0,
            storage=SqliteStorage(tmp_path / f"s{i + 1}" / "state.sqlite3"),
        )
        await s.start()
        out.append(s)
    return out, tuple(ServerInfo(s.server_id, f"127.0.0.1:{s.port}") for s in out)


async def _move_and_stop_old(
    servers: list[Server], info: tuple[ServerInfo, ...], c0: Configuration
) -> None:
    """Reconfigure c0 -> c1 (the other three servers), then stop c0's servers: a client that
    knows only c0 must relocate (§8.5) to go on."""
    async with Store(c0, options=OPTS, known_servers=info) as admin:
        c1 = Configuration("c1", info[3:6])
        assert (await admin.reconfigure(c1)).id == "c1"
    for s in servers[:3]:
        await s.stop()


async def test_cvr_write_relocates_when_its_configuration_is_gone(tmp_path: Path) -> None:
    servers, info = await _servers(tmp_path, 6)
    c0 = Configuration("c0", info[:3])
    for s in servers[:3]:
        await s.bootstrap(c0)
    try:
        async with Store(c0, options=OPTS, known_servers=info) as w:
            first = await w.cvr_write("k", b"v1", TAG0)
            assert first.ok
            await _move_and_stop_old(servers, info, c0)
            # the client still knows only c0, whose servers are gone: it relocates and the
            # level runs in c1, where the transfer put v1 (a stale answer would carry v1)
            second = await w.cvr_write("k", b"v2", first.tag)
            assert second.ok and second.tag.z == 2
            third = await w.cvr_write("k", b"v3", first.tag)
            assert not third.ok and third.value == b"v2"
            fresh = await w.cvr_write("fresh-key", b"f", TAG0, fresh=True)
            assert fresh.ok
        async with Store(c0, options=OPTS, known_servers=info) as r:
            assert await r.read("k") == b"v2"
            assert await r.read("fresh-key") == b"f"
    finally:
        for s in servers:
            await s.stop()


@pytest.mark.slow
async def test_file_write_goes_on_across_a_reconfiguration_that_retires_its_servers(
    tmp_path: Path,
) -> None:
    servers, info = await _servers(tmp_path, 6)
    c0 = Configuration("c0", info[:3])
    for s in servers[:3]:
        await s.bootstrap(c0)
    try:
        async with Store(c0, options=OPTS, known_servers=info) as w:
            base = blob(600_000)
            await w.files.write("f", base, params=P)
            data = bytearray(base)
            data[300_000:300_000] = blob(200_000, 2)  # new blocks and a link
            real = w.cvr_write
            calls = 0
            midway, go_on = asyncio.Event(), asyncio.Event()

            async def paced(*args: Any, **kwargs: Any) -> Any:
                nonlocal calls
                calls += 1
                if calls == 5:  # some new blocks written, most not
                    midway.set()
                    await go_on.wait()
                return await real(*args, **kwargs)

            w.cvr_write = paced  # type: ignore[method-assign]
            task = asyncio.ensure_future(w.files.write("f", bytes(data)))
            await midway.wait()
            await _move_and_stop_old(servers, info, c0)
            go_on.set()
            await task
            assert calls > 10
            assert await w.files.read("f") == bytes(data)
            assert (await w.files.stat("f")).configuration == "c1"
        async with Store(c0, options=OPTS, known_servers=info) as r:
            assert await r.files.read("f") == bytes(data)
    finally:
        for s in servers:
            await s.stop()


async def _race(
    c0: Configuration, history: Path, switches: OpSwitches, name: str
) -> list[int | BaseException]:
    """Two writers change the same 8 bytes of file ``name`` at once: the first write of an
    existing block of each (the mark of the block both replace) starts together."""
    out = await asyncio.to_thread(history.open, "ab")
    with out:
        rec = HistoryRecorder(out)
        base = blob(200_000)
        async with Store(c0, options=OPTS, recorder=rec, switches=switches) as s0:
            await s0.files.write(name, base, params=P)
        stores = [Store(c0, options=OPTS, recorder=rec, switches=switches) for _ in range(2)]
        barrier = asyncio.Barrier(2)
        for st in stores:
            waited: list[bool] = []

            async def together(
                *a: Any, _real: Any = st.cvr_write, _w: list[bool] = waited, **kw: Any
            ) -> Any:
                if not kw.get("fresh") and str(a[0]).startswith("file-block:") and not _w:
                    _w.append(True)
                    await barrier.wait()
                return await _real(*a, **kw)

            st.cvr_write = together  # type: ignore[method-assign]
            st.files.max_retries = 0
        versions = []
        for who in range(2):
            v = bytearray(base)
            v[100_000:100_008] = f"writer{who}".encode()
            versions.append(bytes(v))
        res: list[int | BaseException] = await asyncio.gather(
            *(st.files.write(name, v) for st, v in zip(stores, versions, strict=True)),
            return_exceptions=True,
        )
        for st in stores:
            await st.close()
    return res


@pytest.mark.parametrize("broken", [False, True])
async def test_two_writers_racing_on_one_block_check_as_coverable_linearizable(
    tmp_path: Path, broken: bool
) -> None:
    """Both writers change the same block of a file at once: one wins the round, the other is
    answered stale (and, with no retries, raises FileConflict). The recorded history, every
    register of the file included (``cvr`` records with their base), checks as
    coverable-linearizable. The naive unconditional write (``broken_cvr_unconditional``) lets
    both win on one base when their query-then-put interleave: the checker reports it (a few
    races, as the interleaving is up to the network)."""
    servers, info = await _servers(tmp_path, 3)
    c0 = Configuration("c0", info)
    for s in servers:
        await s.bootstrap(c0)
    switches = DEFAULT_SWITCHES
    if broken:
        switches = dataclasses.replace(switches, faults=Broken(broken_cvr_unconditional=True))
    history = tmp_path / "history.jsonl"
    try:
        if not broken:
            res = await _race(c0, history, switches, "race")
            oks = [r for r in res if not isinstance(r, BaseException)]
            assert len(oks) == 1 and any(isinstance(r, FileConflict) for r in res), res
            records = list(read_records(history))
            cvr = [r for r in records if r.kind == "cvr"]
            assert any(r.stale for r in cvr) and all(r.base is not None for r in cvr)
            result = check_file(history)
            assert result.verdict == "ok", result.explain()
            assert sum(1 for k in result.keys if k.key.startswith("file-block:race:")) > 5
            return
        for attempt in range(8):
            await _race(c0, history, switches, f"race{attempt}")
            result = check_file(history)
            if result.verdict == "violation":
                break
        assert result.verdict == "violation", result.explain()
    finally:
        for s in servers:
            await s.stop()


async def test_quorum_unavailable_without_a_successor_is_still_raised(tmp_path: Path) -> None:
    """Relocation finds nothing newer when the servers are simply down: the error stays."""
    servers, info = await _servers(tmp_path, 3)
    c0 = Configuration("c0", info)
    for s in servers:
        await s.bootstrap(c0)
    for s in servers[:2]:
        await s.stop()
    try:
        async with Store(c0, options=ClientOptions(timeout_s=2.0, connect_timeout_s=0.3)) as w:
            with pytest.raises(QuorumUnavailable):
                await w.cvr_write("k", b"v", TAG0)
    finally:
        await servers[2].stop()


async def test_file_write_is_one_trace_with_block_operations_as_children(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file write over real TCP is one ``op`` span (file-write); every coverable write of a
    block, mark or link is an ``op`` span (cvr-write) below it, with its rounds below that, and
    ``ares trace report`` breaks the write into chunking, block rounds and linking."""
    import os

    from aresdsm import tracing
    from aresdsm.trace_report import file_breakdown, load_spans

    for var in list(os.environ):
        if var.startswith("OTEL_"):
            monkeypatch.delenv(var, raising=False)
    servers, info = await _servers(tmp_path, 3)
    c0 = Configuration("c0", info)
    for s in servers:
        await s.bootstrap(c0)
    path = tmp_path / "spans.jsonl"
    try:
        async with Store(c0, options=OPTS) as w:
            data = bytearray(blob(300_000))
            await w.files.write("t", bytes(data), params=P)
            assert tracing.setup("test", trace_file=path)
            data[150_000:150_010] = b"x" * 10
            await w.files.write("t", bytes(data))
    finally:
        tracing.shutdown()
        for s in servers:
            await s.stop()
    spans = load_spans([path])
    by_id = {s.span_id: s for s in spans}

    def ancestors(s: Any) -> list[Any]:
        out = []
        while s.parent_id is not None and s.parent_id in by_id:
            s = by_id[s.parent_id]
            out.append(s)
        return out

    (fw,) = [s for s in spans if s.name == "op" and s.attributes["ares.op"] == "file-write"]
    cvr = [s for s in spans if s.name == "op" and s.attributes["ares.op"] == "cvr-write"]
    assert len(cvr) >= 3  # the new block, the mark, the link (and journal, index, tombstone)
    for c in cvr:
        assert fw in ancestors(c)
        assert any(r.parent_id == c.span_id for r in spans), "no round below a cvr-write"
    (row,) = [r for r in file_breakdown(spans) if r.kind == "file-write"]
    for phase in ("read list", "chunking", "block rounds", "linking"):
        assert row.phases_ns[phase] > 0, phase
