"""Per-generation counters the client reports in its status line and ``--json`` output."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import ClassVar


@dataclass(slots=True)
class GenerationStats:
    rounds: int = 0
    drafted: int = 0
    accepted: int = 0
    rejected_rounds: int = 0  # rounds ended by a rejection rather than a full accept
    generated: int = 0
    wall_s: float = 0.0
    draft_s: float = 0.0  # drafting on this machine, including drafting ahead during a round
    wait_s: float = 0.0  # idle, blocked on the daemon: wire + queueing + verification
    verify_s: float = 0.0  # the daemon's own verification time, as it reports it
    open_s: float = 0.0  # waiting for the session to open (daemon prefill)
    round_trip_s: float = 0.0  # send to verdict, whether or not we were drafting meanwhile
    ahead_drafted: int = 0  # tokens drafted while a verdict was in flight
    ahead_used: int = 0  # ... of which became the head of the next draft
    reopens: int = 0
    reconnects: int = 0  # new connections after a dead, stalled or restarted daemon
    bytes_sent: int = 0
    bytes_received: int = 0
    verify: str = "exact"  # the daemon's verification strategy; "(lossy)" when it is
    seed: int = 0  # the sampling seed (0 when greedy): rerun with it to reproduce
    draft_threads: int = 0  # llama.cpp threads the draft ran on
    daemon_threads: int = 0  # the daemon's CPU threads, as its WELCOME said
    idle_draft_threads: int = 0  # the draft's threads between rounds (daemon idle)
    thread_split: str = ""  # why: "explicit", "same machine", "same machine, GPU", "remote"
    translate_s: float = 0.0  # draft text → target ids (another tokenizer's target only)
    tokenizers: str = "same"  # or "translating tokenizers (N% of the draft's vocabulary ...)"
    chained_rounds: int = 0  # rounds whose draft went out chained, before the verdict before
    tree_rounds: int = 0  # rounds that drafted a token tree rather than a chain
    tree_nodes: int = 0  # draft tokens in those trees, all branches
    tree_depth: int = 0  # their depths, summed
    tree_side_paths: int = 0  # tree rounds whose verdict took a side branch (a sibling paid)
    expected_tokens: float = 0.0  # what the draft-length policy expected its rounds to yield
    # (a tree round: what its chain would have; 0 when translating tokenizers)

    LABELS: ClassVar[tuple[str, ...]] = (
        "verify", "seed", "draft_threads", "daemon_threads", "idle_draft_threads", "thread_split",
        "tokenizers")

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def per_token_acceptance(self) -> float:
        """Estimate of the chance each draft token is accepted (geometric model)."""
        trials = self.accepted + self.rejected_rounds
        return self.accepted / trials if trials else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.generated / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def tokens_per_round(self) -> float:
        return self.generated / self.rounds if self.rounds else 0.0

    @property
    def expected_tokens_per_round(self) -> float:
        return self.expected_tokens / self.rounds if self.rounds else 0.0

    @property
    def bytes_per_round(self) -> float:
        """Both directions, OPENs included: what one round costs on the wire."""
        total = self.bytes_sent + self.bytes_received
        return total / self.rounds if self.rounds else 0.0

    @property
    def round_trip_ms(self) -> float:
        return 1000.0 * self.round_trip_s / self.rounds if self.rounds else 0.0

    @property
    def draft_shape(self) -> str:
        """For the status line: "chain", or the share of tree rounds and their mean size."""
        if not self.tree_rounds:
            return "chain"
        size = (f"{self.tree_nodes / self.tree_rounds:.1f} nodes, depth "
                f"{self.tree_depth / self.tree_rounds:.1f}")
        if self.tree_rounds == self.rounds:
            return f"tree ({size})"
        return f"tree {self.tree_rounds / self.rounds:.0%} of rounds ({size})"

    def as_dict(self) -> dict[str, float | int | str]:
        out: dict[str, float | int | str] = asdict(self)
        out.update(
            acceptance_rate=round(self.acceptance_rate, 4),
            per_token_acceptance=round(self.per_token_acceptance, 4),
            tokens_per_s=round(self.tokens_per_s, 2),
            tokens_per_round=round(self.tokens_per_round, 3),
            expected_tokens_per_round=round(self.expected_tokens_per_round, 3),
            round_trip_ms=round(self.round_trip_ms, 2),
            bytes_per_round=round(self.bytes_per_round, 1),
            draft_shape=self.draft_shape,
            mean_tree_nodes=round(self.tree_nodes / self.tree_rounds, 2)
            if self.tree_rounds else 0.0,
            mean_tree_depth=round(self.tree_depth / self.tree_rounds, 2)
            if self.tree_rounds else 0.0,
        )
        for key in ("wall_s", "draft_s", "wait_s", "verify_s", "open_s", "round_trip_s",
                    "translate_s"):
            out[key] = round(float(out[key]), 4)
        return out
