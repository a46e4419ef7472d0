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

**When the server is the bottleneck** (its forward passes fill more than ``BUSY`` of the wall
time), the share is not the answer: on a CPU a pass costs ``c0 + c1·n`` for ``n`` tokens
(the scheduler's measured line), so a draft token that will likely be rejected takes time
from everyone. Then each session's budget maximises the server's goodput, as SmartSpec
(Liu et al., 2024) does for vLLM: with per-token acceptance ``a_i`` a chain of ``k_i`` yields
``E_i = 1 + a_i + ... + a_i^k_i`` tokens, and the step yields

    goodput = sum_i E_i / (c0 + c1 · sum_i (k_i + 1))

Adding one token to session ``i`` adds ``a_i^(k_i + 1)`` to the sum and ``c1`` to the time,
which raises the ratio exactly when ``a_i^(k_i + 1) > c1 · goodput``; since each session's
marginal only falls with ``k_i``, adding the best marginal token while that holds reaches the
optimum (``goodput_budgets``). A tree's extra nodes yield less per token than the chain's
next one, so the chain's optimum also bounds what a tree should cost. An idle server keeps
the share: there a longer draft costs the user only the pass, which the client weighs itself.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable

from edgespec.verify_daemon.session import Session

ACTIVE_S = 5.0
BUSY = 0.85  # fraction of wall time in forward passes past which the goodput rule applies


def draft_budget(step_tokens: int, drafting: int, max_draft_tokens: int) -> int:
    """Draft tokens per session per round for ``drafting`` sessions sharing one step."""
    share = step_tokens // max(1, drafting) - 1
    return max(1, min(max_draft_tokens, share))


def drafting_sessions(sessions: Iterable[Session], now: float) -> list[Session]:
    """Sessions past their prefill that were active within ``ACTIVE_S``."""
    return [s for s in sessions if s.to_prefill == 0 and now - s.last_active <= ACTIVE_S]


def goodput_budgets(acceptance: dict[int, float], s_overhead: float, s_per_token: float,
                    max_draft_tokens: int) -> dict[int, int]:
    """Draft tokens per session (by id) that maximise verified tokens per second of passes
    for sessions with per-token acceptance ``acceptance`` (formula above); at least 1."""
    k = dict.fromkeys(acceptance, 0)
    if not acceptance or s_per_token <= 0.0:
        return {sid: max_draft_tokens for sid in k}
    yielded = float(len(k))  # every round yields the target's own token
    seconds = s_overhead + s_per_token * len(k)
    best = [(-a, sid) for sid, a in acceptance.items()]  # the marginal of each next token
    heapq.heapify(best)
    while best:
        gain, sid = heapq.heappop(best)
        if -gain * seconds <= s_per_token * yielded:  # this token would lower goodput
            break
        k[sid] += 1
        yielded, seconds = yielded - gain, seconds + s_per_token
        if k[sid] < max_draft_tokens:
            heapq.heappush(best, (gain * acceptance[sid], sid))
    return {sid: max(1, n) for sid, n in k.items()}
