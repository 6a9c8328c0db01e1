"""Prometheus metrics and health endpoints of a server process (``ares server --metrics-address``).

Everything is collected in the process shell and the storage engine, never in the pure
:class:`~aresdsm.protocol.server_core.ServerCore` (docs/architecture.md principle 1): the shell
counts each request, its error code and its latency from decode to reply (that is, including the
wait for the group commit that makes it durable, docs/protocol.md §1 "Durability"); the storage
engine reports each commit's duration (the fsync) and its batch size through
:attr:`~aresdsm.storage.base.Storage.on_commit`. State gauges -- objects and bytes per
configuration, configurations known, the position in the configuration chain (§6), garbage-
collected configurations (§8.3) -- are read from the core when scraped, by a collector that costs
O(configurations), never O(objects).

The HTTP endpoint runs on the server's own event loop (so the collector reads the core without
locks), answers ``GET /metrics``, ``GET /healthz`` and ``GET /readyz``, and is bounded: request
heads of at most 8 KiB, read within 5 s, at most 32 connections at once, one request each.

``/healthz``: the process is up, the storage engine has not failed, and a small file can be
written and fsynced in the data directory (checked in a worker thread). ``/readyz``: healthy, not
failed-stop, and a member of the last configuration it knows (one with no F successor recorded,
§6) -- a server that was removed by a reconfiguration, or a spare that was never added, is up but
not ready.

Off by default: a server without ``--metrics-address`` creates none of this and pays nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from .wire.messages import ErrorReply, Obsolete, Reply

if TYPE_CHECKING:
    from .server import Server

log = logging.getLogger("aresdsm.metrics")

LATENCY_BUCKETS_S = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 10000)
MAX_INSTANCES_EXPORTED = 1024
"""(group, configuration) pairs exported per state metric (a bound on the scrape's size)."""
MAX_HTTP_HEAD_BYTES = 8192
HTTP_READ_TIMEOUT_S = 5.0
MAX_HTTP_CONNECTIONS = 32
PROBE_TIMEOUT_S = 5.0


class ServerMetrics:
    """The metrics of one server process, in a registry of its own."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "aresdsm_server_requests", "Requests handled, by message type.", ["type"], registry=r
        )
        self.errors = Counter(
            "aresdsm_server_request_errors",
            "Requests answered with an error (or OBSOLETE), by message type and error code.",
            ["type", "code"],
            registry=r,
        )
        self.latency = Histogram(
            "aresdsm_server_request_seconds",
            "Time from decoding a request to sending its reply (includes the commit wait).",
            ["type"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.commit_seconds = Histogram(
            "aresdsm_storage_commit_seconds",
            "Duration of one group commit (write and fsync).",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.commit_records = Histogram(
            "aresdsm_storage_commit_batch_records",
            "Records written by one group commit (requests sharing an fsync).",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.gc = Counter(
            "aresdsm_server_gc_configurations",
            "Configurations whose object state this process garbage-collected (§8.3).",
            registry=r,
        )
        self.reconfig_steps = Counter(
            "aresdsm_server_reconfig_steps",
            "Successor entries recorded by this process (nextC set or finalized), by status.",
            ["status"],
            registry=r,
        )
        self.healthz_failures = Counter(
            "aresdsm_server_healthz_failures", "Failed /healthz storage probes.", registry=r
        )
        r.register(_StateCollector(server))
        self._children: dict[str, tuple[Any, Any]] = {}
        server.storage.on_commit = self.on_commit

    def on_commit(self, records: int, seconds: float) -> None:
        self.commit_seconds.observe(seconds)
        self.commit_records.observe(records)

    def request_done(self, kind: str, reply: Reply, started: float) -> None:
        """Called by the shell when a request's reply is sent (``started``: perf_counter)."""
        children = self._children.get(kind)
        if children is None:
            children = (self.requests.labels(kind), self.latency.labels(kind))
            self._children[kind] = children
        children[0].inc()
        children[1].observe(time.perf_counter() - started)
        if isinstance(reply, ErrorReply):
            self.errors.labels(kind, reply.code).inc()
        elif isinstance(reply, Obsolete):
            self.errors.labels(kind, "obsolete").inc()

    def state_changed(self, collected_before: int, next_before: Any, next_after: Any) -> None:
        """After a request that may change the chain: count GC and successor changes."""
        gained = len(self.server.core.collected) - collected_before
        if gained > 0:
            self.gc.inc(gained)
        if next_after is not None and next_after != next_before:
            self.reconfig_steps.labels(next_after.status).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def last_configurations(server: Server) -> list[str]:
    """Ids of the configurations this server knows that have no F successor recorded (§6)."""
    core = server.core
    superseded = {cid for (_g, cid), e in core.nextc.items() if e.status == "F"}
    superseded |= {cid for (_g, cid) in core.collected}
    return sorted(cid for cid in core.configs if cid not in superseded)


def readiness(server: Server) -> tuple[bool, str]:
    """(ready, reason): the ``/readyz`` decision."""
    if server.fatal is not None:
        return False, f"failed (fail-stop): {server.fatal}"
    if server.storage.failed is not None:
        return False, f"storage failed: {server.storage.failed}"
    core = server.core
    last = last_configurations(server)
    mine = [cid for cid in last if core.configs[cid].has_member(server.server_id)]
    if not core.configs:
        return False, "knows no configuration (a spare: not added to the cluster yet)"
    if not mine:
        return False, (
            f"not a member of the last configuration it knows ({', '.join(last) or 'none'})"
        )
    return True, f"member of {', '.join(mine)}"


class _StateCollector(Collector):
    """Gauges read from the core and the shell at scrape time: O(configurations)."""

    def __init__(self, server: Server) -> None:
        self.server = server

    def collect(self) -> Iterator[Any]:
        srv = self.server
        core = srv.core
        counters = core.counters
        yield _gauge("aresdsm_server_up", "1 while the process serves.", 1)
        info = GaugeMetricFamily("aresdsm_server_info", "Server identity.", labels=["server_id"])
        info.add_metric([srv.server_id], 1)
        yield info
        yield _gauge(
            "aresdsm_server_connections", "Client connections open now.", len(srv.connections)
        )
        for name, key, doc in (
            ("aresdsm_server_connections_accepted", "connections", "Connections accepted."),
            ("aresdsm_server_bad_frames", "bad-frames", "Connections closed after bad input."),
            ("aresdsm_server_bad_requests", "bad-requests", "Decodable non-requests answered."),
            ("aresdsm_server_unknown_config", "unknown-config", "Unknown-configuration replies."),
        ):
            c = CounterMetricFamily(name, doc)
            c.add_metric([], counters.get(key, 0))
            yield c
        events = CounterMetricFamily(
            "aresdsm_server_events",
            "Server events counted by the shell and the core (connections refused, evicted or "
            "closed idle, frames timed out, bad input, OBSOLETE answers, ...), by name.",
            labels=["event"],
        )
        for name, n in sorted(counters.items()):
            if name[:1].islower():  # message types are capitalized: requests_total has them
                events.add_metric([name], n)
        yield events
        ready, _ = readiness(srv)
        yield _gauge("aresdsm_server_ready", "1 when /readyz would answer 200.", int(ready))
        yield _gauge(
            "aresdsm_server_configurations_known",
            "Configurations this server knows.",
            len(core.configs),
        )
        yield _gauge(
            "aresdsm_server_configurations_collected",
            "Configurations whose object state is garbage-collected here (§8.3, persisted).",
            len(core.collected),
        )
        yield _gauge(
            "aresdsm_server_chain_position",
            "Epoch (position in the configuration chain, docs/protocol.md §6) of the newest "
            "configuration this server knows.",
            max((c.epoch for c in core.configs.values()), default=0),
        )
        successors = GaugeMetricFamily(
            "aresdsm_server_successors",
            "Successor entries (nextC) this server holds, by status (P pending, F finalized).",
            labels=["status"],
        )
        by_status = {"P": 0, "F": 0}
        for e in core.nextc.values():
            by_status[e.status] = by_status.get(e.status, 0) + 1
        for status, n in sorted(by_status.items()):
            successors.add_metric([status], n)
        yield successors
        objects = GaugeMetricFamily(
            "aresdsm_server_objects",
            "Objects held, per (group, configuration).",
            labels=["group", "config"],
        )
        for (g, cid), keys in list(core.objects.items())[:MAX_INSTANCES_EXPORTED]:
            objects.add_metric([g, cid], len(keys))
        yield objects
        stored = GaugeMetricFamily(
            "aresdsm_server_stored_bytes",
            "Bytes of values (ABD) or coded elements (TREAS) held, per (group, configuration).",
            labels=["group", "config"],
        )
        for (g, cid), n in list((_value_bytes(core) or {}).items())[:MAX_INSTANCES_EXPORTED]:
            stored.add_metric([g, cid], n)
        yield stored
        on_disk = GaugeMetricFamily(
            "aresdsm_storage_bytes",
            "Bytes of records on disk (values, value files and metadata) per (group, "
            "configuration), from the storage engine's running totals.",
            labels=["group", "config"],
        )
        for (g, cid), n in list(srv.storage.bytes_by_instance().items())[:MAX_INSTANCES_EXPORTED]:
            on_disk.add_metric([g, cid], n)
        yield on_disk
        commits = CounterMetricFamily("aresdsm_storage_commits", "Group commits since start.")
        commits.add_metric([], srv.storage.commits)
        yield commits


def _value_bytes(core: Any) -> dict[tuple[str, str], int] | None:
    """Running totals of value bytes per instance, if the core keeps them (O(1) to read)."""
    totals = getattr(core, "_value_bytes", None)
    return totals if isinstance(totals, dict) else None


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    g = GaugeMetricFamily(name, doc)
    g.add_metric([], value)
    return g


class MetricsHttp:
    """A small HTTP endpoint on the server's event loop: /metrics, /healthz, /readyz."""

    def __init__(self, server: Server, metrics: ServerMetrics, host: str, port: int) -> None:
        self.server = server
        self.metrics = metrics
        self.host = host
        self.port = port
        self._http: asyncio.Server | None = None
        self._open = 0
        self._probe_lock = asyncio.Lock()

    async def start(self) -> None:
        from .errors import ConfigurationError

        try:
            self._http = await asyncio.start_server(
                self._serve, self.host, self.port, limit=MAX_HTTP_HEAD_BYTES
            )
        except OSError as e:
            host = f"[{self.host}]" if ":" in self.host else self.host
            raise ConfigurationError(
                f"cannot serve metrics on {host}:{self.port}: {e.strerror or e}"
            ) from None
        self.port = self._http.sockets[0].getsockname()[1]
        log.info(
            "server %s: metrics on http://%s:%d/metrics (/healthz, /readyz)",
            self.server.server_id,
            self.host,
            self.port,
        )

    async def close(self) -> None:
        if self._http is not None:
            self._http.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._http.wait_closed(), 1.0)
            self._http = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._open += 1
        try:
            if self._open > MAX_HTTP_CONNECTIONS:
                await _respond(writer, 503, b"too many connections\n")
                return
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HTTP_READ_TIMEOUT_S)
            except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                return
            except ConnectionError:
                return
            line = head.split(b"\r\n", 1)[0].decode("latin-1").split()
            if len(line) != 3 or not line[2].startswith("HTTP/"):
                await _respond(writer, 400, b"bad request\n")
                return
            method, target = line[0], line[1].split("?", 1)[0]
            if method not in ("GET", "HEAD"):
                await _respond(writer, 405, b"only GET\n")
                return
            if target == "/metrics":
                body = self.metrics.exposition()
                await _respond(writer, 200, body, CONTENT_TYPE_LATEST, head_only=method == "HEAD")
            elif target == "/healthz":
                ok, why = await self.health()
                await _respond(writer, 200 if ok else 503, f"{why}\n".encode())
            elif target == "/readyz":
                ok, why = await self.ready()
                await _respond(writer, 200 if ok else 503, f"{why}\n".encode())
            else:
                await _respond(writer, 404, b"try /metrics, /healthz or /readyz\n")
        finally:
            self._open -= 1
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def health(self) -> tuple[bool, str]:
        """Process up, storage not failed, and a write to the data directory succeeds."""
        srv = self.server
        if srv.fatal is not None:
            return False, f"failed (fail-stop): {srv.fatal}"
        if srv.storage.failed is not None:
            return False, f"storage failed: {srv.storage.failed}"
        async with self._probe_lock:  # one probe at a time, whatever the scrapers do
            try:
                await asyncio.wait_for(
                    asyncio.to_thread(srv.storage.probe_writable), PROBE_TIMEOUT_S
                )
            except TimeoutError:
                self.metrics.healthz_failures.inc()
                return False, f"storage not writable: no answer within {PROBE_TIMEOUT_S} s"
            except OSError as e:
                self.metrics.healthz_failures.inc()
                return False, f"storage not writable: {e}"
        return True, "ok"

    async def ready(self) -> tuple[bool, str]:
        ok, why = await self.health()
        if not ok:
            return ok, why
        return readiness(self.server)


_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    503: "Service Unavailable",
}


async def _respond(
    writer: asyncio.StreamWriter,
    status: int,
    body: bytes,
    content_type: str = "text/plain; charset=utf-8",
    *,
    head_only: bool = False,
) -> None:
    head = (
        f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    writer.write(head if head_only else head + body)
    with contextlib.suppress(ConnectionError):
        await writer.drain()


class ClientMetrics:
    """The client library's counters and histograms (``aresdsm.connect(..., metrics=...)``).

    Off by default: a :class:`~aresdsm.client.Store` without one pays nothing. With one, every
    operation is counted by kind and outcome and timed, and every quorum round by phase and
    outcome. The registry is the caller's (default: a new one) -- serve it with
    ``prometheus_client.start_http_server(port, registry=m.registry)`` or read it with
    :meth:`value`.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.operations = Counter(
            "aresdsm_client_operations",
            "Operations completed, by kind (read, write, delete, list, reconfig) and outcome.",
            ["op", "outcome"],
            registry=r,
        )
        self.errors = Counter(
            "aresdsm_client_operation_errors",
            "Failed operations, by kind and error class.",
            ["op", "error"],
            registry=r,
        )
        self.latency = Histogram(
            "aresdsm_client_operation_seconds",
            "Operation latency, by kind.",
            ["op"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.rounds = Counter(
            "aresdsm_client_rounds",
            "Quorum rounds, by phase and outcome (ok, timeout, unavailable, error).",
            ["phase", "outcome"],
            registry=r,
        )
        self.round_latency = Histogram(
            "aresdsm_client_round_seconds",
            "Quorum round latency, by phase.",
            ["phase"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.relocations = Counter(
            "aresdsm_client_relocations",
            "Times the client adopted a newer configuration via LATEST_CONFIG (§8.5).",
            registry=r,
        )
        self._children: dict[tuple[Any, ...], Any] = {}
        """Labelled children already resolved, by (id of the metric, *label values)."""

    def operation(self, op: str, started: float, error: BaseException | None) -> None:
        self._child(self.latency, (op,)).observe(time.perf_counter() - started)
        if error is None:
            self._child(self.operations, (op, "ok")).inc()
        else:
            self._child(self.operations, (op, "error")).inc()
            self._child(self.errors, (op, type(error).__name__)).inc()

    def round(self, phase: str, started: float, error: BaseException | None) -> None:
        self._child(self.round_latency, (phase,)).observe(time.perf_counter() - started)
        if error is None:
            outcome = "ok"
        else:
            from .errors import OperationTimeout, QuorumUnavailable

            if isinstance(error, OperationTimeout):
                outcome = "timeout"
            elif isinstance(error, QuorumUnavailable):
                outcome = "unavailable"
            else:
                outcome = "error"
        self._child(self.rounds, (phase, outcome)).inc()

    def _child(self, metric: Any, labels: tuple[str, ...]) -> Any:
        """The labelled child of ``metric``, resolved once (``labels()`` builds and locks a key
        on every call; an operation records up to five of them, issue 18). Children are created
        on first use, so the exposition shows only series that happened."""
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        """One sample's value (0.0 if absent), e.g. ``value("aresdsm_client_operations_total",
        {"op": "write", "outcome": "ok"})``."""
        got = self.registry.get_sample_value(name, labels or {})
        return 0.0 if got is None else got
