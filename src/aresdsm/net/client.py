"""Client side of the TCP transport, and :class:`TcpChannel`, the real :class:`Channel`.

One persistent connection per server (:class:`PeerConnection`), requests multiplexed on it by
request id. Sending never blocks the caller: a request is queued while the connection is being
(re)established or while ``max_in_flight`` requests are outstanding. A connection that cannot be
established fails its queued requests at once, so a round against a crashed server learns quickly
that this server will not answer; the next attempt waits ``backoff_s`` (doubling up to
``max_backoff_s``) after the failed one, and requests sent meanwhile wait for it (within their
round's deadline) rather than fail, so a restarted server is picked up again. A request whose
round is over (:meth:`PeerConnection.cancel`) leaves the queue, and the queue holds at most
``max_queued_requests``: a server that accepts connections but never answers cannot make it grow.

Handshake (issue 10): when the channel knows its cluster (``hello``), the first frame on every new
connection is a :class:`~aresdsm.wire.messages.Hello` naming the cluster, the server expected at
that address (and its incarnation uid, when the configuration names one) and the initial
configuration's digest; requests wait until the server's :class:`Welcome` matched. A refusal, or
a Welcome that does not match, fails the waiting requests with a one-line error (a round counts
it like a missing reply), closes the connection and backs off like a failed connect. Connections
are kept per (address, server id, uid): a configuration that names another incarnation at the
same address gets a connection that checks it.

A server's replies are trusted only as far as the frame format: ``max_in_flight`` counts the
request ids written and not yet answered, so a duplicate or unsolicited reply changes nothing.

With TLS (``options.tls``, docs/protocol.md §13) every connection is mutual TLS 1.3: the
server's chain is verified against the cluster CA during the handshake, and before any request
is written the certificate must name the server id the configuration names for that address; a
server that presents another identity is treated like one that cannot be reached (its requests
fail, the next attempt backs off). The client presents its own certificate; its role decides
whether it sends InstallConfig to a server that does not know a configuration (admin only).

A round (:meth:`TcpChannel.round`) registers one callback per server and resolves a single future
when a quorum answered, when a quorum has become impossible (QuorumUnavailable), or at its deadline
(OperationTimeout). Late replies of finished rounds are dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import itertools
import logging
import ssl
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Iterator
from typing import TYPE_CHECKING, Any, TypeVar, cast

import msgspec

from .. import tracing
from ..config import ClientOptions, Configuration, ServerInfo, TlsFiles
from ..errors import FrameError, OperationError, OperationTimeout, QuorumUnavailable, ServerError
from ..identity import PROTOCOL_VERSION
from ..protocol.channel import ConfigurationObsolete, RequestFor
from ..security.macs import ValueSigner, entry_mac, load_key
from ..security.tls import check_server_identity, client_context, own_identity, role_level
from ..testing import NO_FAULTS, Broken
from ..wire.codec import Decoder, Encoder, FrameBuffer
from ..wire.messages import (
    Envelope,
    ErrorReply,
    GetGroup,
    Hello,
    InstallConfig,
    NextEntry,
    Obsolete,
    Ping,
    PutBatch,
    PutData,
    Reply,
    Request,
    Welcome,
    WriteConfig,
)

if TYPE_CHECKING:
    from ..metrics import ClientMetrics

log = logging.getLogger("aresdsm.net")
R = TypeVar("R", bound=Reply)
T = TypeVar("T")
E = TypeVar("E", bound=BaseException)
Callback = Callable[[Reply | BaseException], None]

MAX_REMEMBERED_MACS = 4096
"""Admin MACs of configuration entries a client keeps for its write-backs (oldest dropped)."""
CLOSE_TIMEOUT_S = 1.0
"""How long closing a client waits for its connections to be gone before aborting them."""
DEFAULT_MAX_QUEUED_REQUESTS = 65536
"""Requests that may wait for one connection (to be established, or for max_in_flight)."""
MAX_CACHED_CONFIGURATIONS = 256
"""Configurations whose connection lists a channel keeps (all dropped when exceeded)."""
HELLO_RID = 0
"""Request id of the handshake (requests are numbered from 1)."""


class ClusterIdentity(tuple[str, str]):
    """(cluster id, initial-configuration digest) a client proves in every handshake."""

    __slots__ = ()

    def __new__(cls, cluster_id: str, initial_digest: str) -> ClusterIdentity:
        return super().__new__(cls, (cluster_id, initial_digest))

    @property
    def cluster_id(self) -> str:
        return self[0]

    @property
    def initial_digest(self) -> str:
        return self[1]


_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "aresdsm_deadline", default=None
)
"""The deadline (event-loop time) of the operation the current task works for: every round and
request ends by it, whatever its own timeout (the whole operation has one deadline)."""


@contextlib.contextmanager
def deadline(timeout_s: float) -> Iterator[float]:
    """Run the block's rounds and requests under one deadline ``timeout_s`` from now (or the
    enclosing one, if earlier). Yields the deadline (loop time). Tasks created inside inherit it."""
    now = asyncio.get_running_loop().time()
    outer = _DEADLINE.get()
    at = now + timeout_s if outer is None else min(outer, now + timeout_s)
    token = _DEADLINE.set(at)
    try:
        yield at
    finally:
        _DEADLINE.reset(token)


class _Cut:
    """The timer of :func:`within`: cancels the operation's task at its deadline."""

    __slots__ = ("fired", "task")

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self.task = task
        self.fired = False

    def __call__(self) -> None:
        self.fired = True
        self.task.cancel()


async def within(coro: Coroutine[Any, Any, T], timeout_s: float, timed_out: Callable[[], E]) -> T:
    """Await ``coro`` under one deadline ``timeout_s`` from now (or the enclosing one, if
    earlier): its rounds and requests end by it (:func:`remaining_s`), and the call is cut off
    at it with the exception ``timed_out()`` returns. What ``deadline()`` and
    ``asyncio.timeout_at`` do together, with one loop timer and no context-manager objects --
    those cost about 8 % of a read's client CPU (issue 18, docs/benchmarks.md)."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    outer = _DEADLINE.get()
    at = loop.time() + timeout_s
    if outer is not None and outer < at:
        at = outer
    cut = _Cut(task)
    cancelling = task.cancelling()
    timer = loop.call_at(at, cut)
    token = _DEADLINE.set(at)
    try:
        return await coro
    except asyncio.CancelledError:
        # ours, and nobody else's (the caller's own cancellation wins), as asyncio.timeout does
        if cut.fired:
            cut.fired = False
            if task.uncancel() <= cancelling:
                raise timed_out() from None
        raise
    finally:
        timer.cancel()
        _DEADLINE.reset(token)
        if cut.fired:  # fired as the coroutine finished anyway: take our cancellation back
            task.uncancel()


def context_without_deadline() -> contextvars.Context:
    """A copy of the current context (trace context included) under no operation's deadline:
    for background work started by an operation that must outlive it."""
    ctx = contextvars.copy_context()
    ctx.run(_DEADLINE.set, None)
    return ctx


def remaining_s(default_s: float) -> float:
    """Time left until the current deadline, or ``default_s`` when none is set (at most that)."""
    at = _DEADLINE.get()
    if at is None:
        return default_s
    return min(default_s, at - asyncio.get_running_loop().time())


class PeerConnection(asyncio.Protocol):
    """A persistent, multiplexed connection to one server."""

    def __init__(
        self,
        server: ServerInfo,
        *,
        options: ClientOptions,
        encoder: Encoder,
        decoder: Decoder,
        initial_backoff_s: float = 0.05,
        max_backoff_s: float = 1.0,
        max_queued_requests: int = DEFAULT_MAX_QUEUED_REQUESTS,
        tls: ssl.SSLContext | None = None,
        hello: Hello | None = None,
        faults: Broken = NO_FAULTS,
    ) -> None:
        self.server = server
        self.tls = tls
        """Client TLS context (mutual TLS; the server id is checked on connect); None: plain."""
        self.faults = faults
        """Test-only faults (``broken_skip_server_id_check``: talk to any server the CA vouched
        for, whatever id it has)."""
        self.options = options
        self.hello = hello
        self._ready = False
        """The current connection passed the handshake (or there is none to do)."""
        self.welcome: Welcome | None = None
        """The server's identity from the last handshake."""
        self._encoder = encoder
        self._decoder = decoder
        self._frames = FrameBuffer(max_frame_bytes=options.max_frame_bytes)
        self._transport: asyncio.Transport | None = None
        self._connecting: asyncio.Task[None] | None = None
        # rid -> request; ordered (FIFO) and removable by rid, for cancel()
        self._waiting: OrderedDict[int, tuple[Request, dict[str, str] | None]] = OrderedDict()
        self._callbacks: dict[int, Callback] = {}
        self._outstanding: set[int] = set()
        """Request ids written on the current connection and not answered yet."""
        self.max_queued_requests = max_queued_requests
        self._initial_backoff_s = initial_backoff_s
        self._max_backoff_s = max_backoff_s
        self._backoff_s = initial_backoff_s
        self._retry_at = 0.0
        self._closed = False
        self._out: list[bytes | memoryview] = []
        """Request buffers written in this event-loop iteration, sent as one write (_flush)."""
        self._flush_scheduled = False
        self._closing: asyncio.Transport | None = None
        self._lost: asyncio.Future[None] | None = None
        self.requests_sent = 0
        self.bytes_sent = 0

    @property
    def in_flight(self) -> int:
        """Requests written on the current connection and not answered yet."""
        return len(self._outstanding)

    # -- sending -------------------------------------------------------------------------------

    def send(
        self, rid: int, req: Request, cb: Callback, trace: dict[str, str] | None = None
    ) -> None:
        if self._closed:
            cb(ConnectionError(f"connection to {self.server.id} is closed"))
            return
        if (
            self._transport is not None
            and self._ready
            and self.in_flight < self.options.max_in_flight
        ):
            self._callbacks[rid] = cb
            self._write(rid, req, trace)
            return
        if len(self._waiting) >= self.max_queued_requests:
            cb(
                OperationError(
                    f"{len(self._waiting)} requests already wait for server {self.server.id} "
                    f"(max_queued_requests={self.max_queued_requests})"
                )
            )
            return
        self._callbacks[rid] = cb
        self._waiting[rid] = (req, trace)
        if self._transport is None:
            self._ensure_connecting()

    def cancel(self, rid: int) -> None:
        """The caller no longer wants the reply: forget the callback and, if the request has not
        been written yet, the request (its round is over; sending it would only load the
        server). A written request stays counted in flight until it is answered."""
        self._callbacks.pop(rid, None)
        self._waiting.pop(rid, None)

    def _write(self, rid: int, req: Request, trace: dict[str, str] | None) -> None:
        """Encode a request and queue it: every request queued in one event-loop iteration (a
        round asks every server at once, many operations run at once) leaves in one
        ``writelines`` from ``call_soon`` -- after the callbacks already ready in this
        iteration, before the loop polls again, so a lone request waits for nothing
        (docs/design.md, "Coalesced writes")."""
        try:
            bufs = self._encoder.encode(Envelope(rid, req, trace))
        except FrameError as e:
            cb = self._callbacks.pop(rid, None)
            if cb is not None:
                cb(e)
            return
        self._outstanding.add(rid)
        self.requests_sent += 1
        self._out += bufs
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        out, self._out = self._out, []
        t = self._transport
        if out and t is not None and not t.is_closing():
            if self.tls is None:
                t.writelines(out)  # one writev; large values are not copied
            else:  # one buffer: TLS transports make a record of every buffer written
                t.write(b"".join(out))

    def _pump(self) -> None:
        while (
            self._waiting
            and self._transport is not None
            and self._ready
            and self.in_flight < self.options.max_in_flight
        ):
            rid, (req, trace) = self._waiting.popitem(last=False)
            self._write(rid, req, trace)

    # -- connecting ----------------------------------------------------------------------------

    def _ensure_connecting(self) -> None:
        if self._connecting is not None and not self._connecting.done():
            return
        self._connecting = asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        """Connect, after the back-off of the last failure if it has not passed yet. Requests
        queued meanwhile wait (their rounds have deadlines); a failed attempt fails them."""
        wait_s = self._retry_at - time.monotonic()
        if wait_s > 0:
            await asyncio.sleep(wait_s)
        host, port = self.server.host_port()
        loop = asyncio.get_running_loop()
        try:
            # TLS first (the server id is checked in connection_made, not the host name), then
            # the Hello handshake over it
            local_addr = (src, 0) if (src := self.options.source_host) else None
            if self.tls is None:
                connecting = loop.create_connection(lambda: self, host, port, local_addr=local_addr)
            else:
                connecting = loop.create_connection(
                    lambda: self,
                    host,
                    port,
                    ssl=self.tls,
                    server_hostname="",
                    ssl_handshake_timeout=self.options.connect_timeout_s,
                    local_addr=local_addr,
                )
            await asyncio.wait_for(connecting, timeout=self.options.connect_timeout_s)
        except (OSError, TimeoutError) as e:
            self._retry_at = time.monotonic() + self._backoff_s
            self._backoff_s = min(self._backoff_s * 2, self._max_backoff_s)
            self._fail_waiting(
                ConnectionError(
                    f"cannot connect to server {self.server.id} ({self.server.address}): {e}"
                )
            )

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._closed:
            transport.close()
            return
        if self.tls is not None and not self.faults.broken_skip_server_id_check:
            wrong = check_server_identity(transport, self.server.id)
            if wrong is not None:  # nothing is written to an impostor
                cast(asyncio.Transport, transport).abort()
                log.warning("refusing server at %s: %s", self.server.address, wrong)
                self._retry_at = time.monotonic() + self._backoff_s
                self._backoff_s = min(self._backoff_s * 2, self._max_backoff_s)
                self._fail_waiting(
                    ConnectionError(
                        f"refusing server {self.server.id} ({self.server.address}): {wrong}"
                    )
                )
                return
        self._transport = cast(asyncio.Transport, transport)
        self._frames = FrameBuffer(max_frame_bytes=self.options.max_frame_bytes)
        self._outstanding.clear()
        if self.hello is None:
            self._ready = True
            self._backoff_s = self._initial_backoff_s
            self._retry_at = 0.0
            self._pump()
            return
        self._ready = False
        try:
            self._transport.writelines(self._encoder.encode(Envelope(HELLO_RID, self.hello)))
        except FrameError as e:  # (ids too long to encode: refuse like the server would)
            self._refused(str(e))

    def _on_handshake(self, env: Envelope) -> None:
        body = env.body
        if env.rid != HELLO_RID:
            self._refused("the server answered before the handshake")
            return
        if isinstance(body, ErrorReply):
            self._refused(body.message)
            return
        if not isinstance(body, Welcome):
            self._refused(f"unexpected {type(body).__name__} in the handshake")
            return
        hello = self.hello
        assert hello is not None
        if body.server_id != self.server.id:
            self._refused(f"it is server {body.server_id}, not {self.server.id}")
            return
        if hello.cluster_id and body.cluster_id and body.cluster_id != hello.cluster_id:
            self._refused(f"it belongs to cluster {body.cluster_id}, not {hello.cluster_id}")
            return
        if self.server.uid and body.incarnation != self.server.uid:
            self._refused(
                f"it is incarnation {body.incarnation or '(none)'}, the configuration names "
                f"{self.server.uid} (its data directory was re-created)"
            )
            return
        self.welcome = body
        self._ready = True
        self._backoff_s = self._initial_backoff_s
        self._retry_at = 0.0
        self._pump()

    def _refused(self, why: str) -> None:
        """The handshake failed: fail what waits (one line), close, back off."""
        self._retry_at = time.monotonic() + self._backoff_s
        self._backoff_s = min(self._backoff_s * 2, self._max_backoff_s)
        if self._transport is not None:
            self._transport.close()
        self._fail_waiting(
            ConnectionError(
                f"server {self.server.id} ({self.server.address}) refused the connection: {why}"
            )
        )

    def _fail_waiting(self, exc: BaseException) -> None:
        waiting, self._waiting = self._waiting, OrderedDict()
        for rid in waiting:
            cb = self._callbacks.pop(rid, None)
            if cb is not None:
                cb(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)
        self._transport = None
        self._ready = False
        self._outstanding.clear()
        self._out = []  # (their requests fail below)
        err = ConnectionError(
            f"connection to server {self.server.id} lost" + (f": {exc}" if exc else "")
        )
        # Requests in flight on the lost connection get no reply; fail them so rounds move on.
        callbacks, self._callbacks = self._callbacks, {}
        for rid, cb in callbacks.items():
            if rid in self._waiting:
                self._callbacks[rid] = cb
            else:
                cb(err)
        if self._waiting and not self._closed:
            self._ensure_connecting()

    # -- receiving -----------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        try:
            bodies = self._frames.feed(data)
            for body in bodies:
                env = self._decoder.decode_body(body)
                if not self._ready:
                    if self._transport is None:
                        return
                    self._on_handshake(env)
                    continue
                if env.rid not in self._outstanding:
                    continue  # a duplicate or unsolicited reply: nothing asked for it
                self._outstanding.discard(env.rid)
                cb = self._callbacks.pop(env.rid, None)
                if cb is not None:
                    cb(env.body)  # type: ignore[arg-type]
        except FrameError as e:
            # A server that sends garbage is treated as a broken connection: every request on
            # it, written or waiting, fails now (nothing is left queued for a reconnect).
            if self._transport is not None:
                self._transport.close()
            callbacks, self._callbacks = self._callbacks, {}
            self._waiting.clear()
            for cb in callbacks.values():
                cb(e)
            return
        if self._waiting:
            self._pump()

    def close(self) -> None:
        self._closed = True
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
        if self._transport is not None:
            self._closing = self._transport
            self._lost = asyncio.get_running_loop().create_future()
            self._transport.close()
        self._fail_waiting(ConnectionError("client closed"))

    async def wait_closed(self, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        """Wait until the connection closed by :meth:`close` is gone (a TLS connection says
        goodbye first: close_notify); abort it after ``timeout_s``."""
        if self._lost is None or self._closing is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._lost), timeout_s)
        except TimeoutError:
            self._closing.abort()
            await asyncio.sleep(0)


class _Round:
    """Collects the replies of one round; resolves one future. Replies reach it through one
    small :class:`_ServerReply` per server, not a closure: a round allocates a future, a
    timer, this object and one callback object per server (issue 18)."""

    __slots__ = (
        "accept",
        "answers",
        "channel",
        "config",
        "errors",
        "expect",
        "fut",
        "n",
        "need",
        "peers",
        "reqs",
        "retried",
        "sent",
        "timer",
        "trace",
    )

    def __init__(
        self,
        fut: asyncio.Future[Any],
        need: int,
        n: int,
        expect: type,
        accept: Callable[[Any], bool] | None = None,
        channel: TcpChannel | None = None,
        config: Configuration | None = None,
        trace: dict[str, str] | None = None,
    ) -> None:
        self.fut = fut
        self.need = need
        self.n = n
        self.expect = expect
        self.accept = accept
        self.answers: list[tuple[ServerInfo, Reply]] = []
        self.errors: list[str] = []
        self.timer: asyncio.TimerHandle | None = None
        self.channel = channel
        self.config = config
        self.trace = trace
        self.peers: list[PeerConnection] = []
        """Per server (by index in the configuration): its connection ..."""
        self.reqs: list[Request] = []
        """... and the request sent to it."""
        self.sent: list[tuple[PeerConnection, int]] = []
        """Every (connection, request id) sent, retries included: cancelled when it ends."""
        self.retried: set[int] | None = None

    def deliver(self, i: int, reply: Reply | BaseException) -> None:
        """The reply of server ``i``. A server that does not know the configuration yet (it
        joined empty, docs/protocol.md §3) is sent the descriptor and the request again, once."""
        ch, c = self.channel, self.config
        assert ch is not None and c is not None
        req = self.reqs[i]
        ch._learn(req, reply)
        if (
            isinstance(reply, ErrorReply)
            and reply.code == "unknown-config"
            and ch.may_install
            and (self.retried is None or i not in self.retried)
            and not self.fut.done()
        ):
            if self.retried is None:
                self.retried = set()
            self.retried.add(i)
            peer = self.peers[i]
            peer.send(next(ch._rids), InstallConfig(c), _ignore, self.trace)
            rid = next(ch._rids)
            self.sent.append((peer, rid))
            ch.messages += 2
            peer.send(rid, req, _ServerReply(self, i), self.trace)
            return
        self.on_reply(c.servers[i], reply)

    def on_reply(self, server: ServerInfo, reply: Reply | BaseException) -> None:
        if self.fut.done():
            return
        if isinstance(reply, self.expect) and self.accept is not None and not self.accept(reply):
            # a value that does not match its digest: counted like a missing reply
            self.errors.append(f"{server.id}: corrupt reply (value does not match its digest)")
        elif isinstance(reply, self.expect):
            assert not isinstance(reply, BaseException)
            self.answers.append((server, reply))
            if len(self.answers) >= self.need:
                self.fut.set_result(self.answers)
            return
        elif isinstance(reply, Obsolete):
            self.fut.set_exception(ConfigurationObsolete(reply.next))
            return
        elif isinstance(reply, ErrorReply):
            self.errors.append(f"{server.id}: {reply.code}: {reply.message}")
        elif isinstance(reply, BaseException):
            self.errors.append(f"{server.id}: {reply}")
        else:
            self.errors.append(f"{server.id}: unexpected reply {type(reply).__name__}")
        if self.n - len(self.errors) < self.need:
            self.fut.set_exception(
                QuorumUnavailable(
                    f"{len(self.errors)} of {self.n} servers failed, a quorum needs {self.need}: "
                    + "; ".join(self.errors)
                )
            )


class _ServerReply:
    """The callback of one server's request in a round."""

    __slots__ = ("i", "rnd")

    def __init__(self, rnd: _Round, i: int) -> None:
        self.rnd = rnd
        self.i = i

    def __call__(self, reply: Reply | BaseException) -> None:
        self.rnd.deliver(self.i, reply)


class TcpChannel:
    """The real :class:`~aresdsm.protocol.channel.Channel` over TCP connections."""

    def __init__(self, options: ClientOptions, *, hello: ClusterIdentity | None = None) -> None:
        self.options = options
        self.tls = _context(options.tls) if options.tls is not None else None
        self.role = _own_role(options.tls) if options.tls is not None else "admin"
        """This client's role (from its certificate; plaintext: unchecked, so admin)."""
        self.may_install = role_level(self.role) >= role_level("admin")
        """Whether to send InstallConfig to a server that does not know a configuration."""
        tls = options.tls
        self.admin_key = (
            load_key(tls.admin_key)
            if tls is not None and tls.admin_key and self.may_install
            else None
        )
        """Admins sign the configuration entries they send (security.macs)."""
        self.signer = (
            ValueSigner(load_key(tls.write_key, "write key"))
            if tls is not None and tls.write_key and role_level(self.role) >= role_level("write")
            else None
        )
        """Writers (and admins) sign the values they send with the write key (security.macs);
        without it the channel sends the MAC the protocol forwards (a reader's write-back)."""
        self._macs: OrderedDict[tuple[str, str, str], bytes] = OrderedDict()
        """(group, predecessor, successor) -> the admin MAC replies carried, for write-backs."""
        self.faults: Broken = NO_FAULTS
        """Test-only faults of its connections (``broken_skip_server_id_check``)."""
        self.hello = hello
        """What every connection proves in its handshake; None: no handshake (raw tools)."""
        self._encoder = Encoder(max_frame_bytes=options.max_frame_bytes)
        self._decoder = Decoder()
        self._peers: dict[tuple[str, str, str], PeerConnection] = {}
        self._by_config: dict[int, tuple[Configuration, tuple[PeerConnection, ...]]] = {}
        """id(configuration) -> (it, its connections): see _peers_of."""
        self._rids = itertools.count(1)
        self.rounds = 0
        self.messages = 0
        self.rounds_by_phase: dict[str, int] = {}
        self.metrics: ClientMetrics | None = None
        """Round counters and latencies (set by the Store when it has metrics)."""

    def peer(self, server: ServerInfo) -> PeerConnection:
        key = (server.address, server.id, server.uid)
        p = self._peers.get(key)
        if p is None:
            hello = None
            if self.hello is not None:
                hello = Hello(
                    self.hello.cluster_id,
                    server.id,
                    self.hello.initial_digest,
                    PROTOCOL_VERSION,
                    server.uid,
                )
            p = PeerConnection(
                server,
                options=self.options,
                encoder=self._encoder,
                decoder=self._decoder,
                tls=self.tls,
                hello=hello,
                faults=self.faults,
            )
            self._peers[key] = p
        return p

    def _peers_of(self, c: Configuration) -> tuple[PeerConnection, ...]:
        """The connections to ``c``'s servers, in order: looked up once per configuration
        object (the chain views keep theirs), not per server per round (issue 18)."""
        hit = self._by_config.get(id(c))
        if hit is not None and hit[0] is c:
            return hit[1]
        peers = tuple(self.peer(s) for s in c.servers)
        if len(self._by_config) >= MAX_CACHED_CONFIGURATIONS:
            self._by_config.clear()
        self._by_config[id(c)] = (c, peers)  # holds c: its id is not reused meanwhile
        return peers

    async def identify(self, server: ServerInfo, *, timeout_s: float | None = None) -> Welcome:
        """Connect to ``server`` (handshake included) and return its identity."""
        await self.request(server, Ping(), timeout_s=timeout_s)
        welcome = self.peer(server).welcome
        if welcome is None:  # no handshake on this channel: nothing to report
            return Welcome("", server.id, "", PROTOCOL_VERSION)
        return welcome

    def round(
        self,
        c: Configuration,
        request: RequestFor,
        *,
        expect: type[R],
        phase: str,
        need: int | None = None,
        timeout_s: float | None = None,
        accept: Callable[[Any], bool] | None = None,
    ) -> Coroutine[Any, Any, list[tuple[ServerInfo, R]]]:
        """The round's coroutine itself when tracing is off (one coroutine frame less on every
        resumption of the operation, issue 18)."""
        need = c.quorum_size if need is None else need
        if not tracing.enabled():
            return self._round(c, request, expect, phase, need, timeout_s, None, accept)
        return self._traced_round(c, request, expect, phase, need, timeout_s, accept)

    async def _traced_round(
        self,
        c: Configuration,
        request: RequestFor,
        expect: type[R],
        phase: str,
        need: int,
        timeout_s: float | None,
        accept: Callable[[Any], bool] | None,
    ) -> list[tuple[ServerInfo, R]]:
        with tracing.span(phase, _round_attributes(c, need)):  # sets ares.outcome
            return await self._round(
                c, request, expect, phase, need, timeout_s, tracing.inject(), accept
            )

    async def _round(
        self,
        c: Configuration,
        request: RequestFor,
        expect: type[R],
        phase: str,
        need: int,
        timeout_s: float | None,
        trace: dict[str, str] | None,
        accept: Callable[[Any], bool] | None = None,
    ) -> list[tuple[ServerInfo, R]]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[list[tuple[ServerInfo, R]]] = loop.create_future()
        rnd = _Round(fut, need, c.n, expect, accept, self, c, trace)
        self.rounds += 1
        self.rounds_by_phase[phase] = self.rounds_by_phase.get(phase, 0) + 1
        peers, reqs, sent = rnd.peers, rnd.reqs, rnd.sent
        # one request for every server is sealed (signed) once, not once per server
        make = request if callable(request) else None
        same = self._seal(request) if not callable(request) else None
        rids = self._rids
        for i, (server, peer) in enumerate(zip(c.servers, self._peers_of(c), strict=True)):
            req = self._seal(make(i, server)) if make is not None else cast(Request, same)
            rid = next(rids)
            peers.append(peer)
            reqs.append(req)
            sent.append((peer, rid))
            self.messages += 1
            peer.send(rid, req, _ServerReply(rnd, i), trace)
            if fut.done():
                break
        # the round's own timeout, or the operation's deadline if earlier (remaining_s, inline)
        now = loop.time()
        at = now + (self.options.timeout_s if timeout_s is None else timeout_s)
        deadline = _DEADLINE.get()
        if deadline is not None and deadline < at:
            at = deadline
        if at <= now and not fut.done():
            _expire(rnd, phase, c, 0.0)
        if not fut.done():
            rnd.timer = loop.call_at(at, _expire, rnd, phase, c, at - now)
        m = self.metrics
        started = time.perf_counter() if m is not None else 0.0
        try:
            result = await fut
        except BaseException as e:
            if m is not None:
                m.round(phase, started, e)
            raise
        else:
            if m is not None:
                m.round(phase, started, None)
            return result
        finally:
            if rnd.timer is not None:
                rnd.timer.cancel()
            for peer, rid in sent:
                peer.cancel(rid)

    async def request(
        self, server: ServerInfo, req: Request, *, timeout_s: float | None = None
    ) -> Reply:
        """One request to one server (status, ping, stats); raises on error replies."""
        if not tracing.enabled():
            return await self._request(server, req, timeout_s, None)
        with tracing.span(f"request.{type(req).__name__}", {"ares.server": server.id}):
            return await self._request(server, req, timeout_s, tracing.inject())

    async def _request(
        self,
        server: ServerInfo,
        req: Request,
        timeout_s: float | None,
        trace: dict[str, str] | None,
    ) -> Reply:
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()

        def done(reply: Reply | BaseException) -> None:
            self._learn(req, reply)
            if fut.done():
                return
            if isinstance(reply, BaseException):
                fut.set_exception(reply)
            else:
                fut.set_result(reply)

        req = self._seal(req)
        timeout = remaining_s(self.options.timeout_s if timeout_s is None else timeout_s)
        if timeout <= 0:
            raise OperationTimeout(f"no time left to ask server {server.id}")
        rid = next(self._rids)
        peer = self.peer(server)
        peer.send(rid, req, done, trace)
        try:
            reply = await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise OperationTimeout(
                f"server {server.id} did not answer within the timeout"
            ) from None
        except ConnectionError as e:
            raise QuorumUnavailable(str(e)) from None
        finally:
            peer.cancel(rid)
        if isinstance(reply, ErrorReply):
            raise ServerError(reply.code, reply.message, server_id=server.id)
        return reply

    # -- admin MACs of configuration entries (security.macs) -------------------------------------

    def _learn(self, req: Request, reply: Reply | BaseException) -> None:
        """Remember the admin MAC a reply's successor entry carries."""
        nxt = getattr(reply, "next", None)
        if isinstance(nxt, NextEntry) and nxt.mac:
            group, cid = getattr(req, "group", None), getattr(req, "config_id", None)
            if isinstance(group, str) and isinstance(cid, str):
                self._macs[(group, cid, nxt.config.id)] = nxt.mac
                if len(self._macs) > MAX_REMEMBERED_MACS:
                    self._macs.popitem(last=False)

    def _sealed(self, group: str, config_id: str, entry: NextEntry) -> NextEntry:
        if entry.mac:
            return entry
        if self.admin_key is not None:
            mac = entry_mac(self.admin_key, group, config_id, entry.config)
        else:
            mac = self._macs.get((group, config_id, entry.config.id), b"")
        return msgspec.structs.replace(entry, mac=mac) if mac else entry

    def _seal(self, req: Request) -> Request:
        """An admin signs the entries it sends; another client puts back the MAC the entry came
        with (the protocol's chain view does not keep MACs). A holder of the write key signs the
        values it sends -- its own and those it writes back or transfers: the MAC is a function
        of (chain, key, tag, digest), so a value written under the current key keeps the MAC its
        writer gave it, and one written under a retired key gets the current key's (rotation,
        docs/security.md). Without the key the protocol's MAC goes out unchanged."""
        sign = self.signer
        if sign is not None:
            if isinstance(req, PutData):
                return msgspec.structs.replace(
                    req, mac=sign(req.group, req.key, req.tag, req.digest)
                )
            if isinstance(req, PutBatch) and req.items:
                items = tuple(
                    msgspec.structs.replace(it, mac=sign(req.group, it.key, it.tag, it.digest))
                    for it in req.items
                )
                return msgspec.structs.replace(req, items=items)
        if isinstance(req, WriteConfig):
            entry = self._sealed(req.group, req.config_id, req.entry)
            return req if entry is req.entry else msgspec.structs.replace(req, entry=entry)
        if isinstance(req, GetGroup) and req.set_next is not None:
            entry = self._sealed(req.group, req.config_id, req.set_next)
            return req if entry is req.set_next else msgspec.structs.replace(req, set_next=entry)
        return req

    async def close(self) -> None:
        peers = list(self._peers.values())
        for p in peers:
            p.close()
        self._peers.clear()
        self._by_config.clear()
        await asyncio.gather(*(p.wait_closed() for p in peers))
        await asyncio.sleep(0)


@functools.lru_cache(maxsize=16)
def _context(files: TlsFiles) -> ssl.SSLContext:
    """One client context per identity (loading certificates costs milliseconds)."""
    return client_context(files)


@functools.lru_cache(maxsize=16)
def _own_role(files: TlsFiles) -> str | None:
    return own_identity(files).role


def _round_attributes(c: Configuration, need: int) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "ares.config": c.id,
        "ares.dap": c.dap,
        "ares.n": c.n,
        "ares.quorum": need,
    }
    if c.dap == "treas":
        attrs["ares.k"] = c.k
        attrs["ares.delta"] = c.delta
    return attrs


def _ignore(reply: Reply | BaseException) -> None:
    """Replies to InstallConfig: its effect shows in the reply to the request that follows."""


def _expire(rnd: _Round, phase: str, c: Configuration, timeout_s: float) -> None:
    if not rnd.fut.done():
        rnd.fut.set_exception(
            OperationTimeout(
                f"{phase} on configuration {c.id}: {len(rnd.answers)} of the {rnd.need} replies "
                f"needed arrived within {timeout_s:.3g} s (the operation's deadline)"
                + (f" (errors: {'; '.join(rnd.errors)})" if rnd.errors else "")
            )
        )
