"""HTTPS on the gateway itself (``--tls-cert`` / ``--tls-key``): boto3 verifying the
gateway's certificate against a CA, a byte-exact round trip, and plain HTTP refused on that
port (docs/s3.md)."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

from aresdsm.local import CERTS_DIR
from aresdsm.security.certs import issue_server

from .conftest import KEYS, Gateway


def test_https_round_trip_with_a_verified_certificate(gateway: Gateway) -> None:
    ca_dir = gateway.lc.base_dir / CERTS_DIR
    out = gateway.base / "gateway-tls"
    out.mkdir(exist_ok=True)
    got = issue_server(ca_dir, "localhost", out_dir=out, hosts=("127.0.0.1",))
    url, _ = gateway.start("--tls-cert", str(got.cert), "--tls-key", str(got.key))
    assert url.startswith("https://127.0.0.1:")
    ca = next(ca_dir.glob("ca*.pem"))
    s3 = boto3.client(
        "s3", endpoint_url=url, aws_access_key_id=KEYS["admin"][0],
        aws_secret_access_key=KEYS["admin"][1], region_name="us-east-1", verify=str(ca),
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )  # fmt: skip
    s3.create_bucket(Bucket="tls-bucket")
    data = os.urandom(300_000)  # a data file, not inline
    s3.put_object(Bucket="tls-bucket", Key="x/y.bin", Body=data)
    assert s3.get_object(Bucket="tls-bucket", Key="x/y.bin")["Body"].read() == data
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(url.replace("https://", "http://") + "/", timeout=10)


def test_tls_options_go_together(tmp_path: Path) -> None:
    from aresdsm.errors import ConfigurationError
    from aresdsm.s3.server import _tls_context

    with pytest.raises(ConfigurationError, match="go together"):
        _tls_context(str(tmp_path / "c.pem"), None)
    with pytest.raises(ConfigurationError, match="--tls-cert"):
        _tls_context(str(tmp_path / "c.pem"), str(tmp_path / "k.pem"))  # missing files
    assert _tls_context(None, None) is None
