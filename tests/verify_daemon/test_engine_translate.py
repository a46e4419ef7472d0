"""The daemon's side of translation: HELLO's tokenizer modes, the vocabulary in chunks, the
target's own tokenization; each refusal typed and leaving other sessions as they were."""

from __future__ import annotations

import dataclasses

import pytest
from edgespec.models.fingerprint import vocab_fingerprint
from edgespec.wire.codec import (
    Draft,
    Hello,
    Open,
    Tokenize,
    Vocab,
    VocabGet,
    Welcome,
    decode,
    encode,
)
from edgespec.wire.errors import InvalidToken, LimitExceeded, ModelMismatch
from edgespec.wire.protocol import TokenizerMode

from .scripted import FP, VOCAB, make_engine, serve, target_greedy, tokens

TABLE = tuple(f"t{i}".encode() for i in range(VOCAB))


def translating_engine():
    engine, runner = make_engine()
    engine.info = dataclasses.replace(engine.info, vocab=TABLE, bos_eos=(-1, 0),
                                      fingerprint=vocab_fingerprint(TABLE, {"bos": -1, "eos": 0}))
    runner.tokenize = lambda text, add_bos: [len(text) % VOCAB]  # type: ignore[attr-defined]
    return engine, runner


def test_either_mode_welcomes_another_tokenizer_with_translation():
    engine, _ = translating_engine()
    welcome = engine.hello(Hello(FP, "x", TokenizerMode.EITHER))
    assert isinstance(welcome, Welcome) and welcome.translate and welcome.vocab_entries == VOCAB
    same = engine.hello(Hello(engine.info.fingerprint, "x", TokenizerMode.EITHER))
    assert not same.translate and same.vocab_entries == 0


def test_a_client_claiming_translation_with_the_targets_tokenizer_is_refused():
    engine, _ = translating_engine()
    with pytest.raises(ModelMismatch, match="asks to translate"):
        engine.hello(Hello(engine.info.fingerprint, "x", TokenizerMode.TRANSLATE))
    with pytest.raises(ModelMismatch, match="tokenizers differ"):
        engine.hello(Hello(FP, "x"))  # a client that cannot translate: as before


def test_vocabulary_chunks_reassemble_to_the_fingerprint():
    engine, _ = translating_engine()
    got: list[bytes] = []
    while len(got) < VOCAB:
        reply = engine.submit(b"p", 0, 1, VocabGet(len(got), 30))
        assert isinstance(reply, Vocab)
        chunk = decode(encode(reply)).msg  # as the client receives it
        got += chunk.entries()
    specials = {"bos": None, "eos": 0}
    assert vocab_fingerprint(got, specials) == engine.info.fingerprint
    with pytest.raises(LimitExceeded):
        engine.submit(b"p", 0, 1, VocabGet(VOCAB, 30))


def test_tokenize_answers_with_the_targets_ids():
    engine, _ = translating_engine()
    assert engine.submit(b"p", 0, 1, Tokenize("hello")).tokens.tolist() == [5]


def test_translated_ids_outside_the_vocabulary_are_refused_and_others_go_on():
    engine, _ = translating_engine()
    prompt = [3, 1, 4, 1, 5, 9, 2, 6]
    serve(engine, b"a", 1, Open(tokens(*prompt), 16))
    serve(engine, b"b", 2, Open(tokens(*prompt), 16))
    with pytest.raises(InvalidToken):
        engine.submit(b"a", 1, 2, Draft(len(prompt), tokens(3, VOCAB)))
    want = target_greedy(prompt, 3)
    verdict = serve(engine, b"b", 2, Draft(len(prompt), tokens(*want[:2])), seq=3)
    assert (verdict.accepted, verdict.next_token) == (2, want[2])
    verdict = serve(engine, b"a", 1, Draft(len(prompt), tokens(*want[:2])), seq=4)
    assert verdict.accepted == 2  # the refused draft changed nothing for its session
