"""Sampling through a real daemon: same distribution as the target alone, seeded reruns equal.

The statistical test draws the first two generated tokens many times through a real
``verifyd`` and the real llama.cpp draft, and compares their joint distribution with the
exact one the target alone samples from (``generate``'s own processed scores, not a sample
of it). Each draw re-opens the same session, so the daemon reuses the prompt's KV and a
draw costs one or two short rounds. Seeds are fixed, so the test is deterministic.
"""

from __future__ import annotations

import os
import threading
from collections import Counter

import pytest
import torch
from edgespec.edge_client.client import EdgeClient, new_session_id
from edgespec.edge_client.config import ClientConfig
from edgespec.edge_client.sampling_setup import SamplingOptions
from edgespec.edge_client.stats import GenerationStats

pytestmark = pytest.mark.slow
PROMPT = "My favourite colour is"  # high-entropy next token: blue / a / red
SETTINGS = dict(temperature=1.0, top_k=3, top_p=1.0)
# CI default catches gross errors; EDGESPEC_STAT_DRAWS=1500 is the slower, sharper run
# (about 6 minutes a q mode on the shared 2-core box) recorded in the README.
DRAWS = int(os.environ.get("EDGESPEC_STAT_DRAWS", "300"))


def chi_square(counts: Counter, expected: dict[tuple[int, int], float], n: int
               ) -> tuple[float, int, float]:
    """(statistic, degrees of freedom, p-value); cells expecting < 5 draws are pooled."""
    big = {cell for cell, p in expected.items() if p * n >= 5}
    observed = [counts[c] for c in big] + [n - sum(counts[c] for c in big)]
    wanted = [expected[c] * n for c in big] + [n * (1 - sum(expected[c] for c in big))]
    cells = [(o, e) for o, e in zip(observed, wanted, strict=True) if e > 1e-9]
    stat = sum((o - e) ** 2 / e for o, e in cells)
    df = len(cells) - 1
    p_value = float(torch.special.gammaincc(torch.tensor(df / 2), torch.tensor(stat / 2)))
    return stat, df, p_value


def exact_first_two(target_alone, prompt: list[int], stops: tuple[int, ...]
                    ) -> dict[tuple[int, int], float]:
    """P(t1, t2) for the target alone; a stop token as t1 ends the answer (t2 = -1)."""
    law = {}
    for t1, p1 in target_alone.next_token_probs(prompt, **SETTINGS).items():
        if t1 in stops:
            law[(t1, -1)] = p1
            continue
        for t2, p2 in target_alone.next_token_probs([*prompt, t1], **SETTINGS).items():
            law[(t1, t2)] = p1 * p2
    return law


@pytest.fixture(scope="module")
def client(daemon, draft_gguf):
    c = EdgeClient(ClientConfig(server=daemon.endpoint, draft_path=str(draft_gguf), threads=1,
                                draft_tokens=4))
    yield c
    c.close()


@pytest.mark.parametrize("draft_temperature", [None, 0.0], ids=["sparse_q", "one_hot_q"])
def test_first_two_tokens_match_the_target_alone(client, target_alone, draft_temperature):
    prompt = client.drafter.tokenize(PROMPT)
    want = exact_first_two(target_alone, prompt, client.stop_ids)
    sid = new_session_id()
    counts: Counter = Counter()
    stats = GenerationStats()
    for seed in range(1, DRAWS + 1):
        options = SamplingOptions(**SETTINGS, seed=seed, draft_temperature=draft_temperature)
        tokens = list(prompt)
        for _ in client.generate(sid, tokens, 2, stats, sampling=options.resolve()):
            pass
        got = tokens[len(prompt):]
        counts[(got[0], got[1] if len(got) > 1 else -1)] += 1
    client.end_session(sid)
    stat, df, p_value = chi_square(counts, want, DRAWS)
    mode = "one-hot" if draft_temperature == 0 else "sparse"
    print(f"\nfirst two tokens, {DRAWS} draws, q {mode}: chi-square {stat:.2f} on {df} df, "
          f"p-value {p_value:.4f}; acceptance {stats.acceptance_rate:.1%}, "
          f"{stats.bytes_per_round:.0f} B/round")
    assert set(counts) <= set(want), "a token the target alone can never produce"
    assert stats.drafted > 0 and 0 < stats.accepted < stats.drafted  # both branches ran
    assert p_value > 1e-3


def test_target_probs_are_what_generate_samples_from(target_alone, client):
    """The daemon's p (sampling.py) equals generate's processed distribution, same settings."""
    from edgespec.verify_daemon.sampling import target_probs
    from edgespec.wire.codec import SamplingParams

    prompt = client.drafter.tokenize("The weather today is")
    with torch.inference_mode():
        logits = target_alone.model(torch.tensor([prompt])).logits[0, -1:]
    for temperature, top_k, top_p in [(0.7, 0, 0.9), (1.3, 50, 1.0), (0.5, 20, 0.8)]:
        want = target_alone.next_token_probs(prompt, temperature, top_k, top_p)
        got = target_probs(logits, SamplingParams(temperature, top_k, top_p))[0]
        assert set(torch.nonzero(got).flatten().tolist()) == set(want)
        assert max(abs(float(got[t]) - p) for t, p in want.items()) < 1e-5


def _run(client: EdgeClient, prompt: list[int], seed: int | None, n: int) -> list[int]:
    options = SamplingOptions(temperature=0.8, top_p=0.95, seed=seed)
    tokens = list(prompt)
    sid = new_session_id()
    policy = client.new_policy(8)
    policy.timed = False
    for _ in client.generate(sid, tokens, n, GenerationStats(), policy=policy,
                             sampling=options.resolve()):
        pass
    client.end_session(sid)
    return tokens[len(prompt):]


def test_same_seed_same_tokens_while_other_sessions_run(client, daemon, draft_gguf):
    prompt = client.chat_tokens([{"role": "user", "content": "Write a haiku about rain."}])
    first = _run(client, prompt, 42, 40)
    other = EdgeClient(ClientConfig(server=daemon.endpoint, draft_path=str(draft_gguf),
                                    threads=1, draft_tokens=3))
    stop = threading.Event()

    def busy() -> None:  # another user sampling without a seed on the same daemon
        while not stop.is_set():
            _run(other, prompt, None, 12)

    thread = threading.Thread(target=busy)
    thread.start()
    try:
        second = _run(client, prompt, 42, 40)
    finally:
        stop.set()
        thread.join()
        other.close()
    assert second == first
    assert _run(client, prompt, 43, 40) != first


def test_generate_cli_prompt_lines_carry_their_own_sampling(daemon, tmp_path):
    import json
    import subprocess
    import sys

    lines = [{"id": "a", "prompt": "Name a fruit.", "seed": 7},
             {"id": "b", "prompt": "Name a fruit.", "seed": 7},
             {"id": "c", "prompt": "Name a fruit.", "seed": 7, "verify": "greedy"},
             {"id": "d", "prompt": "Name a fruit.", "temperature": 0}]
    prompt_file = tmp_path / "p.jsonl"
    prompt_file.write_text("\n".join(json.dumps(x) for x in lines))
    cmd = [sys.executable, "-m", "edgespec.edge_client.cli", "generate", "--server",
           daemon.endpoint, "--prompt-file", str(prompt_file), "--json", "--threads", "1",
           "--max-tokens", "16", "--temperature", "0.9", "--top-p", "0.95"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    a, b, c, d = (json.loads(x) for x in done.stdout.splitlines() if x.strip())
    assert a["token_ids"] == b["token_ids"] and a["stats"]["seed"] == 7
    assert a["stats"]["verify"] == "exact" and c["stats"]["verify"] == "greedy (lossy)"
    assert d["stats"]["seed"] == 0 and d["stats"]["bytes_per_round"] > 0
