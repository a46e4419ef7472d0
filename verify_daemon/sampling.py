"""The target distribution p, and the seeded draws verification makes from it.

p is the target's logits after the user's temperature, then top-k, then top-p: transformers'
own logits warpers in the order ``generate(do_sample=True)`` applies them, so "the target
alone" and verifyd sample from the same p.

Randomness is keyed by position: the draws that decide the token at absolute position n
come from the session's generator reseeded with (seed, n). Which tokens come out therefore
depends only on the seed and the context, never on how rounds were cut, on batching, on
other sessions, or on a re-open after the daemon lost the session.
"""

from __future__ import annotations

import torch
from edgespec.wire.codec import SamplingParams
from transformers.generation.logits_process import (
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

_MASK64 = (1 << 64) - 1


def warpers(params: SamplingParams) -> LogitsProcessorList:
    """The processors ``generate(do_sample=True, temperature=, top_k=, top_p=)`` builds."""
    out = LogitsProcessorList()
    if params.temperature != 1.0:
        out.append(TemperatureLogitsWarper(params.temperature))
    if params.top_k != 0:
        out.append(TopKLogitsWarper(top_k=params.top_k))
    if params.top_p < 1.0:
        out.append(TopPLogitsWarper(top_p=params.top_p))
    return out


def target_probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """p for each row of ``logits`` (n, V): warped in float32, softmaxed, returned float64.

    Like ``generate``, warping and softmax run in float32; float64 is only for the
    acceptance arithmetic that follows.
    """
    scores = warpers(params)(None, logits.to(torch.float32))  # type: ignore[arg-type]
    return torch.softmax(scores, dim=-1).to(torch.float64)


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def position_seed(seed: int, position: int) -> int:
    """A 63-bit seed for the draws at ``position`` of a session seeded with ``seed``."""
    return _splitmix64(seed ^ _splitmix64(position)) >> 1


def position_draws(generator: torch.Generator, seed: int, position: int) -> tuple[float, float]:
    """(u_accept, u_pick): two uniforms in [0, 1) owned by the token at ``position``."""
    generator.manual_seed(position_seed(seed, position))
    u = torch.rand(2, generator=generator, dtype=torch.float64)
    return float(u[0]), float(u[1])


def sample_index(probs: torch.Tensor, u: float) -> int:
    """Inverse-CDF draw from the (unnormalised, non-negative) row ``probs`` with uniform ``u``.

    Never returns an index of zero mass: the first index whose running sum exceeds u·total.
    """
    cdf = torch.cumsum(probs, dim=-1)
    index = int(torch.searchsorted(cdf, torch.tensor([u * float(cdf[-1])], dtype=cdf.dtype),
                                   right=True)[0])
    if index >= probs.shape[-1]:  # u·total rounded up to the total: the last index with mass
        index = int(torch.nonzero(probs).max())
    return index
