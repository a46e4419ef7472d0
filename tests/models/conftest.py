"""Fixtures for the model-file tests, on top of tests/conftest.py's real models and cache."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="session")
def hard_gguf(cache_dir: Path) -> Path:
    from edgespec.models.paths import hard_draft_gguf

    return hard_draft_gguf(cache_dir)


@pytest.fixture(scope="session")
def snapshot_tokenizer(target_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(target_dir)


@pytest.fixture(scope="session")
def draft_vocab(draft_gguf: Path) -> Any:
    """The default draft opened vocab-only, as the edge client would for tokenizing."""
    from edgespec.models.fingerprint import open_vocab_only

    return open_vocab_only(draft_gguf)
