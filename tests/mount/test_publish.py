"""The publication of a closed file (docs/mount.md), driven in-process through the mount's
operations (no kernel): two mounts that opened the same version close it -- the first wins, the
second is told ESTALE and writes nothing; with the claim switched off (``broken_*``) the second
close silently overwrites the first, and this test sees the lost update. An open during another
mount's publication waits for it and reads the new version whole."""

from __future__ import annotations

import asyncio
import errno
import os
import random
from types import SimpleNamespace
from typing import Any

import pyfuse3
import pytest

from aresdsm.client import Store
from aresdsm.config import Configuration
from aresdsm.mount.fs import AresFS
from aresdsm.server import Server

CTX = SimpleNamespace(uid=0, gid=0, pid=0, umask=0o022)
ROOT = pyfuse3.ROOT_INODE


async def _race(cfg: Configuration, *, broken: bool) -> tuple[bool, bytes]:
    """Both mounts open version 1 of ``f``; a edits the start, b the end; a closes, then b.
    Returns (b's close succeeded, the file's final content)."""
    async with Store(cfg) as s1, Store(cfg) as s2:
        a, b = AresFS(s1), AresFS(s2)
        b.broken_publish_without_claim = broken
        fi, _ = await a.create(ROOT, b"f", 0o644, os.O_RDWR, CTX)  # type: ignore[arg-type]
        await a.write(fi.fh, 0, b"v1" * 5000)
        await a.flush(fi.fh)
        await a.release(fi.fh)
        await a.drain()
        ea = await a.lookup(ROOT, b"f", CTX)  # type: ignore[arg-type]
        eb = await b.lookup(ROOT, b"f", CTX)  # type: ignore[arg-type]
        ha = (await a.open(ea.st_ino, os.O_RDWR, CTX)).fh  # type: ignore[arg-type]
        hb = (await b.open(eb.st_ino, os.O_RDWR, CTX)).fh  # type: ignore[arg-type]
        assert await b.read(hb, 0, 10) == b"v1" * 5  # b has the whole version (one fetch)
        await a.write(ha, 0, b"A" * 10)
        await b.write(hb, 9000, b"B" * 10)
        await a.flush(ha)
        try:
            await b.flush(hb)
            b_ok = True
        except pyfuse3.FUSEError as e:
            assert e.errno == errno.ESTALE
            b_ok = False
        await a.release(ha)
        await b.release(hb)
        await a.drain()
        await b.drain()
        return b_ok, await s1.files.read("f")


async def test_the_second_close_of_a_version_gets_estale(
    inproc_cluster: tuple[Configuration, list[Server]],
) -> None:
    cfg, _ = inproc_cluster
    b_ok, final = await _race(cfg, broken=False)
    assert not b_ok
    assert final == b"A" * 10 + (b"v1" * 5000)[10:]  # a's version, whole; none of b's bytes


async def test_broken_publish_without_claim_loses_an_update(
    inproc_cluster: tuple[Configuration, list[Server]],
) -> None:
    cfg, _ = inproc_cluster
    b_ok, final = await _race(cfg, broken=True)
    assert b_ok  # b was not told ...
    assert b"A" * 10 not in final  # ... and a's closed version is gone: the lost update


async def test_an_open_during_a_publication_waits_and_sees_the_whole_version(
    inproc_cluster: tuple[Configuration, list[Server]],
) -> None:
    cfg, _ = inproc_cluster
    v1, v2 = random.Random(1).randbytes(200_000), random.Random(2).randbytes(200_000)
    async with Store(cfg) as s1, Store(cfg) as s2:
        a, b = AresFS(s1), AresFS(s2)
        fi, _ = await a.create(ROOT, b"g", 0o644, os.O_RDWR, CTX)  # type: ignore[arg-type]
        await a.write(fi.fh, 0, v1)
        await a.flush(fi.fh)
        await a.write(fi.fh, 0, v2)
        started, go_on = asyncio.Event(), asyncio.Event()
        real = s1.files.write

        async def paused(*args: Any, **kwargs: Any) -> int:
            started.set()
            await go_on.wait()
            n: int = await real(*args, **kwargs)
            return n

        s1.files.write = paused  # type: ignore[method-assign]
        publishing = asyncio.ensure_future(a.flush(fi.fh))
        await started.wait()  # a's record carries the writing mark; its data is not written
        eb = await b.lookup(ROOT, b"g", CTX)  # type: ignore[arg-type]
        opening = asyncio.ensure_future(b.open(eb.st_ino, os.O_RDONLY, CTX))  # type: ignore[arg-type]
        await asyncio.sleep(0.5)
        assert not opening.done()  # b waits for the publication to end ...
        go_on.set()
        await publishing
        hb = (await opening).fh
        assert await b.read(hb, 0, len(v2) + 10) == v2  # ... and reads the new version, whole
        await b.release(hb)
        await a.release(fi.fh)
        await a.drain()


async def test_forget_drops_unreferenced_inodes_only(
    inproc_cluster: tuple[Configuration, list[Server]],
) -> None:
    cfg, _ = inproc_cluster
    async with Store(cfg) as s:
        fs = AresFS(s)
        fi, e = await fs.create(ROOT, b"h", 0o644, os.O_RDWR, CTX)  # type: ignore[arg-type]
        ino = e.st_ino
        assert (await fs.lookup(ROOT, b"h", CTX)).st_ino == ino  # type: ignore[arg-type]
        await fs.forget([(ino, 2)])  # the kernel let go, but a handle is open: kept
        assert (await fs.getattr(ino, CTX)).st_ino == ino  # type: ignore[arg-type]
        await fs.release(fi.fh)
        await fs.drain()
        assert (await fs.lookup(ROOT, b"h", CTX)).st_ino == ino  # type: ignore[arg-type]
        await fs.forget([(ino, 1)])  # no reference left: dropped, never reused
        with pytest.raises(pyfuse3.FUSEError):
            await fs.getattr(ino, CTX)  # type: ignore[arg-type]
        again = (await fs.lookup(ROOT, b"h", CTX)).st_ino  # type: ignore[arg-type]
        assert again != ino and (await fs.getattr(again, CTX)).st_size == 0  # type: ignore[arg-type]
