"""Values in files are read off the event loop, as of the moment the core answered (issue 12,
server side; docs/design.md "Values on disk").

A real in-process server over TCP and SQLite, with gates on the storage engine instead of
timing: a value file's read blocks until the test opens its gate, a commit until the test
opens another. Shown here: a small request is answered while a large value is being read; a
reply carries the value of its own tag even when a write of the same object is handled before
the reply leaves (the test-only ``broken_late_value_read``, which reads the value when the reply
is sent, is caught by the same check); a pinned value file outlives the commit that replaced it
and is removed at its last unpin.
"""

from __future__ import annotations

import asyncio
import struct
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from aresdsm.config import Configuration, ServerInfo
from aresdsm.integrity import matches
from aresdsm.protocol import abd
from aresdsm.server import Server
from aresdsm.storage.base import PinnedValue, RecordKey, Write
from aresdsm.storage.sqlite import SqliteStorage
from aresdsm.tags import Tag
from aresdsm.testing import NO_FAULTS, Broken
from aresdsm.wire import Blob, Decoder, Encoder, Envelope
from aresdsm.wire.messages import DataReply, QueryData, Request

GATE_TIMEOUT_S = 30.0
"""A gate left closed by a failing test opens by itself after this (no test hangs)."""
REPLY_TIMEOUT_S = 30.0
BIG = 1 << 20


class _GatedPin(PinnedValue):
    def __init__(self, inner: PinnedValue, storage: GatedStorage) -> None:
        super().__init__(inner.length)
        self.inner = inner
        self.storage = storage

    def read(self) -> bytes | memoryview:
        self.storage.reads_started.set()
        self.storage.read_gate.wait(GATE_TIMEOUT_S)
        try:
            return self.inner.read()
        finally:
            self.storage.reads_done += 1

    def release(self) -> None:
        self.inner.release()


class GatedStorage(SqliteStorage):
    """SQLite whose value-file reads wait for ``read_gate`` and whose commits wait for
    ``commit_gate`` (both open unless a test closes them)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.read_gate = threading.Event()
        self.read_gate.set()
        self.reads_started = threading.Event()
        self.reads_done = 0
        self.commit_gate = threading.Event()
        self.commit_gate.set()

    def _open_value(self, record: RecordKey) -> bytes | memoryview | PinnedValue:
        got = super()._open_value(record)
        return _GatedPin(got, self) if isinstance(got, PinnedValue) else got

    def _commit(self, batch: list[Write]) -> None:
        self.commit_gate.wait(GATE_TIMEOUT_S)
        super()._commit(batch)


class _Link:
    """One client connection: requests by id, replies matched by id (in any order)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.encoder, self.decoder = Encoder(), Decoder()
        self.replies: dict[int, asyncio.Future[object]] = {}
        self.order: list[int] = []
        self.task = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        while True:
            (n,) = struct.unpack(">I", await self.reader.readexactly(4))
            env = self.decoder.decode_body(await self.reader.readexactly(n))
            self.order.append(env.rid)
            self.replies[env.rid].set_result(env.body)

    def send(self, rid: int, req: Request) -> asyncio.Future[object]:
        fut: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self.replies[rid] = fut
        self.writer.write(self.encoder.encode_bytes(Envelope(rid, req)))
        return fut

    async def ask(self, rid: int, req: Request) -> object:
        return await asyncio.wait_for(self.send(rid, req), REPLY_TIMEOUT_S)

    async def close(self) -> None:
        self.task.cancel()
        self.writer.close()
        await asyncio.gather(self.task, return_exceptions=True)


async def _server(tmp_path: Path, faults: Broken = NO_FAULTS) -> tuple[Server, GatedStorage]:
    storage = GatedStorage(tmp_path / "s1" / "state.sqlite3")
    server = Server(server_id="s1", host="127.0.0.1", port=0, storage=storage, faults=faults)
    await server.start()
    await server.bootstrap(Configuration("c0", (ServerInfo("s1", f"127.0.0.1:{server.port}"),)))
    return server, storage


@pytest.fixture
async def link_to(tmp_path: Path) -> AsyncIterator[list[tuple[Server, _Link]]]:
    made: list[tuple[Server, _Link]] = []
    yield made
    for server, link in made:
        await link.close()
        await server.stop()


async def _connect(server: Server) -> _Link:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    return _Link(reader, writer)


def _put(key: str, tag: Tag, value: bytes) -> Request:
    return abd.put_request("g", "c0", key, tag, Blob(value))


def _value(seed: int) -> bytes:
    return bytes([seed]) * BIG


async def test_small_request_is_answered_while_a_large_value_is_read(
    tmp_path: Path, link_to: list[tuple[Server, _Link]]
) -> None:
    """A 1 MiB value's read waits for a gate; a small read on the same connection, sent after
    it, is answered meanwhile (on the event loop the read would stall every request)."""
    server, storage = await _server(tmp_path)
    link = await _connect(server)
    link_to.append((server, link))
    await link.ask(1, _put("big", Tag(1, "w"), _value(7)))
    await link.ask(2, _put("small", Tag(1, "w"), b"tiny"))
    storage.read_gate.clear()
    big = link.send(3, QueryData("g", "c0", "big"))
    small = await link.ask(4, QueryData("g", "c0", "small"))
    assert isinstance(small, DataReply) and bytes(small.value.data) == b"tiny"
    assert storage.reads_done == 0, "the large value was read before the small request"
    assert await asyncio.to_thread(storage.reads_started.wait, REPLY_TIMEOUT_S)
    storage.read_gate.set()
    got = await asyncio.wait_for(big, REPLY_TIMEOUT_S)
    assert isinstance(got, DataReply) and got.tag == Tag(1, "w")
    assert bytes(got.value.data) == _value(7) and matches(got.value.data, got.digest)
    assert link.order[-2:] == [4, 3]


@pytest.mark.parametrize("broken", [False, True], ids=["correct", "broken_late_value_read"])
async def test_reply_carries_the_value_of_its_tag(
    tmp_path: Path, link_to: list[tuple[Server, _Link]], broken: bool
) -> None:
    """A read's reply waits for a commit; meanwhile a write of the same object (same length,
    newer tag) is handled. The reply must still pair the tag it answered with that tag's
    value: reading the value when the reply leaves gives the new value under the old tag."""
    faults = Broken(broken_late_value_read=True) if broken else NO_FAULTS
    server, storage = await _server(tmp_path, faults)
    link = await _connect(server)
    link_to.append((server, link))
    await link.ask(1, _put("obj", Tag(1, "w"), _value(1)))
    storage.commit_gate.clear()
    other = link.send(2, _put("other", Tag(1, "w"), b"x"))  # a commit that waits for the gate
    read = link.send(3, QueryData("g", "c0", "obj"))  # answered (t1, v1); waits for that commit
    newer = link.send(4, _put("obj", Tag(2, "w"), _value(2)))
    await asyncio.sleep(0)
    while server.core.registers[("g", "c0", "obj")].tag != Tag(2, "w"):  # noqa: ASYNC110
        await asyncio.sleep(0.005)
    storage.commit_gate.set()
    for fut in (other, newer):
        await asyncio.wait_for(fut, REPLY_TIMEOUT_S)
    got = await asyncio.wait_for(read, REPLY_TIMEOUT_S)
    assert isinstance(got, DataReply) and got.tag == Tag(1, "w")
    consistent = bytes(got.value.data) == _value(1) and matches(got.value.data, got.digest)
    assert consistent is not broken, "the check must pass the correct shell, catch the broken one"


async def test_pinned_value_file_outlives_its_replacement(
    tmp_path: Path, link_to: list[tuple[Server, _Link]]
) -> None:
    """A read pins the value file it answered with; the write that replaces the value commits
    (and would remove the file) while the read waits; the read still returns the old value, and
    the old file is removed once unpinned."""
    server, storage = await _server(tmp_path)
    link = await _connect(server)
    link_to.append((server, link))
    await link.ask(1, _put("obj", Tag(1, "w"), _value(1)))
    files_before = set(storage.blob_dir.iterdir())
    assert len(files_before) == 1
    storage.read_gate.clear()
    read = link.send(2, QueryData("g", "c0", "obj"))
    assert await asyncio.to_thread(storage.reads_started.wait, REPLY_TIMEOUT_S)
    await link.ask(3, _put("obj", Tag(2, "w"), _value(2)))  # committed: its row is replaced
    assert files_before <= set(storage.blob_dir.iterdir()), "a pinned value file was removed"
    storage.read_gate.set()
    got = await asyncio.wait_for(read, REPLY_TIMEOUT_S)
    assert isinstance(got, DataReply) and got.tag == Tag(1, "w")
    assert bytes(got.value.data) == _value(1)
    await asyncio.sleep(0)
    assert not (files_before & set(storage.blob_dir.iterdir())), "the unpinned file was kept"
    assert len(list(storage.blob_dir.iterdir())) == 1
    assert not storage._pins
