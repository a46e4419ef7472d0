"""Which sessions run in the next step: admission, a per-step token budget, LRU eviction.

Each step takes waiting drafts first, oldest request first, then prefill chunks of waiting
OPENs with what is left of the budget (a quarter of it is kept for prefill whenever one
waits, so new users are not starved by busy ones, and a long prompt is cut into chunks so it
cannot starve the drafts). A draft that does not fit waits at the head of the queue for the
next step, so no request waits more than about ``sessions × (max_draft + 1) / budget`` steps.

Time, not only tokens: a pass costs more per token deep into a long context, and a step is
everyone's latency. While any session could be waiting for a verdict, prefill gets only what
fits the step's time budget (``step_s``, at the per-token cost measured over recent steps,
at least ``MIN_PREFILL`` tokens so every prompt progresses), and the shortest prompt goes
first, so a chat turn is not queued behind someone's 8,000-token document.

Memory: a chunk's blocks are allocated when it is scheduled. When the pool is short, the
least recently active *idle* session (no request waiting: its client is drafting, reading or
gone) is evicted; its client gets ``UNKNOWN_SESSION`` next time and re-opens with its full
history. If nothing at all fits, the newest waiting session is preempted the same way.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from edgespec.verify_daemon.block_manager import BlockManager
from edgespec.verify_daemon.session import Session, Work
from edgespec.wire.errors import LimitExceeded, Overloaded

MIN_PREFILL = 16  # prompt tokens a step always feeds, however slow steps are
COST_EMA = 0.1  # weight of the latest step in the measured step cost


@dataclass(slots=True)
class Chunk:
    """One session's share of a step: ``tokens`` fed at positions ``start..``."""

    session: Session
    start: int
    tokens: list[int]
    logits: bool  # a draft round: score every position
    # a token tree: each chunk token's parent within the chunk (token 0, the session's last
    # verified token, is the root: -1); None for a causal run of tokens
    parents: list[int] | None = None

    @property
    def blocks(self) -> list[int]:
        return self.session.blocks


@dataclass(slots=True)
class Batch:
    chunks: list[Chunk] = field(default_factory=list)
    preempted: list[tuple[Session, Work]] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(len(c.tokens) for c in self.chunks)


class Scheduler:
    """Owns the sessions, the waiting queue and the block tables' growth."""

    def __init__(self, blocks: BlockManager, max_sessions: int, step_tokens: int,
                 prefill_chunk: int, max_draft_tokens: int, retry_after_ms: int,
                 step_s: float = 0.15):
        self.blocks = blocks
        self.max_sessions = max_sessions
        self.step_tokens = step_tokens
        self.prefill_chunk = prefill_chunk
        self.max_draft_tokens = max_draft_tokens
        self.retry_after_ms = retry_after_ms
        self.step_s = step_s
        self.s_per_token = 0.0  # measured marginal cost of a token; 0 until the first step
        self.s_overhead = 0.0  # measured cost of a step whatever its tokens
        self._moments = (0.0, 0.0, 0.0, 0.0)  # decaying means of n, t, n², n·t
        # Set by the server: true when the session's connection is gone (reclaimable first).
        self.is_orphan: Callable[[Session], bool] = lambda session: False
        self.reclaimed = 0
        self.sessions: OrderedDict[int, Session] = OrderedDict()  # least recently active first
        self.waiting: OrderedDict[int, None] = OrderedDict()  # sids with work, oldest first
        self.step_no = 0
        self.evictions = 0
        self.preemptions = 0
        self.max_wait_steps = 0

    # ------------------------------------------------------------ admission

    def admit(self, prompt_length: int) -> None:
        """Refuse a newcomer: ``Overloaded`` (retry later) or ``LimitExceeded`` (never fits)."""
        if len(self.sessions) >= self.max_sessions:
            orphan = self._orphan()
            if orphan is None:
                raise Overloaded(f"server full: {len(self.sessions)} sessions; retry later",
                                 retry_after_ms=self.retry_after_ms)
            self.remove(orphan.sid)  # its client is gone and nothing of it is waiting
            self.reclaimed += 1
        need = self.blocks.blocks_for(prompt_length + self.max_draft_tokens)
        if need > self.blocks.capacity:
            raise LimitExceeded(f"{prompt_length} tokens do not fit the KV budget of "
                                f"{self.blocks.capacity * self.blocks.block_size} tokens")
        reclaimable = self.blocks.free + sum(self.blocks.exclusive(s.blocks)
                                             for s in self.sessions.values() if s.idle)
        if need > reclaimable:
            raise Overloaded("KV memory full; retry later", retry_after_ms=self.retry_after_ms)

    def add(self, session: Session) -> None:
        session.admitted_step = self.step_no
        self.sessions[session.sid] = session

    def remove(self, sid: int) -> Session | None:
        """Forget a session and free its blocks (close, expiry, eviction)."""
        session = self.sessions.pop(sid, None)
        if session is not None:
            self.blocks.release(session.blocks)
            self.waiting.pop(sid, None)
        return session

    def touch(self, session: Session, now: float) -> None:
        session.last_active = now
        self.sessions.move_to_end(session.sid)

    def submit(self, session: Session, work: Work) -> None:
        session.pending = work
        self.waiting[session.sid] = None

    def done(self, session: Session) -> None:
        """The session's request was answered."""
        work = session.pending
        if work is not None:
            skipped = self.step_no - work.arrived_step - 1  # steps that ran without it
            self.max_wait_steps = max(self.max_wait_steps, skipped)
        session.pending = None
        self.waiting.pop(session.sid, None)

    @property
    def has_work(self) -> bool:
        return bool(self.waiting)

    def observe(self, num_tokens: int, elapsed_s: float) -> None:
        """Record one forward pass's cost, which sizes later steps' prefill: a line
        t = overhead + n · per_token fitted over recent steps (decaying least squares), since
        a pass has a fixed cost (a one-token step of a 30-layer model on CPU is tens of ms)
        and dividing it among few tokens would make tokens look many times dearer."""
        if num_tokens <= 0:
            return
        n, t = float(num_tokens), elapsed_s
        w = COST_EMA if self.s_per_token else 1.0
        m_n, m_t, m_nn, m_nt = self._moments
        self._moments = mean_n, mean_t, mean_nn, mean_nt = (
            (1 - w) * m_n + w * n, (1 - w) * m_t + w * t, (1 - w) * m_nn + w * n * n,
            (1 - w) * m_nt + w * n * t)
        spread = mean_nn - mean_n * mean_n
        per_token = (mean_nt - mean_n * mean_t) / spread if spread > 1.0 else 0.0
        if per_token <= 0.0:  # too little spread (or noise): the average is all we know
            per_token = mean_t / mean_n
        self.s_per_token = per_token
        self.s_overhead = min(max(0.0, mean_t - per_token * mean_n), mean_t)

    def _time_tokens(self, latency_bound: bool) -> int:
        """Tokens one step may run within ``step_s`` (all of them when nobody waits on it)."""
        if not latency_bound or self.s_per_token <= 0.0:
            return self.step_tokens
        return max(MIN_PREFILL, int((self.step_s - self.s_overhead) / self.s_per_token))

    def _orphan(self) -> Session | None:
        """The least recently active idle session whose connection is gone, if any."""
        return next((s for s in self.sessions.values() if s.idle and self.is_orphan(s)), None)

    # ------------------------------------------------------------ one step

    def schedule(self) -> Batch:
        self.step_no += 1
        batch = Batch()
        queue = [self.sessions[sid] for sid in self.waiting]
        prefills = [s for s in queue if s.pending is not None and s.pending.kind == "open"]
        budget = self.step_tokens
        time_tokens = self._time_tokens(latency_bound=len(prefills) < len(self.sessions))
        reserve = min(budget // 4, sum(s.to_prefill for s in prefills), time_tokens)
        for s in queue:
            work = s.pending
            if work is None or work.kind != "draft":
                continue
            n = len(work.draft) + 1
            if batch.chunks and n > budget - reserve:
                break  # strict FIFO: later drafts wait behind this one
            if not self._make_room(s, s.cached + n):
                prefills = []  # running users first: newcomers must not take their memory
                break
            batch.chunks.append(Chunk(s, s.cached, [s.tokens[-1], *work.draft], True,
                                      tree_chunk_parents(work.parents)))
            budget -= n
        # prefill: what is left of the step's time, and at least what was reserved for it
        budget = min(budget, max(MIN_PREFILL, reserve, time_tokens - (self.step_tokens - budget)))
        for s in sorted(prefills, key=lambda s: s.to_prefill):  # shortest prompt first
            n = min(s.to_prefill, self.prefill_chunk, budget)
            if n <= 0:
                break
            if not self._make_room(s, s.cached + n):
                break
            batch.chunks.append(Chunk(s, s.cached, s.tokens[s.cached:s.cached + n], False))
            budget -= n
        if not batch.chunks and queue:
            victim = max(queue, key=lambda s: (s.admitted_step, s.pending.arrived_at
                                               if s.pending else 0.0))
            work = victim.pending
            self.remove(victim.sid)
            self.preemptions += 1
            if work is not None:
                batch.preempted.append((victim, work))
        return batch

    def _make_room(self, session: Session, length: int) -> bool:
        """Grow ``session``'s table to ``length`` tokens, evicting idle sessions if needed."""
        while not self.blocks.can_grow(session.blocks, length):
            victim = self._orphan() or next(
                (s for s in self.sessions.values() if s.idle and s is not session), None)
            if victim is None:
                return False
            self.remove(victim.sid)
            self.evictions += 1
        self.blocks.grow(session.blocks, length)
        return True


def tree_chunk_parents(parents: list[int] | None) -> list[int] | None:
    """A draft tree's parents (-1: the root) shifted to chunk indices, where the root is the
    session's last verified token at index 0."""
    if parents is None:
        return None
    return [-1, *(p + 1 for p in parents)]
