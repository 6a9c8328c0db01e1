"""Erasure coding and the TREAS rules (docs/protocol.md §4.2)."""

from __future__ import annotations

import asyncio
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aresdsm import integrity
from aresdsm.coding import DecodeError, ErasureCoder
from aresdsm.config import Configuration, ServerInfo
from aresdsm.errors import ConcurrencyExceeded
from aresdsm.protocol import treas
from aresdsm.protocol.server_core import ServerCore
from aresdsm.storage.values import LocalServer
from aresdsm.tags import TAG0, Tag
from aresdsm.wire import Blob
from aresdsm.wire.messages import ListEntry, ListReply, PutData, QueryList, QueryTag, TagReply


@pytest.mark.parametrize(("n", "k"), [(n, k) for n in range(1, 8) for k in range(1, n + 1)])
def test_any_k_elements_decode(n: int, k: int) -> None:
    coder = ErasureCoder(n=n, k=k)
    for value in (b"", b"x", bytes(range(256)) * 7):
        elements = coder.encode(value)
        assert len(elements) == n
        for subset in itertools.combinations(range(n), k):
            assert coder.decode({i: elements[i] for i in subset}) == value
        if k > 1:
            with pytest.raises(DecodeError):
                coder.decode({i: elements[i] for i in range(k - 1)})


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=5000), st.integers(1, 6), st.data())
def test_coding_round_trips(value: bytes, n: int, data: st.DataObject) -> None:
    k = data.draw(st.integers(1, n))
    coder = ErasureCoder(n=n, k=k)
    elements = coder.encode(value)
    subset = data.draw(st.permutations(range(n)))[:k]
    assert coder.decode({i: elements[i] for i in subset}) == value
    if k < n:  # elements are about |v|/k: the storage saving TREAS is for
        assert len(elements[0]) <= len(value) // k + 128


C = Configuration("c", tuple(ServerInfo(f"s{i}", f"h:{i}") for i in range(5)), "treas", 3, 1)


def put(tag: Tag, element: bytes = b"e") -> PutData:
    return treas.put_request("g", "c", "k", tag, element, integrity.digest(b"value"))


def test_list_keeps_at_most_delta_plus_one_elements_but_every_tag() -> None:
    st_ = treas.initial_state(C, 0)
    for z in range(1, 6):
        new, _ = treas.on_put_data(st_, put(Tag(z, "w")), C.delta)
        assert new is not None
        st_ = new
        assert sum(e.element is not None for e in st_) <= C.delta + 1  # §10.5
    assert [e.tag.z for e in st_] == [0, 1, 2, 3, 4, 5]  # ⊥ tags stay
    assert [e.element is not None for e in st_] == [False] * 4 + [True] * 2
    assert treas.on_query_tag(st_) == TagReply(Tag(5, "w"))
    dup, _ = treas.on_put_data(st_, put(Tag(3, "w")), C.delta)
    assert dup is None  # a duplicate (or retransmitted) put changes nothing


def test_state_survives_a_restart_and_each_put_writes_one_element() -> None:
    from aresdsm.storage.memory import apply_batch

    core = ServerCore("s0")
    records: dict[tuple[str, str, str, str], object] = {}
    apply_batch(records, core.install_config(C))  # type: ignore[arg-type]
    for z in range(1, 5):
        _, writes = core.handle(put(Tag(z, "w"), f"e{z}".encode()))
        with_data = [w for w in writes if getattr(w, "data", None) is not None]
        # the new element only, never the whole list again (the first put also persists the
        # initial entry, which was implicit until then)
        assert len(with_data) == (2 if z == 1 else 1)
        apply_batch(records, writes)  # type: ignore[arg-type]
    again = ServerCore.recover("s0", list(records.values()))  # type: ignore[arg-type]
    assert again.lists == core.lists
    assert [e.element is not None for e in again.lists[("g", "c", "k")]] == [
        False,
        False,
        False,
        True,
        True,
    ]


def lists_for(
    values: dict[Tag, bytes], holders: dict[Tag, list[int]]
) -> list[tuple[int, tuple[ListEntry, ...]]]:
    coder = treas.coder(C)
    enc = {t: coder.encode(v) for t, v in values.items()}
    out = []
    for i in range(C.quorum_size):
        entries = [
            ListEntry(
                t,
                Blob(enc[t][i]) if i in holders[t] else None,
                integrity.digest(enc[t][i]) if i in holders[t] else b"",
                integrity.digest(values[t]),
            )
            for t in sorted(values)
        ]
        out.append((i, tuple(entries)))
    return out


def test_decode_rule_picks_the_newest_tag_with_k_elements() -> None:
    values = {TAG0: b"", Tag(1, "a"): b"one", Tag(2, "b"): b"two"}
    # t2 is held with elements by 3 = k of the 4 repliers
    found = treas.newest_decodable(
        C,
        lists_for(values, {TAG0: [0, 1, 2, 3], Tag(1, "a"): [0, 1, 2, 3], Tag(2, "b"): [0, 1, 2]}),
    )
    assert found is not None and found[0] == Tag(2, "b") and bytes(found[1].data) == b"two"
    assert found[2] is False  # not every replier held it: the read must write back


def test_decode_rule_refuses_when_the_newest_tag_lacks_elements() -> None:
    values = {TAG0: b"", Tag(1, "a"): b"one", Tag(2, "b"): b"two"}
    # t2 occurs in 4 lists (T*) but with elements in only 2 (< k): overlapped more than δ writes
    lists = lists_for(values, {TAG0: [0, 1, 2, 3], Tag(1, "a"): [0, 1, 2, 3], Tag(2, "b"): [0, 1]})
    assert treas.newest_decodable(C, lists) is None
    # the test-only broken rule decodes garbage from fewer than k elements instead
    broken = treas.newest_decodable(C, lists, broken_decode_below_k=True)
    assert broken is not None and bytes(broken[1].data) != b"two"


def test_a_tag_seen_by_fewer_than_k_servers_is_ignored() -> None:
    values = {TAG0: b"", Tag(1, "a"): b"one", Tag(9, "z"): b"in flight"}
    lists = lists_for(values, {TAG0: [0, 1, 2, 3], Tag(1, "a"): [0, 1, 2, 3], Tag(9, "z"): [0]})
    lists = [(i, tuple(e for e in st_ if e.tag != Tag(9, "z") or i == 0)) for i, st_ in lists]
    found = treas.newest_decodable(C, lists)
    assert found is not None and found[0] == Tag(1, "a") and bytes(found[1].data) == b"one"


class CoreChannel:
    def __init__(self) -> None:
        self.cores = [LocalServer(ServerCore(s.id)) for s in C.servers]
        for core in self.cores:
            core.install_config(C)
        self.down: set[int] = set()

    async def round(self, c, request, *, expect, phase, need=None, accept=None):  # type: ignore[no-untyped-def]
        out = []
        for i, s in enumerate(c.servers):
            if i in self.down:
                continue
            reply, _ = self.cores[i].handle(request(i, s) if callable(request) else request)
            if isinstance(reply, expect) and (accept is None or accept(reply)):
                out.append((s, reply))
            if len(out) == (need or c.quorum_size):
                return out
        raise AssertionError("no quorum")


def test_client_put_and_get_with_a_server_down() -> None:
    ch = CoreChannel()

    async def go() -> None:
        ch.down = {4}
        await treas.put_data(ch, C, "g", "k", tag=Tag(1, "w"), value=Blob(b"hello" * 1000))
        ch.down = {0}
        tag, value, unanimous, nxt, _ = await treas.get_data(ch, C, "g", "k")
        assert tag == Tag(1, "w") and bytes(value.data) == b"hello" * 1000
        assert not unanimous and nxt is None  # s4 missed the put: a read must write back
        assert (await treas.get_tag(ch, C, "g", "k"))[0] == Tag(1, "w")
        # each server stores about |v|/k bytes, not |v|
        reply, _ = ch.cores[1].handle(QueryList("g", "c", "k"))
        assert isinstance(reply, ListReply)
        element = reply.entries[-1].element
        assert element is not None and len(element) < 5000 // 2

    asyncio.run(go())


def test_reads_that_overlap_too_many_writes_fail_naming_delta() -> None:
    ch = CoreChannel()
    coder = treas.coder(C)
    # every server holds tags 1..3 but each newest element on 2 servers only: undecodable
    for z in range(1, 4):
        elements = coder.encode(f"v{z}".encode())
        for i in range(5):
            ch.cores[i].handle(
                treas.put_request(
                    "g", "c", "k", Tag(z, "w"), elements[i], integrity.digest(f"v{z}".encode())
                )
            )
    # drop elements so the newest tag (3) has elements on fewer than k servers
    for i in (0, 1, 2):
        skey = ("g", "c", "k")
        ch.cores[i].core.lists[skey] = tuple(
            ListEntry(e.tag, None, b"", e.value_digest) if e.tag.z == 3 else e
            for e in ch.cores[i].lists[skey]
        )

    async def go() -> None:
        with pytest.raises(ConcurrencyExceeded, match="delta=1"):
            await treas.get_data(ch, C, "g", "k")

    asyncio.run(go())
    assert ch.cores[0].handle(QueryTag("g", "c", "k"))[0] == TagReply(Tag(3, "w"))
