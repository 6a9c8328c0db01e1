"""The pure server: requests in, (reply, writes to persist) out (docs/architecture.md principle 1).

:class:`ServerCore` holds one server's protocol state in memory and dispatches each request to the
pure rule of its role: ABD (docs/protocol.md §4.1), TREAS (§4.2), the Paxos acceptor (§5) and the
reconfiguration service (§6). It does no I/O, reads no clock and draws no random number: the
process shell (:mod:`aresdsm.server`) and the simulator (:mod:`aresdsm.sim`) both drive it,
persist the returned writes, and release the reply only once they -- and everything applied
before -- are durable (persist before reply, docs/protocol.md §1 "Durability").

Every data request names (group, configuration, object); the server answers ``unknown-config``
for a configuration it does not know and ``not-member`` for one it is not part of, and never
creates state for either. A server may start knowing no configuration at all (docs/protocol.md §3,
"servers joining"): it learns one from InstallConfig, which clients send when a server answers
``unknown-config``.

Integrity (issue 10; docs/protocol.md §4): a put-data whose value (TREAS: element) does not match
the writer's digest is refused with ``corrupt`` and changes nothing; the digest is stored with the
value and sent with it. A record that the storage engine found corrupt at recovery
(:class:`~aresdsm.storage.base.DamagedRecord`) marks what it belonged to as *damaged*: an
object, a (group, configuration) instance (its nextC, Paxos or GC record) or a configuration.
The server answers ``damaged`` for it -- a client counts that like a missing reply, so quorums
form from healthy copies -- until it is repaired: for an object whose lost tag is known, by a
put-data with a newer tag (the server then holds exactly what it would hold had nothing been
lost); in every case by a reconfiguration (the garbage collection of the old configuration drops
the damaged copy). A damaged object still acknowledges put-data: that is safe because a query
quorum never contains a server that refuses to answer queries.

Tag floor (docs/protocol.md §8.4 "Deleted objects"): an earlier rule dropped tombstones at
reconfiguration and set, per (group, configuration), a floor F -- the largest tag number of the
tombstones it dropped -- with a ``PutBatch`` of no items before it finalized the configuration.
Tombstones are transferred now (the floor did not stop an older value left in an older
configuration from winning a read after the delete); the server still stores F durably before
it acknowledges, keeps the larger of the old and the new one, and answers get-tag with at least
``(F, "")`` for every object, so configurations made under the earlier rule keep its guarantee.
Data replies are unchanged (an object not held is the initial pair, absent to readers): a floor
tag there would outrank an object transferred with a smaller tag on a server that does not hold
it.

Values by reference (issue 12 item 3): the core's state holds tags, digests and
:class:`~aresdsm.storage.base.ValueRef` -- which stored record holds a value and its length --
never value bytes. A put-data's value goes into the record to persist and the register keeps a
reference to that record; replies that carry values (data replies, TREAS lists, transfer pages,
coverable promises) carry the references, and the server shell reads them from the storage
engine (:func:`aresdsm.storage.values.resolve`) before it encodes the reply, at the same point of
the request's life, so it reads exactly the version the core referred to. A stored value that
turns out damaged when it is read is reported back (:meth:`ServerCore.mark_damaged`). A
coverable object's accepted values are records of their own (``cvrv``, one per open level), so
its acceptor record stays small and refers to them too.

Incarnations (issue 10): a configuration may name, with each server, the incarnation uid of its
data directory. A server refuses (``wrong-incarnation``) every request for a configuration that
names it with another uid: it is a re-created server that lost the state that configuration's
quorums counted on.
"""

from __future__ import annotations

import bisect
import functools
import heapq
import itertools
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from .. import integrity
from ..config import Configuration, validate_configuration
from ..errors import ConfigurationError, StorageError
from ..limits import (
    MAX_CONFIG_ID_BYTES,
    MAX_COUNTER,
    MAX_GROUP_BYTES,
    MAX_KEY_FIELD_BYTES,
    name_too_long,
)
from ..storage.base import DamagedRecord, Delete, Record, ValueRef, Write
from ..tags import Tag
from ..wire.blob import EMPTY, Blob
from ..wire.messages import (
    Accept,
    Ack,
    ChainsReply,
    CvrAccept,
    CvrInject,
    CvrNack,
    CvrPrepare,
    DataReply,
    ErrorReply,
    Finalized,
    GetGroup,
    GetStats,
    GroupReply,
    InstallConfig,
    KeysReply,
    LatestConfig,
    ListChains,
    ListEntry,
    ListKeys,
    ListReply,
    NextEntry,
    NextReply,
    ObjectState,
    Obsolete,
    Ping,
    Pong,
    Prepare,
    PutBatch,
    PutData,
    QueryData,
    QueryList,
    QueryTag,
    ReadConfig,
    Reply,
    Request,
    Stats,
    TagReply,
    WriteConfig,
)
from . import abd, coverable, paxos, reconfig_server, treas

CFG_NS = "cfg"
GC_NS = "gc"
FINAL_NS = "final"
FLOOR_NS = "floor"
CVR_VALUE_NS = "cvrv"
"""A coverable object's accepted value at one open level (key: object key NUL level)."""
StateKey = tuple[str, str, str]
"""(group, config_id, key)"""
InstanceKey = tuple[str, str]
"""(group, config_id)"""
MAX_KEYS_PAGE = 10_000
MAX_LIST_BYTES = 1024 * 1024
"""Characters of keys in one KeysReply at most (at least one key per page)."""
MAX_PAGE_BYTES = 32 * 1024 * 1024
"""Values in one GroupReply page at most (one object more than this never: a page holds at
least one object, and one object fits the 64 MiB frame limit)."""
MAX_DAMAGED_LISTED = 100
"""Damaged objects named in a Stats reply at most (the count is always exact)."""

_enc = msgspec.msgpack.Encoder()
_abd_meta_dec = msgspec.msgpack.Decoder(abd.StoredMeta)
_cfg_dec = msgspec.msgpack.Decoder(Configuration)
_next_dec = msgspec.msgpack.Decoder(NextEntry)
_acc_dec = msgspec.msgpack.Decoder(paxos.AcceptorState)
_int_dec = msgspec.msgpack.Decoder(int)

Result = tuple[Reply, list[Write]]


@dataclass(frozen=True)
class ServerSwitches:
    """Test-only switches that break the server on purpose (the simulator must catch each)."""

    broken_forget_promises: bool = False
    """Paxos acceptor promises are not persisted: a restart forgets them (docs/protocol.md §5)."""
    broken_forget_accepts: bool = False
    """Paxos acceptor accepts are not persisted: a restart forgets them (docs/protocol.md §5)."""
    broken_gc_on_pending: bool = False
    """Garbage-collect a configuration when its successor is P instead of F (§8.3)."""
    broken_cvr_no_freeze: bool = False
    """Coverable acceptors keep promising and accepting after the configuration got a
    successor, so a level can be decided after the transfer read it (§9.1)."""


@dataclass
class ServerCore:
    server_id: str
    configs: dict[str, Configuration] = field(default_factory=dict)
    registers: dict[StateKey, abd.Register] = field(default_factory=dict)
    lists: dict[StateKey, treas.TreasState] = field(default_factory=dict)
    nextc: dict[InstanceKey, NextEntry] = field(default_factory=dict)
    acceptors: dict[InstanceKey, paxos.AcceptorState] = field(default_factory=dict)
    objects: dict[InstanceKey, set[str]] = field(default_factory=dict)
    collected: set[InstanceKey] = field(default_factory=set)
    finals: dict[InstanceKey, NextEntry] = field(default_factory=dict)
    floors: dict[InstanceKey, int] = field(default_factory=dict)
    """Tag floor per (group, configuration) (docs/protocol.md §8.4 "Deleted objects"): get-tag
    reports at least ``(floor, "")`` for every object, so writers pick tags above every
    tombstone update-config dropped. Persisted; never decreases."""
    cvr: dict[StateKey, coverable.KeyState] = field(default_factory=dict)
    """Coverable registers' open levels (docs/protocol.md §9.1): Paxos acceptor state per level."""
    """(group, configuration) this server was told is finalized (§8.5 LATEST_CONFIG)."""
    _ordered: dict[InstanceKey, list[str]] = field(default_factory=dict)
    """Sorted keys of ``objects`` per instance, a cache for paged group reads."""
    _persisted_lists: set[StateKey] = field(default_factory=set)
    """TREAS objects with records on disk (else their initial entry is still implicit)."""
    """Configurations whose object state was garbage-collected (§8.3); persisted."""
    counters: dict[str, int] = field(default_factory=dict)
    switches: ServerSwitches = field(default_factory=ServerSwitches)
    _value_bytes: dict[InstanceKey, int] = field(default_factory=dict)
    """Bytes of values (ABD) and coded elements (TREAS) held per instance: running totals kept
    on every change, so GetStats costs O(1) in the number of objects."""
    _total_value_bytes: int = 0
    incarnation: str = ""
    """This server's incarnation uid (its data directory's); "" in the simulator: no check."""
    damaged: dict[StateKey, Tag | None] = field(default_factory=dict)
    """Objects whose stored copy was corrupt: the highest tag it may have held (None: unknown,
    only a reconfiguration repairs it)."""
    damaged_instances: set[InstanceKey] = field(default_factory=set)
    """(group, configuration) whose nextC, Paxos or GC record was corrupt: nothing answered."""
    damaged_configs: set[str] = field(default_factory=set)
    """Configurations whose descriptor record was corrupt: nothing answered for them."""
    _served: dict[str, Configuration] = field(default_factory=dict)
    """Configurations :meth:`_config` found this server serves (a member, with this
    incarnation): a descriptor never changes under its id, so those checks are made once per
    configuration, not once per request (the damaged check still is)."""

    # -- recovery --------------------------------------------------------------------------------

    @classmethod
    def recover(
        cls,
        server_id: str,
        records: list[Record | DamagedRecord] | tuple[Record | DamagedRecord, ...],
        *,
        switches: ServerSwitches | None = None,
        incarnation: str = "",
    ) -> ServerCore:
        core = cls(server_id, switches=switches or ServerSwitches(), incarnation=incarnation)
        damaged = [r for r in records if isinstance(r, DamagedRecord)]
        cvr_values: dict[tuple[StateKey, int], Blob] = {}
        for r in records:
            if isinstance(r, DamagedRecord):
                continue
            try:
                if r.ns == CVR_VALUE_NS:
                    key, level = r.key.rsplit("\x00", 1)
                    cvr_values[((r.group, r.config_id, key), int(level))] = _value_ref(r)
                else:
                    core._restore(r)
            except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as e:
                raise StorageError(
                    f"corrupt record {r.ns}/{r.group}/{r.config_id}/{r.key}: {e}"
                ) from None
        for skey, st in core.cvr.items():
            core.cvr[skey] = _with_values(st, functools.partial(_cvr_value, cvr_values, skey))
        for d in damaged:
            core._mark_damaged(d)
        return core

    def mark_damaged(self, d: DamagedRecord) -> ErrorReply:
        """A value the shell read for a reply is damaged (its checksum failed, its file is
        gone): stop answering for what it belonged to, as if recovery had found it (a newer
        put-data or a reconfiguration repairs it). Returns the reply to send instead.

        The shell may read a value after the core went on (large values are read off the event
        loop): an ABD register that holds a newer tag than the damaged record's no longer refers
        to it -- marking it would lower the register's tag -- so only the reply changes."""
        if not (d.ns == abd.NS and d.meta is not None and self._superseded(d)):
            self._mark_damaged(d)
        return self._damaged_reply(f"a stored value of {_readable(d.group, d.config_id)}")

    def _superseded(self, d: DamagedRecord) -> bool:
        """An ABD record's register holds a tag newer than the record's (read late)."""
        assert d.meta is not None
        try:
            lost = _abd_meta_dec.decode(d.meta).tag
        except (msgspec.DecodeError, msgspec.ValidationError):
            return False
        reg = self.registers.get((d.group, d.config_id, d.key))
        return reg is not None and reg.tag > lost

    def value_bytes_in_memory(self) -> int:
        """Bytes of values the in-memory state holds itself rather than by reference: 0 but for
        values a damaged record left empty and coverable values of an older record format
        (tests check that memory does not grow with the data stored)."""
        total = sum(_held(r.value) for r in self.registers.values())
        total += sum(_held(e.element) for st in self.lists.values() for e in st)
        total += sum(
            _held(lv.accepted.value)
            for st in self.cvr.values()
            for lv in st.levels
            if lv.accepted is not None
        )
        return total

    def _mark_damaged(self, d: DamagedRecord) -> None:
        """A record failed its checksum at recovery: stop answering for what it belonged to."""
        self.counters["damaged-records"] = self.counters.get("damaged-records", 0) + 1
        inst = (d.group, d.config_id)
        if d.ns == abd.NS:
            lost: Tag | None = None
            if d.meta is not None:
                try:
                    lost = _abd_meta_dec.decode(d.meta).tag
                except (msgspec.DecodeError, msgspec.ValidationError):
                    lost = None
            skey = (d.group, d.config_id, d.key)
            self.damaged[skey] = lost
            # the register keeps the lost tag (never lower): a newer put-data repairs it
            self._set_register(
                skey, abd.Register(lost if lost is not None else _UNKNOWN_TAG, Blob(b""), b"")
            )
            self._add_object(inst, d.key)
        elif d.ns == treas.NS:
            # the record key names the object and the tag: `key NUL z NUL writer` (the key may
            # itself hold a NUL -- group NUL key on the cluster chain -- the writer never does)
            parts = d.key.rsplit("\x00", 2)
            key = parts[0]
            lost = Tag(int(parts[1]), parts[2]) if len(parts) == 3 and parts[1].isdigit() else None
            skey = (d.group, d.config_id, key)
            if lost is None or (skey in self.damaged and self.damaged[skey] is None):
                self.damaged[skey] = None
            else:
                prev = self.damaged.get(skey)
                self.damaged[skey] = lost if prev is None else max(prev, lost)
            if lost is not None:
                # keep the tag (an entry without element, as after δ+1 newer writes)
                entry = ListEntry(lost, None)
                rest_entries = tuple(e for e in self.lists.get(skey, ()) if e.tag != lost)
                self._set_list(skey, tuple(sorted((*rest_entries, entry), key=_by_tag)))
                self._persisted_lists.add(skey)
            self._add_object(inst, key)
        elif d.ns == CFG_NS:
            self.damaged_configs.add(d.config_id)
        elif d.ns == FINAL_NS:
            pass  # only a hint for LATEST_CONFIG (§8.5): answering with less is safe
        else:  # nextC, Paxos acceptor state, GC marker: the instance's protocol state is lost
            self.damaged_instances.add(inst)

    def _restore(self, r: Record) -> None:
        inst = (r.group, r.config_id)
        if r.ns == CFG_NS:
            cfg = _cfg_dec.decode(r.meta)
            self.configs[cfg.id] = cfg
        elif r.ns == abd.NS:
            meta = _abd_meta_dec.decode(r.meta)
            self._set_register(
                (r.group, r.config_id, r.key),
                abd.Register(meta.tag, _value_ref(r), meta.digest, meta.mac),
            )
            self._add_object(inst, r.key)
        elif r.ns == treas.NS:
            key, entry = treas.decode_entry(r.meta, _value_ref(r) if r.data is not None else None)
            skey = (r.group, r.config_id, key)
            self._set_list(skey, tuple(sorted((*self.lists.get(skey, ()), entry), key=_by_tag)))
            self._persisted_lists.add(skey)
            self._add_object(inst, key)
        elif r.ns == reconfig_server.NS:
            self.nextc[inst] = _next_dec.decode(r.meta)
        elif r.ns == paxos.NS:
            self.acceptors[inst] = _acc_dec.decode(r.meta)
        elif r.ns == GC_NS:
            self.collected.add(inst)
        elif r.ns == FINAL_NS:
            self.finals[inst] = _next_dec.decode(r.meta)
        elif r.ns == FLOOR_NS:
            self.floors[inst] = max(self.floors.get(inst, 0), _int_dec.decode(r.meta))
        elif r.ns == coverable.NS:
            st = coverable.decode_state(r.meta)
            if st.levels:
                self.cvr[(r.group, r.config_id, r.key)] = st
                self._add_object(inst, r.key)

    def install_config(self, c: Configuration) -> list[Write]:
        """Learn a configuration (the initial one at bootstrap). Returns the writes to persist."""
        if c.id in self.configs:
            return []
        self.configs[c.id] = c
        return [Record(CFG_NS, "", c.id, "", _enc.encode(c))]

    # -- dispatch --------------------------------------------------------------------------------

    def handle(self, req: Request) -> Result:
        kind = type(req).__name__
        counters = self.counters
        counters[kind] = counters.get(kind, 0) + 1
        bad = _bad_names(req)
        if bad is not None:
            counters["bad-requests"] = counters.get("bad-requests", 0) + 1
            return bad, []
        handler = _HANDLERS.get(type(req))
        if handler is None:  # pragma: no cover - every Request type has a handler
            return ErrorReply("bad-request", f"unexpected message {kind}"), []
        result: Result = handler(self, req)
        return result

    def _config(self, config_id: str) -> Configuration | ErrorReply:
        c = self._served.get(config_id)
        if (
            c is not None
            and c is self.configs.get(config_id)
            and config_id not in self.damaged_configs
        ):
            return c  # (checked before: a member, this incarnation)
        return self._check_config(config_id)

    def _check_config(self, config_id: str) -> Configuration | ErrorReply:
        """:meth:`_config` the first time (and for every refused request): the checks in full;
        a configuration that passes is remembered in ``_served``."""
        if config_id in self.damaged_configs:
            return self._damaged_reply(f"configuration {config_id!r}")
        c = self.configs.get(config_id)
        if c is None:
            self.counters["unknown-config"] = self.counters.get("unknown-config", 0) + 1
            return ErrorReply(
                "unknown-config",
                f"server {self.server_id} does not know configuration {config_id!r}",
            )
        if not c.has_member(self.server_id):
            return ErrorReply(
                "not-member",
                f"server {self.server_id} is not a member of configuration {config_id!r}",
            )
        wrong = self._wrong_incarnation(c)
        if wrong is not None:
            return wrong
        self._served[config_id] = c
        return c

    def _wrong_incarnation(self, c: Configuration) -> ErrorReply | None:
        """The configuration names this server with another incarnation uid: this server was
        re-created (its disk wiped or replaced) and lacks the state c's quorums counted on."""
        if not self.incarnation:
            return None
        for s in c.servers:
            if s.id == self.server_id and s.uid and s.uid != self.incarnation:
                self.counters["wrong-incarnation"] = self.counters.get("wrong-incarnation", 0) + 1
                return ErrorReply(
                    "wrong-incarnation",
                    f"configuration {c.id} names incarnation {s.uid} of server {self.server_id}; "
                    f"this is incarnation {self.incarnation} (its data directory was re-created): "
                    "it does not answer for that configuration",
                )
        return None

    def _damaged_reply(self, what: str) -> ErrorReply:
        self.counters["damaged-refused"] = self.counters.get("damaged-refused", 0) + 1
        return ErrorReply(
            "damaged", f"server {self.server_id}: {what} is damaged on its disk; ask others"
        )

    # -- data access primitives ------------------------------------------------------------------

    def _treas_state(self, c: Configuration, skey: StateKey) -> treas.TreasState:
        st = self.lists.get(skey)
        if st is None:
            st = treas.initial_state(c, c.index_of(self.server_id))
        return st

    def _data_config(self, group: str, config_id: str) -> Configuration | Reply:
        """The configuration of a data request, or the reply refusing it (unknown, not a member,
        or garbage-collected: OBSOLETE with the F successor)."""
        c = self._config(config_id)
        if isinstance(c, ErrorReply):
            return c
        inst = (group, config_id)
        if inst in self.damaged_instances:
            return self._damaged_reply(f"the state of {group}/{config_id}")
        if inst in self.collected:
            self.counters["obsolete"] = self.counters.get("obsolete", 0) + 1
            return Obsolete(self.nextc[inst])
        return c

    def _next(self, group: str, config_id: str) -> NextEntry | None:
        return self.nextc.get((group, config_id))

    def holds_tag(self, group: str, config_id: str, key: str, tag: Tag) -> bool:
        """Whether a put-data of ``tag`` would add nothing this server does not already have
        (ABD: it stores ``tag`` or a newer one; TREAS: ``tag`` is in its list), or would be
        refused anyway (unknown configuration, not a member, garbage-collected). A read-only
        query: the server shell's authorization uses it (docs/protocol.md §13), the core does
        not."""
        c = self.configs.get(config_id)
        if c is None or not c.has_member(self.server_id) or (group, config_id) in self.collected:
            return True
        skey = (group, config_id, key)
        if c.dap == "treas":
            return any(e.tag == tag for e in self._treas_state(c, skey))
        return tag <= self.registers.get(skey, abd.INITIAL).tag

    def _on_query_tag(self, req: QueryTag) -> Result:
        c = self._data_config(req.group, req.config_id)
        if not isinstance(c, Configuration):
            return c, []
        skey = (req.group, req.config_id, req.key)
        if skey in self.damaged:
            return self._damaged_reply(f"object {req.key!r} of {req.group}/{req.config_id}"), []
        inst = (req.group, req.config_id)
        nxt = self.nextc.get(inst)
        if c.dap == "treas":
            tag = treas.on_query_tag(self._treas_state(c, skey)).tag
        else:
            tag = abd.on_query_tag(self.registers.get(skey, abd.INITIAL)).tag
        floor = self.floors.get(inst, 0)
        if tag.z < floor:  # §8.4 "Deleted objects": a writer's tag goes above the floor
            tag = Tag(floor, "")
        return TagReply(tag, nxt), []

    def _on_query_data(self, req: QueryData) -> Result:
        c = self._data_config(req.group, req.config_id)
        if not isinstance(c, Configuration):
            return c, []
        if c.dap != "abd":
            return ErrorReply("bad-request", f"QueryData on {c.dap} configuration {c.id}"), []
        skey = (req.group, req.config_id, req.key)
        if skey in self.damaged:
            return self._damaged_reply(f"object {req.key!r} of {req.group}/{req.config_id}"), []
        reg = self.registers.get(skey, abd.INITIAL)
        nxt = self.nextc.get((req.group, req.config_id))
        return DataReply(reg.tag, reg.value, nxt, reg.digest, reg.mac), []

    def _on_query_list(self, req: QueryList) -> Result:
        c = self._data_config(req.group, req.config_id)
        if not isinstance(c, Configuration):
            return c, []
        if c.dap != "treas":
            return ErrorReply("bad-request", f"QueryList on {c.dap} configuration {c.id}"), []
        skey = (req.group, req.config_id, req.key)
        if skey in self.damaged:
            return self._damaged_reply(f"object {req.key!r} of {req.group}/{req.config_id}"), []
        st = self._treas_state(c, skey)
        return ListReply(st, self._next(req.group, req.config_id)), []

    def _on_put_data(self, req: PutData) -> Result:
        c = self._data_config(req.group, req.config_id)
        if not isinstance(c, Configuration):
            return c, []
        bad = _bad_item(req.key, req.tag) or _bad_digest(
            c, req.value, req.digest, req.element_digest
        )
        if bad is not None:
            return bad, []
        writes = self._apply_put(c, req)
        return Ack(self.nextc.get((req.group, req.config_id))), writes

    def _on_put_batch(self, req: PutBatch) -> Result:
        """Many objects' put-data in one request (§8.4 batched state transfer); one ACK."""
        c = self._data_config(req.group, req.config_id)
        if not isinstance(c, Configuration):
            return c, []
        if len(req.items) > MAX_KEYS_PAGE:
            return ErrorReply("bad-request", f"a batch holds at most {MAX_KEYS_PAGE} objects"), []
        if not 0 <= req.floor < MAX_COUNTER:
            return ErrorReply("bad-request", f"floor {req.floor} out of range"), []
        for item in req.items:
            bad = _bad_item(item.key, item.tag) or _bad_digest(
                c, item.value, item.digest, item.element_digest
            )
            if bad is not None:
                return bad, []
        writes: list[Write] = []
        for item in req.items:
            writes += self._apply_put(
                c,
                PutData(
                    req.group,
                    req.config_id,
                    item.key,
                    item.tag,
                    item.value,
                    item.digest,
                    item.element_digest,
                    item.mac,
                ),
            )
        inst = (req.group, req.config_id)
        if req.floor > self.floors.get(inst, 0):  # max(old, new): never decreases
            self.floors[inst] = req.floor
            writes.append(Record(FLOOR_NS, req.group, req.config_id, "", _enc.encode(req.floor)))
        return Ack(self._next(req.group, req.config_id)), writes

    def _apply_put(self, c: Configuration, req: PutData) -> list[Write]:
        """The DAP's put-data rule on this server's state; the records to persist. The value
        goes into the record (a received value is a view of its frame: the write batch keeps
        the frame until the commit, no copy), the state keeps a reference to that record."""
        skey = (req.group, req.config_id, req.key)
        if skey in self.damaged:
            lost = self.damaged[skey]
            if lost is None or not req.tag > max(lost, self._max_tag(c, skey)):
                return []  # acknowledged, not applied: safe, no query quorum holds this server
            del self.damaged[skey]  # repaired: what it now holds is newer than all it lost
            self.counters["damaged-repaired"] = self.counters.get("damaged-repaired", 0) + 1
            repaired = True
        else:
            repaired = False
        if c.dap == "treas":
            old = self._treas_state(c, skey)
            new_list, _ = treas.on_put_data(old, req, c.delta)
            if new_list is None:
                return []
            self._add_object((req.group, req.config_id), req.key)
            if skey not in self._persisted_lists or repaired:
                old = ()  # the initial entry was never written yet / rewrite a damaged entry
                self._persisted_lists.add(skey)
            writes: list[Write] = []
            refs: dict[Tag, Blob] = {}
            for entry in treas.changed_entries(old, new_list):
                if isinstance(entry.element, ValueRef):
                    continue  # (a rewrite after repair) its record holds it already
                rkey, meta, data = treas.encode_entry(req.key, entry)
                record = Record(treas.NS, req.group, req.config_id, rkey, meta, data)
                writes.append(record)
                if data is not None:
                    refs[entry.tag] = _value_ref(record)
            self._set_list(
                skey,
                tuple(
                    msgspec.structs.replace(e, element=refs[e.tag]) if e.tag in refs else e
                    for e in new_list
                ),
            )
            return writes + self._prune_cvr(c, skey)
        new, _ = abd.on_put_data(self.registers.get(skey, abd.INITIAL), req)
        if new is None:
            return []
        meta = _enc.encode(abd.StoredMeta(new.tag, new.digest, new.mac))
        record = Record(abd.NS, req.group, req.config_id, req.key, meta, new.value.data)
        self._set_register(skey, msgspec.structs.replace(new, value=_value_ref(record)))
        self._add_object((req.group, req.config_id), req.key)
        if skey not in self.cvr:  # (not a coverable object: no open levels to prune)
            return [record]
        return [record, *self._prune_cvr(c, skey)]

    def _prune_cvr(self, c: Configuration, skey: StateKey) -> list[Write]:
        """A coverable object's levels up to its new committed version are decided and put:
        drop their acceptor state (and its values) now, not at the next coverable request."""
        held = self.cvr.get(skey)
        if held is None:
            return []
        new = coverable.pruned(held, self._committed(c, skey))
        if new is held:
            return []
        return self._store_cvr(skey, held, new)

    def _store_cvr(
        self, skey: StateKey, old: coverable.KeyState | None, new: coverable.KeyState
    ) -> list[Write]:
        """Keep ``new`` as the object's open levels; the records to persist: each newly
        accepted value as a record of its own (the state keeps a reference to it), the values
        of levels no longer accepted deleted, and the acceptor record without values."""
        group, config_id, key = skey
        writes: list[Write] = []
        refs: dict[int, Blob] = {}
        for lv in new.levels:
            if lv.accepted is not None and not isinstance(lv.accepted.value, ValueRef):
                record = Record(
                    CVR_VALUE_NS,
                    group,
                    config_id,
                    f"{key}\x00{lv.level}",
                    b"",
                    lv.accepted.value.data,
                )
                writes.append(record)
                refs[lv.level] = _value_ref(record)
        kept = {lv.level for lv in new.levels if lv.accepted is not None}
        for lv in old.levels if old is not None else ():
            if lv.accepted is not None and lv.level not in kept:
                writes.append(Delete(CVR_VALUE_NS, group, config_id, f"{key}\x00{lv.level}"))
        new = _with_values(new, refs.get)
        if new.levels:
            self.cvr[skey] = new
            self._add_object((group, config_id), key)
        else:  # (an empty record rather than a Delete: deletes are garbage collection's, §8.3)
            self.cvr.pop(skey, None)
        stripped = _with_values(new, lambda _: EMPTY)
        writes.append(Record(coverable.NS, group, config_id, key, coverable.encode_state(stripped)))
        return writes

    def _max_tag(self, c: Configuration, skey: StateKey) -> Tag:
        if c.dap == "treas":
            return max(e.tag for e in self._treas_state(c, skey))
        return self.registers.get(skey, abd.INITIAL).tag

    def _on_get_group(self, req: GetGroup) -> Result:
        """Paged DAP state of a group; with ``set_next``, SET_NEXT_AND_GET (§8.2): nextC is
        stored first, in the same step, so every state reported is as of after it."""
        c = self._data_config(req.group, req.config_id)
        if not isinstance(c, Configuration):
            return c, []
        if any(k[:2] == (req.group, req.config_id) for k in self.damaged):
            # refused whole, before set_next is stored: an error reply changes nothing
            return self._damaged_reply(f"an object of {req.group}/{req.config_id}"), []
        writes: list[Write] = []
        if req.set_next is not None:
            bad = _bad_configuration(req.set_next.config)
            if bad is not None:
                return bad, []
            reply, writes = self._on_write_config(
                WriteConfig(req.group, req.config_id, req.set_next, gc=False)
            )
            if isinstance(reply, ErrorReply):
                return reply, []
        limit = max(1, min(req.limit, MAX_KEYS_PAGE))
        limit_bytes = max(1, min(req.limit_bytes, MAX_PAGE_BYTES))
        inst = (req.group, req.config_id)
        ordered = self._ordered_keys(inst)
        start = bisect.bisect_right(ordered, req.after)
        keys = ordered[start : start + limit + 1]
        states: list[ObjectState] = []
        size = 0
        for k in keys[:limit]:
            st = self._object_state(c, req.group, k)
            if states and size + _state_bytes(st) > limit_bytes:
                break  # (a page holds at least one object, however large)
            states.append(st)
            size += _state_bytes(st)
        more = len(keys) > len(states)
        floor = self.floors.get(inst, 0)
        return GroupReply(tuple(states), more, self._next(req.group, req.config_id), floor), writes

    def _on_list_keys(self, req: ListKeys) -> Result:
        """Object keys only, by prefix, paged: at most ``limit`` (≤ MAX_KEYS_PAGE) keys and
        about MAX_LIST_BYTES of them; O(log n) to find the page start (bisection over the
        cached sorted keys)."""
        c = self._data_config(req.group, req.config_id)
        if not isinstance(c, Configuration):
            return c, []
        limit = max(1, min(req.limit, MAX_KEYS_PAGE))
        ordered = self._ordered_keys((req.group, req.config_id))
        if req.prefix > req.after:
            i = bisect.bisect_left(ordered, req.prefix)
        else:
            i = bisect.bisect_right(ordered, req.after)
        keys: list[str] = []
        size = 0
        more = False
        while i < len(ordered) and ordered[i].startswith(req.prefix):
            if len(keys) >= limit or (keys and size + len(ordered[i]) > MAX_LIST_BYTES):
                more = True
                break
            keys.append(ordered[i])
            size += len(ordered[i])
            i += 1
        return KeysReply(tuple(keys), more, self._next(req.group, req.config_id)), []

    def _on_list_chains(self, req: ListChains) -> Result:
        """The chains (groups) this server holds anything for, by prefix, paged (§8.4 with
        ``batch`` off: one chain per object)."""
        limit = max(1, min(req.limit, MAX_KEYS_PAGE))
        names = {g for g, _ in self.objects} | {g for g, _ in self.nextc}
        names |= {g for g, _ in self.acceptors}
        found = heapq.nsmallest(
            limit + 1, (g for g in names if g.startswith(req.prefix) and g > req.after)
        )
        return ChainsReply(tuple(found[:limit]), len(found) > limit), []

    def _set_register(self, skey: StateKey, reg: abd.Register) -> None:
        old = self.registers.get(skey)
        self._count_bytes(skey, len(reg.value) - (len(old.value) if old is not None else 0))
        self.registers[skey] = reg

    def _set_list(self, skey: StateKey, st: treas.TreasState) -> None:
        old = self.lists.get(skey)
        delta = treas.stored_bytes(st) - (treas.stored_bytes(old) if old is not None else 0)
        self._count_bytes(skey, delta)
        self.lists[skey] = st

    def _count_bytes(self, skey: StateKey, delta: int) -> None:
        inst = (skey[0], skey[1])
        self._value_bytes[inst] = self._value_bytes.get(inst, 0) + delta
        self._total_value_bytes += delta

    def _add_object(self, inst: InstanceKey, key: str) -> None:
        keys = self.objects.setdefault(inst, set())
        if key not in keys:
            keys.add(key)
            self._ordered.pop(inst, None)

    def _ordered_keys(self, inst: InstanceKey) -> list[str]:
        """The instance's object keys in order, kept between pages until an object is added
        (a group read pages with bisection: O(log n) per page, not O(n))."""
        ordered = self._ordered.get(inst)
        if ordered is None:
            ordered = self._ordered[inst] = sorted(self.objects.get(inst, ()))
        return ordered

    def _object_state(self, c: Configuration, group: str, key: str) -> ObjectState:
        skey = (group, c.id, key)
        open_ = coverable.highest_open(self.cvr.get(skey), self._committed(c, skey))
        if c.dap == "treas":
            st = self._treas_state(c, skey)
            return ObjectState(key, max(e.tag for e in st), None, st, open_)
        reg = self.registers.get(skey, abd.INITIAL)
        return ObjectState(key, reg.tag, reg.value, cvr=open_, digest=reg.digest, mac=reg.mac)

    # -- coverable register (docs/protocol.md §9.1) -----------------------------------------------

    def _committed(self, c: Configuration, skey: StateKey) -> Tag:
        """The newest version of the object put here (the DAP's state: only decided versions
        of a coverable object are ever put)."""
        if c.dap == "treas":
            return max(e.tag for e in self._treas_state(c, skey))
        return self.registers.get(skey, abd.INITIAL).tag

    def _cvr_step(
        self,
        req: CvrPrepare | CvrAccept | CvrInject,
        rule: Callable[[coverable.KeyState, Tag], tuple[coverable.KeyState | None, Reply]],
        *,
        freeze: bool,
    ) -> Result:
        c = self._data_config(req.group, req.config_id)
        if not isinstance(c, Configuration):
            return c, []
        bad = _bad_item(req.key, Tag(max(0, req.level), ""))
        if bad is not None:
            return bad, []
        if not 0 < req.level < MAX_COUNTER or not 0 <= req.ballot.round < MAX_COUNTER:
            return ErrorReply("bad-request", f"level or ballot out of range: {req.level}"), []
        skey = (req.group, req.config_id, req.key)
        committed = self._committed(c, skey)
        nxt = self._next(req.group, req.config_id)
        if freeze and nxt is not None and not self.switches.broken_cvr_no_freeze:
            # the configuration has a successor: its transfer reads (or read) these acceptors,
            # so no level may be decided here any more (docs/protocol.md §9.1, freeze)
            return CvrNack(None, committed, nxt), []
        held = coverable.pruned(self.cvr.get(skey), committed)
        new, reply = rule(held, committed)
        if isinstance(reply, ErrorReply):
            return reply, []
        reply = coverable.with_next(reply, nxt)
        if new is None:
            return reply, []
        return reply, self._store_cvr(skey, self.cvr.get(skey), new)

    def _on_cvr_prepare(self, req: CvrPrepare) -> Result:
        return self._cvr_step(req, lambda st, com: coverable.on_prepare(st, com, req), freeze=True)

    def _on_cvr_accept(self, req: CvrAccept) -> Result:
        bad = _bad_version(req)
        if bad is not None:
            return bad, []
        return self._cvr_step(req, lambda st, com: coverable.on_accept(st, com, req), freeze=True)

    def _on_cvr_inject(self, req: CvrInject) -> Result:
        bad = _bad_version(req)
        if bad is not None:
            return bad, []
        return self._cvr_step(req, lambda st, com: coverable.on_inject(st, com, req), freeze=False)

    # -- reconfiguration service and consensus ---------------------------------------------------

    def _instance_config(self, group: str, config_id: str) -> Configuration | ErrorReply:
        """The configuration of a reconfiguration-service or Paxos request (not refused when
        garbage-collected: nextC and acceptor state outlive the data)."""
        if (group, config_id) in self.damaged_instances:
            return self._damaged_reply(f"the state of {group}/{config_id}")
        return self._config(config_id)

    def _on_read_config(self, req: ReadConfig) -> Result:
        c = self._instance_config(req.group, req.config_id)
        if isinstance(c, ErrorReply):
            return c, []
        return reconfig_server.on_read_config(self.nextc.get((req.group, req.config_id))), []

    def _on_write_config(self, req: WriteConfig) -> Result:
        c = self._instance_config(req.group, req.config_id)
        if isinstance(c, ErrorReply):
            return c, []
        bad = _bad_configuration(req.entry.config) or _bad_successor(c, req.entry.config)
        if bad is not None:
            return bad, []
        inst = (req.group, req.config_id)
        held = self.nextc.get(inst)
        new, reply = reconfig_server.on_write_config(held, req.entry)
        if new is None:
            if req.gc and held == req.entry and held.status == "F":
                # F was stored earlier without gc (a discovery write-back): collect now (§8.3)
                return reply, self._collect(inst)
            return reply, []
        self.nextc[inst] = new
        writes: list[Write] = [
            Record(reconfig_server.NS, req.group, req.config_id, "", _enc.encode(new))
        ]
        if (req.gc and new.status == "F") or self.switches.broken_gc_on_pending:
            writes += self._collect(inst)
        return reply, writes

    def _collect(self, inst: InstanceKey) -> list[Write]:
        """§8.3: the successor is F, so it holds every value that completed here: delete this
        configuration's object state -- in the same durable step as the F entry -- and answer
        OBSOLETE from now on. nextC stays (a few bytes), so late clients find their way."""
        if inst in self.collected:
            return []
        group, config_id = inst
        self._ordered.pop(inst, None)
        for key in self.objects.pop(inst, set()):
            self.cvr.pop((group, config_id, key), None)
            self.registers.pop((group, config_id, key), None)
            self.lists.pop((group, config_id, key), None)
            self._persisted_lists.discard((group, config_id, key))
            self.damaged.pop((group, config_id, key), None)  # a reconfiguration repaired it
        self.collected.add(inst)
        self.floors.pop(inst, None)
        self._total_value_bytes -= self._value_bytes.pop(inst, 0)
        return [
            Delete(abd.NS, group, config_id),
            Delete(treas.NS, group, config_id),
            Delete(coverable.NS, group, config_id),
            Delete(CVR_VALUE_NS, group, config_id),
            Delete(FLOOR_NS, group, config_id),
            Record(GC_NS, group, config_id, "", b""),
        ]

    def _on_prepare(self, req: Prepare) -> Result:
        c = self._instance_config(req.group, req.config_id)
        if isinstance(c, ErrorReply):
            return c, []
        if not 0 <= req.ballot.round < MAX_COUNTER:
            return ErrorReply("bad-request", f"ballot round out of range: {req.ballot}"), []
        inst = (req.group, req.config_id)
        new, reply = paxos.on_prepare(self.acceptors.get(inst, paxos.INITIAL), req)
        if new is None:
            return reply, []
        self.acceptors[inst] = new
        if self.switches.broken_forget_promises:
            return reply, []
        return reply, [Record(paxos.NS, req.group, req.config_id, "", _enc.encode(new))]

    def _on_accept(self, req: Accept) -> Result:
        c = self._instance_config(req.group, req.config_id)
        if isinstance(c, ErrorReply):
            return c, []
        if not 0 <= req.ballot.round < MAX_COUNTER:
            return ErrorReply("bad-request", f"ballot round out of range: {req.ballot}"), []
        bad = _bad_configuration(req.value) or _bad_successor(c, req.value)
        if bad is not None:
            return bad, []
        inst = (req.group, req.config_id)
        new, reply = paxos.on_accept(self.acceptors.get(inst, paxos.INITIAL), req)
        if new is None:
            return reply, []
        self.acceptors[inst] = new
        if self.switches.broken_forget_accepts:
            return reply, []
        return reply, [Record(paxos.NS, req.group, req.config_id, "", _enc.encode(new))]

    def _on_latest_config(self, req: LatestConfig) -> Result:
        """§8.5: the newest finalized configuration this server knows for the chain, by its
        position (epoch) in the chain, never by its id (any F entry is safe to adopt; the client
        follows nextC from there). Linear in the entries held for all chains: a few per
        reconfiguration (one chain per cluster in Ares II)."""
        best: NextEntry | None = None
        for (g, _), e in [*self.nextc.items(), *self.finals.items()]:
            newer = best is None or e.config.epoch > best.config.epoch
            damaged = (g, _) in self.damaged_instances
            if g == req.group and e.status == "F" and newer and not damaged:
                best = e
        return NextReply(best), []

    def _on_finalized(self, req: Finalized) -> Result:
        if req.entry.status != "F":
            return ErrorReply("bad-request", "Finalized needs an F entry"), []
        bad = _bad_configuration(req.entry.config)
        if bad is not None:
            return bad, []
        if not req.entry.config.has_member(self.server_id):
            return ErrorReply("not-member", f"{self.server_id} is not in {req.entry.config.id}"), []
        wrong = self._wrong_incarnation(req.entry.config)
        if wrong is not None:
            return wrong, []
        inst = (req.group, req.entry.config.id)
        if inst in self.finals:
            return Ack(), []
        self.finals[inst] = req.entry
        record = Record(FINAL_NS, req.group, req.entry.config.id, "", _enc.encode(req.entry))
        return Ack(), [record, *self.install_config(req.entry.config)]

    def _on_install_config(self, req: InstallConfig) -> Result:
        bad = _bad_configuration(req.config)
        if bad is not None:
            return bad, []
        if not req.config.has_member(self.server_id):
            return ErrorReply(
                "not-member", f"server {self.server_id} is not in configuration {req.config.id}"
            ), []
        wrong = self._wrong_incarnation(req.config)
        if wrong is not None:
            return wrong, []
        if req.config.id in self.damaged_configs:
            return self._damaged_reply(f"configuration {req.config.id!r}"), []
        known = self.configs.get(req.config.id)
        if known is not None and known != req.config:
            return ErrorReply(
                "invariant", f"configuration id {req.config.id} already names another descriptor"
            ), []
        return Ack(), self.install_config(req.config)

    # -- misc --------------------------------------------------------------------------------------

    def _on_ping(self, req: Ping) -> Result:
        return Pong(req.payload), []

    def _on_stats(self, req: GetStats) -> Result:
        return self.stats(), []

    def stats(self, stored_bytes: int | None = None) -> Stats:
        """Counters and sizes from running totals: O(1) in the number of objects (at most
        :data:`MAX_STATS_CONFIGS` entries in ``by_config``)."""
        by_config = {
            f"{g}/{c}": n
            for (g, c), n in itertools.islice(self._value_bytes.items(), MAX_STATS_CONFIGS)
        }
        if stored_bytes is None:
            stored_bytes = self._total_value_bytes
        damaged = [_readable(g, c, k) for g, c, k in sorted(self.damaged)]
        damaged += [_readable(g, c) for g, c in sorted(self.damaged_instances)]
        damaged += [f"configuration {c}" for c in sorted(self.damaged_configs)]
        return Stats(
            self.server_id,
            dict(self.counters),
            len(self.registers) + len(self.lists),
            stored_bytes,
            by_config,
            tuple(damaged[:MAX_DAMAGED_LISTED]),
            len(damaged),
        )


_UNKNOWN_TAG = Tag(0, "")
MAX_STATS_CONFIGS = 1024
"""Instances (group, configuration) listed in a Stats reply's ``by_config``."""


def _bad_item(key: str, tag: Tag) -> ErrorReply | None:
    if key.count("\x00") > 1:  # Ares II keys are group NUL key (docs/protocol.md §2)
        return ErrorReply("bad-request", "object keys hold at most one NUL (group and key)")
    if not 0 <= tag.z < MAX_COUNTER:
        return ErrorReply("bad-request", f"tag number out of range: {tag.z}")
    if "\x00" in tag.writer:  # (TREAS record keys end with NUL z NUL writer)
        return ErrorReply("bad-request", "writer ids must not contain NUL")
    return None


def _readable(*parts: str) -> str:
    """chain/config/key for people: the NUL that joins a group and a key shows as '/'."""
    return "/".join(p.replace("\x00", "/") for p in parts)


def _bad_digest(
    c: Configuration, value: Blob, digest: bytes, element_digest: bytes
) -> ErrorReply | None:
    """A put-data's value (TREAS: this server's element) must match the writer's digest."""
    if c.dap == "treas":
        ok = integrity.matches(value.data, element_digest) and len(digest) == integrity.DIGEST_BYTES
    else:
        ok = integrity.matches(value.data, digest)
    if ok:
        return None
    return ErrorReply("corrupt", "the value does not match the writer's digest; nothing stored")


_NAME_FIELDS = (
    ("group", "group name", MAX_GROUP_BYTES),
    ("config_id", "configuration id", MAX_CONFIG_ID_BYTES),
    ("key", "object key", MAX_KEY_FIELD_BYTES),
    ("after", "'after' bound", MAX_KEY_FIELD_BYTES),
    ("prefix", "prefix", MAX_KEY_FIELD_BYTES),
)


_SHORT_NAMES_CHARS = min(limit for _, _, limit in _NAME_FIELDS) // 4
"""Names of this many characters in all are within every limit (UTF-8 takes at most 4 bytes a
character): the common case costs one sum, not a check per field."""


def _names_of(kind: type) -> tuple[tuple[str, str, int], ...]:
    fields = getattr(kind, "__struct_fields__", ())
    return tuple(f for f in _NAME_FIELDS if f[0] in fields)


def _getter(names: tuple[str, ...]) -> Callable[[Any], tuple[str, ...]]:
    if len(names) == 1:
        one = operator.attrgetter(names[0])
        return lambda req: (one(req),)
    return operator.attrgetter(*names) if names else lambda req: ()


_NAME_CHECKS: dict[type, tuple[Callable[[Any], tuple[str, ...]], tuple[tuple[str, str, int], ...]]]
_NAME_CHECKS = {
    kind: (_getter(tuple(n for n, _, _ in _names_of(kind))), _names_of(kind))
    for kind in Request.__args__
}
"""Per request type: a getter of its name fields (one call for all) and their limits."""


def _bad_names(req: Request) -> ErrorReply | None:
    """Names from the network within their limits (aresdsm.limits), whatever the client checked:
    a 33 MiB key would make every state-transfer page that holds it larger than a frame."""
    check = _NAME_CHECKS.get(type(req))
    if check is None:  # (not a Request type: nothing of it reaches the state)
        check = _NAME_CHECKS[type(req)] = (
            _getter(tuple(n for n, _, _ in _names_of(type(req)))),
            _names_of(type(req)),
        )
    get, fields = check
    values = get(req)
    if sum(map(len, values)) > _SHORT_NAMES_CHARS:
        for value, (_, what, max_bytes) in zip(values, fields, strict=True):
            reason = name_too_long(what, value, max_bytes)
            if reason is not None:
                return ErrorReply("bad-request", reason)
    if isinstance(req, PutBatch):
        for item in req.items:
            reason = name_too_long("object key", item.key, MAX_KEY_FIELD_BYTES)
            if reason is not None:
                return ErrorReply("bad-request", reason)
    return None


def _bad_version(req: CvrAccept | CvrInject) -> ErrorReply | None:
    """A coverable version from the wire: a valid key and tag, the tag's number its level."""
    bad = _bad_item(req.key, req.tag)
    if bad is None and req.tag.z != req.level:
        bad = ErrorReply("bad-request", "a coverable version's tag is its level")
    return bad


def _bad_configuration(c: Configuration) -> ErrorReply | None:
    """A descriptor from the network must be valid before any state depends on it."""
    try:
        validate_configuration(c)
    except ConfigurationError as e:
        return ErrorReply("bad-request", str(e))
    return None


def _bad_successor(c: Configuration, successor: Configuration) -> ErrorReply | None:
    """Epochs grow along a chain (Configuration.epoch): in the cluster's chain a successor's is
    its predecessor's + 1; with ``batch`` off one descriptor ends chains of different lengths,
    so it is only required to be above each predecessor's."""
    if successor.epoch <= c.epoch:
        return ErrorReply(
            "bad-request",
            f"successor {successor.id} of {c.id} must have an epoch above {c.epoch}, "
            f"not {successor.epoch}",
        )
    return None


def _state_bytes(st: ObjectState) -> int:
    open_ = len(st.cvr.value) if st.cvr is not None else 0
    if st.value is not None:
        return len(st.value) + open_
    return sum(len(e.element) for e in st.entries if e.element is not None) + open_


def _value_ref(r: Record) -> Blob:
    """What the core keeps of a record's value: a reference to the record (an empty value is
    kept as it is: nothing to read)."""
    if r.data is None or len(r.data) == 0:
        return EMPTY
    if isinstance(r.data, ValueRef) and r.data.record == r.record_key:
        return r.data  # (as the engine loaded it)
    return ValueRef(r.record_key, len(r.data))


def _cvr_value(values: dict[tuple[StateKey, int], Blob], skey: StateKey, level: int) -> Blob | None:
    return values.get((skey, level))


def _held(value: Blob | None) -> int:
    """Bytes a value holds in memory (a reference: none)."""
    return 0 if value is None or isinstance(value, ValueRef) else len(value)


def _with_values(
    st: coverable.KeyState, value_of: Callable[[int], Blob | None]
) -> coverable.KeyState:
    """``st`` with the accepted value of each level replaced by ``value_of(level)`` (None:
    unchanged)."""
    levels = []
    changed = False
    for lv in st.levels:
        v = value_of(lv.level) if lv.accepted is not None else None
        if v is not None and lv.accepted is not None:
            changed = True
            accepted = msgspec.structs.replace(lv.accepted, value=v)
            levels.append(msgspec.structs.replace(lv, accepted=accepted))
        else:
            levels.append(lv)
    return coverable.KeyState(tuple(levels)) if changed else st


def _by_tag(e: ListEntry) -> Tag:
    return e.tag


_HANDLERS: dict[type, Callable[[ServerCore, Any], Result]] = {
    QueryTag: ServerCore._on_query_tag,
    QueryData: ServerCore._on_query_data,
    QueryList: ServerCore._on_query_list,
    PutData: ServerCore._on_put_data,
    PutBatch: ServerCore._on_put_batch,
    GetGroup: ServerCore._on_get_group,
    ListChains: ServerCore._on_list_chains,
    ListKeys: ServerCore._on_list_keys,
    ReadConfig: ServerCore._on_read_config,
    WriteConfig: ServerCore._on_write_config,
    Prepare: ServerCore._on_prepare,
    Accept: ServerCore._on_accept,
    InstallConfig: ServerCore._on_install_config,
    LatestConfig: ServerCore._on_latest_config,
    Finalized: ServerCore._on_finalized,
    CvrPrepare: ServerCore._on_cvr_prepare,
    CvrAccept: ServerCore._on_cvr_accept,
    CvrInject: ServerCore._on_cvr_inject,
    Ping: ServerCore._on_ping,
    GetStats: ServerCore._on_stats,
}
