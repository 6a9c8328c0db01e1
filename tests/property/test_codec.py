"""Codec round trips and decoding of arbitrary bytes (only FrameError escapes)."""

from __future__ import annotations

import contextlib
import itertools
import mmap
import struct
import tracemalloc

from hypothesis import given, settings
from hypothesis import strategies as st

from aresdsm.errors import FrameError
from aresdsm.tags import Tag
from aresdsm.wire import Blob, Decoder, Encoder, Envelope, FrameBuffer
from aresdsm.wire.codec import LARGE_FRAME_BYTES
from aresdsm.wire.messages import (
    Ack,
    DataReply,
    ErrorReply,
    Ping,
    PutData,
    QueryData,
    QueryTag,
    TagReply,
)

MAX = 1 << 20
tags = st.builds(Tag, st.integers(0, 2**63 - 1), st.text(max_size=20))
names = st.text(max_size=30)
blobs = st.binary(max_size=2000).map(Blob)
messages = st.one_of(
    st.builds(Ping, st.none() | blobs),
    st.builds(QueryTag, names, names, names),
    st.builds(QueryData, names, names, names),
    st.builds(PutData, names, names, names, tags, blobs),
    st.builds(TagReply, tags),
    st.builds(DataReply, tags, blobs),
    st.builds(Ack),
    st.builds(ErrorReply, st.sampled_from(["bad-request", "unknown-config"]), names),
)
envelopes = st.builds(
    Envelope,
    st.integers(0, 2**63 - 1),
    messages,
    st.none() | st.dictionaries(st.text(max_size=10), st.text(max_size=40), max_size=3),
)


@given(envelopes)
def test_round_trip(env: Envelope) -> None:
    frame = Encoder().encode_bytes(env)
    assert Decoder().decode_frame(frame, max_frame_bytes=MAX) == env


@given(st.lists(envelopes, min_size=1, max_size=5), st.integers(1, 64))
def test_stream_splitting_at_any_chunk_size(envs: list[Envelope], chunk: int) -> None:
    stream = b"".join(Encoder().encode_bytes(e) for e in envs)
    fb = FrameBuffer(max_frame_bytes=MAX)
    dec = Decoder()
    out = []
    for i in range(0, len(stream), chunk):
        out += [dec.decode_body(b) for b in fb.feed(stream[i : i + chunk])]
    assert out == envs


large_values = st.integers(-64, 70_000).map(
    lambda d: Blob(bytes([d % 251]) * (LARGE_FRAME_BYTES + d))
)
mixed = st.one_of(
    envelopes, st.builds(Envelope, st.integers(0, 99), st.builds(DataReply, tags, large_values))
)


@settings(max_examples=60, deadline=None)
@given(st.lists(mixed, min_size=1, max_size=4), st.lists(st.floats(0, 1), max_size=12))
def test_large_frames_split_anywhere(envs: list[Envelope], cuts: list[float]) -> None:
    """Frames of LARGE_FRAME_BYTES or more go into a buffer of their own: the same bodies at
    any split of the stream, and ``buffered`` counts their received bytes until complete."""
    frames = [Encoder().encode_bytes(e) for e in envs]
    stream = b"".join(frames)
    points = sorted({0, len(stream), *(int(c * len(stream)) for c in cuts)})
    fb = FrameBuffer(max_frame_bytes=MAX)
    dec = Decoder()
    out: list[Envelope] = []
    for a, b in itertools.pairwise(points):
        out += [dec.decode_body(body) for body in fb.feed(stream[a:b])]
        rest = b - sum(len(f) for f in frames[: len(out)])  # bytes of the incomplete frame
        assert fb.buffered == (rest - 4 if rest >= 4 else rest)  # (a parsed prefix is not)
    assert out == envs and fb.buffered == 0


def test_a_large_frame_is_received_into_one_buffer_of_its_size() -> None:
    """The body of a large frame received in pieces is the buffer it was received into (one
    copy of the bytes), not a slice copied out of a growing buffer."""
    value = bytes(range(256)) * 4096  # 1 MiB
    frame = Encoder().encode_bytes(Envelope(7, DataReply(Tag(1, "w"), Blob(value))))
    fb = FrameBuffer(max_frame_bytes=MAX * 2)
    assert fb.feed(frame[:1000]) == [] and fb.feed(frame[1000:-10]) == []
    (body,) = fb.feed(frame[-10:] + frame[:3])  # the next frame starts in the same chunk
    assert type(body) is memoryview and type(body.obj) is mmap.mmap
    assert len(body) == len(frame) - 4
    assert fb.buffered == 3
    env = Decoder().decode_body(body)
    assert isinstance(env.body, DataReply) and bytes(env.body.value.data) == value


def test_a_large_frame_holds_only_the_bytes_received() -> None:
    """An announced length allocates nothing on the Python heap (a ``bytearray(n)`` of the
    announced size touched every page: 16 peers announcing 64 MiB frames grew the server by
    523 MiB; tests/integration/test_limits_processes.py measures the server's RSS)."""
    value = bytes(range(256)) * 4096  # 1 MiB
    frame = Encoder().encode_bytes(Envelope(7, DataReply(Tag(1, "w"), Blob(value))))
    fb = FrameBuffer(max_frame_bytes=MAX * 2)
    tracemalloc.start()
    try:
        assert fb.feed(frame[:1000]) == [] and fb.buffered == 996  # (the prefix is parsed)
        assert fb.feed(frame[1000:2000]) == []
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held < 64 * 1024, f"{held} bytes allocated for 2,000 received"
    assert fb.feed(frame[2000:-10]) == []
    (body,) = fb.feed(frame[-10:] + frame[:3])  # the next frame starts in the same chunk
    assert len(body) == len(frame) - 4
    assert fb.buffered == 3
    env = Decoder().decode_body(body)
    assert isinstance(env.body, DataReply) and bytes(env.body.value.data) == value


def test_blobs_are_not_copied_into_the_header() -> None:
    value = b"x" * 100_000
    bufs = Encoder().encode(Envelope(1, PutData("g", "c", "k", Tag(1, "w"), Blob(value))))
    assert bufs[-1] is value  # handed to writelines as is
    assert sum(len(b) for b in bufs[:-1]) < 200


@settings(max_examples=500)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_only_raise_frame_error(data: bytes) -> None:
    dec = Decoder()
    with contextlib.suppress(FrameError):
        dec.decode_body(data)
    fb = FrameBuffer(max_frame_bytes=1000)
    try:
        for body in fb.feed(data):
            with contextlib.suppress(FrameError):
                dec.decode_body(body)
    except FrameError:
        pass


@settings(max_examples=300)
@given(envelopes, st.data())
def test_corrupted_frames_only_raise_frame_error(env: Envelope, data: st.DataObject) -> None:
    frame = bytearray(Encoder().encode_bytes(env))
    i = data.draw(st.integers(4, len(frame) - 1))
    frame[i] = data.draw(st.integers(0, 255))
    with contextlib.suppress(FrameError):
        Decoder().decode_body(bytes(frame[4:]))


def test_specific_bad_frames() -> None:
    dec = Decoder()
    enc = Encoder()
    good = enc.encode_bytes(Envelope(1, Ack()))
    bad_version = good[:4] + b"\x09" + good[5:]
    for body, message in [
        (b"", "too short"),
        (bad_version[4:], "version"),
        (b"\x01" + struct.pack(">I", 999) + b"abc", "header length"),
        (b"\x01" + struct.pack(">I", 3) + b"\x93\x01\xa3zzz", "malformed"),
    ]:
        try:
            dec.decode_body(body)
        except FrameError as e:
            assert message in str(e)
        else:
            raise AssertionError(f"{body!r} decoded")
    # a blob reference pointing outside the frame
    frame = enc.encode_bytes(Envelope(1, DataReply(Tag(1, "w"), Blob(b"abc"))))
    try:
        dec.decode_body(frame[4:-2])
    except FrameError as e:
        assert "out of range" in str(e)
    else:
        raise AssertionError("truncated blob decoded")


def test_oversized_frames_are_refused() -> None:
    fb = FrameBuffer(max_frame_bytes=100)
    try:
        fb.feed(struct.pack(">I", 101))
    except FrameError as e:
        assert "exceeds" in str(e)
    else:
        raise AssertionError("oversized frame accepted")
    enc = Encoder(max_frame_bytes=100)
    try:
        enc.encode(Envelope(1, Ping(Blob(b"x" * 200))))
    except FrameError:
        pass
    else:
        raise AssertionError("oversized frame encoded")
