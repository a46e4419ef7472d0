"""Shared fixtures: the real models (converted once, cached) and a real verifyd subprocess."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from edgespec.tools.daemon_proc import DaemonProcess, start_daemon
from edgespec.tools.target_alone import TargetAlone

# Draft and target run at once (pipelined) on this machine in tests: a core each.
THREADS = int(os.environ.get("EDGESPEC_TEST_THREADS", "1"))


@dataclass(frozen=True)
class TinyModels:
    draft_gguf: Path
    target_dir: Path


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    from edgespec.models.paths import default_cache_dir

    path = default_cache_dir()
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def draft_gguf() -> Path:
    from edgespec.models.paths import default_draft_gguf

    return default_draft_gguf()


@pytest.fixture(scope="session")
def target_dir(cache_dir: Path, draft_gguf: Path) -> Path:
    from edgespec.models.convert import ensure_target_snapshot

    return ensure_target_snapshot(draft_gguf, cache_dir, progress=False)


@pytest.fixture(scope="session")
def daemon(target_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    log = tmp_path_factory.mktemp("verifyd") / "verifyd.log"
    d = start_daemon(target_dir, log, threads=THREADS)
    yield d
    d.stop()


@pytest.fixture(scope="session")
def tiny_pair(cache_dir: Path) -> TinyModels:
    """The tiny random-weight pair (SmolLM2's tokenizer): cheap enough for many draws."""
    from edgespec.models.convert import ensure_target_snapshot
    from edgespec.models.tiny_pair import ensure_tiny_pair

    pair = ensure_tiny_pair(cache_dir)
    return TinyModels(pair.draft_gguf, ensure_target_snapshot(pair.target_gguf, cache_dir,
                                                              progress=False))


@pytest.fixture(scope="session")
def tiny_daemon(tiny_pair: TinyModels, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[DaemonProcess]:
    log = tmp_path_factory.mktemp("verifyd-tiny") / "verifyd.log"
    d = start_daemon(tiny_pair.target_dir, log, threads=THREADS)
    yield d
    d.stop()


@pytest.fixture(scope="session")
def target_alone(target_dir: Path) -> TargetAlone:
    return TargetAlone(target_dir, THREADS, memo=True)


def assert_same_tokens(target_alone: TargetAlone, prompt_ids: list[int], got: list[int],
                       want: list[int], tie: float = 1e-4) -> None:
    """Token-identical, or else the first difference must be a numerical near-tie."""
    if got == want:
        return
    first = next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b),
                 min(len(got), len(want)))
    margin = target_alone.top2_margin(prompt_ids + want[:first])
    assert margin < tie, (
        f"differs at generated token {first}: got {got[first:first + 5]}, target alone "
        f"{want[first:first + 5]}; top-2 logit margin {margin:.3g} is not a tie"
    )


@pytest.fixture(scope="session")
def check_exact(target_alone: TargetAlone):
    """``check_exact(prompt_ids, got)``: compare with the target alone's greedy answer."""

    def check(prompt_ids: list[int], got: list[int], max_new_tokens: int) -> None:
        want = target_alone.greedy(prompt_ids, max_new_tokens)
        assert_same_tokens(target_alone, prompt_ids, got, want)

    return check


@pytest.fixture(scope="session")
def gemma_dir(cache_dir: Path) -> Path:
    """Gemma 3 270M (another tokenizer than the draft's), converted once and cached."""
    from edgespec.models.convert import ensure_target_snapshot
    from edgespec.models.paths import ModelNotFound, gemma_gguf

    try:
        gguf = gemma_gguf(cache_dir)
    except ModelNotFound as exc:
        pytest.skip(str(exc))
    return ensure_target_snapshot(gguf, cache_dir, progress=False)
