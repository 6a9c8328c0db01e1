"""Exact, fast check of a register history whose written values are unique.

When every write writes a distinct value, each read names the write it read from, and
linearizability reduces to interval arithmetic (Gibbons & Korach, "Testing shared memories",
SIAM J. Comput. 1997). Group each write with the reads of its value (a *cluster*; the initial value
is a write that happened before everything). For a cluster let ``f`` = the earliest completion
and ``s`` = the latest invocation among its operations. If ``f < s`` the cluster has the *forward
zone* ``[f, s]`` -- its write must be linearized before ``f`` and stay current until ``s`` --
otherwise the *backward zone* ``[s, f]``, which only needs some point in it. The history is
linearizable iff every read's write was invoked before the read completed, no two forward zones
intersect, and no backward zone lies inside a forward zone. O(n log n).

Writes that may or may not have happened (``complete = inf``) and were never read impose nothing
and are dropped; a read of such a write simply shows it happened.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from .model import INF, Op

INITIAL_ID = -1


@dataclass(frozen=True, slots=True)
class Conflict:
    """Why a history is not linearizable: the operations involved and a sentence."""

    reason: str
    op_ids: tuple[int, ...]


@dataclass(slots=True)
class _Cluster:
    write_id: int
    f: float
    s: float
    members: list[int]


def unique_values(ops: Sequence[Op]) -> bool:
    written = [o.value for o in ops if o.kind == "write"]
    return len(written) == len(set(written))


def check_unique(ops: Sequence[Op], initial_value: object) -> Conflict | None:
    """None if linearizable, else a Conflict. Requires unique written values."""
    writes = {o.value: o for o in ops if o.kind == "write"}
    clusters: dict[object, _Cluster] = {initial_value: _Cluster(INITIAL_ID, -INF, -INF, [])}
    for v, w in writes.items():
        if v == initial_value:
            return Conflict("a write wrote the initial value (values must be unique)", (w.op_id,))
        clusters[v] = _Cluster(w.op_id, w.complete, w.invoke, [w.op_id])
    for r in ops:
        if r.kind != "read":
            continue
        c = clusters.get(r.value)
        if c is None:
            return Conflict("a read returned a value that no write wrote", (r.op_id,))
        src = writes.get(r.value)
        if src is not None and r.complete < src.invoke:
            return Conflict(
                "a read returned a value before its write was invoked", (r.op_id, src.op_id)
            )
        c.f = min(c.f, r.complete)
        c.s = max(c.s, r.invoke)
        c.members.append(r.op_id)
    live = [c for v, c in clusters.items() if not (c.f == INF and len(c.members) == 1)]
    forward = sorted((c for c in live if c.f < c.s), key=lambda c: c.f)
    for a, b in itertools.pairwise(forward):
        if b.f < a.s:
            return Conflict(
                "two values were each the only possible current value over overlapping intervals",
                tuple(a.members[:4] + b.members[:4]),
            )
    starts = [c.f for c in forward]
    for c in live:
        if c.f < c.s:
            continue
        i = bisect.bisect_right(starts, c.s) - 1
        if i >= 0 and forward[i].f < c.s and c.f < forward[i].s:
            z = forward[i]
            return Conflict(
                "a value was read or written strictly while another value had to be current",
                tuple(c.members[:4] + z.members[:4]),
            )
    return None
