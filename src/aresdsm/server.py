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

Handshake (issue 10): a server with an identity (every ``ares server``) serves a connection only
after its first frame, a :class:`~aresdsm.wire.messages.Hello`, named this cluster, this server,
the initial configuration this server was created with, the protocol version and -- if the
client's configuration names one -- this incarnation. It answers :class:`Welcome` with its
identity, or ``refused`` with one line and closes the connection: nothing is served and nothing
changes. The handshake is a message exchange on top of the byte stream, so it composes with TLS
underneath. (In-process servers made without an identity, in tests, answer Hello but do not
require it.)

Flow control: a connection stops being read while ``max_in_flight`` of its requests wait for a
commit or while its replies are not being read (the transport's write buffer is above its
high-water mark), so neither grows without bound.

Security (docs/protocol.md §13, docs/security.md) lives here, in the shell, not in the core:
with a TLS context every connection is mutual TLS 1.3 (a client without a certificate the
cluster CA signed never gets past the handshake). The listener accepts plain TCP: a new
connection is first admitted -- counted against ``max_connections`` and the per-address limit,
like any other -- and only then upgraded with ``loop.start_tls`` under ``handshake_timeout_s``,
so a flood of half-open TLS handshakes is bounded by the same limits (on uvloop and the stdlib
loop alike; docs/security.md "Limits and TLS"). the client certificate's role decides, per
request, whether it is handed to the core (:func:`~aresdsm.security.roles.required_role`) or
answered ``unauthorized`` (logged once per connection); with the cluster's write key a value
(PutData, PutBatch items) is applied only with a valid writer MAC or when it adds nothing
(:func:`~aresdsm.security.roles.value_refusal`: propagate, never invent); certificates on the
deny list are refused, and their open connections closed when the list changes; admin operations
are written to the audit log. Without TLS (``--insecure``) every request is allowed, and only
loopback clients are accepted unless ``allow_remote_plaintext`` (Redis's protected mode).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import itertools
import logging
import os
import signal
import socket
import ssl
import struct
import time
from collections import OrderedDict, deque
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from . import tracing
from .config import Configuration, TlsFiles
from .errors import ConfigurationError, FrameError, StorageError
from .identity import PROTOCOL_VERSION, Identity, NewMember, initial_digest, new_uid, open_data_dir
from .limits import ServerLimits
from .protocol.server_core import ServerCore
from .security.audit import AuditLog
from .security.macs import load_key, load_keys
from .security.roles import REQUIRED, is_admin_operation, refusal, value_refusal
from .security.tls import (
    DenyList,
    PeerIdentity,
    peer_identity,
    role_level,
    server_context,
)
from .serverlog import BadInputLog, state_events
from .storage.base import DamagedValue, PinnedValue, Storage, ValueRef
from .storage.memory import MemoryStorage
from .storage.sqlite import SqliteStorage
from .storage.values import VALUE_REPLIES, refs_in, resolve
from .testing import NO_FAULTS, Broken
from .wire.codec import DEFAULT_MAX_FRAME_BYTES, Decoder, Encoder, FrameBuffer
from .wire.messages import (
    Envelope,
    ErrorReply,
    GetStats,
    Hello,
    PutBatch,
    PutData,
    Reply,
    Request,
    Welcome,
    WriteConfig,
)

if TYPE_CHECKING:
    from .metrics import ServerMetrics

log = logging.getLogger("aresdsm.server")

_REQUEST_TYPES: tuple[type, ...] = Request.__args__
ADMIN_LEVEL = role_level("admin")
FLUSH_NOW_BYTES = 256 * 1024
"""Replies queued for one connection beyond this are sent at once, not at the end of the loop
iteration (coalescing only pays for small messages)."""
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


_Held = tuple["_Conn", list[bytes | memoryview], int, tuple[Any, ...] | None]
"""A reply waiting for its commit: connection, encoded buffers, their size, and (only with
metrics or a trace span) what finishing it needs: kind, reply, start time, span, wait span."""

_DATA_WRITES = (PutData, PutBatch)
"""Requests whose writes are object state only (no reconfiguration step to log)."""

_NEVER_AUDITED = frozenset(
    kind
    for kind in _REQUEST_TYPES
    if kind is not WriteConfig and REQUIRED.get(kind, "admin") != "admin"
)
"""Request types :func:`~aresdsm.security.roles.is_admin_operation` never names (by their type
alone): the audit check costs them one set lookup."""


class _Conn(asyncio.Protocol):
    """One client connection.

    Requests are handled while none of these holds (:meth:`update_reading` decides, the only
    place that pauses or resumes): ``max_in_flight`` requests wait for a commit; the replies held
    for the connection (encoded, waiting for their commit or in the transport's write buffer)
    exceed ``max_conn_reply_bytes`` -- counted here, so the bound is the same on uvloop and on the
    stdlib loop; the transport's write buffer is above its high-water mark (``pause_writing``: the
    client does not read its replies). Reading is paused while requests are not handled, and also
    while complete requests waiting in ``backlog`` exceed ``max_conn_request_bytes``. Frames
    received while paused wait in ``backlog`` undecoded: one received chunk can hold thousands of
    small requests, each of which may have a large reply.
    """

    def __init__(self, server: Server) -> None:
        self.server = server
        self.frames = FrameBuffer(max_frame_bytes=server.max_frame_bytes)
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        """The peer's IP address (connection limits are per address)."""
        self.pending = 0
        """Requests handled whose reply waits for a commit."""
        self.paused = False
        """Reading is paused."""
        self.blocked = False
        """Requests are not being handled (the backlog waits)."""
        self.writing_paused = False
        """The transport's write buffer is above its high-water mark."""
        self.backlog: deque[bytes | memoryview] = deque()
        self.backlog_bytes = 0
        self.reply_bytes = 0
        """Bytes of encoded replies waiting for their commit."""
        self.partial = 0
        """Bytes of the incomplete frame counted in the server's total (0 if exempt)."""
        self.frame_started: float | None = None
        """When the first byte of the incomplete frame arrived (None: no incomplete frame)."""
        self.last_active = 0.0
        self.admitted = False
        self._handling = False
        self.identity: PeerIdentity | None = None
        """The client certificate's identity (None: plaintext)."""
        self.level = 0
        """The connection's role level (:func:`~aresdsm.security.tls.role_level`)."""
        self.peer_text = "?"
        """``ip:port``, for the log and the audit log."""
        self.refusal_logged = False
        self.out: list[bytes | memoryview] = []
        """Reply buffers written in this event-loop iteration, sent as one write (:meth:`flush`)."""
        self.out_bytes = 0
        self.flush_scheduled = False
        self.greeted = server.identity is None
        """The handshake succeeded (or this server has no identity to check)."""
        self.handshake: asyncio.Task[None] | None = None
        """TLS: the handshake in progress (the connection is admitted, its transport not yet
        made); cancelled if the connection is dropped meanwhile."""

    def set_peer(self, peer: Any) -> None:
        if isinstance(peer, tuple) and peer:
            self.peer = str(peer[0])
        self.peer_text = _peer_text(peer)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Plaintext: a new TCP connection, admitted (counted against the connection limits)
        here. TLS: the handshake completed on a connection admitted before it started
        (:meth:`Server._accept`); the client's certificate decides whether it is served."""
        self.transport = cast(asyncio.Transport, transport)
        srv = self.server
        limit = srv.limits.max_conn_reply_bytes
        if srv.tls is not None:
            self.handshake = None
            if not self.admitted:  # (dropped while its handshake completed)
                self.transport.abort()
                return
            self.identity = peer_identity(transport)
            if self.identity is None:  # (CERT_REQUIRED: the handshake already refused it)
                srv.bump("refused-no-certificate")
                srv._drop(self)
                return
            if srv.deny.denies(self.identity):
                srv.bump("refused-denied")
                srv.refusals.warning(
                    f"refused {self.identity.describe()} from {self.peer_text}: on the deny list"
                )
                srv._drop(self)
                return
            self.level = role_level(self.identity.role)
            self.transport.set_write_buffer_limits(high=limit, low=limit // 4)
            srv.touch(self)
            return
        peer = transport.get_extra_info("peername")
        self.set_peer(peer)
        if not srv.allow_remote_plaintext and not is_loopback(peer):
            srv.bump("refused-remote-plaintext")
            srv.refusals.warning(
                f"refused a plaintext connection from {self.peer_text} (protected mode: an "
                "insecure server accepts loopback clients only)"
            )
            self.transport.abort()
            return
        self.level = ADMIN_LEVEL  # plaintext: no authentication, nothing to check
        self.transport.set_write_buffer_limits(high=limit, low=limit // 4)
        srv.admit(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.forget(self)
        self.transport = None
        self.out = []
        self.out_bytes = 0
        self.backlog.clear()
        self.backlog_bytes = 0

    def idle(self) -> bool:
        """Nothing in progress: no request waiting, no reply held, no partial frame."""
        t = self.transport
        return (
            self.pending == 0
            and not self.out
            and not self.backlog
            and self.frame_started is None
            and (t is None or t.get_write_buffer_size() == 0)
        )

    def data_received(self, data: bytes) -> None:
        srv = self.server
        srv.touch(self)
        try:
            bodies = self.frames.feed(data)
        except FrameError as e:
            self._reject(e)
            return
        for body in bodies:
            self.backlog.append(body)
            self.backlog_bytes += len(body)
        if not srv.track_partial(self, bool(bodies)):
            return
        if self.backlog_bytes >= srv.limits.max_conn_request_bytes:
            self.update_reading()
        self._handle_backlog()

    def _handle_backlog(self) -> None:
        if self._handling:  # re-entered from a reply's write; the outer loop goes on
            return
        self._handling = True
        try:
            srv = self.server
            while self.backlog and not self.blocked:
                if self.transport is None or self.transport.is_closing():
                    self.backlog.clear()
                    self.backlog_bytes = 0
                    return
                body = self.backlog.popleft()
                self.backlog_bytes -= len(body)
                try:
                    env = srv.decoder.decode_body(body)
                except FrameError as e:
                    self._reject(e)
                    return
                if isinstance(env.body, Hello):
                    self._greet(env.rid, env.body)
                elif not self.greeted:
                    self._refuse(env.rid, "the first message on a connection must be Hello")
                    return
                else:
                    srv.handle(self, env)
            if self.paused:
                self.update_reading()
        finally:
            self._handling = False

    def _greet(self, rid: int, hello: Hello) -> None:
        ident = self.server.identity
        if ident is None:
            self.greeted = True
            self.send(rid, Welcome("", self.server.server_id, "", PROTOCOL_VERSION))
            return
        problem = handshake_problem(ident, hello)
        if problem is not None:
            self._refuse(rid, problem)
            return
        self.greeted = True
        self.send(
            rid, Welcome(ident.cluster_id, ident.server_id, ident.incarnation, PROTOCOL_VERSION)
        )

    def _refuse(self, rid: int, message: str) -> None:
        """One line to the client, then close: nothing was served, nothing changed."""
        self.server.bump("refused-connections")
        self.server.refusals.warning(f"refused the handshake of {self.peer}: {message}")
        self.backlog.clear()
        self.backlog_bytes = 0
        if self.transport is not None and not self.transport.is_closing():
            self.transport.writelines(
                self.server.encoder.encode(Envelope(rid, ErrorReply("refused", message)))
            )
            self.transport.close()  # (after the buffered reply is written)

    def _reject(self, e: FrameError) -> None:
        self.server.bump("bad-frames")
        self.server.bad_input.warning(f"closing connection from {self.peer} after bad input", e)
        self.backlog.clear()
        self.backlog_bytes = 0
        if self.transport is not None:
            self.transport.close()

    def encode(self, rid: int, reply: Reply | Welcome) -> list[bytes | memoryview]:
        try:
            return self.server.encoder.encode(Envelope(rid, reply))
        except FrameError as e:  # reply too large (or not encodable): answer with an error
            return self.server.encoder.encode(Envelope(rid, ErrorReply("bad-request", str(e))))

    def send(self, rid: int, reply: Reply | Welcome) -> None:
        self.write(self.encode(rid, reply))

    def write(self, bufs: list[bytes | memoryview], size: int | None = None) -> None:
        """Queue a reply's buffers; every reply queued in one event-loop iteration leaves in one
        ``writelines`` (a group commit releases many at once; one chunk read can hold many
        requests answered at once). The flush runs from ``call_soon``: after the callbacks
        already ready in this iteration, before the loop polls again -- no added latency for a
        lone reply (docs/design.md, "Coalesced writes")."""
        t = self.transport
        if t is None or t.is_closing():
            return
        self.out += bufs
        self.out_bytes += sum(map(len, bufs)) if size is None else size
        if self.out_bytes >= FLUSH_NOW_BYTES:
            # large replies gain nothing from waiting; in the transport they meet its flow
            # control (pause_writing) at once
            self.flush()
        elif not self.flush_scheduled:
            self.flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)
        limit = self.server.limits.max_conn_reply_bytes
        if (
            not self.blocked
            and self.reply_bytes + self.out_bytes + t.get_write_buffer_size() >= limit
        ):
            self.update_reading()  # the reply budget is spent: stop handling requests

    def flush(self) -> None:
        """Send what :meth:`write` queued: one system call for all of it (plaintext), as few
        TLS records as fit (TLS: joined first, since uvloop's TLS transport encrypts every
        buffer of a ``writelines`` as a record of its own -- three per reply)."""
        self.flush_scheduled = False
        out, self.out = self.out, []
        self.out_bytes = 0
        t = self.transport
        if not out or t is None or t.is_closing():
            return
        if not self.writing_paused:  # replies move: the connection is active
            self.server.touch(self)
        if self.server.tls is None:
            t.writelines(out)  # one writev; large values are not copied
        else:
            t.write(b"".join(out))  # (TLS transports make a record of every buffer written)
        if self.blocked:  # (held bytes moved to the transport, which may have sent them)
            self.update_reading()

    def update_reading(self) -> None:
        """Pause or resume handling and reading to match every limit (the only place that
        does either)."""
        if self.transport is None or self.transport.is_closing():
            return
        limits = self.server.limits
        held = self.reply_bytes + self.out_bytes + self.transport.get_write_buffer_size()
        self.blocked = (
            self.writing_paused
            or self.pending >= self.server.max_in_flight
            or held >= limits.max_conn_reply_bytes
        )
        want_paused = self.blocked or self.backlog_bytes >= limits.max_conn_request_bytes
        if want_paused and not self.paused:
            self.paused = True
            self.transport.pause_reading()
        elif not want_paused and self.paused:
            self.paused = False
            if self.frame_started is not None:  # its sender could not send while we paused
                self.frame_started = self.server.now()
            self.transport.resume_reading()
        if not self.blocked and self.backlog:
            self._handle_backlog()

    def request_done(self, reply_bytes: int = 0) -> None:
        self.pending -= 1
        self.reply_bytes -= reply_bytes
        if self.paused or self.blocked:
            self.update_reading()

    def release(self, bufs: list[bytes | memoryview], size: int) -> None:
        """A held reply's commit is durable: queue it for this iteration's flush (as
        :meth:`write`) and count the request done. Its bytes move from the held count to the
        queued one, so the sum the reply budget limits does not grow: no budget check."""
        self.pending -= 1
        self.reply_bytes -= size
        t = self.transport
        if t is not None and not t.is_closing():
            self.out += bufs
            self.out_bytes += size
            if self.out_bytes >= FLUSH_NOW_BYTES:
                self.flush()
            elif not self.flush_scheduled:
                self.flush_scheduled = True
                asyncio.get_running_loop().call_soon(self.flush)
        if self.paused or self.blocked:
            self.update_reading()

    def pause_writing(self) -> None:
        self.writing_paused = True
        self.update_reading()

    def resume_writing(self) -> None:
        self.writing_paused = False
        self.server.touch(self)
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
        tls: ssl.SSLContext | None = None,
        deny: DenyList | None = None,
        audit: AuditLog | None = None,
        allow_remote_plaintext: bool = False,
        broken_skip_authorization: bool = False,
        admin_key: bytes | None = None,
        write_keys: tuple[bytes, ...] = (),
        faults: Broken = NO_FAULTS,
        max_in_flight: int | None = None,
        limits: ServerLimits | None = None,
        identity: Identity | None = None,
    ) -> None:
        self.server_id = server_id
        self.admin_key = admin_key
        """The cluster's admin MAC key: P entries written back by non-admins must carry its MAC."""
        self.write_keys = write_keys
        """The cluster's write keys (the first current, the others still accepted): a value is
        applied only with a valid writer MAC or when it adds nothing (docs/protocol.md §13)."""
        self.check_value_macs = bool(write_keys) and not faults.broken_skip_value_mac
        """Test-only ``broken_skip_value_mac`` turns the writer-MAC check off."""
        self.broken_late_value_read = faults.broken_late_value_read
        """Test-only: values of a reply are read when it is sent, not when the core answers."""
        self._reading: set[asyncio.Task[None]] = set()
        """Replies whose values are being read off the event loop (:meth:`_reply_after_read`)."""
        self.broken_skip_authorization = broken_skip_authorization
        """Test-only: every connection may send everything (the attacks of issue 13 succeed)."""
        self.tls = tls
        """Mutual TLS (a server context that requires client certificates); None: plaintext."""
        self.deny = deny or DenyList(None)
        self.audit = audit
        self.allow_remote_plaintext = allow_remote_plaintext
        """Plaintext only: accept clients that are not on the loopback network."""
        self._deny_task: asyncio.Task[None] | None = None
        self.identity = identity
        self.host = host
        self.port = port
        self.storage = storage
        self.limits = limits if limits is not None else ServerLimits()
        self.max_frame_bytes = max_frame_bytes
        self.max_in_flight = max_in_flight or self.limits.max_in_flight
        self.encoder = Encoder(max_frame_bytes=max_frame_bytes)
        self.decoder = Decoder()
        self.bad_input = BadInputLog(
            log,
            per_s=self.limits.log_bad_input_per_s,
            burst=self.limits.log_bad_input_burst,
            max_chars=self.limits.log_input_prefix_chars,
        )
        self.refusals = BadInputLog(  # refused and closed connections: INFO, bounded
            log,
            per_s=self.limits.log_bad_input_per_s,
            burst=self.limits.log_bad_input_burst,
            max_chars=self.limits.log_input_prefix_chars,
            level=logging.INFO,
        )
        started = time.perf_counter()
        records = list(storage.load())
        self.core = ServerCore.recover(
            server_id,
            records,
            incarnation=identity.incarnation if identity is not None else "",
        )
        st = self.core.stats()
        log.info(
            "server %s recovered %d records in %.3f s: %d configurations, %d objects "
            "(%d value bytes on disk, %d held in memory), %d consensus instances, %d collected",
            server_id,
            len(records),
            time.perf_counter() - started,
            len(self.core.configs),
            st.objects,
            st.stored_bytes,
            self.core.value_bytes_in_memory(),
            len(self.core.acceptors),
            len(self.core.collected),
        )
        del records
        self._log_damage()
        self.connections: set[_Conn] = set()
        self._by_activity: OrderedDict[_Conn, None] = OrderedDict()
        """Admitted connections, least recently active first."""
        self._by_address: dict[str, OrderedDict[_Conn, None]] = {}
        self._partials: dict[_Conn, None] = {}
        """Connections with an incomplete frame (their deadlines are checked by the sweeper)."""
        self.partial_bytes = 0
        """Bytes of incomplete frames above ``small_frame_bytes``, all connections together."""
        self._sweeper: asyncio.TimerHandle | None = None
        self._handshakes: set[asyncio.Task[None]] = set()
        """TLS handshakes in progress (each one's connection is admitted already)."""
        self._listeners: list[socket.socket] = []
        """TLS: the listening sockets (:meth:`_accept`); plaintext uses ``_server``."""
        self._accepters: list[asyncio.Task[None]] = []
        self._server: asyncio.Server | None = None
        self._stopped: asyncio.Event | None = None
        self.fatal: BaseException | None = None
        self.metrics: ServerMetrics | None = None
        """Prometheus metrics (:mod:`aresdsm.metrics`); None (the default) costs nothing."""
        self._barrier: asyncio.Future[None] | None = None
        """The commit the replies in ``_held`` wait for (one done-callback per commit)."""
        self._held: list[_Held] = []

    def enable_metrics(self) -> ServerMetrics:
        from .metrics import ServerMetrics

        if self.metrics is None:
            self.metrics = ServerMetrics(self)
        return self.metrics

    def _log_damage(self) -> None:
        """Once, at start-up: what the disk lost (the server no longer answers for it)."""
        core = self.core
        lost = [f"object {g}/{c}/{k}" for g, c, k in sorted(core.damaged)]
        lost += [f"state of {g}/{c}" for g, c in sorted(core.damaged_instances)]
        lost += [f"configuration {c}" for c in sorted(core.damaged_configs)]
        for what in lost[:100]:
            log.error("damaged on disk, not answered for until repaired: %s", what)
        if len(lost) > 100:
            log.error("... and %d more damaged items (see `ares status`)", len(lost) - 100)

    def bump(self, name: str) -> None:
        self.core.counters[name] = self.core.counters.get(name, 0) + 1

    def _unauthorized(
        self, conn: _Conn, rid: int, body: Request, need: str, problem: str | None = None
    ) -> None:
        """``unauthorized``: the connection's role is below what ``body`` needs, or (``problem``)
        a value it carries has no valid writer MAC (§13)."""
        self.bump("unauthorized")
        who = conn.identity.describe() if conn.identity is not None else "plaintext client"
        have = conn.identity.role if conn.identity is not None else None
        if problem is None:
            why = f"{type(body).__name__} needs role {need}; this client's role is {have or 'none'}"
        else:
            why = f"{type(body).__name__} refused: {problem}"
        if not conn.refusal_logged:  # once per connection: a client cannot flood the log
            conn.refusal_logged = True
            log.warning(
                "unauthorized: %s from %s: %s (further refusals on this connection are "
                "counted, not logged)",
                who,
                conn.peer,
                why,
            )
            if self.audit is not None:
                self.audit.record(who=who, peer=conn.peer_text, req=body, outcome="unauthorized")
        conn.send(rid, ErrorReply("unauthorized", why))

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
            log.info(
                "server %s: installed the initial configuration %s", self.server_id, initial.id
            )

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        try:
            if self.tls is None:
                self._server = await loop.create_server(lambda: _Conn(self), self.host, self.port)
                sock = self._server.sockets[0]
            else:  # plain TCP listeners: connections are admitted before their handshake
                self._listeners = await _listen(self.host, self.port)
                sock = self._listeners[0]
                self._accepters = [
                    loop.create_task(self._accept(listener)) for listener in self._listeners
                ]
        except OSError as e:  # port in use, unresolvable host, ...: one line, not a traceback
            host = f"[{self.host}]" if ":" in self.host else self.host
            raise ConfigurationError(
                f"cannot listen on {host}:{self.port}: {e.strerror or e}"
            ) from None
        self.port = sock.getsockname()[1]
        if self.deny.path is not None:
            self._deny_task = loop.create_task(self._watch_deny_list())
        log.info(
            "server %s listening on %s:%d, %s (%s, max %d connections, %d per address)",
            self.server_id,
            self.host,
            self.port,
            "mutual TLS" if self.tls is not None else "PLAINTEXT (insecure)",
            type(loop).__module__.split(".")[0],
            self.limits.max_connections,
            self.limits.max_connections_per_address,
        )
        self._schedule_sweep()

    def handle(self, conn: _Conn, env: Envelope) -> None:
        if not isinstance(env.body, _REQUEST_TYPES):
            self.bump("bad-requests")
            conn.send(
                env.rid, ErrorReply("bad-request", f"{type(env.body).__name__} is not a request")
            )
            return
        body: Request = env.body  # type: ignore[assignment]  # (checked above)
        if conn.level < ADMIN_LEVEL:  # (an admin may send every request: refusal() says None)
            need = refusal(body, self.core, conn.level, self.admin_key, self.write_keys)
            if need is not None and not self.broken_skip_authorization:
                self._unauthorized(conn, env.rid, body, need)
                return
        if self.check_value_macs and isinstance(body, _DATA_WRITES):
            problem = value_refusal(body, self.core, self.write_keys)
            if problem is not None and not self.broken_skip_authorization:
                self.bump("refused-value-mac")
                self._unauthorized(conn, env.rid, body, "", problem)
                return
        if isinstance(body, GetStats):  # O(1): running totals of the core, no storage scan
            if self.audit is not None:
                self._audit(conn, body, "Stats")
            conn.send(env.rid, self.core.stats())
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
        if m is not None and isinstance(body, WriteConfig):
            inst = (body.group, body.config_id)
            collected, before = len(self.core.collected), self.core.nextc.get(inst)
        span = tracing.start_server_span(body, env.trace, self.server_id) if env.trace else None
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
        if m is not None and isinstance(body, WriteConfig):
            m.state_changed(collected, before, self.core.nextc.get(inst))
        if self.audit is not None and type(body) not in _NEVER_AUDITED and is_admin_operation(body):
            self._audit(conn, body, _outcome(reply))
        if writes:
            self.storage.submit(writes)
            if not isinstance(body, _DATA_WRITES) and log.isEnabledFor(logging.INFO):
                for level, event in state_events(writes):
                    log.log(level, "server %s: %s", self.server_id, event)
        if isinstance(reply, VALUE_REPLIES):
            try:
                reply, pinned = self._open_values(reply)
            except Exception as exc:  # a value the core refers to is unreadable: fail-stop
                tracing.fail_server_span(span, exc)
                self._fail(exc, bug=not isinstance(exc, StorageError))
                return
            if pinned is not None:
                self._reply_after_read(
                    conn, env.rid, reply, pinned, (type(body).__name__, started, span)
                )
                return
        barrier = self.storage.barrier()
        if barrier is None:
            conn.send(env.rid, reply)
            if m is not None:
                m.request_done(type(body).__name__, reply, started)
            if span is not None:
                tracing.end_server_span(span, reply)
            return
        # encoded now: its size counts against the connection's reply budget while it waits
        bufs = conn.encode(env.rid, reply)
        size = sum(map(len, bufs))
        conn.pending += 1
        conn.reply_bytes += size
        t = conn.transport
        if t is not None and (
            conn.pending >= self.max_in_flight
            or conn.reply_bytes + conn.out_bytes + t.get_write_buffer_size()
            >= self.limits.max_conn_reply_bytes
        ):
            conn.update_reading()  # (a limit may be reached; nothing else changed)
        extra = None
        if m is not None or span is not None:
            kind = type(body).__name__
            extra = (kind, reply, started, span, tracing.start_child("storage-wait", span))
        # one done-callback per commit releases every reply that waited for it
        if barrier is not self._barrier:
            self._barrier = barrier
            self._held = []
            barrier.add_done_callback(functools.partial(self._durable, self._held))
        self._held.append((conn, bufs, size, extra))

    def _durable(self, held: list[_Held], fut: asyncio.Future[None]) -> None:
        """A commit is durable (or failed): send the replies that waited for it."""
        if self._barrier is fut:
            self._barrier = None
        failed = fut.exception() if not fut.cancelled() else RuntimeError("commit cancelled")
        m = self.metrics
        for conn, bufs, size, extra in held:
            if failed is None:
                conn.release(bufs, size)
            else:
                conn.request_done(size)
            if extra is None:
                continue
            kind, reply, started, span, wait = extra
            if wait is not None:
                wait.end()
            if failed is not None:
                tracing.fail_server_span(span, failed)
                continue
            if m is not None:
                m.request_done(kind, reply, started)
            if span is not None:
                tracing.end_server_span(span, reply)
        if failed is not None:
            self._fail(failed)

    def _open_values(self, reply: Reply) -> tuple[Reply, dict[ValueRef, Any] | None]:
        """The values ``reply`` refers to, as of the core's state that made it (now, before
        another request changes the core; :mod:`aresdsm.storage.values`): the reply resolved
        if every value was at hand (pending writes, small rows), else the reply and each
        reference's bytes or :class:`PinnedValue`, for :meth:`_reply_after_read` to read off
        the event loop. A damaged value makes the object damaged and the reply ``damaged``.

        Test-only ``broken_late_value_read``: nothing is read now; every value is read when the
        reply is sent -- the newest value of its record, not the one the core answered with."""
        if self.broken_late_value_read:
            refs = refs_in(reply)
            if refs:
                return reply, dict.fromkeys(refs, _LATE)
        got: dict[ValueRef, Any] = {}
        pinned = False

        def open_value(ref: ValueRef) -> bytes | memoryview:
            nonlocal pinned
            v = got.get(ref)
            if v is None:
                v = got[ref] = self.storage.open_value(ref)
            if isinstance(v, PinnedValue):
                pinned = True
                return b""  # (this resolution is dropped: the reply waits for the read)
            return v

        try:
            resolved = resolve(reply, open_value)  # one pass over the reply when nothing pins
        except DamagedValue as e:
            _release(got)
            return self._damaged(e), None
        except BaseException:
            _release(got)
            raise
        return (reply, got) if pinned else (resolved, None)

    def _damaged(self, e: DamagedValue) -> Reply:
        log.error(
            "damaged on disk, not answered for until repaired: %s/%s/%s: %s",
            e.damaged.group,
            e.damaged.config_id,
            e.damaged.key.replace("\x00", "/"),
            e.damaged.reason,
        )
        return self.core.mark_damaged(e.damaged)

    def _reply_after_read(
        self,
        conn: _Conn,
        rid: int,
        reply: Reply,
        got: dict[ValueRef, Any],
        info: tuple[str, float, Any],
    ) -> None:
        """Send ``reply`` once its pinned values are read (in the storage's value-reading
        threads: a large value's read and checksum stall no other request) and everything
        applied before it is durable (the barrier of now, as for every reply). Its values'
        bytes count against the connection's reply budget from now on. Replies on one
        connection may leave out of order: the client matches them by request id."""
        pinned = [v for v in got.values() if isinstance(v, PinnedValue)]
        barrier = self.storage.barrier()
        size = sum(len(r) for r in got)
        conn.pending += 1
        conn.reply_bytes += size
        t = conn.transport
        if t is not None and (
            conn.pending >= self.max_in_flight
            or conn.reply_bytes + conn.out_bytes + t.get_write_buffer_size()
            >= self.limits.max_conn_reply_bytes
        ):
            conn.update_reading()
        read = self.storage.read_pinned(pinned) if pinned else None
        task = asyncio.get_running_loop().create_task(
            self._finish_read(conn, rid, reply, got, read, barrier, size, info)
        )
        self._reading.add(task)
        task.add_done_callback(self._reading.discard)

    async def _finish_read(
        self,
        conn: _Conn,
        rid: int,
        reply: Reply,
        got: dict[ValueRef, Any],
        read: asyncio.Future[list[bytes | memoryview]] | None,
        barrier: asyncio.Future[None] | None,
        size: int,
        info: tuple[str, float, Any],
    ) -> None:
        kind, started, span = info
        try:
            if read is not None:
                try:
                    values = iter(await read)
                except DamagedValue as e:
                    reply = self._damaged(e)
                else:
                    for ref, v in got.items():
                        if isinstance(v, PinnedValue):
                            got[ref] = next(values)
                    reply = resolve(reply, got.__getitem__)
        except asyncio.CancelledError:  # (the server stops)
            conn.request_done(size)
            raise
        except Exception as exc:  # a value unreadable other than damaged: fail-stop
            conn.request_done(size)
            tracing.fail_server_span(span, exc)
            self._fail(exc, bug=not isinstance(exc, StorageError))
            return
        try:
            if barrier is not None:
                await asyncio.shield(barrier)
            if read is None:  # broken_late_value_read: the newest values, read now
                reply = resolve(reply, self.storage.read_value)
        except asyncio.CancelledError:
            conn.request_done(size)
            raise
        except Exception as exc:  # the commit failed: fail-stop, nothing is answered
            conn.request_done(size)
            tracing.fail_server_span(span, exc)
            self._fail(exc)
            return
        bufs = conn.encode(rid, reply)
        conn.write(bufs)  # before request_done: the bytes stay counted as held
        conn.request_done(size)
        if self.metrics is not None:
            self.metrics.request_done(kind, reply, started)
        if span is not None:
            tracing.end_server_span(span, reply)

    def _audit(self, conn: _Conn, body: Request, outcome: str) -> None:
        assert self.audit is not None
        who = conn.identity.describe() if conn.identity is not None else "plaintext client"
        self.audit.record(who=who, peer=conn.peer_text, req=body, outcome=outcome)

    # -- connection limits (aresdsm.limits) -----------------------------------------------------

    def now(self) -> float:
        return time.monotonic()

    def admit(self, conn: _Conn) -> bool:
        """Admit a new connection within ``max_connections`` and the per-address limit: at a
        limit, the connection of that scope idle longest (if idle at least
        ``evict_idle_after_s``) is closed to make room, else the new one is refused (False).
        With TLS this runs before the handshake: a connection still in its handshake counts
        (and, idle, may be evicted)."""
        limits = self.limits
        now = self.now()
        peers = self._by_address.get(conn.peer)
        if (
            peers is not None
            and len(peers) >= limits.max_connections_per_address
            and not self._evict(peers, now, f"address {conn.peer}")
        ):
            self._refuse(conn, f"{len(peers)} connections from this address")
            return False
        if len(self._by_activity) >= limits.max_connections and not self._evict(
            self._by_activity, now, "server"
        ):
            self._refuse(conn, f"{len(self._by_activity)} connections open")
            return False
        conn.admitted = True
        conn.last_active = now
        self.connections.add(conn)
        self._by_activity[conn] = None
        self._by_address.setdefault(conn.peer, OrderedDict())[conn] = None
        self.bump("connections")
        return True

    async def _accept(self, listener: socket.socket) -> None:
        """TLS: accept plain TCP connections, admit each one (:meth:`admit`: the connection
        limits, eviction) and only then start its handshake, under ``handshake_timeout_s``. (The
        loop's own TLS listener would hand a connection to the server only after its handshake,
        so half-open handshakes would escape every limit.)"""
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, addr = await loop.sock_accept(listener)
            except OSError as e:  # out of descriptors, ...: the listener stays, try again
                self.bump("accept-errors")
                self.refusals.warning(f"cannot accept a connection: {e.strerror or e}")
                await asyncio.sleep(0.1)
                continue
            conn = _Conn(self)
            conn.set_peer(addr)
            if not self.admit(conn):
                _reset(sock)
                continue
            with contextlib.suppress(OSError):  # small replies go out at once (as create_server)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            task = loop.create_task(self._handshake(conn, sock))
            conn.handshake = task
            self._handshakes.add(task)
            task.add_done_callback(self._handshakes.discard)

    async def _handshake(self, conn: _Conn, sock: socket.socket) -> None:
        assert self.tls is not None
        try:
            await asyncio.get_running_loop().connect_accepted_socket(
                lambda: conn,
                sock,
                ssl=self.tls,
                ssl_handshake_timeout=self.limits.handshake_timeout_s,
            )
        except asyncio.CancelledError:  # dropped (evicted, stopping) during the handshake
            self.forget(conn)
            _reset(sock)
            raise
        except Exception as e:  # (no certificate, another CA, not TLS, timed out, reset)
            self.bump("tls-handshakes-failed")
            log.debug("TLS handshake with %s failed: %s", conn.peer_text, e)
            self.forget(conn)
            _reset(sock)

    def _evict(self, scope: OrderedDict[_Conn, None], now: float, what: str) -> bool:
        for victim in itertools.islice(scope, 8):  # least recently active first
            if now - victim.last_active < self.limits.evict_idle_after_s:
                return False
            if victim.idle():
                self.bump("connections-evicted")
                self.refusals.warning(
                    f"connection limit of the {what} reached: closing the connection from "
                    f"{victim.peer} idle for {now - victim.last_active:.1f} s"
                )
                self._drop(victim)
                return True
        return False

    def _refuse(self, conn: _Conn, why: str) -> None:
        self.bump("connections-refused")
        self.refusals.warning(f"refused a connection from {conn.peer}: {why}")
        if conn.transport is not None:
            conn.transport.abort()

    def _drop(self, conn: _Conn) -> None:
        """Close a connection now (a TLS one in its handshake too) and stop counting it."""
        self.forget(conn)
        if conn.transport is not None:
            conn.transport.abort()
        elif conn.handshake is not None:
            conn.handshake.cancel()

    def forget(self, conn: _Conn) -> None:
        if not conn.admitted:
            return
        conn.admitted = False
        self.connections.discard(conn)
        self._by_activity.pop(conn, None)
        peers = self._by_address.get(conn.peer)
        if peers is not None:
            peers.pop(conn, None)
            if not peers:
                del self._by_address[conn.peer]
        self.partial_bytes -= conn.partial
        conn.partial = 0
        conn.frame_started = None
        self._partials.pop(conn, None)

    def touch(self, conn: _Conn) -> None:
        if conn.admitted:
            conn.last_active = self.now()
            self._by_activity.move_to_end(conn)
            self._by_address[conn.peer].move_to_end(conn)

    def track_partial(self, conn: _Conn, completed: bool) -> bool:
        """Account the connection's incomplete frame after received bytes were split into
        frames; False (and the connection closed) if the server-wide budget is exceeded."""
        buffered = conn.frames.buffered
        if not buffered:
            if conn.frame_started is not None:
                conn.frame_started = None
                self._partials.pop(conn, None)
        elif conn.frame_started is None or completed:  # a new frame began
            conn.frame_started = self.now()
            self._partials[conn] = None
        counted = buffered if buffered > self.limits.small_frame_bytes else 0
        self.partial_bytes += counted - conn.partial
        conn.partial = counted
        if counted and self.partial_bytes > self.limits.max_partial_frame_bytes_total:
            self.bump("frames-over-budget")
            self.refusals.warning(
                f"closing the connection from {conn.peer}: incomplete frames hold "
                f"{self.partial_bytes} bytes, over max_partial_frame_bytes_total="
                f"{self.limits.max_partial_frame_bytes_total}"
            )
            self._drop(conn)
            return False
        return True

    def _schedule_sweep(self) -> None:
        limits = self.limits
        tick_s = max(0.05, min(1.0, limits.idle_timeout_s / 4, limits.frame_timeout_s / 4))
        self._sweeper = asyncio.get_running_loop().call_later(tick_s, self._sweep)

    def _sweep(self) -> None:
        """Close connections idle for ``idle_timeout_s`` and those whose incomplete frame is
        older than ``frame_timeout_s`` (not counting time their reading was paused by us)."""
        now = self.now()
        limits = self.limits
        for conn in list(itertools.islice(self._by_activity, 1000)):
            if now - conn.last_active < limits.idle_timeout_s:
                break
            if conn.idle():
                self.bump("connections-idle-closed")
                log.debug("closing the connection from %s: idle", conn.peer)
                self._drop(conn)
            elif conn.writing_paused:  # its replies have not moved for idle_timeout_s
                self.bump("connections-stalled-closed")
                self.refusals.warning(
                    f"closing the connection from {conn.peer}: it has not read its replies "
                    f"for {limits.idle_timeout_s} s"
                )
                self._drop(conn)
            else:
                self.touch(conn)  # busy (waiting for us): not idle
        for conn in list(self._partials):
            started = conn.frame_started
            if started is None:
                self._partials.pop(conn, None)
            elif not conn.paused and now - started > limits.frame_timeout_s:
                self.bump("frames-timed-out")
                self.refusals.warning(
                    f"closing the connection from {conn.peer}: a frame of "
                    f"{conn.frames.buffered} bytes so far not complete within "
                    f"frame_timeout_s={limits.frame_timeout_s}"
                )
                self._drop(conn)
        self._schedule_sweep()

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
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if self._server is not None:
            self._server.close()
        for task in [*self._accepters, *self._handshakes]:
            task.cancel()
        self._accepters = []
        for listener in self._listeners:
            listener.close()
        self._listeners = []
        for c in list(self.connections):
            if c.transport is not None:
                c.flush()  # replies queued in this iteration go out before the close
                c.transport.close()
        with contextlib.suppress(Exception):
            await self.storage.drain()
        for task in self._reading:  # (their connections are closed: nobody to answer)
            task.cancel()
        if self._reading:
            await asyncio.gather(*self._reading, return_exceptions=True)
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


_LATE = object()
"""``broken_late_value_read``: a value not read when the core answered."""


def _release(got: dict[ValueRef, Any]) -> None:
    for v in got.values():
        if isinstance(v, PinnedValue):
            v.release()


def _outcome(reply: Any) -> str:
    """How the audit log names a reply: its type, or the error code."""
    if isinstance(reply, ErrorReply):
        return f"error {reply.code}"
    return type(reply).__name__


LISTEN_BACKLOG = 100
"""Connections the kernel queues before the server accepts them (asyncio's default)."""


async def _listen(host: str, port: int) -> list[socket.socket]:
    """Listening sockets for ``host``:``port`` (every address it resolves to), non-blocking;
    OSError as ``create_server`` raises it."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    out: list[socket.socket] = []
    try:
        for family, kind, proto, _, resolved in dict.fromkeys(infos):
            s = socket.socket(family, kind, proto)
            out.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind((resolved[0], port, *resolved[2:]) if port else resolved)
            port = s.getsockname()[1]  # (port 0: every address on the port the first one got)
            s.listen(LISTEN_BACKLOG)
            s.setblocking(False)
    except OSError:
        for s in out:
            s.close()
        raise
    return out


def _reset(sock: socket.socket) -> None:
    """Close an accepted socket at once (RST: no lingering state for a refused peer)."""
    if sock.fileno() < 0:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def open_storage(kind: str, data_dir: str | Path) -> Storage:
    if kind == "memory":
        return MemoryStorage()
    if kind == "sqlite":
        return SqliteStorage(Path(data_dir) / "state.sqlite3")
    raise ValueError(f"unknown storage engine {kind!r}; expected 'sqlite' or 'memory'")


def handshake_problem(ident: Identity, hello: Hello) -> str | None:
    """Why a Hello does not match this server (one line), or None."""
    if hello.version != PROTOCOL_VERSION:
        return f"protocol version {hello.version}, this server speaks {PROTOCOL_VERSION}"
    if hello.cluster_id and hello.cluster_id != ident.cluster_id:
        return (
            f"this is server {ident.server_id} of cluster {ident.cluster_id}; the client's "
            f"cluster file names cluster {hello.cluster_id} (a cluster file of another cluster)"
        )
    if hello.server_id != ident.server_id:
        return f"this is server {ident.server_id}, not {hello.server_id} (wrong address?)"
    if hello.initial_digest != ident.initial_digest:
        return (
            f"server {ident.server_id} was created with another initial configuration than the "
            "client's cluster file names (an edited or foreign cluster file)"
        )
    if hello.incarnation and hello.incarnation != ident.incarnation:
        return (
            f"this is incarnation {ident.incarnation} of server {ident.server_id}; the client's "
            f"configuration names incarnation {hello.incarnation} (the server's data directory "
            "was re-created: it lost the state that configuration counts on)"
        )
    return None


def server_identity(
    *,
    storage_kind: str,
    data_dir: str | Path,
    cluster_id: str,
    server_id: str,
    initial: Configuration,
    new: NewMember | None,
) -> Identity:
    """The identity to start with: from the data directory (sqlite), or -- the memory engine
    keeps nothing over a restart -- a new incarnation at every start."""
    if storage_kind == "memory":
        return Identity(cluster_id, server_id, new_uid(), initial_digest(initial))
    return open_data_dir(
        data_dir, cluster_id=cluster_id, server_id=server_id, initial=initial, new=new
    )


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
    limits: ServerLimits | None = None,
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    identity: Identity | None = None,
    metrics_address: tuple[str, int] | None = None,
) -> int:
    """Run a server until SIGTERM/SIGINT; returns the process exit code. ``tls``: this server's
    identity (mutual TLS); None runs plaintext (the caller asked for --insecure). The audit log
    goes to ``audit_log``, default ``<data_dir>/audit.log``.

    ``metrics_address``: (host, port) of the HTTP endpoint serving ``/metrics``, ``/healthz``
    and ``/readyz`` (:mod:`aresdsm.metrics`); None: no endpoint."""
    from .metrics import MetricsHttp

    context = server_context(tls) if tls is not None else None
    log.info("server %s starting (pid %d, data directory %s)", server_id, os.getpid(), data_dir)
    storage = open_storage(storage_kind, data_dir)
    try:
        server = Server(
            server_id=server_id,
            host=host,
            port=port,
            storage=storage,
            tls=context,
            deny=DenyList(deny_file),
            admin_key=load_key(tls.admin_key) if tls is not None and tls.admin_key else None,
            write_keys=(
                load_keys(tls.write_key, "write key") if tls is not None and tls.write_key else ()
            ),
            audit=AuditLog(audit_log or Path(data_dir) / "audit.log", server_id),
            allow_remote_plaintext=allow_remote_plaintext,
            limits=limits,
            max_frame_bytes=max_frame_bytes,
            identity=identity,
        )
    except BaseException:
        storage.close()
        raise
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
        await asyncio.to_thread(_write_private, Path(ready_file), f"{server.port}\n")
    await server.wait_closed()
    if http is not None:
        await http.close()
    log.info("server %s stopped%s", server_id, " after a failure" if server.fatal else "")
    return 1 if server.fatal is not None else 0
