"""Metrics, health and `ares status` on real server processes (issue 15 item 3), and the
thread-safe SyncStore (item 5) that drives them.

One cluster of real processes (3 members + 1 spare, each with ``--metrics-address``) serves the
whole module: scrape, write from 4 threads sharing one SyncStore, scrape again and check the
numbers moved; reconfigure a server out and watch /readyz and the GC counter; then stop servers
and check that ``ares status`` exits non-zero with whole reasons and without the removed server.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

import aresdsm
from aresdsm.local import LocalCluster

pytestmark = pytest.mark.slow

SERVER_METRICS = [
    "aresdsm_server_requests_total",
    "aresdsm_server_request_errors_total",
    "aresdsm_server_request_seconds",
    "aresdsm_storage_commit_seconds",
    "aresdsm_storage_commit_batch_records",
    "aresdsm_server_connections",
    "aresdsm_server_connections_accepted_total",
    "aresdsm_server_objects",
    "aresdsm_server_configurations_known",
    "aresdsm_server_chain_position",
    "aresdsm_server_successors",
    "aresdsm_server_gc_configurations_total",
    "aresdsm_server_reconfig_steps_total",
    "aresdsm_server_ready",
    "aresdsm_storage_commits_total",
    "aresdsm_storage_bytes",
]


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with tempfile.TemporaryDirectory(prefix="ares-metrics-") as tmp:
        lc = LocalCluster.create(Path(tmp) / "c", n=3, spares=1, timeout_s=5.0, metrics=True)
        lc.start_all()
        try:
            yield lc
        finally:
            lc.stop()


def _get(lc: LocalCluster, sid: str, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{lc.metrics[sid]}{path}", timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _samples(text: str) -> dict[str, float]:
    """``name{labels}`` -> value for every sample of an exposition."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def _sum(samples: dict[str, float], prefix: str) -> float:
    return sum(v for k, v in samples.items() if k == prefix or k.startswith(prefix + "{"))


def _status(lc: LocalCluster) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "60"}  # narrow: reasons must still be whole
    return subprocess.run(
        [sys.executable, "-m", "aresdsm", "status", "--cluster", str(lc.cluster_path)],
        capture_output=True,
        check=False,
        text=True,
        timeout=60,
        env=env,
    )


def test_metrics_move_and_sync_store_is_thread_safe(cluster: LocalCluster) -> None:
    lc = cluster
    code, text = _get(lc, "s1", "/metrics")
    assert code == 200
    before = _samples(text)

    metrics = aresdsm.ClientMetrics()
    errors: list[BaseException] = []
    with aresdsm.connect_sync(lc.cluster_path, metrics=metrics) as store:

        def worker(t: int) -> None:
            for i in range(50):
                for _attempt in range(5):  # a loaded test machine may time a write out
                    try:
                        store.write(f"k{t}-{i % 5}", f"{t}-{i}".encode())
                        break
                    except aresdsm.OperationError:
                        continue
                    except BaseException as e:  # the old SyncStore failed 150 of 200 here
                        errors.append(e)
                        break
                else:
                    errors.append(RuntimeError(f"write {t}-{i} timed out 5 times"))

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert errors == []
        assert store.read("k0-0") == b"0-45"
        assert store.read_tagged("k3-4")[1] == b"3-49"
        assert len(store.configurations()) >= 1
        assert all(not isinstance(s, str) for s in store.stats())
    assert metrics.value("aresdsm_client_operations_total", {"op": "write", "outcome": "ok"}) == 200
    assert metrics.value("aresdsm_client_operation_seconds_count", {"op": "read"}) == 2
    assert metrics.value("aresdsm_client_rounds_total", {"phase": "put-data", "outcome": "ok"}) > 0

    code, text = _get(lc, "s1", "/metrics")
    after = _samples(text)
    families = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}
    assert [m for m in SERVER_METRICS if m not in families] == []
    # the numbers moved: 200 writes are 200 QueryTag + 200 PutData on a quorum (2 of 3) at least
    put = 'aresdsm_server_requests_total{type="PutData"}'
    assert after.get(put, 0) - before.get(put, 0) >= 1
    moved = sum(
        _samples(_get(lc, s, "/metrics")[1]).get(put, 0) - (before.get(put, 0) if s == "s1" else 0)
        for s in ("s1", "s2", "s3")
    )
    assert moved >= 2 * 200 - 200  # every write reached a quorum of 2 of the 3
    assert _sum(after, "aresdsm_storage_commit_seconds_count") > _sum(
        before, "aresdsm_storage_commit_seconds_count"
    )
    assert _sum(after, "aresdsm_storage_commit_batch_records_sum") >= _sum(
        after, "aresdsm_storage_commit_batch_records_count"
    )
    assert _sum(after, "aresdsm_server_objects") > _sum(before, "aresdsm_server_objects")
    assert _sum(after, "aresdsm_storage_bytes") > _sum(before, "aresdsm_storage_bytes")
    assert after["aresdsm_server_ready"] == 1

    assert _get(lc, "s1", "/healthz") == (200, "ok\n")
    code, why = _get(lc, "s1", "/readyz")
    assert code == 200 and "member of c0" in why
    code, why = _get(lc, "s4", "/readyz")  # the spare is healthy but not ready
    assert code == 503 and "knows no configuration" in why
    assert _get(lc, "s4", "/healthz")[0] == 200
    assert _get(lc, "s1", "/nothing")[0] == 404


def test_removed_server_not_ready_gc_counted_status_exit_code(cluster: LocalCluster) -> None:
    lc = cluster
    position = _samples(_get(lc, "s2", "/metrics")[1])["aresdsm_server_chain_position"]
    with aresdsm.connect_sync(lc.cluster_path) as store:
        store.write("x", b"1")
        last = store.configurations()[-1].config
        servers = tuple(s for s in lc.cluster.servers if s.id in ("s2", "s3", "s4"))
        proposal = aresdsm.Configuration(f"{last.id}-next", servers)
        assert store.reconfigure(proposal).id == proposal.id
        store.settle()
        assert store.read("x") == b"1"

    code, why = _get(lc, "s1", "/readyz")
    assert code == 503 and "not a member" in why
    s1 = _samples(_get(lc, "s1", "/metrics")[1])
    assert s1["aresdsm_server_gc_configurations_total"] == 1
    assert s1['aresdsm_server_reconfig_steps_total{status="F"}'] >= 1
    assert s1["aresdsm_server_ready"] == 0
    assert _get(lc, "s4", "/readyz")[0] == 200
    s2 = _samples(_get(lc, "s2", "/metrics")[1])
    assert s2["aresdsm_server_chain_position"] == position + 1
    assert s2['aresdsm_server_successors{status="F"}'] >= 1

    ok = _status(lc)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert re.search(r"│ s2\s+│", ok.stdout)
    assert not re.search(r"│ s1\s+│", ok.stdout)  # removed: not listed as a server
    assert "not shown: s1" in ok.stdout

    lc.kill("s3")
    lc.kill("s4")
    down = _status(lc)
    assert down.returncode == 1, down.stdout
    assert "no live quorum" in down.stderr
    # whole reasons, one line each, even at 60 columns
    reasons = [line for line in down.stdout.splitlines() if line.startswith("down: s")]
    assert len(reasons) == 2
    for line in reasons:
        assert re.match(r"down: s[34] \(127\.0\.0\.1:\d+\): \w+", line), line
    lc.restart("s3")
    lc.restart("s4")
