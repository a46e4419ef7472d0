"""The budget replay's draft surgery, without a daemon: which recorded draft covers a
position, how it is cut, and what the daemon must answer."""

from __future__ import annotations

from typing import Any

import pytest
from edgespec.edge_client.trace import TraceError
from edgespec.tools.budget_replay import (
    cut,
    draft_for,
    greedy_outcome,
    main_branch,
    subtree_at,
    target_tokens,
)

# a tree drafted at position 2 of [1, 2 | 3, 4, 5, ...]: root children 3 and 7; 3 -> 4 and 8;
# 4 -> 5
TREE = [(3, -1), (7, -1), (4, 0), (8, 0), (5, 2)]


def test_target_is_prompt_then_every_rounds_tokens():
    records: list[dict[str, Any]] = [
        {"kind": "open", "tokens": [1, 2]},
        {"kind": "round", "base_length": 2, "draft": [3, 4, 9], "accepted": 2, "next_token": 5},
        {"kind": "round", "base_length": 5, "draft": [7, 3], "parents": [-1, -1], "path": [1],
         "accepted": 1, "next_token": 6},
    ]
    assert target_tokens(records) == [1, 2, 3, 4, 5, 3, 6]
    records[2]["base_length"] = 4
    with pytest.raises(TraceError):
        target_tokens(records)


def test_the_covering_subtree_is_what_hangs_below_the_spelled_path():
    assert subtree_at(TREE, []) == TREE
    assert subtree_at(TREE, [3]) == [(4, -1), (8, -1), (5, 0)]
    assert subtree_at(TREE, [3, 4]) == [(5, -1)]
    assert subtree_at(TREE, [3, 4, 5]) == []
    assert subtree_at(TREE, [7, 1]) is None  # 7 is a leaf: nothing spells 7, 1
    assert subtree_at(TREE, [9]) is None


def test_a_chain_is_its_own_rest():
    chain = [(3, -1), (4, 0), (5, 1)]
    assert subtree_at(chain, [3]) == [(4, -1), (5, 0)]
    assert subtree_at(chain, [4]) is None


def test_cut_keeps_the_first_nodes_with_their_parents_and_a_depth_limit():
    assert cut(TREE, 3, 8) == TREE[:3]
    assert cut(TREE, 8, 1) == [(3, -1), (7, -1)]
    assert cut(TREE, 8, 2) == TREE[:4]
    assert cut([(3, -1), (4, 0), (5, 1)], 2, 8) == [(3, -1), (4, 0)]


def test_the_expected_answer_is_the_longest_spelled_path_and_the_targets_next_token():
    target = [1, 2, 3, 4, 6, 0]
    assert greedy_outcome(TREE, target, 2) == (2, 6)  # 3, 4 accepted; 5 is not the target's 6
    assert greedy_outcome(TREE, [1, 2, 7, 9], 2) == (1, 9)
    assert greedy_outcome([], target, 2) == (0, 3)


def test_main_branch_is_the_chain_of_first_children():
    assert main_branch(TREE) == [(3, -1), (4, 0), (5, 1)]
    assert main_branch([]) == []


def test_a_tree_squeezed_by_the_budget_is_sent_as_the_clients_chain():
    tree = {"draft": [t for t, _ in TREE], "parents": [p for _, p in TREE], "chain_k": 2}
    assert draft_for(tree, [], 0) == TREE  # no budget: the tree
    assert draft_for(tree, [], 5) == TREE  # room for all of it
    assert draft_for(tree, [], 4) == [(3, -1), (4, 0)]  # min(chain_k, budget) of the main branch
    assert draft_for(tree, [], 1) == [(3, -1)]
    assert draft_for(tree, [3], 4) == [(4, -1), (5, 0)]  # below the spelled path
    chain = {"draft": [3, 4, 5]}
    assert draft_for(chain, [3], 1) == [(4, -1)]
    assert draft_for(chain, [9], 1) == []  # nothing recorded reaches here
