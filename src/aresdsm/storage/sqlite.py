"""SQLite storage engine (the embedded default): WAL journal, synchronous=FULL.

Each group commit is one transaction; with ``synchronous=FULL`` in WAL mode SQLite fsyncs the
write-ahead log at every commit, so a committed transaction survives power loss. The connection
is used from one worker thread at a time (commits are sequential), opened with
``check_same_thread=False`` for that reason. Why SQLite: see docs/design.md ("Storage engine").
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path

from ..errors import StorageError
from .base import Delete, Record, Storage, Write

_SCHEMA = """
CREATE TABLE IF NOT EXISTS state (
    ns TEXT NOT NULL, grp TEXT NOT NULL, cfg TEXT NOT NULL, key TEXT NOT NULL,
    meta BLOB NOT NULL, data BLOB,
    PRIMARY KEY (ns, grp, cfg, key)
);
"""


class SqliteStorage(Storage):
    def __init__(self, path: str | Path) -> None:
        super().__init__()
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                str(self.path), isolation_level=None, check_same_thread=False
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(_SCHEMA)
        except sqlite3.Error as e:
            raise StorageError(f"cannot open database {self.path}: {e}") from None
        self._lock = threading.Lock()

    def load(self) -> Iterable[Record]:
        with self._lock:
            rows = self._db.execute("SELECT ns, grp, cfg, key, meta, data FROM state").fetchall()
        return [
            Record(ns, g, c, k, bytes(m), None if d is None else bytes(d))
            for ns, g, c, k, m, d in rows
        ]

    def _commit(self, batch: list[Write]) -> None:
        with self._lock:
            try:
                cur = self._db.cursor()
                cur.execute("BEGIN")
                for w in batch:
                    if isinstance(w, Record):
                        cur.execute(
                            "INSERT OR REPLACE INTO state VALUES (?, ?, ?, ?, ?, ?)",
                            (w.ns, w.group, w.config_id, w.key, w.meta, w.data),
                        )
                    elif isinstance(w, Delete) and w.key is not None:
                        cur.execute(
                            "DELETE FROM state WHERE ns=? AND grp=? AND cfg=? AND key=?",
                            (w.ns, w.group, w.config_id, w.key),
                        )
                    else:
                        cur.execute(
                            "DELETE FROM state WHERE ns=? AND grp=? AND cfg=?",
                            (w.ns, w.group, w.config_id),
                        )
                cur.execute("COMMIT")
            except sqlite3.Error as e:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
                raise StorageError(f"commit to {self.path} failed: {e}") from None

    def stored_bytes(self) -> int:
        with self._lock:
            row = self._db.execute(
                "SELECT COALESCE(SUM(LENGTH(meta) + COALESCE(LENGTH(data), 0)), 0) FROM state"
            ).fetchone()
        return int(row[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
