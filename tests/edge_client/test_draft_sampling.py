"""The draft's q is exactly what it samples from: truncated, normalised, and drawn by it."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from edgespec.edge_client.draft_sampling import DraftSampling, draft_uniform, draw, sparse_q
from edgespec.edge_client.sampling_setup import SamplingOptions

LOGITS = np.log(np.array([0.05, 0.4, 0.3, 0.15, 0.1], dtype=np.float32))


def test_top_k_then_top_p_keeps_the_likeliest_head():
    ids, probs = sparse_q(LOGITS, DraftSampling(temperature=1.0, top_k=4, top_p=0.8))
    assert ids.tolist() == [1, 2, 3]  # top-4 drops id 0; 0.4 + 0.3 < 0.8 <= + 0.15 (of 0.95)
    assert probs.dtype == np.float32 and abs(float(probs.sum()) - 1.0) < 1e-6


def test_draws_follow_the_sent_probabilities():
    ids, probs = sparse_q(LOGITS, DraftSampling(temperature=0.7, top_k=3))
    n = 20_000
    got = Counter(draw(ids, probs, draft_uniform(5, pos)) for pos in range(n))
    assert set(got) <= set(ids.tolist())
    for token, p in zip(ids.tolist(), probs.astype(np.float64) / probs.sum(), strict=True):
        assert abs(got[token] / n - p) < 4 * np.sqrt(p * (1 - p) / n)


def test_draft_uniform_is_keyed_by_seed_and_position():
    assert draft_uniform(1, 10) == draft_uniform(1, 10)
    assert draft_uniform(1, 10) != draft_uniform(1, 11) != draft_uniform(2, 10)


def test_prompt_file_overrides_and_defaults():
    base = SamplingOptions(temperature=0.7, top_p=0.9, seed=3)
    s = base.with_overrides({"temperature": 1.2, "top_k": 5, "verify": "threshold"}).resolve()
    assert (s.target.temperature, s.target.top_k, s.target.top_p, s.target.seed) == (1.2, 5,
                                                                                     0.9, 3)
    assert s.draft is not None and s.draft.temperature == 1.2 and "lossy" in s.verify_label
    assert SamplingOptions(temperature=0.7, draft_temperature=0.0).resolve().draft is None
    assert SamplingOptions().resolve().target.temperature == 0.0
    with pytest.raises(ValueError):
        base.with_overrides({"seed": "x"})
    with pytest.raises(ValueError):
        base.with_overrides({"verify": "sloppy"}).resolve()
