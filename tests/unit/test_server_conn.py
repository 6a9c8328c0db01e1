"""server.py's per-connection flow control and its fail-stop on bugs: the two reasons to stop
reading a connection (max_in_flight requests waiting for a commit; replies the client does not
read) never undo each other; an exception escaping the core stops the server without a reply; a
server that cannot listen says so in one line.

Found in review (review 3): there was no write-side flow control, an exception from the core
escaped data_received (asyncio dropped the connection, nothing stopped), and a busy port gave a
traceback.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from aresdsm.config import Configuration, ServerInfo
from aresdsm.errors import ConfigurationError
from aresdsm.server import Server, _Conn
from aresdsm.storage.memory import MemoryStorage
from aresdsm.wire import Encoder, Envelope
from aresdsm.wire.messages import QueryTag


class _Transport:
    """Records pause/resume of reading and what is written."""

    def __init__(self) -> None:
        self.reading = True
        self.calls: list[str] = []
        self.written: list[bytes] = []
        self.closed = False

    def pause_reading(self) -> None:
        self.calls.append("pause")
        self.reading = False

    def resume_reading(self) -> None:
        self.calls.append("resume")
        self.reading = True

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def writelines(self, bufs: list[Any]) -> None:
        self.written.append(b"".join(bytes(b) for b in bufs))

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else None

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


def _conn(max_in_flight: int) -> tuple[Server, _Conn, _Transport]:
    server = Server(
        server_id="s1",
        host="127.0.0.1",
        port=0,
        storage=MemoryStorage(),
        max_in_flight=max_in_flight,
    )
    conn = _Conn(server)
    transport = _Transport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    return server, conn, transport


def test_resume_of_one_limit_does_not_undo_the_other() -> None:
    _, conn, t = _conn(max_in_flight=2)
    conn.pending = 2
    conn.update_reading()  # the in-flight limit is reached
    assert not t.reading
    conn.pause_writing()
    conn.request_done()  # the in-flight limit is no longer reached ...
    assert not t.reading  # ... but the client still does not read its replies
    conn.pending = 2
    conn.update_reading()
    conn.resume_writing()  # the replies drained, but two commits are still pending
    assert not t.reading
    conn.request_done()
    assert t.reading
    assert t.calls == ["pause", "resume"]  # one pause, one resume: no flapping


async def test_frames_received_while_paused_wait_and_are_handled_on_resume() -> None:
    server, conn, t = _conn(max_in_flight=100)
    frame = Encoder().encode_bytes(Envelope(1, QueryTag("g", "c0", "k")))
    conn.pause_writing()
    conn.data_received(frame * 3)  # one chunk can hold many requests; none is handled now
    await asyncio.sleep(0)
    assert len(conn.backlog) == 3 and t.written == []
    conn.resume_writing()
    assert not conn.backlog
    await asyncio.sleep(0)
    # answered (unknown-config), in order, in one write: the replies of one loop iteration
    assert len(t.written) == 1
    assert t.written[0] == b"".join(
        Encoder().encode_bytes(Envelope(1, r))
        for r in [server.core.handle(QueryTag("g", "c0", "k"))[0]] * 3
    )
    assert server.core.counters.get("bad-frames", 0) == 0


async def test_exception_from_the_core_stops_the_server_without_a_reply() -> None:
    server = Server(server_id="s1", host="127.0.0.1", port=0, storage=MemoryStorage())
    await server.start()
    c0 = Configuration("c0", (ServerInfo("s1", f"127.0.0.1:{server.port}"),))
    await server.bootstrap(c0)
    bug = RuntimeError("a bug in the core")

    def broken(body: Any) -> Any:
        raise bug

    server.core.handle = broken  # type: ignore[method-assign]
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(Encoder().encode_bytes(Envelope(1, QueryTag("default", "c0", "k"))))
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, nothing answered
    writer.close()
    await asyncio.wait_for(server.wait_closed(), 5)
    assert server.fatal is bug


async def test_a_busy_port_is_a_one_line_configuration_error() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        server = Server(server_id="s1", host="127.0.0.1", port=port, storage=MemoryStorage())
        with pytest.raises(ConfigurationError, match=rf"cannot listen on 127\.0\.0\.1:{port}: "):
            await server.start()
