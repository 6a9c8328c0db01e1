"""The server side of key listing and LATEST_CONFIG (docs/protocol.md §2, §8.4, §8.5): ListKeys
answers keys only, by prefix and after a key, bounded by count; OBSOLETE once collected.
LATEST_CONFIG prefers the newest configuration by its position in the chain (epoch), not by its
id -- "c10-…" sorts before "c9-…" (issue 11, problem 5); successors have epochs above their
predecessor."""

from __future__ import annotations

from aresdsm.config import Configuration, ServerInfo
from aresdsm.protocol import abd
from aresdsm.protocol.server_core import MAX_KEYS_PAGE, ServerCore
from aresdsm.tags import Tag
from aresdsm.wire import Blob
from aresdsm.wire.messages import (
    Accept,
    Ballot,
    ErrorReply,
    Finalized,
    KeysReply,
    LatestConfig,
    ListKeys,
    NextEntry,
    NextReply,
    Obsolete,
    WriteConfig,
)

S = (ServerInfo("s1", "h:1"), ServerInfo("s2", "h:2"), ServerInfo("s3", "h:3"))
C0 = Configuration("c0", S)


def _core(keys: list[str]) -> ServerCore:
    core = ServerCore("s1")
    core.install_config(C0)
    for k in keys:
        core.handle(abd.put_request("cluster", "c0", k, Tag(1, "w"), Blob(b"value")))
    return core


def test_list_keys_by_prefix_after_and_limit_keys_only() -> None:
    keys = [f"a\x00k{i}" for i in range(5)] + ["b\x00x", "bb\x00y"]
    core = _core(keys)
    reply, writes = core.handle(ListKeys("cluster", "c0", "a\x00", "", 3))
    assert writes == [] and reply == KeysReply(("a\x00k0", "a\x00k1", "a\x00k2"), True)
    reply, _ = core.handle(ListKeys("cluster", "c0", "a\x00", "a\x00k2", 3))
    assert reply == KeysReply(("a\x00k3", "a\x00k4"), False)
    reply, _ = core.handle(ListKeys("cluster", "c0", "", "a\x01", 10))  # skip group a
    assert reply == KeysReply(("b\x00x", "bb\x00y"), False)
    reply, _ = core.handle(ListKeys("cluster", "c0", "b\x00", "", 10))
    assert reply == KeysReply(("b\x00x",), False)


def test_list_keys_is_bounded_and_refuses_what_it_must() -> None:
    core = _core([f"g\x00{i:06}" for i in range(MAX_KEYS_PAGE + 5)])
    reply, _ = core.handle(ListKeys("cluster", "c0", "", "", 10**9))
    assert isinstance(reply, KeysReply) and len(reply.keys) == MAX_KEYS_PAGE and reply.more
    reply, _ = core.handle(ListKeys("cluster", "nope", "", "", 10))
    assert isinstance(reply, ErrorReply) and reply.code == "unknown-config"
    c1 = Configuration("c1", S, epoch=1)
    core.handle(WriteConfig("cluster", "c0", NextEntry(c1, "F"), gc=True))
    reply, _ = core.handle(ListKeys("cluster", "c0", "", "", 10))
    assert reply == Obsolete(NextEntry(c1, "F"))


def test_latest_config_prefers_the_newest_by_epoch_not_by_id() -> None:
    core = ServerCore("s1")
    core.install_config(C0)
    c9 = Configuration("c9-aaaaaa", S, epoch=9)
    c10 = Configuration("c10-aaaaaa", S, epoch=10)
    for c in (c10, c9):  # "c10-…" < "c9-…": the old server chose c10's predecessor by name
        core.handle(Finalized("cluster", NextEntry(c, "F")))
    reply, _ = core.handle(LatestConfig("cluster"))
    assert reply == NextReply(NextEntry(c10, "F"))


def test_a_successor_must_have_an_epoch_above_its_predecessor() -> None:
    core = ServerCore("s1")
    core.install_config(C0)
    same = Configuration("c2", S, epoch=0)
    reply, writes = core.handle(WriteConfig("cluster", "c0", NextEntry(same, "P")))
    assert isinstance(reply, ErrorReply) and writes == []
    reply, writes = core.handle(Accept("cluster", "c0", Ballot(1, "p"), same))
    assert isinstance(reply, ErrorReply) and writes == []
    # with batch off one descriptor ends chains of different lengths: gaps are allowed
    reply, _ = core.handle(Accept("cluster", "c0", Ballot(1, "p"), Configuration("c1", S, epoch=2)))
    assert not isinstance(reply, ErrorReply)
