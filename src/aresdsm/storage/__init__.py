"""Storage engines behind one interface (docs/architecture.md principle 4)."""

from .base import Delete, Record, Storage, Write
from .memory import MemoryStorage
from .sqlite import SqliteStorage

__all__ = ["Delete", "MemoryStorage", "Record", "SqliteStorage", "Storage", "Write"]
