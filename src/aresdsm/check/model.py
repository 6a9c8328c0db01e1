"""Operations as the checker sees them, and the sequential models (docs/protocol.md §9.1, §10.1).

An :class:`Op` is an interval ``[invoke, complete]`` on one object; ``complete = inf`` means the
operation may or may not have taken effect (it failed, timed out, or its client crashed). Its
effect is given by a sequential model:

* :class:`RegisterModel` -- a read/write register whose initial value is the empty value.
  ``write`` sets the value; ``read`` must return the current one.
* :class:`CoverableModel` -- the coverable (versioned) register, docs/protocol.md §9.1, whose state
  is ``(tag, value)``: a successful ``cvr-write`` names the tag it overwrites and installs a new
  one; a ``stale`` answer reports the latest pair and changes nothing; ``read`` returns the pair.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

INF = math.inf

S = TypeVar("S")


@dataclass(frozen=True, slots=True)
class Op:
    """One operation on one object.

    ``kind`` is ``"read"``, ``"write"``, ``"cvr-ok"`` or ``"cvr-stale"``. ``value`` is what a
    write wrote or a read returned (digests or any hashable), ``tag``/``base`` the versions a
    coverable operation names.
    """

    op_id: int
    kind: str
    invoke: float
    complete: float = INF
    value: object = None
    tag: object = None
    base: object = None
    client: str = ""

    @property
    def pending(self) -> bool:
        return self.complete == INF


class Model(Protocol, Generic[S]):
    def initial(self) -> S: ...

    def step(self, state: S, op: Op) -> S | None:
        """The state after ``op``, or None if ``op`` cannot happen in ``state``."""
        ...


class RegisterModel:
    def __init__(self, initial_value: object) -> None:
        self.initial_value = initial_value

    def initial(self) -> object:
        return self.initial_value

    def step(self, state: object, op: Op) -> object | None:
        if op.kind == "write":
            return op.value
        if op.kind == "read":
            return state if op.value == state else None
        raise ValueError(f"register model: unknown operation kind {op.kind!r}")


class CoverableModel:
    """State ``(tag, value)``. ``cvr-ok``: base == current tag -> (tag, value). ``cvr-stale``:
    base != current tag and (tag, value) == current. ``read``: (tag, value) == current."""

    def __init__(self, initial_tag: object, initial_value: object) -> None:
        self.start = (initial_tag, initial_value)

    def initial(self) -> tuple[object, object]:
        return self.start

    def step(self, state: tuple[object, object], op: Op) -> tuple[object, object] | None:
        if op.kind == "cvr-ok":
            return (op.tag, op.value) if op.base == state[0] else None
        if op.kind == "cvr-stale":
            if op.base != state[0] and (op.tag, op.value) == state:
                return state
            return None
        if op.kind == "read":
            return state if (op.tag, op.value) == state else None
        raise ValueError(f"coverable model: unknown operation kind {op.kind!r}")
