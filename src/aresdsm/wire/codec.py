"""Frame codec: length-prefixed, versioned frames with out-of-band blobs.

Frame layout (all integers big-endian)::

    u32 length        bytes that follow this field (<= max_frame_bytes)
    u8  version       FORMAT_VERSION
    u32 header_len
    header            MessagePack of an Envelope; every Blob field is encoded as [offset, length]
    blobs             the blob bytes, concatenated (offsets relative to the start of this region)

Blobs are written as separate buffers (``writelines``), so a 4 MiB value is never copied into
the header; on receipt they are zero-copy memoryview slices of the received frame.

Blob references must lay the blob region out exactly as :class:`Encoder` does: in header order,
each starting where the previous one ended, the first at 0 and the last ending at the end of the
frame. Merely range-checking them would let many fields point at the same bytes, so a small frame
could make a server store (and fsync) many times its size.

Any malformed input -- short frame, wrong version, bad MessagePack, unknown message type,
wrong field types, blob references that are out of range, overlapping, out of order or leave
bytes unreferenced, nesting deep enough to exhaust the stack -- raises
:class:`~aresdsm.errors.FrameError`, and nothing else.
"""

from __future__ import annotations

import mmap
import struct
from typing import Any

import msgspec

from ..errors import FrameError
from .blob import Blob
from .messages import Envelope

FORMAT_VERSION = 1
DEFAULT_MAX_FRAME_BYTES = 64 * 1024 * 1024
_LEN = struct.Struct(">I")
_PREFIX = struct.Struct(">IBI")  # length, version, header_len
PREFIX_BYTES = _PREFIX.size  # 9
LENGTH_BYTES = _LEN.size
_NO_REGION = memoryview(b"").toreadonly()
"""The blob region of a frame without blobs (and between frames)."""


class Encoder:
    """Encodes envelopes to a list of buffers ready for ``transport.writelines``.

    Raises :class:`~aresdsm.errors.FrameError` (only) for a message that cannot be encoded or
    whose frame would exceed ``max_frame_bytes``."""

    def __init__(self, *, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._blobs: list[bytes | memoryview] = []
        self._offset = 0
        self._enc = msgspec.msgpack.Encoder(enc_hook=self._enc_hook)

    def _enc_hook(self, obj: Any) -> Any:
        if isinstance(obj, Blob):
            ref = (self._offset, len(obj.data))
            self._blobs.append(obj.data)
            self._offset += len(obj.data)
            return ref
        raise NotImplementedError(f"cannot encode {type(obj).__name__}")

    def encode(self, env: Envelope) -> list[bytes | memoryview]:
        self._blobs = []
        self._offset = 0
        try:
            header = self._enc.encode(env)
            blobs = self._blobs
            body_len = 1 + 4 + len(header) + self._offset
        except Exception as e:
            # A message that cannot be put on the wire (an integer beyond 64 bits, an unsupported
            # type) fails that one message with the codec's error, so the caller fails one
            # request or answers with an error reply instead of losing its connection.
            raise FrameError(
                f"cannot encode {type(env.body).__name__}: {type(e).__name__}: {e}"
            ) from None
        finally:
            self._blobs = []
        if body_len > self.max_frame_bytes:
            raise FrameError(
                f"frame of {body_len} bytes exceeds max_frame_bytes={self.max_frame_bytes}"
            )
        prefix = _PREFIX.pack(body_len, FORMAT_VERSION, len(header))
        return [prefix, header, *blobs]

    def encode_bytes(self, env: Envelope) -> bytes:
        """The whole frame as one bytes object (tests and the simulator)."""
        return b"".join(bytes(b) for b in self.encode(env))


class Decoder:
    """Decodes one frame body (everything after the u32 length) into an Envelope."""

    def __init__(self) -> None:
        self._region: memoryview = _NO_REGION
        self._next_offset = 0
        self._dec = msgspec.msgpack.Decoder(Envelope, dec_hook=self._dec_hook)

    def _dec_hook(self, kind: type, obj: Any) -> Any:
        if kind is Blob:
            if type(obj) is not list or len(obj) != 2:
                raise ValueError("blob reference must be [offset, length]")
            off, length = obj
            if type(off) is not int or type(length) is not int:  # (not bool either)
                raise ValueError("blob reference must be [offset, length]")
            # msgspec decodes the header in wire order, the order in which the encoder appended
            # the blobs, so each reference must start exactly where the previous one ended: no
            # two fields can share bytes (storage amplification from one small frame).
            if off != self._next_offset:
                raise ValueError(
                    f"blob reference at offset {off}, expected {self._next_offset} "
                    "(references must be contiguous and in order)"
                )
            if length < 0 or off + length > len(self._region):
                raise ValueError("blob reference out of range")
            self._next_offset = off + length
            return Blob(self._region[off : off + length])
        raise NotImplementedError(f"cannot decode {kind!r}")

    def decode_body(self, body: bytes | bytearray | memoryview) -> Envelope:
        size = len(body)
        if size < 5:
            raise FrameError(f"frame body of {size} bytes is too short")
        version = body[0]
        if version != FORMAT_VERSION:
            raise FrameError(
                f"unsupported frame format version {version} (expected {FORMAT_VERSION})"
            )
        (header_len,) = _LEN.unpack_from(body, 1)
        end = 5 + header_len
        if end > size:
            raise FrameError(f"header length {header_len} exceeds frame body {size - 5}")
        view = memoryview(body)
        if end < size:  # (most requests carry no blob: no region to make)
            self._region = view[end:].toreadonly()
        self._next_offset = 0
        try:
            env = self._dec.decode(view[5:end])
            if self._next_offset != len(self._region):
                raise FrameError(
                    f"{len(self._region) - self._next_offset} bytes of the blob region "
                    "are not referenced by the header"
                )
            return env
        except FrameError:
            raise
        except Exception as e:
            # Bytes from the network must never raise anything but FrameError: besides
            # msgspec's own errors, deep nesting in skipped fields raises RecursionError and a
            # future msgspec may raise something else; the caller treats all of them as garbage.
            raise FrameError(f"malformed message: {type(e).__name__}: {e}") from None
        finally:
            self._region = _NO_REGION
            self._next_offset = 0

    def decode_frame(self, frame: bytes | memoryview, *, max_frame_bytes: int) -> Envelope:
        """Decode a whole frame including its length prefix (tests, simulator, fuzzing)."""
        view = memoryview(frame)
        if len(view) < LENGTH_BYTES:
            raise FrameError("frame shorter than its length prefix")
        (length,) = _LEN.unpack_from(view, 0)
        if length > max_frame_bytes:
            raise FrameError(f"frame of {length} bytes exceeds max_frame_bytes={max_frame_bytes}")
        if length != len(view) - LENGTH_BYTES:
            raise FrameError(
                f"frame length {length} does not match {len(view) - LENGTH_BYTES} bytes"
            )
        return self.decode_body(view[LENGTH_BYTES:])


LARGE_FRAME_BYTES = 256 * 1024
"""A frame at least this long is received into a buffer of its own size (:class:`FrameBuffer`)."""


class FrameBuffer:
    """Incremental splitter of a byte stream into frame bodies, with a size limit.

    A large frame (:data:`LARGE_FRAME_BYTES` or more: a value of a file block) is copied once,
    into an anonymous memory map of exactly its size made when its length prefix arrives, and
    that buffer is the body returned: no growing buffer to reallocate, no slice and ``bytes`` copies
    of megabytes (the blob region a decoder hands out is a read-only view of it). Smaller frames
    are cut from a shared buffer as before."""

    def __init__(self, *, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._buf = bytearray()
        self._need: int | None = None
        self._large: mmap.mmap | None = None
        """The large frame being received (its length is ``_need``), filled to ``_filled``."""
        self._filled = 0

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned as a complete frame (an incomplete frame)."""
        return len(self._buf) + self._filled

    def feed(self, data: bytes) -> list[bytes | memoryview]:
        """Add received bytes; return every complete frame body. Raises FrameError if too big."""
        out: list[bytes | memoryview] = []
        if self._large is not None:
            data = self._fill(data, out)
            if not data:
                return out
        self._buf += data
        buf = self._buf
        pos = 0
        while True:
            if self._need is None:
                if len(buf) - pos < LENGTH_BYTES:
                    break
                (length,) = _LEN.unpack_from(buf, pos)
                if length > self.max_frame_bytes:
                    raise FrameError(
                        f"incoming frame of {length} bytes exceeds "
                        f"max_frame_bytes={self.max_frame_bytes}"
                    )
                self._need = length
                pos += LENGTH_BYTES
            if len(buf) - pos < self._need:
                if self._need >= LARGE_FRAME_BYTES:  # the rest of it lands in its own buffer
                    # An anonymous map, not bytearray(n): bytearray zero-fills (touches) every
                    # page at once, so a peer that only *declares* a 64 MiB frame would make
                    # the server resident for all of it; the map's pages become resident as
                    # bytes arrive, which the partial-frame budget counts (``buffered``).
                    self._large = mmap.mmap(-1, self._need)
                    self._filled = len(buf) - pos
                    self._large[: self._filled] = memoryview(buf)[pos:]
                    pos = len(buf)
                break
            out.append(bytes(buf[pos : pos + self._need]))
            pos += self._need
            self._need = None
        if pos:
            del buf[:pos]
        return out

    def _fill(self, data: bytes, out: list[bytes | memoryview]) -> bytes:
        """Copy the next bytes of the large frame into its buffer; return what follows it."""
        large, need = self._large, self._need
        assert large is not None and need is not None
        n = min(len(data), need - self._filled)
        with memoryview(data) as view:
            large[self._filled : self._filled + n] = view[:n]
        self._filled += n
        if self._filled < need:
            return b""
        out.append(memoryview(large))  # (the map is unmapped when the last view goes)
        self._large, self._need, self._filled = None, None, 0
        return data[n:] if n < len(data) else b""
