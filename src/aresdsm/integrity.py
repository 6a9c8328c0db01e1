"""End-to-end integrity of values: one cryptographic digest, made by the writer (docs/protocol.md
§4, §13).

A writer attaches the digest of the value it writes (TREAS: of the value and of each coded
element) to its put-data; a server checks what it receives against it before it stores anything
and keeps the digest with the value; replies carry it; a reader checks every reply (TREAS: every
element before decoding, the decoded value after) and treats a reply that does not match as a
missing one. A flipped bit on a disk, in a frame or in a buffer is then never returned as a value.

The hash is BLAKE2b with a 32-byte digest: measured on the development machine it is slightly
faster than SHA-256 (0.94 vs 0.85 GB/s on 4 MiB, both ~0.5 µs on 100 bytes; hashlib, both
single-threaded), and it is cryptographic, which the message authentication of §13 (an HMAC over
this digest) needs. Storage checksums of records on disk are a separate, cheaper CRC
(:mod:`aresdsm.storage.sqlite`): they only have to catch a damaged disk.
"""

from __future__ import annotations

import hashlib

DIGEST_NAME = "blake2b-256"
DIGEST_BYTES = 32


def digest(data: bytes | memoryview) -> bytes:
    """The digest of a value or coded element."""
    return hashlib.blake2b(data, digest_size=DIGEST_BYTES).digest()


def matches(data: bytes | memoryview, expected: bytes) -> bool:
    """Whether ``data`` has the digest ``expected`` (an empty or malformed digest never does)."""
    return len(expected) == DIGEST_BYTES and digest(data) == expected


EMPTY_DIGEST = digest(b"")
"""The digest of the initial (empty) value."""
