"""``ares trace report``: where an operation's latency goes, phase by phase (protocol.md §12).

Reads JSON-lines span files (``--trace-file`` of clients and servers), takes every client ``op``
span as one operation, and splits its duration over the phases of its child spans by sweeping
the operation's timeline: at every instant the time goes to the active phase of highest priority
(encode/decode, then the rounds, latest-started first), and to ``client`` when no phase is active.
The shares of an operation therefore add up to its latency exactly. For every round the servers'
``storage-wait`` child spans tell how much of it was waiting for the disk (the median over the
repliers), reported as ``storage wait`` -- a part of the round phases, shown separately.

Phases: ``discovery`` (read-next-config, put-config), ``query`` (get-tag, get-data),
``put-data``, ``consensus`` (Paxos prepare and accept), ``transfer`` (a reconfiguration's group
reads and batched writes), ``encode/decode`` (TREAS coding), ``client`` (everything else).
"""

from __future__ import annotations

import itertools
import json
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigurationError

PHASES = ("discovery", "query", "put-data", "consensus", "transfer", "encode/decode", "client")
_ROUND_PHASES = {
    "read-next-config": "discovery",
    "put-config": "discovery",
    "get-tag": "query",
    "get-data": "query",
    "put-data": "put-data",
    "consensus.prepare": "consensus",
    "consensus.accept": "consensus",
    "set-next-and-get": "transfer",
    "get-group": "transfer",
    "finalize-all": "transfer",
}


@dataclass(frozen=True)
class Span:
    name: str
    span_id: str
    parent_id: str | None
    trace_id: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]


@dataclass
class OpBreakdown:
    kind: str
    mode: str
    latency_ns: int
    phases_ns: dict[str, float]
    storage_wait_ns: float


@dataclass
class Row:
    kind: str
    mode: str
    ops: int = 0
    latency_ns: list[int] = field(default_factory=list)
    phases_ns: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))
    storage_wait_ns: float = 0.0

    def share(self, phase: str) -> float:
        total = sum(self.latency_ns)
        return self.phases_ns[phase] / total if total else 0.0

    @property
    def storage_share(self) -> float:
        total = sum(self.latency_ns)
        return self.storage_wait_ns / total if total else 0.0


def load_spans(paths: Iterable[str | Path]) -> list[Span]:
    spans = []
    for path in paths:
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except OSError as e:
            raise ConfigurationError(f"cannot read trace file {path}: {e.strerror or e}") from None
        for lineno, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
                spans.append(
                    Span(
                        d["name"],
                        d["span_id"],
                        d.get("parent_id"),
                        d["trace_id"],
                        int(d["start_ns"]),
                        int(d["end_ns"]),
                        dict(d.get("attributes") or {}),
                    )
                )
            except (ValueError, KeyError, TypeError) as e:
                raise ConfigurationError(f"{path}:{lineno}: not a span record ({e})") from None
    return spans


def _phase_of(span: Span, op_kind: str) -> str | None:
    if span.name in ("encode", "decode"):
        return "encode/decode"
    phase = _ROUND_PHASES.get(span.name)
    if phase is not None and op_kind == "reconfig" and phase in ("query", "put-data"):
        return "transfer"
    return phase


def breakdown(spans: Sequence[Span]) -> list[OpBreakdown]:
    children: dict[str, list[Span]] = {}
    for s in spans:
        if s.parent_id is not None:
            children.setdefault(s.parent_id, []).append(s)
    out = []
    for op in spans:
        if op.name != "op":
            continue
        kind = str(op.attributes.get("ares.op", "?"))
        mode = str(op.attributes.get("ares.mode", "?"))
        phased = [(s, p) for s in _descendants(op, children) if (p := _phase_of(s, kind))]
        out.append(
            OpBreakdown(
                kind,
                mode,
                op.end_ns - op.start_ns,
                _sweep(op, phased),
                _storage_wait(op, [s for s, _ in phased if s.name in _ROUND_PHASES], children),
            )
        )
    return out


def _descendants(op: Span, children: dict[str, list[Span]]) -> list[Span]:
    """Client-side spans under ``op`` (not the servers' spans)."""
    out, todo = [], list(children.get(op.span_id, []))
    while todo:
        s = todo.pop()
        if s.name.startswith("server.") or s.name == "storage-wait":
            continue
        out.append(s)
        todo.extend(children.get(s.span_id, []))
    return out


def _sweep(op: Span, phased: list[tuple[Span, str]]) -> dict[str, float]:
    result = dict.fromkeys(PHASES, 0.0)
    points = {op.start_ns, op.end_ns}
    for s, _ in phased:
        points.add(min(max(s.start_ns, op.start_ns), op.end_ns))
        points.add(min(max(s.end_ns, op.start_ns), op.end_ns))
    ordered = sorted(points)
    for a, b in itertools.pairwise(ordered):
        active = [(s, p) for s, p in phased if s.start_ns <= a and s.end_ns >= b]
        if not active:
            result["client"] += b - a
            continue
        coding = [x for x in active if x[1] == "encode/decode"]
        chosen = coding[0] if coding else max(active, key=lambda x: x[0].start_ns)
        result[chosen[1]] += b - a
    return result


def _storage_wait(op: Span, rounds: list[Span], children: dict[str, list[Span]]) -> float:
    total = 0.0
    for r in rounds:
        waits = [
            w.end_ns - w.start_ns
            for srv in children.get(r.span_id, [])
            for w in children.get(srv.span_id, [])
            if w.name == "storage-wait"
        ]
        if waits:
            lo, hi = max(r.start_ns, op.start_ns), min(r.end_ns, op.end_ns)
            total += min(statistics.median(waits), max(0, hi - lo))
    return total


def summarize(ops: Iterable[OpBreakdown]) -> list[Row]:
    rows: dict[tuple[str, str], Row] = {}
    for o in ops:
        row = rows.setdefault((o.kind, o.mode), Row(o.kind, o.mode))
        row.ops += 1
        row.latency_ns.append(o.latency_ns)
        for p, v in o.phases_ns.items():
            row.phases_ns[p] += v
        row.storage_wait_ns += o.storage_wait_ns
    return [rows[k] for k in sorted(rows)]


def plot(rows: Sequence[Row], path: str | Path) -> None:
    """A stacked bar chart of the phase shares (needs matplotlib: ``aresdsm[plot]``)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigurationError("--plot needs matplotlib: pip install 'aresdsm[plot]'") from None
    fig, ax = plt.subplots(figsize=(max(4, 1.6 * len(rows)), 4))
    labels = [f"{r.kind}\n{r.mode}" for r in rows]
    bottom = [0.0] * len(rows)
    for phase in PHASES:
        values = [100 * r.share(phase) for r in rows]
        ax.bar(labels, values, bottom=bottom, label=phase)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.set_ylabel("share of operation latency (%)")
    ax.set_title("aresdsm: latency by phase")
    ax.legend(fontsize="small", bbox_to_anchor=(1.02, 1), loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
