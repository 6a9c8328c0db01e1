"""The command line, run as a user runs it (subprocesses)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def ares(
    *args: str, cwd: Path, input_bytes: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "aresdsm", *args],
        cwd=cwd,
        capture_output=True,
        timeout=120,
        input=input_bytes,
        check=False,
    )


def test_cluster_put_get_status_stop(tmp_path: Path) -> None:
    r = ares("cluster", "start", "-n", "3", "--dir", "data", cwd=tmp_path)
    assert r.returncode == 0, r.stderr.decode()
    try:
        cluster = str(tmp_path / "data" / "cluster.toml")
        r = ares("put", "greeting", "hello world", "--cluster", cluster, cwd=tmp_path)
        assert r.returncode == 0, r.stderr.decode()
        blob = tmp_path / "blob.bin"
        blob.write_bytes(bytes(range(256)) * 100)
        assert (
            ares("put", "blob", "-f", str(blob), "--cluster", cluster, cwd=tmp_path).returncode == 0
        )
        r = ares("get", "greeting", "--cluster", cluster, cwd=tmp_path)
        assert r.returncode == 0 and r.stdout == b"hello world"
        r = ares("get", "blob", "-o", str(tmp_path / "out.bin"), "--cluster", cluster, cwd=tmp_path)
        assert r.returncode == 0 and (tmp_path / "out.bin").read_bytes() == blob.read_bytes()
        # absent (issue 15): exit code 2 and a message, distinct from an empty value
        r = ares("get", "never-written", "--cluster", cluster, cwd=tmp_path)
        assert r.returncode == 2 and r.stdout == b"", r.stderr.decode()
        assert b"not found" in r.stderr and b"never written" in r.stderr
        assert ares("put", "empty", "", "--cluster", cluster, cwd=tmp_path).returncode == 0
        r = ares("get", "empty", "--cluster", cluster, cwd=tmp_path)
        assert r.returncode == 0 and r.stdout == b""
        r = ares("rm", "empty", "greeting", "--cluster", cluster, cwd=tmp_path)
        assert r.returncode == 0 and b"deleted 'greeting'" in r.stdout, r.stderr.decode()
        for key in ("empty", "greeting"):
            r = ares("get", key, "--cluster", cluster, cwd=tmp_path)
            assert r.returncode == 2 and b"(deleted)" in r.stderr, r.stderr.decode()
        assert ares("put", "greeting", "again", "--cluster", cluster, cwd=tmp_path).returncode == 0
        r = ares("get", "greeting", "--cluster", cluster, cwd=tmp_path)
        assert r.returncode == 0 and r.stdout == b"again"
        r = ares("status", "--cluster", cluster, cwd=tmp_path)
        assert r.returncode == 0 and r.stdout.decode().count(" up ") == 3, r.stdout.decode()
    finally:
        r = ares("cluster", "stop", "--dir", "data", cwd=tmp_path)
        assert r.returncode == 0, r.stderr.decode()
    r = ares("get", "greeting", "--cluster", cluster, cwd=tmp_path)
    assert r.returncode == 1 and b"error:" in r.stderr
    assert b"not found" not in r.stderr  # unreachable is not absent


def test_bad_command_lines_get_clear_messages(tmp_path: Path) -> None:
    r = ares("get", "k", "--cluster", str(tmp_path / "missing.toml"), cwd=tmp_path)
    assert r.returncode == 1 and b"cannot read cluster file" in r.stderr
    (tmp_path / "bad.toml").write_text('[[servers]]\nid = "s1"\naddress = "nowhere"\n')
    r = ares("get", "k", "--cluster", str(tmp_path / "bad.toml"), cwd=tmp_path)
    assert r.returncode == 1 and b"host:port" in r.stderr
    r = ares("put", "k", cwd=tmp_path)
    assert r.returncode == 2 and b"exactly one of VALUE or --file" in r.stderr
    r = ares("bench", "--servers", "three", cwd=tmp_path)
    assert r.returncode == 2 and b"comma-separated" in r.stderr
    r = ares("check", str(tmp_path / "bad.toml"), cwd=tmp_path)
    assert r.returncode == 1 and b"not a valid history record" in r.stderr


def test_demo_runs_and_reports_linearizable(tmp_path: Path) -> None:
    r = ares("demo", "--duration-s", "4", cwd=tmp_path)
    out = r.stdout.decode()
    assert r.returncode == 0, out + r.stderr.decode()
    assert "SIGKILL" in out and "restarted" in out and "ok" in out
