"""Online backup and restore (``ares backup FILE`` / ``ares restore FILE``).

A backup lists every group and every key of a running cluster (``Store.groups`` and
``Store.list``: the keys a quorum of the current configuration holds, docs/protocol.md §8.4) and
reads each object with an ordinary linearizable read (§4, §6), a few at a time, while clients keep
working. It is not a snapshot of one instant: each object's value is one that the object really
held at some moment during the backup (the read's linearization point), objects written or
deleted meanwhile may or may not appear, and an object deleted before the listing is not in it.

The archive is one uncompressed tar file:

- ``aresdsm-backup/objects/<n>`` -- the value of object *n*, as read;
- ``aresdsm-backup/index.jsonl`` -- one JSON line per object: group, key, tag ``[z, writer]``,
  size and SHA-256 of the value, and its member name;
- ``aresdsm-backup/manifest.json`` -- written last: format and version, creation time, the
  cluster's name, counts, total bytes, and the SHA-256 of the index.

It is written to ``FILE.partial``, fsynced and renamed to ``FILE`` only when complete, so a
``FILE`` is never a truncated backup. Restore checks the whole archive first (manifest, index
checksum, every value's size and checksum) and writes nothing if anything is wrong; then it writes
every object with an ordinary write (a new tag in the target cluster). Without ``overwrite`` an
object that already exists in the target (a read returns a value) is left as it is and counted as
skipped; with ``overwrite`` every archived object is written. Objects of the target that are not
in the archive are never deleted. The skip test is a read followed by a write, not one atomic
step: a value written to that key concurrently by another client may be overwritten.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import tarfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from .errors import AresError

FORMAT = "aresdsm-backup"
VERSION = 1
ROOT = "aresdsm-backup"
MAX_IN_FLIGHT = 8
"""Objects read (or written) concurrently."""
MAX_BUFFERED_BYTES = 256 * 1024 * 1024
"""Values read ahead of the archive writer at most (one value larger than this still goes)."""
MAX_INDEX_LINE_BYTES = 16 * 1024
MAX_MANIFEST_BYTES = 1024 * 1024


class BackupError(AresError):
    """A backup could not be written, or an archive is not a valid, intact backup."""


class _Source(Protocol):
    async def groups(self) -> list[str]: ...

    def iter_keys(
        self, prefix: str = "", *, group: str = ..., verify: bool = ...
    ) -> AsyncIterator[str]: ...

    async def read_tagged(self, key: str, *, group: str = ...) -> tuple[Any, bytes | None]: ...


class _Target(Protocol):
    async def read(self, key: str, *, group: str = ...) -> bytes | None: ...

    async def write(self, key: str, value: bytes, *, group: str = ...) -> Any: ...


Progress = Callable[[int, int, int], None]
"""Called with (objects done, bytes done, objects in all) as the work proceeds."""


@dataclass
class BackupResult:
    path: Path
    objects: int = 0
    bytes: int = 0
    groups: list[str] = field(default_factory=list)
    absent: int = 0
    """Keys listed but deleted before they were read (not archived)."""
    seconds: float = 0.0


@dataclass
class RestoreResult:
    objects: int = 0
    written: int = 0
    skipped: int = 0
    bytes: int = 0
    seconds: float = 0.0


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(f"{ROOT}/{name}")
    info.size = len(data)
    info.mtime = int(time.time())
    info.mode = 0o600
    tar.addfile(info, io.BytesIO(data))


async def backup(
    store: _Source,
    path: str | Path,
    *,
    cluster_name: str = "",
    groups: list[str] | None = None,
    progress: Progress | None = None,
    max_in_flight: int = MAX_IN_FLIGHT,
) -> BackupResult:
    """Read every object of ``groups`` (default: every group) into the archive ``path``."""
    started = time.perf_counter()
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    result = BackupResult(path)
    result.groups = sorted(groups) if groups is not None else await store.groups()
    keys: list[tuple[str, str]] = []
    for g in result.groups:  # keys only: O(keys) memory, then the values stream
        keys += [(g, k) async for k in store.iter_keys("", group=g, verify=False)]
    if progress is not None:
        progress(0, 0, len(keys))
    budget = asyncio.Semaphore(max_in_flight)
    buffered = _ByteBudget(MAX_BUFFERED_BYTES)
    queue: asyncio.Queue[asyncio.Task[tuple[str, str, Any, bytes | None]] | None] = asyncio.Queue(
        maxsize=max_in_flight
    )

    async def read_one(group: str, key: str) -> tuple[str, str, Any, bytes | None]:
        try:
            tag, value = await store.read_tagged(key, group=group)
            if value is not None:
                await buffered.take(len(value))
            return group, key, tag, value
        finally:
            budget.release()

    async def produce() -> None:
        try:
            for g, key in keys:
                await budget.acquire()
                await queue.put(asyncio.ensure_future(read_one(g, key)))
        finally:
            await queue.put(None)

    try:
        out: IO[bytes] = open(partial, "wb")  # noqa: SIM115, ASYNC230 - closed below
    except OSError as e:
        raise BackupError(f"cannot write {partial}: {e.strerror or e}") from None
    producer = asyncio.ensure_future(produce())
    index = io.BytesIO()
    try:
        with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
            while (task := await queue.get()) is not None:
                group, key, tag, value = await task
                if value is None:
                    result.absent += 1
                    if progress is not None:
                        progress(result.objects + result.absent, result.bytes, len(keys))
                    continue
                member = f"objects/{result.objects:09d}"
                await asyncio.to_thread(_add, tar, member, value)
                await buffered.give(len(value))
                line = {
                    "group": group,
                    "key": key,
                    "tag": [tag.z, tag.writer],
                    "size": len(value),
                    "sha256": _sha256(value),
                    "member": member,
                }
                index.write(json.dumps(line, ensure_ascii=False).encode() + b"\n")
                result.objects += 1
                result.bytes += len(value)
                if progress is not None:
                    progress(result.objects + result.absent, result.bytes, len(keys))
            await producer
            index_bytes = index.getvalue()
            _add(tar, "index.jsonl", index_bytes)
            manifest = {
                "format": FORMAT,
                "version": VERSION,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "cluster": cluster_name,
                "groups": result.groups,
                "objects": result.objects,
                "bytes": result.bytes,
                "index_sha256": _sha256(index_bytes),
                "consistency": "each object read linearizably; not a snapshot",
            }
            _add(tar, "manifest.json", json.dumps(manifest, indent=1).encode())
        out.flush()
        os.fsync(out.fileno())
        out.close()
        partial.replace(path)
    except BaseException:
        producer.cancel()
        while not queue.empty():
            t = queue.get_nowait()
            if t is not None:
                t.cancel()
        out.close()
        partial.unlink(missing_ok=True)
        raise
    result.seconds = time.perf_counter() - started
    return result


class _ByteBudget:
    """Bytes of values read but not yet archived, bounded (one larger value still passes)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._cond = asyncio.Condition()

    async def take(self, n: int) -> None:
        async with self._cond:
            await self._cond.wait_for(lambda: self.used == 0 or self.used + n <= self.limit)
            self.used += n

    async def give(self, n: int) -> None:
        async with self._cond:
            self.used -= n
            self._cond.notify_all()


@dataclass(frozen=True)
class Entry:
    group: str
    key: str
    tag: tuple[int, str]
    size: int
    sha256: str
    member: str


def verify(path: str | Path) -> tuple[dict[str, Any], list[Entry]]:
    """Check an archive completely (manifest, index checksum, every value); returns the manifest
    and the index. Raises :class:`BackupError` with the first problem found."""
    path = Path(path)
    try:
        tar = tarfile.open(path, mode="r:")  # noqa: SIM115 - closed by the with below
    except (OSError, tarfile.TarError) as exc:
        raise BackupError(f"{path} is not a readable backup archive: {exc}") from None
    with tar:
        manifest = _manifest(tar, path)
        index_bytes = _member(tar, "index.jsonl", path)
        if _sha256(index_bytes) != manifest.get("index_sha256"):
            raise BackupError(f"{path}: the index does not match the manifest's checksum")
        entries = _index(index_bytes, path)
        if len(entries) != manifest.get("objects"):
            raise BackupError(
                f"{path}: the index lists {len(entries)} objects, the manifest "
                f"{manifest.get('objects')}"
            )
        for e in entries:
            data = _member(tar, e.member, path)
            if len(data) != e.size or _sha256(data) != e.sha256:
                raise BackupError(
                    f"{path}: object {e.group}/{e.key} ({e.member}) does not match its checksum"
                )
    return manifest, entries


def _manifest(tar: tarfile.TarFile, path: Path) -> dict[str, Any]:
    raw = _member(tar, "manifest.json", path, max_bytes=MAX_MANIFEST_BYTES)
    try:
        manifest = json.loads(raw)
    except ValueError as e:
        raise BackupError(f"{path}: manifest.json is not JSON: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackupError(f"{path}: not an aresdsm backup (no {FORMAT} manifest)")
    if manifest.get("version") != VERSION:
        raise BackupError(
            f"{path}: backup format version {manifest.get('version')!r}; this aresdsm reads "
            f"version {VERSION}"
        )
    return manifest


def _member(tar: tarfile.TarFile, name: str, path: Path, *, max_bytes: int | None = None) -> bytes:
    try:
        info = tar.getmember(f"{ROOT}/{name}")
    except KeyError:
        raise BackupError(f"{path}: {ROOT}/{name} is missing (incomplete archive?)") from None
    if not info.isfile() or (max_bytes is not None and info.size > max_bytes):
        raise BackupError(f"{path}: {ROOT}/{name} is not a valid member")
    f = tar.extractfile(info)
    if f is None:
        raise BackupError(f"{path}: cannot read {ROOT}/{name}")
    with f:
        return f.read()


def _index(raw: bytes, path: Path) -> list[Entry]:
    out = []
    for n, line in enumerate(raw.splitlines(), 1):
        if len(line) > MAX_INDEX_LINE_BYTES:
            raise BackupError(f"{path}: index line {n} is too long")
        try:
            d = json.loads(line)
            e = Entry(
                str(d["group"]),
                str(d["key"]),
                (int(d["tag"][0]), str(d["tag"][1])),
                int(d["size"]),
                str(d["sha256"]),
                str(d["member"]),
            )
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise BackupError(f"{path}: index line {n} is malformed: {exc}") from None
        if not e.member.startswith("objects/") or ".." in e.member:
            raise BackupError(f"{path}: index line {n} names an invalid member {e.member!r}")
        out.append(e)
    return out


async def restore(
    store: _Target,
    path: str | Path,
    *,
    overwrite: bool = False,
    progress: Progress | None = None,
    max_in_flight: int = MAX_IN_FLIGHT,
) -> RestoreResult:
    """Verify the archive, then write its objects into the cluster (see the module docstring
    for ``overwrite``)."""
    started = time.perf_counter()
    path = Path(path)
    _, entries = await asyncio.to_thread(verify, path)
    result = RestoreResult(objects=len(entries))
    gate = asyncio.Semaphore(max_in_flight)

    async def put(e: Entry, value: bytes) -> None:
        try:
            if not overwrite and await store.read(e.key, group=e.group) is not None:
                result.skipped += 1
            else:
                await store.write(e.key, value, group=e.group)
                result.written += 1
                result.bytes += len(value)
            if progress is not None:
                progress(result.written + result.skipped, result.bytes, len(entries))
        finally:
            gate.release()

    tasks: set[asyncio.Task[None]] = set()
    try:
        with tarfile.open(path, mode="r:") as tar:
            for e in entries:
                await gate.acquire()
                for t in [t for t in tasks if t.done()]:
                    tasks.discard(t)
                    t.result()  # the first failed write stops the restore
                value = _member(tar, e.member, path)
                if len(value) != e.size or _sha256(value) != e.sha256:  # changed since verify
                    gate.release()
                    raise BackupError(f"{path}: {e.member} changed while restoring")
                tasks.add(asyncio.ensure_future(put(e, value)))
            await asyncio.gather(*tasks)
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    result.seconds = time.perf_counter() - started
    return result
