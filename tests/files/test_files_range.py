"""Range reads of fragmented files (docs/protocol.md §9.2): only the blocks that cover the range
are read, located by the file's index; the index is used only once proved current (else the
range is read by walking), so a range is always bytes of one version of the file, even when an
update races it (``broken_range_trust_index`` returns bytes of a list that never existed)."""

from __future__ import annotations

import asyncio
import contextvars
import io
import random

import pytest

from aresdsm.errors import ConfigurationError
from aresdsm.files import ChunkParams, FileChanged, Files, NoSuchFile
from aresdsm.files.codec import Index, decode, encode
from aresdsm.tags import Tag

from .fake import FakeCvrResult, FakeStore

SMALL = ChunkParams(min_bytes=256, avg_bytes=1024, max_bytes=4096)
WHO: contextvars.ContextVar[str] = contextvars.ContextVar("who", default="")


def blob(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


def block_reads(s: FakeStore) -> list[str]:
    return [k for k in s.reads if k.startswith("file-block:")]


def layout(s: FakeStore, name: str) -> list[tuple[str, int, int]]:
    """(block key, start, end) of every block, from the file's index."""
    ix = decode(s.regs[("default", f"file-index:{name}")][1])
    assert isinstance(ix, Index) and ix.valid
    out, at = [], 0
    for e in ix.entries:
        out.append((f"file-block:{name}:{e.id}", at, at + e.size))
        at += e.size
    return out


async def rng(f: Files, name: str, offset: int, length: int | None) -> bytes:
    return b"".join([p async for p in f.read_range(name, offset, length)])


async def test_a_range_in_the_middle_reads_only_the_blocks_that_cover_it() -> None:
    s = FakeStore()
    f = Files(s)
    data = blob(200_000)
    await f.write("big", data, params=SMALL)
    blocks = layout(s, "big")
    assert len(blocks) > 100
    lo, hi = 100_000, 103_500
    covering = [k for k, a, b in blocks if a < hi and b > lo]
    s.reads.clear()
    assert await rng(f, "big", lo, hi - lo) == data[lo:hi]
    assert sorted(block_reads(s)) == sorted(covering)
    assert 2 <= len(covering) <= 8
    # besides the blocks: the index, the journal, the index again (the proof it is current)
    assert [k for k in s.reads if not k.startswith("file-block:")] == [
        "file-index:big",
        "file-journal:big",
        "file-index:big",
    ]


async def test_edges_past_the_end_and_bad_arguments() -> None:
    s = FakeStore()
    f = Files(s)
    data = blob(50_000, seed=2)
    await f.write("e", data, params=SMALL)
    n = len(data)
    cases = [(0, 1), (0, n), (n - 1, 1), (n - 1, 10), (n, 5), (n + 100, 5), (10, 0), (0, None)]
    cases += [(n - 3, None), (n, None), (5, n * 3)]
    r = random.Random(7)
    cases += [(r.randrange(n), r.randrange(20_000)) for _ in range(40)]
    for off, ln in cases:
        want = data[off:] if ln is None else data[off : off + ln]
        assert await rng(f, "e", off, ln) == want, (off, ln)
    # block boundaries exactly
    for _, a, b in layout(s, "e")[:5]:
        assert await rng(f, "e", a, b - a) == data[a:b]
    s.reads.clear()
    assert await rng(f, "e", n + 1, 10) == b""
    assert block_reads(s) == []
    await f.write("empty", b"")
    assert await rng(f, "empty", 0, 10) == b""
    with pytest.raises(NoSuchFile):
        await rng(f, "missing", 0, 10)
    await f.delete("e")
    with pytest.raises(NoSuchFile):
        await rng(f, "e", 0, 10)
    for off, ln in [(-1, 5), (0, -1), (True, 3), (1.5, 3)]:
        with pytest.raises(ConfigurationError):
            await rng(f, "empty", off, ln)  # type: ignore[arg-type]


async def test_without_a_valid_index_the_range_is_walked_up_to_its_end() -> None:
    s = FakeStore()
    f = Files(s)
    data = blob(60_000, seed=3)
    await f.write("w", data, params=SMALL)
    blocks = layout(s, "w")
    itag = s.regs[("default", "file-index:w")][0]
    assert (await s.cvr_write("file-index:w", encode(Index()), itag)).ok
    s.reads.clear()
    assert await rng(f, "w", 20_000, 1000) == data[20_000:21_000]
    upto = [k for k, a, _ in blocks if a < 21_000]
    assert block_reads(s) == upto  # from the first block, and not one block further
    assert await rng(f, "w", 59_000, None) == data[59_000:]


async def test_open_seek_read_and_iterate_from_a_position() -> None:
    s = FakeStore()
    f = Files(s)
    data = blob(40_000, seed=4)
    await f.write("o", data, params=SMALL)
    async with f.open("o") as h:
        assert h.seek(30_000) == 30_000
        s.reads.clear()
        assert await h.read(100) == data[30_000:30_100]
        assert h.tell() == 30_100
        assert len(block_reads(s)) <= 2
        h.seek(-100, io.SEEK_CUR)
        assert await h.read(50) == data[30_000:30_050]
        assert b"".join([p async for p in h]) == data[30_050:]
        assert h.tell() == len(data)
        assert await h.read(10) == b""
        h.seek(0)
        assert await h.read() == data
        with pytest.raises(ConfigurationError):
            h.seek(0, io.SEEK_END)
        with pytest.raises(ConfigurationError):
            h.seek(-1)


class RacingStore(FakeStore):
    """Pauses chosen calls of chosen writers (contextvar WHO) until events are set."""

    def __init__(self) -> None:
        super().__init__()
        self.gates: dict[tuple[str, str, str], asyncio.Event] = {}  # (who, op, key) -> wait
        self.after: dict[tuple[str, str, str], asyncio.Event] = {}  # (who, op, key) -> set
        self.arrived: dict[tuple[str, str, str], asyncio.Event] = {}  # set when a gate is met

    async def cvr_write(self, key: str, value: bytes, base: Tag, **kw) -> FakeCvrResult:  # type: ignore[override]
        gate = self.gates.get((WHO.get(), "w", key))
        if gate is not None:
            await gate.wait()
        res = await super().cvr_write(key, value, base, **kw)
        done = self.after.get((WHO.get(), "w", key))
        if done is not None and res.ok:
            done.set()
        return res

    async def read_tagged(self, key: str, **kw) -> tuple[Tag, bytes | None]:  # type: ignore[override]
        gate = self.gates.pop((WHO.get(), "r", key), None)
        if gate is not None:
            self.arrived.setdefault((WHO.get(), "r", key), asyncio.Event()).set()
            await gate.wait()
        return await super().read_tagged(key, **kw)


async def as_(who: str, coro):  # type: ignore[no-untyped-def]
    WHO.set(who)
    return await coro


@pytest.mark.parametrize(
    ("broken", "b_kind"), [(False, "insert"), (True, "insert"), (False, "drop")]
)
async def test_an_index_that_was_never_the_list_is_not_trusted(broken: bool, b_kind: str) -> None:
    """Writers A and B change disjoint blocks from the same index: B inserts bytes near the
    start (relinking the genesis block) *before* A relinks near the end; A's index write (A's
    change only) succeeds, B's fails later and B invalidates the index. Between the two the
    index is valid but names a list that never existed (it lacks B's insert, so its offsets are
    wrong). A range read then must not trust it (B's attempt is still in the journal with its
    links): it walks and returns the current bytes; the broken variant returns bytes of that
    phantom version, although a read that completed before it had seen B's insert.

    ``drop``: B only removes the last block (no new block); such an attempt once never entered
    the journal, so nothing showed that the index was not the list."""
    s = RacingStore()
    v0 = blob(60_000, seed=5)
    await Files(s).write("r", v0, params=SMALL)
    blocks = layout(s, "r")
    zi = next(i for i, (_, a, b) in enumerate(blocks) if a <= 50_000 < b)
    z_key, p_key = blocks[zi][0], blocks[zi - 1][0]
    assert zi > 10
    a_marked, b_relinked, a_indexed, reader_done = (asyncio.Event() for _ in range(4))
    s.after[("A", "w", z_key)] = a_marked
    if b_kind == "insert":
        v_b = v0[:10] + b"I" * 100 + v0[10:]
        b_link = "file:r"
    else:  # drop the last block (no new block: the cuts before it stay)
        v_b = v0[: blocks[-1][1]]
        b_link = blocks[-2][0]
        assert zi < len(blocks) - 3
    shift = 100 if b_kind == "insert" else 0  # where A's change lands in the final file
    s.gates[("B", "w", b_link)] = a_marked  # B relinks after A took its list (and marked)
    s.after[("B", "w", b_link)] = b_relinked
    s.gates[("A", "w", p_key)] = b_relinked  # ... and before A relinks
    s.after[("A", "w", "file-index:r")] = a_indexed
    s.gates[("B", "w", "file-index:r")] = reader_done  # B's index write waits for the reader
    fa, fb = Files(s), Files(s)
    fa.broken_never_in_place = True  # A marks and relinks (in place, it would not relink)
    ta = asyncio.ensure_future(as_("A", fa.write_at("r", 50_000, b"A" * 50)))
    tb = asyncio.ensure_future(as_("B", fb.write("r", v_b)))
    await asyncio.wait_for(a_indexed.wait(), 10)
    final = bytearray(v_b)
    final[50_000 + shift : 50_050 + shift] = b"A" * 50
    # a whole read that completes before the range read starts already sees both changes, so
    # the range read must too (B is linearized before that read, the range read after it)
    assert await as_("X", Files(s).read("r")) == bytes(final)
    reader = Files(s)
    reader.broken_range_trust_index = broken
    got = await as_("R", rng(reader, "r", 49_000, None))
    reader_done.set()
    await asyncio.wait_for(asyncio.gather(ta, tb), 10)
    phantom = bytearray(v0)
    phantom[50_000:50_050] = b"A" * 50
    assert await Files(s).read("r") == bytes(final)
    real = {bytes(v[49_000:]) for v in (v0, v_b, final)}
    if broken:
        assert got == bytes(phantom[49_000:])
        assert got not in real
    else:
        assert got == bytes(final[49_000:])


async def test_an_update_racing_a_range_read_restarts_it_on_the_new_version() -> None:
    """The reader took the index and read the range's first block; before it reads the second
    one a writer rewrites both and reclaims the old ones: the reader starts again from a fresh
    index and returns the new version's bytes, never a mix."""
    s = RacingStore()
    v1 = blob(40_000, seed=6)
    await Files(s).write("m", v1, params=SMALL)
    blocks = layout(s, "m")
    (k1, a1, _), (k2, _, b2) = blocks[10], blocks[11]
    go = asyncio.Event()
    s.gates[("R", "r", k2)] = go
    v2 = bytearray(v1)
    v2[a1:b2] = blob(b2 - a1, seed=9)
    reader = Files(s)  # both blocks in the first window: checked before anything is yielded

    async def write_then_go() -> None:
        await s.arrived.setdefault(("R", "r", k2), asyncio.Event()).wait()
        assert k1 in s.reads
        await as_("W", Files(s).write("m", bytes(v2)))
        assert not s.live_blocks("m").count(k2)
        go.set()

    got, _ = await asyncio.gather(as_("R", rng(reader, "m", a1, b2 - a1)), write_then_go())
    assert got == bytes(v2[a1:b2])


async def test_a_long_range_that_changes_after_yielding_raises_or_restarts_its_sink() -> None:
    """A range longer than the first window: a change met after pieces were yielded raises
    FileChanged from the iterator; read_range_into rewinds a seekable sink and reads again."""
    s = RacingStore()
    data = bytearray(blob(40_000, seed=8))
    await Files(s).write("l", bytes(data), params=SMALL)
    reader = Files(s, max_inflight_blocks=2)

    def change_block_20_while_the_reader_waits_for_it(fill: bytes) -> asyncio.Future[None]:
        key, start, _ = layout(s, "l")[20]
        go = asyncio.Event()
        s.gates[("R", "r", key)] = go
        arrived = s.arrived[("R", "r", key)] = asyncio.Event()

        async def change() -> None:
            await arrived.wait()
            data[start : start + 10] = fill * 10
            await as_("W", Files(s).write("l", bytes(data)))
            go.set()

        return asyncio.ensure_future(change())

    w = change_block_20_while_the_reader_waits_for_it(b"X")
    with pytest.raises(FileChanged):
        await as_("R", rng(reader, "l", 0, None))
    await w
    w = change_block_20_while_the_reader_waits_for_it(b"Y")
    sink = io.BytesIO()
    n = await as_("R", reader.read_range_into("l", 0, None, sink))
    await w
    assert sink.getvalue() == bytes(data) and n == len(data)


async def test_stat_reads_no_block_when_the_index_is_proved_current() -> None:
    s = FakeStore()
    f = Files(s)
    data = blob(30_000, seed=11)
    await f.write("s", data, params=SMALL)
    s.reads.clear()
    st = await f.stat("s")
    assert block_reads(s) == []
    assert st.size_bytes == len(data) and st.blocks == len(layout(s, "s"))
    itag = s.regs[("default", "file-index:s")][0]
    assert (await s.cvr_write("file-index:s", encode(Index()), itag)).ok
    walked = await f.stat("s")  # no valid index: walks, and finds the same version
    assert len(block_reads(s)) == st.blocks
    assert (walked.version, walked.size_bytes, walked.blocks) == (
        st.version,
        st.size_bytes,
        st.blocks,
    )
