"""What a user gets with no thread flags at all: `verifyd --port P` and `edgespec generate`
on one machine, against the target alone (`generate`, ``--threads`` threads), same prompts.

    python -m edgespec.tools.bench_defaults [--prompts 8] [--max-tokens 64] [--threads 2]

Both sides are the real commands in their own processes, started exactly as the README's
"Using it" shows them (no ``--threads``), so each picks its own share of the cores. The
target alone runs before and after edgespec (their mean is the baseline, so a machine whose
load drifts during the run does not favour either side); token ids must be identical.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
from edgespec.models.cpu import cpu_model, usable_cores


def prompt_file(path: Path, n: int) -> None:
    from edgespec.tools.prompts import CHAT_PROMPTS, humaneval_prompts

    with path.open("w") as out:
        for i, text in enumerate(CHAT_PROMPTS[:n]):
            out.write(json.dumps({"id": f"chat-{i}", "prompt": text}) + "\n")
        for i, text in enumerate(humaneval_prompts(n)):
            out.write(json.dumps({"id": f"code-{i}", "prompt": text, "raw": True}) + "\n")


@click.command(context_settings={"show_default": True})
@click.option("--prompts", "n", type=int, default=8, help="Chat prompts and code prompts each.")
@click.option("--max-tokens", type=int, default=64)
@click.option("--threads", type=int, default=2, help="Threads of the target-alone baseline.")
@click.option("--json", "as_json", is_flag=True)
def main(n: int, max_tokens: int, threads: int, as_json: bool) -> None:
    """edgespec with default threads against the target alone."""
    from edgespec.models.convert import ensure_target_snapshot
    from edgespec.models.paths import default_cache_dir, default_draft_gguf
    from edgespec.tools.daemon_proc import start_daemon
    from edgespec.tools.target_alone import TargetAlone

    target = ensure_target_snapshot(default_draft_gguf(), default_cache_dir())
    with tempfile.TemporaryDirectory() as tmp:
        prompts = Path(tmp) / "prompts.jsonl"
        prompt_file(prompts, n)
        daemon = start_daemon(target, Path(tmp) / "verifyd.log", threads=0)
        try:
            done = subprocess.run(  # warm-up; also gives each prompt's ids
                [sys.executable, "-m", "edgespec.edge_client.cli", "generate", "--server",
                 daemon.endpoint, "--prompt-file", str(prompts), "--max-tokens", "4",
                 "--json"], capture_output=True, text=True, check=True)
            alone = TargetAlone(target, threads)
            answers = [json.loads(line) for line in done.stdout.splitlines()]
            stops = [int(t) for t in daemon_stop_ids(target)]

            def baseline() -> tuple[float, list[list[int]]]:
                t0, outs = time.perf_counter(), []
                for a in answers:
                    outs.append(alone.greedy(a["prompt_token_ids"], max_tokens, stops))
                return time.perf_counter() - t0, outs

            before, want = baseline()
            done = subprocess.run(  # the measured edgespec run, between two baselines
                [sys.executable, "-m", "edgespec.edge_client.cli", "generate", "--server",
                 daemon.endpoint, "--prompt-file", str(prompts), "--max-tokens",
                 str(max_tokens), "--json"], capture_output=True, text=True, check=True)
            answers = [json.loads(line) for line in done.stdout.splitlines()]
            after, _ = baseline()
        finally:
            daemon.stop()
    tokens = sum(len(a["token_ids"]) for a in answers)
    spec_s = sum(a["stats"]["wall_s"] for a in answers)
    alone_tok_s = 2 * sum(len(w) for w in want) / (before + after)
    result = {
        "cpu": cpu_model(), "cores": usable_cores(), "baseline_threads": threads,
        "thread_split": answers[0]["stats"]["thread_split"],
        "draft_threads": answers[0]["stats"]["draft_threads"],
        "daemon_threads": answers[0]["stats"]["daemon_threads"],
        "prompts": len(answers), "tokens": tokens,
        "edgespec_tok_s": round(tokens / spec_s, 2),
        "target_alone_tok_s": round(alone_tok_s, 2),
        "speedup": round(tokens / spec_s / alone_tok_s, 3),
        "identical_token_ids": [a["token_ids"] for a in answers] == want,
    }
    click.echo(json.dumps(result) if as_json else
               "\n".join(f"{key}: {value}" for key, value in result.items()))
    if not result["identical_token_ids"]:
        sys.exit("token ids differ from the target alone")


def daemon_stop_ids(target: Path) -> tuple[int, ...]:
    """The stop ids verifyd uses for this target (the client stops on them too)."""
    from edgespec.verify_daemon.model_runner import stop_token_ids
    from transformers import AutoTokenizer, GenerationConfig

    return stop_token_ids(AutoTokenizer.from_pretrained(target),
                          GenerationConfig.from_pretrained(target))


if __name__ == "__main__":
    main()
