"""Random access in an open file (docs/mount.md "Consistency"), driven in-process through the
mount's operations (no kernel): a read fetches only the blocks that cover it (counted at the
Store), the local copy mixes fetched ranges and local writes correctly, and a part of the
opened version that was never fetched is ESTALE once another mount replaced the version."""

from __future__ import annotations

import errno
import os
import random
from types import SimpleNamespace
from typing import Any

import pyfuse3
import pytest

from aresdsm.client import Store
from aresdsm.config import Configuration
from aresdsm.files.layer import BLOCK_PREFIX
from aresdsm.mount.fs import READ_MIN_BYTES, AresFS, _Ranges
from aresdsm.server import Server

CTX = SimpleNamespace(uid=0, gid=0, pid=0, umask=0o022)
ROOT = pyfuse3.ROOT_INODE


async def _put(fs: AresFS, name: bytes, data: bytes) -> None:
    fi, _ = await fs.create(ROOT, name, 0o644, os.O_RDWR, CTX)  # type: ignore[arg-type]
    for off in range(0, len(data), 128 * 1024):
        await fs.write(fi.fh, off, data[off : off + 128 * 1024])
    await fs.flush(fi.fh)
    await fs.release(fi.fh)
    await fs.drain()


async def _open(fs: AresFS, name: bytes, flags: int = os.O_RDWR) -> int:
    e = await fs.lookup(ROOT, name, CTX)  # type: ignore[arg-type]
    return int((await fs.open(e.st_ino, flags, CTX)).fh)  # type: ignore[arg-type]


def _count_block_reads(store: Store, name: str) -> list[str]:
    """Every block register of ``name`` the Store reads from now on."""
    seen: list[str] = []
    real = store.read_tagged

    async def counted(key: str, *args: Any, **kwargs: Any) -> Any:
        if key.startswith(f"{BLOCK_PREFIX}{name}:"):
            seen.append(key)
        return await real(key, *args, **kwargs)

    store.read_tagged = counted  # type: ignore[method-assign]
    return seen


async def test_a_read_near_the_end_fetches_only_the_covering_blocks(
    inproc_cluster: tuple[Configuration, list[Server]],
) -> None:
    cfg, _ = inproc_cluster
    data = random.Random(3).randbytes(12 * 1024 * 1024)  # ~12 blocks of ~1 MiB
    async with Store(cfg) as s1, Store(cfg) as s2:
        await _put(AresFS(s1), b"big", data)
        blocks = (await s1.files.stat("big")).blocks
        assert blocks >= 6
        fs = AresFS(s2)
        fh = await _open(fs, b"big", os.O_RDONLY)
        try:
            reads = _count_block_reads(s2, "big")
            off = len(data) - 300_000
            assert await fs.read(fh, off, 4096) == data[off : off + 4096]
            # the read's window (READ_MIN_BYTES, no larger than the layer's smallest block) lies
            # in at most two blocks; reading from the start reads every block before it
            assert 1 <= len(reads) <= 2, (len(reads), blocks)
            assert fs.ranges_fetched == 1
            far = off + 150_000  # (not where the last read ended: no read-ahead)
            assert await fs.read(fh, far, 4096) == data[far : far + 4096]
            assert fs.ranges_fetched == 1  # (the window around the first read is local now)
        finally:
            await fs.release(fh)


async def test_reads_writes_and_truncations_of_a_partly_fetched_file(
    inproc_cluster: tuple[Configuration, list[Server]],
) -> None:
    """A model of the file (bytearray) against random reads, writes and truncations through a
    mount that fetches on demand; then the published version is the model."""
    cfg, _ = inproc_cluster
    rnd = random.Random(7)
    model = bytearray(rnd.randbytes(3 * 1024 * 1024 + 12345))
    async with Store(cfg) as s1, Store(cfg) as s2:
        await _put(AresFS(s1), b"m", bytes(model))
        fs = AresFS(s2)
        fh = await _open(fs, b"m")
        for step in range(60):
            op = rnd.random()
            if op < 0.55:
                off = rnd.randrange(0, len(model) + 1000)
                n = rnd.choice([1, 4096, 128 * 1024, 700_000])
                got = await fs.read(fh, off, n)
                assert got == bytes(model[off : off + n]), step
            elif op < 0.9:
                off = rnd.randrange(0, len(model) + 5000)
                buf = rnd.randbytes(rnd.choice([1, 5000, 200_000]))
                await fs.write(fh, off, buf)
                if off > len(model):
                    model.extend(bytes(off - len(model)))
                model[off : off + len(buf)] = buf
            else:
                size = rnd.randrange(0, len(model) + 300_000)
                attr = SimpleNamespace(st_size=size)
                fields = SimpleNamespace(
                    update_size=True,
                    update_mode=False,
                    update_uid=False,
                    update_gid=False,
                    update_mtime=False,
                )
                ino = fs._handles[fh]
                await fs.setattr(ino, attr, fields, fh, CTX)  # type: ignore[arg-type]
                del model[size:]
                model.extend(bytes(size - len(model)))
        assert fs.ranges_fetched > 1  # (fetched on demand, not once from the start)
        await fs.flush(fh)
        await fs.release(fh)
        await fs.drain()
        assert await s1.files.read("m") == bytes(model)


@pytest.mark.parametrize("broken", [False, True], ids=["correct", "broken_fetch_unchecked"])
async def test_an_unfetched_part_of_a_replaced_version_is_estale(
    inproc_cluster: tuple[Configuration, list[Server]], broken: bool
) -> None:
    cfg, _ = inproc_cluster
    v1 = random.Random(1).randbytes(2 * 1024 * 1024)
    v2 = random.Random(2).randbytes(2 * 1024 * 1024)
    async with Store(cfg) as s1, Store(cfg) as s2:
        a, b = AresFS(s1), AresFS(s2)
        b.broken_fetch_unchecked = broken
        await _put(a, b"r", v1)
        fh = await _open(b, b"r", os.O_RDONLY)
        try:
            assert await b.read(fh, 0, 4096) == v1[:4096]  # b fetched [0, READ_MIN_BYTES)
            await _put(a, b"r", v2)  # a replaces it
            assert await b.read(fh, 8192, 4096) == v1[8192:12288]  # fetched: still v1
            far = READ_MIN_BYTES + 1_000_000
            if broken:  # one open file shows two versions: v1 at its start, v2 further on
                assert await b.read(fh, far, 4096) == v2[far : far + 4096]
                return
            with pytest.raises(pyfuse3.FUSEError) as e:
                await b.read(fh, far, 4096)  # never fetched: gone
            assert e.value.errno == errno.ESTALE
        finally:
            await b.release(fh)


def test_ranges() -> None:
    r = _Ranges()
    assert r.missing(0, 10) == [(0, 10)]
    r.add(2, 4)
    r.add(6, 8)
    assert r.missing(0, 10) == [(0, 2), (4, 6), (8, 10)]
    r.add(4, 6)  # touching ranges merge
    assert (r.starts, r.ends) == ([2], [8])
    r.add(0, 1)
    r.add(9, 12)
    r.add(1, 9)
    assert (r.starts, r.ends) == ([0], [12])
    r.clip(5)
    assert r.missing(0, 10) == [(5, 10)]
    r.add(7, 9)
    r.clip(7)
    assert (r.starts, r.ends) == ([0], [5])
    rnd = random.Random(0)
    for _ in range(200):  # against a set of bytes
        r, have = _Ranges(), set[int]()
        for _ in range(20):
            a = rnd.randrange(0, 100)
            b = a + rnd.randrange(0, 30)
            if rnd.random() < 0.8:
                r.add(a, b)
                have |= set(range(a, b))
            else:
                r.clip(a)
                have = {x for x in have if x < a}
            gaps = {x for g in r.missing(0, 140) for x in range(*g)}
            assert gaps == set(range(140)) - have
            assert all(e < s for e, s in zip(r.ends, r.starts[1:], strict=False))


async def test_an_open_file_keeps_reading_its_version_after_chmod_unlink_or_rename(
    inproc_cluster: tuple[Configuration, list[Server]],
) -> None:
    """This mount's own record writes (chmod, unlink) leave an open file's version readable;
    the unlink's deletion of the data waits until the handles open in this mount fetched the
    rest of their version; a renamed file is fetched under its new name."""
    cfg, _ = inproc_cluster
    v1 = random.Random(4).randbytes(3 * 1024 * 1024)
    async with Store(cfg) as s:
        fs = AresFS(s)
        await _put(fs, b"u", v1)
        await _put(fs, b"w", v1)
        fu = await _open(fs, b"u", os.O_RDONLY)
        fw = await _open(fs, b"w", os.O_RDONLY)
        try:
            assert await fs.read(fu, 0, 4096) == v1[:4096]
            assert await fs.read(fw, 0, 4096) == v1[:4096]
            chmod = SimpleNamespace(
                update_size=False,
                update_mode=True,
                update_uid=False,
                update_gid=False,
                update_mtime=False,
            )
            attr = SimpleNamespace(st_mode=0o600)
            await fs.setattr(fs._handles[fu], attr, chmod, fu, CTX)  # type: ignore[arg-type]
            assert await fs.read(fu, 1_000_000, 4096) == v1[1_000_000:1_004_096]  # (own chmod)
            await fs.unlink(ROOT, b"u", CTX)  # type: ignore[arg-type]
            await fs.rename(ROOT, b"w", ROOT, b"w2", 0, CTX)  # type: ignore[arg-type]
            await fs.drain()  # (the data of u and of the old name w are deleted)
            assert await s.files.list("u") == [] and await s.files.list("w") == ["w2"]
            off = 2 * 1024 * 1024
            assert await fs.read(fu, off, 100_000) == v1[off : off + 100_000]
            assert await fs.read(fw, off, 100_000) == v1[off : off + 100_000]
        finally:
            await fs.release(fu)
            await fs.release(fw)
