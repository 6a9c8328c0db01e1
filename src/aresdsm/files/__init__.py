"""Fragmented files over coverable registers (docs/protocol.md §9.2): ``store.files``.

This package sits above the client (it imports :mod:`aresdsm.client`'s interface, never the
reverse at import time): :class:`Files` is the async API, :class:`SyncFiles` the blocking one.
"""

from __future__ import annotations

from .codec import ChunkParams
from .layer import (
    BlockStore,
    FileChanged,
    FileConflict,
    FileReader,
    Files,
    FileStat,
    NoSuchFile,
    check_name,
)
from .sync import SyncFiles

__all__ = [
    "BlockStore",
    "ChunkParams",
    "FileChanged",
    "FileConflict",
    "FileReader",
    "FileStat",
    "Files",
    "NoSuchFile",
    "SyncFiles",
    "check_name",
]
