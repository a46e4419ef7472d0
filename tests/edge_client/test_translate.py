"""Translation helpers: the held-back boundary, whole characters, and the vocabulary transfer
(chunked, checked against the fingerprint, cached by it) against a scripted daemon."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from edgespec.edge_client.translate import propose, target_vocabulary, whole_chars
from edgespec.models.vocab import Vocabulary
from edgespec.wire.codec import Vocab, VocabGet, Welcome
from edgespec.wire.errors import ModelMismatch
from edgespec.wire.protocol import Limits

TOKENS = [b"<pad>", b"<eos>", b"<bos>", "▁hel".encode(), "▁hello".encode(), b"lo",
          "▁world".encode(), b"<0x0A>", b"!"]
TARGET = Vocabulary(list(TOKENS), {"bos": 2, "eos": 1})


def test_whole_chars_holds_back_a_cut_character():
    e = "é".encode()
    assert whole_chars(b"ab") == 2
    assert whole_chars(b"a" + e[:1]) == 1
    assert whole_chars(b"a" + e) == 3
    assert whole_chars(b"a" + "😀".encode()[:3]) == 1


def test_proposal_holds_back_a_tail_the_next_token_may_extend():
    text = b"say"
    # k's text ends inside " hello": " hel" is not proposed
    assert propose(b"say hello world", text, len(b"say hel"), TARGET, 8) == []
    # k's text ends after " hello": it is, " world" (only drafted to confirm) is not
    assert propose(b"say hello world", text, len(b"say hello"), TARGET, 8) == [4]
    assert propose(b"say hello world!", text, len(b"say hello world!"), TARGET, 8) == [4, 6, 8]
    assert propose(b"so hello", text, 8, TARGET, 8) == []  # not a continuation of the text
    assert propose(b"say hello world!", text, 16, TARGET, 2) == [4, 6]  # at most k ids


class ScriptedLink:
    """Answers VOCAB_GET from a table, optionally corrupted."""

    limits = Limits(max_vocab_chunk=3)

    def __init__(self, tokens: list[bytes], corrupt: bool = False):
        self.tokens, self.corrupt, self.asked = tokens, corrupt, 0

    def request(self, msg: VocabGet, recover: bool = True) -> Vocab:
        self.asked += 1
        chunk = self.tokens[msg.start:msg.start + msg.count]
        if self.corrupt and msg.start == 0:
            chunk = [b"<PAD>", *chunk[1:]]
        return Vocab(len(self.tokens), msg.start, 2, 1,
                     np.array([len(t) for t in chunk], np.int32), b"".join(chunk))


def welcome() -> Welcome:
    return Welcome(TARGET.fingerprint, len(TOKENS), 32, 4096, "t", (1,), "", translate=True,
                   vocab_entries=len(TOKENS))


def test_vocabulary_arrives_in_chunks_and_is_cached_by_fingerprint(tmp_path: Path):
    link = ScriptedLink(TOKENS)
    got = target_vocabulary(link, welcome(), tmp_path)
    assert got.tokens == TOKENS and link.asked == 3  # 9 entries, 3 a chunk
    again = ScriptedLink(TOKENS)
    assert target_vocabulary(again, welcome(), tmp_path).tokens == TOKENS
    assert again.asked == 0


def test_a_transfer_that_does_not_hash_to_the_fingerprint_is_refused(tmp_path: Path):
    with pytest.raises(ModelMismatch, match="does not hash"):
        target_vocabulary(ScriptedLink(TOKENS, corrupt=True), welcome(),
                          tmp_path)
    assert not list(tmp_path.rglob("*.bin"))  # nothing cached


def test_a_corrupt_cache_file_is_fetched_again(tmp_path: Path):
    target_vocabulary(ScriptedLink(TOKENS), welcome(), tmp_path)
    for path in tmp_path.rglob("*.bin"):
        path.write_bytes(path.read_bytes()[:-3])
    link = ScriptedLink(TOKENS)
    assert target_vocabulary(link, welcome(), tmp_path).tokens == TOKENS
    assert link.asked == 3
