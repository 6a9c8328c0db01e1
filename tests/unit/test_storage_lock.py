"""Only one SqliteStorage at a time opens a database: a second one is refused before it touches
anything, and the lock goes with close().

Found in review (review 3): a second server process on a data directory in use (the same
`ares server --id s1 --data-dir D` started twice, e.g. by a supervisor while the old process is
still shutting down) deleted the first process's fsynced-but-not-yet-committed value files as
"orphans" (SqliteStorage._remove_orphans in __init__): the first process then committed and
acknowledged a row whose value file was gone, and could never start again ("value file ... No
such file or directory"). Nothing locked the data directory.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from aresdsm.errors import AresError, StorageError
from aresdsm.storage import SqliteStorage
from aresdsm.storage.base import Record


def test_second_instance_on_a_data_dir_in_use_is_refused_and_deletes_nothing(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.sqlite3"
    first = SqliteStorage(path)
    rec = Record("abd", "default", "c0", "k", b"\x92\x01\xa1w", b"v" * (1 << 20))
    # the first server is inside _commit: the value file is written and fsynced, COMMIT is next
    files = first._write_blob_files([rec])
    value_file = first.blob_dir / files[id(rec)]
    try:
        with pytest.raises(AresError, match="in use by another server"):
            SqliteStorage(path).close()
    finally:
        assert value_file.exists(), "the second instance deleted the first one's value file"
        first.close()


def test_the_lock_is_released_by_close(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    first = SqliteStorage(path)
    first.close()
    first.close()  # a second close() is harmless (and closes no other descriptor)
    SqliteStorage(path).close()


def test_a_refused_open_leaves_the_holder_working(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    first = SqliteStorage(path)
    try:
        for _ in range(3):
            with pytest.raises(StorageError, match=r"pid \d+"):
                SqliteStorage(path)
        assert first.load() == []
    finally:
        first.close()
