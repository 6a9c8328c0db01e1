"""``ares chaos``: real server processes, a nemesis, recorded clients and a checked history.

The simulator (``ares sim``) explores schedules in virtual time; this is the same question asked of
the real thing (issue 14 item 6). A local cluster of server processes (:class:`LocalCluster`)
runs behind a fault-injecting proxy (:mod:`aresdsm.faultproxy`); client tasks, each a
:class:`~aresdsm.client.Store` leaving from a loopback address of its own, read and write a few hot
keys with unique values and record every operation (:class:`~aresdsm.client.HistoryRecorder`).
Meanwhile two loops break things:

* the **nemesis** injects one fault at a time and heals it after a random hold: partitions of
  servers from everyone (both directions), one-way partitions (requests held, or replies held),
  the reconfigurer cut from some servers, delays on chosen links (heavy-tailed), connection resets,
  clients' requests to one server held across a whole reconfiguration (the §8.2 schedule),
  SIGKILL (restart on heal), SIGSTOP (SIGCONT on heal), a crash and immediate restart, and a client
  crash (its operation abandoned, a new client takes its place);
* the **reconfigurer** changes the configuration while that happens: ABD ⇄ TREAS, adding and
  removing a server, and *retiring* the servers in use (the initial ones first): the cluster moves
  onto servers outside the current configuration and the old ones are stopped or paused; they come
  back later, so that a later retirement can move onto them again.

After each healed fault a long-lived probe client measures how long the cluster took to serve
it a write and a read again; after the final heal a new client measures its first write and read
too (it starts from the cluster file's initial configuration, which the run may have retired).
At the end everything is healed (rules removed, paused servers continued, stopped ones
restarted), every key is read once more, and the history is checked for linearizability
(docs/protocol.md §10 invariant 1; a lost acknowledged write, invariant 8, shows as a stale read).
An ``InvariantViolation`` anywhere, or a server process that exited without the nemesis killing it,
fails the run too: nothing is swallowed.

``--cluster FILE`` points the clients at an operator's own cluster for a burn-in. The nemesis then
controls neither the network nor the processes: only client-side faults (:data:`REMOTE_FAULTS`)
are possible, and reconfiguration only among the cluster file's servers when asked for.

The seed fixes what the nemesis does, where and for how long; the interleaving of real processes is
not reproducible, so a run is a sample, not a replayable schedule.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import signal
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
from rich.markup import escape
from rich.table import Table

from .check import check_file
from .client import HistoryRecorder, Store, connect
from .config import DEFAULT_GROUP, ClusterFile, Configuration, load_cluster_file
from .errors import AresError, ConfigurationError, InvariantViolation, ServerError
from .faultproxy import ANY, ProxyProcess, Rule
from .local import LocalCluster
from .testing import Broken, broken_switches

NETWORK_FAULTS = ("partition", "one-way", "reconfigurer-partition", "delay", "drop", "handoff")
PROCESS_FAULTS = ("kill", "pause", "crash-restart")
CLIENT_FAULTS = ("client-crash",)
RECONFIG_KINDS = ("reconfig", "retire")
ALL_FAULTS = NETWORK_FAULTS + PROCESS_FAULTS + CLIENT_FAULTS + RECONFIG_KINDS
REMOTE_FAULTS = (*CLIENT_FAULTS, "reconfig")
"""What ``--cluster FILE`` can do: no proxy in front of those servers, no control of their
processes. ``reconfig`` changes the operator's cluster (membership among the file's servers,
ABD ⇄ TREAS) and is only done when asked for."""
REMOTE_DEFAULT_FAULTS = CLIENT_FAULTS

SERVER_SIDE_FAULTS = frozenset({"broken_skip_value_mac", "broken_late_value_read"})
"""Faults of the server shell (``Server(faults=...)``): a chaos run's clients cannot turn them
on, so they are not offered (a run with one of them could never fail)."""

BROKEN = {
    f.name.removeprefix("broken_").replace("_", "-"): f.name
    for f in dataclasses.fields(Broken)
    if f.name.startswith("broken_") and f.name not in SERVER_SIDE_FAULTS
}
"""Test-only protocol variants (``--broken skip-write-back`` turns on
``aresdsm.testing.Broken.broken_skip_write_back``) a chaos run should catch; kept out of the
help text."""

REMOTE_GROUP = "chaos"
"""The group a burn-in on an operator's cluster reads and writes (never their own data)."""
RECOVERY_BOUND_S = 30.0
MAX_CLIENTS = 64
MAX_SERVERS = 32


@dataclass(frozen=True)
class ChaosOptions:
    duration_s: float = 30.0
    seed: int = 1
    servers: int = 3
    """Servers in the initial configuration (local cluster)."""
    spares: int = 3
    """Servers outside it: where reconfigurations and retirements move the cluster."""
    clients: int = 4
    keys: int = 3
    faults: tuple[str, ...] = ALL_FAULTS
    dap: str = "abd"
    timeout_s: float = 1.0
    """Client round deadline: short, so operations fail fast while a fault holds."""
    hold_s: tuple[float, float] = (0.5, 3.0)
    """How long a fault holds before it is healed (uniform; one in ten holds 2-3x longer)."""
    gap_s: tuple[float, float] = (0.2, 1.0)
    """Quiet time between two faults."""
    reconfig_every_s: tuple[float, float] = (1.5, 4.0)
    value_bytes: int = 64
    storage: str = "sqlite"
    cluster_file: str | None = None
    base_dir: str | None = None
    """Keep the cluster's data, logs and the history here (default: a temporary directory)."""
    broken: tuple[str, ...] = ()

    def validate(self) -> None:
        if not 0 < self.duration_s <= 7 * 86400:
            raise ConfigurationError("--duration-s must be positive (at most a week)")
        if not 1 <= self.clients <= MAX_CLIENTS:
            raise ConfigurationError(f"--clients must be in 1..{MAX_CLIENTS}")
        if not 1 <= self.keys <= 10_000:
            raise ConfigurationError("--keys must be in 1..10000")
        if not 1 <= self.servers <= MAX_SERVERS or not 0 <= self.spares <= MAX_SERVERS:
            raise ConfigurationError(f"--servers must be in 1..{MAX_SERVERS}, --spares 0..32")
        if not 1 <= self.value_bytes <= 1024 * 1024:
            raise ConfigurationError("--value-bytes must be in 1..1048576")
        if not 0 < self.timeout_s <= 60:
            raise ConfigurationError("--timeout-s must be in (0, 60]")
        unknown = set(self.faults) - set(ALL_FAULTS)
        if unknown:
            raise ConfigurationError(
                f"unknown fault kind(s) {sorted(unknown)}; known: {', '.join(ALL_FAULTS)}"
            )
        if self.cluster_file is not None:
            remote_only = set(self.faults) - set(REMOTE_FAULTS)
            if remote_only:
                raise ConfigurationError(
                    f"with --cluster only client-side faults are possible "
                    f"({', '.join(REMOTE_FAULTS)}); not {', '.join(sorted(remote_only))}"
                )
        bad = set(self.broken) - set(BROKEN)
        if bad:
            raise ConfigurationError(f"unknown broken variant(s) {sorted(bad)}")
        if self.dap not in ("abd", "treas"):
            raise ConfigurationError("--dap must be abd or treas")
        if self.dap == "treas" and self.servers < 3:
            raise ConfigurationError("TREAS needs at least 3 servers here (k = n - 2)")


@dataclass
class FaultRecord:
    kind: str
    what: str
    start_s: float
    healed_s: float | None = None
    recovery_s: float | None = None
    """Heal to the probe's first successful write and read; None: not recovered in time."""
    interrupted: bool = False
    """The run ended before the probe succeeded (then recovery_s is None)."""


@dataclass
class ChaosResult:
    ops_ok: int = 0
    ops_failed: int = 0
    writes_ok: int = 0
    reads_ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    faults: list[FaultRecord] = field(default_factory=list)
    reconfigs: list[str] = field(default_factory=list)
    reconfigs_failed: int = 0
    retirements: int = 0
    problems: list[str] = field(default_factory=list)
    """Invariant violations and servers that died unbidden: each fails the run."""
    verdict: str = "unknown"
    explanation: str = ""
    history_path: str = ""
    final_recovery_s: float | None = None
    fresh_client_s: float | None = None
    """After the final heal: a new client's first write and read (it starts from the cluster
    file's initial configuration, which the run may have retired)."""
    duration_s: float = 0.0
    proxy_stats: dict[str, object] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.verdict == "ok" and not self.problems

    def recovery_times(self) -> list[float]:
        return [f.recovery_s for f in self.faults if f.recovery_s is not None]


def _source_ip(index: int) -> str:
    """Loopback source addresses: 127.0.0.7 checker, .8 probe, .9 reconfigurer, .11+ clients."""
    return f"127.0.0.{index}"


CHECKER, PROBE, RECONFIGURER = "checker", "probe", "reconfigurer"
Heal = Callable[[], Awaitable[None]]
FIXED_SOURCES = {CHECKER: 7, PROBE: 8, RECONFIGURER: 9}


def _tolerated(c: Configuration) -> int:
    """Crashes the configuration survives (n minus its quorum)."""
    return c.n - c.quorum_size


class Chaos:
    """One chaos run (see the module docstring). Use :func:`run_chaos`."""

    def __init__(self, opts: ChaosOptions, log: Callable[[str], None]) -> None:
        self.opts = opts
        self.say = log
        self.rng = random.Random(opts.seed)
        self.res = ChaosResult()
        self.local: LocalCluster | None = None
        self.proxy: ProxyProcess | None = None
        self.cf: ClusterFile | None = None
        self.group = DEFAULT_GROUP if opts.cluster_file is None else REMOTE_GROUP
        self.keys = [f"k{i}" for i in range(opts.keys)]
        self.switches = broken_switches(**{BROKEN[b]: True for b in opts.broken})
        self.recorder: HistoryRecorder | None = None
        self.t0 = time.monotonic()
        self.stopping = asyncio.Event()
        self.procs_lock = asyncio.Lock()
        self.down: dict[str, tuple[str, str]] = {}
        """Server -> (killed|paused|stopped, who: fault|retire) for servers the run took down."""
        self.retired: set[str] = set()
        self.current: Configuration | None = None
        self.client_tasks: dict[str, asyncio.Task[None]] = {}
        self.crashed: set[asyncio.Task[None]] = set()
        """Client tasks the nemesis crashed (they stop at once, or at their next operation)."""
        self.admin: Store | None = None
        self.probe: Store | None = None
        self.reconfig_lock = asyncio.Lock()
        """One reconfiguration at a time from this run (the reconfigurer loop, handoff faults)."""
        self.probe_n = 0
        self.config_no = 0

    # -- set-up --------------------------------------------------------------------------------

    def _store(self, source: str | None, *, recorded: bool = True) -> Store:
        assert self.cf is not None
        opts = self.cf.client
        if self.local is not None:
            idx = FIXED_SOURCES.get(source or "", 0)
            if not idx and source is not None and source.startswith("c"):
                idx = 10 + int(source[1:])
            opts = msgspec.structs.replace(
                opts,
                timeout_s=self.opts.timeout_s,
                connect_timeout_s=min(opts.connect_timeout_s, self.opts.timeout_s),
                source_host=_source_ip(idx) if idx else None,
            )
        return connect(
            self.cf,
            options=opts,
            recorder=self.recorder if recorded else None,
            switches=self.switches,
        )

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def event(self, text: str) -> None:
        self.say(f"t={self.elapsed():6.1f}s  {text}")

    async def _start_local(self, base: Path) -> None:
        o = self.opts
        k = max(1, o.servers - 2) if o.dap == "treas" else 1
        lc = LocalCluster.create(
            base / "cluster",
            n=o.servers,
            spares=o.spares,
            storage=o.storage,
            dap=o.dap,
            k=k,
            delta=4 if o.dap == "treas" else 0,
            timeout_s=o.timeout_s,
            proxied=True,
        )
        self.local = lc
        self.cf = lc.cluster
        ids = [s.id for s in lc.cluster.servers]
        self.say(f"starting {len(ids)} server processes behind a fault-injecting proxy ...")
        await asyncio.to_thread(lc.start, ids)
        sources = {_source_ip(i): name for name, i in FIXED_SOURCES.items()}
        sources |= {_source_ip(10 + i): f"c{i}" for i in range(1, MAX_CLIENTS + 1)}
        routes = [(s.id, s.address, lc.listen[s.id]) for s in lc.cluster.servers]
        self.proxy = await ProxyProcess.start(routes, sources)
        self.current = lc.cluster.initial

    # -- clients -------------------------------------------------------------------------------

    def _start_client(self, name: str) -> None:
        rng = random.Random(self.rng.random())
        self.client_tasks[name] = asyncio.get_running_loop().create_task(
            self._client(name, rng), name=f"chaos-{name}"
        )

    async def _op(self, store: Store, rng: random.Random, n: int) -> str:
        key = rng.choice(self.keys)
        deadline_s = self.opts.timeout_s * 10
        if rng.random() < 0.5:
            stamp = f"{store.client_id}-{n}|".encode()
            value = stamp + b"." * max(0, self.opts.value_bytes - len(stamp))
            await asyncio.wait_for(store.write(key, value, group=self.group), deadline_s)
            return "write"
        await asyncio.wait_for(store.read(key, group=self.group), deadline_s)
        return "read"

    async def _client(self, name: str, rng: random.Random) -> None:
        store = self._store(name)
        me = asyncio.current_task()
        n = 0
        try:
            while not self.stopping.is_set() and me not in self.crashed:
                n += 1
                try:
                    kind = await self._op(store, rng, n)
                except InvariantViolation as e:
                    self._problem(f"client {name}: invariant violated: {e}")
                    continue
                except (AresError, TimeoutError, OSError) as e:
                    self._failed(e)
                    await asyncio.sleep(0.02)
                    continue
                self.res.ops_ok += 1
                if kind == "write":
                    self.res.writes_ok += 1
                else:
                    self.res.reads_ok += 1
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(store.close(), self.opts.timeout_s * 5)

    def _failed(self, e: BaseException) -> None:
        self.res.ops_failed += 1
        self.res.errors[type(e).__name__] += 1
        if isinstance(e, ServerError) and "invariant" in str(e).lower():
            self._problem(f"a server reported a broken invariant: {e}")

    def _problem(self, text: str) -> None:
        if text not in self.res.problems:
            self.res.problems.append(text)
            self.event(f"PROBLEM: {text}")

    # -- servers -------------------------------------------------------------------------------

    def _check_processes(self) -> None:
        """A server process that exited although the run did not stop it: fail-stop (an
        exception in the core, a storage error) is a finding, never noise."""
        if self.local is None:
            return
        for sid, proc in list(self.local.procs.items()):
            code = proc.poll()
            if code is not None and sid not in self.down:
                self._problem(f"server {sid} exited by itself (code {code}); see its server.log")
                self.down[sid] = ("stopped", "crashed")
                self.local.procs.pop(sid, None)

    async def _take_down(self, sid: str, how: str, who: str) -> None:
        lc = self.local
        assert lc is not None
        if how == "paused":
            proc = lc.procs.get(sid)
            if proc is None:
                return
            proc.send_signal(signal.SIGSTOP)
        else:
            sig = signal.SIGKILL if how == "killed" else signal.SIGTERM
            await asyncio.to_thread(lc.kill, sid, sig)
        self.down[sid] = (how, who)

    async def _bring_back(self, sid: str) -> None:
        lc = self.local
        assert lc is not None
        how, _ = self.down.pop(sid)
        if how == "paused":
            proc = lc.procs.get(sid)
            if proc is not None:
                proc.send_signal(signal.SIGCONT)
        else:
            await asyncio.to_thread(lc.restart, sid)

    def _up(self) -> list[str]:
        assert self.cf is not None
        return [s.id for s in self.cf.servers if s.id not in self.down]

    def _members(self) -> list[str]:
        assert self.current is not None
        return list(self.current.server_ids)

    # -- the nemesis ---------------------------------------------------------------------------

    def _pick(self, pool: list[str], lo: int, hi: int) -> list[str]:
        hi = min(hi, len(pool))
        if hi < lo or not pool:
            return []
        return sorted(self.rng.sample(pool, self.rng.randint(lo, hi)))

    def _clients_subset(self) -> list[str]:
        names = sorted(self.client_tasks)
        if self.rng.random() < 0.5 or len(names) < 2:
            return [ANY]
        return self._pick(names, 1, len(names) - 1)

    async def _inject(self, kind: str) -> tuple[str, list[str], Heal | None]:
        """Start a fault. Returns its description, proxy rule names, and what heals it."""
        assert self.current is not None and self.cf is not None
        rng = self.rng
        members = self._members()
        everyone = [s.id for s in self.cf.servers]
        minority = max(1, len(members) // 2)
        hi = minority + (1 if rng.random() < 0.25 else 0)  # sometimes a majority: unavailable
        rules: list[tuple[str, Rule]] = []
        heal: Heal | None = None
        if kind == "partition":
            victims = self._pick(members, 1, hi)
            rules = [(f"{kind}-{v}", Rule("block", ANY, v)) for v in victims]
            what = f"servers {','.join(victims)} cut from everyone (both directions)"
        elif kind == "one-way":
            victims = self._pick(members, 1, hi)
            direction = rng.choice(("up", "down"))
            sources = self._clients_subset()
            rules = [
                (f"{kind}-{src}-{v}", Rule("block", src, v, direction))  # type: ignore[arg-type]
                for v in victims
                for src in sources
            ]
            held = "requests" if direction == "up" else "replies"
            what = f"{held} of clients {','.join(sources)} held at {','.join(victims)}"
        elif kind == "reconfigurer-partition":
            victims = self._pick(everyone, 1, max(1, len(everyone) // 2))
            direction = rng.choice(("both", "up", "down"))
            rules = [
                (f"{kind}-{v}", Rule("block", RECONFIGURER, v, direction))  # type: ignore[arg-type]
                for v in victims
            ]
            what = f"reconfigurer cut from {','.join(victims)} ({direction})"
        elif kind == "delay":
            # every source its own slow subset of the members (each link its own heavy-tailed
            # delay and direction): a client fast to some members and slow to others is what
            # lets one reader see a write that another reader after it misses
            sources = [*sorted(self.client_tasks), RECONFIGURER]
            parts = []
            for src in sources:
                if rng.random() < 0.2:
                    continue
                for v in self._pick(members, 1, max(1, len(members) - 1)):
                    direction = rng.choice(("both", "up", "down"))
                    delay_ms = min(3000.0, 10.0 * rng.paretovariate(1.1))
                    rule = Rule("delay", src, v, direction, delay_ms, delay_ms / 4)  # type: ignore[arg-type]
                    rules.append((f"{kind}-{src}-{v}", rule))
                    parts.append(f"{src}>{v} {direction} {delay_ms:.0f}ms")
            what = "delays " + (", ".join(parts) if parts else "(none drawn)")
        elif kind == "handoff":
            # the hand-off schedule (docs/protocol.md §8.2): clients' requests to one member
            # are held while the configuration changes, and arrive after it was finalized
            (victim,) = self._pick(members, 1, 1)
            sources = self._clients_subset()
            for src in sources:
                rule = Rule("block", src, victim, "up")
                assert self.proxy is not None
                await self.proxy.add(f"{kind}-{src}-{victim}", rule)
            await self._sleep(rng.uniform(0.05, 0.5))
            moved = "no reconfiguration"
            if self.admin is not None and not self.stopping.is_set():
                async with self.reconfig_lock:
                    try:
                        await asyncio.wait_for(
                            self._reconfigure_once(["reconfig"]), self.opts.timeout_s * 30
                        )
                        await asyncio.wait_for(self.admin.settle(), self.opts.timeout_s * 10)
                        moved = f"{self.current.id if self.current else '?'} finalized"
                    except (AresError, TimeoutError, OSError) as e:
                        self.res.reconfigs_failed += 1
                        moved = f"reconfiguration failed ({type(e).__name__})"
            rules = [
                (f"{kind}-{src}-{victim}", Rule("block", src, victim, "up")) for src in sources
            ]
            what = (
                f"requests of {','.join(sources)} held at {victim} across a reconfiguration "
                f"({moved})"
            )
        elif kind == "drop":
            victims = self._pick(everyone, 1, len(everyone))
            sources = self._clients_subset()
            rules = [
                (f"{kind}-{src}-{v}", Rule("drop", src, v)) for v in victims for src in sources
            ]
            what = f"connections of {','.join(sources)} to {','.join(victims)} reset"
        elif kind in ("kill", "pause", "crash-restart"):
            up = [m for m in members if m not in self.down]
            tolerated = max(1, _tolerated(self.current))
            n = 1 if kind == "crash-restart" else tolerated + (1 if rng.random() < 0.2 else 0)
            async with self.procs_lock:
                victims = self._pick(up, 1, n)
                how = "paused" if kind == "pause" else "killed"
                for v in victims:
                    await self._take_down(v, how, "fault")
            if kind == "crash-restart":
                async with self.procs_lock:
                    for v in victims:
                        if self.down.get(v, ("", ""))[1] == "fault":
                            await self._bring_back(v)
                what = f"SIGKILL and restart {','.join(victims)}"
            else:
                what = ("SIGSTOP " if kind == "pause" else "SIGKILL ") + ",".join(victims)

                async def heal_procs() -> None:
                    async with self.procs_lock:
                        for v in victims:
                            if self.down.get(v, ("", ""))[1] == "fault":
                                await self._bring_back(v)

                heal = heal_procs
            if not victims:
                what = f"{kind}: no server to pick"
        elif kind == "client-crash":
            name = rng.choice(sorted(self.client_tasks))
            task = self.client_tasks[name]
            self.crashed.add(task)
            task.cancel()
            # (Python 3.11's wait_for may swallow a cancellation that races with the operation's
            # end: the client then stops at its next operation, as it checks self.crashed)
            await asyncio.wait({task}, timeout=self.opts.timeout_s * 20)
            self._start_client(name)
            what = f"client {name} crashed mid-operation; a new client took its place"
        else:  # pragma: no cover - validated
            raise AssertionError(kind)
        assert self.proxy is not None or not rules
        for name, rule in rules:
            assert self.proxy is not None
            await self.proxy.add(name, rule)
        return what, [name for name, _ in rules], heal

    async def _nemesis(self, kinds: list[str]) -> None:
        o = self.opts
        while not self.stopping.is_set():
            await self._sleep(self.rng.uniform(*o.gap_s))
            if self.stopping.is_set():
                return
            self._check_processes()
            kind = self.rng.choice(kinds)
            rec = FaultRecord(kind, "", self.elapsed())
            rec.what, rule_names, heal = await self._inject(kind)
            self.res.faults.append(rec)
            self.event(f"fault: {rec.what}")
            instant = kind in ("crash-restart", "client-crash")
            if not instant:
                hold = self.rng.uniform(*o.hold_s)
                if self.rng.random() < 0.1:
                    hold *= self.rng.uniform(2, 3)
                await self._sleep(hold)
            for name in rule_names:
                assert self.proxy is not None
                await self.proxy.remove(name)
            if heal is not None:
                await heal()
            rec.healed_s = self.elapsed()
            if not instant:
                self.event(f"healed: {rec.what}")
            rec.recovery_s = await self._probe()
            if rec.recovery_s is not None:
                self.event(f"recovered in {rec.recovery_s:.2f} s")
            elif self.stopping.is_set():
                rec.interrupted = True
            else:
                self.event(f"NOT recovered within {RECOVERY_BOUND_S:.0f} s")

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), seconds)

    async def _probe(self, store: Store | None = None, *, final: bool = False) -> float | None:
        """Seconds from now until the probe client's write and read both succeed (None: not
        within RECOVERY_BOUND_S, or the run ended first unless ``final``). The probe is a
        long-lived client (it follows the configuration like any client that was running);
        ``store``: another one, e.g. a fresh client, which is closed afterwards."""
        start = time.monotonic()
        end = start + RECOVERY_BOUND_S
        probe = store if store is not None else self.probe
        assert probe is not None
        try:
            while time.monotonic() < end and (final or not self.stopping.is_set()):
                self.probe_n += 1
                try:
                    value = f"{probe.client_id}-{self.probe_n}".encode()
                    left = max(0.1, end - time.monotonic())
                    await asyncio.wait_for(probe.write("probe", value, group=self.group), left)
                    left = max(0.1, end - time.monotonic())
                    await asyncio.wait_for(probe.read("probe", group=self.group), left)
                    return time.monotonic() - start
                except InvariantViolation as e:
                    self._problem(f"probe: invariant violated: {e}")
                except (AresError, TimeoutError, OSError):
                    await asyncio.sleep(0.05)
            return None
        finally:
            if store is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(store.close(), self.opts.timeout_s * 5)

    # -- the reconfigurer ----------------------------------------------------------------------

    def _proposal(self, servers: list[str], dap: str) -> Configuration:
        assert self.cf is not None
        self.config_no += 1
        infos = tuple(self.cf.server(s) for s in servers)
        n = len(infos)
        if dap == "treas" and n >= 3:
            return Configuration(
                f"x{self.config_no}-{self.rng.getrandbits(24):06x}",
                infos,
                dap="treas",
                k=max(1, n - 2),
                delta=4,
            )
        return Configuration(f"x{self.config_no}-{self.rng.getrandbits(24):06x}", infos)

    async def _reconfigurer(self, kinds: list[str]) -> None:
        o = self.opts
        assert self.admin is not None
        while not self.stopping.is_set():
            await self._sleep(self.rng.uniform(*o.reconfig_every_s))
            if self.stopping.is_set():
                return
            try:
                async with self.reconfig_lock:
                    await asyncio.wait_for(self._reconfigure_once(kinds), o.timeout_s * 30)
            except InvariantViolation as e:
                self._problem(f"reconfigurer: invariant violated: {e}")
            except (AresError, TimeoutError, OSError) as e:
                self.res.reconfigs_failed += 1
                self.event(f"reconfiguration failed: {type(e).__name__}: {e}")

    async def _reconfigure_once(self, kinds: list[str]) -> None:
        assert self.admin is not None and self.cf is not None
        chain = await self.admin.configurations(self.group)
        self.current = cur = chain[-1].config
        members = list(cur.server_ids)
        # the first reconfiguration retires the initial servers (issue 11: every chaos run
        # moves the cluster off them); later ones are drawn at random
        kind = (
            "retire" if "retire" in kinds and not self.res.retirements else self.rng.choice(kinds)
        )
        retire_old: list[str] = []
        if kind == "retire":
            if self.local is None:
                return
            async with self.procs_lock:  # bring retired servers back for this move
                for sid in sorted(self.retired):
                    if self.down.get(sid, ("", ""))[1] == "retire":
                        await self._bring_back(sid)
                        self.event(f"retired server {sid} is back (spare)")
                    self.retired.discard(sid)
            fresh = [s for s in self._up() if s not in members]
            size = min(len(fresh), max(3, len(members)))
            if size < 3:
                self.event("retire: fewer than 3 servers outside the configuration are up")
                return
            new = sorted(self.rng.sample(fresh, size))
            dap = self.rng.choice(("abd", "treas"))
            retire_old = members
        else:
            op = self.rng.choice(("dap", "add", "remove"))
            up_outside = [s for s in self._up() if s not in members]
            dap = cur.dap
            new = members
            if op == "dap":
                dap = "treas" if cur.dap == "abd" else "abd"
            elif op == "add" and up_outside:
                new = sorted([*members, self.rng.choice(up_outside)])
            elif len(members) > 3:
                gone = self.rng.choice(members)
                new = sorted(m for m in members if m != gone)
            else:
                dap = "treas" if cur.dap == "abd" else "abd"
        proposal = self._proposal(new, dap)
        t = time.monotonic()
        # force: servers come back into later configurations (retired ones, removed ones) with
        # their data directories intact -- the case force exists for; a new member must still
        # answer the reconfigurer's probe (it may be partitioned from it: then refused)
        decided = await self.admin.reconfigure(proposal, group=self.group, force=True)
        ms = (time.monotonic() - t) * 1e3
        self.current = decided
        self.res.reconfigs.append(f"{cur.describe()} -> {decided.describe()}")
        self.event(f"reconfigured to {decided.describe()} in {ms:.0f} ms")
        if not retire_old or decided.id != proposal.id:
            return
        # an operator waits for the old configuration to be finalized before retiring it
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.admin.settle(), self.opts.timeout_s * 10)
        how = self.rng.choice(("stopped", "paused"))
        async with self.procs_lock:
            for sid in retire_old:
                self.retired.add(sid)
                if sid not in self.down:
                    await self._take_down(sid, how, "retire")
        self.res.retirements += 1
        self.event(f"retired {','.join(retire_old)} ({how})")

    # -- the run -------------------------------------------------------------------------------

    async def heal_all(self) -> None:
        if self.proxy is not None:
            await self.proxy.heal()
        async with self.procs_lock:
            for sid in sorted(self.down):
                if self.down[sid][1] != "crashed":
                    await self._bring_back(sid)
        self.retired.clear()

    async def run(self, base: Path, history: Path) -> ChaosResult:
        o = self.opts
        res = self.res
        res.history_path = str(history)
        if o.cluster_file is not None:
            self.cf = load_cluster_file(o.cluster_file)
            self.current = self.cf.initial
        else:
            await self._start_local(base)
        kinds = [k for k in o.faults if k not in RECONFIG_KINDS]
        reconfig_kinds = [k for k in o.faults if k in RECONFIG_KINDS]
        with open(history, "wb") as out:  # noqa: ASYNC230 - small, line-buffered appends
            self.recorder = HistoryRecorder(out)
            self.admin = self._store(RECONFIGURER, recorded=False)
            self.probe = self._store(PROBE)
            self.t0 = time.monotonic()
            for i in range(1, o.clients + 1):
                self._start_client(f"c{i}")
            loops = []
            if kinds:
                loops.append(asyncio.create_task(self._nemesis(kinds)))
            if reconfig_kinds:
                loops.append(asyncio.create_task(self._reconfigurer(reconfig_kinds)))
            self.say(
                f"{o.clients} clients on {o.keys} keys for {o.duration_s:.0f} s; "
                f"faults: {', '.join(o.faults) or 'none'}; seed {o.seed}"
            )
            await asyncio.sleep(o.duration_s)
            self.event("time is up: healing everything")
            self.stopping.set()
            done, _ = await asyncio.wait(loops, timeout=o.timeout_s * 40) if loops else ((), ())
            for t in loops:
                t.cancel()
            for t in done:
                if not t.cancelled() and t.exception() is not None:
                    exc = t.exception()
                    self._problem(f"nemesis loop stopped: {type(exc).__name__}: {exc}")
            self._check_processes()
            await self.heal_all()
            res.final_recovery_s = await self._probe(final=True)
            res.fresh_client_s = await self._probe(self._store(PROBE), final=True)
            self.event(
                f"a new client's first write and read took {res.fresh_client_s:.2f} s"
                if res.fresh_client_s is not None
                else f"a new client could not write and read within {RECOVERY_BOUND_S:.0f} s"
            )
            self.event(
                f"cluster serving again {res.final_recovery_s:.2f} s after the final heal"
                if res.final_recovery_s is not None
                else f"cluster NOT serving within {RECOVERY_BOUND_S:.0f} s of the final heal"
            )
            tasks = [*self.client_tasks.values(), *self.crashed]
            await asyncio.wait(tasks, timeout=o.timeout_s * 20)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._final_reads()
            for st in (self.admin, self.probe):
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(st.close(), o.timeout_s * 20)
            res.duration_s = self.elapsed()
        if self.proxy is not None:
            res.proxy_stats = await self.proxy.stats()
        result = check_file(history)
        res.verdict = result.verdict
        res.explanation = "" if result.verdict == "ok" else result.explain()
        return res

    async def _final_reads(self) -> None:
        """Every key once more, after everything healed: an acknowledged write that was lost
        shows up here as a stale read."""
        store = self._store(CHECKER)
        try:
            for key in self.keys:
                deadline = time.monotonic() + RECOVERY_BOUND_S
                while True:
                    try:
                        await asyncio.wait_for(
                            store.read(key, group=self.group), self.opts.timeout_s * 10
                        )
                        break
                    except InvariantViolation as e:
                        self._problem(f"final read: invariant violated: {e}")
                        break
                    except (AresError, TimeoutError, OSError) as e:
                        if time.monotonic() > deadline:
                            self._problem(f"final read of {key!r} failed after the heal: {e}")
                            break
                        await asyncio.sleep(0.1)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(store.close(), self.opts.timeout_s * 10)

    async def shutdown(self) -> None:
        if self.proxy is not None:
            await self.proxy.close()
        if self.local is not None:
            for sid, (how, _) in list(self.down.items()):
                if how == "paused" and sid in self.local.procs:
                    self.local.procs[sid].send_signal(signal.SIGCONT)
            await asyncio.to_thread(self.local.stop)


async def run_chaos(opts: ChaosOptions, *, log: Callable[[str], None] = print) -> ChaosResult:
    """Run ``ares chaos`` (see the module docstring) and return its result."""
    opts.validate()
    tmp = None
    if opts.base_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="ares-chaos-")
        base = Path(tmp.name)
    else:
        base = Path(opts.base_dir)
        base.mkdir(parents=True, exist_ok=True)
    chaos = Chaos(opts, log)
    try:
        res = await chaos.run(base, base / "history.jsonl")
    finally:
        await chaos.shutdown()
        if tmp is not None:
            if not chaos.res.ok:  # keep the evidence of a failed run
                kept = Path(tempfile.mkdtemp(prefix="ares-chaos-failed-"))
                with contextlib.suppress(OSError):
                    (kept / "history.jsonl").write_bytes((base / "history.jsonl").read_bytes())
                chaos.res.history_path = str(kept / "history.jsonl")
            else:
                chaos.res.history_path = ""
            tmp.cleanup()
    return res


def summary(res: ChaosResult) -> Table:
    """The run as a table: operations, faults and their recovery times, the verdict."""
    table = Table(title="ares chaos", show_header=False)
    table.add_row("operations ok", f"{res.ops_ok} ({res.writes_ok} writes, {res.reads_ok} reads)")
    errors = ", ".join(f"{n} {name}" for name, n in res.errors.most_common())
    table.add_row(
        "operations failed",
        f"{res.ops_failed}"
        + (f" ({errors})" if errors else "")
        + " -- a failed write may or may not have taken effect",
    )
    kinds = Counter(f.kind for f in res.faults)
    table.add_row(
        "faults injected",
        f"{len(res.faults)}"
        + (f" ({', '.join(f'{n} {k}' for k, n in sorted(kinds.items()))})" if kinds else ""),
    )
    table.add_row(
        "reconfigurations",
        f"{len(res.reconfigs)} ok, {res.reconfigs_failed} failed, "
        f"{res.retirements} retirements of the servers in use",
    )
    for f in res.faults:
        if f.recovery_s is not None:
            rec = f"{f.recovery_s:.2f} s"
        else:
            rec = "run ended first" if f.interrupted else f"NOT within {RECOVERY_BOUND_S:.0f} s"
        what = f.what if len(f.what) <= 100 else f.what[:97] + "..."
        table.add_row(f"t={f.start_s:6.1f}s {f.kind}", escape(f"{what} -> recovered: {rec}"))
    times = sorted(res.recovery_times())
    if times:
        table.add_row(
            "recovery after heal",
            f"median {times[len(times) // 2]:.2f} s, max {times[-1]:.2f} s "
            f"({len(times)} of {len(res.faults)} faults)",
        )
    if res.final_recovery_s is not None:
        table.add_row("after the final heal", f"serving again in {res.final_recovery_s:.2f} s")
    fresh = f"{res.fresh_client_s:.2f} s" if res.fresh_client_s is not None else "failed"
    table.add_row("a new client's first op", f"{fresh} (write and read, from the cluster file)")
    for p in res.problems:
        table.add_row("[red]problem[/]", escape(p))
    colour = "green" if res.ok else "red"
    table.add_row("linearizable", f"[bold {colour}]{res.verdict}[/]")
    if res.history_path:
        table.add_row("history", res.history_path)
    return table
