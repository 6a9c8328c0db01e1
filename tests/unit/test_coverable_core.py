"""The coverable register's server rule in the pure ServerCore (docs/protocol.md §9.1)."""

from __future__ import annotations

from aresdsm.config import Configuration, ServerInfo
from aresdsm.protocol import abd
from aresdsm.protocol.server_core import ServerCore, ServerSwitches
from aresdsm.storage.base import Delete, Record, ValueRef
from aresdsm.storage.values import LocalServer, refs_in
from aresdsm.tags import TAG0, Tag
from aresdsm.wire.blob import Blob
from aresdsm.wire.messages import (
    CvrAccept,
    CvrAccepted,
    CvrBallot,
    CvrInject,
    CvrNack,
    CvrPrepare,
    CvrPromise,
    ErrorReply,
    GetGroup,
    GroupReply,
    NextEntry,
    Obsolete,
    WriteConfig,
)

S = tuple(ServerInfo(f"s{i}", f"10.0.0.{i}:1") for i in range(3))
C0 = Configuration("c0", S)
C1 = Configuration("c1", S, epoch=1)
G, K = "cluster", "g\x00k"


def core(switches: ServerSwitches | None = None) -> LocalServer:
    """A core over an in-memory disk: replies come with their values read."""
    c = LocalServer(ServerCore("s0", switches=switches or ServerSwitches()))
    c.install_config(C0)
    return c


def b(rnd: int, who: str = "a", epoch: int = 0) -> CvrBallot:
    return CvrBallot(epoch, rnd, who)


def prepare(level: int, ballot: CvrBallot) -> CvrPrepare:
    return CvrPrepare(G, "c0", K, level, ballot)


def accept(level: int, ballot: CvrBallot, writer: str, value: bytes) -> CvrAccept:
    return CvrAccept(G, "c0", K, level, ballot, Tag(level, writer), Blob(value))


def test_promise_accept_and_report_accepted_value() -> None:
    s = core()
    reply, writes = s.handle(prepare(1, b(1)))
    assert reply == CvrPromise(b(1), TAG0, None) and writes
    reply, writes = s.handle(accept(1, b(1), "a.1", b"A"))
    assert isinstance(reply, CvrAccepted) and writes
    reply, _ = s.handle(prepare(1, b(2, "b")))
    assert isinstance(reply, CvrPromise) and reply.accepted is not None
    assert (reply.accepted.tag, bytes(reply.accepted.value.data)) == (Tag(1, "a.1"), b"A")
    # the accepted value is a record of its own; the core keeps a reference to it (issue 12)
    (level,) = s.cvr[(G, "c0", K)].levels
    assert level.accepted is not None
    assert level.accepted.value == ValueRef(("cvrv", G, "c0", f"{K}\x001"), 1)
    assert s.core.value_bytes_in_memory() == 0
    raw, _ = s.core.handle(prepare(1, b(3, "c")))
    assert [ref.record for ref in refs_in(raw)] == [("cvrv", G, "c0", f"{K}\x001")]


def test_lower_ballots_are_refused() -> None:
    s = core()
    s.handle(prepare(1, b(2, "b")))
    assert isinstance(s.handle(prepare(1, b(1)))[0], CvrNack)
    assert isinstance(s.handle(prepare(1, b(2, "b")))[0], CvrNack)  # not strictly higher
    reply, writes = s.handle(accept(1, b(1), "a.1", b"A"))
    assert reply == CvrNack(b(2, "b"), TAG0) and not writes


def test_a_committed_level_is_refused_and_forgotten() -> None:
    s = core()
    s.handle(prepare(1, b(1)))
    s.handle(accept(1, b(1), "a.1", b"A"))
    _, writes = s.handle(abd.put_request(G, "c0", K, Tag(1, "a.1"), Blob(b"A")))
    assert (G, "c0", K) not in s.cvr  # the put dropped the decided level (and its value)
    assert any(isinstance(w, Record) and w.ns == "cvr" for w in writes)
    assert Delete("cvrv", G, "c0", f"{K}\x001") in writes  # and the record of its value
    assert ("cvrv", G, "c0", f"{K}\x001") not in s.records
    reply, _ = s.handle(prepare(1, b(5, "z")))
    assert reply == CvrNack(None, Tag(1, "a.1"))
    reply, _ = s.handle(prepare(2, b(1)))  # the next level opens; level 1 is pruned
    assert isinstance(reply, CvrPromise) and reply.committed == Tag(1, "a.1")
    assert [lv.level for lv in s.cvr[(G, "c0", K)].levels] == [2]


def test_state_survives_a_restart() -> None:
    s = core()
    log: list[Record] = []
    for req in (prepare(1, b(3)), accept(1, b(3), "a.1", b"A"), prepare(1, b(4, "b"))):
        _, writes = s.handle(req)
        log += [w for w in writes if isinstance(w, Record)]
    again = ServerCore.recover("s0", [*s_cfg_records(s), *dedup(log)])
    assert again.cvr == s.cvr and again.value_bytes_in_memory() == 0
    assert isinstance(again.handle(accept(1, b(3), "a.1", b"A"))[0], CvrNack)
    reply, _ = LocalServer(again, dedup(log)).handle(prepare(1, b(9, "c")))
    assert isinstance(reply, CvrPromise) and reply.accepted is not None
    assert bytes(reply.accepted.value.data) == b"A"


def s_cfg_records(s: object) -> list[Record]:
    return [w for w in ServerCore("s0").install_config(C0) if isinstance(w, Record)]


def dedup(log: list[Record]) -> list[Record]:
    last: dict[tuple[str, str, str, str], Record] = {}
    for r in log:
        last[r.record_key] = r
    return list(last.values())


def test_freeze_once_a_successor_is_known() -> None:
    """After nextC is stored for c0, no promise or accept for c0's levels (§9.1 freeze)."""
    s = core()
    s.handle(prepare(1, b(1)))
    s.handle(WriteConfig(G, "c0", NextEntry(C1, "P"), gc=False))
    reply, writes = s.handle(accept(1, b(1), "a.1", b"A"))
    assert isinstance(reply, CvrNack) and reply.next == NextEntry(C1, "P") and not writes
    assert isinstance(s.handle(prepare(1, b(9)))[0], CvrNack)
    broken = core(ServerSwitches(broken_cvr_no_freeze=True))
    broken.handle(prepare(1, b(1)))
    broken.handle(WriteConfig(G, "c0", NextEntry(C1, "P"), gc=False))
    reply, _ = broken.handle(accept(1, b(1), "a.1", b"A"))
    assert isinstance(reply, CvrAccepted) and reply.next == NextEntry(C1, "P")


def test_set_next_and_get_reports_the_open_level() -> None:
    s = core()
    s.handle(prepare(1, b(1)))
    s.handle(accept(1, b(1), "a.1", b"A"))
    reply, _ = s.handle(GetGroup(G, "c0", "", 10, NextEntry(C1, "P")))
    assert isinstance(reply, GroupReply)
    (st,) = reply.objects
    assert st.key == K and st.tag == TAG0 and st.cvr is not None
    assert (st.cvr.level, st.cvr.tag) == (1, Tag(1, "a.1"))


def test_inject_keeps_the_higher_ballot_and_loses_to_local_ones() -> None:
    s = LocalServer(ServerCore("s0"))
    s.install_config(C1)

    def inject(ballot: CvrBallot, writer: str) -> None:
        s.handle(CvrInject(G, "c1", K, 1, ballot, Tag(1, writer), Blob(writer.encode())))

    inject(b(2, "x"), "x.1")
    inject(b(1, "y"), "y.1")  # lower: ignored
    reply, _ = s.handle(CvrPrepare(G, "c1", K, 1, b(1, "p", epoch=1)))
    assert isinstance(reply, CvrPromise) and reply.accepted is not None
    assert reply.accepted.tag == Tag(1, "x.1")
    s.handle(CvrAccept(G, "c1", K, 1, b(1, "p", epoch=1), Tag(1, "x.1"), Blob(b"x.1")))
    inject(b(7, "z"), "z.1")  # an older configuration's ballot never beats a local one
    reply, _ = s.handle(CvrPrepare(G, "c1", K, 1, b(2, "p", epoch=1)))
    assert isinstance(reply, CvrPromise) and reply.accepted is not None
    assert reply.accepted.tag == Tag(1, "x.1")


def test_gc_deletes_coverable_state() -> None:
    s = core()
    s.handle(prepare(1, b(1)))
    s.handle(WriteConfig(G, "c0", NextEntry(C1, "F"), gc=True))
    assert not s.cvr
    assert isinstance(s.handle(prepare(1, b(2)))[0], Obsolete)


def test_bad_input_is_refused_without_state() -> None:
    s = core()
    for req in (
        CvrPrepare(G, "c0", K, 0, b(1)),
        CvrPrepare(G, "c0", K, 2**63, b(1)),
        CvrPrepare(G, "c0", "a\x00b\x00c", 1, b(1)),
        CvrAccept(G, "c0", K, 2, b(1), Tag(1, "a"), Blob(b"")),  # tag not of its level
        CvrPrepare(G, "nope", K, 1, b(1)),
    ):
        reply, writes = s.handle(req)
        assert isinstance(reply, ErrorReply) and not writes, req
    for level in range(1, 40):  # open levels per object are bounded
        reply, _ = s.handle(prepare(level, b(1)))
    assert isinstance(reply, ErrorReply)
    assert len(s.cvr[(G, "c0", K)].levels) == 16
