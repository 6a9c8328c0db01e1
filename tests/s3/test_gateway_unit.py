"""The gateway's object model over an in-memory store (tests/s3/fake.py): how many register
operations a request costs, and that the shortcuts behind those counts stay correct when
another gateway (its own caches) writes the same keys (docs/s3.md, "How objects are stored")."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

import pytest

from aresdsm.s3.errors import S3Error
from aresdsm.s3.objects import Conditions, Gateway, Head

from .fake import FakeStore

B = "bucket"


async def _pieces(data: bytes, size: int = 8192) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def put(gw: Gateway, key: str, data: bytes, cond: Conditions | None = None) -> Head:
    md5 = hashlib.md5(data)
    return await gw.put(
        B, key, _pieces(data), md5.digest, headers={}, meta={}, cond=cond or Conditions()
    )


async def _gateway(store: FakeStore | None = None) -> tuple[FakeStore, Gateway]:
    store = store or FakeStore()
    gw = Gateway(store, gc_delay_s=0.0)
    if (B, "s3-bucket") not in store.regs:
        await gw.create_bucket(B)
    await gw.bucket(B)  # the bucket record is cached (1 s)
    store.reset_counts()
    return store, gw


async def test_a_small_put_of_a_new_key_is_one_coverable_write() -> None:
    """A new key costs one register operation: the head's coverable write on the absent
    version, with no read first (issue 16: small PUTs; before, a key this gateway had not seen
    was read before every write)."""
    store, gw = await _gateway()
    await put(gw, "k1", b"x" * 1024)
    assert store.log == [("cvr_write", "s3o:k1")]
    h = await gw.head(B, "k1")
    assert (h.inline, h.etag) == (b"x" * 1024, hashlib.md5(b"x" * 1024).hexdigest())
    store.reset_counts()
    await put(gw, "k1", b"y" * 1024)  # known key: its last version is the base, no read
    assert store.log == [("cvr_write", "s3o:k1")]


async def test_a_key_written_elsewhere_is_replaced_and_its_data_files_discarded() -> None:
    """The absent version is only a guess for a key this gateway never saw: if another gateway
    wrote it, the write is refused as stale, the answer names the newest version, and the PUT
    is written again on it -- and the replaced version's data files are discarded."""
    store, gw1 = await _gateway()
    _, gw2 = await _gateway(store)
    big = bytes(range(256)) * 400  # 100 KiB: a data file, not inline
    h1 = await put(gw1, "k", big)
    assert h1.files and h1.inline is None
    old_file = h1.files[0][0]
    h2 = await put(gw2, "k", b"small")
    assert (await gw1.head(B, "k")).etag == h2.etag
    await gw2.close()  # runs the pending deletions now (gc_delay_s=0 in any case)
    assert old_file not in await store.files.list("s3d/", group=B)


@pytest.mark.parametrize("cond", ["if-none-match", "if-match-wrong"])
async def test_conditions_on_a_key_written_elsewhere_are_judged_on_the_newest_version(
    cond: str,
) -> None:
    store, gw1 = await _gateway()
    _, gw2 = await _gateway(store)
    h1 = await put(gw1, "k", b"one")
    c = Conditions(if_none_match=("*",)) if cond == "if-none-match" else Conditions(("nope",))
    with pytest.raises(S3Error) as e:
        await put(gw2, "k", b"two", c)
    assert e.value.code == "PreconditionFailed"
    assert (await gw2.head(B, "k")).etag == h1.etag
    h3 = await put(gw2, "k", b"three", Conditions(if_match=(h1.etag,)))
    assert (await gw1.head(B, "k")).etag == h3.etag


async def test_if_match_on_a_new_key_fails_and_if_none_match_creates() -> None:
    _, gw = await _gateway()
    with pytest.raises(S3Error) as e:
        await put(gw, "new", b"v", Conditions(if_match=("*",)))
    assert e.value.code == "PreconditionFailed"
    await put(gw, "new", b"v", Conditions(if_none_match=("*",)))
    with pytest.raises(S3Error):
        await put(gw, "new", b"w", Conditions(if_none_match=("*",)))
    assert (await gw.head(B, "new")).inline == b"v"


async def _collect(gw: Gateway, h: Head, start: int, end: int) -> bytes:
    out = bytearray()
    async for p in gw.stream(B, h, start, end):
        out += p
    return bytes(out)


async def test_a_range_inside_a_data_file_reads_only_the_blocks_covering_it() -> None:
    """GetObject with a Range in the middle of a many-block object reads the blocks that cover
    the range, found by the file's index (before: every block from the file's first one)."""
    import random

    store, gw = await _gateway()
    data = random.Random(7).randbytes(12 * 1024 * 1024)  # about 12 blocks of ~1 MiB
    h = await put(gw, "big", data)
    assert len(h.files) == 1
    blocks = [k for (g, k) in store.regs if g == B and k.startswith("file-block:")]
    assert len(blocks) >= 6
    for start, end in ((6_000_000, 6_000_099), (len(data) - 10, len(data) - 1), (5, 17)):
        store.reset_counts()
        assert await _collect(gw, h, start, end) == data[start : end + 1]
        block_reads = [k for c, k in store.log if k.startswith("file-block:")]
        assert 1 <= len(block_reads) <= 2, (start, block_reads)
    store.reset_counts()  # the whole object: every block, once
    assert await _collect(gw, h, 0, len(data) - 1) == data
    assert len({k for c, k in store.log if k.startswith("file-block:")}) == len(blocks)


@pytest.mark.parametrize("known", [False, True])
async def test_a_small_conditional_put_is_one_coverable_write(known: bool) -> None:
    """If-None-Match / If-Match on a small (inline) body are judged on the version the
    coverable write replaces: one register operation, no read first (issue 16: before, every
    conditional PUT read the head first, 2 operations). A large body is still checked before
    its data file is stored (below)."""
    store, gw = await _gateway()
    if known:
        h = await put(gw, "k", b"one")
        store.reset_counts()
        await put(gw, "k", b"two", Conditions(if_match=(h.etag,)))
    else:
        await put(gw, "k", b"one", Conditions(if_none_match=("*",)))
    assert store.log == [("cvr_write", "s3o:k")]


async def test_a_large_conditional_put_that_fails_stores_no_data_file() -> None:
    store, gw = await _gateway()
    await put(gw, "k", b"one")
    store.reset_counts()
    with pytest.raises(S3Error) as e:
        await put(gw, "k", bytes(100 * 1024), Conditions(if_none_match=("*",)))
    assert e.value.code == "PreconditionFailed"
    assert store.log == [("read_tagged", "s3o:k")]
    assert await store.files.list("s3d/", group=B) == []
