"""The checker against a brute-force oracle on thousands of small random histories."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from aresdsm.check import CoverableModel, Op, RegisterModel, check_operations
from aresdsm.check.search import search
from aresdsm.check.zones import check_unique

INIT = "v0"


def brute_force(ops: list[Op], model: RegisterModel | CoverableModel) -> bool:
    """Try every subset of the pending operations and every order consistent with real time."""
    done = [o for o in ops if not o.pending]
    pending = [o for o in ops if o.pending]
    for r in range(len(pending) + 1):
        for chosen in itertools.combinations(pending, r):
            cand = done + list(chosen)
            for perm in itertools.permutations(cand):
                if not _respects_real_time(perm):
                    continue
                state: object = model.initial()
                for o in perm:
                    state = model.step(state, o)  # type: ignore[arg-type]
                    if state is None:
                        break
                else:
                    return True
    return False


def _respects_real_time(perm: tuple[Op, ...]) -> bool:
    for i, a in enumerate(perm):
        for b in perm[i + 1 :]:
            if b.complete < a.invoke:  # b finished before a started, yet comes after it
                return False
    return True


@st.composite
def register_histories(draw: st.DrawFn, unique: bool) -> list[Op]:
    n = draw(st.integers(1, 6))
    ops = []
    values = [f"v{i}" for i in range(1, 4)]
    next_value = 1
    for i in range(n):
        start = draw(st.integers(0, 12))
        length = draw(st.integers(0, 6))
        pending = draw(st.integers(0, 5)) == 0
        if draw(st.booleans()):
            if unique:
                value = f"w{next_value}"
                next_value += 1
            else:
                value = draw(st.sampled_from(values))
            complete = float("inf") if pending else float(start + length)
            ops.append(Op(i, "write", float(start), complete, value))
        else:
            value = draw(st.sampled_from([INIT, *values, "w1", "w2", "w3"]))
            ops.append(Op(i, "read", float(start), float(start + length), value))
    return ops


@settings(max_examples=3000, deadline=None)
@given(register_histories(unique=True))
def test_zone_check_agrees_with_brute_force(ops: list[Op]) -> None:
    expected = brute_force(ops, RegisterModel(INIT))
    assert (check_unique(ops, INIT) is None) == expected
    assert (search(ops, RegisterModel(INIT)) == "ok") == expected
    assert (check_operations("k", ops, initial_value=INIT).verdict == "ok") == expected


@settings(max_examples=3000, deadline=None)
@given(register_histories(unique=False))
def test_general_search_agrees_with_brute_force(ops: list[Op]) -> None:
    expected = brute_force(ops, RegisterModel(INIT))
    assert (search(ops, RegisterModel(INIT)) == "ok") == expected
    assert (check_operations("k", ops, initial_value=INIT).verdict == "ok") == expected


@st.composite
def coverable_histories(draw: st.DrawFn) -> list[Op]:
    n = draw(st.integers(1, 5))
    tags = ["t0", "t1", "t2", "t3"]
    ops = []
    for i in range(n):
        start = draw(st.integers(0, 10))
        end = start + draw(st.integers(0, 5))
        kind = draw(st.sampled_from(["cvr-ok", "cvr-stale", "read"]))
        tag = draw(st.sampled_from(tags))
        value = f"val-{tag}"
        base = draw(st.sampled_from(tags))
        pending = kind == "cvr-ok" and draw(st.integers(0, 4)) == 0
        ops.append(
            Op(i, kind, float(start), float("inf") if pending else float(end), value, tag, base)
        )
    return ops


@settings(max_examples=2000, deadline=None)
@given(coverable_histories())
def test_coverable_search_agrees_with_brute_force(ops: list[Op]) -> None:
    model = CoverableModel("t0", "val-t0")
    expected = brute_force(ops, model)
    assert (search(ops, model) == "ok") == expected


def _witness_is_a_closed_violation(ops: list[Op]) -> None:
    result = check_operations("k", ops, initial_value=INIT)
    if result.verdict != "violation":
        return
    witness = list(result.witness)
    ids = {o.op_id for o in witness}
    assert ids <= {o.op_id for o in ops}
    # the witness itself admits no linearization (brute force)...
    assert not brute_force(witness, RegisterModel(INIT))
    # ...and keeps, for every read, a write of its value if the history has one
    written = {o.value for o in ops if o.kind == "write"}
    kept = {o.value for o in witness if o.kind == "write"}
    for o in witness:
        if o.kind == "read" and o.value != INIT and o.value in written:
            assert o.value in kept, (o, witness)


@settings(max_examples=1500, deadline=None)
@given(register_histories(unique=True))
def test_shrunk_witness_keeps_the_writes_its_reads_depend_on(ops: list[Op]) -> None:
    _witness_is_a_closed_violation(ops)


@settings(max_examples=1500, deadline=None)
@given(register_histories(unique=False))
def test_shrunk_witness_keeps_the_writes_general_search(ops: list[Op]) -> None:
    _witness_is_a_closed_violation(ops)
