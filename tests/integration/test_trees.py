"""Token trees through a real daemon in its own process (``draft_shape="tree"``): greedy
answers token-identical to the target alone (default and coarse drafts, chat and HumanEval,
eight clients at once, across a kill -9 of the daemon), recorded tree sessions (greedy and
seeded sampling) that replay on a fresh daemon without one diverged round, and the tiny
pair's first-two-tokens chi-square with sampled sibling drafts.

Each test also checks that trees really happened: rounds with siblings, and verdicts whose
path left the main branch (a node that is not its parent's first child), so a client that
silently fell back to chains would fail here."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from edgespec.edge_client.client import EdgeClient, new_session_id
from edgespec.edge_client.config import ClientConfig
from edgespec.edge_client.sampling_setup import SamplingOptions
from edgespec.edge_client.stats import GenerationStats
from edgespec.edge_client.trace import TraceWriter, read_trace
from edgespec.tools.daemon_proc import start_daemon
from edgespec.tools.distribution import (
    ALPHA,
    PROMPT,
    chi_square,
    exact_first_two,
    hardest_error,
    simulated_power,
)
from edgespec.tools.prompts import CHAT_PROMPTS, humaneval_prompts
from edgespec.tools.replay import load_sessions, replay, summarize
from edgespec.tools.target_alone import TargetAlone

from ..conftest import THREADS
from .test_reconnect import Restartable, make_client
from .test_sampling import DRAWS

pytestmark = pytest.mark.slow
MAX_NEW = 48


# ---------------------------------------------------------------- what the trees did


class Recorder:
    """A trace kept in memory (``speculate`` only calls ``write``)."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def write(self, record: dict[str, Any]) -> None:
        self.records.append(record)

    @property
    def tree_rounds(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r["kind"] == "round" and "parents" in r]


def children(parents: list[int]) -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for node, parent in enumerate(parents):
        kids.setdefault(parent, []).append(node)
    return kids


def has_siblings(record: dict[str, Any]) -> bool:
    return any(len(k) > 1 for k in children(record["parents"]).values())


def took_side_branch(record: dict[str, Any]) -> bool:
    """The verdict's path holds a node that is not its parent's first child."""
    kids = children(record["parents"])
    return any(kids[record["parents"][node]][0] != node for node in record["path"])


def tree_census(records: list[dict[str, Any]]) -> Counter[str]:
    rounds = [r for r in records if r["kind"] == "round"]
    trees = [r for r in rounds if "parents" in r]
    for r in trees:  # a sampled tree's q has one row per node; siblings are distinct ids
        assert len(r["parents"]) == len(r["draft"])
        if "q" in r:
            assert len(r["q"]["counts"]) == len(r["draft"])
        for kids in children(r["parents"]).values():
            tokens = [r["draft"][k] for k in kids]
            assert len(set(tokens)) == len(tokens), ("siblings repeat a token", r)
    return Counter(rounds=len(rounds), trees=len(trees),
                   branched=sum(has_siblings(r) for r in trees),
                   side=sum(took_side_branch(r) for r in trees),
                   rejected=sum(r["accepted"] < max(_depth(r), 1) for r in trees))


def _depth(record: dict[str, Any]) -> int:
    depth: list[int] = []
    for parent in record["parents"]:
        depth.append(1 if parent < 0 else depth[parent] + 1)
    return max(depth, default=0)


def tree_client(endpoint: str, draft: Path, **extra: Any) -> EdgeClient:
    return EdgeClient(ClientConfig(server=endpoint, draft_path=str(draft), threads=1,
                                   draft_shape="tree", n_ctx=2048, **extra))


def answer(client: EdgeClient, prompt: list[int], n: int, trace: Any = None,
           sampling: Any = None, policy: Any = None) -> tuple[list[int], GenerationStats]:
    tokens = list(prompt)
    stats = GenerationStats()
    sid = new_session_id()
    for _ in client.generate(sid, tokens, n, stats, trace=trace, sampling=sampling,
                             policy=policy):
        pass
    client.end_session(sid)
    return tokens[len(prompt):], stats


def prompt_ids(client: EdgeClient, text: str, raw: bool) -> list[int]:
    if raw:
        return client.prompt_tokens(text)
    return client.chat_tokens([{"role": "user", "content": text}])


@pytest.fixture(scope="module")
def hard_gguf(cache_dir: Path) -> Path:
    from edgespec.models.paths import hard_draft_gguf

    return hard_draft_gguf(cache_dir)


# ---------------------------------------------------------------- greedy: exact


def test_greedy_trees_are_token_identical_to_the_target_alone(daemon, draft_gguf, hard_gguf,
                                                             check_exact):
    """Default and coarse drafts, two chat and two HumanEval prompts each. The default draft
    is right so often that its verdicts rarely leave the main branch (k follows live
    timings, so how often varies); the coarse one misses, and the side branches catch it."""
    prompts = [(CHAT_PROMPTS[1], False), (CHAT_PROMPTS[6], False),
               *((p, True) for p in humaneval_prompts(2))]
    census: dict[str, Counter[str]] = {}
    for which, gguf in (("default", draft_gguf), ("hard", hard_gguf)):
        client = tree_client(daemon.endpoint, gguf)
        recorder = Recorder()
        total = GenerationStats()
        try:
            for text, raw in prompts:
                prompt = prompt_ids(client, text, raw)
                got, stats = answer(client, prompt, MAX_NEW, trace=recorder)
                check_exact(prompt, got, MAX_NEW)
                total.tree_rounds += stats.tree_rounds
                total.tree_nodes += stats.tree_nodes
                total.tree_depth += stats.tree_depth
        finally:
            client.close()
        census[which] = tree_census(recorder.records)
        print(f"\n{which}: {dict(census[which])}; {total.tree_nodes} nodes over depth "
              f"{total.tree_depth}")
        assert census[which]["trees"] > 0 and total.tree_rounds == census[which]["trees"]
        assert total.tree_nodes > total.tree_depth  # trees wider than their chains
        assert census[which]["branched"] > 0
    assert census["hard"]["side"] > 0, "no verdict ever took a side branch: trees were chains"


def test_eight_concurrent_tree_clients_are_each_exact(daemon, hard_gguf, check_exact):
    prompts = [(p, False) for p in CHAT_PROMPTS[:4]] + [(p, True) for p in humaneval_prompts(4)]
    results: list[Any] = [None] * len(prompts)
    n = 40
    start = threading.Barrier(len(prompts))

    def user(i: int, text: str, raw: bool) -> None:
        try:
            client = tree_client(daemon.endpoint, hard_gguf, draft_tokens=(2, 4, 8, 16)[i % 4])
            try:
                prompt = prompt_ids(client, text, raw)
                recorder = Recorder()
                start.wait(timeout=120)
                got, _ = answer(client, prompt, n, trace=recorder)
                results[i] = (prompt, got, recorder.records)
            finally:
                client.close()
        except BaseException as exc:  # reported below
            results[i] = exc

    threads = [threading.Thread(target=user, args=(i, text, raw))
               for i, (text, raw) in enumerate(prompts)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=900)
    census: Counter[str] = Counter()
    for result in results:
        assert not isinstance(result, BaseException) and result is not None, result
        prompt, got, records = result
        check_exact(prompt, got, n)
        census += tree_census(records)
    print(f"\neight clients: {dict(census)}")
    assert census["trees"] > 0 and census["branched"] > 0 and census["side"] > 0


def test_kill9_mid_tree_answer_keeps_every_token(target_dir, hard_gguf, check_exact,
                                                 tmp_path):
    daemon = Restartable(target_dir, tmp_path)
    client = make_client(daemon.endpoint, hard_gguf)
    client.shape.shape = "tree"  # make_client is test_reconnect's: trees forced on here
    recorder = Recorder()
    killer: threading.Thread | None = None

    def kill_and_restart() -> None:
        daemon.proc.kill()
        daemon.start()

    try:
        prompt = client.chat_tokens([{"role": "user", "content": CHAT_PROMPTS[2]}])
        tokens = list(prompt)
        stats = GenerationStats()
        for _ in client.generate(new_session_id(), tokens, 64, stats, trace=recorder):
            if killer is None and len(tokens) - len(prompt) >= 20:
                killer = threading.Thread(target=kill_and_restart)  # lands mid-round
                killer.start()
        assert killer is not None
        killer.join()
    finally:
        client.close()
        daemon.proc.stop()
    assert daemon.starts == 2 and stats.reconnects >= 1
    census = tree_census(recorder.records)
    assert census["trees"] > 0 and census["branched"] > 0
    check_exact(prompt, tokens[len(prompt):], 64)


# ---------------------------------------------------------------- trace, then replay


@pytest.fixture(scope="module")
def fresh_daemon(target_dir, tmp_path_factory):
    d = start_daemon(target_dir, tmp_path_factory.mktemp("fresh") / "verifyd.log",
                     threads=THREADS)
    yield d
    d.stop()


def _replays(trace: Path, endpoint: str, copies: int) -> dict[str, Any]:
    recorded = load_sessions((str(trace),))
    tally, wall = replay(endpoint, recorded, copies, "fast", 120.0)
    return summarize(tally, wall)


def test_greedy_tree_trace_replays_on_a_fresh_daemon(daemon, fresh_daemon, hard_gguf,
                                                     check_exact, tmp_path):
    trace = tmp_path / "greedy.jsonl"
    client = tree_client(daemon.endpoint, hard_gguf)
    try:
        with TraceWriter(trace) as writer:
            for text in (CHAT_PROMPTS[3], CHAT_PROMPTS[9]):
                prompt = prompt_ids(client, text, False)
                got, _ = answer(client, prompt, MAX_NEW, trace=writer)
                check_exact(prompt, got, MAX_NEW)
    finally:
        client.close()
    records = read_trace(trace)
    census = tree_census(records)
    assert census["trees"] > 0 and census["branched"] > 0 and census["side"] > 0, census
    replayed = _replays(trace, fresh_daemon.endpoint, 3)
    assert replayed["errors"] == {} and replayed["diverged_rounds"] == 0, replayed
    rounds = [r for r in records if r["kind"] == "round"]
    per_session = Counter(r["session"] for r in rounds)
    assert replayed["rounds"] == sum(list(per_session.values())[i % 2] for i in range(3))


def test_seeded_sampled_tree_trace_replays_exactly(daemon, fresh_daemon, hard_gguf, tmp_path):
    """Seed and q recorded: the fresh daemon draws what the first did (accepted, next token
    and the tree path), sibling by sibling."""
    trace = tmp_path / "sampled.jsonl"
    client = tree_client(daemon.endpoint, hard_gguf, timed_k=False)
    options = SamplingOptions(temperature=0.9, top_p=0.95, seed=5)
    try:
        with TraceWriter(trace) as writer:
            prompt = client.chat_tokens([{"role": "user", "content": "Tell me a short story."}])
            policy = client.new_policy(8)
            policy.timed = False
            first, _ = answer(client, prompt, MAX_NEW, trace=writer,
                              sampling=options.resolve(), policy=policy)
    finally:
        client.close()
    records = read_trace(trace)
    rounds = [r for r in records if r["kind"] == "round"]
    census = tree_census(records)
    print(f"\nsampled: {dict(census)}")
    assert census["trees"] > 0 and census["branched"] > 0 and census["rejected"] > 0, census
    assert all("q" in r for r in rounds if r["draft"])
    assert first == [t for r in rounds for t in (*_kept(r), r["next_token"])][:len(first)]
    got = _replays(trace, fresh_daemon.endpoint, 2)
    assert got["errors"] == {} and got["diverged_rounds"] == 0, got
    assert got["verified_tokens"] == 2 * sum(r["accepted"] + 1 for r in rounds)


def _kept(record: dict[str, Any]) -> list[int]:
    if "parents" in record:
        return [record["draft"][node] for node in record["path"]]
    return record["draft"][:record["accepted"]]


# ---------------------------------------------------------------- sampling: the law


class Recording:
    """``client`` with every generation traced into ``recorder`` (for ``draw_first_two``)."""

    def __init__(self, client: EdgeClient, recorder: Recorder):
        self.client, self.recorder = client, recorder

    def generate(self, *args: Any, **kwargs: Any):
        return self.client.generate(*args, trace=self.recorder, **kwargs)

    def end_session(self, sid: int) -> None:
        self.client.end_session(sid)


def tiny_tree_client(tiny_daemon, tiny_pair) -> EdgeClient:
    return EdgeClient(ClientConfig(server=tiny_daemon.endpoint,
                                   draft_path=str(tiny_pair.draft_gguf), threads=1,
                                   draft_tokens=4, draft_shape="tree"))


def test_first_two_tokens_with_trees_match_the_target_alone(tiny_daemon, tiny_pair):
    """test_sampling's chi-square (same law, seeds, draws and power) with every round a
    tree, for both q modes at once (two clients, so their trees also share the daemon's
    steps): the root's siblings are drawn without replacement (sparse q) or are the next
    argmax candidates (one-hot q), and the daemon's multi-candidate rejection keeps the law."""
    from edgespec.tools.distribution import draw_first_two

    modes = {"sparse": None, "one-hot": 0.0}
    clients = {mode: tiny_tree_client(tiny_daemon, tiny_pair) for mode in modes}
    prompt = clients["sparse"].drafter.tokenize(PROMPT)
    law = exact_first_two(TargetAlone(tiny_pair.target_dir, 1), prompt,
                          clients["sparse"].stop_ids)
    power = simulated_power(law, DRAWS)
    recorders = {mode: Recorder() for mode in modes}
    drawn: dict[str, Any] = {}

    def draw(mode: str) -> None:
        try:
            drawn[mode] = draw_first_two(Recording(clients[mode], recorders[mode]), prompt,
                                         DRAWS, modes[mode])
        except BaseException as exc:  # reported below
            drawn[mode] = exc

    threads = [threading.Thread(target=draw, args=(mode,)) for mode in modes]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for c in clients.values():
            c.close()
    for mode in modes:
        assert not isinstance(drawn[mode], BaseException), drawn[mode]
        counts, stats = drawn[mode]
        census = tree_census(recorders[mode].records)
        right = chi_square(counts, law, DRAWS)
        wrong = chi_square(counts, hardest_error(law), DRAWS)
        print(f"\ntrees, {mode} q: {DRAWS} draws, chi-square {right.statistic:.2f} on "
              f"{right.df} df, p = {right.p_value:.3f}; vs the hardest 2% error "
              f"p = {wrong.p_value:.2g} (power {power:.1%}); {dict(census)}; "
              f"{stats.tree_nodes} nodes in {stats.tree_rounds} trees")
        assert set(counts) <= set(law), "a token the target alone can never produce"
        assert stats.tree_rounds > DRAWS // 2 and stats.tree_nodes > stats.tree_rounds
        assert census["branched"] > DRAWS // 2 and census["side"] > DRAWS // 100, census
        assert 0.05 < stats.acceptance_rate < 0.95
        assert right.p_value > ALPHA, mode
        if DRAWS >= 10000:  # the power test_sampling proves at the same size
            assert power > 0.95
            assert wrong.p_value < ALPHA, mode
