"""Paged group reads (docs/protocol.md §8.4): pages bounded by count and by bytes, in key order; the
chain enumeration used with ``batch`` off; garbage collection on F entries (§8.3)."""

from __future__ import annotations

from aresdsm.config import Configuration, ServerInfo
from aresdsm.protocol import abd
from aresdsm.protocol.server_core import ServerCore
from aresdsm.tags import Tag
from aresdsm.wire import Blob
from aresdsm.wire.messages import (
    ChainsReply,
    GetGroup,
    GroupReply,
    ListChains,
    NextEntry,
    Obsolete,
    WriteConfig,
)

CFG = Configuration(
    "c0", (ServerInfo("s1", "h:1"), ServerInfo("s2", "h:2"), ServerInfo("s3", "h:3"))
)


def _core_with(objects: dict[str, bytes], group: str = "g") -> ServerCore:
    core = ServerCore("s1")
    core.install_config(CFG)
    for key, value in objects.items():
        core.handle(abd.put_request(group, "c0", key, Tag(1, "w"), Blob(value)))
    return core


def _all_pages(core: ServerCore, *, limit: int, limit_bytes: int) -> list[list[str]]:
    pages: list[list[str]] = []
    after = ""
    while True:
        reply, _ = core.handle(GetGroup("g", "c0", after, limit, None, limit_bytes))
        assert isinstance(reply, GroupReply)
        keys = [o.key for o in reply.objects]
        assert keys == sorted(keys) and all(k > after for k in keys)
        pages.append(keys)
        if not reply.more:
            return pages
        after = keys[-1]


def test_pages_are_bounded_by_count_and_cover_every_key_once() -> None:
    keys = [f"k{i:03}" for i in range(25)]
    core = _core_with({k: b"x" for k in keys})
    pages = _all_pages(core, limit=10, limit_bytes=1 << 20)
    assert [len(p) for p in pages] == [10, 10, 5]
    assert [k for p in pages for k in p] == keys


def test_pages_are_bounded_by_bytes_but_hold_at_least_one_object() -> None:
    core = _core_with({f"k{i}": b"v" * 1000 for i in range(6)} | {"big": b"b" * 5000})
    pages = _all_pages(core, limit=100, limit_bytes=2500)
    assert pages[0] == ["big"]  # larger than the budget alone, still sent
    assert [len(p) for p in pages[1:]] == [2, 2, 2]  # a third 1000 bytes would cross 2500


def test_list_chains_by_prefix_in_order_and_paged() -> None:
    core = _core_with({"a": b"1"}, group="g\x00a")
    for key in ("c", "b"):
        core.handle(abd.put_request(f"g\x00{key}", "c0", key, Tag(1, "w"), Blob(b"1")))
    core.handle(abd.put_request("other", "c0", "x", Tag(1, "w"), Blob(b"1")))
    reply, _ = core.handle(ListChains("g\x00", "", 2))
    assert reply == ChainsReply(("g\x00a", "g\x00b"), True)
    reply, _ = core.handle(ListChains("g\x00", "g\x00b", 2))
    assert reply == ChainsReply(("g\x00c",), False)


def _obsolete_after(core: ServerCore) -> bool:
    reply, _ = core.handle(GetGroup("g", "c0", "", 10))
    return isinstance(reply, Obsolete)


def test_an_f_entry_stored_without_gc_is_collected_by_a_later_gc_write() -> None:
    """§8.3: a discovery write-back may store (c1, F) without gc; finalize_everywhere's
    WriteConfig(F, gc) later must still collect (it changes nothing else)."""
    core = _core_with({"a": b"1"})
    c1 = Configuration("c1", (ServerInfo("s4", "h:4"),), epoch=1)
    _, writes = core.handle(WriteConfig("g", "c0", NextEntry(c1, "F"), gc=False))
    assert not _obsolete_after(core) and len(writes) == 1
    _, writes = core.handle(WriteConfig("g", "c0", NextEntry(c1, "F"), gc=True))
    assert _obsolete_after(core) and writes  # deleted in this durable step


def test_set_next_and_get_never_collects_and_reports_the_state() -> None:
    """SET_NEXT_AND_GET on a server holding F but not yet collected answers with the state
    (a P entry never downgrades F, and the read must not empty what it reports)."""
    core = _core_with({"a": b"1"})
    c1 = Configuration("c1", (ServerInfo("s4", "h:4"),), epoch=1)
    core.handle(WriteConfig("g", "c0", NextEntry(c1, "F"), gc=False))
    reply, _ = core.handle(GetGroup("g", "c0", "", 10, NextEntry(c1, "P")))
    assert isinstance(reply, GroupReply) and [o.key for o in reply.objects] == ["a"]
    assert reply.next == NextEntry(c1, "F")
