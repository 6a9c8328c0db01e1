"""Server rules of the reconfiguration service (docs/protocol.md §6), pure.

``nextC[g][c]`` is ⊥ (absent), ``(c', P)`` or ``(c', F)``. READ_CONFIG reports it; WRITE_CONFIG
stores the entry unless an F entry is already stored -- a server never downgrades F (§10
invariant 3). The configuration inside an entry is unique because consensus decided it
(§7.1); a WRITE_CONFIG that names a *different* successor than the one stored would break that
invariant: it is refused with an ``invariant`` error reply (and logged by the server), never
applied.
"""

from __future__ import annotations

from ..wire.messages import Ack, ErrorReply, NextEntry, NextReply

NS = "next"


def on_read_config(current: NextEntry | None) -> NextReply:
    return NextReply(current)


def on_write_config(
    current: NextEntry | None, entry: NextEntry
) -> tuple[NextEntry | None, Ack | ErrorReply]:
    """Returns the new entry to store (None: unchanged) and the reply."""
    if current is not None and current.config.id != entry.config.id:
        return None, ErrorReply(
            "invariant",
            f"successor {entry.config.id} conflicts with the stored successor {current.config.id}",
        )
    if current is None or (current.status == "P" and entry.status == "F"):
        return entry, Ack()
    return None, Ack()
