"""The storage engine interface: a durable map of state records, with group commit.

Server state is a set of records keyed by ``(ns, group, config_id, key)``: ``ns`` names the
protocol role that owns the record (``"abd"``, ``"cfg"``, later ``"treas"``, ``"paxos"``,
``"next"``), the rest as in docs/protocol.md §2. A record has a small ``meta`` (MessagePack
the role encodes) and an optional ``data`` blob (the value or coded element).

Persist before reply (docs/architecture.md principle 4): a server applies a change to its in-memory
state, :meth:`Storage.submit` queues the record writes and returns a future that completes when
they are on stable storage; every reply waits for :meth:`Storage.barrier` -- the durability of
everything applied before it -- so a server never reports (let alone acknowledges) state that a
crash could lose. Writes queued while a commit is running share the next commit: group commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable

import msgspec

RecordKey = tuple[str, str, str, str]
"""(ns, group, config_id, key)"""


class Record(msgspec.Struct, frozen=True):
    ns: str
    group: str
    config_id: str
    key: str
    meta: bytes
    data: bytes | memoryview | None = None

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
            self.commits += 1
            self.records_written += len(batch)
            if self.on_commit is not None:
                self.on_commit(len(batch), time.perf_counter() - started)
            if not fut.done():
                fut.set_result(None)

    async def _run_commit(self, batch: list[Write]) -> None:
        await asyncio.to_thread(self._commit, batch)

    async def drain(self) -> None:
        """Wait until everything submitted is durable."""
        while (fut := self.barrier()) is not None:
            with contextlib.suppress(Exception):
                await fut
            if fut.done() and fut.exception() is not None:
                raise fut.exception()  # type: ignore[misc]
