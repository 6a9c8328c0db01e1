"""The simulated cluster: servers with a disk model, a faulty network, and the client Channel.

* :class:`SimServer` drives the real pure :class:`~aresdsm.protocol.server_core.ServerCore`
  exactly like the process shell does (``server.py``): handle, submit the writes to the disk
  (group commit after a seeded fsync delay), and release the reply only when everything applied
  before it is durable. A crash loses the in-memory core and every write not yet durable; a
  restart recovers the core from the durable records (``ServerCore.recover``).
* :class:`SimNetwork` delivers messages after seeded delays (so they reorder), loses and duplicates
  them, and drops what crosses a partition (symmetric or one-way). Optionally every message goes
  through the real wire encoder and decoder.
* :class:`SimChannel` is the client side: the same ``round`` contract as the real
  :class:`~aresdsm.net.client.TcpChannel` -- first ``need`` replies of the expected type,
  ``QuorumUnavailable`` when a quorum became impossible, ``OperationTimeout`` at the deadline --
  plus retransmission of unanswered requests (TCP retransmits for the real one).

Invariants of docs/protocol.md §10 that a single server can break are checked at every step
(:class:`InvariantMonitor`): 3 (nextC never leaves F), 4 (a promise never decreases, also across
restarts), 5 (ABD tags never decrease on stable storage; TREAS keeps at most δ+1 elements).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from ..config import Configuration, ServerInfo
from ..errors import OperationTimeout, QuorumUnavailable, ServerError
from ..protocol import abd, reconfig_server
from ..protocol.channel import ConfigurationObsolete, RequestFor
from ..protocol.server_core import CVR_VALUE_NS, ServerCore, ServerSwitches
from ..security.macs import ValueSigner
from ..security.roles import value_refusal
from ..storage.base import Delete, Record, RecordKey, ValueRef, Write
from ..storage.memory import apply_batch
from ..storage.sqlite import SqliteStorage
from ..storage.values import read_from, resolve
from ..tags import Tag
from ..wire.codec import Decoder, Encoder
from ..wire.messages import (
    Accept,
    Accepted,
    Ballot,
    Envelope,
    ErrorReply,
    InstallConfig,
    NextEntry,
    Obsolete,
    Prepare,
    Promise,
    PutBatch,
    PutData,
    Reply,
    Request,
)

R = TypeVar("R", bound=Reply)


@dataclass
class NetworkFaults:
    delay_min_s: float = 0.0002
    delay_max_s: float = 0.002
    loss: float = 0.0
    duplicate: float = 0.0
    fsync_min_s: float = 0.0001
    fsync_max_s: float = 0.001
    tail_alpha: float | None = None
    """Heavy-tailed delays: a delay is multiplied by a Pareto(alpha) draw (>= 1; alpha near 1
    gives a very long tail), capped at ``tail_max_s``. None: uniform delays only."""
    tail_max_s: float = 0.3
    park_partitioned: bool = False
    """A message crossing a partition waits for the heal (a stalled TCP connection) instead of
    being lost."""
    park_max: int = 5000
    """At most this many parked messages; more are lost."""


Interceptor = Callable[[str, str, int, Request, Callable[[Reply], None]], bool]
"""Sees every request a client sends (sender, server, rid, request, reply callback) before the
network does; True means it took the message (to deliver it later with
:meth:`SimCluster.transmit`, or never)."""

DeliveryObserver = Callable[[str, str, Request], None]
"""Called with (sender, server, request) whenever a request reaches a live server."""


class InvariantFailure(AssertionError):
    """A protocol invariant (docs/protocol.md §10) does not hold in a simulated run."""


@dataclass
class InvariantMonitor:
    """Per-server invariants, checked on live state after every request and on what became
    durable after every commit. Promises are tracked as *replied* (left the server): a promise
    lost in a crash before it was persisted and answered was never given."""

    failures: list[str] = field(default_factory=list)
    durable_tags: dict[tuple[str, RecordKey], Tag] = field(default_factory=dict)
    durable_final: set[tuple[str, str, str]] = field(default_factory=set)
    live_promised: dict[tuple[str, str, str], Ballot] = field(default_factory=dict)
    live_final: set[tuple[str, str, str]] = field(default_factory=set)
    replied_promises: dict[tuple[str, str, str], Ballot] = field(default_factory=dict)
    """The highest ballot each acceptor gave away: in a PROMISE, or in an ACCEPTED (accepting
    b raises the promise to b too)."""
    replied_accepts: dict[tuple[str, str, str], tuple[Ballot, Configuration]] = field(
        default_factory=dict
    )
    """The highest (ballot, value) each acceptor reported ACCEPTED."""
    accepted_by: dict[tuple[str, str, Ballot], set[str]] = field(default_factory=dict)
    """(group, configuration, ballot) -> the acceptors that reported ACCEPTED for it."""
    chosen: dict[tuple[str, str], tuple[Ballot, Configuration]] = field(default_factory=dict)
    """(group, configuration) -> a (ballot, value) a majority of its acceptors accepted."""

    def fail(self, message: str) -> None:
        if message not in self.failures[-20:]:  # the same refusal repeats on retransmissions
            self.failures.append(message)

    def after_handle(self, server: str, core: ServerCore) -> None:
        """Invariants 3, 4 and 5 (TREAS part) on the live state of one incarnation."""
        for (_, cid, obj), entries in core.lists.items():
            kept = sum(1 for e in entries if e.element is not None)
            cfg = core.configs.get(cid)
            if cfg is not None and kept > cfg.delta + 1:
                self.fail(f"§10.5: server {server} keeps {kept} elements > delta+1 for {obj}")
        for (g, c), e in core.nextc.items():
            if e.status == "F":
                self.live_final.add((server, g, c))
            elif (server, g, c) in self.live_final:
                self.fail(f"§10.3: server {server} downgraded nextC[{g}][{c}] from F to P")
        for (g, c), st in core.acceptors.items():
            key = (server, g, c)
            if st.accepted_ballot is not None and (
                st.promised is None or st.promised < st.accepted_ballot
            ):
                self.fail(f"§10.4: acceptor {server} {g}/{c} accepted above its promise")
            prev = self.live_promised.get(key)
            if prev is not None and (st.promised is None or st.promised < prev):
                self.fail(f"§10.4: acceptor {server} {g}/{c} promised {st.promised} after {prev}")
            if st.promised is not None:
                self.live_promised[key] = st.promised

    def on_reply(
        self, server: str, req: Request, reply: Reply, config: Configuration | None = None
    ) -> None:
        """Every reply that leaves ``server`` (``config``: the configuration the request names,
        when the server knows it)."""
        if isinstance(reply, ErrorReply) and reply.code == "invariant":
            # a server refused a request because it would break an invariant: some other
            # component already broke one (e.g. two successors decided for one configuration)
            self.fail(f"server {server} refused {type(req).__name__}: invariant: {reply.message}")
        if isinstance(reply, Promise) and isinstance(req, Prepare):
            self._gave(server, req.group, req.config_id, reply.ballot)
        elif isinstance(reply, Accepted) and isinstance(req, Accept):
            key = (server, req.group, req.config_id)
            self._gave(server, req.group, req.config_id, req.ballot)
            prev_accept = self.replied_accepts.get(key)
            if prev_accept is None or req.ballot > prev_accept[0]:
                self.replied_accepts[key] = (req.ballot, req.value)
            if config is not None:
                self._chosen(server, req, config)

    def _chosen(self, server: str, req: Accept, config: Configuration) -> None:
        """§10.2 over the acceptors: once a majority of an instance's acceptors accepted a
        (ballot, value), that value is chosen; no other value may ever be chosen there."""
        who = self.accepted_by.setdefault((req.group, req.config_id, req.ballot), set())
        who.add(server)
        if len(who) < config.majority:
            return
        instance = (req.group, req.config_id)
        prev = self.chosen.setdefault(instance, (req.ballot, req.value))
        if prev[1] != req.value:
            self.fail(
                f"§10.2: Paxos instance {req.group}/{req.config_id} chose two values: "
                f"{prev[1].id} at ballot {prev[0]} and {req.value.id} at ballot {req.ballot}"
            )

    def _gave(self, server: str, group: str, config_id: str, ballot: Ballot) -> None:
        key = (server, group, config_id)
        prev = self.replied_promises.get(key)
        if prev is None or ballot > prev:
            self.replied_promises[key] = ballot

    def on_crash(self, server: str) -> None:
        self.live_promised = {k: v for k, v in self.live_promised.items() if k[0] != server}
        self.live_final = {k for k in self.live_final if k[0] != server}

    def after_restart(self, server: str, core: ServerCore) -> None:
        for (srv, g, c), ballot in self.replied_promises.items():
            if srv != server:
                continue
            st = core.acceptors.get((g, c))
            if st is None or st.promised is None or st.promised < ballot:
                self.fail(
                    f"§10.4: acceptor {server} {g}/{c} forgot its promise {ballot} on restart"
                )
        for (srv, g, c), (ballot, value) in self.replied_accepts.items():
            if srv != server:
                continue
            st = core.acceptors.get((g, c))
            if st is None or st.accepted_ballot is None or st.accepted_ballot < ballot:
                self.fail(f"§10.4: acceptor {server} {g}/{c} forgot it accepted {ballot}")
            elif st.accepted_ballot == ballot and st.accepted_value != value:
                self.fail(f"§10.4: acceptor {server} {g}/{c} changed the value it accepted")

    def after_commit(
        self, server: str, batch: list[Write], configs: dict[str, Configuration]
    ) -> None:
        """Invariants 3, 5 and 6 on what became durable."""
        for w in batch:
            if isinstance(w, Delete):
                if w.ns == CVR_VALUE_NS and w.key is not None:
                    continue  # a decided coverable level's value, pruned: not garbage collection
                if (server, w.group, w.config_id) not in self.durable_final:
                    self.fail(
                        f"§10.6: server {server} deleted {w.group}/{w.config_id} data before "
                        "its successor was F"
                    )
                continue
            if w.ns == abd.NS:
                tag = _tag_of(w)
                key = (server, w.record_key)
                prev = self.durable_tags.get(key)
                if prev is not None and tag < prev:
                    self.fail(f"§10.5: server {server} stored tag {tag} after {prev} for {w.key}")
                self.durable_tags[key] = tag
            elif w.ns == reconfig_server.NS:
                entry = _next_of(w)
                key3 = (server, w.group, w.config_id)
                if entry.status == "F":
                    self.durable_final.add(key3)
                elif key3 in self.durable_final:
                    self.fail(f"§10.3: server {server} stored P over F for {w.group}/{w.config_id}")


def _tag_of(r: Record) -> Tag:
    return msgspec.msgpack.decode(r.meta, type=abd.StoredMeta).tag


def _next_of(r: Record) -> NextEntry:
    return msgspec.msgpack.decode(r.meta, type=NextEntry)


def _fingerprint(
    r: Any, read: Callable[[ValueRef], bytes | memoryview] | None = None
) -> tuple[str, str, str, str, bytes, bytes | None]:
    """A record's content; ``read`` reads a value the engine loaded as a reference."""
    data = r.data
    if isinstance(data, ValueRef):
        assert read is not None
        data = read(data)
    return (
        r.ns,
        r.group,
        r.config_id,
        r.key,
        bytes(r.meta),
        None if data is None else bytes(data),
    )


class SimDisk:
    """Durable records plus the batch waiting for (or in) its fsync."""

    def __init__(self) -> None:
        self.durable: dict[RecordKey, Record] = {}
        self.pending: list[Write] = []
        self.inflight: list[Write] = []
        """The batch in its fsync (values of replies are read from it until it is durable)."""
        self.applied = 0
        self.durable_seq = 0
        self.committing = False


class SimServer:
    def __init__(self, sim: SimCluster, info: ServerInfo, switches: ServerSwitches) -> None:
        self.sim = sim
        self.info = info
        self.switches = switches
        self.disk = SimDisk()
        self.core: ServerCore | None = ServerCore(info.id, switches=switches)
        self.epoch = 0
        self.waiters: list[tuple[int, Callable[[], None]]] = []
        self.broken_ack_before_durable = False
        self.engine_path: Path | None = None
        self.engine: SqliteStorage | None = None
        """The real SQLite engine, when the run uses it: every simulated commit is also
        committed to it (the virtual commit time is its durable point), and a restart recovers
        from what the engine loads -- checked against the in-memory model of the disk."""

    def use_sqlite(self, path: Path) -> None:
        self.engine_path = path
        self.engine = SqliteStorage(path)

    @property
    def up(self) -> bool:
        return self.core is not None

    def bootstrap(self, c: Configuration) -> None:
        assert self.core is not None
        writes = self.core.install_config(c)
        apply_batch(self.disk.durable, writes)
        if self.engine is not None:
            self.engine._commit(writes)  # synchronous: the sim's own durable point

    def _value_refusal(self, req: Request, core: ServerCore) -> str | None:
        """The server shell's writer-MAC check of the values ``req`` carries (§13)."""
        sim = self.sim
        if not sim.write_keys or sim.broken_skip_value_mac:
            return None
        if not isinstance(req, (PutData, PutBatch)):
            return None
        return value_refusal(req, core, sim.write_keys)

    def deliver(self, req: Request, respond: Callable[[Reply], None]) -> None:
        core = self.core
        if core is None:
            return
        problem = self._value_refusal(req, core)
        if problem is not None:
            respond(ErrorReply("unauthorized", problem))
            return
        reply, writes = core.handle(req)
        monitor = self.sim.monitor
        monitor.after_handle(self.info.id, core)

        config = core.configs.get(getattr(req, "config_id", ""))

        def send(reply: Reply) -> None:
            monitor.on_reply(self.info.id, req, reply, config)
            respond(reply)

        if writes:
            self.disk.pending.extend(writes)
            self.disk.applied += 1
            self._schedule_commit()
        # the core refers to values; read them now, as the process shell does (§ values.py)
        disk = self.disk
        reply = resolve(
            reply, lambda ref: read_from(ref, [*disk.inflight, *disk.pending], disk.durable)
        )
        need = self.disk.applied
        if need <= self.disk.durable_seq or self.broken_ack_before_durable:
            send(reply)
        else:
            self.waiters.append((need, lambda: send(reply)))

    def _schedule_commit(self) -> None:
        if self.disk.committing:
            return
        self.disk.committing = True
        f = self.sim.faults
        delay = self.sim.rng.uniform(f.fsync_min_s, f.fsync_max_s)
        batch, upto, epoch = self.disk.pending, self.disk.applied, self.epoch
        self.disk.pending = []
        self.disk.inflight = batch
        self.sim.loop.call_later(delay, self._commit_done, batch, upto, epoch)

    def _commit_done(self, batch: list[Write], upto: int, epoch: int) -> None:
        if epoch != self.epoch:
            return  # crashed during the fsync: the batch is lost
        apply_batch(self.disk.durable, batch)
        self.disk.inflight = []
        if self.engine is not None:
            self.engine._commit(batch)  # synchronous: the sim's own durable point
        assert self.core is not None
        self.sim.monitor.after_commit(self.info.id, batch, self.core.configs)
        self.disk.durable_seq = upto
        self.disk.committing = False
        ready = [w for w in self.waiters if w[0] <= upto]
        self.waiters = [w for w in self.waiters if w[0] > upto]
        for _, send in ready:
            send()
        if self.disk.pending:
            self._schedule_commit()

    def crash(self) -> None:
        self.sim.monitor.on_crash(self.info.id)
        self.core = None
        self.epoch += 1
        self.disk.pending = []
        self.disk.inflight = []
        self.disk.committing = False
        self.disk.applied = self.disk.durable_seq = 0
        self.waiters = []
        if self.engine is not None:
            self.engine.close()
            self.engine = None
        self.sim.log(f"crash {self.info.id}")

    def restart(self) -> None:
        records: list[Any] = list(self.disk.durable.values())
        if self.engine_path is not None:
            self.engine = SqliteStorage(self.engine_path)
            loaded = list(self.engine.load())
            engine = self.engine
            values = [_fingerprint(r, engine.read_value) for r in loaded]
            if sorted(values) != sorted(map(_fingerprint, records)):
                self.sim.monitor.fail(
                    f"server {self.info.id}: the SQLite engine recovered other records than "
                    "were durable"
                )
            records = loaded
        self.core = ServerCore.recover(self.info.id, records, switches=self.switches)
        self.sim.monitor.after_restart(self.info.id, self.core)
        self.sim.log(f"restart {self.info.id}")


class SimCluster:
    """Servers + network on one virtual-time loop, driven by one seeded generator."""

    def __init__(
        self,
        *,
        rng: random.Random,
        loop: asyncio.AbstractEventLoop,
        servers: list[ServerInfo],
        faults: NetworkFaults,
        real_codec: bool = False,
        server_switches: ServerSwitches | None = None,
    ) -> None:
        self.rng = rng
        self.loop = loop
        self.faults = faults
        self.monitor = InvariantMonitor()
        sw = server_switches or ServerSwitches()
        self.servers = {s.id: SimServer(self, s, sw) for s in servers}
        self.blocked: set[tuple[str, str]] = set()  # (from, to) pairs cut off
        self.parked: list[tuple[str, str, Callable[[], None]]] = []
        """Messages waiting for a partition to heal (``faults.park_partitioned``)."""
        self.interceptors: list[Interceptor] = []
        self.observers: list[DeliveryObserver] = []
        self.real_codec = real_codec
        self._encoder = Encoder()
        self._decoder = Decoder()
        self.events: list[str] = []
        self.messages = 0
        self.write_keys: tuple[bytes, ...] = ()
        """The cluster's write keys: with any, servers apply a value only with a valid writer
        MAC or when it adds nothing (the server shell's check, docs/protocol.md §13)."""
        self.broken_skip_value_mac = False
        """Test-only: servers skip that check (``Broken.broken_skip_value_mac``)."""

    def log(self, text: str) -> None:
        self.events.append(f"{self.loop.time():.9f} {text}")

    def _delay(self) -> float:
        f = self.faults
        d = self.rng.uniform(f.delay_min_s, f.delay_max_s)
        if f.tail_alpha is not None:
            d = min(f.tail_max_s, d * self.rng.paretovariate(f.tail_alpha))
        return d

    def _route(self, src: str, dst: str, deliver: Callable[[], None]) -> None:
        """Send one message: lost, parked behind a partition, or delivered (maybe twice)."""
        f = self.faults
        if (src, dst) in self.blocked:
            if f.park_partitioned and len(self.parked) < f.park_max:
                self.parked.append((src, dst, deliver))
            return
        if self.rng.random() < f.loss:
            return
        self.loop.call_later(self._delay(), deliver)
        if self.rng.random() < f.duplicate:
            self.loop.call_later(self._delay() * 2, deliver)

    def heal(self) -> None:
        """End every partition; parked messages go on their way (with fresh delays)."""
        self.blocked.clear()
        parked, self.parked = self.parked, []
        for src, dst, deliver in parked:
            self._route(src, dst, deliver)

    def _codec(self, rid: int, body: Any) -> Any:
        if not self.real_codec:
            return body
        frame = self._encoder.encode_bytes(Envelope(rid, body))
        return self._decoder.decode_frame(frame, max_frame_bytes=1 << 30).body

    def send(
        self, client: str, server: str, rid: int, req: Request, on_reply: Callable[[Reply], None]
    ) -> None:
        self.messages += 1
        for intercept in self.interceptors:
            if intercept(client, server, rid, req, on_reply):
                return
        self.transmit(client, server, rid, req, on_reply)

    def transmit(
        self, client: str, server: str, rid: int, req: Request, on_reply: Callable[[Reply], None]
    ) -> None:
        """Put a request on the network (no interceptor sees it)."""
        target = self.servers.get(server)
        self._route(client, server, lambda: self._arrive(client, target, rid, req, on_reply))

    def _arrive(
        self,
        client: str,
        target: SimServer | None,
        rid: int,
        req: Request,
        on_reply: Callable[[Reply], None],
    ) -> None:
        if target is None or not target.up:
            return
        self.log(f"deliver {client}->{target.info.id} #{rid} {type(req).__name__}")
        body = self._codec(rid, req)
        epoch = target.epoch
        for observe in self.observers:
            observe(client, target.info.id, req)

        def respond(reply: Reply) -> None:
            if target.epoch != epoch:
                return
            body = self._codec(rid, reply)
            self._route(target.info.id, client, lambda: on_reply(body))

        target.deliver(body, respond)


@dataclass
class ChannelSwitches:
    broken_quorum_minus_one: bool = False
    """Test-only: rounds complete on one reply fewer than a quorum."""


def sign_values(req: Request, sign: ValueSigner) -> Request:
    """The values of a PutData or PutBatch signed with a writer's key, as the TCP channel
    signs them (net/client.py)."""
    if isinstance(req, PutData):
        return msgspec.structs.replace(req, mac=sign(req.group, req.key, req.tag, req.digest))
    if isinstance(req, PutBatch) and req.items:
        items = tuple(
            msgspec.structs.replace(it, mac=sign(req.group, it.key, it.tag, it.digest))
            for it in req.items
        )
        return msgspec.structs.replace(req, items=items)
    return req


class SimChannel:
    """The client side of the simulated network: the Channel contract of protocol/channel.py."""

    def __init__(
        self,
        cluster: SimCluster,
        client_id: str,
        *,
        timeout_s: float = 1.0,
        retransmit_s: float = 0.02,
        switches: ChannelSwitches | None = None,
    ) -> None:
        self.cluster = cluster
        self.client_id = client_id
        self.timeout_s = timeout_s
        self.retransmit_s = retransmit_s
        self.switches = switches or ChannelSwitches()
        self.rounds = 0
        self.messages = 0
        self.rounds_by_phase: dict[str, int] = {}
        self.may_install = True
        """The simulator has no roles (sim options ``clients_finalize`` picks the switch)."""
        self.signer: ValueSigner | None = None
        """A writer's write key (as net/client.py's channel): it signs every value it sends; a
        channel without one sends the MAC the protocol forwards (a reader)."""
        self._rid = 0

    def _next_rid(self) -> int:
        self._rid += 1
        return self._rid

    async def round(
        self,
        c: Configuration,
        request: RequestFor,
        *,
        expect: type[R],
        phase: str,
        need: int | None = None,
        accept: Callable[[Any], bool] | None = None,
    ) -> list[tuple[ServerInfo, R]]:
        need = c.quorum_size if need is None else need
        if self.switches.broken_quorum_minus_one and need > 1:
            need -= 1
        self.rounds += 1
        self.rounds_by_phase[phase] = self.rounds_by_phase.get(phase, 0) + 1
        loop = self.cluster.loop
        fut: asyncio.Future[list[tuple[ServerInfo, R]]] = loop.create_future()
        answers: dict[str, tuple[ServerInfo, R]] = {}
        failed: dict[str, str] = {}
        timers: list[asyncio.TimerHandle] = []

        def settle() -> None:
            if fut.done():
                return
            if len(answers) >= need:
                fut.set_result(sorted(answers.values(), key=lambda a: c.index_of(a[0].id))[:need])
            elif c.n - len(failed) < need:
                fut.set_exception(
                    QuorumUnavailable(f"{phase} on {c.id}: " + "; ".join(sorted(failed.values())))
                )

        def start(i: int, server: ServerInfo) -> None:
            req = request(i, server) if callable(request) else request
            if self.signer is not None:
                req = sign_values(req, self.signer)

            def on_reply(reply: Reply) -> None:
                if fut.done() or server.id in answers or server.id in failed:
                    return
                if isinstance(reply, ErrorReply) and reply.code == "unknown-config":
                    # install, and resend the request once the install is answered (the network
                    # reorders); again on every unknown-config: an install can be lost too
                    self._send(server.id, InstallConfig(c), lambda r: transmit())
                    return
                if isinstance(reply, Obsolete):
                    fut.set_exception(ConfigurationObsolete(reply.next))
                    return
                if isinstance(reply, expect) and (accept is None or accept(reply)):
                    answers[server.id] = (server, reply)
                elif isinstance(reply, expect):
                    failed[server.id] = f"{server.id}: corrupt reply"
                elif isinstance(reply, ErrorReply):
                    failed[server.id] = f"{server.id}: {reply.code}"
                else:
                    failed[server.id] = f"{server.id}: unexpected {type(reply).__name__}"
                settle()

            def transmit() -> None:
                if fut.done() or server.id in answers or server.id in failed:
                    return
                self._send(server.id, req, on_reply)
                timers.append(loop.call_later(self.retransmit_s, transmit))

            transmit()

        for i, server in enumerate(c.servers):
            start(i, server)

        def expire() -> None:
            if not fut.done():
                fut.set_exception(
                    OperationTimeout(f"{phase} on {c.id}: {len(answers)}/{need} replies in time")
                )

        timers.append(loop.call_later(self.timeout_s, expire))
        try:
            return await fut
        finally:
            for t in timers:
                t.cancel()

    async def request(
        self, server: ServerInfo, req: Request, *, timeout_s: float | None = None
    ) -> Reply:
        """One request to one server (the Store's LATEST_CONFIG); no retransmission."""
        fut: asyncio.Future[Reply] = self.cluster.loop.create_future()

        def done(reply: Reply) -> None:
            if not fut.done():
                fut.set_result(reply)

        self._send(server.id, req, done)
        try:
            reply = await asyncio.wait_for(fut, timeout_s or self.timeout_s)
        except TimeoutError:
            raise OperationTimeout(f"{server.id} did not answer") from None
        if isinstance(reply, ErrorReply):
            raise ServerError(reply.code, reply.message, server_id=server.id)
        return reply

    async def close(self) -> None:
        """Nothing to close: the simulated network has no connections."""

    def _send(self, server: str, req: Request, on_reply: Callable[[Reply], None]) -> None:
        self.messages += 1
        self.cluster.send(self.client_id, server, self._next_rid(), req, on_reply)


__all__ = [
    "ChannelSwitches",
    "InvariantFailure",
    "InvariantMonitor",
    "NetworkFaults",
    "SimChannel",
    "SimCluster",
    "SimServer",
]
