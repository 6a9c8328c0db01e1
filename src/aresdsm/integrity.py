"""End-to-end integrity of values: one cryptographic digest, made by the writer (docs/protocol.md
§4, §13).

A writer attaches the digest of the value it writes (TREAS: of the value and of each coded
element) to its put-data; a server checks what it receives against it before it stores anything
and keeps the digest with the value; replies carry it; a reader checks every reply (TREAS: every
element before decoding, the decoded value after) and treats a reply that does not match as a
missing one. A flipped bit on a disk, in a frame or in a buffer is then never returned as a value.

The hash is SHA-256 (since protocol version 2 and storage schema 3; version 1 used BLAKE2b-256,
and the handshake and the storage engine refuse the other version with a one-line error). On this
machine's CPUs (SHA extensions, which OpenSSL's SHA-256 uses; most x86 and ARM server CPUs have
them) it is twice as fast as BLAKE2b on file blocks: 1.8 vs 0.95 GB/s on 1-4 MiB (hashlib,
single-threaded, best of 15; docs/design.md "Integrity and identity"), and every value is hashed
by its writer, by each server that receives it and by each reader. It is cryptographic, which
the message authentication of §13 (an HMAC over this digest) needs. Storage checksums of records
on disk are a separate, cheaper CRC (:mod:`aresdsm.storage.sqlite`): they only have to catch a
damaged disk.
"""

from __future__ import annotations

import hashlib

DIGEST_NAME = "sha-256"
DIGEST_BYTES = 32


def digest(data: bytes | memoryview) -> bytes:
    """The digest of a value or coded element."""
    return hashlib.sha256(data).digest()


def matches(data: bytes | memoryview, expected: bytes) -> bool:
    """Whether ``data`` has the digest ``expected`` (an empty or malformed digest never does)."""
    return len(expected) == DIGEST_BYTES and digest(data) == expected


EMPTY_DIGEST = digest(b"")
"""The digest of the initial (empty) value."""
