"""The llama.cpp drafter: rollback by moving a length must equal drafting from scratch."""

from __future__ import annotations

import pytest
from edgespec.edge_client.drafter import Drafter

PROMPT = "<|im_start|>user\nName three colours.<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def drafter(draft_gguf):
    return Drafter(draft_gguf, n_ctx=512, n_threads=1)


def test_rollback_then_redraft_equals_fresh_draft(drafter):
    prompt = drafter.tokenize(PROMPT)
    drafter.sync(prompt)
    first = drafter.draft(12)
    drafter.sync(prompt + first[:4])  # roll back 8 positions
    assert drafter.draft(8) == first[4:12]
    drafter.sync(prompt)
    assert drafter.draft(12) == first


def test_sync_to_a_diverging_history_recomputes_from_the_split(drafter):
    prompt = drafter.tokenize(PROMPT)
    drafter.sync(prompt)
    base = drafter.draft(6)
    other = [*base[:2], 11, 12]  # a correction after two accepted tokens
    drafter.sync(prompt + other)
    assert drafter.tokens == prompt + other
    continued = drafter.draft(3)
    fresh = Drafter(drafter.llm.model_path, n_ctx=512, n_threads=1)
    fresh.sync(prompt + other)
    assert fresh.draft(3) == continued


def test_sync_refuses_empty_and_oversized_contexts(drafter):
    with pytest.raises(ValueError):
        drafter.sync([])
    with pytest.raises(ValueError):
        drafter.sync([1] * 600)
