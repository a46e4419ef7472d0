"""Gemma 3 through the paged ragged forward against transformers' own forward: sliding-window
(512) layers alternate with global ones and queries are scaled by ``query_pre_attn_scalar``,
so contexts below and above the window must both agree."""

from __future__ import annotations

import pytest
import torch

from .runner_chunks import Piece

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runner(gemma_dir):
    from edgespec.verify_daemon.model_runner import ModelRunner

    return ModelRunner(str(gemma_dir), device="cpu", dtype="float32", threads=1,
                       kv_budget_tokens=4096, block_size=16)


@pytest.fixture(scope="module")
def reference(gemma_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(gemma_dir, dtype=torch.float32).eval()


def test_gemma_windowed_and_global_layers_match_the_plain_forward(runner, reference):
    gen = torch.Generator().manual_seed(0)
    # (length, cached before the scored step): below the window, across it inside the scored
    # chunk, far past it after one long prefill chunk, and a short one batched beside them
    shapes = [(120, 100), (530, 505), (700, 660), (24, 0)]
    seqs = [torch.randint(10, 200_000, (n,), generator=gen).tolist() for n, _ in shapes]
    tables: list[list[int]] = [[] for _ in seqs]
    spacer: list[int] = []
    for table, seq in zip(tables, seqs, strict=True):  # interleave owners of the pool
        runner.blocks.grow(table, len(seq))
        runner.blocks.grow(spacer, len(spacer) * 16 + 16)
    runner.run([Piece(t, 0, s[:c], False)
                for t, s, (_, c) in zip(tables, seqs, shapes, strict=True) if c])
    logits = runner.run([Piece(t, c, s[c:], True)
                         for t, s, (_, c) in zip(tables, seqs, shapes, strict=True)])
    row = 0
    with torch.inference_mode():
        for seq, (n, c) in zip(seqs, shapes, strict=True):
            want = reference(torch.tensor([seq]), logits_to_keep=n - c).logits[0]
            got = logits[row:row + n - c].cpu()
            row += n - c
            err = float((got - want).abs().max())
            assert err < 2e-3, f"length {n}: max logit error {err:.3g}"
            assert torch.equal(got.argmax(-1), want.argmax(-1))
    assert row == logits.shape[0]
    for table in [*tables, spacer]:
        runner.blocks.release(table)


def test_window_mask_drops_keys_older_than_the_window():
    from edgespec.verify_daemon.model_runner import _Group

    q = torch.tensor([[[[0], [3], [5]]]])  # [G=1, 1, Q=3, 1]
    mask = torch.arange(6)[None, None, None, :] <= q
    group = _Group(torch.zeros(3, dtype=torch.long), torch.zeros(1, 3, dtype=torch.long),
                   torch.zeros(1, 6, dtype=torch.long), mask, torch.zeros(3, dtype=torch.long),
                   q)
    windowed = group.mask_for(3)
    assert windowed[0, 0].int().tolist() == [[1, 0, 0, 0, 0, 0], [0, 1, 1, 1, 0, 0],
                                             [0, 0, 0, 1, 1, 1]]
    assert group.mask_for(None) is mask
