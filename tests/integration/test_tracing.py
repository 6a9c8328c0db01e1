"""Tracing (protocol.md §12): spans from real server processes and a client reach an OTLP/HTTP
receiver and form one tree per operation; the report's shares add up to the latency."""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from aresdsm import tracing
from aresdsm.client import Store
from aresdsm.local import LocalCluster
from aresdsm.trace_report import PHASES, breakdown, load_spans, summarize

pytestmark = pytest.mark.slow


class _Receiver(BaseHTTPRequestHandler):
    spans: list[dict[str, Any]] = []
    lock = threading.Lock()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        req = ExportTraceServiceRequest()
        req.ParseFromString(body)
        with self.lock:
            for rs in req.resource_spans:
                service = next(
                    (
                        a.value.string_value
                        for a in rs.resource.attributes
                        if a.key == "service.name"
                    ),
                    "",
                )
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        self.spans.append(
                            {
                                "service": service,
                                "name": s.name,
                                "trace_id": s.trace_id.hex(),
                                "span_id": s.span_id.hex(),
                                "parent_id": s.parent_span_id.hex() or None,
                                "attributes": {a.key: a.value for a in s.attributes},
                            }
                        )
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[str]:
    _Receiver.spans = []
    httpd = HTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_spans_form_one_tree_per_operation_across_processes(receiver: str) -> None:
    old = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = receiver  # the server processes inherit it
    try:
        with tempfile.TemporaryDirectory() as tmp:
            lc = LocalCluster.create(Path(tmp) / "c", n=3, dap="treas", k=1, timeout_s=2.0)
            lc.start()
            try:
                with tracing.traced_process("ares-client", otlp_endpoint=receiver, trace_file=None):

                    async def go() -> None:
                        async with Store(lc.cluster.initial, options=lc.cluster.client) as st:
                            await st.write("k", b"traced value")
                            assert await st.read("k") == b"traced value"

                    asyncio.run(go())
            finally:
                lc.stop()  # SIGTERM: the servers flush their spans on the way out
    finally:
        if old is None:
            del os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"]
        else:
            os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = old
    spans = _Receiver.spans
    by_id = {s["span_id"]: s for s in spans}
    ops = [s for s in spans if s["name"] == "op"]
    assert sorted(s["attributes"]["ares.op"].string_value for s in ops) == ["read", "write"]
    assert len({s["trace_id"] for s in ops}) == 2  # one trace per operation
    for op in ops:
        tree = [s for s in spans if s["trace_id"] == op["trace_id"]]
        rounds = [
            s
            for s in tree
            if s["parent_id"] == op["span_id"] and s["name"] not in ("encode", "decode")
        ]
        servers = [s for s in tree if s["name"].startswith("server.")]
        assert rounds and servers
        for srv in servers:  # server spans hang under a client round, across processes
            parent = by_id[srv["parent_id"]]
            assert parent["parent_id"] == op["span_id"] and parent["service"] == "ares-client"
            assert srv["service"].startswith("ares-server-")
        for r in rounds:
            assert {"ares.config", "ares.dap", "ares.n", "ares.quorum"} <= set(r["attributes"])
        names = {s["name"] for s in tree}
        kind = op["attributes"]["ares.op"].string_value
        if kind == "write":
            assert {"get-tag", "put-data", "encode", "server.PutData", "storage-wait"} <= names
        else:
            assert {"get-data", "decode", "server.QueryList"} <= names


def _span(name: str, sid: str, parent: str | None, start: int, end: int, **attrs: str) -> str:
    return json.dumps(
        {
            "name": name,
            "trace_id": "t" + (parent or sid),
            "span_id": sid,
            "parent_id": parent,
            "start_ns": start,
            "end_ns": end,
            "attributes": attrs,
        }
    )


def test_report_shares_add_up_to_the_latency(tmp_path: Path) -> None:
    lines = [
        # a write of 100 time units: get-tag 10..30, encode 35..40, put-data 40..90
        _span("op", "w", None, 0, 100, **{"ares.op": "write", "ares.mode": "ares2"}),
        _span("get-tag", "w1", "w", 10, 30),
        _span("encode", "w2", "w", 35, 40),
        _span("put-data", "w3", "w", 40, 90),
        _span("server.PutData", "w3s", "w3", 45, 80),
        _span("storage-wait", "w3sw", "w3s", 50, 70),
        # a classic read: two discovery rounds around two data rounds, overlapping slightly
        _span("op", "r", None, 0, 200, **{"ares.op": "read", "ares.mode": "classic"}),
        _span("read-next-config", "r1", "r", 0, 50),
        _span("get-data", "r2", "r", 45, 100),
        _span("put-data", "r3", "r", 100, 150),
        _span("read-next-config", "r4", "r", 150, 190),
    ]
    path = tmp_path / "spans.jsonl"
    path.write_text("\n".join(lines) + "\n")
    rows = {(r.kind, r.mode): r for r in summarize(breakdown(load_spans([path])))}
    write = rows[("write", "ares2")]
    assert [round(100 * write.share(p)) for p in PHASES] == [0, 20, 50, 0, 0, 5, 25]
    assert round(100 * write.storage_share) == 20
    read = rows[("read", "classic")]
    assert read.share("discovery") == pytest.approx((45 + 40) / 200)
    assert read.share("query") == pytest.approx(55 / 200)
    for row in rows.values():
        assert sum(row.share(p) for p in PHASES) == pytest.approx(1.0, abs=0.05)
