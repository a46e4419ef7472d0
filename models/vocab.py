"""A vocabulary as bytes: what each token id stands for, and a greedy tokenizer over it.

Drafting across tokenizers meets at the level of text: the draft's tokens become bytes, the
bytes become target ids. The client knows the target's vocabulary only as the stored token
strings the daemon sends (the same strings ``models/fingerprint.py`` hashes), so this module
reads those strings in the two spellings in use:

* **byte-level BPE** (GPT-2, SmolLM2, Llama 3): every byte is mapped to a printable
  character (``Ġ`` is the space); a token's bytes are its characters mapped back;
* **SentencePiece** (Gemma, Llama 2): ``▁`` is the space and ``<0xNN>`` a raw byte.

Proposals need not be the target's own tokenization: the daemon verifies whatever target ids
it is sent against the target's own choices, so a greedy longest match that usually agrees
with the real tokenizer is enough (the prompt is tokenized by the daemon, exactly).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from edgespec.models.fingerprint import vocab_fingerprint

_BYTE_TOKEN = re.compile(rb"<0x([0-9A-Fa-f]{2})>")
_SP_SPACE = "▁".encode()
_CONTROL = re.compile(rb"<[^<>\s]{1,40}>|\[[A-Z_]{2,40}\d*\]")  # <eos>, <|im_end|>, [PAD3]


@functools.cache
def _byte_decoder() -> dict[str, int]:
    """GPT-2's printable character for each byte, inverted (character → byte)."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    chars = list(printable)
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


def detect_scheme(tokens: Sequence[bytes]) -> str:
    """"sentencepiece" or "byte_bpe", from how the table spells a space."""
    sp = sum(1 for t in tokens if _SP_SPACE in t)
    bpe = sum(1 for t in tokens if "Ġ".encode() in t)
    return "sentencepiece" if sp > bpe else "byte_bpe"


def piece_bytes(token: bytes, scheme: str) -> bytes:
    """The text bytes a stored token string stands for (control tokens: their own text)."""
    if scheme == "sentencepiece":
        match = _BYTE_TOKEN.fullmatch(token)
        if match:
            return bytes([int(match.group(1), 16)])
        return token.replace(_SP_SPACE, b" ")
    text = token.decode("utf-8", "replace")
    table = _byte_decoder()
    if all(ch in table for ch in text):
        return bytes(table[ch] for ch in text)
    return token  # an added token spelled in plain text


@dataclass(slots=True)
class Vocabulary:
    """Token strings in id order plus bos/eos; ``pieces[i]`` is id i's text bytes."""

    tokens: list[bytes]
    specials: dict[str, int | None]
    scheme: str = ""
    pieces: list[bytes] = field(default_factory=list)
    control: frozenset[int] = frozenset()  # ids never proposed nor shown as text
    _lookup: dict[bytes, int] = field(default_factory=dict)
    _longest: int = 0

    def __post_init__(self) -> None:
        self.scheme = self.scheme or detect_scheme(self.tokens)
        self.pieces = [piece_bytes(t, self.scheme) for t in self.tokens]
        special_ids = {i for i in self.specials.values() if i is not None and i >= 0}
        self.control = frozenset(
            i for i, t in enumerate(self.tokens)
            if i in special_ids or not t or (_CONTROL.fullmatch(t) and not
                                             _BYTE_TOKEN.fullmatch(t)))
        lookup: dict[bytes, int] = {}
        for i, piece in enumerate(self.pieces):
            if i not in self.control and piece and piece not in lookup \
                    and not _BYTE_TOKEN.fullmatch(self.tokens[i]):
                lookup[piece] = i
        for i, token in enumerate(self.tokens):  # <0xNN> only where no token spells the byte
            if _BYTE_TOKEN.fullmatch(token) and self.pieces[i] not in lookup:
                lookup[self.pieces[i]] = i
        self._lookup = lookup
        self._longest = max((len(p) for p in lookup), default=1)

    @property
    def fingerprint(self) -> bytes:
        return vocab_fingerprint(self.tokens, self.specials)

    def __len__(self) -> int:
        return len(self.tokens)

    def decode(self, ids: Sequence[int]) -> bytes:
        """The text bytes of ``ids``, control tokens (bos, eos, turn markers) left out."""
        return b"".join(self.pieces[i] for i in ids if i not in self.control)

    def id_of(self, piece: bytes) -> int | None:
        """The (lowest) ordinary id whose text is exactly ``piece``."""
        return self._lookup.get(piece)

    def encode(self, text: bytes, max_tokens: int | None = None) -> tuple[list[int], list[int]]:
        """Greedy longest match; returns the ids and the byte offset where each one ends.
        Stops after ``max_tokens``; a byte no token covers ends the match there."""
        ids: list[int] = []
        ends: list[int] = []
        i = 0
        while i < len(text) and (max_tokens is None or len(ids) < max_tokens):
            for n in range(min(self._longest, len(text) - i), 0, -1):
                found = self._lookup.get(text[i:i + n])
                if found is not None:
                    ids.append(found)
                    i += n
                    ends.append(i)
                    break
            else:
                break
        return ids, ends

    def shared_with(self, other: Vocabulary) -> float:
        """The share of this vocabulary's ordinary tokens whose text the other also has."""
        mine = [p for i, p in enumerate(self.pieces) if i not in self.control and p]
        if not mine:
            return 0.0
        return sum(1 for p in mine if other.id_of(p) is not None) / len(mine)


def from_tables(tokens: Sequence[bytes], specials: Mapping[str, int | None]) -> Vocabulary:
    return Vocabulary(list(tokens), dict(specials))
