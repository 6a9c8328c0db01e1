"""Server logs as an operator meets them (issue 15 item 4), on real server processes: at the
default level a server logs its start-up, recovery summary and listening address, and every
reconfiguration step it takes part in; `--log-format json` gives one JSON object per line.
Before: nothing at the default level, reconfiguration and GC not at all, no JSON format."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from aresdsm.client import Store
from aresdsm.config import Configuration
from aresdsm.local import LocalCluster
from aresdsm.protocol.ares import CLUSTER_CHAIN as CHAIN

pytestmark = pytest.mark.slow


async def test_reconfiguration_steps_are_logged_at_the_default_level() -> None:
    with tempfile.TemporaryDirectory(prefix="ares-logs-") as tmp:
        lc = LocalCluster.create(Path(tmp) / "c", n=3, spares=1, timeout_s=3.0)
        lc.start_all()
        try:
            servers = {s.id: s for s in lc.cluster.servers}
            async with Store(lc.cluster.initial, options=lc.cluster.client) as store:
                await store.write("k", b"v")
                target = Configuration("c1", (servers["s1"], servers["s2"], servers["s4"]))
                await store.reconfigure(target)
                assert await store.read("k") == b"v"
        finally:
            lc.stop()
        s1 = (lc.data_dir("s1") / "server.log").read_text()
        s4 = (lc.data_dir("s4") / "server.log").read_text()
    for text in (
        "server s1 starting",
        "server s1 recovered 0 records",
        "server s1 listening on 127.0.0.1:",
        "installed the initial configuration c0",
        f"{CHAIN}/c0: consensus accepted configuration c1",
        f"{CHAIN}/c0: successor c1 recorded, status F",
        f"{CHAIN}/c0: garbage-collected",
        f"{CHAIN}/c1: configuration finalized",
        "server s1 stopped",
    ):
        assert text in s1, f"{text!r} not in the log:\n{s1}"
    assert "installed configuration c1" in s4 and "listening" in s4


def test_json_log_format_of_a_server_process(tmp_path: Path) -> None:
    lc = LocalCluster.create(tmp_path / "c", n=1)
    ready = tmp_path / "ready"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "aresdsm",
            "server",
            "--id",
            "s1",
            "--cluster",
            str(lc.cluster_path),
            "--data-dir",
            str(lc.data_dir("s1")),  # (created with its identity by LocalCluster.create)
            "--log-format",
            "json",
            "--ready-file",
            str(ready),
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    try:
        for _ in range(600):
            if ready.exists() or proc.poll() is not None:
                break
            time.sleep(0.05)
        assert ready.exists(), "the server did not start"
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    records = [json.loads(line) for line in err.splitlines()]  # every line is one JSON object
    messages = [r["msg"] for r in records]
    assert any(m.startswith("server s1 listening on") for m in messages), messages
    assert {r["level"] for r in records} == {"info"}
    assert all(r["logger"] == "aresdsm.server" for r in records)
