"""TraceWriter writes one flushed JSON object per line; records have the documented shape."""

from __future__ import annotations

import json

import pytest
from edgespec.edge_client.trace import TraceWriter, open_record, read_trace, round_record
from edgespec.tools.replay import load_sessions, recorded_tally, summarize
from edgespec.wire.codec import Verdict

ROUND_KEYS = {"kind", "session", "t", "base_length", "draft", "accepted", "next_token",
              "rtt_ms", "verify_ms", "draft_ms", "bytes_sent", "bytes_received"}


def _records() -> list[dict]:
    sid = 0xABC
    return [
        open_record(sid, [1, 2, 3], 16, t=100.0),
        round_record(sid, 100.5, 3, [4, 5, 6], Verdict(2, 9, 6, verify_us=1500), 0.02, 0.004,
                     60, 30),
        round_record(sid, 100.6, 6, [7], Verdict(1, 8, 8, verify_us=900), 0.01, 0.001, 50, 30),
    ]


def test_writer_writes_flushed_json_lines(tmp_path):
    path = tmp_path / "t.jsonl"
    with TraceWriter(path) as trace:
        for record in _records():
            trace.write(record)
        # flushed per line: readable before the writer is closed
        assert len(path.read_text().splitlines()) == 3
    lines = path.read_text().splitlines()
    assert [json.loads(line) for line in lines] == _records()
    with pytest.raises(ValueError):
        trace.write({"kind": "round"})


def test_record_shapes():
    opened, first, _ = _records()
    assert opened == {"kind": "open", "session": "0000000000000abc", "t": 100.0,
                      "tokens": [1, 2, 3], "max_new_tokens": 16}
    assert set(first) == ROUND_KEYS
    assert first["accepted"] == 2 and first["next_token"] == 9 and first["base_length"] == 3
    assert first["rtt_ms"] == pytest.approx(20.0) and first["verify_ms"] == pytest.approx(1.5)
    assert first["draft_ms"] == pytest.approx(4.0)
    assert (first["bytes_sent"], first["bytes_received"]) == (60, 30)


def test_summary_of_a_trace(tmp_path):
    path = tmp_path / "t.jsonl"
    with TraceWriter(path) as trace:
        for record in _records():
            trace.write(record)
    assert len(read_trace(path)) == 3
    tally, wall = recorded_tally(load_sessions((str(path),)))
    summary = summarize(tally, wall)
    assert summary["sessions"] == 1 and summary["rounds"] == 2
    assert summary["verified_tokens"] == 5  # (2 + 1) + (1 + 1)
    assert summary["acceptance"] == pytest.approx(0.75)
    assert summary["mean_draft_length"] == pytest.approx(2.0)
    assert summary["wall_s"] == pytest.approx(0.61)
    assert summary["latency_ms"]["p50"] == pytest.approx(10.0)


def test_bad_trace_lines_are_clear_errors(tmp_path):
    from edgespec.edge_client.trace import TraceError, read_trace

    for bad in ("{not json", '{"kind": "round", "session": "1"}', "[1, 2]"):
        path = tmp_path / "bad.jsonl"
        path.write_text(bad + "\n")
        with pytest.raises(TraceError, match=r"bad\.jsonl:1"):
            read_trace(path)


def test_a_sampled_round_keeps_its_q_exactly_and_its_open_the_settings(tmp_path):
    import numpy as np
    from edgespec.edge_client.trace import TraceError, sampling_of, sparse_q_of
    from edgespec.wire.codec import SamplingParams, SparseQ

    probs = np.array([0.1, 0.7, 0.2, 1.0], dtype=np.float32) / np.float32(1.0 / 3.0)
    q = SparseQ(np.array([3, 1], np.int32), np.array([4, 9, 2, 5], np.int32),
                (probs / probs.sum()).astype(np.float32))
    settings = SamplingParams(temperature=0.7, top_k=0, top_p=0.9, seed=11)
    path = tmp_path / "t.jsonl"
    with TraceWriter(path) as trace:
        trace.write(open_record(1, [1, 2], 8, t=1.0, sampling=settings))
        trace.write(round_record(1, 2.0, 2, [4, 5], Verdict(2, 6, 4), 0.01, 0.0, 10, 10, q))
    opened, played = read_trace(path)
    assert sampling_of(opened) == settings
    back = sparse_q_of(played)
    assert back is not None
    for got, want in ((back.counts, q.counts), (back.ids, q.ids), (back.probs, q.probs)):
        assert got.dtype == want.dtype and np.array_equal(got, want)  # bit-exact floats
    assert sparse_q_of(round_record(1, 2.0, 2, [4], Verdict(1, 6, 3), 0.0, 0.0, 1, 1)) is None
    with pytest.raises(TraceError):
        sampling_of({**opened, "sampling": {**opened["sampling"], "top_p": 7.0}})
    with pytest.raises(TraceError):
        sparse_q_of({**played, "q": {"counts": [1]}})
