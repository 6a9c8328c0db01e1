"""Replies by reference: the server shell reads the values a reply refers to (issue 12 item 3).

:class:`~aresdsm.protocol.server_core.ServerCore` keeps tags, digests and *references*
(:class:`~aresdsm.storage.base.ValueRef`) in memory, never value bytes, and returns replies whose
values are such references: the core stays pure and its memory does not grow with the data
stored. :func:`resolve` replaces every reference in a reply by the bytes it stands for, read
through a ``read`` function -- the opened and read values in the process shell, the simulator's
disk model in the simulator, :class:`MemoryValues` in unit tests.

When: right after ``core.handle`` and ``storage.submit(writes)``, before any other request is
handled, every reference is *opened* as of the core's state that made the reply
(:meth:`Storage.open_value`: the newest pending write of its record, a small row, or a value
file pinned so that no later commit removes it); the server shell reads pinned files in the
storage's value-reading threads, off the event loop, then resolves the reply. The reply is then
held until everything applied before it is durable, exactly as before: persist before reply is
unchanged, and a value still in the group-commit window is served from the pending batch.

Only the reply kinds that carry values are walked (:data:`VALUE_REPLIES`): ABD ``DataReply``,
TREAS ``ListReply`` (δ+1 coded elements), ``GroupReply`` pages of the state transfer (at most
``MAX_PAGE_BYTES`` of values a page), and the coverable ``CvrPromise`` (the accepted value of
the level). Every other reply passes untouched, at no cost.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol, TypeVar

import msgspec

from ..wire.blob import Blob
from ..wire.messages import (
    CvrOpen,
    CvrPromise,
    DataReply,
    GroupReply,
    ListEntry,
    ListReply,
    ObjectState,
    Reply,
)
from .base import Record, RecordKey, ValueRef, Write
from .memory import apply_batch

Read = Callable[[ValueRef], bytes | memoryview]
"""Reads the bytes of one reference (raises DamagedValue or KeyError)."""

VALUE_REPLIES: tuple[type, ...] = (DataReply, ListReply, GroupReply, CvrPromise)
"""The reply kinds that can carry a value (a reference until resolved)."""

R = TypeVar("R", bound=Reply)


def resolve(reply: R, read: Read) -> R:
    """``reply`` with every :class:`ValueRef` replaced by a :class:`Blob` of its bytes (the same
    object if it holds none)."""
    if not isinstance(reply, VALUE_REPLIES):
        return reply
    out: Reply
    if isinstance(reply, DataReply):
        out = _replace(reply, "value", _blob(reply.value, read))
    elif isinstance(reply, ListReply):
        out = _replace(reply, "entries", _entries(reply.entries, read))
    elif isinstance(reply, GroupReply):
        states = tuple(_state(st, read) for st in reply.objects)
        out = (
            reply
            if all(a is b for a, b in zip(states, reply.objects, strict=True))
            else (msgspec.structs.replace(reply, objects=states))
        )
    else:
        assert isinstance(reply, CvrPromise)
        out = _replace(reply, "accepted", _open(reply.accepted, read))
    return out  # type: ignore[return-value,unused-ignore]


def refs_in(reply: Reply) -> list[ValueRef]:
    """Every reference a reply holds (tests and checks)."""
    found: list[ValueRef] = []
    resolve(reply, lambda ref: found.append(ref) or b"")  # type: ignore[func-returns-value]
    return found


_S = TypeVar("_S", bound=msgspec.Struct)


def _replace(obj: _S, name: str, new: object) -> _S:
    return obj if getattr(obj, name) is new else msgspec.structs.replace(obj, **{name: new})


_B = TypeVar("_B", Blob, Blob | None)


def _blob(value: _B, read: Read) -> _B:
    if isinstance(value, ValueRef):
        return Blob(read(value))
    return value


def _entries(entries: tuple[ListEntry, ...], read: Read) -> tuple[ListEntry, ...]:
    if not any(isinstance(e.element, ValueRef) for e in entries):
        return entries
    return tuple(_replace(e, "element", _blob(e.element, read)) for e in entries)


def _open(o: CvrOpen | None, read: Read) -> CvrOpen | None:
    if o is None:
        return None
    return _replace(o, "value", _blob(o.value, read))


def _state(st: ObjectState, read: Read) -> ObjectState:
    st = _replace(st, "value", _blob(st.value, read))
    st = _replace(st, "entries", _entries(st.entries, read))
    return _replace(st, "cvr", _open(st.cvr, read))


class MemoryValues:
    """Values of an in-memory disk, for unit tests and the simulator: ``read`` looks a
    reference up in pending writes (newest first), then in the durable records."""

    def __init__(self, durable: Mapping[RecordKey, Record] | None = None) -> None:
        self.durable: Mapping[RecordKey, Record] = durable if durable is not None else {}
        self.pending: list[Write] = []

    def read(self, ref: ValueRef) -> bytes | memoryview:
        return read_from(ref, self.pending, self.durable)


def read_from(
    ref: ValueRef, pending: list[Write], durable: Mapping[RecordKey, Record]
) -> bytes | memoryview:
    """The bytes of ``ref`` as of ``pending`` writes applied over ``durable`` records."""
    for w in reversed(pending):
        if isinstance(w, Record):
            if w.record_key == ref.record:
                return _data_of(w, ref)
        elif (w.key is None or w.key == ref.record[3]) and (
            w.ns,
            w.group,
            w.config_id,
        ) == ref.record[:3]:
            raise KeyError(ref.record)
    r = durable.get(ref.record)
    if r is None:
        raise KeyError(ref.record)
    return _data_of(r, ref)


def _data_of(r: Record, ref: ValueRef) -> bytes | memoryview:
    if r.data is None or isinstance(r.data, ValueRef) or len(r.data) != ref.length:
        raise KeyError(ref.record)
    return r.data


class _Core(Protocol):
    def handle(self, req: Any) -> tuple[Reply, list[Write]]: ...


class LocalServer:
    """A core over an in-memory disk on which every write is durable at once, for unit tests:
    :meth:`handle` persists the writes and reads the reply's values, as the process shell does
    (attributes other than ``handle`` are the core's)."""

    def __init__(self, core: _Core, records: Iterable[Record] = ()) -> None:
        self.core = core
        self.records: dict[RecordKey, Record] = {r.record_key: r for r in records}

    def handle(self, req: Any) -> tuple[Reply, list[Write]]:
        reply, writes = self.core.handle(req)
        apply_batch(self.records, writes)
        return resolve(reply, self.read), writes

    def read(self, ref: ValueRef) -> bytes | memoryview:
        return read_from(ref, [], self.records)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.core, name)
