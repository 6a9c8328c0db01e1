"""The gateway's HTTP face in-process (aiohttp's test server over the in-memory store of
tests/s3/fake.py), with requests signed by botocore's own SigV4 signer: the memory bound on
data-moving requests (docs/s3.md, "Memory")."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from aresdsm.s3.app import MAX_STREAMS, S3App
from aresdsm.s3.objects import BLOCKS_IN_FLIGHT, Gateway
from aresdsm.s3.sigv4 import AccessKey, KeyRing

from .fake import FakeStore

KEY = ("AKUNIT00000000000001", "unit-secret-0001")


def signed(method: str, host: str, path: str, body: bytes = b"") -> dict[str, str]:
    """The headers botocore sends for this request (SigV4, payload hash signed)."""
    req = AWSRequest(
        method=method, url=f"http://{host}{path}", data=body,
        headers={"x-amz-content-sha256": hashlib.sha256(body).hexdigest()},
    )  # fmt: skip
    S3SigV4Auth(Credentials(*KEY), "s3", "us-east-1").add_auth(req)
    return {**dict(req.headers.items()), "Host": host}


class Served:
    def __init__(self, app: S3App, server: TestServer, session: ClientSession) -> None:
        self.app, self.server, self.session = app, server, session

    async def request(self, method: str, path: str, body: bytes = b"", host: str = "") -> Any:
        host = host or f"127.0.0.1:{self.server.port}"
        async with self.session.request(
            method, self.server.make_url(path), data=body, headers=signed(method, host, path, body)
        ) as r:
            return r.status, await r.read(), r.headers


async def serve(**kw: Any) -> tuple[Served, FakeStore]:
    store = FakeStore()
    gw = Gateway(store, gc_delay_s=0.0)
    app = S3App(gw, KeyRing([AccessKey(*KEY, "admin")]), **kw)
    server = TestServer(app.app)
    await server.start_server()
    return Served(app, server, ClientSession()), store


async def close(s: Served) -> None:
    await s.session.close()
    await s.server.close()


async def test_data_moving_requests_wait_beyond_max_streams() -> None:
    """At most ``max_streams`` PUTs / GETs move data at once (each holds at most
    ``BLOCKS_IN_FLIGHT`` blocks of the file layer): the gateway's memory bound, whatever the
    number of clients. Requests that move no data are not held back."""
    s, store = await serve(max_streams=2)
    try:
        assert store.files.max_inflight_blocks == BLOCKS_IN_FLIGHT
        assert (await s.request("PUT", "/bkt"))[0] == 200
        running = peak = 0
        release = asyncio.Event()
        put = s.app.gw.put

        async def slow_put(*a: Any, **kw: Any) -> Any:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            await release.wait()
            running -= 1
            return await put(*a, **kw)

        s.app.gw.put = slow_put  # type: ignore[method-assign]
        puts = [asyncio.ensure_future(s.request("PUT", f"/bkt/k{i}", b"v%d" % i)) for i in range(6)]
        for _ in range(200):
            await asyncio.sleep(0.01)
            if running == 2:
                break
        await asyncio.sleep(0.05)
        assert (running, peak) == (2, 2)
        assert (await s.request("HEAD", "/bkt"))[0] == 200  # no data: not held back
        release.set()
        assert [r[0] for r in await asyncio.gather(*puts)] == [200] * 6
        assert peak == 2
        for i in range(6):
            assert (await s.request("GET", f"/bkt/k{i}"))[1] == b"v%d" % i
    finally:
        await close(s)


def test_the_default_bound() -> None:
    """The defaults documented in docs/s3.md: 8 requests x 2 blocks of at most 4 MiB in flight
    (about 40 MiB per request at worst, measured)."""
    assert (MAX_STREAMS, BLOCKS_IN_FLIGHT) == (8, 2)


@pytest.fixture(autouse=True)
def _no_aws_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(k, raising=False)


async def test_virtual_hosted_style_addressing() -> None:
    """With ``--domain s3.test`` a Host ``BUCKET.s3.test`` names the bucket and the whole path is
    the key (what SDKs send by default for a named endpoint); path-style requests keep working,
    and a Host outside the domain is path-style. The signature covers the Host and path as
    sent."""
    s, _ = await serve(domains=("s3.test",))
    port = s.server.port
    vhost = f"photos.s3.test:{port}"
    try:
        assert (await s.request("PUT", "/", host=vhost))[0] == 200  # CreateBucket
        assert (await s.request("PUT", "/2026/a%20b.txt", b"hello", host=vhost))[0] == 200
        status, body, _ = await s.request("GET", "/photos/2026/a%20b.txt")  # path-style
        assert (status, body) == (200, b"hello")
        status, body, _ = await s.request("GET", "/2026/a%20b.txt", host=vhost)
        assert (status, body) == (200, b"hello"), body
        status, body, _ = await s.request("GET", "/?list-type=2&prefix=2026", host=vhost)
        assert status == 200 and b"<Key>2026/a b.txt</Key>" in body
        assert b"<Name>photos</Name>" in body
        status, body, _ = await s.request("GET", "/", host=f"s3.test:{port}")  # the domain itself
        assert status == 200 and b"<Name>photos</Name>" in body  # ListBuckets
        status, body, _ = await s.request("GET", "/2026/a%20b.txt", host=f"photos.example:{port}")
        assert status == 404 and b"<Code>NoSuchBucket</Code>" in body  # path-style: bucket 2026
    finally:
        await close(s)
