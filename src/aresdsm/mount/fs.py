"""``ares mount``: a POSIX file system (FUSE, pyfuse3) over the large-object layer
(docs/protocol.md §9.2; semantics in docs/mount.md).

The mount sits above the client and the files layer and uses only their public API
(``Store.read_tagged``, ``Store.cvr_write``, ``Store.keys``, ``store.files``); nothing below
imports it.

* A file ``a/b/c`` of the mount is the layer's file ``a/b/c`` of the mounted group plus a small
  coverable register ``fsmeta:a/b/c`` (:mod:`.meta`) with its kind, mode, owner, size and mtime.
  Directories are implicit (every prefix of a name ending at ``/``) and explicit (a record of
  kind DIR written by ``mkdir``, so an empty directory exists).
* An open file is a sparse local temporary file (the data cache of that open file only): a read
  fetches the ranges it needs with the layer's range read (only the covering blocks; a
  sequential reader gets a growing window, then the rest of the file streamed), and fetched
  bytes join the copy only once the record shows the version opened is still the newest (else
  the unfetched parts are ESTALE: one version per open). Writes go to the copy, and
  ``close``/``fsync`` publish it as one new version with the layer's incremental write (only
  changed blocks are written): first a coverable write of the record on the version opened (the
  claim: a mount that lost the race answers ESTALE and writes nothing), then the data, then the
  record again without its ``writing`` mark.
* ``unlink`` writes GONE on the version it read (ESTALE if another mount changed the name
  since) with a ``writing`` mark that makes re-creators wait until the data is deleted.
* Attributes are cached for ``attr_timeout_s`` (also the kernel's attribute timeout), names and
  directory listings for ``dir_timeout_s`` (also the kernel's entry timeout; by default the
  same).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import errno
import functools
import logging
import os
import secrets
import stat
import tempfile
import time
from collections.abc import AsyncGenerator, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

import pyfuse3

from ..config import DEFAULT_GROUP
from ..errors import AresError, ConfigurationError, OperationError
from ..files import FileChanged, FileConflict, NoSuchFile
from ..files.layer import GENESIS_PREFIX
from ..tags import TAG0, Tag
from .meta import DIR, FILE, GONE, LINK, META_PREFIX, Meta, decode, encode, meta_key

log = logging.getLogger("aresdsm.mount")

MAX_PATH_BYTES = 448
"""A mounted path (the layer's block keys add an id and a prefix to it; keys are limited to
512 bytes)."""
MAX_SEGMENT_BYTES = 255
LIST_READS_IN_FLIGHT = 64
MAX_META_RETRIES = 8
MAX_CACHE_TIMEOUT_S = 3600.0
"""The longest attribute or directory cache timeout accepted (changes of other mounts would
stay unseen for that long)."""
MAX_CACHED_NAMES = 65536
"""Records and listings cached at most (expired ones are dropped first, then all)."""
BLOCK_SIZE = 128 * 1024
"""``st_blksize``: programs like cp size their buffers by it (FUSE writes up to 128 KiB)."""
READ_MIN_BYTES = 256 * 1024
"""The least an open file fetches at once (the layer's smallest block: a random read costs
the one or two blocks that cover it, and its neighbourhood is then local)."""
READ_MAX_BYTES = 1024 * 1024
"""Sequential reads double the window up to this and keep one window ahead; a reader that
goes on sequentially after that gets the rest of the file streamed (one range read to the end,
as ``cat`` or ``cp`` want it)."""
CHECK_EVERY_BYTES = 4 * 1024 * 1024
"""A fetch checks the record (and hands its bytes to readers) at least this often, and after
every piece while a reader waits for it."""

P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True)
class MountOptions:
    group: str = DEFAULT_GROUP
    attr_timeout_s: float = 1.0
    """Attributes: the kernel's attribute cache and this mount's cache of records."""
    dir_timeout_s: float | None = None
    """Names and listings: the kernel's entry cache (name -> inode) and this mount's cache of
    directory listings (None: ``attr_timeout_s``)."""
    publish_wait_s: float = 10.0
    """How long an opener waits for another mount's publication of the file to end."""
    cache_dir: str | None = None
    """Where open files keep their local copy (default: the system's temporary directory)."""


def _errors(
    fn: Callable[P, Coroutine[Any, Any, T]],
) -> Callable[P, Coroutine[Any, Any, T]]:
    """Map the library's errors to errno values (pyfuse3 ends its main loop on any exception
    that is not a FUSEError)."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        t0 = time.perf_counter()
        try:
            return await fn(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except NoSuchFile:
            raise pyfuse3.FUSEError(errno.ENOENT) from None
        except FileConflict as e:
            log.warning("%s: %s", fn.__name__, e)
            raise pyfuse3.FUSEError(errno.ESTALE) from None
        except ConfigurationError as e:
            log.warning("%s: %s", fn.__name__, e)
            raise pyfuse3.FUSEError(errno.EINVAL) from None
        except (AresError, OperationError, OSError, TimeoutError) as e:
            log.warning("%s: %s: %s", fn.__name__, type(e).__name__, e)
            raise pyfuse3.FUSEError(errno.EIO) from None
        except Exception:
            log.exception("%s failed", fn.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None
        finally:
            if log.isEnabledFor(logging.DEBUG):
                log.debug("%s %.1f ms", fn.__name__, (time.perf_counter() - t0) * 1000)

    return wrapper


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def _parent(path: str) -> str:
    return path.rpartition("/")[0]


def _decode_name(name: bytes) -> str:
    if len(name) > MAX_SEGMENT_BYTES:
        raise pyfuse3.FUSEError(errno.ENAMETOOLONG)
    try:
        s = name.decode()
    except UnicodeDecodeError:
        raise pyfuse3.FUSEError(errno.EINVAL) from None
    if any(ord(c) < 32 or ord(c) == 127 for c in s):
        raise pyfuse3.FUSEError(errno.EINVAL)
    return s


class _Ranges:
    """Disjoint, sorted byte ranges ``[start, end)``: the parts of an open file's local copy
    that hold the file's bytes (fetched from the layer or written here)."""

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []

    def add(self, a: int, b: int) -> None:
        if a >= b:
            return
        i = bisect.bisect_left(self.ends, a)  # the first range that ends at or after a
        j = bisect.bisect_right(self.starts, b)  # ranges from i to j touch [a, b)
        if i < j:
            a = min(a, self.starts[i])
            b = max(b, self.ends[j - 1])
        self.starts[i:j] = [a]
        self.ends[i:j] = [b]

    def clip(self, limit: int) -> None:
        """Forget everything at or after ``limit``."""
        i = bisect.bisect_left(self.ends, limit)
        del self.starts[i + 1 :], self.ends[i + 1 :]
        if i < len(self.starts):
            if self.starts[i] >= limit:
                del self.starts[i], self.ends[i]
            else:
                self.ends[i] = limit

    def missing(self, a: int, b: int) -> list[tuple[int, int]]:
        """The parts of ``[a, b)`` not covered."""
        out: list[tuple[int, int]] = []
        i = bisect.bisect_right(self.ends, a)
        while a < b:
            if i >= len(self.starts) or self.starts[i] >= b:
                out.append((a, b))
                break
            if self.starts[i] > a:
                out.append((a, self.starts[i]))
            a = max(a, self.ends[i])
            i += 1
        return out


def _unclaimed(of: _Open, a: int, b: int) -> int | None:
    """The first offset in ``[a, b)`` that is neither in the local copy nor being fetched."""
    for ga, gb in of.gaps(a, b):
        p = ga
        moved = True
        while moved and p < gb:
            moved = False
            for f in of.fetches:
                if f.start <= p < f.end:
                    p, moved = f.end, True
        if p < gb:
            return p
    return None


def _claim_end(of: _Open, a: int, b: int) -> int:
    """Where a fetch from ``a`` (which no fetch holds) should end, at most ``b``: before the
    end of the opened version and before the next fetch in flight (never twice the same
    bytes)."""
    end = min(b, of.remote_size)
    for f in of.fetches:
        if a < f.start < end:
            end = f.start
    return end


class StaleVersion(Exception):
    """The version an open file shows is no longer the file's newest (another mount
    published, renamed or removed it) and a part of it this mount has not fetched was asked
    for: ESTALE (docs/mount.md)."""


@dataclass
class _Fetch:
    start: int
    end: int
    task: asyncio.Future[None]


@dataclass
class _Open:
    """One file open in this mount (all of its handles share it): the local copy, filled on
    demand with the ranges that reads ask for (docs/mount.md "Consistency")."""

    ino: int
    path: str
    """The name whose data it fetches (follows renames; kept after an unlink)."""
    tmp: Any
    meta: Meta
    base: Tag
    size: int
    remote_size: int = 0
    """Bytes below this offset are the opened version's and may still have to be fetched from
    the layer; bytes at or after it are this mount's own (written, or zeros)."""
    present: _Ranges = field(default_factory=_Ranges)
    fetches: list[_Fetch] = field(default_factory=list)
    lost: bool = False
    """A fetch found the record moved on since the open: the version's missing parts are gone."""
    window: int = 0
    read_end: int = 0
    dirty: bool = False
    published: bool = True
    stale: bool = False
    unlinked: bool = False
    refs: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    progress: asyncio.Event = field(default_factory=asyncio.Event)
    """Set (and replaced) whenever fetched bytes joined the local copy or a fetch failed."""
    waiting: int = 0
    """Reads waiting for a fetch."""
    own_writes: int = 0
    """This mount's record writes under way that leave the data as it is (chmod, utimes,
    unlink): a fetch that sees the record move waits for them before it concludes."""
    own_idle: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def fd(self) -> int:
        return int(self.tmp.fileno())

    def wake(self) -> None:
        self.progress.set()
        self.progress = asyncio.Event()

    @contextlib.contextmanager
    def own_write(self) -> Iterator[None]:
        self.own_writes += 1
        self.own_idle.clear()
        try:
            yield
        finally:
            self.own_writes -= 1
            if not self.own_writes:
                self.own_idle.set()

    def gaps(self, a: int, b: int) -> list[tuple[int, int]]:
        """The parts of ``[a, b)`` that still have to be fetched."""
        return self.present.missing(a, min(b, self.remote_size))

    def place(self, pos: int, data: bytes) -> None:
        """Fetched bytes at ``pos``: written where the local copy has nothing of its own (a
        write or a truncation here since the fetch began wins). Not yet marked present: the
        fetch is checked against the record first."""
        for a, b in self.gaps(pos, pos + len(data)):
            os.pwrite(self.fd, memoryview(data)[a - pos : b - pos], a)

    def wrote(self, a: int, b: int) -> None:
        self.present.add(a, b)

    def truncate(self, length: int) -> None:
        os.ftruncate(self.fd, length)
        self.remote_size = min(self.remote_size, length)
        self.present.clip(length)
        self.size = length


class AresFS(pyfuse3.Operations):
    """The pyfuse3 operations of one mount of one group."""

    enable_writeback_cache = False

    def __init__(self, store: Any, options: MountOptions | None = None) -> None:
        super().__init__()
        self.store = store
        self.files = store.files
        self.opts = options or MountOptions()
        self.group = self.opts.group
        for what, t in (("attr", self.opts.attr_timeout_s), ("dir", self.opts.dir_timeout_s)):
            if t is not None and not 0 <= t <= MAX_CACHE_TIMEOUT_S:
                raise ConfigurationError(
                    f"{what}_timeout_s must be within 0..{MAX_CACHE_TIMEOUT_S:g} s, not {t!r}"
                )
        self._dir_timeout_s = (
            self.opts.attr_timeout_s if self.opts.dir_timeout_s is None else self.opts.dir_timeout_s
        )
        self.writer_id = secrets.token_hex(6)
        self._paths: dict[int, str] = {pyfuse3.ROOT_INODE: ""}
        self._inos: dict[str, int] = {"": pyfuse3.ROOT_INODE}
        self._next_ino = pyfuse3.ROOT_INODE + 1
        self._open: dict[int, _Open] = {}
        self._handles: dict[int, int] = {}
        self._next_fh = 1
        self._attrs: dict[str, tuple[float, Tag, Meta | None]] = {}
        self._dirs: dict[str, tuple[float, dict[str, Meta]]] = {}
        self._dir_handles: dict[int, list[tuple[str, Meta]]] = {}
        self._dir_paths: dict[int, str] = {}
        self._bg: dict[str, asyncio.Task[None]] = {}
        self._lookups: dict[int, int] = {}
        self.ranges_fetched = 0
        """Ranges of open files fetched from the layer (for tests)."""
        self.broken_fetch_unchecked = False
        """Test-only: fetched bytes join an open file's local copy without checking that the
        record still names the version opened (then one open file can show two versions)."""
        self.broken_unlink_unconditional = False
        """Test-only: unlink removes whatever version the name has when its record write
        lands (then it removes a file another mount re-created after the unlink looked)."""
        self.broken_delete_without_mark = False
        """Test-only: the GONE record of a removed file carries no mark while its data is
        deleted (then a re-creation by another mount does not wait and loses its data)."""
        self.broken_publish_without_claim = False
        """Test-only: publish without the coverable claim on the version opened (then two
        mounts that closed the same version both succeed and one silently loses)."""

    # -- inodes and paths ------------------------------------------------------------------------

    def _ino(self, path: str) -> int:
        ino = self._inos.get(path)
        if ino is None:
            ino = self._next_ino
            self._next_ino += 1
            self._inos[path] = ino
            self._paths[ino] = path
        return ino

    def _path(self, ino: int) -> str:
        p = self._paths.get(ino)
        if p is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return p

    def _child(self, parent_ino: int, name: bytes) -> str:
        path = _join(self._path(parent_ino), _decode_name(name))
        if len(path.encode()) > MAX_PATH_BYTES:
            raise pyfuse3.FUSEError(errno.ENAMETOOLONG)
        return path

    def _forget_path(self, path: str) -> None:
        ino = self._inos.pop(path, None)
        if ino is not None:
            self._paths.pop(ino, None)

    def _forget_below(self, path: str) -> None:
        """Forget the inodes of ``path`` and of every name below it."""
        for p in [p for p in self._inos if p == path or p.startswith(path + "/")]:
            self._forget_path(p)

    def _invalidate(self, *paths: str) -> None:
        for p in paths:
            self._attrs.pop(p, None)
            self._dirs.pop(p, None)
            self._dirs.pop(_parent(p), None)

    def _note(self, path: str, m: Meta | None) -> None:
        """This mount changed ``path``: its parent's cached listing follows (a listing is
        dropped only when another mount may have changed the name)."""
        listing = self._dirs.get(_parent(path))
        if listing is not None:
            name = path.rpartition("/")[2]
            if m is None or m.kind == GONE:
                listing[1].pop(name, None)
            else:
                listing[1][name] = m

    # -- background work -------------------------------------------------------------------------

    def _later(self, path: str, work: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run ``work`` on ``path`` after the close or unlink that asked for it returned (the
        end of a publication, the deletion of dropped data); anything this mount does next on
        the same name waits for it first (:meth:`_settle`)."""
        prev = self._bg.get(path)

        async def run() -> None:
            if prev is not None:
                await asyncio.gather(prev, return_exceptions=True)
            try:
                await work()
            except Exception as e:
                log.warning("background work on %s: %s: %s", path, type(e).__name__, e)

        task = asyncio.ensure_future(run())
        self._bg[path] = task

        def done(t: asyncio.Task[None]) -> None:
            if self._bg.get(path) is t:
                del self._bg[path]

        task.add_done_callback(done)

    async def _settle(self, *paths: str) -> None:
        for p in paths:
            t = self._bg.get(p)
            if t is not None:
                await asyncio.gather(t, return_exceptions=True)

    async def _settle_below(self, path: str) -> None:
        await asyncio.gather(
            *(t for p, t in list(self._bg.items()) if p == path or p.startswith(path + "/")),
            return_exceptions=True,
        )

    async def drain(self) -> None:
        """Wait for every background publication end and deletion (before unmounting)."""
        while self._bg:
            await asyncio.gather(*list(self._bg.values()), return_exceptions=True)

    # -- records ---------------------------------------------------------------------------------

    async def _read_meta(self, path: str, *, fresh: bool = False) -> tuple[Tag, Meta | None]:
        now = time.monotonic()
        hit = self._attrs.get(path)
        if hit is not None and not fresh and hit[0] > now:
            return hit[1], hit[2]
        tag, raw = await self.store.read_tagged(meta_key(path), group=self.group)
        m = decode(raw)
        self._prune()
        self._attrs[path] = (now + self.opts.attr_timeout_s, tag, m)
        return tag, m

    def _remember(self, path: str, tag: Tag, m: Meta | None) -> None:
        self._attrs[path] = (time.monotonic() + self.opts.attr_timeout_s, tag, m)
        self._note(path, m)

    def _prune(self) -> None:
        if len(self._attrs) + len(self._dirs) <= MAX_CACHED_NAMES:
            return
        now = time.monotonic()
        self._attrs = {p: v for p, v in self._attrs.items() if v[0] > now}
        self._dirs = {p: v for p, v in self._dirs.items() if v[0] > now}
        if len(self._attrs) + len(self._dirs) > MAX_CACHED_NAMES:
            self._attrs.clear()
            self._dirs.clear()

    async def _cas_meta(self, path: str, m: Meta, base: Tag) -> tuple[bool, Tag]:
        """Coverable write of the record on ``base``: (True, new tag) or (False, newest tag).
        An ambiguous outcome is settled by reading it back."""
        raw = encode(m)
        for _ in range(3):
            try:
                res = await self.store.cvr_write(meta_key(path), raw, base, group=self.group)
            except OperationError:
                tag, now = await self.store.read_tagged(meta_key(path), group=self.group)
                if now == raw and tag != base:
                    ok, t = True, tag
                elif tag == base:
                    continue
                else:
                    ok, t = False, tag
            else:
                ok, t = bool(res.ok), res.tag
            if ok:
                self._remember(path, t, m)
            else:
                self._invalidate(path)
            return ok, t
        raise OperationError(f"writing the record of {path!r}: the outcome stayed ambiguous")

    async def _update_meta(self, path: str, change: Callable[[Meta | None], Meta | None]) -> Tag:
        """Apply ``change`` to the newest record (retried when another writer got in first)."""
        for _ in range(MAX_META_RETRIES):
            tag, m = await self._read_meta(path, fresh=True)
            new = change(m)
            if new is None:
                return tag
            ok, t = await self._cas_meta(path, new, tag)
            if ok:
                return t
        raise FileConflict(f"the record of {path!r} kept changing; retry")

    async def _foreign(self, path: str, genesis_keys: list[str] | None = None) -> Meta | None:
        """A file of the layer written without the mount (``ares file put``): no record."""
        if genesis_keys is None:
            genesis_keys = await self.store.keys(GENESIS_PREFIX + path, group=self.group)
        if GENESIS_PREFIX + path not in genesis_keys:
            return None
        try:
            st = await self.files.stat(path, group=self.group)
        except NoSuchFile:
            return None
        return Meta(FILE, 0o644, st.size_bytes, 0)

    async def _implicit_dir(self, path: str, genesis_keys: list[str]) -> bool:
        """Some live name lies below ``path/``."""
        p = path + "/"
        for k in await self.store.keys(META_PREFIX + p, group=self.group):
            _, m = await self._read_meta(k[len(META_PREFIX) :])
            if m is not None and m.kind != GONE:
                return True
        below = [k for k in genesis_keys if k.startswith(GENESIS_PREFIX + p)]
        return bool(below) and bool(await self.files.list(p, group=self.group))

    async def _resolve(self, path: str) -> Meta | None:
        """The attributes of ``path`` (None: no such name)."""
        if path == "":
            return Meta(DIR, 0o755)
        ino = self._inos.get(path)
        if ino is not None and ino in self._open:
            of = self._open[ino]
            if not of.unlinked:
                return self._local_meta(of)
        parent = _parent(path)
        listing = self._dirs.get(parent)
        if listing is not None and listing[0] > time.monotonic():
            return listing[1].get(path.rpartition("/")[2])
        tag, m = await self._read_meta(path)
        if m is not None:
            return None if m.kind == GONE else m
        if tag != TAG0:  # a record that is not ours
            return None
        gkeys = await self.store.keys(GENESIS_PREFIX + path, group=self.group)
        found = await self._foreign(path, gkeys)
        if found is not None:
            return found
        if await self._implicit_dir(path, gkeys):
            return Meta(DIR, 0o755)
        return None

    def _local_meta(self, of: _Open) -> Meta:
        return Meta(
            FILE, of.meta.mode, of.size, of.meta.mtime_ns, of.meta.uid, of.meta.gid, of.meta.target
        )

    def _entry(self, ino: int, m: Meta) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = ino
        e.generation = 0
        e.entry_timeout = self._dir_timeout_s
        e.attr_timeout = self.opts.attr_timeout_s
        kind = {DIR: stat.S_IFDIR, LINK: stat.S_IFLNK}.get(m.kind, stat.S_IFREG)
        e.st_mode = kind | (m.mode & 0o7777)
        e.st_nlink = 1  # (directories too: "unknown", so no tool counts subdirectories by it)
        e.st_uid = m.uid
        e.st_gid = m.gid
        e.st_rdev = 0
        size = len(m.target.encode()) if m.kind == LINK else m.size
        e.st_size = size
        e.st_blksize = BLOCK_SIZE
        e.st_blocks = (size + 511) // 512
        e.st_atime_ns = e.st_mtime_ns = e.st_ctime_ns = m.mtime_ns
        return e

    async def _attr(self, path: str) -> pyfuse3.EntryAttributes:
        m = await self._resolve(path)
        if m is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._entry(self._ino(path), m)

    # -- listing ---------------------------------------------------------------------------------

    async def _list(self, dpath: str, *, fresh: bool = False) -> dict[str, Meta]:
        now = time.monotonic()
        hit = self._dirs.get(dpath)
        if hit is not None and not fresh and hit[0] > now:
            return hit[1]
        p = dpath + "/" if dpath else ""
        mkeys, gkeys = await asyncio.gather(
            self.store.keys(META_PREFIX + p, group=self.group),
            self.store.keys(GENESIS_PREFIX + p, group=self.group),
        )
        mpaths = [k[len(META_PREFIX) :] for k in mkeys]
        gate = asyncio.Semaphore(LIST_READS_IN_FLIGHT)

        async def meta_of(path: str) -> tuple[str, Tag, Meta | None]:
            async with gate:
                tag, m = await self._read_meta(path, fresh=True)
            return path, tag, m

        direct = [m for m in mpaths if "/" not in m[len(p) :]]
        out: dict[str, Meta] = {}
        recorded: set[str] = set()
        for path, tag, m in await asyncio.gather(*(meta_of(x) for x in direct)):
            recorded.add(path)
            if m is not None and m.kind != GONE:
                out[path[len(p) :]] = m
            elif m is None and tag == TAG0:
                recorded.discard(path)
        deeper: dict[str, list[str]] = {}
        for m in mpaths:
            rest = m[len(p) :]
            if "/" in rest:
                deeper.setdefault(rest.partition("/")[0], []).append(m)
        for seg, below in deeper.items():
            if seg in out or _join(dpath, seg) in recorded:
                continue
            for x in below:
                _, _, m = await meta_of(x)
                if m is not None and m.kind != GONE:
                    out[seg] = Meta(DIR, 0o755)
                    break
        mset = set(mpaths)
        for k in gkeys:
            path = k[len(GENESIS_PREFIX) :]
            if path in mset:
                continue
            seg, slash, _ = path[len(p) :].partition("/")
            if seg in out or _join(dpath, seg) in recorded:
                continue
            if slash:
                if await self.files.list(_join(dpath, seg) + "/", group=self.group):
                    out[seg] = Meta(DIR, 0o755)
            else:
                found = await self._foreign(path, [k])
                if found is not None:
                    out[seg] = found
        for of in self._open.values():  # files created here and not yet published
            op = self._paths.get(of.ino)
            if op is not None and not of.unlinked and _parent(op) == dpath:
                out[op.rpartition("/")[2]] = self._local_meta(of)
        self._dirs[dpath] = (time.monotonic() + self._dir_timeout_s, out)
        return out

    async def _require_dir(self, path: str) -> None:
        m = await self._resolve(path)
        if m is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        if m.kind != DIR:
            raise pyfuse3.FUSEError(errno.ENOTDIR)

    # -- lookup and attributes -------------------------------------------------------------------

    @_errors
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        if name == b".":
            path = self._path(parent_inode)
        elif name == b"..":
            path = _parent(self._path(parent_inode))
        else:
            path = self._child(parent_inode, name)
        return self._counted(await self._attr(path))

    def _counted(self, e: pyfuse3.EntryAttributes) -> pyfuse3.EntryAttributes:
        """The kernel now holds one more reference to ``e``'s inode (until ``forget``)."""
        self._lookups[e.st_ino] = self._lookups.get(e.st_ino, 0) + 1
        return e

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        """Drop the inodes the kernel no longer references and no handle holds (their paths
        get fresh inode numbers if they are looked up again: numbers are never reused)."""
        for ino, n in inode_list:
            left = self._lookups.get(ino, 0) - n
            if left > 0:
                self._lookups[ino] = left
                continue
            self._lookups.pop(ino, None)
            if ino == pyfuse3.ROOT_INODE or ino in self._open:
                continue
            path = self._paths.pop(ino, None)
            if path is not None and self._inos.get(path) == ino:
                del self._inos[path]

    @_errors
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        of = self._open.get(inode)
        if of is not None:
            return self._entry(inode, self._local_meta(of))
        return await self._attr(self._path(inode))

    @_errors
    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        path = self._path(inode)
        of = self._open.get(inode)

        def apply(m: Meta) -> Meta:
            import msgspec

            ch: dict[str, Any] = {}
            if fields.update_mode:
                ch["mode"] = attr.st_mode & 0o7777
            if fields.update_uid:
                ch["uid"] = attr.st_uid
            if fields.update_gid:
                ch["gid"] = attr.st_gid
            if fields.update_mtime:
                ch["mtime_ns"] = attr.st_mtime_ns
            return msgspec.structs.replace(m, **ch) if ch else m

        if fields.update_size:
            temporary = of is None
            if of is None:
                of = await self._acquire(inode, truncate=attr.st_size == 0)
            try:
                async with of.lock:
                    of.truncate(attr.st_size)
                    of.meta = apply(of.meta)
                    if not fields.update_mtime:
                        of.meta = _with_mtime(of.meta, time.time_ns())
                    of.dirty = True
                if temporary:
                    await self._publish(of)
            finally:
                if temporary:
                    await self._release(of)
            return self._entry(inode, self._local_meta(of))
        if of is not None and not of.unlinked:
            of.meta = apply(of.meta)
            if of.dirty or not of.published:
                return self._entry(inode, self._local_meta(of))
            async with of.lock:
                with of.own_write():
                    ok, t = await self._cas_meta(path, self._local_meta(of), of.base)
                if not ok:
                    of.stale = True
                    raise pyfuse3.FUSEError(errno.ESTALE)
                of.base = t
            return self._entry(inode, self._local_meta(of))
        cur = await self._resolve(path)
        if cur is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        new = apply(cur)
        if new != cur:
            await self._update_meta(path, lambda m: apply(m if m is not None else cur))
        return self._entry(inode, new)

    @_errors
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        m = await self._resolve(self._path(inode))
        if m is None or m.kind != LINK:
            raise pyfuse3.FUSEError(errno.EINVAL)
        return m.target.encode()

    @_errors
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        s = pyfuse3.StatvfsData()
        s.f_bsize = BLOCK_SIZE
        s.f_frsize = 4096
        s.f_blocks = 2**40 // 4096  # the cluster's capacity is not known here: 1 TiB shown
        s.f_bfree = s.f_bavail = s.f_blocks
        s.f_files = 2**32
        s.f_ffree = s.f_favail = 2**32
        s.f_namemax = MAX_SEGMENT_BYTES
        return s

    # -- directories -----------------------------------------------------------------------------

    @_errors
    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        path = self._child(parent_inode, name)
        await self._settle(path)
        await self._require_dir(_parent(path))
        if await self._resolve(path) is not None:
            raise pyfuse3.FUSEError(errno.EEXIST)
        m = Meta(DIR, mode & 0o7777, 0, time.time_ns(), ctx.uid, ctx.gid)

        def make(cur: Meta | None) -> Meta:
            if cur is not None and cur.kind != GONE:
                raise pyfuse3.FUSEError(errno.EEXIST)
            return m

        await self._update_meta(path, make)
        self._dirs[path] = (time.monotonic() + self._dir_timeout_s, {})
        return self._counted(self._entry(self._ino(path), m))

    @_errors
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        path = self._child(parent_inode, name)
        m = await self._resolve(path)
        if m is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        if m.kind != DIR:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        if await self._list(path, fresh=True):
            raise pyfuse3.FUSEError(errno.ENOTEMPTY)
        _tag, cur = await self._read_meta(path, fresh=True)
        if cur is not None and cur.kind != GONE:
            await self._update_meta(path, _to_gone)
        self._note(path, None)
        self._dirs.pop(path, None)
        self._forget_path(path)

    @_errors
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        path = self._path(inode)
        await self._require_dir(path)
        listing = await self._list(path)
        fh = self._next_fh
        self._next_fh += 1
        self._dir_handles[fh] = sorted(listing.items())
        self._dir_paths[fh] = path
        return fh

    @_errors
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        entries = self._dir_handles.get(fh, [])
        base = self._paths_of_dir_handle(fh)
        for i in range(start_id, len(entries)):
            name, m = entries[i]
            path = _join(base, name) if base is not None else name
            e = self._entry(self._ino(path), m)
            if not pyfuse3.readdir_reply(token, name.encode(), e, i + 1):
                return
            self._counted(e)

    def _paths_of_dir_handle(self, fh: int) -> str | None:
        return self._dir_paths.get(fh)

    @_errors
    async def releasedir(self, fh: int) -> None:
        self._dir_handles.pop(fh, None)
        self._dir_paths.pop(fh, None)

    @_errors
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        return None

    # -- names -----------------------------------------------------------------------------------

    @_errors
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        path = self._child(parent_inode, name)
        m = await self._resolve(path)
        if m is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        if m.kind == DIR:
            raise pyfuse3.FUSEError(errno.EISDIR)
        await self._remove(path)

    async def _remove(self, path: str) -> None:
        """Remove the file (or link) at ``path``: its record says GONE -- a coverable write on
        the version this mount read, so a name another mount re-created (or published) since
        is left alone: ESTALE -- then its data is deleted in the background. A handle open in
        this mount keeps reading its local copy and is never published."""
        await self._settle(path)
        ino = self._inos.get(path)
        of = self._open.get(ino) if ino is not None else None
        tag, cur = await self._read_meta(path, fresh=True)
        if cur is not None and cur.kind == GONE:
            raise pyfuse3.FUSEError(errno.ENOENT)  # (another mount removed it)
        if cur is not None and cur.kind == DIR:
            raise pyfuse3.FUSEError(errno.EISDIR)
        t = await self._mark_gone(path, tag, has_data=cur is None or cur.kind == FILE, of=of)
        if t is None:
            log.warning("%s: changed by another mount since it was read: not removed", path)
            raise pyfuse3.FUSEError(errno.ESTALE)
        self._note(path, None)
        self._forget_path(path)

    async def _mark_gone(
        self, path: str, seen: Tag, *, has_data: bool, of: _Open | None
    ) -> Tag | None:
        """Turn the record version ``seen`` of ``path`` into GONE (None: it is not the newest
        any more, nothing changed). With data to delete, the GONE record carries this mount's
        ``writing`` mark until the deletion ended, so a mount that creates the name again waits
        for it (:meth:`_wait_publication`) and the deletion never takes the new data."""
        if of is not None:
            of.unlinked = True  # (a concurrent close here does not publish it meanwhile)
        gone = Meta(GONE, 0, writing=self.writer_id, since_s=time.time()) if has_data else None
        if self.broken_delete_without_mark:
            gone = None
        with of.own_write() if of is not None else contextlib.nullcontext():
            if self.broken_unlink_unconditional:  # whatever the name holds by now
                seen = await self._update_meta(path, _to_gone)
                ok, t = True, seen
            else:
                ok, t = await self._cas_meta(path, gone or Meta(GONE, 0), seen)
        if not ok:
            if of is not None:
                of.unlinked = False
            return None
        if of is not None and of.base == seen:
            of.base = t  # (the data is still the version it opened: its fetches go on)
        if has_data:
            self._later(path, functools.partial(self._delete_data, path, t, of))
        return t

    async def _delete_data(self, path: str, gone: Tag, of: _Open | None = None) -> None:
        """Delete the layer's file of a removed name (after a handle open here fetched what it
        had not yet), then clear the GONE record's mark. If the record moved on meanwhile
        (another mount presumed this one dead after ``publish_wait_s`` and created the name
        again), the data is not ours to delete."""
        if of is not None and of.refs > 0:
            with contextlib.suppress(Exception):
                await self._fetch_all(of)
        tag, _ = await self.store.read_tagged(meta_key(path), group=self.group)
        if tag != gone:
            return
        with contextlib.suppress(NoSuchFile):
            await self.files.delete(path, group=self.group)
        await self._cas_meta(path, Meta(GONE, 0), gone)

    @_errors
    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        path = self._child(parent_inode, name)
        await self._require_dir(_parent(path))
        if await self._resolve(path) is not None:
            raise pyfuse3.FUSEError(errno.EEXIST)
        try:
            tgt = target.decode()
        except UnicodeDecodeError:
            raise pyfuse3.FUSEError(errno.EINVAL) from None
        if len(target) > 4096:
            raise pyfuse3.FUSEError(errno.ENAMETOOLONG)
        m = Meta(LINK, 0o777, 0, time.time_ns(), ctx.uid, ctx.gid, tgt)
        await self._update_meta(path, functools.partial(_const, m))
        self._invalidate(path)
        return self._counted(self._entry(self._ino(path), m))

    @_errors
    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        if flags & pyfuse3.RENAME_EXCHANGE:
            raise pyfuse3.FUSEError(errno.ENOTSUP)
        old = self._child(parent_inode_old, name_old)
        new = self._child(parent_inode_new, name_new)
        if old == new:
            return
        if new.startswith(old + "/"):
            raise pyfuse3.FUSEError(errno.EINVAL)
        await self._settle_below(old)
        await self._settle_below(new)
        src = await self._resolve(old)
        if src is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        await self._require_dir(_parent(new))
        dst = await self._resolve(new)
        if dst is not None:
            if flags & pyfuse3.RENAME_NOREPLACE:
                raise pyfuse3.FUSEError(errno.EEXIST)
            if src.kind == DIR and dst.kind != DIR:
                raise pyfuse3.FUSEError(errno.ENOTDIR)
            if src.kind != DIR and dst.kind == DIR:
                raise pyfuse3.FUSEError(errno.EISDIR)
            if dst.kind == DIR and await self._list(new, fresh=True):
                raise pyfuse3.FUSEError(errno.ENOTEMPTY)
        if src.kind == DIR:
            await self._rename_dir(old, new, src)
            self._dirs.clear()
            self._attrs.clear()
        else:
            await self._rename_one(old, new, src)

    async def _rename_one(self, old: str, new: str, src: Meta) -> None:
        """new := old (data, then record), then old is removed. ``new`` appears whole in one
        step; for a moment both names exist (a rename is a copy and a delete: not atomic as a
        pair)."""
        ino = self._inos.get(old)
        of = self._open.get(ino) if ino is not None else None
        if of is not None and not of.unlinked:
            if of.dirty or not of.published:
                await self._publish(of)
            try:
                await self._fetch_all(of)  # (it goes on reading its local copy under new)
            except StaleVersion:
                raise pyfuse3.FUSEError(errno.ESTALE) from None
        otag, cur = await self._wait_publication(old)  # (the version renamed, whole)
        if cur is not None:
            if cur.kind == GONE:
                raise pyfuse3.FUSEError(errno.ENOENT)
            src = cur
        dst_ino = self._inos.get(new)
        if dst_ino is not None and dst_ino in self._open:
            self._open[dst_ino].unlinked = True
        if src.kind == FILE:
            await self._wait_publication(new, deletions=True)
            with tempfile.TemporaryFile(dir=self.opts.cache_dir) as tmp:
                with contextlib.suppress(NoSuchFile):
                    await self.files.read_into(old, tmp, group=self.group)
                tmp.seek(0)
                await self.files.write(new, tmp, group=self.group)
        moved = Meta(
            FILE if src.kind == FILE else src.kind,
            src.mode,
            src.size,
            src.mtime_ns,
            src.uid,
            src.gid,
            src.target,
        )
        t = await self._update_meta(new, functools.partial(_const, moved))
        if of is not None:
            of.base = t
        if await self._mark_gone(old, otag, has_data=src.kind == FILE, of=None) is None:
            # another mount published or replaced old since it was copied: old keeps that
            # version, new has the one copied (the kernel retries the rename once: ESTALE)
            log.warning("rename %s: changed by another mount meanwhile: not removed", old)
            self._invalidate(old, new)
            raise pyfuse3.FUSEError(errno.ESTALE)
        self._note(old, None)
        self._move_inodes(old, new)

    async def _rename_dir(self, old: str, new: str, src: Meta) -> None:
        """Every name below ``old`` is renamed one by one (each file's rename is atomic, the
        directory's as a whole is not), then the directory records."""
        await self._update_meta(
            new, lambda c: Meta(DIR, src.mode, 0, src.mtime_ns or time.time_ns(), src.uid, src.gid)
        )
        self._forget_below(new)  # (what the rename replaces: an empty directory or nothing)
        below = await self._walk(old)
        for path, m in below:
            target = new + path[len(old) :]
            if m.kind == DIR:
                await self._update_meta(target, functools.partial(_const, m))
            else:
                await self._rename_one(path, target, m)
        for path, m in sorted(below, key=lambda x: -len(x[0])):
            if m.kind == DIR:
                await self._update_meta(path, _to_gone)
        _, cur = await self._read_meta(old, fresh=True)
        if cur is not None and cur.kind != GONE:
            await self._update_meta(old, _to_gone)
        self._move_inodes(old, new, replace=False)

    async def _walk(self, dpath: str) -> list[tuple[str, Meta]]:
        """Every live name below ``dpath`` (directories before their contents)."""
        out: list[tuple[str, Meta]] = []
        for name, m in sorted((await self._list(dpath, fresh=True)).items()):
            path = _join(dpath, name)
            out.append((path, m))
            if m.kind == DIR:
                out += await self._walk(path)
        return out

    def _move_inodes(self, old: str, new: str, *, replace: bool = True) -> None:
        """``old`` and every name below it keep their inode numbers under ``new``: the kernel
        moves its cached entries with a rename and, until their entry timeout, opens and stats
        them by those numbers without a lookup. ``replace``: the inodes of ``new`` and below
        (the names the rename replaced) are forgotten first; a directory rename does that before
        its files move one by one, and moves the rest without it (the files it moved already
        are below ``new``)."""
        if replace:
            self._forget_below(new)
        for path in [p for p in self._inos if p == old or p.startswith(old + "/")]:
            ino = self._inos.pop(path)
            moved = new + path[len(old) :]
            prev = self._inos.get(moved)
            if prev is not None and prev != ino:  # (looked up while the rename ran)
                self._paths.pop(prev, None)
            self._inos[moved] = ino
            self._paths[ino] = moved
            if ino in self._open:
                self._open[ino].path = moved

    @_errors
    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        raise pyfuse3.FUSEError(errno.ENOTSUP)

    @_errors
    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        raise pyfuse3.FUSEError(errno.ENOTSUP)

    async def setxattr(
        self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        raise pyfuse3.FUSEError(errno.ENOTSUP)

    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        raise pyfuse3.FUSEError(errno.ENOTSUP)

    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        raise pyfuse3.FUSEError(errno.ENOTSUP)

    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        raise pyfuse3.FUSEError(errno.ENOTSUP)

    # -- open files ------------------------------------------------------------------------------

    async def _wait_publication(
        self, path: str, *, deletions: bool = False
    ) -> tuple[Tag, Meta | None]:
        """The newest record, after another mount's publication of the file ended (or after
        ``publish_wait_s``: its writer is presumed dead). ``deletions``: also after another
        mount's deletion of the name's data (a GONE record with a mark: for a writer of the
        name, not for a reader)."""
        deadline = time.monotonic() + self.opts.publish_wait_s
        while True:
            tag, m = await self._read_meta(path, fresh=True)
            if (
                m is None
                or not m.writing
                or (m.kind == GONE and not deletions)
                or m.writing == self.writer_id
                or time.monotonic() > deadline
                or time.time() - m.since_s > self.opts.publish_wait_s
            ):
                return tag, m
            await asyncio.sleep(0.05)

    async def _acquire(self, inode: int, *, truncate: bool) -> _Open:
        of = self._open.get(inode)
        if of is None:
            path = self._path(inode)
            await self._settle(path)
            tag, m = await self._wait_publication(path)
            if m is None or m.kind == GONE:
                found = None if tag != TAG0 else await self._foreign(path)
                if found is None:
                    raise pyfuse3.FUSEError(errno.ENOENT)
                m = found
            if m.kind == DIR:
                raise pyfuse3.FUSEError(errno.EISDIR)
            of = self._open.get(inode)  # another open of the file may have got here first
            if of is None:
                tmp = tempfile.TemporaryFile(dir=self.opts.cache_dir)  # noqa: SIM115 (released)
                size = 0 if truncate else m.size
                of = _Open(inode, path, tmp, m, tag, size, remote_size=size, window=READ_MIN_BYTES)
                os.ftruncate(of.fd, size)  # (sparse: nothing is fetched before a read asks)
                self._open[inode] = of
                of.refs += 1
                of.dirty = truncate and m.size != 0
                return of
        of.refs += 1  # (before any wait: a concurrent release must not close it)
        if truncate:
            try:
                async with of.lock:
                    of.truncate(0)
                    of.dirty = True
            except BaseException:
                await self._release(of)
                raise
        return of

    # -- fetching an open file's ranges ----------------------------------------------------------

    async def _read_range(self, path: str, offset: int, length: int) -> AsyncGenerator[bytes, None]:
        """The bytes ``[offset, offset + length)`` of ``path`` (fewer at its end), reading only
        the blocks that cover them (``Files.read_range``)."""
        rr = self.files.read_range(path, offset, length, group=self.group)
        async with contextlib.aclosing(rr) as pieces:
            async for b in pieces:
                yield b

    def _start_fetch(self, of: _Open, a: int, b: int) -> _Fetch:
        """Fetch ``[a, b)`` of the opened version into the local copy (shared by every read
        that needs a part of it; a read that is interrupted does not cancel it)."""
        f = _Fetch(a, b, asyncio.ensure_future(self._fetch(of, a, b)))
        of.fetches.append(f)

        def done(t: asyncio.Future[None]) -> None:
            with contextlib.suppress(ValueError):
                of.fetches.remove(f)
            if not t.cancelled():
                t.exception()  # (retrieved: a read-ahead nobody waits for may fail alone)

        f.task.add_done_callback(done)
        return f

    async def _fetch(self, of: _Open, a: int, b: int) -> None:
        path = of.path
        self.ranges_fetched += 1
        pos = checked = a

        async def check() -> bool:
            """The bytes placed since the last check are the opened version's if the record has
            not moved since the open: no publication's data write (it follows its claim on the
            record) overlapped their read. Then they join the local copy (readers waiting for
            them go on while the rest of the range arrives)."""
            nonlocal checked
            tag, _ = await self._read_meta(path, fresh=True)
            if self.broken_fetch_unchecked:
                tag = of.base
            if tag != of.base and of.own_writes:  # (maybe this mount's own record write)
                await of.own_idle.wait()
                tag, _ = await self._read_meta(path, fresh=True)
            if tag != of.base:
                if of.gaps(checked, b):
                    of.lost = True
                    log.warning("%s changed since it was opened: its unread parts are gone", path)
                of.wake()
                return False
            of.present.add(checked, min(pos, of.remote_size))
            checked = pos
            of.wake()
            return True

        changed: FileChanged | None = None
        try:
            async with contextlib.aclosing(self._read_range(path, a, b - a)) as pieces:
                async for chunk in pieces:
                    of.place(pos, chunk)
                    pos += len(chunk)
                    due = of.waiting or pos - checked >= CHECK_EVERY_BYTES
                    if due and not await check():  # (the layer reads on meanwhile)
                        return
        except NoSuchFile:
            pass
        except FileChanged as e:  # (the layer saw a newer version: the record tells whose)
            changed = e
        if not await check():
            return
        if changed is not None:
            raise changed  # (a writer outside the mount: EIO, the next read tries again)
        if pos < b and pos < of.remote_size:  # the version ends here (shorter than recorded)
            of.remote_size = pos
            if not of.dirty:
                of.truncate(pos)

    async def _ensure(self, of: _Open, a: int, b: int, window: int) -> None:
        """Wait until ``[a, b)`` of the local copy holds the opened version's bytes, fetching
        what is missing in pieces of at least ``window`` bytes (StaleVersion: the version is
        gone and a part of it was never fetched)."""
        while True:
            gaps = of.gaps(a, b)
            if not gaps:
                return
            if of.lost:
                raise StaleVersion(of.path)
            ga, gb = gaps[0]
            f = next((f for f in of.fetches if f.start <= ga < f.end), None)
            if f is None:
                f = self._start_fetch(of, ga, _claim_end(of, ga, max(gb, ga + window)))
            if not f.task.done():  # wait for its next piece (or its end), never cancelling it
                progress: asyncio.Future[Any] = asyncio.ensure_future(of.progress.wait())
                of.waiting += 1
                try:
                    await asyncio.wait({progress, f.task}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    of.waiting -= 1
                    progress.cancel()
            if f.task.done():
                if f.task.cancelled():
                    raise StaleVersion(of.path)  # (the file was released meanwhile)
                exc = f.task.exception()
                if exc is not None:
                    raise exc

    def _read_ahead(self, of: _Open, off: int, end: int) -> None:
        """Sequential reads (each where the last ended) double the fetch window up to
        ``READ_MAX_BYTES`` and keep one window fetched ahead, then stream the rest of the file;
        any other read resets the window (a stream already running goes on)."""
        # (the kernel's own read-ahead sends reads a little out of order)
        sequential = of.read_end - 2 * READ_MIN_BYTES <= off <= of.read_end + BLOCK_SIZE
        of.read_end = max(of.read_end, end) if sequential else end
        if not sequential:
            of.window = READ_MIN_BYTES
            return
        streaming = of.window >= READ_MAX_BYTES
        of.window = min(of.window * 2, READ_MAX_BYTES)
        if of.lost:
            return
        ga = _unclaimed(of, end, end + of.window)
        if ga is not None:  # (a reader this far along streams the rest of the file)
            self._start_fetch(
                of, ga, _claim_end(of, ga, of.remote_size if streaming else ga + of.window)
            )

    async def _fetch_all(self, of: _Open) -> None:
        await self._ensure(of, 0, of.remote_size, READ_MAX_BYTES)

    async def _release(self, of: _Open) -> None:
        of.refs -= 1
        if of.refs > 0:
            return
        self._open.pop(of.ino, None)
        for f in list(of.fetches):
            f.task.cancel()
        await asyncio.gather(*(f.task for f in of.fetches), return_exceptions=True)
        of.tmp.close()

    def _new_fh(self, inode: int) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = inode
        return fh

    def _of(self, fh: int) -> _Open:
        ino = self._handles.get(fh)
        of = self._open.get(ino) if ino is not None else None
        if of is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        return of

    @_errors
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        of = await self._acquire(inode, truncate=bool(flags & os.O_TRUNC))
        return pyfuse3.FileInfo(fh=self._new_fh(of.ino))

    @_errors
    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        path = self._child(parent_inode, name)
        await self._settle(path)
        await self._require_dir(_parent(path))
        ino = self._ino(path)
        tag = None
        if ino not in self._open or self._open[ino].unlinked:
            tag, _ = await self._wait_publication(path, deletions=True)
        if ino in self._open and not self._open[ino].unlinked:  # (also one created meanwhile)
            of = await self._acquire(ino, truncate=True)
        else:
            assert tag is not None
            m = Meta(FILE, mode & 0o7777, 0, time.time_ns(), ctx.uid, ctx.gid)
            tmp = tempfile.TemporaryFile(dir=self.opts.cache_dir)  # noqa: SIM115 (released)
            of = _Open(
                ino, path, tmp, m, tag, 0, dirty=True, published=False, window=READ_MIN_BYTES
            )
            of.refs = 1
            self._open[ino] = of
        self._note(path, self._local_meta(of))
        entry = self._counted(self._entry(ino, self._local_meta(of)))
        return pyfuse3.FileInfo(fh=self._new_fh(ino)), entry

    @_errors
    async def read(self, fh: int, off: int, size: int) -> bytes:
        of = self._of(fh)
        end = min(off + size, of.size)
        if off >= end:
            return b""
        try:
            await self._ensure(of, off, end, of.window)
        except StaleVersion:
            raise pyfuse3.FUSEError(errno.ESTALE) from None
        self._read_ahead(of, off, end)
        end = min(end, of.size)  # (a truncation while it waited)
        return os.pread(of.fd, end - off, off) if off < end else b""

    @_errors
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        of = self._of(fh)
        if of.stale:
            raise pyfuse3.FUSEError(errno.ESTALE)
        async with of.lock:
            n = os.pwrite(of.fd, buf, off)
            of.wrote(off, off + n)
            of.size = max(of.size, off + n)
            of.dirty = True
            of.meta = _with_mtime(of.meta, time.time_ns())
        return n

    @_errors
    async def flush(self, fh: int) -> None:
        await self._publish(self._of(fh))

    @_errors
    async def fsync(self, fh: int, datasync: bool) -> None:
        await self._publish(self._of(fh))

    @_errors
    async def release(self, fh: int) -> None:
        ino = self._handles.pop(fh, None)
        of = self._open.get(ino) if ino is not None else None
        if of is None:
            return
        if of.dirty and not of.unlinked and not of.stale and of.refs == 1:
            try:
                await self._publish(of)
            except pyfuse3.FUSEError as e:
                log.warning("publishing %s on release: %s", self._paths.get(of.ino), e)
        await self._release(of)

    async def _publish(self, of: _Open) -> None:
        """Publish the open file's local copy as one new version (docs/mount.md): claim the
        record on the version opened, write the data (only changed blocks), clear the claim."""
        async with of.lock:
            if of.stale:
                raise pyfuse3.FUSEError(errno.ESTALE)
            if not of.dirty or of.unlinked:
                return
            try:
                await self._fetch_all(of)  # (the layer's write needs the whole content)
            except StaleVersion:
                of.stale = True
                raise pyfuse3.FUSEError(errno.ESTALE) from None
            path = self._path(of.ino)
            await self._settle(path)
            m = self._local_meta(of)
            claim = Meta(
                FILE,
                m.mode,
                m.size,
                m.mtime_ns,
                m.uid,
                m.gid,
                writing=self.writer_id,
                since_s=time.time(),
            )
            if self.broken_publish_without_claim:  # last writer wins, nobody is told
                tag = await self._update_meta(path, functools.partial(_const, claim))
                ok = True
            else:
                ok, tag = await self._cas_meta(path, claim, of.base)
            if not ok:
                of.stale = True
                log.warning("%s: another mount published a newer version first (ESTALE)", path)
                raise pyfuse3.FUSEError(errno.ESTALE)
            of.base = tag
            src = os.fdopen(os.dup(of.fd), "rb")
            try:
                src.seek(0)
                await self.files.write(path, _Limited(src, of.size), group=self.group)
            finally:
                src.close()
            of.dirty = False
            of.published = True
            done = Meta(FILE, m.mode, m.size, m.mtime_ns, m.uid, m.gid)

            async def finish() -> None:
                ok, t2 = await self._cas_meta(path, done, tag)
                if ok and of.base == tag:
                    of.base = t2

            self._later(path, finish)


class _Limited:
    """The first ``limit`` bytes of a file object (its local copy may be longer while a
    truncation is pending)."""

    def __init__(self, f: Any, limit: int) -> None:
        self.f = f
        self.left = limit
        self.start: int = int(f.tell())

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        b: bytes = self.f.read(n)
        self.left -= len(b)
        return b

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        pos: int = self.f.tell()
        return pos - self.start

    def seek(self, pos: int) -> int:
        total = self.tell() + self.left
        self.f.seek(self.start + pos)
        self.left = total - pos
        return pos


def _to_gone(c: Meta | None) -> Meta | None:
    return None if c is not None and c.kind == GONE else Meta(GONE, 0)


def _const(m: Meta, c: Meta | None) -> Meta:
    return m


def _with_mtime(m: Meta, mtime_ns: int) -> Meta:
    import msgspec

    return msgspec.structs.replace(m, mtime_ns=mtime_ns)
