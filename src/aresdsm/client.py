"""The public client: ``async with aresdsm.connect("cluster.toml") as store``.

A :class:`Store` reads and writes named objects with atomic (linearizable) semantics. It holds one
TCP connection per server and runs any number of operations concurrently; every write gets its own
writer id (client id + operation number) so concurrent writes of one client never share a tag.

Errors (see :mod:`aresdsm.errors`): :class:`~aresdsm.errors.OperationTimeout` and
:class:`~aresdsm.errors.QuorumUnavailable` when not enough servers answer -- a write that failed
this way may or may not have taken effect -- and :class:`~aresdsm.errors.ConfigurationError` for a
bad cluster file or argument.

Optionally every operation is recorded (:class:`HistoryRecorder`) for ``ares check``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from pathlib import Path
from types import TracebackType
from typing import IO, Any, TypeVar

import msgspec

from . import tracing
from .config import (
    DEFAULT_GROUP,
    ClientOptions,
    ClusterFile,
    Configuration,
    ServerInfo,
    load_cluster_file,
    validate_configuration,
)
from .errors import AresError, ConfigurationError, OperationTimeout, QuorumUnavailable
from .history import OpKind, OpRecord, value_digest, write_records
from .net.client import TcpChannel
from .protocol import ares, ops
from .tags import Tag, writer_id
from .wire.blob import Blob
from .wire.messages import GetStats, LatestConfig, NextEntry, NextReply, Ping, Stats

T = TypeVar("T")
log = logging.getLogger("aresdsm.client")
MAX_KEY_BYTES = 1024
FRAME_SLACK_BYTES = 64 * 1024
"""Room for a reply's header and coding padding next to its values."""
MAX_BACKGROUND_FINALIZE = 16
"""Chains finalized in the background at once (many with ``batch`` off)."""


class HistoryRecorder:
    """Appends one JSON line per completed (or failed) operation to a file; thread-safe."""

    def __init__(self, out: IO[bytes], *, clock: Any = time.time) -> None:
        self._out = out
        self._clock = clock
        self._lock = threading.Lock()
        self._ids = 0

    def now(self) -> float:
        return float(self._clock())

    def next_id(self) -> int:
        with self._lock:
            self._ids += 1
            return self._ids

    def record(self, rec: OpRecord) -> None:
        with self._lock:
            write_records([rec], self._out)
            self._out.flush()


async def _random_backoff(attempt: int) -> None:
    """Paxos retry back-off (docs/protocol.md §5): random, growing, capped at about a second."""
    await asyncio.sleep(random.uniform(0, min(1.0, 0.005 * 2**attempt)))


class _CseqCache(msgspec.Struct):
    initial: Configuration
    groups: dict[str, ares.Cseq]


def load_cseq_cache(path: Path | None, initial: Configuration) -> dict[str, ares.Cseq]:
    """Chains learned earlier (docs/protocol.md §8.5: clients may cache their cseq on disk).

    A missing, unreadable or foreign cache (another initial configuration descriptor) is
    ignored: the client then discovers the chain from the initial configuration again. A cache
    from another deployment of the same cluster file is caught on first use
    (:meth:`Store._check_cached`).
    """
    if path is None or not path.exists():
        return {}
    try:
        cache = msgspec.json.decode(path.read_bytes(), type=_CseqCache)
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        return {}
    if cache.initial != initial:
        return {}
    return {g: c for g, c in cache.groups.items() if c and c[0].status == "F"}


def save_cseq_cache(path: Path, initial: Configuration, cseqs: dict[str, ares.Cseq]) -> None:
    """Write the cache atomically (write a temporary file, then rename it)."""
    if not cseqs:
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(msgspec.json.encode(_CseqCache(initial, cseqs)))
    tmp.replace(path)


def _check_key(key: str, group: str) -> None:
    if not isinstance(key, str) or not key:
        raise ConfigurationError("object key must be a non-empty string")
    if "\x00" in key or "\x00" in group:
        raise ConfigurationError("object keys and groups must not contain NUL characters")
    if len(key.encode()) > MAX_KEY_BYTES or len(group.encode()) > MAX_KEY_BYTES:
        raise ConfigurationError(f"object key and group are limited to {MAX_KEY_BYTES} bytes")


class Store:
    """An atomic object store client. Use :func:`connect`."""

    def __init__(
        self,
        configuration: Configuration,
        *,
        options: ClientOptions | None = None,
        client_id: str | None = None,
        recorder: HistoryRecorder | None = None,
        switches: ops.OpSwitches = ops.DEFAULT_SWITCHES,
        cseq_cache: str | Path | None = None,
        known_servers: Iterable[ServerInfo] = (),
    ) -> None:
        self.configuration = configuration
        self.known_servers = tuple(known_servers)
        """Servers to ask for LATEST_CONFIG when the chain leads only to unreachable ones."""
        self.options = options or ClientOptions()
        self.client_id = client_id or uuid.uuid4().hex[:12]
        self.channel = TcpChannel(self.options)
        self.recorder = recorder
        if not self.channel.may_install and switches.write_back_final:
            # without the admin role a client may not finalize (docs/protocol.md §13): it
            # writes discovered F entries back as P
            switches = dataclasses.replace(switches, write_back_final=False)
        self.switches = switches
        self.cseq_cache = Path(cseq_cache) if cseq_cache is not None else None
        self._op_seq = 0
        self._cseqs: dict[str, ares.Cseq] = load_cseq_cache(self.cseq_cache, configuration)
        self._unchecked: set[str] = set(self._cseqs)
        """Chains from the disk cache not yet checked against the initial configuration."""
        self._background: set[asyncio.Task[bool]] = set()
        self._finalizing = asyncio.Semaphore(MAX_BACKGROUND_FINALIZE)

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self.settle()
        await self.channel.close()
        if self.cseq_cache is not None:
            try:
                save_cseq_cache(self.cseq_cache, self.configuration, self._cseqs)
            except OSError as e:
                log.warning("cannot save the configuration chain cache %s: %s", self.cseq_cache, e)

    def _next_writer(self) -> str:
        self._op_seq += 1
        return writer_id(self.client_id, self._op_seq)

    @property
    def mode(self) -> str:
        return "ares2" if self.switches.piggyback else "classic"

    def cseq(self, group: str = DEFAULT_GROUP) -> ares.Cseq:
        """This client's current view of the group's configuration chain."""
        return self._cseqs.get(group) or ares.initial_cseq(self.configuration)

    async def _check_cached(self, chain: str) -> None:
        """Before a chain from the disk cache is used: if the initial configuration answers,
        its successor must be the cached one. A cache left by another deployment of the same
        cluster file (servers re-created empty at the same addresses) names configurations
        these servers never decided; using it would install them and read and write in a world
        of its own. Dropped, the chain is discovered from the initial configuration again. If
        the initial servers do not answer, the cache is what the client has (§8.5)."""
        if chain not in self._unchecked:
            return
        self._unchecked.discard(chain)
        cached = self._cseqs.get(chain)
        if cached is None or len(cached) < 2 or cached[0].config != self.configuration:
            return
        try:
            found = await ares.read_next_config(self.channel, self.configuration, chain)
        except (QuorumUnavailable, OperationTimeout):
            return
        if found is None or found.config != cached[1].config:
            log.warning(
                "the cached chain of %r does not match the servers (another deployment?): "
                "discarding it",
                chain,
            )
            del self._cseqs[chain]

    def _check_fits(self, chain: str, size: int) -> None:
        """Refuse a value whose reads could not fit a frame in the configuration it goes to:
        a TREAS server answers a read with up to δ+1 coded elements of ⌈|v|/k⌉ bytes (§4.2).
        Accepted, such a write would leave the object unreadable for good."""
        c = self.cseq(chain)[-1].config
        per_reply = size if c.dap == "abd" else (c.delta + 1) * -(-size // c.k)
        limit = self.options.max_frame_bytes - FRAME_SLACK_BYTES
        if per_reply > limit:
            shape = (
                "" if c.dap == "abd" else f" (TREAS k={c.k}, delta={c.delta}: {per_reply} bytes)"
            )
            raise ConfigurationError(
                f"a value of {size} bytes is too large for configuration {c.id}{shape}: a reply "
                f"must fit max_frame_bytes={self.options.max_frame_bytes}"
            )

    def _learn(self, group: str, cseq: ares.Cseq) -> None:
        try:
            self._cseqs[group] = ares.merge(self.cseq(group), cseq)
        except ares.DisjointChains:
            # an operation that started before relocate() adopted a later configuration
            # (§8.5) comes back with a view ending before it: the adopted view is the later one
            if self.cseq(group)[0].config.id == self.configuration.id:
                self._cseqs[group] = cseq

    async def _with_recovery(self, group: str, op: Callable[[], Awaitable[T]]) -> T:
        """Run ``op`` (a read: it has no effect of its own to repeat); if the configurations
        this client knows no longer answer, ask every known server for the newest finalized
        configuration (§8.5), adopt it, and retry once. Writes: :meth:`_write_op`."""
        try:
            return await op()
        except (QuorumUnavailable, OperationTimeout):
            if not await self.relocate(group):
                raise
        return await op()

    async def relocate(self, group: str = DEFAULT_GROUP) -> bool:
        """LATEST_CONFIG (§8.5): adopt the newest F configuration any reachable server knows
        and discover onwards from it. Returns whether the client moved."""
        servers = {s.id: s for s in self.known_servers}
        for e in self.cseq(group):
            servers.update({s.id: s for s in e.config.servers})
        found: dict[str, NextEntry] = {}
        for server in servers.values():
            try:
                reply = await self.channel.request(
                    server, LatestConfig(group), timeout_s=self.options.connect_timeout_s
                )
            except AresError:
                continue
            if isinstance(reply, NextReply) and reply.next is not None:
                found[reply.next.config.id] = reply.next
        known = {e.config.id for e in self.cseq(group)}
        for entry in found.values():
            if entry.config.id in known and entry.config.id == self.cseq(group)[-1].config.id:
                continue
            try:
                cseq = await ares.read_config(self.channel, ares.adopt(entry), group, self.switches)
            except (QuorumUnavailable, OperationTimeout):
                continue
            self._cseqs[group] = cseq
            return True
        return False

    async def _write_op(self, group: str, key: str, value: Blob) -> Tag:
        """A write, retried once after the client relocated (§8.5) -- with the tag the first
        attempt chose, if it got that far: its put-data may already have taken effect."""
        chain = ares.chain_of(group, key, self.switches)
        chosen: list[Tag] = []
        try:
            return await self._write_once(chain, key, value, chosen.append)
        except (QuorumUnavailable, OperationTimeout):
            if not await self.relocate(chain):
                raise
        if not chosen or self.switches.broken_retry_write_with_new_tag:
            return await self._write_once(chain, key, value, chosen.append)
        cseq = await ares.finish_write(
            self.channel,
            self.cseq(chain),
            group=chain,
            key=key,
            tag=chosen[0],
            value=value,
            switches=self.switches,
        )
        self._learn(chain, cseq)
        return chosen[0]

    async def _read_op(self, group: str, key: str) -> ops.ReadResult:
        chain = ares.chain_of(group, key, self.switches)
        return await self._with_recovery(chain, lambda: self._read_once(chain, key))

    async def _write_once(
        self, chain: str, key: str, value: Blob, on_tag: Callable[[Tag], None]
    ) -> Tag:
        await self._check_cached(chain)
        tag, cseq = await ares.write(
            self.channel,
            self.cseq(chain),
            group=chain,
            key=key,
            value=value,
            writer=self._next_writer(),
            switches=self.switches,
            on_tag=on_tag,
        )
        self._learn(chain, cseq)
        return tag

    async def _read_once(self, chain: str, key: str) -> ops.ReadResult:
        await self._check_cached(chain)
        res, cseq = await ares.read(
            self.channel, self.cseq(chain), group=chain, key=key, switches=self.switches
        )
        self._learn(chain, cseq)
        return res

    async def configurations(self, group: str = DEFAULT_GROUP) -> ares.Cseq:
        """Discover and return the group's configuration chain (docs/protocol.md §6 read-config)."""
        await self._check_cached(group)
        cseq = await ares.read_config(self.channel, self.cseq(group), group, self.switches)
        self._learn(group, cseq)
        return self.cseq(group)

    async def reconfigure(
        self,
        proposal: Configuration,
        *,
        group: str = DEFAULT_GROUP,
        keys: Iterable[str] | None = None,
        concurrency: int = 1,
    ) -> Configuration:
        """Install ``proposal`` as the successor of the group's last configuration.

        Returns the configuration consensus decided: ``proposal`` or, if another reconfigurer
        won, theirs (the caller may retry on top of it).

        With the ``batch`` switch off (the original Ares) every object has a chain of its own:
        each of ``keys`` (default: every object of the group the initial configuration knows)
        is reconfigured on its own, ``concurrency`` at a time (1: one after the other, as a
        well-formed client of the original runs them), and the result is ``proposal`` only if
        it was decided for every object.
        """
        validate_configuration(proposal)
        attrs = {"ares.op": "reconfig", "ares.group": group, "ares.mode": self.mode}
        with tracing.span("op", attrs):
            if self.switches.batch:
                return await self._reconfigure(proposal, group)
            return await self._reconfigure_each(proposal, group, keys, concurrency)

    async def _reconfigure(self, proposal: Configuration, group: str) -> Configuration:
        await self._check_cached(group)
        cseq, decided = await ares.reconfig(
            self.channel,
            self.cseq(group),
            group=group,
            proposal=proposal,
            proposer=self._next_writer(),
            backoff=_random_backoff,
            switches=self.switches,
        )
        self._learn(group, cseq)
        self._finalize_later(group, cseq, decided)
        return decided

    async def _reconfigure_each(
        self, proposal: Configuration, group: str, keys: Iterable[str] | None, concurrency: int
    ) -> Configuration:
        if keys is None:
            keys = await ares.list_objects(self.channel, self.configuration, group)
        keys = sorted(set(keys))
        for key in keys:
            await self._check_cached(ares.chain_of(group, key, self.switches))
        done = await ares.reconfig_objects(
            self.channel,
            self.cseq,
            group=group,
            keys=keys,
            proposal=proposal,
            proposer=self._next_writer(),
            backoff=_random_backoff,
            concurrency=concurrency,
            switches=self.switches,
        )
        result = proposal
        for chain, (cseq, decided) in done.items():
            self._learn(chain, cseq)
            self._finalize_later(chain, cseq, decided)
            if decided.id != proposal.id:
                result = decided
        return result

    def _finalize_later(self, chain: str, cseq: ares.Cseq, decided: Configuration) -> None:
        """§8.3/§8.5: in the background, the F entry reaches every old server (each reclaims
        its storage) and the new servers learn that their configuration is final."""
        if len(cseq) < 2 or cseq[-1].config.id != decided.id:
            return

        async def finalize() -> bool:
            async with self._finalizing:
                return await ares.finalize_everywhere(
                    self.channel,
                    cseq[-2].config,
                    chain,
                    NextEntry(decided, "F"),
                    gc=self.switches.gc,
                )

        task = asyncio.get_running_loop().create_task(finalize())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def settle(self) -> None:
        """Wait for background work (finalizing old configurations everywhere) to finish."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    async def write(self, key: str, value: bytes, *, group: str = DEFAULT_GROUP) -> Tag:
        """Write ``value`` to object ``key`` atomically; returns the tag it was written with."""
        _check_key(key, group)
        if not isinstance(value, bytes | bytearray | memoryview):
            raise ConfigurationError(f"value must be bytes, not {type(value).__name__}")
        self._check_fits(ares.chain_of(group, key, self.switches), len(value))
        coro = self._write_op(group, key, Blob(bytes(value)))
        return await self._recorded("write", key, group, coro, written=bytes(value))

    async def read_tagged(self, key: str, *, group: str = DEFAULT_GROUP) -> tuple[Tag, bytes]:
        """Read object ``key``: its value and the tag it was written with."""
        _check_key(key, group)
        coro = self._read_op(group, key)
        res = await self._recorded("read", key, group, coro)
        return res.tag, bytes(res.value.data)

    async def read(self, key: str, *, group: str = DEFAULT_GROUP) -> bytes:
        """Read object ``key`` atomically (``b""`` if it was never written)."""
        return (await self.read_tagged(key, group=group))[1]

    async def _recorded(
        self,
        kind: OpKind,
        key: str,
        group: str,
        coro: Coroutine[Any, Any, T],
        *,
        written: bytes | None = None,
    ) -> T:
        if tracing.enabled():
            attrs: dict[str, Any] = {
                "ares.op": kind,
                "ares.group": group,
                "ares.object": key,
                "ares.mode": self.mode,
            }
            if written is not None:
                attrs["ares.bytes"] = len(written)
            with tracing.span("op", attrs) as span:
                result = await self._record(kind, key, group, coro, written=written)
                if isinstance(result, ops.ReadResult):
                    span.set_attribute("ares.bytes", len(result.value.data))
                return result
        return await self._record(kind, key, group, coro, written=written)

    async def _record(
        self,
        kind: OpKind,
        key: str,
        group: str,
        coro: Coroutine[Any, Any, T],
        *,
        written: bytes | None = None,
    ) -> T:
        rec = self.recorder
        if rec is None:
            return await coro
        op_id = rec.next_id()
        start = rec.now()
        try:
            result = await coro
        except BaseException as e:
            rec.record(
                OpRecord(
                    op_id,
                    self.client_id,
                    kind,
                    key,
                    start,
                    rec.now(),
                    value=value_digest(written) if written is not None else None,
                    outcome="fail",
                    group=group,
                    error=f"{type(e).__name__}: {e}",
                )
            )
            raise
        if isinstance(result, Tag):
            tag: Tag = result
            digest = value_digest(written or b"")
        else:
            assert isinstance(result, ops.ReadResult)
            tag, digest = result.tag, value_digest(result.value.data)
        rec.record(
            OpRecord(
                op_id,
                self.client_id,
                kind,
                key,
                start,
                rec.now(),
                value=digest,
                outcome="ok",
                tag=(tag.z, tag.writer),
                group=group,
            )
        )
        return result

    async def stats(self, servers: Iterable[ServerInfo] | None = None) -> list[Stats | str]:
        """Each server's counters (or the error that server gave); default: the initial
        configuration's servers."""
        out: list[Stats | str] = []
        for s in servers if servers is not None else self.configuration.servers:
            try:
                r = await self.channel.request(
                    s, GetStats(), timeout_s=self.options.connect_timeout_s
                )
                out.append(r if isinstance(r, Stats) else f"unexpected reply {type(r).__name__}")
            except Exception as e:
                out.append(f"{type(e).__name__}: {e}")
        return out

    async def ping(self, server_index: int = 0, payload: bytes | None = None) -> None:
        """One round trip to one server (measures the transport floor)."""
        s = self.configuration.servers[server_index]
        await self.channel.request(s, Ping(Blob(payload) if payload is not None else None))


def connect(
    cluster: str | Path | ClusterFile,
    *,
    client_id: str | None = None,
    recorder: HistoryRecorder | None = None,
    options: ClientOptions | None = None,
    switches: ops.OpSwitches = ops.DEFAULT_SWITCHES,
    cseq_cache: str | Path | None = None,
) -> Store:
    """A :class:`Store` for the cluster described by a cluster file (path or parsed).

    ``cseq_cache``: a file where the client keeps the configuration chains it learned, so that
    it still finds the data after the initial servers are gone (docs/protocol.md §8.5).
    """
    cf = cluster if isinstance(cluster, ClusterFile) else load_cluster_file(cluster)
    return Store(
        cf.initial,
        options=options or cf.client,
        client_id=client_id,
        recorder=recorder,
        switches=switches,
        cseq_cache=cseq_cache,
        known_servers=cf.servers,
    )


class SyncStore:
    """A blocking wrapper for scripts: ``with aresdsm.connect_sync("cluster.toml") as s: ...``."""

    def __init__(self, store: Store) -> None:
        self._runner = asyncio.Runner()
        self._store = store

    def __enter__(self) -> SyncStore:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def write(self, key: str, value: bytes, *, group: str = DEFAULT_GROUP) -> Tag:
        return self._runner.run(self._store.write(key, value, group=group))

    def read(self, key: str, *, group: str = DEFAULT_GROUP) -> bytes:
        return self._runner.run(self._store.read(key, group=group))

    def close(self) -> None:
        self._runner.run(self._store.close())
        self._runner.close()


def connect_sync(cluster: str | Path | ClusterFile, **kwargs: Any) -> SyncStore:
    return SyncStore(connect(cluster, **kwargs))
