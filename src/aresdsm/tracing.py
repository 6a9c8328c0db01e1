"""Distributed tracing with OpenTelemetry (protocol.md §12; architecture principle 9).

Off by default and then free: :func:`span` returns one shared no-op context manager and
:func:`inject` returns ``None`` after a single flag test, and nothing of OpenTelemetry is
imported. :func:`setup` (``--trace-file``, ``--otlp-endpoint``, or the standard
``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_TRACES_SAMPLER_ARG`` variables) turns it on: a
``TracerProvider`` with a parent-based ratio sampler, exporting over OTLP/HTTP (any collector,
Jaeger, Tempo) and/or to a JSON-lines file that ``ares trace report`` reads.

Spans: the client opens one ``op`` span per operation (attribute ``ares.op``: read, write,
reconfig) and one span per round named by its phase (``get-tag``, ``get-data``, ``put-data``,
``read-next-config``, ``put-config``, ``consensus.prepare``, ...); the W3C trace context of the
round's span travels in every request's envelope, and each server opens a ``server.<Request>`` span
as its child, with the wait for durable storage as a ``storage-wait`` child span. TREAS coding is
traced as ``encode`` / ``decode``.

Requires the ``tracing`` extra (``pip install aresdsm[tracing]``).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import ConfigurationError


class _State:
    """This process's tracing state (one per process; set up once by the command line)."""

    enabled = False
    tracer: Any = None
    provider: Any = None


_state = _State()
_NULL = contextlib.nullcontext()
TRACER_NAME = "aresdsm"


def enabled() -> bool:
    return _state.enabled


def setup(
    service_name: str,
    *,
    otlp_endpoint: str | None = None,
    trace_file: str | Path | None = None,
    sample_ratio: float | None = None,
) -> bool:
    """Turn tracing on for this process. Returns False when nothing asks for it."""
    otlp_endpoint = otlp_endpoint or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if otlp_endpoint is None and trace_file is None:
        return False
    if sample_ratio is None:
        sample_ratio = float(os.environ.get("OTEL_TRACES_SAMPLER_ARG", "1.0"))
    if not 0.0 <= sample_ratio <= 1.0:
        raise ConfigurationError(f"trace sampling ratio must be in [0, 1], got {sample_ratio}")
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
    except ImportError:
        raise ConfigurationError(
            "tracing needs the tracing extra: pip install 'aresdsm[tracing]'"
        ) from None
    provider = TracerProvider(
        resource=Resource.create({"service.name": service_name}),
        sampler=ParentBased(TraceIdRatioBased(sample_ratio)),
    )
    if otlp_endpoint is not None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        url = otlp_endpoint.rstrip("/")
        if not url.endswith("/v1/traces"):
            url += "/v1/traces"
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=url)))
    if trace_file is not None:
        provider.add_span_processor(BatchSpanProcessor(_jsonl_exporter(trace_file)))
    _state.provider = provider
    _state.tracer = provider.get_tracer(TRACER_NAME)
    _state.enabled = True
    return True


def shutdown() -> None:
    """Flush and stop the exporters (call before the process exits)."""
    if _state.provider is not None:
        _state.provider.shutdown()
    _state.enabled, _state.tracer, _state.provider = False, None, None


def span(name: str, attributes: Mapping[str, Any] | None = None) -> Any:
    """A context manager for a child span of the current one (a shared no-op when off)."""
    if not _state.enabled:
        return _NULL
    return _state.tracer.start_as_current_span(name, attributes=attributes)


def inject() -> dict[str, str] | None:
    """The W3C trace context of the current span, for a request's envelope."""
    if not _state.enabled:
        return None
    from opentelemetry.propagate import inject as otel_inject

    carrier: dict[str, str] = {}
    otel_inject(carrier)
    return carrier or None


def start_server_span(name: str, carrier: Mapping[str, str] | None) -> Any:
    """A server span, child of the client span whose context arrived in ``carrier``."""
    if not _state.enabled or not carrier:
        return None
    from opentelemetry.propagate import extract
    from opentelemetry.trace import SpanKind

    return _state.tracer.start_span(name, context=extract(dict(carrier)), kind=SpanKind.SERVER)


def start_child(name: str, parent: Any) -> Any:
    if parent is None:
        return None
    from opentelemetry.trace import set_span_in_context

    return _state.tracer.start_span(name, context=set_span_in_context(parent))


class JsonLinesWriter:
    """Appends finished spans to a file, one JSON object per line (``ares trace report``)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def write(self, spans: Sequence[Any]) -> None:
        lines = "".join(json.dumps(span_record(s)) + "\n" for s in spans)
        with self._lock, open(self.path, "a", encoding="utf-8") as f:
            f.write(lines)


def _jsonl_exporter(path: str | Path) -> Any:
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    class JsonLinesExporter(SpanExporter):
        def __init__(self) -> None:
            self.writer = JsonLinesWriter(path)

        def export(self, spans: Sequence[Any]) -> SpanExportResult:
            self.writer.write(spans)
            return SpanExportResult.SUCCESS

    return JsonLinesExporter()


def span_record(s: Any) -> dict[str, Any]:
    ctx = s.get_span_context()
    parent = s.parent
    return {
        "name": s.name,
        "trace_id": f"{ctx.trace_id:032x}",
        "span_id": f"{ctx.span_id:016x}",
        "parent_id": f"{parent.span_id:016x}" if parent is not None else None,
        "start_ns": s.start_time,
        "end_ns": s.end_time,
        "service": s.resource.attributes.get("service.name", ""),
        "attributes": {k: v for k, v in (s.attributes or {}).items()},
    }


@contextlib.contextmanager
def traced_process(
    service_name: str,
    *,
    otlp_endpoint: str | None,
    trace_file: str | Path | None,
    sample_ratio: float | None = None,
) -> Iterator[bool]:
    """Tracing on for the duration of a command (flushed at the end)."""
    on = setup(
        service_name, otlp_endpoint=otlp_endpoint, trace_file=trace_file, sample_ratio=sample_ratio
    )
    try:
        yield on
    finally:
        if on:
            shutdown()
