"""Benchmark: kill -9 verifyd at random moments of a 256-token greedy answer, 20 times.

Each run starts a daemon on a fixed loopback port, starts generating, kills the daemon with
SIGKILL after a random delay, restarts it on the same port, lets the client finish, and
compares its token ids with the target alone's. Prints and writes (bench-out/killtest.json)
how many runs completed identical, reconnects, and the time each run took.
"""

from __future__ import annotations

import argparse
import json
import random
import threading
import time
from pathlib import Path

from rich.progress import Progress

# Answers that run past 256 tokens, so every kill lands in the middle of one.
LONG_PROMPTS = [
    "Write a detailed, 600-word essay on the history of the printing press.",
    "Explain, step by step and at length, how a compiler turns source code into machine code.",
    "Write a long story (at least 500 words) about a lighthouse keeper and a storm.",
    "Describe in detail, with examples, ten habits that help people learn a new language.",
]


def main() -> None:
    from edgespec.edge_client.client import EdgeClient, new_session_id
    from edgespec.edge_client.config import ClientConfig
    from edgespec.edge_client.stats import GenerationStats
    from edgespec.models.convert import ensure_target_snapshot
    from edgespec.models.paths import default_cache_dir, default_draft_gguf
    from edgespec.tools.daemon_proc import free_port, start_daemon
    from edgespec.tools.target_alone import TargetAlone

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench-out/killtest.json")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    draft = default_draft_gguf()
    target = ensure_target_snapshot(draft, default_cache_dir(), progress=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    port = free_port()
    flags = ("--heartbeat", "0.5", "--heartbeat-timeout", "1.5")
    alone = TargetAlone(target, 1, memo=True)
    client_config = ClientConfig(server=f"tcp://127.0.0.1:{port}", draft_path=str(draft),
                                 threads=1, heartbeat_s=0.5, connect_timeout_s=3.0,
                                 reconnect_for_s=120.0)
    runs = []
    daemon = start_daemon(target, out.with_suffix(".verifyd.log"), *flags, threads=1, port=port)
    client = EdgeClient(client_config)
    try:
        with Progress() as progress:
            task = progress.add_task("kill -9 runs", total=args.runs)
            for i in range(args.runs):
                prompt_text = LONG_PROMPTS[i % len(LONG_PROMPTS)]
                tokens = client.chat_tokens([{"role": "user", "content": prompt_text}])
                prompt = list(tokens)
                delay = rng.uniform(0.5, 6.0)  # 256 tokens take ~8-10 s: kills land mid-answer
                box = {"daemon": daemon}

                def kill_and_restart(box: dict = box, delay: float = delay, i: int = i) -> None:
                    time.sleep(delay)
                    box["daemon"].kill()
                    box["daemon"] = start_daemon(
                        target, out.with_suffix(f".verifyd-{i}.log"), *flags, threads=1,
                        port=port)

                killer = threading.Thread(target=kill_and_restart)
                stats = GenerationStats()
                t0 = time.perf_counter()
                killer.start()
                for _ in client.generate(new_session_id(), tokens, args.max_tokens, stats):
                    pass
                killer.join()
                daemon = box["daemon"]
                got = tokens[len(prompt):]
                want = alone.greedy(prompt, args.max_tokens)
                runs.append({"run": i, "kill_after_s": round(delay, 2), "tokens": len(got),
                             "identical": got == want, "reconnects": stats.reconnects,
                             "wall_s": round(time.perf_counter() - t0, 2)})
                progress.advance(task)
    finally:
        client.close()
        daemon.stop()
    summary = {"runs": len(runs), "identical": sum(r["identical"] for r in runs),
               "killed_mid_answer": sum(r["reconnects"] > 0 for r in runs),
               "max_tokens": args.max_tokens, "details": runs}
    out.write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if k != "details"}))


if __name__ == "__main__":
    main()
