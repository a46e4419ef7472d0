"""The chain-or-tree policy: measured rates decide, the daemon's budget caps, both modes are
measured before comparing, and the losing mode is re-measured now and then; with drafting
ahead, auto tries trees only where chain rounds mostly miss (``pipelined=False`` below
tests the measuring itself, ungated)."""

from __future__ import annotations

from edgespec.edge_client.tree_shape import CHAIN, TREE, ModeRate, TreeShape


def feed(policy: TreeShape, mode: str, tokens: int, seconds: float, rounds: int,
         budget: int = 0) -> None:
    """``rounds`` steady rounds of one mode (the first after a switch does not count)."""
    for _ in range(rounds + 1):
        policy.observe(mode, tokens, seconds, budget)


def test_each_mode_is_measured_steadily_before_comparing():
    policy = TreeShape()
    modes = []
    for _ in range(6):
        shape = policy.next(4, pipelined=False)
        modes.append(shape.mode)
        policy.observe(shape.mode, 3, 0.1, 0)
    # chain until two steady chain rounds are in, then trees until two steady tree rounds
    assert modes == [CHAIN, CHAIN, CHAIN, TREE, TREE, TREE]
    shape = TreeShape(shape=TREE).next(4)
    assert (shape.nodes, shape.depth) == (16, 8)


def test_a_switch_round_does_not_count():
    policy = TreeShape()
    policy.observe(TREE, 9, 0.1, 0)
    policy.observe(CHAIN, 1, 1.0, 0)  # the chain round right after a tree: not steady
    assert policy.rates[CHAIN].rounds == 0
    policy.observe(CHAIN, 2, 0.1, 0)
    assert policy.rates[CHAIN].rounds == 1 and policy.rates[CHAIN].rate == 20.0


def test_the_faster_mode_wins_and_the_other_is_explored_in_bursts():
    policy = TreeShape(explore_every=10, explore_rounds=3)
    feed(policy, CHAIN, 2, 0.1, 2)  # 20 tok/s
    feed(policy, TREE, 4, 0.12, 2)  # 33 tok/s
    modes = [policy.next(4, pipelined=False).mode for _ in range(20)]
    assert modes.count(CHAIN) == 4  # rounds 10-12 and 20
    assert modes[9:12] == [CHAIN] * 3  # a burst, so its later rounds are steady
    feed(policy, TREE, 2, 0.2, 20)  # trees stop paying (a busy server, a short round trip)
    assert [policy.next(4, pipelined=False).mode for _ in range(5)] == [CHAIN] * 5


def test_a_budget_below_the_tree_gets_a_chain_of_at_most_the_budget():
    policy = TreeShape()
    feed(policy, CHAIN, 2, 0.2, 2, budget=16)
    feed(policy, TREE, 5, 0.1, 2, budget=16)
    shape = policy.next(4, pipelined=False)  # room for the whole tree: 4k nodes, 2k deep
    assert (shape.mode, shape.depth, shape.nodes) == (TREE, 8, 16)
    policy.observe(TREE, 5, 0.1, 6)  # the server is the bottleneck: 6 tokens a round
    shape = policy.next(4, pipelined=False)
    assert (shape.mode, shape.depth, shape.nodes) == (CHAIN, 4, 4)
    policy.observe(TREE, 5, 0.1, 3)
    shape = policy.next(4, pipelined=False)
    assert (shape.mode, shape.depth, shape.nodes) == (CHAIN, 3, 3)
    forced = TreeShape(shape=TREE, budget=6)
    assert forced.next(4).mode == CHAIN  # a forced tree too


def test_forced_shapes_and_zero_k():
    assert TreeShape(shape=CHAIN).next(5).mode == CHAIN
    forced = TreeShape(shape=TREE)
    feed(forced, CHAIN, 9, 0.1, 2)  # chains measured faster: a forced tree stays a tree
    feed(forced, TREE, 1, 0.1, 2)
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
    feed(auto, CHAIN, 1, 1.0, 2)
    feed(auto, TREE, 9, 0.1, 2)
    assert {auto.next(4, timed=False).mode for _ in range(10)} == {CHAIN}
    assert TreeShape(shape=TREE).next(4, timed=False).mode == TREE


def test_a_tree_never_goes_deeper_than_the_tokens_still_wanted():
    shape = TreeShape(shape=TREE).next(6, room=3)
    assert (shape.mode, shape.depth, shape.nodes) == (TREE, 3, 6)


def chain_rounds(policy: TreeShape, n: int, k: int, accepted: int) -> None:
    for _ in range(n):
        policy.observe(CHAIN, accepted + 1, 0.1, 0, drafted=k, accepted=accepted)


def test_auto_stays_on_chains_while_their_look_ahead_mostly_holds():
    """Trees give up drafting ahead: while a chain round's look-ahead mostly holds, auto
    never even tries one."""
    policy = TreeShape()
    chain_rounds(policy, 20, 8, 8)
    chain_rounds(policy, 1, 8, 3)  # 0.96-0.99 per token: 0.99^9 holds in most rounds
    assert policy.chain_acceptance > 0.95
    assert [policy.next(8).mode for _ in range(50)] == [CHAIN] * 50  # no exploring either
    assert policy.next(8, pipelined=False).mode == TREE  # no look-ahead to lose
    assert TreeShape(shape=TREE).next(8).mode == TREE  # forced stays forced


def test_auto_tries_trees_where_chains_mostly_miss():
    policy = TreeShape()
    assert policy.next(3).mode == CHAIN  # too few chain rounds seen
    for _ in range(4):  # the hard pair: about 2 of 3 drafts accepted a round
        chain_rounds(policy, 1, 3, 3)
        chain_rounds(policy, 2, 3, 1)
    assert 0.6 < policy.chain_acceptance < 0.8
    feed(policy, TREE, 4, 0.1, 2)
    assert policy.next(3).mode == TREE


def test_the_first_round_of_an_answer_is_not_steady():
    """It carries the prompt's prefill: counting it would make its mode look slow."""
    policy = TreeShape()
    feed(policy, CHAIN, 3, 0.1, 2)
    before = policy.rates[CHAIN].rounds
    policy.begin()
    policy.observe(CHAIN, 3, 2.0, 0)  # the prompt's round
    assert policy.rates[CHAIN].rounds == before
    policy.observe(CHAIN, 3, 0.1, 0)
    assert policy.rates[CHAIN].rounds == before + 1
