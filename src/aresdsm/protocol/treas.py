"""TREAS: the erasure-coded data access primitive (docs/protocol.md §4.2).

Server i of an [n, k] configuration keeps, per object, a list of ``(tag, element_i or ⊥)``,
initially ``[(TAG0, Φ_i(b""))]``. QUERY_TAG reports the max tag, QUERY_LIST the whole list.
PUT_DATA(t, e) adds ``(t, e)`` if ``t`` is new, then, while more than δ+1 entries carry an element,
drops the element (not the tag) of the entry with the smallest tag: a server keeps at most δ+1
elements per object (§10 invariant 5); the ⊥ tags stay because C1's proof needs them.

Client: put-data encodes once and sends element i to server i, completing on
``q = ceil((n + k) / 2)`` ACKs; two quorums share at least k servers. get-data asks a quorum for
its lists and decodes the newest tag that occurs *with elements* in at least k lists -- but only if
it is also the newest tag that occurs at all in at least k lists; otherwise the read overlapped more
than δ writes and queries again (bounded), then fails naming δ. A value is never decoded from fewer
than k elements, nor from elements of two tags.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

import msgspec

from .. import integrity
from ..coding import ErasureCoder
from ..config import Configuration
from ..errors import ConcurrencyExceeded, IntegrityError
from ..tags import TAG0, Tag
from ..wire.blob import Blob
from ..wire.messages import (
    Ack,
    ListEntry,
    ListReply,
    NextEntry,
    PutData,
    QueryList,
    QueryTag,
    TagReply,
)
from .abd import strongest
from .channel import Channel

NS = "treas"
TreasState = tuple[ListEntry, ...]
MAX_QUERY_ATTEMPTS = 3


def coder(c: Configuration) -> ErasureCoder:
    return ErasureCoder(n=c.n, k=c.k)


def initial_state(c: Configuration, index: int) -> TreasState:
    element = coder(c).encode(b"")[index]
    return (ListEntry(TAG0, Blob(element), integrity.digest(element), integrity.EMPTY_DIGEST),)


# --- server rules (pure) -------------------------------------------------------------------


def on_query_tag(st: TreasState) -> TagReply:
    return TagReply(max(e.tag for e in st))


def on_query_list(st: TreasState) -> ListReply:
    return ListReply(st)


def on_put_data(st: TreasState, msg: PutData, delta: int) -> tuple[TreasState | None, Ack]:
    """Add (tag, element) if the tag is new; keep at most delta+1 elements. None: unchanged."""
    if any(e.tag == msg.tag for e in st):
        return None, Ack()
    added = ListEntry(msg.tag, msg.value, msg.element_digest, msg.digest, msg.mac)
    entries = sorted([*st, added], key=lambda e: e.tag)
    with_elements = [i for i, e in enumerate(entries) if e.element is not None]
    for i in with_elements[: max(0, len(with_elements) - (delta + 1))]:
        e = entries[i]
        entries[i] = ListEntry(e.tag, None, b"", e.value_digest, e.mac)
    return tuple(entries), Ack()


class ElementMeta(msgspec.Struct, frozen=True, array_like=True):
    """What one stored element record says: its object, its tag, whether it holds an element."""

    key: str
    tag: Tag
    has_element: bool
    digest: bytes = b""
    """The writer's digest of the element."""
    value_digest: bytes = b""
    mac: bytes = b""
    """The writer's MAC (docs/protocol.md §13), kept with the entry."""


_meta_enc = msgspec.msgpack.Encoder()
_meta_dec = msgspec.msgpack.Decoder(ElementMeta)


def element_record_key(key: str, tag: Tag) -> str:
    """Storage key of one (object, tag) entry; object keys never contain NUL (validated)."""
    return f"{key}\x00{tag.z}\x00{tag.writer}"


def changed_entries(old: TreasState, new: TreasState) -> list[ListEntry]:
    """Entries of ``new`` that differ from ``old``: the added one and those whose element was
    dropped. Only these are written: a put costs one element on disk, not δ+1."""
    before = {e.tag: e.element is not None for e in old}
    return [e for e in new if before.get(e.tag) != (e.element is not None)]


def encode_entry(key: str, entry: ListEntry) -> tuple[str, bytes, bytes | memoryview | None]:
    """(record key, meta, data) of one entry."""
    meta = _meta_enc.encode(
        ElementMeta(
            key, entry.tag, entry.element is not None, entry.digest, entry.value_digest, entry.mac
        )
    )
    data = entry.element.data if entry.element is not None else None
    return element_record_key(key, entry.tag), meta, data


def decode_entry(meta: bytes, data: bytes | memoryview | Blob | None) -> tuple[str, ListEntry]:
    """One stored entry; ``data`` as bytes, or already a Blob (a server's reference to the
    element on disk: kept as it is)."""
    m = _meta_dec.decode(meta)
    element: Blob | None = None
    if m.has_element and data is not None:
        element = data if isinstance(data, Blob) else Blob(bytes(data))
    return m.key, ListEntry(
        m.tag, element, m.digest if element is not None else b"", m.value_digest, m.mac
    )


def decode_meta(meta: bytes) -> ElementMeta:
    return _meta_dec.decode(meta)


def put_request(
    group: str,
    config_id: str,
    key: str,
    tag: Tag,
    element: bytes,
    value_digest: bytes,
    mac: bytes = b"",
) -> PutData:
    """PUT_DATA(t, e_i) with the writer's digests of the value and of the element attached, and
    the writer's MAC the value came with (empty for a new value: the client shell signs, §13)."""
    return PutData(
        group, config_id, key, tag, Blob(element), value_digest, integrity.digest(element), mac
    )


def intact(reply: ListReply) -> bool:
    """Every element of a reply matches the writer's digest of it (checked before decoding;
    a reply with a bad element counts as a missing reply)."""
    return all(
        integrity.matches(e.element.data, e.digest) for e in reply.entries if e.element is not None
    )


def stored_bytes(st: TreasState) -> int:
    return sum(len(e.element) for e in st if e.element is not None)


# --- decoding a quorum of lists ----------------------------------------------------------------


def newest_decodable(
    c: Configuration,
    lists: Sequence[tuple[int, TreasState]],
    *,
    broken_decode_below_k: bool = False,
) -> tuple[Tag, Blob, bool, bytes] | None:
    """The §4.2 decode rule over a quorum of (server index, list) pairs.

    Returns (tag, value, unanimous, mac) -- unanimous: every list holds that tag with its
    element (the one-round read condition of §8.6); mac: the writer's MAC the entries of that
    tag carry (the most common one; forwarded on write-back, §13) -- or None when max T* != max
    Tdec. Raises
    IntegrityError when the decoded value does not match the writer's digest of it (the
    elements were checked before: a writer bug or a corrupt digest, never returned).
    """
    need = 1 if broken_decode_below_k else c.k
    seen: dict[Tag, int] = {}
    elements: dict[Tag, dict[int, Blob]] = {}
    for index, st in lists:
        for e in st:
            seen[e.tag] = seen.get(e.tag, 0) + 1
            if e.element is not None:
                elements.setdefault(e.tag, {})[index] = e.element
    t_star = max((t for t, count in seen.items() if count >= need), default=None)
    t_dec = max((t for t, els in elements.items() if len(els) >= need), default=None)
    if t_star is None or t_dec is None or t_star != t_dec:
        return None
    els = elements[t_dec]
    if broken_decode_below_k and len(els) < c.k:
        value = b"".join(bytes(b.data) for b in els.values())  # garbage on purpose (test-only)
    else:
        value = coder(c).decode({i: b.data for i, b in els.items()})
        wanted = {e.value_digest for _, st in lists for e in st if e.tag == t_dec}
        if len(wanted) != 1 or not integrity.matches(value, next(iter(wanted))):
            raise IntegrityError(
                f"the value of tag {t_dec} decoded on configuration {c.id} does not match the "
                "writer's digest"
            )
    unanimous = len(els) == len(lists)
    macs = Counter(e.mac for _, st in lists for e in st if e.tag == t_dec and e.mac)
    mac = macs.most_common(1)[0][0] if macs else b""
    return t_dec, Blob(value), unanimous, mac


# --- client actions --------------------------------------------------------------------------


async def get_tag(
    net: Channel, c: Configuration, group: str, key: str
) -> tuple[Tag, NextEntry | None]:
    replies = await net.round(c, QueryTag(group, c.id, key), expect=TagReply, phase="get-tag")
    return max(r.tag for _, r in replies), strongest(r.next for _, r in replies)


async def get_data(
    net: Channel,
    c: Configuration,
    group: str,
    key: str,
    *,
    max_attempts: int = MAX_QUERY_ATTEMPTS,
    broken_decode_below_k: bool = False,
    need: int | None = None,
) -> tuple[Tag, Blob, bool, NextEntry | None, bytes]:
    """(tag, value, unanimous, next, writer's MAC): as :func:`.abd.get_data`."""
    corrupt: IntegrityError | None = None
    for _ in range(max_attempts):
        replies = await net.round(
            c,
            QueryList(group, c.id, key),
            expect=ListReply,
            phase="get-data",
            need=need,
            accept=None if broken_decode_below_k else intact,
        )
        lists = [(c.index_of(s.id), r.entries) for s, r in replies]
        try:
            found = newest_decodable(c, lists, broken_decode_below_k=broken_decode_below_k)
        except IntegrityError as e:
            corrupt = e
            continue
        if found is not None:
            tag, value, unanimous, mac = found
            return tag, value, unanimous, strongest(r.next for _, r in replies), mac
    if corrupt is not None:
        raise corrupt
    raise ConcurrencyExceeded(
        f"read of {key!r} on configuration {c.id} overlapped more than delta={c.delta} "
        f"concurrent writes {max_attempts} times in a row; retry, or reconfigure with a "
        "larger delta"
    )


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
    elements = coder(c).encode(value.data)
    value_digest = integrity.digest(value.data)
    replies = await net.round(
        c,
        lambda i, _s: put_request(group, c.id, key, tag, elements[i], value_digest, mac),
        expect=Ack,
        phase="put-data",
    )
    return strongest(r.next for _, r in replies)


def lists_with_missing(
    c: Configuration, reports: Iterable[tuple[int, TreasState]], quorum: int
) -> list[tuple[int, TreasState]]:
    """Complete a group read's per-object reports: servers of the answering quorum that did not
    report the object hold its initial state (only their count matters to the decode rule)."""
    out = list(reports)
    missing = [i for i in range(c.n) if i not in {j for j, _ in out}]
    for i in missing[: max(0, quorum - len(out))]:
        out.append((i, initial_state(c, i)))
    return out
