"""The float32 target snapshot: complete, loadable by plain transformers, same logits as GGUF."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from edgespec.models import convert
from edgespec.models.convert import ensure_target_snapshot, resolve_target
from edgespec.models.paths import ModelNotFound


def test_snapshot_files(target_dir: Path) -> None:
    from safetensors import safe_open

    names = set(os.listdir(target_dir))
    assert {"config.json", "model.safetensors", "tokenizer.json", convert.SNAPSHOT_MARKER} <= names
    assert not any(name.endswith(".tmp") for name in os.listdir(target_dir.parent))
    config = json.loads((target_dir / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["tie_word_embeddings"] is True
    with safe_open(str(target_dir / "model.safetensors"), framework="pt") as weights:
        keys = set(weights.keys())
        embed = weights.get_slice("model.embed_tokens.weight")
        assert embed.get_dtype() == "F32"
        assert embed.get_shape() == [config["vocab_size"], config["hidden_size"]]
    assert "lm_head.weight" not in keys  # tied: stored once, re-tied on load


def test_snapshot_tokenizer_keeps_chat_template(snapshot_tokenizer: Any) -> None:
    assert snapshot_tokenizer.chat_template
    text = snapshot_tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text.endswith("<|im_start|>assistant\n")
    assert "<|im_start|>user\nhi<|im_end|>\n" in text


@pytest.mark.slow
def test_snapshot_logits_equal_gguf_logits(
    draft_gguf: Path, target_dir: Path, snapshot_tokenizer: Any
) -> None:
    """The whole point of the snapshot: a cheaper load of *exactly* the same network."""
    import torch
    from transformers import AutoModelForCausalLM

    reference = convert.load_gguf_weights(draft_gguf)
    loaded = AutoModelForCausalLM.from_pretrained(target_dir).eval()
    assert loaded.dtype == torch.float32
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()
    text = "<|im_start|>user\nWrite a haiku about the sea.<|im_end|>\n<|im_start|>assistant\n"
    ids = torch.tensor([snapshot_tokenizer(text, add_special_tokens=False).input_ids])
    with torch.inference_mode():
        want = reference(ids).logits
        got = loaded(ids).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_cached_snapshot_is_not_rebuilt(
    monkeypatch: pytest.MonkeyPatch, cache_dir: Path, draft_gguf: Path, target_dir: Path
) -> None:
    def boom(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("converted again")

    monkeypatch.setattr(convert, "convert_gguf", boom)
    assert ensure_target_snapshot(draft_gguf, cache_dir, progress=False) == target_dir


def test_failed_conversion_leaves_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"GGUF" + bytes(64))

    def crash(_gguf: Path) -> tuple[Any, Any]:
        raise RuntimeError("simulated crash while loading")

    monkeypatch.setattr(convert, "load_gguf_model", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        ensure_target_snapshot(fake, tmp_path / "cache", progress=False)
    assert os.listdir(tmp_path / "cache" / "targets") == []


def test_missing_gguf_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound, match="does not exist"):
        ensure_target_snapshot(tmp_path / "absent.gguf", tmp_path, progress=False)


def test_resolve_target(cache_dir: Path, draft_gguf: Path, target_dir: Path) -> None:
    assert resolve_target(None, cache_dir, progress=False) == str(target_dir)
    assert resolve_target("default", cache_dir, progress=False) == str(target_dir)
    assert resolve_target(str(draft_gguf), cache_dir, progress=False) == str(target_dir)
    assert resolve_target(str(target_dir), cache_dir, progress=False) == str(target_dir)


def test_resolve_target_passes_hub_ids_through(cache_dir: Path) -> None:
    for hub_id in ("HuggingFaceTB/SmolLM2-135M-Instruct", "gpt2"):
        assert resolve_target(hub_id, cache_dir, progress=False) == hub_id


def test_resolve_target_missing_local_path(cache_dir: Path, tmp_path: Path) -> None:
    for spec in (str(tmp_path / "gone"), str(tmp_path / "gone.gguf"), "./nope.gguf"):
        with pytest.raises(ModelNotFound, match="not a model directory"):
            resolve_target(spec, cache_dir, progress=False)
