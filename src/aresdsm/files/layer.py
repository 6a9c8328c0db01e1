"""Fragmented files (CoBFS) over coverable registers (docs/protocol.md §9.2).

A file is a linked list of blocks from a genesis block whose key derives from the file name
(in the file's group); every block is a coverable register (§9.1), written with
``Store.cvr_write`` against the version read. The layer sits above the client: it uses only
``cvr_write``, ``read_tagged`` and ``keys``.

**Writing** (one *attempt*): walk the current list (block ids, tags, content hashes), then
stream the new content through content-defined chunking (FastCDC); a chunk whose hash matches
a current block at or after the matching position keeps that block, any other chunk becomes a
new block with a fresh id (never reused: ``<attempt id>.<n>``), written at once (bounded
concurrency) with the id of the entry after it as ``next``. Then, as in Harris's lock-free
list: every current block the new version drops is *marked* (a coverable write of the block
itself: it stays readable, and its ``next`` never changes again), and only then is the
predecessor of each changed run rewritten to point at the run's first new block (or over the
dropped blocks). New blocks are therefore always written before the pointer that links them, and
a dropped block is unlinked only from an unmarked predecessor -- the only way a block ever
becomes unreachable. A ``stale`` answer anywhere ends the attempt; the writer re-reads,
re-diffs and retries (``max_retries``), then raises :class:`FileConflict`. Writers of
different parts of one file rewrite different blocks and both succeed.

**Reclaiming**: after a committed unlink the writer replaces the blocks it jumped over with
tombstones (a coverable write against the marked version: the data is gone from the servers,
which keep one value per register). A reclaimed block is never referenced by the current list:
nothing points at a marked block except an unlinked predecessor, and a jump over a marked run
lands on the run's last ``next``. New blocks of an attempt whose link was refused were never
reachable and are reclaimed by their writer. A writer that dies between writing blocks and
linking them leaves its attempt in the file's *journal* register: a later writer (or
:meth:`Files.collect`) fences it -- marks it aborted before it recorded its links, or rewrites
each predecessor it meant to link from -- so it can never link, then reclaims every block of
the attempt the list does not reach.

**Reading** walks the list from the genesis block. A reader that meets a tombstone (or a
block that is absent) restarts from the genesis block (``max_read_restarts``), so it never
returns a torn file; a streaming read into a sink that cannot seek back raises
:class:`FileChanged` instead. A *range read* (:meth:`Files.read_range`) reads only the blocks
that cover the range, located by the index once it is proved current (see :meth:`Files._layout`),
and checks each against its index entry; otherwise it walks up to the range's end.

**write_at** of bytes that leave every cut point in place rewrites the one block they fall in,
in place (same id and ``next``: the list does not change); any other change takes the general
path above.

**Consistency**: every block is coverable-linearizable (*fragmented linearizability*): a
whole-file read returns, for every block, a version that was current at some point during
the read; concurrent writers of different blocks both take effect.
"""

from __future__ import annotations

import asyncio
import bisect
import builtins
import contextlib
import functools
import hashlib
import io
import secrets
import time
import unicodedata
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .. import tracing
from ..config import DEFAULT_GROUP
from ..errors import AresError, ConfigurationError, OperationError
from ..tags import TAG0, Tag
from . import memory
from .chunking import StreamChunker, check_params, digest, read_source
from .codec import (
    Attempt,
    ChunkParams,
    Data,
    Dead,
    Entry,
    Genesis,
    Index,
    Journal,
    Value,
    decode,
    encode,
)

GENESIS_PREFIX = "file:"
BLOCK_PREFIX = "file-block:"
JOURNAL_PREFIX = "file-journal:"
INDEX_PREFIX = "file-index:"
MAX_NAME_BYTES = 512
MAX_INFLIGHT_BLOCKS = 4
"""Blocks written or read at once by one file operation (the client's memory bound: at most
this many blocks of at most ``max_bytes`` each, plus the chunker's ``2 * max_bytes``)."""
MAX_INDEX_ENTRIES = 200_000
"""Blocks an index lists at most (about 12 MB; ~200 GiB of 1 MiB blocks): a longer file has
no index and is walked."""
MAX_RETRIES = 5
MAX_READ_RESTARTS = 8
MAX_CAS_AMBIGUITY = 3
MAX_JOURNAL_RETRIES = 64
"""Journal updates are small and commute: retried (with a random back-off) far more often."""
ORPHAN_GRACE_S = 600.0
"""A write attempt older than this is presumed dead and collected (safety does not depend on
it: a collected attempt is fenced and can never link; a live one then retries)."""


class FileConflict(OperationError):
    """Concurrent writers changed the same blocks on every retry; nothing of the last attempt
    is linked. Re-read and try again."""


class FileChanged(OperationError):
    """The file changed under a streaming read that cannot start again (its sink cannot seek
    back), or kept changing for ``max_read_restarts`` restarts."""


class NoSuchFile(AresError, FileNotFoundError):
    """No file of that name in that group."""


class CvrOutcome(Protocol):
    ok: bool
    tag: Tag
    value: bytes | None


class BlockStore(Protocol):
    """The Store calls the layer uses (aresdsm.client.Store)."""

    async def cvr_write(
        self,
        key: str,
        value: bytes,
        base: Tag,
        *,
        group: str = ...,
        timeout_s: float | None = ...,
        fresh: bool = ...,
    ) -> Any: ...

    async def read_tagged(
        self, key: str, *, group: str = ..., timeout_s: float | None = ...
    ) -> tuple[Tag, bytes | None]: ...

    async def keys(
        self, prefix: str = ..., *, group: str = ..., timeout_s: float | None = ...
    ) -> builtins.list[str]: ...


def check_name(name: str) -> str:
    """A file name: non-empty text of at most MAX_NAME_BYTES, no control characters, no
    empty, ``.`` or ``..`` path segment, no leading or trailing ``/``."""
    if not isinstance(name, str) or not name:
        raise ConfigurationError("a file name must be a non-empty string")
    if len(name.encode()) > MAX_NAME_BYTES:
        raise ConfigurationError(f"file name longer than {MAX_NAME_BYTES} bytes")
    if any(unicodedata.category(c) == "Cc" for c in name):
        raise ConfigurationError(f"file name {name!r} contains control characters")
    if any(seg in ("", ".", "..") for seg in name.split("/")):
        raise ConfigurationError(f"file name {name!r} has an empty, '.' or '..' segment")
    return name


@dataclass(frozen=True)
class FileStat:
    name: str
    group: str
    size_bytes: int
    blocks: int
    version: str
    """A digest of every block's (id, tag): equal iff no block changed."""
    params: ChunkParams
    configuration: str
    """The configuration the client last saw the file's group in."""


@dataclass
class _Node:
    id: str
    tag: Tag
    next: str | None
    marked: bool
    hash: bytes
    size: int


@dataclass
class _Snapshot:
    genesis_tag: Tag
    genesis: Genesis | None
    nodes: builtins.list[_Node] = field(default_factory=list)


class _Restart(Exception):
    """The walk met a reclaimed or absent block."""


class _Stale(Exception):
    """A coverable write found a newer version: the attempt ends."""


def _key(prefix: str, name: str, block: str = "") -> str:
    return f"{prefix}{name}:{block}" if block else f"{prefix}{name}"


class Files:
    """``store.files``: fragmented files of a Store (async)."""

    def __init__(
        self,
        store: BlockStore,
        *,
        max_inflight_blocks: int = MAX_INFLIGHT_BLOCKS,
        max_retries: int = MAX_RETRIES,
        max_read_restarts: int = MAX_READ_RESTARTS,
        orphan_grace_s: float = ORPHAN_GRACE_S,
        configuration: Callable[[str], str] | None = None,
    ) -> None:
        if max_inflight_blocks < 1:
            raise ConfigurationError("max_inflight_blocks must be at least 1")
        self.store = store
        self.max_inflight_blocks = max_inflight_blocks
        self.max_retries = max_retries
        self.max_read_restarts = max_read_restarts
        self.orphan_grace_s = orphan_grace_s
        self._configuration = configuration or (lambda group: "")
        self.blocks_written = 0
        """Registers this object wrote (new, marked, linked, reclaimed blocks, the journal, the
        index): for tests and ``ares bench``."""
        self.data_blocks_written = 0
        """Block writes that carry a block's data: new blocks, marks and relinks (a mark or a
        relink rewrites a block with its data and another flag or pointer)."""
        self.new_blocks_written = 0
        """New blocks written (new content)."""
        self.broken_skip_mark = False
        """Test-only: unlink dropped blocks without marking them first (then a concurrent
        writer can link a block another reclaims)."""
        self.broken_walk_always = False
        """Test-only: never diff against the index (walk the list, reading every block): the
        cost the index saves."""
        self.broken_never_in_place = False
        """Test-only (a cost switch, not a safety one): write_at never rewrites a block in
        place; it writes a new block, marks the old one and relinks (the general path)."""
        self.broken_range_trust_index = False
        """Test-only: a range read trusts the index without proving it current and without
        checking the blocks against it (it can return bytes of a list that never existed)."""
        self.broken_stale_index = False
        """Test-only: a writer whose index write fails leaves the index as it is instead of
        invalidating it (a later writer diffs against a list that misses a change)."""

    # -- registers -------------------------------------------------------------------------------

    async def _get(self, key: str, group: str) -> tuple[Tag, Value | None]:
        tag, raw = await self.store.read_tagged(key, group=group)
        if raw is None or (tag == TAG0 and not raw):
            return tag, None
        return tag, decode(raw)

    async def _cas(
        self, key: str, value: Value, base: Tag, group: str, *, fresh: bool = False
    ) -> tuple[bool, Tag]:
        """cvr_write ``value`` on ``base``: (True, new tag) or (False, latest tag). An ambiguous
        outcome (CoverableConflict, a timeout) is settled by reading: our value is there (ok),
        the base is still the latest (try again), or another version is (stale). ``fresh``: a
        new block under a random id of this writer (one round, docs/protocol.md §9.1)."""
        raw = encode(value)
        for _ in range(MAX_CAS_AMBIGUITY):
            self.blocks_written += 1
            if isinstance(value, Data):
                self.data_blocks_written += 1
                self.new_blocks_written += fresh
            try:
                if fresh:
                    res = await self.store.cvr_write(key, raw, base, group=group, fresh=True)
                else:
                    res = await self.store.cvr_write(key, raw, base, group=group)
            except OperationError:
                tag, now = await self.store.read_tagged(key, group=group)
                if now == raw and tag != base:
                    return True, tag
                if tag == base:
                    continue
                return False, tag
            return bool(res.ok), res.tag
        raise FileConflict(f"writing {key!r}: the outcome stayed ambiguous; retry")

    # -- walking -----------------------------------------------------------------------------------

    async def _genesis(self, name: str, group: str) -> tuple[Tag, Genesis | None]:
        tag, v = await self._get(_key(GENESIS_PREFIX, name), group)
        if v is not None and not isinstance(v, Genesis):
            raise FileChanged(f"file {name!r}: its genesis register holds no genesis block")
        return tag, v

    async def _hint(self, name: str, group: str) -> builtins.list[str]:
        """The block ids the index lists (a guess of the list: the walk checks every pointer)."""
        _, v = await self._get(_key(INDEX_PREFIX, name), group)
        return [e.id for e in v.entries] if isinstance(v, Index) and v.valid else []

    async def _walk(
        self, name: str, group: str, hint: builtins.list[str] | None = None
    ) -> AsyncGenerator[tuple[Tag, Genesis] | tuple[str, Tag, Data], None]:
        """The genesis block, then every block in order. With ``hint`` (the ids the index
        lists), up to ``max_inflight_blocks`` blocks are read ahead; each block is still taken
        only where the pointer read before it leads (a wrong guess costs a read, never a wrong
        block)."""
        gtag, g = await self._genesis(name, group)
        if g is None or not g.exists:
            raise NoSuchFile(f"no file {name!r} in group {group!r}")
        yield gtag, g
        ids = hint or []
        at = {bid: i for i, bid in enumerate(ids)}
        ahead: dict[str, asyncio.Future[tuple[Tag, Value | None]]] = {}
        nxt = g.next
        seen: set[str] = set()
        try:
            while nxt is not None:
                if nxt in seen:
                    raise _Restart  # a cycle can only be a walk across versions
                seen.add(nxt)
                i = at.get(nxt)
                if i is not None:
                    for bid in ids[i : i + self.max_inflight_blocks]:
                        if bid not in ahead and (bid == nxt or bid not in seen):
                            ahead[bid] = asyncio.ensure_future(
                                self._get(_key(BLOCK_PREFIX, name, bid), group)
                            )
                got = ahead.pop(nxt, None)
                if got is None and ahead:  # off the guessed list: drop what was read ahead
                    await _cancel_all(ahead)
                if got is not None:
                    tag, v = await got
                else:
                    tag, v = await self._get(_key(BLOCK_PREFIX, name, nxt), group)
                if not isinstance(v, Data):
                    raise _Restart
                yield nxt, tag, v
                nxt = v.next
        finally:
            await _cancel_all(ahead)

    async def _snapshot(self, name: str, group: str) -> _Snapshot:
        hint = await self._hint(name, group)
        for _ in range(self.max_read_restarts + 1):
            snap: _Snapshot | None = None
            try:
                async for item in self._walk(name, group, hint):
                    if len(item) == 2:
                        snap = _Snapshot(item[0], item[1])
                    else:
                        bid, tag, d = item
                        assert snap is not None
                        snap.nodes.append(
                            _Node(bid, tag, d.next, d.marked, digest(d.data), len(d.data))
                        )
            except NoSuchFile:
                gtag, g = await self._genesis(name, group)
                return _Snapshot(gtag, g)
            except _Restart:
                continue
            assert snap is not None
            return snap
        raise FileChanged(f"file {name!r} kept changing while it was read; retry")

    async def _current(
        self, name: str, group: str, journal: tuple[Tag, Value | None] | None = None
    ) -> tuple[_Snapshot, Tag, bool]:
        """The list an update diffs against, the index's version (the base of this attempt's
        index write) and whether the list came from the index. The index is used when it is
        valid and no attempt in the journal may have linked without recording it (read the
        journal first: an attempt that links after that read is concurrent with this one, and
        one of the two index writes on one base fails and invalidates it); else walk.
        ``journal``: the journal as just read by the caller (saves a round trip)."""
        if journal is None:
            _, jv = await self._get(_key(JOURNAL_PREFIX, name), group)
        else:
            jv = journal[1]
        itag, iv = await self._get(_key(INDEX_PREFIX, name), group)
        linking = isinstance(jv, Journal) and any(a.links for a in jv.attempts)
        if (
            isinstance(iv, Index)
            and iv.valid
            and iv.genesis_tag is not None
            and not linking
            and not self.broken_walk_always
        ):
            ents = iv.entries
            nodes = [
                _Node(
                    e.id,
                    e.tag,
                    ents[i + 1].id if i + 1 < len(ents) else None,
                    False,
                    e.hash,
                    e.size,
                )
                for i, e in enumerate(ents)
            ]
            return _Snapshot(iv.genesis_tag, iv.genesis, nodes), itag, True
        return await self._snapshot(name, group), itag, False

    async def _put_index(self, name: str, group: str, base: Tag, index: Index) -> bool:
        """Write the index on the version read before the snapshot; False if another writer
        wrote it since (the caller then invalidates it, or leaves it if it changed nothing)."""
        ok, _ = await self._cas(_key(INDEX_PREFIX, name), index, base, group)
        return ok

    async def _invalidate_index(self, name: str, group: str) -> None:
        """Write a new, invalid version of the index (always a new version, even over an
        invalid one: an index write based on an older version must fail)."""
        key = _key(INDEX_PREFIX, name)
        for attempt in range(MAX_JOURNAL_RETRIES):
            tag, _ = await self._get(key, group)
            ok, _ = await self._cas(key, Index(), tag, group)
            if ok:
                return
            await asyncio.sleep(
                min(0.05, 0.001 * 2 ** min(attempt, 6)) * secrets.randbelow(100) / 100
            )
        raise FileConflict(f"file {name!r}: its index kept changing; retry")

    # -- reading -----------------------------------------------------------------------------------

    async def read_into(self, name: str, sink: Any, *, group: str = DEFAULT_GROUP) -> int:
        """Stream file ``name`` into ``sink`` (``write(bytes)``); returns the bytes written. If
        the file changes under the read so that a block was reclaimed, start again from the
        sink's starting position (or raise FileChanged if the sink cannot seek)."""
        check_name(name)
        attrs = {"ares.op": "file-read", "ares.group": group, "ares.object": name}
        with tracing.span("op", attrs) as span:
            start = _tell(sink)
            hint = await self._hint(name, group)
            for _ in range(self.max_read_restarts + 1):
                total = 0
                try:
                    async for item in self._walk(name, group, hint):
                        if len(item) == 3:
                            data = item[2].data
                            r = sink.write(data)
                            if isinstance(r, Awaitable):
                                await r
                            total += len(data)
                            memory.moved(len(data))
                except _Restart:
                    if start is None:
                        raise FileChanged(
                            f"file {name!r} changed during a streaming read into a sink that "
                            "cannot seek back; read it again"
                        ) from None
                    sink.seek(start)
                    sink.truncate()
                    continue
                span.set_attribute("ares.bytes", total)
                return total
        raise FileChanged(f"file {name!r} kept changing while it was read; retry")

    async def read(self, name: str, *, group: str = DEFAULT_GROUP) -> bytes:
        buf = io.BytesIO()
        await self.read_into(name, buf, group=group)
        return buf.getvalue()

    async def iter_blocks(self, name: str, *, group: str = DEFAULT_GROUP) -> AsyncIterator[bytes]:
        """The file's data, block by block (FileChanged if it changes so much under the
        iteration that a block was reclaimed: bytes already yielded cannot be taken back)."""
        check_name(name)
        hint = await self._hint(name, group)
        try:
            async for item in self._walk(name, group, hint):
                if len(item) == 3:
                    yield item[2].data
        except _Restart:
            raise FileChanged(f"file {name!r} changed during a streaming read") from None

    # -- range reads -------------------------------------------------------------------------------

    async def _layout(self, name: str, group: str) -> tuple[Tag, Index] | None:
        """The index, if it is provably the file's list at the instant it was read (t_I); None
        if it is invalid or cannot be proved current (the caller walks).

        Proof obligation (docs/protocol.md §9.2): every change of the list (a mark, a relink, a
        collector's fence) is made by an attempt whose links are in the journal from before the
        change until after it changed the index (wrote its new list or invalidated it). So after
        reading the index at t_I, a journal read (later) that shows no attempt with links and
        then an index read (later still) that finds the same version prove that no change made
        before t_J is unrecorded at t_I: its index change was either before t_I (the index read
        reflects it), between t_I and the last read (the version moved: retry), or after it (its
        attempt was still in the journal at t_J: walk). The blocks are then read at the tags the
        index names (a tag names one write), so the bytes are those of the file at t_I."""
        ikey = _key(INDEX_PREFIX, name)
        for _ in range(self.max_read_restarts + 1):
            itag, iv = await self._get(ikey, group)
            if not isinstance(iv, Index) or not iv.valid or iv.genesis_tag is None:
                return None
            if self.broken_range_trust_index:
                return itag, iv
            _, jv = await self._get(_key(JOURNAL_PREFIX, name), group)
            if isinstance(jv, Journal) and any(a.links for a in jv.attempts):
                return None
            again, _ = await self.store.read_tagged(ikey, group=group)
            if again == itag:
                return itag, iv
        return None

    async def read_range(
        self,
        name: str,
        offset: int,
        length: int | None,
        *,
        group: str = DEFAULT_GROUP,
    ) -> AsyncIterator[bytes]:
        """The bytes ``[offset, offset + length)`` of file ``name`` (``length=None``: to the
        end), as pieces of at most one block. Only the blocks that cover the range are read:
        their ids, versions, sizes and hashes come from the file's index, proved current when it
        was read (see :meth:`_layout`), and every block read is checked against its entry
        (version, size, hash). A block that no longer matches (a concurrent update) starts the
        read again from a fresh index; an index that cannot be proved current (invalid, or a
        writer between linking and recording) makes the read walk the list from the genesis
        block up to the range's end instead. The result is always one version of the file: the
        one current when the index was read (or, walking, the guarantee of :meth:`read`).

        Past the end there are no bytes: a range that starts at or after the file's size yields
        nothing, one that ends past it is cut short. Up to ``max_inflight_blocks`` blocks are
        read at once, and the first ones are all checked before anything is yielded, so a range
        of up to that many blocks is atomic and restarts freely; a longer one that changes after
        its first pieces were yielded raises :class:`FileChanged` (use :meth:`read_range_into`
        with a seekable sink to restart instead). Raises :class:`NoSuchFile`."""
        check_name(name)
        if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
            raise ConfigurationError(f"offset must be a non-negative integer, not {offset!r}")
        if length is not None and (
            not isinstance(length, int) or isinstance(length, bool) or length < 0
        ):
            raise ConfigurationError(f"length must be a non-negative integer, not {length!r}")
        end = None if length is None else offset + length
        yielded = False
        for _ in range(self.max_read_restarts + 1):
            lay = await self._layout(name, group)
            if lay is None:
                async for piece in self._range_by_walk(name, group, offset, end):
                    yield piece
                return
            _, ix = lay
            if ix.genesis is None or not ix.genesis.exists:
                raise NoSuchFile(f"no file {name!r} in group {group!r}")
            cover: builtins.list[tuple[Entry, int]] = []  # (entry, file offset of its start)
            at = 0
            for e in ix.entries:
                if end is not None and at >= end:
                    break
                if at + e.size > offset:
                    cover.append((e, at))
                at += e.size
            out = self._range_blocks(name, group, cover, offset, end)
            try:
                async for piece in out:
                    yield piece
                    yielded = True
            except _Restart:
                if yielded:
                    raise FileChanged(
                        f"file {name!r} changed during a streaming range read; read it again"
                    ) from None
                continue
            finally:
                await out.aclose()
            return
        raise FileChanged(f"file {name!r} kept changing while it was read; retry")

    async def _range_blocks(
        self,
        name: str,
        group: str,
        cover: builtins.list[tuple[Entry, int]],
        offset: int,
        end: int | None,
    ) -> AsyncGenerator[bytes, None]:
        """The covering blocks' slices, read ``max_inflight_blocks`` ahead; the first window is
        read and checked whole before its first slice is yielded. _Restart: a block no longer
        matches its entry."""
        ahead: builtins.list[asyncio.Future[tuple[Tag, Value | None]]] = []
        held: builtins.list[bytes] = []
        first_window = min(len(cover), self.max_inflight_blocks)
        try:
            for i, (e, start) in enumerate(cover):
                while len(ahead) < min(len(cover) - i, self.max_inflight_blocks):
                    nxt = cover[i + len(ahead)][0]
                    ahead.append(
                        asyncio.ensure_future(self._get(_key(BLOCK_PREFIX, name, nxt.id), group))
                    )
                tag, v = await ahead.pop(0)
                if not isinstance(v, Data) or v.marked or len(v.data) != e.size:
                    raise _Restart
                if self.broken_range_trust_index:
                    pass
                elif tag != e.tag or digest(v.data) != e.hash:
                    raise _Restart
                lo = max(0, offset - start)
                hi = e.size if end is None else min(e.size, end - start)
                piece = v.data if lo == 0 and hi == e.size else v.data[lo:hi]
                memory.moved(len(piece))
                if i + 1 < first_window:
                    held.append(piece)
                    continue
                for h in held:
                    yield h
                held = []
                yield piece
        finally:
            for f in ahead:
                f.cancel()
            await asyncio.gather(*ahead, return_exceptions=True)

    async def _range_by_walk(
        self, name: str, group: str, offset: int, end: int | None
    ) -> AsyncIterator[bytes]:
        """The range by walking from the genesis block, stopping at its end (the guarantee of
        :meth:`read`); restarts while nothing was yielded, else FileChanged."""
        yielded = False
        for _ in range(self.max_read_restarts + 1):
            at = 0
            walk = self._walk(name, group)
            try:
                async for item in walk:
                    if len(item) != 3:  # the genesis block: the file exists
                        if end is not None and end <= offset:
                            break
                        continue
                    data = item[2].data
                    lo = max(offset, at)
                    hi = at + len(data) if end is None else min(end, at + len(data))
                    if lo < hi:
                        yield data[lo - at : hi - at]
                        yielded = True
                    at += len(data)
                    if end is not None and at >= end:
                        break
            except _Restart:
                if yielded:
                    raise FileChanged(
                        f"file {name!r} changed during a streaming range read; read it again"
                    ) from None
                continue
            finally:
                await walk.aclose()
            return
        raise FileChanged(f"file {name!r} kept changing while it was read; retry")

    async def read_range_into(
        self,
        name: str,
        offset: int,
        length: int | None,
        sink: Any,
        *,
        group: str = DEFAULT_GROUP,
    ) -> int:
        """:meth:`read_range` into ``sink`` (``write(bytes)``, maybe async); returns the bytes
        written. A seekable sink is rewound and the read restarted if the file changes under a
        long range; else FileChanged."""
        attrs = {"ares.op": "file-read-range", "ares.group": group, "ares.object": name}
        with tracing.span("op", attrs) as span:
            start = _tell(sink)
            for _ in range(self.max_read_restarts + 1):
                total = 0
                try:
                    async for piece in self.read_range(name, offset, length, group=group):
                        r = sink.write(piece)
                        if isinstance(r, Awaitable):
                            await r
                        total += len(piece)
                except FileChanged:
                    if start is None or total == 0:
                        raise
                    sink.seek(start)
                    sink.truncate()
                    continue
                span.set_attribute("ares.bytes", total)
                return total
        raise FileChanged(f"file {name!r} kept changing while it was read; retry")

    # -- stat, list, delete ------------------------------------------------------------------------

    async def stat(self, name: str, *, group: str = DEFAULT_GROUP) -> FileStat:
        check_name(name)
        lay = await self._layout(name, group)  # the index proved current: no block is read
        if lay is not None:
            ix = lay[1]
            assert ix.genesis_tag is not None
            snap = _Snapshot(
                ix.genesis_tag,
                ix.genesis,
                [_Node(e.id, e.tag, None, False, e.hash, e.size) for e in ix.entries],
            )
        else:
            snap = await self._snapshot(name, group)
        if snap.genesis is None or not snap.genesis.exists:
            raise NoSuchFile(f"no file {name!r} in group {group!r}")
        h = hashlib.blake2b(digest_size=8)
        h.update(f"{snap.genesis_tag}".encode())
        for n in snap.nodes:
            h.update(f"|{n.id}@{n.tag}".encode())
        return FileStat(
            name,
            group,
            sum(n.size for n in snap.nodes),
            len(snap.nodes),
            h.hexdigest(),
            snap.genesis.params,
            self._configuration(group),
        )

    async def list(self, prefix: str = "", *, group: str = DEFAULT_GROUP) -> builtins.list[str]:
        """Names of the files of ``group`` that start with ``prefix`` (deleted ones excluded)."""
        keys = await self.store.keys(GENESIS_PREFIX + prefix, group=group)
        names = [k[len(GENESIS_PREFIX) :] for k in keys if k.startswith(GENESIS_PREFIX)]
        sem = asyncio.Semaphore(self.max_inflight_blocks * 4)

        async def live(n: str) -> bool:
            async with sem:
                _, g = await self._genesis(n, group)
            return g is not None and g.exists

        flags = await asyncio.gather(*(live(n) for n in names))
        return [n for n, ok in zip(names, flags, strict=True) if ok]

    async def delete(self, name: str, *, group: str = DEFAULT_GROUP) -> None:
        """Delete the file: every block is unlinked and reclaimed; the genesis register stays
        (a small ``exists=false`` record), so the name can be written again."""
        check_name(name)
        with tracing.span("op", {"ares.op": "file-delete", "ares.group": group}):
            await self._update(name, None, group, None)

    # -- writing -----------------------------------------------------------------------------------

    async def write(
        self,
        name: str,
        source: Any,
        *,
        group: str = DEFAULT_GROUP,
        params: ChunkParams | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """Write file ``name`` from bytes, a binary file object or an async iterator of bytes.
        Returns the file's size. Only blocks whose content changed are written. ``params``:
        chunk sizes for a new file (an existing file keeps its own unless given).
        ``progress(n)`` is called as bytes pass. Raises FileConflict after ``max_retries``
        attempts lost to concurrent writers.

        A source that can be read only once (a pipe, an async iterator) cannot be retried: a
        conflict then raises FileConflict at once."""
        check_name(name)
        if params is not None:
            check_params(params)
        attrs: dict[str, Any] = {"ares.op": "file-write", "ares.group": group, "ares.object": name}
        with tracing.span("op", attrs) as span:
            written = await self._update(name, source, group, params, progress)
            span.set_attribute("ares.bytes", written)
        return written

    async def write_at(
        self, name: str, offset: int, data: bytes, *, group: str = DEFAULT_GROUP
    ) -> int:
        """Overwrite ``len(data)`` bytes of file ``name`` at ``offset`` (``offset`` at most the
        file's size; writing past the end extends the file). Returns the file's new size.

        Only the blocks around the change are read and re-chunked: from the block holding
        ``offset`` until the new cuts meet an old block boundary past the change (FastCDC
        restarts at every cut, so from there on the cuts are the old ones). The result is the
        file :meth:`write` would leave with the whole new content, at the cost of a few blocks
        instead of a pass over the file. Conflicts retry as for :meth:`write`."""
        check_name(name)
        if not isinstance(offset, int) or offset < 0:
            raise ConfigurationError(f"offset must be a non-negative integer, not {offset!r}")
        if not isinstance(data, bytes | bytearray | memoryview):
            raise ConfigurationError(f"data must be bytes, not {type(data).__name__}")
        attrs: dict[str, Any] = {
            "ares.op": "file-write",
            "ares.group": group,
            "ares.object": name,
            "ares.offset": offset,
        }
        with tracing.span("op", attrs) as span:
            size = await self._update(name, None, group, None, patch=(offset, bytes(data)))
            span.set_attribute("ares.bytes", len(data))
        return size

    async def _update(
        self,
        name: str,
        source: Any,
        group: str,
        params: ChunkParams | None,
        progress: Callable[[int], None] | None = None,
        *,
        patch: tuple[int, bytes] | None = None,
    ) -> int:
        rewind = _tell(source) if source is not None and hasattr(source, "read") else None
        replayable = source is None or isinstance(source, bytes | bytearray | memoryview)
        journal = await self._collect_stale(name, group)
        for attempt in range(self.max_retries + 1):
            if attempt:
                if not replayable and rewind is None:
                    break
                if rewind is not None:
                    source.seek(rewind)
                await asyncio.sleep(0.005 * 2**attempt * secrets.randbelow(100) / 100)
            done, size = await self._attempt(
                name, source, group, params, progress, patch, journal if not attempt else None
            )
            if done:
                return size
        raise FileConflict(
            f"file {name!r}: concurrent writers changed the same blocks on every one of "
            f"{attempt + 1} attempts; nothing of the last attempt is linked"
        )

    async def _attempt(
        self,
        name: str,
        source: Any,
        group: str,
        params: ChunkParams | None,
        progress: Callable[[int], None] | None,
        patch: tuple[int, bytes] | None = None,
        journal: tuple[Tag, Value | None] | None = None,
    ) -> tuple[bool, int]:
        with tracing.span("file.read-list", {"ares.object": name}):
            snap, itag, from_index = await self._current(name, group, journal)
        g = snap.genesis if snap.genesis is not None and snap.genesis.exists else None
        if source is None and g is None:
            raise NoSuchFile(f"no file {name!r} in group {group!r}")
        if patch is not None:
            old_size = sum(n.size for n in snap.nodes)
            if patch[0] > old_size:
                raise ConfigurationError(
                    f"offset {patch[0]} is past the end of file {name!r} ({old_size} bytes)"
                )
            if not patch[1]:
                return True, old_size
        p = params or (g.params if g is not None else ChunkParams())
        old = snap.nodes
        rechunk = g is not None and g.params != p
        index: dict[bytes, builtins.list[int]] = {}
        if not rechunk:
            for i, n in enumerate(old):
                if not n.marked:
                    index.setdefault(n.hash, []).append(i)
        att = Attempt(secrets.token_hex(8), time.time())
        # write_at knows its few new blocks before its links: they enter the journal together
        w = _Writer(self, name, group, att, defer=patch is not None, journal=journal)
        read: dict[str, tuple[Tag, Data]] = {}  # blocks write_at read (marks reuse them)
        seq: builtins.list[tuple[str, int]] = []  # ("old", index) | ("new", k)
        new_meta: builtins.list[tuple[bytes, int]] = []  # hash and size of new block k
        pending: tuple[int, bytes] | None = None
        pos = 0
        size = 0

        def entry_id(e: tuple[str, int]) -> str:
            return old[e[1]].id if e[0] == "old" else f"{att.id}.{e[1]}"

        async def place(chunk: bytes, h: bytes) -> None:
            nonlocal pending, pos
            e: tuple[str, int] | None = None
            cands = index.get(h)
            if cands:
                j = bisect.bisect_left(cands, pos)
                if j < len(cands):
                    e = ("old", cands[j])
                    pos = cands[j] + 1
            if e is None:
                e = ("new", w.count)
                w.count += 1
                new_meta.append((h, len(chunk)))
            if pending is not None:
                await w.put(pending[0], pending[1], entry_id(e))
                pending = None
            if e[0] == "new":
                pending = (e[1], chunk)
            seq.append(e)

        async def keep(x: int) -> None:
            """Keep old block ``x`` (its predecessor, if new, now learns its id)."""
            nonlocal pending, pos
            if pending is not None:
                await w.put(pending[0], pending[1], old[x].id)
                pending = None
            seq.append(("old", x))
            pos = x + 1

        try:
            if patch is not None:
                try:
                    size = await self._patch(name, group, p, old, patch, place, keep, read)
                except _Stale:  # a block it re-chunks was reclaimed: take the list again
                    await w.settle()
                    await w.orphans_unlinked(set(range(w.count)))
                    return False, 0
                if pending is not None:
                    await w.put(pending[0], pending[1], None)
                await w.drain()
            elif source is not None:
                chunker = StreamChunker(p)
                with tracing.span("file.chunk-and-write-blocks", {"ares.object": name}):
                    async for piece in read_source(source):
                        size += len(piece)
                        with tracing.span("file.chunking"):
                            cut = await asyncio.to_thread(chunker.feed_hashed, piece)
                        for c, h in cut:
                            await place(c, h)
                        if progress is not None:
                            progress(len(piece))
                        memory.moved(len(piece))
                    with tracing.span("file.chunking"):
                        cut = await asyncio.to_thread(chunker.finish_hashed)
                    for c, h in cut:
                        await place(c, h)
                    if pending is not None:
                        await w.put(pending[0], pending[1], None)
                    await w.drain()

            def listing(relinked: dict[int, Tag], genesis: tuple[Tag, Genesis] | None) -> Index:
                """The list this attempt leaves (every link committed): for the index."""
                gt, gv = genesis or (snap.genesis_tag, snap.genesis)
                if len(seq) > MAX_INDEX_ENTRIES:
                    return Index()
                ents = tuple(
                    Entry(old[i].id, relinked.get(i, old[i].tag), old[i].hash, old[i].size)
                    if kind == "old"
                    else Entry(entry_id((kind, i)), w.tags[i], *new_meta[i])
                    for kind, i in seq
                )
                return Index(True, gt, gv, ents)

            linked = await self._link(
                name,
                group,
                snap,
                g,
                p,
                old,
                seq,
                w,
                entry_id,
                exists=source is not None or patch is not None,
                index_base=itag,
                from_index=from_index,
                listing=listing,
                read=read,
            )
            return linked, size
        except BaseException:
            await w.abandon()
            raise

    async def _patch(
        self,
        name: str,
        group: str,
        p: ChunkParams,
        old: builtins.list[_Node],
        patch: tuple[int, bytes],
        place: Callable[[bytes, bytes], Awaitable[None]],
        keep: Callable[[int], Awaitable[None]],
        read: dict[str, tuple[Tag, Data]],
    ) -> int:
        """The chunks of ``old`` with ``patch`` applied, re-chunking only around it (see
        :meth:`write_at`); returns the new size. A list with a marked block (a writer between
        marking and linking, or one that died there) is re-chunked whole, so that the marked
        block is dropped rather than kept."""
        offset = patch[0]
        starts = [0]
        for n in old:
            starts.append(starts[-1] + n.size)
        first = max(0, bisect.bisect_right(starts, offset) - 1) if old else 0
        first = min(first, max(0, len(old) - 1))
        whole = any(n.marked for n in old)
        if whole:
            first = 0
        for x in range(first):
            await keep(x)
        chunker = StreamChunker(p)
        emitted = starts[first] if old else 0
        return await self._rechunk(
            name, group, old, patch, place, keep, read, first, starts, whole, chunker, emitted
        )

    async def _rechunk(
        self,
        name: str,
        group: str,
        old: builtins.list[_Node],
        patch: tuple[int, bytes],
        place: Callable[[bytes, bytes], Awaitable[None]],
        keep: Callable[[int], Awaitable[None]],
        read: dict[str, tuple[Tag, Data]],
        first: int,
        starts: builtins.list[int],
        whole: bool,
        chunker: StreamChunker,
        emitted: int,
    ) -> int:
        """:meth:`_patch` from block ``first`` on."""
        offset, data = patch
        end = offset + len(data)
        old_size = starts[-1]
        ends = {starts[x + 1]: x for x in range(len(old))}
        with tracing.span("file.chunk-and-write-blocks", {"ares.object": name}):
            # the block after the first is read with it: the cut that ends the first block is
            # only known with the bytes after it (one block of memory more)
            ahead: asyncio.Future[tuple[Tag, Value | None]] | None = None
            try:
                for x in range(first, len(old)):
                    if ahead is not None:
                        tag, v = await ahead
                    else:
                        tag, v = await self._get(_key(BLOCK_PREFIX, name, old[x].id), group)
                    ahead = None
                    if x == first and x + 1 < len(old):
                        ahead = asyncio.ensure_future(
                            self._get(_key(BLOCK_PREFIX, name, old[x + 1].id), group)
                        )
                    if not isinstance(v, Data):
                        raise _Stale  # reclaimed since the snapshot: the list moved on
                    read[old[x].id] = (tag, v)
                    lo, hi = starts[x], starts[x + 1]
                    piece = v.data
                    if offset < hi and end > lo:
                        buf = bytearray(piece)
                        a, b = max(offset, lo), min(end, hi)
                        buf[a - lo : b - lo] = data[a - offset : b - offset]
                        piece = bytes(buf)
                    with tracing.span("file.chunking"):
                        cut = await asyncio.to_thread(chunker.feed_hashed, piece, eager=True)
                    for c, h in cut:
                        await place(c, h)
                        emitted += len(c)
                    if not whole and emitted >= end and emitted in ends and cut:
                        for y in range(ends[emitted] + 1, len(old)):  # the cuts are the old ones
                            await keep(y)
                        return max(old_size, end)
            finally:
                if ahead is not None:
                    ahead.cancel()
                    await asyncio.gather(ahead, return_exceptions=True)
            if end > old_size:
                with tracing.span("file.chunking"):
                    cut = await asyncio.to_thread(
                        chunker.feed_hashed, data[max(0, old_size - offset) :]
                    )
                for c, h in cut:
                    await place(c, h)
            with tracing.span("file.chunking"):
                cut = await asyncio.to_thread(chunker.finish_hashed)
            for c, h in cut:
                await place(c, h)
        return max(old_size, end)

    async def _link(
        self,
        name: str,
        group: str,
        snap: _Snapshot,
        g: Genesis | None,
        p: ChunkParams,
        old: builtins.list[_Node],
        seq: builtins.list[tuple[str, int]],
        w: _Writer,
        entry_id: Callable[[tuple[str, int]], str],
        *,
        exists: bool,
        index_base: Tag,
        from_index: bool,
        listing: Callable[[dict[int, Tag], tuple[Tag, Genesis] | None], Index],
        read: dict[str, tuple[Tag, Data]] | None = None,
    ) -> bool:
        """Mark, link, record the new list in the index (or invalidate it), reclaim; True if
        every link committed. The index is written before the journal entry is dropped: while
        an attempt with links is in the journal, writers walk instead of trusting the index."""
        kept = {e[1] for e in seq if e[0] == "old"}
        dropped = [i for i in range(len(old)) if i not in kept]
        # link points: (predecessor index or -1 for genesis, new next, dropped indices jumped)
        links: builtins.list[tuple[int, str | None, builtins.list[int], builtins.list[int]]] = []
        prev = -1
        run_new: builtins.list[int] = []
        for e in [*seq, ("end", -1)]:
            if e[0] == "new":
                run_new.append(e[1])
                continue
            target_old = e[1] if e[0] == "old" else len(old)
            first = (
                entry_id(("new", run_new[0]))
                if run_new
                else (old[e[1]].id if e[0] == "old" else None)
            )
            current_next = (
                snap.genesis.next
                if prev == -1 and snap.genesis
                else (old[prev].next if prev >= 0 else None)
            )
            jumped = list(range(prev + 1, target_old))
            need = current_next != first
            if prev == -1 and (snap.genesis != Genesis(first, p, exists)):
                need = True
            if need:
                links.append((prev, first, jumped, run_new))
            elif run_new or jumped:  # pragma: no cover - a run always changes its link
                raise AssertionError("a changed run without a link point")
            run_new = []
            if e[0] == "old":
                prev = e[1]
        if not links:
            if not from_index:  # walked: leave the list in the index for the next one
                await self._put_index(name, group, index_base, listing({}, None))
            await w.finish()
            return True
        in_place = self._in_place(old, seq, w)
        if in_place is not None:
            return await self._rewrite_in_place(
                name, group, snap, old, in_place, w, index_base, read or {}
            )
        link_pts = tuple(
            (old[i].id if i >= 0 else "", old[i].tag if i >= 0 else snap.genesis_tag)
            for i, *_ in links
        )
        if not await w.record_links(link_pts):
            return False
        with tracing.span("file.link", {"ares.object": name, "ares.links": len(links)}):
            marks = [] if self.broken_skip_mark else [i for i in dropped if not old[i].marked]
            known = read or {}
            done = await asyncio.gather(  # deferred new blocks and marks: independent registers
                w.flush(),
                _gather_limited(
                    [
                        functools.partial(self._mark, name, group, old[i], known.get(old[i].id))
                        for i in marks
                    ],
                    self.max_inflight_blocks,
                ),
                return_exceptions=True,
            )
            for failed in done:
                if isinstance(failed, BaseException) and not isinstance(failed, _Stale):
                    raise failed
            if any(isinstance(failed, _Stale) for failed in done):
                await self._invalidate_index(name, group)  # some marks may have committed
                await w.orphans_unlinked(set(range(w.count)))
                return False
            results = await asyncio.gather(
                *(
                    self._relink(
                        name,
                        group,
                        snap,
                        old,
                        i,
                        first,
                        p,
                        exists,
                        known.get(old[i].id) if i >= 0 else None,
                    )
                    for i, first, _, _ in links
                ),
                return_exceptions=True,
            )
        ok_all = True
        unlinked_new: set[int] = set()
        ambiguous = False
        reclaim: builtins.list[_Node] = []
        relinked: dict[int, Tag] = {}
        genesis: tuple[Tag, Genesis] | None = None
        for (i, first, jumped, run), r in zip(links, results, strict=True):
            if isinstance(r, BaseException):
                ok_all = False
                ambiguous = True
            elif r[0]:
                reclaim += [old[j] for j in jumped]
                if i < 0:
                    genesis = (r[1], Genesis(first, p, exists))
                else:
                    relinked[i] = r[1]
            else:
                ok_all = False
                unlinked_new.update(run)

        async def record() -> None:
            """The new list into the index, or the index invalid (before the journal entry
            goes: see _current)."""
            if ok_all:
                new_index = listing(relinked, genesis)
                if self.broken_stale_index:
                    await self._put_index(name, group, index_base, new_index)
                elif not await self._put_index(name, group, index_base, new_index):
                    await self._invalidate_index(name, group)
            elif not ambiguous:
                await self._invalidate_index(name, group)

        with tracing.span("file.reclaim", {"ares.object": name, "ares.blocks": len(reclaim)}):
            await asyncio.gather(  # independent registers: one round trip for both
                record(),
                _gather_limited(
                    [functools.partial(self._reclaim, name, group, n.id, n.tag) for n in reclaim],
                    self.max_inflight_blocks,
                ),
            )
            if ambiguous:  # a link failed without an answer: the collector decides later
                await w.leave_for_collector()
                raise next(r for r in results if isinstance(r, BaseException))
            await w.orphans_unlinked(unlinked_new)
        return ok_all

    def _in_place(
        self, old: builtins.list[_Node], seq: builtins.list[tuple[str, int]], w: _Writer
    ) -> int | None:
        """The position of the one block a write_at may rewrite in place, or None: the new
        list is the old one with exactly one block's content replaced by one new chunk of the
        same size (its cut points stayed: the common case of an overwrite inside a block), and
        no block is marked (a writer between marking and linking: the general path)."""
        if self.broken_never_in_place or not w.defer or w.registered or w.count != 1:
            return None
        if len(seq) != len(old) or any(n.marked for n in old):
            return None
        pos = [j for j, e in enumerate(seq) if e != ("old", j)]
        if len(pos) != 1 or seq[pos[0]] != ("new", 0):
            return None
        held = w.held()
        if len(held) != 1 or len(held[0][1]) != old[pos[0]].size:
            return None
        return pos[0]

    async def _rewrite_in_place(
        self,
        name: str,
        group: str,
        snap: _Snapshot,
        old: builtins.list[_Node],
        i: int,
        w: _Writer,
        index_base: Tag,
        read: dict[str, tuple[Tag, Data]],
    ) -> bool:
        """Write the new content of block ``i`` over the block itself: a coverable write on the
        version the snapshot names, keeping its id and ``next`` (the list does not change, so no
        journal entry, mark, relink or reclaim: docs/design.md). Then the index, with the
        block's new version and hash (or invalid if another writer wrote it meanwhile)."""
        n = old[i]
        data = w.held()[0][1]
        key = _key(BLOCK_PREFIX, name, n.id)
        known = read.get(n.id)
        v: Value | None
        if known is not None and known[0] == n.tag:
            tag, v = known
        else:
            tag, v = await self._get(key, group)
        if tag != n.tag or not isinstance(v, Data) or v.marked:
            return False
        with tracing.span("file.link", {"ares.object": name, "ares.links": 0}):
            ok, t = await self._cas(key, Data(v.next, data), tag, group)
            self.new_blocks_written += ok  # new content, in an old block
            if not ok:
                return False
            ents = tuple(
                Entry(m.id, t, digest(data), m.size)
                if j == i
                else Entry(m.id, m.tag, m.hash, m.size)
                for j, m in enumerate(old)
            )
            if not await self._put_index(
                name, group, index_base, Index(True, snap.genesis_tag, snap.genesis, ents)
            ):
                await self._invalidate_index(name, group)
        return True

    async def _mark(
        self, name: str, group: str, n: _Node, known: tuple[Tag, Data] | None = None
    ) -> None:
        """Mark block ``n`` on its snapshot version. ``known``: the block as read earlier by
        this attempt; at the snapshot's version it is the value there (a tag names one write),
        so no read is needed -- the coverable write fails if the block moved since."""
        key = _key(BLOCK_PREFIX, name, n.id)
        v: Value | None
        if known is not None and known[0] == n.tag:
            tag, v = known
        else:
            tag, v = await self._get(key, group)
        if tag != n.tag or not isinstance(v, Data):
            raise _Stale
        ok, t = await self._cas(key, Data(v.next, v.data, marked=True), tag, group)
        if not ok:
            raise _Stale
        n.tag, n.marked = t, True

    async def _relink(
        self,
        name: str,
        group: str,
        snap: _Snapshot,
        old: builtins.list[_Node],
        i: int,
        first: str | None,
        p: ChunkParams,
        exists: bool,
        known: tuple[Tag, Data] | None = None,
    ) -> tuple[bool, Tag]:
        """Point block ``i`` (-1: the genesis block) at ``first``: (committed, new version).
        ``known``: the block as this attempt read it (used without a read if at the snapshot's
        version, as in :meth:`_mark`)."""
        if i < 0:
            key = _key(GENESIS_PREFIX, name)
            new: Value = Genesis(first, p, exists)
            return await self._cas(key, new, snap.genesis_tag, group)
        n = old[i]
        key = _key(BLOCK_PREFIX, name, n.id)
        v: Value | None
        if known is not None and known[0] == n.tag:
            tag, v = known
        else:
            tag, v = await self._get(key, group)
        if tag != n.tag or not isinstance(v, Data) or v.marked:
            return False, tag
        return await self._cas(key, Data(first, v.data), tag, group)

    async def _reclaim(self, name: str, group: str, bid: str, known: Tag | None = None) -> None:
        """Replace an unreachable block by a tombstone (any version but a tombstone).
        ``known``: its version as last written by this writer (tried first, without a read)."""
        key = _key(BLOCK_PREFIX, name, bid)
        if known is not None:
            ok, _ = await self._cas(key, Dead(), known, group)
            if ok:
                return
        for _ in range(MAX_CAS_AMBIGUITY):
            tag, v = await self._get(key, group)
            if v is None or isinstance(v, Dead):
                return
            ok, _ = await self._cas(key, Dead(), tag, group)
            if ok:
                return

    # -- the journal and orphan collection ---------------------------------------------------------

    async def _journal_update(
        self,
        name: str,
        group: str,
        change: Callable[[Journal], Journal | None],
        hint: tuple[Tag, Value | None] | None = None,
        learn: Callable[[Tag, Journal], None] | None = None,
    ) -> Journal | None:
        """Apply ``change`` to the journal atomically (coverable write, retried on stale).
        ``change`` returns None to stop without writing. ``hint``: the journal as last seen
        (tried first, without a read: the coverable write fails if it moved since);
        ``learn(tag, journal)`` is told what was written."""
        key = _key(JOURNAL_PREFIX, name)
        for attempt in range(MAX_JOURNAL_RETRIES):
            hinted = hint is not None
            if hint is not None:
                (tag, v), hint = hint, None
            else:
                tag, v = await self._get(key, group)
            j = v if isinstance(v, Journal) else Journal()
            new = change(j)
            if new is None:
                return j
            ok, t = await self._cas(key, new, tag, group)
            if ok:
                if learn is not None:
                    learn(t, new)
                return new
            if hinted:
                continue
            await asyncio.sleep(
                min(0.05, 0.001 * 2 ** min(attempt, 6)) * secrets.randbelow(100) / 100
            )
        raise FileConflict(f"file {name!r}: its journal kept changing; retry")

    async def _collect_stale(self, name: str, group: str) -> tuple[Tag, Value | None] | None:
        """Collect if an attempt in the journal is older than the grace; returns the journal
        as read when nothing was collected (the caller's first snapshot reuses it)."""
        tag, v = await self._get(_key(JOURNAL_PREFIX, name), group)
        if isinstance(v, Journal) and any(
            time.time() - a.started_s > self.orphan_grace_s for a in v.attempts
        ):
            await self.collect(name, group=group)
            return None
        return tag, v

    async def collect(
        self, name: str, *, group: str = DEFAULT_GROUP, grace_s: float | None = None
    ) -> int:
        """Reclaim the blocks of write attempts older than ``grace_s`` (default
        orphan_grace_s) that never linked them (a writer that died): fence each attempt so it
        can never link, then tombstone each of its blocks the list does not reach. Returns the
        blocks reclaimed."""
        check_name(name)
        grace = self.orphan_grace_s if grace_s is None else grace_s
        now = time.time()
        j = await self._journal_update(name, group, lambda j: j)
        assert j is not None
        reclaimed = 0
        for found in j.attempts:
            a = found
            if now - a.started_s < grace:
                continue
            if not a.links and not a.aborted:

                def abort(j: Journal, aid: str = a.id) -> Journal | None:
                    cur = next((x for x in j.attempts if x.id == aid), None)
                    if cur is None or cur.links or cur.aborted:
                        return None
                    rest = tuple(x for x in j.attempts if x.id != aid)
                    return Journal((*rest, Attempt(aid, cur.started_s, (), 0, True)))

                j2 = await self._journal_update(name, group, abort)
                assert j2 is not None
                a = next((x for x in j2.attempts if x.id == a.id), a)
            for bid, base in a.links:  # fence: no link of the attempt can succeed any more
                key = _key(GENESIS_PREFIX, name) if not bid else _key(BLOCK_PREFIX, name, bid)
                tag, v = await self._get(key, group)
                if tag == base and v is not None:
                    await self._cas(key, v, tag, group)
            reached = {
                n.id
                for n in (await self._snapshot(name, group)).nodes
                if n.id.startswith(a.id + ".")
            }
            k, misses = 0, 0
            while misses <= self.max_inflight_blocks * 2 and (a.blocks == 0 or k < a.blocks):
                bid = f"{a.id}.{k}"
                _, v = await self._get(_key(BLOCK_PREFIX, name, bid), group)
                if v is None:
                    misses += 1
                else:
                    misses = 0
                    if bid not in reached and not isinstance(v, Dead):
                        await self._reclaim(name, group, bid)
                        reclaimed += 1
                k += 1

            def drop(j: Journal, aid: str = a.id) -> Journal:
                return Journal(tuple(x for x in j.attempts if x.id != aid))

            if a.links:  # it may have linked without recording the list in the index
                await self._invalidate_index(name, group)
            await self._journal_update(name, group, drop)
        return reclaimed

    # -- streaming handles -------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def open(
        self, name: str, mode: str = "rb", *, group: str = DEFAULT_GROUP
    ) -> AsyncIterator[Any]:
        """``async with files.open(name) as f``: ``async for piece in f`` (from the current
        position to the end), ``f.seek(offset)``, ``await f.read(n)`` (``rb``: range reads, see
        :meth:`read_range`, never from the first block); or
        ``async with files.open(name, "wb") as f: await f.write(data)`` (the file is
        written, streaming, as the bytes arrive; committed when the block ends)."""
        check_name(name)
        if mode == "rb":
            yield FileReader(self, name, group)
            return
        if mode != "wb":
            raise ConfigurationError(f"mode must be 'rb' or 'wb', not {mode!r}")
        q: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=self.max_inflight_blocks)

        async def pieces() -> AsyncIterator[bytes]:
            while (piece := await q.get()) is not None:
                yield piece

        task = asyncio.ensure_future(self.write(name, pieces(), group=group))
        writer = _StreamWriter(q, task)
        try:
            yield writer
        except BaseException:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            raise
        await q.put(None)
        await task


class FileReader:
    """A file opened for reading (:meth:`Files.open`): a position, ``seek``/``tell``, and
    ``read(n)`` as one range read each (each read is one version of the file; two reads may
    see two versions, as two calls of :meth:`Files.read_range` would)."""

    def __init__(self, files: Files, name: str, group: str) -> None:
        self._files = files
        self.name = name
        self.group = group
        self._pos = 0

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """SEEK_SET or SEEK_CUR (the size is not known without a read: ``stat`` it)."""
        if whence == io.SEEK_CUR:
            offset += self._pos
        elif whence != io.SEEK_SET:
            raise ConfigurationError(
                "seek: only SEEK_SET and SEEK_CUR (stat the file for its size)"
            )
        if not isinstance(offset, int) or offset < 0:
            raise ConfigurationError(
                f"seek: position must be a non-negative integer, not {offset!r}"
            )
        self._pos = offset
        return offset

    async def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes from the position (``n < 0``: to the end); b"" at the end."""
        parts = [
            p
            async for p in self._files.read_range(
                self.name, self._pos, None if n < 0 else n, group=self.group
            )
        ]
        out = b"".join(parts)
        self._pos += len(out)
        return out

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for piece in self._files.read_range(self.name, self._pos, None, group=self.group):
            self._pos += len(piece)
            yield piece


class _StreamWriter:
    def __init__(self, q: asyncio.Queue[bytes | None], task: asyncio.Future[Any]) -> None:
        self._q = q
        self._task = task

    async def write(self, data: bytes) -> int:
        if self._task.done():
            self._task.result()
            raise FileChanged("the file write already ended")
        await self._q.put(bytes(data))
        return len(data)


class _Writer:
    """The new blocks of one attempt: written with bounded concurrency, registered in the
    journal before the first, reclaimed if the attempt never links them."""

    def __init__(
        self,
        files: Files,
        name: str,
        group: str,
        att: Attempt,
        *,
        defer: bool = False,
        journal: tuple[Tag, Value | None] | None = None,
    ) -> None:
        self.f = files
        self._jhint = journal
        """The journal as last read or written by this attempt (its updates try it first)."""
        self.defer = defer
        """Hold new blocks until the links are known (:meth:`flush`): the attempt then enters
        the journal once, with its links (write_at: a few blocks, known before linking)."""
        self._deferred: builtins.list[tuple[int, bytes, str | None]] = []
        self.name = name
        self.group = group
        self.att = att
        self.count = 0
        self.written: set[int] = set()
        self.tags: dict[int, Tag] = {}
        self.registered = False
        self._sem = asyncio.Semaphore(files.max_inflight_blocks)
        self._tasks: set[asyncio.Task[None]] = set()
        self._error: BaseException | None = None

    def _key(self, k: int) -> str:
        return _key(BLOCK_PREFIX, self.name, f"{self.att.id}.{k}")

    async def _journal(self, change: Callable[[Journal], Journal | None]) -> None:
        def learn(tag: Tag, j: Journal) -> None:
            self._jhint = (tag, j)

        hint, self._jhint = self._jhint, None
        await self.f._journal_update(self.name, self.group, change, hint, learn)

    async def put(self, k: int, data: bytes, nxt: str | None) -> None:
        if self.defer and not self.registered:
            self._deferred.append((k, data, nxt))
            return
        if not self.registered:
            a = self.att

            def add(j: Journal) -> Journal:
                return Journal((*j.attempts, a))

            await self._journal(add)
            self.registered = True
        if self._error is not None:
            raise self._error
        await self._sem.acquire()

        async def one() -> None:
            try:
                with tracing.span("file.block", {"ares.bytes": len(data)}):
                    ok, tag = await self.f._cas(
                        self._key(k), Data(nxt, data), TAG0, self.group, fresh=True
                    )
                if not ok:  # pragma: no cover - ids are fresh
                    raise FileConflict(f"block id {self.att.id}.{k} was already written")
                self.written.add(k)
                self.tags[k] = tag
            except BaseException as e:
                self._error = self._error or e
            finally:
                self._sem.release()

        t = asyncio.ensure_future(one())
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        await asyncio.gather(*self._tasks)
        if self._error is not None:
            raise self._error

    def held(self) -> builtins.list[tuple[int, bytes, str | None]]:
        """The deferred blocks (k, data, next), not written yet."""
        return list(self._deferred)

    async def flush(self) -> None:
        """Write the deferred blocks (the attempt is in the journal by now), and wait for every
        block write."""
        held, self._deferred = self._deferred, []
        for k, data, nxt in held:
            await self.put(k, data, nxt)
        await self.drain()

    async def record_links(self, links: tuple[tuple[str, Tag], ...]) -> bool:
        """Record the link points in the journal (False: a collector aborted the attempt).
        An attempt not in the journal yet (no block written: none, or deferred) enters it
        with its links -- every attempt that changes the list is in the journal with its links
        from before its first mark until after its index change (the rule range reads and
        writers rely on to trust the index, docs/design.md)."""
        aid = self.att.id
        if not self.registered:
            a = Attempt(aid, self.att.started_s, links, self.count)

            def add(j: Journal) -> Journal:
                return Journal((*j.attempts, a))

            await self._journal(add)
            self.registered = True
            return True
        refused = False

        def setl(j: Journal) -> Journal | None:
            nonlocal refused
            cur = next((x for x in j.attempts if x.id == aid), None)
            if cur is None or cur.aborted:
                refused = True
                return None
            rest = tuple(x for x in j.attempts if x.id != aid)
            return Journal((*rest, Attempt(aid, cur.started_s, links, self.count)))

        await self._journal(setl)
        if refused:  # fenced: these blocks can never be linked
            await self.orphans_unlinked(set(range(self.count)))
        return not refused

    async def orphans_unlinked(self, ks: set[int]) -> None:
        if not self.registered:  # nothing was written (put registers before its first block)
            return
        await _gather_limited(
            [
                functools.partial(self.f._reclaim, self.name, self.group, f"{self.att.id}.{k}")
                for k in sorted(ks)
            ],
            self.f.max_inflight_blocks,
        )
        await self.finish()

    async def finish(self) -> None:
        if not self.registered:
            return
        aid = self.att.id

        def drop(j: Journal) -> Journal:
            return Journal(tuple(x for x in j.attempts if x.id != aid))

        await self._journal(drop)
        self.registered = False

    async def leave_for_collector(self) -> None:
        """An ambiguous link: the collector decides later (after fencing) what is reachable."""
        self.registered = False

    async def settle(self) -> None:
        """Wait for the block writes in flight, whatever their outcome."""
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def abandon(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def _gather_limited(calls: builtins.list[Callable[[], Awaitable[Any]]], limit: int) -> None:
    sem = asyncio.Semaphore(limit)

    async def one(c: Callable[[], Awaitable[Any]]) -> None:
        async with sem:
            await c()

    await asyncio.gather(*(one(c) for c in calls))


async def _cancel_all(futs: dict[str, asyncio.Future[Any]]) -> None:
    for f in futs.values():
        f.cancel()
    await asyncio.gather(*futs.values(), return_exceptions=True)
    futs.clear()


def _tell(obj: Any) -> int | None:
    try:
        if obj.seekable():
            return int(obj.tell())
    except (AttributeError, OSError, ValueError):
        pass
    return None
