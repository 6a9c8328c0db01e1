"""The fault-injecting proxy of ``ares chaos`` (aresdsm.faultproxy), over real TCP sockets.

An echo-like target records what it received and answers every line with ``ack:<line>``; clients
leave from distinct loopback addresses so that the proxy tells them apart, as chaos clients do.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time

import pytest

from aresdsm.faultproxy import FaultProxy, ProxyProcess, Rule, RuleError, handle_command

A, B = "127.0.0.21", "127.0.0.22"


class Target:
    """A server that records lines and acknowledges each one."""

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.server: asyncio.Server | None = None
        self.conns = 0
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> tuple[str, int]:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[:2]

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.conns += 1
        self.writers.append(w)
        try:
            while line := await r.readline():
                self.lines.append(line.strip())
                w.write(b"ack:" + line)
                await w.drain()
        except ConnectionError:
            pass
        finally:
            w.close()

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in self.writers:  # (3.11's wait_closed does not wait for the handlers)
            w.close()
            with contextlib.suppress(ConnectionError):
                await w.wait_closed()
        await self.server.wait_closed()


async def wait_until(cond: object, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


@pytest.fixture
async def setup():  # type: ignore[no-untyped-def]
    target = Target()
    addr = await target.start()
    proxy = FaultProxy([("s1", ("127.0.0.1", 0), addr)], sources={A: "a", B: "b"})
    await proxy.start()
    yield target, proxy, proxy.addresses()["s1"]
    await proxy.close()
    await target.close()


async def dial(
    where: tuple[str, int], source: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(*where, local_addr=(source, 0))


async def test_relays_both_ways_and_names_sources(setup) -> None:  # type: ignore[no-untyped-def]
    _target, proxy, where = setup
    r, w = await dial(where, A)
    w.write(b"hello\n")
    assert await asyncio.wait_for(r.readline(), 5) == b"ack:hello\n"
    assert [c.source for c in proxy.conns] == ["a"]
    w.close()


async def test_block_up_holds_requests_until_heal(setup) -> None:  # type: ignore[no-untyped-def]
    target, proxy, where = setup
    r, w = await dial(where, A)
    proxy.add("p", Rule("block", "a", "s1", "up"))
    w.write(b"one\n")
    await asyncio.sleep(0.3)
    assert target.lines == []  # held: a partition delays, TCP does not lose bytes
    assert proxy.bytes_held == 4
    proxy.remove("p")
    assert await asyncio.wait_for(r.readline(), 5) == b"ack:one\n"
    assert target.lines == [b"one"]
    w.close()


async def test_block_down_server_acts_client_hears_nothing(setup) -> None:  # type: ignore[no-untyped-def]
    target, proxy, where = setup
    r, w = await dial(where, A)
    proxy.add("p", Rule("block", "a", "s1", "down"))
    w.write(b"two\n")
    await wait_until(lambda: target.lines == [b"two"])
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(r.readline(), 0.3)
    proxy.heal()
    assert await asyncio.wait_for(r.readline(), 5) == b"ack:two\n"
    w.close()


async def test_rules_apply_per_source(setup) -> None:  # type: ignore[no-untyped-def]
    target, proxy, where = setup
    ra, wa = await dial(where, A)
    rb, wb = await dial(where, B)
    proxy.add("p", Rule("block", "a", "s1"))
    wa.write(b"from-a\n")
    wb.write(b"from-b\n")
    assert await asyncio.wait_for(rb.readline(), 5) == b"ack:from-b\n"
    await asyncio.sleep(0.2)
    assert target.lines == [b"from-b"]
    proxy.heal()
    assert await asyncio.wait_for(ra.readline(), 5) == b"ack:from-a\n"
    wa.close()
    wb.close()


async def test_delay_is_one_way_and_keeps_order(setup) -> None:  # type: ignore[no-untyped-def]
    _target, proxy, where = setup
    r, w = await dial(where, A)
    proxy.add("d", Rule("delay", "a", "s1", "up", delay_ms=200, jitter_ms=100))
    t0 = time.monotonic()
    for i in range(20):
        w.write(b"%d\n" % i)
    got = [await asyncio.wait_for(r.readline(), 5) for _ in range(20)]
    assert time.monotonic() - t0 >= 0.19
    assert got == [b"ack:%d\n" % i for i in range(20)]  # jitter never reorders a stream
    proxy.remove("d")
    t0 = time.monotonic()
    w.write(b"fast\n")
    await asyncio.wait_for(r.readline(), 5)
    assert time.monotonic() - t0 < 0.15
    w.close()


async def test_drop_resets_connections_and_refuses_new_ones(setup) -> None:  # type: ignore[no-untyped-def]
    _target, proxy, where = setup
    r, w = await dial(where, A)
    w.write(b"x\n")
    await asyncio.wait_for(r.readline(), 5)
    proxy.add("x", Rule("drop", "a", "s1"))
    with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
        line = await asyncio.wait_for(r.readline(), 5)
        if not line:
            raise ConnectionResetError
    r2, w2 = await dial(where, A)  # accepted by the kernel, then reset by the proxy
    with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
        w2.write(b"y\n")
        line = await asyncio.wait_for(r2.readline(), 5)
        if not line:
            raise ConnectionResetError
    rb, wb = await dial(where, B)  # another source is not affected
    wb.write(b"b\n")
    assert await asyncio.wait_for(rb.readline(), 5) == b"ack:b\n"
    proxy.remove("x")
    r3, w3 = await dial(where, A)
    w3.write(b"z\n")
    assert await asyncio.wait_for(r3.readline(), 5) == b"ack:z\n"
    for wr in (w, w2, wb, w3):
        wr.close()


async def test_held_bytes_are_bounded() -> None:
    target = Target()
    addr = await target.start()
    proxy = FaultProxy([("s1", ("127.0.0.1", 0), addr)], max_buffer_bytes=64 * 1024)
    await proxy.start()
    try:
        r, w = await asyncio.open_connection(*proxy.addresses()["s1"])
        proxy.add("p", Rule("block", server="s1", direction="up"))
        chunk = b"z" * 16383 + b"\n"
        for _ in range(800):  # 12.8 MB: far more than the socket buffers and the bound
            w.write(chunk)
        await asyncio.sleep(0.5)
        # the proxy stopped reading at the bound (plus at most one read's worth)
        assert 0 < proxy.bytes_held <= 64 * 1024 + 256 * 1024
        assert w.transport.get_write_buffer_size() > 0  # the sender feels the push-back
        proxy.heal()
        for _ in range(800):
            assert len(await asyncio.wait_for(r.readline(), 10)) == len(chunk) + 4
        assert proxy.bytes_held == 0
        w.close()
    finally:
        await proxy.close()
        await target.close()


async def test_server_down_resets_the_client() -> None:
    target = Target()
    addr = await target.start()
    await target.close()  # nothing listens there any more
    proxy = FaultProxy([("s1", ("127.0.0.1", 0), addr)])
    await proxy.start()
    try:
        r, w = await asyncio.open_connection(*proxy.addresses()["s1"])
        assert await asyncio.wait_for(r.read(), 5) == b""
        w.close()
    finally:
        await proxy.close()


def test_bad_rules_and_commands_are_one_line_errors() -> None:
    with pytest.raises(RuleError, match="action"):
        Rule("explode")  # type: ignore[arg-type]
    with pytest.raises(RuleError, match="direction"):
        Rule("block", direction="sideways")  # type: ignore[arg-type]
    with pytest.raises(RuleError, match="delay_ms"):
        Rule("delay", delay_ms=-1)
    proxy = FaultProxy([])
    for line, expect in [
        (b"not json", "Expecting value"),
        (b"[1]", "JSON object"),
        (b'{"cmd": "launch"}', "unknown command"),
        (b'{"cmd": "add", "name": "x"}', "needs a name"),
        (b'{"cmd": "add", "name": "x", "rule": {"action": "block", "bogus": 1}}', "unknown rule"),
        (b'{"cmd": "add", "name": "x", "rule": {"action": "delay", "delay_ms": "soon"}}', "delay"),
    ]:
        answer = handle_command(proxy, line)
        assert answer["ok"] is False and expect in answer["error"], (line, answer)
        assert "\n" not in answer["error"]
    assert proxy.rules == {}
    assert handle_command(proxy, b'{"cmd": "add", "name": "x", "rule": {"action": "block"}}') == {
        "ok": True
    }
    assert handle_command(proxy, b'{"cmd": "remove", "name": "x"}') == {"ok": True, "found": True}


async def test_proxy_process_is_driven_over_stdin() -> None:
    target = Target()
    host, port = await target.start()
    from aresdsm.local import free_ports

    (listen,) = free_ports(1)
    proxy = await ProxyProcess.start([("s1", f"127.0.0.1:{listen}", f"{host}:{port}")], {A: "a"})
    try:
        r, w = await dial(("127.0.0.1", listen), A)
        await proxy.add("p", Rule("block", "a", "s1", "down"))
        w.write(b"q\n")
        await wait_until(lambda: target.lines == [b"q"])
        stats = await proxy.stats()
        assert stats["connections"] == 1 and stats["bytes_held"] == 6 and "p" in stats["rules"]
        with pytest.raises(RuleError, match="unknown command"):
            await proxy.command({"cmd": "nope"})
        await proxy.heal()
        assert await asyncio.wait_for(r.readline(), 5) == b"ack:q\n"
        w.close()
    finally:
        await proxy.close()
        await target.close()
    assert proxy.proc.returncode == 0


def test_proxy_process_bad_arguments() -> None:
    import subprocess

    out = subprocess.run(
        [sys.executable, "-m", "aresdsm.faultproxy", "--route", "s1=nowhere"],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2 and "SERVER=LISTEN=TARGET" in out.stderr
