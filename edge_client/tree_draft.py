"""Token trees on the draft: which candidates each level adds, and the exact q they carry.

A tree is drafted level by level (one llama.cpp decode per level, ``Drafter.draft_tree``).
At every frontier node the draft proposes its first child (the chain's token: argmax, or the
draw keyed (seed, n)) and, only where it is unsure (top-1 probability below
``branch_below``), up to ``max_width - 1`` further siblings: the next candidates (argmax) or
draws without replacement keyed (seed, n, j) from q with the earlier siblings removed
(sampled). Which proposals enter the tree is decided by the node budget:

* the main branch (first child of first child ... of the root, seq 0) is reserved first, to
  ``max_depth``, so a tree that never branches is exactly the chain ``draft(k)`` gives;
* the rest of the budget goes, level by level, to the proposals with the highest *prior*
  score P(parent's path) x (j-th largest probability of the parent's distribution).

The score never looks at the proposal's own token, only at what came before it (the
parent's distribution, its path, the earlier siblings): for a sampled draft, keeping a draw
only when it came out likely would bias it away from the q row that is sent, and the
daemon's verification would no longer be exact. Which nodes a level gets depends only on
tokens of earlier levels, and a level's draws use uniforms keyed by its own position, so
given the path the verifier has accepted, every child's token is still a fresh draw from its
row (cousins at one depth share the key (seed, n, j); only one of them is ever verified).

The budget is spent level by level (a level's decode must be fixed before the next level's
candidates exist), so an unsure root takes its siblings before a deeper unsure node is seen.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from edgespec.edge_client.draft_sampling import (
    DraftSampling,
    draft_uniform,
    draw,
    sparse_q,
    without,
)
from edgespec.wire.codec import SparseQ

Row = tuple[npt.NDArray[np.int32], npt.NDArray[np.float32]]  # support ids, float32 probs


@dataclass(frozen=True, slots=True)
class Proposal:
    """One candidate child of a frontier node."""

    rank: int  # j: its place among its siblings (verified in this order)
    token: int
    prior: float  # the j-th largest probability of the parent's distribution (pre-draw)
    prob: float  # the token's own probability under the parent's full distribution
    row: Row | None  # the conditional q it was drawn from (sampled drafts only)


def propose(logits: npt.NDArray[np.float32], sampling: DraftSampling | None, position: int,
            max_width: int, branch_below: float) -> list[Proposal]:
    """The children a node at ``position - 1`` could get, most likely first.

    ``logits`` already masked (disallowed ids at -inf). Rank 0 is always the chain's token;
    ranks 1.. only when the top-1 probability is below ``branch_below``.
    """
    if sampling is not None and sampling.sparse:
        return _propose_sampled(logits, sampling, position, max_width, branch_below)
    return _propose_argmax(logits, max_width, branch_below)


def _propose_argmax(logits: npt.NDArray[np.float32], max_width: int, branch_below: float
                    ) -> list[Proposal]:
    top = int(logits.argmax())  # exactly next_greedy's choice (first of equal maxima)
    shifted = np.exp(logits.astype(np.float64) - float(logits[top]))
    z = float(shifted.sum())
    width = max_width if 1.0 / z < branch_below else 1
    ids = [top]
    if width > 1:
        k = min(width, len(logits))
        head = np.argpartition(-logits, k - 1)[:k]
        head = head[np.lexsort((head, -logits[head]))]  # by logit, ties by id (like argmax)
        ids += [int(t) for t in head if int(t) != top and np.isfinite(logits[t])][: width - 1]
    return [Proposal(j, t, float(shifted[t]) / z, float(shifted[t]) / z, None)
            for j, t in enumerate(ids)]


def _propose_sampled(logits: npt.NDArray[np.float32], ds: DraftSampling, position: int,
                     max_width: int, branch_below: float) -> list[Proposal]:
    ids, probs = sparse_q(logits, ds)
    width = max_width if float(probs[0]) < branch_below else 1
    full = dict(zip(ids.tolist(), probs.tolist(), strict=True))
    out: list[Proposal] = []
    row: Row = (ids, probs)
    for j in range(min(width, len(ids))):
        if j:
            row = without(ids, probs, [p.token for p in out])
            if len(row[0]) == 0:
                break
        token = draw(row[0], row[1], draft_uniform(ds.seed, position, j))
        out.append(Proposal(j, token, float(probs[j]), full[token], row))
    return out


def select(proposals: Sequence[Sequence[Proposal]], path_probs: Sequence[float],
           main: bool, budget: int, free_seqs: int) -> list[tuple[int, int]]:
    """(frontier index, rank) of the proposals one level adds, in (frontier, rank) order.

    Frontier node 0's rank 0 is taken first when ``main`` (the reserved main branch); then up
    to ``budget`` more by prior score, each sibling only after its earlier siblings (their
    rows condition on them), each rank > 0 opening a new sequence (at most ``free_seqs``).
    """
    taken = [0] * len(proposals)
    chosen: list[tuple[int, int]] = []
    if main and proposals and proposals[0]:
        chosen.append((0, 0))
        taken[0] = 1
    pool = sorted(((-path_probs[f] * p.prior, f, p.rank) for f, props in enumerate(proposals)
                   for p in props), key=lambda c: c)
    for _, f, j in pool:
        if budget <= 0:
            break
        if j != taken[f] or (j > 0 and free_seqs <= 0):
            continue
        chosen.append((f, j))
        taken[f] += 1
        budget -= 1
        free_seqs -= j > 0
    return sorted(chosen)


@dataclass(slots=True)
class TokenTree:
    """A drafted tree: nodes in level order, where each lives in the KV, what it saw."""

    context_len: int  # the root's context: node i sits at position context_len + depth - 1
    tokens: list[int]
    parents: list[int]
    depths: list[int]
    seqs: list[int]  # the llama.cpp sequence each node was decoded in (0: the main branch)
    probs: list[float]  # each node's path probability under the draft (for the priors)
    rows: list[Row] | None  # per node, the conditional q it was drawn from (sampled only)
    logits: npt.NDArray[np.float32]  # (nodes, vocab): the draft's logits after each node
    root_logits: npt.NDArray[np.float32]  # the logits the root's children came from

    def path(self, path: Sequence[int]) -> list[int]:
        """The tokens of a root-down node path; ValueError if it is not one."""
        parent = -1
        for node in path:
            if not 0 <= node < len(self.tokens) or self.parents[node] != parent:
                raise ValueError(f"{list(path)} is not a path from the root of this tree")
            parent = node
        return [self.tokens[node] for node in path]

    def q(self) -> SparseQ | None:
        """One q row per node (None for an argmax draft, whose q is one-hot)."""
        if self.rows is None:
            return None
        if not self.rows:
            return SparseQ(np.zeros(0, np.int32), np.zeros(0, np.int32),
                           np.zeros(0, np.float32))
        return SparseQ(np.array([len(r[0]) for r in self.rows], dtype=np.int32),
                       np.concatenate([r[0] for r in self.rows]).astype(np.int32),
                       np.concatenate([r[1] for r in self.rows]).astype(np.float32))
