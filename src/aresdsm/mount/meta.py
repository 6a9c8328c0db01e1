"""The mount's per-name record (docs/mount.md): kind, permission bits, owner, size, mtime.

One small coverable register (docs/protocol.md §9.1) ``fsmeta:PATH`` per file, directory or
symbolic link of a mounted group, next to the file's data in the large-object layer (§9.2).
Why a register of its own and not a header inside the file's data: ``stat`` and ``ls -l`` then
cost one register read instead of a walk of the file's blocks (the layer learns a file's size
only by walking its list), the data stays byte-for-byte what ``ares file get`` returns, and the
register is the file's *version stamp*: a mount publishes a file with a coverable write on the
version it opened, so of two mounts that closed the same version one wins and the other is told
(ESTALE) before it writes a single block.
"""

from __future__ import annotations

import msgspec

META_PREFIX = "fsmeta:"

GONE = 0
FILE = 1
DIR = 2
LINK = 3


class Meta(msgspec.Struct, frozen=True, array_like=True):
    kind: int
    mode: int
    """Permission bits (``st_mode & 0o7777``)."""
    size: int = 0
    mtime_ns: int = 0
    uid: int = 0
    gid: int = 0
    target: str = ""
    """A symbolic link's target."""
    writing: str = ""
    """Non-empty while a mount publishes the file's data (its writer id): an opener waits for
    the publication to end (``publish_wait_s``) so it never reads a version half-written."""
    since_s: float = 0.0
    """When that publication started (a writer that died is presumed gone after
    ``publish_wait_s``)."""


_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder(Meta)


def meta_key(path: str) -> str:
    return META_PREFIX + path


def encode(m: Meta) -> bytes:
    return _enc.encode(m)


def decode(raw: bytes | None) -> Meta | None:
    """The record, or None for absent or unreadable bytes (a foreign value under our prefix)."""
    if not raw:
        return None
    try:
        m: Meta = _dec.decode(raw)
    except msgspec.ValidationError:
        return None
    except msgspec.DecodeError:
        return None
    return m
