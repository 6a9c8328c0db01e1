"""Tracing on, in one process (docs/protocol.md §12): span attributes set by ``tracing`` itself
(outcome, configurations traversed), server spans from a carried W3C context, sampling, the
JSON-lines file, and the standard OTEL_* variables."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from aresdsm import tracing
from aresdsm.errors import ConfigurationError, OperationTimeout
from aresdsm.wire.messages import Ack, ErrorReply, QueryTag

_OTEL_VARS = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_TRACES_SAMPLER_ARG",
    "OTEL_SDK_DISABLED",
)


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for var in _OTEL_VARS:
        monkeypatch.delenv(var, raising=False)
    yield
    tracing.shutdown()


def _records(path: Path) -> dict[str, dict[str, Any]]:
    tracing.shutdown()  # flush
    if not path.exists():
        return {}
    return {
        (r := json.loads(line))["name"]: r for line in path.read_text().splitlines() if line.strip()
    }


def test_op_spans_get_outcome_and_the_configurations_their_rounds_contacted(
    tmp_path: Path,
) -> None:
    path = tmp_path / "t.jsonl"
    assert tracing.setup("test", trace_file=path)
    with tracing.span("op", {"ares.op": "read"}):
        for i, config in enumerate(("c0", "c1", "c0", "c2")):
            with tracing.span(f"round{i}", {"ares.config": config}):
                pass
        with tracing.span("decode"):
            pass
    with (
        pytest.raises(OperationTimeout),
        tracing.span("op", {"ares.op": "write"}),
        tracing.span("put-data", {"ares.config": "c9"}),
    ):
        raise OperationTimeout("no quorum")
    spans = _records(path)
    ops = [json.loads(x) for x in path.read_text().splitlines() if '"op"' in x]
    read = next(o for o in ops if o["attributes"]["ares.op"] == "read")
    write = next(o for o in ops if o["attributes"]["ares.op"] == "write")
    assert read["attributes"]["ares.configs"] == ["c0", "c1", "c2"]  # in the order contacted
    assert read["attributes"]["ares.configs_traversed"] == 3
    assert read["attributes"]["ares.outcome"] == "ok"
    assert write["attributes"]["ares.configs"] == ["c9"]  # not the earlier operation's
    assert write["attributes"]["ares.outcome"] == "OperationTimeout"
    assert spans["put-data"]["attributes"]["ares.outcome"] == "OperationTimeout"
    assert spans["round0"]["attributes"]["ares.outcome"] == "ok"
    assert spans["round0"]["parent_id"] == read["span_id"]
    assert spans["decode"]["service"] == "test"


def test_server_span_is_a_child_of_the_carried_context(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    tracing.setup("test", trace_file=path)
    with tracing.span("get-tag", {"ares.config": "c0"}):
        carrier = tracing.inject()
    assert carrier is not None and "traceparent" in carrier  # W3C trace context
    assert tracing.start_server_span(QueryTag("g", "c0", "k"), None, "s1") is None  # no context
    srv = tracing.start_server_span(QueryTag("g", "c0", "k"), carrier, "s1")
    wait = tracing.start_child("storage-wait", srv)
    wait.end()
    tracing.end_server_span(srv, ErrorReply("unknown-config", "c0?"))
    other = tracing.start_server_span(QueryTag("g", "c0", "k2"), carrier, "s2")
    tracing.end_server_span(other, Ack())
    tracing.shutdown()
    spans = [json.loads(x) for x in path.read_text().splitlines()]
    by_name: dict[str, list[dict[str, Any]]] = {}
    for s in spans:
        by_name.setdefault(s["name"], []).append(s)
    (client,) = by_name["get-tag"]
    s1, s2 = sorted(by_name["server.QueryTag"], key=lambda s: s["attributes"]["ares.server"])
    assert s1["parent_id"] == client["span_id"] and s1["trace_id"] == client["trace_id"]
    assert s1["attributes"] == {
        "ares.server": "s1",
        "ares.group": "g",
        "ares.config": "c0",
        "ares.object": "k",
        "ares.reply": "ErrorReply",
        "ares.outcome": "unknown-config",
    }
    assert s2["attributes"]["ares.reply"] == "Ack" and s2["attributes"]["ares.outcome"] == "ok"
    (w,) = by_name["storage-wait"]
    assert w["parent_id"] == s1["span_id"]


@pytest.mark.parametrize(("ratio", "expected"), [(0.0, 0), (1.0, 20)])
def test_sampling_ratio(tmp_path: Path, ratio: float, expected: int) -> None:
    path = tmp_path / "t.jsonl"
    tracing.setup("test", trace_file=path, sample_ratio=ratio)
    for _ in range(20):
        with tracing.span("op"), tracing.span("get-tag"):
            pass
    tracing.shutdown()
    lines = path.read_text().splitlines() if path.exists() else []
    assert sum('"name": "op"' in x for x in lines) == expected
    assert len(lines) == 2 * expected  # the rounds follow their operation's decision


def test_sampling_ratio_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "t.jsonl"
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0")
    tracing.setup("test", trace_file=path)
    with tracing.span("op"):
        pass
    assert _records(path) == {}
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "often")
    with pytest.raises(ConfigurationError, match="OTEL_TRACES_SAMPLER_ARG"):
        tracing.setup("test", trace_file=path)
    with pytest.raises(ConfigurationError, match="ratio"):
        tracing.setup("test", trace_file=path, sample_ratio=1.5)


def test_off_unless_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert not tracing.setup("test")
    assert not tracing.enabled()
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert not tracing.setup("test", trace_file=tmp_path / "t.jsonl")
    assert not tracing.enabled()


class _Paths(BaseHTTPRequestHandler):
    seen: list[str] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.seen.append(self.path)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[str]:
    _Paths.seen = []
    httpd = HTTPServer(("127.0.0.1", 0), _Paths)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.parametrize(
    ("variable", "suffix", "path"),
    [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "", "/v1/traces"),  # a base URL
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "/custom/traces", "/custom/traces"),  # as it is
    ],
)
def test_otlp_endpoint_from_the_environment(
    collector: str, monkeypatch: pytest.MonkeyPatch, variable: str, suffix: str, path: str
) -> None:
    monkeypatch.setenv(variable, collector + suffix)
    assert tracing.setup("test")
    with tracing.span("op"):
        pass
    tracing.shutdown()
    assert _Paths.seen == [path]


def test_otlp_endpoint_option_wins(collector: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://127.0.0.1:9/nowhere")
    assert tracing.setup("test", otlp_endpoint=collector + "/")
    with tracing.span("op"):
        pass
    tracing.shutdown()
    assert _Paths.seen == ["/v1/traces"]


def test_an_unsampled_operation_opens_no_phase_spans_and_sends_no_context(tmp_path: Path) -> None:
    """Sampling 0.01 must be nearly free: below an unsampled op span, phases are the shared
    no-op and requests carry no trace context (so servers do nothing); a sampled op (ratio 1)
    gets both. Rounds outside any operation still start traces of their own."""
    path = tmp_path / "t.jsonl"
    assert tracing.setup("test", trace_file=path, sample_ratio=0.0)
    with tracing.span("op", {"ares.op": "read"}) as op:
        op.set_attribute("ares.bytes", 3)  # as the client does after a read: goes nowhere
        assert not op.is_recording()
        assert tracing.span("get-data") is tracing.span("put-data")  # the shared no-op
        assert tracing.inject() is None
    with tracing.span("get-data"):  # no operation around it: a root of its own
        assert tracing.inject() is None  # ... sampled out by ratio 0 too
    tracing.shutdown()
    assert tracing.setup("test", trace_file=path, sample_ratio=1.0)
    with tracing.span("op", {"ares.op": "read"}), tracing.span("get-data") as s:
        assert s.is_recording()
        carrier = tracing.inject()
        assert carrier is not None and int(carrier["traceparent"][-2:], 16) & 1  # sampled
    assert set(_records(path)) == {"op", "get-data"}
