"""SQLite storage engine (the embedded default): WAL journal, synchronous=FULL, large values in
their own files.

Each group commit is one transaction; with ``synchronous=FULL`` in WAL mode SQLite fsyncs the
write-ahead log at every commit, so a committed transaction survives power loss. The connection
is used from one worker thread at a time (commits are sequential), opened with
``check_same_thread=False`` for that reason.

State is private: the directory of the database and its ``blobs/`` are 0700, every file 0600.

Values of ``blob_threshold_bytes`` (64 KiB) or more are not put in SQLite: through its 4 KiB
pages a 4 MiB value costs ~45 ms to commit here, written to a file of its own ~13 ms (measured:
docs/design.md, "Storage engine"). Such a value is written to ``blobs/<unique>.blob`` and fsynced,
the directory is fsynced, and only then does the transaction that references the file commit --
so a committed row never points to a file that is not durable. Files of replaced or deleted rows
are removed after the commit; files a crash left unreferenced are removed at start-up.

Values stay on disk (issue 12): :meth:`SqliteStorage.load` reads every row's meta and the
*length* of its value, never the value, and :meth:`~aresdsm.storage.base.Storage.read_value`
reads one value when a reply needs it, through a second, read-only connection (WAL: it sees the
last commit and does not wait for the commit thread).

Large values off the event loop: :meth:`SqliteStorage._open_value` (on the event loop, when the
core answers) reads the row and *pins* its value file instead of reading it; the file is read and
its checksum checked in a value-reading thread (:class:`_PinnedFile`). A commit that replaces or
deletes a pinned file's row does not remove the file but leaves it to the last unpin (value files
are written once under a fresh name and never changed, so a pinned file is the value as of the
answer). A crash leaves such a file unreferenced: removed at start-up like any orphan.

Checksums (issue 10): every row carries a CRC-32 of its identity, its meta and the name and length
of its value file (``meta_sum``) and a CRC-32 of its value (``data_sum``), inline or in a value
file. :meth:`SqliteStorage.load` checks the meta sum and returns a row that fails as a
:class:`~aresdsm.storage.base.DamagedRecord` (a truncated or missing value file too: one
``stat``), which the server turns into a damaged object it no longer answers for; the value's
sum is checked when the value is read (a restart does not read 4 GiB to check it), and a value
that fails is a :class:`~aresdsm.storage.base.DamagedValue` the server handles the same way.
At open, ``PRAGMA integrity_check`` checks the database's own structure -- its pages, and that
the primary-key index matches the rows, so a flipped byte in a row's key columns cannot make
a record silently belong to another object; a database that fails it, or that SQLite cannot read
at all, is a one-line :class:`~aresdsm.errors.StorageError`, never a traceback. The schema has a
version (``PRAGMA user_version``); a database without checksums is refused.

One engine per database at a time: the constructor takes an exclusive ``flock`` on
``<database>.lock`` before touching anything else, and holds it until :meth:`close` (the kernel
releases it if the process dies). Without it, a second server started on a data directory in use
would take the first one's fsynced, not yet committed value files for orphans and delete them.
The lock is per database file rather than per directory because in-process test clusters keep
several databases in one directory; ``ares server`` uses one database per data directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import struct
import threading
import uuid
import zlib
from collections.abc import Iterable
from pathlib import Path

from ..errors import StorageError
from .base import (
    DamagedRecord,
    DamagedValue,
    PinnedValue,
    Record,
    RecordKey,
    Storage,
    ValueRef,
    Write,
)

DEFAULT_BLOB_THRESHOLD_BYTES = 64 * 1024
SCHEMA_VERSION = 3
"""1 (implicit, user_version 0): no checksums; 2: meta_sum and data_sum on every row; 3: the
same rows, with value digests (in the metadata) made by SHA-256 instead of BLAKE2b-256
(:mod:`aresdsm.integrity`): version 2 data would fail every reader's digest check."""
_SIZE = "LENGTH(meta) + COALESCE(LENGTH(data), 0) + COALESCE(blob_len, 0)"
"""A record's bytes: metadata, inline value, or the length of its value file."""
DIR_MODE = 0o700
FILE_MODE = 0o600
"""A server's state is private to its user: directories 0700, files 0600 (values, the database,
its journal files and the lock), whatever the umask."""
_SIDE = ("-wal", "-shm", "-journal")


def private_dir(path: Path) -> None:
    """Create ``path`` (and missing parents) as 0700, and narrow it to 0700 if it exists."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o777 != DIR_MODE:
        with contextlib.suppress(PermissionError):  # not ours (e.g. a shared parent): leave it
            os.chmod(path, DIR_MODE)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS state (
    ns TEXT NOT NULL, grp TEXT NOT NULL, cfg TEXT NOT NULL, key TEXT NOT NULL,
    meta BLOB NOT NULL, data BLOB, blob_file TEXT, blob_len INTEGER,
    meta_sum INTEGER NOT NULL, data_sum INTEGER,
    PRIMARY KEY (ns, grp, cfg, key)
);
"""


def meta_checksum(
    ns: str, grp: str, cfg: str, key: str, meta: bytes, blob_file: str | None, blob_len: int | None
) -> int:
    """CRC-32 over a row's identity, meta and value-file reference (length-prefixed fields),
    in one pass over them joined (the same value as field by field: issue 18, per-row work)."""
    n, g, c, k = ns.encode(), grp.encode(), cfg.encode(), key.encode()
    f = blob_file.encode() if blob_file else b""
    b = str(blob_len).encode() if blob_len is not None else b""
    fields = [_U32(len(n)), n, _U32(len(g)), g, _U32(len(c)), c, _U32(len(k)), k]
    fields += (_U32(len(f)), f, _U32(len(b)), b, meta)
    return zlib.crc32(b"".join(fields))


_U32 = struct.Struct(">I").pack
_OLD_ROW = f"SELECT blob_file, {_SIZE} FROM state WHERE ns=? AND grp=? AND cfg=? AND key=?"
_PUT_ROW = "INSERT OR REPLACE INTO state VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"


def data_checksum(data: bytes | memoryview) -> int:
    return zlib.crc32(data)


class SqliteStorage(Storage):
    def __init__(
        self, path: str | Path, *, blob_threshold_bytes: int = DEFAULT_BLOB_THRESHOLD_BYTES
    ) -> None:
        super().__init__()
        self.path = Path(path)
        self.blob_dir = self.path.parent / "blobs"
        self.blob_threshold_bytes = blob_threshold_bytes
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self._lock_fd = _lock_exclusively(self.lock_path)
        try:
            try:
                private_dir(self.blob_dir)
                # created (or narrowed) 0600 before SQLite opens it: SQLite gives the -wal and
                # -shm files it creates the mode of the database file
                os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, FILE_MODE))
                for f in (self.path, *(self.path.with_name(self.path.name + x) for x in _SIDE)):
                    with contextlib.suppress(FileNotFoundError):
                        os.chmod(f, FILE_MODE)
                self._db = sqlite3.connect(
                    str(self.path), isolation_level=None, check_same_thread=False
                )
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=FULL")
                self._check_schema()
            except (OSError, sqlite3.Error) as e:
                raise StorageError(
                    f"cannot open database {self.path}: {e} (a damaged database: restore the "
                    "server's disk, or replace the server by reconfiguration)"
                ) from None
            self._lock = threading.Lock()
            self._read_db: sqlite3.Connection | None = None
            self._pin_lock = threading.Lock()
            self._pins: dict[str, int] = {}
            """Value files pinned for a reply being read (name -> count): not removed."""
            self._unlinked_pinned: set[str] = set()
            """Pinned files whose row a commit replaced or deleted: removed at the last unpin."""
            self._remove_orphans()
            self._bytes: dict[tuple[str, str], int] = {
                (g, c): int(n)
                for g, c, n in self._db.execute(
                    f"SELECT grp, cfg, SUM({_SIZE}) FROM state GROUP BY grp, cfg"
                )
            }
            """Bytes of records per (group, configuration): counted once here, then kept up to
            date by every commit (metrics read them in O(configurations))."""
        except BaseException:
            self._unlock()
            raise

    def _check_schema(self) -> None:
        """Create the schema in a new database; check the version and the structure of an
        existing one (raises sqlite3.Error or StorageError)."""
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        has_table = self._db.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='state'"
        ).fetchone()
        if has_table is None:
            self._db.execute(_SCHEMA)
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            return
        if version == 2:
            raise StorageError(
                f"database {self.path} has schema version 2 (BLAKE2b value digests), this "
                f"aresdsm writes {SCHEMA_VERSION} (SHA-256): copy the data with `ares backup` "
                "of the older aresdsm and `ares restore` into a new cluster"
            )
        if version != SCHEMA_VERSION:
            raise StorageError(
                f"database {self.path} has schema version {version}, this aresdsm writes "
                f"{SCHEMA_VERSION} (records with checksums): it was made by another version"
            )
        problems = [r[0] for r in self._db.execute("PRAGMA integrity_check(5)").fetchall()]
        if problems != ["ok"]:
            raise StorageError(
                f"database {self.path} is damaged ({'; '.join(problems)[:300]}): restore the "
                "server's disk, or replace the server by reconfiguration"
            )

    # -- reading ---------------------------------------------------------------------------------

    def load(self) -> Iterable[Record | DamagedRecord]:
        """Every record's meta, with its value as a :class:`ValueRef`: no value is read (a
        restart costs O(records), not O(bytes)). The meta checksum is checked here, a value
        file's presence and length too (one ``stat``); a value's own checksum when it is read
        (:meth:`read_value`)."""
        try:
            with self._lock:
                rows = self._db.execute(
                    "SELECT ns, grp, cfg, key, meta, LENGTH(data), blob_file, blob_len,"
                    " meta_sum, data_sum FROM state"
                ).fetchall()
        except sqlite3.Error as e:
            raise StorageError(f"cannot read database {self.path}: {e}") from None
        out: list[Record | DamagedRecord] = []
        for ns, g, c, k, meta, inline_len, blob_file, blob_len, meta_sum, data_sum in rows:
            out.append(
                self._check_row(
                    ns, g, c, k, meta, inline_len, blob_file, blob_len, meta_sum, data_sum
                )
            )
        return out

    def _check_row(
        self,
        ns: object,
        g: object,
        c: object,
        k: object,
        meta: object,
        inline_len: object,
        blob_file: object,
        blob_len: object,
        meta_sum: object,
        data_sum: object,
    ) -> Record | DamagedRecord:
        """One row's meta as a Record whose value is a reference, or a DamagedRecord saying
        what failed (the meta checksum, or a value file that is missing or short)."""
        if not all(isinstance(x, str) for x in (ns, g, c, k)):
            raise StorageError(f"database {self.path} is damaged: a row's key is not text")
        assert isinstance(ns, str) and isinstance(g, str) and isinstance(c, str)
        assert isinstance(k, str)
        meta_ok = (
            isinstance(meta, bytes)
            and (blob_file is None or isinstance(blob_file, str))
            and (blob_len is None or isinstance(blob_len, int))
            and isinstance(meta_sum, int)
            and meta_checksum(ns, g, c, k, meta, blob_file, blob_len) == meta_sum
        )
        if not meta_ok:
            return DamagedRecord(ns, g, c, k, None, "record checksum mismatch")
        assert isinstance(meta, bytes)
        length: int | None
        if isinstance(blob_file, str):
            assert isinstance(blob_len, int)
            try:
                size = os.stat(self.blob_dir / blob_file).st_size
            except OSError as e:
                return DamagedRecord(ns, g, c, k, meta, f"value file {blob_file}: {e.strerror}")
            if size != blob_len:
                return DamagedRecord(
                    ns, g, c, k, meta, f"value file {blob_file} has {size} of {blob_len} bytes"
                )
            length = blob_len
        elif inline_len is None or isinstance(inline_len, int):
            length = inline_len
        else:  # pragma: no cover - LENGTH() is an integer or NULL
            return DamagedRecord(ns, g, c, k, meta, "value is not a blob")
        if length is None and data_sum is not None:
            return DamagedRecord(ns, g, c, k, meta, "value missing")
        if length is not None and not isinstance(data_sum, int):
            return DamagedRecord(ns, g, c, k, meta, "value checksum missing")
        data = ValueRef((ns, g, c, k), length) if length is not None else None
        return Record(ns, g, c, k, meta, data)

    def _read_value(self, record: RecordKey) -> bytes | memoryview:
        """A committed value, checked against its checksum: from the row, or from its value
        file (read whole: the checksum covers it all)."""
        got = self._open_value(record)
        if not isinstance(got, PinnedValue):
            return got
        try:
            return got.read()
        finally:
            got.release()

    def _open_value(self, record: RecordKey) -> bytes | memoryview | PinnedValue:
        """A committed value: an inline one read and checked now (below
        ``blob_threshold_bytes``), one in a value file pinned, to be read and checked by
        :meth:`_PinnedFile.read` (off the event loop)."""
        ns, g, c, k = record
        try:
            row = (
                self._reader()
                .execute(
                    "SELECT meta, data, blob_file, blob_len, data_sum FROM state"
                    " WHERE ns=? AND grp=? AND cfg=? AND key=?",
                    record,
                )
                .fetchone()
            )
        except sqlite3.Error as e:
            raise StorageError(f"cannot read database {self.path}: {e}") from None
        if row is None:
            raise KeyError(record)
        meta, inline, blob_file, blob_len, data_sum = row
        damaged = DamagedRecord(
            ns, g, c, k, meta if isinstance(meta, bytes) else None, "value checksum mismatch"
        )
        if isinstance(blob_file, str):
            if not isinstance(blob_len, int):
                raise DamagedValue(_with_reason(damaged, "value file length missing"))
            with self._pin_lock:
                self._pins[blob_file] = self._pins.get(blob_file, 0) + 1
            return _PinnedFile(self, blob_file, blob_len, data_sum, damaged)
        if isinstance(inline, bytes):
            if data_sum != data_checksum(inline):
                raise DamagedValue(damaged)
            return inline
        if inline is None:
            raise KeyError(record)
        raise DamagedValue(_with_reason(damaged, "value is not a blob"))

    def _unpin(self, name: str) -> None:
        with self._pin_lock:
            left = self._pins[name] - 1
            if left:
                self._pins[name] = left
                return
            del self._pins[name]
            if name not in self._unlinked_pinned:
                return
            self._unlinked_pinned.discard(name)
        (self.blob_dir / name).unlink(missing_ok=True)

    def _remove_value_files(self, names: list[str]) -> None:
        """Remove value files no row refers to any more, leaving pinned ones to their last
        unpin (called after the commit that dropped them)."""
        for name in names:
            with self._pin_lock:
                if name in self._pins:
                    self._unlinked_pinned.add(name)
                    continue
            (self.blob_dir / name).unlink(missing_ok=True)

    def _reader(self) -> sqlite3.Connection:
        """The connection values are read with (its own: the commit thread uses ``_db``; in
        WAL mode a reader sees the last commit and neither blocks the other)."""
        if self._read_db is None:
            self._read_db = sqlite3.connect(
                f"file:{self.path}?mode=ro",
                uri=True,
                isolation_level=None,
                check_same_thread=False,
            )
        return self._read_db

    def _remove_orphans(self) -> None:
        try:
            referenced = {
                r[0]
                for r in self._db.execute("SELECT blob_file FROM state WHERE blob_file IS NOT NULL")
            }
        except sqlite3.Error as e:
            raise StorageError(f"cannot read database {self.path}: {e}") from None
        for f in self.blob_dir.iterdir():
            if f.name not in referenced:
                f.unlink(missing_ok=True)

    # -- group commit ------------------------------------------------------------------------------

    def _commit(self, batch: list[Write]) -> None:
        with self._lock:
            files = self._write_blob_files(batch)
            garbage: list[str] = []
            deltas: dict[tuple[str, str], int] = {}
            try:
                cur = self._db.cursor()
                cur.execute("BEGIN")
                for w in batch:
                    garbage += self._apply(cur, w, files.get(id(w)), deltas)
                cur.execute("COMMIT")
            except sqlite3.Error as e:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
                for name in files.values():
                    (self.blob_dir / name).unlink(missing_ok=True)
                raise StorageError(f"commit to {self.path} failed: {e}") from None
            for inst, d in deltas.items():  # committed: the totals follow
                left = self._bytes.get(inst, 0) + d
                if left:
                    self._bytes[inst] = left
                else:
                    self._bytes.pop(inst, None)
        self._remove_value_files(garbage)

    def _write_blob_files(self, batch: list[Write]) -> dict[int, str]:
        """Write and fsync every large value of the batch (and the directory) before the commit."""
        files: dict[int, str] = {}
        try:
            for w in batch:
                if not isinstance(w, Record) or w.data is None:
                    continue
                if isinstance(w.data, ValueRef):
                    raise StorageError("a write holds a reference, not a value (a bug)")
                if len(w.data) >= self.blob_threshold_bytes:
                    name = f"{uuid.uuid4().hex}.blob"
                    _write_durably(self.blob_dir / name, w.data)
                    files[id(w)] = name
            if files:
                _fsync_dir(self.blob_dir)
        except OSError as e:
            for name in files.values():
                (self.blob_dir / name).unlink(missing_ok=True)
            raise StorageError(f"cannot write a value file in {self.blob_dir}: {e}") from None
        return files

    def _apply(
        self,
        cur: sqlite3.Cursor,
        w: Write,
        blob_file: str | None,
        deltas: dict[tuple[str, str], int],
    ) -> list[str]:
        """Apply one write inside the transaction; returns value files it made garbage and
        adds the change of bytes per (group, configuration) to ``deltas``."""
        inst = (w.group, w.config_id)
        if isinstance(w, Record):
            old = cur.execute(_OLD_ROW, (w.ns, w.group, w.config_id, w.key)).fetchone()
            new_size = len(w.meta) + (len(w.data) if w.data is not None else 0)
            deltas[inst] = deltas.get(inst, 0) + new_size - (old[1] if old is not None else 0)
            assert not isinstance(w.data, ValueRef)  # (refused by _write_blob_files)
            data = None if blob_file is not None else w.data
            blob_len = len(w.data) if blob_file is not None and w.data is not None else None
            meta = bytes(w.meta)
            msum = meta_checksum(w.ns, w.group, w.config_id, w.key, meta, blob_file, blob_len)
            dsum = data_checksum(w.data) if w.data is not None else None
            cur.execute(
                _PUT_ROW,
                (w.ns, w.group, w.config_id, w.key, meta, data, blob_file, blob_len, msum, dsum),
            )
            return [old[0]] if old is not None and old[0] is not None else []
        where = "ns=? AND grp=? AND cfg=?"
        args: tuple[str, ...] = (w.ns, w.group, w.config_id)
        if w.key is not None:
            where, args = where + " AND key=?", (*args, w.key)
        rows = cur.execute(f"SELECT blob_file, {_SIZE} FROM state WHERE {where}", args).fetchall()
        deltas[inst] = deltas.get(inst, 0) - sum(r[1] for r in rows)
        cur.execute(f"DELETE FROM state WHERE {where}", args)
        return [r[0] for r in rows if r[0] is not None]

    # -- misc --------------------------------------------------------------------------------------

    def probe_writable(self) -> None:
        """Create, fsync and remove a small file next to the database (``/healthz``)."""
        probe = self.path.parent / f".healthz-{os.getpid()}-{threading.get_ident()}"
        try:
            _write_durably(probe, b"ok")
        finally:
            probe.unlink(missing_ok=True)

    def stored_bytes(self) -> int:
        """Bytes of all records (values in value files included): O(configurations)."""
        with self._lock:
            return sum(self._bytes.values())

    def bytes_by_instance(self) -> dict[tuple[str, str], int]:
        with self._lock:
            return dict(self._bytes)

    def close(self) -> None:
        self._stop_value_reader()
        with self._pin_lock:
            leftover, self._unlinked_pinned = self._unlinked_pinned, set()
        for name in leftover:  # (a read abandoned by a stopping server)
            (self.blob_dir / name).unlink(missing_ok=True)
        with self._lock:
            if self._read_db is not None:
                self._read_db.close()
                self._read_db = None
            self._db.close()
        self._unlock()

    def _unlock(self) -> None:
        # closing the descriptor releases the flock; -1 makes a second close() harmless (and
        # never closes a descriptor number the process has since reused)
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1


def _with_reason(d: DamagedRecord, reason: str) -> DamagedRecord:
    return DamagedRecord(d.ns, d.group, d.config_id, d.key, d.meta, reason)


class _PinnedFile(PinnedValue):
    """A value file pinned by :meth:`SqliteStorage._open_value`: read whole and checked against
    the row's checksum in a value-reading thread."""

    __slots__ = ("_damaged", "_name", "_storage", "_sum")

    def __init__(
        self, storage: SqliteStorage, name: str, length: int, data_sum: object, d: DamagedRecord
    ) -> None:
        super().__init__(length)
        self._storage: SqliteStorage | None = storage
        self._name = name
        self._sum = data_sum
        self._damaged = d

    def read(self) -> bytes | memoryview:
        st = self._storage
        assert st is not None, "read after release"
        name = self._name

        def damaged(reason: str) -> DamagedValue:
            return DamagedValue(_with_reason(self._damaged, reason))

        try:
            data = _read_file(st.blob_dir / name, self.length)
        except OSError as e:
            raise damaged(f"value file {name}: {e.strerror}") from None
        if len(data) != self.length:
            raise damaged(f"value file {name} has {len(data)} of {self.length} bytes")
        if self._sum != data_checksum(data):
            raise damaged("value checksum mismatch")
        return data

    def release(self) -> None:
        st, self._storage = self._storage, None
        if st is not None:
            st._unpin(self._name)


def _read_file(path: Path, length: int) -> bytes | memoryview:
    """The file's bytes (at most ``length`` + 1 of them: a longer file is damaged too), read
    into one buffer of the expected size."""
    buf = bytearray(length + 1)
    view = memoryview(buf)
    got = 0
    fd = os.open(path, os.O_RDONLY)
    try:
        while got < len(buf):
            n = os.readv(fd, [view[got:]])
            if n == 0:
                break
            got += n
    finally:
        os.close(fd)
    return view[:got]


def _lock_exclusively(lock_path: Path) -> int:
    """Open and flock ``lock_path`` (creating its directory); the descriptor holds the lock."""
    try:
        private_dir(lock_path.parent)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, FILE_MODE)
    except OSError as e:
        raise StorageError(f"cannot open lock file {lock_path}: {e}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_pid(fd)
        os.close(fd)
        raise StorageError(
            f"data directory {lock_path.parent} is in use by another server"
            + (f" (pid {holder})" if holder else "")
            + f": {lock_path} is locked"
        ) from None
    except OSError as e:
        os.close(fd)
        raise StorageError(f"cannot lock {lock_path}: {e}") from None
    # the holder's pid, for the message another instance prints (diagnostics only)
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _read_pid(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return ""
    return text if text.isdigit() else ""


def _write_durably(path: Path, data: bytes | memoryview) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
