"""Verification of a draft: greedy matching, and exact speculative sampling.

Terms (as in vLLM's rejection sampler):
- *draft tokens* d_1..d_k: what the edge client proposed after the session's last token.
- *logits rows* l_0..l_k: the target's logits after the last verified token and after each
  draft token, from one forward pass over [last, d_1..d_k]; shape (k + 1, V).
- *p_i*: the target distribution from row i (temperature, top-k, top-p: ``sampling.py``).
- *q_i*: the distribution d_{i+1} was drawn from on the client. One-hot at d_{i+1} when the
  draft was deterministic (argmax); otherwise the sparse q sent with the draft.
- *accepted*: how many draft tokens are kept. Greedy: the longest prefix with d_i equal to
  the target's argmax. Sampling (Leviathan et al., Chen et al.): d_{i+1} is kept with
  probability min(1, p_i(d)/q_i(d)).
- *next token*: one token of the target's own after the accepted prefix. At the first
  rejection it is a *correction* drawn from norm(max(0, p_i − q_i)); after a fully accepted
  draft a *bonus* drawn from p_k. Every round therefore yields at least one token, and each
  token is distributed exactly as p given the tokens before it.

Strategies (``VerifyMode``): EXACT (the above; greedy matching at temperature 0, where p is
one-hot), GREEDY (the target's argmax whatever the temperature: lossy when sampling) and
THRESHOLD (also keep any draft token whose target probability reaches a threshold: lossy).

Vanishing temperatures: below ``MIN_TEMPERATURE`` a temperature is served as greedy. That is
the limit of p as the temperature falls to 0, and it keeps the arithmetic finite: logits
divided by 1e-38 overflow float32, softmax turns inf − inf into NaN, and NaN p would accept
every draft and draw the last id of the vocabulary. Any p that is still not finite (a
target that emits inf or NaN logits) is refused with ``NonFiniteTarget``, never sampled.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from edgespec.verify_daemon.sampling import position_draws, sample_index, target_probs
from edgespec.wire.codec import SamplingParams, SparseQ
from edgespec.wire.protocol import VerifyMode

# Below this the temperature is the greedy limit; |logit| / 1e-6 stays far inside float32
# for any logit a real model emits, so p is finite at every temperature served as sampling.
MIN_TEMPERATURE = 1e-6


class NonFiniteTarget(ValueError):
    """The target's logits or p hold inf or NaN: no token can be drawn from them."""


def greedy_accept(draft: Sequence[int], target: Sequence[int]) -> tuple[int, int]:
    """Return (accepted, next_token) for one draft and the target's argmax row.

    ``target`` has len(draft) + 1 entries: the target's pick at each position.
    """
    if len(target) != len(draft) + 1:
        raise ValueError(f"target has {len(target)} picks for a draft of {len(draft)}")
    accepted = 0
    for proposed, wanted in zip(draft, target, strict=False):
        if proposed != wanted:
            break
        accepted += 1
    return accepted, int(target[accepted])


def is_greedy(params: SamplingParams) -> bool:
    """Argmax verification: temperature 0 or below ``MIN_TEMPERATURE`` (the greedy limit,
    exact), or the GREEDY strategy (lossy if sampling)."""
    return params.temperature < MIN_TEMPERATURE or params.verify == VerifyMode.GREEDY


def q_row(q: SparseQ | None, i: int, token: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Support ids and float64 probabilities of q_i, normalised as the drafter sampled them."""
    if q is None:  # a deterministic draft: q is one-hot at the drafted token
        return torch.tensor([token]), torch.ones(1, dtype=torch.float64)
    ids, probs = q.row(i)
    probs64 = probs.astype(np.float64)
    return torch.from_numpy(ids.astype(np.int64)), torch.from_numpy(probs64 / probs64.sum())


def accept_probability(p: torch.Tensor, q_ids: torch.Tensor, q_probs: torch.Tensor,
                       token: int) -> float:
    """min(1, p(x) / q(x)) for the drafted token x (which is in q's support)."""
    qx = float(q_probs[q_ids == token][0])
    return min(1.0, float(p[token]) / qx)


def residual(p: torch.Tensor, q_ids: torch.Tensor, q_probs: torch.Tensor) -> torch.Tensor:
    """max(0, p − q), unnormalised: what a rejected position is redrawn from.

    Its mass is 0 only when p equals q, where rejection has probability 0; rounding can
    still reject there, and p itself is then the right distribution.
    """
    out = p.clone()
    out[q_ids] -= q_probs
    out.clamp_(min=0.0)
    return out if float(out.sum()) > 0.0 else p


def decide(params: SamplingParams, generator: torch.Generator, position: int,
           draft: Sequence[int], q: SparseQ | None, logits: torch.Tensor) -> tuple[int, int]:
    """(accepted, next_token) for one draft; ``logits`` is (k + 1, V) for [last, d_1..d_k].

    ``position`` is the absolute index d_1 will have in the session's tokens; the draws for
    the token at each position come from ``generator`` keyed by (seed, position).
    """
    if len(logits) != len(draft) + 1:
        raise ValueError(f"{len(logits)} logits rows for a draft of {len(draft)}")
    if is_greedy(params):
        picks = logits.argmax(dim=-1)
        if not bool(torch.isfinite(logits.gather(-1, picks[:, None])).all()):
            raise NonFiniteTarget("the target's logits are not finite")
        return greedy_accept(draft, picks.tolist())
    p = target_probs(logits, params).cpu()  # (k + 1, V) float64
    if not bool(torch.isfinite(p).all()) or not bool((p.sum(dim=-1) > 0.5).all()):
        raise NonFiniteTarget("the target distribution is not finite")
    threshold = params.threshold if params.verify == VerifyMode.THRESHOLD else 2.0
    for i, token in enumerate(draft):
        u_accept, u_pick = position_draws(generator, params.seed, position + i)
        q_ids, q_probs = q_row(q, i, token)
        if float(p[i, token]) >= threshold or u_accept < accept_probability(
                p[i], q_ids, q_probs, token):
            continue
        return i, sample_index(residual(p[i], q_ids, q_probs), u_pick)
    _, u_pick = position_draws(generator, params.seed, position + len(draft))
    return len(draft), sample_index(p[len(draft)], u_pick)
