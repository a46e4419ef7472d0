"""``verifyd --metrics-port``: Prometheus metrics, one registry owned here.

Counters the engine already keeps (the ``--stats-file`` ones, and each round's draft length
and accepted count) are read when Prometheus scrapes, so nothing is counted twice; the
server feeds only what no counter holds: each step's time and size, and error replies by
code. Refused handshakes are read from their owners too: client keys the CURVE allow-list
turned away, connections over the caps (``connections.py``), and HELLOs refused for another
tokenizer or protocol version.

Speculative-decoding names follow vLLM's (``spec_decode_num_drafts_total``,
``spec_decode_num_draft_tokens_total``, ``spec_decode_num_accepted_tokens_total``,
``spec_decode_num_accepted_tokens_per_pos_total{position}``) so dashboards carry over.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from edgespec.wire.codec import Error, Message
from edgespec.wire.errors import ErrorCode
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from edgespec.verify_daemon.server import Server

STEP_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
STEP_TOKENS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
_REFUSED_HELLO = {ErrorCode.MODEL_MISMATCH: "tokenizer", ErrorCode.VERSION_MISMATCH: "version"}


class Metrics:
    """The registry, the server's step/error hooks and the HTTP endpoint Prometheus scrapes."""

    def __init__(self, server: Server, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        self.engine = engine = server.engine
        self.step_seconds = Histogram(
            "verifyd_step_seconds", "Time of one engine step (schedule, forward pass, decide).",
            buckets=STEP_SECONDS, registry=self.registry)
        self.step_tokens = Histogram(
            "verifyd_step_tokens", "Tokens in one forward pass, all sessions together.",
            buckets=STEP_TOKENS, registry=self.registry)
        self.errors = Counter("verifyd_errors", "ERROR replies, by code.", ["code"],
                              registry=self.registry)
        self.refused_hellos = Counter(
            "verifyd_hellos_refused", "HELLOs refused, by reason.", ["reason"],
            registry=self.registry)
        for code in ErrorCode:  # every series exists from the start, at 0
            self.errors.labels(code=code.name)
        for reason in _REFUSED_HELLO.values():
            self.refused_hellos.labels(reason=reason)
        self.registry.register(EngineCollector(server))
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
            self.refused_hellos.labels(reason=_REFUSED_HELLO[code]).inc()

    # ------------------------------------------------------------ outputs

    def serve(self, port: int, bind: str) -> int:
        """Start the scrape endpoint on its own thread; returns the port (``port`` 0: any)."""
        server, _thread = start_http_server(port, addr=bind, registry=self.registry)
        return int(server.server_port)


class EngineCollector(Collector):
    """The engine's and the server's own counters at scrape time (reads of ints and a dict
    copy: safe from the HTTP thread under the GIL)."""

    def __init__(self, server: Server):
        self.server = server

    def collect(self) -> Iterator[Metric]:
        server = self.server
        engine = server.engine
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
                ("expired", "Sessions freed after --session-idle."),
                ("goodput_steps", "Steps whose draft budgets came from the goodput rule "
                 "(the server was the bottleneck: --draft-budget)."),
                ("chained", "Chained DRAFTs that arrived while the draft before was in flight."),
                ("stale_drafts", "Chained DRAFTs answered STALE_DRAFT: their guess failed.")):
            name = {"prefix_hit_tokens": "prefix_cache_hit_tokens", "busy": "busy_replies",
                    "expired": "expired_sessions", "chained": "chained_drafts"}.get(key, key)
            yield CounterMetricFamily(f"verifyd_{name}", help_text, value=stats[key])
        for key, name, help_text in (
                ("sessions", "sessions_active", "Sessions held (KV kept for the client)."),
                ("waiting", "sessions_waiting", "Sessions with a request waiting for a step."),
                ("kv_blocks_used", "kv_blocks_used", "KV blocks in use."),
                ("kv_blocks_total", "kv_blocks_total", "KV blocks in the pool."),
                ("block_size", "kv_block_size_tokens", "Tokens per KV block."),
                ("utilization", "pass_utilization",
                 "Decayed share of wall time spent in forward passes (draft_budget.py).")):
            yield GaugeMetricFamily(f"verifyd_{name}", help_text, value=stats[key])
        yield CounterMetricFamily(
            "verifyd_replies_delayed", "Replies that waited for a connection's queue to drain "
            "(outbox.py).", value=server.outbox.delayed)
        yield CounterMetricFamily(
            "verifyd_replies_dropped", "Replies lost: a gone client, or one that stopped "
            "reading.", value=server.outbox.dropped)
        allow = server.curve.allow if server.curve is not None else None
        refused = CounterMetricFamily(
            "verifyd_handshakes_refused", "Connections turned away before any request: client "
            "keys not on the CURVE allow-list, connections over the connection caps.",
            labels=["reason"])
        refused.add_metric(["allow_list"], allow.refused if allow is not None else 0)
        refused.add_metric(["connection_cap"], server.connections.refused)
        yield refused
        yield GaugeMetricFamily("verifyd_connections", "Client connections open.",
                                value=server.connections.count)
