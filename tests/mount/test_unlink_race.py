"""Unlink against a re-creation from another mount (docs/mount.md "Operations"), driven
in-process through two mounts' operations (no kernel), each with its own Store:

* the record: an unlink removes only the version its mount read; if another mount removed and
  re-created the name in between, the unlink answers ESTALE and the new file stays;
* the data: the layer's file of a removed name is deleted in the background; a mount that
  re-creates the name meanwhile waits for that deletion (the GONE record carries a ``writing``
  mark while it runs), so the deletion never takes the new file's data.
"""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import pyfuse3
import pytest

from aresdsm.client import Store
from aresdsm.config import Configuration
from aresdsm.mount.fs import AresFS, MountOptions
from aresdsm.mount.meta import meta_key
from aresdsm.server import Server

CTX = SimpleNamespace(uid=0, gid=0, pid=0, umask=0o022)
ROOT = pyfuse3.ROOT_INODE


async def _put(fs: AresFS, name: bytes, data: bytes) -> None:
    fi, _ = await fs.create(ROOT, name, 0o644, os.O_RDWR, CTX)  # type: ignore[arg-type]
    await fs.write(fi.fh, 0, data)
    await fs.flush(fi.fh)
    await fs.release(fi.fh)
    await fs.drain()


async def _content(cfg: Configuration, name: bytes) -> bytes:
    """The file as a third, fresh mount reads it."""
    async with Store(cfg) as s:
        fs = AresFS(s)
        e = await fs.lookup(ROOT, name, CTX)  # type: ignore[arg-type]
        fh = (await fs.open(e.st_ino, os.O_RDONLY, CTX)).fh  # type: ignore[arg-type]
        try:
            return await fs.read(fh, 0, e.st_size + 1)
        finally:
            await fs.release(fh)


def _pause(obj: Any, attr: str, when: Callable[..., bool]) -> tuple[asyncio.Event, asyncio.Event]:
    """Make ``obj.attr`` (an async method) stop at its first call for which ``when(*args)`` is
    true: (reached, go_on)."""
    real: Callable[..., Awaitable[Any]] = getattr(obj, attr)
    reached, go_on = asyncio.Event(), asyncio.Event()

    async def paused(*args: Any, **kwargs: Any) -> Any:
        if not reached.is_set() and when(*args):
            reached.set()
            await go_on.wait()
        return await real(*args, **kwargs)

    setattr(obj, attr, paused)
    return reached, go_on


@pytest.mark.parametrize("broken", [False, True], ids=["correct", "broken_unconditional"])
async def test_unlink_of_a_name_recreated_meanwhile_answers_estale_and_keeps_it(
    inproc_cluster: tuple[Configuration, list[Server]], broken: bool
) -> None:
    cfg, _ = inproc_cluster
    async with Store(cfg) as s1, Store(cfg) as s2:
        a, b = AresFS(s1), AresFS(s2)
        a.broken_unlink_unconditional = broken
        await _put(a, b"f", b"old" * 1000)
        await b.lookup(ROOT, b"f", CTX)  # type: ignore[arg-type]
        # a's unlink read the record (the old version) and is about to write GONE on it ...
        reached, go_on = _pause(s1, "cvr_write", lambda key, *_: key == meta_key("f"))
        unlinking = asyncio.ensure_future(a.unlink(ROOT, b"f", CTX))  # type: ignore[arg-type]
        await reached.wait()
        # ... when b removes the name and creates a new file under it
        await b.unlink(ROOT, b"f", CTX)  # type: ignore[arg-type]
        await b.drain()
        await _put(b, b"f", b"new" * 1000)
        go_on.set()
        if broken:  # a removes b's new file, which it never saw
            await unlinking
            await a.drain()
            with pytest.raises(pyfuse3.FUSEError):
                await _content(cfg, b"f")
            return
        with pytest.raises(pyfuse3.FUSEError) as e:
            await unlinking  # the version a saw is gone: a removes nothing
        assert e.value.errno == errno.ESTALE
        await a.drain()
        assert await _content(cfg, b"f") == b"new" * 1000


@pytest.mark.parametrize("broken", [False, True], ids=["correct", "broken_without_mark"])
async def test_a_recreation_waits_for_the_deletion_of_the_removed_data(
    inproc_cluster: tuple[Configuration, list[Server]], broken: bool
) -> None:
    cfg, _ = inproc_cluster
    async with Store(cfg) as s1, Store(cfg) as s2:
        a = AresFS(s1)
        a.broken_delete_without_mark = broken
        b = AresFS(s2, MountOptions(publish_wait_s=60.0))
        await _put(a, b"g", b"old" * 1000)
        # a's unlink returned (the name is gone); its background deletion of the data is slow
        reached, go_on = _pause(s1.files, "delete", lambda name, *_: name == "g")
        await a.unlink(ROOT, b"g", CTX)  # type: ignore[arg-type]
        await reached.wait()
        meta_reads = 0
        real_read = s2.read_tagged

        async def counted(key: str, *args: Any, **kwargs: Any) -> Any:
            nonlocal meta_reads
            meta_reads += key == meta_key("g")
            return await real_read(key, *args, **kwargs)

        s2.read_tagged = counted  # type: ignore[method-assign]
        creating = asyncio.ensure_future(_put(b, b"g", b"new" * 1000))
        # b either finishes its file at once (then a's deletion, let go below, takes b's data)
        # or keeps reading the record: it waits for a's deletion to end (the record's mark)
        for _ in range(2000):
            if creating.done() or meta_reads >= 3:
                break
            await asyncio.sleep(0.01)
        go_on.set()
        await a.drain()
        await creating
        if broken:  # b did not wait: a's deletion took b's new data
            assert await _content(cfg, b"g") != b"new" * 1000
            return
        assert await _content(cfg, b"g") == b"new" * 1000
