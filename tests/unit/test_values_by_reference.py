"""Values by reference (issue 12 item 3): the core answers references, the server shell reads
them from storage -- from the pending batch while the value waits for its commit -- before it
encodes the reply, and still sends the reply only once everything before it is durable; a
crash between the write and its commit sends nothing and loses nothing acknowledged."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from aresdsm import integrity
from aresdsm.config import Configuration, ServerInfo
from aresdsm.protocol import abd, treas
from aresdsm.protocol.server_core import ServerCore
from aresdsm.server import Server
from aresdsm.storage.base import ValueRef, Write
from aresdsm.storage.memory import MemoryStorage
from aresdsm.storage.sqlite import SqliteStorage
from aresdsm.storage.values import refs_in
from aresdsm.tags import Tag
from aresdsm.wire.blob import Blob
from aresdsm.wire.messages import (
    Ack,
    DataReply,
    Envelope,
    GetGroup,
    GroupReply,
    ListReply,
    QueryData,
    QueryList,
)

C0 = Configuration("c0", (ServerInfo("s1", "127.0.0.1:1"),))
T0 = Configuration(
    "t0", tuple(ServerInfo(f"s{i}", f"127.0.0.1:{i}") for i in (1, 2, 3)), "treas", 2, 1
)


class _HeldStorage(MemoryStorage):
    """Commits wait for ``release`` (a slow disk); ``crash`` makes the waiting commit fail."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.crash = False

    async def _run_commit(self, batch: list[Write]) -> None:
        await self.release.wait()
        if self.crash:
            raise OSError("the machine lost power")
        await super()._run_commit(batch)


class _Conn:
    """The part of server._Conn that Server.handle uses; records what is sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, Any]] = []
        self.pending = 0
        self.reply_bytes = 0
        self.paused = False
        self.transport = None
        self.level = 3
        self.identity = None
        self.peer = "test"

    def send(self, rid: int, reply: Any) -> None:
        self.sent.append((rid, reply))

    def encode(self, rid: int, reply: Any) -> list[Any]:
        return [(rid, reply)]

    def write(self, bufs: list[Any], size: int | None = None) -> None:
        self.sent.extend(bufs)

    def request_done(self, reply_bytes: int = 0) -> None:
        self.pending -= 1
        self.reply_bytes -= reply_bytes

    def release(self, bufs: list[Any], size: int) -> None:
        self.write(bufs, size)
        self.request_done(size)


def test_core_state_and_replies_hold_references_not_bytes() -> None:
    core = ServerCore("s1")
    core.install_config(C0)
    _, writes = core.handle(abd.put_request("g", "c0", "k", Tag(1, "w"), Blob(b"x" * 1000)))
    assert [type(w.data).__name__ for w in writes] == ["bytes"]  # the value goes to storage
    assert core.registers[("g", "c0", "k")].value == ValueRef(("abd", "g", "c0", "k"), 1000)
    assert core.value_bytes_in_memory() == 0
    ref = core.registers[("g", "c0", "k")].value
    assert ref != Blob(b"x" * 1000) and Blob(b"x" * 1000) != ref  # never read to compare
    reply, _ = core.handle(QueryData("g", "c0", "k"))
    assert [r.record for r in refs_in(reply)] == [("abd", "g", "c0", "k")]
    reply, _ = core.handle(GetGroup("g", "c0", "", 10))
    assert isinstance(reply, GroupReply) and isinstance(reply.objects[0].value, ValueRef)
    # TREAS: the δ+1 newest elements are references to their records, older ones ⊥
    t = ServerCore("s1")
    t.install_config(T0)
    for z in (1, 2, 3):
        element = treas.coder(T0).encode(f"v{z}".encode())[0]
        t.handle(treas.put_request("g", "t0", "k", Tag(z, "w"), element, integrity.digest(b"")))
    reply, _ = t.handle(QueryList("g", "t0", "k"))
    assert isinstance(reply, ListReply)
    assert [type(e.element).__name__ for e in reply.entries] == [
        "NoneType",
        "NoneType",
        "ValueRef",
        "ValueRef",
    ]
    assert t.value_bytes_in_memory() == 0


def test_the_shell_reads_a_pending_value_and_replies_only_when_it_is_durable() -> None:
    async def main() -> None:
        storage = _HeldStorage()
        storage.release.set()
        server = Server(server_id="s1", host="127.0.0.1", port=0, storage=storage)
        await server.bootstrap(C0)
        storage.release.clear()
        conn = _Conn()
        value = b"v" * 100_000
        server.handle(conn, Envelope(1, abd.put_request("g", "c0", "k", Tag(1, "w"), Blob(value))))
        server.handle(conn, Envelope(2, QueryData("g", "c0", "k")))
        await asyncio.sleep(0.02)
        assert conn.sent == []  # persist before reply: nothing is durable yet
        assert storage.values_read == 0  # the value came from the pending batch
        storage.release.set()
        await storage.drain()
        (rid1, ack), (rid2, data) = conn.sent
        assert (rid1, rid2) == (1, 2) and isinstance(ack, Ack)
        assert isinstance(data, DataReply) and bytes(data.value.data) == value
        # once durable, the value is read from the engine
        server.handle(conn, Envelope(3, QueryData("g", "c0", "k")))
        assert storage.values_read == 1 and bytes(conn.sent[-1][1].value.data) == value

    asyncio.run(main())


def test_a_crash_between_write_and_commit_sends_nothing_and_keeps_what_was_durable() -> None:
    """The commit holding a new value fails (the machine loses power): neither the write nor a
    read that saw it is answered, and a restart from disk serves the durable value."""

    async def main() -> list[tuple[int, Any]]:
        storage = _HeldStorage()
        storage.release.set()
        server = Server(server_id="s1", host="127.0.0.1", port=0, storage=storage)
        await server.bootstrap(C0)
        conn = _Conn()
        server.handle(conn, Envelope(1, abd.put_request("g", "c0", "k", Tag(1, "w"), Blob(b"old"))))
        await storage.drain()
        storage.release.clear()
        server.handle(conn, Envelope(2, abd.put_request("g", "c0", "k", Tag(2, "w"), Blob(b"new"))))
        server.handle(conn, Envelope(3, QueryData("g", "c0", "k")))
        storage.crash = True
        storage.release.set()
        await asyncio.sleep(0.05)
        again = Server(server_id="s1", host="127.0.0.1", port=0, storage=_reopened(storage))
        conn2 = _Conn()
        again.handle(conn2, Envelope(4, QueryData("g", "c0", "k")))
        return conn.sent + conn2.sent

    sent = asyncio.run(main())
    assert [rid for rid, _ in sent] == [1, 4]  # 2 and 3 depended on the lost commit
    (_, data) = sent[-1]
    assert isinstance(data, DataReply) and (data.tag, bytes(data.value.data)) == (
        Tag(1, "w"),
        b"old",
    )


def _reopened(crashed: MemoryStorage) -> MemoryStorage:
    """What a restart finds: the durable records only."""
    st = MemoryStorage()
    st.records = dict(crashed.records)
    return st


def test_sqlite_restart_serves_values_read_from_disk(tmp_path: Path) -> None:
    async def main() -> None:
        path = tmp_path / "s1" / "state.sqlite3"
        storage = SqliteStorage(path)
        server = Server(server_id="s1", host="127.0.0.1", port=0, storage=storage)
        await server.bootstrap(C0)
        conn = _Conn()
        values = {f"k{i}": bytes([i]) * (10 + 30_000 * i) for i in range(5)}  # inline and files
        for i, (k, v) in enumerate(values.items()):
            server.handle(conn, Envelope(i, abd.put_request("g", "c0", k, Tag(1, "w"), Blob(v))))
        await storage.drain()
        storage.close()
        again_storage = SqliteStorage(path)
        again = Server(server_id="s1", host="127.0.0.1", port=0, storage=again_storage)
        assert again.core.value_bytes_in_memory() == 0
        conn2 = _Conn()
        for k in values:
            again.handle(conn2, Envelope(0, QueryData("g", "c0", k)))
            # values in files are read off the event loop: their replies follow
            await asyncio.gather(*again._reading)
        assert [bytes(r.value.data) for _, r in conn2.sent] == list(values.values())
        assert again_storage.values_read == 5
        again_storage.close()

    asyncio.run(main())
