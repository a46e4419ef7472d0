"""The reference every exactness claim is measured against: transformers ``generate`` alone.

Shared by ``tools/bench`` (its speed) and the tests (its tokens), so both compare against
the same thing a user would otherwise run.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


class TargetAlone:
    """Plain greedy ``generate`` on the target, float32, with a chosen thread count."""

    def __init__(self, target: str | Path, threads: int, memo: bool = False):
        import torch
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(threads)
        self.torch = torch
        self.model = AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32).eval()
        # Tests ask for the same reference repeatedly; a benchmark must never hit a memo.
        self._memo: dict[tuple[tuple[int, ...], int, tuple[int, ...] | None], list[int]] = {}
        self._use_memo = memo

    def greedy(self, prompt: Sequence[int], max_new_tokens: int,
               stop_ids: Sequence[int] | None = None) -> list[int]:
        """Generated ids (the stop token included); ``stop_ids`` default to the model's own."""
        stops = tuple(stop_ids) if stop_ids is not None else None
        key = (tuple(prompt), max_new_tokens, stops)
        if not self._use_memo or key not in self._memo:
            ids = self.torch.tensor([list(prompt)])
            extra = ({"eos_token_id": list(stops), "pad_token_id": stops[0]} if stops
                     else {"pad_token_id": self.model.config.eos_token_id})
            with self.torch.inference_mode():
                out = self.model.generate(
                    ids, attention_mask=self.torch.ones_like(ids), do_sample=False,
                    max_new_tokens=max_new_tokens, **extra,
                )
            self._memo[key] = out[0, len(prompt):].tolist()
        return self._memo[key]

    def top2_margin(self, context: Sequence[int]) -> float:
        """Logit gap between the best and second-best next token after ``context``."""
        with self.torch.inference_mode():
            logits = self.model(self.torch.tensor([list(context)])).logits[0, -1]
        top = logits.topk(2).values
        return float(top[0] - top[1])
