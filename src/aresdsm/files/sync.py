"""The blocking face of :class:`~aresdsm.files.Files`, run on a SyncStore's event loop."""

from __future__ import annotations

import io
from collections.abc import Callable, Coroutine
from typing import Any, Protocol, TypeVar

from ..config import DEFAULT_GROUP
from .codec import ChunkParams
from .layer import Files, FileStat

T = TypeVar("T")


class Runner(Protocol):
    """Runs a coroutine to completion on the store's event loop and returns its result."""

    def __call__(self, coro: Coroutine[Any, Any, T], /) -> T: ...


SPOOL_BYTES = 64 * 1024 * 1024
"""Sync handles keep up to this much in memory, the rest in a temporary file."""


class SyncFiles:
    def __init__(self, run: Runner, files: Files) -> None:
        """``run``: runs a coroutine to completion on the store's event loop and returns its
        result (:meth:`aresdsm.SyncStore._call`: safe from any thread)."""
        self._run = run
        self.aio = files

    def write(
        self,
        name: str,
        source: Any,
        *,
        group: str = DEFAULT_GROUP,
        params: ChunkParams | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        return self._run(
            self.aio.write(name, source, group=group, params=params, progress=progress)
        )

    def write_at(self, name: str, offset: int, data: bytes, *, group: str = DEFAULT_GROUP) -> int:
        """:meth:`aresdsm.files.Files.write_at`: overwrite bytes at ``offset``."""
        return self._run(self.aio.write_at(name, offset, data, group=group))

    def read(self, name: str, *, group: str = DEFAULT_GROUP) -> bytes:
        return self._run(self.aio.read(name, group=group))

    def read_into(self, name: str, sink: Any, *, group: str = DEFAULT_GROUP) -> int:
        return self._run(self.aio.read_into(name, sink, group=group))

    def read_range(
        self, name: str, offset: int, length: int | None, *, group: str = DEFAULT_GROUP
    ) -> bytes:
        """:meth:`aresdsm.files.Files.read_range`, collected: the bytes of
        ``[offset, offset + length)`` (``None``: to the end; cut short at the end of the file)."""
        buf = io.BytesIO()
        self._run(self.aio.read_range_into(name, offset, length, buf, group=group))
        return buf.getvalue()

    def read_range_into(
        self,
        name: str,
        offset: int,
        length: int | None,
        sink: Any,
        *,
        group: str = DEFAULT_GROUP,
    ) -> int:
        return self._run(self.aio.read_range_into(name, offset, length, sink, group=group))

    def open(self, name: str, mode: str = "rb", *, group: str = DEFAULT_GROUP) -> Any:
        """A local spooled copy for reading (``rb``), or a buffer written on close (``wb``)."""
        import tempfile

        if mode == "rb":
            tmp = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)  # noqa: SIM115 (returned)
            self.read_into(name, tmp, group=group)
            tmp.seek(0)
            return tmp
        if mode == "wb":
            return _WriteOnClose(self, name, group)
        raise ValueError(f"mode must be 'rb' or 'wb', not {mode!r}")

    def stat(self, name: str, *, group: str = DEFAULT_GROUP) -> FileStat:
        return self._run(self.aio.stat(name, group=group))

    def list(self, prefix: str = "", *, group: str = DEFAULT_GROUP) -> list[str]:
        return self._run(self.aio.list(prefix, group=group))

    def delete(self, name: str, *, group: str = DEFAULT_GROUP) -> None:
        self._run(self.aio.delete(name, group=group))

    def collect(
        self, name: str, *, group: str = DEFAULT_GROUP, grace_s: float | None = None
    ) -> int:
        return self._run(self.aio.collect(name, group=group, grace_s=grace_s))


class _WriteOnClose:
    def __init__(self, files: SyncFiles, name: str, group: str) -> None:
        import tempfile

        self._files = files
        self._name = name
        self._group = group
        self._tmp = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)  # noqa: SIM115

    def write(self, data: bytes) -> int:
        return self._tmp.write(data)

    def close(self) -> None:
        if self._tmp.closed:
            return
        self._tmp.seek(0)
        try:
            self._files.write(self._name, self._tmp, group=self._group)
        finally:
            self._tmp.close()

    def __enter__(self) -> _WriteOnClose:
        return self

    def __exit__(self, et: Any, e: Any, tb: Any) -> None:
        if et is None:
            self.close()
        else:
            self._tmp.close()
