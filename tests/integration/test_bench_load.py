"""``ares bench --client-procs N`` and ``--peer etcd`` (issue 18), each for about a second per
cell on real processes: the figures are merged from every load process, the CPU per operation
is measured, and etcd really stores and returns the values (a read checks the value's length).
Throughput is not asserted (benchmarks are never timed tests)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from aresdsm.bench import run_bench
from aresdsm.runtime import run

pytestmark = pytest.mark.slow


def test_client_procs_merges_the_figures_of_every_load_process(tmp_path: Path) -> None:
    report = run(
        run_bench(
            servers=[3],
            concurrency=[4],
            kinds=["write", "read"],
            duration_s=0.5,
            storage="memory",
            security=("insecure",),
            client_procs=2,
            base_dir=tmp_path,
            log=lambda *_: None,
        )
    )
    write, read = report.cells
    for cell in (write, read):
        assert cell.client_procs == 2
        assert cell.ops > 0 and cell.errors == 0
        assert math.isfinite(cell.client_cpu_us_per_op) and cell.client_cpu_us_per_op > 0
        assert math.isfinite(cell.server_cpu_us_per_op) and cell.server_cpu_us_per_op > 0
    # counted by the load processes' channels and summed: 2 rounds per write; 1 per read (a few
    # reads may meet a server still applying the preload's last writes: one write-back round)
    assert write.rounds_per_op == 2.0 and write.messages_per_op == 6.0
    assert 1.0 <= read.rounds_per_op < 1.1


@pytest.mark.skipif(shutil.which("etcd") is None, reason="no etcd binary (Debian: etcd-server)")
def test_peer_etcd_runs_the_same_cells_against_etcd(tmp_path: Path) -> None:
    report = run(
        run_bench(
            servers=[3],
            concurrency=[4],
            kinds=["write", "read"],
            duration_s=0.5,
            value_bytes=256,
            storage="memory",
            security=("insecure",),
            peer="etcd",
            base_dir=tmp_path,
            log=lambda *_: None,
        )
    )
    assert [(p.system, p.members, p.kind) for p in report.peer_cells] == [
        ("etcd", 3, "write"),
        ("etcd", 3, "read"),
    ]
    for p in report.peer_cells:
        assert p.ops > 0 and p.errors == 0  # every read returned the 256-byte value
        assert p.server_cpu_us_per_op > 0
    ratios = report.peer_ratios()
    assert [(c.kind, p.kind) for c, p, _ in ratios] == [("write", "write"), ("read", "read")]
    assert all(r > 0 for _, _, r in ratios)
    saved = report.to_json()
    assert len(saved["peer_ratios"]) == 2
    json.dumps(saved)  # the JSON file ares bench writes
    assert not list(tmp_path.glob("ares-bench-etcd-*"))  # etcd's data directories are gone
