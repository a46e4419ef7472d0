"""The user's sampling settings, turned into what the daemon and the drafter each need.

Command-line values are the defaults; a ``--prompt-file`` line may override ``temperature``,
``top_k``, ``top_p``, ``seed`` and ``verify`` for its own prompt.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field, replace
from typing import Any

from edgespec.edge_client.draft_sampling import DraftSampling
from edgespec.wire.codec import SamplingParams
from edgespec.wire.protocol import VerifyMode

VERIFY_CHOICES = ("exact", "greedy", "threshold")
OVERRIDES = ("temperature", "top_k", "top_p", "seed", "verify")


@dataclass(frozen=True, slots=True)
class Sampling:
    """Both halves of one generation's randomness: the target's p and the draft's q."""

    target: SamplingParams = field(default_factory=SamplingParams)
    draft: DraftSampling | None = None  # None: argmax drafting (one-hot q, ids only)

    @property
    def verify_label(self) -> str:
        return self.target.strategy


@dataclass(frozen=True, slots=True)
class SamplingOptions:
    """What the command line said; ``resolve`` fills in defaults and per-prompt overrides.

    ``draft_temperature`` None means the target's temperature (a sampled draft with a
    sparse q); 0 means an argmax draft (one-hot q). ``draft_top_p`` None follows ``top_p``.
    """

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    verify: str = "exact"
    threshold: float = 0.1
    draft_temperature: float | None = None
    draft_top_k: int = 32
    draft_top_p: float | None = None

    @property
    def seeded(self) -> bool:
        return self.seed is not None

    def with_overrides(self, item: dict[str, Any]) -> SamplingOptions:
        """These options with a prompt-file line's own settings; bad values raise ValueError."""
        given = {key: item[key] for key in OVERRIDES if key in item}
        for key in ("temperature", "top_p"):
            if key in given and not isinstance(given[key], int | float):
                raise ValueError(f"{key} must be a number")
        for key in ("top_k", "seed"):
            if key in given and (not isinstance(given[key], int) or isinstance(given[key], bool)):
                raise ValueError(f"{key} must be an integer")
        return replace(self, **given)

    def resolve(self) -> Sampling:
        if self.verify not in VERIFY_CHOICES:
            raise ValueError(f"verify must be one of {', '.join(VERIFY_CHOICES)}")
        if self.seed is not None and not 0 <= self.seed < (1 << 63):
            raise ValueError("seed must be in 0..2**63-1")
        mode = VerifyMode[self.verify.upper()]
        if self.temperature == 0.0:
            return Sampling(SamplingParams(0.0, verify=mode, threshold=self.threshold))
        seed = self.seed if self.seed is not None else secrets.randbits(63)
        target = SamplingParams(float(self.temperature), int(self.top_k), float(self.top_p),
                                seed, mode, self.threshold)
        draft_t = self.temperature if self.draft_temperature is None else self.draft_temperature
        draft = DraftSampling(
            temperature=float(draft_t), top_k=self.draft_top_k,
            top_p=self.top_p if self.draft_top_p is None else self.draft_top_p, seed=seed)
        return Sampling(target, draft if draft.sparse else None)


def click_options(fn: Any) -> Any:
    """The sampling options ``edgespec chat`` and ``generate`` share (imported lazily: click)."""
    import click

    options = [
        click.option("--temperature", type=click.FloatRange(0.0, 100.0), default=0.0,
                     show_default=True,
                     help="0 = greedy, token-identical to the target alone; above 0 samples, "
                          "distributed exactly as the target alone would (with --verify exact)."),
        click.option("--top-k", type=click.IntRange(0, (1 << 24) - 1), default=0,
                     show_default=True, help="Keep the k likeliest tokens (0 = all)."),
        click.option("--top-p", type=click.FloatRange(0.0, 1.0, min_open=True), default=1.0,
                     show_default=True, help="Keep the smallest set with this much mass."),
        click.option("--seed", type=click.IntRange(0, (1 << 63) - 1), default=None,
                     help="Same seed, same settings: same tokens [default: random, reported "
                          "in the stats]. Also makes draft lengths ignore timings."),
        click.option("--verify", type=click.Choice(VERIFY_CHOICES), default="exact",
                     show_default=True,
                     help="exact: rejection sampling, lossless. greedy: the target's argmax "
                          "(LOSSY when temperature > 0). threshold: also accept any draft "
                          "token the target gives at least --verify-threshold (LOSSY)."),
        click.option("--verify-threshold", "threshold", type=click.FloatRange(0.0, 1.0),
                     default=0.1, show_default=True, help="For --verify threshold."),
        click.option("--draft-temperature", type=click.FloatRange(0.0, 100.0), default=None,
                     help="The draft's own temperature [default: --temperature]; 0 drafts "
                          "by argmax and sends token ids only (one-hot q)."),
        click.option("--draft-top-k", type=click.IntRange(1, 1024), default=32,
                     show_default=True,
                     help="The draft samples from its k likeliest tokens; this sparse q "
                          "travels with the draft."),
        click.option("--draft-top-p", type=click.FloatRange(0.0, 1.0, min_open=True),
                     default=None, help="The draft's own top-p [default: --top-p]."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn
