"""Greedy verification of a draft.

Terms (as in vLLM's rejection sampler):
- *draft tokens* d_1..d_k: what the edge client proposed after the session's last token.
- *target tokens* t_0..t_k: the target's argmax after the last verified token and after each
  draft token, from one forward pass over [last, d_1..d_k].
- *accepted*: the longest prefix with d_i == t_{i-1}.
- *next token*: t_accepted, the target's own choice at the first mismatch (a *correction*) or
  after a fully accepted draft (a *bonus*). Every round therefore yields at least one token.
"""

from __future__ import annotations

from collections.abc import Sequence


def greedy_accept(draft: Sequence[int], target: Sequence[int]) -> tuple[int, int]:
    """Return (accepted, next_token) for one draft and the target's argmax row.

    ``target`` has len(draft) + 1 entries: the target's pick at each position.
    """
    if len(target) != len(draft) + 1:
        raise ValueError(f"target has {len(target)} picks for a draft of {len(draft)}")
    accepted = 0
    for proposed, wanted in zip(draft, target, strict=False):
        if proposed != wanted:
            break
        accepted += 1
    return accepted, int(target[accepted])
