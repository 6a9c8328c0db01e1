"""Paxos acceptor rules and proposer (docs/protocol.md §5), named after the rules they check."""

from __future__ import annotations

import asyncio
import itertools
import random

from hypothesis import given
from hypothesis import strategies as st

from aresdsm.config import Configuration, ServerInfo
from aresdsm.protocol import paxos
from aresdsm.wire.messages import Accept, Accepted, Ballot, Nack, Prepare, Promise

C = Configuration("c0", tuple(ServerInfo(f"s{i}", f"h:{i}") for i in range(3)))
D1 = Configuration("d1", (ServerInfo("s9", "h:9"),))
D2 = Configuration("d2", (ServerInfo("s8", "h:8"),))


def b(r: int, p: str = "p") -> Ballot:
    return Ballot(r, p)


def test_promise_only_higher_ballots() -> None:
    st1, reply = paxos.on_prepare(paxos.INITIAL, Prepare("g", "c0", b(1)))
    assert st1 is not None and reply == Promise(b(1), None, None)
    same, reply = paxos.on_prepare(st1, Prepare("g", "c0", b(1)))
    assert same is None and reply == Nack(b(1))
    lower, reply = paxos.on_prepare(st1, Prepare("g", "c0", b(0, "z")))
    assert lower is None and isinstance(reply, Nack)


def test_accept_at_or_above_promise_and_report_it_in_later_promises() -> None:
    st1, _ = paxos.on_prepare(paxos.INITIAL, Prepare("g", "c0", b(2)))
    assert st1 is not None
    refused, reply = paxos.on_accept(st1, Accept("g", "c0", b(1), D1))
    assert refused is None and reply == Nack(b(2))
    st2, reply = paxos.on_accept(st1, Accept("g", "c0", b(2), D1))
    assert st2 is not None and reply == Accepted(b(2))
    _st3, reply = paxos.on_prepare(st2, Prepare("g", "c0", b(3)))
    assert reply == Promise(b(3), b(2), D1)


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 4), st.sampled_from("pq")), max_size=25))
def test_promised_never_decreases_and_covers_accepted(ops: list[tuple[bool, int, str]]) -> None:
    """docs/protocol.md §10 invariant 4."""
    s = paxos.INITIAL
    for is_prepare, r, who in ops:
        msg_b = Ballot(r, who)
        new: paxos.AcceptorState | None
        if is_prepare:
            new, _ = paxos.on_prepare(s, Prepare("g", "c0", msg_b))
        else:
            new, _ = paxos.on_accept(s, Accept("g", "c0", msg_b, D1))
        if new is not None:
            assert s.promised is None or (new.promised is not None and new.promised >= s.promised)
            s = new
        if s.accepted_ballot is not None:
            assert s.promised is not None and s.promised >= s.accepted_ballot


class AcceptorChannel:
    """Three in-memory acceptors; each message is delivered with probability ``p``; concurrency
    between proposers comes from interleaving at every await."""

    def __init__(self, rng: random.Random) -> None:
        self.state = {s.id: paxos.INITIAL for s in C.servers}
        self.rng = rng

    async def round(self, c, request, *, expect, phase, need=None):  # type: ignore[no-untyped-def]
        need = c.majority if need is None else need
        out = []
        order = list(c.servers)
        self.rng.shuffle(order)
        for s in order:
            await asyncio.sleep(0)
            if isinstance(request, Prepare):
                new, reply = paxos.on_prepare(self.state[s.id], request)
            else:
                new, reply = paxos.on_accept(self.state[s.id], request)
            if new is not None:
                self.state[s.id] = new
            out.append((s, reply))
            if len(out) == need:
                return out
        raise AssertionError("unreachable")


def test_competing_proposers_decide_one_value() -> None:
    """Every proposer of an instance returns the same decided configuration (§7.1 prefix)."""
    for seed in range(200):
        rng = random.Random(seed)
        ch = AcceptorChannel(rng)

        async def backoff(attempt: int, rng: random.Random = rng) -> None:
            for _ in range(rng.randint(0, 3 * attempt)):
                await asyncio.sleep(0)

        async def go(ch: AcceptorChannel = ch, backoff: object = backoff) -> list[Configuration]:
            return list(
                await asyncio.gather(
                    *(
                        paxos.propose(ch, C, group="g", value=v, proposer=name, backoff=backoff)  # type: ignore[arg-type]
                        for v, name in zip(
                            [D1, D2, D1], itertools.cycle(["a", "b", "c"]), strict=False
                        )
                    )
                )
            )

        decided = asyncio.run(go())
        assert len({d.id for d in decided}) == 1, (seed, decided)
