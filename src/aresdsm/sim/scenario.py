"""Scripted scenarios: exact schedules for the interleavings that matter (docs/protocol.md §8.2).

A :class:`Scenario` is a simulated cluster with no random faults: messages arrive after a fixed
small delay unless a *hold* rule matches them, in which case they wait until the script releases
them. The script starts operations (the real client algorithms), runs virtual time forward,
releases or drops held messages, crashes and restarts servers, and finally checks the recorded
history with the linearizability checker::

    async def script(sc: Scenario) -> None:
        w = sc.client("w")
        sc.hold("w-to-s2", lambda m: m.sender == "w" and m.server == "s2")
        task = sc.start(w.write("k", b"v1"))
        await sc.run_for(0.01)
        sc.release("w-to-s2")
        await task
    result = Scenario.play(servers=3, script=script)
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec

from ..check import CheckResult, CoverableModel, KeyResult, Op, check_history, check_operations
from ..config import Configuration, ServerInfo
from ..errors import CoverableConflict, OperationError
from ..history import OpRecord, StrictClock, value_digest
from ..protocol import ares, coverable
from ..protocol.ops import OpSwitches
from ..tags import TAG0, Tag, writer_id
from ..wire.blob import Blob
from ..wire.messages import Reply, Request
from .cluster import NetworkFaults, SimChannel, SimCluster
from .loop import run

T = TypeVar("T")
GROUP = "default"


@dataclass(frozen=True)
class Message:
    """A request in flight, as hold/release rules see it."""

    sender: str
    server: str
    request: Request


@dataclass
class _Held:
    rule: str
    msg: Message
    rid: int
    on_reply: Callable[[Reply], None]


class ScriptedCluster(SimCluster):
    """A SimCluster whose requests can be held back by rules."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rules: dict[str, Callable[[Message], bool]] = {}
        self.held: list[_Held] = []

    def send(
        self, client: str, server: str, rid: int, req: Request, on_reply: Callable[[Reply], None]
    ) -> None:
        msg = Message(client, server, req)
        for name, rule in self.rules.items():
            if rule(msg):
                self.held.append(_Held(name, msg, rid, on_reply))
                return
        super().send(client, server, rid, req, on_reply)


class ScenarioClient:
    """A client with its own chain views (one per chain: the group's, or each object's with
    ``batch`` off), recording every operation it runs."""

    def __init__(self, sc: Scenario, name: str, switches: OpSwitches) -> None:
        self.sc = sc
        self.name = name
        self.switches = switches
        self.channel = SimChannel(sc.cluster, name, timeout_s=sc.timeout_s, retransmit_s=1e9)
        self.cseqs: dict[str, ares.Cseq] = {}
        self.ops = 0

    def cseq(self, chain: str = ares.CLUSTER_CHAIN) -> ares.Cseq:
        return self.cseqs.get(chain) or ares.initial_cseq(self.sc.c0)

    def _learn(self, chain: str, cseq: ares.Cseq) -> None:
        self.cseqs[chain] = ares.merge(self.cseq(chain), cseq)

    async def write(self, key: str, value: bytes) -> None:
        self.ops += 1
        op = self.sc.invoke("write", self.name, key, value_digest(value))
        chain = ares.chain_of(GROUP, key, self.switches)
        _tag, cseq = await ares.write(
            self.channel,
            self.cseq(chain),
            group=chain,
            key=ares.object_key(GROUP, key, self.switches),
            value=Blob(value),
            writer=writer_id(self.name, self.ops),
            switches=self.switches,
        )
        self._learn(chain, cseq)
        self.sc.complete(op, value_digest(value))

    async def read(self, key: str) -> bytes:
        op = self.sc.invoke("read", self.name, key, None)
        chain = ares.chain_of(GROUP, key, self.switches)
        okey = ares.object_key(GROUP, key, self.switches)
        res, cseq = await ares.read(
            self.channel, self.cseq(chain), group=chain, key=okey, switches=self.switches
        )
        self._learn(chain, cseq)
        self.sc.complete(op, value_digest(res.value.data))
        return bytes(res.value.data)

    async def cvr_write(self, key: str, value: bytes, base: Tag) -> coverable.CvrOutcome:
        """A coverable write (docs/protocol.md §9.1), recorded for the coverable checker
        (:meth:`Scenario.check_cvr`); a failed one is recorded pending (it may have taken
        effect), a stale one with the version it reported."""
        self.ops += 1
        writer = writer_id(self.name, self.ops)
        chain = ares.chain_of(GROUP, key, self.switches)
        invoke = self.sc.now()

        async def backoff(attempt: int) -> None:
            await asyncio.sleep(0.002 * attempt)

        try:
            out, cseq = await coverable.cvr_write(
                self.channel,
                self.cseq(chain),
                group=chain,
                key=ares.object_key(GROUP, key, self.switches),
                value=Blob(value),
                base=base,
                writer=writer,
                backoff=backoff,
                switches=self.switches,
            )
        except (CoverableConflict, OperationError):
            own = Tag(base.z + 1, writer)
            self.sc.record_cvr(key, Op(0, "cvr-ok", invoke, value=value, tag=own, base=base))
            raise
        self._learn(chain, cseq)
        got = b"" if out.value is None else bytes(out.value.data)
        kind = "cvr-ok" if out.ok else "cvr-stale"
        op = Op(0, kind, invoke, self.sc.now(), value=got, tag=out.tag, base=base)
        self.sc.record_cvr(key, op, client=self.name)
        return out

    async def read_tagged(self, key: str) -> tuple[Tag, bytes]:
        """A read of a coverable object, recorded for :meth:`Scenario.check_cvr`."""
        invoke = self.sc.now()
        chain = ares.chain_of(GROUP, key, self.switches)
        okey = ares.object_key(GROUP, key, self.switches)
        res, cseq = await ares.read(
            self.channel, self.cseq(chain), group=chain, key=okey, switches=self.switches
        )
        self._learn(chain, cseq)
        value = bytes(res.value.data)
        op = Op(0, "read", invoke, self.sc.now(), value=value, tag=res.tag)
        self.sc.record_cvr(key, op, client=self.name)
        return res.tag, value

    async def reconfig(
        self, proposal: Configuration, *, finish_first: bool = True
    ) -> Configuration:
        """Reconfigure the group; with ``batch`` off, every object the initial configuration
        knows, one by one (returns the configuration decided for the last of them)."""

        async def backoff(attempt: int) -> None:
            await asyncio.sleep(0.001 * attempt)

        if not self.switches.batch:
            keys = await ares.list_objects(self.channel, self.sc.c0, GROUP)
            done = await ares.reconfig_objects(
                self.channel,
                self.cseq,
                group=GROUP,
                keys=keys,
                proposal=proposal,
                proposer=self.name,
                backoff=backoff,
                switches=self.switches,
            )
            result = proposal
            for chain, (cseq, decided) in sorted(done.items()):
                self._learn(chain, cseq)
                result = decided
            return result
        cseq, decided = await ares.reconfig(
            self.channel,
            self.cseq(),
            group=ares.CLUSTER_CHAIN,
            proposal=proposal,
            proposer=self.name,
            backoff=backoff,
            switches=self.switches,
            finish_first=finish_first,
        )
        self._learn(ares.CLUSTER_CHAIN, cseq)
        return decided


class Scenario:
    """One scripted run. Use :meth:`play`."""

    def __init__(
        self,
        *,
        servers: int,
        initial: int,
        loop: asyncio.AbstractEventLoop,
        dap: str = "abd",
    ) -> None:
        self.timeout_s = 10.0
        self.loop = loop
        pool = [ServerInfo(f"s{i}", f"10.0.0.{i}:7000") for i in range(servers)]
        self.pool = pool
        faults = NetworkFaults(
            delay_min_s=0.001, delay_max_s=0.001, fsync_min_s=0.0001, fsync_max_s=0.0001
        )
        self.cluster = ScriptedCluster(rng=random.Random(0), loop=loop, servers=pool, faults=faults)
        if dap == "treas":  # [n, n - 2] code, delta 2 (docs/protocol.md §4.2)
            self.c0 = Configuration("c0", tuple(pool[:initial]), "treas", k=initial - 2, delta=2)
        else:
            self.c0 = Configuration("c0", tuple(pool[:initial]))
        for s in self.c0.servers:
            self.cluster.servers[s.id].bootstrap(self.c0)
        self.history: list[OpRecord] = []
        self.stamp = StrictClock(loop.time)
        """History times: an operation invoked after another returned is strictly later."""
        self.cvr_ops: dict[str, list[Op]] = {}
        """Coverable operations per object (checked with :meth:`check_cvr`)."""

    # -- script API ---------------------------------------------------------------------------

    def now(self) -> float:
        return self.loop.time()

    def client(self, name: str, switches: OpSwitches | None = None) -> ScenarioClient:
        return ScenarioClient(self, name, switches or OpSwitches())

    def hold(self, name: str, rule: Callable[[Message], bool]) -> None:
        """Hold back every request from now on that matches ``rule`` (named for release)."""
        self.cluster.rules[name] = rule

    def release(self, name: str) -> int:
        """Drop rule ``name`` and deliver the requests it held, now; returns how many."""
        self.cluster.rules.pop(name, None)
        go = [h for h in self.cluster.held if h.rule == name]
        self.cluster.held = [h for h in self.cluster.held if h.rule != name]
        for h in go:
            SimCluster.send(
                self.cluster, h.msg.sender, h.msg.server, h.rid, h.msg.request, h.on_reply
            )
        return len(go)

    def start(self, op: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        return self.loop.create_task(op)

    async def run_for(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def crash(self, server: str) -> None:
        self.cluster.servers[server].crash()

    def restart(self, server: str) -> None:
        self.cluster.servers[server].restart()

    def invoke(self, kind: str, client: str, key: str, digest: str | None) -> int:
        """Record an invocation (pending until completed); returns its index."""
        record = {
            "op_id": len(self.history) + 1,
            "client": client,
            "kind": kind,
            "key": key,
            "invoke_s": self.stamp(),
            "value": digest,
            "outcome": "pending",
        }
        self.history.append(msgspec.convert(record, OpRecord))
        return len(self.history) - 1

    def complete(self, index: int, digest: str) -> None:
        self.history[index] = msgspec.structs.replace(
            self.history[index], complete_s=self.stamp(), value=digest, outcome="ok"
        )

    def check(self) -> CheckResult:
        return check_history(self.history)

    def record_cvr(self, key: str, op: Op, *, client: str = "") -> None:
        ops = self.cvr_ops.setdefault(key, [])
        ops.append(dataclasses.replace(op, op_id=len(ops) + 1, client=client or op.client))

    def check_cvr(self, key: str) -> KeyResult:
        """Check object ``key``'s coverable history against the sequential spec of
        docs/protocol.md §9.1 (pending writes may or may not have taken effect)."""
        model: Any = CoverableModel(TAG0, b"")
        return check_operations(key, self.cvr_ops.get(key, []), model=model)

    @staticmethod
    def play(
        *,
        servers: int,
        script: Callable[[Scenario], Awaitable[None]],
        initial: int | None = None,
        dap: str = "abd",
    ) -> Scenario:
        async def main() -> Scenario:
            sc = Scenario(
                servers=servers,
                initial=initial or servers,
                loop=asyncio.get_running_loop(),
                dap=dap,
            )
            await script(sc)
            return sc

        return run(main())
