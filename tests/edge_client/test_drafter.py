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


def test_chunked_prefill_with_thread_switches_equals_one_batch(drafter, draft_gguf):
    """The prompt fed 5 tokens a decode, the threads switching between chunks (as when the
    daemon's prefill ends mid-prompt), leaves the same logits and drafts as one batch."""
    prompt = drafter.tokenize(PROMPT)
    drafter.sync(prompt)
    want_logits = drafter._logits().copy()
    want = drafter.draft(6)
    chunked = Drafter(draft_gguf, n_ctx=512, n_threads=1)
    chunked.set_threads(1, idle_threads=2)
    calls: list[int] = []

    def between() -> None:
        calls.append(chunked.llm.n_tokens)
        chunked.daemon_idle(len(calls) % 2 == 0)

    chunked.sync(prompt, chunk=5, between=between)
    assert calls == list(range(0, len(prompt), 5))
    assert abs(chunked._logits() - want_logits).max() < 1e-3
    assert chunked.draft(6, between) == want
    assert len(calls) == len(range(0, len(prompt), 5)) + 6


def test_daemon_idle_switches_between_the_two_thread_counts(drafter):
    drafter.set_threads(1, idle_threads=2)
    drafter.daemon_idle(True)
    assert drafter._threads_now == 2
    drafter.daemon_idle(False)
    assert drafter._threads_now == 1
    drafter.set_threads(1)
    drafter.daemon_idle(True)
    assert drafter._threads_now == 1
