"""The cross pair end to end: SmolLM2 draft (its own tokenizer) before Gemma 3 270M, checked
token for token against Gemma alone and timed against it.

    python -m edgespec.tools.cross_check [--prompts 10] [--max-tokens 64] [--sampling] [--json]

Starts ``verifyd --target gemma`` (one thread), answers chat and code prompts with
``edgespec generate --json`` (a draft thread), then runs Gemma alone (``generate``, one
thread) on the same prompt ids. Each answer is ``identical``, a proven ``tie`` (top-2 logit
margin under 1e-4 where it first differs) or ``DIFFERENT`` (exit 1). Prints acceptance,
tokens per round, tok/s against Gemma alone and where the time went. ``--sampling`` samples
(temperature 0.7, top-p 0.9, seed = prompt number; token-level intersection drafts) and
times Gemma alone's ``generate(do_sample=True)``; sampled answers are not compared token by
token (the chi-square test in tests/integration/test_cross_sampling.py checks the law).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TIE = 1e-4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=10)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sampling", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from edgespec.models.convert import resolve_target
    from edgespec.models.paths import default_cache_dir
    from edgespec.tools.daemon_proc import start_daemon
    from edgespec.tools.prompts import CHAT_PROMPTS, humaneval_prompts
    from edgespec.tools.target_alone import TargetAlone

    target = resolve_target("gemma", default_cache_dir())
    chats = min(len(CHAT_PROMPTS), (args.prompts + 1) // 2)
    lines = [{"id": f"chat{i}", "prompt": p} for i, p in enumerate(CHAT_PROMPTS[:chats])]
    lines += [{"id": f"code{i}", "prompt": p, "raw": True}
              for i, p in enumerate(humaneval_prompts(args.prompts - chats))]
    if args.sampling:
        lines = [{**line, "temperature": 0.7, "top_p": 0.9, "seed": n + 1}
                 for n, line in enumerate(lines)]
    with tempfile.TemporaryDirectory() as tmp:
        prompt_file = Path(tmp) / "prompts.jsonl"
        prompt_file.write_text("\n".join(json.dumps(x) for x in lines))
        daemon = start_daemon(target, Path(tmp) / "verifyd.log", threads=args.threads)
        try:
            done = subprocess.run(
                [sys.executable, "-m", "edgespec.edge_client.cli", "generate", "--server",
                 daemon.endpoint, "--prompt-file", str(prompt_file), "--json", "--threads",
                 str(args.threads), "--max-tokens", str(args.max_tokens)],
                capture_output=True, text=True, check=True)
        finally:
            daemon.stop()
    results = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    alone = TargetAlone(target, args.threads)
    rows, alone_s, alone_tokens = [], 0.0, 0
    for result in results:
        if "error" in result:
            rows.append({"id": result["id"], "verdict": f"ERROR {result['error']}"})
            continue
        prompt, got = result["prompt_token_ids"], result["token_ids"]
        t0 = time.perf_counter()
        want = (alone.sample(prompt, args.max_tokens, 0.7, 0, 0.9, len(rows) + 1)
                if args.sampling else alone.greedy(prompt, args.max_tokens))
        took = time.perf_counter() - t0
        alone_s += took
        alone_tokens += len(want)
        verdict = "sampled" if args.sampling else _verdict(alone, prompt, got, want)
        rows.append({"id": result["id"], "verdict": verdict,
                     "alone_tok_s": round(len(want) / took, 2), **result["stats"]})
    summary = _summary(rows, alone_s, alone_tokens)
    if args.json:
        print(json.dumps({"prompts": rows, "summary": summary}))
    else:
        for row in rows:
            print(f"{row['id']:>7}  {row['verdict']:<10} acceptance "
                  f"{row.get('acceptance_rate', 0):.2f}  tok/round "
                  f"{row.get('tokens_per_round', 0):.2f}  tok/s {row.get('tokens_per_s', 0):.2f}"
                  f" (Gemma alone {row.get('alone_tok_s', 0):.2f})")
        print(json.dumps(summary, indent=1))
    sys.exit(0 if all(r["verdict"] in ("identical", "tie", "sampled") for r in rows) else 1)


def _verdict(alone: Any, prompt: list[int], got: list[int], want: list[int]) -> str:
    if got == want:
        return "identical"
    first = next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b),
                 min(len(got), len(want)))
    return "tie" if alone.top2_margin(prompt + want[:first]) < TIE else "DIFFERENT"


def _summary(rows: list[dict[str, Any]], alone_s: float, generated: int) -> dict[str, Any]:
    ok = [r for r in rows if "rounds" in r]
    total = {key: sum(float(r[key]) for r in ok)
             for key in ("rounds", "drafted", "accepted", "generated", "wall_s", "draft_s",
                         "translate_s", "wait_s", "verify_s", "open_s")}
    wall = total["wall_s"] or 1.0
    return {
        "prompts": len(rows), "identical_or_tie": sum(r["verdict"] in ("identical", "tie")
                                                      for r in rows),
        "sampled": sum(r["verdict"] == "sampled" for r in rows),
        "acceptance": round(total["accepted"] / max(total["drafted"], 1), 3),
        "tokens_per_round": round(total["generated"] / max(total["rounds"], 1), 2),
        "edgespec_tok_s": round(total["generated"] / wall, 2),
        "gemma_alone_tok_s": round(generated / alone_s, 2) if alone_s else 0.0,
        "speedup": round((total["generated"] / wall) / (generated / alone_s), 2)
        if alone_s and generated else 0.0,
        "time_split_s": {k: round(total[k], 2) for k in
                         ("draft_s", "translate_s", "wait_s", "verify_s", "open_s")},
        "wire_and_queue_s": round(total["wait_s"] - total["verify_s"], 2),
    }


if __name__ == "__main__":
    main()
