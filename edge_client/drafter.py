"""The draft model on llama.cpp: greedy drafting and rollback by moving a length.

Rollback never recomputes: setting ``n_tokens`` back makes llama-cpp-python's ``eval`` drop
the KV cache past that position before it appends, as llama.cpp's speculative example does.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from pathlib import Path

import llama_cpp
import numpy as np


class Drafter:
    """Holds one llama.cpp context whose KV mirrors a token list we choose."""

    def __init__(self, gguf: Path | str, n_ctx: int = 4096, n_threads: int = 2,
                 n_batch: int = 512):
        self.llm = llama_cpp.Llama(
            model_path=str(gguf), n_ctx=n_ctx, n_batch=n_batch, n_threads=n_threads,
            n_threads_batch=n_threads, logits_all=False, flash_attn=True, verbose=False,
        )
        self.n_vocab = self.llm.n_vocab()
        self.n_ctx = n_ctx
        self._logits_valid = False  # True when the context's last logits row follows n_tokens

    # ------------------------------------------------------------ text

    def tokenize(self, text: str, special: bool = True) -> list[int]:
        return list(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=special))

    def detokenize(self, tokens: Sequence[int]) -> bytes:
        return bytes(self.llm.detokenize(list(tokens)))

    def token_text(self, token: int) -> str:
        return bytes(self.llm.detokenize([token], special=True)).decode("utf-8", "replace")

    # ------------------------------------------------------------ state

    @property
    def tokens(self) -> list[int]:
        return [int(t) for t in self.llm.input_ids[: self.llm.n_tokens]]

    def sync(self, tokens: Sequence[int]) -> None:
        """Make the context hold exactly ``tokens`` with logits for the next position.

        Reuses the longest common prefix already in the KV cache; evaluates only the rest.
        """
        if len(tokens) == 0:
            raise ValueError("cannot draft from an empty context")
        if len(tokens) >= self.n_ctx:
            raise ValueError(f"{len(tokens)} tokens exceed the draft context of {self.n_ctx}")
        held = self.llm.input_ids[: self.llm.n_tokens]
        limit = min(len(held), len(tokens))
        mismatch = np.flatnonzero(held[:limit] != np.asarray(tokens[:limit]))
        keep = int(mismatch[0]) if mismatch.size else limit
        if keep == len(tokens) == self.llm.n_tokens and self._logits_valid:
            return
        keep = min(keep, len(tokens) - 1)  # always evaluate at least one token for fresh logits
        self.llm.n_tokens = keep
        self._eval(tokens[keep:])

    def draft(self, k: int) -> list[int]:
        """Greedily propose ``k`` tokens after the current context, evaluating each one.

        The last proposal is evaluated too, so the logits then predict the target's bonus
        token and a fully accepted round needs no recomputation.
        """
        out: list[int] = []
        for _ in range(k):
            if self.llm.n_tokens + 1 >= self.n_ctx:
                break
            token = self.next_greedy()
            out.append(token)
            self._eval([token])
        return out

    def next_greedy(self) -> int:
        """The draft's argmax after the current context (needs valid logits)."""
        if not self._logits_valid:
            raise RuntimeError("no logits: call sync() first")
        ptr = llama_cpp.llama_get_logits_ith(self.llm.ctx, -1)
        row = np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)),
                                    shape=(self.n_vocab,))
        return int(row.argmax())

    def _eval(self, tokens: Sequence[int]) -> None:
        self.llm.eval(list(tokens))
        self._logits_valid = True
