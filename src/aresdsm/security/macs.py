"""Propagate, never invent (docs/protocol.md §13): the admin MAC of configuration entries and the
writer MAC of values.

A reader must write back the successor entries it discovers (read-config, §6; the piggyback,
§8.1), so a server cannot tell a write-back from a forged successor by the message alone. The
admin key ``K_admin`` (held by admins and servers, never by readers or writers) makes the right to
*create* an entry unforgeable while the right to *propagate* one stays free:

* an admin's channel attaches ``mac = HMAC-SHA256(K_admin, ("decided", group, predecessor id,
  successor))`` to every entry it sends (WriteConfig, SET_NEXT_AND_GET, Finalized);
* servers store the MAC with the entry and return it with it (ReadConfig, piggybacked ``next``);
* a client without the key remembers the MACs its replies carried and puts them back on the
  entries it writes back (the protocol code builds entries from its chain view, which does not
  keep MACs: the channel restores them);
* a server with the key accepts a WriteConfig of a P entry from a client without the admin role
  only when its MAC is valid.

The MAC does not cover the status on purpose: clients without the admin role write F entries
back as P (docs/security.md), and an F entry itself still needs the admin role, so a reader
holding a valid MAC cannot finalize (and collect) anything early.

Values work the same way with the write key ``K_write`` (held by writers, admins and servers,
never by readers):

* a writer's channel attaches ``mac = HMAC-SHA256(K_write, ("value", chain, key, tag, digest))``
  to every value it sends (PutData, PutBatch items), where ``digest`` is the end-to-end digest of
  the whole value (:mod:`aresdsm.integrity`; TREAS put-data carries it next to the element's);
* servers store the MAC with the value (next to its digest) and return it in data replies,
  list entries and group reads, so a reader writes back -- and a reconfigurer transfers -- the
  writer's MAC unchanged (the protocol carries it as opaque bytes);
* a server holding ``K_write`` applies a value only when its MAC is valid or when it adds
  nothing the server does not hold already (a write-back of a tag it has): a reader can then
  propagate every value a writer wrote but invent none (not even a tag of 2^62-1).

A key file may hold several keys, one hex key per line: the first signs, every one verifies --
so a key is rotated without a flag day (docs/security.md "Key rotation").
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

import msgspec

from ..config import Configuration
from ..errors import ConfigurationError
from ..tags import Tag

KEY_BYTES = 32
MAC_BYTES = 32
_enc = msgspec.msgpack.Encoder()


def entry_mac(key: bytes, group: str, config_id: str, successor: Configuration) -> bytes:
    """The admin MAC of "``successor`` follows ``config_id`` in ``group``"."""
    data = _enc.encode(("decided", group, config_id, successor))
    return hmac.new(key, data, hashlib.sha256).digest()


def valid(key: bytes, group: str, config_id: str, successor: Configuration, mac: bytes) -> bool:
    return bool(mac) and hmac.compare_digest(mac, entry_mac(key, group, config_id, successor))


def value_mac(key: bytes, chain: str, obj_key: str, tag: Tag, digest: bytes) -> bytes:
    """The writer MAC of "``tag`` of object ``obj_key`` of chain ``chain`` is the value whose
    digest is ``digest``". The configuration is not covered: a value keeps its MAC when
    reconfiguration moves it to another configuration of the chain."""
    data = _enc.encode(("value", chain, obj_key, tag.z, tag.writer, digest))
    return hmac.digest(key, data, "sha256")  # (one-shot, in C: about a microsecond)


def value_mac_valid(
    keys: tuple[bytes, ...], chain: str, obj_key: str, tag: Tag, digest: bytes, mac: bytes
) -> bool:
    """Whether ``mac`` is the writer MAC of (chain, key, tag, digest) under one of ``keys``."""
    if len(mac) != MAC_BYTES:
        return False
    data = _enc.encode(("value", chain, obj_key, tag.z, tag.writer, digest))
    for k in keys:  # noqa: SIM110 (no generator: checked for every put-data)
        if hmac.compare_digest(mac, hmac.digest(k, data, "sha256")):
            return True
    return False


class ValueSigner:
    """A writer's signer: the MAC of the values it sends (the client shell's, never the
    protocol's). Remembers the last MAC it made -- TREAS sends one value to n servers, each
    request with the same (chain, key, tag, digest)."""

    __slots__ = ("_key", "_last", "_last_mac")

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._last: tuple[str, str, Tag, bytes] | None = None
        self._last_mac = b""

    def __call__(self, chain: str, obj_key: str, tag: Tag, digest: bytes) -> bytes:
        what = (chain, obj_key, tag, digest)
        if what != self._last:
            self._last_mac = value_mac(self._key, chain, obj_key, tag, digest)
            self._last = what
        return self._last_mac


def create_key(path: str | Path) -> Path:
    """A new random MAC key (hex, one line), mode 0600; never overwrites one."""
    p = Path(path)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(os.urandom(KEY_BYTES).hex() + "\n")
    return p


def load_keys(path: str | Path, what: str = "admin key") -> tuple[bytes, ...]:
    """Every key of a key file (one hex key per line, ``#`` comments): the first is the one to
    sign with, all of them verify (rotation)."""
    try:
        lines = Path(path).read_text(encoding="ascii").splitlines()
        keys = tuple(bytes.fromhex(w) for w in (x.split("#", 1)[0].strip() for x in lines) if w)
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise ConfigurationError(f"cannot read the {what} {path}: {e}") from None
    if not keys:
        raise ConfigurationError(f"the {what} file {path} holds no key")
    if any(len(k) < 16 for k in keys):
        raise ConfigurationError(f"a key in the {what} file {path} is shorter than 16 bytes")
    return keys


def load_key(path: str | Path, what: str = "admin key") -> bytes:
    """The key to sign with: the first of the file."""
    return load_keys(path, what)[0]
