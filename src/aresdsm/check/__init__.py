"""Linearizability checker (docs/protocol.md §10 invariant 1), after porcupine.

Histories are split per object (linearizability is local: a history is linearizable iff each
object's is), and each object's history is checked against a sequential model:

* registers whose written values are unique (the usual case: workloads write unique values) go
  through the exact O(n log n) zone check (:mod:`.zones`);
* everything else, and coverable registers, through the general search (:mod:`.search`), bounded
  by ``max_steps``: the answer is then ``ok``, ``violation`` or ``unknown``.

Operations that did not return ``ok`` are handled explicitly: a write that failed or never
returned may or may not have taken effect (it is given ``complete = inf``); a read that did not
return ``ok`` is dropped (a read has no effect of its own).

On a violation, :meth:`CheckResult.explain` lists a small set of operations that is already not
linearizable -- shrunk greedily with the general search -- with their times and values.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..history import EMPTY_DIGEST, OpRecord, read_records
from .model import INF, CoverableModel, Model, Op, RegisterModel
from .search import Verdict, search
from .zones import Conflict, check_unique, unique_values

__all__ = [
    "CheckResult",
    "CoverableModel",
    "KeyResult",
    "Op",
    "RegisterModel",
    "check_file",
    "check_history",
    "check_operations",
    "ops_from_records",
]

MAX_SHRINK_OPS = 400
COVERABLE: Model[object] = CoverableModel((0, ""), EMPTY_DIGEST)  # type: ignore[assignment]
"""The model of an object with coverable writes in a recorded history: tags as recorded
(``(z, writer)``, TAG0 = ``(0, "")``), values as digests."""


@dataclass(frozen=True)
class KeyResult:
    key: str
    verdict: Verdict
    ops: int
    method: str
    witness: tuple[Op, ...] = ()
    reason: str = ""


@dataclass(frozen=True)
class CheckResult:
    verdict: Verdict
    keys: tuple[KeyResult, ...] = field(default_factory=tuple)

    @property
    def violations(self) -> list[KeyResult]:
        return [k for k in self.keys if k.verdict == "violation"]

    def explain(self) -> str:
        if self.verdict == "ok":
            total = sum(k.ops for k in self.keys)
            return f"linearizable ({len(self.keys)} objects, {total} operations)"
        lines = []
        for k in self.keys:
            if k.verdict == "unknown":
                lines.append(
                    f"object {k.key!r}: unknown (search bound reached, {k.ops} operations)"
                )
            if k.verdict != "violation":
                continue
            lines.append(f"object {k.key!r}: NOT linearizable ({k.method}): {k.reason}")
            lines.append("  these operations admit no linearization:")
            for o in sorted(k.witness, key=lambda o: o.invoke):
                lines.append("    " + _describe(o))
        return "\n".join(lines)


def _describe(o: Op) -> str:
    end = "never returned (may or may not have happened)" if o.pending else f"{o.complete:.6f}"
    val = str(o.value)[:12] if o.value is not None else "-"
    what = {"read": f"read -> {val}", "write": f"write {val}"}.get(o.kind, f"{o.kind} {val}")
    if o.tag is not None:
        what += f" tag={o.tag}"
    if o.base is not None:
        what += f" base={o.base}"
    return f"#{o.op_id} client {o.client or '?'}: {what}  [{o.invoke:.6f} .. {end}]"


def ops_from_records(records: Iterable[OpRecord]) -> dict[str, list[Op]]:
    """Group recorded operations per (group, key) and convert them to checker operations."""
    per_key: dict[str, list[Op]] = {}
    for r in records:
        if r.kind == "read" and r.outcome != "ok":
            continue
        ok = r.outcome == "ok" and r.complete_s is not None
        kind: str = r.kind
        if kind == "cvr":  # a failed one may have installed its value as its tag
            kind = "cvr-stale" if ok and r.stale else "cvr-ok"
        op = Op(
            op_id=r.op_id,
            kind=kind,
            invoke=r.invoke_s,
            complete=r.complete_s if ok and r.complete_s is not None else INF,
            value=r.value,
            tag=r.tag,
            base=r.base,
            client=r.client,
        )
        name = r.key if r.group == "default" else f"{r.group}/{r.key}"
        per_key.setdefault(name, []).append(op)
    return per_key


def check_operations(
    key: str,
    ops: Sequence[Op],
    *,
    model: Model[object] | None = None,
    initial_value: object = EMPTY_DIGEST,
    max_steps: int = 1_000_000,
) -> KeyResult:
    """Check one object's operations (register model with ``initial_value`` by default)."""
    if model is None and unique_values(ops):
        conflict = check_unique(ops, initial_value)
        if conflict is None:
            return KeyResult(key, "ok", len(ops), "zones")
        return _violation(key, ops, conflict, RegisterModel(initial_value), max_steps)
    m: Model[object] = model if model is not None else RegisterModel(initial_value)
    verdict = search(ops, m, max_steps=max_steps)
    if verdict != "violation":
        return KeyResult(key, verdict, len(ops), "search")
    witness = _shrink(list(ops), m, max_steps)
    return KeyResult(
        key, "violation", len(ops), "search", tuple(witness), "no linearization exists"
    )


def _violation(
    key: str, ops: Sequence[Op], conflict: Conflict, model: Model[object], max_steps: int
) -> KeyResult:
    involved = set(conflict.op_ids)
    read_values = {o.value for o in ops if o.op_id in involved and o.kind == "read"}
    witness = [
        o for o in ops if o.op_id in involved or (o.kind == "write" and o.value in read_values)
    ]
    if search(witness, model, max_steps=max_steps) != "violation":
        witness = _shrink(list(ops), model, max_steps)
    else:
        witness = _shrink(witness, model, max_steps)
    return KeyResult(key, "violation", len(ops), "zones", tuple(witness), conflict.reason)


def _shrink(ops: list[Op], model: Model[object], max_steps: int) -> list[Op]:
    """Drop operations while the rest stays non-linearizable (bounded), keeping the witness
    closed under "a read depends on the writes of its value": a write goes only together with
    the reads of its value (unless another write of that value stays), so that an explanation
    never shows a read without the write it read from (w(a), w(b), r->a, r->b keeps all four,
    not a lone read of a value nobody wrote)."""
    if len(ops) > MAX_SHRINK_OPS:
        return ops
    i = 0
    while i < len(ops):
        drop = _with_dependents(ops, ops[i])
        trial = [o for o in ops if o.op_id not in drop]
        if search(trial, model, max_steps=max_steps // 10 or 1) == "violation":
            ops = trial
            i = 0 if len(drop) > 1 else i  # dependents may sit before i
        else:
            i += 1
    return ops


def _with_dependents(ops: list[Op], op: Op) -> set[int]:
    """``op`` and what cannot stay without it: for the last write of a value, the reads of
    that value (register histories; other kinds have no such dependency here)."""
    if op.kind != "write":
        return {op.op_id}
    if any(o.kind == "write" and o.value == op.value and o.op_id != op.op_id for o in ops):
        return {op.op_id}
    return {op.op_id} | {o.op_id for o in ops if o.kind == "read" and o.value == op.value}


def check_history(records: Iterable[OpRecord], *, max_steps: int = 1_000_000) -> CheckResult:
    per_key = ops_from_records(records)
    results = tuple(
        check_operations(
            key,
            ops,
            max_steps=max_steps,
            model=COVERABLE if any(o.kind.startswith("cvr") for o in ops) else None,
        )
        for key, ops in sorted(per_key.items())
    )
    if any(r.verdict == "violation" for r in results):
        verdict: Verdict = "violation"
    elif any(r.verdict == "unknown" for r in results):
        verdict = "unknown"
    else:
        verdict = "ok"
    return CheckResult(verdict, results)


def check_file(path: str | Path, *, max_steps: int = 1_000_000) -> CheckResult:
    """Check a JSON-lines history file (see :mod:`aresdsm.history`)."""
    return check_history(read_records(path), max_steps=max_steps)
