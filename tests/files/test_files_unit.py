"""The fragmented-file layer (docs/protocol.md §9.2) against an in-memory fake of the Store's
coverable calls: chunking, diffing, linking order, reclaim, conflicts, journal collection."""

from __future__ import annotations

import asyncio
import io
import random

import pytest

from aresdsm.errors import ConfigurationError, QuorumUnavailable
from aresdsm.files import ChunkParams, FileChanged, FileConflict, Files, NoSuchFile
from aresdsm.files.chunking import StreamChunker
from aresdsm.files.codec import Data, Genesis, decode

from .fake import FakeStore

SMALL = ChunkParams(min_bytes=256, avg_bytes=1024, max_bytes=4096)


def blob(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


def files(store: FakeStore, **kw) -> Files:
    return Files(store, **kw)


async def test_streaming_chunks_equal_whole_buffer_chunks() -> None:
    from pyfastcdc import FastCDC

    data = blob(200_000)
    whole = [bytes(c.data) for c in FastCDC(1024, min_size=256, max_size=4096).cut_buf(data)]
    ch = StreamChunker(SMALL)
    got: list[bytes] = []
    for i in range(0, len(data), 777):
        got += ch.feed(data[i : i + 777])
    got += ch.finish()
    assert got == whole


async def test_write_read_roundtrip_and_stat() -> None:
    s = FakeStore()
    f = files(s)
    data = blob(100_000)
    assert await f.write("a/b.bin", data, params=SMALL) == len(data)
    assert await f.read("a/b.bin") == data
    st = await f.stat("a/b.bin")
    assert st.size_bytes == len(data) and st.blocks > 10 and st.params == SMALL
    assert await f.list() == ["a/b.bin"]
    assert await f.list("a/") == ["a/b.bin"] and await f.list("x") == []


async def test_empty_file() -> None:
    s = FakeStore()
    f = files(s)
    await f.write("empty", b"")
    assert await f.read("empty") == b""
    st = await f.stat("empty")
    assert (st.size_bytes, st.blocks) == (0, 0)
    await f.write("empty", b"now something")
    assert await f.read("empty") == b"now something"
    await f.write("empty", b"")
    assert await f.read("empty") == b""
    assert s.live_blocks("empty") == []


@pytest.mark.parametrize("name", ["", "/abs", "a//b", "a/../b", ".", "x\n", "end/", "é" * 300])
async def test_invalid_names(name: str) -> None:
    f = files(FakeStore())
    with pytest.raises(ConfigurationError):
        await f.write(name, b"x")
    with pytest.raises(ConfigurationError):
        await f.read(name)


async def test_missing_file() -> None:
    f = files(FakeStore())
    with pytest.raises(NoSuchFile):
        await f.read("nope")
    with pytest.raises(FileNotFoundError):
        await f.stat("nope")
    with pytest.raises(NoSuchFile):
        await f.delete("nope")


async def test_small_edit_writes_few_blocks_and_reclaims() -> None:
    s = FakeStore()
    f = files(s)
    data = bytearray(blob(400_000))
    await f.write("big", bytes(data), params=SMALL)
    before = (await f.stat("big")).blocks
    s.writes.clear()
    data[200_000:200_010] = b"0123456789"
    await f.write("big", bytes(data))
    assert await f.read("big") == bytes(data)
    block_writes = [k for k in s.writes if k.startswith("file-block:")]
    # new block(s) + marks + the predecessor's link + tombstones; data-bearing writes <= 3 + 2
    assert len(block_writes) <= 8, block_writes
    assert len(s.live_blocks("big")) == (await f.stat("big")).blocks
    assert abs((await f.stat("big")).blocks - before) <= 2


async def test_insert_and_delete_regions_and_rechunk() -> None:
    s = FakeStore()
    f = files(s)
    data = blob(150_000)
    await f.write("x", data, params=SMALL)
    v2 = data[:10_000] + blob(20_000, 2) + data[10_000:90_000] + data[120_000:]
    await f.write("x", v2)
    assert await f.read("x") == v2
    v3 = v2[30_000:]
    await f.write("x", v3)
    assert await f.read("x") == v3
    await f.write("x", v3, params=ChunkParams(min_bytes=512, avg_bytes=2048, max_bytes=8192))
    assert await f.read("x") == v3
    assert (await f.stat("x")).params.avg_bytes == 2048
    assert len(s.live_blocks("x")) == (await f.stat("x")).blocks


async def test_delete_then_rewrite_and_list() -> None:
    s = FakeStore()
    f = files(s)
    await f.write("d", blob(30_000), params=SMALL)
    await f.write("e", b"e")
    await f.delete("d")
    assert s.live_blocks("d") == []
    assert await f.list() == ["e"]
    with pytest.raises(NoSuchFile):
        await f.read("d")
    await f.write("d", b"again")
    assert await f.read("d") == b"again"


async def test_stream_sources_and_sinks() -> None:
    s = FakeStore()
    f = files(s)
    data = blob(50_000)

    async def gen():
        for i in range(0, len(data), 3000):
            yield data[i : i + 3000]

    await f.write("g", gen(), params=SMALL)
    out = io.BytesIO()
    assert await f.read_into("g", out) == len(data)
    assert out.getvalue() == data
    await f.write("h", io.BytesIO(data), params=SMALL)
    pieces = []
    async with f.open("h") as r:
        async for p in r:
            pieces.append(p)
    assert b"".join(pieces) == data
    async with f.open("w", "wb") as w:
        for i in range(0, len(data), 5000):
            await w.write(data[i : i + 5000])
    assert await f.read("w") == data


async def test_bounded_inflight_blocks() -> None:
    s = FakeStore()
    inflight = 0
    peak = 0

    async def hook(key: str) -> None:
        nonlocal inflight, peak
        if key.startswith("file-block:"):
            inflight += 1
            peak = max(peak, inflight)
            await asyncio.sleep(0.001)
            inflight -= 1

    s.before_write = hook
    f = files(s, max_inflight_blocks=3)
    await f.write("p", blob(300_000), params=SMALL)
    assert 1 < peak <= 3


async def test_new_blocks_written_before_the_pointer_that_links_them() -> None:
    """At every point of a write, every pointer reachable from genesis names a written block
    (checked after every single register write)."""
    s = FakeStore()
    f = files(s)
    await f.write("r", blob(60_000), params=SMALL)

    def check() -> None:
        g = s.regs[("default", "file:r")][1]
        nxt = decode(g).next
        while nxt is not None:
            k = ("default", f"file-block:r:{nxt}")
            assert k in s.regs, f"dangling pointer to {nxt}"
            v = decode(s.regs[k][1])
            assert isinstance(v, Data), f"reachable {type(v).__name__} {nxt}"
            nxt = v.next

    async def hook(key: str) -> None:
        check()

    s.before_write = hook
    data = bytearray(blob(60_000))
    data[5000:5000] = blob(9000, 5)
    del data[40_000:50_000]
    await f.write("r", bytes(data))
    check()
    assert await f.read("r") == bytes(data)


async def test_disjoint_concurrent_writers_both_succeed() -> None:
    s = FakeStore()
    f1, f2 = files(s), files(s)
    base = blob(200_000)
    await f1.write("c", base, params=SMALL)
    a = bytearray(base)
    a[10_000:10_004] = b"AAAA"
    b = bytearray(base)
    b[180_000:180_004] = b"BBBB"
    await asyncio.gather(f1.write("c", bytes(a)), f2.write("c", bytes(b)))
    both = bytearray(base)
    both[10_000:10_004] = b"AAAA"
    both[180_000:180_004] = b"BBBB"
    assert await f1.read("c") == bytes(both)


async def test_same_block_writers_one_wins_per_round_other_retries_or_conflicts() -> None:
    s = FakeStore()
    base = blob(50_000)
    await files(s).write("same", base, params=SMALL)
    outs = []
    for who in range(4):
        v = bytearray(base)
        v[20_000:20_004] = f"W{who:03}".encode()[:4]
        outs.append(bytes(v))
    fs = [files(s, max_retries=0) for _ in outs]
    res = await asyncio.gather(
        *(f.write("same", v) for f, v in zip(fs, outs, strict=True)), return_exceptions=True
    )
    winners = [i for i, r in enumerate(res) if not isinstance(r, BaseException)]
    assert winners, res
    assert all(isinstance(r, FileConflict) for r in res if isinstance(r, BaseException))
    got = await files(s).read("same")
    assert got in outs
    # with retries every writer gets through, one after the other
    fs = [files(s, max_retries=20) for _ in outs]
    await asyncio.gather(*(f.write("same", v) for f, v in zip(fs, outs, strict=True)))
    assert await files(s).read("same") in outs
    assert len(s.live_blocks("same")) == (await files(s).stat("same")).blocks


async def test_reader_meeting_a_reclaimed_block_restarts() -> None:
    s = FakeStore()
    f = files(s)
    v1 = blob(40_000)
    await f.write("rr", v1, params=SMALL)
    v2 = blob(40_000, 9)
    reads = 0
    orig = s.read_tagged

    async def slow_read(key: str, **kw):
        nonlocal reads
        r = await orig(key, **kw)
        if key.startswith("file-block:rr:"):
            reads += 1
            if reads == 2:  # after the reader's first block, a writer replaces everything
                s.read_tagged = orig
                await files(s).write("rr", v2)
                s.read_tagged = slow_read
        return r

    s.read_tagged = slow_read
    got = await f.read("rr")
    assert got == v2
    # a sink that cannot seek cannot restart: a clear error, never a torn file
    s.read_tagged = orig
    await files(s).write("rr", v1)
    reads = 0
    s.read_tagged = slow_read

    class Pipe:
        def __init__(self) -> None:
            self.buf = b""

        def write(self, b: bytes) -> int:
            self.buf += b
            return len(b)

    with pytest.raises(FileChanged):
        await f.read_into("rr", Pipe())


async def test_lost_block_is_a_clear_error_not_a_torn_read() -> None:
    s = FakeStore()
    f = files(s)
    await f.write("lost", blob(30_000), params=SMALL)
    g = decode(s.regs[("default", "file:lost")][1])
    assert isinstance(g, Genesis) and g.next
    second = decode(s.regs[("default", f"file-block:lost:{g.next}")][1]).next
    s.lost.add(f"file-block:lost:{second}")
    with pytest.raises(QuorumUnavailable):
        await f.read("lost")


async def test_writer_killed_between_blocks_and_link_orphans_collected() -> None:
    s = FakeStore()
    f = files(s)
    base = blob(60_000)
    await f.write("k", base, params=SMALL)
    live = set(s.live_blocks("k"))

    async def die(key: str) -> None:
        if key == "file:k" or key in live:
            raise asyncio.CancelledError  # killed before linking (or marking)

    s.before_write = die
    v2 = bytearray(base)
    v2[30_000:30_000] = blob(20_000, 3)
    with pytest.raises(asyncio.CancelledError):
        await files(s).write("k", bytes(v2))
    s.before_write = None
    orphans = set(s.live_blocks("k")) - live
    assert orphans  # blocks written, never linked
    assert await f.read("k") == base  # no reader sees them, or a dangling pointer
    assert await f.collect("k", grace_s=0) == len(orphans)
    assert set(s.live_blocks("k")) == live
    assert await f.read("k") == base
    await f.write("k", bytes(v2))
    assert await f.read("k") == bytes(v2)


async def test_collector_fences_a_slow_writer() -> None:
    """A writer presumed dead but only slow: after the collector ran it can never link."""
    s = FakeStore()
    f = files(s)
    base = blob(60_000)
    await f.write("slow", base, params=SMALL)
    gate = asyncio.Event()
    collected = asyncio.Event()

    async def hold(key: str) -> None:
        if key == "file-journal:slow" and not gate.is_set() and s.writes.count(key) >= 1:
            gate.set()
            await collected.wait()

    v2 = bytearray(base)
    v2[100:100] = blob(9000, 4)
    slow = files(s, max_retries=0)
    s.writes.clear()
    s.before_write = hold
    task = asyncio.ensure_future(slow.write("slow", bytes(v2)))
    await gate.wait()
    s.before_write = None
    await f.collect("slow", grace_s=0)
    collected.set()
    with pytest.raises(FileConflict):
        await task
    assert await f.read("slow") == base
    assert len(s.live_blocks("slow")) == (await f.stat("slow")).blocks


async def test_ambiguous_block_write_settled_by_reading() -> None:
    s = FakeStore()
    f = files(s)
    await f.write("amb", b"hello", params=SMALL)
    s.ambiguous_once.add("file:amb")
    await f.write("amb", b"hello world, longer")
    assert await f.read("amb") == b"hello world, longer"


async def _adjacent_drops(skip_mark: bool) -> bytes | Exception:
    """Writer A drops a region (content-defined chunking rewrites its neighbours: A replaces
    blocks 1..4 and links from block 0 to block 5), writer B drops the region after it (its
    link rewrites a block A drops, and it reclaims block 5). B runs entirely between A's marks
    and A's link."""
    s = FakeStore()
    seed = Files(s)
    base = blob(80_000)
    await seed.write("m", base, params=SMALL)
    n = (await seed._snapshot("m", "default")).nodes
    cut = lambda i: sum(x.size for x in n[:i])  # noqa: E731
    a = base[: cut(2)] + base[cut(3) :]
    b = base[: cut(5)] + base[cut(6) :]
    fa, fb = Files(s, max_retries=3), Files(s, max_retries=3)
    fa.broken_skip_mark = fb.broken_skip_mark = skip_mark
    gate = asyncio.Event()
    done_b = asyncio.Event()

    async def hook(key: str) -> None:
        if key == f"file-block:m:{n[0].id}" and not gate.is_set():
            gate.set()
            await done_b.wait()

    s.before_write = hook
    ta = asyncio.ensure_future(fa.write("m", a))
    await gate.wait()
    await fb.write("m", b)
    done_b.set()
    await ta
    s.before_write = None
    try:
        return await Files(s, max_read_restarts=2).read("m")
    except FileChanged as e:
        return e


async def test_marking_keeps_reclaimed_blocks_unreachable() -> None:
    got = await _adjacent_drops(skip_mark=False)
    assert isinstance(got, bytes)


async def test_broken_skip_mark_links_a_reclaimed_block() -> None:
    got = await _adjacent_drops(skip_mark=True)
    assert isinstance(got, FileChanged)


async def test_link_without_an_answer_raises_and_leaves_orphans_to_the_collector() -> None:
    s = FakeStore()
    f = files(s)
    await f.write("nolink", b"small", params=SMALL)
    live = set(s.live_blocks("nolink"))

    async def lose_genesis(key: str) -> None:
        if key == "file:nolink":
            s.lost.add(key)  # its servers crash just as the link is written

    s.before_write = lose_genesis
    with pytest.raises(QuorumUnavailable):
        await f.write("nolink", blob(20_000))
    s.before_write = None
    s.lost.clear()
    assert await f.read("nolink") == b"small"
    orphans = set(s.live_blocks("nolink")) - live
    assert orphans
    assert await f.collect("nolink", grace_s=0) == len(orphans)
    assert set(s.live_blocks("nolink")) == live
