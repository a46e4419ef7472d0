"""The reference every exactness claim is measured against: transformers ``generate`` alone.

Shared by ``tools/bench`` (its speed) and the tests (its tokens), so both compare against
the same thing a user would otherwise run.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


class TargetAlone:
    """Plain ``generate`` on the target (greedy or sampling), float32, chosen thread count."""

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

    def sample(self, prompt: Sequence[int], max_new_tokens: int, temperature: float,
               top_k: int, top_p: float, seed: int,
               stop_ids: Sequence[int] | None = None) -> list[int]:
        """``generate(do_sample=True)`` with these settings; torch's global seed set first."""
        ids = self.torch.tensor([list(prompt)])
        extra = ({"eos_token_id": list(stop_ids), "pad_token_id": stop_ids[0]} if stop_ids
                 else {"pad_token_id": self.model.config.eos_token_id})
        self.torch.manual_seed(seed)
        with self.torch.inference_mode():
            out = self.model.generate(
                ids, attention_mask=self.torch.ones_like(ids), do_sample=True,
                temperature=temperature, top_k=top_k, top_p=top_p,
                max_new_tokens=max_new_tokens, **extra,
            )
        result: list[int] = out[0, len(prompt):].tolist()
        return result

    def next_token_probs(self, context: Sequence[int], temperature: float, top_k: int,
                         top_p: float) -> dict[int, float]:
        """The distribution ``generate(do_sample=True)`` draws the next token from: softmax
        of the scores it reports after its own logits processors (nonzero entries only)."""
        ids = self.torch.tensor([list(context)])
        with self.torch.inference_mode():
            out = self.model.generate(
                ids, attention_mask=self.torch.ones_like(ids), do_sample=True,
                temperature=temperature, top_k=top_k, top_p=top_p, max_new_tokens=1,
                output_scores=True, return_dict_in_generate=True,
                pad_token_id=self.model.config.eos_token_id,
            )
        probs = self.torch.softmax(out.scores[0][0].double(), dim=-1)
        support = self.torch.nonzero(probs).flatten().tolist()
        return {int(t): float(probs[t]) for t in support}

    def top2_margin(self, context: Sequence[int]) -> float:
        """Logit gap between the best and second-best next token after ``context``."""
        with self.torch.inference_mode():
            logits = self.model(self.torch.tensor([list(context)])).logits[0, -1]
        top = logits.topk(2).values
        return float(top[0] - top[1])
