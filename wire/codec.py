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
    ErrorCode,
    FrameTooLarge,
    InvalidToken,
    LimitExceeded,
    MalformedFrame,
    VersionMismatch,
)
from edgespec.wire.protocol import FINGERPRINT_BYTES, HEADER, MAGIC, VERSION, Limits, MsgType

TokenArray = npt.NDArray[np.int32]
_I32 = np.dtype("<i4")
DEFAULT_LIMITS = Limits()


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
    fingerprint: bytes
    client_name: str = ""

    def body(self) -> list[bytes]:
        return [self._FMT.pack(self.fingerprint), self.client_name.encode()]

    @classmethod
    def parse(cls, frames: list[bytes], limits: Limits) -> Hello:
        _check_frames(frames, 2, "HELLO")
        (fp,) = _unpack(cls._FMT, frames[0], "HELLO")
        return cls(fp, _text_from_frame(frames[1], limits.max_name_bytes, "HELLO name"))


@dataclass(frozen=True, slots=True)
class Welcome:
    """Daemon → client: the target's identity, limits, stop ids and chat template."""

    TYPE: ClassVar[MsgType] = MsgType.WELCOME
    _FMT: ClassVar[struct.Struct] = struct.Struct(f"<{FINGERPRINT_BYTES}sIHI")
    fingerprint: bytes
    vocab_size: int
    max_draft_tokens: int
    max_context: int
    model_name: str
    eos_ids: tuple[int, ...]
    chat_template: str

    def body(self) -> list[bytes]:
        fixed = self._FMT.pack(
            self.fingerprint, self.vocab_size, self.max_draft_tokens, self.max_context
        )
        return [
            fixed,
            self.model_name.encode(),
            _tokens_to_frame(list(self.eos_ids)),
            self.chat_template.encode(),
        ]

    @classmethod
    def parse(cls, frames: list[bytes], limits: Limits) -> Welcome:
        _check_frames(frames, 4, "WELCOME")
        fp, vocab, kmax, ctx = _unpack(cls._FMT, frames[0], "WELCOME")
        name = _text_from_frame(frames[1], limits.max_name_bytes, "WELCOME name")
        eos = _tokens_from_frame(frames[2], limits.max_eos_ids, limits, "WELCOME eos")
        template = _text_from_frame(frames[3], limits.max_text_bytes, "WELCOME template")
        return cls(fp, vocab, kmax, ctx, name, tuple(int(t) for t in eos), template)


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """What the user asked for; temperature 0 means greedy (token-exact)."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    verify: int = 0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.temperature) and 0.0 <= self.temperature <= 100.0):
            raise MalformedFrame(f"temperature {self.temperature} out of range [0, 100]")
        if not (math.isfinite(self.top_p) and 0.0 < self.top_p <= 1.0):
            raise MalformedFrame(f"top_p {self.top_p} out of range (0, 1]")
        if not 0 <= self.top_k < (1 << 24):
            raise MalformedFrame(f"top_k {self.top_k} out of range")
        if not 0 <= self.verify < 16:
            raise MalformedFrame(f"verify mode {self.verify} out of range")


@dataclass(frozen=True, slots=True)
class Open:
    """Client → daemon: start (or rebuild) a session from the full token history.

    ``tokens`` is the whole conversation so far, so a daemon that lost the session (restart,
    eviction) can be brought back to exactly the client's position.
    """

    TYPE: ClassVar[MsgType] = MsgType.OPEN
    _FMT: ClassVar[struct.Struct] = struct.Struct("<IfIfQB")
    tokens: TokenArray
    max_new_tokens: int
    sampling: SamplingParams = field(default_factory=SamplingParams)

    def body(self) -> list[bytes]:
        s = self.sampling
        fixed = self._FMT.pack(
            self.max_new_tokens, s.temperature, s.top_k, s.top_p, s.seed, s.verify
        )
        return [fixed, _tokens_to_frame(self.tokens)]

    @classmethod
    def parse(cls, frames: list[bytes], limits: Limits) -> Open:
        _check_frames(frames, 2, "OPEN")
        max_new, temp, top_k, top_p, seed, verify = _unpack(cls._FMT, frames[0], "OPEN")
        if max_new > limits.max_new_tokens:
            raise LimitExceeded(f"max_new_tokens {max_new} exceeds {limits.max_new_tokens}")
        tokens = _tokens_from_frame(frames[1], limits.max_prompt_tokens, limits, "OPEN tokens")
        if len(tokens) == 0:
            raise MalformedFrame("OPEN: empty prompt")
        return cls(tokens, max_new, SamplingParams(temp, top_k, top_p, seed, verify))


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
class Draft:
    """Client → daemon: draft tokens continuing the session's verified ``base_length`` tokens.

    ``base_length`` lets the daemon refuse a draft built on a position it does not hold
    (a lost or repeated round) instead of verifying it against the wrong context.
    """

    TYPE: ClassVar[MsgType] = MsgType.DRAFT
    _FMT: ClassVar[struct.Struct] = struct.Struct("<I")
    base_length: int
    tokens: TokenArray

    def body(self) -> list[bytes]:
        return [self._FMT.pack(self.base_length), _tokens_to_frame(self.tokens)]

    @classmethod
    def parse(cls, frames: list[bytes], limits: Limits) -> Draft:
        _check_frames(frames, 2, "DRAFT")
        (base,) = _unpack(cls._FMT, frames[0], "DRAFT")
        tokens = _tokens_from_frame(frames[1], limits.max_draft_tokens, limits, "DRAFT tokens")
        return cls(base, tokens)


@dataclass(frozen=True, slots=True)
class Verdict:
    """Daemon → client: how many draft tokens the target accepted, and its own next token.

    Every round yields ``accepted + 1`` tokens: the accepted prefix, then ``next_token``
    (the target's correction at the first mismatch, or its bonus token after a full accept).
    """

    TYPE: ClassVar[MsgType] = MsgType.VERDICT
    _FMT: ClassVar[struct.Struct] = struct.Struct("<HiII")
    accepted: int
    next_token: int
    new_length: int
    verify_us: int = 0

    def body(self) -> list[bytes]:
        return [self._FMT.pack(self.accepted, self.next_token, self.new_length, self.verify_us)]

    @classmethod
    def parse(cls, frames: list[bytes], limits: Limits) -> Verdict:
        _check_frames(frames, 1, "VERDICT")
        accepted, token, new_length, us = _unpack(cls._FMT, frames[0], "VERDICT")
        if accepted > limits.max_draft_tokens or not 0 <= token <= limits.max_token_id:
            raise MalformedFrame("VERDICT: field out of range")
        return cls(accepted, token, new_length, us)


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
    """Either side → peer: a code the program acts on and a message a person reads."""

    TYPE: ClassVar[MsgType] = MsgType.ERROR
    _FMT: ClassVar[struct.Struct] = struct.Struct("<H")
    code: ErrorCode
    message: str

    def body(self) -> list[bytes]:
        return [self._FMT.pack(int(self.code)), self.message.encode()[:4096]]

    @classmethod
    def parse(cls, frames: list[bytes], limits: Limits) -> Error:
        _check_frames(frames, 2, "ERROR")
        (code,) = _unpack(cls._FMT, frames[0], "ERROR")
        try:
            typed = ErrorCode(code)
        except ValueError as exc:
            raise MalformedFrame(f"ERROR: unknown code {code}") from exc
        text = _text_from_frame(frames[1], 4096, "ERROR message")
        return cls(typed, text)


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


Message = Hello | Welcome | Open | Opened | Draft | Verdict | Close | Closed | Error | Ping | Pong
_PARSERS: dict[MsgType, type[Message]] = {
    cls.TYPE: cls
    for cls in (Hello, Welcome, Open, Opened, Draft, Verdict, Close, Closed, Error, Ping, Pong)
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
