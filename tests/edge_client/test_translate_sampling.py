"""Exact sampling across tokenizers, by enumeration: the draft samples only among tokens both
vocabularies spell alike, q is renamed to target ids, and the daemon's own accept/residual
rules then give the first two tokens exactly the target's law p1(x1) p2(x2 | x1), whatever
the vocabularies share."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from edgespec.edge_client.draft_sampling import DraftSampling, sparse_q
from edgespec.edge_client.translate import Translation, _in_target_ids
from edgespec.models.vocab import Vocabulary
from edgespec.verify_daemon.sampling import target_probs
from edgespec.verify_daemon.verify import accept_probability, q_row, residual
from edgespec.wire.codec import SamplingParams, SparseQ, check_sparse_q
from edgespec.wire.protocol import Limits

DRAFT = [b"a", b"b", b"ab", b"c", b"<|end|>", b"ba", b"x", b"a"]  # a repeated spelling too
TARGET = [b"<pad>", b"<eos>", b"<bos>", "▁".encode(), b"a", b"ab", b"b", b"cd", b"ba", b"y",
          b"<0x63>"]


def draft_q(translation: Translation, logits: np.ndarray, ds: DraftSampling) -> SparseQ:
    """What the client sends for one position: the drafter's masked logits → sparse q →
    target ids (the Drafter's own steps, without llama.cpp)."""
    allowed = translation.to_target >= 0
    masked = np.where(allowed, logits, np.float32(-np.inf)).astype(np.float32)
    ids, probs = sparse_q(masked, ds)
    q = SparseQ(np.array([len(ids)], np.int32), ids, probs)
    target_q = _in_target_ids(q, translation.to_target)
    assert target_q is not None
    return target_q


def outcome_law(p1: torch.Tensor, p2: dict[int, torch.Tensor], q1: SparseQ,
                q2: dict[int, SparseQ]) -> dict[tuple[int, int], float]:
    """The exact law of the first two tokens of a k=2 round (and, after a rejection, a new
    round whose first token is drawn from the target's p by the same rule, i.e. p itself)."""
    law: dict[tuple[int, int], float] = {}
    ids1, probs1 = q_row(q1, 0, -1)
    for d1, qd1 in zip(ids1.tolist(), probs1.tolist(), strict=True):
        a1 = accept_probability(p1, ids1, probs1, d1)
        ids2, probs2 = q_row(q2[d1], 0, -1)
        for d2, qd2 in zip(ids2.tolist(), probs2.tolist(), strict=True):
            a2 = accept_probability(p2[d1], ids2, probs2, d2)
            law[(d1, d2)] = law.get((d1, d2), 0.0) + qd1 * a1 * qd2 * a2
        rest = residual(p2[d1], ids2, probs2)
        reject2 = sum(qd2 * (1 - accept_probability(p2[d1], ids2, probs2, d2))
                      for d2, qd2 in zip(ids2.tolist(), probs2.tolist(), strict=True))
        for x2 in range(len(rest)):
            law[(d1, x2)] = law.get((d1, x2), 0.0) + qd1 * a1 * reject2 * float(
                rest[x2] / rest.sum())
        r1 = residual(p1, ids1, probs1)
        for x1 in range(len(r1)):
            share = qd1 * (1 - a1) * float(r1[x1] / r1.sum())
            for x2 in range(len(p2[x1])):
                law[(x1, x2)] = law.get((x1, x2), 0.0) + share * float(p2[x1][x2])
    return law


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("draft_top_k", [2, 32])
def test_intersection_sampling_gives_the_targets_law(seed, draft_top_k):
    translation = Translation.build(Vocabulary(list(DRAFT), {"bos": None, "eos": 4}),
                                    Vocabulary(list(TARGET), {"bos": 2, "eos": 1}))
    assert translation.to_target.tolist() == [4, 6, 5, 10, -1, 8, -1, -1]
    params = SamplingParams(temperature=0.8, top_k=0, top_p=0.95, seed=seed)
    ds = DraftSampling(temperature=0.9, top_k=draft_top_k, top_p=1.0, seed=seed)
    n_target = len(TARGET)

    def p(context: tuple[int, ...]) -> torch.Tensor:
        logits = torch.from_numpy(np.random.default_rng([seed, *context]).normal(
            0, 2, n_target)).double()
        return target_probs(logits[None], params)[0]

    def q(context: tuple[int, ...]) -> SparseQ:
        logits = np.random.default_rng([seed, 99, *context]).normal(0, 2, len(DRAFT))
        out = draft_q(translation, logits.astype(np.float32), ds)
        check_sparse_q(out.ids[:1], out, Limits())  # what the daemon would accept
        return out

    p1 = p(())
    p2 = {x: p((x,)) for x in range(n_target)}
    q1 = q(())
    q2 = {int(t): q((int(t),)) for t in q1.ids}
    law = outcome_law(p1, p2, q1, q2)
    for x1, x2 in itertools.product(range(n_target), repeat=2):
        want = float(p1[x1] * p2[x1][x2])
        # p is warped in float32 (as generate does), so it sums to 1 only within ~1e-8
        assert abs(law.get((x1, x2), 0.0) - want) < 1e-7, (x1, x2)
