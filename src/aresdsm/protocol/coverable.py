"""The coverable register: a write that takes effect only on top of a given version
(docs/protocol.md §9.1).

``cvr_write(v, b)`` installs ``v`` as the successor of version ``b`` if ``b`` is the latest
version, else answers *stale* with the latest (tag, value). At most one write per base takes
effect -- that is consensus among the writers of one base, so an asynchronous crash-prone
implementation needs a third outcome, *conflict* (the write may or may not have taken effect:
:class:`~aresdsm.errors.CoverableConflict`), when it cannot decide in bounded time.

Design (§9.1): version ``z`` of an object -- its *level* -- is decided by a single-decree Paxos
instance per (chain, configuration, object, level) whose acceptors are the configuration's
servers; only a decided version is ever put into the DAP (ABD or TREAS state), so plain reads,
which only see DAP state, never return an undecided value. A coverable write of base ``b``:

1. ``CvrPrepare(level = b.z + 1, ballot)`` to a quorum; each answer carries the server's
   committed (DAP) tag. A committed tag at or above the level: the level is decided already --
   *stale* (answered with a read) unless this write's own accept may have been stored.
2. ``CvrAccept(level, ballot, tag, value)``: own ``(b.z + 1, writer)`` or, as Paxos requires, the
   value of the highest-ballot accept the promises reported (that write is completed and this
   one answers stale: its own tag can never be decided at this level any more).
3. The decided (tag, value) is put into the DAP like any write's phase 2 (following successors);
   then *ok*.

Reconfiguration: a server that stored a successor for configuration ``c`` refuses coverable
prepares and accepts for ``c`` (*freeze*), so no level is decided in ``c`` after the transfer's
SET_NEXT_AND_GET read a quorum; the read reports each object's highest accepted open level, and
the transfer injects that value into the successor as an accepted value at its old ballot
(ballots order by configuration epoch first, so the successor's own ballots beat it). A value
decided in ``c`` is the highest-ballot accept in any quorum (Paxos), so every transfer injects
it and the successor can only decide it again. A writer refused by the freeze completes the
reconfiguration (finish-pending) and runs the level again in the successor.

Coverable objects are written only with ``cvr_write``: a plain write's tag (same ``z`` as the base,
higher writer id) would sit between two agreed versions in the DAP's tag order.

*Fresh keys* (:func:`put_fresh`): level 1 of a key that only its creator ever writes on base
``TAG0`` -- a key named by a random id, such as a new block of a file (§9.2) -- has one proposer,
so its consensus is trivial: the creator puts ``(1, writer)`` straight into the DAP, one round,
the value sent once (a Paxos accept would carry the whole value to every server, TREAS ones
included, and the DAP put would send it again). Every later level is decided as above: its
prepare finds the committed version ``(1, writer)`` like any other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from ..errors import (
    ConfigurationError,
    CoverableConflict,
    OperationError,
    OperationTimeout,
    QuorumUnavailable,
)
from ..tags import TAG0, Tag
from ..wire.blob import Blob
from ..wire.messages import (
    CvrAccept,
    CvrAccepted,
    CvrBallot,
    CvrInject,
    CvrNack,
    CvrOpen,
    CvrPrepare,
    CvrPromise,
    ErrorReply,
    NextEntry,
    Reply,
)
from . import ares, paxos
from .channel import Channel, ConfigurationObsolete
from .ops import DEFAULT_SWITCHES, OpSwitches

NS = "cvr"
MAX_OPEN_LEVELS = 16
"""Open levels one server holds for one object at most (levels above its committed version; a
server that missed commits may hold a few)."""
MAX_ATTEMPTS = 8
_PREPARED: Any = CvrPromise | CvrNack  # a refusal is an answer too (as in paxos._phase)
_ACCEPTED: Any = CvrAccepted | CvrNack


class LevelState(msgspec.Struct, frozen=True, array_like=True):
    """The Paxos acceptor of one level of one object."""

    level: int
    promised: CvrBallot | None = None
    accepted: CvrOpen | None = None


class KeyState(msgspec.Struct, frozen=True, array_like=True):
    """One object's open levels on one server, by level (persisted as one record)."""

    levels: tuple[LevelState, ...] = ()


EMPTY = KeyState()


def _enc_hook(obj: Any) -> Any:
    if isinstance(obj, Blob):
        return bytes(obj.data)
    raise NotImplementedError(f"cannot encode {type(obj).__name__}")


def _dec_hook(kind: type, obj: Any) -> Any:
    if kind is Blob and isinstance(obj, bytes):
        return Blob(obj)
    raise NotImplementedError(f"cannot decode {kind.__name__}")


_state_enc = msgspec.msgpack.Encoder(enc_hook=_enc_hook)
_state_dec = msgspec.msgpack.Decoder(KeyState, dec_hook=_dec_hook)


def encode_state(st: KeyState) -> bytes:
    """The persisted record of one object's open levels (values inline: a few per object)."""
    return _state_enc.encode(st)


def decode_state(meta: bytes) -> KeyState:
    return _state_dec.decode(meta)


# -- acceptor rules (pure) ----------------------------------------------------------------------


def pruned(st: KeyState | None, committed: Tag) -> KeyState:
    """Levels at or below the committed version are decided and put: forget them."""
    if st is None:
        return EMPTY
    keep = tuple(s for s in st.levels if s.level > committed.z)
    return st if len(keep) == len(st.levels) else KeyState(keep)


def _get(st: KeyState, level: int) -> LevelState | None:
    for s in st.levels:
        if s.level == level:
            return s
    return None


def _put(st: KeyState, new: LevelState) -> KeyState:
    rest = [s for s in st.levels if s.level != new.level]
    return KeyState(tuple(sorted([*rest, new], key=lambda s: s.level)))


def _too_many(st: KeyState, level: int) -> ErrorReply | None:
    if _get(st, level) is None and len(st.levels) >= MAX_OPEN_LEVELS:
        return ErrorReply("bad-request", f"more than {MAX_OPEN_LEVELS} open levels")
    return None


def on_prepare(st: KeyState, committed: Tag, req: CvrPrepare) -> tuple[KeyState | None, Reply]:
    """PREPARE(level, b): the level is committed here -> refuse with it; b > promised ->
    promise, reporting the value accepted at the level; else NACK."""
    if req.level <= committed.z:
        return None, CvrNack(None, committed)
    bad = _too_many(st, req.level)
    if bad is not None:
        return None, bad
    held = _get(st, req.level) or LevelState(req.level)
    if held.promised is not None and req.ballot <= held.promised:
        return None, CvrNack(held.promised, committed)
    new = LevelState(req.level, req.ballot, held.accepted)
    return _put(st, new), CvrPromise(req.ballot, committed, held.accepted)


def on_accept(st: KeyState, committed: Tag, req: CvrAccept) -> tuple[KeyState | None, Reply]:
    """ACCEPT(level, b, (t, v)): b >= promised -> accept."""
    if req.level <= committed.z:
        return None, CvrNack(None, committed)
    bad = _too_many(st, req.level)
    if bad is not None:
        return None, bad
    held = _get(st, req.level) or LevelState(req.level)
    if held.promised is not None and req.ballot < held.promised:
        return None, CvrNack(held.promised, committed)
    new = LevelState(req.level, req.ballot, CvrOpen(req.level, req.ballot, req.tag, req.value))
    return _put(st, new), CvrAccepted(req.ballot, committed)


def on_inject(st: KeyState, committed: Tag, req: CvrInject) -> tuple[KeyState | None, Reply]:
    """Transfer of an open level: keep the accept with the higher ballot (the injected one is
    from an older configuration, so lower than any ballot issued here)."""
    reply = CvrAccepted(req.ballot, committed)
    if req.level <= committed.z:
        return None, reply
    bad = _too_many(st, req.level)
    if bad is not None:
        return None, bad
    held = _get(st, req.level) or LevelState(req.level)
    if held.accepted is not None and held.accepted.ballot >= req.ballot:
        return None, reply
    promised = req.ballot if held.promised is None else max(held.promised, req.ballot)
    new = LevelState(req.level, promised, CvrOpen(req.level, req.ballot, req.tag, req.value))
    return _put(st, new), reply


def highest_open(st: KeyState | None, committed: Tag) -> CvrOpen | None:
    """The accepted value of the highest open level (reported to the transfer)."""
    if st is None:
        return None
    for s in reversed(st.levels):
        if s.level > committed.z and s.accepted is not None:
            return s.accepted
    return None


def with_next(reply: Reply, nxt: NextEntry | None) -> Reply:
    if nxt is not None and isinstance(reply, CvrPromise | CvrAccepted | CvrNack):
        return msgspec.structs.replace(reply, next=nxt)
    return reply


# -- the client algorithm -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CvrOutcome:
    ok: bool
    tag: Tag
    value: Blob | None
    """The installed value (ok) or the latest one (stale; None: the object is absent)."""


async def _settle(net: Channel, cseq: ares.Cseq, group: str, switches: OpSwitches) -> ares.Cseq:
    """The chain's last configuration, finalized: levels are run only where the state of every
    older configuration has been transferred (a pending successor is finished first, §8.4)."""
    if not switches.piggyback:
        cseq = await ares.read_config(net, cseq, group, switches)
    if cseq[-1].status == "P":
        cseq = await ares.finish_pending(net, cseq, group=group, switches=switches)
    return cseq


async def _latest(
    net: Channel, cseq: ares.Cseq, group: str, key: str, switches: OpSwitches
) -> tuple[CvrOutcome, ares.Cseq]:
    res, cseq = await ares.read(net, cseq, group=group, key=key, switches=switches)
    return CvrOutcome(False, res.tag, None if res.tag == TAG0 else res.value), cseq


async def cvr_write(
    net: Channel,
    cseq: ares.Cseq,
    *,
    group: str,
    key: str,
    value: Blob,
    base: Tag,
    writer: str,
    backoff: paxos.Backoff,
    switches: OpSwitches = DEFAULT_SWITCHES,
    max_attempts: int = MAX_ATTEMPTS,
    on_accept: Callable[[], None] | None = None,
    may_have_accepted: bool = False,
) -> tuple[CvrOutcome, ares.Cseq]:
    """Write ``value`` as the successor of version ``base``; (outcome, updated cseq).

    ``on_accept`` hears, before an accept of this write's own (tag, value) leaves, that the
    write may from then on take effect. A caller that passes it takes over the failures a
    relocation may cure (QuorumUnavailable, OperationTimeout: raised unchanged even after an
    accept): it retries the write with the same ``writer`` (the same tag) and
    ``may_have_accepted=True``, so that a retry that cannot learn whether the first try took
    effect answers CoverableConflict, never stale (§8.5).

    Raises CoverableConflict when the write may or may not have taken effect (its own accept
    may have been stored and the outcome could not be learned), and the operation's error
    (OperationError) unchanged when it failed before any accept of its own left: then it
    cannot take effect (only accepted values are ever adopted). ConfigurationError: ``base`` is
    newer than every version a quorum holds (it was never a version of the object).
    """
    if switches.faults.broken_cvr_unconditional:
        return await _unconditional(net, cseq, group, key, value, base, writer, switches)
    level = base.z + 1
    own = Tag(level, writer)
    maybe_accepted = may_have_accepted  # an accept of our own (tag, value) may be stored
    rnd = 0

    def conflict(why: str) -> CoverableConflict:
        return CoverableConflict(
            f"coverable write of {key!r} on base {base}: outcome unknown ({why}); "
            "read the object again",
            tag=own,
        )

    for attempt in range(1, max_attempts + 1):
        if attempt > 1:
            await backoff(attempt - 1)
        try:
            cseq = await _settle(net, cseq, group, switches)
            nu = len(cseq) - 1
            c = cseq[nu].config
            ballot = CvrBallot(c.epoch, rnd + 1, writer)
            rnd += 1
            try:
                prep = await net.round(
                    c,
                    CvrPrepare(group, c.id, key, level, ballot),
                    expect=_PREPARED,
                    phase="cvr.prepare",
                )
            except ConfigurationObsolete as e:
                cseq = await ares._follow(net, cseq, group, nu, e.next, switches)
                continue
            answers: list[CvrPromise | CvrNack] = [r for _, r in prep]
            committed = max(r.committed for r in answers)
            if committed.z >= level:  # the level is decided and put already
                if any(r.committed == own for r in answers):
                    cseq = await ares._propagate(net, cseq, group, key, own, value, b"", switches)
                    return CvrOutcome(True, own, value), cseq
                if maybe_accepted and not any(r.committed.z == level for r in answers):
                    raise conflict("a later version was written before this one was learned")
                out, cseq = await _latest(net, cseq, group, key, switches)
                if out.tag.z >= level:
                    return out, cseq
                # the level is decided and put on some servers, but not yet on a quorum (its
                # writer is still at it, or stopped): a stale answer must carry a version newer
                # than the base, so ask again later (the read wrote back what it saw)
                continue
            if committed != base:
                raise ConfigurationError(
                    f"base {base} is not a version of {key!r} (its newest is {committed})"
                )
            nxt = [r.next for r in answers if r.next is not None]
            if nxt:  # frozen: a reconfiguration is under way; finish it and go on there
                cseq = await ares._follow(net, cseq, group, nu, nxt[0], switches)
                continue
            if any(isinstance(r, CvrNack) for r in answers):  # outvoted: a higher round
                nacks = [r.promised for r in answers if isinstance(r, CvrNack) and r.promised]
                rnd = max([rnd, *(b.round for b in nacks)])
                continue
            accepted = [r.accepted for r in answers if isinstance(r, CvrPromise) and r.accepted]
            chosen = max(accepted, key=lambda o: o.ballot, default=None)
            tag, v = (own, value) if chosen is None else (chosen.tag, chosen.value)
            if switches.faults.broken_cvr_put_undecided and tag == own:
                # test-only: the value becomes readable before it is decided
                cseq = await ares._propagate(net, cseq, group, key, tag, v, b"", switches)
            if tag == own:
                maybe_accepted = True
                if on_accept is not None:
                    on_accept()
            try:
                acc = await net.round(
                    c,
                    CvrAccept(group, c.id, key, level, ballot, tag, v),
                    expect=_ACCEPTED,
                    phase="cvr.accept",
                )
            except ConfigurationObsolete as e:
                cseq = await ares._follow(net, cseq, group, nu, e.next, switches)
                continue
            acks: list[CvrAccepted | CvrNack] = [r for _, r in acc]
            nxt = [r.next for r in acks if r.next is not None]
            refused = [r for r in acks if isinstance(r, CvrNack)]
            if refused:
                rnd = max([rnd, *(r.promised.round for r in refused if r.promised)])
                if nxt:
                    cseq = await ares._follow(net, cseq, group, nu, nxt[0], switches)
                continue
            # decided: (tag, v) is version `level`; put it like any write's phase 2
            cseq = await ares._propagate(net, cseq, group, key, tag, v, b"", switches)
            if tag == own:
                return CvrOutcome(True, own, value), cseq
            return CvrOutcome(False, tag, v), cseq
        except CoverableConflict:
            raise
        except OperationError as e:
            retryable = isinstance(e, QuorumUnavailable | OperationTimeout)
            if maybe_accepted and not (on_accept is not None and retryable):
                raise conflict(str(e)) from e
            raise
    raise conflict(f"not decided after {max_attempts} attempts")


async def put_fresh(
    net: Channel,
    cseq: ares.Cseq,
    *,
    group: str,
    key: str,
    value: Blob,
    writer: str,
    switches: OpSwitches = DEFAULT_SWITCHES,
) -> tuple[CvrOutcome, ares.Cseq]:
    """Level 1 of a fresh key (see the module docstring): put ``(1, writer)`` into the DAP,
    following successors, without consensus. Only for a key no other writer ever writes on
    base TAG0 (the caller's own random name); any later version is written with
    :func:`cvr_write`. Retrying after a failure puts the same tag again (idempotent)."""
    tag = Tag(1, writer)
    cseq = await ares.finish_write(
        net, cseq, group=group, key=key, tag=tag, value=value, switches=switches
    )
    return CvrOutcome(True, tag, value), cseq


async def _unconditional(
    net: Channel,
    cseq: ares.Cseq,
    group: str,
    key: str,
    value: Blob,
    base: Tag,
    writer: str,
    switches: OpSwitches,
) -> tuple[CvrOutcome, ares.Cseq]:
    """Test-only (``broken_cvr_unconditional``): the naive CoARES write -- query the newest tag
    and, if it is the base, put the successor unconditionally. Two writers of one base both
    succeed (docs/protocol.md §9.1)."""
    res, cseq = await ares.read(net, cseq, group=group, key=key, switches=switches)
    if res.tag != base:
        return CvrOutcome(False, res.tag, None if res.tag == TAG0 else res.value), cseq
    tag = Tag(base.z + 1, writer)
    cseq = await ares._propagate(net, cseq, group, key, tag, value, b"", switches)
    return CvrOutcome(True, tag, value), cseq
