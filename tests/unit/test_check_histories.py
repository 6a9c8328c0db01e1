"""The linearizability checker on hand-built histories (docs/protocol.md §10 invariant 1)."""

from __future__ import annotations

import io
from pathlib import Path

from aresdsm.check import CoverableModel, Op, check_file, check_history, check_operations
from aresdsm.history import EMPTY_DIGEST, OpRecord, write_records

INF = float("inf")


def w(i: int, a: float, b: float, v: str) -> Op:
    return Op(i, "write", a, b, v, client=f"c{i}")


def r(i: int, a: float, b: float, v: str) -> Op:
    return Op(i, "read", a, b, v, client=f"c{i}")


def verdict(*ops: Op) -> str:
    return check_operations("k", list(ops), initial_value="init").verdict


def test_sequential_history_is_linearizable() -> None:
    assert verdict(r(1, 0, 1, "init"), w(2, 2, 3, "a"), r(3, 4, 5, "a"), w(4, 6, 7, "b")) == "ok"


def test_stale_read_after_a_completed_write_is_caught() -> None:
    assert verdict(w(1, 0, 1, "a"), w(2, 2, 3, "b"), r(3, 4, 5, "a")) == "violation"


def test_read_of_the_initial_value_after_a_write_completed_is_caught() -> None:
    assert verdict(w(1, 0, 1, "a"), r(2, 2, 3, "init")) == "violation"


def test_concurrent_read_may_see_old_or_new() -> None:
    assert verdict(w(1, 0, 10, "a"), r(2, 1, 2, "init"), r(3, 3, 4, "a")) == "ok"


def test_new_old_inversion_between_two_reads_is_caught() -> None:
    # both reads overlap the write, but the first returns the new value and completes before the
    # second starts, which returns the old one
    assert verdict(w(1, 0, 10, "a"), r(2, 1, 2, "a"), r(3, 3, 4, "init")) == "violation"


def test_value_from_the_future_is_caught() -> None:
    assert verdict(r(1, 0, 1, "a"), w(2, 2, 3, "a")) == "violation"
    assert verdict(r(1, 0, 1, "never-written")) == "violation"


def test_pending_write_may_or_may_not_have_happened() -> None:
    assert verdict(w(1, 0, INF, "a"), r(2, 5, 6, "init")) == "ok"
    assert verdict(w(1, 0, INF, "a"), r(2, 5, 6, "a")) == "ok"
    assert verdict(w(1, 0, INF, "a"), r(2, 5, 6, "a"), r(3, 7, 8, "init")) == "violation"
    # a pending write cannot take effect before it was invoked
    assert verdict(r(1, 0, 1, "a"), w(2, 5, INF, "a")) == "violation"


def test_duplicate_values_use_the_general_search() -> None:
    ops = [w(1, 0, 1, "a"), w(2, 2, 3, "b"), w(3, 4, 5, "a"), r(4, 6, 7, "a")]
    res = check_operations("k", ops, initial_value="init")
    assert res.verdict == "ok" and res.method == "search"
    ops.append(r(5, 8, 9, "b"))
    assert check_operations("k", ops, initial_value="init").verdict == "violation"


def test_search_bound_answers_unknown() -> None:
    ops = [w(i, 0, 100, f"v{i % 2}") for i in range(12)] + [r(99, 101, 102, "none")]
    assert check_operations("k", ops, initial_value="init", max_steps=50).verdict == "unknown"


def test_coverable_register_model() -> None:
    m = CoverableModel("t0", "v0")

    def cvr(i: int, a: float, b: float, kind: str, base: str, tag: str, value: str) -> Op:
        return Op(i, kind, a, b, value, tag, base)

    ok = [
        cvr(1, 0, 1, "cvr-ok", "t0", "t1", "v1"),
        cvr(2, 2, 3, "cvr-stale", "t0", "t1", "v1"),
        Op(3, "read", 4, 5, "v1", "t1"),
    ]
    assert check_operations("b", ok, model=m).verdict == "ok"  # type: ignore[arg-type]
    # two successful writes on the same base version: not linearizable
    bad = [cvr(1, 0, 1, "cvr-ok", "t0", "t1", "v1"), cvr(2, 2, 3, "cvr-ok", "t0", "t2", "v2")]
    assert check_operations("b", bad, model=m).verdict == "violation"  # type: ignore[arg-type]


def _rec(
    i: int, kind: str, key: str, a: float, b: float | None, v: str, outcome: str = "ok"
) -> OpRecord:
    return OpRecord(i, f"c{i}", kind, key, a, b, value=v, outcome=outcome)  # type: ignore[arg-type]


def test_histories_are_split_per_key_and_explained(tmp_path: Path) -> None:
    recs = [
        _rec(1, "write", "x", 0, 1, "a"),
        _rec(2, "read", "y", 0, 1, EMPTY_DIGEST),
        _rec(3, "write", "y", 2, 3, "b"),
        _rec(4, "read", "x", 2, 3, EMPTY_DIGEST),  # stale: x was written before
        _rec(5, "read", "x", 4, 5, "zzz", outcome="fail"),  # failed reads are ignored
        _rec(6, "write", "x", 4, None, "c", outcome="pending"),
    ]
    res = check_history(recs)
    assert res.verdict == "violation"
    assert [k.key for k in res.violations] == ["x"]
    text = res.explain()
    assert "'x'" in text and "#1" in text and "#4" in text and "#6" not in text
    path = tmp_path / "h.jsonl"
    buf = io.BytesIO()
    write_records(recs, buf)
    path.write_bytes(buf.getvalue())
    assert check_file(path).verdict == "violation"
    assert check_history(r for r in recs if r.op_id != 4).verdict == "ok"


def test_large_unique_history_takes_the_zone_path() -> None:
    ops = []
    t = 0.0
    for i in range(2000):
        ops.append(w(2 * i, t, t + 1.5, f"v{i}"))
        ops.append(r(2 * i + 1, t + 1, t + 2, f"v{i}"))
        t += 1.0
    res = check_operations("k", ops, initial_value="init")
    # not a timing assertion: this history must take the O(n log n) path
    assert res.verdict == "ok" and res.method == "zones" and res.ops == 4000


def test_witness_keeps_the_writes_the_violation_depends_on() -> None:
    """The explanation of w(a), w(b), r->a, r->b used to be the lone "#4 read -> b": the
    shrinker dropped the writes, and a read of a value nobody wrote is trivially not
    linearizable. The witness must show the writes the reads depend on."""
    a, b = "a" * 16, "b" * 16
    ops = [w(1, 0, 1, a), w(2, 2, 3, b), r(3, 4, 5, b), r(4, 6, 7, a)]
    res = check_operations("k", ops, initial_value="init")
    assert res.verdict == "violation"
    assert {o.op_id for o in res.witness} == {1, 2, 4}  # r3 is not needed, the writes are
    text = check_history(
        [
            OpRecord(o.op_id, o.client, o.kind, "k", o.invoke, o.complete, str(o.value), "ok")  # type: ignore[arg-type]
            for o in ops
        ]
    ).explain()
    assert "write aaaa" in text and "write bbbb" in text and "read -> aaaa" in text


def test_witness_of_concurrent_writes_keeps_both_and_the_reads_that_order_them() -> None:
    # a, b concurrent; reads see a, then b, then a again: needs a written twice
    ops = [
        w(1, 0, 10, "a"),
        w(2, 0, 10, "b"),
        r(3, 1, 2, "a"),
        r(4, 3, 4, "b"),
        r(5, 5, 6, "a"),
        w(6, 20, 21, "c"),  # unrelated
        r(7, 22, 23, "c"),
    ]
    res = check_operations("k", ops, initial_value="init")
    assert res.verdict == "violation"
    assert {o.op_id for o in res.witness} == {1, 2, 3, 4, 5}


def test_witness_of_a_read_of_a_value_nobody_wrote_is_that_read() -> None:
    res = check_operations("k", [w(1, 0, 1, "a"), r(2, 2, 3, "zzz")], initial_value="init")
    assert [o.op_id for o in res.witness] == [2]
