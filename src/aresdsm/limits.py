"""Named resource limits of a server, with their defaults (docs/design.md "Limits and bad input").

Every limit a hostile or broken peer could otherwise push past lives here, with a unit in its
name, so that the server shell, the pure core, the client and the documentation agree on one
value. :class:`ServerLimits` holds the ones an operator may tune (``ares server`` options and the
``[server]`` table of the cluster file); the module constants are protocol-level bounds that every
server and client must share and are therefore not configurable.

Why each limit exists (docs/operations.md lists them with their defaults):

- connections: each one costs a file descriptor; once the process runs out, ``accept`` fails and
  so does SQLite -- every client fails and the storage fails-stop. The server admits at most
  ``max_connections`` (by default well below ``RLIMIT_NOFILE``) and ``max_connections_per_address``
  from one peer address; at either limit the connection of that scope that has been idle longest
  (at least ``evict_idle_after_s``) is closed to make room, else the new one is refused. Idle
  connections are closed after ``idle_timeout_s``.
- TLS handshakes: a connection is admitted -- counted against both connection limits -- as a
  plain TCP connection, before its handshake starts; the handshake must complete within
  ``handshake_timeout_s``. A flood of half-open handshakes therefore meets the same limits (and
  the same eviction of idle connections) as any other connection.
- slowloris: once the first byte of a frame arrived, the whole frame must arrive within
  ``frame_timeout_s``; bytes of incomplete frames across all connections are capped by
  ``max_partial_frame_bytes_total`` (frames below ``small_frame_bytes`` are exempt, so small
  well-behaved requests never wait for it).
- buffers per connection: reading pauses while complete requests waiting to be handled exceed
  ``max_conn_request_bytes`` or while replies held for the connection (waiting for their commit or
  for the client to read them) exceed ``max_conn_reply_bytes`` -- on uvloop and on the stdlib loop
  alike, because the server counts these bytes itself. At most one request or reply beyond each
  cap (one frame) is held.
- names: keys, groups and configuration ids are checked by the server, not only by the client.
- bad input is logged at most ``log_bad_input_per_s`` lines per second (burst
  ``log_bad_input_burst``), each with at most ``log_input_prefix_chars`` escaped characters of the
  peer's text.
"""

from __future__ import annotations

import dataclasses
import math
import resource
from dataclasses import dataclass
from typing import Any

from .errors import ConfigurationError

# -- protocol-level bounds (shared by client and server; not configurable) ---------------------

MAX_NAME_BYTES = 1024
"""An object key or a group name as a user names it (UTF-8 bytes)."""
MAX_KEY_FIELD_BYTES = 2 * MAX_NAME_BYTES + 1
"""The ``key`` field of a request: room for a composite object key ``group + "\\x00" + key`` (one
chain per cluster) as well as a plain key."""
MAX_GROUP_BYTES = MAX_NAME_BYTES
"""The ``group`` field of a request."""
MAX_CONFIG_ID_BYTES = 1024
"""A configuration id (as :data:`aresdsm.config.MAX_ID_BYTES`)."""


MAX_COUNTER = 2**62
"""Tag numbers and ballot rounds a server accepts (``0 <= n < MAX_COUNTER``): far beyond any
real count, and within MessagePack's integers with room to spare. A single authenticated writer
(or admin) can still reach it in one jump; no bound relative to the server's state is legal
(a server may be far behind), so the defence is authentication plus the writer's mac, and a
client that would need a successor beyond it fails with a clear error (docs/design.md "Limits
and bad input")."""


def name_too_long(what: str, value: str, max_bytes: int) -> str | None:
    """The one-line reason a name is refused, or None. Never echoes the name itself."""
    if len(value) * 4 <= max_bytes:  # cheap: no UTF-8 string is longer than 4 bytes a character
        return None
    n = len(value.encode("utf-8", "surrogatepass"))
    if n <= max_bytes:
        return None
    return f"{what} of {n} bytes exceeds the limit of {max_bytes} bytes"


# -- operator-tunable limits of a server ---------------------------------------------------------

_RESERVED_FDS = 256
"""File descriptors kept free for the listener, SQLite, value files, logs, and the connections
an event loop accepts in one go before the server can refuse them (a listen backlog: 100)."""


def default_max_connections() -> int:
    """Default connections: the descriptor limit minus a reserve of 256, at most 10,000."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 10_000
    return max(16, min(10_000, soft - _RESERVED_FDS))


@dataclass(frozen=True)
class ServerLimits:
    """The limits of one server; every field has a safe default."""

    max_connections: int = dataclasses.field(default_factory=default_max_connections)
    """Open client connections at once (default: RLIMIT_NOFILE - 256, at most 10,000)."""
    max_connections_per_address: int = 1024
    """Open connections from one peer IP address."""
    evict_idle_after_s: float = 1.0
    """At a connection limit, a connection idle this long may be closed to admit a new one."""
    idle_timeout_s: float = 300.0
    """A connection with no request, no reply and no partial frame for this long is closed."""
    frame_timeout_s: float = 60.0
    """Deadline to receive a whole frame once its first byte arrived (slowloris)."""
    handshake_timeout_s: float = 10.0
    """Deadline of a TLS handshake. The TCP connection is admitted (counted against the limits
    above) before its handshake starts, so a flood of half-open handshakes is bounded too."""
    max_partial_frame_bytes_total: int = 256 * 1024 * 1024
    """Bytes of incomplete frames held for all connections together."""
    small_frame_bytes: int = 64 * 1024
    """Incomplete frames up to this size do not count against the total above."""
    max_conn_request_bytes: int = 8 * 1024 * 1024
    """Complete requests waiting to be handled, per connection (reading pauses above)."""
    max_conn_reply_bytes: int = 8 * 1024 * 1024
    """Replies held for a connection, waiting for a commit or for the client to read them."""
    max_in_flight: int = 4096
    """Requests of one connection waiting for their commit."""
    log_bad_input_per_s: float = 5.0
    """Log lines about bad input per second (the rest are counted and summarised)."""
    log_bad_input_burst: int = 20
    log_input_prefix_chars: int = 64
    """Characters of a peer's text quoted (escaped) in a log line."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name.endswith("_s") or f.name == "log_bad_input_per_s":
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise ConfigurationError(f"{f.name} must be a number, got {value!r}")
                if not (math.isfinite(value) and value > 0):
                    raise ConfigurationError(f"{f.name} must be a positive number, got {value}")
            else:
                if isinstance(value, bool) or not isinstance(value, int):
                    raise ConfigurationError(f"{f.name} must be an integer, got {value!r}")
                if value < 1:
                    raise ConfigurationError(f"{f.name} must be at least 1, got {value}")

    @classmethod
    def from_table(cls, table: Any, *, where: str = "[server]") -> ServerLimits:
        """Limits from a TOML table (unknown keys are an error: a typo must not go unnoticed)."""
        if not isinstance(table, dict):
            raise ConfigurationError(f"{where} must be a table")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(table) - names
        if unknown:
            raise ConfigurationError(f"{where}: unknown key(s) {sorted(unknown)}")
        values = dict(table)
        for f in dataclasses.fields(cls):  # TOML integers are fine where seconds are expected
            if f.name.endswith("_s") and isinstance(values.get(f.name), int):
                values[f.name] = float(values[f.name])
        try:
            return cls(**values)
        except ConfigurationError as e:
            raise ConfigurationError(f"{where}: {e}") from None

    def replace(self, **changes: Any) -> ServerLimits:
        """A copy with some limits changed (None values are ignored: options not given)."""
        given = {k: v for k, v in changes.items() if v is not None}
        try:
            return dataclasses.replace(self, **given)
        except TypeError as e:  # pragma: no cover - a caller's typo
            raise ConfigurationError(str(e)) from None
