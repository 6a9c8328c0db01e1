"""``ares s3 bench --object-mib 0`` for a fraction of a second on real processes: the small
writes run in boto3 client processes of their own, every party's CPU per write is measured,
and the JSON holds null (not NaN) for what was not measured. Throughput is not asserted
(benchmarks are never timed tests)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_small_writes_only_with_cpu_per_party(tmp_path: Path) -> None:
    out = tmp_path / "s3.json"
    r = subprocess.run(
        [sys.executable, "-m", "aresdsm", "s3", "bench", "--object-mib", "0", "--clients", "2",
         "--duration-s", "0.3", "--json", str(out)],
        check=False, capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    got = json.loads(out.read_text())  # strict JSON: no NaN
    assert got["native_put_mb_s"] is None and got["s3_put_mb_s"] is None
    assert got["native_small_ops_s"] > 0 and got["s3_small_ops_s"] > 0
    assert set(got["s3_small_cpu_ms"]) == {"gateway", "clients", "servers"}
    assert all(v > 0 for v in got["s3_small_cpu_ms"].values())
    assert all(v > 0 for v in got["native_small_cpu_ms"].values())
    assert set(got["ratios"]) == {"small_put"}
    assert got["small_boto3_config"].startswith("default: request_checksum_calculation")
