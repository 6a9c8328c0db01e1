"""``ares trace report``: where an operation's latency goes, phase by phase (docs/protocol.md §12).

Reads JSON-lines span files (``--trace`` of clients, ``--trace-file`` of servers), takes every
client ``op`` span as one operation, and splits its duration over the phases of its child spans
by sweeping the operation's timeline: at every instant the time goes to the active phase of
highest priority (encode/decode, then the rounds, latest-started first), and to ``client`` when no
phase is active. The phase shares of an operation therefore add up to its latency exactly.

Phases: ``discovery`` (read-next-config, put-config, LATEST_CONFIG requests),
``get-tag/get-data`` (the query rounds), ``put-data``, ``consensus`` (Paxos prepare and accept),
``transfer`` (a reconfiguration's update-config and finalize-config: group reads, batched writes,
and the put-config rounds after consensus), ``encode/decode`` (TREAS coding), ``client``
(everything else: the client's own work and its event loop).

Two more columns say what the round phases were made of, estimated from the servers' spans (the
median over the servers that answered each round, durations only, so clocks need not agree):
``storage wait``, the time the servers waited for durable storage before replying, and
``network``, the round's duration minus the time a server spent handling the request (the wire,
the kernels and both event loops' queues). They are parts of the phases above, not added to
them; rounds whose servers were not traced contribute to neither.
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

PHASES = (
    "discovery",
    "get-tag/get-data",
    "put-data",
    "consensus",
    "transfer",
    "encode/decode",
    "client",
)
PARTS = ("storage wait", "network")
"""Parts of the round phases (not phases of their own: the phases alone add up to 100 %)."""

_ROUND_PHASES = {
    "read-next-config": "discovery",
    "put-config": "discovery",
    "request.LatestConfig": "discovery",
    "list-keys": "get-tag/get-data",
    "probe-members": "discovery",
    "get-tag": "get-tag/get-data",
    "get-data": "get-tag/get-data",
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

    @property
    def duration_ns(self) -> int:
        return max(0, self.end_ns - self.start_ns)


@dataclass
class OpBreakdown:
    kind: str
    mode: str
    latency_ns: int
    phases_ns: dict[str, float]
    storage_wait_ns: float
    network_ns: float = 0.0
    rounds: int = 0
    rounds_traced: int = 0
    """Rounds with at least one server span (the storage wait and network estimates)."""
    ok: bool = True


@dataclass
class Row:
    kind: str
    mode: str
    ops: int = 0
    failed: int = 0
    latency_ns: list[int] = field(default_factory=list)
    phases_ns: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))
    storage_wait_ns: float = 0.0
    network_ns: float = 0.0
    rounds: int = 0
    rounds_traced: int = 0

    @property
    def mean_ms(self) -> float:
        return sum(self.latency_ns) / len(self.latency_ns) / 1e6 if self.latency_ns else 0.0

    def share(self, phase: str) -> float:
        """Share of the total latency of these operations spent in ``phase`` (a phase or a
        part: ``storage wait``, ``network``)."""
        total = sum(self.latency_ns)
        if not total:
            return 0.0
        if phase == "storage wait":
            return self.storage_wait_ns / total
        if phase == "network":
            return self.network_ns / total
        return self.phases_ns[phase] / total

    @property
    def storage_share(self) -> float:
        return self.share("storage wait")

    @property
    def network_share(self) -> float:
        return self.share("network")


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


def _is_server(s: Span) -> bool:
    return s.name.startswith("server.") or s.name == "storage-wait"


def _phase_of(span: Span, op_kind: str, consensus_ns: int | None) -> str | None:
    if span.name in ("encode", "decode"):
        return "encode/decode"
    phase = _ROUND_PHASES.get(span.name)
    if op_kind == "reconfig":
        if phase in ("get-tag/get-data", "put-data"):
            return "transfer"
        # after consensus, put-config writes (d, P) and (d, F): update- and finalize-config
        if phase == "discovery" and consensus_ns is not None and span.start_ns >= consensus_ns:
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
        below = _descendants(op, children)
        consensus_ns = min(
            (s.start_ns for s in below if s.name.startswith("consensus.")), default=None
        )
        phased = [(s, p) for s in below if (p := _phase_of(s, kind, consensus_ns))]
        phases = _sweep(op, phased)
        rounds = [s for s, p in phased if p != "encode/decode"]
        wait, network, traced = _round_parts(op, rounds, children)
        in_rounds = sum(v for p, v in phases.items() if p not in ("encode/decode", "client"))
        if wait + network > in_rounds > 0:  # overlapping rounds: never more than their time
            wait, network = (v * in_rounds / (wait + network) for v in (wait, network))
        elif in_rounds <= 0:
            wait = network = 0.0
        out.append(
            OpBreakdown(
                kind,
                mode,
                op.duration_ns,
                phases,
                wait,
                network,
                len(rounds),
                traced,
                op.attributes.get("ares.outcome", "ok") == "ok",
            )
        )
    return out


def _descendants(op: Span, children: dict[str, list[Span]]) -> list[Span]:
    """Client-side spans under ``op`` (not the servers' spans)."""
    out, todo = [], list(children.get(op.span_id, []))
    while todo:
        s = todo.pop()
        if _is_server(s):
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


def _round_parts(
    op: Span, rounds: list[Span], children: dict[str, list[Span]]
) -> tuple[float, float, int]:
    """(storage wait, network, rounds with server spans) of an operation's rounds."""
    wait = network = 0.0
    traced = 0
    for r in rounds:
        servers = [s for s in children.get(r.span_id, []) if s.name.startswith("server.")]
        if not servers or r.duration_ns == 0:
            continue
        traced += 1
        handling = statistics.median(s.duration_ns for s in servers)
        waited = statistics.median(
            sum(w.duration_ns for w in children.get(s.span_id, []) if w.name == "storage-wait")
            for s in servers
        )
        inside = max(0, min(r.end_ns, op.end_ns) - max(r.start_ns, op.start_ns))
        scale = inside / r.duration_ns  # the part of the round within the operation
        wait += min(waited, r.duration_ns) * scale
        network += max(0.0, r.duration_ns - handling) * scale
    return wait, network, traced


def summarize(ops: Iterable[OpBreakdown]) -> list[Row]:
    rows: dict[tuple[str, str], Row] = {}
    for o in ops:
        row = rows.setdefault((o.kind, o.mode), Row(o.kind, o.mode))
        row.ops += 1
        row.failed += not o.ok
        row.latency_ns.append(o.latency_ns)
        for p, v in o.phases_ns.items():
            row.phases_ns[p] += v
        row.storage_wait_ns += o.storage_wait_ns
        row.network_ns += o.network_ns
        row.rounds += o.rounds
        row.rounds_traced += o.rounds_traced
    return [rows[k] for k in sorted(rows)]


def table(rows: Sequence[Row]) -> Any:
    """The report as a ``rich`` table: one column per (operation, mode), one row per phase."""
    from rich.table import Table

    caption = (
        "phases add up to 100 % of the latency; storage wait and network are parts of the "
        "round phases, estimated from the servers' spans"
    )
    untraced = sum(r.rounds - r.rounds_traced for r in rows)
    if untraced:
        caption += f" ({untraced} of {sum(r.rounds for r in rows)} rounds had none)"
    t = Table("", *(f"{r.kind}\n{r.mode}" for r in rows), title="latency by phase", caption=caption)
    for c in t.columns[1:]:
        c.justify = "right"
    t.add_row(
        "operations", *(f"{r.ops}" + (f" ({r.failed} failed)" if r.failed else "") for r in rows)
    )
    t.add_row("mean ms", *(f"{r.mean_ms:.3f}" for r in rows), end_section=True)
    for p in PHASES:
        t.add_row(p, *(f"{100 * r.share(p):.1f}%" for r in rows), end_section=p == PHASES[-1])
    total = (f"{100 * sum(r.share(p) for p in PHASES):.1f}%" for r in rows)
    t.add_row("total", *total, end_section=True)
    for p in PARTS:
        t.add_row(f"of which {p}", *(f"{100 * r.share(p):.1f}%" for r in rows))
    return t


def plot(rows: Sequence[Row], path: str | Path) -> None:
    """A stacked bar chart of the phase shares (needs matplotlib: ``aresdsm[plot]``)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigurationError("--plot needs matplotlib: pip install 'aresdsm[plot]'") from None
    fig, (ax, parts) = plt.subplots(
        1,
        2,
        figsize=(max(7.0, 3.0 + 2.0 * len(rows)), 5.0),
        sharey=True,
        width_ratios=[3, 2],
        layout="constrained",
    )
    x = list(range(len(rows)))
    bottom = [0.0] * len(rows)
    for phase in PHASES:
        values = [100 * r.share(phase) for r in rows]
        ax.bar(x, values, bottom=bottom, label=phase)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.set_xticks(x, [f"{r.kind}\n{r.mode}\n{r.mean_ms:.2f} ms" for r in rows], fontsize="small")
    ax.set_ylabel("share of operation latency (%)")
    ax.set_ylim(0, 100)
    ax.set_title("phases (add up to 100 %)", fontsize="medium")
    width = 0.4
    for i, (part, colour) in enumerate(zip(PARTS, ("0.3", "0.65"), strict=True)):
        values = [100 * r.share(part) for r in rows]
        parts.bar([v + (i - 0.5) * width for v in x], values, width, label=part, color=colour)
    parts.set_xticks(x, [f"{r.kind}\n{r.mode}" for r in rows], fontsize="small")
    parts.set_title("of which, in the rounds", fontsize="medium")
    fig.legend(loc="outside lower center", ncol=5, fontsize="small")
    fig.suptitle("aresdsm: where operation latency goes")
    fig.savefig(path, dpi=120)
    plt.close(fig)
