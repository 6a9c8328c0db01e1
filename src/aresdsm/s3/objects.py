"""Buckets and objects over the store and its large-object layer (docs/protocol.md §9.1, §9.2;
docs/s3.md, "How objects are stored").

A **bucket** is a group: its record is the plain register ``s3-bucket`` of that group (written
by CreateBucket, deleted by DeleteBucket).

An **object** is a *head* -- the coverable register ``s3o:KEY`` of the bucket's group, a small
msgpack record with the ETag, size, mtime, content type, user metadata and the object's data:
inline (at most INLINE_MAX_BYTES) or a manifest of fragmented files ``s3d/...`` (one for a
PutObject, one per part for a multipart upload). The data files are written first, under fresh
names no other request uses; then one coverable write of the head (against the version read)
publishes data and metadata together. That write is the object's linearization point, so:

* metadata is atomic with the data (one register holds both, one write installs both);
* ``If-Match`` / ``If-None-Match`` are checked on the version the coverable write is based on:
  two racing conditional PUTs cannot both succeed (the second's base is stale; it re-reads and
  finds the condition false) -- a true compare-and-swap;
* CompleteMultipartUpload publishes the parts' files as the object's manifest: no byte is
  copied, and an object may be as large as its parts together (10,000 parts of up to 5 GiB);
* a GET reads the head, then streams the files it names; a data file is never rewritten, only
  deleted (after ``gc_delay_s``) once no head names it any more.

The file layer's ``write`` has no "only if unchanged" form, which is why the commit point is a
register of the gateway's own rather than the file's genesis block.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import hashlib
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from .. import tracing
from ..errors import ConfigurationError, CoverableConflict, OperationError
from ..files import FileChanged, NoSuchFile
from ..tags import TAG0, Tag
from .errors import S3Error

BUCKET_KEY = "s3-bucket"
HEAD_PREFIX = "s3o:"
UPLOAD_PREFIX = "s3u:"
PART_PREFIX = "s3p:"
DATA_PREFIX = "s3d/"
INLINE_MAX_BYTES = 64 * 1024
"""Objects up to this size live inside their head register (one coverable write per PUT)."""
MAX_KEY_BYTES = 1000
"""Room is left in the store's 1,024-byte key for the head's prefix."""
MAX_PARTS = 10_000
MAX_PART_BYTES = 5 * 1024**3
MIN_PART_BYTES = 5 * 1024 * 1024
MAX_CAS_TRIES = 32
CACHED_HEADS = 1024
CACHED_INLINE_MAX_BYTES = 4096
"""Heads remembered as the base of the next write of their key (bounded: 1,024 of at most
~5 KiB)."""
CACHED_BUCKETS = 4096
BUCKET_TTL_S = 1.0
READS_IN_FLIGHT = 16
BLOCKS_IN_FLIGHT = 2
"""Blocks one request writes or reads ahead at once (the file layer's ``max_inflight_blocks``;
its own default, 4, is for one big transfer): a data-moving request then holds about 40 MiB at
worst (4 MiB blocks), 23 MiB with the usual 1 MiB blocks (measured; docs/s3.md, "Memory"), and
S3 clients move large objects as several parts at once anyway."""
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")


class BucketRecord(msgspec.Struct, frozen=True):
    created_s: float
    public: bool = False


class Head(msgspec.Struct, frozen=True):
    """An object's head register (``deleted``: the object was deleted; the register stays)."""

    deleted: bool = False
    etag: str = ""
    size: int = 0
    mtime_s: float = 0.0
    headers: dict[str, str] = {}
    """Content-Type, Cache-Control, Content-Disposition, Content-Encoding, Content-Language,
    Expires, as sent."""
    meta: dict[str, str] = {}
    inline: bytes | None = None
    files: tuple[tuple[str, int], ...] = ()
    """(data file, size) in order; empty for inline and empty objects."""


class Upload(msgspec.Struct, frozen=True):
    """A multipart upload's register: ``open`` -> ``completing`` -> ``done``, or ``aborted``."""

    key: str
    state: str
    created_s: float
    headers: dict[str, str] = {}
    meta: dict[str, str] = {}
    etag: str = ""
    parts: tuple[tuple[int, str], ...] = ()
    """The (part number, ETag) list of the completion under way or done."""


class PartRecord(msgspec.Struct, frozen=True):
    file: str
    size: int
    etag: str
    mtime_s: float


_enc = msgspec.msgpack.Encoder()
_head_dec = msgspec.msgpack.Decoder(Head)
_bucket_dec = msgspec.msgpack.Decoder(BucketRecord)
_upload_dec = msgspec.msgpack.Decoder(Upload)
_part_dec = msgspec.msgpack.Decoder(PartRecord)


def check_bucket(name: str) -> str:
    if not _BUCKET_RE.match(name) or ".." in name:
        raise S3Error("InvalidBucketName", "The specified bucket is not valid.", resource=name)
    return name


def check_key(key: str) -> str:
    if not key:
        raise S3Error("InvalidArgument", "an object key must not be empty")
    if len(key.encode()) > MAX_KEY_BYTES:
        raise S3Error("KeyTooLongError", f"object keys are limited to {MAX_KEY_BYTES} bytes")
    if "\x00" in key:
        raise S3Error("InvalidArgument", "object keys must not contain NUL")
    return key


def new_data_name() -> str:
    """A fresh data file name: the time (ms, hex) first, so ``gc`` can tell old from new."""
    return f"{DATA_PREFIX}{int(time.time() * 1000):012x}-{secrets.token_hex(8)}"


def data_name_age_s(name: str, now: float) -> float:
    try:
        return now - int(name[len(DATA_PREFIX) :].split("-", 1)[0], 16) / 1000
    except ValueError:
        return 0.0


def multipart_etag(md5s: builtins.list[bytes]) -> str:
    return f"{hashlib.md5(b''.join(md5s)).hexdigest()}-{len(md5s)}"


@dataclass(frozen=True)
class Conditions:
    """If-Match / If-None-Match (ETags without quotes, or ``*``)."""

    if_match: tuple[str, ...] | None = None
    if_none_match: tuple[str, ...] | None = None

    def check_write(self, h: Head | None) -> None:
        live = h is not None and not h.deleted
        if self.if_match is not None and not (
            live and ("*" in self.if_match or (h is not None and h.etag in self.if_match))
        ):
            raise S3Error(
                "PreconditionFailed",
                "At least one of the pre-conditions you specified did not hold",
            )
        if (
            self.if_none_match is not None
            and live
            and h is not None
            and ("*" in self.if_none_match or h.etag in self.if_none_match)
        ):
            raise S3Error(
                "PreconditionFailed",
                "At least one of the pre-conditions you specified did not hold",
            )


class Gateway:
    """The S3 object model over one async Store (an :class:`aresdsm.client.Store`)."""

    def __init__(
        self,
        store: Any,
        *,
        gc_delay_s: float = 30.0,
        min_part_bytes: int = MIN_PART_BYTES,
        inline_max_bytes: int = INLINE_MAX_BYTES,
        bucket_ttl_s: float = BUCKET_TTL_S,
        blocks_in_flight: int = BLOCKS_IN_FLIGHT,
    ) -> None:
        if blocks_in_flight < 1:
            raise ConfigurationError("blocks_in_flight must be at least 1")
        self.store = store
        self.files = store.files
        self.files.max_inflight_blocks = blocks_in_flight  # the gateway's own Store
        self.gc_delay_s = gc_delay_s
        self.min_part_bytes = min_part_bytes
        self.inline_max_bytes = inline_max_bytes
        self.bucket_ttl_s = bucket_ttl_s
        self._gc: dict[asyncio.Task[None], tuple[str, builtins.list[str]]] = {}
        self._heads: OrderedDict[tuple[str, str], tuple[Tag, Head | None]] = OrderedDict()
        self._buckets: dict[str, tuple[float, BucketRecord]] = {}
        self.broken_unconditional_cas = False
        """Test-only: commit a head with a plain (unconditioned) write after checking the
        condition on a separate read -- then two racing conditional PUTs can both succeed."""

    # -- registers -------------------------------------------------------------------------------

    async def _read_head(self, bucket: str, key: str) -> tuple[Tag, Head | None]:
        tag, raw = await self.store.read_tagged(HEAD_PREFIX + key, group=bucket)
        h = None if raw is None else _head_dec.decode(raw)
        self._remember(bucket, key, tag, h)
        return tag, h

    async def head(self, bucket: str, key: str) -> Head:
        check_key(key)
        _, h = await self._read_head(bucket, key)
        if h is None or h.deleted:
            await self.bucket(bucket)
            raise S3Error("NoSuchKey", "The specified key does not exist.", resource=key)
        return h

    async def _cas(
        self, key: str, group: str, value: bytes, base: Tag
    ) -> tuple[bool, Tag, bytes | None]:
        """A coverable write; an ambiguous outcome is settled by reading."""
        try:
            res = await self.store.cvr_write(key, value, base, group=group)
            return bool(res.ok), res.tag, res.value
        except (CoverableConflict, OperationError):
            tag, now = await self.store.read_tagged(key, group=group)
            if now == value and tag != base:
                return True, tag, now
            return False, tag, now

    async def commit(
        self,
        bucket: str,
        key: str,
        make: Callable[[Head | None], Head],
        cond: Conditions = Conditions(),
    ) -> Head:
        """Install ``make(current)`` as the head of ``key`` if ``cond`` holds on the version it
        replaces (compare-and-swap, retried on concurrent writers). The files of the replaced
        version are deleted later. Raises PreconditionFailed (nothing installed)."""
        hk = HEAD_PREFIX + key
        # The base: the version this gateway saw last, or -- for a key it never saw -- the
        # absent version (a new key: S3 users mostly write new keys). Either is only a guess
        # the coverable write itself checks: if it is not the newest, the write is refused as
        # stale and the answer names the newest version, the base of the next try. A new key
        # costs one coverable write; a key written elsewhere, a refused write more -- the
        # same two operations as reading it first.
        known: tuple[Tag, Head | None] | None = self._heads.get((bucket, key), (TAG0, None))
        now: bytes | None
        with tracing.span("s3.commit", {"ares.group": bucket, "ares.object": hk}):
            for attempt in range(MAX_CAS_TRIES):
                cached = known is not None and attempt == 0
                if known is None or self.broken_unconditional_cas:
                    tag, old = await self._read_head(bucket, key)
                else:
                    tag, old = known
                try:
                    cond.check_write(old)
                    new = make(old)
                except S3Error:
                    if cached:  # judged on a remembered version: judge on a fresh one
                        known = None
                        continue
                    raise
                raw = _enc.encode(new)
                if self.broken_unconditional_cas:
                    await asyncio.sleep(0.05)  # widen the window the broken variant opens
                    latest, _ = await self.store.read_tagged(hk, group=bucket)
                    res = await self.store.cvr_write(hk, raw, latest, group=bucket)
                    ok, now_tag, now = True, res.tag, None
                else:
                    ok, now_tag, now = await self._cas(hk, bucket, raw, tag)
                if ok:
                    self._remember(bucket, key, now_tag, new)
                    if old is not None and not old.deleted:
                        self.discard_later(
                            bucket, [f for f, _ in old.files if f not in dict(new.files)]
                        )
                    return new
                # stale: the answer names the newest version, the base of the next try
                known = (now_tag, _head_dec.decode(now) if now is not None else None)
                if attempt:
                    await asyncio.sleep(0.002 * min(2**attempt, 64) * secrets.randbelow(100) / 100)
        raise S3Error("SlowDown", "too many concurrent writers of this key; retry")

    def _remember(self, bucket: str, key: str, tag: Tag, h: Head | None) -> None:
        """Keep the version last seen of a key: the base of its next coverable write (no read
        first when it is still the newest; the write itself checks that)."""
        if h is not None and h.inline is not None and len(h.inline) > CACHED_INLINE_MAX_BYTES:
            self._heads.pop((bucket, key), None)
            return
        self._heads[(bucket, key)] = (tag, h)
        self._heads.move_to_end((bucket, key))
        while len(self._heads) > CACHED_HEADS:
            self._heads.popitem(last=False)

    # -- buckets -----------------------------------------------------------------------------------

    async def bucket(self, bucket: str) -> BucketRecord:
        """The bucket's record (remembered for BUCKET_TTL_S: DeleteBucket is not atomic with
        PUTs under way in any case; docs/s3.md)."""
        check_bucket(bucket)
        hit = self._buckets.get(bucket)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        raw = await self.store.read(BUCKET_KEY, group=bucket)
        if raw is None:
            self._buckets.pop(bucket, None)
            raise S3Error("NoSuchBucket", "The specified bucket does not exist", resource=bucket)
        rec = _bucket_dec.decode(raw)
        if len(self._buckets) >= CACHED_BUCKETS:
            self._buckets.clear()
        self._buckets[bucket] = (time.monotonic() + self.bucket_ttl_s, rec)
        return rec

    async def create_bucket(self, bucket: str, *, public: bool = False) -> None:
        check_bucket(bucket)
        self._buckets.pop(bucket, None)
        if await self.store.read(BUCKET_KEY, group=bucket) is not None:
            raise S3Error(
                "BucketAlreadyOwnedByYou",
                "Your previous request to create the named bucket succeeded and you own it.",
                resource=bucket,
            )
        await self.store.write(
            BUCKET_KEY, _enc.encode(BucketRecord(time.time(), public)), group=bucket
        )

    async def set_public(self, bucket: str, public: bool) -> None:
        self._buckets.pop(bucket, None)
        rec = await self.bucket(bucket)
        self._buckets.pop(bucket, None)
        await self.store.write(
            BUCKET_KEY, _enc.encode(BucketRecord(rec.created_s, public)), group=bucket
        )

    async def delete_bucket(self, bucket: str) -> None:
        self._buckets.pop(bucket, None)
        await self.bucket(bucket)
        async for _ in self.iter_objects(bucket, ""):
            raise S3Error(
                "BucketNotEmpty", "The bucket you tried to delete is not empty", resource=bucket
            )
        self._buckets.pop(bucket, None)
        await self.store.delete(BUCKET_KEY, group=bucket)

    async def list_buckets(self) -> builtins.list[tuple[str, BucketRecord]]:
        out = []
        for g in await self.store.groups():
            if not _BUCKET_RE.match(g):
                continue
            raw = await self.store.read(BUCKET_KEY, group=g)
            if raw is not None:
                out.append((g, _bucket_dec.decode(raw)))
        return out

    # -- data files --------------------------------------------------------------------------------

    async def write_data(self, bucket: str, pieces: AsyncIterator[bytes]) -> tuple[str, int]:
        """Stream ``pieces`` into a fresh data file; on any failure nothing stays behind."""
        name = new_data_name()
        try:
            size: int = await self.files.write(name, pieces, group=bucket)
        except BaseException:
            await asyncio.shield(self.discard(bucket, [name]))
            raise
        return name, size

    async def discard(self, bucket: str, names: builtins.list[str]) -> None:
        """Delete data files (and the blocks of any write of them that never linked)."""
        for n in names:
            with contextlib.suppress(NoSuchFile, OperationError):
                await self.files.collect(n, group=bucket, grace_s=0)
            with contextlib.suppress(NoSuchFile, OperationError):
                await self.files.delete(n, group=bucket)

    def discard_later(self, bucket: str, names: builtins.list[str]) -> None:
        """Delete files after ``gc_delay_s``: a GET that read the old head may still stream them."""
        if not names:
            return

        async def later() -> None:
            await asyncio.sleep(self.gc_delay_s)
            await self.discard(bucket, names)

        t = asyncio.ensure_future(later())
        self._gc[t] = (bucket, names)
        t.add_done_callback(lambda t: self._gc.pop(t, None))

    async def close(self) -> None:
        """Delete at once what was waiting for its delay (no reader is left)."""
        pending = dict(self._gc)
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for bucket, names in pending.values():
            await self.discard(bucket, names)

    # -- objects -----------------------------------------------------------------------------------

    async def put(
        self,
        bucket: str,
        key: str,
        pieces: AsyncIterator[bytes],
        md5: Callable[[], bytes],
        *,
        headers: dict[str, str],
        meta: dict[str, str],
        cond: Conditions = Conditions(),
        content_md5: bytes | None = None,
    ) -> Head:
        """PutObject: small bodies inline, larger ones into a data file; then the head."""
        check_key(key)
        await self.bucket(bucket)
        buf = bytearray()
        rest: AsyncIterator[bytes] | None = None
        it = pieces.__aiter__()
        async for p in it:
            buf += p
            if len(buf) > self.inline_max_bytes:
                rest = it
                break
        files: tuple[tuple[str, int], ...] = ()
        inline: bytes | None = bytes(buf)
        if rest is not None:
            if cond.if_match is not None or cond.if_none_match is not None:
                # fail before storing a data file; checked again on the version replaced.
                # An inline body is not read first: the commit judges the condition on the
                # version its coverable write replaces (one register operation, issue 16).
                _, cur = await self._read_head(bucket, key)
                cond.check_write(cur)
            first = bytes(buf)
            buf = bytearray()

            async def all_pieces() -> AsyncIterator[bytes]:
                yield first
                async for q in rest:
                    yield q

            name, size = await self.write_data(bucket, all_pieces())
            files, inline = ((name, size),), None
        digest = md5()
        try:
            if content_md5 is not None and digest != content_md5:
                raise S3Error(
                    "BadDigest", "The Content-MD5 you specified did not match what we received."
                )
            size = len(inline) if inline is not None else files[0][1]
            head = Head(
                etag=digest.hex(),
                size=size,
                mtime_s=time.time(),
                headers=headers,
                meta=meta,
                inline=inline if size else None,
                files=files,
            )
            return await self.commit(bucket, key, lambda _old: head, cond)
        except BaseException:
            await asyncio.shield(self.discard(bucket, [f for f, _ in files]))
            raise

    async def delete(self, bucket: str, key: str) -> None:
        """DeleteObject: absent keys too (S3 answers 204 either way)."""
        check_key(key)
        await self.bucket(bucket)
        _, cur = await self._read_head(bucket, key)
        if cur is None or cur.deleted:
            return
        await self.commit(bucket, key, lambda _old: Head(deleted=True, mtime_s=time.time()))

    async def stream(
        self, bucket: str, h: Head, start: int, end: int
    ) -> AsyncGenerator[bytes, None]:
        """Bytes ``start..end`` (inclusive) of the version ``h``."""
        if h.inline is not None:
            yield h.inline[start : end + 1]
            return
        offset = 0
        for name, size in h.files:
            if offset + size <= start or offset > end:
                offset += size
                continue
            a, b = max(0, start - offset), min(size, end + 1 - offset)  # this file's [a, b)
            if (a, b) == (0, size):
                async for block in self.files.iter_blocks(name, group=bucket):
                    yield block
            else:  # only the blocks covering [a, b), found by the file's index
                async for piece in self.files.read_range(name, a, b - a, group=bucket):
                    yield piece
            offset += size

    async def copy(
        self,
        src_bucket: str,
        src_key: str,
        bucket: str,
        key: str,
        *,
        replace: tuple[dict[str, str], dict[str, str]] | None,
        cond: Conditions = Conditions(),
        src_cond: Conditions = Conditions(),
    ) -> Head:
        """CopyObject: a new copy of the data (files are owned by one head), or, for a copy onto
        itself with REPLACE metadata, the same files under a new head."""
        check_key(key)
        await self.bucket(bucket)
        src = await self.head(src_bucket, src_key)
        src_cond.check_write(src)
        headers, meta = replace if replace is not None else (src.headers, src.meta)
        if src_bucket == bucket and src_key == key:
            if replace is None:
                raise S3Error(
                    "InvalidRequest",
                    "This copy request is illegal because it is trying to copy an object to "
                    "itself without changing the object's metadata.",
                )

            def same(old: Head | None) -> Head:
                if old is None or old.deleted or old.etag != src.etag or old.files != src.files:
                    raise S3Error("PreconditionFailed", "the source changed during the copy")
                return msgspec.structs.replace(old, headers=headers, meta=meta, mtime_s=time.time())

            return await self.commit(bucket, key, same, cond)
        for attempt in range(3):
            md5 = hashlib.md5()

            async def pieces(h: Head = src, hasher: Any = md5) -> AsyncIterator[bytes]:
                async for p in self.stream(src_bucket, h, 0, h.size - 1):
                    hasher.update(p)
                    yield p

            try:
                return await self.put(
                    bucket, key, pieces(), md5.digest, headers=headers, meta=meta, cond=cond
                )
            except (NoSuchFile, FileChanged):  # the source was replaced meanwhile: again
                if attempt == 2:
                    raise
                src = await self.head(src_bucket, src_key)
        raise AssertionError("unreachable")  # pragma: no cover

    # -- listing -----------------------------------------------------------------------------------

    async def iter_objects(
        self, bucket: str, prefix: str, after: str = ""
    ) -> AsyncGenerator[tuple[str, Head], None]:
        """Live objects with keys starting with ``prefix``, after ``after``, in key order (heads
        read a page at a time, concurrently)."""
        keys = self.store.iter_keys(HEAD_PREFIX + prefix, group=bucket, verify=False)
        batch: builtins.list[str] = []
        sem = asyncio.Semaphore(READS_IN_FLIGHT)

        async def one(k: str) -> Head | None:
            async with sem:
                _, h = await self._read_head(bucket, k)
            return h if h is not None and not h.deleted else None

        async def flush() -> builtins.list[tuple[str, Head]]:
            heads = await asyncio.gather(*(one(k) for k in batch))
            return [(k, h) for k, h in zip(batch, heads, strict=True) if h is not None]

        async with contextlib.aclosing(keys):
            async for rk in keys:
                k = rk[len(HEAD_PREFIX) :]
                if k <= after:
                    continue
                batch.append(k)
                if len(batch) >= READS_IN_FLIGHT * 2:
                    for item in await flush():
                        yield item
                    batch = []
            for item in await flush():
                yield item

    async def list(
        self,
        bucket: str,
        *,
        prefix: str,
        delimiter: str,
        after: str,
        max_keys: int,
    ) -> tuple[builtins.list[tuple[str, Head]], builtins.list[str], bool, str]:
        """(objects, common prefixes, truncated, last entry returned): S3's listing rules -- a
        key with ``delimiter`` after ``prefix`` rolls up into a common prefix counted once;
        ``after`` a key or a common prefix already returned."""
        await self.bucket(bucket)
        contents: builtins.list[tuple[str, Head]] = []
        prefixes: builtins.list[str] = []
        last = ""
        skip_cp = after if delimiter and after.endswith(delimiter) else ""
        it = self.iter_objects(bucket, prefix, after)
        async with contextlib.aclosing(it):
            async for k, h in it:
                if skip_cp and k.startswith(skip_cp):
                    continue
                cp = ""
                if delimiter:
                    i = k.find(delimiter, len(prefix))
                    if i >= 0:
                        cp = k[: i + len(delimiter)]
                if cp and prefixes and prefixes[-1] == cp:
                    continue
                if len(contents) + len(prefixes) >= max_keys:
                    return contents, prefixes, True, last
                if cp:
                    prefixes.append(cp)
                    skip_cp = cp
                    last = cp
                else:
                    contents.append((k, h))
                    last = k
        return contents, prefixes, False, last

    # -- multipart -----------------------------------------------------------------------------

    async def _read_upload(self, bucket: str, upload_id: str) -> tuple[Tag, Upload]:
        if not re.fullmatch(r"[0-9a-f]{32}", upload_id):
            raise S3Error("NoSuchUpload", "The specified upload does not exist.")
        tag, raw = await self.store.read_tagged(UPLOAD_PREFIX + upload_id, group=bucket)
        if raw is None:
            raise S3Error("NoSuchUpload", "The specified upload does not exist.")
        return tag, _upload_dec.decode(raw)

    async def list_uploads(self, bucket: str, prefix: str) -> builtins.list[tuple[str, str, float]]:
        """The uploads in progress (open or completing) of keys starting with ``prefix``:
        (key, upload id, initiated) sorted by key, then initiation, as S3 lists them. Every
        upload record of the bucket is read (records of finished uploads stay: docs/s3.md)."""
        await self.bucket(bucket)
        sem = asyncio.Semaphore(READS_IN_FLIGHT)

        async def one(k: str) -> tuple[str, str, float] | None:
            async with sem:
                raw = await self.store.read(k, group=bucket)
            if raw is None:
                return None
            up = _upload_dec.decode(raw)
            if up.state not in ("open", "completing") or not up.key.startswith(prefix):
                return None
            return up.key, k[len(UPLOAD_PREFIX) :], up.created_s

        got = await asyncio.gather(
            *(one(k) for k in await self.store.list(UPLOAD_PREFIX, group=bucket))
        )
        return sorted((u for u in got if u is not None), key=lambda u: (u[0], u[2], u[1]))

    async def create_upload(
        self, bucket: str, key: str, *, headers: dict[str, str], meta: dict[str, str]
    ) -> str:
        check_key(key)
        await self.bucket(bucket)
        uid = secrets.token_hex(16)
        up = Upload(key, "open", time.time(), headers, meta)
        ok, _, _ = await self._cas(UPLOAD_PREFIX + uid, bucket, _enc.encode(up), TAG0)
        if not ok:  # pragma: no cover - 128 random bits
            raise S3Error("InternalError", "upload id collision; retry")
        return uid

    async def upload_part(
        self,
        bucket: str,
        key: str,
        upload_id: str,
        number: int,
        pieces: AsyncIterator[bytes],
        md5: Callable[[], bytes],
        content_md5: bytes | None = None,
    ) -> str:
        if not 1 <= number <= MAX_PARTS:
            raise S3Error(
                "InvalidArgument",
                f"Part number must be an integer between 1 and {MAX_PARTS}, inclusive",
            )
        _, up = await self._read_upload(bucket, upload_id)
        if up.key != key or up.state != "open":
            raise S3Error("NoSuchUpload", "The specified upload does not exist.")
        name, size = await self.write_data(bucket, pieces)
        digest = md5()
        if content_md5 is not None and digest != content_md5:
            await self.discard(bucket, [name])
            raise S3Error(
                "BadDigest", "The Content-MD5 you specified did not match what we received."
            )
        pk = f"{PART_PREFIX}{upload_id}:{number:05d}"
        old_raw = await self.store.read(pk, group=bucket)
        rec = PartRecord(name, size, digest.hex(), time.time())
        await self.store.write(pk, _enc.encode(rec), group=bucket)
        # The replaced part's file may go only if no completion can have read the old record:
        # a completion moves the upload out of "open" before it reads the part records.
        _, now = await self._read_upload(bucket, upload_id)
        if old_raw is not None and now.state == "open":
            old = _part_dec.decode(old_raw)
            if old.file != name:
                await self.discard(bucket, [old.file])
        return rec.etag

    async def list_parts(
        self, bucket: str, key: str, upload_id: str
    ) -> builtins.list[tuple[int, PartRecord]]:
        _, up = await self._read_upload(bucket, upload_id)
        if up.key != key or up.state not in ("open", "completing"):
            raise S3Error("NoSuchUpload", "The specified upload does not exist.")
        return await self._parts(bucket, upload_id)

    async def _parts(self, bucket: str, upload_id: str) -> builtins.list[tuple[int, PartRecord]]:
        prefix = f"{PART_PREFIX}{upload_id}:"
        out = []
        for k in await self.store.list(prefix, group=bucket):
            raw = await self.store.read(k, group=bucket)
            if raw is not None:
                out.append((int(k[len(prefix) :]), _part_dec.decode(raw)))
        return out

    async def _set_upload(
        self, bucket: str, upload_id: str, change: Callable[[Upload], Upload]
    ) -> Upload:
        for _ in range(MAX_CAS_TRIES):
            tag, up = await self._read_upload(bucket, upload_id)
            new = change(up)
            if new == up:
                return up
            ok, _, _ = await self._cas(UPLOAD_PREFIX + upload_id, bucket, _enc.encode(new), tag)
            if ok:
                return new
        raise S3Error("SlowDown", "the upload keeps changing; retry")

    async def complete(
        self,
        bucket: str,
        key: str,
        upload_id: str,
        parts: builtins.list[tuple[int, str]],
        cond: Conditions = Conditions(),
    ) -> Head:
        """CompleteMultipartUpload: the listed parts' files become the object's manifest.

        The upload moves ``open`` -> ``completing`` (recording the part list) before the part
        records are read for the last time: an UploadPart that replaces a part after that no
        longer deletes the file it replaced (docs/s3.md). Any failure before the head is
        published moves it back to ``open``; a repeated completion with the same parts (a
        client retrying, or after a gateway died half way) finishes or answers the same."""
        check_key(key)
        if not parts:
            raise S3Error("MalformedXML", "You must specify at least one part")
        numbers = [n for n, _ in parts]
        if numbers != sorted(set(numbers)):
            raise S3Error("InvalidPartOrder", "The list of parts was not in ascending order.")
        wanted = tuple((n, e.strip('"')) for n, e in parts)
        _, up = await self._read_upload(bucket, upload_id)
        if up.key != key or up.state == "aborted":
            raise S3Error("NoSuchUpload", "The specified upload does not exist.")
        if up.state == "done":  # a retried completion: the same answer
            h = await self.head(bucket, key)
            if h.etag != up.etag or up.parts != wanted:
                raise S3Error("NoSuchUpload", "The specified upload does not exist.")
            return h
        self._manifest(await self._parts(bucket, upload_id), wanted)  # refuse before moving

        def completing(u: Upload) -> Upload:
            if u.key != key or u.state in ("aborted", "done"):
                raise S3Error("NoSuchUpload", "The specified upload does not exist.")
            if u.state == "completing" and u.parts != wanted:
                raise S3Error(
                    "InvalidRequest", "another completion of this upload, with other parts, is "
                    "under way; retry it with the same parts",
                )  # fmt: skip
            return msgspec.structs.replace(u, state="completing", parts=wanted)

        up = await self._set_upload(bucket, upload_id, completing)
        published = False
        try:
            files, etag = self._manifest(await self._parts(bucket, upload_id), wanted)
            head = Head(
                etag=etag,
                size=sum(s for _, s in files),
                mtime_s=time.time(),
                headers=up.headers,
                meta=up.meta,
                files=tuple((f, s) for f, s in files if s),
            )
            committed = await self.commit(bucket, key, lambda _old: head, cond)
            published = True
        finally:
            if not published:
                await self._set_upload(
                    bucket, upload_id,
                    lambda u: msgspec.structs.replace(u, state="open", parts=())
                    if u.state == "completing" and u.parts == wanted else u,
                )  # fmt: skip
        await self._set_upload(
            bucket, upload_id, lambda u: msgspec.structs.replace(u, state="done", etag=etag)
        )
        used = {f for f, _ in files}
        await self._drop_parts(bucket, upload_id, keep=used)
        await self.discard(bucket, [f for f, s in files if not s])  # empty parts: not in the head
        return committed

    def _manifest(
        self,
        have_list: builtins.list[tuple[int, PartRecord]],
        wanted: tuple[tuple[int, str], ...],
    ) -> tuple[builtins.list[tuple[str, int]], str]:
        """The (file, size) list and the ETag of the parts ``wanted``, or InvalidPart /
        EntityTooSmall."""
        have = dict(have_list)
        files: builtins.list[tuple[str, int]] = []
        md5s: builtins.list[bytes] = []
        for i, (n, etag) in enumerate(wanted):
            rec = have.get(n)
            if rec is None or rec.etag != etag:
                raise S3Error(
                    "InvalidPart",
                    f"One or more of the specified parts could not be found (part {n}).",
                )
            if i < len(wanted) - 1 and rec.size < self.min_part_bytes:
                raise S3Error(
                    "EntityTooSmall",
                    "Your proposed upload is smaller than the minimum allowed object size.",
                )
            files.append((rec.file, rec.size))
            md5s.append(bytes.fromhex(rec.etag))
        return files, multipart_etag(md5s)

    async def _drop_parts(self, bucket: str, upload_id: str, keep: set[str]) -> None:
        for n, rec in await self._parts(bucket, upload_id):
            if rec.file not in keep:
                await self.discard(bucket, [rec.file])
            await self.store.delete(f"{PART_PREFIX}{upload_id}:{n:05d}", group=bucket)

    async def abort(self, bucket: str, key: str, upload_id: str) -> None:
        def aborted(up: Upload) -> Upload:
            if up.key != key or up.state in ("completing", "done"):
                raise S3Error("NoSuchUpload", "The specified upload does not exist.")
            return msgspec.structs.replace(up, state="aborted")

        await self._set_upload(bucket, upload_id, aborted)
        await self._drop_parts(bucket, upload_id, keep=set())

    # -- garbage ---------------------------------------------------------------------------------

    async def gc(self, bucket: str, *, grace_s: float = 3600.0) -> int:
        """Delete data files no head and no open upload names, older than ``grace_s`` (left by
        a gateway that stopped between writing a file and publishing or deleting it)."""
        await self.bucket(bucket)
        now = time.time()
        used: set[str] = set()
        # part records before heads: a completion publishes its head before it drops them
        for k in await self.store.list(PART_PREFIX, group=bucket):
            raw = await self.store.read(k, group=bucket)
            if raw is not None:
                used.add(_part_dec.decode(raw).file)
        async for _, h in self.iter_objects(bucket, ""):
            used.update(f for f, _ in h.files)
        gone = [
            n
            for n in await self.files.list(DATA_PREFIX, group=bucket)
            if n not in used and data_name_age_s(n, now) > grace_s
        ]
        await self.discard(bucket, gone)
        return len(gone)
