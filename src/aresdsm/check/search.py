"""General linearizability search: Wing & Gong's algorithm with Lowe's memoisation.

Depth-first search over linearization orders. At each point the candidates are the operations
not yet linearized that were invoked before every not-yet-linearized operation completed
(``invoke <= min complete``; equal times count as concurrent): exactly the operations that may
come next in some linearization consistent with real time. Each candidate is applied to the
sequential model; the search remembers every (set of linearized operations, model state) it has
explored (Lowe), so no configuration is explored twice. Operations with ``complete = inf`` may
be left out: they are linearized last (where they affect nothing) if not earlier. A step bound
turns an exhausting search into the answer "unknown" rather than a wrong one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from .model import INF, Model, Op

Verdict = Literal["ok", "violation", "unknown"]


def search(ops: Sequence[Op], model: Model[Any], *, max_steps: int = 1_000_000) -> Verdict:
    ops = sorted(ops, key=lambda o: (o.invoke, o.complete))
    n = len(ops)
    must = 0
    for i, o in enumerate(ops):
        if not o.pending:
            must |= 1 << i
    seen: set[tuple[int, Any]] = set()
    steps = 0
    # stack of (linearized mask, state)
    stack: list[tuple[int, Any]] = [(0, model.initial())]
    while stack:
        mask, state = stack.pop()
        if mask & must == must:
            return "ok"
        steps += 1
        if steps > max_steps:
            return "unknown"
        horizon = INF
        for i in range(n):
            if not mask >> i & 1 and ops[i].complete < horizon:
                horizon = ops[i].complete
        for i in range(n - 1, -1, -1):
            if mask >> i & 1:
                continue
            o = ops[i]
            if o.invoke > horizon:  # something completed before o was invoked
                continue
            nxt = model.step(state, o)
            if nxt is None:
                continue
            key = (mask | 1 << i, nxt)
            if key in seen:
                continue
            seen.add(key)
            stack.append(key)
    return "violation"
