"""A tiny random-weight target with Gemma 3's tokenizer, beside the tiny SmolLM2-tokenizer
draft of ``models/tiny_pair.py``: a cheap pair with two different tokenizers, for the
chi-square test of sampling across tokenizers (thousands of draws through a real daemon).

The target reuses the tiny pair's target layers; its embedding row for each Gemma token
spelled like a SmolLM2 token is that token's tiny-target row, every other row small noise.
So on text both vocabularies split alike the two models see nearly the same thing, the
draft (the tiny pair's noisy draft) agrees with the target often but not always, and both
branches of rejection sampling run. Built deterministically into the cache; nothing is
downloaded or committed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from edgespec.models.paths import default_draft_gguf, file_digest, gemma_gguf, write_atomically
from edgespec.models.tiny_pair import TinyShape, _weights, ensure_tiny_pair, write_gguf
from edgespec.models.vocab import Vocabulary

CROSS_FORMAT = "tiny-cross-v1"
OTHER_ROW_SCALE = 0.25  # Gemma-only tokens: small rows, so they carry little of p


def ensure_tiny_cross_target(cache_dir: Path, seed: int = 0) -> Path:
    """The cached tiny Gemma-tokenizer target GGUF (draft: ``ensure_tiny_pair(...).draft_gguf``)."""
    import gguf

    shape = TinyShape()
    source = gemma_gguf(cache_dir)
    pair = ensure_tiny_pair(cache_dir, seed)
    tag = f"{CROSS_FORMAT}-s{seed}-{file_digest(source)[:8]}-{file_digest(pair.target_gguf)[:8]}"
    dest = cache_dir / "tiny" / tag / "tiny-cross-target.gguf"
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tokenizer = gguf.GGUFReader(source)
    target_tokens = [bytes(tokenizer.fields["tokenizer.ggml.tokens"].parts[i])
                     for i in tokenizer.fields["tokenizer.ggml.tokens"].data]
    draft_reader = gguf.GGUFReader(default_draft_gguf())
    draft_tokens = [bytes(draft_reader.fields["tokenizer.ggml.tokens"].parts[i])
                    for i in draft_reader.fields["tokenizer.ggml.tokens"].data]
    draft_vocab = Vocabulary(draft_tokens, {"bos": None, "eos": None})
    target_vocab = Vocabulary(target_tokens, {"bos": None, "eos": None})
    small = _weights(len(draft_tokens), shape, np.random.default_rng(seed))  # = the tiny target
    rng = np.random.default_rng([seed, 1])
    embed = (rng.standard_normal((len(target_tokens), shape.width))
             * shape.embedding_std * OTHER_ROW_SCALE).astype(np.float32)
    for d, piece in enumerate(draft_vocab.pieces):
        if d in draft_vocab.control or draft_vocab.id_of(piece) != d:
            continue
        t = target_vocab.id_of(piece)
        if t is not None:
            embed[t] = small["token_embd.weight"][d]
    tensors = {**small, "token_embd.weight": embed}
    write_atomically(dest, lambda tmp: write_gguf(tmp, _without_arch(tokenizer), tensors, shape,
                                                  "edgespec tiny cross target"))
    return dest


class _without_arch:  # a view of a reader, named for what it leaves out
    """The Gemma reader's fields less its ``gemma3.*`` size keys (the tiny file is a llama)."""

    def __init__(self, reader: object):
        fields = reader.fields  # type: ignore[attr-defined]
        self.fields = {k: v for k, v in fields.items() if not k.startswith("gemma3.")}
