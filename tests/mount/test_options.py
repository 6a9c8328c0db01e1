"""The mount's cache timeouts (docs/mount.md "Caching"): attributes for ``attr_timeout_s``,
names and listings for ``dir_timeout_s`` (kernel timeouts in every entry, and the mount's own
listing cache), both bounded."""

from __future__ import annotations

import asyncio
import os
from types import SimpleNamespace

import pyfuse3
import pytest

from aresdsm.cli import mount as cli_mount
from aresdsm.client import Store
from aresdsm.config import Configuration
from aresdsm.errors import ConfigurationError
from aresdsm.mount.fs import MAX_CACHE_TIMEOUT_S, AresFS, MountOptions
from aresdsm.server import Server

CTX = SimpleNamespace(uid=0, gid=0, pid=0, umask=0o022)
ROOT = pyfuse3.ROOT_INODE


async def _names(fs: AresFS) -> list[str]:
    fh = await fs.opendir(ROOT, CTX)  # type: ignore[arg-type]
    try:
        return [name for name, _ in fs._dir_handles[fh]]
    finally:
        await fs.releasedir(fh)


async def test_attribute_and_directory_timeouts_are_separate(
    inproc_cluster: tuple[Configuration, list[Server]],
) -> None:
    cfg, _ = inproc_cluster
    async with Store(cfg) as s1, Store(cfg) as s2:
        a = AresFS(s1)
        b = AresFS(s2, MountOptions(attr_timeout_s=30.0, dir_timeout_s=0.3))
        assert await _names(b) == []
        fi, _ = await a.create(ROOT, b"x", 0o644, os.O_RDWR, CTX)  # type: ignore[arg-type]
        await a.flush(fi.fh)
        await a.release(fi.fh)
        await a.drain()
        assert await _names(b) == []  # b's listing is cached ...
        await asyncio.sleep(0.5)
        assert await _names(b) == ["x"]  # ... for dir_timeout_s only
        e = await b.lookup(ROOT, b"x", CTX)  # type: ignore[arg-type]
        assert (e.entry_timeout, e.attr_timeout) == (0.3, 30.0)  # what the kernel is told
        d = AresFS(s2, MountOptions(attr_timeout_s=2.0))
        e = await d.lookup(ROOT, b"x", CTX)  # type: ignore[arg-type]
        assert (e.entry_timeout, e.attr_timeout) == (2.0, 2.0)  # (dir: attr's by default)


def test_timeouts_are_bounded() -> None:
    assert cli_mount.MAX_CACHE_TIMEOUT_S == MAX_CACHE_TIMEOUT_S
    store = SimpleNamespace(files=None)
    for bad in (
        MountOptions(attr_timeout_s=-1.0),
        MountOptions(dir_timeout_s=MAX_CACHE_TIMEOUT_S + 1),
    ):
        with pytest.raises(ConfigurationError, match="timeout_s must be within"):
            AresFS(store, bad)
