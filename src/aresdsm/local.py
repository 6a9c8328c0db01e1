"""Local clusters of real server processes (``ares cluster``, ``ares demo``, ``ares bench``, tests).

Each server is a separate ``python -m aresdsm server`` process with its own data directory,
started the way a user starts one. :class:`LocalCluster` picks free loopback ports, writes the
cluster file, starts the processes, waits until each has written its ready file, and can
SIGKILL and restart a server (same port, same data directory) to exercise recovery.

Secure by default (docs/security.md): a new cluster gets a CA in ``<dir>/certs``, a certificate
per server, and client certificates for the roles ``admin`` (the one the cluster file names),
``write`` and ``read`` (:meth:`LocalCluster.client_options`); ``insecure=True`` runs plaintext.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from .config import (
    ClientOptions,
    ClusterFile,
    Configuration,
    ServerInfo,
    TlsFiles,
    dump_cluster_file,
    load_cluster_file,
    validate_configuration,
)
from .errors import AresError
from .identity import create_identity, new_cluster_id

READY_TIMEOUT_S = 20.0
STATE_FILE = "cluster.json"
CLUSTER_FILE = "cluster.toml"
CERTS_DIR = "certs"
CLIENT_ROLES = ("admin", "write", "read")
"""Client certificates a new local cluster gets, one per role, named after the role."""


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Ports the kernel reports free right now (kept bound until all are chosen)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class LocalCluster:
    """A cluster of server processes on this machine, rooted at ``base_dir``."""

    base_dir: Path
    cluster: ClusterFile
    storage: str = "sqlite"
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    python: str = sys.executable
    trace_file: str | None = None
    """When set, every server writes its spans to ``<trace_file>.<server id>``."""
    listen: dict[str, str] = field(default_factory=dict)
    """Where a server really listens when clients reach it through a delaying relay."""
    link_delay_ms: float = 0.0
    """One-way delay the relay adds (:mod:`aresdsm.netdelay`); 0: no relay."""
    relay: subprocess.Popen[bytes] | None = None
    metrics: dict[str, str] = field(default_factory=dict)
    """Server id -> host:port of its metrics/health HTTP endpoint (``--metrics-address``)."""

    @property
    def cluster_path(self) -> Path:
        return self.base_dir / CLUSTER_FILE

    @classmethod
    def create(
        cls,
        base_dir: str | Path,
        *,
        n: int,
        spares: int = 0,
        storage: str = "sqlite",
        dap: str = "abd",
        k: int = 1,
        delta: int = 0,
        host: str = "127.0.0.1",
        timeout_s: float = 5.0,
        link_delay_ms: float = 0.0,
        insecure: bool = False,
        proxied: bool = False,
        server_limits: dict[str, Any] | None = None,
        metrics: bool = False,
    ) -> LocalCluster:
        """A new cluster (not started). With ``link_delay_ms`` the addresses in the cluster file
        are those of a relay that delays every message by that much each way, in front of the
        servers' real ports: clients then see a network with real latency (benchmarks). With
        ``proxied`` the servers listen on ports of their own too, and the caller puts its own
        proxy at the cluster file's addresses (``ares chaos``: :mod:`aresdsm.faultproxy`)."""
        base = Path(base_dir).resolve()
        if (base / CLUSTER_FILE).exists():
            raise AresError(
                f"{base / CLUSTER_FILE} already exists; stop that cluster or pick --dir"
            )
        base.mkdir(parents=True, exist_ok=True)
        relayed = link_delay_ms > 0 or proxied
        ports = free_ports((n + spares) * (2 if relayed else 1), host)
        servers = tuple(
            ServerInfo(f"s{i + 1}", f"{host}:{p}") for i, p in enumerate(ports[: n + spares])
        )
        listen = {s.id: f"{host}:{p}" for s, p in zip(servers, ports[n + spares :], strict=False)}
        cluster_id = new_cluster_id()
        initial = validate_configuration(
            Configuration("c0", servers[:n], dap=dap, k=k, delta=delta)  # type: ignore[arg-type]
        )
        client = ClientOptions(timeout_s=timeout_s)
        server_tls: dict[str, TlsFiles] = {}
        deny_file: str | None = None
        if not insecure:
            client, server_tls, deny_file = _make_certs(base / CERTS_DIR, servers, client)
        if storage == "sqlite":
            # every server's data directory is created here, once: its incarnation uid goes
            # into the cluster file, so a server re-created later is refused (issue 10)
            servers = tuple(
                msgspec.structs.replace(
                    s,
                    uid=create_identity(
                        base / s.id, cluster_id=cluster_id, server_id=s.id, initial=initial
                    ).incarnation,
                )
                for s in servers
            )
            initial = msgspec.structs.replace(initial, servers=servers[:n])
        cf = ClusterFile(
            servers=servers,
            initial=initial,
            client=client,
            name="local",
            data_dirs={s.id: str(base / s.id) for s in servers},
            server_tls=server_tls,
            deny_file=deny_file,
            insecure=insecure,
            cluster_id=cluster_id,
            server_limits=dict(server_limits or {}),
        )
        base.joinpath(CLUSTER_FILE).write_text(dump_cluster_file(cf))
        metric_ports = free_ports(n + spares, host) if metrics else []
        metrics_at = {s.id: f"{host}:{p}" for s, p in zip(servers, metric_ports, strict=False)}
        lc = cls(
            base,
            cf,
            storage=storage,
            listen=listen,
            link_delay_ms=link_delay_ms,
            metrics=metrics_at,
        )
        if metrics:
            lc._save_state()
        return lc

    @classmethod
    def open(cls, base_dir: str | Path) -> LocalCluster:
        base = Path(base_dir).resolve()
        cf = load_cluster_file(base / CLUSTER_FILE)
        storage = "sqlite"
        metrics: dict[str, str] = {}
        state = base / STATE_FILE
        if state.exists():
            saved = json.loads(state.read_text())
            storage = saved.get("storage", "sqlite")
            metrics = saved.get("metrics", {})
        return cls(base, cf, storage=storage, metrics=metrics)

    def client_options(self, role: str = "admin") -> ClientOptions:
        """The cluster file's client options with the identity of the ``role`` client
        certificate (plaintext clusters: unchanged)."""
        tls = self.cluster.client.tls
        if tls is None:
            return self.cluster.client
        certs = Path(tls.cert).parent
        return msgspec.structs.replace(
            self.cluster.client,
            tls=TlsFiles(
                tls.ca,
                str(certs / f"client-{role}.pem"),
                str(certs / f"client-{role}.key"),
                tls.admin_key if role == "admin" else None,  # (admins and servers only)
                tls.write_key if role in ("write", "admin") else None,  # (not readers)
            ),
        )

    def data_dir(self, server_id: str) -> Path:
        return Path(self.cluster.data_dirs.get(server_id, str(self.base_dir / server_id)))

    def start(self, server_ids: list[str] | None = None, *, detach: bool = False) -> None:
        ids = server_ids if server_ids is not None else list(self.cluster.initial.server_ids)
        for sid in ids:
            self._spawn(sid, detach=detach)
        for sid in ids:
            self._wait_ready(sid)
        self._save_state()

    def start_all(self, *, detach: bool = False) -> None:
        self.start([s.id for s in self.cluster.servers], detach=detach)
        if self.listen and self.link_delay_ms > 0 and self.relay is None:
            self._start_relay()

    def _start_relay(self) -> None:
        routes = [f"{s.address}={self.listen[s.id]}" for s in self.cluster.servers]
        cmd = [self.python, "-m", "aresdsm.netdelay", "--delay-ms", str(self.link_delay_ms)]
        self.relay = subprocess.Popen(
            [*cmd, *routes], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL
        )
        assert self.relay.stdout is not None
        if self.relay.stdout.readline().strip() != b"ready":
            self.relay.kill()
            raise AresError("the delaying relay did not start")

    def _spawn(self, sid: str, *, detach: bool, extra: tuple[str, ...] = ()) -> None:
        ddir = self.data_dir(sid)
        ddir.mkdir(parents=True, exist_ok=True)
        ready = ddir / "ready"
        ready.unlink(missing_ok=True)
        # 0600 like everything in a data directory (handed to the child process)
        log = os.fdopen(
            os.open(ddir / "server.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab"
        )
        cmd = [
            self.python,
            "-m",
            "aresdsm",
            "server",
            "--id",
            sid,
            "--cluster",
            str(self.cluster_path),
            "--data-dir",
            str(ddir),
            "--storage",
            self.storage,
            *(["--listen", self.listen[sid]] if sid in self.listen else []),
            *(["--trace-file", f"{self.trace_file}.{sid}"] if self.trace_file else []),
            *(["--metrics-address", self.metrics[sid]] if sid in self.metrics else []),
            "--ready-file",
            str(ready),
            *extra,
        ]
        self.procs[sid] = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=detach,
        )
        log.close()

    def _wait_ready(self, sid: str) -> None:
        ready = self.data_dir(sid) / "ready"
        deadline = time.monotonic() + READY_TIMEOUT_S
        proc = self.procs[sid]
        while not ready.exists():
            if proc.poll() is not None:
                tail = (self.data_dir(sid) / "server.log").read_text(errors="replace")[-2000:]
                raise AresError(f"server {sid} exited with code {proc.returncode}:\n{tail}")
            if time.monotonic() > deadline:
                raise AresError(f"server {sid} not ready after {READY_TIMEOUT_S}s")
            time.sleep(0.02)

    def kill(self, sid: str, sig: int = signal.SIGKILL) -> None:
        """Kill a server process (SIGKILL by default: no clean shutdown)."""
        proc = self.procs.pop(sid, None)
        if proc is not None:
            proc.send_signal(sig)
            proc.wait(timeout=10)
        else:
            pid = self._pids().get(sid)
            if pid is not None:
                _kill_pid(pid, sig)
        self._save_state()

    def restart(self, sid: str, *, extra: tuple[str, ...] = ()) -> None:
        """Start a server again (same port, same data directory); ``extra``: more
        ``ares server`` arguments (``("--new", "initial")`` after a wiped disk)."""
        self._spawn(sid, detach=False, extra=extra)
        self._wait_ready(sid)
        self._save_state()

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM every server (clean shutdown), SIGKILL what is left after timeout_s."""
        pids = {sid: p.pid for sid, p in self.procs.items()} | {
            sid: pid for sid, pid in self._pids().items() if sid not in self.procs
        }
        for pid in pids.values():
            _kill_pid(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for sid, pid in pids.items():
            proc = self.procs.get(sid)
            if proc is not None:
                try:
                    proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            else:
                while _alive(pid) and time.monotonic() < deadline:
                    time.sleep(0.05)
                if _alive(pid):
                    _kill_pid(pid, signal.SIGKILL)
        self.procs.clear()
        if self.relay is not None:
            self.relay.terminate()
            self.relay.wait(timeout=timeout_s)
            self.relay = None
        if self.metrics:  # keep where the endpoints are, for the next start
            (self.base_dir / STATE_FILE).write_text(
                json.dumps({"storage": self.storage, "pids": {}, "metrics": self.metrics})
            )
        else:
            (self.base_dir / STATE_FILE).unlink(missing_ok=True)

    def _pids(self) -> dict[str, int]:
        state = self.base_dir / STATE_FILE
        if not state.exists():
            return {}
        pids: dict[str, int] = json.loads(state.read_text()).get("pids", {})
        return {sid: pid for sid, pid in pids.items() if _alive(pid)}

    def _save_state(self) -> None:
        pids = self._pids() | {sid: p.pid for sid, p in self.procs.items() if p.poll() is None}
        (self.base_dir / STATE_FILE).write_text(
            json.dumps({"storage": self.storage, "pids": pids, "metrics": self.metrics}, indent=1)
        )

    def running(self) -> dict[str, int]:
        return self._pids() | {sid: p.pid for sid, p in self.procs.items() if p.poll() is None}


def _make_certs(
    certs: Path, servers: tuple[ServerInfo, ...], client: ClientOptions
) -> tuple[ClientOptions, dict[str, TlsFiles], str]:
    """A CA, one certificate per server and one client certificate per role in ``certs``."""
    from .security import certs as issue

    ca = issue.create_ca(certs, "aresdsm local")
    mac_key = str(certs / issue.ADMIN_MAC_KEY)
    write_key = str(certs / issue.WRITE_MAC_KEY)
    server_tls: dict[str, TlsFiles] = {}
    for s in servers:
        host, _ = s.host_port()
        got = issue.issue_server(certs, s.id, hosts=(host,))
        server_tls[s.id] = TlsFiles(str(ca.cert), str(got.cert), str(got.key), mac_key, write_key)
    for role in CLIENT_ROLES:
        issue.issue_client(certs, role, role)
    admin = TlsFiles(
        str(ca.cert),
        str(certs / "client-admin.pem"),
        str(certs / "client-admin.key"),
        mac_key,
        write_key,
    )
    deny = certs / "denied.txt"
    deny.write_text(
        "# revoked certificates: one serial (hex) or client name / server id per line\n"
    )
    return msgspec.structs.replace(client, tls=admin), server_tls, str(deny)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # reap our own zombie children
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def _kill_pid(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
