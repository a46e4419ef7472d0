"""Vocabularies as bytes in both spellings, and the greedy longest match that proposes ids."""

from __future__ import annotations

from edgespec.models.fingerprint import vocab_fingerprint
from edgespec.models.vocab import Vocabulary, detect_scheme, piece_bytes

SP = [b"<pad>", b"<eos>", b"<bos>", b"<0x0A>", b"<0xC3>", b"<0xA9>", "▁".encode(),
      "▁the".encode(), b"the", b"re", b"there", b"\n", "▁▁".encode()]
BPE = ["Ġthe".encode(), b"the", "Ċ".encode(), "Ã©".encode(), b"<|im_end|>", b"re"]


def test_sentencepiece_pieces():
    assert detect_scheme(SP) == "sentencepiece"
    assert piece_bytes("▁the".encode(), "sentencepiece") == b" the"
    assert piece_bytes(b"<0x0A>", "sentencepiece") == b"\n"


def test_byte_level_bpe_pieces():
    assert detect_scheme(BPE) == "byte_bpe"
    assert piece_bytes("Ġthe".encode(), "byte_bpe") == b" the"
    assert piece_bytes("Ċ".encode(), "byte_bpe") == b"\n"
    assert piece_bytes("Ã©".encode(), "byte_bpe") == "é".encode()


def test_control_tokens_are_not_text_and_fingerprint_is_the_wire_one():
    v = Vocabulary(list(SP), {"bos": 2, "eos": 1})
    assert v.decode([2, 7, 9, 1]) == b" there"
    assert {0, 1, 2} <= v.control and 3 not in v.control
    assert v.fingerprint == vocab_fingerprint(SP, {"bos": 2, "eos": 1})


def test_longest_match_prefers_whole_tokens_and_falls_back_to_bytes():
    v = Vocabulary(list(SP), {"bos": 2, "eos": 1})
    ids, ends = v.encode(" there\né".encode())
    assert ids == [7, 9, 11, 4, 5] and ends == [4, 6, 7, 8, 9]
    assert v.encode(b"there")[0] == [10]
    assert v.encode(b"there", max_tokens=0) == ([], [])


def test_shared_share_counts_ordinary_tokens_spelled_alike():
    sp = Vocabulary(list(SP), {"bos": 2, "eos": 1})
    bpe = Vocabulary(list(BPE), {"bos": None, "eos": 4})
    assert bpe.shared_with(sp) == 4 / 5  # all but "é", which the other spells in two bytes
