"""The speculative loop: draft, send, keep drafting while the verdict is in flight, accept,
roll back.

Read top to bottom like gpt-fast's ``speculative_decode``. The client owns the conversation:
``tokens`` is the only copy of the truth, so whenever the daemon loses our session (restart,
eviction) we re-open it from ``tokens`` and lose time, never a token.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from edgespec.edge_client.draft_length import DraftLength
from edgespec.edge_client.drafter import Drafter
from edgespec.edge_client.stats import GenerationStats
from edgespec.edge_client.trace import TraceWriter, open_record, round_record
from edgespec.edge_client.transport import Link, Reconnected, expect
from edgespec.edge_client.tree_shape import CHAIN, TREE, Shape, TreeShape
from edgespec.wire.codec import (
    Draft,
    Open,
    Opened,
    SamplingParams,
    SparseQ,
    Verdict,
    check_path,
)
from edgespec.wire.errors import Overloaded, StaleDraft, UnknownSession

MAX_REOPENS = 8
PREFILL_CHUNK = 32  # prompt tokens per draft decode while the daemon may still be prefilling
BACKOFF_S = (0.25, 8.0)


def speculate(
    drafter: Drafter,
    link: Link,
    session_id: int,
    tokens: list[int],
    max_new_tokens: int,
    policy: DraftLength,
    stop_ids: Sequence[int],
    stats: GenerationStats,
    pipeline: bool = True,
    on_wait: Callable[[str], None] | None = None,
    trace: TraceWriter | None = None,
    sampling: SamplingParams | None = None,
    shape: TreeShape | None = None,
    chain: bool = True,
) -> Iterator[list[int]]:
    """Extend ``tokens`` in place by up to ``max_new_tokens``; yield each round's new tokens.

    With ``pipeline`` the drafter keeps going while the verdict is in flight, guessing that
    the whole draft is accepted and that the target's bonus token is the draft's own next
    pick. When the guess holds (most rounds at high acceptance) the next draft is already
    made when the verdict lands, so drafting and verification overlap instead of alternating.
    With ``chain`` too (and a timed policy), the next round's draft is *sent* as soon as it
    is drafted, chained on that guess (``Draft.root``): when the guess holds the daemon
    verifies it right after this round, and the round trip between them is saved; when it
    fails the daemon drops it unverified (``STALE_DRAFT``) and we draft again from the
    verdict, as without it. Seeded runs never chain: which rounds chain depends on timing.
    With ``trace``, each OPEN and each verified round is recorded for ``tools/replay``.
    ``sampling`` (default greedy) goes to the daemon in OPEN; the drafter's own settings
    decide whether each DRAFT carries a sparse q. ``shape`` picks chain or tree per round
    (``tree_shape.py``; None: chains only). A tree round drafts siblings where the draft is
    unsure and does not draft ahead: which path the target takes is known only from the
    verdict.
    """
    sampling = sampling or SamplingParams()
    start = time.perf_counter()
    sent0, received0 = link.bytes_sent, link.bytes_received
    stops = set(stop_ids)
    open_seq = _send_open(link, session_id, tokens, max_new_tokens, trace, sampling)
    shape = shape or TreeShape(shape=CHAIN)
    shape.begin()
    opened = False
    ahead: list[int] = []  # drafted (and evaluated) beyond ``tokens`` during the last round
    generated = 0
    round_start = time.perf_counter()
    chained: Chained | None = None  # sent while the round before it was in flight
    guesses: list[int] = []  # drafted beyond the round in flight (after its chained draft)
    try:
        while generated < max_new_tokens:
            carried, chained = (chained, None) if chained is not None and chained.held else \
                (None, None)
            if carried is not None:  # this round's draft went out during the last one
                k = chain_k = carried.k
                stats.expected_tokens += carried.expected
                form, tree, parents, q = Shape(CHAIN, k, k), False, None, carried.q
                draft, seq = carried.draft, carried.seq
                sent_at, sent_wall = carried.sent_at, carried.sent_wall
                sent0_round, received0_round = carried.bytes_at
                draft_time, draft_count = 0.0, 0
                opened_before, ahead = True, []
            else:
                # ---- draft k tokens (a chain, or a tree up to depth k); a chain's head may
                # already be drafted from the last round
                k = policy.next_k(max_new_tokens - generated)
                stats.expected_tokens += policy.expected  # a tree round: what its chain would
                form = shape.next(k, policy.timed, max_new_tokens - generated - 1, pipeline)
                chain_k, k = k, form.depth  # a tree: what the chain would have been
                tree = form.mode == TREE
                ahead = [] if tree else ahead[:k]
                t0 = time.perf_counter()
                opened_before = opened
                draft = []
                parents = None

                def daemon_free(opened: bool = opened) -> None:
                    """Nothing of ours in flight once OPENED came (or is waiting to be read):
                    then the draft may take the daemon's cores too."""
                    drafter.daemon_idle(opened or link.reply_waiting())

                if tree:
                    drafter.sync(tokens, PREFILL_CHUNK, daemon_free)
                    daemon_free()
                    draft, parents = drafter.draft_tree(form.nodes, k)
                elif k:  # k = 0 (target only): the draft model has nothing to do; a later
                    # round's sync catches up on every token at once
                    drafter.sync(tokens + ahead, PREFILL_CHUNK, daemon_free)
                    draft = ahead + drafter.draft(k - len(ahead), daemon_free)
                draft_time = time.perf_counter() - t0
                draft_count = len(draft) if tree else k - len(ahead)
                if not opened:
                    _await_open(link, open_seq, session_id, tokens, max_new_tokens - generated,
                                stats, on_wait, sampling)
                    opened = True
                    round_start = time.perf_counter() - draft_time  # a round is not its OPEN
                # ---- send
                sent_at, sent_wall = time.perf_counter(), time.time()
                sent0_round, received0_round = link.bytes_sent, link.bytes_received
                if tree:
                    q = drafter.tree_q()
                    message = Draft(len(tokens), draft, q, np.asarray(parents, dtype=np.int32))
                else:
                    q = drafter.sparse_q(len(tokens), draft)
                    message = Draft(len(tokens), draft, q)
                seq = link.send(message, session_id)
                guesses = []
            # ---- keep drafting while the verdict is in flight, guessing that this round
            # holds whole: the next round's draft, sent ahead (chained) once drafted
            drafter.daemon_idle(False)  # look ahead on our share only: it verifies now
            drafting = pipeline and bool(draft) and not tree
            next_k = (_chain_length(policy, shape, max_new_tokens - generated - len(draft) - 1)
                      if chain and drafting else 0)
            look = (next_k or k) + 1  # guesses to draft at most: more only compete for cores
            wait_from = drafted_at = time.perf_counter()
            held_over = len(guesses)  # a chained round's look-ahead, drafted last round
            try:
                reply = link.poll(seq)
                while reply is None:
                    if next_k and chained is None and len(guesses) > next_k:
                        if not stops & set(guesses[:next_k + 1]):  # else it ends here
                            chained = _send_chained(link, drafter, session_id,
                                                    len(tokens) + len(draft) + 1,
                                                    guesses[:next_k + 1], policy.expected)
                        next_k = 0
                    if not drafting or len(guesses) >= look:
                        break
                    guess = drafter.draft(1)
                    if not guess:  # the draft's context is full: wait, do not spin
                        break
                    guesses += guess
                    drafted_at = time.perf_counter()
                    reply = link.poll(seq)
                verdict = reply if reply is not None else link.wait(seq)
            except StaleDraft:  # a chained draft the daemon dropped after all: draft again
                chained, guesses = None, []
                continue
            except UnknownSession as exc:  # lost us, or a new connection: rebuild from history
                open_seq = _send_open(link, session_id, tokens, max_new_tokens - generated, trace,
                                      sampling)
                opened, ahead, chained, guesses = False, [], None, []
                if isinstance(exc, Reconnected):  # bounded by the link's reconnect_for_s
                    stats.reconnects += 1
                    continue
                stats.reopens += 1
                if stats.reopens > MAX_REOPENS:
                    raise
                continue
            verdict = expect(verdict, Verdict)
            arrived_at = time.perf_counter()
            kept = draft
            if tree:
                check_path(parents, verdict.path)
                kept = [draft[node] for node in verdict.path]
                drafter.accept_tree(list(verdict.path))
            fresh_s_per_token = draft_time / draft_count if draft_count else 0.0
            # a tree's nodes cost less than a chain's; a chained round drafted nothing fresh
            was_idle = opened_before and not tree and carried is None
            fresh_guesses = len(guesses) - held_over
            draft_time += drafted_at - wait_from
            stats.draft_s += draft_time
            stats.wait_s += arrived_at - drafted_at
            stats.round_trip_s += arrived_at - sent_at
            stats.verify_s += verdict.verify_us / 1e6
            if trace is not None:
                trace.write(round_record(
                    session_id, sent_wall, len(tokens), draft, verdict, arrived_at - sent_at,
                    draft_time, link.bytes_sent - sent0_round,
                    link.bytes_received - received0_round, q, parents, chain_k))
            # ---- accept the verified prefix (a tree: the verified path) plus the target's
            # own token; roll back the rest
            new, stopped = verified_tokens(kept, verdict, max_new_tokens - generated, stops)
            # the chain policy learns the draft's own acceptance: in a tree, how far the
            # verdict followed the main branch (the chain the draft would have sent)
            chain_accepted = (main_branch_accepted(parents, verdict.path) if parents is not None
                              else verdict.accepted)
            full = chain_accepted == (k if tree else len(draft))
            guessed = full and bool(guesses) and guesses[0] == verdict.next_token
            stats.ahead_drafted += fresh_guesses
            if chained is not None:
                chained.held = guessed and not stopped
                if chained.held:  # its draft is guesses[1:k + 1]; the rest looks beyond it
                    stats.ahead_used += 1 + chained.k
                    guesses = guesses[1 + chained.k:]
            ahead = guesses[1:] if guessed and chained is None else []
            # drafting beside the verify (the guesses) and with nothing in flight (this
            # round's fresh tokens, once OPENED came: the first round's carry the prompt).
            # A chained round's trip waited on the round before it: no wire to learn there.
            policy.observe(k if tree else len(draft), chain_accepted,
                           (drafted_at - wait_from) / fresh_guesses if fresh_guesses else 0.0,
                           arrived_at - sent_at, width=len(draft) + 1,
                           idle_draft_s_per_token=fresh_s_per_token if was_idle else 0.0,
                           verify_s=verdict.verify_us / 1e6, timed_trip=carried is None)
            stats.tree_side_paths += int(tree and chain_accepted < verdict.accepted)
            shape.observe(form.mode, len(new), arrived_at - round_start, verdict.budget,
                          0 if tree else len(draft), 0 if tree else verdict.accepted)
            round_start = arrived_at
            tokens.extend(new)
            generated += len(new)
            stats.rounds += 1
            stats.chained_rounds += int(carried is not None)
            stats.tree_rounds += int(tree)
            stats.tree_nodes += len(draft) if tree else 0
            stats.tree_depth += k if tree else 0
            stats.drafted += len(draft)
            stats.accepted += verdict.accepted
            stats.rejected_rounds += int(not full)
            stats.ahead_used += len(ahead)
            stats.generated += len(new)
            yield new
            if stopped:
                return
    finally:
        stats.wall_s += time.perf_counter() - start
        stats.bytes_sent += link.bytes_sent - sent0
        stats.bytes_received += link.bytes_received - received0


@dataclass(slots=True)
class Chained:
    """A DRAFT sent while the round before it was in flight, on the guess that that round
    holds whole with ``root`` as the target's next token (``held`` once its verdict says)."""

    seq: int
    root: int
    draft: list[int]
    q: SparseQ | None
    expected: float  # tokens the policy expected it to yield
    sent_at: float
    sent_wall: float
    bytes_at: tuple[int, int]  # the link's byte counters when it was sent
    held: bool = False

    @property
    def k(self) -> int:
        return len(self.draft)


def _chain_length(policy: DraftLength, shape: TreeShape, remaining: int) -> int:
    """The next round's draft length if it may be chained (0: not), ``remaining`` being the
    tokens still wanted after a full accept of the round in flight. A seeded run must cut
    its rounds alike every time (never chained), and a tree is never chained."""
    if not policy.timed or shape.shape == TREE or remaining < 2:
        return 0
    k = policy.next_k(remaining)
    return min(k, shape.budget) if shape.budget > 0 else k


def _send_chained(link: Link, drafter: Drafter, session_id: int, base: int,
                  guesses: list[int], expected: float) -> Chained:
    """Send ``guesses[1:]`` chained after ``guesses[0]``, the guessed next token, at ``base``
    (the session's length after a full accept of the round in flight and that token)."""
    root, draft = guesses[0], guesses[1:]
    q = drafter.sparse_q(base, draft)
    bytes_at = (link.bytes_sent, link.bytes_received)
    sent_at, sent_wall = time.perf_counter(), time.time()
    seq = link.send(Draft(base, draft, q, root=root), session_id)
    return Chained(seq, root, draft, q, expected, sent_at, sent_wall, bytes_at)


def main_branch_accepted(parents: Sequence[int], path: Sequence[int]) -> int:
    """How many of ``path``'s nodes lie on the tree's main branch (each node the first child
    of the one before): the draft's own chain, as far as the target followed it."""
    first_child: dict[int, int] = {}
    for node, parent in enumerate(parents):
        first_child.setdefault(parent, node)
    count, at = 0, -1
    for node in path:
        if first_child.get(at) != node:
            break
        count, at = count + 1, node
    return count


def verified_tokens(draft: Sequence[int], verdict: Verdict, budget: int, stops: set[int]
                    ) -> tuple[list[int], bool]:
    """The round's new tokens (accepted prefix + the target's own), cut to ``budget`` and
    after the first stop id; and whether a stop id ended the answer. For a tree, ``draft``
    is the accepted path's tokens."""
    new = [*draft[: verdict.accepted], verdict.next_token][:budget]
    cut = next((i for i, t in enumerate(new) if t in stops), None)
    return (new, False) if cut is None else (new[: cut + 1], True)


def _send_open(link: Link, session_id: int, tokens: list[int], max_new: int,
               trace: TraceWriter | None, sampling: SamplingParams) -> int:
    """Open (or rebuild) the session from our full history; recorded when tracing."""
    if trace is not None:
        trace.write(open_record(session_id, tokens, max_new, sampling=sampling))
    return link.send(Open(list(tokens), max_new, sampling), session_id)


def _await_open(link: Link, seq: int, session_id: int, tokens: list[int], max_new: int,
                stats: GenerationStats, on_wait: Callable[[str], None] | None,
                sampling: SamplingParams) -> None:
    """Wait for OPENED; when the server is full, wait as long as it asks (else back off
    exponentially), with jitter so that refused clients do not come back all at once, and
    give up with ``Overloaded`` once it has stayed full for ``link.liveness.busy_for_s``."""
    t0 = time.perf_counter()
    give_up = t0 + link.liveness.busy_for_s
    delay = BACKOFF_S[0]
    while True:
        try:
            reply = link.wait(seq)
        except Reconnected:  # the OPEN was lost with the old connection: send it again
            stats.reconnects += 1
            seq = link.send(Open(list(tokens), max_new, sampling), session_id)
            continue
        except Overloaded as exc:
            hint = exc.retry_after_ms / 1000.0
            wait = (hint or delay) * (0.75 + 0.5 * random.random())
            if time.perf_counter() + wait > give_up:
                raise Overloaded(
                    f"verifyd stayed busy for {time.perf_counter() - t0:.0f} s ({exc}); "
                    "the conversation is kept: try again later", exc.retry_after_ms) from exc
            if on_wait is not None:
                on_wait(f"server busy, retrying in {wait:.1f} s ({exc})")
            time.sleep(wait)
            delay = min(delay * 2, BACKOFF_S[1])
            seq = link.send(Open(list(tokens), max_new, sampling), session_id)
            continue
        expect(reply, Opened)
        stats.open_s += time.perf_counter() - t0
        return
