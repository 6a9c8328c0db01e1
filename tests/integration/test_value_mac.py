"""The writer's MAC of values: propagate, never invent (docs/protocol.md §13, docs/security.md).

In-process servers over real mutual TLS that hold the cluster's write key. Before the writer MAC
existed a read-role client could not write back a value a lagging server lacked (its PutData
needed ``write`` unless the server already held the tag); a writer-role client could put any tag,
and a server had no way to tell a write-back from an invention. Now every value carries
``HMAC(K_write, chain | key | tag | digest)``: a reader forwards it, a server checks it, and the
``broken_skip_value_mac`` server switch shows the check is what refuses the forgeries.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest

from aresdsm.client import Store
from aresdsm.config import ClientOptions, Configuration, ServerInfo, TlsFiles
from aresdsm.errors import ServerError
from aresdsm.integrity import digest
from aresdsm.net.client import TcpChannel
from aresdsm.protocol import ares
from aresdsm.protocol.ops import DEFAULT_SWITCHES
from aresdsm.security import certs, macs
from aresdsm.security.tls import server_context
from aresdsm.server import Server
from aresdsm.storage import SqliteStorage
from aresdsm.storage.base import ValueRef
from aresdsm.tags import Tag
from aresdsm.testing import Broken
from aresdsm.wire.blob import Blob
from aresdsm.wire.messages import Ack, DataReply, PutData, QueryData, Request

CHAIN = ares.CLUSTER_CHAIN
KEY = ares.object_key("default", "k", DEFAULT_SWITCHES)
HUGE = 2**62 - 1


@dataclass(frozen=True)
class Pki:
    dir: Path

    @property
    def ca(self) -> str:
        return str(self.dir / "ca.pem")

    @property
    def write_key(self) -> Path:
        return self.dir / certs.WRITE_MAC_KEY

    def server(self, sid: str) -> TlsFiles:
        return TlsFiles(
            self.ca, str(self.dir / f"server-{sid}.pem"), str(self.dir / f"server-{sid}.key")
        )

    def client(self, role: str, *, write_key: bool | None = None) -> ClientOptions:
        """``role``'s identity; the keys as ``ares cluster start`` hands them out (readers get no
        write key) unless ``write_key`` says otherwise."""
        holds = role in ("write", "admin") if write_key is None else write_key
        tls = TlsFiles(
            self.ca,
            str(self.dir / f"client-{role}.pem"),
            str(self.dir / f"client-{role}.key"),
            str(self.dir / certs.ADMIN_MAC_KEY) if role == "admin" else None,
            str(self.write_key) if holds else None,
        )
        return ClientOptions(timeout_s=3.0, connect_timeout_s=2.0, tls=tls)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    certs.create_ca(d, "test")
    for sid in ("s1", "s2", "s3"):
        certs.issue_server(d, sid, hosts=("127.0.0.1",))
    for role in ("admin", "write", "read"):
        certs.issue_client(d, role, role)
    return Pki(d)


@dataclass
class Cluster:
    servers: list[Server]
    c0: Configuration
    pki: Pki

    def store(self, role: str, **kw: bool | None) -> Store:
        return Store(self.c0, options=self.pki.client(role, **kw))


async def _cluster(tmp: Path, pki: Pki, faults: Broken | None = None) -> Cluster:
    servers = []
    for sid in ("s1", "s2", "s3"):
        s = Server(
            server_id=sid,
            host="127.0.0.1",
            port=0,
            storage=SqliteStorage(tmp / sid / "state.sqlite3"),
            tls=server_context(pki.server(sid)),
            admin_key=macs.load_key(pki.dir / certs.ADMIN_MAC_KEY),
            write_keys=macs.load_keys(pki.write_key),
            faults=faults or Broken(),
        )
        await s.start()
        servers.append(s)
    c0 = Configuration("c0", tuple(ServerInfo(s.server_id, f"127.0.0.1:{s.port}") for s in servers))
    for s in servers:
        await s.bootstrap(c0)
    return Cluster(servers, c0, pki)


@pytest.fixture
async def cluster(tmp_path: Path, pki: Pki) -> AsyncIterator[Cluster]:
    c = await _cluster(tmp_path, pki)
    yield c
    for s in c.servers:
        await s.stop()


async def _ask(opts: ClientOptions, server: ServerInfo, req: Request) -> object:
    ch = TcpChannel(opts)
    try:
        return await ch.request(server, req, timeout_s=3.0)
    finally:
        await ch.close()


def _forged(value: bytes = b"evil", tag: Tag | None = None, mac: bytes = b"") -> PutData:
    tag = Tag(HUGE, "x") if tag is None else tag
    return PutData(CHAIN, "c0", KEY, tag, Blob(value), digest(value), b"", mac)


def _stored(server: Server) -> tuple[Tag, bytes, bytes]:
    reg = server.core.registers[(CHAIN, "c0", KEY)]
    # (the server keeps a reference to the stored value, issue 12: read it as the server does)
    value = server.storage.read_value(reg.value) if isinstance(reg.value, ValueRef) else reg.value
    return reg.tag, bytes(value), reg.mac


async def test_reader_cannot_invent_a_value_with_a_huge_tag(cluster: Cluster) -> None:
    """The issue's attack (tag 2^62-1 makes the key unwritable) from a read-role client: with
    no MAC, with a MAC made with another key, with the real write's MAC on another tag."""
    async with cluster.store("write") as w:
        tag = await w.write("k", b"good")
    info = cluster.c0.servers[0]
    good_mac = _stored(cluster.servers[0])[2]
    forgeries = [
        _forged(),
        _forged(mac=macs.value_mac(b"k" * 32, CHAIN, KEY, Tag(HUGE, "x"), digest(b"evil"))),
        _forged(tag=Tag(HUGE, tag.writer), value=b"good", mac=good_mac),  # on another tag
    ]
    for req in forgeries:
        with pytest.raises(ServerError) as e:
            await _ask(cluster.pki.client("read"), info, req)
        assert e.value.code == "unauthorized"
    assert _stored(cluster.servers[0])[:2] == (tag, b"good")
    assert cluster.servers[0].core.counters["refused-value-mac"] == len(forgeries)
    # another value under the tag the server holds adds nothing: acknowledged, not applied
    same_tag = _forged(tag=tag, mac=good_mac)
    assert isinstance(await _ask(cluster.pki.client("read"), info, same_tag), Ack)
    assert _stored(cluster.servers[0]) == (tag, b"good", good_mac)
    async with cluster.store("read") as r:
        assert await r.read("k") == b"good"
    async with cluster.store("write") as w:  # the key stays writable
        await w.write("k", b"next")


async def test_reader_writes_back_a_real_value_to_a_lagging_server(cluster: Cluster) -> None:
    """The gap this closes: s3 missed a write; a read-role client forwards the writer's MAC the
    value came with, and s3 accepts it (it used to need the write role)."""
    s1, _, s3 = cluster.c0.servers
    ch = TcpChannel(cluster.pki.client("write"))
    try:
        put = PutData(CHAIN, "c0", KEY, Tag(7, "w.1"), Blob(b"fresh"), digest(b"fresh"))
        for info in cluster.c0.servers[:2]:  # s3 lags
            assert isinstance(await ch.request(info, put), Ack)
    finally:
        await ch.close()
    reply = await _ask(cluster.pki.client("read"), s1, QueryData(CHAIN, "c0", KEY))
    assert isinstance(reply, DataReply) and reply.mac and reply.tag == Tag(7, "w.1")
    back = PutData(CHAIN, "c0", KEY, reply.tag, reply.value, reply.digest, b"", reply.mac)
    assert isinstance(await _ask(cluster.pki.client("read"), s3, back), Ack)
    assert _stored(cluster.servers[2]) == (Tag(7, "w.1"), b"fresh", reply.mac)
    # and through the Store: a reader's read brings a lagging server up to date
    async with cluster.store("read") as r:
        assert r.channel.signer is None
        assert await r.read("k") == b"fresh"


async def test_a_flipped_mac_byte_is_refused(cluster: Cluster) -> None:
    key = macs.load_key(cluster.pki.write_key)
    tag = Tag(3, "w.1")
    mac = bytearray(macs.value_mac(key, CHAIN, KEY, tag, digest(b"v")))
    mac[5] ^= 0x01
    info = cluster.c0.servers[0]
    for role in ("read", "write", "admin"):
        # (without the write key the channel sends the MAC as given: the flipped one)
        opts = cluster.pki.client(role, write_key=False)
        with pytest.raises(ServerError, match="does not verify") as e:
            await _ask(opts, info, _forged(b"v", tag, bytes(mac)))
        assert e.value.code == "unauthorized"
    assert (CHAIN, "c0", KEY) not in cluster.servers[0].core.registers
    mac[5] ^= 0x01  # the real one is accepted, from a reader too
    assert isinstance(
        await _ask(cluster.pki.client("read"), info, _forged(b"v", tag, bytes(mac))), Ack
    )


async def test_a_writers_value_keeps_its_mac_across_reconfiguration_and_gc(
    cluster: Cluster,
) -> None:
    """ABD -> TREAS with garbage collection, by an admin that holds no write key: the transfer
    carries each value's MAC from the group read into the new configuration's put-batch
    unchanged (else the new servers refuse the batch), and readers then write back from there."""
    async with cluster.store("write") as w:
        tag = await w.write("k", b"carried over" * 50)
    mac = _stored(cluster.servers[0])[2]
    assert mac == macs.value_mac(
        macs.load_key(cluster.pki.write_key), CHAIN, KEY, tag, digest(b"carried over" * 50)
    )
    c1 = Configuration("c1", cluster.c0.servers, dap="treas", k=2, delta=1, epoch=1)
    async with cluster.store("admin", write_key=False) as a:
        assert a.channel.signer is None
        assert (await a.reconfigure(c1, force=True)).id == "c1"
        await a.settle()
    assert all((CHAIN, "c0") in s.core.collected for s in cluster.servers)  # GC ran
    for s in cluster.servers:
        entries = [e for e in s.core.lists[(CHAIN, "c1", KEY)] if e.tag == tag]
        assert [e.mac for e in entries] == [mac]
    async with cluster.store("read") as r:
        assert await r.read("k") == b"carried over" * 50
    assert all(s.core.counters.get("unauthorized", 0) == 0 for s in cluster.servers)


async def test_broken_skip_value_mac_lets_the_forgery_through(tmp_path: Path, pki: Pki) -> None:
    """The tests above can fail: without the check the reader's invented value is stored and
    every later write of the key fails (its tag space is exhausted)."""
    c = await _cluster(tmp_path, pki, Broken(broken_skip_value_mac=True))
    try:
        reply = await _ask(pki.client("read"), c.c0.servers[0], _forged())
        assert isinstance(reply, Ack)
        assert _stored(c.servers[0]) == (Tag(HUGE, "x"), b"evil", b"")
    finally:
        for s in c.servers:
            await s.stop()


async def test_key_rotation_reconfiguration_re_signs_every_value(tmp_path: Path, pki: Pki) -> None:
    """docs/security.md "Key rotation": servers verify with the new and the old key; a writer
    still on the old key keeps writing; an admin on the new key reconfigures, which re-signs
    every value it transfers; then the old key can be retired."""
    old = macs.load_key(pki.write_key)
    new_file = tmp_path / "write-mac-new.key"
    macs.create_key(new_file)
    new = macs.load_key(new_file)
    c = await _cluster(tmp_path, pki)
    try:
        for s in c.servers:  # step 1 (a restart with the new key first, the old one second)
            s.write_keys = (new, old)
        async with c.store("write") as w:  # still signs with the old key
            tag = await w.write("k", b"written before the rotation")
        assert _stored(c.servers[0])[2] == macs.value_mac(
            old, CHAIN, KEY, tag, digest(b"written before the rotation")
        )
        admin = c.pki.client("admin")
        assert admin.tls is not None
        admin = msgspec.structs.replace(
            admin, tls=msgspec.structs.replace(admin.tls, write_key=str(new_file))
        )
        c1 = Configuration("c1", c.c0.servers, epoch=1)
        async with Store(c.c0, options=admin) as a:  # step 3
            await a.reconfigure(c1, force=True)
            await a.settle()
        resigned = macs.value_mac(new, CHAIN, KEY, tag, digest(b"written before the rotation"))
        assert all(s.core.registers[(CHAIN, "c1", KEY)].mac == resigned for s in c.servers)
        for s in c.servers:  # step 4: the old key retired
            s.write_keys = (new,)
        async with c.store("read") as r:
            assert await r.read("k") == b"written before the rotation"
        with pytest.raises(ServerError, match="does not verify"):  # the old key creates nothing
            await _ask(
                c.pki.client("read"),
                c.c0.servers[0],
                PutData(
                    CHAIN,
                    "c1",
                    KEY,
                    Tag(tag.z + 1, "w"),
                    Blob(b"x"),
                    digest(b"x"),
                    b"",
                    macs.value_mac(old, CHAIN, KEY, Tag(tag.z + 1, "w"), digest(b"x")),
                ),
            )
    finally:
        for s in c.servers:
            await s.stop()
