"""AWS Signature Version 4 verification (headers, presigned URLs, aws-chunked payloads) and the
gateway's access keys.

Implemented from AWS's published algorithm ("Signature Version 4 signing process", "Signature
calculations for the Authorization header", "... for query string parameters", "... for
chunked upload"): a canonical request (method, URI, sorted query, the signed headers, the
payload hash), a string to sign over its SHA-256, and an HMAC chain
``date -> region -> service -> aws4_request`` from ``"AWS4" + secret``. The server computes the
same signature from what it received and compares in constant time. Tested against the real
boto3, aws CLI and rclone signers (tests/s3).

Access keys map to the roles of the security layer (docs/security.md): ``read`` (GET, HEAD,
listings), ``write`` (also PUT, DELETE, multipart, copy of objects), ``admin`` (also creating,
deleting and publishing buckets).
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import hmac
import re
import secrets
import tomllib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote

from ..errors import ConfigurationError
from .errors import S3Error

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED = "UNSIGNED-PAYLOAD"
STREAMING_SIGNED = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
STREAMING_SIGNED_TRAILER = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
STREAMING_UNSIGNED_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
STREAMING = (STREAMING_SIGNED, STREAMING_SIGNED_TRAILER, STREAMING_UNSIGNED_TRAILER)
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
MAX_SKEW_S = 15 * 60
MAX_PRESIGN_EXPIRES_S = 7 * 24 * 3600
ROLES = ("read", "write", "admin")
_ROLE_RANK = {r: i for i, r in enumerate(ROLES)}
_ACCESS_KEY_RE = re.compile(r"^[A-Za-z0-9_.\-]{3,128}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_AMZ_DATE = re.compile(r"^[0-9]{8}T[0-9]{6}Z\Z")


@dataclass(frozen=True)
class AccessKey:
    access_key: str
    secret_key: str
    role: str

    def allows(self, role: str) -> bool:
        return _ROLE_RANK[self.role] >= _ROLE_RANK[role]


class KeyRing:
    """The gateway's access keys (access key id -> secret and role)."""

    def __init__(self, keys: list[AccessKey] | None = None) -> None:
        self._keys: dict[str, AccessKey] = {}
        for k in keys or []:
            self.add(k)

    def add(self, k: AccessKey) -> None:
        if not _ACCESS_KEY_RE.match(k.access_key):
            raise ConfigurationError(
                f"access key id {k.access_key!r}: 3..128 letters, digits, '_', '.', '-'"
            )
        if len(k.secret_key) < 8 or len(k.secret_key) > 256:
            raise ConfigurationError(f"access key {k.access_key}: secret of 8..256 characters")
        if k.role not in ROLES:
            raise ConfigurationError(f"access key {k.access_key}: role must be one of {ROLES}")
        self._keys[k.access_key] = k

    def get(self, access_key: str) -> AccessKey | None:
        return self._keys.get(access_key)

    def __len__(self) -> int:
        return len(self._keys)

    @classmethod
    def load(cls, path: str | Path) -> KeyRing:
        """A keys file: ``[[keys]]`` tables with ``access_key``, ``secret_key``, ``role``."""
        try:
            raw = tomllib.loads(Path(path).read_text())
        except OSError as e:
            raise ConfigurationError(f"cannot read keys file {path}: {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigurationError(f"keys file {path}: {e}") from None
        ring = cls()
        entries = raw.get("keys", [])
        if not isinstance(entries, list):
            raise ConfigurationError(f"keys file {path}: 'keys' must be an array of tables")
        for i, t in enumerate(entries):
            if not isinstance(t, dict) or not all(
                isinstance(t.get(f), str) for f in ("access_key", "secret_key", "role")
            ):
                raise ConfigurationError(
                    f"keys file {path}: keys[{i}] needs string access_key, secret_key and role"
                )
            ring.add(AccessKey(t["access_key"], t["secret_key"], t["role"]))
        return ring


def new_key(role: str) -> AccessKey:
    """A fresh random access key (20 characters, AWS's shape) and secret (40)."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
    ak = "AK" + "".join(secrets.choice(alphabet) for _ in range(18))
    return AccessKey(ak, secrets.token_urlsafe(30)[:40], role)


def parse_key_option(text: str) -> AccessKey:
    """``ACCESS:SECRET:ROLE`` (the --key option)."""
    parts = text.split(":")
    if len(parts) != 3:
        raise ConfigurationError("--key takes ACCESS_KEY:SECRET_KEY:ROLE")
    return AccessKey(*parts)


# -- the algorithm -------------------------------------------------------------------------------


def _uri_encode(s: str, *, slash: bool) -> str:
    return quote(s, safe="-_.~/" if slash else "-_.~")


def canonical_uri(raw_path: str) -> str:
    """S3 signs the path as the client encoded it, one segment at a time (no normalization):
    decode what arrived, encode again the one way AWS defines."""
    return _uri_encode(unquote(raw_path), slash=True) or "/"


def canonical_query(raw_query: str, *, skip_signature: bool = False) -> str:
    pairs: list[tuple[str, str]] = []
    for part in raw_query.split("&") if raw_query else []:
        if not part:
            continue
        name, _, value = part.partition("=")
        name, value = unquote(name.replace("+", "%20")), unquote(value.replace("+", "%20"))
        if skip_signature and name == "X-Amz-Signature":
            continue
        pairs.append((_uri_encode(name, slash=False), _uri_encode(value, slash=False)))
    return "&".join(f"{n}={v}" for n, v in sorted(pairs))


def _trim(v: str) -> str:
    return " ".join(v.strip().split())


@functools.lru_cache(maxsize=256)
def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    """The HMAC chain's key (four HMACs): the same for every request of one key, day, region
    and service, so it is remembered (a few per key and day; bounded)."""
    k = hmac.new(("AWS4" + secret).encode(), date.encode(), hashlib.sha256).digest()
    for part in (region, service, "aws4_request"):
        k = hmac.new(k, part.encode(), hashlib.sha256).digest()
    return k


def _hmac_hex(key: bytes, msg: str) -> str:
    return hmac.new(key, msg.encode(), hashlib.sha256).hexdigest()


@dataclass
class Verified:
    """A request whose signature checked: who sent it, and what its body must satisfy."""

    key: AccessKey
    payload_hash: str
    """The x-amz-content-sha256 value: a hex digest to check, UNSIGNED-PAYLOAD or STREAMING-*."""
    seed_signature: str
    signing_key: bytes
    amz_date: str
    scope: str


def _parse_amz_date(s: str) -> dt.datetime:
    """``YYYYMMDDTHHMMSSZ`` (ISO 8601 basic, UTC), parsed by hand: strptime costs more than the
    rest of a signature check."""
    if _AMZ_DATE.match(s):
        try:
            return dt.datetime(
                int(s[0:4]), int(s[4:6]), int(s[6:8]), int(s[9:11]), int(s[11:13]),
                int(s[13:15]), tzinfo=dt.UTC,
            )  # fmt: skip
        except ValueError:
            pass
    raise S3Error("AccessDenied", f"bad X-Amz-Date {s[:32]!r}")


def _credential(cred: str, ring: KeyRing) -> tuple[AccessKey, str, str, str]:
    parts = cred.split("/")
    if len(parts) != 5 or parts[4] != "aws4_request":
        raise S3Error("AuthorizationHeaderMalformed", "malformed Credential")
    ak, date, region, service = parts[:4]
    if service != "s3":
        raise S3Error("AuthorizationHeaderMalformed", f"service must be s3, not {service[:16]!r}")
    key = ring.get(ak)
    if key is None:
        raise S3Error(
            "InvalidAccessKeyId",
            "The AWS Access Key Id you provided does not exist in our records.",
        )
    return key, date, region, service


def verify(
    method: str,
    raw_path: str,
    raw_query: str,
    headers: dict[str, list[str]],
    ring: KeyRing,
    *,
    now: dt.datetime | None = None,
) -> Verified | None:
    """Check the request's SigV4 signature (Authorization header or presigned query). Returns
    None for an anonymous request; raises S3Error for a bad one. ``headers``: lower-case name ->
    every value received."""
    now = now or dt.datetime.now(dt.UTC)

    def header(name: str) -> str | None:
        vs = headers.get(name)
        return vs[0] if vs else None

    auth = header("authorization")
    presigned = "X-Amz-Signature=" in raw_query or "X-Amz-Credential=" in raw_query
    if auth is None and not presigned:
        if "Signature=" in raw_query and "AWSAccessKeyId=" in raw_query:
            raise S3Error("AccessDenied", "only AWS Signature Version 4 is supported")
        return None
    if auth is not None:
        if not auth.startswith(ALGORITHM + " "):
            raise S3Error("AccessDenied", "only AWS Signature Version 4 is supported")
        fields: dict[str, str] = {}
        for item in auth[len(ALGORITHM) + 1 :].split(","):
            k, _, v = item.strip().partition("=")
            fields[k] = v
        if not {"Credential", "SignedHeaders", "Signature"} <= fields.keys():
            raise S3Error("AuthorizationHeaderMalformed", "malformed Authorization header")
        cred, signed, signature = fields["Credential"], fields["SignedHeaders"], fields["Signature"]
        amz_date = header("x-amz-date")
        if amz_date is None:
            raise S3Error("AccessDenied", "AWS authentication requires a valid X-Amz-Date")
        when = _parse_amz_date(amz_date)
        if abs((now - when).total_seconds()) > MAX_SKEW_S:
            raise S3Error(
                "RequestTimeTooSkewed",
                "The difference between the request time and the server's time is too large.",
            )
        payload = header("x-amz-content-sha256")
        if payload is None:
            raise S3Error("MissingSecurityHeader", "missing x-amz-content-sha256")
        query = canonical_query(raw_query)
    else:
        q: dict[str, str] = {}
        for part in raw_query.split("&"):
            k, _, v = part.partition("=")
            q[unquote(k)] = unquote(v.replace("+", "%20"))
        if q.get("X-Amz-Algorithm") != ALGORITHM:
            raise S3Error("AccessDenied", "only AWS Signature Version 4 is supported")
        try:
            cred, signed, signature = (
                q["X-Amz-Credential"],
                q["X-Amz-SignedHeaders"],
                q["X-Amz-Signature"],
            )
            amz_date, expires_raw = q["X-Amz-Date"], q["X-Amz-Expires"]
        except KeyError as e:
            raise S3Error("AuthorizationQueryParametersError", f"missing {e.args[0]}") from None
        if not expires_raw.isdigit() or not 1 <= int(expires_raw) <= MAX_PRESIGN_EXPIRES_S:
            raise S3Error("AuthorizationQueryParametersError", "X-Amz-Expires out of range")
        when = _parse_amz_date(amz_date)
        if now > when + dt.timedelta(seconds=int(expires_raw)):
            raise S3Error("AccessDenied", "Request has expired")
        if when - now > dt.timedelta(seconds=MAX_SKEW_S):
            raise S3Error("AccessDenied", "Request is not valid yet")
        payload = q.get("X-Amz-Content-Sha256", UNSIGNED)
        query = canonical_query(raw_query, skip_signature=True)
    key, date, region, service = _credential(cred, ring)
    if date != amz_date[:8]:
        raise S3Error("SignatureDoesNotMatch", "the credential's date is not the request's")
    names = signed.split(";")
    if "host" not in names:
        raise S3Error("AccessDenied", "the Host header must be signed")
    lines = []
    for n in names:
        vs = headers.get(n)
        if vs is None:
            raise S3Error("AccessDenied", f"signed header {n[:64]!r} is missing")
        lines.append(f"{n}:{','.join(_trim(v) for v in vs)}\n")
    creq = "\n".join([method, canonical_uri(raw_path), query, "".join(lines), signed, payload])
    scope = f"{date}/{region}/{service}/aws4_request"
    sts = "\n".join([ALGORITHM, amz_date, scope, hashlib.sha256(creq.encode()).hexdigest()])
    skey = signing_key(key.secret_key, date, region, service)
    expected = _hmac_hex(skey, sts)
    if not hmac.compare_digest(expected, signature):
        raise S3Error(
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided.",
        )
    if not (payload in (UNSIGNED, *STREAMING) or _HEX64.match(payload)):
        raise S3Error("InvalidArgument", "bad x-amz-content-sha256")
    return Verified(key, payload, signature, skey, amz_date, scope)


def chunk_signature(v: Verified, previous: str, chunk_sha256: str) -> str:
    """The signature of one aws-chunked chunk (chained from the previous one, the first from
    the request's own signature)."""
    sts = "\n".join(
        [
            "AWS4-HMAC-SHA256-PAYLOAD",
            v.amz_date,
            v.scope,
            previous,
            EMPTY_SHA256,
            chunk_sha256,
        ]
    )
    return _hmac_hex(v.signing_key, sts)


def presign(
    key: AccessKey,
    method: str,
    host: str,
    path: str,
    *,
    expires_s: int = 3600,
    region: str = "us-east-1",
    now: dt.datetime | None = None,
) -> str:
    """A presigned URL's path and query for ``path`` (``ares s3 presign``; the tests use
    boto3's own). ``path``: already URI-encoded."""
    now = now or dt.datetime.now(dt.UTC)
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    date = amz_date[:8]
    scope = f"{date}/{region}/s3/aws4_request"
    q = {
        "X-Amz-Algorithm": ALGORITHM,
        "X-Amz-Credential": f"{key.access_key}/{scope}",
        "X-Amz-Date": amz_date,
        "X-Amz-Expires": str(expires_s),
        "X-Amz-SignedHeaders": "host",
    }
    raw_query = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in q.items())
    creq = "\n".join(
        [
            method,
            canonical_uri(path),
            canonical_query(raw_query),
            f"host:{host}\n",
            "host",
            UNSIGNED,
        ]
    )
    sts = "\n".join([ALGORITHM, amz_date, scope, hashlib.sha256(creq.encode()).hexdigest()])
    sig = _hmac_hex(signing_key(key.secret_key, date, region, "s3"), sts)
    return f"{path}?{raw_query}&X-Amz-Signature={sig}"
