"""Daemon settings: one frozen object, built once in ``cli.py`` and passed down."""

from __future__ import annotations

import re
from dataclasses import dataclass

_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "ki": 2**10, "mi": 2**20, "gi": 2**30}


def parse_kv_budget(text: str) -> tuple[int, int]:
    """``--kv-budget``: "auto", a token count ("32768") or bytes with a unit ("2GiB", "512MB");
    returns (tokens, bytes), at most one non-zero, (0, 0) for auto."""
    text = text.strip().lower()
    if text == "auto":
        return 0, 0
    if text.isdigit():
        return int(text), 0
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(k|m|g|ki|mi|gi)b?", text)
    if match is None:
        raise ValueError(f"--kv-budget {text!r}: give 'auto', tokens (32768) or bytes (2GiB)")
    return 0, int(float(match.group(1)) * _UNITS[match.group(2)])


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    target: str
    bind: str = "127.0.0.1"
    port: int = 5557
    device: str = "auto"  # auto | cpu | cuda[:N]
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    threads: int = 0  # torch intra-op threads on CPU; 0 = leave torch's default
    max_sessions: int = 64
    max_draft_tokens: int = 32
    max_context: int = 8192
    prefill_chunk: int = 512  # most prompt tokens one session prefills in one step
    step_tokens: int = 0  # most tokens (all sessions) in one forward pass; 0 = auto
    step_ms: float = 0.0  # a step's time budget while users wait (prefill is cut to fit); 0 = auto
    kv_budget_tokens: int = 0  # 0 and kv_budget_bytes 0: auto (see model_runner)
    kv_budget_bytes: int = 0
    block_size: int = 16  # tokens per KV block
    session_idle_s: float = 600.0  # an idle session (vanished client) is freed after this
    retry_after_ms: int = 1000  # hint sent with a busy reply
    batch_window_ms: float = 2.0  # a step waits this long for sessions about to send
    stats_file: str = ""  # rewritten as JSON about once a second when set
    draft_budget: str = "goodput"  # goodput | share: the VERDICT's budget rule (draft_budget.py)
    gemm: str = "auto"  # auto | plain: linear layers at verify widths (small_gemm.py)

    def __post_init__(self) -> None:
        if not 0 <= self.port < 65536:
            raise ValueError(f"port {self.port} out of range (0 = any free port)")
        if self.max_sessions < 1:
            raise ValueError("max_sessions must be at least 1")
        if not 0 <= self.max_draft_tokens <= 64:
            raise ValueError("max_draft_tokens must be in 0..64 (the wire's bound)")
        if self.prefill_chunk < 1:
            raise ValueError("prefill_chunk must be positive")
        if self.step_tokens and self.step_tokens < 2 * (self.max_draft_tokens + 1):
            raise ValueError("step_tokens must hold at least two full drafts (or be 0: auto)")
        if self.block_size < 1 or self.kv_budget_tokens < 0 or self.kv_budget_bytes < 0:
            raise ValueError("block_size must be positive and the KV budget not negative")
        if not 0 <= self.step_ms <= 60_000:
            raise ValueError("step_ms must be in 0..60000 (0 = auto)")
        if self.session_idle_s <= 0 or self.retry_after_ms < 0 or self.batch_window_ms < 0:
            raise ValueError("session_idle_s must be positive, retry_after_ms and "
                             "batch_window_ms not negative")

        if self.draft_budget not in ("goodput", "share"):
            raise ValueError("draft_budget must be 'goodput' or 'share'")
        if self.gemm not in ("auto", "plain"):
            raise ValueError("gemm must be 'auto' or 'plain'")

    @property
    def endpoint(self) -> str:
        host = f"[{self.bind}]" if ":" in self.bind else self.bind
        return f"tcp://{host}:{self.port or '*'}"
