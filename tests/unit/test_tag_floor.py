"""The server's tag floor (docs/protocol.md §8.4 "Deleted objects"): update-config drops
tombstones and sets, per configuration, a floor F; get-tag then reports at least (F, "") for
every object, so a writer's tag is above every dropped tombstone. Data replies are unchanged (an
object the server does not hold is still the initial pair: absent to a reader). The floor is
persisted before the reply, never decreases, survives a restart and goes with the
configuration's garbage collection."""

from __future__ import annotations

from aresdsm import integrity
from aresdsm.config import Configuration, ServerInfo
from aresdsm.protocol import abd
from aresdsm.protocol.server_core import FLOOR_NS, ServerCore
from aresdsm.storage.base import Delete, Record
from aresdsm.storage.memory import apply_batch
from aresdsm.storage.values import LocalServer
from aresdsm.tags import TAG0, Tag, tombstone_writer
from aresdsm.wire import Blob
from aresdsm.wire.messages import (
    Ack,
    DataReply,
    ErrorReply,
    GetGroup,
    GroupReply,
    ListReply,
    NextEntry,
    PutBatch,
    QueryData,
    QueryList,
    QueryTag,
    TagReply,
    WriteConfig,
)

SERVERS = (ServerInfo("s1", "h:1"), ServerInfo("s2", "h:2"), ServerInfo("s3", "h:3"))
CFG = Configuration("c0", SERVERS)
TREAS = Configuration("t0", SERVERS, dap="treas", k=2, delta=1)
NEXT = Configuration("c1", SERVERS, epoch=1)


def _core(records: dict[tuple[str, str, str, str], Record]) -> ServerCore:
    c = ServerCore("s1")
    apply_batch(records, c.install_config(CFG))
    apply_batch(records, c.install_config(TREAS))
    return c


def test_floor_is_persisted_never_decreases_and_survives_a_restart() -> None:
    records: dict[tuple[str, str, str, str], Record] = {}
    c = _core(records)
    reply, writes = c.handle(PutBatch("g", "c0", (), floor=5))
    assert isinstance(reply, Ack)
    assert [w.ns for w in writes if isinstance(w, Record)] == [FLOOR_NS]  # persisted with it
    apply_batch(records, writes)
    reply, writes = c.handle(PutBatch("g", "c0", (), floor=3))  # lower: acknowledged, ignored
    assert isinstance(reply, Ack) and writes == []
    assert c.handle(QueryTag("g", "c0", "k"))[0] == TagReply(Tag(5, ""))
    again = ServerCore.recover("s1", list(records.values()))
    assert again.handle(QueryTag("g", "c0", "k"))[0] == TagReply(Tag(5, ""))
    _, writes = again.handle(PutBatch("g", "c0", (), floor=9))
    apply_batch(records, writes)
    assert ServerCore.recover("s1", list(records.values())).floors == {("g", "c0"): 9}
    # per (group, configuration): another group has no floor
    assert again.handle(QueryTag("h", "c0", "k"))[0] == TagReply(TAG0)


def test_get_tag_reports_the_floor_data_replies_stay_absent() -> None:
    c = LocalServer(_core({}))
    c.handle(abd.put_request("g", "c0", "low", Tag(3, "w"), Blob(b"v3")))
    c.handle(abd.put_request("g", "c0", "high", Tag(8, "w"), Blob(b"v8")))
    c.handle(PutBatch("g", "c0", (), floor=5))
    # absent: get-tag at the floor, get-data the initial pair (a reader sees "absent")
    assert c.handle(QueryTag("g", "c0", "gone"))[0] == TagReply(Tag(5, ""))
    assert c.handle(QueryData("g", "c0", "gone"))[0] == DataReply(
        TAG0, Blob(b""), None, integrity.EMPTY_DIGEST
    )
    # held below the floor: get-tag at the floor, get-data the object's own pair (a reader must
    # still return it: a floor tag in data replies would outrank it)
    assert c.handle(QueryTag("g", "c0", "low"))[0] == TagReply(Tag(5, ""))
    assert c.handle(QueryData("g", "c0", "low"))[0] == DataReply(
        Tag(3, "w"), Blob(b"v3"), None, integrity.digest(b"v3")
    )
    assert c.handle(QueryTag("g", "c0", "high"))[0] == TagReply(Tag(8, "w"))
    # a write above the floor is applied as usual
    c.handle(abd.put_request("g", "c0", "gone", Tag(6, "x"), Blob(b"new")))
    assert c.handle(QueryTag("g", "c0", "gone"))[0] == TagReply(Tag(6, "x"))


def test_treas_get_tag_reports_the_floor() -> None:
    c = _core({})
    c.handle(PutBatch("g", "t0", (), floor=4))
    assert c.handle(QueryTag("g", "t0", "gone"))[0] == TagReply(Tag(4, ""))
    reply = c.handle(QueryList("g", "t0", "gone"))[0]
    assert isinstance(reply, ListReply) and [e.tag for e in reply.entries] == [TAG0]


def test_group_reads_report_the_floor_and_held_objects_only() -> None:
    c = _core({})
    c.handle(abd.put_request("g", "c0", "a", Tag(1, "w"), Blob(b"v")))
    c.handle(PutBatch("g", "c0", (), floor=7))
    reply = c.handle(GetGroup("g", "c0", "", 100))[0]
    assert isinstance(reply, GroupReply)
    assert reply.floor == 7 and [o.key for o in reply.objects] == ["a"]


def test_floor_goes_with_garbage_collection() -> None:
    records: dict[tuple[str, str, str, str], Record] = {}
    c = _core(records)
    apply_batch(records, c.install_config(NEXT))
    apply_batch(records, c.handle(PutBatch("g", "c0", (), floor=7))[1])
    _, writes = c.handle(WriteConfig("g", "c0", NextEntry(NEXT, "F"), gc=True))
    assert Delete(FLOOR_NS, "g", "c0") in writes
    apply_batch(records, writes)
    assert not any(k[0] == FLOOR_NS for k in records)
    assert ("g", "c0") not in c.floors


def test_bad_floor_is_refused() -> None:
    c = _core({})
    reply, writes = c.handle(PutBatch("g", "c0", (), floor=-1))
    assert isinstance(reply, ErrorReply) and reply.code == "bad-request" and writes == []
    reply, writes = c.handle(PutBatch("g", "c0", (), floor=2**62))
    assert isinstance(reply, ErrorReply) and writes == []
    assert c.floors == {}


def test_a_tombstone_write_is_accepted() -> None:
    """A tombstone's writer id passes the server's checks (a NUL mark, refused in writer ids,
    once made every delete fail with bad-request)."""
    c = _core({})
    tag = Tag(2, tombstone_writer("a~x.1"))
    reply, writes = c.handle(abd.put_request("g", "c0", "k", tag, Blob(b"")))
    assert isinstance(reply, Ack) and writes
    assert c.handle(QueryTag("g", "c0", "k"))[0] == TagReply(tag)
    assert tag.deleted
