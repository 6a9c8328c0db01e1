"""Request bodies, streamed and checked: the payload hash the signature covers, aws-chunked
framing (``Content-Encoding: aws-chunked``, the ``STREAMING-*`` payload hashes) with each
chunk's signature verified, and the ``x-amz-checksum-*`` values sent as headers or trailers.

Nothing is buffered beyond one chunk (at most MAX_CHUNK_BYTES): the pieces go on to the file
layer as they arrive. A check that fails at the end of the body raises :class:`S3Error` out of
the iteration, so the file being written is never committed (the object's head register is
written only after the body ended well; docs/s3.md).
"""

from __future__ import annotations

import base64
import hashlib
import zlib
from collections.abc import AsyncIterator
from typing import Any, Protocol

from .errors import S3Error
from .sigv4 import (
    STREAMING,
    STREAMING_SIGNED,
    STREAMING_SIGNED_TRAILER,
    UNSIGNED,
    Verified,
    chunk_signature,
)

MAX_CHUNK_BYTES = 16 * 1024 * 1024
MAX_LINE_BYTES = 4096
READ_BYTES = 256 * 1024


class Reader(Protocol):
    async def read(self, n: int = ...) -> bytes: ...

    async def readexactly(self, n: int) -> bytes: ...

    async def readline(self) -> bytes: ...


class _Crc32:
    def __init__(self) -> None:
        self.v = 0

    def update(self, b: bytes) -> None:
        self.v = zlib.crc32(b, self.v)

    def digest(self) -> bytes:
        return self.v.to_bytes(4, "big")


def _checksum(algorithm: str) -> Any | None:
    if algorithm == "crc32":
        return _Crc32()
    if algorithm == "sha1":
        return hashlib.sha1()
    if algorithm == "sha256":
        return hashlib.sha256()
    return None  # crc32c, crc64nvme: no stdlib implementation; accepted unchecked (docs/s3.md)


class Body:
    """One request's payload: ``async for piece in body.pieces()``; ``md5`` and ``size`` after."""

    def __init__(
        self,
        reader: Reader,
        headers: dict[str, str],
        verified: Verified | None,
        *,
        max_bytes: int,
    ) -> None:
        self.reader = reader
        self.verified = verified
        self.max_bytes = max_bytes
        self.md5 = hashlib.md5()
        self.size = 0
        self.payload = verified.payload_hash if verified is not None else UNSIGNED
        enc = [e.strip() for e in headers.get("content-encoding", "").split(",") if e.strip()]
        self.chunked = self.payload in STREAMING or "aws-chunked" in enc
        length = headers.get("content-length")
        decoded = headers.get("x-amz-decoded-content-length")
        try:
            self.content_length = int(length) if length is not None else None
            self.expected = int(decoded) if self.chunked and decoded is not None else None
        except ValueError:
            raise S3Error("InvalidArgument", "bad Content-Length") from None
        if not self.chunked:
            self.expected = self.content_length
        if self.expected is not None and self.expected > max_bytes:
            raise S3Error("EntityTooLarge", f"objects are limited to {max_bytes} bytes here")
        self.checks: dict[str, tuple[Any, str | None]] = {}
        for alg in ("crc32", "crc32c", "sha1", "sha256", "crc64nvme"):
            sent = headers.get(f"x-amz-checksum-{alg}")
            h = _checksum(alg)
            if sent is not None and h is not None:
                self.checks[alg] = (h, sent)
        trailer = headers.get("x-amz-trailer", "")
        for name in (t.strip().lower() for t in trailer.split(",") if t.strip()):
            alg = name.removeprefix("x-amz-checksum-")
            h = _checksum(alg)
            if h is not None:
                self.checks[alg] = (h, None)  # the value comes in the trailer
        self.sha256 = hashlib.sha256() if len(self.payload) == 64 else None

    def _take(self, piece: bytes) -> None:
        self.size += len(piece)
        if self.size > self.max_bytes:
            raise S3Error("EntityTooLarge", f"objects are limited to {self.max_bytes} bytes here")
        self.md5.update(piece)
        if self.sha256 is not None:
            self.sha256.update(piece)
        for h, _ in self.checks.values():
            h.update(piece)

    async def pieces(self) -> AsyncIterator[bytes]:
        if self.chunked:
            async for p in self._chunked():
                self._take(p)
                yield p
        else:
            while True:
                p = await self.reader.read(READ_BYTES)
                if not p:
                    break
                self._take(p)
                yield p
        self._finish()

    def _finish(self) -> None:
        if self.expected is not None and self.size != self.expected:
            raise S3Error(
                "IncompleteBody",
                f"received {self.size} bytes, the request announced {self.expected}",
            )
        if self.sha256 is not None and self.sha256.hexdigest() != self.payload:
            raise S3Error(
                "XAmzContentSHA256Mismatch",
                "The provided 'x-amz-content-sha256' header does not match what was computed.",
            )
        for alg, (h, sent) in self.checks.items():
            if sent is None:
                raise S3Error("InvalidRequest", f"the trailer x-amz-checksum-{alg} is missing")
            if base64.b64encode(h.digest()).decode() != sent.strip():
                raise S3Error("BadDigest", f"The {alg.upper()} you specified did not match.")

    async def _line(self) -> bytes:
        line = await self.reader.readline()
        if not line.endswith(b"\n"):
            raise S3Error("IncompleteBody", "the aws-chunked body ended early")
        if len(line) > MAX_LINE_BYTES:
            raise S3Error("InvalidRequest", "an aws-chunked header line is too long")
        return line.rstrip(b"\r\n")

    async def _chunked(self) -> AsyncIterator[bytes]:
        """``hex-size[;chunk-signature=sig]\\r\\n data \\r\\n`` ... ``0[;chunk-signature=..]``
        then optional trailer lines and an empty line."""
        signed = self.payload in (STREAMING_SIGNED, STREAMING_SIGNED_TRAILER)
        v = self.verified
        previous = v.seed_signature if v is not None else ""
        while True:
            head = (await self._line()).decode("latin-1")
            size_hex, _, ext = head.partition(";")
            try:
                size = int(size_hex.strip(), 16)
            except ValueError:
                raise S3Error("InvalidRequest", "bad aws-chunked chunk size") from None
            if size < 0 or size > MAX_CHUNK_BYTES:
                raise S3Error(
                    "InvalidRequest", f"aws-chunked chunks are limited to {MAX_CHUNK_BYTES}"
                )
            data = await self.reader.readexactly(size) if size else b""
            if signed:
                assert v is not None
                name, _, sig = ext.partition("=")
                if name.strip() != "chunk-signature":
                    raise S3Error("SignatureDoesNotMatch", "an aws-chunked chunk is not signed")
                want = chunk_signature(v, previous, hashlib.sha256(data).hexdigest())
                if not _eq(want, sig.strip()):
                    raise S3Error("SignatureDoesNotMatch", "a chunk signature does not match")
                previous = want
            if size == 0:
                break
            yield data
            if await self.reader.readexactly(2) != b"\r\n":
                raise S3Error("InvalidRequest", "aws-chunked chunk not followed by CRLF")
        # trailers (x-amz-checksum-*: value, x-amz-trailer-signature), then an empty line
        while True:
            try:
                line = (await self._line()).decode("latin-1")
            except S3Error:
                break  # no trailer section at all (the stream just ended)
            if not line:
                break
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name.startswith("x-amz-checksum-"):
                alg = name.removeprefix("x-amz-checksum-")
                if alg in self.checks:
                    self.checks[alg] = (self.checks[alg][0], value.strip())


def _eq(a: str, b: str) -> bool:
    import hmac

    return hmac.compare_digest(a, b)
