"""Single-decree Paxos, one instance per (group, configuration) (docs/protocol.md §5).

The value decided by the instance of ``(g, c)`` is the successor configuration of ``c`` in group
``g``; this is what makes every configuration have at most one successor (docs/protocol.md §7.1,
§10 invariant 2). Acceptors are the servers of ``c``; quorums are always majorities of ``c``'s
servers, whatever ``c``'s DAP is.

Acceptor (pure, :func:`on_prepare` / :func:`on_accept`): the promised ballot never decreases and
is always >= the accepted ballot (§10 invariant 4). The server persists the new acceptor state
before any reply leaves (server core + persist-before-reply), so a promise survives a restart.

Proposer (:func:`propose`): phase 1 with a majority of PROMISEs, adopt the value of the highest
accepted ballot if any, phase 2 with a majority of ACCEPTEDs. On a NACK or an unavailable quorum
it picks a higher round, backs off (the injected ``backoff`` awaitable: randomized in real life,
seeded in the simulator) and retries, at most ``max_attempts`` times, then raises
:class:`ConsensusFailed`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from ..config import Configuration
from ..errors import ConsensusFailed
from ..limits import MAX_COUNTER
from ..wire.messages import Accept, Accepted, Ballot, Nack, Prepare, Promise
from .channel import Channel

NS = "paxos"


class AcceptorState(msgspec.Struct, frozen=True, array_like=True):
    promised: Ballot | None = None
    accepted_ballot: Ballot | None = None
    accepted_value: Configuration | None = None


INITIAL = AcceptorState()

# -- acceptor rules (pure) ----------------------------------------------------------------------


def on_prepare(st: AcceptorState, msg: Prepare) -> tuple[AcceptorState | None, Promise | Nack]:
    """PREPARE(b): if b > promised, promise b (the new state must be durable before the reply)."""
    if st.promised is None or msg.ballot > st.promised:
        new = AcceptorState(msg.ballot, st.accepted_ballot, st.accepted_value)
        return new, Promise(msg.ballot, st.accepted_ballot, st.accepted_value)
    return None, Nack(st.promised)


def on_accept(st: AcceptorState, msg: Accept) -> tuple[AcceptorState | None, Accepted | Nack]:
    """ACCEPT(b, v): if b >= promised, accept (promised = accepted_ballot = b, value = v)."""
    if st.promised is None or msg.ballot >= st.promised:
        new = AcceptorState(msg.ballot, msg.ballot, msg.value)
        return (None if new == st else new), Accepted(msg.ballot)
    return None, Nack(st.promised)


# -- proposer -----------------------------------------------------------------------------------

Backoff = Callable[[int], Awaitable[None]]
"""Awaited before retry number ``attempt`` (1-based); sleeps a randomized, growing time."""


async def propose(
    net: Channel,
    c: Configuration,
    *,
    group: str,
    value: Configuration,
    proposer: str,
    backoff: Backoff,
    max_attempts: int = 8,
    broken_own_value: bool = False,
) -> Configuration:
    """Run the instance (group, c) until a value is decided; return the decided value."""
    rnd = 0
    last_error = "no attempt"
    for attempt in range(1, max_attempts + 1):
        if rnd + 1 >= MAX_COUNTER:  # no acceptor would take it: say why
            raise ConsensusFailed(
                f"consensus on the successor of {c.id} (group {group!r}): ballot rounds are "
                f"exhausted (an acceptor promised round {rnd}, the largest a server accepts; "
                "only an admin can send such a ballot)"
            )
        ballot = Ballot(rnd + 1, proposer)
        ok, promises, refusals = await _phase(
            net, c, Prepare(group, c.id, ballot), "consensus.prepare"
        )
        if ok:
            chosen = (
                value
                if broken_own_value  # test-only: not Paxos any more (§10.2 must catch it)
                else _adopt([p for p in promises if isinstance(p, Promise)], value)
            )
            ok, _, refusals = await _phase(
                net, c, Accept(group, c.id, ballot, chosen), "consensus.accept"
            )
            if ok:
                return chosen
        last_error = f"attempt {attempt}: outvoted by ballot {max(refusals)}"
        rnd = max([ballot.round, *(b.round for b in refusals)])
        if attempt < max_attempts:
            await backoff(attempt)
    raise ConsensusFailed(
        f"consensus on the successor of {c.id} (group {group!r}) not reached after "
        f"{max_attempts} attempts ({last_error})"
    )


def _adopt(promises: list[Promise], own: Configuration) -> Configuration:
    best: tuple[Ballot, Configuration] | None = None
    for p in promises:
        if p.accepted_ballot is None or p.accepted_value is None:
            continue
        if best is None or p.accepted_ballot > best[0]:
            best = (p.accepted_ballot, p.accepted_value)
    return own if best is None else best[1]


async def _phase(
    net: Channel, c: Configuration, request: Prepare | Accept, phase: str
) -> tuple[bool, list[Promise | Accepted], list[Ballot]]:
    """One phase on a majority of answers: (all positive?, positive answers, refusing ballots).

    A NACK is an answer too: the round completes on a majority of answers of either kind, and the
    phase succeeds only if none of them refused.
    """
    positive: type[Promise] | type[Accepted] = Promise if isinstance(request, Prepare) else Accepted
    either: Any = positive | Nack  # a refusal is an answer too
    replies = await net.round(c, request, expect=either, phase=phase, need=c.majority)
    nacks = [r.promised for _, r in replies if isinstance(r, Nack)]
    good = [r for _, r in replies if isinstance(r, Promise | Accepted)]
    return not nacks, good, nacks
