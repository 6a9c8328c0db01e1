"""File operations are traced (docs/protocol.md §12, §9.2): one ``op`` span per file operation
with the block operations below it, and ``ares trace report`` breaks a file write into list
read, chunking, block rounds, linking and reclaim (phases adding up to its latency)."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from aresdsm import tracing
from aresdsm.files import ChunkParams, Files
from aresdsm.trace_report import FILE_PHASES, file_breakdown, file_table, load_spans

from .fake import FakeStore


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for var in list(os.environ):
        if var.startswith("OTEL_"):
            monkeypatch.delenv(var, raising=False)
    yield
    tracing.shutdown()


async def test_file_write_breakdown(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    assert tracing.setup("test", trace_file=path)
    f = Files(FakeStore())
    p = ChunkParams(min_bytes=256, avg_bytes=1024, max_bytes=4096)
    data = bytearray(random.Random(1).randbytes(100_000))
    await f.write("traced", bytes(data), params=p)
    data[50_000:50_010] = b"x" * 10
    await f.write("traced", bytes(data))
    assert await f.read("traced") == bytes(data)
    tracing.shutdown()
    spans = load_spans([path])
    ops = [s for s in spans if s.name == "op"]
    assert sorted(str(s.attributes["ares.op"]) for s in ops) == [
        "file-read",
        "file-write",
        "file-write",
    ]
    writes = [s for s in ops if s.attributes["ares.op"] == "file-write"]
    blocks = [s for s in spans if s.name == "file.block"]
    assert blocks and {b.trace_id for b in blocks} <= {w.trace_id for w in writes}
    rows = {r.kind: r for r in file_breakdown(spans)}
    w = rows["file-write"]
    assert w.ops == 2 and w.blocks > 50
    assert sum(w.share(p) for p in FILE_PHASES) == pytest.approx(1.0)
    for phase in ("read list", "chunking", "block rounds", "linking"):
        assert w.phases_ns[phase] > 0, phase
    import io

    from rich.console import Console

    out = io.StringIO()
    Console(file=out, width=120).print(file_table(list(rows.values())))
    assert "block rounds" in out.getvalue() and "file-write" in out.getvalue()
