"""What an operator would run instead of verifyd: transformers' continuous batching, target
only, in its own process (so its peak RSS is its own), on the same weights, dtype and threads.

Reads a JSON job ``{"prompts": [[ids]...], "max_new_tokens": [n...], "eos_ids": [...]}``,
serves every prompt at once through one ``ContinuousBatchingManager`` (paged KV, requests
join and leave the batch each step), and prints one JSON line: wall seconds from submission
to the last finish, each request's generated ids and its own tokens/s, and the number of
model forward passes. A warm-up request runs first, outside the timing.

    python -m edgespec.tools.cb_engine --target DIR --threads 2 JOB.json
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import click

PAGE = 256  # tokens per KV page (transformers' default)


def serve(model: Any, prompts: list[list[int]], max_new: list[int], eos_ids: list[int]
          ) -> dict[str, Any]:
    from transformers import ContinuousBatchingConfig, GenerationConfig

    longest = max(len(p) for p in prompts) + max(max_new)
    config = ContinuousBatchingConfig(  # sized for the job: on a CPU there is no memory probe
        num_blocks=len(prompts) * math.ceil(longest / PAGE) + 4, max_batch_tokens=1024,
        max_requests_per_batch=len(prompts))
    generation = GenerationConfig(do_sample=False, eos_token_id=eos_ids,
                                  pad_token_id=eos_ids[0], max_new_tokens=max(max_new))
    import threading

    import torch

    threads, pinned = torch.get_num_threads(), threading.local()

    def same_threads(*_: object) -> None:
        """OpenMP keeps its thread count per thread, and the manager steps on its own."""
        if not getattr(pinned, "done", False):
            torch.set_num_threads(threads)
            pinned.done = True

    forwards = [0]
    model.register_forward_pre_hook(same_threads)
    model.register_forward_hook(lambda *_: forwards.__setitem__(0, forwards[0] + 1))
    with model.continuous_batching_context_manager(
            generation_config=generation, continuous_batching_config=config,
            warmup=False) as manager:
        manager.add_request(prompts[0], max_new_tokens=2)  # warm-up, not timed
        while not (r := manager.get_result(timeout=60)) or not r.is_finished():
            pass
        forwards[0] = 0
        start = time.perf_counter()
        ids = [manager.add_request(p, max_new_tokens=n)
               for p, n in zip(prompts, max_new, strict=True)]
        done: dict[str, Any] = {}
        while len(done) < len(ids):
            result = manager.get_result(timeout=60)
            if result is None:
                if not manager.is_running():
                    raise RuntimeError("continuous batching stopped early")
                continue
            if result.is_finished():
                done[result.request_id] = (result, time.perf_counter())
        wall = time.perf_counter() - start
    outputs, rates = [], []
    for rid in ids:
        result, finished = done[rid]
        outputs.append(list(result.generated_tokens))
        rates.append(len(result.generated_tokens) / (finished - start))
        if result.error:
            raise RuntimeError(f"request {rid}: {result.error}")
    return {"wall_s": wall, "outputs": outputs, "session_tok_s": rates,
            "forwards": forwards[0]}


@click.command()
@click.argument("job", type=click.Path(exists=True, dir_okay=False))
@click.option("--target", required=True, help="Target model directory.")
@click.option("--threads", type=int, required=True, help="torch threads.")
@click.option("--dtype", default="float32")
def main(job: str, target: str, threads: int, dtype: str) -> None:
    """Serve a job with continuous batching; print one JSON line."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(target, dtype=getattr(torch, dtype)).eval()
    spec = json.loads(Path(job).read_text())
    print(json.dumps(serve(model, spec["prompts"], spec["max_new_tokens"], spec["eos_ids"])))


if __name__ == "__main__":
    main()
