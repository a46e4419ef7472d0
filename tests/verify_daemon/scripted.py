"""A scripted target for engine and scheduler tests: it reads its context through the block
tables, so a wrong slot, a stale block or a lost rollback changes its answers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from edgespec.verify_daemon.block_manager import BlockManager
from edgespec.verify_daemon.config import DaemonConfig
from edgespec.verify_daemon.engine import Engine, Reply
from edgespec.verify_daemon.model_runner import TargetInfo
from edgespec.wire.codec import Message

VOCAB = 100
FP = b"f" * 32


def target_next(context: Sequence[int]) -> int:
    """The scripted model: the next token is a function of the whole context."""
    return (sum((i + 1) * t for i, t in enumerate(context)) + 7 * len(context)) % VOCAB


def target_greedy(prompt: Sequence[int], n: int) -> list[int]:
    tokens = list(prompt)
    for _ in range(n):
        tokens.append(target_next(tokens))
    return tokens[len(prompt):]


class ScriptedRunner:
    def __init__(self, num_blocks: int = 64, block_size: int = 4):
        self.info = TargetInfo("scripted", VOCAB, 4096, (0,), "", FP)
        self.blocks = BlockManager(num_blocks, block_size)
        self.pool: dict[int, int] = {}  # slot -> token whose KV is stored there
        self.fed = 0
        self.steps: list[list[int]] = []  # tokens per chunk, per step

    def run(self, chunks: Sequence) -> torch.Tensor:
        rows = []
        self.steps.append([len(c.tokens) for c in chunks])
        for c in chunks:
            end = c.start + len(c.tokens)
            assert len(c.blocks) >= self.blocks.blocks_for(end), "table too short"
            for slot, token in zip(self.blocks.slots(c.blocks, c.start, end), c.tokens,
                                   strict=True):
                self.pool[int(slot)] = token
            self.fed += len(c.tokens)
            if c.logits:
                for j in range(len(c.tokens)):
                    slots = self.blocks.slots(c.blocks, 0, c.start + j + 1)
                    row = torch.zeros(VOCAB)
                    row[target_next([self.pool[int(s)] for s in slots])] = 1.0
                    rows.append(row)
        return torch.stack(rows) if rows else torch.zeros(0, VOCAB)

    @staticmethod
    def new_generator() -> torch.Generator:
        return torch.Generator()

    def cached_tokens(self, blocks: list[int], length: int) -> list[int]:
        return [self.pool[int(s)] for s in self.blocks.slots(blocks, 0, length)]


def make_engine(num_blocks: int = 64, block_size: int = 4, **config: Any) -> tuple[
        Engine, ScriptedRunner]:
    runner = ScriptedRunner(num_blocks, block_size)
    settings: dict = {"max_sessions": 8, "max_draft_tokens": 8, "step_tokens": 64,
                      "prefill_chunk": 16, **config}
    return Engine(runner, DaemonConfig(target="x", **settings)), runner


def tokens(*ids: int) -> np.ndarray:
    return np.array(ids, dtype=np.int32)


def serve(engine: Engine, peer: bytes, sid: int, msg: Message, seq: int = 1,
          max_steps: int = 100, owner: str = "") -> Message:
    """Submit one request and step until it is answered (other replies are dropped)."""
    reply = engine.submit(peer, sid, seq, msg, owner)
    if reply is not None:
        return reply
    for _ in range(max_steps):
        for _peer, s, q, m, _epoch in engine.step():
            if (s, q) == (sid, seq):
                return m
    raise AssertionError("request never answered")


def run_steps(engine: Engine, max_steps: int = 100) -> list[Reply]:
    replies: list[Reply] = []
    for _ in range(max_steps):
        if not engine.has_work:
            break
        replies += engine.step()
    return replies
