"""The public client: ``async with aresdsm.connect("cluster.toml") as store``.

A :class:`Store` reads and writes named objects with atomic (linearizable) semantics. It holds one
TCP connection per server and runs any number of operations concurrently; every write gets its own
writer id (client id + random incarnation + operation number) so that no two writes -- of one
client, or of two processes using one client name -- ever share a tag.

Errors (see :mod:`aresdsm.errors`): :class:`~aresdsm.errors.OperationTimeout` and
:class:`~aresdsm.errors.QuorumUnavailable` when not enough servers answer -- a write that failed
this way may or may not have taken effect -- and :class:`~aresdsm.errors.ConfigurationError` for a
bad cluster file or argument.

Optionally every operation is recorded (:class:`HistoryRecorder`) for ``ares check``.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import dataclasses
import logging
import math
import random
import threading
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, TypeVar

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
from .errors import (
    AresError,
    ConfigurationError,
    CoverableConflict,
    OperationTimeout,
    QuorumUnavailable,
)
from .history import OpKind, OpRecord, StrictClock, value_digest, write_records
from .identity import initial_digest
from .limits import MAX_NAME_BYTES
from .metrics import ClientMetrics
from .net.client import ClusterIdentity, TcpChannel, context_without_deadline, within
from .net.client import deadline as net_deadline
from .protocol import ares, coverable, ops
from .protocol.channel import ConfigurationObsolete, StoreChannel
from .tags import TAG0, Tag, new_incarnation, tombstone_writer, writer_id
from .wire.blob import Blob
from .wire.messages import GetStats, LatestConfig, NextEntry, NextReply, Ping, Pong, Stats

if TYPE_CHECKING:
    from .files import Files, SyncFiles

T = TypeVar("T")
log = logging.getLogger("aresdsm.client")
MAX_KEY_BYTES = MAX_NAME_BYTES
"""An object key or group name (the server checks its own limits too: aresdsm.limits)."""
FRAME_SLACK_BYTES = 64 * 1024
"""Room for a reply's header and coding padding next to its values."""
LIST_READS_IN_FLIGHT = 16
"""Reads a listing runs at once to check which listed keys are present."""
MAX_BACKGROUND_FINALIZE = 16
"""Chains finalized in the background at once (many with ``batch`` off)."""
CLOSE_WAIT_S = 1.0
"""close() waits at most this long for background work (finalize everywhere, §8.3), then
abandons it (safe: finalize-config already completed on a quorum)."""
HEDGE_SHARE = 0.2
"""An operation still running after min(connect_timeout_s, HEDGE_SHARE * timeout_s) starts a
relocation next to it (§8.5): paused retired servers never answer, and a new client must not
spend its whole deadline waiting for them."""
MAX_RELOCATIONS = 3
"""Relocations one operation follows (the chain may move on while it relocates)."""
RECONFIG_TIMEOUT_FACTOR = 12
"""reconfigure() and finish_reconfiguration() default to this many times timeout_s: a transfer
takes a round per page of objects (§8.4)."""


class HistoryRecorder:
    """Appends one JSON line per completed (or failed) operation to a file; thread-safe."""

    def __init__(self, out: IO[bytes], *, clock: Any = time.time) -> None:
        self._out = out
        self._clock = StrictClock(clock)  # an op invoked after another returned is later
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
    ignored. What is read is only a *hint* -- which servers to ask, and how far the chain had
    come: no cached entry is used before a server confirmed it (:meth:`Store._relocate`), so a
    cache left by an earlier deployment at the same addresses is never followed.
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
    _check_group(group)
    if "\x00" in key:
        raise ConfigurationError("object keys and groups must not contain NUL characters")
    if len(key.encode()) > MAX_KEY_BYTES:
        raise ConfigurationError(f"object key and group are limited to {MAX_KEY_BYTES} bytes")


def _check_group(group: str) -> None:
    if not isinstance(group, str) or not group:
        raise ConfigurationError("group must be a non-empty string")
    if "\x00" in group:
        raise ConfigurationError("object keys and groups must not contain NUL characters")
    if len(group.encode()) > MAX_KEY_BYTES:
        raise ConfigurationError(f"object key and group are limited to {MAX_KEY_BYTES} bytes")


class _Hedge:
    """The hedge of one :meth:`Store._with_recovery` attempt: at its timer, a relocation next
    to the attempt (§8.5); if that moved the chain while the attempt still runs, the attempt's
    task is cancelled (``moved``) and the operation retries on the moved chain."""

    __slots__ = (
        "active",
        "cancelling",
        "chain",
        "moved",
        "relocation",
        "seen",
        "store",
        "task",
        "timer",
    )

    def __init__(self, store: Store, chain: str, seen: tuple[int, bool], task: asyncio.Task[Any]):
        self.store = store
        self.chain = chain
        self.seen = seen
        self.task = task
        self.cancelling = task.cancelling()
        self.active = True
        """The attempt still runs."""
        self.moved = False
        """The relocation moved the chain and cancelled the attempt's task."""
        self.relocation: asyncio.Task[bool] | None = None
        self.timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self.timer = None
        if self.active:
            self.relocation = asyncio.get_running_loop().create_task(
                self.store._relocate_from(self.chain, self.seen)
            )
            self.relocation.add_done_callback(self._relocated)

    def _relocated(self, t: asyncio.Task[bool]) -> None:
        if t.cancelled():
            return
        if t.exception() is None and t.result() and self.active:
            self.active = False
            self.moved = True
            self.task.cancel()

    def stop(self) -> None:
        self.active = False
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.relocation is not None and not self.relocation.done():
            self.relocation.cancel()  # the shared relocation goes on (_relocate_from shields it)


async def _raise(e: BaseException) -> Any:
    raise e


def _timed_out(total_s: float) -> OperationTimeout:
    return OperationTimeout(f"the operation did not complete within timeout_s={total_s:g}")


def _check_timeout(timeout_s: float | None) -> None:
    if timeout_s is not None and not (
        isinstance(timeout_s, int | float) and math.isfinite(timeout_s) and timeout_s > 0
    ):
        raise ConfigurationError(f"timeout_s must be a positive number of seconds, not {timeout_s}")


@dataclass(frozen=True)
class CvrResult:
    """The answer of :meth:`Store.cvr_write` (docs/protocol.md §9.1)."""

    ok: bool
    """True: the value was installed under ``tag``; False: stale, nothing installed."""
    tag: Tag
    """The installed version (ok) or the newest one (stale)."""
    value: bytes | None
    """The installed value (ok) or the newest one (stale; None: the object is absent)."""


async def _distinct_groups(
    page_after: Callable[[str], Awaitable[ares.KeysPage]],
) -> list[str]:
    """The groups named by paged, ordered ``group NUL key`` names (object keys of the cluster's
    chain, or with ``batch`` off the chains' names; others -- the cluster's chain itself among
    the chain names -- are skipped), skipping past each group once seen: every name of group
    g sorts before g + "\x01"."""
    found: list[str] = []
    after = ""
    while True:
        page = await page_after(after)
        for name in page.keys:
            if ares.OBJECT_CHAIN not in name:
                continue
            g, _ = ares.split_object_key(name)
            if not found or found[-1] != g:
                found.append(g)
        if page.after is None:
            return found
        after = max(page.after, found[-1] + "\x01") if found else page.after


class Store:
    """An atomic object store client. Use :func:`connect`.

    Every public call accepts ``timeout_s``: the deadline of the whole call (default: the
    cluster file's ``[client] timeout_s``), retries and relocation included. In Ares II every
    object of every group follows the cluster's one configuration chain (docs/protocol.md §2, §8.4).
    """

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
        channel: StoreChannel | None = None,
        incarnation: str | None = None,
        cluster_id: str = "",
        metrics: ClientMetrics | None = None,
    ) -> None:
        self.configuration = configuration
        self.cluster_id = cluster_id
        """The cluster this client belongs to ("" : only the initial configuration's digest is
        proven in the handshake -- library use without a cluster file)."""
        self.known_servers = tuple(known_servers)
        """Servers to ask for LATEST_CONFIG when the chain leads only to unreachable ones."""
        self.options = options or ClientOptions()
        self.client_id = client_id or uuid.uuid4().hex[:12]
        if "\x00" in self.client_id:
            raise ConfigurationError("client_id must not contain NUL characters")
        self.incarnation = incarnation or new_incarnation()
        """Part of every writer id, random per Store: a client restarted under the same
        ``client_id`` counts its operations from 1 again, and must not reuse a tag of its
        earlier life with another value (§2, tests/sim/test_reused_client_name.py); the
        simulator passes a seeded one."""
        self.metrics = metrics
        """Counters and histograms (:class:`~aresdsm.metrics.ClientMetrics`); None: off, free."""
        if channel is None:
            tcp = TcpChannel(
                self.options, hello=ClusterIdentity(cluster_id, initial_digest(configuration))
            )
            tcp.metrics = metrics
            tcp.faults = switches.faults
            channel = tcp
        self.channel: StoreChannel = channel
        self.recorder = recorder
        if not self.channel.may_install and switches.write_back_final:
            # without the admin role a client may not finalize (docs/protocol.md §13): it
            # writes discovered F entries back as P
            switches = dataclasses.replace(switches, write_back_final=False)
        self.switches = switches
        self.cseq_cache = Path(cseq_cache) if cseq_cache is not None else None
        self._op_seq = 0
        self._cseqs: dict[str, ares.Cseq] = {}
        self._hints: dict[str, ares.Cseq] = load_cseq_cache(self.cseq_cache, configuration)
        """Chains from the disk cache: where to ask, and how far the chain had come. Never used
        as a chain before a server confirmed it (issue: a cache from another deployment)."""
        self._relocating: dict[str, asyncio.Task[None]] = {}
        """One relocation in flight per chain; concurrent operations share it."""
        self._background: set[asyncio.Task[bool]] = set()
        self._finalizing = asyncio.Semaphore(MAX_BACKGROUND_FINALIZE)
        self._files: Files | None = None

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self, *, wait_s: float = CLOSE_WAIT_S) -> None:
        """Close the connections. Background work (finalizing old configurations everywhere,
        §8.3) gets at most ``wait_s`` seconds, then it is abandoned -- safely: a quorum already
        holds every finalize, the rest only reclaims storage and tells late clients the way."""
        await self.settle(timeout_s=wait_s)
        for task in list(self._background) + list(self._relocating.values()):
            task.cancel()
        await asyncio.gather(*self._background, *self._relocating.values(), return_exceptions=True)
        await self.channel.close()
        if self.cseq_cache is not None:
            try:
                save_cseq_cache(self.cseq_cache, self.configuration, {**self._hints, **self._cseqs})
            except OSError as e:
                log.warning("cannot save the configuration chain cache %s: %s", self.cseq_cache, e)

    def _next_writer(self) -> str:
        self._op_seq += 1
        if self.switches.faults.broken_writer_ids_without_incarnation:
            return writer_id(self.client_id, self._op_seq)
        return writer_id(self.client_id, self._op_seq, self.incarnation)

    @property
    def mode(self) -> str:
        return "ares2" if self.switches.piggyback else "classic"

    def _chain(self, group: str, key: str | None) -> str:
        """The chain a call works on: the cluster's (Ares II), or one object's (``batch`` off)."""
        if self.switches.batch:
            return ares.CLUSTER_CHAIN
        if key is None:
            raise ConfigurationError(
                "with batch off (classic) every object has a chain of its own: name a key"
            )
        return ares.chain_of(group, key, self.switches)

    def cseq(self, group: str = DEFAULT_GROUP, key: str | None = None) -> ares.Cseq:
        """This client's current view of the configuration chain (the cluster's in Ares II;
        the object ``key``'s with ``batch`` off). A chain name is accepted too."""
        if self.switches.batch:
            return self._view(ares.CLUSTER_CHAIN)
        return self._view(group if key is None else ares.chain_of(group, key, self.switches))

    def _view(self, chain: str) -> ares.Cseq:
        return self._cseqs.get(chain) or ares.initial_cseq(self.configuration)

    def _check_fits(self, chain: str, size: int) -> None:
        """Refuse a value whose reads could not fit a frame in the configuration it goes to:
        a TREAS server answers a read with up to δ+1 coded elements of ⌈|v|/k⌉ bytes (§4.2).
        Accepted, such a write would leave the object unreadable for good."""
        c = self._view(chain)[-1].config
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

    def _learn(self, chain: str, cseq: ares.Cseq) -> None:
        mine = self._view(chain)
        if cseq is mine and chain in self._cseqs:  # an operation that changed nothing
            return
        try:
            self._cseqs[chain] = ares.merge(mine, cseq)
        except ares.DisjointChains:
            # views with no configuration in common: one was adopted from LATEST_CONFIG (§8.5)
            # beyond the end of the other; keep the later one (by position in the chain)
            if cseq[-1].config.epoch > mine[-1].config.epoch:
                self._cseqs[chain] = cseq

    # -- deadlines, relocation -------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _deadline(self, timeout_s: float | None) -> AsyncIterator[None]:
        """One deadline for a whole call: every round ends by it, and the call is cut off at
        it (OperationTimeout)."""
        _check_timeout(timeout_s)
        total = self.options.timeout_s if timeout_s is None else float(timeout_s)
        with net_deadline(total) as at:
            try:
                async with asyncio.timeout_at(at):
                    yield
            except TimeoutError:
                raise _timed_out(total) from None

    def _ask_servers(self, chain: str) -> builtins.list[ServerInfo]:
        """Every server this client knows of: the cluster file's, and those of every
        configuration it has seen or cached (one per address)."""
        out: dict[str, ServerInfo] = {s.address: s for s in self.known_servers}
        for cseq in (self._hints.get(chain, ()), self._view(chain)):
            for e in cseq:
                out.update({s.address: s for s in e.config.servers})
        return list(out.values())

    async def relocate(self, group: str = DEFAULT_GROUP, *, timeout_s: float | None = None) -> bool:
        """LATEST_CONFIG (§8.5): ask every known server, in parallel, for the newest finalized
        configuration it knows, adopt the newest by position in the chain, and discover onwards
        from it. Concurrent callers share one relocation. Returns whether the chain's last
        configuration is now a later one than when the call started."""
        chain = group if not self.switches.batch else ares.CLUSTER_CHAIN
        async with self._deadline(timeout_s):
            return await self._relocate_from(chain, self._position(chain))

    def _position(self, chain: str) -> tuple[int, bool]:
        """How far this client's view of the chain reaches: the last entry's epoch, and whether
        it is finalized (a view ending in a pending entry still needs its predecessor's servers:
        learning that entry finalized moves the client on, §8.5)."""
        last = self._view(chain)[-1]
        return last.config.epoch, last.status == "F"

    async def _relocate_from(self, chain: str, seen: tuple[int, bool]) -> bool:
        """Relocate unless a concurrent relocation already moved the chain past ``seen`` (the
        position of the view the caller's failed attempt used). True if it moved."""
        if self._position(chain) <= seen:
            task = self._relocating.get(chain)
            if task is None or task.done():
                task = asyncio.get_running_loop().create_task(self._relocate(chain))
                self._relocating[chain] = task
            await asyncio.shield(task)
        return self._position(chain) > seen

    async def _relocate(self, chain: str, hint_epoch: int = 0) -> None:
        """Ask all known servers for LATEST_CONFIG at once. An answer at least ``hint_epoch``
        and beyond what this client has is followed at once (discovery from it, which also
        checks that its quorum answers); lesser answers are tried, newest first, once every
        server answered or ``connect_timeout_s`` passed -- a paused server never delays more."""
        last = self._view(chain)[-1]
        # a view ending in a pending entry takes that very configuration, finalized
        have = last.config.epoch - (last.status != "F")
        want = max(have + 1, hint_epoch)
        asks = {
            asyncio.ensure_future(
                self.channel.request(
                    s, LatestConfig(chain), timeout_s=self.options.connect_timeout_s
                )
            )
            for s in self._ask_servers(chain)
        }
        later: dict[str, NextEntry] = {}
        tried: set[str] = set()

        async def follow(entry: NextEntry) -> bool:
            tried.add(entry.config.id)
            try:
                cseq = await ares.read_config(self.channel, ares.adopt(entry), chain, self.switches)
            except (QuorumUnavailable, OperationTimeout, ConfigurationObsolete):
                return False
            self._learn(chain, self._with_history(chain, cseq))
            if self.metrics is not None:
                self.metrics.relocations.inc()
            return True

        try:
            pending = asks
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for t in done:
                    reply = t.result() if not t.exception() else None
                    if not isinstance(reply, NextReply) or reply.next is None:
                        continue
                    e = reply.next
                    if e.status != "F" or e.config.epoch <= have or e.config.id in tried:
                        continue
                    if e.config.epoch >= want:
                        if await follow(e):
                            return
                    else:
                        later[e.config.id] = e
            for e in sorted(later.values(), key=lambda x: -x.config.epoch):
                if await follow(e):
                    return
        finally:
            for t in asks:
                t.cancel()
            await asyncio.gather(*asks, return_exceptions=True)

    def _with_history(self, chain: str, adopted: ares.Cseq) -> ares.Cseq:
        """An adopted view with the configurations before it, when the cache holds the very
        configuration a server confirmed (descriptors are unique): the cache is then this
        cluster's, and its earlier entries are history -- never used for data (operations start
        at the last finalized entry), but reconfiguration checks server ids against them."""
        hint = self._hints.get(chain, ())
        for i, e in enumerate(hint):
            if e.config == adopted[0].config:
                older = tuple(ares.CseqEntry(x.config, "F") for x in hint[:i])
                return (*older, *adopted)
        return adopted

    async def _confirm_cache(self, chain: str) -> None:
        """Before the first operation on a chain the disk cache knows beyond the initial
        configuration: relocate with the cache as a hint (which servers, how far). Only what a
        server confirms is used; without a confirmation the client starts from the initial
        configuration, as a new client does (issue 10 item 5)."""
        hint = self._hints.get(chain)
        if hint is None or chain in self._cseqs:
            return
        if len(hint) < 2 and hint[-1].config == self.configuration:
            return
        await self._relocate_from_hint(chain, max(e.config.epoch for e in hint if e.status == "F"))

    async def _relocate_from_hint(self, chain: str, hint_epoch: int) -> None:
        task = self._relocating.get(chain)
        if task is None or task.done():
            task = asyncio.get_running_loop().create_task(self._relocate(chain, hint_epoch))
            self._relocating[chain] = task
        await asyncio.shield(task)
        self._cseqs.setdefault(chain, ares.initial_cseq(self.configuration))

    async def _with_recovery(
        self, chain: str, attempt: Callable[[], Awaitable[T]], retry: Callable[[], Awaitable[T]]
    ) -> T:
        """Run ``attempt`` on the chain as this client knows it. If it fails for want of a
        quorum -- or is still running after a short while (``hedge``: retired servers that are
        paused answer nothing, and waiting for them would cost the whole deadline) -- relocate
        (§8.5; shared with concurrent operations) and, if the chain moved, run ``retry`` on it:
        the same call, or for a write that chose its tag, the write finished with that tag.

        The attempt runs in the caller's task; the hedge is a loop timer that starts the
        relocation next to it and, if the chain moved, cancels the attempt (no task and no
        ``asyncio.wait`` per operation: issue 18)."""
        if chain in self._hints and chain not in self._cseqs:
            await self._confirm_cache(chain)
        seen = self._position(chain)
        task = asyncio.current_task()
        assert task is not None
        hedge = _Hedge(self, chain, seen, task)
        hedge.timer = asyncio.get_running_loop().call_later(self._hedge_s(), hedge.start)
        try:
            try:
                result = await attempt()
            finally:
                hedge.stop()
        except asyncio.CancelledError:
            # the hedge's cancellation alone (anyone else's -- the caller's, the deadline's --
            # goes on): the chain moved on, retry there
            if not hedge.moved or task.uncancel() > hedge.cancelling:
                raise
        except (QuorumUnavailable, OperationTimeout):
            if hedge.moved:  # it cancelled us as we failed: take its cancellation back
                task.uncancel()
            elif not await self._relocate_from(chain, seen):
                raise
        else:
            if hedge.moved:  # it cancelled us as we finished: take its cancellation back
                task.uncancel()
            return result
        return await self._retry_after_move(chain, retry)

    async def _retry_after_move(self, chain: str, retry: Callable[[], Awaitable[T]]) -> T:
        for _ in range(MAX_RELOCATIONS):
            seen = self._position(chain)
            try:
                return await retry()
            except (QuorumUnavailable, OperationTimeout):
                if not await self._relocate_from(chain, seen):
                    raise
        return await retry()

    def _hedge_s(self) -> float:
        return min(self.options.connect_timeout_s, HEDGE_SHARE * self.options.timeout_s)

    # -- reads and writes --------------------------------------------------------------------------

    def _write_op(
        self, group: str, key: str, value: Blob, *, delete: bool = False
    ) -> Coroutine[Any, Any, Tag]:
        """A write, retried after the client relocated (§8.5) -- with the tag the first attempt
        chose, if it got that far: its put-data may already have taken effect."""
        chain = ares.chain_of(group, key, self.switches)
        okey = ares.object_key(group, key, self.switches)
        chosen: builtins.list[Tag] = []

        async def again() -> Tag:
            if not chosen or self.switches.faults.broken_retry_write_with_new_tag:
                return await self._write_once(chain, okey, value, chosen.append, delete)
            cseq = await ares.finish_write(
                self.channel,
                self._view(chain),
                group=chain,
                key=okey,
                tag=chosen[0],
                value=value,
                switches=self.switches,
            )
            self._learn(chain, cseq)
            return chosen[0]

        return self._with_recovery(
            chain, lambda: self._write_once(chain, okey, value, chosen.append, delete), again
        )

    def _read_op(self, group: str, key: str) -> Coroutine[Any, Any, ops.ReadResult]:
        chain = ares.chain_of(group, key, self.switches)
        okey = ares.object_key(group, key, self.switches)
        return self._with_recovery(
            chain, lambda: self._read_once(chain, okey), lambda: self._read_once(chain, okey)
        )

    async def _write_once(
        self,
        chain: str,
        key: str,
        value: Blob,
        on_tag: Callable[[Tag], None],
        delete: bool = False,
    ) -> Tag:
        writer = self._next_writer()
        tag, cseq = await ares.write(
            self.channel,
            self._view(chain),
            group=chain,
            key=key,
            value=value,
            writer=tombstone_writer(writer) if delete else writer,
            switches=self.switches,
            on_tag=on_tag,
        )
        self._learn(chain, cseq)
        return tag

    async def _read_once(self, chain: str, key: str) -> ops.ReadResult:
        res, cseq = await ares.read(
            self.channel, self._view(chain), group=chain, key=key, switches=self.switches
        )
        self._learn(chain, cseq)
        return res

    # -- configuration chain -----------------------------------------------------------------------

    async def configurations(
        self, group: str = DEFAULT_GROUP, *, key: str | None = None, timeout_s: float | None = None
    ) -> ares.Cseq:
        """Discover and return the configuration chain (docs/protocol.md §6 read-config): the
        cluster's (Ares II; ``group`` is then irrelevant), or object ``key``'s with ``batch``
        off. Found from any reachable server when the configurations known lead nowhere."""
        chain = group if key is None and not self.switches.batch else self._chain(group, key)
        async with self._deadline(timeout_s):
            return await self._discover(chain)

    async def _discover(self, chain: str) -> ares.Cseq:
        def learn(cseq: ares.Cseq) -> None:
            self._learn(chain, cseq)

        async def once() -> ares.Cseq:
            cseq = await ares.read_config(
                self.channel, self._view(chain), chain, self.switches, progress=learn
            )
            self._learn(chain, cseq)
            return self._view(chain)

        return await self._with_recovery(chain, once, once)

    async def groups(self, *, timeout_s: float | None = None) -> builtins.list[str]:
        """The groups that hold at least one object, in order: listed from the object keys a
        quorum of each current configuration holds (keys only, never values), so every group
        with a completed write is listed; a group whose keys are all deleted is left out (its
        keys are read until one is present). Not a snapshot: groups written or emptied
        meanwhile may or may not appear. With ``batch`` off, from the chains the initial
        configuration knows. ``timeout_s`` bounds the listing and each check (as in
        :meth:`list`), not their sum: the work grows with the number of groups."""
        if self.switches.batch:
            candidates = await self._group_candidates(timeout_s)
            return [g for g in candidates if await self.list(group=g, limit=1, timeout_s=timeout_s)]
        async with self._deadline(timeout_s):
            return await self._groups_classic()

    async def _group_candidates(self, timeout_s: float | None) -> builtins.list[str]:
        async with self._deadline(timeout_s):
            return await _distinct_groups(
                lambda after: self._list_page(ares.CLUSTER_CHAIN, "", after)
            )

    async def list(
        self,
        prefix: str = "",
        *,
        group: str = DEFAULT_GROUP,
        limit: int | None = None,
        timeout_s: float | None = None,
    ) -> builtins.list[str]:
        """The keys of ``group`` that start with ``prefix``, in order (at most ``limit``).

        Not a snapshot: the servers report the keys a quorum of the current configuration
        holds (keys only), and each is then read (:meth:`read_tagged`, a few at a time) so that
        keys deleted are left out. Each key's presence is linearizable on its own: a listed key
        was present at some moment of the listing, and a key written before the listing began
        and not deleted since is listed; keys written or deleted during it may or may not be.
        ``timeout_s`` bounds each page and each read (default: the client's)."""
        out: builtins.list[str] = []
        keys = self.iter_keys(prefix, group=group, timeout_s=timeout_s)
        async with contextlib.aclosing(keys):  # closed at once when the limit stops it early
            async for key in keys:
                if limit is not None and len(out) >= limit:
                    break
                out.append(key)
        return out

    async def iter_keys(
        self,
        prefix: str = "",
        *,
        group: str = DEFAULT_GROUP,
        verify: bool = True,
        timeout_s: float | None = None,
    ) -> AsyncGenerator[str, None]:
        """The keys of ``group`` that start with ``prefix``, in order, page by page (memory
        bounded by a page). ``verify`` (default): read each key and leave out the absent ones,
        as :meth:`list` does; False: every key the servers hold, deleted ones included (a
        backup reads each key anyway)."""
        _check_group(group)
        if "\x00" in prefix:
            raise ConfigurationError("a key prefix must not contain NUL characters")
        if not self.switches.batch:
            raise ConfigurationError(
                "listing keys needs the cluster's chain (batch on); with batch off every object "
                "has a chain of its own"
            )
        chain = ares.CLUSTER_CHAIN
        full = ares.object_key(group, prefix, self.switches)
        after = ""
        while True:
            async with self._deadline(timeout_s):
                page = await self._list_page(chain, full, after)
            keys = [ares.split_object_key(k)[1] for k in page.keys if k.startswith(full)]
            if verify:
                keys = await self._present(keys, group, timeout_s)
            for k in keys:
                yield k
            if page.after is None:
                return
            after = page.after

    async def _present(
        self, keys: builtins.list[str], group: str, timeout_s: float | None
    ) -> builtins.list[str]:
        gate = asyncio.Semaphore(LIST_READS_IN_FLIGHT)

        async def present(key: str) -> bool:
            async with gate:
                _, value = await self.read_tagged(key, group=group, timeout_s=timeout_s)
                return value is not None

        found = await asyncio.gather(*(present(k) for k in keys))
        return [k for k, ok in zip(keys, found, strict=True) if ok]

    async def keys(
        self, prefix: str = "", *, group: str = DEFAULT_GROUP, timeout_s: float | None = None
    ) -> builtins.list[str]:
        """The keys of ``group`` that start with ``prefix``, in order (keys only, never values;
        every key with a completed write is listed, deleted ones too -- :meth:`list` leaves
        those out). With ``batch`` off every object has a chain of its own: the initial
        configuration's servers list them (``ListChains``)."""
        _check_group(group)
        if self.switches.batch:
            return [k async for k in self.iter_keys(prefix, group=group, verify=False)]
        async with self._deadline(timeout_s):
            keys = await ares.list_objects(self.channel, self.configuration, group)
        return sorted(k for k in keys if k.startswith(prefix))

    @property
    def files(self) -> Files:
        """Fragmented files of this store (docs/protocol.md §9.2): :class:`aresdsm.files.Files`.
        The files layer sits above the client; it is imported when first used."""
        if self._files is None:
            from .files import Files

            self._files = Files(self, configuration=lambda g: self.cseq(g)[-1].config.id)
        return self._files

    async def _list_page(self, chain: str, prefix: str, after: str) -> ares.KeysPage:
        async def once() -> ares.KeysPage:
            page, cseq = await ares.list_keys(
                self.channel,
                self._view(chain),
                chain,
                prefix=prefix,
                after=after,
                switches=self.switches,
            )
            self._learn(chain, cseq)
            return page

        return await self._with_recovery(chain, once, once)

    async def _groups_classic(self) -> builtins.list[str]:
        return await _distinct_groups(
            lambda after: ares.list_chains(self.channel, self.configuration, "", after)
        )

    async def reconfigure(
        self,
        proposal: Configuration,
        *,
        group: str = DEFAULT_GROUP,
        keys: Iterable[str] | None = None,
        concurrency: int = 1,
        force: bool = False,
        timeout_s: float | None = None,
    ) -> Configuration:
        """Install ``proposal`` as the successor of the last configuration of the cluster's
        chain: one consensus decision moves every object of every group (§8.4).

        Returns the configuration consensus decided: ``proposal`` or, if another reconfigurer
        won, theirs (the caller may retry on top of it).

        Refused before consensus (ConfigurationError), because each would wedge the cluster or
        weaken it: a new member that does not answer a ping; unless ``force``, a server id that
        was in an earlier configuration but not in the last one (ids are never reused; force
        only for a server whose data directory is intact), and a proposal that survives no
        crash, or fewer crashes than the configuration it replaces. The history checked is the
        chain this client knows: from the initial configuration, or what a server confirmed.
        A decided but unfinished successor at the end of the chain is completed first
        (:meth:`finish_reconfiguration`). ``timeout_s`` bounds the whole call (default: the
        client's timeout_s, times RECONFIG_TIMEOUT_FACTOR: a transfer takes many rounds).

        With the ``batch`` switch off (the original Ares) every object has a chain of its own:
        each of ``keys`` (default: every object of ``group`` the initial configuration knows)
        is reconfigured on its own, ``concurrency`` at a time, and the result is ``proposal``
        only if it was decided for every object.
        """
        validate_configuration(proposal)
        _check_timeout(timeout_s)
        if timeout_s is None:
            timeout_s = self.options.timeout_s * RECONFIG_TIMEOUT_FACTOR
        attrs = {"ares.op": "reconfig", "ares.group": group, "ares.mode": self.mode}
        with tracing.span("op", attrs):
            return await self._measured(
                "reconfig",
                self._reconfigure_all(proposal, group, keys, concurrency, force, timeout_s),
            )

    async def _reconfigure_all(
        self,
        proposal: Configuration,
        group: str,
        keys: Iterable[str] | None,
        concurrency: int,
        force: bool,
        timeout_s: float,
    ) -> Configuration:
        async with self._deadline(timeout_s):
            proposal = await self._stamp_incarnations(proposal, group)  # issue 10
            await self._probe_members(proposal)
            if self.switches.batch:
                return await self._reconfigure(proposal, force)
            return await self._reconfigure_each(proposal, group, keys, concurrency, force)

    async def _measured(self, op: str, coro: Coroutine[Any, Any, T]) -> T:
        m = self.metrics
        if m is None:
            return await coro
        started = time.perf_counter()
        try:
            result = await coro
        except BaseException as e:
            m.operation(op, started, e)
            raise
        m.operation(op, started, None)
        return result

    async def _probe_members(self, proposal: Configuration) -> None:
        """Every member of the proposal must answer before consensus can make it the cluster's
        configuration: a decided configuration whose servers do not exist wedges every client
        until they appear (issue: a spare where nothing listens)."""

        async def ping(server: ServerInfo) -> str | None:
            try:
                reply = await self.channel.request(
                    server, Ping(), timeout_s=self.options.connect_timeout_s
                )
            except AresError as e:
                return f"{server.id}: {e}"
            return None if isinstance(reply, Pong) else f"{server.id}: {type(reply).__name__}"

        with tracing.span("probe-members", {"ares.proposal": proposal.id}):
            errors = [e for e in await asyncio.gather(*map(ping, proposal.servers)) if e]
        if errors:
            raise ConfigurationError(
                f"refusing {proposal.id}: not every new member answers ({'; '.join(errors)})"
            )

    def _vet(self, force: bool) -> Callable[[ares.Cseq, Configuration], None]:
        def vet(cseq: ares.Cseq, proposal: Configuration) -> None:
            current = cseq[-1].config
            gone = set().union(*(set(e.config.server_ids) for e in cseq[:-1]))
            gone -= set(current.server_ids)
            reused = sorted(gone & set(proposal.server_ids))
            if reused and not force:
                raise ConfigurationError(
                    f"refusing {proposal.id}: server id(s) {', '.join(reused)} left the cluster "
                    "in an earlier configuration; server ids are never reused (give the server a "
                    "new id and an empty data directory; force=True / --force only if its data "
                    "directory is the intact one it left with)"
                )
            if force:
                return
            f_new, f_old = proposal.crashes_tolerated, current.crashes_tolerated
            if f_new == 0 or f_new < f_old:
                raise ConfigurationError(
                    f"refusing {proposal.id}: it survives {f_new} crash(es) "
                    f"(quorum {proposal.quorum_size} of {proposal.n}), {current.id} survives "
                    f"{f_old}; pass force=True (ares reconfig --force) to accept that"
                )

        return vet

    async def _reconfigure(self, proposal: Configuration, force: bool) -> Configuration:
        chain = ares.CLUSTER_CHAIN
        await self._discover(chain)
        cseq, decided = await ares.reconfig(
            self.channel,
            self._view(chain),
            group=chain,
            proposal=proposal,
            proposer=self._next_writer(),
            backoff=_random_backoff,
            switches=self.switches,
            discover=False,
            vet=self._vet(force),
        )
        self._learn(chain, cseq)
        self._finalize_later(chain, cseq, decided)
        return decided

    async def finish_reconfiguration(self, *, timeout_s: float | None = None) -> ares.Cseq:
        """Complete a reconfiguration that consensus decided but whose reconfigurer stopped
        before finalizing it (the chain ends with a P entry; ``ares status`` shows it): move the
        state into it and finalize it. Needs a quorum of its servers. Returns the chain."""
        _check_timeout(timeout_s)
        if timeout_s is None:
            timeout_s = self.options.timeout_s * RECONFIG_TIMEOUT_FACTOR
        chain = ares.CLUSTER_CHAIN if self.switches.batch else None
        if chain is None:
            raise ConfigurationError("finish_reconfiguration works on the cluster's chain")
        async with self._deadline(timeout_s):
            cseq = await self._discover(chain)
            if cseq[-1].status == "P":
                cseq = await ares.finish_pending(
                    self.channel, cseq, group=chain, switches=self.switches
                )
                self._learn(chain, cseq)
                self._finalize_later(chain, cseq, cseq[-1].config)
        return self._view(chain)

    async def _reconfigure_each(
        self,
        proposal: Configuration,
        group: str,
        keys: Iterable[str] | None,
        concurrency: int,
        force: bool,
    ) -> Configuration:
        if keys is None:
            keys = await ares.list_objects(self.channel, self.configuration, group)
        keys = sorted(set(keys))
        vet = self._vet(force)
        done = await ares.reconfig_objects(
            self.channel,
            self._view,
            group=group,
            keys=keys,
            proposal=proposal,
            proposer=self._next_writer(),
            backoff=_random_backoff,
            concurrency=concurrency,
            switches=self.switches,
            vet=vet,
        )
        result = proposal
        for chain, (cseq, decided) in done.items():
            self._learn(chain, cseq)
            self._finalize_later(chain, cseq, decided)
            if decided.id != proposal.id:
                result = decided
        return result

    async def probe(self, servers: Iterable[ServerInfo]) -> tuple[ServerInfo, ...]:
        """Connect to each server (handshake: this cluster, that server id) and return them
        stamped with the incarnation uid each reports. Raises ConfigurationError naming every
        server that is unreachable or is not what it should be."""
        found, bad = await self._probe(tuple(servers))
        if bad:
            raise ConfigurationError(
                f"not every server answers as a member of this cluster ({'; '.join(bad)})"
            )
        return found

    async def _probe(
        self, servers: tuple[ServerInfo, ...]
    ) -> tuple[tuple[ServerInfo, ...], builtins.list[str]]:
        identify = getattr(self.channel, "identify", None)
        if identify is None:  # a channel without handshakes (the simulator): nothing to stamp
            return servers, []

        async def one(s: ServerInfo) -> ServerInfo | str:
            try:
                welcome = await identify(s, timeout_s=self.options.connect_timeout_s)
            except AresError as e:
                return str(e) if s.id in str(e) else f"{s.id} ({s.address}): {e}"
            return msgspec.structs.replace(s, uid=welcome.incarnation)

        found = await asyncio.gather(*(one(s) for s in servers))
        return (
            tuple(x for x in found if isinstance(x, ServerInfo)),
            [x for x in found if isinstance(x, str)],
        )

    async def _stamp_incarnations(self, proposal: Configuration, group: str) -> Configuration:
        """Name, in the proposal, the incarnation of every new member (issue 10): a server
        re-created later under the same id then refuses to answer for it. Members of the last
        configuration this client knows keep what that configuration says (one that is down
        does not stop the reconfiguration that replaces another)."""
        current = {s.id: s for e in self.cseq(group) for s in e.config.servers}
        new = tuple(s for s in proposal.servers if not s.uid and s.id not in current)
        found, bad = await self._probe(new)
        if bad:  # (the wording of the member ping that follows, which would refuse it too)
            raise ConfigurationError(
                f"refusing {proposal.id}: not every new member answers ({'; '.join(bad)})"
            )
        probed = {s.id: s for s in found}
        probed |= {
            s.id: current[s.id]
            for s in proposal.servers
            if not s.uid and s.id in current and current[s.id].address == s.address
        }
        servers = tuple(probed.get(s.id, s) for s in proposal.servers)
        return msgspec.structs.replace(proposal, servers=servers)

    def _finalize_later(self, chain: str, cseq: ares.Cseq, decided: Configuration) -> None:
        """§8.3/§8.5: in the background, the F entry reaches every old server (each reclaims
        its storage) and the new servers learn that their configuration is final. Runs under
        no caller's deadline (its own rounds have timeout_s each); close() waits for it at most
        CLOSE_WAIT_S."""
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

        task = asyncio.get_running_loop().create_task(
            finalize(), context=context_without_deadline()
        )
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def settle(self, *, timeout_s: float | None = None) -> bool:
        """Wait for background work (finalizing old configurations everywhere) to finish, at
        most ``timeout_s`` (default: no bound). Returns whether it all finished."""
        if not self._background:
            return True
        _done, pending = await asyncio.wait(set(self._background), timeout=timeout_s)
        return not pending

    async def write(
        self, key: str, value: bytes, *, group: str = DEFAULT_GROUP, timeout_s: float | None = None
    ) -> Tag:
        """Write ``value`` to object ``key`` atomically; returns the tag it was written with."""
        _check_key(key, group)
        if not isinstance(value, bytes | bytearray | memoryview):
            raise ConfigurationError(f"value must be bytes, not {type(value).__name__}")
        self._check_fits(ares.chain_of(group, key, self.switches), len(value))
        data = bytes(value)  # one copy (none for bytes): the caller may change a bytearray later
        coro = self._deadlined(self._write_op(group, key, Blob(data)), timeout_s)
        return await self._recorded("write", key, group, coro, written=data)

    async def delete(
        self, key: str, *, group: str = DEFAULT_GROUP, timeout_s: float | None = None
    ) -> Tag:
        """Delete object ``key`` atomically; returns the tag of the deletion.

        A delete is a write of a tombstone (:data:`aresdsm.tags.TOMBSTONE_MARK`): it is ordered
        with every read and write of the key exactly as a write is, and a read that follows it
        returns None until the key is written again. Deleting an absent key is allowed (it
        writes a tombstone). Like a write, a delete that failed with OperationTimeout or
        QuorumUnavailable may or may not have taken effect."""
        _check_key(key, group)
        coro = self._deadlined(self._write_op(group, key, Blob(b""), delete=True), timeout_s)
        return await self._recorded("write", key, group, coro, written=b"", op="delete")

    async def cvr_write(
        self,
        key: str,
        value: bytes,
        base: Tag,
        *,
        group: str = DEFAULT_GROUP,
        timeout_s: float | None = None,
        fresh: bool = False,
    ) -> CvrResult:
        """Coverable write (docs/protocol.md §9.1): install ``value`` as the successor of version
        ``base`` (TAG0 for a never-written object) if ``base`` is the newest version.

        Returns ``CvrResult(ok=True, tag, value)`` when installed, ``CvrResult(ok=False, tag,
        value)`` with the newest version when ``base`` is not (stale; nothing installed). Raises
        :class:`~aresdsm.errors.CoverableConflict` when the write may or may not have taken
        effect (read again, retry on what was read). A coverable object is written only with
        ``cvr_write``, never with :meth:`write` (§9.1).

        ``fresh=True`` (base must be TAG0): the caller guarantees that no other writer ever
        writes ``key`` on base TAG0 -- a key named by a random id of its own, like a new block
        of a file. The value is then put in one round without consensus, sent once.

        Like a write, the call relocates and retries on the moved chain when the chain's
        configuration is replaced under it (§8.5), with the same tag."""
        _check_key(key, group)
        if not isinstance(value, bytes | bytearray | memoryview):
            raise ConfigurationError(f"value must be bytes, not {type(value).__name__}")
        if not isinstance(base, Tag):
            raise ConfigurationError(f"base must be a Tag, not {type(base).__name__}")
        if fresh and base != TAG0:
            raise ConfigurationError(f"a fresh coverable write has base {TAG0}, not {base}")
        chain = ares.chain_of(group, key, self.switches)
        self._check_fits(chain, len(value))
        if not fresh and len(value) > self.options.max_frame_bytes - FRAME_SLACK_BYTES:
            # its accept carries the whole value, also to a TREAS server (§9.1)
            raise ConfigurationError(
                f"a coverable value of {len(value)} bytes does not fit "
                f"max_frame_bytes={self.options.max_frame_bytes}"
            )
        okey = ares.object_key(group, key, self.switches)
        blob = Blob(value if isinstance(value, bytes) else bytes(value))
        writer = self._next_writer()
        accepted = False

        def on_accept() -> None:
            nonlocal accepted
            accepted = True

        async def once() -> CvrResult:
            if fresh:
                out, cseq = await coverable.put_fresh(
                    self.channel,
                    self._view(chain),
                    group=chain,
                    key=okey,
                    value=blob,
                    writer=writer,
                    switches=self.switches,
                )
            else:
                out, cseq = await coverable.cvr_write(
                    self.channel,
                    self._view(chain),
                    group=chain,
                    key=okey,
                    value=blob,
                    base=base,
                    writer=writer,  # a retry keeps the tag: its first accept may be decided
                    backoff=_random_backoff,
                    switches=self.switches,
                    on_accept=on_accept,
                    may_have_accepted=accepted,
                )
            self._learn(chain, cseq)
            v = None if out.value is None else bytes(out.value.data)
            return CvrResult(out.ok, out.tag, v)

        async def op() -> CvrResult:
            try:
                return await self._with_recovery(chain, once, once)
            except (QuorumUnavailable, OperationTimeout) as e:
                if accepted:  # its accept may have been stored: the outcome is unknown
                    raise CoverableConflict(
                        f"coverable write of {key!r} on base {base}: outcome unknown ({e}); "
                        "read the object again",
                        tag=Tag(base.z + 1, writer),
                    ) from e
                raise

        coro = self._deadlined(op(), timeout_s)
        return await self._recorded_cvr(key, group, base, value, Tag(base.z + 1, writer), coro)

    async def _recorded_cvr(
        self,
        key: str,
        group: str,
        base: Tag,
        value: bytes | bytearray | memoryview,
        own: Tag,
        coro: Coroutine[Any, Any, CvrResult],
    ) -> CvrResult:
        """Trace, measure and record one coverable write (the history's ``cvr`` records, which
        ``ares check`` checks against the coverable model, docs/protocol.md §9.1)."""
        rec = self.recorder
        op_id = rec.next_id() if rec is not None else 0
        start = rec.now() if rec is not None else 0.0
        attrs: dict[str, Any] = {
            "ares.op": "cvr-write",
            "ares.group": group,
            "ares.object": key,
            "ares.mode": self.mode,
            "ares.bytes": len(value),
        }

        def record(**fields: Any) -> None:
            if rec is not None:
                rec.record(
                    OpRecord(
                        op_id,
                        self.client_id,
                        "cvr",
                        key,
                        start,
                        rec.now(),
                        base=(base.z, base.writer),
                        group=group,
                        **fields,
                    )
                )

        try:
            with tracing.span("op", attrs):
                result = await self._measured("cvr-write", coro)
        except BaseException as e:
            if rec is not None:  # hashing the value costs ~1 ms per MiB: only for a history
                record(
                    value=value_digest(value),
                    outcome="fail",
                    tag=(own.z, own.writer),
                    error=f"{type(e).__name__}: {e}",
                )
            raise
        if rec is not None:
            record(
                value=value_digest(result.value or b""),
                outcome="ok",
                tag=(result.tag.z, result.tag.writer),
                stale=not result.ok,
            )
        return result

    async def read_tagged(
        self, key: str, *, group: str = DEFAULT_GROUP, timeout_s: float | None = None
    ) -> tuple[Tag, bytes | None]:
        """Read object ``key``: the tag of the version read and its value; the value is None if
        the key was never written (the tag is then ``TAG0``) or was deleted (``tag.deleted``)."""
        res = await self._reading(key, group, timeout_s)
        if res.tag == TAG0 or res.tag.deleted:
            return res.tag, None
        return res.tag, bytes(res.value.data)

    async def read(
        self, key: str, *, group: str = DEFAULT_GROUP, timeout_s: float | None = None
    ) -> bytes | None:
        """Read object ``key`` atomically: its value, or None if the key was never written or
        was deleted (distinct from ``b""``, the value of a key written empty)."""
        res = await self._reading(key, group, timeout_s)  # (not through read_tagged: a frame less)
        if res.tag == TAG0 or res.tag.deleted:
            return None
        return bytes(res.value.data)

    def _reading(
        self, key: str, group: str, timeout_s: float | None
    ) -> Coroutine[Any, Any, ops.ReadResult]:
        """The coroutine of one read (checked, under its deadline, recorded)."""
        _check_key(key, group)
        coro = self._deadlined(self._read_op(group, key), timeout_s)
        return self._recorded("read", key, group, coro)

    def _deadlined(
        self, coro: Coroutine[Any, Any, T], timeout_s: float | None
    ) -> Coroutine[Any, Any, T]:
        """``coro`` under the call's deadline (as :meth:`_deadline`, with one timer). A bad
        ``timeout_s`` is raised when the result is awaited, like any failure of the call."""
        try:
            _check_timeout(timeout_s)
        except ConfigurationError as e:
            coro.close()  # never started: no "never awaited" warning
            return _raise(e)
        total = self.options.timeout_s if timeout_s is None else float(timeout_s)
        return within(coro, total, lambda: _timed_out(total))

    def _recorded(
        self,
        kind: OpKind,
        key: str,
        group: str,
        coro: Coroutine[Any, Any, T],
        *,
        written: bytes | None = None,
        op: str | None = None,
    ) -> Coroutine[Any, Any, T]:
        """Trace, measure and record one operation. ``kind`` is what the history records (a
        delete is a write of the empty value to the register model), ``op`` what metrics and
        spans call it (default: ``kind``). With nothing to trace, measure or record: ``coro``
        itself (no coroutine frame of its own on every resumption, issue 18)."""
        if self.recorder is None and self.metrics is None and not tracing.enabled():
            return coro
        return self._traced(kind, key, group, coro, written=written, op=op)

    async def _traced(
        self,
        kind: OpKind,
        key: str,
        group: str,
        coro: Coroutine[Any, Any, T],
        *,
        written: bytes | None = None,
        op: str | None = None,
    ) -> T:
        op = op or kind
        if tracing.enabled():
            attrs: dict[str, Any] = {
                "ares.op": op,
                "ares.group": group,
                "ares.object": key,
                "ares.mode": self.mode,
            }
            if written is not None:
                attrs["ares.bytes"] = len(written)
            with tracing.span("op", attrs) as span:
                result = await self._measured(
                    op, self._record(kind, key, group, coro, written=written)
                )
                if isinstance(result, ops.ReadResult):
                    span.set_attribute("ares.bytes", len(result.value.data))
                return result
        return await self._measured(op, self._record(kind, key, group, coro, written=written))

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

    async def stats(
        self, servers: Iterable[ServerInfo] | None = None
    ) -> builtins.list[Stats | str]:
        """Each server's counters (or the error that server gave); default: the initial
        configuration's servers. Asked in parallel: a paused server costs connect_timeout_s
        once, not once per server."""

        async def one(s: ServerInfo) -> Stats | str:
            try:
                r = await self.channel.request(
                    s, GetStats(), timeout_s=self.options.connect_timeout_s
                )
                return r if isinstance(r, Stats) else f"unexpected reply {type(r).__name__}"
            except Exception as e:
                return f"{type(e).__name__}: {e}"

        chosen = servers if servers is not None else self.configuration.servers
        return list(await asyncio.gather(*(one(s) for s in chosen)))

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
    metrics: ClientMetrics | None = None,
) -> Store:
    """A :class:`Store` for the cluster described by a cluster file (path or parsed).

    ``client_id``: a name for this client (default: random); writer ids derive from it.
    ``recorder``: record every operation for ``ares check``. ``options``: the ``[client]``
    table's settings (default: the cluster file's). ``switches``: protocol switches (default:
    Ares II). ``cseq_cache``: a file where the client keeps the configuration chains it learned,
    so that it still finds the data after the initial servers are gone (docs/protocol.md §8.5).
    ``metrics``: a :class:`~aresdsm.metrics.ClientMetrics` to count and time operations and
    rounds (default: none, no cost).
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
        cluster_id=cf.cluster_id,
        metrics=metrics,
    )


class SyncStore:
    """A blocking, thread-safe client: ``with aresdsm.connect_sync("cluster.toml") as s: ...``.

    It runs one :class:`Store` on a private event loop in a background thread; every method
    submits its operation to that loop (``asyncio.run_coroutine_threadsafe``) and waits for the
    result. Any number of threads may share one SyncStore: their operations run concurrently,
    exactly as concurrent operations of one async :class:`Store` do (each is linearizable on its
    own). Errors are the Store's (:mod:`aresdsm.errors`). Close it (or use ``with``) to stop the
    thread; a SyncStore must not be used from inside a coroutine running on its own loop.
    """

    def __init__(self, make_store: Callable[[], Store], *, use_uvloop: bool = True) -> None:
        loop: asyncio.AbstractEventLoop | None = None
        if use_uvloop:
            try:
                import uvloop
            except ImportError:
                pass
            else:
                loop = uvloop.new_event_loop()
        self._loop = loop if loop is not None else asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="aresdsm-sync-store", daemon=True
        )
        self._thread.start()
        self._closed = False
        self._close_lock = threading.Lock()

        async def build() -> Store:
            return make_store()

        try:
            self._store: Store = self._call(build())
        except BaseException:
            self._stop_loop()
            raise

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._closed:
            coro.close()
            raise ConfigurationError("this SyncStore is closed")
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            coro.close()
            raise ConfigurationError("a SyncStore cannot be called from its own event loop")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    @property
    def store(self) -> Store:
        """The underlying async :class:`Store` (use it only through this object's methods)."""
        return self._store

    @property
    def metrics(self) -> ClientMetrics | None:
        """The client's metrics (see :func:`connect_sync`), or None."""
        return self._store.metrics

    def __enter__(self) -> SyncStore:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def write(
        self, key: str, value: bytes, *, group: str = DEFAULT_GROUP, timeout_s: float | None = None
    ) -> Tag:
        """Write ``value`` to object ``key`` atomically; returns the tag it was written with."""
        return self._call(self._store.write(key, value, group=group, timeout_s=timeout_s))

    def read(
        self, key: str, *, group: str = DEFAULT_GROUP, timeout_s: float | None = None
    ) -> bytes | None:
        """Read object ``key`` atomically: its value, or None if never written or deleted."""
        return self._call(self._store.read(key, group=group, timeout_s=timeout_s))

    def read_tagged(
        self, key: str, *, group: str = DEFAULT_GROUP, timeout_s: float | None = None
    ) -> tuple[Tag, bytes | None]:
        """Read object ``key``: the tag of the version read and its value (None: absent)."""
        return self._call(self._store.read_tagged(key, group=group, timeout_s=timeout_s))

    def delete(
        self, key: str, *, group: str = DEFAULT_GROUP, timeout_s: float | None = None
    ) -> Tag:
        """Delete object ``key`` atomically (a tombstone write, see :meth:`Store.delete`)."""
        return self._call(self._store.delete(key, group=group, timeout_s=timeout_s))

    def list(
        self,
        prefix: str = "",
        *,
        group: str = DEFAULT_GROUP,
        limit: int | None = None,
        timeout_s: float | None = None,
    ) -> builtins.list[str]:
        """The keys of ``group`` that start with ``prefix``, in order (see :meth:`Store.list`:
        not a snapshot; each key's presence is linearizable on its own)."""
        return self._call(self._store.list(prefix, group=group, limit=limit, timeout_s=timeout_s))

    def keys(
        self, prefix: str = "", *, group: str = DEFAULT_GROUP, timeout_s: float | None = None
    ) -> builtins.list[str]:
        """Every key of ``group`` with ``prefix``, deleted ones too (see :meth:`Store.keys`)."""
        return self._call(self._store.keys(prefix, group=group, timeout_s=timeout_s))

    def groups(self, *, timeout_s: float | None = None) -> builtins.list[str]:
        """The groups that hold at least one object (see :meth:`Store.groups`)."""
        return self._call(self._store.groups(timeout_s=timeout_s))

    def configurations(
        self, group: str = DEFAULT_GROUP, *, key: str | None = None, timeout_s: float | None = None
    ) -> ares.Cseq:
        """Discover and return the configuration chain (see :meth:`Store.configurations`)."""
        return self._call(self._store.configurations(group, key=key, timeout_s=timeout_s))

    def reconfigure(
        self,
        proposal: Configuration,
        *,
        group: str = DEFAULT_GROUP,
        keys: Iterable[str] | None = None,
        concurrency: int = 1,
        force: bool = False,
        timeout_s: float | None = None,
    ) -> Configuration:
        """Install ``proposal`` as the successor of the last configuration; returns the
        configuration consensus decided (see :meth:`Store.reconfigure`)."""
        return self._call(
            self._store.reconfigure(
                proposal,
                group=group,
                keys=keys,
                concurrency=concurrency,
                force=force,
                timeout_s=timeout_s,
            )
        )

    def probe(self, servers: Iterable[ServerInfo]) -> tuple[ServerInfo, ...]:
        """Check each server's identity and return them stamped with their incarnation uids
        (see :meth:`Store.probe`)."""
        return self._call(self._store.probe(servers))

    def finish_reconfiguration(self, *, timeout_s: float | None = None) -> ares.Cseq:
        """Complete a decided but unfinished reconfiguration (see
        :meth:`Store.finish_reconfiguration`)."""
        return self._call(self._store.finish_reconfiguration(timeout_s=timeout_s))

    def relocate(self, group: str = DEFAULT_GROUP, *, timeout_s: float | None = None) -> bool:
        """Adopt the newest finalized configuration any known server reports (§8.5)."""
        return self._call(self._store.relocate(group, timeout_s=timeout_s))

    def stats(self, servers: Iterable[ServerInfo] | None = None) -> builtins.list[Stats | str]:
        """Each server's counters, or the error that server gave (see :meth:`Store.stats`)."""
        return self._call(self._store.stats(servers))

    def ping(self, server_index: int = 0, payload: bytes | None = None) -> None:
        """One round trip to one server."""
        self._call(self._store.ping(server_index, payload))

    def settle(self, *, timeout_s: float | None = None) -> bool:
        """Wait for background work (finalizing old configurations everywhere) to finish, at
        most ``timeout_s``; returns whether it all finished."""
        return self._call(self._store.settle(timeout_s=timeout_s))

    def close(self, *, wait_s: float = CLOSE_WAIT_S) -> None:
        """Close the connections (background work gets at most ``wait_s``) and stop the
        thread. Idempotent; safe to call from any thread but the SyncStore's own."""
        with self._close_lock:
            if self._closed:
                return
            try:
                self._call(self._store.close(wait_s=wait_s))
            finally:
                self._closed = True
                self._stop_loop()

    @property
    def files(self) -> SyncFiles:
        """Fragmented files, blocking (:class:`aresdsm.files.SyncFiles`)."""
        from .files import SyncFiles

        return SyncFiles(self._call, self._store.files)

    def cvr_write(
        self,
        key: str,
        value: bytes,
        base: Tag,
        *,
        group: str = DEFAULT_GROUP,
        timeout_s: float | None = None,
        fresh: bool = False,
    ) -> CvrResult:
        """Coverable write of ``value`` as the successor of version ``base`` (see
        :meth:`Store.cvr_write`)."""
        return self._call(
            self._store.cvr_write(key, value, base, group=group, timeout_s=timeout_s, fresh=fresh)
        )

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self._loop.close()


def connect_sync(
    cluster: str | Path | ClusterFile,
    *,
    client_id: str | None = None,
    recorder: HistoryRecorder | None = None,
    options: ClientOptions | None = None,
    switches: ops.OpSwitches = ops.DEFAULT_SWITCHES,
    cseq_cache: str | Path | None = None,
    metrics: ClientMetrics | None = None,
    use_uvloop: bool = True,
) -> SyncStore:
    """A blocking, thread-safe :class:`SyncStore` for the cluster a cluster file describes.

    The keyword arguments are :func:`connect`'s; ``use_uvloop``: run the private event loop on
    uvloop when it is installed.
    """
    cf = cluster if isinstance(cluster, ClusterFile) else load_cluster_file(cluster)
    return SyncStore(
        lambda: connect(
            cf,
            client_id=client_id,
            recorder=recorder,
            options=options,
            switches=switches,
            cseq_cache=cseq_cache,
            metrics=metrics,
        ),
        use_uvloop=use_uvloop,
    )
