"""Sampling through a real daemon: same distribution as the target alone, seeded reruns equal.

The statistical test (``edgespec.tools.distribution``) draws the first two generated tokens
10,000 times per q mode through a real ``verifyd`` and the real llama.cpp draft, and tests
their joint distribution against the exact law of the target alone. It runs on the tiny
random-weight pair (``models/tiny_pair.py``, SmolLM2's tokenizer), where a draw costs
milliseconds; ``tools/bench distribution`` runs the same check on the real SmolLM2 pair.
Seeds are fixed, so every run of the test draws the same tokens.
"""

from __future__ import annotations

import os
import threading

import pytest
import torch
from edgespec.edge_client.client import EdgeClient, new_session_id
from edgespec.edge_client.config import ClientConfig
from edgespec.edge_client.sampling_setup import SamplingOptions
from edgespec.edge_client.stats import GenerationStats
from edgespec.tools.distribution import ALPHA, PROMPT, check_mode, describe, exact_first_two
from edgespec.tools.target_alone import TargetAlone

pytestmark = pytest.mark.slow
# 10,000 draws see the hardest 2 % error with ~99 % power at ALPHA (the test reports it).
DRAWS = int(os.environ.get("EDGESPEC_STAT_DRAWS", "10000"))


@pytest.fixture(scope="module")
def client(daemon, draft_gguf):
    c = EdgeClient(ClientConfig(server=daemon.endpoint, draft_path=str(draft_gguf), threads=1,
                                draft_tokens=4))
    yield c
    c.close()


@pytest.fixture(scope="module")
def tiny_client(tiny_daemon, tiny_pair):
    c = EdgeClient(ClientConfig(server=tiny_daemon.endpoint,
                                draft_path=str(tiny_pair.draft_gguf), threads=1, draft_tokens=4))
    yield c
    c.close()


@pytest.fixture(scope="module")
def tiny_law(tiny_pair, tiny_client):
    alone = TargetAlone(tiny_pair.target_dir, 1)
    prompt = tiny_client.drafter.tokenize(PROMPT)
    return prompt, exact_first_two(alone, prompt, tiny_client.stop_ids)


@pytest.mark.parametrize("draft_temperature", [None, 0.0], ids=["sparse_q", "one_hot_q"])
def test_first_two_tokens_match_the_target_alone(tiny_client, tiny_law, draft_temperature):
    prompt, law = tiny_law
    check, counts = check_mode(tiny_client, law, prompt, DRAWS, draft_temperature)
    print("\n" + describe(check))
    assert set(counts) <= set(law), "a token the target alone can never produce"
    assert 0.05 < check.acceptance_rate < 0.95  # both accept and reject branches ran
    assert check.p_value > ALPHA
    if DRAWS >= 10000:  # the sample is big enough to tell a 2 % error apart, and does
        assert check.power_vs_2pct_error > 0.95
        assert check.p_value_vs_2pct_error < ALPHA


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
