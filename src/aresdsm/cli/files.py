"""``ares file put|get|write-at|ls|stat|rm|gc``: fragmented files (docs/protocol.md §9.2).

Files stream: ``put`` chunks and writes the local file as it reads it, ``get`` writes the blocks
as they arrive (into a temporary file next to the target, renamed at the end, so a failed or
interrupted read never leaves a torn file). A progress bar with bytes/s and ETA (``put``; ``get``
shows bytes and bytes/s: a file's size is known only by walking its list) is drawn when stderr is
a terminal; otherwise the commands are quiet. ``get --offset/--length`` reads only the blocks
that cover the range; ``write-at`` changes bytes in place, rewriting only the blocks around them.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from .. import runtime
from ..config import DEFAULT_GROUP
from ..errors import AresError
from .common import _connect, cluster_option, console, err_console, main


class LocalFileError(AresError):
    """A local file could not be read or written (no space left, permissions)."""


@main.group("file")
def file_group() -> None:
    """Fragmented files: put, get, ls, stat, rm (docs/protocol.md §9.2)."""


@contextlib.contextmanager
def _progress(total: int | None, what: str) -> Iterator[Callable[[int], None]]:
    if not err_console.is_terminal:
        yield lambda n: None
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err_console,
    ) as bar:
        task = bar.add_task(what, total=total)
        yield lambda n: bar.advance(task, n)


def _params(avg_kib: int | None, min_kib: int | None, max_kib: int | None) -> Any:
    if avg_kib is None and min_kib is None and max_kib is None:
        return None
    from ..files import ChunkParams

    avg = (avg_kib or 1024) * 1024
    return ChunkParams(
        min_bytes=(min_kib * 1024) if min_kib else avg // 4,
        avg_bytes=avg,
        max_bytes=(max_kib * 1024) if max_kib else avg * 4,
    )


@file_group.command("put")
@click.argument("local")
@click.argument("name")
@click.option("--group", default=DEFAULT_GROUP, show_default=True)
@click.option("--avg-kib", type=click.IntRange(1), help="Average block size (default 1024).")
@click.option("--min-kib", type=click.IntRange(1), help="Minimum block size (default avg/4).")
@click.option("--max-kib", type=click.IntRange(1), help="Maximum block size (default avg*4).")
@cluster_option
def put_file(
    local: str,
    name: str,
    group: str,
    avg_kib: int | None,
    min_kib: int | None,
    max_kib: int | None,
    cluster_path: str,
) -> None:
    """Write LOCAL (a path, or - for stdin) to file NAME; only changed blocks are written."""
    from ..files.memory import bound_malloc_cache

    bound_malloc_cache()  # RSS bounded by the blocks in flight, not the bytes moved
    params = _params(avg_kib, min_kib, max_kib)
    if local == "-":
        src: Any = sys.stdin.buffer
        total = None
    else:
        try:
            src = open(local, "rb")  # noqa: SIM115 (closed below)
            total = os.fstat(src.fileno()).st_size
        except OSError as e:
            raise LocalFileError(f"cannot read {local}: {e.strerror}") from None

    async def go(progress: Callable[[int], None]) -> int:
        async with _connect(cluster_path) as store:
            size: int = await store.files.write(
                name, src, group=group, params=params, progress=progress
            )
            return size

    try:
        with _progress(total, f"put {name}") as progress:
            size = runtime.run(go(progress))
    finally:
        if src is not sys.stdin.buffer:
            src.close()
    if err_console.is_terminal:
        err_console.print(f"wrote {size} bytes to file {escape(name)!r}")


MAX_PATCH_BYTES = 64 * 1024 * 1024
"""``write-at`` holds the new bytes in memory (the blocks around them are re-chunked with
them); a bigger change is a ``put`` (which writes only the blocks that changed anyway)."""


@file_group.command("write-at")
@click.argument("name")
@click.argument("offset", type=click.IntRange(min=0))
@click.argument("local")
@click.option("--group", default=DEFAULT_GROUP, show_default=True)
@cluster_option
def write_at_file(name: str, offset: int, local: str, group: str, cluster_path: str) -> None:
    """Overwrite the bytes of file NAME at OFFSET with LOCAL (a path, or - for stdin), without
    re-putting the file: only the blocks around them are rewritten. OFFSET may be the file's
    size (append); at most 64 MiB at a time."""
    try:
        if local == "-":
            data = sys.stdin.buffer.read(MAX_PATCH_BYTES + 1)
        else:
            with open(local, "rb") as f:
                data = f.read(MAX_PATCH_BYTES + 1)
    except OSError as e:
        raise LocalFileError(f"cannot read {local}: {e.strerror}") from None
    if len(data) > MAX_PATCH_BYTES:
        raise click.UsageError(
            f"{local}: more than {MAX_PATCH_BYTES} bytes; write the whole file with 'ares file put'"
        )

    async def go() -> int:
        async with _connect(cluster_path) as store:
            size: int = await store.files.write_at(name, offset, data, group=group)
            return size

    size = runtime.run(go())
    if err_console.is_terminal:
        err_console.print(
            f"wrote {len(data)} bytes at {offset}; file {escape(name)!r} is {size} bytes"
        )


@file_group.command("get")
@click.argument("name")
@click.argument("local")
@click.option("--group", default=DEFAULT_GROUP, show_default=True)
@click.option(
    "--offset",
    type=click.IntRange(min=0),
    default=0,
    help="Start at this byte (only the blocks that cover the range are read).",
)
@click.option(
    "--length", type=click.IntRange(min=0), help="At most this many bytes (default: to the end)."
)
@cluster_option
def get_file(
    name: str, local: str, group: str, offset: int, length: int | None, cluster_path: str
) -> None:
    """Read file NAME (or the range --offset/--length of it) into LOCAL (a path, or - for
    stdout)."""
    from ..files.memory import bound_malloc_cache

    bound_malloc_cache()
    ranged = offset != 0 or length is not None

    async def read(store: Any, sink: Any) -> int:
        if ranged:
            r: int = await store.files.read_range_into(name, offset, length, sink, group=group)
            return r
        n: int = await store.files.read_into(name, sink, group=group)
        return n

    if local == "-":

        async def to_stdout() -> int:
            async with _connect(cluster_path) as store:
                return await read(store, sys.stdout.buffer)

        runtime.run(to_stdout())
        sys.stdout.buffer.flush()
        return
    target = Path(local)
    total: int | None = None  # the size is known only by walking the list: no second pass
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent or ".")
    except OSError as e:
        raise LocalFileError(f"cannot write {local}: {e.strerror}") from None

    async def go(sink: Any) -> int:
        async with _connect(cluster_path) as store:
            return await read(store, sink)

    try:
        with open(fd, "wb") as out, _progress(total, f"get {name}") as progress:
            sink = _Counting(out, progress)
            try:
                runtime.run(go(sink))
                out.flush()
                os.fsync(out.fileno())
            except OSError as e:
                raise LocalFileError(f"cannot write {local}: {e.strerror or e}") from None
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


class _Counting:
    """A seekable sink that reports progress (a restarted read seeks back to 0)."""

    def __init__(self, out: Any, progress: Callable[[int], None]) -> None:
        self._out = out
        self._progress = progress

    def write(self, b: bytes) -> int:
        n: int = self._out.write(b)
        self._progress(len(b))
        return n

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return int(self._out.tell())

    def seek(self, pos: int) -> int:
        return int(self._out.seek(pos))

    def truncate(self) -> int:
        return int(self._out.truncate())


@file_group.command("ls")
@click.argument("prefix", default="")
@click.option("--group", default=DEFAULT_GROUP, show_default=True)
@cluster_option
def ls_files(prefix: str, group: str, cluster_path: str) -> None:
    """List the files of GROUP whose names start with PREFIX."""

    async def go() -> list[str]:
        async with _connect(cluster_path) as store:
            names: list[str] = await store.files.list(prefix, group=group)
            return names

    for n in runtime.run(go()):
        console.print(escape(n))


@file_group.command("stat")
@click.argument("name")
@click.option("--group", default=DEFAULT_GROUP, show_default=True)
@cluster_option
def stat_file(name: str, group: str, cluster_path: str) -> None:
    """Size, blocks, version and configuration of file NAME."""

    async def go() -> Any:
        async with _connect(cluster_path) as store:
            return await store.files.stat(name, group=group)

    st = runtime.run(go())
    t = Table(show_header=False, box=None)
    p = st.params
    for k, v in (
        ("name", st.name),
        ("group", st.group),
        ("size", f"{st.size_bytes} bytes"),
        ("blocks", str(st.blocks)),
        ("version", st.version),
        ("chunking", f"min {p.min_bytes} / avg {p.avg_bytes} / max {p.max_bytes} bytes"),
        ("configuration", st.configuration),
    ):
        t.add_row(k, escape(v))
    console.print(t)


@file_group.command("rm")
@click.argument("name")
@click.option("--group", default=DEFAULT_GROUP, show_default=True)
@cluster_option
def rm_file(name: str, group: str, cluster_path: str) -> None:
    """Delete file NAME (its blocks are unlinked and reclaimed)."""

    async def go() -> None:
        async with _connect(cluster_path) as store:
            await store.files.delete(name, group=group)

    runtime.run(go())


@file_group.command("gc")
@click.argument("name")
@click.option("--group", default=DEFAULT_GROUP, show_default=True)
@click.option(
    "--grace-s",
    type=click.FloatRange(min=0),
    default=600.0,
    show_default=True,
    help="Collect write attempts older than this (a writer that died before linking).",
)
@cluster_option
def gc_file(name: str, group: str, grace_s: float, cluster_path: str) -> None:
    """Reclaim the blocks of write attempts on NAME that never linked them."""

    async def go() -> int:
        async with _connect(cluster_path) as store:
            n: int = await store.files.collect(name, group=group, grace_s=grace_s)
            return n

    console.print(f"reclaimed {runtime.run(go())} orphan block(s)")
