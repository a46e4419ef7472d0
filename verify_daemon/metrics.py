"""``verifyd --metrics-port``: Prometheus metrics, one registry owned here.

Counters the engine already keeps (the ``--stats-file`` ones, and each round's draft length
and accepted count) are read when Prometheus scrapes, so nothing is counted twice; the
server feeds only what no counter holds: each step's time and size, and error replies by
code. Refused handshakes are ZMTP handshake failures read from a socket monitor (a refused
CURVE client gets no reply to count) plus HELLOs refused for a tokenizer or version.

Speculative-decoding names follow vLLM's (``spec_decode_num_drafts_total``,
``spec_decode_num_draft_tokens_total``, ``spec_decode_num_accepted_tokens_total``,
``spec_decode_num_accepted_tokens_per_pos_total{position}``) so dashboards carry over.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

import zmq
from edgespec.wire.codec import Error, Message
from edgespec.wire.errors import ErrorCode
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from edgespec.verify_daemon.engine import Engine

log = logging.getLogger(__name__)

STEP_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
STEP_TOKENS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
_HANDSHAKE_EVENTS = {
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "auth",  # CURVE: key not on the allow-list
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "protocol",  # plain client to CURVE, bad greeting
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "handshake",
}
_REFUSED_HELLO = {ErrorCode.MODEL_MISMATCH: "tokenizer", ErrorCode.VERSION_MISMATCH: "version"}


class Metrics:
    """The registry, the server's step/error hooks and the HTTP endpoint Prometheus scrapes."""

    def __init__(self, engine: Engine, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        self.engine = engine
        self.step_seconds = Histogram(
            "verifyd_step_seconds", "Time of one engine step (schedule, forward pass, decide).",
            buckets=STEP_SECONDS, registry=self.registry)
        self.step_tokens = Histogram(
            "verifyd_step_tokens", "Tokens in one forward pass, all sessions together.",
            buckets=STEP_TOKENS, registry=self.registry)
        self.errors = Counter("verifyd_errors", "ERROR replies, by code.", ["code"],
                              registry=self.registry)
        self.refused = Counter(
            "verifyd_handshakes_refused", "Connections or HELLOs refused, by reason.",
            ["reason"], registry=self.registry)
        for code in ErrorCode:  # every series exists from the start, at 0
            self.errors.labels(code=code.name)
        for reason in (*_HANDSHAKE_EVENTS.values(), *_REFUSED_HELLO.values()):
            self.refused.labels(reason=reason)
        self.registry.register(EngineCollector(engine))
        self._steps = engine.steps
        self._forward_tokens = engine.forward_tokens

    # ------------------------------------------------------------ fed by the server

    def stepped(self, seconds: float) -> None:
        """After ``Engine.step``: one observation per forward pass actually run."""
        engine = self.engine
        if engine.steps == self._steps:
            return
        self.step_seconds.observe(seconds)
        self.step_tokens.observe(engine.forward_tokens - self._forward_tokens)
        self._steps, self._forward_tokens = engine.steps, engine.forward_tokens

    def answered(self, msg: Message) -> None:
        """Count an ERROR reply (a refused HELLO also as a refused handshake)."""
        if not isinstance(msg, Error):
            return
        code = ErrorCode(msg.code)
        self.errors.labels(code=code.name).inc()
        if code in _REFUSED_HELLO:
            self.refused.labels(reason=_REFUSED_HELLO[code]).inc()

    # ------------------------------------------------------------ outputs

    def serve(self, port: int, bind: str) -> int:
        """Start the scrape endpoint on its own thread; returns the port (``port`` 0: any)."""
        server, _thread = start_http_server(port, addr=bind, registry=self.registry)
        return int(server.server_port)

    def watch_handshakes(self, socket: zmq.Socket) -> None:
        """Count the ROUTER's failed handshakes; call on the socket's own thread, before
        serving (the monitor socket is then read on a thread of its own)."""
        monitor = socket.get_monitor_socket(sum(_HANDSHAKE_EVENTS))
        threading.Thread(target=self._read_monitor, args=(monitor,), daemon=True,
                         name="verifyd-handshake-monitor").start()

    def _read_monitor(self, monitor: zmq.Socket) -> None:
        from zmq.utils.monitor import recv_monitor_message

        try:
            while True:
                event = zmq.Event(recv_monitor_message(monitor)["event"])
                if event == zmq.EVENT_MONITOR_STOPPED:
                    return
                if event in _HANDSHAKE_EVENTS:
                    self.refused.labels(reason=_HANDSHAKE_EVENTS[event]).inc()
        except zmq.ZMQError:  # the context is ending
            return
        finally:
            monitor.close(0)


class EngineCollector(Collector):
    """The engine's own counters at scrape time (reads of ints and a dict copy: safe from
    the HTTP thread under the GIL, and never a half-updated step's worth of drift)."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        engine = self.engine
        stats = engine.stats()
        shapes = dict(engine.round_shapes)  # (drafted, accepted) -> rounds
        drafts = sum(n for (drafted, _), n in shapes.items() if drafted)
        yield CounterMetricFamily(
            "spec_decode_num_drafts", "Rounds that carried at least one draft token.",
            value=drafts)
        yield CounterMetricFamily(
            "spec_decode_num_draft_tokens", "Draft tokens verified.",
            value=sum(d * n for (d, _), n in shapes.items()))
        yield CounterMetricFamily(
            "spec_decode_num_accepted_tokens", "Draft tokens accepted.",
            value=sum(a * n for (_, a), n in shapes.items()))
        width = max((d for d, _ in shapes), default=0)
        for name, what, index in (("accepted", "accepted", 1), ("draft", "drafted", 0)):
            family = CounterMetricFamily(
                f"spec_decode_num_{name}_tokens_per_pos",
                f"Draft tokens {what} at each position of a draft (0 = first).",
                labels=["position"])
            for pos in range(width):
                family.add_metric([str(pos)], sum(n for shape, n in shapes.items()
                                                   if shape[index] > pos))
            yield family
        for key, help_text in (
                ("rounds", "Rounds verified (a draft of 0 tokens included)."),
                ("verified_tokens", "Tokens the rounds added (accepted plus the target's own)."),
                ("prefix_hit_tokens", "Prompt tokens served from shared KV prefix blocks."),
                ("evictions", "Idle sessions evicted under KV memory pressure."),
                ("preemptions", "Waiting sessions dropped because nothing else fitted."),
                ("busy", "OPENs answered busy (OVERLOADED, with a retry-after)."),
                ("expired", "Sessions freed after --session-idle.")):
            name = {"prefix_hit_tokens": "prefix_cache_hit_tokens", "busy": "busy_replies",
                    "expired": "expired_sessions"}.get(key, key)
            yield CounterMetricFamily(f"verifyd_{name}", help_text, value=stats[key])
        for key, name, help_text in (
                ("sessions", "sessions_active", "Sessions held (KV kept for the client)."),
                ("waiting", "sessions_waiting", "Sessions with a request waiting for a step."),
                ("kv_blocks_used", "kv_blocks_used", "KV blocks in use."),
                ("kv_blocks_total", "kv_blocks_total", "KV blocks in the pool."),
                ("block_size", "kv_block_size_tokens", "Tokens per KV block.")):
            yield GaugeMetricFamily(f"verifyd_{name}", help_text, value=stats[key])
