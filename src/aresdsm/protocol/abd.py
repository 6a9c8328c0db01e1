"""ABD: the replication data access primitive (docs/protocol.md §4.1).

Server side (pure): per (group, configuration, object) a register ``(tag, value)``, initially
``(TAG0, b"")``.  QUERY_TAG replies the tag, QUERY_DATA the pair, PUT_DATA(t, v) stores the pair
if ``t`` is newer -- so a server's tag never decreases (docs/protocol.md §10.5) -- and ACKs.

Client side (over the injected :class:`~aresdsm.protocol.channel.Channel`): each action is one
round to the configuration's servers, completing on ``q = floor(n/2) + 1`` replies. Any two
majorities intersect, which gives the DAP properties C1 and C2 of docs/protocol.md §4.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from .. import integrity
from ..config import Configuration
from ..tags import TAG0, Tag
from ..wire.blob import EMPTY, Blob
from ..wire.messages import Ack, DataReply, NextEntry, PutData, QueryData, QueryTag, TagReply
from .channel import Channel

NS = "abd"


class Register(msgspec.Struct, frozen=True):
    tag: Tag
    value: Blob
    digest: bytes = integrity.EMPTY_DIGEST
    """The writer's digest of ``value`` (checked on receipt, kept, sent with the value)."""
    mac: bytes = b""
    """The writer's MAC (docs/protocol.md §13), opaque here: kept and sent with the value."""


INITIAL = Register(TAG0, EMPTY)


class StoredMeta(msgspec.Struct, frozen=True, array_like=True):
    """The meta of a stored ABD record: the tag, the value's digest and the writer's MAC."""

    tag: Tag
    digest: bytes
    mac: bytes = b""


# --- server rules (pure) -------------------------------------------------------------------


def on_query_tag(reg: Register) -> TagReply:
    return TagReply(reg.tag)


def on_query_data(reg: Register) -> DataReply:
    return DataReply(reg.tag, reg.value, None, reg.digest, reg.mac)


def on_put_data(reg: Register, msg: PutData) -> tuple[Register | None, Ack]:
    """Returns the new register (None: unchanged) and the ACK. The caller checked the value
    against ``msg.digest``."""
    if msg.tag > reg.tag:
        return Register(msg.tag, msg.value, msg.digest, msg.mac), Ack()
    return None, Ack()


def put_request(
    group: str, config_id: str, key: str, tag: Tag, value: Blob, mac: bytes = b""
) -> PutData:
    """PUT_DATA(t, v) with the writer's digest of the value attached, and the MAC the value came
    with (a write-back; empty for a new value: the client shell signs it, §13)."""
    return PutData(group, config_id, key, tag, value, integrity.digest(value.data), b"", mac)


def intact(reply: DataReply) -> bool:
    """A reply whose value matches the writer's digest (others count as missing replies)."""
    return integrity.matches(reply.value.data, reply.digest)


# --- client actions --------------------------------------------------------------------------
# Each returns, besides its result, the strongest nextC entry its quorum of replies carried
# (docs/protocol.md §8.1): ⊥ < P < F. Classic Ares ignores it; Ares II follows it.


def strongest(entries: Iterable[NextEntry | None]) -> NextEntry | None:
    """F beats P beats ⊥ (all entries name the same successor: consensus decided it)."""
    best: NextEntry | None = None
    for e in entries:
        if e is not None and (best is None or (best.status == "P" and e.status == "F")):
            best = e
    return best


async def get_tag(
    net: Channel, c: Configuration, group: str, key: str
) -> tuple[Tag, NextEntry | None]:
    replies = await net.round(c, QueryTag(group, c.id, key), expect=TagReply, phase="get-tag")
    tag = max((r.tag for _, r in replies), default=TAG0)
    return tag, strongest(r.next for _, r in replies)


async def get_data(
    net: Channel, c: Configuration, group: str, key: str, *, need: int | None = None
) -> tuple[Tag, Blob, bool, NextEntry | None, bytes]:
    """The max (tag, value), whether every reply carried that same tag (the read may then skip
    its write-back, docs/protocol.md §8.6), the strongest next entry, and the writer's MAC the
    value came with (forwarded on write-back, §13)."""
    replies = await net.round(
        c,
        QueryData(group, c.id, key),
        expect=DataReply,
        phase="get-data",
        need=need,
        accept=intact,
    )
    best = max((r for _, r in replies), key=lambda r: r.tag)
    unanimous = all(r.tag == best.tag for _, r in replies)
    return best.tag, best.value, unanimous, strongest(r.next for _, r in replies), best.mac


async def put_data(
    net: Channel,
    c: Configuration,
    group: str,
    key: str,
    *,
    tag: Tag,
    value: Blob,
    mac: bytes = b"",
) -> NextEntry | None:
    req = put_request(group, c.id, key, tag, value, mac)
    replies = await net.round(c, req, expect=Ack, phase="put-data")
    return strongest(r.next for _, r in replies)
