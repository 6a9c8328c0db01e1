"""One simulated run: options drawn from a seed, a workload, faults, checks (principle 5).

:func:`run_simulation` builds a cluster from :class:`SimOptions` (every option not given is drawn
from the seed -- swarm testing: many seeds explore many shapes), runs concurrent clients (the real
:mod:`aresdsm.protocol.ares` reads and writes), reconfigurers and a fault injector on a virtual-time
loop, then heals every fault, reads every key once more, and checks:

* the history is linearizable per key (§10.1) -- the final reads make a lost acknowledged write
  (§10.8) visible as a violation too, and it is also checked directly;
* the per-server invariants (§10.3–§10.5, :class:`~aresdsm.sim.cluster.InvariantMonitor`);
* §10.2: every (group, configuration) decided at most one successor, and every client's chain is a
  prefix of one chain.

Faults stay within the failure model: at most ``n - q`` servers of each configuration that is
still in use are crashed or cut off at once. The same seed always gives the same event log, whose
SHA-256 is :attr:`SimResult.trace_hash`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import itertools
import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from ..check import CheckResult, CoverableModel, Op, check_history, check_operations
from ..check.search import Verdict
from ..config import Configuration, ServerInfo
from ..errors import AresError, InvariantViolation
from ..history import OpRecord, StrictClock, value_digest
from ..protocol import ares, coverable, dap
from ..protocol.channel import ConfigurationObsolete
from ..protocol.ops import OpSwitches
from ..protocol.server_core import ServerSwitches
from ..security.macs import ValueSigner
from ..tags import TAG0, Tag, tombstone_writer, writer_id
from ..testing import broken_switches
from ..wire.blob import Blob
from . import stores
from .adversary import AdversaryOptions, HandoffAdversary
from .cluster import ChannelSwitches, NetworkFaults, SimChannel, SimCluster
from .loop import run

GROUP = "default"
_T = TypeVar("_T")


@dataclass(frozen=True)
class SimOptions:
    """Shape of one run. ``None`` fields are drawn from the seed."""

    seed: int = 0
    servers: int | None = None
    """Size of the server pool; the initial configuration uses a prefix of it."""
    initial_servers: int | None = None
    clients: int | None = None
    ops: int | None = None
    """Operations in total (spread over the clients)."""
    keys: int | None = None
    write_ratio: float | None = None
    value_max_bytes: int | None = None
    reconfigs: int | None = None
    reconfigurers: int | None = None
    treas: bool | None = None
    """Whether TREAS configurations may appear."""
    mode: str | None = None
    """'ares2' or 'classic'."""
    fast_read: bool | None = None
    crashes: bool | None = None
    partitions: bool | None = None
    client_crashes: bool | None = None
    park: bool | None = None
    """Messages crossing a partition wait for the heal instead of being lost."""
    heavy_tail: bool | None = None
    """Message delays drawn from a heavy-tailed (Pareto) distribution, up to 300 ms."""
    adversary: bool | None = None
    """The hand-off adversary (:mod:`.adversary`): chosen PUT_DATA, SET_NEXT_AND_GET,
    WRITE_CONFIG, PUT_BATCH requests held on chosen servers until a later finalization."""
    long_holds: bool | None = None
    """A few requests held for 30--600 ms."""
    store: bool | None = None
    """Clients and reconfigurers are real Stores (:mod:`.stores`)."""
    mixed: bool | None = None
    """Every other client runs with piggyback off (classic rounds on the group's chain)."""
    retire: bool | None = None
    """Store runs: when the reconfigurers are done, the servers outside the newest
    configuration are shut down for good (clients must relocate, §8.5)."""
    restarts: bool | None = None
    """Store runs: a client crashes once and restarts under the same name."""
    cache: bool | None = None
    """Store runs with ``retire``: a client keeps its chain cache on disk across the
    redeployment and restarts from it (:func:`.stores.cached_client`)."""
    deletes: bool | None = None
    """A key of its own (:data:`DELETE_KEY`) written and deleted by one client while the
    chain is reconfigured (tombstones are dropped by the transfer, §8.4 "Deleted objects"), and
    read by a client that learned the chain at the start and comes back at the end."""
    macs: bool | None = None
    """The cluster has a write key: writers sign every value, servers check the MAC (§13)."""
    rogue: bool | None = None
    """With ``macs``: a read-role client (no write key) reads a key and then puts a value of
    its own under a newer tag -- servers must refuse it (propagate, never invent, §13)."""
    twins: bool | None = None
    """Store runs: a second process runs under client ``c0``'s name at the same time (one that
    was restarted while the first was only paused, or a copied deployment): its writer ids must
    not collide with the first one's (the incarnation in every writer id)."""
    bulk_keys: int | None = None
    """Ares II runs: this many more keys are written before the workload (0: none)."""
    sqlite: bool | None = None
    """Servers keep their durable state in the real SQLite engine too (recovered from it)."""
    eager: bool | None = None
    """Ares II runs of the bare algorithms: reconfigurers propose on top of a configuration that
    is still pending (P) instead of finishing it first -- the original Ares rule
    (``ares.reconfig(finish_first=False)``); update-config then reads several sources
    (c_μ..c_ν, §8.4)."""
    focus: bool | None = None
    """Whether the hand-off adversary focuses on one hand-off at a time (drawn per seed)."""
    focus_chance: float | None = None
    """The hand-off adversary's focus: the chance of each of its holds (drawn per seed)."""
    others_put_now: bool | None = None
    """The focus rule *others answer at once* (:class:`.adversary.AdversaryOptions`)."""
    reconfig_cuts: bool | None = None
    """Outside the focus rules, the adversary cuts a reconfigurer's link for hand-off requests."""
    stall_writes: bool | None = None
    """The focus rule *stalled writes*."""
    cut_queries: bool | None = None
    """The focus rule *cut queries*."""
    stagger_s: float | None = None
    """Reconfigurer ``r{i}`` starts ``i`` times this late."""
    loss: float | None = None
    duplicate: float | None = None
    fsync_max_s: float | None = None
    fault_interval_s: float | None = None
    """Mean virtual time between two fault actions (crash, restart, partition, heal)."""
    real_codec: bool = False
    clients_finalize: bool = True
    """Whether data clients write discovered F entries back as F (admin clients); False: as P,
    as clients without the admin role do (docs/security.md). Reconfigurers always finalize."""
    coverable: bool | None = None
    """Whether coverable objects (docs/protocol.md §9.1) are mixed in: their own keys, written
    only with cvr_write by clients of their own, checked against the coverable model."""
    # test-only broken variants (never on unless a test asks)
    broken: tuple[str, ...] = ()

    def resolved(self) -> SimOptions:
        """Every option fixed, drawn from the seed where not given.

        A share of the seeds (:data:`HANDOFF_SHARE`) is a *hand-off profile*: its options not
        given default to those of :data:`HANDOFF_PROFILE` -- one key, three reconfigurations per
        reconfigurer, mixed client modes (in Ares II runs), the hand-off adversary, no crashes or
        partitions to disturb its schedules -- the shape in which the hand-off races occur most
        often; the other options (mode, Store, coverable objects, ...) are drawn as in any
        seed. Of the other seeds, a share runs one of the *race profiles*
        (:data:`RACE_PROFILES`): the whole shape of one hand-off race that needs several draws
        to agree at once (two eager reconfigurers meeting a pending configuration; classic
        writers next to an Ares II reconfigurer), so that such a race gets a fair share of the
        seeds instead of the product of its draws' chances."""
        profile: dict[str, Any] = {}
        if random.Random(f"profile-{self.seed}").random() < HANDOFF_SHARE:
            profile = HANDOFF_PROFILE
        else:
            draw = random.Random(f"race-{self.seed}").random()
            for share, race in RACE_PROFILES:
                if draw < share:
                    profile = race
                    break
                draw -= share
        given = {k: v for k, v in profile.items() if getattr(self, k) is None}
        return dataclasses.replace(self, **given)._resolved()

    def _resolved(self) -> SimOptions:
        rng = random.Random(f"options-{self.seed}")
        pool = self.servers if self.servers is not None else rng.randint(3, 7)
        initial = self.initial_servers or rng.randint(min(3, pool), min(pool, 5))
        return dataclasses.replace(
            self,
            servers=pool,
            initial_servers=min(initial, pool),
            clients=self.clients if self.clients is not None else rng.randint(1, 5),
            ops=self.ops if self.ops is not None else rng.randint(40, 120),
            keys=self.keys if self.keys is not None else rng.randint(1, 4),
            write_ratio=self.write_ratio if self.write_ratio is not None else rng.uniform(0.2, 0.8),
            value_max_bytes=self.value_max_bytes
            if self.value_max_bytes is not None
            else rng.choice([16, 64, 1024]),
            reconfigs=self.reconfigs if self.reconfigs is not None else rng.choice([0, 1, 2, 3, 3]),
            reconfigurers=self.reconfigurers
            if self.reconfigurers is not None
            else rng.choice([1, 2, 2]),
            treas=self.treas if self.treas is not None else rng.random() < 0.5,
            mode=self.mode if self.mode is not None else rng.choice(["ares2", "ares2", "classic"]),
            fast_read=self.fast_read if self.fast_read is not None else rng.random() < 0.7,
            loss=self.loss if self.loss is not None else rng.choice([0.0, 0.01, 0.05]),
            duplicate=self.duplicate if self.duplicate is not None else rng.choice([0.0, 0.02]),
            fsync_max_s=self.fsync_max_s
            if self.fsync_max_s is not None
            else rng.choice([0.0005, 0.002, 0.01]),
            fault_interval_s=self.fault_interval_s
            if self.fault_interval_s is not None
            else rng.choice([0.003, 0.01, 0.03]),
            # swarm testing: which fault kinds are on is drawn per seed too
            crashes=self.crashes if self.crashes is not None else rng.random() < 0.8,
            partitions=self.partitions if self.partitions is not None else rng.random() < 0.8,
            client_crashes=self.client_crashes
            if self.client_crashes is not None
            else rng.random() < 0.8,
            park=self.park if self.park is not None else rng.random() < 0.5,
            heavy_tail=self.heavy_tail if self.heavy_tail is not None else rng.random() < 0.4,
            adversary=self.adversary if self.adversary is not None else rng.random() < 0.75,
            long_holds=self.long_holds if self.long_holds is not None else rng.random() < 0.3,
            store=self.store if self.store is not None else rng.random() < 0.35,
            mixed=self.mixed if self.mixed is not None else rng.random() < 0.25,
            retire=self.retire if self.retire is not None else rng.random() < 0.5,
            restarts=self.restarts if self.restarts is not None else rng.random() < 0.5,
            bulk_keys=self.bulk_keys
            if self.bulk_keys is not None
            else (rng.randint(300, 400) if rng.random() < 0.1 else 0),
            sqlite=self.sqlite if self.sqlite is not None else rng.random() < 0.1,
            coverable=self.coverable
            if self.coverable is not None
            else random.Random(f"coverable-{self.seed}").random() < 0.5,  # own draw: the
            # other options of a seed stay what they were before coverable objects existed
            eager=self.eager
            if self.eager is not None
            else random.Random(f"eager-{self.seed}").random() < 0.6,
            cache=self.cache if self.cache is not None else _draw(self.seed, "cache", 0.5),
            deletes=bool(self.deletes),  # not drawn yet: it finds a protocol bug (DELETE_KEY)
            macs=self.macs if self.macs is not None else _draw(self.seed, "macs", 0.4),
            rogue=self.rogue if self.rogue is not None else _draw(self.seed, "rogue", 0.5),
            twins=self.twins  # a stream of its own, as coverable
            if self.twins is not None
            else random.Random(f"twins-{self.seed}").random() < 0.3,
        )

    def command(self) -> str:
        """The command that replays this run exactly."""
        parts = [f"ares sim --seed {self.seed}"]
        defaults = SimOptions()
        for f in dataclasses.fields(self):
            if f.name in ("seed",):
                continue
            value = getattr(self, f.name)
            if value == getattr(defaults, f.name):
                continue
            flag = "--" + f.name.replace("_", "-")
            if f.name == "broken":
                parts += [f"--broken {b}" for b in value]
            elif isinstance(value, bool):
                parts.append(flag if value else "--no-" + f.name.replace("_", "-"))
            else:
                parts.append(f"{flag} {value}")
        return " ".join(parts)


def _draw(seed: int, what: str, chance: float) -> bool:
    """A draw from a stream of its own: adding one does not change the seed's other options."""
    return random.Random(f"{what}-{seed}").random() < chance


HANDOFF_SHARE = 0.35
"""Share of the seeds that run the hand-off profile (:meth:`SimOptions.resolved`)."""
HANDOFF_PROFILE: dict[str, Any] = {
    "keys": 1,
    "reconfigs": 3,
    "mixed": True,
    "adversary": True,
    "crashes": False,
    "partitions": False,
    "client_crashes": False,
}

_FOCUSED: dict[str, Any] = {
    "keys": 1,
    "reconfigs": 3,
    "mode": "ares2",
    "initial_servers": 3,  # n = 2q - 1: fast + victims and fast + the others both make a quorum
    "adversary": True,
    "focus": True,
    "focus_chance": 1.0,
    "reconfig_cuts": False,  # (a random cut on the reconfigurer's link breaks the shape,
    "heavy_tail": False,  # and so do heavy-tailed delays and long holds)
    "long_holds": False,
    "stall_writes": False,
    "cut_queries": False,
    "crashes": False,
    "partitions": False,
    "client_crashes": False,
    "store": False,
    "bulk_keys": 0,
}
RACE_PROFILES: tuple[tuple[float, dict[str, Any]], ...] = (
    # older sources: a reconfigurer stuck half-way through its hand-off (its SET_NEXT_AND_GET
    # reached one server), a second, eager one that hears of the pending successor and
    # proposes on top of it -- update-config then reads c_mu..c_nu (§8.4) while a write's
    # put-data reaches the fast server at once and the others only after the finalization
    (0.2, {**_FOCUSED, "reconfigurers": 2, "eager": True, "others_put_now": False}),
    # mixed modes: classic writers (piggyback off) next to an Ares II reconfigurer, the servers
    # that are neither fast nor victims answering writes at once (tests/sim/test_mixed_modes.py)
    (0.2, {**_FOCUSED, "reconfigurers": 1, "mixed": True, "others_put_now": True}),
)
"""(share of the seeds outside the hand-off profile, options): the race profiles."""

BROKEN_VARIANTS = (
    "skip-write-back",
    "ack-before-durable",
    "no-query-before-write",
    "quorum-minus-one",
    "skip-update-config",
    "no-config-write-back",
    "forgetful-acceptor",
    "decode-below-k",
    "gc-on-pending",
    "finish-on-obsolete",
    "fast-read-short",
    "split-handoff",
    "no-requery-after-obsolete",
    "forgets-accepts",
    "plain-get-older-sources",
    "paxos-own-value",
    "retry-write-with-new-tag",
    "classic-ignores-ack-next",
    "cvr-unconditional",
    "cvr-put-undecided",
    "cvr-transfer-ignores-open",
    "cvr-no-freeze",
    "writer-ids-without-incarnation",
    "skip-value-mac",
    "drop-tombstones-without-floor",
)
DELETE_KEY = "d0"
"""The key of ``deletes``: a delete is a write of the absent value -- the initial one, b""
(its digest is what a read of a tombstone, or of an object not held, records).

``deletes`` is not drawn by the swarm yet: with it, the correct protocol fails (seed 6 of
``ares sim --deletes``, 1 seed in 30): a reader whose chain still starts at c0 reads an
older value of the key from c0 (never collected there), while every newer configuration
dropped the key's tombstone and reads it as absent (TAG0) -- so the old value is the newest
the reader sees and it returns it after newer writes and deletes completed. The tag floor
(§8.4 "Deleted objects") only covers writes and tombstones, not older values left in older
configurations (docs/testing.md)."""
CVR_KEYS = ("v0", "v1")
"""Coverable objects of a run: keys of their own (a plain write's tag would sit between two
agreed versions, docs/protocol.md §9.1), so plain clients never touch them."""


@dataclass
class SimResult:
    options: SimOptions
    history: list[OpRecord]
    check: CheckResult
    invariant_failures: list[str]
    trace_hash: str
    messages: int
    rounds: int
    ops_ok: int
    ops_failed: int
    reconfigs_done: int
    virtual_s: float
    events: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.check.verdict != "violation" and not self.invariant_failures

    def explain(self) -> str:
        lines = [f"seed {self.options.seed}: {'ok' if self.ok else 'FAILED'}"]
        if self.check.verdict == "violation":
            lines.append(self.check.explain())
        lines += [f"invariant: {f}" for f in self.invariant_failures[:10]]
        lines.append(f"options: {self.options}")
        lines.append(f"replay:  {self.options.command()}")
        return "\n".join(lines)


class _World:
    """Everything one run shares: cluster, chain bookkeeping, history."""

    def __init__(
        self,
        opts: SimOptions,
        rng: random.Random,
        loop: asyncio.AbstractEventLoop,
        sqlite_dir: Path | None = None,
    ) -> None:
        assert opts.servers is not None and opts.initial_servers is not None
        self.opts = opts
        self.rng = rng
        self.loop = loop
        pool = [ServerInfo(f"s{i}", f"10.0.0.{i}:7000") for i in range(opts.servers)]
        self.pool = pool
        faults = NetworkFaults(
            loss=opts.loss or 0.0,
            duplicate=opts.duplicate or 0.0,
            fsync_max_s=opts.fsync_max_s or 0.001,
            tail_alpha=rng.choice([1.1, 1.5, 2.0]) if opts.heavy_tail else None,
            park_partitioned=bool(opts.park),
        )
        self.cluster = SimCluster(
            rng=rng,
            loop=loop,
            servers=pool,
            faults=faults,
            real_codec=opts.real_codec,
            server_switches=ServerSwitches(
                broken_forget_promises="forgetful-acceptor" in opts.broken,
                broken_forget_accepts="forgets-accepts" in opts.broken,
                broken_gc_on_pending="gc-on-pending" in opts.broken,
                broken_cvr_no_freeze="cvr-no-freeze" in opts.broken,
            ),
        )
        key_rng = random.Random(f"write-key-{opts.seed}")
        self.write_key = key_rng.randbytes(32) if opts.macs else None
        """The cluster's write key (``macs``): every channel but the rogue's signs with it."""
        if self.write_key is not None:
            self.cluster.write_keys = (self.write_key,)
            self.cluster.broken_skip_value_mac = "skip-value-mac" in opts.broken
        for sid, srv in self.cluster.servers.items():
            srv.broken_ack_before_durable = "ack-before-durable" in opts.broken
            if sqlite_dir is not None:
                (sqlite_dir / sid).mkdir()
                srv.use_sqlite(sqlite_dir / sid / "state.db")
        first = pool[: opts.initial_servers]
        if opts.treas and rng.random() < 0.5:
            self.c0 = Configuration(
                "c0",
                tuple(first),
                dap="treas",
                k=rng.randint(1, max(1, len(first) - 2)),
                delta=rng.randint(1, 3),
            )
        else:
            self.c0 = Configuration("c0", tuple(first))
        for s in self.c0.servers:
            self.cluster.servers[s.id].bootstrap(self.c0)
        self.switches = broken_switches(
            piggyback=opts.mode == "ares2",
            fast_read=bool(opts.fast_read) and opts.mode == "ares2",
            broken_skip_write_back="skip-write-back" in opts.broken,
            broken_no_query_before_write="no-query-before-write" in opts.broken,
            broken_skip_update_config="skip-update-config" in opts.broken,
            broken_no_config_write_back="no-config-write-back" in opts.broken,
            broken_decode_below_k="decode-below-k" in opts.broken,
            broken_finish_on_obsolete="finish-on-obsolete" in opts.broken,
            broken_fast_read_short="fast-read-short" in opts.broken,
            broken_split_handoff="split-handoff" in opts.broken,
            broken_no_requery_after_obsolete="no-requery-after-obsolete" in opts.broken,
            broken_plain_get_older_sources="plain-get-older-sources" in opts.broken,
            broken_paxos_own_value="paxos-own-value" in opts.broken,
            broken_retry_write_with_new_tag="retry-write-with-new-tag" in opts.broken,
            broken_classic_ignores_ack_next="classic-ignores-ack-next" in opts.broken,
            broken_cvr_unconditional="cvr-unconditional" in opts.broken,
            broken_cvr_put_undecided="cvr-put-undecided" in opts.broken,
            broken_cvr_transfer_ignores_open="cvr-transfer-ignores-open" in opts.broken,
            broken_writer_ids_without_incarnation="writer-ids-without-incarnation" in opts.broken,
            broken_drop_tombstones_without_floor="drop-tombstones-without-floor" in opts.broken,
            gc=opts.mode == "ares2",
            batch=opts.mode == "ares2",
        )
        self.client_switches = dataclasses.replace(
            self.switches, write_back_final=opts.clients_finalize
        )
        """Data clients' switches (reconfigurers use ``switches``)."""
        self.channel_switches = ChannelSwitches(
            broken_quorum_minus_one="quorum-minus-one" in opts.broken
        )
        self.group = GROUP
        self.client_seeds: dict[str, float] = {}
        """Store client name -> the seed of its workload (a twin replays it)."""
        self.incarnations: dict[str, int] = {}
        """Store client name -> how many times it was started (restarts reuse the name)."""
        self.retired: set[str] = set()
        self.reconfig_failed = False
        """Servers shut down for good (``retire``)."""
        self.history: list[OpRecord] = []
        self.stamp = StrictClock(loop.time)
        """History times: strictly increasing (an operation invoked after another returned is
        ordered after it, also at one virtual instant)."""
        self.cvr_ops: dict[str, list[Op]] = {k: [] for k in CVR_KEYS}
        """Coverable operations per object, for the coverable model (§9.1)."""
        self.chains: list[ares.Cseq] = []
        self.decided: dict[tuple[str, str], str] = {}
        self.failures: list[str] = []
        self.channels: list[SimChannel] = []
        self.cseqs: dict[tuple[str, str], ares.Cseq] = {}
        """(client, chain) -> that client's view of the chain (one chain per object in
        classic mode, where ``batch`` is off)."""
        self.next_config = 1
        self.reconfigs_done = 0
        self.down: set[str] = set()
        self.partitioned: set[str] = set()
        arng = random.Random(f"adversary-{opts.seed}")
        frng = random.Random(f"focus-rules-{opts.seed}")
        self.stagger_s = _given(opts.stagger_s, frng.choice([0.0, 0.02, 0.04, 0.06, 0.1]))
        """Reconfigurer ``r{i}`` starts ``i`` times this late: staggered reconfigurers meet
        each other's pending configurations (a chain that grows while one is still P)."""
        handoffs = bool(opts.adversary and opts.reconfigs)  # no hand-off, no hand-off adversary
        self.adversary = HandoffAdversary(
            self.cluster,
            arng,
            AdversaryOptions(
                handoff_client=arng.choice([0.05, 0.2, 0.5]) if handoffs else 0.0,
                handoff_reconfig=arng.choice([0.1, 0.3, 0.6])
                * _given(opts.reconfig_cuts, frng.choice([0, 1]) == 1)
                if handoffs
                else 0.0,
                after_finals=arng.choice([(1,), (1, 2), (1, 2, 3)]),
                extra_max_s=arng.choice([0.002, 0.02, 0.1]),
                long_hold=arng.choice([0.005, 0.02]) if opts.long_holds else 0.0,
                focus=handoffs and _given(opts.focus, arng.random() < 0.8),
                focus_chance=_given(opts.focus_chance, arng.choice([0.5, 0.8, 1.0])),
                # which further focus rules are on: drawn per seed from a stream of their own
                others_put_now=_given(opts.others_put_now, frng.random() < 0.4),
                stall_writes=_given(opts.stall_writes, frng.random() < 0.4),
                cut_queries=_given(opts.cut_queries, frng.random() < 0.4),
                hold_transfer=frng.random() < 0.5,
            ),
            is_reconfigurer=lambda name: name.startswith("r"),
        )
        self.adversary.focus_on(self.c0)

    def proposal(self) -> Configuration:
        return _proposal(self)

    def channel(self, client: str, *, timeout_s: float = 1.0, writer: bool = True) -> SimChannel:
        ch = SimChannel(self.cluster, client, timeout_s=timeout_s, switches=self.channel_switches)
        if writer and self.write_key is not None:
            ch.signer = ValueSigner(self.write_key)
        self.channels.append(ch)
        return ch

    def cseq(self, client: str, chain: str) -> ares.Cseq:
        return self.cseqs.get((client, chain), ares.initial_cseq(self.c0))

    def learn(self, client: str, chain: str, cseq: ares.Cseq) -> None:
        try:
            self.cseqs[(client, chain)] = ares.merge(self.cseq(client, chain), cseq)
        except ares.DisjointChains:  # adopted from LATEST_CONFIG (§8.5) beyond the old view
            self.cseqs[(client, chain)] = cseq
        except InvariantViolation as e:
            self.failures.append(f"§10.2: {e}")
        for a, b in itertools.pairwise(cseq):
            prev = self.decided.setdefault((chain, a.config.id), b.config.id)
            if prev != b.config.id:
                self.failures.append(
                    f"§10.2: {a.config.id} has two successors {prev} and {b.config.id}"
                    f" in chain {chain!r}"
                )

    def longest(self, chain: str) -> ares.Cseq:
        """The longest view of ``chain`` any client has."""
        views = [c for (_, ch), c in self.cseqs.items() if ch == chain]
        return max(views, key=len, default=ares.initial_cseq(self.c0))

    def live_configs(self) -> list[Configuration]:
        """Configurations some client may still need a quorum of."""
        out: dict[str, Configuration] = {}
        for chain in sorted({ch for _, ch in self.cseqs}):
            views = [c for (_, ch), c in self.cseqs.items() if ch == chain]
            start = min(ares.mu(c) for c in views)
            out.update((e.config.id, e.config) for e in self.longest(chain)[start:])
        if not out:
            out[self.c0.id] = self.c0
        return list(out.values())

    def may_fail(self, server: str) -> bool:
        down = self.down | {server}
        for c in self.live_configs():
            if self.retired & set(c.server_ids):
                continue  # a configuration shut down: its clients relocate (§8.5)
            if sum(1 for s in c.server_ids if s in down) > c.n - c.quorum_size:
                return False
        return True


def _given(option: _T | None, drawn: _T) -> _T:
    """``option`` if given, else what was drawn (drawn either way, so that giving one option
    does not shift the draws after it)."""
    return drawn if option is None else option


async def _client(world: _World, name: str, index: int, ops: int, keys: list[str]) -> None:
    opts = world.opts
    rng = random.Random(world.rng.random())
    ch = world.channel(name)
    switches = stores.client_switches(world, index)
    for n in range(1, ops + 1):
        key = rng.choice(keys)
        is_write = rng.random() < (opts.write_ratio or 0.5)
        size = rng.randint(0, opts.value_max_bytes or 16)
        value = f"{name}-{n}|".encode() + b"x" * size if is_write else None
        if not await _operation(world, ch, name, key, value, writer_id(name, n), switches):
            await asyncio.sleep(rng.uniform(0.001, 0.01))
        await asyncio.sleep(rng.uniform(0, 0.002))


async def _operation(
    world: _World,
    ch: SimChannel,
    name: str,
    key: str,
    value: bytes | None,
    writer: str,
    switches: OpSwitches,
    *,
    delete: bool = False,
) -> bool:
    """One recorded read (``value`` None) or write (a delete: ``value`` b"" under a tombstone
    writer id); returns whether it returned ok."""
    chain = ares.chain_of(GROUP, key, switches)
    okey = ares.object_key(GROUP, key, switches)
    cseq = world.cseq(name, chain)
    is_write = value is not None
    # recorded as pending first: a client crash leaves it so
    rec_index = len(world.history)
    world.history.append(
        OpRecord(
            rec_index + 1,
            name,
            "write" if is_write else "read",
            key,
            world.stamp(),
            value=value_digest(value) if value is not None else None,
        )
    )
    try:
        if value is not None:
            tag, cseq = await ares.write(
                ch,
                cseq,
                group=chain,
                key=okey,
                value=Blob(value),
                writer=tombstone_writer(writer) if delete else writer,
                switches=switches,
            )
            digest = value_digest(value)
        else:
            res, cseq = await ares.read(ch, cseq, group=chain, key=okey, switches=switches)
            tag, digest = res.tag, value_digest(res.value.data)
        world.learn(name, chain, cseq)
        world.history[rec_index] = msgspec.structs.replace(
            world.history[rec_index],
            complete_s=world.stamp(),
            value=digest,
            outcome="ok",
            tag=(tag.z, tag.writer),
        )
        return True
    except AresError as e:
        if isinstance(e, InvariantViolation):  # never swallowed: the run fails
            world.failures.append(f"{name}: InvariantViolation: {e}")
        world.history[rec_index] = msgspec.structs.replace(
            world.history[rec_index],
            complete_s=world.stamp(),
            outcome="fail",
            error=type(e).__name__,
        )
        return False


async def _deleter(world: _World) -> None:
    """Writes and deletes :data:`DELETE_KEY` while the reconfigurers run (``deletes``): each
    reconfiguration drops the tombstone it finds (§8.4), and a write after it must still get
    a tag above the dropped one (the new configuration's floor)."""
    rng = random.Random(f"deleter-{world.opts.seed}")
    name = "d"
    ch = world.channel(name)
    for n in range(1, rng.randint(10, 20) + 1):
        await asyncio.sleep(rng.uniform(0.003, 0.03))
        what = rng.random()
        value = None if what < 0.2 else b"" if what < 0.6 else f"{name}-{n}".encode()
        ok = await _operation(
            world,
            ch,
            name,
            DELETE_KEY,
            value,
            writer_id(name, n),
            world.client_switches,
            delete=value == b"",
        )
        if not ok:
            await asyncio.sleep(rng.uniform(0.001, 0.01))


async def _stale_reader(world: _World, reconfigured: asyncio.Event) -> None:
    """Reads :data:`DELETE_KEY` once at the start, then again only after the reconfigurers are
    done: its chain still starts where it was, where a tombstone may not be collected yet."""
    rng = random.Random(f"stale-{world.opts.seed}")
    name = "old"
    ch = world.channel(name)
    await asyncio.sleep(rng.uniform(0.001, 0.02))
    await _operation(world, ch, name, DELETE_KEY, None, "", world.client_switches)
    await reconfigured.wait()
    for _ in range(2):
        await asyncio.sleep(rng.uniform(0, 0.01))
        await _operation(world, ch, name, DELETE_KEY, None, "", world.client_switches)


async def _rogue(world: _World, keys: list[str]) -> None:
    """A client with the read role (no write key; the simulator has no roles, so it is the
    missing key that makes it a reader): it reads a key -- recorded, a read is its right -- and
    then puts a value of its own under a newer tag into the configuration it read, as a
    write-back would, but without a writer MAC. Servers must refuse it (docs/protocol.md §13:
    propagate, never invent); if one took it, a read could return a value nobody wrote. The
    forgery is not an operation of the history: it must leave no trace."""
    rng = random.Random(f"rogue-{world.opts.seed}")
    ch = world.channel("rogue", writer=False)
    for n in range(1, 4):
        await asyncio.sleep(rng.uniform(0.005, 0.08))
        key = rng.choice(keys)
        switches = world.client_switches
        if not await _operation(world, ch, "rogue", key, None, "", switches):
            continue
        chain = ares.chain_of(GROUP, key, switches)
        cseq = world.cseq("rogue", chain)
        newest = max((r for r in world.history if r.client == "rogue"), key=lambda r: r.op_id)
        assert newest.tag is not None
        forged = Tag(newest.tag[0] + 1, f"rogue.{n}")
        try:
            await dap.put_data(
                ch,
                cseq[-1].config,
                chain,
                ares.object_key(GROUP, key, switches),
                tag=forged,
                value=Blob(f"forged-{n}".encode()),
            )
            world.cluster.log(f"rogue: forged {forged} of {key} accepted")
        except (AresError, ConfigurationObsolete) as e:  # (refused, or c collected meanwhile)
            if isinstance(e, InvariantViolation):  # never swallowed: the run fails
                world.failures.append(f"rogue: InvariantViolation: {e}")
            world.cluster.log(f"rogue: forged {forged} of {key} refused ({type(e).__name__})")


def _cvr_record(world: _World, key: str, op: Op) -> int:
    ops = world.cvr_ops[key]
    ops.append(dataclasses.replace(op, op_id=len(ops) + 1))
    return len(ops) - 1


async def _cvr_client(world: _World, name: str, ops: int) -> None:
    """Coverable reads and writes (docs/protocol.md §9.1) on CVR_KEYS: each write names as its
    base the version this client last saw of the object (so writers collide on bases)."""
    rng = random.Random(f"{world.opts.seed}-{name}")
    ch = world.channel(name)
    seen: dict[str, Tag] = {}

    async def backoff(attempt: int) -> None:
        await asyncio.sleep(rng.uniform(0, 0.002 * 2**attempt))

    for n in range(1, ops + 1):
        key = rng.choice(CVR_KEYS)
        chain = ares.chain_of(GROUP, key, world.switches)
        okey = ares.object_key(GROUP, key, world.switches)
        start = world.stamp()
        if rng.random() < 0.35:
            try:
                res, cseq = await ares.read(
                    ch, world.cseq(name, chain), group=chain, key=okey, switches=world.switches
                )
            except AresError as e:
                if isinstance(e, InvariantViolation):  # never swallowed: the run fails
                    world.failures.append(f"{name}: InvariantViolation: {e}")
                await asyncio.sleep(rng.uniform(0.001, 0.01))
                continue
            world.learn(name, chain, cseq)
            seen[key] = res.tag
            op = Op(0, "read", start, world.stamp(), bytes(res.value.data), res.tag)
            _cvr_record(world, key, dataclasses.replace(op, client=name))
            continue
        base = seen.get(key, TAG0)
        value = f"{name}-{n}".encode()
        writer = writer_id(name, n)
        # recorded pending first: a failed or crashed write may or may not take effect
        at = _cvr_record(
            world,
            key,
            Op(
                0, "cvr-ok", start, value=value, tag=Tag(base.z + 1, writer), base=base, client=name
            ),
        )
        try:
            out, cseq = await coverable.cvr_write(
                ch,
                world.cseq(name, chain),
                group=chain,
                key=okey,
                value=Blob(value),
                base=base,
                writer=writer,
                backoff=backoff,
                switches=world.switches,
            )
        except AresError as e:
            if isinstance(e, InvariantViolation):  # never swallowed: the run fails
                world.failures.append(f"{name}: InvariantViolation: {e}")
            seen.pop(key, None)
            await asyncio.sleep(rng.uniform(0.001, 0.01))
            continue
        world.learn(name, chain, cseq)
        seen[key] = out.tag
        got = b"" if out.value is None else bytes(out.value.data)
        world.cvr_ops[key][at] = dataclasses.replace(
            world.cvr_ops[key][at],
            kind="cvr-ok" if out.ok else "cvr-stale",
            complete=world.stamp(),
            value=got,
            tag=out.tag,
        )
        await asyncio.sleep(rng.uniform(0, 0.002))


def _check_cvr(world: _World, plain: CheckResult) -> CheckResult:
    """The plain history's result with every coverable object's (§9.1) added."""
    model: Any = CoverableModel(TAG0, b"")
    extra = tuple(
        check_operations(f"cvr/{k}", ops, model=model)
        for k, ops in sorted(world.cvr_ops.items())
        if ops
    )
    keys = plain.keys + extra
    verdicts = {k.verdict for k in keys}
    verdict: Verdict = (
        "violation" if "violation" in verdicts else "unknown" if "unknown" in verdicts else "ok"
    )
    return CheckResult(verdict, keys)


def _proposal(world: _World) -> Configuration:
    rng = world.rng
    size = rng.randint(min(3, len(world.pool)), len(world.pool))
    members = rng.sample(world.pool, size)
    cid = f"c{world.next_config}"
    world.next_config += 1
    if world.opts.treas and rng.random() < 0.5:
        k = rng.randint(1, max(1, size - 2))
        return Configuration(cid, tuple(members), dap="treas", k=k, delta=rng.randint(1, 4))
    return Configuration(cid, tuple(members))


async def _reconfigurer(world: _World, name: str, count: int, keys: list[str]) -> None:
    opts = world.opts
    rng = random.Random(world.rng.random())
    ch = world.channel(name)

    async def backoff(attempt: int) -> None:
        await asyncio.sleep(rng.uniform(0, 0.002 * 2**attempt))

    await asyncio.sleep(world.stagger_s * int(name[1:]))
    for n in range(count):
        await asyncio.sleep(rng.uniform(0.001, 0.03))
        proposal = _proposal(world)
        try:
            if world.switches.batch:
                cseq, decided = await ares.reconfig(
                    ch,
                    world.cseq(name, ares.CLUSTER_CHAIN),
                    group=ares.CLUSTER_CHAIN,
                    proposal=proposal,
                    proposer=f"{name}.{n}",
                    backoff=backoff,
                    switches=world.switches,
                    finish_first=not opts.eager,
                )
                world.learn(name, ares.CLUSTER_CHAIN, cseq)
            else:  # the original Ares: every object's chain on its own
                done = await ares.reconfig_objects(
                    ch,
                    lambda chain: world.cseq(name, chain),
                    group=GROUP,
                    keys=keys,
                    proposal=proposal,
                    proposer=f"{name}.{n}",
                    backoff=backoff,
                    concurrency=2,
                    switches=world.switches,
                )
                for chain, (cseq, _) in sorted(done.items()):
                    world.learn(name, chain, cseq)
                decided = proposal
            world.reconfigs_done += 1
            world.cluster.log(f"{name} installed {decided.id}")
            # an operator checks a key through the chain it just extended (a client that
            # starts at the newest finalized configuration)
            await asyncio.sleep(rng.uniform(0, 0.05))
            plain = [k for k in keys if k not in CVR_KEYS]  # coverable objects: their own model
            await _operation(world, ch, name, rng.choice(plain), None, "", world.switches)
        except AresError as e:
            if isinstance(e, InvariantViolation):  # never swallowed: the run fails
                world.failures.append(f"reconfigurer {name}: InvariantViolation: {e}")
            world.cluster.log(f"{name} reconfig failed: {type(e).__name__}")


async def _faults(world: _World, stop: asyncio.Event) -> None:
    rng = random.Random(world.rng.random())
    opts = world.opts
    servers = sorted(world.cluster.servers)
    mean = opts.fault_interval_s or 0.01
    while not stop.is_set():
        await asyncio.sleep(rng.uniform(0.2 * mean, 1.8 * mean))
        crashed = sorted(
            s for s in world.down if not world.cluster.servers[s].up and s not in world.retired
        )
        if crashed and rng.random() < 0.5:
            sid = rng.choice(crashed)
            world.cluster.servers[sid].restart()
            world.down.discard(sid)
            continue
        if world.partitioned and rng.random() < 0.5:
            world.cluster.heal()
            world.down -= world.partitioned
            world.partitioned.clear()
            world.cluster.log("heal partitions")
            continue
        sid = rng.choice(servers)
        if sid in world.down or sid in world.retired or not world.may_fail(sid):
            continue
        if opts.crashes and rng.random() < 0.5:
            if sid in world.partitioned:
                continue
            world.cluster.servers[sid].crash()
            world.down.add(sid)
        elif opts.partitions:
            others = [x for x in servers if x != sid] + [c.client_id for c in world.channels]
            symmetric = rng.random() < 0.5
            for other in others:
                world.cluster.blocked.add((other, sid))
                if symmetric:
                    world.cluster.blocked.add((sid, other))
            world.down.add(sid)
            world.partitioned.add(sid)
            world.cluster.log(f"partition {sid} {'both ways' if symmetric else 'inbound'}")


async def _main(opts: SimOptions, sqlite_dir: Path | None) -> SimResult:
    loop = asyncio.get_running_loop()
    rng = random.Random(opts.seed)
    world = _World(opts, rng, loop, sqlite_dir)
    try:
        return await _play(world)
    finally:
        for srv in world.cluster.servers.values():
            if srv.engine is not None:
                srv.engine.close()
                srv.engine = None


async def _play(world: _World) -> SimResult:
    opts, rng, loop = world.opts, world.rng, world.loop
    assert opts.clients is not None and opts.ops is not None and opts.keys is not None
    keys = [f"k{i}" for i in range(opts.keys)]
    per_client = max(1, opts.ops // opts.clients)
    all_keys = keys + list(CVR_KEYS) if opts.coverable else keys  # (classic: chains per key)
    if opts.deletes:
        all_keys = [*all_keys, DELETE_KEY]
    bulk = [f"bulk{i:04d}" for i in range(opts.bulk_keys or 0)] if world.switches.batch else []
    if bulk:
        await stores.load(world, bulk)
    if opts.store:
        clients = [
            asyncio.ensure_future(stores.store_client(world, f"c{i}", i, per_client, keys))
            for i in range(opts.clients)
        ]
        reconfs = [
            asyncio.ensure_future(
                stores.store_reconfigurer(world, f"r{i}", opts.reconfigs or 0, all_keys)
            )
            for i in range(opts.reconfigurers or 1)
        ]
    else:
        clients = [
            asyncio.ensure_future(_client(world, f"c{i}", i, per_client, keys))
            for i in range(opts.clients)
        ]
        reconfs = [
            asyncio.ensure_future(_reconfigurer(world, f"r{i}", opts.reconfigs or 0, all_keys))
            for i in range(opts.reconfigurers or 1)
        ]
    reconfigured = asyncio.Event()
    if opts.deletes:
        clients.append(asyncio.ensure_future(_deleter(world)))
        clients.append(asyncio.ensure_future(_stale_reader(world, reconfigured)))
    if opts.macs and opts.rogue:
        clients.append(asyncio.ensure_future(_rogue(world, keys)))
    if opts.store and opts.twins and opts.clients:
        clients.append(asyncio.ensure_future(stores.twin_client(world, per_client, keys)))
    if opts.coverable:
        clients += [
            asyncio.ensure_future(_cvr_client(world, f"v{i}", max(4, per_client // 2)))
            for i in range(2)
        ]
    retired = asyncio.Event()
    if opts.store and opts.retire and world.switches.batch and opts.reconfigs:
        clients.append(asyncio.ensure_future(stores.late_client(world, keys, retired)))
        if opts.cache:
            clients.append(asyncio.ensure_future(stores.cached_client(world, keys, retired)))
    stop = asyncio.Event()
    faults = asyncio.ensure_future(_faults(world, stop))
    if opts.client_crashes and opts.clients > 1 and rng.random() < 0.5:
        victim = clients[rng.randrange(len(clients))]
        loop.call_later(rng.uniform(0.005, 0.05), victim.cancel)
    if opts.client_crashes and opts.reconfigs and rng.random() < 0.3:
        victim = reconfs[rng.randrange(len(reconfs))]  # a reconfigurer dies mid-way
        loop.call_later(rng.uniform(0.001, 0.05), victim.cancel)
    outcomes = await asyncio.gather(*reconfs, return_exceptions=True)
    reconfigured.set()
    clean = not any(isinstance(o, BaseException) for o in outcomes) and not world.reconfig_failed
    if opts.store and opts.retire and world.switches.batch and clean:
        _retire(world)  # (a half-done reconfiguration may have left a successor in use)
    retired.set()
    outcomes += await asyncio.gather(*clients, return_exceptions=True)
    for o in outcomes:  # a crashed client is cancelled; anything else is a bug: raise it
        if isinstance(o, BaseException) and not isinstance(o, asyncio.CancelledError):
            raise o
    stop.set()
    await faults
    await _heal_and_verify(world, keys + bulk + ([DELETE_KEY] if opts.deletes else []))
    world.failures += _shared_tags(world.history)
    events = world.cluster.events
    return SimResult(
        options=opts,
        history=world.history,
        check=_check_cvr(world, check_history(world.history)),
        invariant_failures=world.failures + world.cluster.monitor.failures,
        trace_hash=hashlib.sha256("\n".join(events).encode()).hexdigest(),
        messages=sum(c.messages for c in world.channels),
        rounds=sum(c.rounds for c in world.channels),
        ops_ok=sum(1 for r in world.history if r.outcome == "ok"),
        ops_failed=sum(1 for r in world.history if r.outcome != "ok"),
        reconfigs_done=world.reconfigs_done,
        virtual_s=loop.time(),
        events=events,
    )


def _shared_tags(history: list[OpRecord]) -> list[str]:
    """§10.9: a tag names one write. Two writes that returned ok under one tag with different
    values (two processes under one client name without the incarnation in their writer ids)
    leave servers that disagree under one version; the checker sees it only when reads happen to
    come from both sides, this sees it at once."""
    first: dict[tuple[str, tuple[int, str]], OpRecord] = {}
    out = []
    for r in history:
        if r.kind != "write" or r.outcome != "ok" or r.tag is None:
            continue
        other = first.setdefault((r.key, r.tag), r)
        if other is not r and other.value != r.value:
            out.append(
                f"§10.9: writes #{other.op_id} ({other.client}) and #{r.op_id} ({r.client})"
                f" of {r.key} both returned tag {r.tag}"
            )
    return out


def _retire(world: _World) -> None:
    """Shut down for good every server outside the newest configuration (once it is final):
    the old configurations' servers are gone; clients still pointing at them must relocate."""
    newest = world.longest(ares.CLUSTER_CHAIN)
    if newest[-1].status != "F":
        return
    keep = set(newest[-1].config.server_ids)
    for sid, srv in sorted(world.cluster.servers.items()):
        if sid in keep:
            continue
        if srv.up:
            srv.crash()
        world.retired.add(sid)
        world.down.discard(sid)
        world.partitioned.discard(sid)
    world.cluster.log(f"retired {sorted(world.retired)}; newest {newest[-1].config.id}")


async def _heal_and_verify(world: _World, keys: list[str]) -> None:
    """Heal all faults, restart crashed servers, read every key; acknowledged writes survive."""
    world.cluster.heal()
    world.adversary.release_all()
    for sid, srv in world.cluster.servers.items():
        if not srv.up and sid not in world.retired:
            srv.restart()
    world.down.clear()
    ch = world.channel("final")
    await _final_cvr_reads(world, ch)
    acked: dict[str, Tag] = {}
    for r in world.history:
        if r.kind == "write" and r.outcome == "ok" and r.tag is not None:
            t = Tag(*r.tag)
            if r.key not in acked or t > acked[r.key]:
                acked[r.key] = t
    for key in keys:
        start = world.stamp()
        try:
            chain = ares.chain_of(GROUP, key, world.switches)
            okey = ares.object_key(GROUP, key, world.switches)
            res, _ = await ares.read(
                ch, world.longest(chain), group=chain, key=okey, switches=world.switches
            )
        except AresError as e:
            world.failures.append(f"final read of {key} failed after healing: {e}")
            continue
        world.history.append(
            OpRecord(
                len(world.history) + 1,
                "final",
                "read",
                key,
                start,
                world.stamp(),
                value=value_digest(res.value.data),
                outcome="ok",
                tag=(res.tag.z, res.tag.writer),
            )
        )
        if key in acked and res.tag < acked[key] and key != DELETE_KEY:  # (tombstones are
            # dropped: a deleted key's last tag is gone; the checker sees its history)
            world.failures.append(
                f"§10.8: acknowledged write {acked[key]} of {key} lost (final read {res.tag})"
            )


async def _final_cvr_reads(world: _World, ch: SimChannel) -> None:
    for key in CVR_KEYS:
        if not world.cvr_ops[key]:
            continue
        start = world.loop.time()
        chain = ares.chain_of(GROUP, key, world.switches)
        okey = ares.object_key(GROUP, key, world.switches)
        try:
            res, _ = await ares.read(
                ch, world.longest(chain), group=chain, key=okey, switches=world.switches
            )
        except AresError as e:
            world.failures.append(f"final read of {key} failed after healing: {e}")
            continue
        op = Op(0, "read", start, world.loop.time(), bytes(res.value.data), res.tag)
        _cvr_record(world, key, dataclasses.replace(op, client="final"))


def run_simulation(seed: int, **overrides: Any) -> SimResult:
    """Run one seed (options not given are drawn from it) and check it."""
    opts = SimOptions(seed=seed, **overrides).resolved()
    # the Store's Paxos back-off draws from the global generator: seeded for the run (and put
    # back afterwards), so that a seed replays exactly in Store runs too
    state = random.getstate()
    random.seed(f"global-{seed}")
    try:
        if not opts.sqlite:
            return run(_main(opts, None))
        shm = Path("/dev/shm")  # the engine's fsync is not the durable point: keep it cheap
        with tempfile.TemporaryDirectory(
            prefix="ares-sim-", dir=shm if shm.is_dir() else None
        ) as d:
            return run(_main(opts, Path(d)))
    finally:
        random.setstate(state)
