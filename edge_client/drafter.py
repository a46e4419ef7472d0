"""The draft model on llama.cpp: argmax or sampled drafting, rollback by moving a length.

Rollback never recomputes: setting ``n_tokens`` back makes llama-cpp-python's ``eval`` drop
the KV cache past that position before it appends, as llama.cpp's speculative example does.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np
import numpy.typing as npt
from edgespec.edge_client.draft_sampling import DraftSampling, draft_uniform, draw, sparse_q
from edgespec.models.cpu import AmxDecision, amx_decision
from edgespec.wire.codec import SparseQ

QRow = tuple[int, npt.NDArray[np.int32], npt.NDArray[np.float32]]  # token, support ids, probs
log = logging.getLogger(__name__)


@functools.cache
def llama_amx_decision() -> AmxDecision:
    """Whether this llama.cpp build could reach its AMX kernels on this CPU (said once)."""
    decision = amx_decision(llama_cpp.llama_print_system_info().decode(errors="replace"))
    if decision.avoid_extra_buffers:
        log.warning("llama.cpp was built with AMX kernels, which crash on some AMX CPUs "
                    "(llama.cpp#20824): drafting without extra buffer types (slower). "
                    "For full speed: %s", decision.fix)
    return decision


@contextlib.contextmanager
def _without_extra_buffers() -> Iterator[None]:
    """Load with ``use_extra_bufts = False``, the one switch that keeps the AMX buffer type
    (and with it ``ggml_backend_amx_mul_mat``) unreachable. ``Llama()`` builds its model
    params inside its constructor, so the defaults it asks for are the only hook."""
    low = llama_cpp.llama_cpp
    original = low.llama_model_default_params

    def params() -> Any:
        p = original()
        p.use_extra_bufts = False
        return p

    low.llama_model_default_params = params
    try:
        yield
    finally:
        low.llama_model_default_params = original


class Drafter:
    """Holds one llama.cpp context whose KV mirrors a token list we choose."""

    def __init__(self, gguf: Path | str, n_ctx: int = 4096, n_threads: int = 2,
                 n_batch: int = 512):
        self.amx = llama_amx_decision()
        guard = _without_extra_buffers() if self.amx.avoid_extra_buffers \
            else contextlib.nullcontext()
        with guard:
            self.llm = llama_cpp.Llama(
                model_path=str(gguf), n_ctx=n_ctx, n_batch=n_batch, n_threads=n_threads,
                n_threads_batch=n_threads, logits_all=False, flash_attn=True, verbose=False,
            )
        self.n_vocab = self.llm.n_vocab()
        self.n_threads = n_threads
        self.n_ctx = n_ctx
        self._logits_valid = False  # True when the context's last logits row follows n_tokens
        self.sampling: DraftSampling | None = None  # None or temperature 0: argmax drafting
        self._q: dict[int, QRow] = {}  # position -> what was sampled there and from which q
        # Drafting for a target with another tokenizer, sampled: only tokens the target also
        # has may be drawn (token-level intersection), so q is a distribution over its ids.
        self.allowed: npt.NDArray[np.bool_] | None = None

    def set_threads(self, n_threads: int) -> None:
        """Use ``n_threads`` from the next decode on (after the daemon said where it runs)."""
        llama_cpp.llama_set_n_threads(self.llm.ctx, n_threads, n_threads)
        self.n_threads = n_threads

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
        """Propose ``k`` tokens after the current context, evaluating each one.

        Argmax unless ``sampling`` asks for a sampled draft; then each token's exact q is
        kept by position for ``sparse_q``.

        The last proposal is evaluated too, so the logits then predict the target's bonus
        token and a fully accepted round needs no recomputation.
        """
        out: list[int] = []
        for _ in range(k):
            if self.llm.n_tokens + 1 >= self.n_ctx:
                break
            token = self.next_sampled() if self.sampling and self.sampling.sparse \
                else self.next_greedy()
            out.append(token)
            self._eval([token])
        return out

    def next_greedy(self) -> int:
        """The draft's argmax after the current context (needs valid logits)."""
        return int(self._allowed_logits().argmax())

    def next_sampled(self) -> int:
        """A draw from the draft's own sparse q, keyed by (seed, position); q is recorded."""
        assert self.sampling is not None
        position = self.llm.n_tokens
        ids, probs = sparse_q(self._allowed_logits(), self.sampling)
        token = draw(ids, probs, draft_uniform(self.sampling.seed, position))
        self._q[position] = (token, ids, probs)
        return token

    def sparse_q(self, position: int, draft: Sequence[int]) -> SparseQ | None:
        """The q each of ``draft`` (starting at ``position``) was drawn from; None for argmax."""
        if not (self.sampling and self.sampling.sparse) or not draft:
            return None
        rows = [self._q[position + i] for i in range(len(draft))]
        if [row[0] for row in rows] != list(draft):
            raise RuntimeError("draft tokens and their recorded q disagree")
        self._q = {n: row for n, row in self._q.items() if n >= position}
        return SparseQ(np.array([len(r[1]) for r in rows], dtype=np.int32),
                       np.concatenate([r[1] for r in rows]) if rows else np.zeros(0, np.int32),
                       np.concatenate([r[2] for r in rows]) if rows else np.zeros(0, np.float32))

    def _logits(self) -> npt.NDArray[np.float32]:
        """The last logits row (a view into llama.cpp's buffer: read it before the next eval)."""
        if not self._logits_valid:
            raise RuntimeError("no logits: call sync() first")
        ptr = llama_cpp.llama_get_logits_ith(self.llm.ctx, -1)
        return np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)),
                                     shape=(self.n_vocab,))

    def _allowed_logits(self) -> npt.NDArray[np.float32]:
        logits = self._logits()
        if self.allowed is None:
            return logits
        return np.where(self.allowed, logits, np.float32(-np.inf)).astype(np.float32)

    def _eval(self, tokens: Sequence[int]) -> None:
        self.llm.eval(list(tokens))
        self._logits_valid = True
