"""Fixtures for the model-file tests: the real cache, so conversions are reused across runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="session")
def model_cache() -> Path:
    """The user's real edgespec cache (CI keeps ~/.cache), not a tmp dir: conversion is slow."""
    from edgespec.models.paths import default_cache_dir

    path = default_cache_dir()
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def default_gguf() -> Path:
    from edgespec.models.paths import default_draft_gguf

    return default_draft_gguf()


@pytest.fixture(scope="session")
def hard_gguf(model_cache: Path) -> Path:
    from edgespec.models.paths import hard_draft_gguf

    return hard_draft_gguf(model_cache)


@pytest.fixture(scope="session")
def snapshot(model_cache: Path, default_gguf: Path) -> Path:
    from edgespec.models.convert import ensure_target_snapshot

    return ensure_target_snapshot(default_gguf, model_cache, progress=False)


@pytest.fixture(scope="session")
def snapshot_tokenizer(snapshot: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(snapshot)


@pytest.fixture(scope="session")
def draft_vocab(default_gguf: Path) -> Any:
    """The default draft opened vocab-only, as the edge client would for tokenizing."""
    from edgespec.models.fingerprint import open_vocab_only

    return open_vocab_only(default_gguf)
