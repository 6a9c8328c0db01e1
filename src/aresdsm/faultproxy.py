"""A fault-injecting TCP proxy in front of every server (``ares chaos``, issue 14).

The nemesis of ``ares chaos`` needs a network it can break on purpose: a server alive yet
unreachable from some clients, from the reconfigurer only, in one direction only, slow on some
links, or whose connections are reset. Every server's address in the cluster file is a port of
this proxy; the proxy relays to the server's real port and applies the rules in force to each
*link* -- a (source, server) pair -- and *direction*:

* ``up`` is what a client sends to the server (requests), ``down`` what the server sends back;
* sources are told apart by the address a connection comes from: every chaos client leaves from a
  loopback address of its own (``[client] source_host``), and ``--source 127.0.0.11=c1`` names it.

Rules (:class:`Rule`), each under a name so that a fault can be healed on its own:

* ``block`` -- a partition of that direction. Bytes are *held*, not discarded: TCP retransmits what
  a partitioned network loses, so what a client sent during a partition reaches the server when
  the partition heals (a request delivered long after its round gave up: the schedule the hand-off
  bugs of protocol.md §8.2 need). Held bytes are bounded; past ``max_buffer_bytes`` the proxy stops
  reading from the sender, and TCP flow control pushes back on it as a full network would.
* ``delay`` -- every chunk is delivered ``delay_ms`` (plus up to ``jitter_ms``) after it arrived,
  in order.
* ``drop`` -- the link's connections are reset, and new ones are reset as soon as they are
  accepted, while the rule is in force (both directions: a reset has no direction).

The server side of the proxy sees real TCP: a killed server resets the client's connection, a
paused one accepts and never answers. The proxy runs in a process of its own
(``python -m aresdsm.faultproxy``), controlled by JSON lines on stdin (:func:`control_loop`);
tests also run :class:`FaultProxy` in-process. Network namespaces (root only) would do the same
in the kernel; a proxy runs anywhere, as :mod:`aresdsm.netdelay` does for plain latency.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import sys
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any, Literal, cast

Direction = Literal["up", "down", "both"]
Action = Literal["block", "delay", "drop"]
DIRECTIONS: tuple[str, ...] = ("up", "down", "both")
ACTIONS: tuple[str, ...] = ("block", "delay", "drop")
ANY = "*"
UNKNOWN_SOURCE = "other"

MAX_CONNECTIONS = 4096
DEFAULT_MAX_BUFFER_BYTES = 4 * 1024 * 1024
"""Bytes held per direction of one connection before the proxy stops reading its sender."""
MAX_DELAY_MS = 600_000.0
MAX_RULES = 10_000
MAX_CONTROL_LINE_BYTES = 64 * 1024


class RuleError(ValueError):
    """A rule or control command that makes no sense (one line, for the controller)."""


@dataclass(frozen=True, slots=True)
class Rule:
    """What happens to traffic from ``source`` to ``server`` (``*``: every one) in
    ``direction``."""

    action: Action
    source: str = ANY
    server: str = ANY
    direction: Direction = "both"
    delay_ms: float = 0.0
    jitter_ms: float = 0.0

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise RuleError(f"action must be one of {', '.join(ACTIONS)}, got {self.action!r}")
        if self.direction not in DIRECTIONS:
            raise RuleError(
                f"direction must be one of {', '.join(DIRECTIONS)}, got {self.direction!r}"
            )
        for name in ("delay_ms", "jitter_ms"):
            v = getattr(self, name)
            if not isinstance(v, int | float) or not 0 <= v <= MAX_DELAY_MS:
                raise RuleError(f"{name} must be a number in 0..{MAX_DELAY_MS:.0f}, got {v!r}")
        if not isinstance(self.source, str) or not isinstance(self.server, str):
            raise RuleError("source and server must be names (or '*')")

    def matches(self, source: str, server: str, direction: str) -> bool:
        return (
            self.source in (ANY, source)
            and self.server in (ANY, server)
            and self.direction in ("both", direction)
        )

    @staticmethod
    def from_json(d: dict[str, Any]) -> Rule:
        known = {"action", "source", "server", "direction", "delay_ms", "jitter_ms"}
        extra = set(d) - known
        if extra:
            raise RuleError(f"unknown rule field(s) {sorted(extra)}")
        if "action" not in d:
            raise RuleError("a rule needs an action")
        return Rule(**d)


@dataclass(frozen=True, slots=True)
class _Effect:
    blocked: bool = False
    delay_s: float = 0.0
    jitter_s: float = 0.0


class _Flow:
    """One direction of one relayed connection: bytes from ``src`` wait here until the rules let
    them go to ``dst``."""

    def __init__(self, proxy: FaultProxy, direction: str) -> None:
        self.proxy = proxy
        self.direction = direction
        self.loop = asyncio.get_running_loop()
        self.src: asyncio.Transport | None = None
        self.dst: asyncio.Transport | None = None
        self.queue: deque[tuple[float, bytes | None]] = deque()
        self.held = 0
        self.last_due = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.effect = _Effect()
        self.reading_paused = False
        self.dst_full = False
        self.dead = False

    def push(self, data: bytes | None) -> None:
        if self.dead:  # its destination is gone: what the sender still sends is lost
            return
        now = self.loop.time()
        e = self.effect
        due = now + e.delay_s + (random.uniform(0, e.jitter_s) if e.jitter_s else 0.0)
        self.last_due = due = max(due, self.last_due)  # a stream keeps its order
        self.queue.append((due, data))
        if data is not None:
            self.held += len(data)
            self.proxy.bytes_held += len(data)
            if self.held > self.proxy.max_buffer_bytes and not self.reading_paused:
                self.reading_paused = True
                if self.src is not None and not self.src.is_closing():
                    self.src.pause_reading()
        self.kick()

    def kick(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self._deliver()

    def _deliver(self) -> None:
        self.timer = None
        if self.effect.blocked or self.dst is None or self.dst_full:
            return
        now = self.loop.time()
        while self.queue and self.queue[0][0] <= now:
            _, data = self.queue.popleft()
            if data is None:
                self.dst.close()
                continue
            self.held -= len(data)
            self.proxy.bytes_held -= len(data)
            self.proxy.bytes_forwarded += len(data)
            if not self.dst.is_closing():
                self.dst.write(data)
            if self.dst_full:
                break
        if self.reading_paused and self.held <= self.proxy.max_buffer_bytes // 2:
            self.reading_paused = False
            if self.src is not None and not self.src.is_closing():
                self.src.resume_reading()
        if self.queue and not self.dst_full:
            self.timer = self.loop.call_at(self.queue[0][0], self._deliver)

    def discard(self) -> None:
        self.dead = True
        if self.reading_paused and self.src is not None and not self.src.is_closing():
            self.src.resume_reading()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.proxy.bytes_held -= self.held
        self.held = 0
        self.queue.clear()


class _End(asyncio.Protocol):
    """One socket of a relayed connection; what it reads goes into ``inbound``, the flow whose
    destination is the other socket, and ``outbound`` writes to it."""

    def __init__(self, conn: _Conn, inbound: _Flow, outbound: _Flow) -> None:
        self.conn = conn
        self.inbound = inbound
        self.outbound = outbound
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.inbound.src = self.transport
        self.outbound.dst = self.transport
        self.outbound.kick()

    def data_received(self, data: bytes) -> None:
        self.inbound.push(data)

    def eof_received(self) -> bool:
        self.inbound.push(None)
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.inbound.push(None)
        self.outbound.discard()
        self.conn.end_lost(self)

    def pause_writing(self) -> None:
        self.outbound.dst_full = True

    def resume_writing(self) -> None:
        self.outbound.dst_full = False
        self.outbound.kick()


class _Conn:
    """A relayed connection: client socket, server socket and a flow each way."""

    def __init__(self, proxy: FaultProxy, source: str, server: str) -> None:
        self.proxy = proxy
        self.source = source
        self.server = server
        self.up = _Flow(proxy, "up")
        self.down = _Flow(proxy, "down")
        self.client = _End(self, self.up, self.down)
        self.upstream: _End | None = None
        self.open_ends = 1
        self.refresh()

    def refresh(self) -> None:
        for flow in (self.up, self.down):
            flow.effect = self.proxy.effect(self.source, self.server, flow.direction)
            flow.kick()

    def abort(self) -> None:
        for end in (self.client, self.upstream):
            if end is not None and end.transport is not None:
                end.transport.abort()

    def end_lost(self, end: _End) -> None:
        self.open_ends -= 1
        if self.open_ends <= 0:
            self.proxy.conns.discard(self)


class FaultProxy:
    """Relays ``routes`` (server id -> listen address, target address) and applies rules."""

    def __init__(
        self,
        routes: Iterable[tuple[str, tuple[str, int], tuple[str, int]]],
        *,
        sources: dict[str, str] | None = None,
        max_buffer_bytes: int = DEFAULT_MAX_BUFFER_BYTES,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        if max_buffer_bytes < 1:
            raise RuleError("max_buffer_bytes must be positive")
        self.routes = list(routes)
        self.sources = dict(sources or {})
        """Source IP address -> source name (the names rules use)."""
        self.max_buffer_bytes = max_buffer_bytes
        self.max_connections = max_connections
        self.rules: dict[str, Rule] = {}
        self.conns: set[_Conn] = set()
        self._servers: list[asyncio.Server] = []
        self.bytes_held = 0
        self.bytes_forwarded = 0
        self.connections_accepted = 0
        self.connections_reset = 0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for server_id, (host, port), target in self.routes:
            self._servers.append(
                await loop.create_server(self._factory(server_id, target), host, port)
            )

    def _factory(self, server_id: str, target: tuple[str, int]) -> Callable[[], _Accepted]:
        return lambda: _Accepted(self, server_id, target)

    def addresses(self) -> dict[str, tuple[str, int]]:
        """Where each route listens (its port, if it was 0, now chosen)."""
        out = {}
        for (sid, _, _), srv in zip(self.routes, self._servers, strict=True):
            host, port = srv.sockets[0].getsockname()[:2]
            out[sid] = (host, port)
        return out

    async def close(self) -> None:
        for s in self._servers:
            s.close()
        for c in list(self.conns):
            c.abort()
        for s in self._servers:
            await s.wait_closed()
        self._servers.clear()

    # -- rules ---------------------------------------------------------------------------------

    def effect(self, source: str, server: str, direction: str) -> _Effect:
        blocked, delay_s, jitter_s = False, 0.0, 0.0
        for r in self.rules.values():
            if not r.matches(source, server, direction):
                continue
            if r.action == "block":
                blocked = True
            elif r.action == "delay":
                delay_s, jitter_s = max(delay_s, r.delay_ms / 1e3), max(jitter_s, r.jitter_ms / 1e3)
        return _Effect(blocked, delay_s, jitter_s)

    def dropped(self, source: str, server: str) -> bool:
        return any(
            r.action == "drop" and r.source in (ANY, source) and r.server in (ANY, server)
            for r in self.rules.values()
        )

    def add(self, name: str, rule: Rule) -> None:
        """Put ``rule`` in force under ``name`` (replacing a rule of that name)."""
        if name not in self.rules and len(self.rules) >= MAX_RULES:
            raise RuleError(f"at most {MAX_RULES} rules")
        self.rules[name] = rule
        self._apply()

    def remove(self, name: str) -> bool:
        found = self.rules.pop(name, None) is not None
        self._apply()
        return found

    def heal(self) -> None:
        """Remove every rule: everything held is delivered, delays stop."""
        self.rules.clear()
        self._apply()

    def _apply(self) -> None:
        for c in list(self.conns):
            if self.dropped(c.source, c.server):
                self.connections_reset += 1
                c.abort()
            else:
                c.refresh()

    def stats(self) -> dict[str, Any]:
        return {
            "connections": len(self.conns),
            "connections_accepted": self.connections_accepted,
            "connections_reset": self.connections_reset,
            "bytes_held": self.bytes_held,
            "bytes_forwarded": self.bytes_forwarded,
            "rules": {name: asdict(r) for name, r in self.rules.items()},
        }


class _Accepted(asyncio.Protocol):
    """Accepts a client connection, names its source, and connects to the server."""

    def __init__(self, proxy: FaultProxy, server_id: str, target: tuple[str, int]) -> None:
        self.proxy = proxy
        self.server_id = server_id
        self.target = target
        self.conn: _Conn | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        t = cast(asyncio.Transport, transport)
        proxy = self.proxy
        peer = t.get_extra_info("peername")
        source = proxy.sources.get(peer[0], UNKNOWN_SOURCE) if peer else UNKNOWN_SOURCE
        if len(proxy.conns) >= proxy.max_connections or proxy.dropped(source, self.server_id):
            proxy.connections_reset += 1
            t.abort()
            return
        proxy.connections_accepted += 1
        self.conn = conn = _Conn(proxy, source, self.server_id)
        proxy.conns.add(conn)
        conn.client.connection_made(t)
        t.pause_reading()
        asyncio.get_running_loop().create_task(self._connect(conn, t))

    async def _connect(self, conn: _Conn, t: asyncio.Transport) -> None:
        loop = asyncio.get_running_loop()
        upstream = _End(conn, conn.down, conn.up)
        try:
            await loop.create_connection(lambda: upstream, *self.target)
        except OSError:
            t.abort()  # the server is down: the client sees a reset, as from a dead host
            return
        conn.upstream = upstream
        conn.open_ends += 1
        if t.is_closing():
            if upstream.transport is not None:
                upstream.transport.abort()
            return
        t.resume_reading()

    # the client socket's events go to the connection's client end
    def data_received(self, data: bytes) -> None:
        if self.conn is not None:
            self.conn.client.data_received(data)

    def eof_received(self) -> bool:
        if self.conn is not None:
            return self.conn.client.eof_received()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.conn is not None:
            self.conn.client.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.conn is not None:
            self.conn.client.pause_writing()

    def resume_writing(self) -> None:
        if self.conn is not None:
            self.conn.client.resume_writing()


# -- the proxy process -------------------------------------------------------------------------


class ProxyProcess:
    """The proxy in a process of its own, driven over its stdin/stdout (``ares chaos``)."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self._lock = asyncio.Lock()

    @classmethod
    async def start(
        cls,
        routes: Iterable[tuple[str, str, str]],
        sources: dict[str, str],
        *,
        max_buffer_bytes: int = DEFAULT_MAX_BUFFER_BYTES,
        ready_timeout_s: float = 20.0,
    ) -> ProxyProcess:
        """``routes``: (server id, listen host:port, target host:port)."""
        args = [f"--route={sid}={listen}={target}" for sid, listen, target in routes]
        args += [f"--source={ip}={name}" for ip, name in sources.items()]
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "aresdsm.faultproxy",
            f"--max-buffer-bytes={max_buffer_bytes}",
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        self = cls(proc)
        try:
            line = await asyncio.wait_for(self._readline(), ready_timeout_s)
        except (TimeoutError, RuleError):
            line = {}
        if not line.get("ready"):
            await self.close()
            raise RuleError("the fault-injecting proxy did not start")
        return self

    async def _readline(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = await self.proc.stdout.readline()
        if not line:
            raise RuleError("the fault-injecting proxy exited")
        answer = json.loads(line)
        if not isinstance(answer, dict):
            raise RuleError(f"unexpected answer from the proxy: {line!r}")
        return answer

    async def command(self, cmd: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None
        async with self._lock:
            self.proc.stdin.write(json.dumps(cmd).encode() + b"\n")
            await self.proc.stdin.drain()
            answer = await self._readline()
        if not answer.get("ok"):
            raise RuleError(f"proxy refused {cmd.get('cmd')}: {answer.get('error')}")
        return answer

    async def add(self, name: str, rule: Rule) -> None:
        await self.command({"cmd": "add", "name": name, "rule": asdict(rule)})

    async def remove(self, name: str) -> None:
        await self.command({"cmd": "remove", "name": name})

    async def heal(self) -> None:
        await self.command({"cmd": "heal"})

    async def stats(self) -> dict[str, Any]:
        return await self.command({"cmd": "stats"})

    async def close(self) -> None:
        if self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


def handle_command(proxy: FaultProxy, line: bytes) -> dict[str, Any]:
    """One control command (a JSON object) -> its answer. Bad input: ``ok: false`` and why."""
    try:
        cmd = json.loads(line)
        if not isinstance(cmd, dict):
            raise RuleError("a command is a JSON object")
        op = cmd.get("cmd")
        if op == "add":
            name = cmd.get("name")
            rule = cmd.get("rule")
            if not isinstance(name, str) or not isinstance(rule, dict):
                raise RuleError("add needs a name (string) and a rule (object)")
            proxy.add(name, Rule.from_json(rule))
            return {"ok": True}
        if op == "remove":
            name = cmd.get("name")
            if not isinstance(name, str):
                raise RuleError("remove needs a name (string)")
            return {"ok": True, "found": proxy.remove(name)}
        if op == "heal":
            proxy.heal()
            return {"ok": True}
        if op == "stats":
            return {"ok": True, **proxy.stats()}
        raise RuleError(f"unknown command {op!r} (add, remove, heal, stats)")
    except (ValueError, TypeError) as e:  # json.JSONDecodeError and RuleError are ValueErrors
        return {"ok": False, "error": str(e).splitlines()[0] if str(e) else type(e).__name__}


async def control_loop(proxy: FaultProxy, reader: asyncio.StreamReader) -> None:
    """Answer one JSON line on stdout per command line read, until end of input."""
    while True:
        try:
            line = await reader.readline()
        except ValueError:  # a line longer than the stream's limit
            answer: dict[str, Any] = {"ok": False, "error": "command line too long"}
            print(json.dumps(answer), flush=True)
            continue
        if not line:
            return
        if line.strip():
            print(json.dumps(handle_command(proxy, line)), flush=True)


async def serve(proxy: FaultProxy) -> None:
    """Run the proxy until SIGTERM/SIGINT or the end of stdin (the controller went away)."""
    loop = asyncio.get_running_loop()
    await proxy.start()
    reader = asyncio.StreamReader(limit=MAX_CONTROL_LINE_BYTES)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(json.dumps({"ready": True}), flush=True)
    control = loop.create_task(control_loop(proxy, reader))
    stopping = loop.create_task(stop.wait())
    await asyncio.wait({control, stopping}, return_when=asyncio.FIRST_COMPLETED)
    control.cancel()
    stopping.cancel()
    await proxy.close()


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected host:port, got {text!r}")
    return host, int(port)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m aresdsm.faultproxy", description=__doc__)
    parser.add_argument(
        "--route", action="append", default=[], help="SERVER=LISTEN=TARGET (host:port each)"
    )
    parser.add_argument("--source", action="append", default=[], help="IP=NAME of a source")
    parser.add_argument("--max-buffer-bytes", type=int, default=DEFAULT_MAX_BUFFER_BYTES)
    args = parser.parse_args(argv)
    routes = []
    for r in args.route:
        parts = r.split("=")
        if len(parts) != 3 or not parts[0]:
            parser.error(f"route {r!r}: expected SERVER=LISTEN=TARGET")
        try:
            routes.append((parts[0], _address(parts[1]), _address(parts[2])))
        except argparse.ArgumentTypeError as e:
            parser.error(str(e))
    if not routes:
        parser.error("give at least one --route")
    sources = {}
    for s in args.source:
        ip, sep, name = s.partition("=")
        if not sep or not ip or not name:
            parser.error(f"source {s!r}: expected IP=NAME")
        sources[ip] = name
    if args.max_buffer_bytes < 1:
        parser.error("--max-buffer-bytes must be positive")
    from .runtime import run

    run(serve(FaultProxy(routes, sources=sources, max_buffer_bytes=args.max_buffer_bytes)))
    sys.exit(0)


if __name__ == "__main__":
    main()
