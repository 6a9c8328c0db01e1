"""The server process: TCP listener + storage engine + the pure :class:`ServerCore`.

For every request frame: decode; hand the message to the core (pure); submit the writes it returns
to the storage engine (group commit); send the reply only when everything applied so far is
durable (:meth:`Storage.barrier`). No task is created per request: replies are sent from the
commit's done-callback.

Bad input never stops the server: an undecodable frame or an oversized length prefix is counted
and the connection closed (the stream can no longer be trusted); a decodable message that is not a
request is answered with ``bad-request``. A storage failure is fatal (fail-stop): the process
stops without sending the replies that depended on the failed commit, and a restart recovers the
last durable state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path
from typing import cast

from . import tracing
from .config import Configuration
from .errors import FrameError
from .protocol.server_core import ServerCore
from .storage.base import Storage
from .storage.memory import MemoryStorage
from .storage.sqlite import SqliteStorage
from .wire.codec import DEFAULT_MAX_FRAME_BYTES, Decoder, Encoder, FrameBuffer
from .wire.messages import Envelope, ErrorReply, GetStats, Reply, Request

log = logging.getLogger("aresdsm.server")

_REQUEST_TYPES: tuple[type, ...] = Request.__args__


class _Conn(asyncio.Protocol):
    def __init__(self, server: Server) -> None:
        self.server = server
        self.frames = FrameBuffer(max_frame_bytes=server.max_frame_bytes)
        self.transport: asyncio.Transport | None = None
        self.pending = 0
        self.paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.server.connections.add(self)
        self.server.bump("connections")

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.transport = None

    def data_received(self, data: bytes) -> None:
        srv = self.server
        try:
            bodies = self.frames.feed(data)
        except FrameError as e:
            self._reject(e)
            return
        for body in bodies:
            try:
                env = srv.decoder.decode_body(body)
            except FrameError as e:
                self._reject(e)
                return
            srv.handle(self, env)

    def _reject(self, e: FrameError) -> None:
        self.server.bump("bad-frames")
        log.warning("closing connection after bad input: %s", e)
        if self.transport is not None:
            self.transport.close()

    def send(self, rid: int, reply: Reply) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        try:
            self.transport.writelines(self.server.encoder.encode(Envelope(rid, reply)))
        except FrameError as e:  # reply too large for a frame: answer with an error instead
            self.transport.writelines(
                self.server.encoder.encode(Envelope(rid, ErrorReply("bad-request", str(e))))
            )

    def request_done(self) -> None:
        self.pending -= 1
        if self.paused and self.pending < self.server.max_in_flight and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()


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
        self._server = await loop.create_server(lambda: _Conn(self), self.host, self.port)
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
            conn.send(env.rid, ErrorReply("storage", "the server's storage failed; it stops"))
            return
        span = tracing.start_server_span(body, env.trace, self.server_id)
        reply, writes = self.core.handle(body)  # type: ignore[arg-type]
        if writes:
            self.storage.submit(writes)
        barrier = self.storage.barrier()
        if barrier is None:
            conn.send(env.rid, reply)
            if span is not None:
                tracing.end_server_span(span, reply)
            return
        wait = tracing.start_child("storage-wait", span)
        conn.pending += 1
        if conn.pending >= self.max_in_flight and not conn.paused and conn.transport is not None:
            conn.paused = True
            conn.transport.pause_reading()
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
            if span is not None:
                tracing.end_server_span(span, reply)

        barrier.add_done_callback(durable)

    def _fail(self, exc: BaseException) -> None:
        if self.fatal is None:
            self.fatal = exc
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
) -> int:
    """Run a server until SIGTERM/SIGINT; returns the process exit code."""
    storage = open_storage(storage_kind, data_dir)
    server = Server(server_id=server_id, host=host, port=port, storage=storage)
    if initial is not None and initial.has_member(server_id):
        await server.bootstrap(initial)
    await server.start()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: loop.create_task(server.stop()))
    if ready_file is not None:
        await asyncio.to_thread(Path(ready_file).write_text, f"{server.port}\n")
    await server.wait_closed()
    return 1 if server.fatal is not None else 0
