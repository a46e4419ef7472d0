"""Daemon settings: one frozen object, built once in ``cli.py`` and passed down."""

from __future__ import annotations

from dataclasses import dataclass


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
    prefill_chunk: int = 512
    session_idle_s: float = 600.0

    def __post_init__(self) -> None:
        if not 0 <= self.port < 65536:
            raise ValueError(f"port {self.port} out of range (0 = any free port)")
        if self.max_sessions < 1:
            raise ValueError("max_sessions must be at least 1")
        if not 0 <= self.max_draft_tokens <= 64:
            raise ValueError("max_draft_tokens must be in 0..64 (the wire's bound)")
        if self.prefill_chunk < 1:
            raise ValueError("prefill_chunk must be positive")

    @property
    def endpoint(self) -> str:
        host = f"[{self.bind}]" if ":" in self.bind else self.bind
        return f"tcp://{host}:{self.port or '*'}"
