"""Propagate, never invent -- for configuration entries (docs/protocol.md §13).

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

The writer's MAC over values (``K_write``, group | key | tag | value digest) needs the end-to-end
value digest in put-data and is not implemented yet.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

import msgspec

from ..config import Configuration
from ..errors import ConfigurationError

KEY_BYTES = 32
_enc = msgspec.msgpack.Encoder()


def entry_mac(key: bytes, group: str, config_id: str, successor: Configuration) -> bytes:
    """The admin MAC of "``successor`` follows ``config_id`` in ``group``"."""
    data = _enc.encode(("decided", group, config_id, successor))
    return hmac.new(key, data, hashlib.sha256).digest()


def valid(key: bytes, group: str, config_id: str, successor: Configuration, mac: bytes) -> bool:
    return bool(mac) and hmac.compare_digest(mac, entry_mac(key, group, config_id, successor))


def create_key(path: str | Path) -> Path:
    """A new random admin key (hex, one line), mode 0600; never overwrites one."""
    p = Path(path)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(os.urandom(KEY_BYTES).hex() + "\n")
    return p


def load_key(path: str | Path) -> bytes:
    try:
        text = Path(path).read_text(encoding="ascii").strip()
        key = bytes.fromhex(text)
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise ConfigurationError(f"cannot read the admin key {path}: {e}") from None
    if len(key) < 16:
        raise ConfigurationError(f"the admin key {path} is shorter than 16 bytes")
    return key
