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

from ..config import Configuration
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
    """put-data: ABD (protocol.md §4.1) stores (tag, value) if tag is newer; TREAS (§4.2) adds
    (tag, coded element) to its list (``value`` is then this server's element); then ACK."""

    group: str
    config_id: str
    key: str
    tag: Tag
    value: Blob


class QueryList(_Msg, frozen=True, tag="qlist"):
    """TREAS get-data (protocol.md §4.2): reply with the whole list of (tag, element or None)."""

    group: str
    config_id: str
    key: str


class Ballot(msgspec.Struct, frozen=True, order=True, array_like=True):
    """A Paxos ballot ``(round, proposer)``, compared lexicographically (protocol.md §5)."""

    round: int
    proposer: str


class NextEntry(msgspec.Struct, frozen=True, array_like=True):
    """``nextC[g][c]``: the successor of a configuration and its status, P or F (protocol.md §2)."""

    config: Configuration
    status: Literal["P", "F"]


class ReadConfig(_Msg, frozen=True, tag="rcfg"):
    """READ_CONFIG (protocol.md §6): reply with ``nextC[group][config_id]``."""

    group: str
    config_id: str


class WriteConfig(_Msg, frozen=True, tag="wcfg"):
    """WRITE_CONFIG (protocol.md §6): store the entry unless an F entry is already stored."""

    group: str
    config_id: str
    entry: NextEntry


class Prepare(_Msg, frozen=True, tag="prep"):
    """Paxos phase 1a for the instance (group, config_id) (protocol.md §5)."""

    group: str
    config_id: str
    ballot: Ballot


class Accept(_Msg, frozen=True, tag="acc"):
    """Paxos phase 2a: accept ``value`` (the successor configuration) at ``ballot``."""

    group: str
    config_id: str
    ballot: Ballot
    value: Configuration


class InstallConfig(_Msg, frozen=True, tag="inst"):
    """Tell a server a configuration descriptor it is a member of (it may start knowing none)."""

    config: Configuration


class ListKeys(_Msg, frozen=True, tag="keys"):
    """The objects a server holds for (group, config_id), in key order, after ``after`` (paged)."""

    group: str
    config_id: str
    after: str
    limit: int


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


class ListEntry(msgspec.Struct, frozen=True, array_like=True):
    """One TREAS list entry: a tag and this server's coded element for it (None: dropped, ⊥)."""

    tag: Tag
    element: Blob | None


class ListReply(_Msg, frozen=True, tag="list"):
    entries: tuple[ListEntry, ...]


class Ack(_Msg, frozen=True, tag="ack"):
    pass


class NextReply(_Msg, frozen=True, tag="next"):
    next: NextEntry | None


class Promise(_Msg, frozen=True, tag="prom"):
    ballot: Ballot
    accepted_ballot: Ballot | None
    accepted_value: Configuration | None


class Accepted(_Msg, frozen=True, tag="acd"):
    ballot: Ballot


class Nack(_Msg, frozen=True, tag="nack"):
    """Paxos refusal: the acceptor has promised ``promised``."""

    promised: Ballot


class KeysReply(_Msg, frozen=True, tag="keysr"):
    keys: tuple[str, ...]
    more: bool


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
    "invariant",  # the request would break a protocol invariant; refused, nothing applied
]


class ErrorReply(_Msg, frozen=True, tag="err"):
    code: ErrorCode
    message: str


Request = (
    Ping
    | QueryTag
    | QueryData
    | QueryList
    | PutData
    | ReadConfig
    | WriteConfig
    | Prepare
    | Accept
    | InstallConfig
    | ListKeys
    | GetStats
)
Reply = (
    Pong
    | TagReply
    | DataReply
    | ListReply
    | Ack
    | NextReply
    | Promise
    | Accepted
    | Nack
    | KeysReply
    | Stats
    | ErrorReply
)
Message = Request | Reply


class Envelope(msgspec.Struct, frozen=True, array_like=True):
    """What one frame carries: a request id (echoed by the reply), the message, trace context."""

    rid: int
    body: Message
    trace: dict[str, str] | None = None
