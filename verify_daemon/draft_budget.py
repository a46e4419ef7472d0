"""How many draft tokens the daemon asks each session for next round (the VERDICT's budget).

A step feeds at most ``step_tokens`` tokens (``scheduler.py``). When ``n`` sessions are
drafting, a step that serves each of them once can give each

    budget = clamp(step_tokens // n - 1, 1, max_draft_tokens)

draft tokens (the 1 is the session's last verified token, which every round feeds first).
A client that sends more waits for a later step (strict FIFO) and delays everyone behind it;
a client that sends fewer leaves the step's width unused. The client still picks its own
shape below the budget from what it measures (``edge_client/tree_shape.py``); the budget
only lowers it when the server is busy, as SDCP's next-round speculation limit, vLLM's
batch-size-dependent draft length and TensorRT-LLM's ``draft_len_schedule`` do.

"Drafting" sessions are those open (prefill done) and active within ``ACTIVE_S``: a session
whose client vanished stops counting against the others after a few seconds.
"""

from __future__ import annotations

from collections.abc import Iterable

from edgespec.verify_daemon.session import Session

ACTIVE_S = 5.0


def draft_budget(step_tokens: int, drafting: int, max_draft_tokens: int) -> int:
    """Draft tokens per session per round for ``drafting`` sessions sharing one step."""
    share = step_tokens // max(1, drafting) - 1
    return max(1, min(max_draft_tokens, share))


def drafting_sessions(sessions: Iterable[Session], now: float) -> int:
    """Sessions past their prefill that were active within ``ACTIVE_S`` (at least 1)."""
    return max(1, sum(1 for s in sessions
                      if s.to_prefill == 0 and now - s.last_active <= ACTIVE_S))
