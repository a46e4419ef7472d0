"""Token trees through the paged forward: each node scored after its own path, batched beside
chains and prefills, the accepted path moved into place with ``move_kv``, and a chain given
as parents identical to a plain chain. Mostly on the tiny random-weight target (fast), once on
the real SmolLM2 target, and across Gemma 3's sliding window when its snapshot is cached."""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
import pytest
import torch

from .runner_chunks import Piece

pytestmark = pytest.mark.slow

ATOL = 1e-4  # float32, one thread


def random_tree(rng: random.Random, vocab: int) -> tuple[list[int], list[int]]:
    """(tokens, parents) of a tree of width 2-3 per level and depth 3-4 under a root, its
    nodes in breadth-first or depth-first order (both keep parents[i] < i)."""
    depth = rng.randint(3, 4)
    levels: list[list[int]] = [[0]]
    parent_of: dict[int, int] = {0: -1}
    next_id = 1
    for _ in range(depth):
        level = []
        for _ in range(rng.randint(2, 3)):
            parent_of[next_id] = rng.choice(levels[-1])
            level.append(next_id)
            next_id += 1
        levels.append(level)
    if rng.random() < 0.5:  # depth-first: renumber by a preorder walk
        children: dict[int, list[int]] = {}
        for node, parent in parent_of.items():
            children.setdefault(parent, []).append(node)
        order, stack = [], [0]
        while stack:
            node = stack.pop()
            order.append(node)
            stack.extend(reversed(children.get(node, [])))
        renumber = {old: new for new, old in enumerate(order)}
        parent_of = {renumber[n]: (renumber[p] if p >= 0 else -1) for n, p in parent_of.items()}
    n = len(parent_of)
    parents = [parent_of[i] for i in range(n)]
    tokens = [rng.randrange(100, vocab) for _ in range(n)]
    return tokens, parents


def path_to(parents: Sequence[int], node: int) -> list[int]:
    """Chunk indices from the root to ``node``, root first."""
    path = [node]
    while parents[path[-1]] >= 0:
        path.append(parents[path[-1]])
    return path[::-1]


def make_runner(model_dir, kv_tokens: int = 4096):
    from edgespec.verify_daemon.model_runner import ModelRunner

    return ModelRunner(str(model_dir), device="cpu", dtype="float32", threads=1,
                       kv_budget_tokens=kv_tokens, block_size=16)


def new_table(runner, length: int, spacer: list[int]) -> list[int]:
    """A table for ``length`` tokens, its blocks interleaved with another owner's."""
    table: list[int] = []
    for upto in range(16, length + 16, 16):
        runner.blocks.grow(table, min(upto, length))
        runner.blocks.grow(spacer, len(spacer) * 16 + 16)
    return table


def prefilled(runner, ctx: list[int], extra: int, spacer: list[int]) -> list[int]:
    table = new_table(runner, len(ctx) + extra, spacer)
    runner.run([Piece(table, 0, ctx, False)])
    return table


@pytest.fixture(scope="module")
def tiny(tiny_pair):
    return make_runner(tiny_pair.target_dir)


@pytest.fixture(scope="module")
def tiny_reference(tiny_pair):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_pair.target_dir,
                                                dtype=torch.float32).eval()


def check_tree_against_reference(runner, reference, seed: int, context: int) -> float:
    """Every node's row against the reference's last row on context + root + its path."""
    rng = random.Random(seed)
    vocab = min(runner.info.vocab_size, 49_000)
    ctx = [rng.randrange(100, vocab) for _ in range(context)]
    tokens, parents = random_tree(rng, vocab)
    spacer: list[int] = []
    table = prefilled(runner, ctx, len(tokens), spacer)
    got = runner.run([Piece(table, context, tokens, True, parents)])
    assert got.shape[0] == len(tokens)
    worst = 0.0
    with torch.inference_mode():
        for node in range(len(tokens)):
            seq = ctx + [tokens[i] for i in path_to(parents, node)]
            want = reference(torch.tensor([seq]), logits_to_keep=1).logits[0, -1]
            err = float((got[node] - want).abs().max())
            worst = max(worst, err)
            assert torch.equal(got[node].argmax(), want.argmax()), f"node {node}"
    for t in (table, spacer):
        runner.blocks.release(t)
    assert worst < ATOL, f"max logit difference {worst:.3g}"
    return worst


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_each_tree_node_scores_like_its_path_alone(tiny, tiny_reference, seed):
    worst = check_tree_against_reference(tiny, tiny_reference, seed, context=37 + 20 * seed)
    print(f"tiny target, seed {seed}: max |logit difference| {worst:.3g}")


def test_tree_on_the_real_target(target_dir):
    from transformers import AutoModelForCausalLM

    runner = make_runner(target_dir, kv_tokens=512)
    reference = AutoModelForCausalLM.from_pretrained(target_dir, dtype=torch.float32).eval()
    worst = check_tree_against_reference(runner, reference, seed=5, context=41)
    print(f"SmolLM2-135M: max |logit difference| {worst:.3g}")


def test_tree_batched_with_chains_and_a_prefill_matches_each_alone(tiny):
    rng = random.Random(7)
    tokens, parents = random_tree(rng, 40_000)
    ctxs = [[rng.randrange(100, 40_000) for _ in range(n)] for n in (50, 23, 70, 0)]
    news = [tokens, [rng.randrange(100, 40_000) for _ in range(9)],
            [rng.randrange(100, 40_000) for _ in range(7)],
            [rng.randrange(100, 40_000) for _ in range(45)]]
    logits = [True, True, True, False]
    trees = [parents, None, None, None]
    spacer: list[int] = []
    copies = [[prefilled(tiny, c, len(n) + 1, spacer) if c else new_table(tiny, len(n) + 1,
                                                                        spacer)
               for c, n in zip(ctxs, news, strict=True)] for _ in range(2)]

    def pieces(tables: list[list[int]]) -> list[Piece]:
        return [Piece(t, len(c), n, lg, p)
                for t, c, n, lg, p in zip(tables, ctxs, news, logits, trees, strict=True)]

    together = tiny.run(pieces(copies[0]))
    alone = torch.cat([tiny.run([p]) for p in pieces(copies[1])])
    assert together.shape == alone.shape == (len(tokens) + 9 + 7, tiny.info.vocab_size)
    worst = float((together - alone).abs().max())
    assert worst < ATOL, worst
    # the prefill's K/V: the next token after it reads the same in both copies
    after = [tiny.run([Piece(t[3], 45, [123], True)]) for t in copies]
    assert float((after[0] - after[1]).abs().max()) < ATOL
    for t in [*copies[0], *copies[1], spacer]:
        tiny.blocks.release(t)


def test_accepted_side_branch_moved_into_place_continues_like_a_chain(tiny, tiny_reference):
    rng = random.Random(11)
    tokens, parents = random_tree(rng, 40_000)
    ctx = [rng.randrange(100, 40_000) for _ in range(29)]
    start = len(ctx)
    # the deepest node whose path leaves the first-child line (some a_d != d)
    side = max((i for i in range(len(tokens))
                if any(a != d for d, a in enumerate(path_to(parents, i)))),
               key=lambda i: (len(path_to(parents, i)), i))
    path = path_to(parents, side)
    m = len(path) - 1
    assert any(a != d for d, a in enumerate(path))
    spacer: list[int] = []
    table = prefilled(tiny, ctx, len(tokens) + 8, spacer)
    tiny.run([Piece(table, start, tokens, True, parents)])
    tiny.move_kv(table, [(start + path[d], start + d) for d in range(1, m + 1)])
    assert tiny.blocks.truncate(table, start + m + 1) == start + m + 1
    nxt = [rng.randrange(100, 40_000) for _ in range(4)]
    tiny.blocks.grow(table, start + m + 1 + len(nxt))
    got = tiny.run([Piece(table, start + m + 1, nxt, True)])

    chained = [*ctx, *(tokens[i] for i in path)]
    other = prefilled(tiny, chained, len(nxt), spacer)
    want = tiny.run([Piece(other, len(chained), nxt, True)])
    worst = float((got - want).abs().max())
    assert worst < ATOL, worst
    with torch.inference_mode():
        ref = tiny_reference(torch.tensor([chained + nxt]), logits_to_keep=len(nxt)).logits[0]
    assert float((got - ref).abs().max()) < ATOL
    for t in (table, other, spacer):
        tiny.blocks.release(t)


def test_move_kv_copies_in_the_given_order(tiny):
    table: list[int] = []
    tiny.blocks.grow(table, 40)
    slots = tiny.blocks.slots(table, 0, 40)
    marks = torch.arange(40, dtype=tiny.k_pool.dtype)
    tiny.k_pool[:, slots] = marks[None, :, None, None]
    tiny.v_pool[:, slots] = -marks[None, :, None, None]

    def at(i: int) -> tuple[float, float]:
        return float(tiny.k_pool[-1, slots[i], 0, 0]), float(tiny.v_pool[0, slots[i], -1, -1])

    tiny.move_kv(table, [(20, 17), (33, 18), (35, 19)])  # a path: one gather and scatter
    assert [at(i) for i in (17, 18, 19)] == [(20, -20), (33, -33), (35, -35)]
    tiny.move_kv(table, [(5, 3), (3, 1)])  # the second reads what the first wrote
    assert at(1) == (5, -5) and at(3) == (5, -5)
    tiny.move_kv(table, [(7, 7)])  # nothing to do
    with pytest.raises(IndexError):
        tiny.move_kv(table, [(48, 2)])
    tiny.blocks.release(table)


def test_a_chain_given_as_parents_is_the_chain_exactly(tiny):
    rng = random.Random(3)
    ctx = [rng.randrange(100, 40_000) for _ in range(33)]
    draft = [rng.randrange(100, 40_000) for _ in range(9)]
    spacer: list[int] = []
    a, b = (prefilled(tiny, ctx, len(draft), spacer) for _ in range(2))
    plain = tiny.run([Piece(a, len(ctx), draft, True)])
    tree = tiny.run([Piece(b, len(ctx), draft, True, list(range(-1, len(draft) - 1)))])
    assert torch.equal(plain, tree)
    for t in (a, b, spacer):
        tiny.blocks.release(t)


def test_tree_shape_and_bad_parents():
    from edgespec.verify_daemon.model_runner import _tree, tree_depths

    assert tree_depths([-1, 0, 0, 1, 2, 3]) == [0, 1, 1, 2, 2, 3]
    with pytest.raises(ValueError):
        tree_depths([-1, 0, 2])
    tree = _tree([-1, 0, 0, 1, 2, 3], 6)
    assert tree.depth.tolist() == [0, 1, 1, 2, 2, 3]
    assert np.flatnonzero(tree.ancestor[5]).tolist() == [0, 1, 3, 5]
    assert np.flatnonzero(tree.ancestor[4]).tolist() == [0, 2, 4]
    for bad in ([0, 0], [-1, 1], [-1, -1], [-1, 0, 3], [-1]):
        with pytest.raises(ValueError):
            _tree(bad, 2 if len(bad) != 3 else 3)


def test_window_mask_reads_tree_key_positions():
    from edgespec.verify_daemon.model_runner import _Group

    # cached keys 0..3; tree: root at 4 (index 4), children at 5 (indices 5 and 6)
    q = torch.tensor([[[[4], [5], [5]]]])
    key_pos = torch.tensor([0, 1, 2, 3, 4, 5, 5])[None, None, None, :]
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 0],
                         [1, 1, 1, 1, 1, 0, 1]], dtype=torch.bool)[None, None]
    z = torch.zeros(3, dtype=torch.long)
    group = _Group(z, z[None], torch.zeros(1, 7, dtype=torch.long), mask, z, q,
                   key_pos=key_pos)
    assert group.mask_for(2)[0, 0].int().tolist() == [[0, 0, 0, 1, 1, 0, 0],
                                                      [0, 0, 0, 0, 1, 1, 0],
                                                      [0, 0, 0, 0, 1, 0, 1]]


def test_gemma_tree_across_the_sliding_window(gemma_dir):
    """Queries at positions past the window (512): the local layers' window must follow each
    node's position, not its table index. Each node against its path run as a chain over the
    same cached context (the chain path is checked against transformers elsewhere)."""
    runner = make_runner(gemma_dir, kv_tokens=2048)
    rng = random.Random(2)
    tokens, parents = random_tree(rng, 200_000)
    start = 509
    ctx = [rng.randrange(10, 200_000) for _ in range(start)]
    spacer: list[int] = []
    table = prefilled(runner, ctx, len(tokens), spacer)
    got = runner.run([Piece(table, start, tokens, True, parents)])
    worst = 0.0
    for node in range(len(tokens)):
        path = [tokens[i] for i in path_to(parents, node)]
        want = runner.run([Piece(table, start, path, True)])[-1]  # rewrites slots start..
        worst = max(worst, float((got[node] - want).abs().max()))
    for t in (table, spacer):
        runner.blocks.release(t)
    assert worst < 1e-3, worst
    print(f"Gemma 3 across the window: max |logit difference| {worst:.3g}")
