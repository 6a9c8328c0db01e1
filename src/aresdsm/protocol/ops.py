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

from dataclasses import dataclass

from ..config import Configuration
from ..tags import Tag
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
    """Protocol switches; test-only ones are named ``broken_*`` and are never on in production."""

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
    broken_skip_write_back: bool = False
    """Test-only: reads never write back (the checker must catch it)."""
    broken_no_query_before_write: bool = False
    """Test-only: a writer picks (1, id) without asking for the max tag (must be caught)."""
    broken_skip_update_config: bool = False
    """Test-only: reconfiguration moves no state into the new configuration."""
    broken_no_config_write_back: bool = False
    """Test-only: discovery does not write found successors back (read-config, §6)."""
    broken_split_handoff: bool = False
    """Test-only: reconfiguration sends put-config and then a separate get-data on the last
    configuration instead of SET_NEXT_AND_GET -- the §8.2 counterexample with piggyback."""
    broken_finish_on_obsolete: bool = False
    """Test-only: phase 2 treats an OBSOLETE answer as done instead of moving on (§8.3)."""
    broken_fast_read_short: bool = False
    """Test-only: the one-round read's query completes one reply short of a quorum (§8.6)."""
    broken_decode_below_k: bool = False
    """Test-only: TREAS reads decode tags held by fewer than k servers (§4.2)."""
    broken_plain_get_older_sources: bool = False
    """Test-only: update-config reads c_μ..c_{ν−1} with a plain get-data, as docs/protocol.md §8.2
    says, instead of SET_NEXT_AND_GET (tests/sim/test_older_sources.py shows the lost write)."""
    broken_retry_write_with_new_tag: bool = False
    """Test-only: the client retries a failed write from scratch, under a new tag, instead of
    finishing it with its own (tests/sim/test_store_retry.py)."""
    broken_classic_ignores_ack_next: bool = False
    """Test-only: with piggyback off, phase 2 ignores the next its put-data ACKs carry and
    relies on read-config alone, as the original Ares does -- unsafe next to an Ares II
    reconfigurer (tests/sim/test_mixed_modes.py)."""
    broken_no_requery_after_obsolete: bool = False
    """Test-only: phase 1 keeps a successor's answer given before its predecessor said OBSOLETE
    instead of asking it again (§8.3; tests/sim/test_obsolete_race.py)."""
    broken_cvr_unconditional: bool = False
    """Test-only: a coverable write is the naive CoARES one -- query, and if the newest version
    is the base put the successor unconditionally (§9.1: two writers of one base both win)."""
    broken_cvr_put_undecided: bool = False
    """Test-only: a coverable write puts its value into the DAP before it is decided, so
    readers may return a version that then loses (§9.1)."""
    broken_cvr_transfer_ignores_open: bool = False
    """Test-only: update-config moves committed versions only, not the open level a frozen
    quorum reports (§9.1): a level decided but not yet put is lost and decided again."""


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
    if switches.broken_no_query_before_write:
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
    tag, value, unanimous, _ = await abd.get_data(net, c, group, key)
    if (switches.fast_read and unanimous) or switches.broken_skip_write_back:
        return ReadResult(tag, value, wrote_back=False)
    await abd.put_data(net, c, group, key, tag=tag, value=value)
    return ReadResult(tag, value, wrote_back=True)
