"""Erasure coding behind one small interface (docs/protocol.md §4.2): encode n, decode from any k.

:class:`ErasureCoder` uses pyeclib's ``isa_l_rs_vand`` (Reed–Solomon over Intel ISA-L, bundled in
the pyeclib wheel): an MDS code, so any k of the n elements rebuild the value. Each element is
about ``len(value) / k`` bytes plus pyeclib's fragment header, which records the element's index
and the value's size (so empty values round-trip).

``k == n`` has no parity (pyeclib refuses ``m = 0``); the value is then striped into n pieces
behind an 8-byte length prefix, and decoding needs all n. Drivers are cached per (n, k): creating
one costs far more than coding a small value.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Mapping

from pyeclib.ec_iface import ECDriver

from . import tracing
from .errors import AresError

EC_TYPE = "isa_l_rs_vand"
MAX_N = 32  # ISA-L's Vandermonde Reed–Solomon supports k + m <= 32
_LEN = struct.Struct(">Q")


class DecodeError(AresError):
    """Elements could not be decoded (too few, or not from one encoding)."""


@functools.lru_cache(maxsize=64)
def _driver(n: int, k: int) -> ECDriver:
    return ECDriver(k=k, m=n - k, ec_type=EC_TYPE)


class ErasureCoder:
    """An [n, k] MDS code."""

    def __init__(self, *, n: int, k: int) -> None:
        if not 1 <= k <= n <= MAX_N:
            raise ValueError(f"need 1 <= k <= n <= {MAX_N}, got n={n}, k={k}")
        self.n = n
        self.k = k

    def encode(self, value: bytes | memoryview) -> list[bytes]:
        """The n coded elements of ``value``; element i goes to server i."""
        with tracing.span("encode", {"ares.bytes": len(value), "ares.n": self.n, "ares.k": self.k}):
            if self.k == self.n:
                return self._stripe(bytes(value))
            return list(_driver(self.n, self.k).encode(bytes(value)))

    def decode(self, elements: Mapping[int, bytes | memoryview]) -> bytes:
        """The value, from at least k elements of one encoding keyed by their index."""
        if len(elements) < self.k:
            raise DecodeError(f"need {self.k} elements to decode, got {len(elements)}")
        with tracing.span("decode", {"ares.n": self.n, "ares.k": self.k}) as span:
            if self.k == self.n:
                value = self._unstripe(elements)
            else:
                frags = [bytes(elements[i]) for i in sorted(elements)[: self.k]]
                try:
                    value = bytes(_driver(self.n, self.k).decode(frags))
                except Exception as e:  # pyeclib raises its own exception classes
                    raise DecodeError(
                        f"cannot decode [n={self.n}, k={self.k}] elements: {e}"
                    ) from None
            span.set_attribute("ares.bytes", len(value))  # a no-op when not recorded
            return value

    def _stripe(self, value: bytes) -> list[bytes]:
        data = _LEN.pack(len(value)) + value
        size = -(-len(data) // self.n)
        return [data[i * size : (i + 1) * size] for i in range(self.n)]

    def _unstripe(self, elements: Mapping[int, bytes | memoryview]) -> bytes:
        data = b"".join(bytes(elements[i]) for i in range(self.n) if i in elements)
        if len(data) < _LEN.size:
            raise DecodeError("striped value shorter than its length prefix")
        (length,) = _LEN.unpack_from(data)
        if len(data) - _LEN.size < length:
            raise DecodeError("striped value is truncated")
        return data[_LEN.size : _LEN.size + length]
