"""Token trees on the llama.cpp draft: each node sees exactly its own path, an unbranched
tree is the chain, and accepting a path leaves the KV as if only that path had been drafted."""

from __future__ import annotations

import llama_cpp
import numpy as np
import pytest
from edgespec.edge_client.draft_sampling import DraftSampling, sparse_q, without
from edgespec.edge_client.drafter import Drafter
from edgespec.edge_client.tree_draft import Proposal, select

PROMPT = "<|im_start|>user\nName three colours.<|im_end|>\n<|im_start|>assistant\n"
SAMPLED = DraftSampling(temperature=1.0, top_k=8, seed=7)
# The tree's logits come from batches of several branches, the reference's from one token at
# a time; llama.cpp's CPU kernels give the same bits on one thread (max diff seen: 0.0).
ATOL = 1e-3


@pytest.fixture(scope="module")
def drafter(draft_gguf):
    return Drafter(draft_gguf, n_ctx=512, n_threads=1)


@pytest.fixture(scope="module")
def reference(draft_gguf):
    """A second context, only ever fed chains."""
    return Drafter(draft_gguf, n_ctx=512, n_threads=1, n_seq_max=1)


@pytest.fixture
def prompt(drafter):
    drafter.sampling = None
    return drafter.tokenize(PROMPT)


def path_to(parents: list[int], node: int) -> list[int]:
    path = []
    while node >= 0:
        path.append(node)
        node = parents[node]
    return path[::-1]


def seq_pos_max(d: Drafter, seq: int) -> int:
    return int(llama_cpp.llama_memory_seq_pos_max(llama_cpp.llama_get_memory(d.llm.ctx), seq))


def check_shape(tokens, parents, max_nodes, max_depth, max_width):
    assert len(tokens) == len(parents) <= max_nodes
    depth: list[int] = []
    for i, p in enumerate(parents):
        assert -1 <= p < i
        depth.append(1 if p < 0 else depth[p] + 1)
    assert max(depth) <= max_depth
    for node in [-1, *range(len(tokens))]:
        children = [tokens[i] for i, p in enumerate(parents) if p == node]
        assert len(children) <= max_width and len(set(children)) == len(children)


def test_every_node_sees_exactly_its_path(drafter, reference, prompt):
    drafter.sync(prompt)
    tokens, parents = drafter.draft_tree(14, 5, max_width=3, branch_below=1.0)
    check_shape(tokens, parents, 14, 5, 3)
    assert drafter.tree is not None and max(drafter.tree.seqs) > 0  # it did branch
    worst = 0.0
    for node in range(len(tokens)):
        reference.sync(prompt)
        for step in path_to(parents, node):  # one token at a time, the chain's way
            reference._eval([tokens[step]])
        want = reference._logits()
        got = drafter.tree.logits[node]
        worst = max(worst, float(np.abs(got - want).max()))
        assert int(got.argmax()) == int(want.argmax())
    assert worst <= ATOL, f"tree vs chain logits differ by {worst}"


@pytest.mark.parametrize("sampling", [None, SAMPLED])
def test_an_unbranched_tree_is_the_chain(drafter, prompt, sampling):
    drafter.sync(prompt)
    drafter.sampling = sampling
    chain = drafter.draft(6)
    chain_q = drafter.sparse_q(len(prompt), chain)
    for width, below in ((4, 0.0), (1, 1.0)):  # never unsure enough / no room to branch
        drafter.sync(prompt)
        tokens, parents = drafter.draft_tree(6, 6, max_width=width, branch_below=below)
        assert tokens == chain and parents == [-1, 0, 1, 2, 3, 4]
        assert drafter.tokens == prompt + chain  # like after draft(6)
        q = drafter.tree_q()
        if sampling is None:
            assert q is None
        else:
            assert q is not None and chain_q is not None
            assert np.array_equal(q.counts, chain_q.counts)
            assert np.array_equal(q.ids, chain_q.ids)
            assert np.array_equal(q.probs, chain_q.probs)


def test_accepting_a_side_path_equals_a_fresh_context(drafter, reference, prompt):
    drafter.sync(prompt)
    tokens, parents = drafter.draft_tree(16, 6, max_width=4, branch_below=1.0)
    tree = drafter.tree
    leaf = max((i for i, s in enumerate(tree.seqs) if s != 0), key=lambda i: tree.depths[i])
    path = path_to(parents, leaf)
    assert tree.seqs[path[-1]] != 0 and len(path) >= 2
    accepted = [tokens[n] for n in path]
    drafter.accept_tree(path)
    assert drafter.tokens == prompt + accepted
    assert seq_pos_max(drafter, 0) == len(prompt) + len(path) - 1
    assert all(seq_pos_max(drafter, s) == -1 for s in range(1, drafter.n_seq_max))
    reference.sync(prompt + accepted)
    got, want = drafter._logits(), reference._logits()
    assert float(np.abs(got - want).max()) <= ATOL
    assert drafter.draft(3) == reference.draft(3)
    drafter.sync(prompt + accepted + [tokens[0]])  # the next round's sync: only the new one
    assert drafter.tokens == prompt + accepted + [tokens[0]]


@pytest.mark.parametrize("which", ["main", "empty"])
def test_accepting_on_the_main_branch_is_a_truncation(drafter, reference, prompt, which):
    drafter.sync(prompt)
    tokens, _ = drafter.draft_tree(10, 4, max_width=3, branch_below=1.0)
    path = [0, *[i for i in range(1, len(tokens)) if drafter.tree.seqs[i] == 0][:1]] \
        if which == "main" else []
    drafter.accept_tree(path)
    accepted = [tokens[n] for n in path]
    assert drafter.tokens == prompt + accepted
    assert all(seq_pos_max(drafter, s) == -1 for s in range(1, drafter.n_seq_max))
    reference.sync(prompt + accepted)
    assert drafter.draft(2) == reference.draft(2)
    with pytest.raises(RuntimeError):
        drafter.accept_tree(path)  # the tree has left the KV


def test_sync_after_a_tree_drops_its_side_branches(drafter, prompt):
    drafter.sync(prompt)
    tokens, parents = drafter.draft_tree(8, 3, max_width=3, branch_below=1.0)
    assert any(seq_pos_max(drafter, s) >= 0 for s in range(1, drafter.n_seq_max))
    drafter.sync(prompt + tokens[:1] + [11])
    assert all(seq_pos_max(drafter, s) == -1 for s in range(1, drafter.n_seq_max))
    drafter.sync(prompt)
    tokens, parents = drafter.draft_tree(8, 3, max_width=3, branch_below=1.0)
    bad = [0, next(i for i, p in enumerate(parents) if p not in (-1, 0))]
    with pytest.raises(ValueError):
        drafter.accept_tree(bad)  # not a root-down path: refused before the KV is touched
    drafter.accept_tree([0])


def test_sampled_siblings_are_drawn_without_replacement(drafter, prompt):
    drafter.sync(prompt)
    drafter.sampling = SAMPLED
    tokens, parents = drafter.draft_tree(16, 5, max_width=4, branch_below=1.0)
    check_shape(tokens, parents, 16, 5, 4)
    q = drafter.tree_q()
    assert q is not None and len(q.counts) == len(tokens)
    tree = drafter.tree
    for node in [-1, *range(len(tokens))]:
        siblings = [i for i, p in enumerate(parents) if p == node]
        if not siblings:
            continue
        logits = tree.root_logits if node < 0 else tree.logits[node]
        ids, probs = sparse_q(logits, SAMPLED)  # the parent's full q
        for j, i in enumerate(siblings):
            row_ids, row_probs = q.row(i)
            assert abs(float(row_probs.sum(dtype=np.float64)) - 1.0) < 1e-5
            assert tokens[i] in row_ids.tolist()
            earlier = [tokens[s] for s in siblings[:j]]
            assert not set(earlier) & set(row_ids.tolist())
            want_ids, want_probs = without(ids, probs, earlier) if j else (ids, probs)
            assert np.array_equal(row_ids, want_ids) and np.array_equal(row_probs, want_probs)
    drafter.sync(prompt)  # the same seed and context: the same tree, the same rows
    again = drafter.draft_tree(16, 5, max_width=4, branch_below=1.0)
    q2 = drafter.tree_q()
    assert again == (tokens, parents)
    assert q2 is not None and np.array_equal(q2.ids, q.ids) and np.array_equal(q2.probs, q.probs)


def test_trees_respect_the_sequence_limit_and_the_allowed_ids(drafter, reference, prompt):
    reference.sampling = None
    reference.sync(prompt)
    chain = reference.draft(4)
    reference.sync(prompt)  # one sequence id: no room for a side branch, the chain
    assert reference.draft_tree(12, 4, max_width=4, branch_below=1.0) == (chain, [-1, 0, 1, 2])
    drafter.sync(prompt)
    tokens, _ = drafter.draft_tree(12, 4, max_width=4, branch_below=1.0)
    allowed = np.ones(drafter.n_vocab, dtype=bool)
    allowed[tokens] = False  # forbid every token the unrestricted tree drafted
    drafter.allowed = allowed
    try:
        for sampling in (None, SAMPLED):
            drafter.sampling = sampling
            drafter.sync(prompt)
            again, _ = drafter.draft_tree(12, 4, max_width=4, branch_below=1.0)
            assert again and all(allowed[t] for t in again)
    finally:
        drafter.allowed = None


def test_select_never_skips_an_earlier_sibling():
    props = [[Proposal(j, 10 + j, prior, prior, None) for j, prior in
              enumerate([0.4, 0.3, 0.2])], [Proposal(0, 20, 0.9, 0.9, None)]]
    # main: frontier 0's first child is reserved; two more by prior x path probability
    assert select(props, [1.0, 0.5], True, 2, 8) == [(0, 0), (0, 1), (1, 0)]
    assert select(props, [1.0, 0.1], True, 2, 8) == [(0, 0), (0, 1), (0, 2)]
    # no sequence id left for a side branch: only continuations
    assert select(props, [1.0, 0.5], True, 2, 0) == [(0, 0), (1, 0)]
