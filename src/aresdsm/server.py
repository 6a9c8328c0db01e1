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

Security (docs/protocol.md §13, docs/security.md) lives here, in the shell, not in the core:
with a TLS context every connection is mutual TLS 1.3 (a client without a certificate the
cluster CA signed never gets past the handshake); the client certificate's role decides, per
request, whether it is handed to the core (:func:`~aresdsm.security.roles.required_role`) or
answered ``unauthorized`` (logged once per connection); certificates on the deny list are
refused, and their open connections closed when the list changes; admin operations are written
to the audit log. Without TLS (``--insecure``) every request is allowed, and only loopback
clients are accepted unless ``allow_remote_plaintext`` (Redis's protected mode).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import signal
import ssl
from collections import deque
from pathlib import Path
from typing import Any, cast

from . import tracing
from .config import Configuration, TlsFiles
from .errors import ConfigurationError, FrameError
from .protocol.server_core import ServerCore
from .security.audit import AuditLog
from .security.macs import load_key
from .security.roles import is_admin_operation, refusal
from .security.tls import (
    HANDSHAKE_TIMEOUT_S,
    DenyList,
    PeerIdentity,
    peer_identity,
    role_level,
    server_context,
)
from .storage.base import Storage
from .storage.memory import MemoryStorage
from .storage.sqlite import SqliteStorage
from .wire.codec import DEFAULT_MAX_FRAME_BYTES, Decoder, Encoder, FrameBuffer
from .wire.messages import Envelope, ErrorReply, GetStats, Reply, Request

log = logging.getLogger("aresdsm.server")

_REQUEST_TYPES: tuple[type, ...] = Request.__args__
ADMIN_LEVEL = role_level("admin")
DENY_CHECK_INTERVAL_S = 1.0
"""How often a server looks at its deny list for connections to close."""


def _peer_text(peer: Any) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = str(peer[0])
        return f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"
    return str(peer)


def is_loopback(peer: Any) -> bool:
    """Whether a peer address (``peername``) is on the loopback network (IPv4-mapped too)."""
    if not isinstance(peer, tuple) or not peer:
        return isinstance(peer, str)  # a Unix socket path: local by construction
    try:
        ip = ipaddress.ip_address(str(peer[0]).split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


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
        self.identity: PeerIdentity | None = None
        """The client certificate's identity (None: plaintext)."""
        self.level = 0
        """The connection's role level (:func:`~aresdsm.security.tls.role_level`)."""
        self.peer = "?"
        self.refusal_logged = False
        self.tls_out: list[Any] = []
        """TLS: reply buffers written in this loop iteration, sent as one write (flush_tls)."""
        self.tls_flush_scheduled = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        srv = self.server
        peer = transport.get_extra_info("peername")
        self.peer = _peer_text(peer)
        if srv.tls is not None:
            self.identity = peer_identity(transport)
            if self.identity is None:  # (CERT_REQUIRED: the handshake already refused it)
                srv.bump("refused-no-certificate")
                self.transport.abort()
                return
            if srv.deny.denies(self.identity):
                srv.bump("refused-denied")
                log.warning(
                    "refused %s from %s: on the deny list", self.identity.describe(), self.peer
                )
                self.transport.abort()
                return
            self.level = role_level(self.identity.role)
        else:
            if not srv.allow_remote_plaintext and not is_loopback(peer):
                srv.bump("refused-remote-plaintext")
                if srv.core.counters["refused-remote-plaintext"] in (1, 10, 100, 1000, 10000):
                    log.warning(
                        "refused a plaintext connection from %s (protected mode: an insecure "
                        "server accepts loopback clients only; %d refused so far)",
                        self.peer,
                        srv.core.counters["refused-remote-plaintext"],
                    )
                self.transport.abort()
                return
            self.level = ADMIN_LEVEL  # plaintext: no authentication, nothing to check
        srv.connections.add(self)
        srv.bump("connections")

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
            bufs = self.server.encoder.encode(Envelope(rid, reply))
        except FrameError as e:  # reply too large (or not encodable): answer with an error
            bufs = self.server.encoder.encode(Envelope(rid, ErrorReply("bad-request", str(e))))
        if self.server.tls is None:
            self.transport.writelines(bufs)
            return
        # TLS: every write is at least one encrypted record; the replies of one loop iteration
        # (a group commit answers many at once) go out together, in as few records as fit
        self.tls_out.extend(bufs)
        if not self.tls_flush_scheduled:
            self.tls_flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush_tls)

    def flush_tls(self) -> None:
        self.tls_flush_scheduled = False
        out, self.tls_out = self.tls_out, []
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(out))

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
        tls: ssl.SSLContext | None = None,
        deny: DenyList | None = None,
        audit: AuditLog | None = None,
        allow_remote_plaintext: bool = False,
        broken_skip_authorization: bool = False,
        admin_key: bytes | None = None,
    ) -> None:
        self.server_id = server_id
        self.admin_key = admin_key
        """The cluster's admin MAC key: P entries written back by non-admins must carry its MAC."""
        self.broken_skip_authorization = broken_skip_authorization
        """Test-only: every connection may send everything (the attacks of issue 13 succeed)."""
        self.tls = tls
        """Mutual TLS (a server context that requires client certificates); None: plaintext."""
        self.deny = deny or DenyList(None)
        self.audit = audit
        self.allow_remote_plaintext = allow_remote_plaintext
        """Plaintext only: accept clients that are not on the loopback network."""
        self._deny_task: asyncio.Task[None] | None = None
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

    def _refuse(self, conn: _Conn, rid: int, body: Request, need: str) -> None:
        """``unauthorized``: the connection's role is below what ``body`` needs (§13)."""
        self.bump("unauthorized")
        who = conn.identity.describe() if conn.identity is not None else "plaintext client"
        if not conn.refusal_logged:  # once per connection: a client cannot flood the log
            conn.refusal_logged = True
            log.warning(
                "unauthorized: %s from %s sent %s, which needs role %s (further refusals on "
                "this connection are counted, not logged)",
                who,
                conn.peer,
                type(body).__name__,
                need,
            )
            if self.audit is not None:
                self.audit.record(who=who, peer=conn.peer, req=body, outcome="unauthorized")
        have = conn.identity.role if conn.identity is not None else None
        conn.send(
            rid,
            ErrorReply(
                "unauthorized",
                f"{type(body).__name__} needs role {need}; this client's role is {have or 'none'}",
            ),
        )

    async def _watch_deny_list(self) -> None:
        """Close the open connections of certificates added to the deny list (no restart)."""
        seen = self.deny.entries()
        while True:
            await asyncio.sleep(DENY_CHECK_INTERVAL_S)
            now = self.deny.entries()
            if now == seen:
                continue
            seen = now
            for c in list(self.connections):
                if c.identity is not None and self.deny.denies(c.identity) and c.transport:
                    log.warning(
                        "closing the connection of %s: now on the deny list", c.identity.describe()
                    )
                    self.bump("closed-denied")
                    c.transport.abort()

    async def bootstrap(self, initial: Configuration) -> None:
        """Know the initial configuration (persisted, so a restart does not need it again)."""
        writes = self.core.install_config(initial)
        if writes:
            await self.storage.submit(writes)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        try:
            self._server = await loop.create_server(
                lambda: _Conn(self),
                self.host,
                self.port,
                ssl=self.tls,
                ssl_handshake_timeout=HANDSHAKE_TIMEOUT_S if self.tls is not None else None,
            )
        except OSError as e:  # port in use, unresolvable host, ...: one line, not a traceback
            host = f"[{self.host}]" if ":" in self.host else self.host
            raise ConfigurationError(
                f"cannot listen on {host}:{self.port}: {e.strerror or e}"
            ) from None
        sock = self._server.sockets[0]
        self.port = sock.getsockname()[1]
        if self.deny.path is not None:
            self._deny_task = loop.create_task(self._watch_deny_list())
        mode = "mutual TLS" if self.tls is not None else "PLAINTEXT (insecure)"
        log.info("server %s listening on %s:%d, %s", self.server_id, self.host, self.port, mode)

    def handle(self, conn: _Conn, env: Envelope) -> None:
        if not isinstance(env.body, _REQUEST_TYPES):
            self.bump("bad-requests")
            conn.send(
                env.rid, ErrorReply("bad-request", f"{type(env.body).__name__} is not a request")
            )
            return
        body = cast(Request, env.body)
        need = refusal(body, self.core, conn.level, self.admin_key)
        if need is not None and not self.broken_skip_authorization:
            self._refuse(conn, env.rid, body, need)
            return
        if isinstance(body, GetStats):
            if self.audit is not None:
                self._audit(conn, body, "Stats")
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
        span = tracing.start_server_span(body, env.trace, self.server_id)
        try:
            reply, writes = self.core.handle(body)
        except Exception as exc:
            # The core answers every bad request with an error reply, so an exception is a bug
            # (an InvariantViolation or worse). It may have changed the in-memory state without
            # returning the writes that make the change durable: fail-stop, like a failed
            # commit, and answer nothing from that state; a restart recovers from disk.
            tracing.fail_server_span(span, exc)
            self._fail(exc, bug=True)
            return
        if self.audit is not None and is_admin_operation(body):
            self._audit(conn, body, _outcome(reply))
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
            if span is not None:
                tracing.end_server_span(span, reply)

        barrier.add_done_callback(durable)

    def _audit(self, conn: _Conn, body: Request, outcome: str) -> None:
        assert self.audit is not None
        who = conn.identity.describe() if conn.identity is not None else "plaintext client"
        self.audit.record(who=who, peer=conn.peer, req=body, outcome=outcome)

    def _fail(self, exc: BaseException, *, bug: bool = False) -> None:
        if self.fatal is None:
            self.fatal = exc
            if bug:
                log.critical("internal error, stopping (fail-stop)", exc_info=exc)
            else:
                log.critical("storage failure, stopping (fail-stop): %s", exc)
            asyncio.get_running_loop().create_task(self.stop())

    async def stop(self) -> None:
        if self._deny_task is not None:
            self._deny_task.cancel()
            self._deny_task = None
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
        if self.audit is not None:
            self.audit.close()
        if self._stopped is not None:
            self._stopped.set()

    async def wait_closed(self) -> None:
        assert self._stopped is not None
        await self._stopped.wait()


def _outcome(reply: Any) -> str:
    """How the audit log names a reply: its type, or the error code."""
    if isinstance(reply, ErrorReply):
        return f"error {reply.code}"
    return type(reply).__name__


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
    tls: TlsFiles | None = None,
    deny_file: str | Path | None = None,
    audit_log: str | Path | None = None,
    allow_remote_plaintext: bool = False,
) -> int:
    """Run a server until SIGTERM/SIGINT; returns the process exit code. ``tls``: this server's
    identity (mutual TLS); None runs plaintext (the caller asked for --insecure). The audit log
    goes to ``audit_log``, default ``<data_dir>/audit.log``."""
    context = server_context(tls) if tls is not None else None
    storage = open_storage(storage_kind, data_dir)
    server = Server(
        server_id=server_id,
        host=host,
        port=port,
        storage=storage,
        tls=context,
        deny=DenyList(deny_file),
        admin_key=load_key(tls.admin_key) if tls is not None and tls.admin_key else None,
        audit=AuditLog(audit_log or Path(data_dir) / "audit.log", server_id),
        allow_remote_plaintext=allow_remote_plaintext,
    )
    if initial is not None and initial.has_member(server_id):
        await server.bootstrap(initial)
    try:
        await server.start()
    except BaseException:
        # release the data directory (and its lock) before the caller reports the error
        storage.close()
        raise
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: loop.create_task(server.stop()))
    if ready_file is not None:
        await asyncio.to_thread(Path(ready_file).write_text, f"{server.port}\n")
    await server.wait_closed()
    return 1 if server.fatal is not None else 0
