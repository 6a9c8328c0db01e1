"""Integrity end to end (issue 10 item 3): checksums on disk, digests on the wire, damaged
objects refused until repaired, readers that never return a corrupt copy."""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path

import msgspec
import pytest

from aresdsm import integrity
from aresdsm.client import Store
from aresdsm.config import Configuration, ServerInfo
from aresdsm.errors import OperationError
from aresdsm.protocol import abd, treas
from aresdsm.protocol.server_core import ServerCore
from aresdsm.server import Server
from aresdsm.storage.base import DamagedRecord, DamagedValue, Record, ValueRef
from aresdsm.storage.sqlite import SqliteStorage
from aresdsm.storage.values import LocalServer
from aresdsm.tags import Tag
from aresdsm.wire import Blob, Decoder, Encoder, Envelope
from aresdsm.wire.messages import (
    DataReply,
    ErrorReply,
    GetGroup,
    PutData,
    QueryData,
    QueryList,
    QueryTag,
)

C0 = Configuration(
    "c0", (ServerInfo("s1", "h:1"), ServerInfo("s2", "h:2"), ServerInfo("s3", "h:3"))
)
T3 = Configuration("t", C0.servers, "treas", 2, 1)


def _abd_record(key: str, tag: Tag, value: bytes) -> Record:
    meta = msgspec.msgpack.encode(abd.StoredMeta(tag, integrity.digest(value)))
    return Record(abd.NS, "g", "c0", key, meta, value)


def _flip(path: Path, pattern: bytes) -> None:
    raw = bytearray(path.read_bytes())
    at = raw.find(pattern)
    assert at >= 0, f"{pattern!r} not in {path}"
    raw[at + len(pattern) // 2] ^= 0x01
    path.write_bytes(bytes(raw))


async def _commit(store: SqliteStorage, records: list[Record]) -> None:
    await store.submit(list(records))
    await store.drain()


async def test_sqlite_rows_and_value_files_carry_checksums(tmp_path: Path) -> None:
    db = tmp_path / "state.sqlite3"
    store = SqliteStorage(db, blob_threshold_bytes=1024)
    small = b"small-value-" + b"s" * 40
    big = b"BIG-" + bytes(range(256)) * 8
    other = b"another-value-" + b"o" * 40
    await _commit(
        store,
        [
            _abd_record("a", Tag(1, "w"), small),
            _abd_record("b", Tag(2, "w"), big),
            _abd_record("c", Tag(3, "w"), other),
        ],
    )
    store.close()  # checkpoints the write-ahead log into the database file
    _flip(db, small[4:20])  # a byte of an inline value
    (blob,) = (tmp_path / "blobs").iterdir()
    blob.write_bytes(blob.read_bytes()[:-7])  # a truncated value file
    store = SqliteStorage(db, blob_threshold_bytes=1024)
    loaded = {r.key: r for r in store.load()}
    # a value file's absence or length is checked at load (a stat); a value's checksum when
    # it is read: a restart reads no value (issue 12)
    assert isinstance(loaded["b"], DamagedRecord) and "value file" in loaded["b"].reason
    a, c = loaded["a"], loaded["c"]
    assert isinstance(a, Record) and isinstance(a.data, ValueRef)
    with pytest.raises(DamagedValue) as bad:
        store.read_value(a.data)
    assert bad.value.damaged.meta == a.meta and "checksum" in bad.value.damaged.reason
    assert isinstance(c, Record) and isinstance(c.data, ValueRef)
    assert store.read_value(c.data) == other
    store.close()


def test_a_damaged_abd_object_is_refused_until_a_newer_write_repairs_it() -> None:
    meta = msgspec.msgpack.encode(abd.StoredMeta(Tag(5, "w"), integrity.digest(b"v5")))
    core = LocalServer(
        ServerCore.recover(
            "s1",
            [
                Record("cfg", "", "c0", "", msgspec.msgpack.encode(C0)),
                DamagedRecord(abd.NS, "g", "c0", "k", meta, "value checksum mismatch"),
            ],
        )
    )
    for req in (QueryTag("g", "c0", "k"), QueryData("g", "c0", "k"), GetGroup("g", "c0", "", 10)):
        reply, writes = core.handle(req)
        assert isinstance(reply, ErrorReply) and reply.code == "damaged" and not writes
    assert core.stats().damaged_count == 1 and core.stats().damaged == ("g/c0/k",)
    # an older or equal tag is acknowledged (safe: no query quorum holds this server) but
    # repairs nothing: the server may have acknowledged tag 5 before its disk lost it
    _, writes = core.handle(abd.put_request("g", "c0", "k", Tag(5, "w"), Blob(b"v5")))
    assert not writes and core.handle(QueryData("g", "c0", "k"))[0].code == "damaged"  # type: ignore[union-attr]
    _, writes = core.handle(abd.put_request("g", "c0", "k", Tag(6, "x"), Blob(b"v6")))
    assert writes
    reply, _ = core.handle(QueryData("g", "c0", "k"))
    assert isinstance(reply, DataReply) and reply.tag == Tag(6, "x") and bytes(reply.value) == b"v6"
    assert core.stats().damaged_count == 0


def test_a_record_whose_meta_is_lost_is_repaired_only_by_reconfiguration() -> None:
    core = ServerCore.recover(
        "s1",
        [
            Record("cfg", "", "c0", "", msgspec.msgpack.encode(C0)),
            DamagedRecord(abd.NS, "g", "c0", "k", None, "record checksum mismatch"),
            DamagedRecord("paxos", "g", "c0", "", None, "record checksum mismatch"),
        ],
    )
    _, writes = core.handle(abd.put_request("g", "c0", "k", Tag(99, "x"), Blob(b"v")))
    assert not writes  # (its lost tag is unknown: no write is known to be newer)
    reply, _ = core.handle(QueryTag("g", "c0", "k"))
    assert isinstance(reply, ErrorReply) and reply.code == "damaged"
    assert core.stats().damaged_count == 2


def test_a_damaged_treas_element_keeps_its_tag_and_is_refused() -> None:
    K = "group\x00key"  # (on the cluster chain an object's key is group NUL key)
    element = treas.coder(T3).encode(b"value")[0]
    good = treas.put_request("g", "t", K, Tag(1, "w"), element, integrity.digest(b"value"))
    fresh = ServerCore("s1")
    fresh.install_config(T3)
    _, writes = fresh.handle(good)
    initial, rec = sorted((w for w in writes if isinstance(w, Record)), key=lambda r: r.key)
    core = ServerCore.recover(
        "s1",
        [
            Record("cfg", "", "t", "", msgspec.msgpack.encode(T3)),
            initial,
            DamagedRecord(treas.NS, "g", "t", rec.key, None, "record checksum mismatch"),
        ],
    )
    reply, _ = core.handle(QueryList("g", "t", K))
    assert isinstance(reply, ErrorReply) and reply.code == "damaged"
    assert core.lists[("g", "t", K)][-1].tag == Tag(1, "w")  # the tag stays (§4.2 C1)
    newer = treas.put_request("g", "t", K, Tag(2, "w"), element, integrity.digest(b"value"))
    _, writes = core.handle(newer)
    # the damaged entry rewritten (without its element) and the new one; the intact initial
    # entry's record is not rewritten (the core refers to it)
    assert sorted(w.key for w in writes if isinstance(w, Record)) == [rec.key, f"{K}\x002\x00w"]
    assert not isinstance(core.handle(QueryList("g", "t", K))[0], ErrorReply)


def test_put_data_that_does_not_match_its_digest_changes_nothing() -> None:
    core = ServerCore("s1")
    core.install_config(C0)
    bad = PutData("g", "c0", "k", Tag(1, "w"), Blob(b"flipped"), integrity.digest(b"original"))
    reply, writes = core.handle(bad)
    assert isinstance(reply, ErrorReply) and reply.code == "corrupt" and not writes
    reply, writes = core.handle(PutData("g", "c0", "k", Tag(1, "w"), Blob(b"no digest")))
    assert isinstance(reply, ErrorReply) and reply.code == "corrupt" and not writes


async def test_a_reader_never_returns_a_reply_that_does_not_match_its_digest(
    inproc_cluster: tuple[Configuration, list[Server]],
) -> None:
    """One server's copy goes bad in memory (its disk, a bit flip, a bug): with another server
    down, the read has no healthy quorum and fails; it never returns the bad copy."""
    cfg, servers = inproc_cluster
    async with Store(cfg) as store:
        await store.write("k", b"the-value")
        (skey,) = list(servers[0].core.registers)  # (the cluster chain, "default" NUL "k")
        reg = servers[0].core.registers[skey]
        servers[0].core.registers[skey] = abd.Register(reg.tag, Blob(b"the-valuf"), reg.digest)
        for _ in range(5):
            assert await store.read("k") == b"the-value"
        await servers[1].stop()
        with pytest.raises(OperationError, match="corrupt reply"):
            await store.read("k")


async def test_a_value_found_damaged_when_read_makes_its_object_damaged(
    inproc_cluster: tuple[Configuration, list[Server]], tmp_path: Path
) -> None:
    """Issue 12: values are read from disk when a reply needs them, and their checksum is
    checked then. A value file flipped on a running server: that server answers ``damaged``
    (and counts it), the reader gets the value from the others, a newer write repairs it."""
    cfg, servers = inproc_cluster
    value = bytes(range(256)) * 512  # 128 KiB: a value file
    async with Store(cfg) as store:
        await store.write("k", value)
        # (a write returns with a quorum of acks: s1's commit may still be running, and a
        # value is read from its pending batch until that commit returns)
        await servers[0].storage.drain()
        (blob,) = (tmp_path / "s1" / "blobs").iterdir()
        raw = bytearray(blob.read_bytes())
        raw[1000] ^= 0x01
        blob.write_bytes(bytes(raw))
        (skey,) = list(servers[0].core.registers)
        # asked over TCP: the value file is read and checked off the event loop
        reader, writer = await asyncio.open_connection("127.0.0.1", servers[0].port)
        writer.write(Encoder().encode_bytes(Envelope(1, QueryData(skey[0], "c0", skey[2]))))
        (n,) = struct.unpack(">I", await asyncio.wait_for(reader.readexactly(4), 30))
        env = Decoder().decode_body(await asyncio.wait_for(reader.readexactly(n), 30))
        writer.close()
        assert env.body == ErrorReply(
            "damaged",
            f"server s1: a stored value of {skey[0]}/c0 is damaged on its disk; ask others",
        )
        assert servers[0].core.stats().damaged_count == 1
        assert await store.read("k") == value  # from the healthy servers
        await store.write("k", b"new")
        assert servers[0].core.stats().damaged_count == 0


def test_the_digest_is_sha256_and_versioned() -> None:
    """Protocol version 2 / storage schema 3: value digests are SHA-256 (FIPS 180-2 vector),
    not the BLAKE2b-256 of version 1."""
    from aresdsm.identity import PROTOCOL_VERSION
    from aresdsm.storage.sqlite import SCHEMA_VERSION

    assert integrity.digest(b"abc").hex() == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )
    assert integrity.DIGEST_NAME == "sha-256" and integrity.DIGEST_BYTES == 32
    assert (PROTOCOL_VERSION, SCHEMA_VERSION) == (2, 3)


def test_a_database_with_blake2b_digests_is_refused_with_the_way_out(tmp_path: Path) -> None:
    """A schema-2 database holds BLAKE2b digests that every reader would now reject: opening
    it is a one-line error that says how to move the data, not a cluster of unreadable
    objects."""
    import sqlite3

    from aresdsm.errors import StorageError

    path = tmp_path / "state.sqlite3"
    SqliteStorage(path).close()
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version=2")
    db.close()
    with pytest.raises(StorageError, match=r"schema version 2 .*BLAKE2b.*ares backup.*restore"):
        SqliteStorage(path)
