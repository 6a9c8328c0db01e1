"""Emulated network latency for benchmarks on one machine (``ares bench --link-delay-ms``).

A TCP relay in a process of its own: every chunk of bytes that arrives on either side of a
relayed connection leaves on the other side ``delay_s`` later, in order. That is a one-way
latency, so a request and its reply cost ``2 * delay_s`` more than on loopback -- what a client
sees across a real network, while the servers, their fsyncs and the protocol stay real. Linux's
netem does the same in the kernel, but it is not available everywhere (the development machines
of this project have no ``sch_netem``); a relay runs anywhere.

Timers of the event loop have millisecond granularity, so delays are meant in whole
milliseconds. For benchmarks only: there is no flow control beyond the sockets' buffers, and the
number of relayed connections is bounded by ``MAX_CONNECTIONS``.

Run: ``python -m aresdsm.netdelay --delay-ms 1 127.0.0.1:7101=127.0.0.1:7001 ...``; it prints
``ready`` on stdout once every listener is up, and stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections import deque
from collections.abc import Callable
from typing import cast

MAX_CONNECTIONS = 1024


class _Side(asyncio.Protocol):
    """One end of a relayed connection: what it receives goes, delayed, to its peer."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.peer: _Side | None = None
        self.queue: deque[tuple[float, bytes | None]] = deque()
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        self._later(data)

    def eof_received(self) -> bool:
        self._later(None)
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._later(None)

    def _later(self, data: bytes | None) -> None:
        self.queue.append((self.loop.time() + self.delay_s, data))
        if self.timer is None:
            self.timer = self.loop.call_at(self.queue[0][0], self._deliver)

    def _deliver(self) -> None:
        self.timer = None
        now = self.loop.time()
        while self.queue and self.queue[0][0] <= now:
            _, data = self.queue.popleft()
            out = self.peer.transport if self.peer is not None else None
            if out is None or out.is_closing():
                continue
            if data is None:
                out.close()
            else:
                out.write(data)
        if self.queue:
            self.timer = self.loop.call_at(self.queue[0][0], self._deliver)


class _Inbound(_Side):
    """The accepted side: connects to the target, then starts reading."""

    def __init__(self, delay_s: float, target: tuple[str, int], open_: list[int]) -> None:
        super().__init__(delay_s)
        self.target = target
        self.open = open_

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self.open[0] >= MAX_CONNECTIONS:
            transport.close()
            return
        self.open[0] += 1
        transport.pause_reading()  # type: ignore[attr-defined]
        self.loop.create_task(self._connect())

    async def _connect(self) -> None:
        assert self.transport is not None
        try:
            _, out = await self.loop.create_connection(
                lambda: _Side(self.delay_s), self.target[0], self.target[1]
            )
        except OSError:
            self.transport.close()
            return
        self.peer, out.peer = out, self
        self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.open[0] -= 1
        super().connection_lost(exc)


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected host:port, got {text!r}")
    return host, int(port)


async def serve(routes: list[tuple[tuple[str, int], tuple[str, int]]], delay_s: float) -> None:
    """Relay every ``listen -> target`` route until SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    open_ = [0]

    def factory(target: tuple[str, int]) -> Callable[[], _Inbound]:
        return lambda: _Inbound(delay_s, target, open_)

    servers = [
        await loop.create_server(factory(target), host, port) for (host, port), target in routes
    ]
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("ready", flush=True)
    await stop.wait()
    for s in servers:
        s.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m aresdsm.netdelay", description=__doc__)
    parser.add_argument("--delay-ms", type=float, required=True, help="one-way delay")
    parser.add_argument("routes", nargs="+", help="LISTEN=TARGET, each host:port")
    args = parser.parse_args(argv)
    if args.delay_ms < 0:
        parser.error("--delay-ms must not be negative")
    routes = []
    for r in args.routes:
        listen, sep, target = r.partition("=")
        if not sep:
            parser.error(f"route {r!r}: expected LISTEN=TARGET")
        try:
            routes.append((_address(listen), _address(target)))
        except argparse.ArgumentTypeError as e:
            parser.error(str(e))
    from .runtime import run

    run(serve(routes, args.delay_ms / 1e3))
    sys.exit(0)


if __name__ == "__main__":
    main()
