"""Mutual TLS, roles, the deny list and the audit log against in-process servers over real TCP
(docs/protocol.md §13, docs/security.md).

Each attack of issue 13 that falls to authentication or roles is a test here. Before this work
the server accepted any connection and handed every request to the core: GetGroup from an
unauthenticated connection returned every key, a PutData from anyone set any tag, WriteConfig(F,
gc=True) deleted the data and ``store.reconfigure(evil)`` moved the data anywhere. The
``broken_skip_authorization`` server switch brings the old behaviour back, and the attack
succeeds with it (so these tests can fail).
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from frames import ask

from aresdsm.client import Store
from aresdsm.config import ClientOptions, Configuration, ServerInfo, TlsFiles
from aresdsm.errors import OperationError, QuorumUnavailable, ServerError
from aresdsm.integrity import digest
from aresdsm.net.client import TcpChannel
from aresdsm.protocol import ares
from aresdsm.protocol.ops import DEFAULT_SWITCHES
from aresdsm.security import certs, macs
from aresdsm.security.audit import AuditLog
from aresdsm.security.macs import load_key
from aresdsm.security.tls import DenyList, server_context
from aresdsm.server import Server
from aresdsm.storage import SqliteStorage
from aresdsm.tags import Tag
from aresdsm.testing import Broken
from aresdsm.wire.blob import Blob
from aresdsm.wire.messages import (
    Ack,
    Ballot,
    GetGroup,
    GroupReply,
    NextEntry,
    NextReply,
    Ping,
    Pong,
    Prepare,
    PutData,
    QueryData,
    ReadConfig,
    WriteConfig,
)

CHAIN = ares.CLUSTER_CHAIN
"""Every object follows the cluster's one chain; on the wire its name is the ``group`` field."""
KEY = ares.object_key("default", "k", DEFAULT_SWITCHES)
"""Object "k" of group "default" inside that chain."""


@dataclass(frozen=True)
class Pki:
    ca: Path
    dir: Path
    other_ca_dir: Path

    def server(self, sid: str) -> TlsFiles:
        return TlsFiles(
            str(self.ca), str(self.dir / f"server-{sid}.pem"), str(self.dir / f"server-{sid}.key")
        )

    @property
    def admin_key(self) -> Path:
        return self.dir / certs.ADMIN_MAC_KEY

    def client(self, name: str, *, other_ca: bool = False) -> TlsFiles:
        d = self.other_ca_dir if other_ca else self.dir
        return TlsFiles(
            str(self.ca),
            str(d / f"client-{name}.pem"),
            str(d / f"client-{name}.key"),
            str(self.admin_key) if name == "admin" and not other_ca else None,
        )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca = certs.create_ca(d, "test")
    for sid in ("s1", "s2", "s3", "s9"):
        certs.issue_server(d, sid, hosts=("127.0.0.1",))
    for role in ("admin", "write", "read"):
        certs.issue_client(d, role, role)
    other = tmp_path_factory.mktemp("other-ca")
    certs.create_ca(other, "someone else")
    certs.issue_client(other, "admin", "admin")
    certs.issue_server(other, "s1", hosts=("127.0.0.1",))
    return Pki(ca.cert, d, other)


@dataclass
class Cluster:
    servers: list[Server]
    c0: Configuration
    pki: Pki
    tmp: Path

    def options(self, role: str, **kw: object) -> ClientOptions:
        return ClientOptions(timeout_s=2.0, connect_timeout_s=1.0, tls=self.pki.client(role, **kw))  # type: ignore[arg-type]

    def store(self, role: str) -> Store:
        return Store(self.c0, options=self.options(role))


async def _start(
    tmp: Path,
    pki: Pki,
    ids: tuple[str, ...] = ("s1", "s2", "s3"),
    *,
    certs_of: dict[str, str] | None = None,
    **kw: object,
) -> list[Server]:
    out = []
    for sid in ids:
        files = pki.server((certs_of or {}).get(sid, sid))
        s = Server(
            server_id=sid,
            host="127.0.0.1",
            port=0,
            storage=SqliteStorage(tmp / sid / "state.sqlite3"),
            tls=server_context(files),
            audit=AuditLog(tmp / sid / "audit.log", sid),
            admin_key=load_key(pki.admin_key),
            **kw,  # type: ignore[arg-type]
        )
        await s.start()
        out.append(s)
    return out


@pytest.fixture
async def cluster(tmp_path: Path, pki: Pki) -> AsyncIterator[Cluster]:
    servers = await _start(tmp_path, pki)
    c0 = Configuration("c0", tuple(ServerInfo(s.server_id, f"127.0.0.1:{s.port}") for s in servers))
    for s in servers:
        await s.bootstrap(c0)
    yield Cluster(servers, c0, pki, tmp_path)
    for s in servers:
        await s.stop()


async def _ask(
    opts: ClientOptions, server: ServerInfo, req: object, timeout_s: float = 2.0
) -> object:
    ch = TcpChannel(opts)
    try:
        return await ch.request(server, req, timeout_s=timeout_s)  # type: ignore[arg-type]
    finally:
        await ch.close()


# -- transport: who may connect -------------------------------------------------------------------


async def test_plaintext_connection_gets_nothing_from_a_tls_server(cluster: Cluster) -> None:
    """The issue's first attack: one GetGroup frame returned every key and value."""
    async with cluster.store("write") as st:
        await st.write("secret", b"the value")
    from aresdsm.wire import Encoder, Envelope

    frame = b"".join(
        bytes(b) for b in Encoder().encode(Envelope(1, GetGroup(CHAIN, "c0", "", 100)))
    )
    reply = await ask(cluster.servers[0].port, frame)
    assert reply is None  # not a TLS handshake: closed, nothing read, nothing answered
    assert "GetGroup" not in cluster.servers[0].core.counters


async def test_client_without_certificate_is_refused_before_any_request(cluster: Cluster) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_verify_locations(cluster.pki.ca)
    ctx.check_hostname = False
    reader, writer = await asyncio.open_connection("127.0.0.1", cluster.servers[0].port, ssl=ctx)
    from aresdsm.wire import Encoder, Envelope

    for b in Encoder().encode(Envelope(1, QueryData(CHAIN, "c0", KEY))):
        writer.write(bytes(b))
    with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
        await asyncio.wait_for(reader.readexactly(4), 3.0)
    writer.close()
    assert "QueryData" not in cluster.servers[0].core.counters


async def test_client_certificate_from_another_ca_is_refused(cluster: Cluster) -> None:
    opts = cluster.options("admin", other_ca=True)
    with pytest.raises((QuorumUnavailable, OperationError)):
        await _ask(opts, cluster.c0.servers[0], Ping())
    assert "Ping" not in cluster.servers[0].core.counters


async def test_server_certificate_from_another_ca_is_refused(tmp_path: Path, pki: Pki) -> None:
    server = Server(
        server_id="s1",
        host="127.0.0.1",
        port=0,
        storage=SqliteStorage(tmp_path / "state.sqlite3"),
        tls=server_context(
            TlsFiles(
                str(pki.ca),
                str(pki.other_ca_dir / "server-s1.pem"),
                str(pki.other_ca_dir / "server-s1.key"),
            )
        ),
    )
    await server.start()
    try:
        with pytest.raises(QuorumUnavailable):
            await _ask(
                ClientOptions(tls=pki.client("admin")),
                ServerInfo("s1", f"127.0.0.1:{server.port}"),
                Ping(),
            )
    finally:
        await server.stop()


async def test_server_presenting_another_id_gets_no_request(tmp_path: Path, pki: Pki) -> None:
    """A configuration names s1 at this address; the server there has s9's (valid) certificate:
    the client writes nothing to it."""
    [server] = await _start(tmp_path, pki, ("s1",), certs_of={"s1": "s9"})
    try:
        with pytest.raises(QuorumUnavailable, match="names server id 's9'"):
            await _ask(
                ClientOptions(tls=pki.client("admin")),
                ServerInfo("s1", f"127.0.0.1:{server.port}"),
                Ping(),
            )
        assert "Ping" not in server.core.counters
        # the check can fail: without it the impostor gets the request
        ch = TcpChannel(ClientOptions(tls=pki.client("admin")))
        ch.faults = Broken(broken_skip_server_id_check=True)
        try:
            assert isinstance(
                await ch.request(ServerInfo("s1", f"127.0.0.1:{server.port}"), Ping()), Pong
            )
        finally:
            await ch.close()
        assert server.core.counters["Ping"] == 1
        # the id it does hold is accepted
        reply = await _ask(
            ClientOptions(tls=pki.client("admin")),
            ServerInfo("s9", f"127.0.0.1:{server.port}"),
            Ping(),
        )
        assert isinstance(reply, Pong)
    finally:
        await server.stop()


async def test_reads_and_writes_over_mutual_tls(cluster: Cluster) -> None:
    async with cluster.store("write") as w, cluster.store("read") as r:
        await w.write("k", b"v1")
        assert await r.read("k") == b"v1"


# -- roles ----------------------------------------------------------------------------------------


async def test_reader_cannot_put_a_new_tag(cluster: Cluster) -> None:
    """A read-role PutData with a new tag (the issue: tag 2^62-1 made every later write fail)."""
    async with cluster.store("write") as w:
        await w.write("k", b"good")
    info = cluster.c0.servers[0]
    evil = PutData(CHAIN, "c0", KEY, Tag(2**62 - 1, "x"), Blob(b"evil"), digest(b"evil"))
    with pytest.raises(ServerError) as e:
        await _ask(cluster.options("read"), info, evil)
    assert e.value.code == "unauthorized"
    async with cluster.store("read") as r:
        assert await r.read("k") == b"good"
    assert cluster.servers[0].core.counters["unauthorized"] == 1


async def test_reader_write_back_of_a_held_value_is_accepted(cluster: Cluster) -> None:
    async with cluster.store("write") as w:
        tag = await w.write("k", b"v")
    info = cluster.c0.servers[0]
    reply = await _ask(
        cluster.options("read"), info, PutData(CHAIN, "c0", KEY, tag, Blob(b"v"), digest(b"v"))
    )
    assert isinstance(reply, Ack)


async def test_broken_skip_authorization_lets_the_attack_through(tmp_path: Path, pki: Pki) -> None:
    """The test above can fail: without the role check the forged tag is stored."""
    [server] = await _start(tmp_path, pki, ("s1",), broken_skip_authorization=True)
    try:
        c0 = Configuration("c0", (ServerInfo("s1", f"127.0.0.1:{server.port}"),))
        await server.bootstrap(c0)
        evil = PutData(CHAIN, "c0", KEY, Tag(2**62 - 1, "x"), Blob(b"evil"), digest(b"evil"))
        reply = await _ask(ClientOptions(tls=pki.client("read")), c0.servers[0], evil)
        assert isinstance(reply, Ack)
    finally:
        await server.stop()


async def test_only_admins_read_whole_groups(cluster: Cluster) -> None:
    async with cluster.store("write") as w:
        await w.write("k", b"v")
    info = cluster.c0.servers[0]
    for role in ("read", "write"):
        with pytest.raises(ServerError, match="unauthorized"):
            await _ask(cluster.options(role), info, GetGroup(CHAIN, "c0", "", 100))
    reply = await _ask(cluster.options("admin"), info, GetGroup(CHAIN, "c0", "", 100))
    assert isinstance(reply, GroupReply) and [o.key for o in reply.objects] == [KEY]


async def test_non_admin_cannot_finalize_and_collect(cluster: Cluster) -> None:
    """One WriteConfig(F, gc=True) per server deleted the values outright."""
    async with cluster.store("write") as w:
        await w.write("k", b"keep me")
    evil = Configuration("evil", cluster.c0.servers[:1])
    for role in ("read", "write"):
        for info in cluster.c0.servers:
            with pytest.raises(ServerError, match="unauthorized"):
                await _ask(
                    cluster.options(role),
                    info,
                    WriteConfig(CHAIN, "c0", NextEntry(evil, "F"), gc=True),
                )
    assert all((CHAIN, "c0") not in s.core.collected for s in cluster.servers)
    async with cluster.store("read") as r:
        assert await r.read("k") == b"keep me"


async def test_non_admin_cannot_reconfigure(cluster: Cluster, tmp_path: Path, pki: Pki) -> None:
    """store.reconfigure(evil) from a process that knew only the addresses moved the data."""
    async with cluster.store("write") as w:
        await w.write("k", b"v")
        evil = Configuration("evil", cluster.c0.servers[:1])
        with pytest.raises(OperationError, match="unauthorized"):
            await w.reconfigure(evil, force=True)
    assert all(not s.core.acceptors for s in cluster.servers)
    assert all(not s.core.nextc for s in cluster.servers)
    with pytest.raises(ServerError, match="unauthorized"):
        await _ask(
            cluster.options("write"),
            cluster.c0.servers[0],
            Prepare(CHAIN, "c0", Ballot(2**62 - 1, "x")),
        )
    assert all(not s.core.acceptors for s in cluster.servers)


async def test_admin_reconfigures_and_readers_follow(
    cluster: Cluster, tmp_path: Path, pki: Pki
) -> None:
    """The roles allow what ordinary clients need: after a reconfiguration a read-only client
    discovers the chain -- writing the entries back as P, with the admin MAC the servers gave
    it (it holds no key) -- and reads from the new configuration."""
    async with cluster.store("write") as w:
        await w.write("k", b"before")
    async with cluster.store("admin") as a:
        c1 = Configuration("c1", cluster.c0.servers[:2])
        decided = await a.reconfigure(c1, force=True)
        assert decided.id == "c1"
        await a.settle()
    async with cluster.store("read") as r:
        assert not r.switches.write_back_final and r.channel.admin_key is None
        assert await r.read("k") == b"before"
        assert [e.config.id for e in await r.configurations()] == ["c0", "c1"]
    assert all(s.core.counters.get("unauthorized", 0) == 0 for s in cluster.servers)
    entries = [s.core.nextc.get((CHAIN, "c0")) for s in cluster.servers]
    assert all(e is None or e.mac for e in entries) and any(entries)  # stored with its MAC

    # a reader's channel puts the MAC it was told back on the entries it writes back (the
    # protocol's chain view does not keep MACs); without having seen it, the server refuses
    info = cluster.c0.servers[0]
    unsigned = WriteConfig(CHAIN, "c0", NextEntry(decided, "P"))
    ch = TcpChannel(cluster.options("read"))
    try:
        with pytest.raises(ServerError, match="unauthorized"):
            await ch.request(info, unsigned)
        told = await ch.request(info, ReadConfig(CHAIN, "c0"))
        assert isinstance(told, NextReply) and told.next is not None and told.next.mac
        assert isinstance(await ch.request(info, unsigned), Ack)
    finally:
        await ch.close()


async def test_reader_may_write_back_a_decided_entry_but_not_invent_one(cluster: Cluster) -> None:
    """Propagate, never invent (docs/protocol.md §13): a P entry from a non-admin needs the
    admin MAC it was decided with; a forged successor (no MAC, a wrong one, or a MAC of another
    successor) is refused before it reaches the core."""
    c1 = Configuration("c1", cluster.c0.servers[:2], epoch=1)
    evil = Configuration("evil", cluster.c0.servers[:1], epoch=1)
    key = load_key(cluster.pki.admin_key)
    info = cluster.c0.servers[0]
    good = macs.entry_mac(key, CHAIN, "c0", c1)
    forged = [
        NextEntry(evil, "P"),
        NextEntry(evil, "P", b"\x00" * 32),
        NextEntry(evil, "P", good),  # c1's MAC on another successor
        NextEntry(c1, "P", macs.entry_mac(key, CHAIN, "other", c1)),  # another predecessor
    ]
    for entry in forged:
        for role in ("read", "write"):
            with pytest.raises(ServerError, match="unauthorized"):
                await _ask(cluster.options(role), info, WriteConfig(CHAIN, "c0", entry))
    assert not cluster.servers[0].core.nextc
    reply = await _ask(
        cluster.options("read"), info, WriteConfig(CHAIN, "c0", NextEntry(c1, "P", good))
    )
    assert isinstance(reply, Ack)
    assert cluster.servers[0].core.nextc[(CHAIN, "c0")] == NextEntry(c1, "P", good)


# -- revocation and audit -------------------------------------------------------------------------


async def test_deny_list_refuses_and_closes(tmp_path: Path, pki: Pki) -> None:
    deny = tmp_path / "denied.txt"
    deny.write_text("# nobody yet\n")
    [server] = await _start(tmp_path, pki, ("s1",), deny=DenyList(deny))
    info = ServerInfo("s1", f"127.0.0.1:{server.port}")
    ch = TcpChannel(ClientOptions(timeout_s=2.0, tls=pki.client("write")))
    try:
        assert isinstance(await ch.request(info, Ping()), Pong)
        deny.write_text("write  # the write client's name\n")
        for _ in range(100):  # the server looks every DENY_CHECK_INTERVAL_S
            if not server.connections:
                break
            await asyncio.sleep(0.05)
        assert not server.connections
        with pytest.raises(QuorumUnavailable):
            await ch.request(info, Ping())
        assert server.core.counters["refused-denied"] >= 1
        # the admin certificate is not on the list
        assert isinstance(await _ask(ClientOptions(tls=pki.client("admin")), info, Ping()), Pong)
    finally:
        await ch.close()
        await server.stop()


async def test_audit_log_records_admin_operations_and_refusals(cluster: Cluster) -> None:
    async with cluster.store("admin") as a:
        await a.reconfigure(Configuration("c1", cluster.c0.servers[:2]), force=True)
    with pytest.raises(ServerError):
        await _ask(cluster.options("read"), cluster.c0.servers[0], GetGroup(CHAIN, "c0", "", 1))
    lines = [json.loads(x) for x in (cluster.tmp / "s1" / "audit.log").read_text().splitlines()]
    ops = {e["op"] for e in lines}
    assert {"Prepare", "Accept", "GetGroup"} <= ops
    admin = next(e for e in lines if e["op"] == "Prepare")
    assert admin["who"].startswith("admin (role admin") and admin["server"] == "s1"
    assert admin["ts"].endswith("Z") and admin["config"] == "c0"
    refused = [e for e in lines if e["outcome"] == "unauthorized"]
    assert refused and refused[0]["who"].startswith("read (role read")
    assert oct((cluster.tmp / "s1" / "audit.log").stat().st_mode & 0o777) == "0o600"
