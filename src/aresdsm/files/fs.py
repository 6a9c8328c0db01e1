"""An fsspec filesystem for fragmented files (docs/protocol.md §9.2): ``ares://NAME``.

Registered under the protocol ``ares`` by the ``fsspec.specs`` entry point (install extra
``fsspec``), so that::

    pandas.read_csv("ares://data/x.csv", storage_options={"cluster": "ares-data/cluster.toml"})
    with fsspec.open("ares://data/x.csv", "wb", cluster=...) as f: f.write(b"...")

work. The path after ``ares://`` is the file name; the group is the ``group`` storage option
(default ``default``). Reading spools the file into a local temporary file (memory up to
64 MiB, then disk) and serves it from there; writing spools and writes the file, streaming,
when it is closed. Names are flat, ``/`` separates pseudo-directories for ``ls``.
"""

from __future__ import annotations

import io
import threading
from typing import Any

from fsspec.spec import AbstractFileSystem

from ..config import DEFAULT_GROUP
from .layer import NoSuchFile
from .sync import SyncFiles


class AresFileSystem(AbstractFileSystem):  # type: ignore[misc]
    protocol = "ares"
    root_marker = ""

    def __init__(
        self,
        cluster: str | None = None,
        group: str = DEFAULT_GROUP,
        timeout_s: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        from ..cli.common import _default_cluster, chain_cache_path
        from ..client import connect_sync
        from ..config import load_cluster_file

        path = cluster or _default_cluster()
        cf = load_cluster_file(path)
        if timeout_s is not None:
            import dataclasses

            cf = dataclasses.replace(cf, client=dataclasses.replace(cf.client, timeout_s=timeout_s))
        self._sync = connect_sync(cf, cseq_cache=chain_cache_path(path))
        self.group = group
        self._lock = threading.Lock()

    @property
    def files(self) -> SyncFiles:
        return self._sync.files

    @classmethod
    def _strip_protocol(cls, path: Any) -> str:
        p = str(path)
        if p.startswith("ares://"):
            p = p[len("ares://") :]
        return p.strip("/")

    def _names(self, prefix: str) -> list[str]:
        with self._lock:
            return self.files.list(prefix, group=self.group)

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        path = self._strip_protocol(path)
        head = f"{path}/" if path else ""
        entries: dict[str, dict[str, Any]] = {}
        for n in self._names(head):
            rest = n[len(head) :]
            if "/" in rest:
                d = head + rest.split("/", 1)[0]
                entries[d] = {"name": d, "size": 0, "type": "directory"}
            else:
                entries[n] = self.info(n)
        if not entries and path:
            info = self.info(path)  # a file: ls of a file lists the file
            entries[path] = info
        out = sorted(entries.values(), key=lambda e: e["name"])
        return out if detail else [e["name"] for e in out]

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        path = self._strip_protocol(path)
        try:
            with self._lock:
                st = self.files.stat(path, group=self.group)
        except NoSuchFile:
            if not path or self._names(path + "/"):
                return {"name": path, "size": 0, "type": "directory"}
            raise FileNotFoundError(path) from None
        return {
            "name": path,
            "size": st.size_bytes,
            "type": "file",
            "blocks": st.blocks,
            "version": st.version,
        }

    def cat_file(
        self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any
    ) -> bytes:
        """Bytes ``[start, end)`` of a file (negative: from its end), by a range read
        (:meth:`aresdsm.files.Files.read_range`): only the covering blocks are read."""
        path = self._strip_protocol(path)
        if (start is not None and start < 0) or (end is not None and end < 0):
            size = int(self.info(path)["size"])
            start = None if start is None else max(0, size + start) if start < 0 else start
            end = None if end is None else max(0, size + end) if end < 0 else end
        lo = start or 0
        length = None if end is None else max(0, end - lo)
        with self._lock:
            return self.files.read_range(path, lo, length, group=self.group)

    def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        path = self._strip_protocol(path)
        if "r" in mode:
            with self._lock:
                return self.files.open(path, "rb", group=self.group)
        if "w" in mode:
            return _WriteFile(self, path)
        raise ValueError(f"mode {mode!r} is not supported (rb, wb)")

    def _rm(self, path: str) -> None:
        with self._lock:
            self.files.delete(self._strip_protocol(path), group=self.group)

    def rm_file(self, path: str) -> None:
        self._rm(path)

    def mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        pass  # directories are implied by names

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        pass


class _WriteFile(io.RawIOBase):
    """Spools what is written; writes the file when closed."""

    def __init__(self, fs: AresFileSystem, path: str) -> None:
        super().__init__()
        self._fs = fs
        self._path = path
        with fs._lock:
            self._handle = fs.files.open(path, "wb", group=fs.group)

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        data = bytes(b)
        self._handle.write(data)
        return len(data)

    def close(self) -> None:
        if self.closed:
            return
        try:
            with self._fs._lock:
                self._handle.close()
        finally:
            super().close()
