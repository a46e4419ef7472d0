"""Bounded encode/decode of each message; decoding raises only ``WireError`` subclasses.

Token arrays travel as raw little-endian int32 buffers (``numpy.frombuffer`` on receipt,
no copies, no pickle, no JSON); fixed fields as one ``struct`` frame per message.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import numpy.typing as npt
from edgespec.wire.errors import (
    BadDistribution,
    ErrorCode,
    FrameTooLarge,
    InvalidToken,
    LimitExceeded,
    MalformedFrame,
    VersionMismatch,
)
from edgespec.wire.protocol import (
    FINGERPRINT_BYTES,
    HEADER,
    HOST_ID_BYTES,
    MAGIC,
    VERSION,
    Limits,
    MsgType,
    TokenizerMode,
    VerifyMode,
)

TokenArray = npt.NDArray[np.int32]
ProbArray = npt.NDArray[np.float32]
_I32 = np.dtype("<i4")
_F32 = np.dtype("<f4")
_I32_MAX = 2**31 - 1
Q_SUM_TOLERANCE = 1e-3  # float32 probabilities of one support must sum to 1 within this
DEFAULT_LIMITS = Limits()
MAX_RETRY_AFTER_MS = 600_000  # a busy daemon never asks for more than ten minutes


# ---------------------------------------------------------------- frame helpers


def _tokens_to_frame(tokens: TokenArray | list[int]) -> bytes:
    return np.ascontiguousarray(tokens, dtype=_I32).tobytes()


def _tokens_from_frame(frame: bytes, max_len: int, limits: Limits, what: str) -> TokenArray:
    if len(frame) % 4:
        raise MalformedFrame(f"{what}: {len(frame)} bytes is not a whole number of int32 ids")
    n = len(frame) // 4
    if n > max_len:
        raise LimitExceeded(f"{what}: {n} tokens exceeds the limit of {max_len}")
    arr = np.frombuffer(frame, dtype=_I32)
    if n and (int(arr.min()) < 0 or int(arr.max()) > limits.max_token_id):
        raise InvalidToken(f"{what}: token id out of range")
    return arr.astype(np.int32, copy=False)


def _text_from_frame(frame: bytes, max_bytes: int, what: str) -> str:
    if len(frame) > max_bytes:
        raise FrameTooLarge(f"{what}: {len(frame)} bytes exceeds {max_bytes}")
    try:
        return frame.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedFrame(f"{what}: not valid UTF-8") from exc


def _unpack(fmt: struct.Struct, frame: bytes, what: str) -> tuple:
    if len(frame) != fmt.size:
        raise MalformedFrame(f"{what}: expected {fmt.size} bytes, got {len(frame)}")
    return fmt.unpack(frame)


def _check_frames(frames: list[bytes], n: int, what: str) -> None:
    if len(frames) != n:
        raise MalformedFrame(f"{what}: expected {n} body frames, got {len(frames)}")


# ---------------------------------------------------------------- messages


@dataclass(frozen=True, slots=True)
class Hello:
    """Client → daemon: protocol check and the draft's tokenizer fingerprint."""

    TYPE: ClassVar[MsgType] = MsgType.HELLO
    _FMT: ClassVar[struct.Struct] = struct.Struct(f"<{FINGERPRINT_BYTES}s")
    _MODE: ClassVar[struct.Struct] = struct.Struct("<B")
    fingerprint: bytes
    client_name: str = ""
    mode: int = TokenizerMode.SAME  # a third frame only when not SAME (older daemons)

    def body(self) -> list[bytes]:
        frames = [self._FMT.pack(self.fingerprint), self.client_name.encode()]
        return frames + ([self._MODE.pack(self.mode)] if self.mode else [])

    @classmethod
    def parse(cls, frames: list[bytes], limits: Limits) -> Hello:
        if len(frames) not in (2, 3):
            raise MalformedFrame(f"HELLO: expected 2 or 3 body frames, got {len(frames)}")
        (fp,) = _unpack(cls._FMT, frames[0], "HELLO")
        mode = _unpack(cls._MODE, frames[2], "HELLO mode")[0] if len(frames) == 3 else 0
        if mode not in TokenizerMode.__members__.values():
            raise MalformedFrame(f"HELLO: tokenizer mode {mode} unknown")
        return cls(fp, _text_from_frame(frames[1], limits.max_name_bytes, "HELLO name"), mode)


@dataclass(frozen=True, slots=True)
class Welcome:
    """Daemon → client: the target's identity, limits, stop ids and chat template, and
    where it runs (a host id and its CPU threads), so a client on the same machine can take
    only the cores the daemon leaves."""

    TYPE: ClassVar[MsgType] = MsgType.WELCOME
    _FMT: ClassVar[struct.Struct] = struct.Struct(f"<{FINGERPRINT_BYTES}sIHI")
    _HOST: ClassVar[struct.Struct] = struct.Struct(f"<{HOST_ID_BYTES}sHB")
    fingerprint: bytes
    vocab_size: int
    max_draft_tokens: int
    max_context: int
    model_name: str
    eos_ids: tuple[int, ...]
    chat_template: str
    host_id: bytes = bytes(HOST_ID_BYTES)  # all zero: not said
    threads: int = 0  # the daemon's torch CPU threads (0: not said)
    on_gpu: bool = False  # verification runs on an accelerator: its CPU threads barely work
    translate: bool = False  # the client must translate; the vocabulary has vocab_entries
    vocab_entries: int = 0
    _XLATE: ClassVar[struct.Struct] = struct.Struct("<BI")

    def body(self) -> list[bytes]:
        fixed = self._FMT.pack(
            self.fingerprint, self.vocab_size, self.max_draft_tokens, self.max_context
        )
        frames = [
            fixed,
            self.model_name.encode(),
            _tokens_to_frame(list(self.eos_ids)),
            self.chat_template.encode(),
            self._HOST.pack(self.host_id, self.threads, int(self.on_gpu)),
        ]
        if self.translate:  # a sixth frame only then: same-tokenizer clients see no change
            frames.append(self._XLATE.pack(1, self.vocab_entries))
        return frames

    @classmethod
    def parse(cls, frames: list[bytes], limits: Limits) -> Welcome:
        if len(frames) not in (5, 6):
            raise MalformedFrame(f"WELCOME: expected 5 or 6 body frames, got {len(frames)}")
        translate, entries = (_unpack(cls._XLATE, frames[5], "WELCOME translate")
                              if len(frames) == 6 else (0, 0))
        if translate > 1 or entries > limits.max_vocab:
            raise MalformedFrame("WELCOME: translate flag or vocabulary size out of range")
        fp, vocab, kmax, ctx = _unpack(cls._FMT, frames[0], "WELCOME")
        name = _text_from_frame(frames[1], limits.max_name_bytes, "WELCOME name")
        eos = _tokens_from_frame(frames[2], limits.max_eos_ids, limits, "WELCOME eos")
        template = _text_from_frame(frames[3], limits.max_text_bytes, "WELCOME template")
        host, threads, on_gpu = _unpack(cls._HOST, frames[4], "WELCOME host")
        if on_gpu > 1:
            raise MalformedFrame(f"WELCOME: on_gpu flag {on_gpu} is not 0 or 1")
        return cls(fp, vocab, kmax, ctx, name, tuple(int(t) for t in eos), template, host,
                   threads, bool(on_gpu), bool(translate), entries)


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """What the user asked for; temperature 0 means greedy (token-exact)."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    verify: int = 0  # VerifyMode; checked by the daemon, which knows the modes it serves
    threshold: float = 0.0  # VerifyMode.THRESHOLD only

    def __post_init__(self) -> None:
        if not (math.isfinite(self.temperature) and 0.0 <= self.temperature <= 100.0):
            raise MalformedFrame(f"temperature {self.temperature} out of range [0, 100]")
        if not (math.isfinite(self.top_p) and 0.0 < self.top_p <= 1.0):
            raise MalformedFrame(f"top_p {self.top_p} out of range (0, 1]")
        if not 0 <= self.top_k < (1 << 24):
            raise MalformedFrame(f"top_k {self.top_k} out of range")
        if not 0 <= self.verify < 16:
            raise MalformedFrame(f"verify mode {self.verify} out of range")
        if not (math.isfinite(self.threshold) and 0.0 <= self.threshold <= 1.0):
            raise MalformedFrame(f"threshold {self.threshold} out of range [0, 1]")

    @property
    def lossy(self) -> bool:
        """True when the output is not distributed as the target alone's would be."""
        return self.temperature > 0.0 and self.verify != VerifyMode.EXACT

    @property
    def strategy(self) -> str:
        """The verification strategy as the status line and JSON stats name it."""
        try:
            name = VerifyMode(self.verify).name.lower()
        except ValueError:
            name = f"mode {self.verify}"
        if self.verify == VerifyMode.THRESHOLD:
            name += f" {self.threshold:g}"
        return name + (" (lossy)" if self.lossy else "")


@dataclass(frozen=True, slots=True)
class Open:
    """Client → daemon: start (or rebuild) a session from the full token history.

    ``tokens`` is the whole conversation so far, so a daemon that lost the session (restart,
    eviction) can be brought back to exactly the client's position.
    """

    TYPE: ClassVar[MsgType] = MsgType.OPEN
    _FMT: ClassVar[struct.Struct] = struct.Struct("<IfIfQBf")
    tokens: TokenArray
    max_new_tokens: int
    sampling: SamplingParams = field(default_factory=SamplingParams)

    def body(self) -> list[bytes]:
        s = self.sampling
        fixed = self._FMT.pack(
            self.max_new_tokens, s.temperature, s.top_k, s.top_p, s.seed, s.verify, s.threshold
        )
        return [fixed, _tokens_to_frame(self.tokens)]

    @classmethod
    def parse(cls, frames: list[bytes], limits: Limits) -> Open:
        _check_frames(frames, 2, "OPEN")
        max_new, temp, top_k, top_p, seed, verify, threshold = _unpack(
            cls._FMT, frames[0], "OPEN")
        if max_new > limits.max_new_tokens:
            raise LimitExceeded(f"max_new_tokens {max_new} exceeds {limits.max_new_tokens}")
        tokens = _tokens_from_frame(frames[1], limits.max_prompt_tokens, limits, "OPEN tokens")
        if len(tokens) == 0:
            raise MalformedFrame("OPEN: empty prompt")
        return cls(tokens, max_new, SamplingParams(temp, top_k, top_p, seed, verify, threshold))


@dataclass(frozen=True, slots=True)
class Opened:
    """Daemon → client: the session holds ``length`` tokens of context."""

    TYPE: ClassVar[MsgType] = MsgType.OPENED
    _FMT: ClassVar[struct.Struct] = struct.Struct("<I")
    length: int

    def body(self) -> list[bytes]:
        return [self._FMT.pack(self.length)]

    @classmethod
    def parse(cls, frames: list[bytes], limits: Limits) -> Opened:
        _check_frames(frames, 1, "OPENED")
        return cls(*_unpack(cls._FMT, frames[0], "OPENED"))


@dataclass(frozen=True, slots=True)
class SparseQ:
    """The exact distribution q each draft token was sampled from, one sparse row a position.

    Position i lists ``counts[i]`` (id, probability) pairs, flattened over positions in
    ``ids`` and ``probs``; q_i is those float32 values divided by their sum (taken in
    float64), exactly what the drafter sampled from. Ids outside the support have q = 0.
    """

    counts: TokenArray  # (k,) support size of each drafted position
    ids: TokenArray  # (sum(counts),)
    probs: ProbArray  # (sum(counts),) float32, each in (0, 1]

    def row(self, i: int) -> tuple[TokenArray, ProbArray]:
        """Position ``i``'s support ids and probabilities (views, no copies)."""
        start = int(self.counts[:i].sum())
        end = start + int(self.counts[i])
        return self.ids[start:end], self.probs[start:end]

    @property
    def nbytes(self) -> int:
        return 4 * (len(self.counts) + len(self.ids) + len(self.probs))


def check_sparse_q(tokens: TokenArray, q: SparseQ, limits: Limits) -> None:
    """Refuse a q that is not a distribution over distinct ids holding its drafted token."""
    if len(q.counts) != len(tokens):
        raise MalformedFrame(f"DRAFT q: {len(q.counts)} supports for {len(tokens)} tokens")
    if len(tokens) and (int(q.counts.min()) < 1 or int(q.counts.max()) > limits.max_q_support):
        raise LimitExceeded(f"DRAFT q: support sizes must be in 1..{limits.max_q_support}")
    total = int(q.counts.sum())
    if len(q.ids) != total or len(q.probs) != total:
        raise MalformedFrame(f"DRAFT q: {len(q.ids)} ids and {len(q.probs)} probabilities "
                             f"for supports of {total} in all")
    if total and not (np.isfinite(q.probs).all() and (q.probs > 0).all()
                      and (q.probs <= 1).all()):
        raise BadDistribution("DRAFT q: probabilities must be finite and in (0, 1]")
    for i, token in enumerate(tokens.tolist()):
        ids, probs = q.row(i)
        mass = float(probs.sum(dtype=np.float64))
        if abs(mass - 1.0) > Q_SUM_TOLERANCE:
            raise BadDistribution(f"DRAFT q: position {i} sums to {mass:.6f}, not 1")
        if len(np.unique(ids)) != len(ids):
            raise BadDistribution(f"DRAFT q: position {i} lists a token id twice")
        if token not in ids:
            raise BadDistribution(
                f"DRAFT q: drafted token {token} at position {i} is not in its own support")


def chain_parents(n: int) -> TokenArray:
    """The parents array of a plain chain of ``n`` tokens: [-1, 0, 1, ..., n - 2]."""
    return np.arange(-1, n - 1, dtype=np.int32)


def check_tree(parents: TokenArray | list[int], max_depth: int) -> TokenArray:
    """Refuse a parents array that is not a tree in topological order; return each node's depth.

    Node i hangs off the root when ``parents[i] == -1``, else off ``parents[i]``, which must
    come before it (so no cycle can be written down). Depth is 1 for a child of the root and
    must stay within ``max_depth``: the verifier's work and the KV it branches grow with it.
    Raises ``MalformedFrame`` for a bad parent, ``LimitExceeded`` for a tree too deep.
    """
    par = np.asarray(parents, dtype=np.int64)
    if par.ndim != 1:
        raise MalformedFrame("DRAFT tree: parents must be one flat array")
    n = len(par)
    bad = np.flatnonzero((par < -1) | (par >= np.arange(n)))
    if len(bad):
        i = int(bad[0])
        p = int(par[i])
        if p < -1:
            raise MalformedFrame(f"DRAFT tree: node {i}'s parent {p} is neither a node nor "
                                 "the root (-1)")
        raise MalformedFrame(f"DRAFT tree: node {i}'s parent {p} does not precede it")
    depths = np.zeros(n, dtype=np.int32)
    for i, p in enumerate(par.tolist()):  # parents precede children: one forward pass
        depths[i] = 1 if p < 0 else depths[p] + 1
    if n and int(depths.max()) > max_depth:
        deepest = int(np.argmax(depths))
        raise LimitExceeded(f"DRAFT tree: node {deepest} at depth {int(depths[deepest])} "
                            f"exceeds the limit of {max_depth}")
    return depths


def check_path(parents: TokenArray | list[int] | None, path: tuple[int, ...] | list[int],
               ) -> None:
    """Refuse a VERDICT path that does not walk down ``parents`` from the root, one edge a step.

    The codec can only check a path's shape (length, order, range); the client, who holds the
    tree it sent, calls this before taking the path's tokens as verified. ``parents`` None is
    a chain, whose verdicts carry no path (an empty path always passes).
    """
    if not path:
        return
    if parents is None:
        raise MalformedFrame("VERDICT: a path for a draft that was not a tree")
    par = np.asarray(parents, dtype=np.int64)
    above = -1
    for node in path:
        if not 0 <= node < len(par) or int(par[node]) != above:
            raise MalformedFrame(f"VERDICT path: node {node} is not a child of {above}")
        above = node


@dataclass(frozen=True, slots=True)
class Draft:
    """Client → daemon: draft tokens continuing the session's verified ``base_length`` tokens.

    ``base_length`` lets the daemon refuse a draft built on a position it does not hold
    (a lost or repeated round) instead of verifying it against the wrong context.
    Without ``q`` the draft was deterministic (the draft model's argmax): q is one-hot at
    each drafted token. With ``q`` (two frames more) it was sampled from that sparse q.

    With ``parents`` the tokens are the nodes of a tree (see ``check_tree``): node i
    continues node ``parents[i]``, or the session's last verified token when that is -1, and
    q's row i is node i's distribution. Without it they are one chain, sent compactly.

    With ``root`` (>= 0) the draft is *chained*: sent while the session's previous DRAFT is
    still in flight, it continues the guess that the whole previous draft holds and that the
    target's own next token is ``root``. The daemon verifies it right after that round when
    the guess held (``base_length`` is then the session's new length and ``root`` its last
    token), and answers ``STALE_DRAFT`` without running it otherwise: a round trip saved, or
    nothing lost. A chained draft is a chain.

    Body frames: fixed (base u32 [, root u32]), tokens [, q counts, q ids, q probs]
    [, parents], so 2 (chain), 3 (tree), 5 (chain + q) or 6 (tree + q).
    """

    TYPE: ClassVar[MsgType] = MsgType.DRAFT
    _FMT: ClassVar[struct.Struct] = struct.Struct("<I")
    _FMT_CHAINED: ClassVar[struct.Struct] = struct.Struct("<II")
    base_length: int
    tokens: TokenArray
    q: SparseQ | None = None
    parents: TokenArray | None = None
    root: int = -1  # >= 0: chained after a draft in flight, on this guessed next token

    @property
    def is_tree(self) -> bool:
        """True when the draft carries a parents array (even one shaped like a chain)."""
        return self.parents is not None

    def node_parents(self) -> TokenArray:
        """Each node's parent, for chains too ([-1, 0, ..., n - 2]): one code path for both."""
        if self.parents is None:
            return chain_parents(len(self.tokens))
        return np.asarray(self.parents, dtype=np.int32)

    def depths(self) -> TokenArray:
        """Each node's depth (1: a child of the root); a chain's are 1..n."""
        if self.parents is None:
            return np.arange(1, len(self.tokens) + 1, dtype=np.int32)
        return check_tree(self.parents, max(len(self.tokens), 1))

    @property
    def chained(self) -> bool:
        return self.root >= 0

    def body(self) -> list[bytes]:
        fixed = (self._FMT_CHAINED.pack(self.base_length, self.root) if self.chained
                 else self._FMT.pack(self.base_length))
        frames = [fixed, _tokens_to_frame(self.tokens)]
        if self.q is not None:
            frames += [_tokens_to_frame(self.q.counts), _tokens_to_frame(self.q.ids),
                       np.ascontiguousarray(self.q.probs, dtype=_F32).tobytes()]
        if self.parents is not None:
            frames.append(_tokens_to_frame(self.parents))
        return frames

    @classmethod
    def parse(cls, frames: list[bytes], limits: Limits) -> Draft:
        if len(frames) not in (2, 3, 5, 6):
            raise MalformedFrame(f"DRAFT: expected 2, 3, 5 or 6 body frames, got {len(frames)}")
        if len(frames[0]) == cls._FMT_CHAINED.size:
            base, root = _unpack(cls._FMT_CHAINED, frames[0], "DRAFT")
            if root > _I32_MAX:
                raise MalformedFrame(f"DRAFT: chained root {root} is not a token id")
        else:
            (base,), root = _unpack(cls._FMT, frames[0], "DRAFT"), -1
        tokens = _tokens_from_frame(frames[1], limits.max_draft_tokens, limits, "DRAFT tokens")
        parents = None
        if len(frames) in (3, 6):
            if root >= 0:
                raise MalformedFrame("DRAFT: a chained draft is a chain, not a tree")
            parents = _parents_from_frame(frames[-1], len(tokens), limits)
        if len(frames) in (2, 3):
            return cls(base, tokens, None, parents, root)
        most = limits.max_draft_tokens * limits.max_q_support
        counts = _tokens_from_frame(frames[2], limits.max_draft_tokens, limits, "DRAFT q sizes")
        ids = _tokens_from_frame(frames[3], most, limits, "DRAFT q ids")
        if len(frames[4]) % 4:
            raise MalformedFrame("DRAFT q probabilities: not a whole number of float32")
        probs = np.frombuffer(frames[4], dtype=_F32).astype(np.float32, copy=False)
        q = SparseQ(counts, ids, probs)
        check_sparse_q(tokens, q, limits)  # one row per node: counts must match the tokens
        return cls(base, tokens, q, parents, root)


def _parents_from_frame(frame: bytes, nodes: int, limits: Limits) -> TokenArray:
    """A DRAFT's parents frame: one int32 per node, forming a tree ``check_tree`` accepts."""
    if len(frame) % 4:
        raise MalformedFrame(f"DRAFT parents: {len(frame)} bytes is not a whole number of int32")
    if len(frame) // 4 != nodes:
        raise MalformedFrame(f"DRAFT parents: {len(frame) // 4} parents for {nodes} nodes")
    parents = np.frombuffer(frame, dtype=_I32).astype(np.int32, copy=False)
    check_tree(parents, limits.max_tree_depth)
    return parents


@dataclass(frozen=True, slots=True)
class Verdict:
    """Daemon → client: how many draft tokens the target accepted, and its own next token.

    Every round yields ``accepted + 1`` tokens: the accepted prefix, then ``next_token``
    (the target's correction at the first mismatch, or its bonus token after a full accept).
    For a tree draft ``path`` names the accepted nodes from the root down (``accepted`` of
    them; the client checks it against its tree with ``check_path``); for a chain it is empty.
    ``budget`` is how many draft tokens the daemon wants from this session next round, so it
    can shrink drafts under load (0: no opinion).

    Body frames: fixed (accepted u16, next_token i32, new_length u32, verify_us u32,
    budget u16) [, path int32 × accepted, only when the path is not empty].
    """

    TYPE: ClassVar[MsgType] = MsgType.VERDICT
    _FMT: ClassVar[struct.Struct] = struct.Struct("<HiIIH")
    accepted: int
    next_token: int
    new_length: int
    verify_us: int = 0
    path: tuple[int, ...] = ()
    budget: int = 0

    def body(self) -> list[bytes]:
        frames = [self._FMT.pack(self.accepted, self.next_token, self.new_length,
                                 self.verify_us, self.budget)]
        if self.path:
            frames.append(_tokens_to_frame(list(self.path)))
        return frames

    @classmethod
    def parse(cls, frames: list[bytes], limits: Limits) -> Verdict:
        if len(frames) not in (1, 2):
            raise MalformedFrame(f"VERDICT: expected 1 or 2 body frames, got {len(frames)}")
        accepted, token, new_length, us, budget = _unpack(cls._FMT, frames[0], "VERDICT")
        if accepted > limits.max_draft_tokens or not 0 <= token <= limits.max_token_id:
            raise MalformedFrame("VERDICT: field out of range")
        if budget > limits.max_draft_tokens:
            raise MalformedFrame(f"VERDICT: budget {budget} exceeds {limits.max_draft_tokens}")
        path: tuple[int, ...] = ()
        if len(frames) == 2 and frames[1]:  # an empty path frame reads as no path
            path = _path_from_frame(frames[1], accepted, limits)
        return cls(accepted, token, new_length, us, path, budget)


def _path_from_frame(frame: bytes, accepted: int, limits: Limits) -> tuple[int, ...]:
    """A VERDICT's accepted path: ``accepted`` node indices, strictly increasing (parents
    precede children, so a root-down path only climbs), each a possible node index."""
    if len(frame) % 4:
        raise MalformedFrame(f"VERDICT path: {len(frame)} bytes is not a whole number of int32")
    if len(frame) // 4 != accepted:
        raise MalformedFrame(f"VERDICT path: {len(frame) // 4} nodes for {accepted} accepted")
    path = np.frombuffer(frame, dtype=_I32)
    if int(path.min()) < 0 or int(path.max()) >= limits.max_draft_tokens:
        raise MalformedFrame(f"VERDICT path: a node index outside 0..{limits.max_draft_tokens - 1}")
    if len(path) > 1 and not (np.diff(path) > 0).all():
        raise MalformedFrame("VERDICT path: node indices must strictly increase")
    return tuple(int(x) for x in path.tolist())


@dataclass(frozen=True, slots=True)
class Close:
    TYPE: ClassVar[MsgType] = MsgType.CLOSE

    def body(self) -> list[bytes]:
        return []

    @classmethod
    def parse(cls, frames: list[bytes], limits: Limits) -> Close:
        _check_frames(frames, 0, "CLOSE")
        return cls()


@dataclass(frozen=True, slots=True)
class Closed:
    TYPE: ClassVar[MsgType] = MsgType.CLOSED

    def body(self) -> list[bytes]:
        return []

    @classmethod
    def parse(cls, frames: list[bytes], limits: Limits) -> Closed:
        _check_frames(frames, 0, "CLOSED")
        return cls()


@dataclass(frozen=True, slots=True)
class Error:
    """Either side → peer: a code the program acts on and a message a person reads;
    ``retry_after_ms`` (0: none) is the daemon's hint on an OVERLOADED reply."""

    TYPE: ClassVar[MsgType] = MsgType.ERROR
    _FMT: ClassVar[struct.Struct] = struct.Struct("<HI")
    code: ErrorCode
    message: str
    retry_after_ms: int = 0

    def body(self) -> list[bytes]:
        fixed = self._FMT.pack(int(self.code), min(self.retry_after_ms, MAX_RETRY_AFTER_MS))
        return [fixed, self.message.encode()[:4096]]

    @classmethod
    def parse(cls, frames: list[bytes], limits: Limits) -> Error:
        _check_frames(frames, 2, "ERROR")
        code, retry_after_ms = _unpack(cls._FMT, frames[0], "ERROR")
        try:
            typed = ErrorCode(code)
        except ValueError as exc:
            raise MalformedFrame(f"ERROR: unknown code {code}") from exc
        if retry_after_ms > MAX_RETRY_AFTER_MS:
            raise MalformedFrame(f"ERROR: retry-after of {retry_after_ms} ms out of range")
        text = _text_from_frame(frames[1], 4096, "ERROR message")
        return cls(typed, text, retry_after_ms)


@dataclass(frozen=True, slots=True)
class Ping:
    TYPE: ClassVar[MsgType] = MsgType.PING
    _FMT: ClassVar[struct.Struct] = struct.Struct("<Q")
    stamp: int = 0

    def body(self) -> list[bytes]:
        return [self._FMT.pack(self.stamp)]

    @classmethod
    def parse(cls, frames: list[bytes], limits: Limits) -> Ping:
        _check_frames(frames, 1, "PING")
        return cls(*_unpack(cls._FMT, frames[0], "PING"))


@dataclass(frozen=True, slots=True)
class Pong:
    TYPE: ClassVar[MsgType] = MsgType.PONG
    _FMT: ClassVar[struct.Struct] = struct.Struct("<Q")
    stamp: int = 0

    def body(self) -> list[bytes]:
        return [self._FMT.pack(self.stamp)]

    @classmethod
    def parse(cls, frames: list[bytes], limits: Limits) -> Pong:
        _check_frames(frames, 1, "PONG")
        return cls(*_unpack(cls._FMT, frames[0], "PONG"))


@dataclass(frozen=True, slots=True)
class VocabGet:
    """Client → daemon (translate mode): entries ``start .. start + count`` of the target's
    vocabulary, the stored token strings its fingerprint hashes."""

    TYPE: ClassVar[MsgType] = MsgType.VOCAB_GET
    _FMT: ClassVar[struct.Struct] = struct.Struct("<II")
    start: int
    count: int

    def body(self) -> list[bytes]:
        return [self._FMT.pack(self.start, self.count)]

    @classmethod
    def parse(cls, frames: list[bytes], limits: Limits) -> VocabGet:
        _check_frames(frames, 1, "VOCAB_GET")
        start, count = _unpack(cls._FMT, frames[0], "VOCAB_GET")
        if start > limits.max_vocab or not 0 < count <= limits.max_vocab_chunk:
            raise LimitExceeded(f"VOCAB_GET: range {start}+{count} out of bounds")
        return cls(start, count)


@dataclass(frozen=True, slots=True)
class Vocab:
    """Daemon → client: ``len(lengths)`` entries from ``start`` of a ``total``-entry vocabulary
    (each entry's byte length, then the bytes of all of them), with bos/eos (-1: none).
    The client checks the assembled table against WELCOME's fingerprint."""

    TYPE: ClassVar[MsgType] = MsgType.VOCAB
    _FMT: ClassVar[struct.Struct] = struct.Struct("<IIii")
    total: int
    start: int
    bos: int
    eos: int
    lengths: TokenArray
    blob: bytes

    def body(self) -> list[bytes]:
        return [self._FMT.pack(self.total, self.start, self.bos, self.eos),
                _tokens_to_frame(self.lengths), self.blob]

    @classmethod
    def parse(cls, frames: list[bytes], limits: Limits) -> Vocab:
        _check_frames(frames, 3, "VOCAB")
        total, start, bos, eos = _unpack(cls._FMT, frames[0], "VOCAB")
        if total > limits.max_vocab:
            raise LimitExceeded(f"VOCAB: {total} entries exceeds {limits.max_vocab}")
        if len(frames[1]) % 4:
            raise MalformedFrame("VOCAB lengths: not a whole number of int32")
        lengths = np.frombuffer(frames[1], dtype=_I32).astype(np.int32, copy=False)
        if len(lengths) > limits.max_vocab_chunk or start + len(lengths) > total:
            raise LimitExceeded(f"VOCAB: {len(lengths)} entries from {start} overrun {total}")
        if len(lengths) and (int(lengths.min()) < 0
                             or int(lengths.max()) > limits.max_token_bytes):
            raise LimitExceeded(f"VOCAB: a token string longer than {limits.max_token_bytes}")
        if int(lengths.sum(dtype=np.int64)) != len(frames[2]):
            raise MalformedFrame(f"VOCAB: {len(frames[2])} bytes for lengths summing to "
                                 f"{int(lengths.sum(dtype=np.int64))}")
        if not (-1 <= bos < total and -1 <= eos < total):
            raise MalformedFrame("VOCAB: bos/eos outside the vocabulary")
        return cls(total, start, bos, eos, lengths, bytes(frames[2]))

    def entries(self) -> list[bytes]:
        ends = np.cumsum(self.lengths, dtype=np.int64).tolist()
        starts = [0, *ends[:-1]]
        return [self.blob[a:b] for a, b in zip(starts, ends, strict=True)]


@dataclass(frozen=True, slots=True)
class Tokenize:
    """Client → daemon (translate mode): the target's own ids for ``text`` (a prompt or a
    chat turn), with its bos first when ``add_bos``; the client cannot tokenize exactly
    without the target's merges, and the answer must be the target's."""

    TYPE: ClassVar[MsgType] = MsgType.TOKENIZE
    _FMT: ClassVar[struct.Struct] = struct.Struct("<B")
    text: str
    add_bos: bool = True

    def body(self) -> list[bytes]:
        return [self._FMT.pack(int(self.add_bos)), self.text.encode()]

    @classmethod
    def parse(cls, frames: list[bytes], limits: Limits) -> Tokenize:
        _check_frames(frames, 2, "TOKENIZE")
        (add_bos,) = _unpack(cls._FMT, frames[0], "TOKENIZE")
        if add_bos > 1:
            raise MalformedFrame(f"TOKENIZE: add_bos flag {add_bos} is not 0 or 1")
        return cls(_text_from_frame(frames[1], limits.max_text_bytes, "TOKENIZE text"),
                   bool(add_bos))


@dataclass(frozen=True, slots=True)
class Tokens:
    """Daemon → client: the target's ids for a TOKENIZE."""

    TYPE: ClassVar[MsgType] = MsgType.TOKENS
    tokens: TokenArray

    def body(self) -> list[bytes]:
        return [_tokens_to_frame(self.tokens)]

    @classmethod
    def parse(cls, frames: list[bytes], limits: Limits) -> Tokens:
        _check_frames(frames, 1, "TOKENS")
        return cls(_tokens_from_frame(frames[0], limits.max_prompt_tokens, limits, "TOKENS"))


Message = (Hello | Welcome | Open | Opened | Draft | Verdict | Close | Closed | Error | Ping
           | Pong | VocabGet | Vocab | Tokenize | Tokens)
_PARSERS: dict[MsgType, type[Message]] = {
    cls.TYPE: cls
    for cls in (Hello, Welcome, Open, Opened, Draft, Verdict, Close, Closed, Error, Ping, Pong,
                VocabGet, Vocab, Tokenize, Tokens)
}


# ---------------------------------------------------------------- envelope


@dataclass(frozen=True, slots=True)
class Envelope:
    """A decoded message with its header fields."""

    session: int
    seq: int
    msg: Message
    epoch: int = 0


@dataclass(frozen=True, slots=True)
class Header:
    msg_type: int
    session: int
    seq: int
    epoch: int = 0


def encode(msg: Message, session: int = 0, seq: int = 0, epoch: int = 0) -> list[bytes]:
    """Frames for ``msg``; send with ``socket.send_multipart``."""
    return [HEADER.pack(MAGIC, VERSION, int(msg.TYPE), epoch, session, seq), *msg.body()]


def peek_header(frames: list[bytes]) -> Header | None:
    """Best-effort header read, used only to address an error reply to a bad message."""
    if not frames or len(frames[0]) != HEADER.size:
        return None
    magic, _version, mtype, epoch, session, seq = HEADER.unpack(frames[0])
    return Header(mtype, session, seq, epoch) if magic == MAGIC else None


def decode(frames: list[bytes], limits: Limits = DEFAULT_LIMITS) -> Envelope:
    """Strictly decode one multipart message (routing frames already stripped)."""
    if not frames:
        raise MalformedFrame("empty message")
    if len(frames) > limits.max_frames:
        raise MalformedFrame(f"{len(frames)} frames exceeds {limits.max_frames}")
    for frame in frames:
        if len(frame) > limits.max_frame_bytes:
            raise FrameTooLarge(f"frame of {len(frame)} bytes exceeds {limits.max_frame_bytes}")
    magic, version, mtype, epoch, session, seq = _unpack(HEADER, frames[0], "header")
    if magic != MAGIC:
        raise MalformedFrame("bad magic: not an edgespec message")
    if version != VERSION:
        raise VersionMismatch(f"protocol version {version}, this side speaks {VERSION}")
    try:
        cls = _PARSERS[MsgType(mtype)]
    except (ValueError, KeyError) as exc:
        raise MalformedFrame(f"unknown message type {mtype}") from exc
    return Envelope(session, seq, cls.parse(list(frames[1:]), limits), epoch)


def error_reply(code: ErrorCode, message: str) -> Error:
    return Error(code, message)
