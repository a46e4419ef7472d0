"""Benchmark JSON carries exactly the fields README's Benchmark sections document."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest
from edgespec.edge_client.stats import GenerationStats
from edgespec.tools.bench import (
    BOUND_FIELDS,
    COMPONENT_FIELDS,
    RTT_CHAIN_FIELDS,
    RTT_FIELDS,
    RTT_SET_FIELDS,
    RTT_UNCHAINED_FIELDS,
    SET_FIELDS,
    Components,
    Tally,
    summarize,
    summarize_rtt,
)
from edgespec.tools.bench_batching import SYSTEM_FIELDS, system_row
from edgespec.tools.bound import VerifyCost

README = Path(__file__).resolve().parents[2] / "README.md"


def benchmark_section() -> str:
    text = README.read_text()
    return text[text.index("## Benchmark"):text.index("## Running verifyd for others")]


def components(rtts: tuple[float, ...] = (0.0,)) -> Components:
    return Components(draft_s_per_token=0.02, verify=VerifyCost.from_table({1: 0.05, 17: 0.2}),
                      verify_threads=1, generate_step_s=0.04,
                      round_trip_s={r: r / 1000 + 1e-4 for r in rtts}, context_tokens=100,
                      k_max=16)


def tally(tokens: int, seconds: float) -> Tally:
    return Tally(tokens=tokens, seconds=seconds, outputs=[[1] * tokens])


def stats() -> GenerationStats:
    return GenerationStats(rounds=10, drafted=60, accepted=50, rejected_rounds=5, generated=60,
                           wall_s=3.0, draft_s=1.0, wait_s=1.5, verify_s=1.0, open_s=0.2,
                           round_trip_s=1.8)


def test_bench_fields_match_the_constants():
    tallies = {"target_generate": tally(60, 4.0), "daemon_k0": tally(60, 5.0),
               "edgespec": tally(60, 2.0)}
    out = summarize(tallies, {"daemon_k0": stats(), "edgespec": stats()}, components(),
                    pipeline=True)
    assert tuple(out) == SET_FIELDS
    assert out["identical_token_ids"] is True
    assert set(out["components"]) == set(COMPONENT_FIELDS)
    assert set(out["bound"]["edgespec"]) == set(BOUND_FIELDS)
    assert set(out["bound"]["daemon_k0"]) == set(BOUND_FIELDS)
    assert out["bound"]["edgespec"]["measured_over_bound"] > 0


def test_rtt_fields_match_the_constants():
    rtts = (0.0, 50.0)
    tallies = {"target_generate": tally(60, 4.0), "target_daemon_cores": tally(60, 5.0),
               **{f"edgespec@{r:g}": tally(60, 2.0) for r in rtts}}
    out = summarize_rtt(tallies, {f"edgespec@{r:g}": stats() for r in rtts},
                        components(rtts), pipeline=True)
    assert tuple(out) == RTT_SET_FIELDS
    assert list(out["rtt"]) == ["0", "50"]
    for row in out["rtt"].values():
        assert tuple(row) == RTT_FIELDS
        assert set(row["bound"]) == set(BOUND_FIELDS)
    assert out["rtt"]["50"]["bound"]["bound_tok_s"] < out["rtt"]["0"]["bound"]["bound_tok_s"]


def test_rtt_chain_fields_come_with_vs_chain():
    rtts = (0.0, 50.0)
    tallies = {"target_generate": tally(60, 4.0), "target_daemon_cores": tally(60, 5.0),
               **{f"edgespec@{r:g}": tally(60, 2.0) for r in rtts},
               **{f"chain@{r:g}": tally(60, 3.0) for r in rtts}}
    trees = replace(stats(), tree_rounds=10, tree_nodes=80, tree_depth=40)
    out = summarize_rtt(tallies, {**{f"edgespec@{r:g}": trees for r in rtts},
                                  **{f"chain@{r:g}": stats() for r in rtts}},
                        components(rtts), pipeline=True)
    for row in out["rtt"].values():
        assert tuple(row) == RTT_FIELDS + RTT_CHAIN_FIELDS
        assert row["over_chain_tok_s"] == 1.5 and row["mean_tree_nodes"] == 8.0
        assert row["draft_shape"] == "tree (8.0 nodes, depth 4.0)"


def test_rtt_unchained_fields_come_with_vs_unchained():
    rtts = (50.0,)
    tallies = {"target_generate": tally(60, 4.0), "target_daemon_cores": tally(60, 5.0),
               "edgespec@50": tally(60, 2.0), "unchained@50": tally(60, 2.5)}
    chained = replace(stats(), chained_rounds=4)
    out = summarize_rtt(tallies, {"edgespec@50": chained, "unchained@50": stats()},
                        components(rtts), pipeline=True)
    row = out["rtt"]["50"]
    assert tuple(row) == RTT_FIELDS + RTT_UNCHAINED_FIELDS
    assert row["over_unchained_tok_s"] == 1.25 and row["chained_share"] == 0.4


def test_batching_fields_match_the_constant():
    row = system_row(100, 2.0, [10.0, 20.0, 30.0], 25, 2048 * 1024, 0, {})
    assert tuple(row) == SYSTEM_FIELDS
    assert row["tok_s"] == 50.0
    assert row["session_tok_s_p10"] == 10.0
    assert row["forwards_per_token"] == 0.25


@pytest.mark.parametrize("fields", [SET_FIELDS, RTT_SET_FIELDS, RTT_FIELDS, RTT_CHAIN_FIELDS,
                                    RTT_UNCHAINED_FIELDS, BOUND_FIELDS, COMPONENT_FIELDS,
                                    SYSTEM_FIELDS])
def test_readme_documents_every_field(fields: tuple[str, ...]):
    documented = set(re.findall(r"`([a-z0-9_]+)`", benchmark_section()))
    assert set(fields) - documented == set()


def test_components_keep_each_part_at_its_fastest_measurement():
    slow_start = Components(0.03, VerifyCost.from_table({1: 0.09, 17: 0.2}), 1, 0.05,
                            {0.0: 0.002}, 100, 16)
    fast_end = Components(0.02, VerifyCost.from_table({1: 0.05, 17: 0.3}), 1, 0.06,
                          {0.0: 0.001}, 100, 16)
    both = slow_start.fastest(fast_end)
    assert both.draft_s_per_token == 0.02
    assert both.verify.seconds == (0.05, 0.2)
    assert both.generate_step_s == 0.05
    assert both.round_trip_s == {0.0: 0.001}
