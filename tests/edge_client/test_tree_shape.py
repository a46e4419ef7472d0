"""The chain-or-tree policy: measured rates decide, the daemon's budget caps, both modes are
measured before comparing, and the losing mode is re-measured now and then."""

from __future__ import annotations

from edgespec.edge_client.tree_shape import CHAIN, TREE, ModeRate, TreeShape


def test_each_mode_is_measured_before_comparing():
    policy = TreeShape()
    first = policy.next(4)
    policy.observe(first.mode, 3, 0.1, 0)
    second = policy.next(4)
    assert {first.mode, second.mode} == {CHAIN, TREE}
    assert (second.nodes, second.depth) == ((16, 8) if second.mode == TREE else (4, 4))


def test_the_faster_mode_wins_and_the_other_is_explored():
    policy = TreeShape(explore_every=5)
    policy.observe(CHAIN, 2, 0.1, 0)  # 20 tok/s
    policy.observe(TREE, 4, 0.12, 0)  # 33 tok/s
    modes = [policy.next(4).mode for _ in range(10)]
    assert modes.count(TREE) == 8 and modes.count(CHAIN) == 2
    for _ in range(20):  # trees stop paying (a busy server, a short round trip)
        policy.observe(TREE, 2, 0.2, 0)
    assert policy.next(4).mode == CHAIN or policy.round_no % 5 == 0


def test_the_daemons_budget_caps_the_shape_and_can_force_a_chain():
    policy = TreeShape()
    policy.observe(CHAIN, 2, 0.2, 6)
    policy.observe(TREE, 5, 0.1, 6)
    shape = policy.next(4)
    assert (shape.mode, shape.depth, shape.nodes) == (TREE, 5, 6)
    policy.observe(TREE, 5, 0.1, 3)  # busy: 3 tokens a round
    shape = policy.next(4)
    assert (shape.mode, shape.depth, shape.nodes) == (CHAIN, 3, 3)


def test_forced_shapes_and_zero_k():
    assert TreeShape(shape=CHAIN).next(5).mode == CHAIN
    forced = TreeShape(shape=TREE)
    forced.observe(CHAIN, 9, 0.1, 0)  # chains measured faster: a forced tree stays a tree
    forced.observe(TREE, 1, 0.1, 0)
    assert [forced.next(5).mode for _ in range(10)] == [TREE] * 10
    assert TreeShape().next(0).nodes == 0


def test_mode_rate_is_tokens_over_seconds():
    rate = ModeRate()
    rate.add(4, 0.2)
    assert rate.rate == 20.0
    rate.add(0, 0.2)
    assert rate.rate < 20.0


def test_an_untimed_run_keeps_auto_on_chains_but_honours_a_forced_tree():
    auto = TreeShape()
    auto.observe(CHAIN, 1, 1.0, 0)
    auto.observe(TREE, 9, 0.1, 0)
    assert {auto.next(4, timed=False).mode for _ in range(10)} == {CHAIN}
    assert TreeShape(shape=TREE).next(4, timed=False).mode == TREE


def test_a_tree_never_goes_deeper_than_the_tokens_still_wanted():
    shape = TreeShape(shape=TREE).next(6, room=3)
    assert (shape.mode, shape.depth, shape.nodes) == (TREE, 3, 6)
