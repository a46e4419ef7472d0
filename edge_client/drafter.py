"""The draft model on llama.cpp: argmax or sampled drafting, rollback by moving a length.

Rollback never recomputes: setting ``n_tokens`` back makes llama-cpp-python's ``eval`` drop
the KV cache past that position before it appends, as llama.cpp's speculative example does.

Token trees (``draft_tree``) decode one level per ``llama_decode``: the context is built with
``n_seq_max`` sequence ids over one unified KV buffer, the main branch stays on seq 0 and each
side branch gets its own seq id sharing the prefix cells (``llama_memory_seq_cp`` only tags
cells). ``accept_tree`` keeps the accepted path on seq 0 and drops every other branch, again
without recomputing anything.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np
import numpy.typing as npt
from edgespec.edge_client.draft_sampling import DraftSampling, draft_uniform, draw, sparse_q
from edgespec.edge_client.tree_draft import TokenTree, propose, select
from edgespec.models.cpu import AmxDecision, amx_decision
from edgespec.wire.codec import SparseQ

QRow = tuple[int, npt.NDArray[np.int32], npt.NDArray[np.float32]]  # token, support ids, probs
log = logging.getLogger(__name__)
# The load hooks below swap module-level defaults: two Drafters built at once must not see
# each other's (or restore the other's) patch half-way.
_DEFAULTS_LOCK = threading.Lock()


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


@contextlib.contextmanager
def _with_sequences(n_seq_max: int) -> Iterator[None]:
    """Build the context with ``n_seq_max`` sequence ids over one unified KV buffer (so a
    tree's branches share the prefix cells and each branch keeps the full ``n_ctx``).
    ``Llama()`` sets only the embedding case itself; the defaults it asks for are the hook."""
    low = llama_cpp.llama_cpp
    original = low.llama_context_default_params

    def params() -> Any:
        p = original()
        p.n_seq_max = n_seq_max
        p.kv_unified = True
        return p

    low.llama_context_default_params = params
    try:
        yield
    finally:
        low.llama_context_default_params = original


class Drafter:
    """Holds one llama.cpp context whose KV mirrors a token list we choose."""

    def __init__(self, gguf: Path | str, n_ctx: int = 4096, n_threads: int = 2,
                 n_batch: int = 512, n_seq_max: int = 16):
        """``n_seq_max``: the most branches a token tree may hold at once (1: chains only)."""
        if not 1 <= n_seq_max <= llama_cpp.llama_max_parallel_sequences():
            raise ValueError(f"n_seq_max must be in 1..{llama_cpp.llama_max_parallel_sequences()}")
        self.amx = llama_amx_decision()
        with _DEFAULTS_LOCK, contextlib.ExitStack() as guards:
            if self.amx.avoid_extra_buffers:
                guards.enter_context(_without_extra_buffers())
            guards.enter_context(_with_sequences(n_seq_max))
            self.llm = llama_cpp.Llama(
                model_path=str(gguf), n_ctx=n_ctx, n_batch=n_batch, n_threads=n_threads,
                n_threads_batch=n_threads, logits_all=False, flash_attn=True, verbose=False,
            )
        self.n_seq_max = int(llama_cpp.llama_n_seq_max(self.llm.ctx))
        self.n_batch = n_batch
        self.n_vocab = self.llm.n_vocab()
        self.n_threads = n_threads
        self.idle_threads = n_threads
        self._threads_now = n_threads
        self.n_ctx = n_ctx
        self._logits_valid = False  # True when the context's last logits row follows n_tokens
        self.sampling: DraftSampling | None = None  # None or temperature 0: argmax drafting
        self._q: dict[int, QRow] = {}  # position -> what was sampled there and from which q
        # Drafting for a target with another tokenizer, sampled: only tokens the target also
        # has may be drawn (token-level intersection), so q is a distribution over its ids.
        self.allowed: npt.NDArray[np.bool_] | None = None
        # The logits of a node a tree decode computed, standing in for the context's last
        # row after draft_tree / accept_tree (llama.cpp's own last row is another node's).
        self._held: npt.NDArray[np.float32] | None = None
        self._tree: TokenTree | None = None  # the last drafted tree
        self._tree_live = False  # its side branches are still in the KV (seq ids 1..)
        self._batch: Any = None  # a llama_batch for tree levels, allocated on first use

    def set_threads(self, n_threads: int, idle_threads: int = 0) -> None:
        """Use ``n_threads`` from the next decode on (after the daemon said where it runs);
        ``idle_threads`` (default the same) while ``daemon_idle(True)`` says no verify of
        ours can be running on this machine's other cores."""
        self.n_threads = n_threads
        self.idle_threads = idle_threads or n_threads
        self._use_threads(n_threads)

    def daemon_idle(self, idle: bool) -> None:
        """Switch between the shared-machine share and every core the daemon leaves idle."""
        self._use_threads(self.idle_threads if idle else self.n_threads)

    def _use_threads(self, n_threads: int) -> None:
        if n_threads != self._threads_now:
            llama_cpp.llama_set_n_threads(self.llm.ctx, n_threads, n_threads)
            self._threads_now = n_threads

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

    def sync(self, tokens: Sequence[int], chunk: int = 0,
             between: Callable[[], None] | None = None) -> None:
        """Make the context hold exactly ``tokens`` with logits for the next position.

        Reuses the longest common prefix already in the KV cache; evaluates only the rest,
        ``chunk`` tokens per decode (0: all at once) with ``between()`` before each, so a
        long prompt can move to more threads the moment the daemon's prefill is done.
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
        step = chunk or len(tokens)
        for start in range(keep, len(tokens), step):
            if between is not None:
                between()
            self._eval(tokens[start:start + step])

    def draft(self, k: int, between: Callable[[], None] | None = None) -> list[int]:
        """Propose ``k`` tokens after the current context, evaluating each one (``between()``
        runs before each evaluation).

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
            if between is not None:
                between()
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

    # ------------------------------------------------------------ token trees

    def draft_tree(self, max_nodes: int, max_depth: int, max_width: int = 4,
                   branch_below: float = 0.75) -> tuple[list[int], list[int]]:
        """Draft a token tree after the current context: (tokens, parents) in level order.

        ``parents[i]`` is -1 for a child of the root (the context's last token), else an
        earlier node. Each level is one llama.cpp decode (the last level too, so any accepted
        path is in the KV). A node branches into up to ``max_width`` children only where the
        draft's top-1 probability is below ``branch_below`` (0: never, i.e. the chain
        ``draft(max_depth)``; 1: wherever the budget allows); the main branch (seq 0) gets
        ``max_depth`` nodes first, the other ``max_nodes - max_depth`` go to the likeliest
        proposals (``tree_draft``). Sampled drafts keep each node's q row for ``tree_q``.

        Until ``accept_tree`` the context reads as the old one plus the main branch
        (``tokens``), like after ``draft``; a ``sync``/``draft`` drops the side branches.
        """
        if max_width < 1:
            raise ValueError("max_width must be at least 1")
        root = self._logits().copy()
        self._drop_sides()
        ctx_len = self.llm.n_tokens
        room = min(self.n_ctx - 1 - ctx_len, self.n_batch)  # cells left, one level's batch
        max_nodes = max(0, min(max_nodes, room))
        depth = max(0, min(max_depth, max_nodes))
        sampled = bool(self.sampling and self.sampling.sparse)
        tree = TokenTree(ctx_len, [], [], [], [], [], [] if sampled else None,
                         np.empty((max_nodes, self.n_vocab), np.float32), root)
        frontier: list[int] = [-1]  # node indices whose children the next level proposes
        next_seq = 1
        mem = llama_cpp.llama_get_memory(self.llm.ctx)
        llama_cpp.llama_memory_seq_rm(mem, 0, ctx_len, -1)  # seq 0 is exactly the context
        for level in range(1, depth + 1):
            position = ctx_len + level - 1
            proposals = [propose(self._masked(tree.logits[f] if f >= 0 else root),
                                 self.sampling, position, max_width, branch_below)
                         for f in frontier]
            path_probs = [self._path_prob(tree, f) for f in frontier]
            budget = max_nodes - len(tree.tokens) - 1 - (depth - level)
            chosen = select(proposals, path_probs, True, budget, self.n_seq_max - next_seq)
            first = len(tree.tokens)
            for f, j in chosen:
                parent = frontier[f]
                seq = self._seq_of(tree, parent)
                if j > 0:  # a side branch: share the parent's cells under a new seq id
                    llama_cpp.llama_memory_seq_cp(mem, seq, next_seq, -1, -1)
                    seq, next_seq = next_seq, next_seq + 1
                p = proposals[f][j]
                tree.tokens.append(p.token)
                tree.parents.append(parent)
                tree.depths.append(level)
                tree.seqs.append(seq)
                tree.probs.append(path_probs[f] * p.prob)
                if tree.rows is not None:
                    assert p.row is not None
                    tree.rows.append(p.row)
            self._tree_live = True
            self._decode_level(tree, first, position)
            frontier = list(range(first, len(tree.tokens)))
        tree.logits = tree.logits[: len(tree.tokens)]
        self._tree = tree
        self._tree_live = True  # even an empty tree can be accepted (path [])
        main = [tree.tokens[i] for i in range(len(tree.tokens)) if tree.seqs[i] == 0]
        self.llm.input_ids[ctx_len: ctx_len + len(main)] = main
        self.llm.n_tokens = ctx_len + len(main)
        if main:
            self._held = tree.logits[max(i for i, s in enumerate(tree.seqs) if s == 0)]
        return list(tree.tokens), list(tree.parents)

    def tree_q(self) -> SparseQ | None:
        """The last tree's q, one row per node in node order (None for an argmax draft).

        Row i is the exact distribution node i was drawn from given its earlier siblings.
        """
        if self._tree is None:
            raise RuntimeError("no tree drafted")
        return self._tree.q()

    @property
    def tree(self) -> TokenTree | None:
        """The last drafted tree (tokens, parents, seq ids, per-node logits and q rows)."""
        return self._tree

    def accept_tree(self, path: Sequence[int]) -> None:
        """Keep the root-down node ``path`` of the last tree (as VERDICT names it) on seq 0.

        The context becomes the old one plus the path's tokens, every other branch leaves the
        KV, and the logits are the path's last node's: the next ``sync(tokens + [next])``
        evaluates only the new token. Nothing is recomputed.
        """
        tree = self._tree
        if tree is None or not self._tree_live:
            raise RuntimeError("no tree in the KV to accept from (drafted? synced since?)")
        tokens = tree.path(path)
        start, end = tree.context_len, tree.context_len + len(path)
        mem = llama_cpp.llama_get_memory(self.llm.ctx)
        seq = tree.seqs[path[-1]] if path else 0
        if seq == 0:  # on the main branch: a truncation
            ok = llama_cpp.llama_memory_seq_rm(mem, 0, end, -1)
        else:  # the branch's cells (a path, one per position) become seq 0's tail
            ok = llama_cpp.llama_memory_seq_rm(mem, 0, start, -1)
            llama_cpp.llama_memory_seq_cp(mem, seq, 0, start, end)
        if not ok:
            raise RuntimeError("llama.cpp could not drop the rejected draft cells")
        llama_cpp.llama_memory_seq_keep(mem, 0)
        self._tree_live = False
        self.llm.input_ids[start:end] = tokens
        self.llm.n_tokens = end
        self._held = tree.logits[path[-1]] if path else tree.root_logits
        self._logits_valid = True

    def _drop_sides(self) -> None:
        """Forget the side branches of a tree still in the KV (seq 0 is ``eval``'s)."""
        if self._tree_live:
            llama_cpp.llama_memory_seq_keep(llama_cpp.llama_get_memory(self.llm.ctx), 0)
            self._tree_live = False

    @staticmethod
    def _seq_of(tree: TokenTree, node: int) -> int:
        return tree.seqs[node] if node >= 0 else 0

    @staticmethod
    def _path_prob(tree: TokenTree, node: int) -> float:
        return tree.probs[node] if node >= 0 else 1.0

    def _decode_level(self, tree: TokenTree, first: int, position: int) -> None:
        """One ``llama_decode`` of nodes ``first..`` (all at ``position``), logits for each."""
        n = len(tree.tokens) - first
        if self._batch is None:
            self._batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
            weakref.finalize(self, llama_cpp.llama_batch_free, self._batch)
        batch = self._batch
        for i in range(n):
            batch.token[i] = tree.tokens[first + i]
            batch.pos[i] = position
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = tree.seqs[first + i]
            batch.logits[i] = 1
        batch.n_tokens = n
        rc = llama_cpp.llama_decode(self.llm.ctx, batch)
        if rc != 0:
            self._tree_live = True
            self._drop_sides()
            self._held = tree.root_logits  # the context is unchanged: its logits still hold
            raise RuntimeError(f"llama_decode failed ({rc}) on a tree level of {n} tokens")
        for i in range(n):
            ptr = llama_cpp.llama_get_logits_ith(self.llm.ctx, i)
            tree.logits[first + i] = np.ctypeslib.as_array(
                ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), shape=(self.n_vocab,))

    # ------------------------------------------------------------ logits

    def _logits(self) -> npt.NDArray[np.float32]:
        """The last logits row (a view into llama.cpp's buffer: read it before the next eval)."""
        if not self._logits_valid:
            raise RuntimeError("no logits: call sync() first")
        if self._held is not None:
            return self._held
        ptr = llama_cpp.llama_get_logits_ith(self.llm.ctx, -1)
        return np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)),
                                     shape=(self.n_vocab,))

    def _allowed_logits(self) -> npt.NDArray[np.float32]:
        return self._masked(self._logits())

    def _masked(self, logits: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        if self.allowed is None:
            return logits
        return np.where(self.allowed, logits, np.float32(-np.inf)).astype(np.float32)

    def _eval(self, tokens: Sequence[int]) -> None:
        self._drop_sides()
        self._held = None
        self.llm.eval(list(tokens))
        self._logits_valid = True
