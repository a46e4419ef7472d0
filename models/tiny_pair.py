"""A tiny random-weight draft/target pair with SmolLM2's tokenizer, for cheap statistics.

Checking that speculative sampling reproduces the target's distribution takes thousands of
draws through a real daemon and a real llama.cpp draft; with SmolLM2-135M each draw costs a
quarter of a second here, so a test that can see a 2 % error would run for an hour. These
two GGUF files are llama-architecture models with 2 layers of width 64 (about 3 M
parameters, nearly all of them the tied embedding), built from a fixed seed in a second:

* the *target* GGUF is served by ``verifyd --target tiny-target.gguf`` (transformers
  converts it to a float32 snapshot like any other GGUF, so its tokenizer is SmolLM2's and
  the vocabulary fingerprints match);
* the *draft* GGUF holds the target's weights plus noise, so the draft agrees with the
  target often but not always and both branches of rejection sampling run.

The embedding is scaled up so the logits have a spread like a trained model's (a few nats),
not the near-uniform output of a standard random init. Nothing is downloaded and nothing is
committed: the files are rebuilt deterministically into the cache.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from edgespec.models.paths import default_draft_gguf, file_digest, write_atomically

TINY_FORMAT = "tiny-v1"
# Keys that describe SmolLM2's size or quantization; the tiny files state their own.
_SIZE_KEYS = ("llama.", "general.file_type", "general.quantization_version",
              "general.size_label")


@dataclass(frozen=True)
class TinyShape:
    """Hyper-parameters of the tiny llama (head_dim = width / heads)."""

    width: int = 64
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    ffn: int = 128
    context: int = 8192  # above the client's n_ctx, so llama.cpp does not warn
    embedding_std: float = 0.35  # logits ~ N(0, (0.35 * sqrt(64))^2): a trained-like spread
    draft_noise: float = 0.05 # draft = target + noise of this many standard deviations


@dataclass(frozen=True)
class TinyPair:
    draft_gguf: Path
    target_gguf: Path


def _weights(vocab: int, shape: TinyShape, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Target weights in GGUF naming; numpy (out, in) is GGUF's [in, out]."""
    w, kv = shape.width, shape.width // shape.heads * shape.kv_heads

    def matrix(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(np.float32)

    tensors = {"token_embd.weight":
               (rng.standard_normal((vocab, w)) * shape.embedding_std).astype(np.float32)}
    for i in range(shape.layers):
        tensors |= {
            f"blk.{i}.attn_norm.weight": np.ones(w, np.float32),
            f"blk.{i}.attn_q.weight": matrix(w, w),
            f"blk.{i}.attn_k.weight": matrix(kv, w),
            f"blk.{i}.attn_v.weight": matrix(kv, w),
            f"blk.{i}.attn_output.weight": matrix(w, w) * np.float32(0.5),
            f"blk.{i}.ffn_norm.weight": np.ones(w, np.float32),
            f"blk.{i}.ffn_gate.weight": matrix(shape.ffn, w),
            f"blk.{i}.ffn_up.weight": matrix(shape.ffn, w),
            f"blk.{i}.ffn_down.weight": matrix(w, shape.ffn) * np.float32(0.5),
        }
    tensors["output_norm.weight"] = np.ones(w, np.float32)
    return tensors


def _perturbed(tensors: dict[str, np.ndarray], noise: float, rng: np.random.Generator
               ) -> dict[str, np.ndarray]:
    """Each matrix plus Gaussian noise scaled to its own spread; norms stay at one."""
    out = {}
    for name, value in tensors.items():
        if value.ndim == 2:
            value = value + rng.standard_normal(value.shape).astype(np.float32) * (
                noise * float(value.std()))
        out[name] = value.astype(np.float32)
    return out


def write_gguf(path: Path, tokenizer: Any, tensors: dict[str, np.ndarray], shape: TinyShape,
               name: str) -> None:
    """Write a float32 llama GGUF with the tokenizer metadata of ``tokenizer`` (a
    ``gguf.GGUFReader``, read once for both files: parsing SmolLM2's vocabulary is slow)."""
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    for key, field in tokenizer.fields.items():
        if key.startswith(("GGUF.", "general.architecture", "general.name", *_SIZE_KEYS)):
            continue
        sub_type = field.types[1] if len(field.types) > 1 else None
        writer.add_key_value(key, field.contents(), field.types[0], sub_type)
    head_dim = shape.width // shape.heads
    writer.add_name(name)
    writer.add_context_length(shape.context)
    writer.add_embedding_length(shape.width)
    writer.add_block_count(shape.layers)
    writer.add_feed_forward_length(shape.ffn)
    writer.add_head_count(shape.heads)
    writer.add_head_count_kv(shape.kv_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(tensors["token_embd.weight"].shape[0])
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    for tensor_name, value in tensors.items():
        writer.add_tensor(tensor_name, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def ensure_tiny_pair(cache_dir: Path, seed: int = 0, shape: TinyShape | None = None,
                     tokenizer_source: Path | None = None) -> TinyPair:
    """Return the cached tiny (draft, target) GGUFs, building them the first time."""
    shape = shape or TinyShape()
    source = tokenizer_source or default_draft_gguf()
    shape_id = hashlib.sha256(repr(shape).encode()).hexdigest()[:8]
    tag = f"{TINY_FORMAT}-s{seed}-{file_digest(source)[:8]}-{shape_id}"
    folder = cache_dir / "tiny" / tag
    pair = TinyPair(folder / "tiny-draft.gguf", folder / "tiny-target.gguf")
    if pair.draft_gguf.is_file() and pair.target_gguf.is_file():
        return pair
    folder.mkdir(parents=True, exist_ok=True)
    import gguf

    tokenizer = gguf.GGUFReader(source)
    rng = np.random.default_rng(seed)
    target = _weights(len(tokenizer.fields["tokenizer.ggml.tokens"].data), shape, rng)
    write_atomically(pair.target_gguf,
                     lambda tmp: write_gguf(tmp, tokenizer, target, shape, "edgespec tiny target"))
    draft = _perturbed(target, shape.draft_noise, rng)
    write_atomically(pair.draft_gguf,
                     lambda tmp: write_gguf(tmp, tokenizer, draft, shape, "edgespec tiny draft"))
    return pair
