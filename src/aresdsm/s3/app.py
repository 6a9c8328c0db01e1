"""The HTTP face of the S3 gateway (aiohttp): routing S3's REST API onto :class:`Gateway`
(path-style, and virtual-hosted-style for the ``--domain`` names), authentication
(:mod:`.sigv4`), streamed bodies both ways, XML, traces and metrics.

aiohttp streams request bodies (``request.content``, read a piece at a time with flow control)
and responses (``StreamResponse.write`` waits for the socket), so an object of any size passes
through a bounded amount of memory: the body reader's one chunk and the file layer's blocks in
flight (docs/s3.md, "Memory").

Every request is one ``s3.request`` span (attributes ``s3.op``, ``s3.bucket``, ``s3.key``,
``http.status_code``); the storage operations below it -- file writes and reads, coverable
writes of heads -- are its children, and their rounds carry the trace on to the servers
(docs/protocol.md §12). Requests are counted and timed by operation and status in Prometheus
metrics (:class:`S3Metrics`), next to the client's own (:class:`~aresdsm.metrics.ClientMetrics`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import datetime as dt
import email.utils
import logging
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, quote, unquote
from xml.etree import ElementTree
from xml.sax.saxutils import escape

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram

from .. import tracing
from ..errors import AresError, ConfigurationError, OperationError
from ..files import FileChanged, FileConflict, NoSuchFile
from ..metrics import LATENCY_BUCKETS_S
from .body import Body
from .errors import S3Error
from .objects import MAX_PART_BYTES, Conditions, Gateway, Head, check_bucket
from .sigv4 import KeyRing, Verified, verify

log = logging.getLogger("aresdsm.s3")
NS = "http://s3.amazonaws.com/doc/2006-03-01/"
MAX_XML_BYTES = 2 * 1024 * 1024
MAX_OBJECT_BYTES = 5 * 1024**3
"""A single PutObject (S3's limit); larger objects are multipart uploads."""
MAX_LIST_KEYS = 1000
MAX_STREAMS = 8
"""Requests that move object data (PUT, UploadPart, GET, copy) served at once; more wait. With
the file layer's per-request bound (BLOCKS_IN_FLIGHT blocks of at most 4 MiB) this bounds the
gateway's memory whatever the number of clients (docs/s3.md, "Memory")."""
_STREAMING_OPS = {"PutObject", "UploadPart", "GetObject", "CopyObject"}
_STANDARD_HEADERS = (
    "content-type",
    "cache-control",
    "content-disposition",
    "content-encoding",
    "content-language",
    "expires",
)
_UNSUPPORTED = {
    "acl", "policy", "tagging", "versioning", "lifecycle", "cors", "website", "notification",
    "replication", "encryption", "logging", "object-lock", "retention", "legal-hold", "torrent",
    "restore", "select", "accelerate", "requestPayment", "analytics", "inventory", "metrics",
    "intelligent-tiering", "ownershipControls", "publicAccessBlock", "versions", "attributes",
    "policyStatus",
}  # fmt: skip
_READ, _WRITE, _ADMIN = "read", "write", "admin"


class S3Metrics:
    """The gateway's Prometheus metrics (``aresdsm_s3_*``)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "aresdsm_s3_requests", "S3 requests, by operation and HTTP status.", ["op", "status"],
            registry=r,
        )  # fmt: skip
        self.latency = Histogram(
            "aresdsm_s3_request_seconds", "S3 request latency, by operation.", ["op"],
            buckets=LATENCY_BUCKETS_S, registry=r,
        )  # fmt: skip
        self.bytes_in = Counter(
            "aresdsm_s3_received_bytes", "Object bytes received (PUT, UploadPart).", registry=r
        )
        self.bytes_out = Counter("aresdsm_s3_sent_bytes", "Object bytes sent (GET).", registry=r)
        self._children: dict[tuple[str, int], tuple[Any, Any]] = {}

    def request(self, op: str, status: int, seconds: float) -> None:
        """Count and time one request (the labelled children are looked up once per operation
        and status: ``labels()`` costs more than the increment)."""
        c = self._children.get((op, status))
        if c is None:
            c = self.requests.labels(op, str(status)), self.latency.labels(op)
            self._children[(op, status)] = c  # bounded: S3's operations x HTTP statuses
        c[0].inc()
        c[1].observe(seconds)


def _http_date(t: float) -> str:
    return email.utils.formatdate(t, usegmt=True)


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.") + (
        f"{int(t * 1000) % 1000:03d}Z"
    )


def _etags(v: str | None) -> tuple[str, ...] | None:
    if v is None:
        return None
    return tuple(e.strip().removeprefix("W/").strip('"') for e in v.split(","))


def _xml(body: str) -> web.Response:
    return web.Response(
        body=('<?xml version="1.0" encoding="UTF-8"?>\n' + body).encode(),
        content_type="application/xml",
    )


def _parse_xml(raw: bytes) -> ElementTree.Element:
    if b"<!DOCTYPE" in raw or b"<!ENTITY" in raw:
        raise S3Error("MalformedXML", "document type declarations are not accepted")
    try:
        root = ElementTree.fromstring(raw)
    except ElementTree.ParseError:
        raise S3Error("MalformedXML", "The XML you provided was not well-formed") from None
    for el in root.iter():
        el.tag = el.tag.rsplit("}", 1)[-1]
    return root


def _meta_of(request: web.Request) -> tuple[dict[str, str], dict[str, str]]:
    headers = {h: request.headers[h] for h in _STANDARD_HEADERS if h in request.headers}
    meta = {
        k.lower()[len("x-amz-meta-") :]: v
        for k, v in request.headers.items()
        if k.lower().startswith("x-amz-meta-")
    }
    if sum(len(k) + len(v) for k, v in meta.items()) > 2048:
        raise S3Error(
            "MetadataTooLarge", "Your metadata headers exceed the maximum allowed metadata size."
        )
    return headers, meta


def _object_headers(h: Head) -> dict[str, str]:
    out = {
        "ETag": f'"{h.etag}"',
        "Last-Modified": _http_date(h.mtime_s),
        "Accept-Ranges": "bytes",
        "Content-Type": h.headers.get("content-type", "binary/octet-stream"),
    }
    for k in _STANDARD_HEADERS[1:]:
        if k in h.headers:
            out[k.title()] = h.headers[k]
    for k, v in h.meta.items():
        out[f"x-amz-meta-{k}"] = v
    return out


def _range(spec: str | None, size: int) -> tuple[int, int] | None:
    """``Range: bytes=a-b | a- | -n`` -> (start, end inclusive); None: the whole object.
    Unsatisfiable: InvalidRange. Anything else (several ranges, other units): ignored, as S3."""
    if spec is None or not spec.startswith("bytes=") or "," in spec:
        return None
    a, sep, b = spec[6:].strip().partition("-")
    if not sep:
        return None
    try:
        if a == "":
            n = int(b)
            if n <= 0:
                raise S3Error("InvalidRange", "The requested range is not satisfiable")
            return max(0, size - n), size - 1
        start = int(a)
        end = int(b) if b else size - 1
    except ValueError:
        return None
    if start < 0 or (b and end < start):
        return None
    if start >= size:
        raise S3Error("InvalidRange", "The requested range is not satisfiable")
    return start, min(end, size - 1)


class S3App:
    """The aiohttp application of ``ares s3 serve``."""

    def __init__(
        self,
        gateway: Gateway,
        keys: KeyRing,
        *,
        region: str = "us-east-1",
        metrics: S3Metrics | None = None,
        max_object_bytes: int = MAX_OBJECT_BYTES,
        max_streams: int = MAX_STREAMS,
        domains: tuple[str, ...] = (),
        scheme: str = "http",
    ) -> None:
        self.gw = gateway
        self.domains = tuple("." + d.lower().strip(".") for d in domains)
        """Virtual-hosted-style addressing: a Host ``BUCKET.DOMAIN`` names the bucket."""
        self.scheme = scheme
        self._streams = asyncio.Semaphore(max_streams)
        self.keys = keys
        self.region = region
        self.metrics = metrics or S3Metrics()
        self.max_object_bytes = max_object_bytes
        self.app = web.Application(client_max_size=MAX_XML_BYTES)
        self.app.router.add_route("*", "/{tail:.*}", self.handle)

    # -- the one entry point ---------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        rid = secrets.token_hex(8).upper()
        started = time.perf_counter()
        raw_path, _, raw_query = request.raw_path.partition("?")
        path = unquote(raw_path)
        query = parse_qs(raw_query, keep_blank_values=True)
        q = {k: v[0] for k, v in query.items()}
        bucket = self._virtual_bucket(request.host) if self.domains else ""
        if bucket:
            key = path[1:] if path.startswith("/") else path
            path = f"/{bucket}/{key}"
        else:
            bucket, _, key = path.lstrip("/").partition("/")
        op = _op_name(request.method, bucket, key, q, request.headers)
        attrs = {"s3.op": op, "s3.bucket": bucket, "s3.key": key, "http.method": request.method}
        status = 500
        streams = self._streams if op in _STREAMING_OPS else contextlib.nullcontext()
        with _incoming_context(request), tracing.span("s3.request", attrs) as span:
            try:
                async with streams:
                    resp = await self._dispatch(request, op, raw_path, raw_query, bucket, key, q)
            except ConnectionError:
                raise  # the client went away, or a response under way was aborted
            except S3Error as e:
                e.resource = e.resource or path
                resp = self._error(request, e, rid)
            except (NoSuchFile, FileChanged) as e:
                resp = self._error(
                    request, S3Error("SlowDown", f"the object changed: {e}; retry"), rid
                )
            except FileConflict as e:
                resp = self._error(request, S3Error("SlowDown", str(e)), rid)
            except ConfigurationError as e:
                resp = self._error(request, S3Error("InvalidArgument", str(e)), rid)
            except OperationError as e:
                resp = self._error(request, S3Error("ServiceUnavailable", str(e)), rid)
            except Exception:  # a bug must not take the gateway down (AresError included)
                log.exception("request %s failed", rid)
                msg = "We encountered an internal error. Please try again."
                resp = self._error(request, S3Error("InternalError", msg), rid)
            status = resp.status
            span.set_attribute("http.status_code", status)
        resp.headers["x-amz-request-id"] = rid
        self.metrics.request(op, status, time.perf_counter() - started)
        return resp

    def _virtual_bucket(self, host: str) -> str:
        """The bucket a Host ``BUCKET.DOMAIN[:PORT]`` names ("" for any other Host: then the
        path names it)."""
        name = host.rpartition(":")[0] if host.count(":") == 1 else host
        name = name.lower().rstrip(".")
        for d in self.domains:
            if name.endswith(d) and len(name) > len(d):
                return name[: -len(d)]
        return ""

    def _error(self, request: web.Request, e: S3Error, rid: str) -> web.Response:
        if e.status >= 500:
            log.warning("%s %s: %s", request.method, request.path, e)
        if request.method == "HEAD" or e.status == 304:
            return web.Response(status=e.status)
        return web.Response(status=e.status, body=e.xml(rid), content_type="application/xml")

    async def _auth(
        self, request: web.Request, raw_path: str, raw_query: str, need: str, bucket: str
    ) -> Verified | None:
        headers: dict[str, list[str]] = {}
        for name, value in request.headers.items():
            headers.setdefault(name.lower(), []).append(value)
        v = verify(request.method, raw_path, raw_query, headers, self.keys)
        if v is None:
            if need == _READ and bucket and (await self.gw.bucket(bucket)).public:
                return None
            raise S3Error("AccessDenied", "Access Denied")
        if not v.key.allows(need):
            raise S3Error("AccessDenied", f"Access Denied (this key's role is {v.key.role})")
        return v

    def _body(self, request: web.Request, v: Verified | None, max_bytes: int) -> Body:
        headers = {k.lower(): val for k, val in request.headers.items()}
        if "content-length" not in headers and request.headers.get("transfer-encoding") is None:
            raise S3Error(
                "MissingContentLength", "You must provide the Content-Length HTTP header."
            )
        return Body(request.content, headers, v, max_bytes=max_bytes)

    async def _small_body(self, request: web.Request, v: Verified | None) -> bytes:
        body = self._body(request, v, MAX_XML_BYTES)
        out = bytearray()
        async for p in body.pieces():
            out += p
        _check_content_md5(request, body.md5.digest())
        return bytes(out)

    # -- routing -----------------------------------------------------------------------------------

    async def _dispatch(
        self,
        request: web.Request,
        op: str,
        raw_path: str,
        raw_query: str,
        bucket: str,
        key: str,
        q: dict[str, str],
    ) -> web.StreamResponse:
        m = request.method
        need = (
            _ADMIN
            if op in ("CreateBucket", "DeleteBucket", "PutBucketAcl")
            else (_READ if m in ("GET", "HEAD") else _WRITE)
        )
        if op == "NotImplemented":
            await self._auth(request, raw_path, raw_query, _READ, "")
            raise S3Error(
                "NotImplemented",
                "A header or query you provided implies functionality that is not implemented",
            )
        if op == "MethodNotAllowed":
            raise S3Error(
                "MethodNotAllowed", "The specified method is not allowed against this resource."
            )
        if bucket:
            check_bucket(bucket)
        v = await self._auth(request, raw_path, raw_query, need, bucket)
        handler = getattr(self, "_op_" + op)
        resp: web.StreamResponse = await handler(request, v, bucket, key, q)
        return resp

    # -- service and buckets ---------------------------------------------------------------------

    async def _op_ListBuckets(
        self, request: web.Request, v: Any, bucket: str, key: str, q: dict[str, str]
    ) -> web.StreamResponse:
        items = "".join(
            f"<Bucket><Name>{escape(b)}</Name><CreationDate>{_iso(r.created_s)}</CreationDate></Bucket>"
            for b, r in await self.gw.list_buckets()
        )
        return _xml(
            f'<ListAllMyBucketsResult xmlns="{NS}"><Owner><ID>aresdsm</ID><DisplayName>aresdsm'
            f"</DisplayName></Owner><Buckets>{items}</Buckets></ListAllMyBucketsResult>"
        )

    async def _op_CreateBucket(
        self, request: web.Request, v: Any, bucket: str, key: str, q: dict[str, str]
    ) -> web.StreamResponse:
        await self._small_body(request, v)  # an optional CreateBucketConfiguration: ignored
        acl = request.headers.get("x-amz-acl", "private")
        await self.gw.create_bucket(bucket, public=_public_acl(acl))
        return web.Response(status=200, headers={"Location": f"/{bucket}"})

    async def _op_PutBucketAcl(
        self, request: web.Request, v: Any, bucket: str, key: str, q: dict[str, str]
    ) -> web.StreamResponse:
        await self._small_body(request, v)
        acl = request.headers.get("x-amz-acl")
        if acl is None:
            raise S3Error(
                "NotImplemented",
                "only canned ACLs (x-amz-acl: private | public-read) are supported",
            )
        await self.gw.set_public(bucket, _public_acl(acl))
        return web.Response(status=200)

    async def _op_GetBucketAcl(
        self, request: web.Request, v: Any, bucket: str, key: str, q: dict[str, str]
    ) -> web.StreamResponse:
        rec = await self.gw.bucket(bucket)
        owner = "<Owner><ID>aresdsm</ID><DisplayName>aresdsm</DisplayName></Owner>"
        xsi = 'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"'
        grants = (
            f'<Grant><Grantee {xsi} xsi:type="CanonicalUser"><ID>aresdsm</ID></Grantee>'
            "<Permission>FULL_CONTROL</Permission></Grant>"
        )
        if rec.public:
            grants += (
                f'<Grant><Grantee {xsi} xsi:type="Group"><URI>http://acs.amazonaws.com/groups/'
                "global/AllUsers</URI></Grantee><Permission>READ</Permission></Grant>"
            )
        return _xml(
            f'<AccessControlPolicy xmlns="{NS}">{owner}<AccessControlList>{grants}'
            "</AccessControlList></AccessControlPolicy>"
        )

    async def _op_HeadBucket(
        self, request: web.Request, v: Any, bucket: str, key: str, q: dict[str, str]
    ) -> web.StreamResponse:
        await self.gw.bucket(bucket)
        return web.Response(status=200, headers={"x-amz-bucket-region": self.region})

    async def _op_GetBucketLocation(
        self, request: web.Request, v: Any, bucket: str, key: str, q: dict[str, str]
    ) -> web.StreamResponse:
        await self.gw.bucket(bucket)
        loc = "" if self.region == "us-east-1" else escape(self.region)
        return _xml(f'<LocationConstraint xmlns="{NS}">{loc}</LocationConstraint>')

    async def _op_DeleteBucket(
        self, request: web.Request, v: Any, bucket: str, key: str, q: dict[str, str]
    ) -> web.StreamResponse:
        await self.gw.delete_bucket(bucket)
        return web.Response(status=204)

    async def _op_ListObjects(
        self, request: web.Request, v: Any, bucket: str, key: str, q: dict[str, str]
    ) -> web.StreamResponse:
        v2 = q.get("list-type") == "2"
        prefix, delimiter = q.get("prefix", ""), q.get("delimiter", "")
        try:
            max_keys = min(int(q.get("max-keys", MAX_LIST_KEYS)), MAX_LIST_KEYS)
        except ValueError:
            raise S3Error("InvalidArgument", "max-keys must be an integer") from None
        if max_keys < 0:
            raise S3Error("InvalidArgument", "max-keys must not be negative")
        url = q.get("encoding-type") == "url"
        if q.get("encoding-type") not in (None, "url"):
            raise S3Error("InvalidArgument", "Invalid Encoding Method specified in Request")
        token = q.get("continuation-token")
        if v2:
            after = q.get("start-after", "")
            if token is not None:
                try:
                    after = max(after, base64.urlsafe_b64decode(token.encode()).decode())
                except (binascii.Error, UnicodeDecodeError):
                    raise S3Error(
                        "InvalidArgument", "The continuation token provided is incorrect"
                    ) from None
        else:
            after = q.get("marker", "")
        contents: list[tuple[str, Head]] = []
        prefixes: list[str] = []
        truncated, last = False, ""
        if max_keys == 0:
            await self.gw.bucket(bucket)
        else:
            contents, prefixes, truncated, last = await self.gw.list(
                bucket, prefix=prefix, delimiter=delimiter, after=after, max_keys=max_keys
            )

        def enc(s: str) -> str:
            return escape(quote(s, safe="/") if url else s)

        parts = [f'<ListBucketResult xmlns="{NS}"><Name>{escape(bucket)}</Name>']
        parts.append(f"<Prefix>{enc(prefix)}</Prefix>")
        if delimiter:
            parts.append(f"<Delimiter>{enc(delimiter)}</Delimiter>")
        parts.append(f"<MaxKeys>{max_keys}</MaxKeys>")
        if url:
            parts.append("<EncodingType>url</EncodingType>")
        parts.append(f"<IsTruncated>{'true' if truncated else 'false'}</IsTruncated>")
        if v2:
            parts.append(f"<KeyCount>{len(contents) + len(prefixes)}</KeyCount>")
            if token is not None:
                parts.append(f"<ContinuationToken>{escape(token)}</ContinuationToken>")
            if "start-after" in q:
                parts.append(f"<StartAfter>{enc(q['start-after'])}</StartAfter>")
            if truncated:
                nxt = base64.urlsafe_b64encode(last.encode()).decode()
                parts.append(f"<NextContinuationToken>{nxt}</NextContinuationToken>")
        else:
            parts.append(f"<Marker>{enc(after)}</Marker>")
            if truncated:
                parts.append(f"<NextMarker>{enc(last)}</NextMarker>")
        for k, h in contents:
            parts.append(
                f"<Contents><Key>{enc(k)}</Key><LastModified>{_iso(h.mtime_s)}</LastModified>"
                f"<ETag>&quot;{h.etag}&quot;</ETag><Size>{h.size}</Size>"
                "<StorageClass>STANDARD</StorageClass></Contents>"
            )
        for p in prefixes:
            parts.append(f"<CommonPrefixes><Prefix>{enc(p)}</Prefix></CommonPrefixes>")
        parts.append("</ListBucketResult>")
        return _xml("".join(parts))

    # -- objects ---------------------------------------------------------------------------------

    async def _op_PutObject(
        self, request: web.Request, v: Any, bucket: str, key: str, q: dict[str, str]
    ) -> web.StreamResponse:
        headers, meta = _meta_of(request)
        cond = Conditions(
            _etags(request.headers.get("If-Match")), _etags(request.headers.get("If-None-Match"))
        )
        body = self._body(request, v, self.max_object_bytes)
        h = await self.gw.put(
            bucket, key, self._counted(body), body.md5.digest, headers=headers, meta=meta,
            cond=cond, content_md5=_content_md5(request),
        )  # fmt: skip
        return web.Response(status=200, headers={"ETag": f'"{h.etag}"'})

    async def _counted(self, body: Body) -> AsyncIterator[bytes]:
        async for p in body.pieces():
            self.metrics.bytes_in.inc(len(p))
            yield p

    async def _op_HeadObject(
        self, request: web.Request, v: Any, bucket: str, key: str, q: dict[str, str]
    ) -> web.StreamResponse:
        return await self._get(request, bucket, key, body=False)

    async def _op_GetObject(
        self, request: web.Request, v: Any, bucket: str, key: str, q: dict[str, str]
    ) -> web.StreamResponse:
        return await self._get(request, bucket, key, body=True)

    async def _get(
        self, request: web.Request, bucket: str, key: str, *, body: bool
    ) -> web.StreamResponse:
        for attempt in range(3):
            h = await self.gw.head(bucket, key)
            _check_read_conditions(request, h)
            rng = _range(request.headers.get("Range"), h.size)
            headers = _object_headers(h)
            start, end = rng if rng is not None else (0, h.size - 1)
            if rng is not None:
                headers["Content-Range"] = f"bytes {start}-{end}/{h.size}"
            status = 206 if rng is not None else 200
            length = end - start + 1 if h.size else 0
            if not body:
                headers["Content-Length"] = str(length)
                return web.Response(status=status, headers=headers)
            stream = self.gw.stream(bucket, h, start, end)
            first = b""
            if length:
                try:  # before the headers go out, a replaced version can still be read again
                    first = await stream.__anext__()
                except (NoSuchFile, FileChanged):
                    await stream.aclose()
                    if attempt == 2:
                        raise
                    continue
            resp = web.StreamResponse(status=status, headers=headers)
            resp.content_length = length
            await resp.prepare(request)
            try:
                async with contextlib.aclosing(stream):
                    if first:
                        await resp.write(first)
                        self.metrics.bytes_out.inc(len(first))
                    if length:
                        async for p in stream:
                            await resp.write(p)
                            self.metrics.bytes_out.inc(len(p))
            except (AresError, S3Error) as e:  # the status is sent: abort the connection
                log.warning("GET %s/%s aborted after the headers: %s", bucket, key, e)
                raise ConnectionAbortedError(str(e)) from e
            await resp.write_eof()
            return resp
        raise AssertionError("unreachable")  # pragma: no cover

    async def _op_DeleteObject(
        self, request: web.Request, v: Any, bucket: str, key: str, q: dict[str, str]
    ) -> web.StreamResponse:
        await self.gw.delete(bucket, key)
        return web.Response(status=204)

    async def _op_DeleteObjects(
        self, request: web.Request, v: Any, bucket: str, key: str, q: dict[str, str]
    ) -> web.StreamResponse:
        root = _parse_xml(await self._small_body(request, v))
        quiet = (root.findtext("Quiet") or "").strip().lower() == "true"
        keys = [o.findtext("Key") or "" for o in root.findall("Object")]
        if len(keys) > 1000:
            raise S3Error("MalformedXML", "at most 1000 keys per request")
        await self.gw.bucket(bucket)
        out = [f'<DeleteResult xmlns="{NS}">']
        for k in keys:
            try:
                await self.gw.delete(bucket, k)
                if not quiet:
                    out.append(f"<Deleted><Key>{escape(k)}</Key></Deleted>")
            except S3Error as e:
                out.append(
                    f"<Error><Key>{escape(k)}</Key><Code>{e.code}</Code>"
                    f"<Message>{escape(e.message)}</Message></Error>"
                )
        out.append("</DeleteResult>")
        return _xml("".join(out))

    async def _op_CopyObject(
        self, request: web.Request, v: Any, bucket: str, key: str, q: dict[str, str]
    ) -> web.StreamResponse:
        src = unquote(request.headers["x-amz-copy-source"].split("?", 1)[0]).lstrip("/")
        sb, _, sk = src.partition("/")
        check_bucket(sb)
        if not sk:
            raise S3Error("InvalidArgument", "Copy Source must mention the source bucket and key")
        directive = request.headers.get("x-amz-metadata-directive", "COPY").upper()
        if directive not in ("COPY", "REPLACE"):
            raise S3Error("InvalidArgument", "Unknown metadata directive.")
        replace = _meta_of(request) if directive == "REPLACE" else None
        cond = Conditions(
            _etags(request.headers.get("If-Match")), _etags(request.headers.get("If-None-Match"))
        )
        src_cond = Conditions(
            _etags(request.headers.get("x-amz-copy-source-if-match")),
            _etags(request.headers.get("x-amz-copy-source-if-none-match")),
        )
        h = await self.gw.copy(sb, sk, bucket, key, replace=replace, cond=cond, src_cond=src_cond)
        return _xml(
            f'<CopyObjectResult xmlns="{NS}"><LastModified>{_iso(h.mtime_s)}</LastModified>'
            f"<ETag>&quot;{h.etag}&quot;</ETag></CopyObjectResult>"
        )

    # -- multipart -------------------------------------------------------------------------------

    async def _op_CreateMultipartUpload(
        self, request: web.Request, v: Any, bucket: str, key: str, q: dict[str, str]
    ) -> web.StreamResponse:
        headers, meta = _meta_of(request)
        uid = await self.gw.create_upload(bucket, key, headers=headers, meta=meta)
        return _xml(
            f'<InitiateMultipartUploadResult xmlns="{NS}"><Bucket>{escape(bucket)}</Bucket>'
            f"<Key>{escape(key)}</Key><UploadId>{uid}</UploadId></InitiateMultipartUploadResult>"
        )

    async def _op_UploadPart(
        self, request: web.Request, v: Any, bucket: str, key: str, q: dict[str, str]
    ) -> web.StreamResponse:
        try:
            number = int(q["partNumber"])
        except ValueError:
            raise S3Error("InvalidArgument", "Part number must be an integer") from None
        await self.gw.bucket(bucket)
        body = self._body(request, v, MAX_PART_BYTES)
        etag = await self.gw.upload_part(
            bucket, key, q["uploadId"], number, self._counted(body), body.md5.digest,
            _content_md5(request),
        )  # fmt: skip
        return web.Response(status=200, headers={"ETag": f'"{etag}"'})

    async def _op_ListParts(
        self, request: web.Request, v: Any, bucket: str, key: str, q: dict[str, str]
    ) -> web.StreamResponse:
        await self.gw.bucket(bucket)
        try:
            marker = int(q.get("part-number-marker", "0"))
            max_parts = min(int(q.get("max-parts", "1000")), 1000)
        except ValueError:
            raise S3Error("InvalidArgument", "bad part-number-marker or max-parts") from None
        parts = [
            (n, r) for n, r in await self.gw.list_parts(bucket, key, q["uploadId"]) if n > marker
        ]
        truncated = len(parts) > max_parts
        parts = parts[:max_parts]
        out = [
            f'<ListPartsResult xmlns="{NS}"><Bucket>{escape(bucket)}</Bucket>'
            f"<Key>{escape(key)}</Key>"
            f"<UploadId>{escape(q['uploadId'])}</UploadId><PartNumberMarker>{marker}</PartNumberMarker>"
            f"<MaxParts>{max_parts}</MaxParts>"
            f"<IsTruncated>{'true' if truncated else 'false'}</IsTruncated>"
            "<StorageClass>STANDARD</StorageClass>"
        ]
        if parts:
            out.append(f"<NextPartNumberMarker>{parts[-1][0]}</NextPartNumberMarker>")
        for n, r in parts:
            out.append(
                f"<Part><PartNumber>{n}</PartNumber><LastModified>{_iso(r.mtime_s)}</LastModified>"
                f"<ETag>&quot;{r.etag}&quot;</ETag><Size>{r.size}</Size></Part>"
            )
        out.append("</ListPartsResult>")
        return _xml("".join(out))

    async def _op_ListMultipartUploads(
        self, request: web.Request, v: Any, bucket: str, key: str, q: dict[str, str]
    ) -> web.StreamResponse:
        prefix, delimiter = q.get("prefix", ""), q.get("delimiter", "")
        key_marker, id_marker = q.get("key-marker", ""), q.get("upload-id-marker", "")
        try:
            max_uploads = max(0, min(int(q.get("max-uploads", "1000")), MAX_LIST_KEYS))
        except ValueError:
            raise S3Error("InvalidArgument", "max-uploads must be an integer") from None
        url = q.get("encoding-type") == "url"

        def enc(s: str) -> str:
            return escape(quote(s, safe="/") if url else s)

        entries: list[tuple[str, str, float]] = []
        prefixes: list[str] = []
        truncated = False
        next_key = next_id = ""
        uploads = await self.gw.list_uploads(bucket, prefix)
        for k, uid, created in uploads[_after_marker(uploads, key_marker, id_marker) :]:
            cp = ""
            if delimiter:
                i = k.find(delimiter, len(prefix))
                if i >= 0:
                    cp = k[: i + len(delimiter)]
            if cp and cp == key_marker:
                continue
            if cp and prefixes and prefixes[-1] == cp:
                continue
            if len(entries) + len(prefixes) >= max_uploads:
                truncated = True
                break
            if cp:
                prefixes.append(cp)
                next_key, next_id = cp, ""
            else:
                entries.append((k, uid, created))
                next_key, next_id = k, uid
        owner = "<ID>aresdsm</ID><DisplayName>aresdsm</DisplayName>"
        out = [
            f'<ListMultipartUploadsResult xmlns="{NS}"><Bucket>{escape(bucket)}</Bucket>'
            f"<KeyMarker>{enc(key_marker)}</KeyMarker>"
            f"<UploadIdMarker>{escape(id_marker)}</UploadIdMarker>"
            f"<NextKeyMarker>{enc(next_key)}</NextKeyMarker>"
            f"<NextUploadIdMarker>{escape(next_id)}</NextUploadIdMarker>"
            f"<Prefix>{enc(prefix)}</Prefix>"
            + (f"<Delimiter>{enc(delimiter)}</Delimiter>" if delimiter else "")
            + ("<EncodingType>url</EncodingType>" if url else "")
            + f"<MaxUploads>{max_uploads}</MaxUploads>"
            f"<IsTruncated>{'true' if truncated else 'false'}</IsTruncated>"
        ]
        for k, uid, created in entries:
            out.append(
                f"<Upload><Key>{enc(k)}</Key><UploadId>{uid}</UploadId>"
                f"<Initiator>{owner}</Initiator><Owner>{owner}</Owner>"
                f"<StorageClass>STANDARD</StorageClass><Initiated>{_iso(created)}</Initiated>"
                "</Upload>"
            )
        for p in prefixes:
            out.append(f"<CommonPrefixes><Prefix>{enc(p)}</Prefix></CommonPrefixes>")
        out.append("</ListMultipartUploadsResult>")
        return _xml("".join(out))

    async def _op_CompleteMultipartUpload(
        self, request: web.Request, v: Any, bucket: str, key: str, q: dict[str, str]
    ) -> web.StreamResponse:
        await self.gw.bucket(bucket)
        root = _parse_xml(await self._small_body(request, v))
        parts: list[tuple[int, str]] = []
        for p in root.findall("Part"):
            try:
                parts.append((int(p.findtext("PartNumber") or ""), p.findtext("ETag") or ""))
            except ValueError:
                raise S3Error("MalformedXML", "a Part without a PartNumber") from None
        cond = Conditions(
            _etags(request.headers.get("If-Match")), _etags(request.headers.get("If-None-Match"))
        )
        h = await self.gw.complete(bucket, key, q["uploadId"], parts, cond)
        loc = f"{self.scheme}://{escape(request.host)}/{escape(bucket)}/{escape(quote(key))}"
        return _xml(
            f'<CompleteMultipartUploadResult xmlns="{NS}"><Location>{loc}</Location>'
            f"<Bucket>{escape(bucket)}</Bucket><Key>{escape(key)}</Key>"
            f"<ETag>&quot;{h.etag}&quot;</ETag></CompleteMultipartUploadResult>"
        )

    async def _op_AbortMultipartUpload(
        self, request: web.Request, v: Any, bucket: str, key: str, q: dict[str, str]
    ) -> web.StreamResponse:
        await self.gw.bucket(bucket)
        await self.gw.abort(bucket, key, q["uploadId"])
        return web.Response(status=204)


def _op_name(method: str, bucket: str, key: str, q: dict[str, str], headers: Any) -> str:
    """S3's operation name for a request (``NotImplemented`` for the sub-resources not
    supported, ``MethodNotAllowed`` for the rest)."""
    sub = set(q) & _UNSUPPORTED
    if not bucket:
        return "ListBuckets" if method == "GET" else "MethodNotAllowed"
    if not key:
        if method == "PUT":
            if "acl" in q:
                return "PutBucketAcl"
            return "NotImplemented" if sub else "CreateBucket"
        if method == "GET" and "acl" in q:
            return "GetBucketAcl"
        if method == "GET" and "location" in q:
            return "GetBucketLocation"
        if method == "GET" and "uploads" in q:
            return "NotImplemented" if sub else "ListMultipartUploads"
        if sub:
            return "NotImplemented"
        return {
            "HEAD": "HeadBucket",
            "DELETE": "DeleteBucket",
            "GET": "ListObjects",
            "POST": "DeleteObjects" if "delete" in q else "MethodNotAllowed",
        }.get(method, "MethodNotAllowed")
    if method == "POST":
        if "uploads" in q:
            return "CreateMultipartUpload"
        if "uploadId" in q:
            return "CompleteMultipartUpload"
        return "MethodNotAllowed"
    if sub:
        return "NotImplemented"
    if method == "PUT":
        if "uploadId" in q and "partNumber" in q:
            return "NotImplemented" if "x-amz-copy-source" in headers else "UploadPart"
        return "CopyObject" if "x-amz-copy-source" in headers else "PutObject"
    if method == "GET":
        if "uploadId" in q:
            return "ListParts"
        return "NotImplemented" if "partNumber" in q else "GetObject"
    if method == "HEAD":
        return "NotImplemented" if "partNumber" in q else "HeadObject"
    if method == "DELETE":
        return "AbortMultipartUpload" if "uploadId" in q else "DeleteObject"
    return "MethodNotAllowed"


def _after_marker(uploads: list[tuple[str, str, float]], key: str, upload_id: str) -> int:
    """Where a ListMultipartUploads page starts: after the key ``key`` (S3: without an upload
    id marker, only greater keys), or after the upload ``upload_id`` of that key (uploads of
    one key are listed by initiation; an id no longer listed: the ids greater than it)."""
    if not key:
        return 0
    for i, (k, u, _) in enumerate(uploads):
        if upload_id and k == key and u == upload_id:
            return i + 1
    for i, (k, u, _) in enumerate(uploads):
        if k > key or (upload_id and k == key and u > upload_id):
            return i
    return len(uploads)


def _public_acl(acl: str) -> bool:
    if acl not in ("private", "public-read"):
        raise S3Error(
            "NotImplemented", "only the canned ACLs private and public-read are supported"
        )
    return acl == "public-read"


def _content_md5(request: web.Request) -> bytes | None:
    v = request.headers.get("Content-MD5")
    if v is None:
        return None
    try:
        d = base64.b64decode(v, validate=True)
    except binascii.Error:
        d = b""
    if len(d) != 16:
        raise S3Error("InvalidDigest", "The Content-MD5 you specified was invalid.")
    return d


def _check_content_md5(request: web.Request, got: bytes) -> None:
    want = _content_md5(request)
    if want is not None and want != got:
        raise S3Error("BadDigest", "The Content-MD5 you specified did not match what we received.")


def _check_read_conditions(request: web.Request, h: Head) -> None:
    im, inm = _etags(request.headers.get("If-Match")), _etags(request.headers.get("If-None-Match"))
    if im is not None and "*" not in im and h.etag not in im:
        raise S3Error(
            "PreconditionFailed", "At least one of the pre-conditions you specified did not hold"
        )
    ius = request.headers.get("If-Unmodified-Since")
    if im is None and ius is not None:
        t = _parse_http_date(ius)
        if t is not None and int(h.mtime_s) > t:
            raise S3Error(
                "PreconditionFailed",
                "At least one of the pre-conditions you specified did not hold",
            )
    if inm is not None and ("*" in inm or h.etag in inm):
        raise S3Error("NotModified", "Not Modified")
    ims = request.headers.get("If-Modified-Since")
    if inm is None and ims is not None:
        t = _parse_http_date(ims)
        if t is not None and int(h.mtime_s) <= t:
            raise S3Error("NotModified", "Not Modified")


def _parse_http_date(s: str) -> float | None:
    try:
        return email.utils.parsedate_to_datetime(s).timestamp()
    except (TypeError, ValueError):
        return None


@contextlib.contextmanager
def _incoming_context(request: web.Request) -> Any:
    """A W3C ``traceparent`` sent by the S3 client becomes the parent of the request's span."""
    if not tracing.enabled() or "traceparent" not in request.headers:
        yield
        return
    from opentelemetry import context
    from opentelemetry.propagate import extract

    token = context.attach(extract(dict(request.headers)))
    try:
        yield
    finally:
        context.detach(token)
