"""Measure the parts ``tools/bound.py`` needs, in the benchmark's own run and processes.

Each is the fastest of a few repeats (after one warm-up): the draft's seconds per token, a
plain target forward over ``w`` new tokens on a KV cache at the daemon's threads, and a PING
round trip through the same path the rounds take. The fastest, not the median: the bound is
what the machine allows, and a repeat is only ever slowed by other work on the cores.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from edgespec.tools.bound import VerifyCost

WIDTHS = (1, 2, 3, 4, 5, 6, 8, 16, 17)  # 17: a full k = 16 draft plus the bonus position


def fastest_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: first calls allocate
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def draft_s_per_token(drafter: Any, context: Sequence[int], n: int = 32,
                      repeats: int = 3) -> float:
    """The drafter's seconds per drafted token after ``context`` (its current threads)."""

    def run() -> None:
        drafter.sync(context)
        drafter.draft(n)

    drafter.sync(context)
    return fastest_seconds(run, repeats) / n


def draft_prefill_s_per_token(drafter: Any, context: Sequence[int], repeats: int = 3) -> float:
    """The drafter's seconds per prompt token reading ``context`` into an empty cache in one
    batch (its current threads)."""
    other = [2 if int(context[0]) == 1 else 1]  # another first token: the next sync reads all

    def run() -> None:
        drafter.sync(other)
        t0 = time.perf_counter()
        drafter.sync(context)
        seconds.append(time.perf_counter() - t0)

    seconds: list[float] = []
    for _ in range(repeats + 1):  # the first is a warm-up
        run()
    return min(seconds[1:]) / len(context)


def verify_cost(model: Any, threads: int, context: Sequence[int],
                widths: Sequence[int] = WIDTHS, repeats: int = 5) -> VerifyCost:
    """``V(w)``: one transformers forward over ``w`` new tokens after a cached ``context``,
    with torch on ``threads`` (restored after)."""
    import torch
    from transformers import DynamicCache

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            cache = DynamicCache()
            model(torch.tensor([list(context)]), cache=cache, use_cache=True)
            n = len(context)
            table = {}
            for w in widths:
                ids = torch.tensor([list(context[-w:]) if w <= n else [0] * w])
                pos = torch.arange(n, n + w).unsqueeze(0)

                def forward(ids: Any = ids, pos: Any = pos, w: int = w) -> None:
                    model(ids, cache=cache, position_ids=pos, use_cache=True)
                    cache.crop(-w)  # back to the context: every repeat sees the same cache

                table[w] = fastest_seconds(forward, repeats)
    finally:
        torch.set_num_threads(before)
    # A wider pass never costs less than a narrower one: a narrow width measured slower
    # (noise) is taken at the wider one's cost, which keeps the bound an upper bound.
    for narrow, wide in zip(reversed(widths[:-1]), reversed(widths[1:]), strict=True):
        table[narrow] = min(table[narrow], table[wide])
    return VerifyCost.from_table(table)


def ping_s(link: Any, repeats: int = 9) -> float:
    """Fastest PING -> PONG through ``link``: the wire's round trip with no verification."""
    from edgespec.wire.codec import Ping

    return fastest_seconds(lambda: link.request(Ping(0)), repeats)
