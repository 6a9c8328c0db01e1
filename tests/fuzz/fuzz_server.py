"""Coverage-guided fuzz target: bytes from the network -> frame split and decode -> the server
shell's dispatch (aresdsm.server: Server.handle with its limits, GetStats, non-requests) -> the
pure ServerCore -> group commit -> reply encoding -> recovery from the records written
(issue 13 item 7; docs/testing.md "Fuzzing").

One input is a byte stream received on one connection of a server that knows an ABD and a TREAS
configuration and holds a few objects. The oracle, for every input:

- nothing but a closed connection comes of bad bytes (no exception escapes, no fail-stop: an
  exception from the core is a bug and stops the server, which this target reports as a crash);
- every request handled gets a reply unless a bad frame closed the connection, and every reply
  frame decodes;
- the running totals of GetStats match a recount of the objects;
- recovery from the records persisted rebuilds exactly the in-memory state (persist before
  reply: whatever the core answered from must be durable).

Run it: ``python tests/fuzz/fuzz_server.py -max_total_time=60 CORPUS_DIR tests/fuzz/corpus``
(atheris, libFuzzer flags). ``tests/fuzz/test_fuzz.py`` replays the corpus on every test run
and fuzzes for a bounded time in CI.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import sys
from typing import Any

_FUZZING = __name__ == "__main__"
if _FUZZING:  # instrument aresdsm alone (instrument_all() takes minutes on a loaded machine)
    import atheris

    _instrumented: Any = atheris.instrument_imports(include=["aresdsm"])
else:
    _instrumented = contextlib.nullcontext()

with _instrumented:
    from aresdsm.config import Configuration, ServerInfo
    from aresdsm.protocol import treas
    from aresdsm.protocol.ares import CLUSTER_CHAIN as CHAIN
    from aresdsm.protocol.server_core import ServerCore
    from aresdsm.server import Server, _Conn
    from aresdsm.storage import MemoryStorage
    from aresdsm.storage.memory import apply_batch
    from aresdsm.tags import Tag
    from aresdsm.wire import Blob, Decoder
    from aresdsm.wire.messages import PutData

MAX_FRAME_BYTES = 1 << 20
S = tuple(ServerInfo(f"s{i}", f"127.0.0.1:{7000 + i}") for i in range(1, 5))
ABD = Configuration("c0", S[:3])
TREAS = Configuration("t0", S, dap="treas", k=2, delta=1)

if _FUZZING:  # the shell's log calls run, quietly (under pytest, logging is left alone)
    logging.getLogger("aresdsm").addHandler(logging.NullHandler())
    logging.getLogger("aresdsm").propagate = False
    logging.getLogger("aresdsm").setLevel(logging.INFO)


class _Transport:
    def __init__(self) -> None:
        self.out = bytearray()
        self.closed = False

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    abort = close

    def writelines(self, bufs: list[Any]) -> None:
        for b in bufs:
            self.out += b

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else None

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass


def _base_records() -> list[Any]:
    core = ServerCore("s1")
    st = MemoryStorage()

    for c in (ABD, TREAS):
        apply_batch(st.records, core.install_config(c))
    for c in (ABD, TREAS):
        for key in ("a", "b"):
            _, writes = core.handle(
                PutData(CHAIN, c.id, f"g\x00{key}", Tag(1, "w"), Blob(b"v-" + key.encode()))
            )
            apply_batch(st.records, writes)
    return list(st.records.values())


BASE = _base_records()
_loop = asyncio.new_event_loop()


def _state(core: ServerCore) -> tuple[Any, ...]:
    return (
        core.configs,
        core.registers,
        core.lists,
        core.nextc,
        core.acceptors,
        core.collected,
        core.finals,
        {k: v for k, v in core.objects.items() if v},
    )


async def _run(data: bytes) -> None:
    storage = MemoryStorage()
    storage.records = {r.record_key: r for r in BASE}
    server = Server(
        server_id="s1", host="127.0.0.1", port=0, storage=storage, max_frame_bytes=MAX_FRAME_BYTES
    )
    conn = _Conn(server)
    transport = _Transport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    conn.data_received(data)
    await storage.drain()
    await asyncio.sleep(0)  # the commit's done-callbacks send the replies
    if server.fatal is not None:
        raise AssertionError(f"the server failed (fail-stop): {server.fatal!r}") from server.fatal
    # every reply decodes; one reply per request handled
    out = memoryview(bytes(transport.out))
    decoder = Decoder()
    replies = 0
    while out:
        (n,) = struct.unpack_from(">I", out)
        decoder.decode_body(out[4 : 4 + n])
        out = out[4 + n :]
        replies += 1
    handled = sum(v for k, v in server.core.counters.items() if k[:1].isupper())
    if replies < handled and not transport.closed:  # (a bad frame drops the connection)
        raise AssertionError(f"{handled} requests handled, {replies} replies")
    # running totals match a recount
    core = server.core
    recount = sum(len(r.value) for r in core.registers.values())
    recount += sum(treas.stored_bytes(st) for st in core.lists.values())
    if core.stats().stored_bytes != recount:
        raise AssertionError(f"stats say {core.stats().stored_bytes} bytes, recount {recount}")
    # recovery from what was persisted rebuilds the same state
    recovered = ServerCore.recover("s1", list(storage.records.values()))
    if _state(recovered) != _state(core):
        raise AssertionError("recovered state differs from the state the server answered from")


def one_input(data: bytes) -> None:
    _loop.run_until_complete(_run(data))


def main(argv: list[str]) -> None:
    atheris.Setup(argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
