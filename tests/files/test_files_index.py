"""The index of a file's blocks (docs/protocol.md §9.2): an update diffs against it without
reading the blocks it keeps, readers fetch ahead along it, and it is invalidated whenever a
writer may have changed the list without recording it (else a later writer would diff against
a list that misses a change: ``broken_stale_index``)."""

from __future__ import annotations

import asyncio
import random

import pytest

from aresdsm.files import ChunkParams, Files
from aresdsm.files.codec import Entry, Index, decode, encode
from aresdsm.tags import TAG0

from .fake import FakeStore

SMALL = ChunkParams(min_bytes=256, avg_bytes=1024, max_bytes=4096)
MEDIUM = ChunkParams(min_bytes=4096, avg_bytes=16384, max_bytes=65536)


def blob(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


def block_reads(s: FakeStore) -> list[str]:
    return [k for k in s.reads if k.startswith("file-block:")]


async def test_small_edit_reads_no_kept_block_and_writes_at_most_three_data_blocks() -> None:
    """A 1 KiB change in the middle of a file of ~200 blocks of 16 KiB: the update reads only
    the blocks it rewrites (the dropped block it marks, the predecessor it relinks), and writes
    at most three blocks with data (the new block, the mark, the relink); the walk it replaces
    read every block."""
    s = FakeStore()
    f = Files(s)
    data = bytearray(blob(3_200_000))
    await f.write("big", bytes(data), params=MEDIUM)
    blocks = (await f.stat("big")).blocks
    assert blocks > 100
    data[1_600_000:1_601_024] = b"E" * 1024
    s.reads.clear()
    before = (f.data_blocks_written, f.new_blocks_written)
    await f.write("big", bytes(data))
    assert len(block_reads(s)) <= 2, block_reads(s)
    assert f.data_blocks_written - before[0] <= 3
    assert 1 <= f.new_blocks_written - before[1] <= 1
    assert await f.read("big") == bytes(data)
    # the same update without the index reads every block
    f.broken_walk_always = True
    data[800_000:800_010] = b"0123456789"
    s.reads.clear()
    await f.write("big", bytes(data))
    assert len(block_reads(s)) >= blocks
    assert await f.read("big") == bytes(data)


async def test_reader_fetches_ahead_along_the_index_but_follows_the_pointers() -> None:
    """A valid index that lists the blocks in a wrong order (a forged or stale guess) costs
    reads, never a wrong byte: the reader takes each block where the pointer before it leads."""
    s = FakeStore()
    f = Files(s)
    data = blob(60_000)
    await f.write("r", data, params=SMALL)
    itag, raw = s.regs[("default", "file-index:r")]
    idx = decode(raw)
    assert isinstance(idx, Index) and idx.valid and len(idx.entries) > 20
    forged = Index(True, idx.genesis_tag, idx.genesis, tuple(reversed(idx.entries)))
    ok = await s.cvr_write("file-index:r", encode(forged), itag)
    assert ok.ok
    assert await f.read("r") == data
    bogus = Index(True, TAG0, None, (Entry("nope", TAG0, b"x" * 16, 5),))
    _, _ = s.regs[("default", "file-index:r")]
    await s.cvr_write("file-index:r", encode(bogus), s.regs[("default", "file-index:r")][0])
    assert await f.read("r") == data


async def test_writer_walks_while_the_journal_shows_an_attempt_that_may_have_linked() -> None:
    """An attempt with recorded links (a writer that died after linking, before recording the
    list) makes later writers walk instead of trusting the index."""
    s = FakeStore()
    f = Files(s)
    data = bytearray(blob(100_000))
    await f.write("j", bytes(data), params=SMALL)
    blocks = (await f.stat("j")).blocks
    # the next writer dies right after its links committed (before the index write)
    dying = Files(s)

    async def die(*args: object) -> bool:
        raise RuntimeError("killed")

    dying._put_index = die  # type: ignore[method-assign]
    data[50_000:50_010] = b"dead writer"[:10]
    with pytest.raises(RuntimeError):
        await dying.write("j", bytes(data))
    s.reads.clear()
    data[10_000:10_010] = b"0123456789"
    await f.write("j", bytes(data))
    assert len(block_reads(s)) >= blocks - 2  # walked
    assert await f.read("j") == bytes(data)


@pytest.mark.parametrize("broken", [False, True])
async def test_a_writer_whose_index_write_lost_invalidates_it(broken: bool) -> None:
    """Two writers change disjoint regions from one index version: one index write fails and
    its writer invalidates the index. A third writer then reverts the second region: with the
    index invalidated it walks and sees that region's new blocks; with the broken variant it
    diffs against the winner's index, keeps the old blocks there and silently loses its own
    change (the file read back is not what it wrote)."""
    s = FakeStore()
    base = blob(120_000)
    await Files(s).write("x", base, params=SMALL)
    f1, f2 = Files(s), Files(s)
    f1.broken_stale_index = f2.broken_stale_index = broken
    gate = asyncio.Event()
    orig = f2._put_index

    async def late(name: str, group: str, b, index):  # type: ignore[no-untyped-def]
        await gate.wait()  # f2's index write comes after f1's
        return await orig(name, group, b, index)

    f2._put_index = late  # type: ignore[method-assign]
    a = bytearray(base)
    a[10_000:10_010] = b"AAAAAAAAAA"
    b = bytearray(base)
    b[100_000:100_010] = b"BBBBBBBBBB"
    t2 = asyncio.ensure_future(f2.write("x", bytes(b)))
    await f1.write("x", bytes(a))
    gate.set()
    await t2
    both = bytearray(a)
    both[100_000:100_010] = b"BBBBBBBBBB"
    assert await f1.read("x") == bytes(both)
    f3 = Files(s)
    await f3.write("x", bytes(a))  # the second region back to the original
    if broken:
        assert await f3.read("x") != bytes(a)  # the change was lost: the checker's catch
    else:
        assert await f3.read("x") == bytes(a)


async def test_write_at_rechunks_only_around_the_change() -> None:
    """``write_at`` leaves the same blocks as writing the whole new content, reading only the
    few blocks around the change."""
    s = FakeStore()
    f = Files(s)
    data = bytearray(blob(3_200_000))
    await f.write("p", bytes(data), params=MEDIUM)
    blocks = (await f.stat("p")).blocks
    s.reads.clear()
    before = f.new_blocks_written
    assert await f.write_at("p", 1_600_000, b"E" * 1024) == len(data)
    data[1_600_000:1_601_024] = b"E" * 1024
    assert len(block_reads(s)) <= 6, block_reads(s)  # re-chunked, marked, relinked
    assert f.new_blocks_written - before <= 2
    assert await f.read("p") == bytes(data)
    # the same list as a whole write of the new content would leave
    s2 = FakeStore()
    await Files(s2).write("p", bytes(data), params=MEDIUM)
    sizes = [len(c) for c in await _chunks(f, "p")]
    assert sizes == [len(c) for c in await _chunks(Files(s2), "p")]
    assert abs((await f.stat("p")).blocks - blocks) <= 2
    # at the start, across the end (extends), at the very end, on an empty file
    await f.write_at("p", 0, b"start")
    data[0:5] = b"start"
    await f.write_at("p", len(data) - 3, b"across the end")
    data[len(data) - 3 :] = b"across the end"
    await f.write_at("p", len(data), b"+appended")
    data += b"+appended"
    assert await f.read("p") == bytes(data)
    await f.write("e", b"")
    assert await f.write_at("e", 0, b"now") == 3
    assert await f.read("e") == b"now"
    from aresdsm.errors import ConfigurationError

    with pytest.raises(ConfigurationError):
        await f.write_at("e", 4, b"hole")


async def test_write_at_concurrent_with_a_writer_retries_and_both_take_effect() -> None:
    s = FakeStore()
    data = bytearray(blob(400_000))
    await Files(s).write("c", bytes(data), params=MEDIUM)
    f1, f2 = Files(s), Files(s)
    await asyncio.gather(
        f1.write_at("c", 10_000, b"A" * 100), f2.write_at("c", 300_000, b"B" * 100)
    )
    data[10_000:10_100] = b"A" * 100
    data[300_000:300_100] = b"B" * 100
    assert await f1.read("c") == bytes(data)


async def _chunks(f: Files, name: str) -> list[bytes]:
    return [b async for b in f.iter_blocks(name)]


async def test_write_at_inside_a_block_rewrites_it_in_place() -> None:
    """An overwrite that leaves the cut points where they were (the common case) rewrites the
    one block it falls in, on the version the index names: one write with data, no new block id,
    no journal entry, mark, relink or tombstone; readers and the index see the new version."""
    s = FakeStore()
    f = Files(s)
    data = bytearray(blob(3_200_000))
    await f.write("p", bytes(data), params=MEDIUM)
    ids = [e.id for e in decode(s.regs[("default", "file-index:p")][1]).entries]
    s.reads.clear()
    s.writes.clear()
    fresh, with_data = s.fresh_writes, f.data_blocks_written
    await f.write_at("p", 1_600_000, b"E" * 1024)
    data[1_600_000:1_601_024] = b"E" * 1024
    assert s.fresh_writes == fresh and f.data_blocks_written - with_data == 1
    assert [k.split(":")[0] for k in s.writes] == ["file-block", "file-index"]
    assert len(block_reads(s)) <= 2  # the block, and the next one (where the cut falls)
    assert [e.id for e in decode(s.regs[("default", "file-index:p")][1]).entries] == ids
    assert await f.read("p") == bytes(data)
    assert b"".join([p async for p in f.read_range("p", 1_599_000, 3000)]) == bytes(
        data[1_599_000:1_602_000]
    )
    # the general path (broken_never_in_place) leaves the same content, with more writes
    f.broken_never_in_place = True
    s.writes.clear()
    await f.write_at("p", 1_000_000, b"G" * 1024)
    data[1_000_000:1_001_024] = b"G" * 1024
    assert len(s.writes) > 5
    assert await f.read("p") == bytes(data)


async def test_two_write_at_on_one_block_both_take_effect() -> None:
    """Two in-place rewrites of one block: one wins the block's version, the other is stale,
    re-reads and patches the new content; both changes are in the file."""
    s = FakeStore()
    data = bytearray(blob(400_000, seed=3))
    await Files(s).write("b", bytes(data), params=MEDIUM)
    f1, f2 = Files(s), Files(s)
    await asyncio.gather(
        f1.write_at("b", 200_000, b"1" * 100), f2.write_at("b", 200_200, b"2" * 100)
    )
    data[200_000:200_100] = b"1" * 100
    data[200_200:200_300] = b"2" * 100
    assert await Files(s).read("b") == bytes(data)
