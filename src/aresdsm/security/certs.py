"""A cluster CA and the certificates it issues (``ares cluster start``, ``ares certs``).

The ``cryptography`` library makes the keys and X.509 certificates: ECDSA P-256 keys (fast TLS
1.3 handshakes), SHA-256 signatures. Identities are subjectAltName URIs (:mod:`.tls`):

* the CA: ``CN=<cluster> CA``, basicConstraints CA, keyCertSign; ``ca.pem``, ``ca.key``; and,
  made with it, the cluster's admin MAC key ``admin-mac.key`` (servers and admins) and write MAC
  key ``write-mac.key`` (servers, writers and admins) (:mod:`.macs`);
* a server: ``ares:server=<id>`` (plus the id as common name and, when it is a valid host name,
  a DNS name; the listen host as an IP or DNS name, for operators' tools), extendedKeyUsage
  serverAuth; ``server-<id>.pem/.key``;
* a client: ``ares:client=<name>`` and ``ares:role=<role>``, extendedKeyUsage clientAuth;
  ``client-<name>.pem/.key``.

Private keys are written 0600, in a directory made 0700. Serial numbers are random (RFC 5280)
and printed in hex, the form the deny list takes.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..errors import ConfigurationError
from .macs import create_key
from .tls import ROLE_URI, ROLES, client_uri, server_uri

ADMIN_MAC_KEY = "admin-mac.key"
"""The admin MAC key (:mod:`.macs`) made next to a new CA: for servers and admins only."""
WRITE_MAC_KEY = "write-mac.key"
"""The write MAC key (:mod:`.macs`) made next to a new CA: for servers, writers and admins."""
CA_DAYS = 3650
CERT_DAYS = 825
_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9-]{1,63})*$")
_SAFE_FILE = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path
    serial: str
    """Upper-case hex, no leading zeros (as the deny list and the audit log print it)."""


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _file_stem(name: str) -> str:
    return _SAFE_FILE.sub("_", name)[:100] or "_"


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _serial_hex(n: int) -> str:
    return f"{n:X}"


def _prepare_dir(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)


def create_ca(directory: str | Path, cluster_name: str, *, force: bool = False) -> Issued:
    """A new self-signed cluster CA in ``directory`` (ca.pem, ca.key)."""
    d = Path(directory)
    if (d / "ca.key").exists() and not force:
        raise ConfigurationError(f"{d / 'ca.key'} already exists (a CA is never overwritten)")
    _prepare_dir(d)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{cluster_name[:50]} CA")])
    serial = x509.random_serial_number()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(_now() - datetime.timedelta(minutes=5))
        .not_valid_after(_now() + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_key(d / "ca.key", key)
    _write_cert(d / "ca.pem", cert)
    for key_file in (ADMIN_MAC_KEY, WRITE_MAC_KEY):  # (a new CA: new MAC keys)
        (d / key_file).unlink(missing_ok=True)
        create_key(d / key_file)
    return Issued(d / "ca.pem", d / "ca.key", _serial_hex(serial))


def _load_ca(ca_dir: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate((ca_dir / "ca.pem").read_bytes())
        key = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), None)
    except (OSError, ValueError) as e:
        raise ConfigurationError(
            f"cannot load the CA from {ca_dir} (ca.pem, ca.key): {e}"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigurationError(f"{ca_dir / 'ca.key'} is not an ECDSA key")
    return cert, key


def _issue(
    ca_dir: Path,
    out_dir: Path,
    stem: str,
    common_name: str,
    sans: list[x509.GeneralName],
    usage: x509.ObjectIdentifier,
    days: int,
) -> Issued:
    ca_cert, ca_key = _load_ca(ca_dir)
    _prepare_dir(out_dir)
    key = ec.generate_private_key(ec.SECP256R1())
    serial = x509.random_serial_number()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(_now() - datetime.timedelta(minutes=5))
        .not_valid_after(_now() + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = out_dir / f"{stem}.pem", out_dir / f"{stem}.key"
    _write_key(key_path, key)
    _write_cert(cert_path, cert)
    return Issued(cert_path, key_path, _serial_hex(serial))


def issue_server(
    ca_dir: str | Path,
    server_id: str,
    *,
    out_dir: str | Path | None = None,
    hosts: tuple[str, ...] = (),
    days: int = CERT_DAYS,
) -> Issued:
    """A certificate naming server ``server_id`` (and ``hosts``, for tools; not checked)."""
    if not server_id:
        raise ConfigurationError("a server certificate needs a server id")
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(server_uri(server_id))]
    names = [server_id, *hosts]
    for h in dict.fromkeys(names):
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            if _HOSTNAME.match(h):
                sans.append(x509.DNSName(h))
    return _issue(
        Path(ca_dir),
        Path(out_dir or ca_dir),
        f"server-{_file_stem(server_id)}",
        server_id,
        sans,
        ExtendedKeyUsageOID.SERVER_AUTH,
        days,
    )


def issue_client(
    ca_dir: str | Path,
    name: str,
    role: str,
    *,
    out_dir: str | Path | None = None,
    days: int = CERT_DAYS,
) -> Issued:
    """A client certificate for ``name`` with ``role`` (read, write or admin)."""
    if role not in ROLES:
        raise ConfigurationError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
    if not name:
        raise ConfigurationError("a client certificate needs a name")
    sans: list[x509.GeneralName] = [
        x509.UniformResourceIdentifier(client_uri(name)),
        x509.UniformResourceIdentifier(ROLE_URI + role),
    ]
    return _issue(
        Path(ca_dir),
        Path(out_dir or ca_dir),
        f"client-{_file_stem(name)}",
        name,
        sans,
        ExtendedKeyUsageOID.CLIENT_AUTH,
        days,
    )


@dataclass(frozen=True)
class CertInfo:
    path: Path
    subject: str
    serial: str
    not_after: datetime.datetime
    uris: tuple[str, ...]


def describe_cert(path: str | Path) -> CertInfo:
    """Subject, serial, expiry and identity URIs of a PEM certificate (``ares certs list``)."""
    p = Path(path)
    try:
        cert = x509.load_pem_x509_certificate(p.read_bytes())
    except (OSError, ValueError) as e:
        raise ConfigurationError(f"cannot read certificate {p}: {e}") from None
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = tuple(san.get_values_for_type(x509.UniformResourceIdentifier))
    except x509.ExtensionNotFound:
        uris = ()
    return CertInfo(
        p,
        cert.subject.rfc4514_string(),
        _serial_hex(cert.serial_number),
        cert.not_valid_after_utc,
        uris,
    )
