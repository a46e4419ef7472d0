"""Does edgespec sample from the target's distribution? Count, then test against the exact law.

The first two generated tokens are drawn many times through a real ``verifyd`` and a real
llama.cpp draft; their joint distribution is compared, with a chi-square goodness-of-fit
test, to the exact law the target alone samples from (the product of ``generate``'s own
processed next-token distributions, not a sample of it). Each draw re-opens one session,
so the daemon reuses the prompt's KV and a draw is one or two short rounds.

A sample size is only meaningful with its power, so every check also reports how often the
same test would reject the *hardest* 2 % error to see: 0.02 of probability moved between
the two most likely cells (simulated from the multinomial), and applies the test to the
observed counts against that wrong law, which must fail. Used by
``tests/integration/test_sampling.py`` (tiny pair, CI) and ``tools/bench distribution``
(the real SmolLM2 pair).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from edgespec.edge_client.client import EdgeClient, new_session_id
from edgespec.edge_client.sampling_setup import SamplingOptions
from edgespec.edge_client.stats import GenerationStats
from edgespec.tools.target_alone import TargetAlone

Cell = tuple[int, int]
Law = dict[Cell, float]
PROMPT = "My favourite colour is"  # an open next token, for the real and the tiny pair
SETTINGS: dict[str, Any] = {"temperature": 1.0, "top_k": 3, "top_p": 1.0}
ERROR = 0.02  # the total-variation error the test must be able to see
ALPHA = 1e-3  # reject at p < ALPHA: a correct sampler fails one run in a thousand
END = -1  # second token of an answer that stopped after one token


@dataclass(frozen=True)
class ChiSquare:
    statistic: float
    df: int
    p_value: float


@dataclass(frozen=True)
class DistributionCheck:
    """One q mode's result: the test against the right law, and its power against 2 %."""

    mode: str
    draws: int
    chi_square: float
    df: int
    p_value: float
    p_value_vs_2pct_error: float
    power_vs_2pct_error: float
    acceptance_rate: float
    bytes_per_round: float
    ms_per_draw: float


def chi_square(counts: Counter[Cell], expected: Law, n: int) -> ChiSquare:
    """Pearson's test; cells expecting fewer than 5 draws are pooled into one."""
    big = sorted(cell for cell, p in expected.items() if p * n >= 5)
    observed = [counts[c] for c in big] + [n - sum(counts[c] for c in big)]
    wanted = [expected[c] * n for c in big] + [n * (1 - sum(expected[c] for c in big))]
    cells = [(o, e) for o, e in zip(observed, wanted, strict=True) if e > 1e-9]
    stat = sum((o - e) ** 2 / e for o, e in cells)
    df = len(cells) - 1
    p_value = float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64),
                                            torch.tensor(stat / 2, dtype=torch.float64)))
    return ChiSquare(stat, df, p_value)


def hardest_error(law: Law, error: float = ERROR) -> Law:
    """``law`` with ``error`` moved from its most to its second most likely cell: among
    errors of that size, the one a chi-square test needs the most draws to see."""
    first, second = sorted(law, key=law.__getitem__, reverse=True)[:2]
    moved = min(error, law[first])
    return law | {first: law[first] - moved, second: law[second] + moved}


def simulated_power(law: Law, n: int, alpha: float = ALPHA, error: float = ERROR,
                    reps: int = 1000, seed: int = 0) -> float:
    """How often the test on ``n`` draws rejects ``law`` when the truth is its hardest
    ``error``-sized distortion (multinomial simulation)."""
    cells = list(law)
    truth = hardest_error(law, error)
    generator = torch.Generator().manual_seed(seed)
    probs = torch.tensor([truth[c] for c in cells], dtype=torch.float64)
    draws = torch.multinomial(probs.expand(reps, -1), n, replacement=True,
                              generator=generator)
    offsets = torch.arange(reps).unsqueeze(1) * len(cells)
    tallies = torch.bincount((draws + offsets).flatten(), minlength=reps * len(cells))
    tallies = tallies.view(reps, len(cells))
    rejected = 0
    for row in tallies.tolist():
        counts = Counter({c: k for c, k in zip(cells, row, strict=True) if k})
        rejected += chi_square(counts, law, n).p_value < alpha
    return rejected / reps


def exact_first_two(target_alone: TargetAlone, prompt: Sequence[int], stops: Sequence[int]
                    ) -> Law:
    """P(t1, t2) for the target alone; a stop token as t1 ends the answer (t2 = END)."""
    law: Law = {}
    for t1, p1 in target_alone.next_token_probs(prompt, **SETTINGS).items():
        if t1 in stops:
            law[(t1, END)] = p1
            continue
        for t2, p2 in target_alone.next_token_probs([*prompt, t1], **SETTINGS).items():
            law[(t1, t2)] = p1 * p2
    return law


def draw_first_two(client: EdgeClient, prompt: Sequence[int], draws: int,
                   draft_temperature: float | None, advance: Callable[[], None] | None = None
                   ) -> tuple[Counter[Cell], GenerationStats]:
    """Generate two tokens ``draws`` times (seeds 1..draws) through ``client``'s daemon."""
    sid = new_session_id()
    counts: Counter[Cell] = Counter()
    stats = GenerationStats()
    try:
        for seed in range(1, draws + 1):
            options = SamplingOptions(**SETTINGS, seed=seed, draft_temperature=draft_temperature)
            tokens = list(prompt)
            for _ in client.generate(sid, tokens, 2, stats, sampling=options.resolve()):
                pass
            got = tokens[len(prompt):]
            counts[(got[0], got[1] if len(got) > 1 else END)] += 1
            if advance is not None:
                advance()
    finally:
        client.end_session(sid)
    return counts, stats


def check_mode(client: EdgeClient, law: Law, prompt: Sequence[int], draws: int,
               draft_temperature: float | None,
               advance: Callable[[], None] | None = None
               ) -> tuple[DistributionCheck, Counter[Cell]]:
    """Draw, test against ``law`` and against its hardest 2 % error, report the power."""
    started = time.perf_counter()
    counts, stats = draw_first_two(client, prompt, draws, draft_temperature, advance=advance)
    took = time.perf_counter() - started
    right = chi_square(counts, law, draws)
    wrong = chi_square(counts, hardest_error(law), draws)
    check = DistributionCheck(
        mode="one-hot q" if draft_temperature == 0 else "sparse q", draws=draws,
        chi_square=right.statistic, df=right.df, p_value=right.p_value,
        p_value_vs_2pct_error=wrong.p_value, power_vs_2pct_error=simulated_power(law, draws),
        acceptance_rate=stats.acceptance_rate, bytes_per_round=stats.bytes_per_round,
        ms_per_draw=1000 * took / draws)
    return check, counts


def describe(check: DistributionCheck) -> str:
    """One line a person can paste into a note."""
    return (f"{check.mode}: {check.draws} draws, chi-square {check.chi_square:.2f} on "
            f"{check.df} df, p = {check.p_value:.3f}; against the hardest 2% error "
            f"p = {check.p_value_vs_2pct_error:.2g} (power {check.power_vs_2pct_error:.1%} at "
            f"alpha {ALPHA:g}); acceptance {check.acceptance_rate:.1%}, "
            f"{check.bytes_per_round:.0f} B/round, {check.ms_per_draw:.1f} ms/draw")
