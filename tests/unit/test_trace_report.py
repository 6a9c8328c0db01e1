"""``ares trace report`` on hand-made traces (docs/protocol.md §12): the phase shares add up to the
operation latency, storage wait and network are read from the servers' spans, and classic Ares
shows a discovery share that Ares II does not have."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from aresdsm.cli import main
from aresdsm.trace_report import (
    PHASES,
    Span,
    breakdown,
    load_spans,
    summarize,
    table,
)


def _span(name: str, sid: str, parent: str | None, start: int, end: int, **attrs: str | int) -> str:
    return json.dumps(
        {
            "name": name,
            "trace_id": "t",
            "span_id": sid,
            "parent_id": parent,
            "start_ns": start,
            "end_ns": end,
            "attributes": attrs,
        }
    )


def _write(tmp_path: Path, lines: list[str], name: str = "spans.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def _op(sid: str, kind: str, mode: str, start: int, end: int, outcome: str = "ok") -> str:
    attrs = {"ares.op": kind, "ares.mode": mode, "ares.outcome": outcome}
    return _span("op", sid, None, start, end, **attrs)


def _rendered(rows: list) -> dict[str, dict[str, str]]:  # type: ignore[type-arg]
    """The report table as printed: {row label: {"kind mode": cell}}."""
    console = Console(width=200, record=True)
    console.print(table(rows))
    text = console.export_text()
    lines = [ln for ln in text.splitlines() if ln.startswith(("│", "┃"))]
    cells = [[c.strip() for c in ln.strip("│┃").split("│" if "│" in ln else "┃")] for ln in lines]
    heads = [" ".join(x) for x in zip(*(c[1:] for c in cells[:2]), strict=True)]
    return {c[0]: dict(zip(heads, c[1:], strict=True)) for c in cells[2:]}


def _pct(cell: str) -> float:
    return float(cell.rstrip("%"))


HAND_MADE = [
    # a write of 100 time units: get-tag 10..30 (its servers untraced), encode 35..40,
    # put-data 40..90, whose server handled the request for 35 units, 20 of them waiting
    _op("w", "write", "ares2", 0, 100),
    _span("get-tag", "w1", "w", 10, 30),
    _span("encode", "w2", "w", 35, 40),
    _span("put-data", "w3", "w", 40, 90),
    _span("server.PutData", "w3s", "w3", 45, 80),
    _span("storage-wait", "w3sw", "w3s", 50, 70),
    # a classic read: two discovery rounds around two data rounds, overlapping slightly
    _op("r", "read", "classic", 0, 200),
    _span("read-next-config", "r1", "r", 0, 50),
    _span("get-data", "r2", "r", 45, 100),
    _span("put-data", "r3", "r", 100, 150),
    _span("read-next-config", "r4", "r", 150, 190),
]


def test_report_shares_add_up_to_the_latency(tmp_path: Path) -> None:
    path = _write(tmp_path, HAND_MADE)
    ops = breakdown(load_spans([path]))
    for o in ops:  # per operation: the phases cover the latency, no more, no less
        assert sum(o.phases_ns.values()) == pytest.approx(o.latency_ns, rel=0.05)
    rows = {(r.kind, r.mode): r for r in summarize(ops)}
    write = rows[("write", "ares2")]
    assert [round(100 * write.share(p)) for p in PHASES] == [0, 20, 50, 0, 0, 5, 25]
    assert round(100 * write.share("storage wait")) == 20  # the server's storage-wait span
    assert round(100 * write.share("network")) == 15  # put-data 50 - handling 35
    assert (write.rounds, write.rounds_traced) == (2, 1)
    read = rows[("read", "classic")]
    assert read.share("discovery") == pytest.approx((45 + 40) / 200)
    assert read.share("get-tag/get-data") == pytest.approx(55 / 200)
    assert read.share("client") == pytest.approx(10 / 200)
    assert read.share("storage wait") == read.share("network") == 0.0  # no server spans

    # the table as printed: every column's phases add up to 100 % (within 5 %)
    printed = _rendered(list(rows.values()))
    for column in ("write ares2", "read classic"):
        assert sum(_pct(printed[p][column]) for p in PHASES) == pytest.approx(100, abs=5)
        assert _pct(printed["total"][column]) == pytest.approx(100, abs=0.1)
    assert printed["mean ms"]["write ares2"] == "0.000"  # 100 ns
    assert _pct(printed["get-tag/get-data"]["write ares2"]) == 20.0
    assert _pct(printed["of which storage wait"]["write ares2"]) == 20.0
    assert _pct(printed["of which network"]["write ares2"]) == 15.0


def test_classic_shows_discovery_and_ares2_does_not(tmp_path: Path) -> None:
    """The same workload (one write, one read) in both modes: classic Ares runs read-config
    before and after the data rounds (§6), Ares II learns the chain from the data replies."""
    lines = []
    for mode, base in (("classic", 0), ("ares2", 10_000)):
        for kind, t0 in (("write", base), ("read", base + 5_000)):
            op = f"{mode}-{kind}"
            t = t0
            lines.append(_op(op, kind, mode, t, t + (400 if mode == "classic" else 200)))
            first, second = ("get-tag", "put-data") if kind == "write" else ("get-data", "put-data")
            phases = [first, second]
            if mode == "classic":
                phases = ["read-next-config", first, second, "read-next-config"]
            for i, name in enumerate(phases):
                lines.append(_span(name, f"{op}{i}", op, t + 100 * i, t + 100 * i + 90))
                lines.append(
                    _span(
                        f"server.{name}",
                        f"{op}{i}s",
                        f"{op}{i}",
                        t + 100 * i + 20,
                        t + 100 * i + 70,
                    )
                )
    rows = summarize(breakdown(load_spans([_write(tmp_path, lines)])))
    by = {(r.kind, r.mode): r for r in rows}
    for kind in ("read", "write"):
        assert by[(kind, "classic")].share("discovery") == pytest.approx(180 / 400)
        assert by[(kind, "ares2")].share("discovery") == 0.0
        assert by[(kind, "ares2")].share("get-tag/get-data") == pytest.approx(90 / 200)
        for mode in ("classic", "ares2"):  # every round: 90 units, 50 of them in the server
            assert by[(kind, mode)].share("network") == pytest.approx(0.4)
    printed = _rendered(rows)
    assert _pct(printed["discovery"]["read classic"]) == 45.0
    assert _pct(printed["discovery"]["write classic"]) == 45.0
    assert _pct(printed["discovery"]["read ares2"]) == 0.0
    assert _pct(printed["discovery"]["write ares2"]) == 0.0


def test_reconfiguration_phases(tmp_path: Path) -> None:
    """put-config before consensus is discovery; after it, update- and finalize-config: transfer."""
    lines = [
        _op("x", "reconfig", "classic", 0, 100),
        _span("read-next-config", "x1", "x", 0, 10),
        _span("put-config", "x2", "x", 10, 20),  # discovery's write-back
        _span("consensus.prepare", "x3", "x", 20, 30),
        _span("consensus.accept", "x4", "x", 30, 40),
        _span("put-config", "x5", "x", 40, 50),  # (d, P)
        _span("set-next-and-get", "x6", "x", 50, 70),
        _span("put-data", "x7", "x", 70, 80),  # the batched write into d
        _span("put-config", "x8", "x", 80, 90),  # (d, F)
        _span("finalize-all", "x9", "x", 95, 150),  # background, mostly after the operation
    ]
    (row,) = summarize(breakdown(load_spans([_write(tmp_path, lines)])))
    assert row.share("discovery") == pytest.approx(0.2)
    assert row.share("consensus") == pytest.approx(0.2)
    assert row.share("transfer") == pytest.approx(0.55)
    assert row.share("client") == pytest.approx(0.05)


def test_failed_operations_are_counted(tmp_path: Path) -> None:
    lines = [
        _op("a", "write", "ares2", 0, 10),
        _op("b", "write", "ares2", 0, 10, "OperationTimeout"),
    ]
    (row,) = summarize(breakdown(load_spans([_write(tmp_path, lines)])))
    assert (row.ops, row.failed) == (2, 1)
    assert _rendered([row])["operations"]["write ares2"] == "2 (1 failed)"


_interval = st.tuples(st.integers(-50, 250), st.integers(0, 120))


@settings(max_examples=200, deadline=None)
@given(
    rounds=st.lists(
        st.tuples(
            st.sampled_from(["get-tag", "put-data", "read-next-config", "decode"]), _interval
        ),
        max_size=8,
    ),
    handling=st.lists(st.integers(0, 150), min_size=8, max_size=8),
)
def test_any_trace_splits_the_latency_exactly(
    rounds: list[tuple[str, tuple[int, int]]], handling: list[int]
) -> None:
    """Whatever the spans (overlapping, outside the operation, longer than it): the phases add
    up to the latency, and storage wait + network never exceed the round phases."""
    spans = [Span("op", "op", None, "t", 0, 200, {"ares.op": "read", "ares.mode": "ares2"})]
    for i, (name, (start, length)) in enumerate(rounds):
        spans.append(Span(name, f"r{i}", "op", "t", start, start + length, {}))
        spans.append(Span("server.X", f"s{i}", f"r{i}", "t", start, start + handling[i], {}))
        w = handling[i] // 2
        spans.append(Span("storage-wait", f"w{i}", f"s{i}", "t", start, start + w, {}))
    (o,) = breakdown(spans)
    assert sum(o.phases_ns.values()) == pytest.approx(200)
    in_rounds = sum(v for p, v in o.phases_ns.items() if p not in ("client", "encode/decode"))
    assert 0 <= o.storage_wait_ns + o.network_ns <= in_rounds + 1e-9
    assert all(v >= 0 for v in o.phases_ns.values())


def test_cli_report_and_plot(tmp_path: Path) -> None:
    path = _write(tmp_path, HAND_MADE)
    runner = CliRunner(env={"COLUMNS": "200"})
    out = runner.invoke(main, ["trace", "report", str(path)])
    assert out.exit_code == 0, out.output
    for word in ("latency by phase", "classic", "ares2", "discovery", "storage wait"):
        assert word in out.output
    png = tmp_path / "report.png"  # matplotlib comes with the test extra (via plot)
    out = runner.invoke(main, ["trace", "report", str(path), "--plot", str(png)])
    assert out.exit_code == 0, out.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unreadable_files_are_one_line_errors(tmp_path: Path) -> None:
    bad = _write(tmp_path, ['{"name": "op"}'])
    out = CliRunner().invoke(main, ["trace", "report", str(bad)])
    assert out.exit_code == 1
    assert "spans.jsonl:1: not a span record" in " ".join(out.output.split())
    empty = _write(tmp_path, [_span("get-tag", "a", None, 0, 1)], "empty.jsonl")
    out = CliRunner().invoke(main, ["trace", "report", str(empty)])
    assert out.exit_code != 0 and "no operation spans" in out.output
