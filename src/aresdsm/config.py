"""Configurations and the cluster file (docs/protocol.md §2, §3).

A :class:`Configuration` is an immutable descriptor: a unique id, an ordered list of servers,
the data access primitive (DAP) and its parameters. Quorum arithmetic lives here too, as small
pure functions (the etcd/raft habit): ABD uses majorities, TREAS ``ceil((n + k) / 2)``.

The cluster file (TOML) names the servers of a deployment, the initial configuration every group
starts from, and client options. :func:`load_cluster_file` validates it completely and raises
:class:`~aresdsm.errors.ConfigurationError` with a message that names the offending entry; nothing
is half-applied.
"""

from __future__ import annotations

import ipaddress
import math
import tomllib
from pathlib import Path
from typing import Any, Literal

import msgspec

from .errors import ConfigurationError
from .limits import MAX_CONFIG_ID_BYTES, ServerLimits

DapKind = Literal["abd", "treas"]
DAP_KINDS: tuple[str, ...] = ("abd", "treas")
MAX_SERVERS = 255
"""Servers in one configuration at most (a descriptor arrives from the network too)."""
MAX_TREAS_N = 32
"""ISA-L's Vandermonde Reed–Solomon codes at most 32 elements (coding.MAX_N)."""
MAX_ID_BYTES = MAX_CONFIG_ID_BYTES
MAX_EPOCH = 2**62
"""Configuration epochs (positions in the chain) a descriptor may carry."""
MAX_FRAME_BYTES_LIMIT = 1024 * 1024 * 1024
DEFAULT_GROUP = "default"


class ServerInfo(msgspec.Struct, frozen=True, array_like=True):
    """One server: a stable id and a ``host:port`` address; optionally the incarnation uid of
    its data directory (a configuration that names it is answered only by that incarnation)."""

    id: str
    address: str
    uid: str = ""

    def host_port(self) -> tuple[str, int]:
        return parse_address(self.address)


class Configuration(msgspec.Struct, frozen=True):
    """An immutable configuration descriptor (docs/protocol.md §3). Ids are never reused."""

    id: str
    servers: tuple[ServerInfo, ...]
    dap: DapKind = "abd"
    k: int = 1
    delta: int = 0
    epoch: int = 0
    """Position in the configuration chain: 0 for the initial configuration, the predecessor's
    epoch + 1 for every successor of the cluster's chain (set by the reconfigurer; every server
    that stores or accepts a successor checks that it is above its predecessor's -- with
    ``batch`` off one descriptor ends chains of different lengths and may skip epochs).
    LATEST_CONFIG prefers the newest configuration by it (protocol.md §8.5), never by id."""

    @property
    def n(self) -> int:
        return len(self.servers)

    @property
    def quorum_size(self) -> int:
        return quorum_size(self.dap, self.n, self.k)

    @property
    def majority(self) -> int:
        """Paxos always uses majorities of the configuration's servers (docs/protocol.md §5)."""
        return self.n // 2 + 1

    @property
    def server_ids(self) -> tuple[str, ...]:
        return tuple(s.id for s in self.servers)

    def index_of(self, server_id: str) -> int:
        """Position of ``server_id`` in this configuration (TREAS: which coded element it keeps)."""
        for i, s in enumerate(self.servers):
            if s.id == server_id:
                return i
        raise ConfigurationError(f"server {server_id!r} is not a member of configuration {self.id}")

    def has_member(self, server_id: str) -> bool:
        for s in self.servers:  # noqa: SIM110 (no generator: checked for every request)
            if s.id == server_id:
                return True
        return False

    @property
    def crashes_tolerated(self) -> int:
        """Servers that may crash while the configuration stays live: n - quorum (§3)."""
        return self.n - self.quorum_size

    def describe(self) -> str:
        """One line: ``c1 treas(n=5, k=3, delta=4) s1,s2,s3,s4,s5``."""
        if self.dap == "treas":
            params = f"(n={self.n}, k={self.k}, delta={self.delta})"
        else:
            params = f"(n={self.n})"
        return f"{self.id} {self.dap}{params} {','.join(self.server_ids)}"


def quorum_size(dap: str, n: int, k: int = 1) -> int:
    """Quorum size of a configuration (docs/protocol.md §3)."""
    if dap == "abd":
        return n // 2 + 1
    if dap == "treas":
        return math.ceil((n + k) / 2)
    raise ConfigurationError(f"unknown DAP {dap!r}; expected one of {', '.join(DAP_KINDS)}")


def parse_address(address: str) -> tuple[str, int]:
    """Split ``host:port`` (``[v6]:port`` for IPv6) and check the port."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not host:
        raise ConfigurationError(f"address {address!r} is not of the form host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigurationError(
            f"address {address!r}: port {port_text!r} is not a number"
        ) from None
    if not 0 < port < 65536:
        raise ConfigurationError(f"address {address!r}: port {port} is out of range 1..65535")
    return host, port


def validate_configuration(c: Configuration) -> Configuration:
    """Check a descriptor (docs/protocol.md §3); return it unchanged or raise ConfigurationError."""
    if not c.id:
        raise ConfigurationError("configuration id must not be empty")
    if len(c.id.encode()) > MAX_ID_BYTES:
        raise ConfigurationError(f"configuration id is limited to {MAX_ID_BYTES} bytes")
    if c.n < 1:
        raise ConfigurationError(f"configuration {c.id}: needs at least one server")
    if not isinstance(c.epoch, int) or not 0 <= c.epoch < MAX_EPOCH:
        raise ConfigurationError(f"configuration {c.id}: epoch out of range: {c.epoch}")
    if c.n > MAX_SERVERS:
        raise ConfigurationError(f"configuration {c.id}: at most {MAX_SERVERS} servers, got {c.n}")
    ids = [s.id for s in c.servers]
    if len(set(ids)) != len(ids):
        raise ConfigurationError(f"configuration {c.id}: duplicate server ids in {ids}")
    addresses = [s.address for s in c.servers]
    if len(set(addresses)) != len(addresses):
        raise ConfigurationError(f"configuration {c.id}: duplicate server addresses in {addresses}")
    for s in c.servers:
        if not s.id or len(s.id.encode()) > MAX_ID_BYTES or len(s.uid.encode()) > MAX_ID_BYTES:
            raise ConfigurationError(
                f"configuration {c.id}: server ids must have 1..{MAX_ID_BYTES} bytes "
                f"(uids at most {MAX_ID_BYTES})"
            )
        parse_address(s.address)
    if c.dap not in DAP_KINDS:
        raise ConfigurationError(
            f"configuration {c.id}: unknown DAP {c.dap!r}; expected one of {', '.join(DAP_KINDS)}"
        )
    if c.dap == "treas":
        if c.n > MAX_TREAS_N:
            raise ConfigurationError(
                f"configuration {c.id}: TREAS codes at most {MAX_TREAS_N} servers, got n={c.n}"
            )
        if not 1 <= c.k <= c.n:
            raise ConfigurationError(
                f"configuration {c.id}: TREAS needs 1 <= k <= n, got k={c.k}, n={c.n}"
            )
        if c.delta < 0:
            raise ConfigurationError(f"configuration {c.id}: TREAS needs delta >= 0, got {c.delta}")
    return c


class TlsFiles(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One TLS identity (docs/security.md): the cluster CA that verifies the peer, and this
    party's certificate chain and private key (PEM files, absolute paths once loaded)."""

    ca: str
    cert: str
    key: str
    admin_key: str | None = None
    """The admin MAC key (docs/security.md): servers and admins hold it, nobody else."""
    write_key: str | None = None
    """The write MAC key (docs/security.md): servers, writers and admins hold it, readers not."""


class ClientOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Client options from the ``[client]`` table of the cluster file (``tls``: from the
    ``[tls]`` table)."""

    timeout_s: float = 5.0
    """Deadline of one quorum round; an operation fails with OperationTimeout after it."""
    connect_timeout_s: float = 2.0
    max_in_flight: int = 4096
    """Requests in flight per server connection; further requests wait."""
    max_frame_bytes: int = 64 * 1024 * 1024
    tls: TlsFiles | None = None
    """Mutual TLS with this identity; None: plaintext (only with ``insecure = true``)."""
    source_host: str | None = None
    """Local address the client's connections leave from (multi-homed hosts; ``ares chaos``
    gives every client a loopback address of its own so its proxy can tell the clients apart)."""


class ClusterFile(msgspec.Struct, frozen=True):
    """A parsed and validated cluster file."""

    servers: tuple[ServerInfo, ...]
    initial: Configuration
    client: ClientOptions = ClientOptions()
    name: str = "aresdsm"
    data_dirs: dict[str, str] = {}
    """Server id -> data directory (``ares server`` uses it when --data-dir is not given)."""
    server_tls: dict[str, TlsFiles] = {}
    """Server id -> the server's TLS identity (its ``cert`` and ``key``, the ``[tls]`` CA)."""
    deny_file: str | None = None
    """Revoked certificates: one serial number (hex) or identity per line (docs/security.md)."""
    insecure: bool = False
    """``[cluster] insecure = true``: plaintext, no authentication (explicit opt-in)."""
    server_limits: dict[str, Any] = {}
    """The ``[server]`` table as given (validated): limits every server of the cluster applies
    (:class:`aresdsm.limits.ServerLimits`); ``ares server`` options override them."""
    cluster_id: str = ""
    """Made when the cluster is created (``[cluster] id``); every connection checks it."""

    def server(self, server_id: str) -> ServerInfo:
        for s in self.servers:
            if s.id == server_id:
                return s
        known = ", ".join(x.id for x in self.servers)
        raise ConfigurationError(
            f"server {server_id!r} is not in the cluster file (known: {known})"
        )


def _int_or(table: dict[str, Any], key: str, default: int, where: str) -> int:
    value = table.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigurationError(f"{where}: {key!r} must be an integer, got {value!r}")
    return value


def _require(table: dict[str, Any], key: str, kind: type, where: str) -> Any:
    if key not in table:
        raise ConfigurationError(f"{where}: missing required key {key!r}")
    value = table[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigurationError(f"{where}: {key!r} must be a {kind.__name__}, got {value!r}")
    return value


def parse_cluster(
    data: dict[str, Any],
    *,
    source: str = "cluster file",
    base_dir: str | Path | None = None,
    insecure: bool = False,
) -> ClusterFile:
    """Validate a cluster file already parsed from TOML. Relative TLS paths are resolved
    against ``base_dir`` (the cluster file's directory). A file without a ``[tls]`` table needs
    ``insecure = true`` in ``[cluster]``, or ``insecure`` here (``--insecure``)."""
    known = {"cluster", "servers", "initial", "client", "server", "tls"}
    unknown = set(data) - known
    if unknown:
        raise ConfigurationError(
            f"{source}: unknown table(s) {sorted(unknown)}; known: {sorted(known)}"
        )
    raw_servers = data.get("servers")
    if not isinstance(raw_servers, list) or not raw_servers:
        raise ConfigurationError(f"{source}: needs at least one [[servers]] entry")
    servers: list[ServerInfo] = []
    data_dirs: dict[str, str] = {}
    server_files: dict[str, tuple[str, str]] = {}
    for i, entry in enumerate(raw_servers):
        where = f"{source}: [[servers]] entry {i + 1}"
        if not isinstance(entry, dict):
            raise ConfigurationError(f"{where}: must be a table")
        extra = set(entry) - {"id", "address", "data_dir", "uid", "cert", "key"}
        if extra:
            raise ConfigurationError(f"{where}: unknown key(s) {sorted(extra)}")
        sid = _require(entry, "id", str, where)
        address = _require(entry, "address", str, where)
        try:
            parse_address(address)
        except ConfigurationError as e:
            raise ConfigurationError(f"{where}: {e}") from None
        uid = str(_require(entry, "uid", str, where)) if "uid" in entry else ""
        if len(uid.encode()) > MAX_ID_BYTES:
            raise ConfigurationError(f"{where}: 'uid' is limited to {MAX_ID_BYTES} bytes")
        servers.append(ServerInfo(sid, address, uid))
        if "data_dir" in entry:
            data_dirs[sid] = str(_require(entry, "data_dir", str, where))
        if "cert" in entry or "key" in entry:
            server_files[sid] = (
                _path(_require(entry, "cert", str, where), base_dir),
                _path(_require(entry, "key", str, where), base_dir),
            )
    by_id = {s.id: s for s in servers}
    if len(by_id) != len(servers):
        raise ConfigurationError(f"{source}: duplicate server ids in [[servers]]")
    if len({s.address for s in servers}) != len(servers):
        raise ConfigurationError(f"{source}: duplicate server addresses in [[servers]]")
    initial_table = data.get("initial")
    if not isinstance(initial_table, dict):
        raise ConfigurationError(f"{source}: missing [initial] table (the initial configuration)")
    where = f"{source}: [initial]"
    extra = set(initial_table) - {"id", "dap", "servers", "k", "delta"}
    if extra:
        raise ConfigurationError(f"{where}: unknown key(s) {sorted(extra)}")
    member_ids = initial_table.get("servers", [s.id for s in servers])
    if not isinstance(member_ids, list) or not all(isinstance(x, str) for x in member_ids):
        raise ConfigurationError(f"{where}: 'servers' must be a list of server ids")
    for sid in member_ids:
        if sid not in by_id:
            raise ConfigurationError(f"{where}: server {sid!r} is not defined in [[servers]]")
    initial = Configuration(
        id=str(initial_table.get("id", "c0")),
        servers=tuple(by_id[sid] for sid in member_ids),
        dap=initial_table.get("dap", "abd"),
        k=_int_or(initial_table, "k", 1, where),
        delta=_int_or(initial_table, "delta", 0, where),
    )
    validate_configuration(initial)
    client_table = data.get("client", {})
    try:
        client = msgspec.convert(client_table, ClientOptions)
    except msgspec.ValidationError as e:
        raise ConfigurationError(f"{source}: [client]: {e}") from None
    for name in ("timeout_s", "connect_timeout_s"):
        value = getattr(client, name)
        if not (math.isfinite(value) and value > 0):
            raise ConfigurationError(
                f"{source}: [client]: {name} must be a positive number of seconds, got {value}"
            )
    if client.max_in_flight < 1:
        raise ConfigurationError(f"{source}: [client]: max_in_flight must be at least 1")
    if not 1024 <= client.max_frame_bytes <= MAX_FRAME_BYTES_LIMIT:
        raise ConfigurationError(
            f"{source}: [client]: max_frame_bytes must be in 1024..{MAX_FRAME_BYTES_LIMIT}, "
            f"got {client.max_frame_bytes}"
        )
    if client.source_host is not None:
        try:
            ipaddress.ip_address(client.source_host)
        except ValueError:
            raise ConfigurationError(
                f"{source}: [client]: source_host must be an IP address, got {client.source_host!r}"
            ) from None
    cluster_table = data.get("cluster", {})
    if not isinstance(cluster_table, dict):
        raise ConfigurationError(f"{source}: [cluster] must be a table")
    extra = set(cluster_table) - {"name", "id", "insecure"}
    if extra:
        raise ConfigurationError(f"{source}: [cluster]: unknown key(s) {sorted(extra)}")
    name = cluster_table.get("name", "aresdsm")
    file_insecure = cluster_table.get("insecure", False)
    if not isinstance(file_insecure, bool):
        raise ConfigurationError(f"{source}: [cluster]: 'insecure' must be true or false")
    cluster_id = (
        _require(cluster_table, "id", str, f"{source}: [cluster]")
        if "id" in (cluster_table)
        else ""
    )
    if len(cluster_id.encode()) > MAX_ID_BYTES:
        raise ConfigurationError(f"{source}: [cluster]: 'id' is limited to {MAX_ID_BYTES} bytes")
    server_table = data.get("server", {})
    ServerLimits.from_table(server_table, where=f"{source}: [server]")  # validate now
    tls_table = data.get("tls")
    server_tls: dict[str, TlsFiles] = {}
    deny_file: str | None = None
    if tls_table is not None:
        where = f"{source}: [tls]"
        if not isinstance(tls_table, dict):
            raise ConfigurationError(f"{where} must be a table")
        extra = set(tls_table) - {"ca", "cert", "key", "deny_file", "admin_key", "write_key"}
        if extra:
            raise ConfigurationError(f"{where}: unknown key(s) {sorted(extra)}")
        ca = _path(_require(tls_table, "ca", str, where), base_dir)
        admin_key = (
            _path(_require(tls_table, "admin_key", str, where), base_dir)
            if "admin_key" in tls_table
            else None
        )
        write_key = (
            _path(_require(tls_table, "write_key", str, where), base_dir)
            if "write_key" in tls_table
            else None
        )
        client = msgspec.structs.replace(
            client,
            tls=TlsFiles(
                ca,
                _path(_require(tls_table, "cert", str, where), base_dir),
                _path(_require(tls_table, "key", str, where), base_dir),
                admin_key,
                write_key,
            ),
        )
        if "deny_file" in tls_table:
            deny_file = _path(_require(tls_table, "deny_file", str, where), base_dir)
        server_tls = {
            sid: TlsFiles(ca, c, k, admin_key, write_key) for sid, (c, k) in server_files.items()
        }
        if file_insecure:
            raise ConfigurationError(
                f"{source}: [tls] and [cluster] insecure = true exclude each other"
            )
    elif server_files:
        raise ConfigurationError(
            f"{source}: [[servers]] name certificates but there is no [tls] table"
        )
    elif not (file_insecure or insecure):
        raise ConfigurationError(
            f"{source}: no [tls] table: the cluster would run without authentication or "
            "encryption; create certificates (ares cluster start, ares certs) or set "
            "insecure = true in [cluster] to run plaintext on purpose"
        )
    return ClusterFile(
        servers=tuple(servers),
        initial=initial,
        client=client,
        name=str(name),
        data_dirs=data_dirs,
        server_tls=server_tls,
        deny_file=deny_file,
        insecure=tls_table is None,
        cluster_id=cluster_id,
        server_limits=dict(server_table),
    )


def _path(value: str, base_dir: str | Path | None) -> str:
    """A path from the cluster file: relative ones are relative to the file's directory."""
    p = Path(value).expanduser()
    if not p.is_absolute() and base_dir is not None:
        p = Path(base_dir) / p
    return str(p)


def load_cluster_file(path: str | Path, *, insecure: bool = False) -> ClusterFile:
    """Read and validate a TOML cluster file (``insecure``: accept one without ``[tls]``)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigurationError(f"cannot read cluster file {p}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ConfigurationError(f"cluster file {p} is not UTF-8 text: {e.reason}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigurationError(f"cluster file {p} is not valid TOML: {e}") from None
    return parse_cluster(data, source=str(p), base_dir=p.resolve().parent, insecure=insecure)


def _toml_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def dump_cluster_file(cluster: ClusterFile) -> str:
    """Render a cluster file as TOML (the inverse of :func:`parse_cluster`)."""
    lines = ["[cluster]", f"name = {_toml_str(cluster.name)}"]
    if cluster.cluster_id:
        lines.append(f"id = {_toml_str(cluster.cluster_id)}")
    if cluster.insecure:
        lines.append("insecure = true  # plaintext, no authentication: loopback only")
    lines.append("")
    tls = cluster.client.tls
    if tls is not None:
        lines += [
            "[tls]  # mutual TLS 1.3 (docs/security.md); cert/key: this client's identity",
            f"ca = {_toml_str(tls.ca)}",
            f"cert = {_toml_str(tls.cert)}",
            f"key = {_toml_str(tls.key)}",
        ]
        if cluster.deny_file is not None:
            lines.append(f"deny_file = {_toml_str(cluster.deny_file)}")
        if tls.admin_key is not None:
            lines.append(f"admin_key = {_toml_str(tls.admin_key)}  # admins and servers only")
        if tls.write_key is not None:
            lines.append(f"write_key = {_toml_str(tls.write_key)}  # writers, admins, servers")
        lines.append("")
    for s in cluster.servers:
        lines += ["[[servers]]", f"id = {_toml_str(s.id)}", f"address = {_toml_str(s.address)}"]
        if s.uid:
            lines.append(f"uid = {_toml_str(s.uid)}")
        if s.id in cluster.data_dirs:
            lines.append(f"data_dir = {_toml_str(cluster.data_dirs[s.id])}")
        if s.id in cluster.server_tls:
            files = cluster.server_tls[s.id]
            lines += [f"cert = {_toml_str(files.cert)}", f"key = {_toml_str(files.key)}"]
        lines.append("")
    c = cluster.initial
    lines += [
        "[initial]",
        f"id = {_toml_str(c.id)}",
        f"dap = {_toml_str(c.dap)}",
        "servers = [" + ", ".join(_toml_str(s) for s in c.server_ids) + "]",
    ]
    if c.dap == "treas":
        lines += [f"k = {c.k}", f"delta = {c.delta}"]
    o = cluster.client
    lines += [
        "",
        "[client]",
        f"timeout_s = {o.timeout_s!r}",
        f"connect_timeout_s = {o.connect_timeout_s!r}",
        f"max_in_flight = {o.max_in_flight}",
        f"max_frame_bytes = {o.max_frame_bytes}",
        *([f"source_host = {_toml_str(o.source_host)}"] if o.source_host else []),
        "",
    ]
    if cluster.server_limits:
        lines.append("[server]")
        lines += [f"{k} = {v!r}" for k, v in sorted(cluster.server_limits.items())]
        lines.append("")
    return "\n".join(lines)
