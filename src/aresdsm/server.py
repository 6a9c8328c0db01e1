"""The server process: TCP listener + storage engine + the pure :class:`ServerCore`.

For every request frame: decode; hand the message to the core (pure); submit the writes it returns
to the storage engine (group commit); send the reply only when everything applied so far is
durable (:meth:`Storage.barrier`). No task is created per request: replies are sent from the
commit's done-callback.

Bad input never stops the server: an undecodable frame or an oversized length prefix is counted
and the connection closed (the stream can no longer be trusted); a decodable message that is not a
request is answered with ``bad-request``. A storage failure is fatal (fail-stop): the process
stops without sending the replies that depended on the failed commit, and a restart recovers the
last durable state. So is an exception escaping the core (a bug): the in-memory state it leaves
may not match what is durable, so nothing more is answered from it.

Flow control: a connection stops being read while ``max_in_flight`` of its requests wait for a
commit or while its replies are not being read (the transport's write buffer is above its
high-water mark), so neither grows without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, cast

from . import tracing
from .config import Configuration
from .errors import ConfigurationError, FrameError
from .protocol.server_core import ServerCore
from .storage.base import Storage
from .storage.memory import MemoryStorage
from .storage.sqlite import SqliteStorage
from .wire.codec import DEFAULT_MAX_FRAME_BYTES, Decoder, Encoder, FrameBuffer
from .wire.messages import Envelope, ErrorReply, GetStats, Reply, Request, WriteConfig

if TYPE_CHECKING:
    from .metrics import ServerMetrics

log = logging.getLogger("aresdsm.server")

_REQUEST_TYPES: tuple[type, ...] = Request.__args__


class _Conn(asyncio.Protocol):
    """One client connection.

    Reading is paused while either of two limits is reached: ``max_in_flight`` requests waiting
    for a commit, or the transport's write buffer above its high-water mark (``pause_writing``:
    the client does not read its replies). Both feed one decision, :meth:`update_reading`, so
    that the end of one condition never resumes reading while the other still holds. While
    paused, frames already received wait in ``backlog`` undecoded: one received chunk can hold
    thousands of small requests, each of which may have a large reply.
    """

    def __init__(self, server: Server) -> None:
        self.server = server
        self.frames = FrameBuffer(max_frame_bytes=server.max_frame_bytes)
        self.transport: asyncio.Transport | None = None
        self.pending = 0
        """Requests handled whose reply waits for a commit."""
        self.paused = False
        """Reading is paused (and the backlog is not being handled)."""
        self.writing_paused = False
        """The transport's write buffer is above its high-water mark."""
        self.backlog: deque[bytes] = deque()
        self._handling = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.server.connections.add(self)
        self.server.bump("connections")

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.transport = None
        self.backlog.clear()

    def data_received(self, data: bytes) -> None:
        try:
            self.backlog.extend(self.frames.feed(data))
        except FrameError as e:
            self._reject(e)
            return
        self._handle_backlog()

    def _handle_backlog(self) -> None:
        if self._handling:  # re-entered from a reply's write; the outer loop goes on
            return
        self._handling = True
        try:
            srv = self.server
            while self.backlog and not self.paused:
                if self.transport is None or self.transport.is_closing():
                    self.backlog.clear()
                    return
                body = self.backlog.popleft()
                try:
                    env = srv.decoder.decode_body(body)
                except FrameError as e:
                    self._reject(e)
                    return
                srv.handle(self, env)
        finally:
            self._handling = False

    def _reject(self, e: FrameError) -> None:
        self.server.bump("bad-frames")
        log.warning("closing connection after bad input: %s", e)
        self.backlog.clear()
        if self.transport is not None:
            self.transport.close()

    def send(self, rid: int, reply: Reply) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        try:
            self.transport.writelines(self.server.encoder.encode(Envelope(rid, reply)))
        except FrameError as e:  # reply too large (or not encodable): answer with an error
            self.transport.writelines(
                self.server.encoder.encode(Envelope(rid, ErrorReply("bad-request", str(e))))
            )

    def update_reading(self) -> None:
        """Pause or resume reading to match both limits (the only place that does either)."""
        if self.transport is None or self.transport.is_closing():
            return
        want_paused = self.writing_paused or self.pending >= self.server.max_in_flight
        if want_paused and not self.paused:
            self.paused = True
            self.transport.pause_reading()
        elif not want_paused and self.paused:
            self.paused = False
            self.transport.resume_reading()
            self._handle_backlog()

    def request_done(self) -> None:
        self.pending -= 1
        if self.paused:
            self.update_reading()

    def pause_writing(self) -> None:
        self.writing_paused = True
        self.update_reading()

    def resume_writing(self) -> None:
        self.writing_paused = False
        self.update_reading()


class Server:
    """One aresdsm server. ``await start()``, then ``await wait_closed()``/``stop()``."""

    def __init__(
        self,
        *,
        server_id: str,
        host: str,
        port: int,
        storage: Storage,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        max_in_flight: int = 4096,
    ) -> None:
        self.server_id = server_id
        self.host = host
        self.port = port
        self.storage = storage
        self.max_frame_bytes = max_frame_bytes
        self.max_in_flight = max_in_flight
        self.encoder = Encoder(max_frame_bytes=max_frame_bytes)
        self.decoder = Decoder()
        self.core = ServerCore.recover(server_id, list(storage.load()))
        self.connections: set[_Conn] = set()
        self._server: asyncio.Server | None = None
        self._stopped: asyncio.Event | None = None
        self.fatal: BaseException | None = None
        self.metrics: ServerMetrics | None = None
        """Prometheus metrics (:mod:`aresdsm.metrics`); None (the default) costs nothing."""

    def enable_metrics(self) -> ServerMetrics:
        from .metrics import ServerMetrics

        if self.metrics is None:
            self.metrics = ServerMetrics(self)
        return self.metrics

    def bump(self, name: str) -> None:
        self.core.counters[name] = self.core.counters.get(name, 0) + 1

    async def bootstrap(self, initial: Configuration) -> None:
        """Know the initial configuration (persisted, so a restart does not need it again)."""
        writes = self.core.install_config(initial)
        if writes:
            await self.storage.submit(writes)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        try:
            self._server = await loop.create_server(lambda: _Conn(self), self.host, self.port)
        except OSError as e:  # port in use, unresolvable host, ...: one line, not a traceback
            host = f"[{self.host}]" if ":" in self.host else self.host
            raise ConfigurationError(
                f"cannot listen on {host}:{self.port}: {e.strerror or e}"
            ) from None
        sock = self._server.sockets[0]
        self.port = sock.getsockname()[1]
        log.info("server %s listening on %s:%d", self.server_id, self.host, self.port)

    def handle(self, conn: _Conn, env: Envelope) -> None:
        body = env.body
        if not isinstance(body, _REQUEST_TYPES):
            self.bump("bad-requests")
            conn.send(env.rid, ErrorReply("bad-request", f"{type(body).__name__} is not a request"))
            return
        if isinstance(body, GetStats):
            conn.send(env.rid, self.core.stats(self.storage.stored_bytes()))
            return
        if self.fatal is not None or self.storage.failed is not None:
            # fail-stop: the in-memory state may hold what never became durable; answer
            # nothing from it until the process is restarted from disk (requests read in the
            # same loop iteration as the failure land here, before stop() closes connections)
            if self.storage.failed is not None:
                conn.send(env.rid, ErrorReply("storage", "the server's storage failed; it stops"))
            else:
                conn.send(env.rid, ErrorReply("shutting-down", "the server failed; it stops"))
            return
        m = self.metrics
        started = time.perf_counter() if m is not None else 0.0
        kind = type(body).__name__
        if m is not None and isinstance(body, WriteConfig):
            inst = (body.group, body.config_id)
            collected, before = len(self.core.collected), self.core.nextc.get(inst)
        span = tracing.start_server_span(body, env.trace, self.server_id)
        try:
            reply, writes = self.core.handle(body)  # type: ignore[arg-type]
        except Exception as exc:
            # The core answers every bad request with an error reply, so an exception is a bug
            # (an InvariantViolation or worse). It may have changed the in-memory state without
            # returning the writes that make the change durable: fail-stop, like a failed
            # commit, and answer nothing from that state; a restart recovers from disk.
            tracing.fail_server_span(span, exc)
            self._fail(exc, bug=True)
            return
        if m is not None and isinstance(body, WriteConfig):
            m.state_changed(collected, before, self.core.nextc.get(inst))
        if writes:
            self.storage.submit(writes)
        barrier = self.storage.barrier()
        if barrier is None:
            conn.send(env.rid, reply)
            if m is not None:
                m.request_done(kind, reply, started)
            if span is not None:
                tracing.end_server_span(span, reply)
            return
        wait = tracing.start_child("storage-wait", span)
        conn.pending += 1
        if conn.pending >= self.max_in_flight and conn.transport is not None:
            conn.update_reading()
        rid = env.rid

        def durable(fut: asyncio.Future[None]) -> None:
            conn.request_done()
            if wait is not None:
                wait.end()
            if fut.cancelled() or fut.exception() is not None:
                exc = fut.exception() or RuntimeError("commit cancelled")
                tracing.fail_server_span(span, exc)
                self._fail(exc)
                return
            conn.send(rid, reply)
            if m is not None:
                m.request_done(kind, reply, started)
            if span is not None:
                tracing.end_server_span(span, reply)

        barrier.add_done_callback(durable)

    def _fail(self, exc: BaseException, *, bug: bool = False) -> None:
        if self.fatal is None:
            self.fatal = exc
            if bug:
                log.critical("internal error, stopping (fail-stop)", exc_info=exc)
            else:
                log.critical("storage failure, stopping (fail-stop): %s", exc)
            asyncio.get_running_loop().create_task(self.stop())

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for c in list(self.connections):
            if c.transport is not None:
                c.transport.close()
        with contextlib.suppress(Exception):
            await self.storage.drain()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None
        self.storage.close()
        if self._stopped is not None:
            self._stopped.set()

    async def wait_closed(self) -> None:
        assert self._stopped is not None
        await self._stopped.wait()


def open_storage(kind: str, data_dir: str | Path) -> Storage:
    if kind == "memory":
        return MemoryStorage()
    if kind == "sqlite":
        return SqliteStorage(Path(data_dir) / "state.sqlite3")
    raise ValueError(f"unknown storage engine {kind!r}; expected 'sqlite' or 'memory'")


async def run_server(
    *,
    server_id: str,
    host: str,
    port: int,
    data_dir: str | Path,
    storage_kind: str = "sqlite",
    initial: Configuration | None = None,
    ready_file: str | Path | None = None,
    metrics_address: tuple[str, int] | None = None,
) -> int:
    """Run a server until SIGTERM/SIGINT; returns the process exit code.

    ``metrics_address``: (host, port) of the HTTP endpoint serving ``/metrics``, ``/healthz``
    and ``/readyz`` (:mod:`aresdsm.metrics`); None: no endpoint."""
    from .metrics import MetricsHttp

    storage = open_storage(storage_kind, data_dir)
    server = Server(server_id=server_id, host=host, port=port, storage=storage)
    http: MetricsHttp | None = None
    if initial is not None and initial.has_member(server_id):
        await server.bootstrap(initial)
    try:
        if metrics_address is not None:
            http = MetricsHttp(server, server.enable_metrics(), *metrics_address)
            await http.start()
        await server.start()
    except BaseException:
        # release the data directory (and its lock) before the caller reports the error
        if http is not None:
            await http.close()
        storage.close()
        raise
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: loop.create_task(server.stop()))
    if ready_file is not None:
        await asyncio.to_thread(Path(ready_file).write_text, f"{server.port}\n")
    await server.wait_closed()
    if http is not None:
        await http.close()
    return 1 if server.fatal is not None else 0
