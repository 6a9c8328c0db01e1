"""A live S3 gateway (``python -m aresdsm s3 serve``) on a local cluster of real server
processes, one for the whole tests/s3 package (CI time: they start once); boto3 clients for
its keys; clean environments for the aws CLI and rclone (no AWS_* variables of the machine
leak into them)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from aresdsm.local import LocalCluster

KEYS = {
    "admin": ("AKADMIN0000000000001", "admin-secret-0001"),
    "write": ("AKWRITE0000000000001", "write-secret-0001"),
    "read": ("AKREAD00000000000001", "read-secret-00001"),
}
START_TIMEOUT_S = 30.0


@dataclass
class Gateway:
    lc: LocalCluster
    base: Path
    endpoint: str = ""
    metrics: str = ""
    trace_file: Path | None = None
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[Any] = field(default_factory=list)

    def start(self, *extra: str, trace: bool = False) -> tuple[str, str]:
        """Start one gateway process; returns (endpoint URL, metrics host:port)."""
        from aresdsm.local import free_ports

        mport = free_ports(1)[0]
        n = len(self.procs)
        cmd = [
            sys.executable, "-m", "aresdsm", "s3", "serve",
            "--cluster", str(self.lc.cluster_path), "--listen", "127.0.0.1:0",
            "--keys", str(self.base / "keys.toml"), "--gc-delay-s", "0.2",
            "--min-part-mib", "0", "--metrics-address", f"127.0.0.1:{mport}", *extra,
        ]  # fmt: skip
        if trace:
            self.trace_file = self.base / f"trace{n}.jsonl"
            cmd += ["--trace", str(self.trace_file)]
        log = open(self.base / f"gateway{n}.log", "wb")  # noqa: SIM115 (kept by the process)
        self.logs.append(log)
        env = dict(os.environ, OTEL_BSP_SCHEDULE_DELAY="100")  # spans flushed within 0.1 s
        p = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, env=env
        )
        self.procs.append(p)
        assert p.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        line = b""
        while b"://" not in line:
            line = p.stdout.readline()
            if not line and (p.poll() is not None or time.monotonic() > deadline):
                tail = (self.base / f"gateway{n}.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"gateway did not start:\n{tail}")
        url = line.decode().strip().split()[-1]
        return url, f"127.0.0.1:{mport}"

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            if p.stdout is not None:
                p.stdout.close()
        for f in self.logs:
            f.close()

    def client(self, role: str = "admin", **config: Any) -> Any:
        return client(self.endpoint, *KEYS[role], **config)

    def env(self, role: str = "admin") -> dict[str, str]:
        """The environment for the aws CLI and rclone: this machine's AWS_* variables out."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RCLONE_"))}
        ak, sk = KEYS[role]
        env.update(
            AWS_ACCESS_KEY_ID=ak,
            AWS_SECRET_ACCESS_KEY=sk,
            AWS_DEFAULT_REGION="us-east-1",
            AWS_CONFIG_FILE=str(self.base / "aws-config"),
            AWS_SHARED_CREDENTIALS_FILE=str(self.base / "no-credentials"),
            AWS_EC2_METADATA_DISABLED="true",
            AWS_PAGER="",
            HOME=str(self.base),
        )
        return env


def client(endpoint: str, ak: str, sk: str, **config: Any) -> Any:
    import boto3
    from botocore.config import Config

    cfg = Config(
        s3={"addressing_style": "path"},
        retries={"max_attempts": 1, "mode": "standard"},
        connect_timeout=10,
        read_timeout=60,
        **config,
    )
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=ak,
        aws_secret_access_key=sk,
        region_name="us-east-1",
        config=cfg,
    )


@pytest.fixture(scope="package")
def gateway() -> Iterator[Gateway]:
    with tempfile.TemporaryDirectory(prefix="ares-s3-") as tmp:
        base = Path(tmp)
        lc = LocalCluster.create(base / "c", n=3, timeout_s=10.0)
        keys = "".join(
            f'[[keys]]\naccess_key = "{ak}"\nsecret_key = "{sk}"\nrole = "{role}"\n'
            for role, (ak, sk) in KEYS.items()
        )
        (base / "keys.toml").write_text(keys)
        (base / "aws-config").write_text(
            "[default]\ns3 =\n  multipart_threshold = 5MB\n  multipart_chunksize = 5MB\n"
        )
        gw = Gateway(lc, base)
        try:
            lc.start_all()
            gw.endpoint, gw.metrics = gw.start(trace=True)
            yield gw
        finally:
            gw.stop()
            lc.stop()
