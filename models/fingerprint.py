"""Tokenizer fingerprints, so a draft and a target that disagree on ids refuse to pair.

Speculative decoding exchanges raw token ids; if the two tokenizers differ, every id means
something else on the other side and the output is garbage without any error. Both ends
therefore hash their vocabulary the same way and compare 32-byte digests at handshake.

Definition (version ``edgespec-vocab-v2``), computed by :func:`vocab_fingerprint`:

* ``tokens[i]`` is the *stored* token string of id ``i`` as UTF-8 bytes, exactly as the
  tokenizer's vocabulary spells it: byte-level BPE keeps its ``Ġ``/``Ċ`` spellings,
  SentencePiece keeps ``▁`` and ``<0x0A>`` byte tokens, special tokens keep their text.
  llama.cpp's ``llama_vocab_get_text`` returns these bytes and Hugging Face's
  ``convert_ids_to_tokens`` returns the same strings, so no decoding is involved.
  A missing id (``None`` on the HF side) counts as the empty string.
* SentencePiece's space mark ``▁`` (U+2581) is hashed as a plain space: llama.cpp stores
  Gemma's whitespace-run tokens as spaces where Hugging Face spells them ``▁▁…``, and a GGUF
  of a model must pair with the model it came from (version 2; version 1 hashed bytes as
  stored).
* Trailing filler is dropped before hashing: ids at the end of the table whose text is
  empty or of the form ``[PAD<n>]`` (what llama.cpp's converter appends to pad the table
  up to the embedding size). This is why the GGUF's ``n_vocab``, ``len(tokenizer)`` and
  ``config.vocab_size`` may differ and still fingerprint equal.
* The byte stream hashed with SHA-256 is::

      b"edgespec-vocab-v2\\0" + u64le(n)
      + for each token: u32le(len(token)) + token   (▁ → space)
      + for each special name in sorted order: utf8(name) + b"=" + i64le(id or -1)

  Callers pass ``{"bos": ..., "eos": ...}``; llama.cpp's "no token" (-1) and HF's ``None``
  both become -1.

This module imports neither torch nor transformers; llama_cpp is imported lazily so the
daemon can use :func:`fingerprint_hf_tokenizer` without it.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llama_cpp import Llama

FINGERPRINT_VERSION = b"edgespec-vocab-v2\0"
_SP_SPACE = "▁".encode()
SPECIAL_KEYS = ("bos", "eos")
_PAD_FILLER = re.compile(rb"\[PAD\d+\]")


class TokenizerMismatch(Exception):
    """Draft and target tokenizers disagree; their token ids cannot be exchanged."""


def _strip_filler(tokens: Sequence[bytes]) -> Sequence[bytes]:
    """Drop trailing empty / ``[PAD<n>]`` entries that only pad the table to a size."""
    end = len(tokens)
    while end > 0 and (not tokens[end - 1] or _PAD_FILLER.fullmatch(tokens[end - 1])):
        end -= 1
    return tokens[:end]


def vocab_fingerprint(tokens: Sequence[bytes], special_ids: Mapping[str, int | None]) -> bytes:
    """Hash a vocabulary (token bytes in id order) and its special ids; see module doc."""
    import hashlib

    kept = _strip_filler(tokens)
    digest = hashlib.sha256(FINGERPRINT_VERSION)
    digest.update(struct.pack("<Q", len(kept)))
    for token in kept:
        token = token.replace(_SP_SPACE, b" ")
        digest.update(struct.pack("<I", len(token)))
        digest.update(token)
    for name in sorted(special_ids):
        value = special_ids[name]
        ident = -1 if value is None or value < 0 else int(value)
        digest.update(name.encode("utf-8") + b"=" + struct.pack("<q", ident))
    return digest.digest()


def open_vocab_only(model_path: str | Path) -> Llama:
    """Open just the tokenizer of a GGUF (no weights are read; ~0.1 s)."""
    from llama_cpp import Llama

    return Llama(model_path=str(model_path), vocab_only=True, verbose=False)


def llama_vocab(llama: Llama) -> tuple[list[bytes], dict[str, int | None]]:
    """Read token texts and bos/eos ids through llama.cpp's vocab API."""
    import llama_cpp

    vocab = llama_cpp.llama_model_get_vocab(llama.model)
    n_tokens = llama_cpp.llama_vocab_n_tokens(vocab)
    tokens = [llama_cpp.llama_vocab_get_text(vocab, i) or b"" for i in range(n_tokens)]
    specials: dict[str, int | None] = {
        "bos": llama_cpp.llama_vocab_bos(vocab),
        "eos": llama_cpp.llama_vocab_eos(vocab),
    }
    return tokens, specials


def fingerprint_llama(model: Llama | str | Path) -> bytes:
    """Fingerprint a GGUF's tokenizer: a loaded ``Llama`` or a path (opened vocab-only)."""
    llama = open_vocab_only(model) if isinstance(model, str | Path) else model
    tokens, specials = llama_vocab(llama)
    return vocab_fingerprint(tokens, specials)


def hf_vocab(tokenizer: Any) -> tuple[list[bytes], dict[str, int | None]]:
    """Read token strings and bos/eos ids from a Hugging Face tokenizer.

    ``len(tokenizer)`` covers the base vocabulary plus added tokens, which is what
    llama.cpp's GGUF table holds; ``config.vocab_size`` may be larger (padding rows).
    """
    ids = list(range(len(tokenizer)))
    names = tokenizer.convert_ids_to_tokens(ids)
    tokens = [name.encode("utf-8") if name is not None else b"" for name in names]
    specials: dict[str, int | None] = {
        "bos": tokenizer.bos_token_id,
        "eos": tokenizer.eos_token_id,
    }
    return tokens, specials


def fingerprint_hf_tokenizer(tokenizer: Any) -> bytes:
    """Fingerprint a transformers tokenizer the same way :func:`fingerprint_llama` does."""
    tokens, specials = hf_vocab(tokenizer)
    return vocab_fingerprint(tokens, specials)


def describe_mismatch(draft: bytes, target: bytes) -> str:
    """A one-line, human-readable explanation for logs and handshake refusals."""
    return (
        f"tokenizer mismatch: draft vocab {draft.hex()[:16]} != target vocab "
        f"{target.hex()[:16]}; the draft GGUF and the target model must share one tokenizer"
    )


def check_match(draft: bytes, target: bytes) -> None:
    """Raise :class:`TokenizerMismatch` unless the two fingerprints are identical."""
    if draft != target:
        raise TokenizerMismatch(describe_mismatch(draft, target))
