"""Round trips and strict rejection for every message type."""

from __future__ import annotations

import contextlib
import struct

import numpy as np
import pytest
from edgespec.wire.codec import (
    Close,
    Draft,
    Error,
    Hello,
    Open,
    Opened,
    Ping,
    SamplingParams,
    Verdict,
    Welcome,
    decode,
    encode,
    peek_header,
)
from edgespec.wire.errors import (
    ErrorCode,
    FrameTooLarge,
    InvalidToken,
    LimitExceeded,
    MalformedFrame,
    VersionMismatch,
    WireError,
    error_for_code,
)
from edgespec.wire.protocol import HEADER, MAGIC, VERSION, Limits, MsgType
from hypothesis import given, settings
from hypothesis import strategies as st

FP = bytes(range(32))


def roundtrip(msg, session=7, seq=9):
    env = decode(encode(msg, session, seq))
    assert (env.session, env.seq) == (session, seq)
    return env.msg


def test_hello_welcome_roundtrip():
    assert roundtrip(Hello(FP, "cli")) == Hello(FP, "cli")
    w = Welcome(FP, 49152, 32, 8192, "SmolLM2", (2, 0), "{{ messages }}")
    assert roundtrip(w) == w


def test_open_roundtrip_keeps_tokens_and_sampling():
    msg = Open(np.array([1, 2, 3], dtype=np.int32), 64, SamplingParams(0.0, 0, 1.0, 5, 0))
    got = roundtrip(msg)
    assert isinstance(got, Open)
    assert got.tokens.tolist() == [1, 2, 3]
    assert got.max_new_tokens == 64 and got.sampling.seed == 5


def test_draft_and_verdict_roundtrip():
    got = roundtrip(Draft(10, np.array([5, 6], dtype=np.int32)))
    assert isinstance(got, Draft) and got.base_length == 10 and got.tokens.tolist() == [5, 6]
    assert roundtrip(Draft(3, np.array([], dtype=np.int32))).tokens.tolist() == []
    assert roundtrip(Verdict(2, 77, 13, 1500)) == Verdict(2, 77, 13, 1500)


def test_small_messages_roundtrip():
    assert roundtrip(Opened(12)) == Opened(12)
    assert roundtrip(Close()) == Close()
    assert roundtrip(Ping(123)) == Ping(123)
    assert roundtrip(Error(ErrorCode.OVERLOADED, "full")) == Error(ErrorCode.OVERLOADED, "full")


def test_truncated_header_is_malformed():
    frames = encode(Opened(1))
    frames[0] = frames[0][:-1]
    with pytest.raises(MalformedFrame):
        decode(frames)


def test_wrong_version_is_reported_as_such():
    frames = encode(Ping(1))
    frames[0] = HEADER.pack(MAGIC, 99, int(MsgType.PING), 0, 0, 0)
    with pytest.raises(VersionMismatch):
        decode(frames)


def test_bad_magic_and_unknown_type():
    with pytest.raises(MalformedFrame, match="magic"):
        decode([HEADER.pack(b"HTTP", 1, 10, 0, 0, 0), b"\0" * 8])
    with pytest.raises(MalformedFrame, match="unknown message type"):
        decode([HEADER.pack(MAGIC, VERSION, 200, 0, 0, 0)])


def test_huge_draft_is_refused_before_allocation():
    frames = encode(Draft(0, np.zeros(65, dtype=np.int32)))
    with pytest.raises(LimitExceeded):
        decode(frames)


def test_oversized_frame_is_refused():
    limits = Limits(max_frame_bytes=1024)
    frames = encode(Open(np.zeros(300, dtype=np.int32), 1))
    with pytest.raises(FrameTooLarge):
        decode(frames, limits)


def test_negative_and_out_of_range_token_ids():
    for bad in (-1, 1 << 24):
        frames = encode(Draft(0, np.array([1, bad], dtype=np.int32)))
        with pytest.raises(InvalidToken):
            decode(frames)


def test_token_frame_not_multiple_of_four():
    frames = encode(Draft(0, np.array([1], dtype=np.int32)))
    frames[2] = frames[2] + b"\0"
    with pytest.raises(MalformedFrame):
        decode(frames)


def test_wrong_frame_count():
    frames = encode(Draft(0, np.array([1], dtype=np.int32)))
    with pytest.raises(MalformedFrame):
        decode(frames[:2])
    with pytest.raises(MalformedFrame):
        decode([*frames, b""])


def test_invalid_sampling_params_are_malformed():
    fixed = struct.pack("<IfIfQBf", 8, float("nan"), 0, 1.0, 0, 0, 0.0)
    frames = [encode(Open(np.array([1], dtype=np.int32), 8))[0], fixed, b"\1\0\0\0"]
    with pytest.raises(MalformedFrame, match="temperature"):
        decode(frames)


def test_empty_prompt_is_refused():
    with pytest.raises(MalformedFrame, match="empty"):
        decode(encode(Open(np.array([], dtype=np.int32), 8)))


def test_invalid_utf8_name():
    frames = encode(Hello(FP, "x"))
    frames[2] = b"\xff\xfe"
    with pytest.raises(MalformedFrame, match="UTF-8"):
        decode(frames)


def test_peek_header_only_trusts_a_real_header():
    assert peek_header([b"short"]) is None
    header = peek_header(encode(Ping(1), session=5, seq=6))
    assert header is not None and (header.session, header.seq) == (5, 6)


def test_error_codes_map_back_to_typed_errors():
    err = error_for_code(ErrorCode.OVERLOADED, "busy")
    assert err.code == ErrorCode.OVERLOADED and "busy" in str(err)
    assert isinstance(error_for_code(ErrorCode.INTERNAL, "x"), WireError)


@settings(max_examples=2000, deadline=None)
@given(st.lists(st.binary(max_size=64), min_size=0, max_size=10))
def test_decoder_raises_only_wire_errors_on_random_frames(frames):
    with contextlib.suppress(WireError):
        decode(frames)


@settings(max_examples=1000, deadline=None)
@given(st.integers(0, 3), st.integers(0, 40), st.binary(min_size=1, max_size=8))
def test_decoder_raises_only_wire_errors_on_mutated_frames(which, pos, noise):
    frames = encode(Open(np.arange(10, dtype=np.int32), 16))
    which = which % len(frames)
    frame = bytearray(frames[which])
    pos = pos % (len(frame) + 1)
    frame[pos : pos + len(noise)] = noise
    frames[which] = bytes(frame)
    with contextlib.suppress(WireError):
        decode(frames)


def test_busy_error_carries_its_retry_after_to_the_typed_error():
    got = roundtrip(Error(ErrorCode.OVERLOADED, "full", 1500))
    assert got == Error(ErrorCode.OVERLOADED, "full", 1500)
    err = error_for_code(got.code, got.message, got.retry_after_ms)
    assert err.code == ErrorCode.OVERLOADED and getattr(err, "retry_after_ms", 0) == 1500


def test_retry_after_beyond_ten_minutes_is_malformed():
    frames = encode(Error(ErrorCode.OVERLOADED, "full"))
    frames[1] = struct.pack("<HI", int(ErrorCode.OVERLOADED), 600_001)
    with pytest.raises(MalformedFrame):
        decode(frames)
