"""Tracing (docs/protocol.md §12): spans from real server processes and a client reach an OTLP/HTTP
receiver (protobuf decoded with opentelemetry-proto) and form one tree per operation, across
processes, with the phase names and attributes of §12. The report is tested on hand-made traces
in tests/unit/test_trace_report.py."""

from __future__ import annotations

import asyncio
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
from aresdsm.config import Configuration
from aresdsm.local import LocalCluster

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
                                "attributes": {a.key: _value(a.value) for a in s.attributes},
                            }
                        )
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def _value(v: Any) -> Any:
    """An OTLP AnyValue as a Python value."""
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    return getattr(v, kind) if kind else None


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
    value = b"traced value " * 100
    old = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = receiver  # the server processes inherit it
    try:
        with tempfile.TemporaryDirectory() as tmp:
            lc = LocalCluster.create(
                Path(tmp) / "c", n=3, spares=2, dap="treas", k=1, delta=1, timeout_s=2.0
            )
            lc.start_all()
            try:
                with tracing.traced_process("ares-client", otlp_endpoint=receiver, trace_file=None):

                    async def go() -> None:
                        opts = lc.cluster.client
                        async with Store(lc.cluster.initial, options=opts) as st:
                            await st.write("k", value)
                            assert await st.read("k") == value
                            c1 = Configuration("c1", lc.cluster.servers[:5], dap="treas", k=3)
                            assert (await st.reconfigure(c1)).id == "c1"
                            await st.settle()
                        # a client that knows only c0 reads through c0 into c1
                        async with Store(lc.cluster.initial, options=opts) as late:
                            assert await late.read("k") == value

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
    assert sorted(op["attributes"]["ares.op"] for op in ops) == [
        "read",
        "read",
        "reconfig",
        "write",
    ]
    assert len({op["trace_id"] for op in ops}) == 4  # one trace per operation
    for op in ops:
        a = op["attributes"]
        assert op["parent_id"] is None and op["service"] == "ares-client"
        assert a["ares.group"] == "default" and a["ares.mode"] == "ares2"
        assert a["ares.outcome"] == "ok"
        assert a["ares.configs_traversed"] == len(a["ares.configs"]) >= 1
        late = a["ares.configs"] == ["c0", "c1"] and a["ares.op"] == "read"
        tree = [s for s in spans if s["trace_id"] == op["trace_id"]]
        for s in tree:  # one tree: every other span hangs, through its parents, under op
            x = s
            while x["parent_id"] is not None:
                x = by_id[x["parent_id"]]
            assert x is op, s["name"]
        # client spans of the phases of §12 group rounds; rounds hang under op or under them
        groups = {"read-config", "update-config", "finalize-config"}
        under_op = {op["span_id"]} | {
            s["span_id"] for s in tree if s["name"] in groups and s["parent_id"] == op["span_id"]
        }
        # (the member probe before a reconfiguration pings servers of no configuration yet)
        probe = {"probe-members", "request.Ping", "server.Ping"}
        rounds = [
            s
            for s in tree
            if s["parent_id"] in under_op and s["name"] not in ("encode", "decode", *groups, *probe)
        ]
        servers = [s for s in tree if s["name"].startswith("server.") and s["name"] not in probe]
        assert rounds and servers
        for srv in servers:  # server spans hang under a client round, across processes
            parent = by_id[srv["parent_id"]]
            assert parent["parent_id"] in under_op and parent["service"] == "ares-client"
            assert srv["service"] == f"ares-server-{srv['attributes']['ares.server']}"
            assert srv["attributes"]["ares.config"] == parent["attributes"]["ares.config"]
            # a spare answers unknown-config, is sent InstallConfig and the request again
            assert srv["attributes"]["ares.outcome"] in ("ok", "unknown-config")
            assert "ares.reply" in srv["attributes"]
        for w in (s for s in tree if s["name"] == "storage-wait"):
            assert by_id[w["parent_id"]]["name"].startswith("server.")
            assert w["service"].startswith("ares-server-")
        for r in rounds:
            ra = r["attributes"]
            assert {"ares.config", "ares.dap", "ares.n", "ares.quorum", "ares.k", "ares.delta"} <= (
                set(ra)
            )
            assert ra["ares.dap"] == "treas"
            # c0 was garbage-collected when the late client reached it (§8.3): OBSOLETE
            expected = "ConfigurationObsolete" if ra["ares.config"] == "c0" and late else "ok"
            assert ra["ares.outcome"] == expected
            assert ra["ares.config"] in a["ares.configs"]
        names = {s["name"] for s in tree}
        kind = a["ares.op"]
        if kind == "write":
            assert a["ares.object"] == "k" and a["ares.configs"] == ["c0"]
            assert {"get-tag", "put-data", "encode", "server.PutData", "storage-wait"} <= names
            (encode,) = (s for s in tree if s["name"] == "encode")
            assert encode["attributes"]["ares.bytes"] == len(value)
            assert encode["parent_id"] == op["span_id"]
        elif kind == "read":
            assert a["ares.object"] == "k"
            assert {"get-data", "decode", "server.QueryList"} <= names
            assert all(
                s["attributes"]["ares.bytes"] == len(value) for s in tree if s["name"] == "decode"
            )
        else:
            assert a["ares.configs"] == ["c0", "c1"]
            assert {
                "consensus.prepare",
                "consensus.accept",
                "set-next-and-get",
                "put-config",
                "server.Prepare",
                "server.Accept",
                "server.GetGroup",
                "server.PutBatch",
                "server.WriteConfig",
                "server.InstallConfig",  # the spares learn c1 within the operation's trace
                "read-config",
                "update-config",
                "finalize-config",
                "finalize-all",  # finalizing everywhere, in the background (§8.3)
                "server.Finalized",
            } <= names
    reads = [op for op in ops if op["attributes"]["ares.op"] == "read"]
    # the late client's read went through c0 into c1 (Ares II: learned from the replies)
    assert sorted(len(op["attributes"]["ares.configs"]) for op in reads) == [1, 2]
    assert ["c0", "c1"] in [op["attributes"]["ares.configs"] for op in reads]
