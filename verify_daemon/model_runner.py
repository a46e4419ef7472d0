"""The target model, its paged KV pool and the batched forward pass; the only module touching
devices.

One step packs every scheduled session's new tokens into a single ragged sequence (no padding
in the linear layers, where the FLOPs are), with per-token positions. Attention is a function
registered through transformers' ``AttentionInterface``, so any HF decoder that routes
attention through that interface runs unchanged: it writes the step's keys and values into the
pool at each token's slot, gathers each session's cached + new keys through its block table,
and runs SDPA per group of sessions with a causal mask over that session's own positions.

A chunk may also be a token tree (``parents``): its tokens are written to consecutive slots
as a chain's are, but each sits at its depth's position and attends to the cached context and
its own ancestors only, so every branch of a draft tree is scored in the same pass.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import torch
from edgespec.models.cpu import cpu_model
from edgespec.models.fingerprint import hf_vocab, vocab_fingerprint
from edgespec.verify_daemon import small_gemm
from edgespec.verify_daemon.block_manager import BlockManager
from transformers import AttentionInterface, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

log = logging.getLogger(__name__)

ATTENTION = "edgespec_paged"
AUTO_BUDGET_TOKENS = 32_768  # CPU default: ~1.5 GB of float32 KV for SmolLM2-135M
AUTO_CUDA_FRACTION = 0.5  # of the free device memory after loading the model


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
    cpu_threads: int = 0  # torch's intra-op threads (told to a client on the same machine)
    on_gpu: bool = False
    vocab: tuple[bytes, ...] = ()  # stored token strings, sent to translating clients
    bos_eos: tuple[int, int] = (-1, -1)  # as the fingerprint hashes them (-1: none)


class Chunk(Protocol):
    """What one session feeds in a step: ``tokens`` at positions ``start..``, through its
    block table; ``logits``: whether the step must score each of them (a draft round).

    Optional attribute ``parents: Sequence[int] | None`` (read with ``getattr``, so chunk
    classes without it stay chains): None is a causal chain. Otherwise a token tree with
    ``len(parents) == len(tokens)``, ``parents[0] == -1`` (token 0, the session's last
    verified token, is the root) and ``0 <= parents[i] < i``. Token i then sits at position
    ``start + depth(i)`` (RoPE), has its K/V written at table index ``start + i`` (consecutive
    slots, as a chain), and attends to table indices ``0..start-1`` and to its ancestors and
    itself within the chunk. After a verdict the accepted path is moved down to
    ``start + 1..`` with ``ModelRunner.move_kv``."""

    @property
    def blocks(self) -> list[int]: ...
    start: int
    tokens: list[int]
    logits: bool


def _or_none(ident: int | None) -> int:
    return -1 if ident is None or ident < 0 else int(ident)


@dataclass(frozen=True, slots=True)
class _Tree:
    """A tree chunk's shape, computed once per step and shared by ``run`` and ``_groups``."""

    depth: npt.NDArray[np.int64]  # [n] distance from the root (token 0)
    ancestor: npt.NDArray[np.bool_]  # [n, n]: [i, j] = j is i or one of i's ancestors


def _tree(parents: Sequence[int], n: int) -> _Tree:
    """Depths and the ancestor-or-self matrix of a parent array, vectorised over the nodes:
    each round moves every node's pointer one level up, so it loops the tree's depth times."""
    up = np.asarray(parents, dtype=np.int64).reshape(-1)
    if (n == 0 or up.shape[0] != n or up[0] != -1
            or np.any(up[1:] < 0) or np.any(up[1:] >= np.arange(1, n))):
        raise ValueError(f"bad token tree parents {list(parents)!r} for {n} tokens: want "
                         "parents[0] == -1 and 0 <= parents[i] < i")
    up = up.copy()
    up[0] = 0  # the root is its own parent: pointers stop there
    nodes = np.arange(n)
    ancestor = np.zeros((n, n), dtype=bool)
    ancestor[nodes, nodes] = True
    depth = np.zeros(n, dtype=np.int64)
    cur = nodes
    while True:
        live = cur > 0
        if not live.any():
            break
        cur = up[cur]
        depth += live
        ancestor[nodes, cur] = True
    return _Tree(depth, ancestor)


def tree_depths(parents: Sequence[int]) -> list[int]:
    """Each node's depth, raising ValueError for parents ``run`` would refuse: the engine can
    check a client's tree when it arrives instead of failing a whole step."""
    return _tree(parents, len(parents)).depth.tolist()


def _trees(chunks: Sequence[Chunk]) -> list[_Tree | None]:
    out: list[_Tree | None] = []
    for c in chunks:
        parents = getattr(c, "parents", None)
        out.append(None if parents is None else _tree(parents, len(c.tokens)))
    return out


# ---------------------------------------------------------------- the attention function


@dataclass(slots=True)
class _Group:
    """Sessions whose attention runs as one padded SDPA call (similar query lengths)."""

    token_index: torch.Tensor  # [Tg] rows of the packed step that belong to the group
    query_index: torch.Tensor  # [G, Q] packed row of each (session, query) pair; pad: 0
    read_slots: torch.Tensor  # [G, L] pool slot of each session's key at position l; pad: 0
    mask: torch.Tensor  # [G, 1, Q, L] bool: query may attend key
    out_index: torch.Tensor  # [Tg] flat index into [G * Q] of each real query
    query_pos: torch.Tensor  # [G, 1, Q, 1] absolute position of each query; pad: 0
    windowed: dict[int, torch.Tensor] = field(default_factory=dict)  # window → mask
    # [G, 1, 1, L] position of each key, only when the group holds a token tree (a tree key's
    # position is its depth's, not its table index); None: key l is at position l
    key_pos: torch.Tensor | None = None

    def mask_for(self, sliding_window: int | None) -> torch.Tensor:
        """The causal (or tree) mask, narrowed for a sliding-window layer to keys at positions
        in (query - window, query], as transformers' ``sliding_window_overlay``; built once per
        step for each window size the layers use (Gemma 3: 512 on its local layers)."""
        if not sliding_window:
            return self.mask
        cached = self.windowed.get(sliding_window)
        if cached is None:
            keys = (self.key_pos if self.key_pos is not None
                    else torch.arange(self.mask.shape[-1], device=self.mask.device))  # [L]
            cached = self.mask & (keys > self.query_pos - sliding_window)
            cached[..., 0] |= ~cached.any(-1)  # pad queries keep the pad key: no NaN rows
            self.windowed[sliding_window] = cached
        return cached


@dataclass(slots=True)
class PagedStep:
    """Everything the attention function needs for one step; built once, shared by layers."""

    k_pool: torch.Tensor  # [layers, slots, kv_heads, head_dim]
    v_pool: torch.Tensor  # [layers, slots, kv_heads, head_dim]
    write_slots: torch.Tensor  # [T] pool slot of each packed token
    groups: list[_Group]


def paged_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                    value: torch.Tensor, attention_mask: torch.Tensor | None,
                    scaling: float | None = None, dropout: float = 0.0,
                    paged: PagedStep | None = None, sliding_window: int | None = None,
                    softcap: float | None = None, **kwargs: Any
                    ) -> tuple[torch.Tensor, None]:
    """query [1, Hq, T, D], key/value [1, Hkv, T, D] → output [1, T, Hq, D].

    ``scaling`` (Gemma 3: ``query_pre_attn_scalar ** -0.5``) and ``sliding_window`` (the
    layer's own, None on global layers) are honoured; a logit soft-cap SDPA cannot apply is
    refused rather than silently ignored."""
    if paged is None:
        raise RuntimeError("edgespec_paged attention needs the step's PagedStep")
    if softcap is not None:
        raise NotImplementedError("edgespec_paged attention has no attention logit soft-cap")
    layer = int(module.layer_idx)  # type: ignore[arg-type]
    k_pool, v_pool = paged.k_pool[layer], paged.v_pool[layer]  # [slots, Hkv, D]
    k_pool.index_copy_(0, paged.write_slots, key[0].transpose(0, 1))
    v_pool.index_copy_(0, paged.write_slots, value[0].transpose(0, 1))
    q = query[0].transpose(0, 1)  # [T, Hq, D]
    out = torch.empty_like(q)
    groups = q.shape[1] // k_pool.shape[1]  # query heads per KV head
    # CUDA's masked SDPA kernel (memory-efficient) has no GQA: repeat KV heads there; the CPU
    # flash kernel takes GQA with a mask directly.
    repeat = groups > 1 and q.is_cuda
    for g in paged.groups:
        qg = q[g.query_index].transpose(1, 2)  # [G, Hq, Q, D]
        kg = k_pool[g.read_slots].transpose(1, 2)  # [G, Hkv, L, D]
        vg = v_pool[g.read_slots].transpose(1, 2)
        if repeat:
            kg, vg = kg.repeat_interleave(groups, dim=1), vg.repeat_interleave(groups, dim=1)
        og = torch.nn.functional.scaled_dot_product_attention(
            qg, kg, vg, attn_mask=g.mask_for(sliding_window), scale=scaling,
            enable_gqa=groups > 1 and not repeat)  # [G, Hq, Q, D]
        flat = og.transpose(1, 2).reshape(-1, q.shape[1], q.shape[2])  # [G*Q, Hq, D]
        out.index_copy_(0, g.token_index, flat[g.out_index])
    return out.unsqueeze(0), None


def _group_by_length(lengths: Sequence[int]) -> list[list[int]]:
    """Indices grouped so that padding a group to its longest member at most doubles it."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    groups: list[list[int]] = []
    for i in order:
        if groups and 2 * lengths[i] >= lengths[groups[-1][0]]:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


# ---------------------------------------------------------------- the runner


class ModelRunner:
    """Owns the target model and the KV pool; callers see blocks and logits rows only."""

    def __init__(self, target: str, device: str = "auto", dtype: str = "auto", threads: int = 0,
                 kv_budget_tokens: int = 0, kv_budget_bytes: int = 0, block_size: int = 16,
                 gemm: str = "plain", cache_dir: Path | None = None):
        """``gemm``: "auto" gives the CPU linear layers the faster product at each verify
        width (``small_gemm.py``, its plan cached under ``cache_dir``); "plain" leaves
        torch's own."""
        if threads > 0:
            torch.set_num_threads(threads)
        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        self.tokenizer = AutoTokenizer.from_pretrained(target)
        AttentionInterface.register(ATTENTION, paged_attention)
        self.model = AutoModelForCausalLM.from_pretrained(
            target, dtype=self.dtype, device_map=self.device, attn_implementation=ATTENTION
        ).eval()
        if gemm == "auto":  # CPU only: tune leaves a model on another device as it is
            small_gemm.tune(self.model, cache_dir, cpu_model())
        config = self.model.config
        vocab, specials = hf_vocab(self.tokenizer)
        self.info = TargetInfo(
            name=str(getattr(config, "_name_or_path", target)).rstrip("/").split("/")[-1],
            vocab_size=int(config.vocab_size),
            max_context=int(getattr(config, "max_position_embeddings", 8192)),
            eos_ids=stop_token_ids(self.tokenizer, self.model.generation_config),
            chat_template=self.tokenizer.chat_template or "",
            fingerprint=vocab_fingerprint(vocab, specials),
            cpu_threads=torch.get_num_threads(), on_gpu=self.device.type != "cpu",
            vocab=tuple(vocab), bos_eos=(_or_none(specials["bos"]), _or_none(specials["eos"])),
        )
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        layers = int(text.num_hidden_layers)
        kv_heads = int(getattr(text, "num_key_value_heads", None) or text.num_attention_heads)
        head_dim = int(getattr(text, "head_dim", None)
                       or text.hidden_size // text.num_attention_heads)
        self.bytes_per_token = 2 * layers * kv_heads * head_dim * self.dtype.itemsize
        tokens = self._budget_tokens(kv_budget_tokens, kv_budget_bytes)
        num_blocks = max(2, tokens // block_size + 1)  # + the pad block
        self.blocks = BlockManager(num_blocks, block_size)
        slots = num_blocks * block_size
        self.k_pool = torch.zeros(layers, slots, kv_heads, head_dim, dtype=self.dtype,
                                  device=self.device)
        self.v_pool = torch.zeros_like(self.k_pool)
        log.info("target %s on %s (%s); KV pool %d tokens (%.0f MiB) in blocks of %d",
                 self.info.name, self.device, self.dtype, slots - block_size,
                 2 * self.k_pool.nbytes / 2**20, block_size)

    def _budget_tokens(self, tokens: int, nbytes: int) -> int:
        if tokens > 0:
            return tokens
        if nbytes > 0:
            return nbytes // self.bytes_per_token
        if self.device.type == "cuda":
            free, _total = torch.cuda.mem_get_info(self.device)
            return int(free * AUTO_CUDA_FRACTION) // self.bytes_per_token
        return AUTO_BUDGET_TOKENS

    def tokenize(self, text: str, add_bos: bool) -> list[int]:
        """The target's own ids for ``text`` (a translating client's prompt or chat turn)."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        bos = self.tokenizer.bos_token_id
        return ([int(bos)] if add_bos and bos is not None else []) + [int(i) for i in ids]

    @staticmethod
    def new_generator() -> torch.Generator:
        """A session's own generator; sampling draws run on the CPU, so it lives there."""
        return torch.Generator(device="cpu")

    @torch.inference_mode()
    def run(self, chunks: Sequence[Chunk]) -> torch.Tensor:
        """One forward pass over every chunk; returns float32 logits [R, vocab], one row per
        token of each chunk that asked for logits, in chunk order. The caller has grown each
        chunk's block table to cover ``start + len(tokens)``. A tree chunk (``parents``, see
        ``Chunk``) scores each node after its own path, as if that path alone were fed."""
        trees = _trees(chunks)
        ids, positions, write, rows = [], [], [], []
        offset = 0
        for c, tree in zip(chunks, trees, strict=True):
            n = len(c.tokens)
            ids.extend(c.tokens)
            positions.append(np.arange(c.start, c.start + n, dtype=np.int64) if tree is None
                             else c.start + tree.depth)
            write.append(self.blocks.slots(c.blocks, c.start, c.start + n))
            if c.logits:
                rows.append(np.arange(offset, offset + n, dtype=np.int64))
            offset += n
        step = PagedStep(self.k_pool, self.v_pool, self._to_device(np.concatenate(write)),
                         self._groups(chunks, trees))
        out = self.model(
            input_ids=torch.tensor([ids], device=self.device),
            position_ids=self._to_device(np.concatenate(positions))[None],
            logits_to_keep=self._to_device(np.concatenate(rows) if rows
                                           else np.zeros(0, np.int64)),
            use_cache=False,
            paged=step,
        )
        return out.logits[0].float()  # [R, vocab]

    def _groups(self, chunks: Sequence[Chunk], trees: Sequence[_Tree | None] | None = None
                ) -> list[_Group]:
        if trees is None:
            trees = _trees(chunks)
        lengths = [len(c.tokens) for c in chunks]
        starts = np.cumsum([0, *lengths])
        groups = []
        for members in _group_by_length(lengths):
            q = max(lengths[i] for i in members)
            span = max(chunks[i].start + lengths[i] for i in members)
            g = len(members)
            query_index = np.zeros((g, q), np.int64)
            read_slots = np.zeros((g, span), np.int64)
            mask = np.zeros((g, 1, q, span), bool)
            query_pos = np.zeros((g, 1, q, 1), np.int64)
            mask[:, 0, :, 0] = True  # pad queries see the pad key: no all-masked rows (NaN)
            key_pos: npt.NDArray[np.int64] | None = None  # only with a tree in the group
            token_index, out_index = [], []
            for row, i in enumerate(members):
                c, n, tree = chunks[i], lengths[i], trees[i]
                query_index[row, :n] = np.arange(starts[i], starts[i] + n)
                end = c.start + n
                read_slots[row, :end] = self.blocks.slots(c.blocks, 0, end)
                if tree is None:
                    # query j (position start + j) sees keys 0..start + j
                    mask[row, 0, :n, :end] = (np.arange(end)[None, :]
                                              <= (c.start + np.arange(n))[:, None])
                    query_pos[row, 0, :n, 0] = c.start + np.arange(n)
                else:
                    # node i sees the cached context and its ancestors-or-self in the chunk
                    mask[row, 0, :n, :c.start] = True
                    mask[row, 0, :n, c.start:end] = tree.ancestor
                    query_pos[row, 0, :n, 0] = c.start + tree.depth
                    if key_pos is None:
                        key_pos = np.tile(np.arange(span, dtype=np.int64), (g, 1))
                    key_pos[row, c.start:end] = c.start + tree.depth
                token_index.append(query_index[row, :n])
                out_index.append(row * q + np.arange(n))
            groups.append(_Group(
                token_index=self._to_device(np.concatenate(token_index)),
                query_index=self._to_device(query_index),
                read_slots=self._to_device(read_slots),
                mask=torch.from_numpy(mask).to(self.device),
                out_index=self._to_device(np.concatenate(out_index)),
                query_pos=self._to_device(query_pos),
                key_pos=(None if key_pos is None
                         else self._to_device(key_pos.reshape(g, 1, 1, span))),
            ))
        return groups

    @torch.inference_mode()
    def move_kv(self, blocks: list[int], moves: Sequence[tuple[int, int]]) -> None:
        """Copy K and V (every layer) from table index ``src`` to table index ``dst`` of one
        session's block table, for each ``(src, dst)`` in order: after a tree verdict the
        accepted path's nodes (chunk index a_d at depth d) move to ``start + d``, where a chain
        would have put them. A node's K was computed at position ``start + d`` already (RoPE
        included), so the copy is exact.

        Order matters when a move reads an index an earlier move wrote; giving the path in
        increasing d avoids that (a_d >= d and a_d increases along a path, so no source is an
        earlier destination), and then the moves run as one gather and scatter. The caller
        truncates the table to ``start + m + 1`` afterwards and must not move into a shared
        block (the chunk's own slots never are: ``run`` wrote them)."""
        moves = [(int(s), int(d)) for s, d in moves if s != d]
        if not moves:
            return
        b = self.blocks.block_size
        src = np.asarray([s for s, _ in moves], dtype=np.int64)
        dst = np.asarray([d for _, d in moves], dtype=np.int64)
        limit = len(blocks) * b
        if min(src.min(), dst.min()) < 0 or max(src.max(), dst.max()) >= limit:
            raise IndexError(f"move_kv {moves!r} outside a table of {limit} slots")
        table = np.asarray(blocks, dtype=np.int64)
        src_slots = table[src // b] * b + src % b
        dst_slots = table[dst // b] * b + dst % b
        written: set[int] = set()
        at_once = True  # a gather then a scatter equals the ordered copies
        for s, d in moves:
            if s in written or d in written:
                at_once = False
                break
            written.add(d)
        pairs = ([(src_slots, dst_slots)] if at_once
                 else [(src_slots[k:k + 1], dst_slots[k:k + 1]) for k in range(len(moves))])
        for s_np, d_np in pairs:
            s_t, d_t = self._to_device(s_np), self._to_device(d_np)
            for pool in (self.k_pool, self.v_pool):
                pool.index_copy_(1, d_t, pool.index_select(1, s_t))

    def _to_device(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(array).to(self.device, non_blocking=True)
