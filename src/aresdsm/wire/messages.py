"""Wire messages (architecture.md principle 3): typed, frozen msgspec structs, one tagged union.

Every data request names ``(group, config_id, key)`` so that server state is keyed the same way
from the first release on (protocol.md §2): the group's configuration chain, the configuration,
the object. The DAP messages are those of protocol.md §4.1 (ABD); later protocol roles add their
own structs to :data:`Message`.

Replies to a request are one of the reply structs or :class:`ErrorReply`. An error reply is never
a partial answer: a client treats it like a missing reply (it does not count towards a quorum).
"""

from __future__ import annotations

from typing import Literal

import msgspec

from ..tags import Tag
from .blob import Blob


class _Msg(msgspec.Struct, frozen=True, array_like=True):
    """Base of all messages: frozen, encoded as arrays (compact headers), tagged by type."""


# --- requests ------------------------------------------------------------------------------


class Ping(_Msg, frozen=True, tag="ping"):
    """Round-trip probe (measures the transport floor); answered by Pong."""

    payload: Blob | None = None


class QueryTag(_Msg, frozen=True, tag="qtag"):
    """ABD get-tag (protocol.md §4.1): reply with the stored tag."""

    group: str
    config_id: str
    key: str


class QueryData(_Msg, frozen=True, tag="qdata"):
    """ABD get-data (protocol.md §4.1): reply with the stored (tag, value)."""

    group: str
    config_id: str
    key: str


class PutData(_Msg, frozen=True, tag="put"):
    """ABD put-data (protocol.md §4.1): store (tag, value) durably if tag is newer; then ACK."""

    group: str
    config_id: str
    key: str
    tag: Tag
    value: Blob


class GetStats(_Msg, frozen=True, tag="stats"):
    """Ask a server for its counters and storage figures."""


# --- replies -------------------------------------------------------------------------------


class Pong(_Msg, frozen=True, tag="pong"):
    payload: Blob | None = None


class TagReply(_Msg, frozen=True, tag="tag"):
    tag: Tag


class DataReply(_Msg, frozen=True, tag="data"):
    tag: Tag
    value: Blob


class Ack(_Msg, frozen=True, tag="ack"):
    pass


class Stats(_Msg, frozen=True, tag="statsr"):
    server_id: str
    counters: dict[str, int]
    objects: int
    stored_bytes: int


ErrorCode = Literal[
    "bad-request",  # malformed or unknown message
    "unknown-config",  # the request names a configuration this server does not know
    "not-member",  # this server is not a member of the named configuration
    "overloaded",  # too many requests in flight on this connection
    "storage",  # the durable store failed; nothing was applied
    "shutting-down",
]


class ErrorReply(_Msg, frozen=True, tag="err"):
    code: ErrorCode
    message: str


Request = Ping | QueryTag | QueryData | PutData | GetStats
Reply = Pong | TagReply | DataReply | Ack | Stats | ErrorReply
Message = Request | Reply


class Envelope(msgspec.Struct, frozen=True, array_like=True):
    """What one frame carries: a request id (echoed by the reply), the message, trace context."""

    rid: int
    body: Message
    trace: dict[str, str] | None = None
