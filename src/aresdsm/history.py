"""Operation histories: what clients record and what the linearizability checker reads.

One :class:`OpRecord` per client operation, written as one JSON line. Values are recorded as
digests (:func:`value_digest`), so histories stay small whatever the value size; the initial value
of every register is the empty byte string, whose digest is :data:`EMPTY_DIGEST`.

Real-time order is strict: the checker counts two operations as ordered only when one's
completion time is *smaller* than the other's invocation time (equal times are concurrent, the
safe reading of times from different clocks). A recorder therefore stamps every event with a
:class:`StrictClock`, so that an operation invoked after another returned -- as the recorder saw
them, e.g. ``await op1(); await op2()`` at one virtual instant -- gets a strictly later time.

``outcome`` is ``"ok"`` (returned), ``"fail"`` (raised; for a write this means it *may* have
taken effect, exactly like a timeout) or ``"pending"`` (never returned: client crashed). The
checker treats writes that are not ``ok`` as "may or may not have happened", and ignores reads
that are not ``ok``
(a read has no effect of its own but to re-propagate a value that was already written).

A coverable write (docs/protocol.md §9.1) is recorded as kind ``cvr`` with its ``base``: ``ok``
and not ``stale``, it installed ``value`` as version ``tag``; ``stale``, it installed nothing and
``tag``/``value`` are the newest version it was answered with; not ``ok``, it may have installed
``value`` as ``tag`` (the tag it would install). The checker checks every object with coverable
writes against the coverable model.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Literal

import msgspec

OpKind = Literal["read", "write", "cvr"]
Outcome = Literal["ok", "fail", "pending"]


def value_digest(value: bytes | bytearray | memoryview) -> str:
    """A short, collision-resistant digest of a value (16 bytes of BLAKE2b, hex)."""
    return hashlib.blake2b(value, digest_size=16).hexdigest()


EMPTY_DIGEST = value_digest(b"")


class StrictClock:
    """Strictly increasing time stamps from a clock that may stand still or repeat a value.

    Each stamp is ``max(clock(), the previous stamp's next float)``: events get stamps in the
    order the recorder saw them, never equal ones, and never more than a few ulps (with a real
    clock: far below a microsecond) away from the clock. Thread-safe."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._last = -math.inf
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            now = float(self._clock())
            if now <= self._last:
                now = math.nextafter(self._last, math.inf)
            self._last = now
            return now


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
    base: tuple[int, str] | None = None
    """Coverable writes: the version the write was based on."""
    stale: bool = False
    """Coverable writes: answered stale (nothing installed; ``tag``/``value`` are the newest)."""


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
