"""Sampling across tokenizers through a real daemon: the tiny SmolLM2-tokenizer draft before a
tiny random-weight target with Gemma 3's tokenizer (``models/tiny_cross.py``). The first two
generated tokens, drawn many times per q mode, must follow the target alone's exact law
(chi-square). A draw costs 30-75 ms here (262,144-entry p), so the default suite draws 2,000
(about 4 minutes). This law is harder to test than the one-tokenizer pair's: at 10,000 draws
the power to see its hardest 2 % error is 81 %, so the power of ``test_sampling.py`` (> 95 %)
needs 15,000 (``EDGESPEC_STAT_DRAWS=15000``, ~15 minutes; measured: sparse q p = 0.813,
one-hot q p = 0.252, the 2 % error rejected at 9.4e-9 and 2e-6, power 97.2 %)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from edgespec.edge_client.client import EdgeClient
from edgespec.edge_client.config import ClientConfig
from edgespec.tools.daemon_proc import DaemonProcess, start_daemon
from edgespec.tools.distribution import ALPHA, PROMPT, check_mode, describe, exact_first_two
from edgespec.tools.target_alone import TargetAlone

from ..conftest import THREADS, TinyModels

pytestmark = pytest.mark.slow
DRAWS = int(os.environ.get("EDGESPEC_STAT_DRAWS", "2000"))


@pytest.fixture(scope="module")
def cross_target(cache_dir: Path, gemma_dir: Path) -> Path:
    from edgespec.models.convert import ensure_target_snapshot
    from edgespec.models.tiny_cross import ensure_tiny_cross_target

    return ensure_target_snapshot(ensure_tiny_cross_target(cache_dir), cache_dir,
                                  progress=False)


@pytest.fixture(scope="module")
def cross_daemon(cross_target: Path, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[DaemonProcess]:
    d = start_daemon(cross_target, tmp_path_factory.mktemp("verifyd-cross") / "verifyd.log",
                     threads=THREADS)
    yield d
    d.stop()


@pytest.fixture(scope="module")
def cross_client(cross_daemon: DaemonProcess, tiny_pair: TinyModels) -> Iterator[EdgeClient]:
    c = EdgeClient(ClientConfig(server=cross_daemon.endpoint,
                                draft_path=str(tiny_pair.draft_gguf), threads=1, draft_tokens=4))
    yield c
    c.close()


@pytest.mark.parametrize("draft_temperature", [None, 0.0], ids=["sparse_q", "one_hot_q"])
def test_first_two_tokens_across_tokenizers_match_the_target_alone(
        cross_client, cross_target, draft_temperature):
    assert cross_client.translation is not None  # two tokenizers: the client translates
    prompt = cross_client.prompt_tokens(PROMPT)  # the target's own ids
    law = exact_first_two(TargetAlone(cross_target, 1), prompt, cross_client.stop_ids)
    check, counts = check_mode(cross_client, law, prompt, DRAWS, draft_temperature)
    print("\n" + describe(check))
    assert set(counts) <= set(law), "a token the target alone can never produce"
    assert 0.05 < check.acceptance_rate < 0.95  # both accept and reject branches ran
    assert check.p_value > ALPHA
    if DRAWS >= 15000:  # enough to tell this law from its hardest 2 % error
        assert check.power_vs_2pct_error > 0.95
        assert check.p_value_vs_2pct_error < ALPHA
