"""Greedy edgespec output equals the target alone's, token for token, across real processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from edgespec.tools.prompts import CHAT_PROMPTS, humaneval_prompts

pytestmark = pytest.mark.slow
MAX_NEW = 64


def run_generate(endpoint: str, prompt_file: Path, *extra: str) -> list[dict]:
    cmd = [sys.executable, "-m", "edgespec.edge_client.cli", "generate", "--server", endpoint,
           "--prompt-file", str(prompt_file), "--json", "--threads", "1", *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def test_greedy_matches_target_alone_on_chat_and_code(daemon, check_exact, tmp_path):
    lines = [{"id": f"chat{i}", "prompt": p} for i, p in enumerate(CHAT_PROMPTS[:6])]
    lines += [{"id": f"code{i}", "prompt": p, "raw": True, "draft_tokens": 4 + 4 * i}
              for i, p in enumerate(humaneval_prompts(4))]
    prompt_file = tmp_path / "prompts.jsonl"
    prompt_file.write_text("\n".join(json.dumps(x) for x in lines))
    results = run_generate(daemon.endpoint, prompt_file, "--max-tokens", str(MAX_NEW))
    assert [r["id"] for r in results] == [x["id"] for x in lines]
    accepted = drafted = chained = 0
    for result in results:
        assert "error" not in result, result
        check_exact(result["prompt_token_ids"], result["token_ids"], MAX_NEW)
        accepted += result["stats"]["accepted"]
        drafted += result["stats"]["drafted"]
        chained += result["stats"]["chained_rounds"]
    assert drafted > 0 and accepted / drafted > 0.5  # the draft is doing real work
    assert chained > 0  # and drafts sent ahead, chained on a guess, were verified too
