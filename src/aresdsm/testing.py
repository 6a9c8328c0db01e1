"""Test-only faults: the ``broken_*`` switches that break the client protocol on purpose.

Every safety property has a broken variant that the checker (``ares check``, the simulator) must
catch (docs/testing.md). They live here, out of the public API's help text: an
:class:`~aresdsm.protocol.ops.OpSwitches` carries them in its ``faults`` field, which is
:data:`NO_FAULTS` unless a test sets it::

    from aresdsm.testing import Broken, broken_switches

    switches = broken_switches(piggyback=False, broken_skip_write_back=True)
    # the same as OpSwitches(piggyback=False, faults=Broken(broken_skip_write_back=True))

Never set one in production.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .protocol.ops import OpSwitches


@dataclass(frozen=True, slots=True, repr=False)
class Broken:
    """Protocol faults (client side; ``broken_skip_value_mac`` and ``broken_late_value_read`` are
    the server shell's); each one
    must make the checker or a test report a violation."""

    broken_skip_write_back: bool = False
    """Reads never write back (the checker must catch it)."""
    broken_no_query_before_write: bool = False
    """A writer picks (1, id) without asking for the max tag (must be caught)."""
    broken_skip_update_config: bool = False
    """Reconfiguration moves no state into the new configuration."""
    broken_no_config_write_back: bool = False
    """Discovery does not write found successors back (read-config, docs/protocol.md §6)."""
    broken_split_handoff: bool = False
    """Reconfiguration sends put-config and then a separate get-data on the last configuration
    instead of SET_NEXT_AND_GET -- the §8.2 counterexample with piggyback."""
    broken_finish_on_obsolete: bool = False
    """Phase 2 treats an OBSOLETE answer as done instead of moving on (§8.3)."""
    broken_fast_read_short: bool = False
    """The one-round read's query completes one reply short of a quorum (§8.6)."""
    broken_decode_below_k: bool = False
    """TREAS reads decode tags held by fewer than k servers (§4.2)."""
    broken_plain_get_older_sources: bool = False
    """Update-config reads c_μ..c_{ν−1} with a plain get-data instead of SET_NEXT_AND_GET
    (tests/sim/test_older_sources.py shows the lost write)."""
    broken_retry_write_with_new_tag: bool = False
    """The client retries a failed write from scratch, under a new tag, instead of finishing it
    with its own (tests/sim/test_store_retry.py)."""
    broken_classic_ignores_ack_next: bool = False
    """With piggyback off, phase 2 ignores the next its put-data ACKs carry and relies on
    read-config alone, as the original Ares does -- unsafe next to an Ares II reconfigurer
    (tests/sim/test_mixed_modes.py)."""
    broken_no_requery_after_obsolete: bool = False
    """Phase 1 keeps a successor's answer given before its predecessor said OBSOLETE instead of
    asking it again (§8.3; tests/sim/test_obsolete_race.py)."""
    broken_cvr_unconditional: bool = False
    """A coverable write is the naive CoARES one -- query, and if the newest version is the
    base put the successor unconditionally (§9.1: two writers of one base both win)."""
    broken_cvr_put_undecided: bool = False
    """A coverable write puts its value into the DAP before it is decided, so readers may
    return a version that then loses (§9.1)."""
    broken_cvr_transfer_ignores_open: bool = False
    """Update-config moves committed versions only, not the open level a frozen quorum reports
    (§9.1): a level decided but not yet put is lost and decided again."""

    broken_paxos_own_value: bool = False
    """The Paxos proposer ignores the values its PROMISEs report and decides its own (two
    reconfigurers then decide two successors of one configuration; §10.2)."""
    broken_drop_tombstones_without_floor: bool = False
    """Update-config drops tombstones but sets no tag floor on the new configuration: a later
    write there can get a tag below the dropped tombstone, which a reader that still sees the
    old configuration then prefers (§8.4 "Deleted objects"; tests/sim/test_tombstone_floor.py;
    ``ares sim --broken drop-tombstones-without-floor --deletes``, not drawn by the swarm yet:
    docs/testing.md)."""
    broken_writer_ids_without_incarnation: bool = False
    """A Store's writer ids are ``name.op`` without the random incarnation, so two processes
    using one client name write under one tag (tests/sim/test_reused_client_name.py; the swarm's
    twins, ``ares sim --broken writer-ids-without-incarnation``)."""
    broken_skip_server_id_check: bool = False
    """TLS connections do not check the server id in the server's certificate against the one
    the configuration names (tests/integration/test_security.py; not in the simulator, which
    routes by server id and has no TLS: docs/testing.md)."""
    broken_skip_value_mac: bool = False
    """Server side (``Server(faults=...)``): values are applied without checking the writer's MAC,
    so a read-role client can invent one (tests/integration/test_value_mac.py; the simulated
    servers run the same check: ``ares sim --broken skip-value-mac``, the swarm's rogue reader)."""

    broken_late_value_read: bool = False
    """Server side (``Server(faults=...)``): the values of a reply are read from storage when the
    reply is sent instead of when the core answered, so a write handled in between makes the
    reply carry the old tag with the new value (tests/integration/test_value_reads.py)."""

    def __repr__(self) -> str:  # only the faults that are on (none: "Broken()")
        on = [f"{f.name}=True" for f in dataclasses.fields(self) if getattr(self, f.name)]
        return f"Broken({', '.join(on)})"


NO_FAULTS = Broken()

BROKEN_NAMES = tuple(f.name for f in dataclasses.fields(Broken))
"""Every client fault switch, by name (``broken_*``)."""


def broken_switches(**kwargs: Any) -> OpSwitches:
    """An :class:`OpSwitches` from the switches' and the faults' keyword arguments together
    (the spelling ``OpSwitches(broken_x=True)`` had before the faults moved here)."""
    from .protocol.ops import OpSwitches

    faults = {k: kwargs.pop(k) for k in list(kwargs) if k.startswith("broken_")}
    return OpSwitches(**kwargs, faults=Broken(**faults))
