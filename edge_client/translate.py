"""Drafting for a target with another tokenizer: meet at the text, propose target ids.

Each round the draft model drafts in its own tokens from the verified text (re-tokenised in
its vocabulary; ``Drafter.sync`` rolls back only what changed), the draft's text after the
verified text becomes target ids by greedy longest match over the target's vocabulary, and
the daemon verifies those ids as any draft. The answer is still exactly the target's: the
verdict's tokens are the target's own choices, whatever was proposed.

The boundary: the last draft token's text may end inside the target token the target would
pick ("hel" of "hello"). So one draft token more than asked is drafted and target ids are
kept only while they end within the text of the first ``k``; the tail is held back. A text
cut inside a UTF-8 character (a target byte token) is drafted from its last whole character.

The target's vocabulary comes from the daemon once, in bounded chunks, is checked against
WELCOME's fingerprint and is cached by that fingerprint.
"""

from __future__ import annotations

import os
import struct
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from edgespec.edge_client.draft_length import DraftLength
from edgespec.edge_client.drafter import Drafter
from edgespec.edge_client.spec_loop import (
    MAX_REOPENS,
    _await_open,
    _send_open,
    verified_tokens,
)
from edgespec.edge_client.stats import GenerationStats
from edgespec.edge_client.trace import TraceWriter, round_record
from edgespec.edge_client.transport import Link, Reconnected, expect
from edgespec.models.fingerprint import llama_vocab
from edgespec.models.vocab import Vocabulary
from edgespec.wire.codec import (
    Draft,
    SamplingParams,
    SparseQ,
    Verdict,
    Vocab,
    VocabGet,
    Welcome,
)
from edgespec.wire.errors import LimitExceeded, ModelMismatch, UnknownSession
from edgespec.wire.protocol import Limits

MIN_SHARED = 0.25  # of the draft's vocabulary spelled alike in the target's: below, refuse
MAX_ROUND_BYTES = 4096  # translation work per round: draft text translated at most
_CACHE_MAGIC = b"edgespec-vocab-cache-v1\0"


@dataclass(frozen=True, slots=True)
class Translation:
    """Both vocabularies, how much of the draft's the target shares, and the token-level
    intersection: ``to_target[d]`` is the target id spelled as draft id ``d`` (-1: none)."""

    draft: Vocabulary
    target: Vocabulary
    shared: float
    to_target: npt.NDArray[np.int32]

    @classmethod
    def build(cls, draft: Vocabulary, target: Vocabulary) -> Translation:
        return cls(draft, target, draft.shared_with(target), intersection(draft, target))

    @property
    def label(self) -> str:
        return f"translating tokenizers ({self.shared:.0%} of the draft's vocabulary shared)"


def prepare(drafter: Drafter, link: Link, welcome: Welcome, cache_dir: Path) -> Translation:
    """The target's vocabulary (cached or fetched) beside the draft's; refuse a pair that
    shares too little to help, saying what was measured."""
    target = target_vocabulary(link, welcome, cache_dir)
    translation = Translation.build(Vocabulary(*llama_vocab(drafter.llm)), target)
    draft, shared = translation.draft, translation.shared
    if shared < MIN_SHARED:
        raise ModelMismatch(
            f"draft and target tokenizers differ and share only {shared:.1%} of the draft's "
            f"{len(draft)} tokens (at least {MIN_SHARED:.0%} is needed for translated drafts "
            "to be accepted): use a draft of the target's family")
    return translation


def intersection(draft: Vocabulary, target: Vocabulary) -> npt.NDArray[np.int32]:
    """Draft id → the target id with the same text, for ordinary draft tokens that are their
    text's own id (so the map is one to one); -1 elsewhere."""
    out = np.full(len(draft), -1, dtype=np.int32)
    for d, piece in enumerate(draft.pieces):
        if d in draft.control or draft.id_of(piece) != d:
            continue
        t = target.id_of(piece)
        if t is not None:
            out[d] = t
    return out


# ---------------------------------------------------------------- the target's vocabulary


def target_vocabulary(link: Link, welcome: Welcome, cache_dir: Path,
                      limits: Limits | None = None) -> Vocabulary:
    """From the cache when a file there hashes to WELCOME's fingerprint, else from the daemon
    (then cached). A transfer that does not hash to the fingerprint is refused."""
    path = cache_dir / "vocab" / f"{welcome.fingerprint.hex()}.bin"
    cached = _read_cache(path)
    if cached is not None and cached.fingerprint == welcome.fingerprint:
        return cached
    vocab = fetch_vocabulary(link, welcome, limits or link.limits)
    _write_cache(path, vocab)
    return vocab


def fetch_vocabulary(link: Link, welcome: Welcome, limits: Limits) -> Vocabulary:
    total = welcome.vocab_entries
    if not 0 < total <= limits.max_vocab:
        raise LimitExceeded(f"target vocabulary of {total} entries is out of bounds")
    tokens: list[bytes] = []
    bos = eos = -1
    while len(tokens) < total:
        chunk = expect(link.request(VocabGet(len(tokens), limits.max_vocab_chunk),
                                    recover=False), Vocab)
        if chunk.total != total or chunk.start != len(tokens) or not len(chunk.lengths):
            raise ModelMismatch(f"vocabulary transfer out of order: entries {chunk.start}.. "
                                f"of {chunk.total}, expected {len(tokens)}.. of {total}")
        tokens += chunk.entries()
        bos, eos = chunk.bos, chunk.eos
    vocab = Vocabulary(tokens, {"bos": None if bos < 0 else bos, "eos": None if eos < 0 else eos})
    if vocab.fingerprint != welcome.fingerprint:
        raise ModelMismatch("the target's vocabulary as transferred does not hash to its "
                            "fingerprint: refusing to translate with it")
    return vocab


def _read_cache(path: Path) -> Vocabulary | None:
    try:
        data = path.read_bytes()
    except OSError:
        return None
    try:
        if not data.startswith(_CACHE_MAGIC):
            return None
        at = len(_CACHE_MAGIC)
        n, bos, eos = struct.unpack_from("<Iii", data, at)
        at += 12
        tokens = []
        for _ in range(n):
            (size,) = struct.unpack_from("<I", data, at)
            tokens.append(data[at + 4:at + 4 + size])
            at += 4 + size
    except struct.error:
        return None
    return Vocabulary(tokens, {"bos": None if bos < 0 else bos, "eos": None if eos < 0 else eos})


def _write_cache(path: Path, vocab: Vocabulary) -> None:
    """Atomically, so a concurrent client never reads half a file (it would not hash
    right anyway, and would fetch again)."""
    bos, eos = (vocab.specials.get(name) for name in ("bos", "eos"))
    parts = [_CACHE_MAGIC, struct.pack("<Iii", len(vocab.tokens), -1 if bos is None else bos,
                                       -1 if eos is None else eos)]
    parts += [struct.pack("<I", len(t)) + t for t in vocab.tokens]
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "wb") as fh:
        fh.write(b"".join(parts))
    os.replace(tmp, path)


# ---------------------------------------------------------------- one round's proposal


def whole_chars(text: bytes) -> int:
    """Length of the longest prefix of ``text`` that does not end inside a UTF-8 char."""
    n = len(text)
    for back in range(1, min(4, n) + 1):
        byte = text[n - back]
        if byte < 0x80:  # ASCII: whole (a stray continuation after it is left as it is)
            return n
        if byte >= 0xC0:  # the lead byte of the last char: whole if all its bytes are here
            need = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return n if back >= need else n - back
    return n


def propose(draft_text: bytes, text: bytes, k_text: int, target: Vocabulary, k: int
            ) -> list[int]:
    """Target ids for the drafted text after the verified ``text``: ``draft_text`` continues a
    prefix of ``text``; ids are kept while they end within its first ``k_text`` bytes."""
    if not draft_text.startswith(text):
        return []  # the draft did not even reproduce a held-back partial character
    new = draft_text[len(text):len(text) + MAX_ROUND_BYTES]
    limit = k_text - len(text)
    ids, ends = target.encode(new, k)
    return [i for i, end in zip(ids, ends, strict=True) if end <= limit]


# ---------------------------------------------------------------- the loop


def speculate_translated(
    drafter: Drafter,
    translation: Translation,
    link: Link,
    session_id: int,
    tokens: list[int],
    max_new_tokens: int,
    policy: DraftLength,
    stop_ids: Sequence[int],
    stats: GenerationStats,
    on_wait: Callable[[str], None] | None = None,
    trace: TraceWriter | None = None,
    sampling: SamplingParams | None = None,
) -> Iterator[list[int]]:
    """``speculate`` for a target with another tokenizer: ``tokens`` are target ids (the
    truth, extended in place). Greedy drafts match at the string level; sampled ones draw
    only among tokens both vocabularies spell alike, so their q (renormalised over those)
    is a distribution over target ids and rejection sampling stays exact."""
    sampling = sampling or SamplingParams()
    sampled = sampling.temperature > 0
    drafter.allowed = translation.to_target >= 0 if sampled else None
    target, draft_vocab = translation.target, translation.draft
    start = time.perf_counter()
    sent0, received0 = link.bytes_sent, link.bytes_received
    stops = set(stop_ids)
    draft_eos = {i for i in draft_vocab.specials.values() if i is not None} | draft_vocab.control
    open_seq = _send_open(link, session_id, tokens, max_new_tokens, trace, sampling)
    opened = False
    text = target.decode(tokens)  # the verified text, kept in step with ``tokens``
    generated = 0
    try:
        while generated < max_new_tokens:
            # ---- draft k + 1 draft tokens from the verified text; translate k's worth
            k = policy.next_k(max_new_tokens - generated)
            t0 = time.perf_counter()
            base = text[:whole_chars(text)]
            context = drafter.llm.tokenize(base, add_bos=False, special=False) or \
                drafter.llm.tokenize(b" ", add_bos=False, special=False)
            drafter.sync(context)
            q: SparseQ | None = None
            if sampled:  # token-level intersection: each draft token is one target token
                draft_ids = drafter.draft(k) if k and base == text else []
                t1 = time.perf_counter()
                proposal = [int(translation.to_target[d]) for d in draft_ids]
                q = _in_target_ids(drafter.sparse_q(len(context), draft_ids),
                                   translation.to_target)
            else:  # string level: draft one more token to see where the last one ends
                draft_ids = drafter.draft(k + 1) if k else []
                t1 = time.perf_counter()
                cut = next((i for i, t in enumerate(draft_ids) if t in draft_eos), None)
                ended = cut is not None and cut < k  # the draft said the answer ends here
                kept = draft_ids[:cut] if cut is not None else draft_ids
                pieces = [draft_vocab.pieces[t] for t in kept]
                draft_text = base + b"".join(pieces)
                k_text = len(draft_text) if ended else len(base) + sum(len(p) for p in
                                                                      pieces[:k])
                proposal = propose(draft_text, text, k_text, target, k) if k else []
                if ended and len(proposal) < k and stop_ids and \
                        target.decode(proposal) == draft_text[len(text):]:
                    proposal.append(int(stop_ids[0]))  # the draft's end of answer
            t2 = time.perf_counter()
            stats.draft_s += t1 - t0
            stats.translate_s += t2 - t1
            if not opened:
                _await_open(link, open_seq, session_id, tokens, max_new_tokens - generated,
                            stats, on_wait, sampling)
                opened = True
            # ---- send, wait for the verdict
            sent_at, sent_wall = time.perf_counter(), time.time()
            sent0_round, received0_round = link.bytes_sent, link.bytes_received
            seq = link.send(Draft(len(tokens), proposal, q), session_id)
            try:
                verdict = expect(link.wait(seq), Verdict)
            except UnknownSession as exc:  # lost us: rebuild from our history
                open_seq = _send_open(link, session_id, tokens, max_new_tokens - generated,
                                      trace, sampling)
                opened = False
                if isinstance(exc, Reconnected):
                    stats.reconnects += 1
                    continue
                stats.reopens += 1
                if stats.reopens > MAX_REOPENS:
                    raise
                continue
            arrived_at = time.perf_counter()
            stats.wait_s += arrived_at - sent_at
            stats.round_trip_s += arrived_at - sent_at
            stats.verify_s += verdict.verify_us / 1e6
            if trace is not None:
                record = round_record(
                    session_id, sent_wall, len(tokens), proposal, verdict, arrived_at - sent_at,
                    t2 - t0, link.bytes_sent - sent0_round,
                    link.bytes_received - received0_round, q)
                record["draft_model_ids"] = [int(t) for t in draft_ids]  # the other stream
                trace.write(record)
            # ---- accept the verified prefix plus the target's own token
            new, stopped = verified_tokens(proposal, verdict, max_new_tokens - generated, stops)
            policy.observe(len(proposal), verdict.accepted, (t2 - t0) / max(k + 1, 1),
                           arrived_at - sent_at, verify_s=verdict.verify_us / 1e6)
            tokens.extend(new)
            text += target.decode(new)
            generated += len(new)
            stats.rounds += 1
            stats.drafted += len(proposal)
            stats.accepted += verdict.accepted
            stats.rejected_rounds += int(verdict.accepted < len(proposal))
            stats.generated += len(new)
            yield new
            if stopped:
                return
    finally:
        drafter.allowed = None
        stats.wall_s += time.perf_counter() - start
        stats.bytes_sent += link.bytes_sent - sent0
        stats.bytes_received += link.bytes_received - received0


def _in_target_ids(q: SparseQ | None, to_target: npt.NDArray[np.int32]) -> SparseQ | None:
    """The draft's sparse q with its (intersection) ids renamed to the target's."""
    if q is None:
        return None
    return SparseQ(q.counts, to_target[q.ids].astype(np.int32), q.probs)
