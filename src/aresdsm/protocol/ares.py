"""Reads, writes and reconfiguration over a configuration sequence (docs/protocol.md §6, §8).

A client keeps, per group, ``cseq``: its view of the group's configuration chain, a tuple of
``(configuration, status)`` with status P (pending) or F (finalized); entry 0 is the initial
configuration, F. μ is the index of the last F entry, ν of the last entry (docs/protocol.md §2).

Two modes, side by side on the same servers:

* **classic** (original Ares, §6): discovery (:func:`read_config`) before an operation, query
  configurations μ..ν, then the propagation loop -- put-data into the last configuration,
  discover again, repeat while the chain grew. Every successor found is written back to a quorum
  of its predecessor before it is used (§7.2). 4 rounds in steady state.
* **Ares II** (``piggyback``, §8.1): every data reply carries the server's nextC; phase 1 queries
  μ..ν and follows successors the replies reveal (writing back P entries), phase 2 puts the value
  into the last configuration and follows any successor its ACKs reveal. 2 rounds in steady state,
  1 for a read whose quorum already agrees (``fast_read``, §8.6).

Reconfiguration (:func:`reconfig`): discovery, consensus on the successor d of the last
configuration c_ν (Paxos, §5), then update-config. Its read of c_ν is SET_NEXT_AND_GET (§8.2):
each server stores (d, P) *and then* reports the state of every object it holds for the group,
in one step, so a write that completed on c_ν with only ⊥ answers is visible in a quorum of
these reports -- required for piggyback to be safe, and harmless for classic clients. Classic
mode keeps its separate put-config round before it (so its round count is the original's). Every
object's newest value is written into d, then finalize-config stores (d, F).

Everything here is an async function over the injected Channel; the only other injected piece is
``backoff`` for Paxos retries (§5).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Literal, TypeVar

import msgspec

from .. import tracing
from ..config import Configuration
from ..errors import ConfigurationError, InvariantViolation, OperationError
from ..limits import MAX_COUNTER
from ..tags import TAG0, Tag
from ..wire.blob import Blob
from ..wire.messages import (
    Ack,
    ChainsReply,
    CvrAccepted,
    CvrInject,
    CvrOpen,
    Finalized,
    GetGroup,
    GroupReply,
    KeysReply,
    ListChains,
    ListKeys,
    NextEntry,
    NextReply,
    ObjectState,
    ReadConfig,
    WriteConfig,
)
from . import dap, paxos
from .abd import strongest
from .channel import Channel, ConfigurationObsolete
from .ops import DEFAULT_SWITCHES, OpSwitches, ReadResult

GROUP_PAGE = 256
ObjectReports = list[tuple[int, ObjectState | None]]
"""One object's state as each server of an answering quorum reported it (None: not held)."""
GroupState = dict[str, ObjectReports]
TRANSFER_PAGE_BYTES = 8 * 1024 * 1024
T = TypeVar("T")


class CseqEntry(msgspec.Struct, frozen=True, array_like=True):
    config: Configuration
    status: Literal["P", "F"]


Cseq = tuple[CseqEntry, ...]


OBJECT_CHAIN = "\x00"
"""Separates group and key: in the composite object key of Ares II (``group\x00key`` inside the
cluster's chain) and in the name of an object's own chain (``batch`` off). Keys and groups never
contain NUL (the client refuses them), so both are unambiguous."""
CLUSTER_CHAIN = "cluster"
"""The one configuration chain of a cluster in Ares II (docs/protocol.md §2, §8.4): every object of
every group follows it, so one reconfiguration moves them all and a new group or key starts in
the current configuration. On the wire it is the ``group`` field of every message (the field
keeps its name; it names the chain)."""


def chain_of(group: str, key: str, switches: OpSwitches) -> str:
    """The configuration chain that object ``key`` of ``group`` follows: the cluster's
    (§8.4, ``batch``) or, with ``batch`` off, one of its own, as in the original Ares. Server
    state is keyed by (chain, configuration, object key) either way."""
    return CLUSTER_CHAIN if switches.batch else f"{group}{OBJECT_CHAIN}{key}"


def object_key(group: str, key: str, switches: OpSwitches) -> str:
    """The object's key inside its chain: ``group\x00key`` in the cluster's chain (groups are
    namespaces of it), the plain key in an object's own chain (``batch`` off)."""
    return f"{group}{OBJECT_CHAIN}{key}" if switches.batch else key


def split_object_key(name: str) -> tuple[str, str]:
    """(group, key) of a composite object key of the cluster's chain."""
    group, sep, key = name.partition(OBJECT_CHAIN)
    if not sep:
        raise InvariantViolation(f"object key {name!r} names no group")
    return group, key


def initial_cseq(c0: Configuration) -> Cseq:
    return (CseqEntry(c0, "F"),)


def mu(cseq: Cseq) -> int:
    """Index of the last finalized entry."""
    return max(i for i, e in enumerate(cseq) if e.status == "F")


def merge(a: Cseq, b: Cseq) -> Cseq:
    """The union of two views of one chain (§7.1). Views usually start at the same entry; a view
    adopted from LATEST_CONFIG (§8.5) starts later and is aligned on its first configuration."""
    a, b = _align(a, b)
    longer, shorter = (a, b) if len(a) >= len(b) else (b, a)
    out = list(longer)
    for i, e in enumerate(shorter):
        if e.config.id != out[i].config.id:
            raise InvariantViolation(
                f"configuration chains diverge at index {i}: {e.config.id} vs {out[i].config.id}"
            )
        if e.status == "F":
            out[i] = CseqEntry(out[i].config, "F")
    return tuple(out)


def _align(a: Cseq, b: Cseq) -> tuple[Cseq, Cseq]:
    if a[0].config.id == b[0].config.id:
        return a, b
    for i, e in enumerate(a):
        if e.config.id == b[0].config.id:
            return a[i:], b
    for i, e in enumerate(b):
        if e.config.id == a[0].config.id:
            return a, b[i:]
    raise DisjointChains(
        f"configuration chains share no configuration: {a[0].config.id}.. and {b[0].config.id}.."
    )


class DisjointChains(InvariantViolation):
    """Two views of a chain with no configuration in common: one was adopted from LATEST_CONFIG
    (§8.5) beyond the end of the other. Not a divergence; the caller keeps the later view."""


def adopt(entry: NextEntry) -> Cseq:
    """A chain view starting at a finalized configuration learned from LATEST_CONFIG (§8.5)."""
    if entry.status != "F":
        raise InvariantViolation("only a finalized configuration may be adopted")
    return (CseqEntry(entry.config, "F"),)


def with_entry(cseq: Cseq, index: int, entry: NextEntry) -> Cseq:
    """cseq with entry ``index`` put or refreshed from a server's nextC entry (P -> F only)."""
    if index < len(cseq):
        if cseq[index].config.id != entry.config.id:
            raise InvariantViolation(
                f"configuration {cseq[index - 1].config.id} has two successors: "
                f"{cseq[index].config.id} and {entry.config.id}"
            )
        if entry.status == "F" and cseq[index].status == "P":
            return (*cseq[:index], CseqEntry(entry.config, "F"), *cseq[index + 1 :])
        return cseq
    if index != len(cseq):
        raise InvariantViolation(f"entry {index} learned before entry {len(cseq)}")
    return (*cseq, CseqEntry(entry.config, entry.status))


def _entry(cseq: Cseq, index: int) -> NextEntry:
    return NextEntry(cseq[index].config, cseq[index].status)


# -- the reconfiguration service (client side, §6) ------------------------------------------------


async def read_next_config(net: Channel, c: Configuration, group: str) -> NextEntry | None:
    replies = await net.round(
        c, ReadConfig(group, c.id), expect=NextReply, phase="read-next-config"
    )
    return strongest(r.next for _, r in replies)


async def put_config(
    net: Channel, c: Configuration, group: str, entry: NextEntry, *, gc: bool = False
) -> None:
    """WRITE_CONFIG to a quorum; with an F entry and ``gc``, the servers also collect ``c``'s
    object state (§8.3)."""
    await net.round(c, WriteConfig(group, c.id, entry, gc), expect=Ack, phase="put-config")


async def read_config(
    net: Channel,
    cseq: Cseq,
    group: str,
    switches: OpSwitches = DEFAULT_SWITCHES,
    progress: Callable[[Cseq], None] | None = None,
) -> Cseq:
    """Discovery: walk the chain from μ, writing every successor found back to a quorum.
    ``progress`` hears the chain after each successor's write-back (so a caller keeps what was
    found when a later hop fails, e.g. at a pending configuration whose servers are down)."""
    with tracing.span("read-config"):
        i = mu(cseq)
        while True:
            e = await read_next_config(net, cseq[i].config, group)
            if e is None:
                return cseq
            cseq = with_entry(cseq, i + 1, e)
            if not switches.faults.broken_no_config_write_back:  # an F entry collects, gc (§8.3)
                back = _entry(cseq, i + 1)
                if back.status == "F" and not switches.write_back_final:
                    back = NextEntry(back.config, "P")  # (the right to finalize is an admin's)
                await put_config(net, cseq[i].config, group, back, gc=switches.gc)
            if progress is not None:
                progress(cseq)
            i += 1


# -- reads and writes -----------------------------------------------------------------------------


async def _follow(
    net: Channel, cseq: Cseq, group: str, index: int, nxt: NextEntry, switches: OpSwitches
) -> Cseq:
    """A reply of configuration ``index`` revealed ``nxt``: write a P entry back (as read-config
    does, §8.1) if it is new to us, and record it."""
    is_new = index + 1 >= len(cseq)
    if is_new and nxt.status == "P" and not switches.faults.broken_no_config_write_back:
        await put_config(net, cseq[index].config, group, nxt)
    return with_entry(cseq, index + 1, nxt)


async def _query_all(
    net: Channel,
    cseq: Cseq,
    group: str,
    query: Callable[[Configuration], Awaitable[tuple[T, NextEntry | None]]],
    switches: OpSwitches,
) -> tuple[list[T], Cseq, bool]:
    """Ares II phase 1: query μ..ν in parallel and every successor the replies reveal.

    Returns the results, the updated cseq and whether any reply revealed a successor.
    """
    results: list[T] = []
    revealed = False
    todo = list(range(mu(cseq), len(cseq)))

    async def ask(c: Configuration) -> tuple[T | None, NextEntry | None, bool]:
        try:
            res, nxt = await query(c)
            return res, nxt, False
        except ConfigurationObsolete as e:  # §8.3: skip c, its F successor holds everything
            return None, e.next, True

    while todo:
        if len(todo) == 1:  # the usual case: awaited here, no task and no gather (issue 18)
            answers: list[tuple[T | None, NextEntry | None, bool]]
            try:
                answers = [(*(await query(cseq[todo[0]].config)), False)]
            except ConfigurationObsolete as e:  # as in ask()
                answers = [(None, e.next, True)]
        else:
            answers = await asyncio.gather(*(ask(cseq[i].config) for i in todo))
        grown = len(cseq)
        again: set[int] = set()
        for i, (res, nxt, obsolete) in zip(todo, answers, strict=True):
            if res is not None:
                results.append(res)
            if nxt is not None:
                revealed = True
                cseq = await _follow(net, cseq, group, i, nxt, switches)
            if obsolete and i + 1 < grown and not switches.faults.broken_no_requery_after_obsolete:
                # the successor holds everything of c only since c was finalized: an answer
                # it gave before that (in parallel with c's) may miss a completed write, so
                # ask it again, now (tests/sim/test_obsolete_race.py)
                again.add(i + 1)
        todo = sorted(again | set(range(grown, len(cseq)))) if again or grown < len(cseq) else []
    return results, cseq, revealed


async def _propagate(
    net: Channel,
    cseq: Cseq,
    group: str,
    key: str,
    tag: Tag,
    value: Blob,
    mac: bytes,
    switches: OpSwitches,
) -> Cseq:
    """Phase 2: put (tag, value) into the last configuration until no successor shows up.
    ``mac``: the writer's MAC a read's write-back forwards (§13); b"" for a new value."""
    while True:
        nu = len(cseq) - 1
        try:
            nxt = await dap.put_data(
                net, cseq[nu].config, group, key, tag=tag, value=value, mac=mac
            )
        except ConfigurationObsolete as e:  # never finish phase 2 on an obsolete configuration
            if switches.faults.broken_finish_on_obsolete:
                return cseq
            cseq = await _follow(net, cseq, group, nu, e.next, switches)
            continue
        if nxt is not None and (
            switches.piggyback or not switches.faults.broken_classic_ignores_ack_next
        ):
            # a successor: put the value into it too. Classic Ares would only look with its
            # read-config below -- sound against a reconfigurer whose put-config completed
            # before its get-data, not against an Ares II one whose SET_NEXT_AND_GET does both at
            # once on each server (tests/sim/test_mixed_modes.py): the ACKs carry next anyway
            cseq = await _follow(net, cseq, group, nu, nxt, switches)
            continue
        if switches.piggyback:
            return cseq
        cseq = await read_config(net, cseq, group, switches)
        if len(cseq) - 1 == nu:
            return cseq


async def write(
    net: Channel,
    cseq: Cseq,
    *,
    group: str,
    key: str,
    value: Blob,
    writer: str,
    switches: OpSwitches = DEFAULT_SWITCHES,
    on_tag: Callable[[Tag], None] | None = None,
) -> tuple[Tag, Cseq]:
    """Write ``value``; returns its tag and the updated cseq. ``on_tag`` hears the tag before
    any put-data leaves: a caller that retries a failed write must finish it with that tag
    (:func:`finish_write`), never start it again with another."""
    if not switches.piggyback:
        cseq = await read_config(net, cseq, group, switches)

    async def classic_query(c: Configuration) -> tuple[Tag, NextEntry | None]:
        tag, _ = await dap.get_tag(net, c, group, key)
        return tag, None  # classic Ares ignores the next the replies carry

    def piggyback_query(c: Configuration) -> Awaitable[tuple[Tag, NextEntry | None]]:
        return dap.get_tag(net, c, group, key)  # its coroutine: no frame of its own

    query = piggyback_query if switches.piggyback else classic_query

    if switches.faults.broken_no_query_before_write:
        tag = Tag(1, writer)
    else:
        tags, cseq, _ = await _query_all(net, cseq, group, query, switches)
        tag = max(tags).successor(writer)
        if tag.z >= MAX_COUNTER:  # no server would accept it: say why, once
            raise OperationError(
                f"the object's tag space is exhausted: its tag number is {tag.z - 1}, the "
                f"largest a server accepts (only a writer with credentials can write such a tag)"
            )
    if on_tag is not None:
        on_tag(tag)
    cseq = await _propagate(net, cseq, group, key, tag, value, b"", switches)
    return tag, cseq


async def finish_write(
    net: Channel,
    cseq: Cseq,
    *,
    group: str,
    key: str,
    tag: Tag,
    value: Blob,
    switches: OpSwitches = DEFAULT_SWITCHES,
) -> Cseq:
    """Phase 2 alone: put (tag, value) into the last configuration and follow its successors.
    Finishes a write that failed after choosing ``tag`` -- its put-data may have reached some
    servers, and readers may have returned it. Starting it again with a new tag would make one
    write take effect twice (a reader could see it, then a later write, then it again); with its
    own tag it is linearized where it first took effect (tests/sim/test_store_retry.py)."""
    if not switches.piggyback:
        cseq = await read_config(net, cseq, group, switches)
    return await _propagate(net, cseq, group, key, tag, value, b"", switches)


async def read(
    net: Channel,
    cseq: Cseq,
    *,
    group: str,
    key: str,
    switches: OpSwitches = DEFAULT_SWITCHES,
) -> tuple[ReadResult, Cseq]:
    if not switches.piggyback:
        cseq = await read_config(net, cseq, group, switches)

    async def query(
        c: Configuration,
    ) -> tuple[tuple[Tag, Blob, bool, bytes], NextEntry | None]:
        short = c.quorum_size - 1 if switches.faults.broken_fast_read_short else None
        tag, value, unanimous, nxt, mac = await dap.get_data(
            net,
            c,
            group,
            key,
            broken_decode_below_k=switches.faults.broken_decode_below_k,
            need=short,
        )
        return (tag, value, unanimous, mac), (nxt if switches.piggyback else None)

    results, cseq, revealed = await _query_all(net, cseq, group, query, switches)
    tag, value, unanimous, mac = max(results, key=lambda r: r[0])
    one_round = switches.piggyback and switches.fast_read and len(results) == 1 and unanimous
    if (one_round and not revealed) or switches.faults.broken_skip_write_back:
        return ReadResult(tag, value, wrote_back=False), cseq
    cseq = await _propagate(net, cseq, group, key, tag, value, mac, switches)
    return ReadResult(tag, value, wrote_back=True), cseq


# -- reconfiguration (§6, §8.2, §8.4) ------------------------------------------------------------


class _SourceObsolete(Exception):
    """update-config: source ``index`` of the read set answered OBSOLETE (§8.3); index
    ``len(sources)`` is the target."""

    def __init__(self, index: int, next_entry: NextEntry) -> None:
        super().__init__(f"source {index} superseded by {next_entry.config.id}")
        self.index = index
        self.next = next_entry


class _GroupCursor:
    """One configuration's state of a whole group, read page by page in key order (§8.4).

    With ``set_next`` every page is a SET_NEXT_AND_GET (§8.2). A page covers the keys up to the
    smallest last key of the servers that have more, so each key is answered by a full quorum;
    ``after`` is the last key covered (everything up to it has been reported), ``done`` says that
    every key has.
    """

    def __init__(
        self,
        net: Channel,
        c: Configuration,
        group: str,
        index: int,
        set_next: NextEntry | None,
    ) -> None:
        self.net, self.c, self.group, self.index, self.set_next = net, c, group, index, set_next
        self.after = ""
        self.done = False
        self.page: GroupState = {}
        self.floor = 0
        """The highest tag floor a reply reported (§8.4 "Deleted objects")."""

    async def fetch(self) -> None:
        phase = "set-next-and-get" if self.set_next is not None else "get-group"
        request = GetGroup(self.group, self.c.id, self.after, GROUP_PAGE, self.set_next)
        try:
            replies = await self.net.round(self.c, request, expect=GroupReply, phase=phase)
        except ConfigurationObsolete as e:
            raise _SourceObsolete(self.index, e.next) from None
        self.floor = max([self.floor, *(r.floor for _, r in replies)])
        bound: str | None = None
        for _, r in replies:
            if r.more and r.objects and (bound is None or r.objects[-1].key < bound):
                bound = r.objects[-1].key
        page: dict[str, dict[int, ObjectState]] = {}
        for server, r in replies:
            i = self.c.index_of(server.id)
            for o in r.objects:
                if bound is None or o.key <= bound:
                    page.setdefault(o.key, {})[i] = o
        answering = [self.c.index_of(s.id) for s, _ in replies]
        for key, states in page.items():
            self.page[key] = [(i, states.get(i)) for i in answering]
        if bound is None:
            self.done = True
        else:
            self.after = bound


async def _merged_pages(
    cursors: list[_GroupCursor],
) -> AsyncGenerator[list[tuple[str, list[tuple[Configuration, ObjectReports]]]], None]:
    """The objects of all sources in key order, a batch at a time: a key is ready once every
    source has reported everything up to it. Holds at most one page per source (§8.4: the
    reconfigurer keeps a bounded amount in memory)."""
    await asyncio.gather(*(cur.fetch() for cur in cursors))
    while True:
        open_ = [cur for cur in cursors if not cur.done]
        limit = min((cur.after for cur in open_), default=None)
        keys = sorted({k for cur in cursors for k in cur.page if limit is None or k <= limit})
        if keys:
            yield [
                (k, [(cur.c, cur.page.pop(k)) for cur in cursors if k in cur.page]) for k in keys
            ]
        if limit is None:
            return
        await asyncio.gather(*(cur.fetch() for cur in open_ if cur.after == limit))


async def reconfig(
    net: Channel,
    cseq: Cseq,
    *,
    group: str,
    proposal: Configuration,
    proposer: str,
    backoff: paxos.Backoff,
    transfer_concurrency: int = 4,
    switches: OpSwitches = DEFAULT_SWITCHES,
    discover: bool = True,
    vet: Callable[[Cseq, Configuration], None] | None = None,
    finish_first: bool = True,
    exact_epoch: bool = False,
) -> tuple[Cseq, Configuration]:
    """Install a successor of the chain's last configuration; returns (cseq, decided).

    ``decided`` is the configuration consensus chose, which may be another reconfigurer's. A
    chain that ends with a decided but unfinished successor (P) is completed first
    (:func:`finish_pending`), so the proposal always follows a finalized configuration. The
    proposal gets the epoch of its place in the chain (the last configuration's + 1).
    ``vet(cseq, proposal)`` may refuse the proposal (raise) once the chain's end is known,
    before consensus. ``discover=False``: ``cseq`` was just discovered by the caller.
    ``finish_first=False``: propose on top of a P entry, as the original Ares does (then
    update-config reads several sources; scenario tests of that path use it).
    A proposal's epoch only ever grows along a chain (servers check it); one that is not above
    the last configuration's gets last + 1, or, with ``exact_epoch``, is refused.
    """
    if discover:
        cseq = await read_config(net, cseq, group, switches)
    if cseq[-1].status == "P" and finish_first:
        cseq = await finish_pending(
            net, cseq, group=group, transfer_concurrency=transfer_concurrency, switches=switches
        )
    if any(e.config.id == proposal.id for e in cseq):
        raise ConfigurationError(f"configuration id {proposal.id!r} is already in use")
    nu = len(cseq) - 1
    last = cseq[nu].config
    if proposal.epoch <= last.epoch:
        if exact_epoch:
            # the descriptor is shared with other chains (``batch`` off): one id, one
            # descriptor, so it cannot be given another epoch here
            raise ConfigurationError(
                f"chain {group!r} moved to epoch {last.epoch} concurrently; reconfigure again"
            )
        proposal = msgspec.structs.replace(proposal, epoch=last.epoch + 1)
    if vet is not None:
        vet(cseq, proposal)
    decided = await paxos.propose(
        net,
        last,
        group=group,
        value=proposal,
        proposer=proposer,
        backoff=backoff,
        broken_own_value=switches.faults.broken_paxos_own_value,
    )
    return await _install(net, cseq, nu, decided, group, transfer_concurrency, switches)


async def finish_pending(
    net: Channel,
    cseq: Cseq,
    *,
    group: str,
    transfer_concurrency: int = 4,
    switches: OpSwitches = DEFAULT_SWITCHES,
) -> Cseq:
    """Complete the transfer into, and finalize, the chain's last configuration when it is only
    P: consensus decided it, but its reconfigurer stopped before finalize-config (it crashed, or
    the new servers were down). Any client may do it: the steps are those of the reconfigurer
    after consensus (§6 update-config and finalize-config), each idempotent, and concurrent
    finishers of one successor are safe as concurrent reconfigurers are (§8.2, §8.3). Needs a
    quorum of the pending configuration's servers."""
    if len(cseq) < 2 or cseq[-1].status != "P":
        return cseq
    with tracing.span("finish-pending", {"ares.config": cseq[-1].config.id}):
        cseq, _ = await _install(
            net, cseq, len(cseq) - 2, cseq[-1].config, group, transfer_concurrency, switches
        )
    return cseq


async def _install(
    net: Channel,
    cseq: Cseq,
    nu: int,
    decided: Configuration,
    group: str,
    transfer_concurrency: int,
    switches: OpSwitches,
) -> tuple[Cseq, Configuration]:
    """After consensus decided ``decided`` as the successor of ``cseq[nu]``: update-config
    (§6, §8.2, §8.4) and finalize-config."""
    last = cseq[nu].config
    pending = NextEntry(decided, "P")
    cseq = with_entry(cseq, nu + 1, pending)
    split = not switches.piggyback or switches.faults.broken_split_handoff
    if split:
        await put_config(net, last, group, pending)
    if not switches.faults.broken_skip_update_config:
        while True:
            first = mu(cseq)
            sources = [e.config for e in cseq[first : nu + 1]]
            try:
                with tracing.span("update-config", {"ares.config": decided.id}):
                    await _update_config(
                        net,
                        sources,
                        None if switches.faults.broken_split_handoff else pending,
                        decided,
                        group,
                        transfer_concurrency,
                        plain_older=switches.faults.broken_plain_get_older_sources,
                        ignore_open=switches.faults.broken_cvr_transfer_ignores_open,
                        no_floor=switches.faults.broken_drop_tombstones_without_floor,
                    )
                break
            except _SourceObsolete as e:
                at = first + e.index
                if at >= nu:
                    # c_ν has a finalized successor -- `decided`, the only one it can have -- or
                    # `decided` has one: another reconfigurer finalized `decided`, having moved
                    # the state into it
                    cseq = with_entry(cseq, nu + 1, NextEntry(decided, "F"))
                    return with_entry(cseq, at + 1, e.next), decided
                # a source was finalized meanwhile: its successor holds everything only from
                # then on, so read again from there (tests/sim/test_obsolete_race.py)
                cseq = with_entry(cseq, at + 1, e.next)
    elif not split:
        await put_config(net, last, group, pending)
    cseq = with_entry(cseq, nu + 1, NextEntry(decided, "F"))
    with tracing.span("finalize-config", {"ares.config": decided.id}):
        await put_config(net, last, group, NextEntry(decided, "F"), gc=switches.gc)
    return cseq, decided


class KeysPage(msgspec.Struct, frozen=True):
    """One page of a key listing (:func:`list_keys`): keys in order, and where the next page
    starts (None: this was the last)."""

    keys: tuple[str, ...]
    after: str | None


async def list_keys(
    net: Channel,
    cseq: Cseq,
    group: str,
    *,
    prefix: str = "",
    after: str = "",
    limit: int = GROUP_PAGE,
    switches: OpSwitches = DEFAULT_SWITCHES,
) -> tuple[KeysPage, Cseq]:
    """One page of the object keys that start with ``prefix`` and sort after ``after``, held in
    the chain's current configurations μ..ν (and any successor the replies reveal), keys only.

    Every object whose write completed is listed: it is on a quorum of some configuration
    μ..ν or of a successor (§7.2, §7.3), and every quorum intersects the one answering here.
    Objects being created or transferred meanwhile may or may not be listed: a listing is not a
    snapshot. A page covers keys up to the smallest last key of any server that has more, so
    each key of it was reported by a full quorum of every configuration.
    """

    async def query(c: Configuration) -> tuple[tuple[list[str], str | None], NextEntry | None]:
        replies = await net.round(
            c, ListKeys(group, c.id, prefix, after, limit), expect=KeysReply, phase="list-keys"
        )
        bound: str | None = None
        for _, r in replies:
            if r.more and r.keys and (bound is None or r.keys[-1] < bound):
                bound = r.keys[-1]
        keys = [k for _, r in replies for k in r.keys if bound is None or k <= bound]
        return (keys, bound), strongest(r.next for _, r in replies)

    results, cseq, _ = await _query_all(net, cseq, group, query, switches)
    bounds = [b for _, b in results if b is not None]
    limit_key = min(bounds) if bounds else None
    found = sorted({k for ks, _ in results for k in ks if limit_key is None or k <= limit_key})
    return KeysPage(tuple(found), limit_key), cseq


async def list_chains(net: Channel, c: Configuration, prefix: str, after: str) -> KeysPage:
    """One page of the chain names with ``prefix`` after ``after`` that a quorum of ``c``
    holds anything for (with ``batch`` off every object has a chain of its own)."""
    replies = await net.round(
        c, ListChains(prefix, after, GROUP_PAGE), expect=ChainsReply, phase="list-chains"
    )
    bound: str | None = None
    for _, r in replies:
        if r.more and r.names and (bound is None or r.names[-1] < bound):
            bound = r.names[-1]
    names = sorted({n for _, r in replies for n in r.names if bound is None or n <= bound})
    return KeysPage(tuple(names), bound)


async def list_objects(net: Channel, c0: Configuration, group: str) -> list[str]:
    """With ``batch`` off: the objects of ``group``, each with a chain of its own, as a quorum of
    the initial configuration ``c0`` knows them. Every such chain starts at ``c0``, and a quorum
    of ``c0`` holds either a completed write of the object or its chain's successor (§7.2), so
    every object whose write completed is listed."""
    prefix = group + OBJECT_CHAIN
    found: list[str] = []
    after = prefix
    while True:
        page = await list_chains(net, c0, prefix, after)
        found += [n[len(prefix) :] for n in page.keys]
        if page.after is None:
            return found
        after = page.after


async def reconfig_objects(
    net: Channel,
    cseq_of: Callable[[str], Cseq],
    *,
    group: str,
    keys: list[str],
    proposal: Configuration,
    proposer: str,
    backoff: paxos.Backoff,
    concurrency: int = 8,
    switches: OpSwitches = DEFAULT_SWITCHES,
    vet: Callable[[Cseq, Configuration], None] | None = None,
) -> dict[str, tuple[Cseq, Configuration]]:
    """``batch`` off (the original Ares): reconfigure every object's own chain -- one consensus
    decision and one state transfer per object, ``concurrency`` objects at a time. Returns, per
    chain name, its new cseq and the configuration decided for it.

    The chains have different lengths (an object created after a reconfiguration starts at the
    initial configuration), but ``proposal`` is one descriptor, and a configuration id names one
    descriptor on every server. So every chain is discovered first and the proposal gets one
    epoch above all their ends: epochs then still grow along each chain, which is what servers
    check and LATEST_CONFIG relies on (tests/integration/test_reconfig_inproc.py)."""
    slots = asyncio.Semaphore(concurrency)
    chains = [chain_of(group, key, switches) for key in keys]

    async def discover(chain: str) -> tuple[str, Cseq]:
        async with slots:
            return chain, await read_config(net, cseq_of(chain), chain, switches)

    views = dict(await asyncio.gather(*(discover(c) for c in chains)))
    top = max((v[-1].config.epoch for v in views.values()), default=0)
    if proposal.epoch <= top:
        proposal = msgspec.structs.replace(proposal, epoch=top + 1)

    async def one(chain: str) -> tuple[str, tuple[Cseq, Configuration]]:
        async with slots:
            return chain, await reconfig(
                net,
                views[chain],
                group=chain,
                proposal=proposal,
                proposer=proposer,
                backoff=backoff,
                switches=switches,
                vet=vet,
                discover=False,
                exact_epoch=True,
            )

    return dict(await asyncio.gather(*(one(c) for c in chains)))


async def finalize_everywhere(
    net: Channel,
    c: Configuration,
    group: str,
    entry: NextEntry,
    *,
    gc: bool,
    attempts: int = 3,
) -> bool:
    """After finalize-config (which completes on a quorum): keep sending the F entry until every
    server of ``c`` has it, so that every one reclaims its storage (§8.3), and tell the servers
    of the new configuration that it is final, so that they can answer LATEST_CONFIG (§8.5).
    Bounded: at most ``attempts`` rounds each. Returns whether everything was acknowledged."""
    done = [False, False]
    requests: list[tuple[Configuration, WriteConfig | Finalized]] = [
        (c, WriteConfig(group, c.id, entry, gc)),
        (entry.config, Finalized(group, entry)),
    ]
    for _ in range(attempts):
        for i, (target, request) in enumerate(requests):
            if done[i]:
                continue
            try:
                await net.round(target, request, expect=Ack, phase="finalize-all", need=target.n)
                done[i] = True
            except OperationError:
                continue
        if all(done):
            return True
    return False


def _open_level(reports: list[tuple[Configuration, ObjectReports]]) -> CvrOpen | None:
    """A coverable object's open level as the transfer carries it (docs/protocol.md §9.1): of the
    accepts the frozen quorums reported, the highest level's at the highest ballot. A value
    decided at that level is the highest-ballot accept of every quorum (Paxos)."""
    best: CvrOpen | None = None
    for _, states in reports:
        for _, st in states:
            o = None if st is None else st.cvr
            if o is not None and (best is None or (o.level, o.ballot) > (best.level, best.ballot)):
                best = o
    return best


async def _inject(
    net: Channel, target: Configuration, group: str, key: str, o: CvrOpen, n_sources: int
) -> None:
    """Carry an open coverable level into the target as an accept at its old ballot (§9.1)."""
    request = CvrInject(group, target.id, key, o.level, o.ballot, o.tag, o.value)
    try:
        await net.round(target, request, expect=CvrAccepted, phase="cvr.transfer")
    except ConfigurationObsolete as e:  # the target is finalized and collected already
        raise _SourceObsolete(n_sources, e.next) from None


def _older_source_next(successor: Configuration, plain: bool) -> NextEntry | None:
    """What an older source's read sets (a P entry never downgrades an F one); None with the
    test-only ``broken_plain_get_older_sources``."""
    return None if plain else NextEntry(successor, "P")


async def _update_config(
    net: Channel,
    sources: list[Configuration],
    set_next: NextEntry | None,
    target: Configuration,
    group: str,
    concurrency: int,
    plain_older: bool = False,
    ignore_open: bool = False,
    no_floor: bool = False,
) -> None:
    """update-config (§6, §8.2, §8.4): per object the newest pair over all sources, written
    into ``target`` in batches of at most GROUP_PAGE objects and TRANSFER_PAGE_BYTES,
    ``concurrency`` batches in flight at a time. Memory stays bounded: a page per source and the
    batches in flight.

    Every source is read with SET_NEXT_AND_GET: the last one with (target, P), each older c_i
    with (c_{i+1}, P). An earlier rule read c_μ..c_{ν−1} with a plain get-data, "they already
    have a successor" -- but while c_{i+1} is still P, a write can complete on c_i with only ⊥
    answers from servers that the write-back of (c_{i+1}, P) had not reached yet and that answered
    the plain get before the write arrived; c_{i+1}'s own reconfigurer may never transfer it, and
    the value is lost (tests/sim/test_older_sources.py). Setting next in the same step as the read
    gives every older source the §8.2 argument too, at no extra round.

    Tombstones are not transferred (§8.4 "Deleted objects"): their largest tag number, and the
    sources' own floors, become the target's floor, set on a quorum of the target by one more
    round after every batch completed and before the caller finalizes it. Writers in the target
    then pick tags above every dropped tombstone. ``no_floor`` (test-only,
    ``broken_drop_tombstones_without_floor``) skips that round."""
    last = len(sources) - 1
    cursors = [
        _GroupCursor(
            net,
            c,
            group,
            i,
            set_next if i == last else _older_source_next(sources[i + 1], plain_older),
        )
        for i, c in enumerate(sources)
    ]
    slots = asyncio.Semaphore(concurrency)
    sending: set[asyncio.Task[None]] = set()

    async def send(batch: list[tuple[str, Tag, Blob, bytes]]) -> None:
        try:
            await dap.put_batch(net, target, group, batch)
        except ConfigurationObsolete as e:  # the target is finalized and collected already
            raise _SourceObsolete(len(sources), e.next) from None
        finally:
            slots.release()

    async def flush(batch: list[tuple[str, Tag, Blob, bytes]]) -> None:
        await slots.acquire()
        for task in [t for t in sending if t.done()]:
            sending.discard(task)
            task.result()  # a failed batch fails the reconfiguration now
        sending.add(asyncio.ensure_future(send(batch)))

    batch: list[tuple[str, Tag, Blob, bytes]] = []
    size = 0
    floor = 0
    try:
        async with contextlib.aclosing(_merged_pages(cursors)) as pages:
            async for ready in pages:
                for key, reports in ready:
                    best = max((dap.newest(c, st) for c, st in reports), key=lambda p: p[0])
                    opened = None if ignore_open else _open_level(reports)
                    if opened is not None and opened.level > best[0].z:
                        await _inject(net, target, group, key, opened, len(sources))
                    if best[0] == TAG0:
                        continue
                    if best[0].deleted:  # dropped: the floor keeps later writes above it
                        floor = max(floor, best[0].z)
                        continue
                    if batch and (
                        size + len(best[1]) > TRANSFER_PAGE_BYTES or len(batch) >= GROUP_PAGE
                    ):
                        await flush(batch)
                        batch, size = [], 0
                    batch.append((key, best[0], best[1], best[2]))  # (the writer's MAC too)
                    size += len(best[1])
        if batch:
            await flush(batch)
    finally:
        if sending:
            results = await asyncio.gather(*sending, return_exceptions=True)
            for r in results:
                if isinstance(r, BaseException):
                    raise r
    floor = max([floor, *(cur.floor for cur in cursors)])
    if floor > 0 and not no_floor:
        try:
            await dap.put_batch(net, target, group, [], floor=floor)
        except ConfigurationObsolete as e:
            raise _SourceObsolete(len(sources), e.next) from None
