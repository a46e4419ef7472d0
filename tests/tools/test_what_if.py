"""What-if drafts: acceptance is α by construction and every verdict is known in advance."""

from __future__ import annotations

import random
from pathlib import Path

from edgespec.tools.what_if import controlled_drafts

ANSWER = list(range(100, 400))
PROMPT = [1, 2, 3]


def rounds(alpha: float, k: int, seed: int = 0) -> list[dict]:
    return controlled_drafts("s", PROMPT, ANSWER, alpha, k, 49152, random.Random(seed))[1:]


def test_perfect_drafts_are_the_answer_itself():
    for r in rounds(1.0, 8):
        pos = r["base_length"] - len(PROMPT)
        assert r["draft"] == ANSWER[pos:pos + len(r["draft"])]
        assert r["accepted"] == len(r["draft"])


def test_rounds_cover_the_answer_exactly_once():
    out: list[int] = []
    for r in rounds(0.7, 6):
        assert r["base_length"] == len(PROMPT) + len(out)
        out += [*r["draft"][:r["accepted"]], r["next_token"]]
    assert out == ANSWER


def test_the_first_replaced_token_ends_acceptance():
    for r in rounds(0.5, 8):
        pos = r["base_length"] - len(PROMPT)
        truth = ANSWER[pos:pos + len(r["draft"])]
        assert r["draft"][:r["accepted"]] == truth[:r["accepted"]]
        if r["accepted"] < len(r["draft"]):
            assert r["draft"][r["accepted"]] != truth[r["accepted"]]
        assert r["next_token"] == ANSWER[pos + r["accepted"]]


def test_per_token_acceptance_is_alpha():
    accepted = trials = 0
    for seed in range(20):
        for r in rounds(0.8, 8, seed):
            accepted += r["accepted"]
            trials += r["accepted"] + (r["accepted"] < len(r["draft"]))
    assert abs(accepted / trials - 0.8) < 0.03


def test_what_if_on_a_tiny_random_target_matches_every_verdict(tmp_path: Path):
    """Real verifyd, real sockets: the made-up drafts get exactly the predicted verdicts."""
    from edgespec.models.paths import default_cache_dir
    from edgespec.tools.bench_batching import SYSTEM_FIELDS
    from edgespec.tools.what_if import random_target, run_what_if
    from rich.progress import Progress

    target = str(random_target("tiny", "float32", default_cache_dir()))
    with Progress(disable=True) as progress:
        results = run_what_if(target, [0.8], [4], [2], 8, 1, "cpu", "float32", tmp_path,
                              progress)
    row = results["2"]
    assert set(row) == {"k0", "a0.8_k4"}
    assert set(row["a0.8_k4"]) == {*SYSTEM_FIELDS, "vs_k0"}
    for r in row.values():
        assert r["diverged"] == 0 and r["errors"] == {}
        assert r["tokens"] == row["k0"]["tokens"] > 0
