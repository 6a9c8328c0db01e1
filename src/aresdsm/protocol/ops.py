"""Read and write over one (static) configuration (docs/protocol.md §4, ABD in §4.1).

``write(v)``: get-tag from a quorum, pick ``(max.z + 1, writer)``, put-data to a quorum: 2 rounds.
``read()``: get-data from a quorum, then put-data of the pair it returns (the write-back that
makes later reads see at least this value), 2 rounds; with ``fast_read`` the write-back is skipped
when every reply of the quorum already carried the returned tag (docs/protocol.md §8.6): that quorum
then plays the write-back quorum's role, and the read takes 1 round.

Reconfiguration (docs/protocol.md §6, §8) replaces the single configuration by a configuration
sequence; these functions are the per-configuration steps it builds on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import Configuration
from ..tags import Tag
from ..testing import NO_FAULTS, Broken
from ..wire.blob import Blob
from . import abd
from .channel import Channel


@dataclass(frozen=True, slots=True)
class ReadResult:
    tag: Tag
    value: Blob
    wrote_back: bool
    """False when the read returned after its query round (docs/protocol.md §8.6)."""


@dataclass(frozen=True, slots=True)
class OpSwitches:
    """Protocol switches: the Ares II changes, each of which can be turned off for comparison
    (:data:`CLASSIC` turns them all off)."""

    piggyback: bool = True
    """Ares II (docs/protocol.md §8.1): configuration knowledge rides on data replies."""
    fast_read: bool = True
    """One-round reads when the query quorum already agrees (§8.6); needs piggyback."""
    gc: bool = True
    """Finalizing a configuration garbage-collects the old one's object state (§8.3)."""
    batch: bool = True
    """One configuration chain per group, reconfigured with one consensus decision and a paged
    transfer (§8.4); off: every object has a chain of its own, as in the original Ares."""
    write_back_final: bool = True
    """Discovery (read-config, §6) writes an F successor it found back as F, with garbage
    collection (§8.3). Off: back as P -- enough for every later discovery, and the only
    configuration write-back a client without the admin role may send (docs/protocol.md §13);
    the old configuration is then collected by the next admin that finalizes or discovers."""
    faults: Broken = field(default=NO_FAULTS, repr=False)
    """Test-only protocol faults (:mod:`aresdsm.testing`); none unless a test sets them."""


DEFAULT_SWITCHES = OpSwitches()
CLASSIC = OpSwitches(piggyback=False, fast_read=False, gc=False, batch=False)
"""The original Ares (docs/protocol.md §6), for comparison: every Ares II switch off."""


async def write(
    net: Channel,
    c: Configuration,
    *,
    group: str,
    key: str,
    value: Blob,
    writer: str,
    switches: OpSwitches = DEFAULT_SWITCHES,
) -> Tag:
    if switches.faults.broken_no_query_before_write:
        tag = Tag(1, writer)
    else:
        tag = (await abd.get_tag(net, c, group, key))[0].successor(writer)
    await abd.put_data(net, c, group, key, tag=tag, value=value)
    return tag


async def read(
    net: Channel,
    c: Configuration,
    *,
    group: str,
    key: str,
    switches: OpSwitches = DEFAULT_SWITCHES,
) -> ReadResult:
    tag, value, unanimous, _, mac = await abd.get_data(net, c, group, key)
    if (switches.fast_read and unanimous) or switches.faults.broken_skip_write_back:
        return ReadResult(tag, value, wrote_back=False)
    await abd.put_data(net, c, group, key, tag=tag, value=value, mac=mac)
    return ReadResult(tag, value, wrote_back=True)
