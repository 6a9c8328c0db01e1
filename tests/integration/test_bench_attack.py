"""`ares bench --attack` runs end to end in a small quick run (the integrator measures the full
figure -- 5,000 idle and 32 slowloris connections per server -- on a quiet machine): the
attacker process connects, the client measures with and without it, and the report is written.
No timing is asserted (benchmarks are not timed tests)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_attack_scenario_quick_run(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "aresdsm",
            "bench",
            "--attack",
            "--servers",
            "1",
            "--concurrency",
            "4",
            "--duration-s",
            "0.5",
            "--idle-conns",
            "100",
            "--slowloris",
            "2",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    result = json.loads((tmp_path / "attack.json").read_text())
    assert result["idle_connected"] == 100 and result["slowloris_per_server"] == 2
    assert result["unloaded_ops_per_s"] > 0 and result["loaded_ops_per_s"] > 0
    assert 0 < result["max_server_rss_bytes"] < result["rss_bound_bytes"]
    assert "slowloris" in p.stdout
