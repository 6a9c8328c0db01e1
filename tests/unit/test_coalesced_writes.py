"""Coalesced writes (issue 18, docs/design.md "Coalesced writes"): every message queued for one
connection in one event-loop iteration leaves in one ``writelines`` -- on the client (a round asks
every server at once; many operations run at once) and on the server (one received chunk holds
many requests; one group commit releases many replies) -- and a lone message is sent in the same
loop iteration it was queued in (no added latency).

Found by issue 18: plaintext connections wrote every message with a send system call of its
own (TLS already coalesced), which made plaintext slower than TLS. These tests count calls on a
fake transport, so they do not depend on timing.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aresdsm.config import ClientOptions, Configuration, ServerInfo
from aresdsm.integrity import digest
from aresdsm.net.client import PeerConnection
from aresdsm.server import Server, _Conn
from aresdsm.storage.memory import MemoryStorage
from aresdsm.tags import Tag
from aresdsm.wire import Decoder, Encoder, Envelope
from aresdsm.wire.blob import Blob
from aresdsm.wire.codec import FrameBuffer
from aresdsm.wire.messages import Ack, Ping, PutData, QueryTag, TagReply


class CountingTransport:
    """Counts the calls that would be send system calls; keeps what was written."""

    def __init__(self) -> None:
        self.sends: list[bytes] = []
        self.closed = False

    def writelines(self, bufs: list[Any]) -> None:
        self.sends.append(b"".join(bytes(b) for b in bufs))

    def write(self, data: bytes) -> None:
        self.sends.append(bytes(data))

    def frames(self) -> list[Envelope]:
        """Every message written, decoded."""
        fb = FrameBuffer(max_frame_bytes=1 << 20)
        return [Decoder().decode_body(b) for b in fb.feed(b"".join(self.sends))]

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else None

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


C0 = Configuration("c0", (ServerInfo("s1", "127.0.0.1:1"),))


def _server_conn() -> tuple[Server, _Conn, CountingTransport]:
    server = Server(server_id="s1", host="127.0.0.1", port=0, storage=MemoryStorage())
    server.core.install_config(C0)
    conn = _Conn(server)
    t = CountingTransport()
    conn.connection_made(t)  # type: ignore[arg-type]
    return server, conn, t


def _chunk(messages: list[Any]) -> bytes:
    enc = Encoder()
    return b"".join(enc.encode_bytes(Envelope(i + 1, m)) for i, m in enumerate(messages))


async def test_server_answers_one_chunk_of_requests_in_one_write() -> None:
    _, conn, t = _server_conn()
    conn.data_received(_chunk([QueryTag("g", "c0", f"k{i}") for i in range(20)]))
    assert t.sends == []  # queued, sent once the callbacks of this iteration ran
    await asyncio.sleep(0)
    assert len(t.sends) == 1
    replies = t.frames()
    assert [e.rid for e in replies] == list(range(1, 21))
    assert all(isinstance(e.body, TagReply) for e in replies)


async def test_server_sends_the_replies_one_commit_released_in_one_write() -> None:
    server, conn, t = _server_conn()
    puts = [
        PutData("g", "c0", f"k{i}", Tag(1, "w"), Blob(b"v%d" % i), digest(b"v%d" % i))
        for i in range(20)
    ]
    conn.data_received(_chunk(puts))
    assert conn.pending == 20 and t.sends == []  # persist before reply: all wait for the commit
    for _ in range(5):  # the commit (a task), its done-callback, the flush
        await asyncio.sleep(0)
    assert server.storage.commits == 1
    assert len(t.sends) == 1
    assert [e.body for e in t.frames()] == [Ack()] * 20
    assert conn.pending == 0 and conn.reply_bytes == 0 and conn.out_bytes == 0


async def test_server_sends_a_lone_reply_in_the_same_iteration() -> None:
    _, conn, t = _server_conn()
    conn.data_received(_chunk([Ping()]))
    await asyncio.sleep(0)  # one iteration: no timer, no poll in between
    assert len(t.sends) == 1


def _peer() -> tuple[PeerConnection, CountingTransport]:
    p = PeerConnection(
        ServerInfo("s1", "127.0.0.1:1"),
        options=ClientOptions(),
        encoder=Encoder(),
        decoder=Decoder(),
    )
    t = CountingTransport()
    p.connection_made(t)  # type: ignore[arg-type]
    return p, t


async def test_client_sends_the_requests_of_one_iteration_in_one_write() -> None:
    p, t = _peer()
    answers: list[Any] = []
    for rid in range(1, 33):
        p.send(rid, QueryTag("g", "c0", f"k{rid}"), answers.append)
    assert t.sends == []
    await asyncio.sleep(0)
    assert len(t.sends) == 1
    assert [e.rid for e in t.frames()] == list(range(1, 33))
    assert p.in_flight == 32
    # and the replies still reach their callbacks
    p.data_received(_chunk([TagReply(Tag(0, ""))] * 32))
    assert len(answers) == 32 and p.in_flight == 0


async def test_client_sends_a_lone_request_in_the_same_iteration() -> None:
    p, t = _peer()
    p.send(1, Ping(), lambda r: None)
    await asyncio.sleep(0)
    assert len(t.sends) == 1
    p.send(2, Ping(), lambda r: None)  # the next iteration's request: a write of its own
    await asyncio.sleep(0)
    assert len(t.sends) == 2


async def test_client_drops_unsent_requests_when_the_connection_is_lost() -> None:
    p, t = _peer()
    errors: list[Any] = []
    p.send(1, Ping(), errors.append)
    p.connection_lost(None)  # before the flush: nothing is written to a dead transport
    await asyncio.sleep(0)
    assert t.sends == [] and len(errors) == 1 and isinstance(errors[0], ConnectionError)
