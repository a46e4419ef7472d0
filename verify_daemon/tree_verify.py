"""Verification of a token tree: several candidate continuations per round.

Representation (shared with the wire codec and the client):
- draft nodes d_0..d_{N-1} with ``parents``: parents[i] == -1 makes node i a child of the
  root (the session's last verified token), otherwise 0 <= parents[i] < i. Siblings are
  tried in index order; a chain is parents = [-1, 0, 1, ..., N-2].
- ``logits`` (N + 1, V): row 0 after the root, row i + 1 after node i (node i and its
  ancestors as context).
- q row i: the exact distribution d_i was drawn from on the client *given its earlier
  siblings* (sampling without replacement: the renormalised q with their tokens removed).
  No q means a deterministic draft: q_i is one-hot at d_i.
- ``position``: the absolute index a depth-1 node will have; depth d sits at position + d − 1.

Greedy: follow the first child whose token is the target's argmax; the argmax where none
matches is the next token.

Sampling (SpecInfer's multi-step speculative sampling, SpecTr): at a node with target p,
let p_0 = p and try the children x_1..x_m in order; x_j is accepted with probability
min(1, p_{j−1}(x_j) / q_j(x_j)), and on rejection p_j = norm(max(0, p_{j−1} − q_j)). The
first accepted child becomes the node and the walk goes on with its own row; when every
child is rejected (or there is none) the next token is drawn from p_m.

Why it is exact: claim that, given x_1..x_{j−1} and their rejection, the emitted token T is
distributed as p_{j−1}. For j = m + 1 it is drawn from p_m. Otherwise x_j ~ q_j whatever
happened before (q_j is its law given x_<j, and the daemon's uniforms are independent of
the draft), and p_j depends on q_j, not on x_j, so by induction
P(T = y) = min(p_{j−1}, q_j)(y) + (1 − Σ min(p_{j−1}, q_j)) · p_j(y)
         = min(p_{j−1}, q_j)(y) + max(0, p_{j−1} − q_j)(y) = p_{j−1}(y).
At j = 1, T ~ p. Given T = x_j accepted, the walk continues in x_j's subtree, drawn from
x_j's context alone, so by induction on depth every emitted token follows the target given
the tokens before it. This holds for independent siblings and for sampling without
replacement alike (a repeated token after its rejection is always rejected: it was rejected
only if p(x) < q(x), so p_j(x) = 0). A chain is the one-child case: exactly ``decide``.

Lossy modes mirror ``decide``: GREEDY (and temperatures below MIN_TEMPERATURE) take the
greedy rule; THRESHOLD also accepts a child whose probability under the node's unmodified
p reaches the threshold (the chain tests p_i(d), so a one-child tree decides the same).

Randomness is keyed by position as for the chain: at the level of depth d (the children sit
at n = position + d) the first child's uniform is ``position_draws(n)[0]`` and the final
pick ``position_draws(n)[1]``, so a chain gets ``decide``'s answer for the same seed; sibling
j >= 1 gets ``sibling_uniform(n, j)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from edgespec.verify_daemon.sampling import (
    _splitmix64,
    position_draws,
    position_seed,
    sample_index,
    target_probs,
)
from edgespec.verify_daemon.verify import (
    NonFiniteTarget,
    accept_probability,
    is_greedy,
    q_row,
    residual,
)
from edgespec.wire.codec import SamplingParams, SparseQ
from edgespec.wire.protocol import VerifyMode

QRow = tuple[torch.Tensor, torch.Tensor]  # support ids, float64 probabilities summing to 1
PICK = -1  # ``uniform(depth, PICK)``: the draw of the next token at that level
_SIBLING_SALT = 0x7EE5_1B11_0000_0000  # keeps sibling streams apart from position streams


def tree_depths(parents: Sequence[int]) -> list[int]:
    """Depth of each node (root children are 1); assumes ``check_tree`` passed."""
    depths: list[int] = []
    for parent in parents:
        depths.append(1 if parent == -1 else depths[parent] + 1)
    return depths


def check_tree(parents: Sequence[int], max_depth: int | None = None) -> None:
    """Refuse parents that are not a topologically ordered tree, or one deeper than allowed.

    The wire codec validates too; this is the daemon's own defence before it indexes rows.
    """
    for i, parent in enumerate(parents):
        if parent < -1:
            raise ValueError(f"node {i}: parent {parent} is below -1 (the root)")
        if parent >= i:
            raise ValueError(f"node {i}: parent {parent} is not an earlier node")
    if max_depth is None:
        return
    for i, depth in enumerate(tree_depths(parents)):
        if depth > max_depth:
            raise ValueError(f"node {i}: depth {depth} is past the limit {max_depth}")


def tree_children(parents: Sequence[int]) -> list[list[int]]:
    """Children of each node in index order: entry 0 is the root's, entry i + 1 node i's
    (the same offset as the logits rows)."""
    children: list[list[int]] = [[] for _ in range(len(parents) + 1)]
    for i, parent in enumerate(parents):
        children[parent + 1].append(i)
    return children


def path_tokens(draft: Sequence[int], path: Sequence[int]) -> list[int]:
    """The tokens of an accepted path, in order."""
    return [int(draft[i]) for i in path]


def sibling_uniform(generator: torch.Generator, seed: int, position: int, j: int) -> float:
    """A uniform in [0, 1) for the j-th sibling (j >= 1) tried at ``position``.

    Sibling 0 uses ``position_draws(...)[0]`` like the chain; the others need draws of their
    own, keyed the same way (seed, position) plus j, so reruns and re-opens repeat them.
    """
    if j < 1:
        raise ValueError(f"sibling {j}: the first sibling uses position_draws")
    mixed = _splitmix64(position_seed(seed, position) ^ _splitmix64(_SIBLING_SALT + j)) >> 1
    generator.manual_seed(mixed)
    return float(torch.rand(1, generator=generator, dtype=torch.float64)[0])


def sibling_plan(p: torch.Tensor, tokens: Sequence[int], q_rows: Sequence[QRow]
                 ) -> tuple[list[float], torch.Tensor]:
    """Acceptance probability of each child in order (given the earlier ones were rejected),
    and the unnormalised distribution the next token is drawn from if all are rejected.

    None of it depends on the uniforms, so the exact tests enumerate from it. With no
    children the draw is from p itself; with one it is ``decide``'s residual, bit for bit.
    """
    alphas: list[float] = []
    current, rest = p, p
    for token, (ids, probs) in zip(tokens, q_rows, strict=True):
        if not bool((ids == token).any()):
            raise ValueError(f"token {token} is outside the support of its q")
        alphas.append(accept_probability(current, ids, probs, token))
        rest = residual(current, ids, probs)
        current = rest / rest.sum()
    return alphas, rest


def walk_tree(p: torch.Tensor, draft: Sequence[int], parents: Sequence[int],
              q_rows: Sequence[QRow], threshold: float,
              uniform: Callable[[int, int], float]) -> tuple[list[int], int]:
    """The sampling rule with its randomness passed in: (path, next_token).

    ``p`` is (N + 1, V) target probabilities; ``uniform(depth, j)`` is sibling j's accept
    draw at the level whose node has that depth, ``uniform(depth, PICK)`` its final pick.
    ``decide_tree`` supplies the seeded draws; tests supply one point of each branch.
    """
    children = tree_children(parents)
    path: list[int] = []
    node = -1
    while True:
        kids = children[node + 1]
        row = p[node + 1]
        alphas, rest = sibling_plan(row, [draft[c] for c in kids], [q_rows[c] for c in kids])
        for j, child in enumerate(kids):
            if float(row[draft[child]]) >= threshold or uniform(len(path), j) < alphas[j]:
                path.append(child)
                node = child
                break
        else:
            return path, sample_index(rest, uniform(len(path), PICK))


def greedy_tree(draft: Sequence[int], parents: Sequence[int], picks: Sequence[int]
                ) -> tuple[list[int], int]:
    """(path, next_token) following the first child equal to the target's pick at each node.

    ``picks`` has N + 1 entries: the target's argmax after the root and after each node.
    """
    if len(picks) != len(draft) + 1:
        raise ValueError(f"{len(picks)} target picks for a tree of {len(draft)}")
    children = tree_children(parents)
    path: list[int] = []
    node = -1
    while True:
        wanted = int(picks[node + 1])
        match = next((c for c in children[node + 1] if int(draft[c]) == wanted), None)
        if match is None:
            return path, wanted
        path.append(match)
        node = match


def decide_tree(params: SamplingParams, generator: torch.Generator, position: int,
                draft: Sequence[int], parents: Sequence[int], q: SparseQ | None,
                logits: torch.Tensor) -> tuple[list[int], int]:
    """(path, next_token) for one tree: the accepted node indices from the root down, and the
    target's own token after them. ``logits`` is (N + 1, V); see the module docstring."""
    if len(parents) != len(draft):
        raise ValueError(f"{len(parents)} parents for a tree of {len(draft)} nodes")
    if logits.dim() != 2 or len(logits) != len(draft) + 1:
        raise ValueError(f"logits of shape {tuple(logits.shape)} for a tree of {len(draft)}")
    check_tree(parents)
    if q is not None and len(q.counts) != len(draft):
        raise ValueError(f"{len(q.counts)} q rows for a tree of {len(draft)} nodes")
    if is_greedy(params):
        picks = logits.argmax(dim=-1)
        if not bool(torch.isfinite(logits.gather(-1, picks[:, None])).all()):
            raise NonFiniteTarget("the target's logits are not finite")
        return greedy_tree(draft, parents, picks.tolist())
    p = target_probs(logits, params).cpu()  # (N + 1, V) float64
    if not bool(torch.isfinite(p).all()) or not bool((p.sum(dim=-1) > 0.5).all()):
        raise NonFiniteTarget("the target distribution is not finite")
    threshold = params.threshold if params.verify == VerifyMode.THRESHOLD else 2.0
    q_rows = [q_row(q, i, int(token)) for i, token in enumerate(draft)]

    def uniform(depth: int, j: int) -> float:
        n = position + depth
        if j == 0 or j == PICK:
            u_accept, u_pick = position_draws(generator, params.seed, n)
            return u_accept if j == 0 else u_pick
        return sibling_uniform(generator, params.seed, n, j)

    return walk_tree(p, draft, parents, q_rows, threshold, uniform)
