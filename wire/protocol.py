"""Protocol constants: tag, version, message types and the bounds every decoder enforces.

Every message is a ZeroMQ multipart message. Frame 0 is a fixed 20-byte header::

    magic  4s  b"ESPD"
    version u8
    type    u8  (MsgType)
    epoch   u16 (the client's connection epoch; a reply echoes it; version 2)
    session u64 (chosen by the client, random)
    seq     u32 (request id; a reply echoes it)

The epoch counts the client's reconnections (mod 2**16). The daemon remembers, per session,
the epoch of the OPEN that last (re)built it and refuses anything older: a message queued on a
connection the client has since abandoned (a stalled daemon waking up) can never act on a
session the client rebuilt over a new connection.

The remaining frames are per type: one little-endian struct of fixed fields, then raw
little-endian arrays (int32 token ids, float32 probabilities) or UTF-8 strings.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

MAGIC = b"ESPD"
VERSION = 5  # 2: the reserved u16 of version 1 carries the connection epoch; 3: WELCOME
#              says where the daemon runs (host id, CPU threads); 4: VERDICT carries the
#              daemon's draft budget and a tree's accepted path; DRAFT may carry a tree;
#              5: a DRAFT may be chained after one in flight (its root token)
HEADER = struct.Struct("<4sBBHQI")
FINGERPRINT_BYTES = 32
HOST_ID_BYTES = 16


class MsgType(IntEnum):
    HELLO = 1
    WELCOME = 2
    OPEN = 3
    OPENED = 4
    DRAFT = 5
    VERDICT = 6
    CLOSE = 7
    CLOSED = 8
    ERROR = 9
    PING = 10
    PONG = 11
    VOCAB_GET = 12  # translate mode: a chunk of the target's vocabulary, asked for by range
    VOCAB = 13
    TOKENIZE = 14  # translate mode: text → the target's own ids (prompts, chat turns)
    TOKENS = 15


class TokenizerMode(IntEnum):
    """What a HELLO says about the draft's tokenizer (a HELLO without the field: SAME)."""

    SAME = 0  # ids are exchanged as they are: refused unless the fingerprints match
    TRANSLATE = 1  # the client translates: refused when the fingerprints match
    EITHER = 2  # the daemon picks by fingerprint and says which in WELCOME


class VerifyMode(IntEnum):
    """How the daemon judges a draft (per session). Only EXACT is lossless at temperature > 0."""

    EXACT = 0  # rejection sampling (Leviathan et al.); argmax matching at temperature 0
    GREEDY = 1  # the target's argmax, whatever the temperature: lossy when sampling
    THRESHOLD = 2  # also accept any draft token with target probability >= a threshold: lossy


@dataclass(frozen=True, slots=True)
class Limits:
    """Hard bounds on anything a peer can make us allocate or loop over."""

    max_frames: int = 8
    max_frame_bytes: int = 1 << 20
    max_prompt_tokens: int = 32_768
    max_draft_tokens: int = 64
    max_new_tokens: int = 32_768
    max_token_id: int = (1 << 24) - 1
    max_text_bytes: int = 65_536
    max_name_bytes: int = 256
    max_eos_ids: int = 16
    max_q_support: int = 1024  # ids a sparse draft distribution may list per position
    max_vocab: int = 1 << 20  # entries of a vocabulary transfer (Gemma 3: 262,144)
    max_vocab_chunk: int = 16_384  # entries per VOCAB reply
    max_token_bytes: int = 1024  # bytes of one token's stored string
    max_tree_depth: int = 32  # levels of a DRAFT tree (a compact chain: max_draft_tokens only)


def epoch_is_older(epoch: int, than: int) -> bool:
    """Serial-number order on u16 (RFC 1982): true when ``epoch`` comes before ``than``."""
    return 0 < (than - epoch) % 0x10000 < 0x8000
