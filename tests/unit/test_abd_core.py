"""The pure ABD server rules (docs/protocol.md §4.1) and the server core's dispatch."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from aresdsm import integrity
from aresdsm.config import Configuration, ServerInfo
from aresdsm.protocol import abd
from aresdsm.protocol.server_core import ServerCore
from aresdsm.storage.base import Record, ValueRef
from aresdsm.storage.memory import apply_batch
from aresdsm.storage.values import LocalServer, resolve
from aresdsm.tags import TAG0, Tag
from aresdsm.wire import Blob
from aresdsm.wire.messages import (
    Ack,
    DataReply,
    ErrorReply,
    GetStats,
    Ping,
    Pong,
    QueryData,
    QueryTag,
    Stats,
    TagReply,
)

CFG = Configuration(
    "c0", (ServerInfo("s1", "h:1"), ServerInfo("s2", "h:2"), ServerInfo("s3", "h:3"))
)


def core() -> ServerCore:
    c = ServerCore("s1")
    c.install_config(CFG)
    return c


def test_initial_register_is_tag0_and_empty() -> None:
    c = core()
    assert c.handle(QueryTag("g", "c0", "k"))[0] == TagReply(TAG0)
    assert c.handle(QueryData("g", "c0", "k"))[0] == DataReply(
        TAG0, Blob(b""), None, integrity.EMPTY_DIGEST
    )


def test_put_data_stores_only_newer_tags() -> None:
    reg = abd.INITIAL
    new, ack = abd.on_put_data(reg, abd.put_request("g", "c0", "k", Tag(2, "a"), Blob(b"v2")))
    assert ack == Ack() and new == abd.Register(Tag(2, "a"), Blob(b"v2"), integrity.digest(b"v2"))
    older, ack = abd.on_put_data(new, abd.put_request("g", "c0", "k", Tag(1, "z"), Blob(b"v1")))
    assert older is None and ack == Ack()  # acknowledged, not applied
    same, _ = abd.on_put_data(new, abd.put_request("g", "c0", "k", Tag(2, "a"), Blob(b"v2")))
    assert same is None  # duplicates are harmless


@given(st.lists(st.tuples(st.integers(0, 5), st.sampled_from("abc")), max_size=30))
def test_server_tags_never_decrease(puts: list[tuple[int, str]]) -> None:
    """docs/protocol.md §10 invariant 5, for any order of PUT_DATA."""
    c = core()
    last = TAG0
    for z, w in puts:
        c.handle(abd.put_request("g", "c0", "k", Tag(z, w), Blob(f"{z}{w}".encode())))
        reply, _ = c.handle(QueryTag("g", "c0", "k"))
        assert isinstance(reply, TagReply)
        assert reply.tag >= last
        last = reply.tag
    assert last == max([Tag(z, w) for z, w in puts], default=TAG0)


def test_state_is_keyed_by_group_configuration_and_object() -> None:
    c = core()
    c.handle(abd.put_request("g1", "c0", "k", Tag(1, "a"), Blob(b"x")))
    assert c.handle(QueryTag("g2", "c0", "k"))[0] == TagReply(TAG0)
    assert c.handle(QueryTag("g1", "c0", "other"))[0] == TagReply(TAG0)
    assert c.handle(QueryTag("g1", "c0", "k"))[0] == TagReply(Tag(1, "a"))


def test_unknown_configuration_and_non_member_are_refused_without_state() -> None:
    c = core()
    reply, writes = c.handle(abd.put_request("g", "nope", "k", Tag(1, "a"), Blob(b"x")))
    assert isinstance(reply, ErrorReply) and reply.code == "unknown-config" and not writes
    other = Configuration("c9", (ServerInfo("s7", "h:7"),))
    c.install_config(other)
    reply, writes = c.handle(QueryTag("g", "c9", "k"))
    assert isinstance(reply, ErrorReply) and reply.code == "not-member" and not writes
    assert not c.registers


def test_writes_to_persist_and_recovery() -> None:
    c = ServerCore("s1")
    records: dict[tuple[str, str, str, str], Record] = {}
    apply_batch(records, c.install_config(CFG))
    _, writes = c.handle(abd.put_request("g", "c0", "k", Tag(3, "w"), Blob(b"value")))
    assert len(writes) == 1
    apply_batch(records, writes)
    _, no_writes = c.handle(abd.put_request("g", "c0", "k", Tag(1, "w"), Blob(b"old")))
    assert no_writes == []
    again = ServerCore.recover("s1", list(records.values()))
    assert again.configs == {"c0": CFG}
    # the core keeps and answers a reference to the stored record, never the bytes (issue 12)
    reply, _ = again.handle(QueryData("g", "c0", "k"))
    assert isinstance(reply, DataReply) and reply.value == ValueRef(("abd", "g", "c0", "k"), 5)
    assert again.value_bytes_in_memory() == 0 and c.value_bytes_in_memory() == 0
    assert resolve(reply, LocalServer(again, records.values()).read) == DataReply(
        Tag(3, "w"), Blob(b"value"), None, integrity.digest(b"value")
    )


def test_ping_and_stats() -> None:
    c = core()
    assert c.handle(Ping(Blob(b"p")))[0] == Pong(Blob(b"p"))
    c.handle(abd.put_request("g", "c0", "k", Tag(1, "a"), Blob(b"abc")))
    st_reply, _ = c.handle(GetStats())
    assert isinstance(st_reply, Stats) and st_reply.objects == 1 and st_reply.stored_bytes == 3
