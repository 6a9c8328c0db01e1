"""The role table (docs/protocol.md §13), the insecure server's protected mode, the deny list and
the identities certificates carry -- without the network."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from aresdsm.config import Configuration, ServerInfo
from aresdsm.integrity import digest
from aresdsm.protocol.server_core import ServerCore
from aresdsm.security.roles import REQUIRED, ROLE_LEVELS, refusal, required_role
from aresdsm.security.tls import DenyList, PeerIdentity, identity_of, role_level
from aresdsm.server import Server, _Conn, is_loopback
from aresdsm.storage.memory import MemoryStorage
from aresdsm.tags import Tag
from aresdsm.wire.blob import Blob
from aresdsm.wire.messages import (
    GetStats,
    InstallConfig,
    NextEntry,
    PutData,
    QueryData,
    Request,
    WriteConfig,
)


def test_every_request_type_has_a_role() -> None:
    """A new message type must be placed in the table on purpose (else: admin only)."""
    assert set(Request.__args__) == set(REQUIRED)  # type: ignore[attr-defined]


def test_required_roles() -> None:
    c0 = Configuration("c0", (ServerInfo("s1", "127.0.0.1:1"),))
    core = ServerCore("s1")
    core.install_config(c0)
    core.handle(PutData("g", "c0", "k", Tag(5, "w"), Blob(b"v"), digest(b"v")))
    assert required_role(QueryData("g", "c0", "k"), core) == "read"
    assert (
        required_role(PutData("g", "c0", "k", Tag(5, "w"), Blob(b"v"), digest(b"v")), core)
        == "read"
    )
    assert (
        required_role(PutData("g", "c0", "k", Tag(4, "w"), Blob(b"v"), digest(b"v")), core)
        == "read"
    )
    assert (
        required_role(PutData("g", "c0", "k", Tag(6, "w"), Blob(b"v"), digest(b"v")), core)
        == "write"
    )
    assert (
        required_role(PutData("g", "c0", "other", Tag(1, "w"), Blob(b"v"), digest(b"v")), core)
        == "write"
    )
    p = WriteConfig("g", "c0", NextEntry(c0, "P"), gc=True)
    assert required_role(p, core) == "read"
    assert required_role(WriteConfig("g", "c0", NextEntry(c0, "F"), gc=False), core) == "admin"
    assert required_role(InstallConfig(c0), core) == "admin"
    assert required_role(GetStats(), core) == "admin"
    assert role_level("read") < role_level("write") < role_level("admin")
    assert {r: role_level(r) for r in ("read", "write", "admin")} == ROLE_LEVELS
    new_tag = PutData("g", "c0", "k", Tag(6, "w"), Blob(b"v"), digest(b"v"))
    assert refusal(new_tag, core, role_level("read"), None) == "write"
    assert refusal(new_tag, core, role_level("write"), None) is None
    assert refusal(GetStats(), core, role_level("write"), None) == "admin"
    assert refusal(GetStats(), core, role_level("admin"), None) is None
    assert refusal(QueryData("g", "c0", "k"), core, 0, None) == "read"
    assert role_level(None) == role_level("root") == 0


class _Transport:
    def __init__(self, peer: Any) -> None:
        self.peer = peer
        self.aborted = False

    def get_extra_info(self, name: str) -> Any:
        return self.peer if name == "peername" else None

    def abort(self) -> None:
        self.aborted = True

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def is_closing(self) -> bool:
        return self.aborted


@pytest.mark.parametrize(
    ("peer", "allowed"),
    [
        (("127.0.0.1", 5), True),
        (("127.3.4.5", 5), True),
        (("::1", 5, 0, 0), True),
        (("::ffff:127.0.0.1", 5, 0, 0), True),
        (("10.1.2.3", 5), False),
        (("192.168.0.7", 5), False),
        (("2001:db8::1", 5, 0, 0), False),
        (("::ffff:10.0.0.1", 5, 0, 0), False),
    ],
)
def test_insecure_server_accepts_loopback_clients_only(peer: Any, allowed: bool) -> None:
    """Redis's protected mode: without TLS, non-loopback clients are refused, unless told."""
    assert is_loopback(peer) is allowed
    for allow_remote in (False, True):
        server = Server(
            server_id="s1",
            host="127.0.0.1",
            port=0,
            storage=MemoryStorage(),
            allow_remote_plaintext=allow_remote,
        )
        conn = _Conn(server)
        t = _Transport(peer)
        conn.connection_made(t)  # type: ignore[arg-type]
        accepted = allowed or allow_remote
        assert t.aborted is not accepted
        assert (conn in server.connections) is accepted
        if not accepted:
            assert server.core.counters["refused-remote-plaintext"] == 1


def test_deny_list(tmp_path: Path) -> None:
    f = tmp_path / "denied.txt"
    deny = DenyList(f)
    alice = PeerIdentity("alice", "write", "A1B2")
    assert not deny.denies(alice)  # no file: nothing denied
    f.write_text("# revoked\n00a1b2  # alice's old certificate\n")
    assert deny.denies(alice)
    assert not deny.denies(PeerIdentity("bob", "read", "FF"))
    f.write_text("BOB\n")
    assert deny.denies(PeerIdentity("bob", "read", "FF")) and not deny.denies(alice)
    assert DenyList(None).entries() == frozenset()


def test_identity_from_certificate_fields() -> None:
    ident = identity_of(
        {
            "subject": ((("commonName", "ignored"),),),
            "subjectAltName": (
                ("URI", "ares:client=al%20ice"),
                ("URI", "ares:role=read"),
                ("URI", "ares:role=write"),
                ("URI", "ares:role=superuser"),
            ),
            "serialNumber": "00AB",
        }
    )
    assert ident == PeerIdentity("al ice", "write", "AB", None)
    server = identity_of({"subjectAltName": (("URI", "ares:server=s%2F1"),), "serialNumber": "1"})
    assert server is not None and server.server_id == "s/1" and server.role is None
    assert identity_of(None) is None
