"""The verification engine: requests in, one batched step at a time, replies out.

``submit`` checks a request and either answers it at once (HELLO, PING, CLOSE, errors) or
queues it on its session; ``step`` is nano-vllm's shape: schedule, run, postprocess. Nothing
here touches sockets (``server.py``) or tensors (``model_runner.py``), and each session's
accept decision is made in one place, ``_decide``.
"""

from __future__ import annotations

import logging
import time
from typing import Any, NamedTuple

import numpy as np
from edgespec.models.cpu import host_id
from edgespec.models.fingerprint import describe_mismatch
from edgespec.verify_daemon.config import DaemonConfig
from edgespec.verify_daemon.draft_budget import (
    BUSY,
    draft_budget,
    drafting_sessions,
    goodput_budgets,
)
from edgespec.verify_daemon.model_runner import ModelRunner
from edgespec.verify_daemon.scheduler import Chunk, Scheduler
from edgespec.verify_daemon.session import Session, Work
from edgespec.verify_daemon.tree_verify import decide_tree, tree_depths
from edgespec.verify_daemon.verify import NonFiniteTarget, decide, is_greedy
from edgespec.wire.codec import (
    Close,
    Closed,
    Draft,
    Error,
    Hello,
    Message,
    Open,
    Opened,
    Ping,
    Pong,
    SparseQ,
    TokenArray,
    Tokenize,
    Tokens,
    Verdict,
    Vocab,
    VocabGet,
    Welcome,
)
from edgespec.wire.errors import (
    AuthFailed,
    ErrorCode,
    InvalidToken,
    LimitExceeded,
    MalformedFrame,
    ModelMismatch,
    OutOfSync,
    Overloaded,
    StaleDraft,
    UnknownSession,
    Unsupported,
)
from edgespec.wire.protocol import TokenizerMode, VerifyMode

log = logging.getLogger(__name__)



class Reply(NamedTuple):
    """An answer to a queued request, addressed as the request was (its seq and epoch)."""

    peer: bytes
    session: int
    seq: int
    msg: Message
    epoch: int = 0


class Engine:
    def __init__(self, runner: ModelRunner, config: DaemonConfig):
        self.runner = runner
        self.config = config
        self.info = runner.info
        self.host_id = host_id()  # in WELCOME: a client on this machine leaves our cores
        self.blocks = runner.blocks
        self.max_context = min(config.max_context, runner.info.max_context)
        self.step_tokens = config.step_tokens or auto_step_tokens(
            getattr(runner, "device", None), config.max_draft_tokens)
        self.scheduler = Scheduler(runner.blocks, config.max_sessions, self.step_tokens,
                                   config.prefill_chunk, config.max_draft_tokens,
                                   config.retry_after_ms,
                                   config.step_ms / 1000.0 if config.step_ms else
                                   auto_step_s(getattr(runner, "device", None)))
        self.sessions = self.scheduler.sessions  # LRU order: least recently active first
        self.steps = 0
        self.forward_tokens = 0
        self.verified_tokens = 0
        self.rounds = 0
        self.busy = 0
        self.expired = 0
        self.round_shapes: dict[tuple[int, int], int] = {}  # (drafted, accepted) -> rounds
        self.non_finite = 0
        self.chained = 0  # chained DRAFTs that waited on a draft in flight
        self.stale_drafts = 0  # ... answered STALE_DRAFT: their guess did not hold
        self.superseded: list[Reply] = []  # answers to requests a re-open replaced (server drains)
        self.utilization = 0.0  # decayed fraction of wall time spent in forward passes
        self._last_pass = (0.0, 0.0)  # (start, seconds) of the previous forward pass
        self.goodput_steps = 0  # steps whose budgets came from the goodput rule

    # ------------------------------------------------------------ requests

    def submit(self, peer: bytes, sid: int, seq: int, msg: Message, owner: str = "",
               epoch: int = 0, address: str = "") -> Message | None:
        """Answer now, or queue the request and return None (``step`` answers it).

        ``owner`` is the authenticated client key (CURVE), "" without one; ``address`` the
        connection's source address; ``epoch`` the request's, echoed by the answer. Raises
        only ``WireError`` for the client's mistakes, and then changes nothing.
        """
        if isinstance(msg, Draft):
            self._queue_draft(peer, sid, seq, msg, epoch, owner)
            return None
        if isinstance(msg, Open):
            return self._queue_open(peer, sid, seq, msg, owner, epoch, address)
        if isinstance(msg, Hello):
            return self.hello(msg)
        if isinstance(msg, Close):
            self.scheduler.remove(self._session(peer, sid, owner).sid)
            return Closed()
        if isinstance(msg, Ping):
            return Pong(msg.stamp)
        if isinstance(msg, VocabGet | Tokenize):
            return self.translation_aid(msg)
        raise MalformedFrame(f"{type(msg).__name__} is not a request")

    def hello(self, msg: Hello) -> Welcome:
        same = msg.fingerprint == self.info.fingerprint
        if not same and msg.mode == TokenizerMode.SAME:
            raise ModelMismatch(
                "draft and target tokenizers differ: "
                + describe_mismatch(msg.fingerprint, self.info.fingerprint)
            )
        if same and msg.mode == TokenizerMode.TRANSLATE:
            raise ModelMismatch("the client asks to translate, but its tokenizer is the "
                                "target's: exchange ids as they are")
        translate = not same
        return Welcome(
            fingerprint=self.info.fingerprint,
            vocab_size=self.info.vocab_size,
            max_draft_tokens=self.config.max_draft_tokens,
            max_context=self.max_context,
            model_name=self.info.name,
            eos_ids=self.info.eos_ids,
            chat_template=self.info.chat_template,
            host_id=self.host_id,
            threads=self.info.cpu_threads,
            on_gpu=self.info.on_gpu,
            translate=translate,
            vocab_entries=len(self.info.vocab) if translate else 0,
        )

    def translation_aid(self, msg: VocabGet | Tokenize) -> Vocab | Tokens:
        """What a translating client needs from the target's tokenizer, answered at once:
        a bounded chunk of its vocabulary (at most a frame's worth of bytes), or the target's
        own ids for a prompt."""
        if isinstance(msg, Tokenize):
            ids = self.runner.tokenize(msg.text, msg.add_bos)
            if len(ids) >= self.max_context:
                raise LimitExceeded(f"{len(ids)} tokens exceed the context of {self.max_context}")
            return Tokens(np.asarray(ids, dtype=np.int32))
        vocab = self.info.vocab
        if msg.start >= len(vocab):
            raise LimitExceeded(f"VOCAB_GET from {msg.start}: the vocabulary has {len(vocab)}")
        end, size = msg.start, 0
        while end < min(len(vocab), msg.start + msg.count) and size + len(vocab[end]) < 1 << 19:
            size += len(vocab[end])
            end += 1
        chunk = vocab[msg.start:end]
        bos, eos = self.info.bos_eos
        return Vocab(len(vocab), msg.start, bos, eos,
                     np.array([len(t) for t in chunk], dtype=np.int32), b"".join(chunk))

    def _queue_open(self, peer: bytes, sid: int, seq: int, msg: Open, owner: str = "",
                    epoch: int = 0, address: str = "") -> Opened | None:
        """Create or rebuild a session at the client's position, reusing a common KV prefix;
        the prefill then runs in chunks inside the scheduler's steps. A re-open may come from
        a new connection (a reconnect), but only from the client key that opened it."""
        old = self.sessions.get(sid)
        if old is not None and old.owner != owner:
            raise AuthFailed(f"session {sid:#x} belongs to another client key")
        if msg.sampling.verify not in VerifyMode.__members__.values():
            raise Unsupported(f"verify mode {msg.sampling.verify} is not served by this daemon")
        self._check_tokens(msg.tokens)
        tokens: list[int] = msg.tokens.tolist()
        if len(tokens) >= self.max_context:
            raise LimitExceeded(f"{len(tokens)} tokens exceed the context of {self.max_context}")
        self._check_fits(len(tokens))
        for work in (old.pending, old.queued) if old is not None else ():
            if work is not None:  # answered: nothing is left hanging
                self.superseded.append(Reply(old.peer, sid, work.seq, Error(
                    ErrorCode.OUT_OF_SYNC, "superseded by a re-open of this session"),
                    work.epoch))
        if old is not None and old.peer != peer:  # a reconnect (the server refused stale epochs)
            log.info("session %#x moves to a new connection", sid)
            old.peer = peer
        now = time.monotonic()
        if old is not None:
            self.scheduler.done(old)  # a re-open supersedes whatever was in flight
            old.queued = None
            old.address = address or old.address
            keep = min(old.cached, _common_prefix(old.tokens[:-1], tokens[:-1]))
            keep = self.blocks.truncate(old.blocks, keep)
            old.cached, old.tokens = keep, tokens
            old.published = min(old.published, keep // self.blocks.block_size)
            old.sampling, old.max_new_tokens, old.prompt_length = (
                msg.sampling, msg.max_new_tokens, len(tokens))
            session = old
        else:
            try:
                self.scheduler.admit(len(tokens))
            except Overloaded:
                self.busy += 1
                raise
            session = Session(sid, peer, tokens, msg.sampling, msg.max_new_tokens, len(tokens),
                              now, owner=owner, address=address)
            session.blocks = self.blocks.match_prefix(tokens, len(tokens) - 1)  # shared prefix
            session.published = len(session.blocks)
            session.cached = session.published * self.blocks.block_size
            self.scheduler.add(session)
        session.rng = None if is_greedy(msg.sampling) else self.runner.new_generator()
        self.scheduler.touch(session, now)
        if session.to_prefill == 0:
            return Opened(session.length)
        self.scheduler.submit(session, Work("open", seq, epoch, self.scheduler.step_no, now))
        return None

    def _queue_draft(self, peer: bytes, sid: int, seq: int, msg: Draft, epoch: int = 0,
                     owner: str = "") -> None:
        """Queue a DRAFT for the next step; a chained one (``msg.chained``) sent while the
        session's previous DRAFT is in flight waits for that verdict (``_release_queued``)."""
        session = self._session(peer, sid, owner)
        base = msg.base_length
        after = session.pending
        if msg.chained:
            if after is not None and (after.kind != "draft" or session.queued is not None):
                raise OutOfSync("a chained draft may follow only one draft in flight")
            full = session.length + len(after.draft) + 1 if after is not None else base
            if base != full:
                raise OutOfSync(f"chained draft extends {base} tokens, but a full accept of "
                                f"the draft in flight makes {full}")
        elif after is not None:
            raise OutOfSync("the session's previous request is still being served")
        elif base != session.length:
            raise OutOfSync(f"draft extends {base} tokens but the session holds {session.length}")
        if len(msg.tokens) > self.config.max_draft_tokens:
            raise LimitExceeded(
                f"draft of {len(msg.tokens)} exceeds {self.config.max_draft_tokens}")
        self._check_tokens(msg.tokens)
        if msg.q is not None:
            self._check_tokens(msg.q.ids)
        if msg.chained:
            self._check_tokens(np.asarray([msg.root]))
        if base + len(msg.tokens) >= self.max_context:
            raise LimitExceeded(f"context of {self.max_context} tokens is full")
        self._check_fits(base + len(msg.tokens))
        if after is None and msg.chained and not _continues(session, base, msg.root):
            self.stale_drafts += 1  # came after the verdict it was chained on, which missed
            raise StaleDraft(f"chained draft continues {base} tokens ending in {msg.root}; "
                             f"the session holds {session.length} ending in "
                             f"{session.tokens[-1]}")
        now = time.monotonic()
        self.scheduler.touch(session, now)
        parents = None if msg.parents is None else msg.parents.tolist()
        work = Work("draft", seq, epoch, self.scheduler.step_no, now, msg.tokens.tolist(), msg.q,
                    parents, msg.root, base)
        if after is not None:
            session.queued = work
            self.chained += 1
        else:
            self.scheduler.submit(session, work)

    def _release_queued(self, session: Session) -> Reply | None:
        """After a round: run the chained draft waiting on it if its guess held (the
        session's new length and last token are what it assumed), else answer it
        ``STALE_DRAFT`` unverified."""
        work, session.queued = session.queued, None
        if work is None:
            return None
        if session.pending is None and _continues(session, work.base, work.root):
            work.arrived_step = self.scheduler.step_no
            self.scheduler.submit(session, work)
            return None
        self.stale_drafts += 1
        return Reply(session.peer, session.sid, work.seq, Error(
            ErrorCode.STALE_DRAFT, "the guess it was chained on did not hold"), work.epoch)

    def expire(self, now: float) -> int:
        """Drop sessions idle past the limit (a client that vanished); returns how many."""
        stale = [s.sid for s in self.sessions.values()
                 if s.idle and now - s.last_active > self.config.session_idle_s]
        for sid in stale:
            self.scheduler.remove(sid)
        self.expired += len(stale)
        return len(stale)

    # ------------------------------------------------------------ one step

    @property
    def has_work(self) -> bool:
        return self.scheduler.has_work

    @property
    def waiting_count(self) -> int:
        return len(self.scheduler.waiting)

    def step(self) -> list[Reply]:
        """Schedule, run one forward pass over every scheduled chunk, answer who is done."""
        batch = self.scheduler.schedule()
        replies = [reply for s, work in batch.preempted for reply in self._preempted(s, work)]
        if not batch.chunks:
            return replies
        start = time.perf_counter()
        logits = self.runner.run(batch.chunks)  # [rows, vocab] float32
        elapsed = time.perf_counter() - start
        self.scheduler.observe(batch.num_tokens, elapsed)
        self._observe_utilization(start, elapsed)
        verify_us = int(elapsed * 1e6)
        now = time.monotonic()
        budgets, share = self._budgets(now) if any(c.logits for c in batch.chunks) \
            else ({}, 0)
        row = 0
        for chunk in batch.chunks:
            if chunk.logits:
                n = len(chunk.tokens)
                replies.append(self._finish_round(chunk, logits[row:row + n], verify_us, now,
                                                  budgets.get(chunk.session.sid, share)))
                stale = self._release_queued(chunk.session)
                if stale is not None:
                    replies.append(stale)
                row += n
            else:
                reply = self._finish_prefill(chunk, now)
                if reply is not None:
                    replies.append(reply)
        self.steps += 1
        self.forward_tokens += batch.num_tokens
        return replies

    def _observe_utilization(self, start: float, seconds: float, memory: float = 0.8) -> None:
        """How much of the wall time the passes fill: near 1 the server is the bottleneck."""
        last_start, last_seconds = self._last_pass
        if last_start:
            busy = min(1.0, last_seconds / max(start - last_start, 1e-9))
            self.utilization = memory * self.utilization + (1 - memory) * busy
        self._last_pass = (start, seconds)

    def _budgets(self, now: float) -> tuple[dict[int, int], int]:
        """Next round's draft budget by session, and the share for any other
        (``draft_budget.py``): a share of the step, and while the server is the bottleneck
        of several drafting sessions, the goodput optimum below it. One session alone is
        its own client's to size: its policy already weighs the passes it waits for."""
        active = drafting_sessions(self.sessions.values(), now)
        share = draft_budget(self.step_tokens, max(1, len(active)),
                             self.config.max_draft_tokens)
        if self.config.draft_budget == "share" or self.utilization < BUSY or len(active) < 2:
            return {}, share
        self.goodput_steps += 1
        return goodput_budgets({s.sid: s.acceptance for s in active},
                               self.scheduler.s_overhead, self.scheduler.s_per_token,
                               share), share

    def _finish_round(self, chunk: Chunk, logits_rows: Any, verify_us: int, now: float,
                      budget: int = 0) -> Reply:
        session = chunk.session
        work = session.pending
        assert work is not None
        draft = chunk.tokens[1:]
        try:
            path, next_token = self._decide(session, draft, work.q, work.parents, logits_rows)
        except NonFiniteTarget as exc:  # nothing sampled: the session stays where it was
            log.warning("session %#x: %s", session.sid, exc)
            self.non_finite += 1
            self.blocks.truncate(session.blocks, session.cached)
            self.scheduler.done(session)
            return Reply(session.peer, session.sid, work.seq, Error(
                ErrorCode.INTERNAL, f"{exc}: no token drawn (see the daemon's log)"), work.epoch)
        accepted = len(path)
        session.tokens.extend(draft[node] for node in path)
        session.tokens.append(next_token)
        if work.parents is not None:  # the accepted path's KV to its positions, in order
            self.runner.move_kv(session.blocks, [(chunk.start + 1 + node, chunk.start + depth)
                                                 for depth, node in enumerate(path, 1)
                                                 if node + 1 != depth])
        session.cached = session.length - 1  # rejected positions are dropped by a length
        kept = self.blocks.truncate(session.blocks, session.cached)
        assert kept == session.cached, "a verified position fell in a shared block"
        self._publish(session)
        session.rounds += 1
        session.drafted += len(draft)
        session.accepted += accepted
        session.observe_round(accepted, max(tree_depths(work.parents)) if work.parents
                              else len(draft))
        shape = (len(draft), accepted)  # for verifyd --metrics-port, read at scrape time
        self.round_shapes[shape] = self.round_shapes.get(shape, 0) + 1
        self.scheduler.done(session)
        self.scheduler.touch(session, now)
        self.rounds += 1
        self.verified_tokens += accepted + 1
        tree_path = tuple(path) if work.parents is not None else ()
        return Reply(session.peer, session.sid, work.seq,
                     Verdict(accepted, next_token, session.length, verify_us, tree_path, budget),
                     work.epoch)

    @staticmethod
    def _decide(session: Session, draft_tokens: list[int], q: SparseQ | None,
                parents: list[int] | None, logits_rows: Any) -> tuple[list[int], int]:
        """(accepted path, next_token) for one session; ``logits_rows`` [n + 1, vocab] float32
        are the target's logits after the last verified token and after each draft node.
        A chain's path is its first ``accepted`` nodes; ``verify.py`` and ``tree_verify.py``
        hold the rules."""
        if parents is None:
            accepted, next_token = decide(session.sampling, session.rng, session.length,
                                          draft_tokens, q, logits_rows)
            return list(range(accepted)), next_token
        return decide_tree(session.sampling, session.rng, session.length, draft_tokens,
                           parents, q, logits_rows)

    def _publish(self, session: Session) -> None:
        """Offer the session's newly completed blocks of cached tokens for sharing."""
        session.published = self.blocks.publish(session.blocks, session.tokens, session.cached,
                                                session.published)

    def _finish_prefill(self, chunk: Chunk, now: float) -> Reply | None:
        session = chunk.session
        session.cached += len(chunk.tokens)
        self._publish(session)
        if session.to_prefill:
            return None
        work = session.pending
        assert work is not None
        self.scheduler.done(session)
        self.scheduler.touch(session, now)
        return Reply(session.peer, session.sid, work.seq, Opened(session.length), work.epoch)

    def _preempted(self, session: Session, work: Work) -> list[Reply]:
        """A session dropped because nothing fitted: busy for an OPEN, lost for a DRAFT (and
        stale for a draft chained on it)."""
        if work.kind == "open":
            self.busy += 1
            msg = Error(ErrorCode.OVERLOADED, "KV memory full; retry later",
                        self.config.retry_after_ms)
        else:
            msg = Error(ErrorCode.UNKNOWN_SESSION,
                        "session evicted under memory pressure: re-open it with the full history")
        replies = [Reply(session.peer, session.sid, work.seq, msg, work.epoch)]
        if session.queued is not None:  # answered too, after the round it was chained on
            queued, session.queued = session.queued, None
            replies.append(Reply(session.peer, session.sid, queued.seq, Error(
                ErrorCode.STALE_DRAFT, "the draft it was chained on was evicted"),
                queued.epoch))
        return replies

    def fail_waiting(self, message: str) -> list[Reply]:
        """After a failed step: drop every session with a request waiting, answering each."""
        replies = []
        for sid in list(self.scheduler.waiting):
            session = self.scheduler.remove(sid)
            for work in (session.pending, session.queued) if session is not None else ():
                if work is not None:
                    replies.append(Reply(session.peer, sid, work.seq,
                                         Error(ErrorCode.INTERNAL, message), work.epoch))
        return replies

    # ------------------------------------------------------------ checks and stats

    def _session(self, peer: bytes, sid: int, owner: str = "") -> Session:
        """The session, if this connection (and, with CURVE, this key) holds it."""
        session = self.sessions.get(sid)
        if session is None or session.peer != peer or session.owner != owner:
            raise UnknownSession(f"unknown session {sid:#x}: re-open it with the full history")
        return session

    def _check_tokens(self, tokens: TokenArray) -> None:
        vocab = self.info.vocab_size
        bad = tokens[(tokens < 0) | (tokens >= vocab)]
        if bad.size:
            raise InvalidToken(f"token id {int(bad[0])} outside the target vocabulary of {vocab}")

    def _check_fits(self, length: int) -> None:
        """A session that could never fit the KV budget, even alone, is refused for good."""
        if self.blocks.blocks_for(length + 1) > self.blocks.capacity:
            raise LimitExceeded(f"{length} tokens exceed the KV budget of "
                                f"{self.blocks.capacity * self.blocks.block_size} tokens")

    def stats(self) -> dict[str, Any]:
        """Counters for ``--stats-file`` and the benchmarks."""
        s = self.scheduler
        return {
            "steps": self.steps, "forward_tokens": self.forward_tokens,
            "rounds": self.rounds, "verified_tokens": self.verified_tokens,
            "sessions": len(self.sessions), "waiting": len(s.waiting),
            "kv_blocks_used": self.blocks.used, "kv_blocks_total": self.blocks.capacity,
            "kv_blocks_peak": self.blocks.peak_used, "block_size": self.blocks.block_size,
            "prefix_hit_tokens": self.blocks.prefix_hit_tokens,
            "evictions": s.evictions, "preemptions": s.preemptions, "busy": self.busy,
            "expired": self.expired, "max_wait_steps": s.max_wait_steps,
            "non_finite": self.non_finite, "chained": self.chained,
            "stale_drafts": self.stale_drafts, "utilization": round(self.utilization, 3),
            "goodput_steps": self.goodput_steps, "step_ms_target": round(s.step_s * 1000, 1),
            "ms_per_token": round(s.s_per_token * 1000, 3),
            "ms_per_step": round(s.s_overhead * 1000, 3),
        }


def auto_step_tokens(device: Any, max_draft_tokens: int) -> int:
    """Tokens per step when not set: a CPU pass costs time in proportion to its tokens, so
    256 keeps a step (everyone's latency) near a second; a GPU pass is nearly flat up to
    thousands of tokens."""
    base = 2048 if getattr(device, "type", "cpu") == "cuda" else 256
    return max(base, 2 * (max_draft_tokens + 1))


def auto_step_s(device: Any) -> float:
    """How long a step may take while users wait for verdicts: on CPU a pass of the real
    target costs about 5 ms a token, so 150 ms still takes a few dozen prefill tokens a step;
    a GPU pass is short, so 50 ms."""
    return 0.05 if getattr(device, "type", "cpu") == "cuda" else 0.15


def _continues(session: Session, base: int, root: int) -> bool:
    """Whether a chained draft's guess held: the session is ``base`` tokens long, ending in
    ``root``."""
    return session.length == base and session.tokens[-1] == root


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n
