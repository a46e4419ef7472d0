"""Client settings: one frozen object, built once in ``cli.py`` and passed down."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ClientConfig:
    server: str = "tcp://127.0.0.1:5557"
    draft_path: str = ""
    threads: int = 0  # llama.cpp threads; 0 = auto (split with a daemon on this machine)
    n_ctx: int = 4096
    draft_tokens: int = 16  # the most tokens one round may draft
    adaptive: bool = True  # pick k per round from live acceptance and timings
    pipeline: bool = True  # keep drafting while a verdict is in flight
    chain: bool = True  # ... and send the next draft before the verdict (spec_loop.py)
    draft_shape: str = "chain"  # chain or tree per round: chain, tree, auto (measured)
    timed_k: bool = True  # let timings steer k; off for seeded sampling (same k, same tokens)
    timeout_s: float = 120.0
    server_key: str | None = None  # the daemon's CURVE public key (file or Z85); None = plain
    client_key: str | None = None  # our own .key_secret for an allow-listed daemon
    heartbeat_s: float = 1.0  # a dead daemon is noticed within 3 heartbeats
    connect_timeout_s: float = 10.0
    reconnect_for_s: float = 60.0
    busy_for_s: float = 120.0  # a daemon that answers OVERLOADED this long: give up

    def __post_init__(self) -> None:
        if not 0 <= self.draft_tokens <= 64:
            raise ValueError("draft_tokens must be in 0..64")
        if self.draft_shape not in ("auto", "tree", "chain"):
            raise ValueError("draft_shape must be auto, tree or chain")
        if self.threads < 0:
            raise ValueError("threads must be at least 1 (or 0: auto)")
