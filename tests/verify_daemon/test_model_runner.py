"""The paged, ragged forward pass against the plain transformers forward on the real target."""

from __future__ import annotations

import pytest
import torch

from .runner_chunks import Piece

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module",
                params=["cpu", "cpu-gemm-auto", pytest.param("cuda", marks=pytest.mark.gpu)])
def runner(request, target_dir, cache_dir):
    import torch
    from edgespec.verify_daemon.model_runner import ModelRunner

    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    device, _, gemm = request.param.partition("-gemm-")
    return ModelRunner(str(target_dir), device=device, dtype="float32", threads=1,
                       kv_budget_tokens=2048, block_size=16, gemm=gemm or "plain",
                       cache_dir=cache_dir)


@pytest.fixture(scope="module")
def reference(target_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(target_dir, dtype=torch.float32).eval()


def test_ragged_batch_over_scattered_blocks_matches_the_plain_forward(runner, reference):
    gen = torch.Generator().manual_seed(0)
    seqs = [torch.randint(0, 49_000, (n,), generator=gen).tolist() for n in (45, 6, 120, 30)]
    cached = [33, 0, 100, 29]  # what an earlier step (a prefill) already put in the pool
    tables: list[list[int]] = [[] for _ in seqs]
    spacer: list[int] = []
    for table, seq in zip(tables, seqs, strict=True):  # interleave owners of the pool
        runner.blocks.grow(table, len(seq))
        runner.blocks.grow(spacer, len(spacer) * 16 + 16)
    runner.run([Piece(t, 0, s[:c], False) for t, s, c in zip(tables, seqs, cached, strict=True)
                if c])
    logits = runner.run([Piece(t, c, s[c:], True)
                         for t, s, c in zip(tables, seqs, cached, strict=True)])
    row = 0
    with torch.inference_mode():
        for seq, c in zip(seqs, cached, strict=True):
            want = reference(torch.tensor([seq])).logits[0, c:]
            got = logits[row:row + len(seq) - c].cpu()
            row += len(seq) - c
            assert torch.allclose(got, want, atol=1e-3, rtol=0)
            assert torch.equal(got.argmax(-1), want.argmax(-1))
    assert row == logits.shape[0]
    for table in [*tables, spacer]:
        runner.blocks.release(table)


def test_draft_widths_match_the_plain_forward(runner, reference):
    """Verify passes of 1-13 tokens: the widths ``--gemm auto`` may compute another way."""
    gen = torch.Generator().manual_seed(1)
    seq = torch.randint(0, 49_000, (60,), generator=gen).tolist()
    with torch.inference_mode():
        want = reference(torch.tensor([seq])).logits[0]
    for width in range(1, 14):
        table: list[int] = []
        runner.blocks.grow(table, 40 + width)
        runner.run([Piece(table, 0, seq[:40], False)])
        got = runner.run([Piece(table, 40, seq[40:40 + width], True)]).cpu()
        assert torch.allclose(got, want[40:40 + width], atol=1e-3, rtol=0), width
        assert torch.equal(got.argmax(-1), want[40:40 + width].argmax(-1)), width
        runner.blocks.release(table)
