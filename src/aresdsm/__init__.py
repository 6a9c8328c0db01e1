"""aresdsm: Ares II, a reconfigurable, fault-tolerant, atomic distributed shared memory.

Quick use::

    import aresdsm
    async with aresdsm.connect("cluster.toml") as store:
        await store.write("greeting", b"hello")
        assert await store.read("greeting") == b"hello"
"""

from .client import CvrResult, HistoryRecorder, Store, SyncStore, connect, connect_sync
from .config import ClientOptions, ClusterFile, Configuration, ServerInfo, load_cluster_file
from .errors import (
    AresError,
    ConcurrencyExceeded,
    ConfigurationError,
    ConsensusFailed,
    CoverableConflict,
    FrameError,
    InvariantViolation,
    OperationError,
    OperationTimeout,
    QuorumUnavailable,
    ServerError,
    StorageError,
)
from .metrics import ClientMetrics
from .protocol.ops import CLASSIC, DEFAULT_SWITCHES, OpSwitches
from .tags import TAG0, Tag

__version__ = "0.1.0"

__all__ = [
    "CLASSIC",
    "DEFAULT_SWITCHES",
    "TAG0",
    "AresError",
    "ClientMetrics",
    "ClientOptions",
    "ClusterFile",
    "ConcurrencyExceeded",
    "Configuration",
    "ConfigurationError",
    "ConsensusFailed",
    "CoverableConflict",
    "CvrResult",
    "FrameError",
    "HistoryRecorder",
    "InvariantViolation",
    "OpSwitches",
    "OperationError",
    "OperationTimeout",
    "QuorumUnavailable",
    "ServerError",
    "ServerInfo",
    "StorageError",
    "Store",
    "SyncStore",
    "Tag",
    "__version__",
    "connect",
    "connect_sync",
    "load_cluster_file",
]
