"""The translate-mode messages: HELLO's tokenizer mode, WELCOME's translate frame, the bounded
vocabulary transfer and TOKENIZE; older peers' frames still parse."""

from __future__ import annotations

import numpy as np
import pytest
from edgespec.wire.codec import (
    Hello,
    Tokenize,
    Tokens,
    Vocab,
    VocabGet,
    Welcome,
    decode,
    encode,
)
from edgespec.wire.errors import LimitExceeded, MalformedFrame
from edgespec.wire.protocol import Limits, TokenizerMode

FP = b"\x01" * 32


def roundtrip(msg):
    return decode(encode(msg, 7, 9)).msg


def welcome(**kw) -> Welcome:
    return Welcome(FP, 262_144, 32, 8192, "gemma", (1,), "", **kw)


def test_hello_mode_roundtrips_and_a_two_frame_hello_means_same():
    assert roundtrip(Hello(FP, "x", TokenizerMode.EITHER)).mode == TokenizerMode.EITHER
    frames = encode(Hello(FP, "x"))
    assert len(frames) == 3 and roundtrip(Hello(FP, "x")).mode == TokenizerMode.SAME


def test_hello_with_an_unknown_mode_is_malformed():
    frames = encode(Hello(FP, "x", TokenizerMode.EITHER))
    frames[-1] = b"\x09"
    with pytest.raises(MalformedFrame):
        decode(frames)


def test_welcome_says_translate_only_when_it_does():
    assert len(encode(welcome())) == 6  # header + the five frames older clients expect
    got = roundtrip(welcome(translate=True, vocab_entries=262_144))
    assert got.translate and got.vocab_entries == 262_144
    assert not roundtrip(welcome()).translate


def test_vocab_chunk_roundtrips():
    tokens = [b"<pad>", b"\xe2\x96\x81the", b"", b"<0x0A>"]
    msg = Vocab(10, 2, 2, 1, np.array([len(t) for t in tokens], np.int32), b"".join(tokens))
    got = roundtrip(msg)
    assert got.entries() == tokens and (got.total, got.start, got.bos, got.eos) == (10, 2, 2, 1)


@pytest.mark.parametrize("edit, error", [
    (lambda f: [*f[:3], f[3][:-1]], MalformedFrame),  # truncated strings
    (lambda f: [*f[:2], np.array([2000], np.int32).tobytes(), b"x" * 2000], LimitExceeded),
    (lambda f: [f[0], Vocab(1 << 21, 0, -1, -1, np.zeros(1, np.int32), b"").body()[0],
                *f[2:]], LimitExceeded),  # a vocabulary larger than any we accept
    (lambda f: [*f[:2], np.ones(5, np.int32).tobytes(), b"abcde"], LimitExceeded),  # overrun
])
def test_bad_vocab_chunks_are_typed_errors(edit, error):
    frames = encode(Vocab(4, 0, -1, -1, np.array([1, 1], np.int32), b"ab"))
    with pytest.raises(error):
        decode(edit(frames))


def test_vocab_get_is_bounded():
    limits = Limits()
    assert roundtrip(VocabGet(5, 100)) == VocabGet(5, 100)
    with pytest.raises(LimitExceeded):
        decode(encode(VocabGet(0, limits.max_vocab_chunk + 1)))
    with pytest.raises(LimitExceeded):
        decode(encode(VocabGet(0, 0)))


def test_tokenize_roundtrips_and_is_bounded():
    assert roundtrip(Tokenize("héllo", add_bos=False)) == Tokenize("héllo", False)
    assert roundtrip(Tokens(np.array([2, 5], np.int32))).tokens.tolist() == [2, 5]
    with pytest.raises(Exception) as caught:
        decode(encode(Tokenize("x" * (Limits().max_text_bytes + 1))))
    assert caught.type.__name__ == "FrameTooLarge"
