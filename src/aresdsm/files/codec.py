"""What a file's registers hold (docs/protocol.md §9.2), encoded compactly with msgspec.

Every register of a file is a coverable register (§9.1) of the file's group:

* the *genesis block* ``file:NAME``: whether the file exists, its chunking parameters, and the
  id of its first data block;
* *data blocks* ``file-block:NAME:ID``: the id of the next block (or none), the data, and a
  ``marked`` flag. Marking is the logical deletion of a lock-free linked list (Harris): a marked
  block is still part of the file until its predecessor is rewritten to jump over it, and a
  marked block is never written again except to reclaim it -- so its ``next`` never changes;
* a *tombstone* replaces a block that was unlinked by a committed version: its data is
  reclaimed (servers keep only the newest value of a register), and a reader that meets one
  restarts from the genesis block;
* the *journal* ``file-journal:NAME``: the write attempts in flight, so that the blocks of a
  writer that died between writing blocks and linking them are found and reclaimed;
* the *index* ``file-index:NAME``: the block list as its last writer left it -- every block's
  id, version (tag), content hash and size, in order -- so that an update diffs against it
  without reading any block, and a reader fetches many blocks at once instead of one pointer
  at a time. It is a cache: every version it names is checked where it matters (a coverable
  write on a named version fails if the block changed since; a reader checks every pointer),
  and it is written invalid whenever a writer may have changed the list without recording it.
"""

from __future__ import annotations

import msgspec

from ..tags import Tag

DEFAULT_AVG_BYTES = 1024 * 1024
DEFAULT_MIN_BYTES = 256 * 1024
DEFAULT_MAX_BYTES = 4 * 1024 * 1024


class ChunkParams(msgspec.Struct, frozen=True, array_like=True):
    """Content-defined chunking bounds of one file (FastCDC)."""

    min_bytes: int = DEFAULT_MIN_BYTES
    avg_bytes: int = DEFAULT_AVG_BYTES
    max_bytes: int = DEFAULT_MAX_BYTES


class Genesis(msgspec.Struct, frozen=True, array_like=True, tag=0):
    next: str | None
    params: ChunkParams
    exists: bool = True


class Data(msgspec.Struct, frozen=True, array_like=True, tag=1):
    next: str | None
    data: bytes
    marked: bool = False


class Dead(msgspec.Struct, frozen=True, array_like=True, tag=2):
    """A reclaimed block."""


class Attempt(msgspec.Struct, frozen=True, array_like=True):
    """One write attempt: its new blocks are ``ID.0``, ``ID.1``, ... (``blocks`` of them, once
    known). ``links``: the (block id, base tag) pairs it will rewrite to link them; empty while
    it is still writing blocks. ``aborted``: a collector fenced it, it may never link."""

    id: str
    started_s: float
    links: tuple[tuple[str, Tag], ...] = ()
    blocks: int = 0
    aborted: bool = False


class Journal(msgspec.Struct, frozen=True, array_like=True, tag=3):
    attempts: tuple[Attempt, ...] = ()


class Entry(msgspec.Struct, frozen=True, array_like=True):
    """One block of an index: its id, version, content hash and size."""

    id: str
    tag: Tag
    hash: bytes
    size: int


class Index(msgspec.Struct, frozen=True, array_like=True, tag=4):
    """The file's block list as its last writer left it (the genesis version and the blocks in
    order; each block's ``next`` is the following entry). ``valid=False``: unknown, walk."""

    valid: bool = False
    genesis_tag: Tag | None = None
    genesis: Genesis | None = None
    entries: tuple[Entry, ...] = ()


Value = Genesis | Data | Dead | Journal | Index

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Value)


def encode(v: Value) -> bytes:
    return _encoder.encode(v)


def decode(raw: bytes) -> Value:
    v: Value = _decoder.decode(raw)
    return v
