"""Issue 13's connection and slowloris attacks against real server processes (`python -m aresdsm
server`, loopback only, bounded in time and count):

- 1,100 idle connections to two of three servers started with ``ulimit -n 1024``: before, the
  servers ran out of file descriptors and every client operation failed, with nothing logged;
  now connections beyond ``max_connections`` (RLIMIT_NOFILE - 256) are refused or evict the idle
  ones, clients keep working, and the refusals are logged (rate-limited, INFO);
- 16 slowloris connections declaring 64 MiB frames: before, the server held all they sent
  (960 MiB in the issue); now incomplete frames share ``max_partial_frame_bytes_total`` and must
  complete within ``frame_timeout_s``, so the server's RSS stays bounded and clients keep working.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import socket
import struct
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from aresdsm.client import Store
from aresdsm.config import parse_address
from aresdsm.local import LocalCluster
from aresdsm.protocol.ares import CLUSTER_CHAIN as CHAIN

pytestmark = pytest.mark.slow


@contextlib.contextmanager
def _cluster(n: int, **server_limits: object) -> Iterator[LocalCluster]:
    with tempfile.TemporaryDirectory(prefix="ares-limits-") as tmp:
        # plaintext on purpose: these attacks speak raw TCP and frames to the limits; under TLS
        # a connection reaches them only after its handshake (docs/security.md, "Limits and TLS")
        lc = LocalCluster.create(
            Path(tmp) / "c", n=n, timeout_s=3.0, server_limits=server_limits, insecure=True
        )
        try:
            yield lc
        finally:
            lc.stop()


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _open_idle(address: str, count: int) -> list[socket.socket]:
    host, port = parse_address(address)
    out = []
    for _ in range(count):
        s = socket.socket()
        s.settimeout(5)
        with contextlib.suppress(OSError):  # a refused (reset) connection is fine too
            s.connect((host, port))
        out.append(s)
    return out


async def test_idle_connections_beyond_the_descriptor_limit_do_not_stop_clients() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with _cluster(3) as lc:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))  # the servers inherit it
        try:
            lc.start()
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        if soft < 2400:
            pytest.fail(f"the test process needs 2,400 descriptors (RLIMIT_NOFILE is {soft})")
        attack: list[socket.socket] = []
        try:
            for sid in ("s1", "s2"):
                attack += _open_idle(lc.cluster.server(sid).address, 1100)
            await asyncio.sleep(1.5)  # the attackers' connections are idle now
            async with Store(lc.cluster.initial) as store:
                for i in range(20):
                    await store.write(f"k{i}", b"v%d" % i)
                assert await store.read("k19") == b"v19"
        finally:
            for s in attack:
                s.close()
        log = (lc.data_dir("s1") / "server.log").read_text()
        assert "refused a connection" in log or "connection limit" in log
        assert "out of system resource" not in log  # accept() never hit EMFILE


async def test_slowloris_frames_hold_bounded_memory() -> None:
    budget = 32 << 20
    with _cluster(1, max_partial_frame_bytes_total=budget, frame_timeout_s=3.0) as lc:
        lc.start()
        pid = lc.procs["s1"].pid
        host, port = parse_address(lc.cluster.server("s1").address)
        before = _rss_bytes(pid)
        conns = []
        for _ in range(16):
            s = socket.create_connection((host, port))
            s.sendall(struct.pack(">I", (64 << 20) - 16))  # a 64 MiB frame is coming...
            conns.append(s)
        chunk = b"\0" * (1 << 20)
        peak = before
        for _ in range(12):  # ... 12 MiB of it on each connection (192 MiB in all)
            for s in conns:
                with contextlib.suppress(OSError):
                    s.settimeout(2)
                    s.sendall(chunk)
            peak = max(peak, _rss_bytes(pid))
        await asyncio.sleep(0.3)
        peak = max(peak, _rss_bytes(pid))
        growth = peak - before
        # the budget, plus the allocator's slack and one chunk per connection in flight
        assert growth < budget + (48 << 20), f"server grew by {growth >> 20} MiB"
        async with Store(lc.cluster.initial) as store:
            await store.write("k", b"v")
            assert await store.read("k") == b"v"
        # whatever the budget left open is closed at the frame deadline
        deadline = time.monotonic() + 10
        for s in conns:
            s.settimeout(max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(ConnectionError):
                assert s.recv(1) == b""
            s.close()
        log = (lc.data_dir("s1") / "server.log").read_text()
        assert "max_partial_frame_bytes_total" in log


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
async def test_a_client_that_never_reads_cannot_grow_a_server_process(
    loop: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """40 reads of a 4 MiB value queued behind a write, never read: a server process must not
    grow by their 160 MiB of replies, on either event loop. (Before the limits the stdlib loop
    copied every reply into its write buffer -- the in-process test of this fails on the old
    code; uvloop kept references to the stored value and did not grow.)"""
    from aresdsm.tags import Tag
    from aresdsm.wire import Blob, Encoder, Envelope
    from aresdsm.wire.messages import PutData, QueryData

    monkeypatch.setenv("ARES_EVENT_LOOP", loop if loop == "asyncio" else "")
    with _cluster(1) as lc:
        lc.start()
        pid = lc.procs["s1"].pid
        async with Store(lc.cluster.initial) as store:
            await store.write("big", b"v" * (4 << 20))
        host, port = parse_address(lc.cluster.server("s1").address)
        enc = Encoder()
        put = enc.encode_bytes(
            Envelope(1, PutData(CHAIN, "c0", "default\x00w", Tag(1, "x"), Blob(b"1")))
        )
        reads = b"".join(
            enc.encode_bytes(Envelope(2 + i, QueryData(CHAIN, "c0", "default\x00big")))
            for i in range(40)
        )
        before = _rss_bytes(pid)
        sock = socket.create_connection((host, port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(put + reads)
        peak = before
        for _ in range(20):
            await asyncio.sleep(0.1)
            peak = max(peak, _rss_bytes(pid))
        sock.close()
        growth = peak - before
        assert growth < 40 << 20, f"the {loop} server grew by {growth >> 20} MiB"
        log = (lc.data_dir("s1") / "server.log").read_text()
        assert f"({loop}, max" in log  # the server really ran on that loop
