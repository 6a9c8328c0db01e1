"""The writer MAC of values without the network (docs/protocol.md §13 "Propagate, never
invent"; security.macs, security.roles.value_refusal): what it covers, rotation with several
keys, where it is stored, and how the cluster file hands out the write key."""

from __future__ import annotations

import tomllib
from pathlib import Path

import msgspec
import pytest

from aresdsm.config import Configuration, ServerInfo, dump_cluster_file, parse_cluster
from aresdsm.errors import ConfigurationError
from aresdsm.integrity import digest
from aresdsm.protocol import abd, treas
from aresdsm.protocol.server_core import ServerCore
from aresdsm.security import macs
from aresdsm.security.roles import refusal, value_refusal
from aresdsm.security.tls import role_level
from aresdsm.tags import Tag
from aresdsm.wire.blob import Blob
from aresdsm.wire.messages import BatchItem, DataReply, PutBatch, PutData, QueryData

K_OLD, K_NEW = b"o" * 32, b"n" * 32
C0 = Configuration("c0", (ServerInfo("s1", "127.0.0.1:1"),))


def _put(tag: Tag, value: bytes, mac: bytes, key: str = "k") -> PutData:
    return PutData("g", "c0", key, tag, Blob(value), digest(value), b"", mac)


def _core() -> ServerCore:
    core = ServerCore("s1")
    core.install_config(C0)
    return core


def test_the_mac_covers_chain_key_tag_and_digest_not_the_configuration() -> None:
    t = Tag(3, "w")
    mac = macs.value_mac(K_NEW, "g", "k", t, digest(b"v"))
    assert macs.value_mac_valid((K_NEW,), "g", "k", t, digest(b"v"), mac)
    for chain, key, tag, d in [
        ("h", "k", t, digest(b"v")),
        ("g", "j", t, digest(b"v")),
        ("g", "k", Tag(4, "w"), digest(b"v")),
        ("g", "k", Tag(3, "x"), digest(b"v")),
        ("g", "k", t, digest(b"w")),
    ]:
        assert not macs.value_mac_valid((K_NEW,), chain, key, tag, d, mac)
    assert not macs.value_mac_valid((K_OLD,), "g", "k", t, digest(b"v"), mac)
    assert not macs.value_mac_valid((K_NEW,), "g", "k", t, digest(b"v"), b"")
    assert not macs.value_mac_valid((K_NEW,), "g", "k", t, digest(b"v"), mac[:-1])


def test_key_files_hold_several_keys_first_signs_all_verify(tmp_path: Path) -> None:
    f = tmp_path / "write-mac.key"
    f.write_text(f"{K_NEW.hex()}  # current\n# retired, still accepted:\n{K_OLD.hex()}\n")
    assert macs.load_keys(f, "write key") == (K_NEW, K_OLD)
    assert macs.load_key(f, "write key") == K_NEW
    t = Tag(1, "w")
    old = macs.value_mac(K_OLD, "g", "k", t, digest(b"v"))
    assert macs.value_mac_valid(macs.load_keys(f), "g", "k", t, digest(b"v"), old)
    (tmp_path / "empty").write_text("# nothing\n")
    with pytest.raises(ConfigurationError, match="holds no key"):
        macs.load_keys(tmp_path / "empty", "write key")
    (tmp_path / "short").write_text("abcd\n")
    with pytest.raises(ConfigurationError, match="shorter than 16 bytes"):
        macs.load_keys(tmp_path / "short")


def test_value_refusal_propagate_never_invent() -> None:
    core = _core()
    t5 = Tag(5, "w")
    good = macs.value_mac(K_NEW, "g", "k", t5, digest(b"v"))
    keys = (K_NEW,)
    assert value_refusal(_put(t5, b"v", good), core, keys) is None
    assert "no writer MAC" in str(value_refusal(_put(t5, b"v", b""), core, keys))
    assert "does not verify" in str(value_refusal(_put(t5, b"x", good), core, keys))
    core.handle(_put(t5, b"v", good))
    # what the server holds already (or older) adds nothing: no MAC needed
    assert value_refusal(_put(t5, b"v", b""), core, keys) is None
    assert value_refusal(_put(Tag(2, "w"), b"old", b""), core, keys) is None
    # a batch: every item
    ok = BatchItem("k", t5, Blob(b"v"), digest(b"v"), b"", good)
    new = Tag(1, "w")
    fresh = BatchItem("j", new, Blob(b"j"), digest(b"j"), b"", b"\x00" * 32)
    assert value_refusal(PutBatch("g", "c0", (ok,)), core, keys) is None
    assert value_refusal(PutBatch("g", "c0", (ok, fresh)), core, keys) is not None
    signed = msgspec.structs.replace(fresh, mac=macs.value_mac(K_NEW, "g", "j", new, digest(b"j")))
    assert value_refusal(PutBatch("g", "c0", (ok, signed)), core, keys) is None
    # with the write key a reader may send PutData (the MAC decides); without, it needs write
    forged = _put(Tag(2**62 - 1, "x"), b"evil", b"")
    assert refusal(forged, core, role_level("read"), None, keys) is None
    assert refusal(forged, core, role_level("read"), None, ()) == "write"


def test_servers_store_the_mac_with_the_value_and_return_it() -> None:
    core = _core()
    t = Tag(1, "w")
    mac = macs.value_mac(K_NEW, "g", "k", t, digest(b"v"))
    _, writes = core.handle(_put(t, b"v", mac))
    reply, _ = core.handle(QueryData("g", "c0", "k"))
    assert isinstance(reply, DataReply) and reply.mac == mac
    # recovery from the stored records keeps it (ABD meta)
    again = ServerCore.recover("s1", [w for w in writes if hasattr(w, "ns")])
    assert again.registers[("g", "c0", "k")].mac == mac
    # records written before the field existed still decode (empty MAC)
    old_meta = msgspec.msgpack.encode((t, digest(b"v")))
    assert msgspec.msgpack.decode(old_meta, type=abd.StoredMeta).mac == b""
    entry = treas.ListEntry(t, Blob(b"e"), digest(b"e"), digest(b"v"), mac)
    _, meta, data = treas.encode_entry("k", entry)
    assert treas.decode_entry(meta, data) == ("k", entry)


def test_cluster_file_carries_the_write_key() -> None:
    data = {
        "tls": {"ca": "/c/ca.pem", "cert": "/c/a.pem", "key": "/c/a.key", "write_key": "/c/w"},
        "servers": [{"id": "s1", "address": "127.0.0.1:7001", "cert": "/c/s.pem", "key": "/c/s.k"}],
        "initial": {"servers": ["s1"]},
    }
    cf = parse_cluster(data)
    assert cf.client.tls is not None and cf.client.tls.write_key == "/c/w"
    assert cf.server_tls["s1"].write_key == "/c/w"
    assert 'write_key = "/c/w"' in dump_cluster_file(cf)
    assert parse_cluster(tomllib.loads(dump_cluster_file(cf))).client.tls == cf.client.tls
