"""Linear layers at verify widths: the planned products equal torch's, the plan follows the
timings it is given, and it is cached per machine."""

from __future__ import annotations

import json

import pytest
import torch
from edgespec.verify_daemon import small_gemm
from edgespec.verify_daemon.small_gemm import (
    describe,
    install,
    load_plan,
    measure_plan,
    plan_key,
    save_plan,
    tune,
    weights_by_shape,
)


def _layers(bias: bool) -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(24, 40, bias=bias),
                               torch.nn.Linear(40, 24, bias=bias)).eval()


@pytest.mark.parametrize("bias", [False, True])
def test_every_choice_gives_torchs_product_at_every_width(bias):
    model = _layers(bias)
    inputs = {rows: torch.randn(1, rows, 24) for rows in range(1, 15)}
    with torch.inference_mode():
        wants = {rows: model(x) for rows, x in inputs.items()}
        # tall at its own width, tall and plain padded to wider ones, plain untouched
        plan = {(24, 40): {2: ("tall", 2), 3: ("tall", 4), 5: ("plain", 8), 6: ("tall", 12)},
                (40, 24): {2: ("plain", 3), 3: ("tall", 3), 4: ("tall", 9)}}
        if "onednn" in small_gemm.FORMS:  # oneDNN's, at its own width and padded
            plan[(24, 40)] |= {7: ("onednn", 7), 8: ("onednn", 11)}
            plan[(40, 24)] |= {5: ("onednn", 5)}
        assert install(small_gemm.linears(model), plan) == 2
        for rows, x in inputs.items():
            got = model(x)
            assert got.shape == wants[rows].shape
            torch.testing.assert_close(got, wants[rows], rtol=1e-5, atol=1e-5)
            flat = model(x[0])  # a 2-D input takes the same path
            torch.testing.assert_close(flat, wants[rows][0], rtol=1e-5, atol=1e-5)


def _fake_timer(table):
    """Seconds by (form, rows) from ``table``, else 1.0 (never the real clock)."""
    def timer(product, weights, rows):
        return table.get((product.__name__, rows), 1.0)
    return timer


def test_the_plan_takes_a_product_or_a_padding_only_when_it_wins_by_the_margin():
    groups = {(8, 16): [torch.zeros(16, 8)]}
    timer = _fake_timer({
        ("tall", 2): 0.5,  # wins at its own width
        ("tall", 3): 0.95,  # within the margin of plain (1.0): not taken
        ("tall", 4): 0.6,  # so 3 is padded to 4 instead, and 4 itself runs tall
        ("plain", 6): 0.7,  # 5 pads to 6, where plain is the cheapest
        ("tall", 6): 0.8,
    })
    plan = measure_plan(groups, max_rows=7, timer=timer, min_bytes=0)[(8, 16)]
    assert plan[2] == ("tall", 2)
    assert plan[3] == ("tall", 4)
    assert plan[4] == ("tall", 4)
    assert plan[5] == ("plain", 6)
    assert 6 not in plan and 7 not in plan  # nothing cheaper: torch's own product
    assert 1 not in plan  # one row is always torch's (the target alone's path)
    assert all(width >= rows for rows, (_f, width) in plan.items())


def test_ties_and_noise_keep_torchs_product():
    groups = {(8, 16): [torch.zeros(16, 8)]}
    plan = measure_plan(groups, max_rows=6, timer=_fake_timer({}), min_bytes=0)
    assert plan == {(8, 16): {}}
    assert describe(plan) == "torch's own everywhere"


def test_weights_that_fit_in_a_cache_are_not_measured():
    groups = {(8, 16): [torch.zeros(16, 8)], (64, 1024): [torch.zeros(1024, 64)] * 2}

    def timer(product, weights, rows):
        assert weights[0].shape == (1024, 64), "timed a shape under the size floor"
        return 0.1 if product.__name__ == "tall" else 1.0

    plan = measure_plan(groups, max_rows=4, timer=timer, min_bytes=2 * 1024 * 64 * 4)
    assert plan[(8, 16)] == {}
    assert plan[(64, 1024)] == {2: ("tall", 2), 3: ("tall", 3), 4: ("tall", 4)}


def test_a_tied_weight_is_measured_once():
    embed = torch.nn.Embedding(50, 8)
    head = torch.nn.Linear(8, 50, bias=False)
    head.weight = embed.weight
    other = torch.nn.Linear(8, 50, bias=False)
    groups = weights_by_shape([head, head, other])
    assert [len(ws) for ws in groups.values()] == [2]


def test_plans_round_trip_and_a_broken_file_is_ignored(tmp_path):
    plan = {(24, 40): {2: ("tall", 2), 3: ("plain", 4)}, (40, 24): {}}
    path = tmp_path / "gemm" / "p.json"
    save_plan(path, plan)
    assert load_plan(path) == plan
    for text in ("{", "[[24, 40, [[2, \"bogus\", 2]]]]", "[[24, 40, [[4, \"tall\", 2]]]]",
                 "[1]"):
        path.write_text(text)
        assert load_plan(path) is None  # then the daemon measures again
    assert load_plan(tmp_path / "missing.json") is None


def test_the_key_names_the_machine_threads_and_shapes():
    groups = weights_by_shape(small_gemm.linears(_layers(False)))
    key = plan_key(groups, "cpu A", 1)
    assert key == plan_key(groups, "cpu A", 1)
    assert key != plan_key(groups, "cpu B", 1)
    assert key != plan_key(groups, "cpu A", 2)
    assert key != plan_key({(24, 40): groups[(24, 40)]}, "cpu A", 1)


def test_tune_measures_once_then_loads_the_cached_plan(tmp_path, monkeypatch):
    model = _layers(True)
    x = torch.randn(1, 3, 24)
    with torch.inference_mode():
        want = model(x)
    plan = tune(model, tmp_path, "test cpu")
    files = list((tmp_path / "gemm").glob("*.json"))
    assert len(files) == 1
    assert set(plan) == {(24, 40), (40, 24)}
    assert json.loads(files[0].read_text())  # readable JSON, not pickle

    def no_measuring(*_args, **_kwargs):
        raise AssertionError("measured again despite the cache")

    monkeypatch.setattr(small_gemm, "measure_plan", no_measuring)
    again = _layers(True)
    assert tune(again, tmp_path, "test cpu") == plan
    with torch.inference_mode():
        torch.testing.assert_close(again(x), want, rtol=1e-5, atol=1e-5)
