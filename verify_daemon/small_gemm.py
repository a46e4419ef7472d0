"""Linear layers at verify widths on CPU: per weight shape and row count, the fastest of
three equal products, measured once on this machine and cached.

Why: a verify pass feeds the target a draft, a few rows, and BLAS libraries can handle
that shape badly. On an AMD EPYC with torch's MKL (1 thread), ``x @ Wᵀ`` over SmolLM2-135M's
weights costs 58 ms for one row but 104 ms for two and 100 ms for five, while the same
product written ``(W @ xᵀ)ᵀ`` (a tall-skinny GEMM that streams W once) costs 49 and 66 ms,
and oneDNN's inner product (``onednn``, where torch has it) rises most gently past four rows.
Which layout wins depends on the CPU, the BLAS, the thread count and the width, so it is
measured here, never assumed:

- the *plan* maps each weight shape (in, out) and width 2..``MAX_ROWS`` to the fastest way
  to get those rows: any of the products, at that width or padded with zero rows to a wider
  one that runs faster, taken only where it beats ``x @ Wᵀ`` by ``MARGIN``; all are timed over
  every weight of that shape in the model (as the forward pass reads them: from memory, not
  from a warm cache), fastest of ``REPEATS``;
- one row is always ``x @ Wᵀ`` (a matrix-vector product either way: the target alone's own
  path), and widths past ``MAX_ROWS`` too (a prefill or a batch of many sessions, where
  BLAS is efficient), and so is every shape whose weights together take under
  ``MIN_GROUP_BYTES``: those stay in a cache, their products are not bound by memory
  traffic, and timing them measures mostly noise and call overhead (a tiny test model's
  plan padded two rows to ten and ran slower);
- the plan is cached as JSON under ``<cache>/gemm/``, keyed by the CPU model line, torch's
  version, threads, dtype, the products it has and the shapes, so every daemon on one
  machine runs the same products (and the same rounding) without measuring again.

All products are exact float sums in a different order: logits differ by rounding only
(about 5e-5 here), as between any two widths of the plain product.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import types
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

log = logging.getLogger("verifyd")

MAX_ROWS = 12  # widths measured: 2..MAX_ROWS (a draft of up to 11 tokens plus its root)
REPEATS = 3  # each timing is the fastest of this many sweeps (load only ever slows one)
MARGIN = 0.9  # another form must take under this share of x @ Wᵀ's time: noise never flips it
MIN_GROUP_BYTES = 16 * 2**20  # shapes whose weights fit in a cache are left alone (below)

Shape = tuple[int, int]  # (in_features, out_features)
Choice = tuple[str, int]  # (a key of FORMS, rows computed: the real ones plus zero pads)
Plan = dict[Shape, dict[int, Choice]]  # shape → rows → how (absent: plain, unpadded)


def plain(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x @ Wᵀ`` for x [rows, in]: torch's own linear."""
    return torch.nn.functional.linear(x, weight)


def tall(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``(W @ xᵀ)ᵀ`` for x [rows, in], made contiguous (the layers after reshape it)."""
    return torch.mm(weight, x.t()).t().contiguous()


def onednn(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """oneDNN's inner product (the op torch.compile's CPU freezing emits for a linear): on
    the EPYC above its cost rises more gently with the rows than MKL's (the model's linears
    at 8 rows: 78 ms, where the better of the other two takes 86 and at 16 rows 103 against
    115)."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, None, "none", [], "")


def _onednn_usable() -> bool:
    """A torch built without oneDNN, or one whose private op moved, plans without it."""
    try:
        x, w = torch.ones(2, 3), torch.ones(4, 3)
        return bool(torch.backends.mkldnn.is_available()
                    and torch.equal(onednn(x, w), torch.full((2, 4), 3.0)))
    except (AttributeError, RuntimeError):
        return False


FORMS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "plain": plain, "tall": tall, **({"onednn": onednn} if _onednn_usable() else {})}


def linears(model: torch.nn.Module) -> list[torch.nn.Linear]:
    return [m for m in model.modules() if isinstance(m, torch.nn.Linear)]


def weights_by_shape(layers: Iterable[torch.nn.Linear]) -> dict[Shape, list[torch.Tensor]]:
    """Each distinct weight once (a tied head shares the embedding's), grouped by shape."""
    out: dict[Shape, list[torch.Tensor]] = {}
    seen: set[int] = set()
    for layer in layers:
        w = layer.weight
        if w.data_ptr() in seen:
            continue
        seen.add(w.data_ptr())
        out.setdefault((layer.in_features, layer.out_features), []).append(w.detach())
    return out


Timer = Callable[[Callable[..., torch.Tensor], list[torch.Tensor], int], float]


def sweep_seconds(product: Callable[..., torch.Tensor], weights: list[torch.Tensor],
                  rows: int) -> float:
    """Seconds of one sweep of ``product`` over ``weights`` at ``rows`` rows."""
    xs = [torch.randn(rows, w.shape[1], dtype=w.dtype, device=w.device) for w in weights]
    with torch.inference_mode():
        start = time.perf_counter()
        for w, x in zip(weights, xs, strict=True):
            product(x, w)
        return time.perf_counter() - start


def measure_plan(groups: dict[Shape, list[torch.Tensor]], max_rows: int = MAX_ROWS,
                 timer: Timer = sweep_seconds, min_bytes: int = MIN_GROUP_BYTES) -> Plan:
    """For each shape and each width 2..max_rows, the fastest way to get its rows: any
    product, at that width or padded with zero rows to a wider one that happens to run
    faster (on the EPYC above, four rows cost less than three). A choice other than the
    plain product at its own width must beat it by MARGIN."""
    plan: Plan = {}
    for shape, weights in groups.items():
        if sum(w.nelement() * w.element_size() for w in weights) < min_bytes:
            plan[shape] = {}
            continue
        keys = [(form, rows) for form in FORMS for rows in range(2, max_rows + 1)]
        times = dict.fromkeys(keys, float("inf"))
        for repeat in range(REPEATS + 1):  # interleaved, so a burst of load hits all alike
            for form, rows in keys:
                seconds = timer(FORMS[form], weights, rows)
                if repeat:  # the first round only warms the code paths
                    times[form, rows] = min(times[form, rows], seconds)
        choices: dict[int, Choice] = {}
        for rows in range(2, max_rows + 1):
            best = min((t, key) for key, t in times.items() if key[1] >= rows)
            if best[0] < MARGIN * times[("plain", rows)]:
                choices[rows] = best[1]
        plan[shape] = choices
    return plan


def plan_key(groups: dict[Shape, list[torch.Tensor]], machine: str, threads: int) -> str:
    dtypes = sorted({str(w.dtype) for ws in groups.values() for w in ws})
    facts = {"machine": machine, "torch": torch.__version__, "threads": threads,
             "dtypes": dtypes, "max_rows": MAX_ROWS, "margin": MARGIN,
             "version": 4, "min_bytes": MIN_GROUP_BYTES, "forms": sorted(FORMS),
             "shapes": sorted(f"{i}x{o}x{len(ws)}" for (i, o), ws in groups.items())}
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]


def load_plan(path: Path) -> Plan | None:
    try:
        raw = json.loads(path.read_text())
        plan: Plan = {}
        for i, o, choices in raw:
            plan[(int(i), int(o))] = {int(r): (str(f), int(w)) for r, f, w in choices}
            if any(f not in FORMS or w < r for r, (f, w) in plan[(int(i), int(o))].items()):
                return None
        return plan
    except (OSError, ValueError, TypeError):
        return None


def save_plan(path: Path, plan: Plan) -> None:
    """Atomically: daemons starting together on one machine may both measure."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps([[i, o, [[r, f, w] for r, (f, w) in sorted(choices.items())]]
                               for (i, o), choices in sorted(plan.items())]))
    tmp.replace(path)


def install(layers: Iterable[torch.nn.Linear], plan: Plan) -> int:
    """Give each linear whose shape has a choice a forward that applies it by row count;
    returns how many layers changed."""
    changed = 0
    for layer in layers:
        choices = plan.get((layer.in_features, layer.out_features))
        if not choices:
            continue
        layer.forward = types.MethodType(_planned_forward(choices), layer)  # type: ignore[method-assign]
        changed += 1
    return changed


def uninstall(layers: Iterable[torch.nn.Linear]) -> None:
    """Back to torch's own product everywhere (for side-by-side timing)."""
    for layer in layers:
        layer.__dict__.pop("forward", None)


def _planned_forward(choices: dict[int, Choice]
                     ) -> Callable[[torch.nn.Linear, torch.Tensor], torch.Tensor]:
    def forward(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // self.in_features if self.in_features else 0
        choice = choices.get(rows)
        if choice is None:
            return torch.nn.functional.linear(x, self.weight, self.bias)
        form, width = choice
        flat = x.reshape(rows, self.in_features)
        if width > rows:
            flat = torch.cat([flat, flat.new_zeros(width - rows, self.in_features)])
        y = FORMS[form](flat, self.weight)[:rows]
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)
    return forward


def tune(model: torch.nn.Module, cache_dir: Path | None, machine: str) -> Plan:
    """Measure (or load) this model's plan on this machine and install it; CPU weights only
    (anything else keeps torch's products: returns an empty plan)."""
    layers = linears(model)
    groups = weights_by_shape(layers)
    if not groups or any(w.device.type != "cpu" for ws in groups.values() for w in ws):
        return {}
    path = (cache_dir / "gemm" / f"{plan_key(groups, machine, torch.get_num_threads())}.json"
            if cache_dir is not None else None)
    plan = load_plan(path) if path is not None else None
    if plan is None:
        start = time.perf_counter()
        plan = measure_plan(groups)
        log.info("verify widths: measured linear layouts in %.1f s", time.perf_counter() - start)
        if path is not None:
            save_plan(path, plan)
    changed = install(layers, plan)
    log.info("verify widths: %s on %d layers", describe(plan), changed)
    return plan


def describe(plan: Plan) -> str:
    """One line for the log: shape: rows→form@width for each rows that changed."""
    return "; ".join(f"{i}x{o}: " + " ".join(f"{r}→{f}@{w}" for r, (f, w) in sorted(c.items()))
                     for (i, o), c in sorted(plan.items()) if c) or "torch's own everywhere"
