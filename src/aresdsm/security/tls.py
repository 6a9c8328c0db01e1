"""Mutual TLS 1.3 on every connection (docs/protocol.md §13 "Transport"), stdlib :mod:`ssl`.

Identities are carried in the certificates' subjectAltName as URIs (docs/security.md):

* a server's certificate names its server id: ``ares:server=<id>`` (the id percent-encoded);
* a client's certificate names the client, ``ares:client=<name>``, and its role,
  ``ares:role=read|write|admin``.

Both sides verify the peer's chain against the cluster CA (OpenSSL, during the handshake). A
client then checks that the server's certificate names *the id the configuration names for that
address* (:func:`check_server_identity`), before it writes any request: a configuration can only
hand data to servers the CA vouched for. A server requires a client certificate
(``CERT_REQUIRED``): a connection without a valid one fails in the handshake, before any request
is read; :func:`peer_identity` then gives the server shell the client's role.

Revocation is a deny list (:class:`DenyList`): serial numbers or identities, one per line,
re-read when the file changes; a listed certificate's connections are closed at once.
"""

from __future__ import annotations

import logging
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from ..config import TlsFiles
from ..errors import ConfigurationError

log = logging.getLogger("aresdsm.tls")

SERVER_URI = "ares:server="
CLIENT_URI = "ares:client="
ROLE_URI = "ares:role="
ROLES: tuple[str, ...] = ("read", "write", "admin")
"""Roles in increasing power: each one may do everything the ones before it may."""
HANDSHAKE_TIMEOUT_S = 10.0
"""A TLS handshake that has not completed after this long is abandoned (either side)."""


@dataclass(frozen=True)
class PeerIdentity:
    """What a verified certificate says about its holder."""

    name: str
    """``ares:client=`` name, else ``ares:server=`` id, else the subject's common name."""
    role: str | None
    """The most powerful ``ares:role=`` in the certificate (None: no role, nothing allowed)."""
    serial: str
    """Serial number, upper-case hex without leading zeros (as ``ares certs`` prints it)."""
    server_id: str | None = None

    def describe(self) -> str:
        return f"{self.name} (role {self.role or 'none'}, serial {self.serial})"


def role_level(role: str | None) -> int:
    """0 for no role, then 1 read, 2 write, 3 admin."""
    return ROLES.index(role) + 1 if role in ROLES else 0


def server_uri(server_id: str) -> str:
    return SERVER_URI + quote(server_id, safe="")


def client_uri(name: str) -> str:
    return CLIENT_URI + quote(name, safe="")


def _read_files(files: TlsFiles) -> None:
    for what, path in (("CA", files.ca), ("certificate", files.cert), ("key", files.key)):
        if not Path(path).is_file():
            raise ConfigurationError(f"TLS {what} file {path} does not exist")


def _load(ctx: ssl.SSLContext, files: TlsFiles) -> ssl.SSLContext:
    _read_files(files)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    try:
        ctx.load_verify_locations(cafile=files.ca)
        ctx.load_cert_chain(files.cert, files.key)
    except (ssl.SSLError, OSError) as e:
        raise ConfigurationError(
            f"cannot load TLS files (ca {files.ca}, cert {files.cert}, key {files.key}): {e}"
        ) from None
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def server_context(files: TlsFiles) -> ssl.SSLContext:
    """A server's context: presents its certificate, requires a client certificate signed by
    the cluster CA (a handshake without one fails before any request is read)."""
    return _load(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), files)


def client_context(files: TlsFiles) -> ssl.SSLContext:
    """A client's context: verifies the server's chain against the cluster CA and presents the
    client's certificate. Host names are not checked by OpenSSL: the server's identity is its
    server id, checked by :func:`check_server_identity` on every connection."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False  # replaced by check_server_identity (ids, not host names)
    return _load(ctx, files)


def _uris(cert: dict[str, Any]) -> list[str]:
    return [v for kind, v in cert.get("subjectAltName", ()) if kind == "URI"]


def _common_name(cert: dict[str, Any]) -> str:
    for rdn in cert.get("subject", ()):
        for k, v in rdn:
            if k == "commonName":
                return str(v)
    return ""


def identity_of(cert: dict[str, Any] | None) -> PeerIdentity | None:
    """The identity in a certificate as :meth:`ssl.SSLSocket.getpeercert` returns it (verified
    by the handshake); None if there is no certificate."""
    if not cert:
        return None
    uris = _uris(cert)
    server_ids = [unquote(u[len(SERVER_URI) :]) for u in uris if u.startswith(SERVER_URI)]
    names = [unquote(u[len(CLIENT_URI) :]) for u in uris if u.startswith(CLIENT_URI)]
    roles = [u[len(ROLE_URI) :] for u in uris if u.startswith(ROLE_URI)]
    role = max(roles, key=role_level, default=None)
    server_id = server_ids[0] if server_ids else None
    name = names[0] if names else (server_id or _common_name(cert))
    return PeerIdentity(
        name=name,
        role=role if role_level(role) else None,
        serial=str(cert.get("serialNumber", "")).upper().lstrip("0") or "0",
        server_id=server_id,
    )


def peer_identity(transport: Any) -> PeerIdentity | None:
    """The verified identity of a TLS transport's peer (None: plaintext, or no certificate)."""
    obj = transport.get_extra_info("ssl_object")
    if obj is None:
        return None
    return identity_of(obj.getpeercert())


def own_identity(files: TlsFiles) -> PeerIdentity:
    """The identity in this party's own certificate (a client learns its role from it)."""
    from cryptography import x509  # (lazy: only TLS clients parse their own certificate)

    try:
        cert = x509.load_pem_x509_certificate(Path(files.cert).read_bytes())
    except (OSError, ValueError) as e:
        raise ConfigurationError(f"cannot read certificate {files.cert}: {e}") from None
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    ident = identity_of(
        {
            "subjectAltName": tuple(("URI", u) for u in uris),
            "serialNumber": f"{cert.serial_number:X}",
        }
    )
    assert ident is not None
    return ident


def check_server_identity(transport: Any, server_id: str) -> str | None:
    """None if the server's certificate names ``server_id``; else why not (one line)."""
    ident = peer_identity(transport)
    if ident is None:
        return "the server presented no certificate"
    if ident.server_id != server_id:
        named = "no server id" if ident.server_id is None else f"server id {ident.server_id!r}"
        return (
            f"its certificate names {named}, but the configuration names {server_id!r} for "
            "this address"
        )
    return None


class DenyList:
    """Revoked certificates: a text file, one serial number (hex) or identity (client name or
    server id) per line, ``#`` comments. Re-read whenever its modification time changes, so
    revoking needs no restart; a missing file denies nothing."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path is not None else None
        self._mtime_ns = -1
        self._entries: frozenset[str] = frozenset()

    def entries(self) -> frozenset[str]:
        if self.path is None:
            return frozenset()
        try:
            mtime = os.stat(self.path).st_mtime_ns
        except FileNotFoundError:
            self._entries, self._mtime_ns = frozenset(), -1
            return self._entries
        except OSError as e:
            log.warning("cannot read deny list %s: %s", self.path, e)
            return self._entries
        if mtime != self._mtime_ns:
            try:
                text = self.path.read_text(encoding="utf-8", errors="replace")
            except OSError as e:
                log.warning("cannot read deny list %s: %s", self.path, e)
                return self._entries
            words = [line.split("#", 1)[0].strip().upper() for line in text.splitlines()]
            self._entries = frozenset(w for w in words if w) | frozenset(
                w.lstrip("0") for w in words if w.lstrip("0")
            )
            self._mtime_ns = mtime
        return self._entries

    def denies(self, ident: PeerIdentity) -> bool:
        entries = self.entries()
        return bool(entries) and (ident.serial.upper() in entries or ident.name.upper() in entries)
