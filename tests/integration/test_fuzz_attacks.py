"""Every attack class of ``tools/fuzz_attacks.py`` for about 25 s against a live tiny daemon
beside the real client on the tiny pair: the daemon stays up, its descriptors stay bounded,
no attack gets a wrong answer and the good client's tokens never change. (``tools/fuzz
--minutes 10`` is the benchmark, with the RSS and p99 checks on the real pair.)"""

from __future__ import annotations

import pytest
from edgespec.tools.fuzz_attacks import ATTACKS
from edgespec.tools.fuzz_live import run_benchmark

pytestmark = pytest.mark.slow


def test_every_attack_class_beside_a_good_client(tiny_pair, tmp_path):
    result = run_benchmark(0.4, "tiny", list(ATTACKS), tmp_path / "fuzz.json", quiet_runs=2,
                           max_tokens=32, progress=False)
    checks = result["checks"]
    assert checks["daemon_alive"], result
    assert checks["no_changed_tokens"], result
    assert checks["no_wrong_answers"], result
    assert checks["fds_bounded"], result
    attack = result["attack"]
    for did in ("race_rounds", "sampling_rounds", "hog_rounds", "raw_connections",
                "flood_cut", "frames"):
        assert attack.get(did, 0) > 0, (did, attack)
    assert result["good_runs_attack"] >= 2, result
    stats = result["daemon_stats"]
    assert stats["connections_cut_backlog"] >= 1 and stats["epochs_tracked"] <= 1024, stats
