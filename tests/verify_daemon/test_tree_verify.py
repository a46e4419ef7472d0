"""Tree verification is exact: enumerate small trees and vocabularies, compare with p to 1e-9.

The exact test enumerates every way the client can draw a tree of a fixed shape (children
independent, without replacement, or deterministic; repeated tokens among siblings
included), computes the verifier's output law for each drawn tree from ``sibling_plan``
(the acceptance probabilities and residual ``walk_tree`` decides with), completes each
output from the true p, and checks every completed sequence has the target's probability.
``walk_tree`` itself is then driven through every branch with one uniform inside each
branch, and ``decide_tree``'s seeded draws are checked against ``decide`` on chains and
against the exact law by a chi-square on a tree.
"""

from __future__ import annotations

import itertools
import math
import random
from collections import Counter, defaultdict
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from edgespec.verify_daemon.sampling import position_draws, target_probs
from edgespec.verify_daemon.tree_verify import (
    PICK,
    check_tree,
    decide_tree,
    greedy_tree,
    path_tokens,
    sibling_plan,
    sibling_uniform,
    tree_children,
    tree_depths,
    walk_tree,
)
from edgespec.verify_daemon.verify import NonFiniteTarget, decide, q_row
from edgespec.wire.codec import SamplingParams, SparseQ
from edgespec.wire.protocol import VerifyMode

V = 4
Row = dict[int, float]  # a q row: token -> probability
Prefix = tuple[int, ...]

SHAPES = {
    "fan": [-1, -1, -1],  # three root children
    "bushy": [-1, -1, 0, 0, 1, 2],  # the right branch is the second sibling, and deeper
    "interleaved": [-1, 0, -1, 1, 1, 2],  # siblings not adjacent in index order
    "chain": [-1, 0, 1],
}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: torch's thread pool only adds synchronisation (badly, on a busy box)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class Model:
    """Target p (full support) and the drafter's base q (``support`` ids), memoised by the
    token prefix, so repeated tokens share rows as the real target's context would."""

    def __init__(self, seed: int, support: tuple[int, ...]):
        self.rng = random.Random(seed)
        self.support = support
        self._p: dict[Prefix, torch.Tensor] = {}
        self._q: dict[Prefix, Row] = {}

    def p(self, prefix: Prefix) -> torch.Tensor:
        if prefix not in self._p:
            w = torch.tensor([self.rng.random() ** 2 + 1e-3 for _ in range(V)],
                             dtype=torch.float64)
            self._p[prefix] = w / w.sum()
        return self._p[prefix]

    def q(self, prefix: Prefix) -> Row:
        if prefix not in self._q:
            ids = self.rng.sample(range(V), self.rng.choice(self.support))
            w = [self.rng.random() + 0.05 for _ in ids]
            self._q[prefix] = {i: x / sum(w) for i, x in zip(ids, w, strict=True)}
        return self._q[prefix]

    def target(self, seq: Prefix) -> float:
        return math.prod(float(self.p(seq[:i])[t]) for i, t in enumerate(seq))


def tensors(row: Row) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(list(row)), torch.tensor(list(row.values()), dtype=torch.float64)


def prefix_of(parents: list[int], tokens: list[int], node: int) -> Prefix:
    """Tokens from the root down to ``node`` (-1: the root, the empty prefix)."""
    out: list[int] = []
    while node != -1:
        out.append(tokens[node])
        node = parents[node]
    return tuple(reversed(out))


def tree_draws(model: Model, parents: list[int], mode: str
               ) -> Iterator[tuple[list[int], float, list[Row]]]:
    """Every tree the client can draw for this shape: (tokens, probability, q rows).

    Node i's row is its law given its earlier siblings: the base q ("independent"), the
    base q without their tokens ("without"), or one-hot at a fixed pick ("deterministic",
    which repeats the first sibling's token at the third).
    """
    n = len(parents)

    def rec(i: int, tokens: list[int], weight: float, rows: list[Row]
            ) -> Iterator[tuple[list[int], float, list[Row]]]:
        if i == n:
            yield list(tokens), weight, list(rows)
            return
        prefix = prefix_of(parents, tokens, parents[i])
        earlier = [tokens[s] for s in range(i) if parents[s] == parents[i]]
        base = model.q(prefix)
        if mode == "deterministic":
            ranking = sorted(range(V), key=lambda t: -float(model.p(prefix)[t]) + 0.3 * (t % 2))
            row = {ranking[(0, 1, 0)[len(earlier)]]: 1.0}
        elif mode == "without":
            left = {t: x for t, x in base.items() if t not in earlier}
            row = {t: x / sum(left.values()) for t, x in left.items()}
        else:
            row = base
        for token, qx in row.items():
            yield from rec(i + 1, [*tokens, token], weight * qx, [*rows, row])

    yield from rec(0, [], 1.0, [])


class Law:
    """The verifier's output law over all drawn trees, from ``sibling_plan``."""

    def __init__(self, model: Model):
        self.model = model
        self.out: dict[Prefix, float] = defaultdict(float)
        self.later_sibling = 0.0  # mass of outputs that accepted a sibling other than the first
        self.depths: dict[int, float] = defaultdict(float)  # mass of each accepted path length
        self._plans: dict[tuple, tuple[list[float], torch.Tensor]] = {}

    def plan(self, prefix: Prefix, tokens: list[int], rows: list[Row]
             ) -> tuple[list[float], torch.Tensor]:
        key = (prefix, tuple(tokens), tuple(tuple(r.items()) for r in rows))
        if key not in self._plans:
            self._plans[key] = sibling_plan(self.model.p(prefix), tokens,
                                            [tensors(r) for r in rows])
        return self._plans[key]

    def add(self, parents: list[int], tokens: list[int], weight: float, rows: list[Row]
            ) -> None:
        children = tree_children(parents)

        def visit(node: int, prefix: Prefix, weight: float, later: bool) -> None:
            kids = children[node + 1]
            alphas, rest = self.plan(prefix, [tokens[c] for c in kids], [rows[c] for c in kids])
            reach = weight
            for j, child in enumerate(kids):
                if reach * alphas[j] > 0:
                    visit(child, (*prefix, tokens[child]), reach * alphas[j], later or j > 0)
                reach *= 1.0 - alphas[j]
            self.depths[len(prefix)] += reach
            self.later_sibling += reach if later else 0.0
            total = float(rest.sum())
            for y in range(V):
                self.out[(*prefix, y)] += reach * float(rest[y]) / total

        visit(-1, (), weight, False)

    def completed(self, length: int) -> dict[Prefix, float]:
        """Each output extended to ``length`` tokens from the true p (the next rounds)."""
        full: dict[Prefix, float] = defaultdict(float)
        for seq, w in self.out.items():
            for ext in itertools.product(range(V), repeat=length - len(seq)):
                whole = seq + ext
                full[whole] += w * self.model.target(whole) / self.model.target(seq)
        return full


def random_shape(rng: random.Random, n: int) -> list[int]:
    """A random tree of ``n`` nodes, depth <= 3, at most 3 children a node."""
    parents: list[int] = []
    while len(parents) < n:
        depths = tree_depths(parents)
        options = [-1, *(i for i in range(len(parents)) if depths[i] < 3)]
        parent = rng.choice(options)
        if sum(p == parent for p in parents) < 3:
            parents.append(parent)
    return parents


# How each mode's base q is drawn: its support sizes. "one_hot" draws siblings independently
# from a one-hot q, so they all repeat one token; "deterministic" sends no q at all.
SUPPORT = {"independent": (2, 3), "one_hot": (1,), "without": (3, 4), "deterministic": (1,)}
CASES = [(name, mode, seed) for name in SHAPES for mode in SUPPORT for seed in (0, 1)]
CASES += [(f"random{seed}", mode, seed) for seed in (2, 3, 4) for mode in SUPPORT]


@pytest.mark.parametrize(("shape", "mode", "seed"), CASES)
def test_every_completed_sequence_has_the_target_probability(shape, mode, seed):
    parents = SHAPES.get(shape) or random_shape(random.Random(seed), 5)
    model = Model(seed, support=SUPPORT[mode])
    law = Law(model)
    drawn = 0.0
    for tokens, weight, rows in tree_draws(model, parents, mode):
        law.add(parents, tokens, weight, rows)
        drawn += weight
    assert drawn == pytest.approx(1.0, abs=1e-12)
    depth = max(tree_depths(parents))
    full = law.completed(depth + 1)
    assert sum(full.values()) == pytest.approx(1.0, abs=1e-12)
    for seq in itertools.product(range(V), repeat=depth + 1):
        assert abs(full.get(seq, 0.0) - model.target(seq)) < 1e-9, seq
    # every branch carries weight: each path length, and a later sibling's acceptance
    assert all(law.depths[d] > 1e-6 for d in range(depth + 1)), dict(law.depths)
    if mode == "one_hot":  # a repeat of a rejected token is never kept
        assert law.later_sibling == 0.0
    elif shape in SHAPES and shape != "chain":
        assert law.later_sibling > 1e-3


def test_sibling_plan_matches_the_formulas():
    """Independent arithmetic: p_j = norm(max(0, p_{j-1} - q_j)), alpha = min(1, p/q)."""
    rng = random.Random(5)
    for _ in range(50):
        model = Model(rng.randrange(1 << 30), support=(1, 2, 3))
        p = model.p(())
        rows = [model.q((j,)) for j in range(rng.randint(0, 3))]
        tokens = [rng.choice(list(r)) for r in rows]
        alphas, rest = sibling_plan(p, tokens, [tensors(r) for r in rows])
        cur = p.tolist()
        for token, row, alpha in zip(tokens, rows, alphas, strict=True):
            assert alpha == pytest.approx(min(1.0, cur[token] / row[token]), abs=1e-12)
            r = [max(0.0, cur[t] - row.get(t, 0.0)) for t in range(V)]
            cur = [x / sum(r) for x in r] if sum(r) > 0 else cur
        assert (rest / rest.sum()).tolist() == pytest.approx(cur, abs=1e-12)


def test_residual_of_a_rejected_one_hot_sibling_zeroes_its_token():
    p = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    at_0 = (torch.tensor([0]), torch.ones(1, dtype=torch.float64))
    at_1 = (torch.tensor([1]), torch.ones(1, dtype=torch.float64))
    alphas, rest = sibling_plan(p, [0, 0, 1], [at_0, at_0, at_1])
    assert alphas == [0.5, 0.0, pytest.approx(0.6)]  # a repeat after rejection is never kept
    assert (rest / rest.sum()).tolist() == [0.0, 0.0, 1.0]


# ---------------------------------------------------------------- walk_tree's branches


def branches(model: Model, parents: list[int], tokens: list[int], rows: list[Row]
             ) -> Iterator[tuple[dict[tuple[int, int], float], tuple[list[int], int], float]]:
    """(one uniform inside each decision's branch, the outcome it leads to, its probability)
    for every outcome of positive probability."""
    children = tree_children(parents)

    def visit(node: int, prefix: Prefix, path: list[int], script: dict, weight: float
              ) -> Iterator[tuple[dict[tuple[int, int], float], tuple[list[int], int], float]]:
        kids = children[node + 1]
        alphas, rest = sibling_plan(model.p(prefix), [tokens[c] for c in kids],
                                    [tensors(rows[c]) for c in kids])
        depth = len(path)
        for j, child in enumerate(kids):
            if alphas[j] > 0:
                yield from visit(child, (*prefix, tokens[child]), [*path, child],
                                 {**script, (depth, j): alphas[j] / 2}, weight * alphas[j])
            if alphas[j] >= 1:
                return
            script = {**script, (depth, j): (1 + alphas[j]) / 2}
            weight *= 1 - alphas[j]
        cdf = torch.cumsum(rest, 0) / rest.sum()
        for y in range(V):
            if rest[y] > 0:
                low = float(cdf[y - 1]) if y else 0.0
                yield ({**script, (depth, PICK): (low + float(cdf[y])) / 2}, (path, y),
                       weight * float(rest[y] / rest.sum()))

    yield from visit(-1, (), [], {}, 1.0)


def test_walk_tree_takes_each_branch_its_uniforms_select():
    rng = random.Random(11)
    for trial in range(40):
        parents = random_shape(rng, rng.randint(1, 6))
        mode = list(SUPPORT)[trial % 4]
        model = Model(trial, support=SUPPORT[mode])
        draws = list(tree_draws(model, parents, mode))
        tokens, _, rows = draws[rng.randrange(len(draws))]
        p = torch.stack([model.p(prefix_of(parents, tokens, i)) for i in range(-1, len(tokens))])
        q_rows = [tensors(r) for r in rows]
        total = 0.0
        for script, outcome, weight in branches(model, parents, tokens, rows):
            got = walk_tree(p, tokens, parents, q_rows, 2.0, lambda d, j, s=script: s[(d, j)])
            assert got == outcome
            total += weight
        assert total == pytest.approx(1.0, abs=1e-12)


# ---------------------------------------------------------------- greedy


def peaked(picks: list[int], vocab: int = 6) -> torch.Tensor:
    logits = torch.zeros(len(picks), vocab)
    for row, t in enumerate(picks):
        logits[row, t] = 5.0
    return logits


GREEDY = SamplingParams(temperature=0.0, seed=1)


def test_greedy_follows_the_second_sibling_deeper():
    parents, draft = [-1, -1, 1, 1, 3], [1, 2, 4, 5, 0]
    picks = [2, 0, 5, 0, 0, 3]  # after root: 2 (node 1); after node 1: 5 (node 3); then 0, 3
    assert greedy_tree(draft, parents, picks) == ([1, 3, 4], 3)
    assert decide_tree(GREEDY, torch.Generator(), 0, draft, parents, None,
                       peaked(picks)) == ([1, 3, 4], 3)
    assert path_tokens(draft, [1, 3, 4]) == [2, 5, 0]


def test_greedy_no_match_at_the_root_returns_the_argmax():
    assert decide_tree(GREEDY, torch.Generator(), 0, [1, 2], [-1, -1], None,
                       peaked([3, 0, 0])) == ([], 3)
    assert decide_tree(GREEDY, torch.Generator(), 0, [], [], None, peaked([4])) == ([], 4)


def test_greedy_takes_the_first_of_repeated_siblings():
    assert greedy_tree([2, 2, 5], [-1, -1, 1], [2, 1, 5, 0]) == ([0], 1)
    verify_greedy = SamplingParams(temperature=0.8, verify=VerifyMode.GREEDY)
    assert decide_tree(verify_greedy, torch.Generator(), 0, [2, 2, 5], [-1, -1, 1], None,
                       peaked([2, 1, 5, 0])) == ([0], 1)


# ---------------------------------------------------------------- against decide on chains


def random_chain_case(rng: random.Random):
    vocab, k = rng.randint(3, 40), rng.randint(0, 5)
    gen = torch.Generator().manual_seed(rng.randrange(1 << 30))
    logits = torch.randn(k + 1, vocab, generator=gen)
    logits *= rng.choice((0.5, 2.0, 6.0))
    verify = rng.choice((VerifyMode.EXACT, VerifyMode.EXACT, VerifyMode.GREEDY,
                         VerifyMode.THRESHOLD))
    params = SamplingParams(temperature=rng.choice((0.0, 0.3, 1.0, 1.5)),
                            top_k=rng.choice((0, 0, 3)), top_p=rng.choice((1.0, 1.0, 0.8)),
                            seed=rng.randrange(1 << 62), verify=verify,
                            threshold=0.2 if verify == VerifyMode.THRESHOLD else 0.0)
    draft = [int(logits[i].argmax()) if rng.random() < 0.6 else rng.randrange(vocab)
             for i in range(k)]
    q = None
    if rng.random() < 0.6:
        counts, ids, probs = [], [], []
        for token in draft:
            support = [token, *rng.sample([t for t in range(vocab) if t != token],
                                          rng.randint(0, 2))]
            w = np.array([rng.random() + 0.05 for _ in support], dtype=np.float32)
            counts.append(len(support))
            ids += support
            probs += list(w / w.sum())
        q = SparseQ(np.array(counts, dtype=np.int32), np.array(ids, dtype=np.int32),
                    np.array(probs, dtype=np.float32))
    return params, rng.randrange(1 << 20), draft, q, logits


def test_a_chain_decides_exactly_as_decide():
    rng = random.Random(2024)
    kept: Counter[bool] = Counter()
    for _ in range(400):
        params, position, draft, q, logits = random_chain_case(rng)
        accepted, token = decide(params, torch.Generator(), position, draft, q, logits)
        parents = list(range(-1, len(draft) - 1))
        got = decide_tree(params, torch.Generator(), position, draft, parents, q, logits)
        assert got == (list(range(accepted)), token)
        kept[accepted == len(draft)] += 1
    assert kept[True] > 40 and kept[False] > 40  # full acceptances and rejections both met


# ---------------------------------------------------------------- decide_tree's draws


def tree_case() -> tuple[list[int], list[int], SparseQ, torch.Tensor]:
    """Three root children drawn without replacement (tokens 1, 2, 0), one grandchild."""
    parents, draft = [-1, -1, -1, 1], [1, 2, 0, 3]
    base = {1: 0.5, 2: 0.3, 0: 0.2}
    rows = [base, {2: 0.6, 0: 0.4}, {0: 1.0}, {3: 0.7, 4: 0.3}]
    q = SparseQ(np.array([len(r) for r in rows], dtype=np.int32),
                np.array([t for r in rows for t in r], dtype=np.int32),
                np.array([x for r in rows for x in r.values()], dtype=np.float32))
    rng = random.Random(3)
    p = [[0.4, 0.1, 0.4, 0.05, 0.05]]  # each root child is kept with probability > 0.1
    p += [[rng.random() + 0.05 for _ in range(5)] for _ in range(4)]
    logits = torch.log(torch.tensor(p))
    return parents, draft, q, logits


def test_decide_tree_draws_by_the_exact_law():
    parents, draft, q, logits = tree_case()
    params = SamplingParams(temperature=1.0, seed=777)
    p = target_probs(logits, params)
    want: dict[tuple[tuple[int, ...], int], float] = defaultdict(float)
    children = tree_children(parents)
    rows = [q_row(q, i, token) for i, token in enumerate(draft)]

    def visit(node: int, path: tuple[int, ...], weight: float) -> None:
        kids = children[node + 1]
        alphas, rest = sibling_plan(p[node + 1], [draft[c] for c in kids], [rows[c] for c in kids])
        for j, child in enumerate(kids):
            visit(child, (*path, child), weight * alphas[j])
            weight *= 1 - alphas[j]
        for y in range(5):
            want[(path, y)] += weight * float(rest[y] / rest.sum())

    visit(-1, (), 1.0)
    for first in (0, 1, 2):
        assert sum(w for (path, _), w in want.items() if path[:1] == (first,)) > 0.1
    n = 3000
    gen = torch.Generator()
    got: Counter[tuple[tuple[int, ...], int]] = Counter()
    for pos in range(n):
        path, token = decide_tree(params, gen, pos, draft, parents, q, logits)
        got[(tuple(path), token)] += 1
    assert set(got) <= {c for c, w in want.items() if w > 0}
    stat = sum((got[c] - n * w) ** 2 / (n * w) for c, w in want.items() if w > 0)
    df = sum(w > 0 for w in want.values()) - 1
    assert stat < df + 6 * math.sqrt(2 * df)  # far beyond chance (about 4 sigma) fails


def test_seeded_reruns_repeat_and_seeds_differ():
    parents, draft, q, logits = tree_case()
    params = SamplingParams(temperature=1.0, seed=42)
    first = [decide_tree(params, torch.Generator(), pos, draft, parents, q, logits)
             for pos in range(60)]
    gen = torch.Generator()
    again = [decide_tree(params, gen, pos, draft, parents, q, logits) for pos in range(60)]
    assert first == again
    other = SamplingParams(temperature=1.0, seed=43)
    assert first != [decide_tree(other, gen, pos, draft, parents, q, logits)
                     for pos in range(60)]


def test_sibling_uniforms_are_keyed_and_apart_from_the_position_draws():
    gen = torch.Generator()
    a = [sibling_uniform(gen, 9, 100, j) for j in (1, 2, 3)]
    assert a == [sibling_uniform(torch.Generator(), 9, 100, j) for j in (1, 2, 3)]
    assert len(set(a)) == 3 and all(0.0 <= u < 1.0 for u in a)
    assert not set(a) & set(position_draws(gen, 9, 100))
    assert sibling_uniform(gen, 9, 101, 1) != a[0] and sibling_uniform(gen, 8, 100, 1) != a[0]
    with pytest.raises(ValueError):
        sibling_uniform(gen, 9, 100, 0)


def test_threshold_accepts_a_likely_later_sibling():
    logits = torch.log(torch.tensor([[0.05, 0.4, 0.55], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]))
    exact = SamplingParams(temperature=1.0, seed=3)
    lossy = SamplingParams(temperature=1.0, seed=3, verify=VerifyMode.THRESHOLD, threshold=0.3)
    exact_paths = [decide_tree(exact, torch.Generator(), n, [0, 1], [-1, -1], None, logits)[0]
                   for n in range(200)]
    lossy_paths = [decide_tree(lossy, torch.Generator(), n, [0, 1], [-1, -1], None, logits)[0]
                   for n in range(200)]
    assert sum(p == [] for p in exact_paths) > 60  # exact rejects both about 57 % of the time
    assert all(p in ([0], [1]) for p in lossy_paths) and lossy_paths.count([1]) > 150


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize("params", [GREEDY, SamplingParams(temperature=1.0)],
                         ids=["greedy", "sampling"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_target_is_refused(params, bad):
    logits = torch.zeros(3, 4)
    logits[1, 2] = bad
    with pytest.raises(NonFiniteTarget):
        decide_tree(params, torch.Generator(), 0, [1, 2], [-1, -1], None, logits)


@pytest.mark.parametrize(("draft", "parents", "rows", "match"), [
    ([1, 2], [-1], 3, "parents"),
    ([1, 2], [-1, -1], 2, "logits"),
    ([1, 2], [-1, 1], 3, "not an earlier node"),
    ([1, 2], [-1, -2], 3, "below -1"),
    ([1], [0], 2, "not an earlier node"),
])
def test_malformed_trees_are_refused(draft, parents, rows, match):
    with pytest.raises(ValueError, match=match):
        decide_tree(GREEDY, torch.Generator(), 0, draft, parents, None, torch.zeros(rows, 4))


def test_check_tree_depth_limit_and_helpers():
    parents = [-1, 0, 1, -1, 3]
    assert tree_depths(parents) == [1, 2, 3, 1, 2]
    assert tree_children(parents) == [[0, 3], [1], [2], [], [4], []]
    check_tree(parents, max_depth=3)
    with pytest.raises(ValueError, match="past the limit 2"):
        check_tree(parents, max_depth=2)


def test_q_must_cover_each_node_and_its_token():
    params = SamplingParams(temperature=1.0)
    q = SparseQ(np.array([1], dtype=np.int32), np.array([1], dtype=np.int32),
                np.array([1.0], dtype=np.float32))
    with pytest.raises(ValueError, match="q rows"):
        decide_tree(params, torch.Generator(), 0, [1, 2], [-1, -1], q, torch.zeros(3, 4))
    with pytest.raises(ValueError, match="outside the support"):
        decide_tree(params, torch.Generator(), 0, [2], [-1], q, torch.zeros(2, 4))
