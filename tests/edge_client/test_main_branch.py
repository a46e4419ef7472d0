"""How far a tree's verdict followed the draft's own chain (what the chain policy learns)."""

from __future__ import annotations

from edgespec.edge_client.spec_loop import main_branch_accepted


def test_main_branch_prefix_of_the_path():
    # root ─ 0 ─ 2 ─ 4        (main branch: 0, 2, 4)
    #      └ 1 ─ 3            (a side branch)
    parents = [-1, -1, 0, 1, 2]
    assert main_branch_accepted(parents, [0, 2, 4]) == 3
    assert main_branch_accepted(parents, [0, 2]) == 2
    assert main_branch_accepted(parents, [1, 3]) == 0
    assert main_branch_accepted(parents, []) == 0
    assert main_branch_accepted([-1, 0, 1], [0, 1, 2]) == 3  # a chain is all main branch
