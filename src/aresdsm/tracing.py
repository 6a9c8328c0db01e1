"""Distributed tracing with OpenTelemetry (docs/protocol.md §12; architecture principle 9).

Off by default and then free: :func:`span` returns one shared no-op context manager and
:func:`inject` returns ``None`` after a single flag test, and nothing of OpenTelemetry is
imported. :func:`setup` (``--trace``/``--trace-file``, ``--otlp-endpoint``, or the standard
``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` /
``OTEL_TRACES_SAMPLER_ARG`` variables; ``OTEL_SDK_DISABLED=true`` keeps it off) turns it on: a
``TracerProvider`` with a parent-based ratio sampler, exporting over OTLP/HTTP (any collector,
Jaeger, Tempo) and/or to a JSON-lines file that ``ares trace report`` reads. The exporter's own
variables (``OTEL_EXPORTER_OTLP_HEADERS``, ``..._TIMEOUT``, ...) and ``OTEL_RESOURCE_ATTRIBUTES``
apply as usual; ``service.name`` is set per process (``ares-client``, ``ares-server-<id>``).

Spans: the client opens one ``op`` span per operation (attributes ``ares.op`` -- read, write,
reconfig --, ``ares.group``, ``ares.object``, ``ares.mode``; on exit ``ares.outcome`` and
``ares.configs_traversed`` / ``ares.configs``, the configurations its rounds contacted) and one
span per round named by its phase (``get-tag``, ``get-data``, ``put-data``, ``read-next-config``,
``put-config``, ``consensus.prepare``, ...; attributes configuration, DAP, n, k, δ, quorum size,
outcome); the W3C trace context of the round's span travels in every request's envelope, and
each server opens a ``server.<Request>`` span as its child (attributes server, group,
configuration, object, reply), with the wait for durable storage as a ``storage-wait`` child
span. TREAS coding is traced as ``encode`` / ``decode`` (with the value's size, ``ares.bytes``).

Requires the ``tracing`` extra (``pip install aresdsm[tracing]``).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import random
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
    current_span: Any = None
    """opentelemetry.trace.get_current_span, imported once by setup()."""
    sample_ratio = 1.0


_state = _State()


class _NoSpan:
    """What ``with span(...) as s`` gives when nothing is recorded: attributes go nowhere."""

    __slots__ = ()

    def set_attribute(self, key: str, value: Any) -> None:
        pass

    def is_recording(self) -> bool:
        return False


_NO_SPAN = _NoSpan()
_NULL = contextlib.nullcontext(_NO_SPAN)
TRACER_NAME = "aresdsm"
# The configurations the rounds of the current operation contacted, in order (an ``op`` span
# sets it; round spans, which carry ``ares.config``, add to it): ``ares.configs_traversed``.
_op_configs: contextvars.ContextVar[dict[str, None] | None] = contextvars.ContextVar(
    "aresdsm_op_configs", default=None
)
_JSONL_QUEUE = 65536  # spans buffered for the file exporter (the SDK's default 2048 drops some)


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
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    # --otlp-endpoint and OTEL_EXPORTER_OTLP_ENDPOINT are base URLs (/v1/traces is appended);
    # OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is the full URL, used as it is (OTel's convention).
    traces_url = None
    if otlp_endpoint is None:
        traces_url = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or None
        if traces_url is None:
            otlp_endpoint = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or None
    if otlp_endpoint is not None:
        traces_url = otlp_endpoint.rstrip("/")
        if not traces_url.endswith("/v1/traces"):
            traces_url += "/v1/traces"
    if traces_url is None and trace_file is None:
        return False
    if sample_ratio is None:
        arg = os.environ.get("OTEL_TRACES_SAMPLER_ARG", "1.0")
        try:
            sample_ratio = float(arg)
        except ValueError:
            raise ConfigurationError(
                f"OTEL_TRACES_SAMPLER_ARG must be a number in [0, 1], got {arg!r}"
            ) from None
    if not 0.0 <= sample_ratio <= 1.0:
        raise ConfigurationError(f"trace sampling ratio must be in [0, 1], got {sample_ratio}")
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
    except ImportError:
        raise ConfigurationError(
            "tracing needs the tracing extra: pip install 'aresdsm[tracing]'"
        ) from None
    # Roots are sampled here, by span() (an unsampled operation must cost next to nothing);
    # the SDK samples everything it is asked to start, and children follow their parent --
    # on the servers too, through the carried context.
    provider = TracerProvider(
        resource=Resource.create({"service.name": service_name}),
        sampler=ParentBased(ALWAYS_ON),
    )
    if traces_url is not None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=traces_url)))
    if trace_file is not None:
        queue = int(os.environ.get("OTEL_BSP_MAX_QUEUE_SIZE", _JSONL_QUEUE))
        provider.add_span_processor(
            BatchSpanProcessor(_jsonl_exporter(trace_file), max_queue_size=queue)
        )
    from opentelemetry.trace import get_current_span

    _state.provider = provider
    _state.tracer = provider.get_tracer(TRACER_NAME)
    _state.current_span = get_current_span
    _state.sample_ratio = sample_ratio
    _state.enabled = True
    return True


def shutdown() -> None:
    """Flush and stop the exporters (call before the process exits)."""
    if _state.provider is not None:
        _state.provider.shutdown()
    _state.enabled, _state.tracer, _state.provider = False, None, None
    _state.current_span = None
    _state.sample_ratio = 1.0


def span(name: str, attributes: Mapping[str, Any] | None = None) -> Any:
    """A context manager for a child span of the current one (a shared no-op when off).

    The span gets ``ares.outcome`` (``ok`` or the exception's class name) when it ends; an
    ``op`` span also gets the configurations its rounds contacted (``ares.configs_traversed``,
    ``ares.configs``)."""
    if not _state.enabled or _skipping.get():
        return _NULL
    if (  # a root (an operation, or a round outside any) is sampled here, with the ratio
        _state.sample_ratio < 1.0
        and not _state.current_span().get_span_context().is_valid
        and _random() >= _state.sample_ratio
    ):
        return _Unsampled()
    return _span(name, attributes)


_skipping: contextvars.ContextVar[bool] = contextvars.ContextVar("aresdsm_skip", default=False)
"""True inside an operation that was not sampled: its phases open no spans and its requests
carry no context, so an unsampled operation costs one random number and the servers nothing
(sampling 0.01 must be nearly free; docs/benchmarks.md, Tracing overhead)."""
_random = random.Random().random


class _Unsampled:
    """The context manager of an unsampled root: marks everything below it as skipped."""

    __slots__ = ("token",)

    def __enter__(self) -> _NoSpan:
        self.token = _skipping.set(True)
        return _NO_SPAN

    def __exit__(self, *exc: object) -> None:
        _skipping.reset(self.token)


@contextlib.contextmanager
def _span(name: str, attributes: Mapping[str, Any] | None) -> Iterator[Any]:
    configs: dict[str, None] | None = None
    token = None
    if name == "op":
        configs = {}
        token = _op_configs.set(configs)
    elif attributes is not None and "ares.config" in attributes:
        seen = _op_configs.get()
        if seen is not None:
            seen[str(attributes["ares.config"])] = None
    try:
        with _state.tracer.start_as_current_span(name, attributes=attributes) as s:
            try:
                yield s
            except BaseException as e:
                s.set_attribute("ares.outcome", type(e).__name__)
                raise
            else:
                s.set_attribute("ares.outcome", "ok")
            finally:
                if configs is not None:
                    s.set_attribute("ares.configs_traversed", len(configs))
                    s.set_attribute("ares.configs", list(configs))
    finally:
        if token is not None:
            _op_configs.reset(token)


def inject() -> dict[str, str] | None:
    """The W3C trace context of the current span, for a request's envelope."""
    if not _state.enabled or _skipping.get():
        return None
    from opentelemetry.propagate import inject as otel_inject

    carrier: dict[str, str] = {}
    otel_inject(carrier)
    return carrier or None


_REQUEST_ATTRIBUTES = (
    ("group", "ares.group"),
    ("config_id", "ares.config"),
    ("key", "ares.object"),
)


def start_server_span(request: Any, carrier: Mapping[str, str] | None, server_id: str) -> Any:
    """A ``server.<Request>`` span, child of the client span whose context arrived in
    ``carrier`` (None when tracing is off or the request carries no context)."""
    if not _state.enabled or not carrier:
        return None
    from opentelemetry.propagate import extract
    from opentelemetry.trace import SpanKind

    attrs: dict[str, Any] = {"ares.server": server_id}
    for field, attr in _REQUEST_ATTRIBUTES:
        value = getattr(request, field, None)
        if isinstance(value, str):
            attrs[attr] = value
    # InstallConfig carries the configuration, Finalized the entry of the one it finalizes
    config = getattr(request, "config", None) or getattr(
        getattr(request, "entry", None), "config", None
    )
    config_id = getattr(config, "id", None)
    if "ares.config" not in attrs and isinstance(config_id, str):
        attrs["ares.config"] = config_id
    return _state.tracer.start_span(
        f"server.{type(request).__name__}",
        context=extract(dict(carrier)),
        kind=SpanKind.SERVER,
        attributes=attrs,
    )


def end_server_span(span: Any, reply: Any) -> None:
    """End a server span with the kind of its reply (``ares.reply``; error replies also give
    their code as ``ares.outcome``). Accepts None (no span)."""
    if span is None:
        return
    span.set_attribute("ares.reply", type(reply).__name__)
    code = getattr(reply, "code", None)
    span.set_attribute("ares.outcome", code if isinstance(code, str) else "ok")
    span.end()


def fail_server_span(span: Any, exc: BaseException) -> None:
    """End a server span whose reply was never sent (the storage failed)."""
    if span is None:
        return
    span.set_attribute("ares.outcome", type(exc).__name__)
    span.end()


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
