"""SigV4 verification against AWS's published examples (the S3 API reference's "Signature
Calculations" pages: the GET with a Range header, the presigned GET, the chunked PUT with its
seed and chunk signatures), plus the failures a gateway must refuse."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from aresdsm.s3.body import Body
from aresdsm.s3.errors import S3Error
from aresdsm.s3.sigv4 import AccessKey, KeyRing, verify

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
RING = KeyRing([AccessKey("AKIAIOSFODNN7EXAMPLE", SECRET, "read")])
WHEN = dt.datetime(2013, 5, 24, 0, 0, 5, tzinfo=dt.UTC)
EMPTY = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def h(**kv: str) -> dict[str, list[str]]:
    return {k.replace("_", "-"): [v] for k, v in kv.items()}


def auth(signed: str, sig: str) -> str:
    return (
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,"
        f"SignedHeaders={signed},Signature={sig}"
    )


GET_SIG = "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"


def get_headers(sig: str = GET_SIG) -> dict[str, list[str]]:
    return h(
        host="examplebucket.s3.amazonaws.com",
        range="bytes=0-9",
        x_amz_content_sha256=EMPTY,
        x_amz_date="20130524T000000Z",
        authorization=auth("host;range;x-amz-content-sha256;x-amz-date", sig),
    )


def test_aws_example_get_object_with_range() -> None:
    v = verify("GET", "/test.txt", "", get_headers(), RING, now=WHEN)
    assert v is not None and v.key.role == "read"


@pytest.mark.parametrize(
    "change",
    ["signature", "method", "path", "header", "query", "secret"],
)
def test_any_change_breaks_the_signature(change: str) -> None:
    headers = get_headers()
    method, path, query, ring = "GET", "/test.txt", "", RING
    if change == "signature":
        headers = get_headers(GET_SIG[:-1] + "0")
    elif change == "method":
        method = "DELETE"
    elif change == "path":
        path = "/test.txT"
    elif change == "header":
        headers["range"] = ["bytes=0-10"]
    elif change == "query":
        query = "acl"
    else:
        ring = KeyRing([AccessKey("AKIAIOSFODNN7EXAMPLE", SECRET + "x", "read")])
    with pytest.raises(S3Error) as e:
        verify(method, path, query, headers, ring, now=WHEN)
    assert e.value.code == "SignatureDoesNotMatch" and e.value.status == 403


def test_unknown_key_skew_and_anonymous() -> None:
    with pytest.raises(S3Error) as e:
        verify("GET", "/test.txt", "", get_headers(), KeyRing(), now=WHEN)
    assert e.value.code == "InvalidAccessKeyId"
    with pytest.raises(S3Error) as e:
        verify("GET", "/test.txt", "", get_headers(), RING, now=WHEN + dt.timedelta(hours=1))
    assert e.value.code == "RequestTimeTooSkewed"
    assert verify("GET", "/test.txt", "", h(host="x"), RING, now=WHEN) is None


PRESIGNED = (
    "X-Amz-Algorithm=AWS4-HMAC-SHA256"
    "&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request"
    "&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host"
    "&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"
)


def test_aws_example_presigned_url_and_its_expiry() -> None:
    headers = h(host="examplebucket.s3.amazonaws.com")
    v = verify("GET", "/test.txt", PRESIGNED, headers, RING, now=WHEN)
    assert v is not None and v.payload_hash == "UNSIGNED-PAYLOAD"
    late = dt.datetime(2013, 5, 25, 0, 0, 1, tzinfo=dt.UTC)
    with pytest.raises(S3Error) as e:
        verify("GET", "/test.txt", PRESIGNED, headers, RING, now=late)
    assert e.value.code == "AccessDenied" and "expired" in e.value.message
    with pytest.raises(S3Error) as e:
        verify("GET", "/test.txt", PRESIGNED.replace("86400", "86401"), headers, RING, now=WHEN)
    assert e.value.code == "SignatureDoesNotMatch"


SEED = "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"
CHUNK_SIGS = (
    "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648",
    "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497",
    "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9",
)


def chunked_request(sigs: tuple[str, ...] = CHUNK_SIGS) -> tuple[dict[str, list[str]], bytes]:
    body = (
        f"10000;chunk-signature={sigs[0]}\r\n".encode()
        + b"a" * 65536
        + f"\r\n400;chunk-signature={sigs[1]}\r\n".encode()
        + b"a" * 1024
        + f"\r\n0;chunk-signature={sigs[2]}\r\n\r\n".encode()
    )
    signed = (
        "content-encoding;content-length;host;x-amz-content-sha256;x-amz-date;"
        "x-amz-decoded-content-length;x-amz-storage-class"
    )
    headers = h(
        host="s3.amazonaws.com",
        x_amz_date="20130524T000000Z",
        x_amz_storage_class="REDUCED_REDUNDANCY",
        authorization=auth(signed, SEED),
        x_amz_content_sha256="STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
        content_encoding="aws-chunked",
        x_amz_decoded_content_length="66560",
        content_length=str(len(body)),
    )
    return headers, body


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.r = asyncio.StreamReader()
        self.r.feed_data(data)
        self.r.feed_eof()

    async def read(self, n: int = -1) -> bytes:
        return await self.r.read(n)

    async def readexactly(self, n: int) -> bytes:
        try:
            return await self.r.readexactly(n)
        except asyncio.IncompleteReadError as e:
            raise S3Error("IncompleteBody", "short") from e

    async def readline(self) -> bytes:
        return await self.r.readline()


async def decode(headers: dict[str, list[str]], body: bytes) -> bytes:
    v = verify("PUT", "/examplebucket/chunkObject.txt", "", headers, RING, now=WHEN)
    b = Body(_Reader(body), {k: vs[0] for k, vs in headers.items()}, v, max_bytes=1 << 20)
    return b"".join([p async for p in b.pieces()])


async def test_aws_example_chunked_upload_signatures() -> None:
    headers, body = chunked_request()
    assert await decode(headers, body) == b"a" * 66560


async def test_a_wrong_chunk_signature_or_a_changed_chunk_is_refused() -> None:
    headers, body = chunked_request((CHUNK_SIGS[0], CHUNK_SIGS[0], CHUNK_SIGS[2]))
    with pytest.raises(S3Error) as e:
        await decode(headers, body)
    assert e.value.code == "SignatureDoesNotMatch"
    headers, body = chunked_request()
    tampered = body.replace(b"a" * 1024, b"b" + b"a" * 1023)
    with pytest.raises(S3Error) as e:
        await decode(headers, tampered)
    assert e.value.code == "SignatureDoesNotMatch"


async def test_unsigned_trailer_framing_and_crc32_trailer() -> None:
    import base64
    import zlib

    data = b"hello world" * 1000
    crc = base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()
    framed = (
        f"{len(data):x}\r\n".encode() + data + b"\r\n0\r\n"
        + f"x-amz-checksum-crc32:{crc}\r\n\r\n".encode()
    )  # fmt: skip
    headers = {
        "content-encoding": "aws-chunked",
        "x-amz-decoded-content-length": str(len(data)),
        "x-amz-trailer": "x-amz-checksum-crc32",
    }
    b = Body(_Reader(framed), headers, None, max_bytes=1 << 20)
    b.payload = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
    assert b"".join([p async for p in b.pieces()]) == data
    bad = framed.replace(crc.encode(), base64.b64encode(b"\0\0\0\0"))
    b = Body(_Reader(bad), headers, None, max_bytes=1 << 20)
    with pytest.raises(S3Error) as e:
        _ = [p async for p in b.pieces()]
    assert e.value.code == "BadDigest"


async def test_payload_hash_mismatch_is_refused() -> None:
    import hashlib

    data = b"x" * 1000
    good = hashlib.sha256(data).hexdigest()
    for payload, ok in ((good, True), (good[::-1], False)):
        b = Body(_Reader(data), {"content-length": "1000"}, None, max_bytes=1 << 20)
        b.payload = payload
        b.sha256 = hashlib.sha256()
        if ok:
            assert b"".join([p async for p in b.pieces()]) == data
        else:
            with pytest.raises(S3Error) as e:
                _ = [p async for p in b.pieces()]
            assert e.value.code == "XAmzContentSHA256Mismatch"
