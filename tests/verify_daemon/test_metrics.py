"""verifyd's Prometheus registry over a scripted engine: what each round, step and error
reply adds (the real daemon scraped by a real Prometheus is tests/integration/test_metrics)."""

from __future__ import annotations

import pytest
from edgespec.verify_daemon.metrics import Metrics
from edgespec.verify_daemon.server import Server
from edgespec.wire.codec import Draft, Error, Open
from edgespec.wire.errors import ErrorCode
from prometheus_client import CollectorRegistry

from .scripted import VOCAB, make_engine, serve, target_greedy, tokens


@pytest.fixture
def metered():
    engine, _ = make_engine()
    server = Server(engine, "tcp://127.0.0.1:*")
    metrics = Metrics(server, CollectorRegistry())
    yield engine, metrics
    server.socket.close(0)


def value(metrics: Metrics, name: str, **labels: str) -> float:
    got = metrics.registry.get_sample_value(name, labels)
    assert got is not None, f"no sample {name} {labels}"
    return got


def test_rounds_count_drafts_tokens_and_acceptance_by_position(metered):
    engine, metrics = metered
    prompt = [5, 6, 7, 8, 9]
    serve(engine, b"p", 1, Open(tokens(*prompt), 20))
    right = target_greedy(prompt, 3)
    serve(engine, b"p", 1, Draft(5, tokens(right[0], right[1], (right[2] + 1) % VOCAB)), seq=2)
    serve(engine, b"p", 1, Draft(8, tokens()), seq=3)  # a target-only round: no draft
    assert value(metrics, "spec_decode_num_drafts_total") == 1
    assert value(metrics, "spec_decode_num_draft_tokens_total") == 3
    assert value(metrics, "spec_decode_num_accepted_tokens_total") == 2
    assert [value(metrics, "spec_decode_num_accepted_tokens_per_pos_total", position=str(i))
            for i in range(3)] == [1, 1, 0]
    assert [value(metrics, "spec_decode_num_draft_tokens_per_pos_total", position=str(i))
            for i in range(3)] == [1, 1, 1]
    assert value(metrics, "verifyd_rounds_total") == 2
    assert value(metrics, "verifyd_verified_tokens_total") == 4
    assert value(metrics, "verifyd_sessions_active") == 1
    assert value(metrics, "verifyd_kv_blocks_used") > 0
    assert value(metrics, "verifyd_kv_blocks_total") == engine.blocks.capacity
    assert value(metrics, "verifyd_pass_utilization") == round(engine.utilization, 3)
    assert value(metrics, "verifyd_goodput_steps_total") == 0  # one session: its own to size
    assert value(metrics, "verifyd_replies_dropped_total") == 0


def test_steps_are_observed_once_each_with_their_tokens(metered):
    engine, metrics = metered
    metrics.stepped(0.5)  # no forward pass ran: nothing to observe
    assert value(metrics, "verifyd_step_seconds_count") == 0
    serve(engine, b"p", 1, Open(tokens(1, 2, 3), 10))
    metrics.stepped(0.02)
    assert value(metrics, "verifyd_step_seconds_count") == 1
    assert value(metrics, "verifyd_step_tokens_sum") == engine.forward_tokens


def test_error_replies_are_counted_by_code_and_refused_hellos_by_reason(metered):
    _, metrics = metered
    assert value(metrics, "verifyd_errors_total", code="OVERLOADED") == 0
    metrics.answered(Error(ErrorCode.OVERLOADED, "busy", 1000))
    metrics.answered(Error(ErrorCode.MODEL_MISMATCH, "other tokenizer"))
    metrics.answered(Open(tokens(1), 1))  # not an error: not counted
    assert value(metrics, "verifyd_errors_total", code="OVERLOADED") == 1
    assert value(metrics, "verifyd_errors_total", code="MODEL_MISMATCH") == 1
    assert value(metrics, "verifyd_hellos_refused_total", reason="tokenizer") == 1
    assert value(metrics, "verifyd_handshakes_refused_total", reason="allow_list") == 0
