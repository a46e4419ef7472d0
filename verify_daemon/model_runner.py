"""The target model: loading, KV caches and forward passes; the only module touching devices."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from edgespec.models.fingerprint import fingerprint_hf_tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache, GenerationConfig

log = logging.getLogger(__name__)


def pick_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda requested but torch sees no CUDA device")
    return device


def pick_dtype(requested: str, device: torch.device) -> torch.dtype:
    """float32 on CPU (bfloat16 matmuls are slow there), bfloat16 on CUDA."""
    if requested == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    names = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    return names[requested]


def stop_token_ids(tokenizer: object, generation_config: GenerationConfig | None
                   ) -> tuple[int, ...]:
    """The ids that end an answer: the generation config's eos ids plus the tokenizer's eos."""
    ids: list[int] = []
    eos = getattr(generation_config, "eos_token_id", None)
    if isinstance(eos, int):
        ids.append(eos)
    elif isinstance(eos, list | tuple):
        ids.extend(int(e) for e in eos)
    tok_eos = getattr(tokenizer, "eos_token_id", None)
    if isinstance(tok_eos, int) and tok_eos not in ids:
        ids.append(tok_eos)
    return tuple(ids)


@dataclass(frozen=True, slots=True)
class TargetInfo:
    name: str
    vocab_size: int
    max_context: int
    eos_ids: tuple[int, ...]
    chat_template: str
    fingerprint: bytes


class ModelRunner:
    """Owns the target model and every KV tensor; callers hold caches only as opaque handles."""

    def __init__(self, target: str, device: str = "auto", dtype: str = "auto", threads: int = 0):
        if threads > 0:
            torch.set_num_threads(threads)
        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        self.tokenizer = AutoTokenizer.from_pretrained(target)
        self.model = AutoModelForCausalLM.from_pretrained(
            target, dtype=self.dtype, device_map=self.device
        ).eval()
        config = self.model.config
        self.info = TargetInfo(
            name=str(getattr(config, "_name_or_path", target)).rstrip("/").split("/")[-1],
            vocab_size=int(config.vocab_size),
            max_context=int(getattr(config, "max_position_embeddings", 8192)),
            eos_ids=stop_token_ids(self.tokenizer, self.model.generation_config),
            chat_template=self.tokenizer.chat_template or "",
            fingerprint=fingerprint_hf_tokenizer(self.tokenizer),
        )
        log.info("target %s on %s (%s)", self.info.name, self.device, self.dtype)

    def new_cache(self) -> DynamicCache:
        return DynamicCache(config=self.model.config)

    @staticmethod
    def new_generator() -> torch.Generator:
        """A session's own generator; sampling draws run on the CPU, so it lives there."""
        return torch.Generator(device="cpu")

    @torch.inference_mode()
    def prefill(self, cache: DynamicCache, tokens: list[int], chunk: int) -> None:
        """Append ``tokens`` to the cache in chunks, so a long prompt never needs one huge pass."""
        for start in range(0, len(tokens), chunk):
            ids = torch.tensor([tokens[start : start + chunk]], device=self.device)
            self.model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)

    @torch.inference_mode()
    def verify_logits(self, cache: DynamicCache, tokens: list[int]) -> torch.Tensor:
        """Run ``tokens`` after the cache; return the target's logits after each, (len, V)."""
        ids = torch.tensor([tokens], device=self.device)
        out = self.model(input_ids=ids, past_key_values=cache, use_cache=True)
        logits: torch.Tensor = out.logits[0]
        return logits

    @staticmethod
    def cached_length(cache: DynamicCache) -> int:
        return int(cache.get_seq_length())

    @staticmethod
    def truncate(cache: DynamicCache, length: int) -> None:
        """Drop every cached position at or after ``length`` (rejected draft tokens)."""
        surplus = int(cache.get_seq_length()) - length
        if surplus > 0:
            cache.crop(-surplus)  # transformers 5: a negative count of tokens to drop
