"""How the draft picks its tokens when the user samples, and the exact q it reports.

Two exact modes. An *argmax* draft (draft temperature 0) is deterministic: q is one-hot at
the drafted token, so the wire carries token ids only. A *sampled* draft draws from its own
temperature, top-k and top-p; top-k keeps q exactly sparse, so the wire carries each
position's support (ids + float32 probabilities) and the daemon's residual max(0, p − q)
stays exact. The token is drawn from precisely the float32 values sent (normalised by their
float64 sum, as the daemon does), never from a differently processed row.

The uniform deciding the draft token at absolute position n is keyed by (seed, n), like the
daemon's draws: a seeded run drafts the same tokens however rounds are cut or pipelined. In a
token tree the j-th sibling at position n is keyed by (seed, n, j); j = 0 is the chain's key.
Siblings are drawn *without replacement*: sibling j comes from q with the earlier siblings'
tokens removed and the rest renormalised (``without``), and that conditional row is what the
wire carries for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

DRAFT_STREAM = 0x0D12AF7  # keeps the draft's draws apart from anything else keyed by the seed


@dataclass(frozen=True, slots=True)
class DraftSampling:
    """The draft's own sampling settings; temperature 0 means an argmax (one-hot q) draft."""

    temperature: float = 0.0
    top_k: int = 32
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.temperature <= 100.0:
            raise ValueError("draft temperature must be in [0, 100]")
        if not 1 <= self.top_k <= 1024:
            raise ValueError("draft top-k must be in 1..1024 (q's support travels on the wire)")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError("draft top-p must be in (0, 1]")

    @property
    def sparse(self) -> bool:
        return self.temperature > 0.0


def sparse_q(logits: npt.NDArray[np.float32], ds: DraftSampling
             ) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.float32]]:
    """(ids, float32 probs) of q after temperature, then top-k, then top-p; most likely first."""
    k = min(ds.top_k, len(logits))
    ids = np.argpartition(logits, -k)[-k:]
    ids = ids[np.argsort(-logits[ids], kind="stable")]
    scaled = logits[ids].astype(np.float64) / ds.temperature
    probs = np.exp(scaled - scaled[0])
    probs /= probs.sum()
    if ds.top_p < 1.0:  # the smallest head whose mass reaches top_p
        keep = int(np.searchsorted(np.cumsum(probs), ds.top_p)) + 1
        ids, probs = ids[:keep], probs[:keep] / probs[:keep].sum()
    probs32 = probs.astype(np.float32)
    nonzero = probs32 > 0  # an underflowed tail is not in q's support
    return ids[nonzero].astype(np.int32), probs32[nonzero]


def draft_uniform(seed: int, position: int, sibling: int = 0) -> float:
    """The uniform owned by the draft token at ``position`` of a session seeded ``seed``;
    ``sibling`` j > 0 is a tree's j-th alternative there (j = 0: the chain's own key)."""
    key = [seed, position, DRAFT_STREAM] + ([sibling] if sibling else [])
    return float(np.random.default_rng(key).random())


def without(ids: npt.NDArray[np.int32], probs: npt.NDArray[np.float32], taken: Sequence[int]
            ) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.float32]]:
    """q with the ``taken`` tokens removed, renormalised (float64 sum) and sent as float32.

    The exact row a sibling drawn without replacement comes from; empty when nothing is left.
    """
    keep = ~np.isin(ids, np.asarray(taken, dtype=np.int64))
    ids, rest = ids[keep], probs[keep].astype(np.float64)
    total = rest.sum()
    if not total > 0:
        return np.zeros(0, np.int32), np.zeros(0, np.float32)
    probs32 = (rest / total).astype(np.float32)
    nonzero = probs32 > 0
    return ids[nonzero].astype(np.int32), probs32[nonzero]


def draw(ids: npt.NDArray[np.int32], probs: npt.NDArray[np.float32], u: float) -> int:
    """Inverse-CDF draw from the float32 ``probs`` exactly as sent (normalised in float64)."""
    cdf = np.cumsum(probs, dtype=np.float64)
    index = int(np.searchsorted(cdf, u * cdf[-1], side="right"))
    return int(ids[min(index, len(ids) - 1)])
