"""Wire messages (docs/architecture.md principle 3): typed, frozen msgspec structs, one union.

Every data request names ``(group, config_id, key)``: the configuration *chain*, the
configuration, the object. The field is called ``group`` for history; it names the chain. In
Ares II a cluster has one chain (``protocol.ares.CLUSTER_CHAIN``) and the object key is the
composite ``group\x00key`` (groups are namespaces, docs/protocol.md §2, §8.4); with ``batch`` off
every object has a chain of its own, named ``group\x00key``, and the key is the plain key.
The DAP messages are those of docs/protocol.md §4.1 (ABD); later protocol roles add their
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
    """ABD get-tag (docs/protocol.md §4.1): reply with the stored tag."""

    group: str
    config_id: str
    key: str


class QueryData(_Msg, frozen=True, tag="qdata"):
    """ABD get-data (docs/protocol.md §4.1): reply with the stored (tag, value)."""

    group: str
    config_id: str
    key: str


class PutData(_Msg, frozen=True, tag="put"):
    """put-data: ABD (docs/protocol.md §4.1) stores (tag, value) if tag is newer; TREAS (§4.2) adds
    (tag, coded element) to its list (``value`` is then this server's element); then ACK."""

    group: str
    config_id: str
    key: str
    tag: Tag
    value: Blob
    digest: bytes = b""
    """The writer's digest of the whole value (:mod:`aresdsm.integrity`); ABD servers check the
    value against it before storing anything."""
    element_digest: bytes = b""
    """TREAS: the digest of this server's coded element, checked likewise."""
    mac: bytes = b""
    """The writer's MAC of (chain, key, tag, ``digest``) (docs/protocol.md §13, security.macs);
    a reader writing the value back forwards it unchanged; empty where the cluster has no write
    key."""


class BatchItem(msgspec.Struct, frozen=True, array_like=True):
    key: str
    tag: Tag
    value: Blob
    digest: bytes = b""
    element_digest: bytes = b""
    mac: bytes = b""
    """The writer's MAC, transferred unchanged (as :attr:`PutData.mac`)."""


class PutBatch(_Msg, frozen=True, tag="putb"):
    """put-data of many objects of one group at once (docs/protocol.md §8.4): reconfiguration's
    state transfer in pages. For TREAS each server's items carry its own coded elements."""

    group: str
    config_id: str
    items: tuple[BatchItem, ...]
    floor: int = 0
    """Raise the configuration's tag floor to this (docs/protocol.md §8.4 "Deleted objects"):
    update-config's last round, after every batch and before finalize-config."""


class QueryList(_Msg, frozen=True, tag="qlist"):
    """TREAS get-data (docs/protocol.md §4.2): reply with the list of (tag, element or None)."""

    group: str
    config_id: str
    key: str


class Ballot(msgspec.Struct, frozen=True, order=True, array_like=True):
    """A Paxos ballot ``(round, proposer)``, compared lexicographically (docs/protocol.md §5)."""

    round: int
    proposer: str


class NextEntry(msgspec.Struct, frozen=True, array_like=True):
    """``nextC[c]``: a configuration's successor and its status, P or F (docs/protocol.md §2)."""

    config: Configuration
    status: Literal["P", "F"]
    mac: bytes = b""
    """Admin MAC over (group, predecessor id, successor): proof that an admin -- the one who ran
    the consensus that decided it -- vouches for this successor (docs/protocol.md §13). Stored
    and forwarded with the entry, so a client without the admin key can write it back; empty
    where the cluster has no admin key."""


class ReadConfig(_Msg, frozen=True, tag="rcfg"):
    """READ_CONFIG (docs/protocol.md §6): reply with ``nextC[group][config_id]``."""

    group: str
    config_id: str


class WriteConfig(_Msg, frozen=True, tag="wcfg"):
    """WRITE_CONFIG (docs/protocol.md §6): store the entry unless an F entry is already stored."""

    group: str
    config_id: str
    entry: NextEntry
    gc: bool = True
    """With an F entry: delete the configuration's object state in the same durable step
    (docs/protocol.md §8.3 garbage collection). Classic Ares sends False."""


class Prepare(_Msg, frozen=True, tag="prep"):
    """Paxos phase 1a for the instance (group, config_id) (docs/protocol.md §5)."""

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


class GetGroup(_Msg, frozen=True, tag="group"):
    """The DAP state of every object the server holds for (group, config_id), paged by key.

    With ``set_next``: SET_NEXT_AND_GET (docs/protocol.md §8.2, §8.4) -- in one atomic step it
    first stores ``set_next`` as nextC (unless it holds F), durably, then answers. The
    reconfigurer uses the answers both as its put-config and as its get-data on the last
    configuration.
    """

    group: str
    config_id: str
    after: str
    limit: int
    set_next: NextEntry | None = None
    limit_bytes: int = 8 * 1024 * 1024
    """A page ends once its values reach this many bytes (at least one object per page), so a
    page of large objects stays far below the frame limit (§8.4: bounded message size)."""


class ListChains(_Msg, frozen=True, tag="chains"):
    """The names of the configuration chains (groups) this server holds anything for -- object
    state, nextC or acceptor state -- that start with ``prefix``, in order, after ``after``.
    With ``batch`` off every object has a chain of its own (docs/protocol.md §8.4); a reconfigurer
    enumerates a group's objects with this."""

    prefix: str
    after: str
    limit: int


class ListKeys(_Msg, frozen=True, tag="keys"):
    """The object keys (never values) the server holds for (group, config_id) that start with
    ``prefix`` and sort after ``after``, in order, at most ``limit`` (and a byte budget) of them.
    ``group`` names the configuration chain (in Ares II the cluster's one chain, whose object keys
    are ``group\x00key``, docs/protocol.md §2); clients list groups and keys with it. Answered by
    KeysReply, or OBSOLETE for a garbage-collected configuration (§8.3)."""

    group: str
    config_id: str
    prefix: str
    after: str
    limit: int


class Finalized(_Msg, frozen=True, tag="fin"):
    """Tells the servers of a newly finalized configuration that it is F (so that they can answer
    LATEST_CONFIG once the old servers are gone, §8.5). Sent after finalize-config."""

    group: str
    entry: NextEntry


class LatestConfig(_Msg, frozen=True, tag="latest"):
    """LATEST_CONFIG (docs/protocol.md §8.5): the newest finalized configuration of ``group`` this
    server knows of, for clients whose chain leads only to decommissioned servers."""

    group: str


class CvrBallot(msgspec.Struct, frozen=True, order=True, array_like=True):
    """A coverable-register ballot ``(epoch, round, proposer)`` (docs/protocol.md §9.1). The
    epoch of the configuration it was issued in comes first, so every ballot issued in a
    successor configuration beats every one carried over from its predecessor by the transfer."""

    epoch: int
    round: int
    proposer: str


class CvrPrepare(_Msg, frozen=True, tag="cprep"):
    """Coverable register, phase 1 of the Paxos instance deciding version ``level`` of ``key``
    (docs/protocol.md §9.1). Answered by CvrPromise or CvrNack (carrying the committed tag)."""

    group: str
    config_id: str
    key: str
    level: int
    ballot: CvrBallot


class CvrAccept(_Msg, frozen=True, tag="cacc"):
    """Coverable register, phase 2: accept (tag, value) as version ``level`` at ``ballot``."""

    group: str
    config_id: str
    key: str
    level: int
    ballot: CvrBallot
    tag: Tag
    value: Blob


class CvrInject(_Msg, frozen=True, tag="cinj"):
    """State transfer of an open level (docs/protocol.md §9.1): the value the predecessor's
    frozen acceptors may have decided, carried as an accepted value at its (older) ballot."""

    group: str
    config_id: str
    key: str
    level: int
    ballot: CvrBallot
    tag: Tag
    value: Blob


class GetStats(_Msg, frozen=True, tag="stats"):
    """Ask a server for its counters and storage figures."""


class Hello(_Msg, frozen=True, tag="hello"):
    """The first message on every client connection (the handshake, issue 10): which cluster,
    server and initial configuration the client means. Answered by :class:`Welcome` or by an
    ``ErrorReply("refused")`` after which the server closes the connection; nothing else is
    served before it. Handled by the transport, never by the protocol core."""

    cluster_id: str
    """"" from a library client that knows no cluster id: then the digest alone is checked."""
    server_id: str
    initial_digest: str
    version: int
    incarnation: str = ""
    """The incarnation uid the client's configuration names for this server ("" = any)."""


# --- replies -------------------------------------------------------------------------------


class Welcome(_Msg, frozen=True, tag="welcome"):
    """The server's identity, in answer to :class:`Hello`."""

    cluster_id: str
    server_id: str
    incarnation: str
    version: int


class Pong(_Msg, frozen=True, tag="pong"):
    payload: Blob | None = None


class TagReply(_Msg, frozen=True, tag="tag"):
    tag: Tag
    next: NextEntry | None = None
    """The server's nextC for the request's (group, configuration), read in the same step
    (docs/protocol.md §8.1 piggyback); likewise on every data reply."""


class DataReply(_Msg, frozen=True, tag="data"):
    tag: Tag
    value: Blob
    next: NextEntry | None = None
    digest: bytes = b""
    """The writer's digest of ``value``; a reader drops a reply that does not match it."""
    mac: bytes = b""
    """The writer's MAC stored with the value: a reader's write-back carries it unchanged."""


class ListEntry(msgspec.Struct, frozen=True, array_like=True):
    """One TREAS list entry: a tag and this server's coded element for it (None: dropped, ⊥)."""

    tag: Tag
    element: Blob | None
    digest: bytes = b""
    """The writer's digest of ``element`` (checked before decoding)."""
    value_digest: bytes = b""
    """The writer's digest of the whole value (checked after decoding)."""
    mac: bytes = b""
    """The writer's MAC of (chain, key, tag, ``value_digest``), forwarded on write-back."""


class ListReply(_Msg, frozen=True, tag="list"):
    entries: tuple[ListEntry, ...]
    next: NextEntry | None = None


class Ack(_Msg, frozen=True, tag="ack"):
    next: NextEntry | None = None


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


class CvrOpen(msgspec.Struct, frozen=True, array_like=True):
    """A coverable object's highest open level on one server: the value accepted there, at
    which ballot (docs/protocol.md §9.1); reported by SET_NEXT_AND_GET for the transfer."""

    level: int
    ballot: CvrBallot
    tag: Tag
    value: Blob


class ObjectState(msgspec.Struct, frozen=True, array_like=True):
    """One object's DAP state: ABD (tag, value) or TREAS list entries; for a coverable object
    with an accepted but uncommitted version also that (``cvr``)."""

    key: str
    tag: Tag
    value: Blob | None = None
    entries: tuple[ListEntry, ...] = ()
    cvr: CvrOpen | None = None
    digest: bytes = b""
    """ABD: the writer's digest of ``value``."""
    mac: bytes = b""
    """ABD: the writer's MAC stored with ``value`` (TREAS: in each list entry)."""


class CvrPromise(_Msg, frozen=True, tag="cprom"):
    """The promise of CvrPrepare, with the server's committed tag of the key and the value it
    accepted at the level (if any)."""

    ballot: CvrBallot
    committed: Tag
    accepted: CvrOpen | None = None
    next: NextEntry | None = None


class CvrAccepted(_Msg, frozen=True, tag="cacd"):
    ballot: CvrBallot
    committed: Tag
    next: NextEntry | None = None


class CvrNack(_Msg, frozen=True, tag="cnack"):
    """Refusal: a higher promise (``promised``), the level is committed here already
    (``committed``.z >= level), or the configuration has a successor (``next``: frozen)."""

    promised: CvrBallot | None
    committed: Tag
    next: NextEntry | None = None


class ChainsReply(_Msg, frozen=True, tag="chainsr"):
    names: tuple[str, ...]
    more: bool


class KeysReply(_Msg, frozen=True, tag="keysr"):
    keys: tuple[str, ...]
    more: bool
    """More keys match after the last one given."""
    next: NextEntry | None = None


class GroupReply(_Msg, frozen=True, tag="groupr"):
    objects: tuple[ObjectState, ...]
    more: bool
    next: NextEntry | None = None
    floor: int = 0
    """The configuration's tag floor on this server (§8.4 "Deleted objects"): carried into the
    next configuration's floor."""


class Obsolete(_Msg, frozen=True, tag="obs"):
    """The configuration's data was garbage-collected (§8.3): its successor ``next`` is F and
    holds everything. Never stale or partial data; a PUT_DATA answered so was not applied."""

    next: NextEntry


class Stats(_Msg, frozen=True, tag="statsr"):
    server_id: str
    counters: dict[str, int]
    objects: int
    stored_bytes: int
    bytes_by_config: dict[str, int] = {}
    """"group/config" -> bytes of object state held for it (docs/protocol.md §8.3 measurements)."""
    damaged: tuple[str, ...] = ()
    """Objects ("group/config/key"), instances ("group/config") or configurations this server
    found corrupt on its disk and no longer answers for (at most MAX_DAMAGED_LISTED names)."""
    damaged_count: int = 0


ErrorCode = Literal[
    "bad-request",  # malformed or unknown message
    "unknown-config",  # the request names a configuration this server does not know
    "not-member",  # this server is not a member of the named configuration
    "overloaded",  # too many requests in flight on this connection
    "storage",  # the durable store failed; nothing was applied
    "shutting-down",
    "invariant",  # the request would break a protocol invariant; refused, nothing applied
    "unauthorized",  # the connection's role may not send this request (docs/protocol.md §13)
    "corrupt",  # a value does not match its digest; refused, nothing applied
    "damaged",  # this server's copy is corrupt on its disk: it does not answer for it
    "wrong-incarnation",  # the configuration names another incarnation of this server
    "refused",  # the connection handshake failed (another cluster, server or configuration)
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
    | PutBatch
    | ReadConfig
    | WriteConfig
    | Prepare
    | Accept
    | InstallConfig
    | GetGroup
    | ListChains
    | ListKeys
    | LatestConfig
    | Finalized
    | CvrPrepare
    | CvrAccept
    | CvrInject
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
    | GroupReply
    | ChainsReply
    | KeysReply
    | Obsolete
    | CvrPromise
    | CvrAccepted
    | CvrNack
    | Stats
    | ErrorReply
)
Message = Request | Reply | Hello | Welcome


class Envelope(msgspec.Struct, frozen=True, array_like=True):
    """What one frame carries: a request id (echoed by the reply), the message, trace context."""

    rid: int
    body: Message
    trace: dict[str, str] | None = None
