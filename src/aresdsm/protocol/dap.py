"""The DAP interface (docs/protocol.md §4): get-tag, get-data, put-data on one configuration.

Dispatches to ABD (§4.1) or TREAS (§4.2) by the configuration's ``dap`` (returning the chosen
DAP's coroutine: no coroutine frame of its own on the hot path, issue 18). Both satisfy C1 and C2,
which is all the reconfiguration layer (§6, §8) relies on. Every action also returns the
strongest nextC entry its quorum of replies carried (§8.1).
"""

from __future__ import annotations

from collections.abc import Coroutine, Sequence
from typing import Any

from .. import integrity
from ..config import Configuration, ServerInfo
from ..errors import ConcurrencyExceeded, IntegrityError
from ..tags import TAG0, Tag
from ..wire.blob import EMPTY, Blob
from ..wire.messages import Ack, BatchItem, NextEntry, ObjectState, PutBatch
from . import abd, treas
from .channel import Channel


def get_tag(
    net: Channel, c: Configuration, group: str, key: str
) -> Coroutine[Any, Any, tuple[Tag, NextEntry | None]]:
    if c.dap == "treas":
        return treas.get_tag(net, c, group, key)
    return abd.get_tag(net, c, group, key)


def get_data(
    net: Channel,
    c: Configuration,
    group: str,
    key: str,
    *,
    broken_decode_below_k: bool = False,
    need: int | None = None,
) -> Coroutine[Any, Any, tuple[Tag, Blob, bool, NextEntry | None, bytes]]:
    """The newest (tag, value) of a quorum, whether the whole quorum held it (§8.6), next, and
    the writer's MAC it came with (opaque: forwarded on write-back, §13). ``need`` other than
    the quorum size exists for a test-only broken variant."""
    if c.dap == "treas":
        return treas.get_data(
            net, c, group, key, broken_decode_below_k=broken_decode_below_k, need=need
        )
    return abd.get_data(net, c, group, key, need=need)


def put_data(
    net: Channel,
    c: Configuration,
    group: str,
    key: str,
    *,
    tag: Tag,
    value: Blob,
    mac: bytes = b"",
) -> Coroutine[Any, Any, NextEntry | None]:
    """put-data of (tag, value) with the writer's MAC it came with (empty: a new value, which
    the client shell signs -- the protocol never holds a key, §13)."""
    if c.dap == "treas":
        return treas.put_data(net, c, group, key, tag=tag, value=value, mac=mac)
    return abd.put_data(net, c, group, key, tag=tag, value=value, mac=mac)


async def put_batch(
    net: Channel,
    c: Configuration,
    group: str,
    items: Sequence[tuple[str, Tag, Blob, bytes]],
    floor: int = 0,
) -> None:
    """put-data of many (key, tag, value, writer's MAC) in one round (§8.4); TREAS encodes each
    value once. ``floor`` raises the configuration's tag floor (§8.4 "Deleted objects")."""
    if c.dap == "treas":
        coder = treas.coder(c)
        elements = [coder.encode(v.data) for _, _, v, _ in items]
        digests = [integrity.digest(v.data) for _, _, v, _ in items]
        element_digests = [[integrity.digest(e) for e in els] for els in elements]

        def request(i: int, _s: ServerInfo) -> PutBatch:
            return PutBatch(
                group,
                c.id,
                tuple(
                    BatchItem(key, tag, Blob(els[i]), d, eds[i], mac)
                    for (key, tag, _, mac), els, d, eds in zip(
                        items, elements, digests, element_digests, strict=True
                    )
                ),
                floor,
            )

        await net.round(c, request, expect=Ack, phase="put-data")
        return
    batch = PutBatch(
        group,
        c.id,
        tuple(BatchItem(k, t, v, integrity.digest(v.data), b"", m) for k, t, v, m in items),
        floor,
    )
    await net.round(c, batch, expect=Ack, phase="put-data")


def newest(
    c: Configuration, reports: Sequence[tuple[int, ObjectState | None]]
) -> tuple[Tag, Blob, bytes]:
    """get-data's answer computed from a quorum's group-read reports of one object (§8.4), with
    the writer's MAC it came with (transferred unchanged, §13).

    ``reports`` has one (server index, state or None: the server does not hold the object) per
    server of the answering quorum. Raises ConcurrencyExceeded when a TREAS object cannot be
    decoded (more than δ writes in flight).
    """
    if c.dap == "treas":
        lists = [
            (i, st.entries if st is not None else treas.initial_state(c, i)) for i, st in reports
        ]
        for _, entries in lists:
            for e in entries:
                if e.element is not None and not integrity.matches(e.element.data, e.digest):
                    raise IntegrityError(
                        f"a coded element of configuration {c.id} does not match its digest; "
                        "retry the reconfiguration"
                    )
        found = treas.newest_decodable(c, lists)
        if found is None:
            raise ConcurrencyExceeded(
                f"cannot decode an object of configuration {c.id} during reconfiguration: more "
                f"than delta={c.delta} writes in flight; retry the reconfiguration"
            )
        return found[0], found[1], found[3]
    best: tuple[Tag, Blob, bytes] = (TAG0, EMPTY, b"")
    for _, st in reports:
        if st is not None and st.tag > best[0]:
            value = st.value if st.value is not None else EMPTY
            if not integrity.matches(value.data, st.digest):
                raise IntegrityError(
                    f"a value of configuration {c.id} does not match its digest; "
                    "retry the reconfiguration"
                )
            best = (st.tag, value, st.mac)
    return best
