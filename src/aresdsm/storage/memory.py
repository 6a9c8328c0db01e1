"""An in-memory storage engine: for unit tests and benchmarks of the protocol alone.

Commits complete at once (no thread hop) and nothing survives the process: it is *not* durable
and ``ares server --storage memory`` says so when it starts.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from .base import DamagedRecord, Record, RecordKey, Storage, ValueRef, Write


class MemoryStorage(Storage):
    def __init__(self) -> None:
        super().__init__()
        self.records: dict[RecordKey, Record] = {}

    def load(self) -> Iterable[Record | DamagedRecord]:
        return list(self.records.values())

    def _commit(self, batch: list[Write]) -> None:
        apply_batch(self.records, batch)

    async def _run_commit(self, batch: list[Write]) -> None:
        self._commit(batch)

    def _read_value(self, record: RecordKey) -> bytes | memoryview:
        data = self.records[record].data
        if data is None or isinstance(data, ValueRef):
            raise KeyError(record)
        return data

    def close(self) -> None:
        self._stop_value_reader()

    def stored_bytes(self) -> int:
        return sum(
            len(r.meta) + (len(r.data) if r.data is not None else 0) for r in self.records.values()
        )


def apply_batch(records: dict[RecordKey, Record], batch: list[Write]) -> None:
    """Apply writes to a dict of records (shared with the simulator's disk model)."""
    for w in batch:
        if isinstance(w, Record):
            # a value received is a view of its whole frame: keep a copy of its own bytes
            own = (
                msgspec.structs.replace(w, data=bytes(w.data))
                if isinstance(w.data, memoryview)
                else w
            )
            records[w.record_key] = own
        elif w.key is not None:
            records.pop((w.ns, w.group, w.config_id, w.key), None)
        else:
            doomed = [k for k in records if k[:3] == (w.ns, w.group, w.config_id)]
            for k in doomed:
                del records[k]
