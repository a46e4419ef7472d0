"""Trace recording: one JSON object per line for each session opened and each round verified.

A trace keeps exactly what went over the wire (token ids, draft lengths, verdicts) plus the
timings around it, so ``tools/replay`` can drive a daemon with the same load later, without
a draft model, and check that verification still gives the recorded answers.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

import numpy as np
from edgespec.wire.codec import SamplingParams, SparseQ, Verdict
from edgespec.wire.errors import MalformedFrame


class TraceWriter:
    """Appends JSON lines to a file, flushed per line so a crashed run still leaves a trace."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._fh: TextIO | None = self.path.open("w", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        if self._fh is None:
            raise ValueError(f"trace {self.path} is closed")
        self._fh.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def session_hex(session_id: int) -> str:
    return f"{session_id:016x}"


def open_record(session_id: int, tokens: Sequence[int], max_new_tokens: int,
                t: float | None = None, sampling: SamplingParams | None = None
                ) -> dict[str, Any]:
    """The OPEN as sent: replaying it rebuilds the same daemon-side session."""
    record = {"kind": "open", "session": session_hex(session_id),
              "t": time.time() if t is None else t,
              "tokens": [int(x) for x in tokens], "max_new_tokens": int(max_new_tokens)}
    if sampling is not None and sampling.temperature > 0:  # seeded: a replay can redo it
        record["sampling"] = {"temperature": sampling.temperature, "top_k": sampling.top_k,
                              "top_p": sampling.top_p, "seed": sampling.seed,
                              "verify": sampling.verify, "threshold": sampling.threshold}
    return record


def round_record(session_id: int, t: float, base_length: int, draft: Sequence[int],
                 verdict: Verdict, rtt_s: float, draft_s: float, bytes_sent: int,
                 bytes_received: int, q: SparseQ | None = None,
                 parents: Sequence[int] | None = None, chain_k: int = 0) -> dict[str, Any]:
    """One DRAFT/VERDICT exchange; the verdict is what a replay must reproduce. A sampled
    draft keeps its q (float32 values are exact in JSON's doubles): with the session's seed
    the daemon's draws are a function of position, so a replay reproduces them too. A tree
    keeps its nodes' parents, the accepted path (node indices) and ``chain_k``, the chain
    the client would have sent instead (what a budget replay sends when the budget is below
    the tree: ``tools/budget_replay.py``)."""
    record = {"kind": "round", "session": session_hex(session_id), "t": t,
            "base_length": int(base_length), "draft": [int(x) for x in draft],
            "accepted": verdict.accepted, "next_token": verdict.next_token,
            "rtt_ms": round(rtt_s * 1000.0, 3), "verify_ms": round(verdict.verify_us / 1000.0, 3),
            "draft_ms": round(draft_s * 1000.0, 3), "bytes_sent": int(bytes_sent),
            "bytes_received": int(bytes_received)}
    if q is not None:
        record["q"] = {"counts": q.counts.tolist(), "ids": q.ids.tolist(),
                       "probs": q.probs.tolist()}
    if parents is not None:
        record["parents"] = [int(x) for x in parents]
        record["path"] = [int(x) for x in verdict.path]
        record["chain_k"] = int(chain_k)
    return record


def accepted_tokens(record: dict[str, Any]) -> list[int]:
    """The draft tokens a round record's verdict kept: a chain's prefix, a tree's path."""
    draft = record["draft"]
    if "parents" in record:
        return [int(draft[node]) for node in record["path"]]
    return [int(t) for t in draft[:record["accepted"]]]


def sparse_q_of(record: dict[str, Any]) -> SparseQ | None:
    """The q a round record carries (None for an argmax draft); shape errors are TraceError."""
    q = record.get("q")
    if q is None:
        return None
    try:
        return SparseQ(np.asarray(q["counts"], dtype=np.int32),
                       np.asarray(q["ids"], dtype=np.int32),
                       np.asarray(q["probs"], dtype=np.float32))
    except (KeyError, TypeError, ValueError) as exc:
        raise TraceError(f"round q is not counts/ids/probs lists: {exc}") from exc


def sampling_of(record: dict[str, Any]) -> SamplingParams:
    """The sampling settings an open record carries (greedy when it has none)."""
    settings = record.get("sampling")
    if settings is None:
        return SamplingParams()
    try:
        return SamplingParams(**settings)
    except (TypeError, ValueError, MalformedFrame) as exc:
        raise TraceError(f"open sampling settings are not valid: {exc}") from exc


_REQUIRED = {
    "open": ("session", "t", "tokens", "max_new_tokens"),
    "round": ("session", "t", "base_length", "draft", "accepted", "next_token"),
}


class TraceError(ValueError):
    """A trace line that is not a record this version writes."""


def read_trace(path: str | Path) -> list[dict[str, Any]]:
    """All records of a trace file, skipping blank lines; a bad line is a clear error."""
    records = []
    with Path(path).open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as exc:
                raise TraceError(f"{path}:{number}: not JSON: {exc}") from exc
            keys = _REQUIRED.get(str(record.get("kind"))) if isinstance(record, dict) else None
            if keys is None or any(key not in record for key in keys):
                raise TraceError(f"{path}:{number}: not an open or round record")
            records.append(record)
    return records
