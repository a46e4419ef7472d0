"""The tiny pair is what the statistical test assumes: a real llama model pair whose GGUF
and transformers forms agree, whose draft differs from its target, and which fingerprints
equal to SmolLM2 (so the daemon accepts the pairing)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow


def _llama_logits(gguf, tokens):
    from llama_cpp import Llama

    llm = Llama(str(gguf), n_ctx=64, logits_all=True, verbose=False, n_threads=1)
    llm.eval(tokens)
    return np.array(llm.scores[:len(tokens)])


def test_target_gguf_and_its_snapshot_compute_the_same_logits(tiny_pair, cache_dir):
    from edgespec.models.tiny_pair import ensure_tiny_pair
    from transformers import AutoModelForCausalLM

    target_gguf = ensure_tiny_pair(cache_dir).target_gguf
    tokens = [5965, 20334, 7302, 314]
    model = AutoModelForCausalLM.from_pretrained(tiny_pair.target_dir, dtype=torch.float32)
    with torch.inference_mode():
        hf = model(torch.tensor([tokens])).logits[0].numpy()
    assert np.abs(_llama_logits(target_gguf, tokens) - hf).max() < 0.05
    assert hf[-1].std() > 1.0  # a trained-like spread, not a near-uniform random init
    draft = _llama_logits(tiny_pair.draft_gguf, tokens)
    assert np.abs(draft - hf).max() > 0.1  # the draft is not the target


def test_tiny_pair_fingerprints_equal_to_smollm2(tiny_pair, draft_gguf):
    from edgespec.models.fingerprint import fingerprint_llama

    assert fingerprint_llama(tiny_pair.draft_gguf) == fingerprint_llama(draft_gguf)


def test_tiny_pair_is_built_once_and_deterministically(cache_dir, tmp_path):
    from edgespec.models.paths import file_digest
    from edgespec.models.tiny_pair import ensure_tiny_pair

    cached = ensure_tiny_pair(cache_dir)
    fresh = ensure_tiny_pair(tmp_path)
    assert file_digest(fresh.draft_gguf) == file_digest(cached.draft_gguf)
    assert file_digest(fresh.target_gguf) == file_digest(cached.target_gguf)
    assert ensure_tiny_pair(tmp_path) == fresh
