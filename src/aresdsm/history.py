"""Operation histories: what clients record and what the linearizability checker reads.

One :class:`OpRecord` per client operation, written as one JSON line. Values are recorded as
digests (:func:`value_digest`), so histories stay small whatever the value size; the initial value
of every register is the empty byte string, whose digest is :data:`EMPTY_DIGEST`.

``outcome`` is ``"ok"`` (returned), ``"fail"`` (raised; for a write this means it *may* have
taken effect, exactly like a timeout) or ``"pending"`` (never returned: client crashed). The
checker treats writes that are not ``ok`` as "may or may not have happened", and ignores reads
that are not ``ok``
(a read has no effect of its own but to re-propagate a value that was already written).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Literal

import msgspec

OpKind = Literal["read", "write"]
Outcome = Literal["ok", "fail", "pending"]


def value_digest(value: bytes | bytearray | memoryview) -> str:
    """A short, collision-resistant digest of a value (16 bytes of BLAKE2b, hex)."""
    return hashlib.blake2b(value, digest_size=16).hexdigest()


EMPTY_DIGEST = value_digest(b"")


class OpRecord(msgspec.Struct, frozen=True, omit_defaults=True):
    """One recorded operation. Times are seconds on one clock shared by all recorders."""

    op_id: int
    client: str
    kind: OpKind
    key: str
    invoke_s: float
    complete_s: float | None = None
    """None while pending / when the client crashed."""
    value: str | None = None
    """Digest of the value written, or of the value a successful read returned."""
    outcome: Outcome = "pending"
    tag: tuple[int, str] | None = None
    """Tag written or read, when known (diagnostics; the checker does not trust it)."""
    group: str = "default"
    error: str | None = None


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(OpRecord)


def write_records(records: Iterable[OpRecord], out: IO[bytes]) -> None:
    for r in records:
        out.write(_encoder.encode(r) + b"\n")


def read_records(path: str | Path) -> Iterator[OpRecord]:
    """Read a JSON-lines history file; raises ValueError naming the bad line."""
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield _decoder.decode(line)
            except msgspec.DecodeError as e:
                raise ValueError(f"{path}:{lineno}: not a valid history record: {e}") from None
