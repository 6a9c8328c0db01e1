"""Cluster and server identity (issue 10 items 1, 2): data-directory rules and the handshake
every connection makes before anything is served."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from frames import ask

from aresdsm.client import Store
from aresdsm.config import ClientOptions, Configuration, ServerInfo
from aresdsm.errors import ConfigurationError, OperationError
from aresdsm.identity import (
    IDENTITY_FILE,
    IdentityError,
    NewMember,
    initial_digest,
    load_identity,
    open_data_dir,
)
from aresdsm.local import free_ports
from aresdsm.net.client import ClusterIdentity, TcpChannel
from aresdsm.server import Server
from aresdsm.storage import SqliteStorage
from aresdsm.wire import Encoder, Envelope
from aresdsm.wire.messages import ErrorReply, InstallConfig, Ping, Pong, QueryTag, TagReply

C0 = Configuration("c0", tuple(ServerInfo(f"s{i}", f"127.0.0.1:{7000 + i}") for i in (1, 2, 3)))


def test_a_data_directory_is_used_only_by_its_own_cluster_server_and_initial_configuration(
    tmp_path: Path,
) -> None:
    d = tmp_path / "s1"
    with pytest.raises(IdentityError, match=r"is empty.*--new initial"):
        open_data_dir(d, cluster_id="A", server_id="s1", initial=C0)
    assert not (d / IDENTITY_FILE).exists()  # a refusal changes nothing
    with pytest.raises(IdentityError, match="not in the initial configuration"):
        open_data_dir(tmp_path / "s9", cluster_id="A", server_id="s9", initial=C0, new="initial")
    with pytest.raises(IdentityError, match="never reused"):
        open_data_dir(d, cluster_id="A", server_id="s1", initial=C0, new="join")
    made = open_data_dir(d, cluster_id="A", server_id="s1", initial=C0, new="initial")
    assert load_identity(d) == made and made.incarnation
    # again, with or without --new: the same incarnation (the directory is intact)
    assert open_data_dir(d, cluster_id="A", server_id="s1", initial=C0) == made
    assert open_data_dir(d, cluster_id="A", server_id="s1", initial=C0, new="initial") == made
    with pytest.raises(IdentityError, match="belongs to cluster A"):
        open_data_dir(d, cluster_id="B", server_id="s1", initial=C0, new="initial")
    with pytest.raises(IdentityError, match="belongs to server s1"):
        open_data_dir(d, cluster_id="A", server_id="s2", initial=C0, new="initial")
    treas = msgspec.structs.replace(C0, dap="treas", k=2)
    with pytest.raises(IdentityError, match="another initial configuration"):
        open_data_dir(d, cluster_id="A", server_id="s1", initial=treas)
    with pytest.raises(IdentityError, match="no cluster id"):
        open_data_dir(d, cluster_id="", server_id="s1", initial=C0)
    # uids named later in the cluster file do not change the initial configuration's digest
    stamped = msgspec.structs.replace(
        C0, servers=tuple(msgspec.structs.replace(s, uid="u") for s in C0.servers)
    )
    assert initial_digest(stamped) == initial_digest(C0)
    # nor does k or delta of an ABD configuration (ignored, and not written to cluster files)
    assert initial_digest(msgspec.structs.replace(C0, delta=4)) == initial_digest(C0)
    # server state without an identity file (an older version, a lost file): refused
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "state.sqlite3").write_bytes(b"")
    with pytest.raises(IdentityError, match=r"no identity\.json"):
        open_data_dir(legacy, cluster_id="A", server_id="s1", initial=C0, new="initial")
    # a damaged identity file
    raw = (d / IDENTITY_FILE).read_text().replace(made.incarnation, "0" * 16)
    (d / IDENTITY_FILE).write_text(raw)
    with pytest.raises(IdentityError, match="damaged"):
        open_data_dir(d, cluster_id="A", server_id="s1", initial=C0)


async def _server(
    tmp_path: Path, cfg: Configuration, sid: str = "s1", cluster_id: str = "A", port: int = 0
) -> Server:
    d = tmp_path / sid
    new: NewMember = "initial" if cfg.has_member(sid) else "join"
    ident = open_data_dir(d, cluster_id=cluster_id, server_id=sid, initial=cfg, new=new)
    s = Server(
        server_id=sid,
        host="127.0.0.1",
        port=port,
        storage=SqliteStorage(d / "state.sqlite3"),
        identity=ident,
    )
    await s.start()
    if cfg.has_member(sid):
        await s.bootstrap(cfg)
    return s


async def test_the_handshake_refuses_another_cluster_server_configuration_or_incarnation(
    tmp_path: Path,
) -> None:
    srv = await _server(tmp_path, C0)
    try:
        me = ServerInfo("s1", f"127.0.0.1:{srv.port}")
        good = ClusterIdentity("A", initial_digest(C0))
        opts = ClientOptions(timeout_s=2.0)
        ch = TcpChannel(opts, hello=good)
        assert isinstance(await ch.request(me, Ping()), Pong)
        welcome = await ch.identify(me)
        assert (welcome.cluster_id, welcome.server_id) == ("A", "s1")
        assert welcome.incarnation == srv.identity.incarnation  # type: ignore[union-attr]
        await ch.close()
        cases = [
            (ClusterIdentity("B", initial_digest(C0)), me, "cluster A.*names cluster B"),
            (ClusterIdentity("A", "0" * 32), me, "another initial configuration"),
            (good, ServerInfo("s2", me.address), "not s2"),
            (good, ServerInfo("s1", me.address, "old-uid"), "names incarnation old-uid"),
        ]
        for hello, server, why in cases:
            ch = TcpChannel(opts, hello=hello)
            with pytest.raises(OperationError, match=why):
                await ch.request(server, QueryTag("default", "c0", "k"))
            await ch.close()
        assert srv.core.counters["refused-connections"] == 4
        assert "QueryTag" not in srv.core.counters  # nothing was served
        # a client that skips the handshake is refused too
        frame = Encoder().encode_bytes(Envelope(1, QueryTag("default", "c0", "k")))
        reply = await ask(srv.port, frame)
        assert reply is not None and isinstance(reply.body, ErrorReply)
        assert reply.body.code == "refused" and "Hello" in reply.body.message
        # a client whose initial configuration differs (here: one server) is refused
        cfg = Configuration("c0", (me,))
        async with Store(cfg, cluster_id="A") as st:
            with pytest.raises(OperationError, match="another initial configuration"):
                await st.read("k")
    finally:
        await srv.stop()


async def test_a_server_refuses_a_configuration_that_names_another_incarnation(
    tmp_path: Path,
) -> None:
    srv = await _server(tmp_path, C0)
    try:
        me = ServerInfo("s1", f"127.0.0.1:{srv.port}", "an-earlier-incarnation")
        later = Configuration("c9", (me,))
        reply, writes = srv.core.handle(InstallConfig(later))
        assert isinstance(reply, ErrorReply) and reply.code == "wrong-incarnation" and not writes
        mine = msgspec.structs.replace(me, uid=srv.identity.incarnation)  # type: ignore[union-attr]
        reply, writes = srv.core.handle(InstallConfig(Configuration("c9", (mine,))))
        assert not isinstance(reply, ErrorReply) and writes
        reply, _ = srv.core.handle(QueryTag("default", "c9", "k"))
        assert isinstance(reply, TagReply)
    finally:
        await srv.stop()


async def test_reconfigure_stamps_new_members_with_the_incarnation_they_report(
    tmp_path: Path,
) -> None:
    """Store.probe connects to each server (handshake) and returns it with its uid; reconfigure
    names the uid of every new member in the proposal; unreachable or foreign servers stop it
    with one line naming them."""
    ports = free_ports(4)
    infos = [ServerInfo(f"s{i + 1}", f"127.0.0.1:{p}") for i, p in enumerate(ports)]
    c0 = Configuration("c0", tuple(infos[:2]))
    servers = [await _server(tmp_path, c0, f"s{i + 1}", port=ports[i]) for i in range(3)]
    foreign = await _server(tmp_path / "other", c0, "s4", cluster_id="B", port=ports[3])
    try:
        async with Store(c0, cluster_id="A") as st:
            await st.write("k", b"v")
            (s3,) = await st.probe([infos[2]])
            assert s3.uid == servers[2].identity.incarnation  # type: ignore[union-attr]
            with pytest.raises(ConfigurationError, match=r"s4 .*cluster B.*names cluster A") as e:
                await st.probe([infos[2], infos[3]])
            assert "s3" not in str(e.value)
            dead = ServerInfo("s9", "127.0.0.1:1")
            with pytest.raises(ConfigurationError, match="s9"):
                await st.probe([dead])
            decided = await st.reconfigure(Configuration("c1", tuple(infos[:3])))
            assert [s.uid for s in decided.servers] == ["", "", s3.uid]
            assert await st.read("k") == b"v"
    finally:
        for s in [*servers, foreign]:
            await s.stop()
