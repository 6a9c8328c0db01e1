"""The storage engine interface: a durable map of state records, with group commit.

Server state is a set of records keyed by ``(ns, group, config_id, key)``: ``ns`` names the
protocol role that owns the record (``"abd"``, ``"cfg"``, later ``"treas"``, ``"paxos"``,
``"next"``), the rest as in docs/protocol.md §2. A record has a small ``meta`` (MessagePack
the role encodes) and an optional ``data`` blob (the value or coded element).

Values stay on disk (issue 12 item 3): :meth:`Storage.load` returns every record's meta with its
value as a :class:`ValueRef` -- which record holds it and how long it is, never its bytes -- so a
restart reads metadata only and server memory does not grow with the data stored. The server
shell reads a value (:meth:`Storage.open_value`, below) when a reply needs it: from the batch that
is being committed or waits for the next commit if the record is there (values still in the
group-commit window), else from the engine, checking the value's checksum then (a bad value is a
:class:`DamagedValue`, which the server turns into a damaged object).

Large values are read off the event loop (issue 12, server side): :meth:`Storage.open_value`
runs on the event loop when the core answers and *pins* the value as of that moment -- bytes of a
pending write or of a small row at once, or a :class:`PinnedValue` naming the value file, which
no later commit may delete while it is pinned (value files are written once, never in place) --
and :meth:`PinnedValue.read` reads and checks the file in a worker thread
(:meth:`Storage.read_pinned`), so a 4 MiB read and its checksum stall no other client.

Persist before reply (docs/architecture.md principle 4): a server applies a change to its in-memory
state, :meth:`Storage.submit` queues the record writes and returns a future that completes when
they are on stable storage; every reply waits for :meth:`Storage.barrier` -- the durability of
everything applied before it -- so a server never reports (let alone acknowledges) state that a
crash could lose. Writes queued while a commit is running share the next commit: group commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor

import msgspec

from ..wire.blob import Blob
from .committer import CommitThread

RecordKey = tuple[str, str, str, str]
"""(ns, group, config_id, key)"""


class ValueRef(Blob):
    """A value the storage engine holds, by reference: the record whose ``data`` it is and its
    length. It stands where a :class:`Blob` would (in the core's registers and lists, and in the
    replies the core returns) and holds no bytes: the server shell replaces it by the value
    (:func:`aresdsm.storage.values.resolve`) before a reply is encoded. Reading ``data`` of an
    unresolved reference is a bug and raises, so one can never be sent as an empty value."""

    __slots__ = ("length", "record")

    def __init__(self, record: RecordKey, length: int) -> None:  # (no Blob.__init__: no data)
        self.record = record
        self.length = length

    @property  # type: ignore[override,unused-ignore]
    def data(self) -> bytes | memoryview:  # type: ignore[override]
        raise UnresolvedValue(f"value of record {self.record!r} was not read from storage")

    def __len__(self) -> int:
        return self.length

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ValueRef):
            return self.record == other.record and self.length == other.length
        if isinstance(other, Blob):
            return False  # (bytes in memory are another thing; never read to compare)
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self.record, self.length))

    def __repr__(self) -> str:
        return f"ValueRef({self.record!r}, {self.length} bytes)"

    def __reduce__(self) -> tuple[type, tuple[RecordKey, int]]:
        return (ValueRef, (self.record, self.length))


class UnresolvedValue(RuntimeError):
    """A :class:`ValueRef` was used as a value (a bug: the shell resolves every reply)."""


class DamagedValue(Exception):
    """A referenced value cannot be read intact: missing, short, or its checksum does not match.
    ``damaged`` describes the record for the core (:meth:`ServerCore.mark_damaged`)."""

    def __init__(self, damaged: DamagedRecord) -> None:
        super().__init__(damaged.reason)
        self.damaged = damaged


class Record(msgspec.Struct, frozen=True):
    ns: str
    group: str
    config_id: str
    key: str
    meta: bytes
    data: bytes | memoryview | ValueRef | None = None
    """The value: bytes in a write; a :class:`ValueRef` (the value stays on disk) in what
    :meth:`Storage.load` returns from an engine that keeps values out of memory."""

    @property
    def record_key(self) -> RecordKey:
        return (self.ns, self.group, self.config_id, self.key)


class DamagedRecord(msgspec.Struct, frozen=True):
    """A record whose checksum did not match on recovery (a damaged disk). ``meta`` is the
    record's meta when that part is intact (only the value is bad), else None."""

    ns: str
    group: str
    config_id: str
    key: str
    meta: bytes | None
    reason: str


class Delete(msgspec.Struct, frozen=True):
    """Delete one record, or (key=None) every record of (ns, group, config_id)."""

    ns: str
    group: str
    config_id: str
    key: str | None = None


Write = Record | Delete

VALUE_READ_THREADS = 2
"""Worker threads that read pinned values (:meth:`Storage.read_pinned`): at most this many
values are being read at once, whatever the number of clients (memory of reads in progress is
bounded by this times the largest value; a read waiting for a thread holds only its pin)."""


class PinnedValue(ABC):
    """A stored value pinned as of the moment the core answered, to be read off the event loop.

    The engine keeps what it refers to (a value file) until :meth:`release`, even if a later
    commit replaces or deletes its record. :meth:`read` blocks (call it in a worker thread,
    :meth:`Storage.read_pinned`); :meth:`release` may be called from any thread, once."""

    __slots__ = ("length",)

    def __init__(self, length: int) -> None:
        self.length = length
        """Bytes :meth:`read` returns (for memory accounting before the read)."""

    @abstractmethod
    def read(self) -> bytes | memoryview:
        """The value, its checksum checked (raises DamagedValue)."""

    @abstractmethod
    def release(self) -> None:
        """Unpin: the engine may delete what the value was read from."""


class Storage(ABC):
    """A durable record store with group commit. One instance per server process."""

    def __init__(self) -> None:
        self._open_batch: list[Write] = []
        self._open_future: asyncio.Future[None] | None = None
        self._inflight_future: asyncio.Future[None] | None = None
        self._flusher: asyncio.Task[None] | None = None
        self.commits = 0
        self.records_written = 0
        self.failed: Exception | None = None
        """Set by the first failed commit; the store accepts nothing after it."""
        self._failed_future: asyncio.Future[None] | None = None
        """The failed commit's future, returned by submit() and barrier() from then on."""
        self.on_commit: Callable[[int, float], None] | None = None
        """Metrics hook: called after each durable commit with (records, seconds)."""
        self._open_index: dict[RecordKey, Record | None] = {}
        """The open batch's newest write of each record (None: deleted): values are read from
        here while the batch waits for its commit."""
        self._inflight_index: dict[RecordKey, Record | None] = {}
        """The same for the batch being committed (until its commit returns)."""
        self.values_read = 0
        """Values read from the engine (not from a pending batch): metrics and tests."""
        self._value_reader: ThreadPoolExecutor | None = None
        """The value-reading threads (:meth:`read_pinned`), made on first use."""
        self._committer = CommitThread()
        """The engine's commit thread (:mod:`.committer`): one thread hop per group commit."""

    # -- engine-specific ---------------------------------------------------------------------

    @abstractmethod
    def load(self) -> Iterable[Record | DamagedRecord]:
        """Every record on stable storage (used once, at start-up, to recover); a record whose
        checksum does not match comes back as a :class:`DamagedRecord`."""

    @abstractmethod
    def _commit(self, batch: list[Write]) -> None:
        """Apply a batch atomically and make it durable. Runs in a worker thread."""

    @abstractmethod
    def close(self) -> None:
        """Release files. Only after everything submitted is durable."""

    @abstractmethod
    def _read_value(self, record: RecordKey) -> bytes | memoryview:
        """The value of a committed record, its checksum checked (raises DamagedValue, or
        KeyError if there is no such record or it has no value). Called on the event loop
        while no commit changes this record (see :meth:`read_value`)."""

    def _open_value(self, record: RecordKey) -> bytes | memoryview | PinnedValue:
        """Like :meth:`_read_value`, but a value that is costly to read may come back pinned
        (an engine with value files pins the file). The default reads at once."""
        return self._read_value(record)

    def open_value(self, ref: ValueRef) -> bytes | memoryview | PinnedValue:
        """The bytes ``ref`` stands for as of everything submitted so far, or a
        :class:`PinnedValue` that reads them later, unchanged by anything submitted after this
        call: from the newest pending write of its record (open batch, then the batch being
        committed), else from the engine. Raises DamagedValue (the stored value is bad) or
        KeyError (no such value: a bug).

        Consistent without locks: it runs on the event loop, between core steps, and a record
        absent from both pending batches is changed by no commit that is running (a commit
        starts only from the event loop, with its batch in ``_inflight_index``); a later commit
        does not delete a pinned value file."""
        for index in (self._open_index, self._inflight_index):
            if ref.record in index:
                w = index[ref.record]
                if w is None or w.data is None or isinstance(w.data, ValueRef):
                    raise KeyError(ref.record)
                return w.data
        got = self._open_value(ref.record)
        self.values_read += 1
        length = got.length if isinstance(got, PinnedValue) else len(got)
        if length != ref.length:
            if isinstance(got, PinnedValue):
                got.release()
            raise KeyError(ref.record)  # another version than the core refers to: a bug
        return got

    def read_value(self, ref: ValueRef) -> bytes | memoryview:
        """:meth:`open_value` and, if pinned, the read at once (blocking: simulator, tests,
        tools; the server reads pinned values with :meth:`read_pinned`)."""
        got = self.open_value(ref)
        if not isinstance(got, PinnedValue):
            return got
        try:
            return got.read()
        finally:
            got.release()

    def read_pinned(
        self, pinned: Sequence[PinnedValue]
    ) -> asyncio.Future[list[bytes | memoryview]]:
        """Read pinned values in one of the :data:`VALUE_READ_THREADS` value-reading threads
        (off the event loop), each released after its read; the future fails with the first
        DamagedValue (every value is released either way)."""
        if self._value_reader is None:
            self._value_reader = ThreadPoolExecutor(
                max_workers=VALUE_READ_THREADS, thread_name_prefix="ares-value-read"
            )
        return asyncio.get_running_loop().run_in_executor(
            self._value_reader, _read_all, list(pinned)
        )

    def _stop_value_reader(self) -> None:
        """Engines call this from :meth:`close`: waits for reads in progress."""
        if self._value_reader is not None:
            self._value_reader.shutdown(wait=True, cancel_futures=False)
            self._value_reader = None

    def stored_bytes(self) -> int:
        """Approximate bytes of state held (metrics)."""
        return 0

    def bytes_by_instance(self) -> dict[tuple[str, str], int]:
        """Bytes of records per (group, configuration), kept as running totals (metrics; an
        engine without them returns {}). Safe to call while a commit runs."""
        return {}

    def probe_writable(self) -> None:
        """Raise OSError if the engine could not make a new write durable now (``/healthz``).
        Blocking: called in a worker thread. The default (no files): nothing to check."""
        return

    # -- group commit --------------------------------------------------------------------------

    def submit(self, writes: list[Write]) -> asyncio.Future[None]:
        """Queue writes; the returned future completes when they are durable."""
        if self._failed_future is not None:
            return self._failed_future
        if self._open_future is None:
            self._open_future = asyncio.get_running_loop().create_future()
        self._open_batch.extend(writes)
        index = self._open_index
        for w in writes:
            if isinstance(w, Record):
                index[w.record_key] = w
            elif w.key is not None:
                index[(w.ns, w.group, w.config_id, w.key)] = None
            # (a Delete of a whole instance: the core refers to none of its values any more)
        fut = self._open_future
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush_loop())
        return fut

    def barrier(self) -> asyncio.Future[None] | None:
        """A future for the durability of everything submitted so far (None: all durable).
        After a failed commit, the failed future: nothing is durable any more."""
        if self._failed_future is not None:
            return self._failed_future
        if self._open_future is not None:
            return self._open_future
        if self._inflight_future is not None and not self._inflight_future.done():
            return self._inflight_future
        return None

    async def _flush_loop(self) -> None:
        while self._open_future is not None:
            batch, fut = self._open_batch, self._open_future
            self._open_batch, self._open_future = [], None
            self._inflight_index, self._open_index = self._open_index, {}
            self._inflight_future = fut
            started = time.perf_counter()
            try:
                await self._run_commit(batch)
            except Exception as e:  # the server treats this as fatal (fail-stop)
                self.failed = e
                if not fut.done():
                    fut.set_exception(e)
                self._failed_future = fut
                return
            self._inflight_index = {}
            self.commits += 1
            self.records_written += len(batch)
            if self.on_commit is not None:
                self.on_commit(len(batch), time.perf_counter() - started)
            if not fut.done():
                fut.set_result(None)

    async def _run_commit(self, batch: list[Write]) -> None:
        await self._committer.run(functools.partial(self._commit, batch))

    async def drain(self) -> None:
        """Wait until everything submitted is durable."""
        while (fut := self.barrier()) is not None:
            with contextlib.suppress(Exception):
                await fut
            if fut.done() and fut.exception() is not None:
                raise fut.exception()  # type: ignore[misc]


def _read_all(pinned: list[PinnedValue]) -> list[bytes | memoryview]:
    """Read every pinned value (in a worker thread); release each one whatever happens."""
    try:
        return [p.read() for p in pinned]
    finally:
        for p in pinned:
            p.release()
