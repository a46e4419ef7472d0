"""One generation at a time through the client's single draft context, first come first served.

The draft is one llama.cpp context: interleaving two answers round by round would re-prefill
it at every switch, so requests wait their turn in arrival order (fair, and each answer runs
at full speed) behind a bound; past it the HTTP side answers 429 with a ``Retry-After`` from
the recent time per answer. Every llama.cpp call (tokenizing too) happens on this one thread.
A request whose client went away is dropped from the queue, or stopped at its next round
with its daemon session closed.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edgespec.edge_client.chat_template import ChatTemplateError
from edgespec.edge_client.client import EdgeClient, new_session_id
from edgespec.edge_client.config import ClientConfig
from edgespec.edge_client.sampling_setup import SamplingOptions
from edgespec.edge_client.serve.api import ApiError, Usage
from edgespec.edge_client.stats import GenerationStats
from edgespec.edge_client.trace import TraceWriter
from edgespec.wire.errors import LimitExceeded, WireError

log = logging.getLogger(__name__)

RECONNECT_EVERY_S = 5.0  # while the daemon is down, how often a request may try a new client


@dataclass(slots=True)
class Piece:
    text: str
    stats: dict[str, Any]


@dataclass(slots=True)
class Finished:
    text: str  # the last piece of text (streaming) ...
    full_text: str  # ... and the whole answer (not streaming)
    finish_reason: str
    usage: Usage
    stats: dict[str, Any]


@dataclass(slots=True)
class Failed:
    error: ApiError


Event = Piece | Finished | Failed


@dataclass(eq=False)
class Job:
    """One request: chat ``messages`` (rendered with the target's template) or a raw
    ``prompt``; its events go to ``events`` on the HTTP server's event loop."""

    messages: list[dict[str, str]] | None
    prompt: str | None
    max_tokens: int | None
    sampling: SamplingOptions
    stops: list[str]
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue[Event] = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def emit(self, event: Event) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the server's loop is gone (shutting down)
            self.cancelled.set()


class TextStream:
    """Generated ids in, text out in pieces that are safe to send: a piece never ends inside
    a UTF-8 character (a trailing U+FFFD may still complete) or inside what could become a
    stop sequence, and the text ends before the first stop sequence."""

    def __init__(self, decode: Callable[[list[int]], str], stops: list[str]):
        self.decode = decode
        self.stops = stops
        self.text = ""
        self.sent = 0

    def update(self, generated: list[int]) -> tuple[str, bool]:
        """The next piece, and whether a stop sequence ended the answer."""
        self.text = self.decode(generated)
        hits = [i for i in (self.text.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.text = self.text[: max(min(hits), self.sent)]
            return self.finish(), True
        stable = self.text.rstrip("\ufffd")
        safe = len(stable) - self._partial_stop(stable)
        piece = self.text[self.sent:safe]
        self.sent = max(self.sent, safe)
        return piece, False

    def _partial_stop(self, text: str) -> int:
        """Length of the longest end of ``text`` that begins some stop sequence."""
        return max((k for stop in self.stops for k in range(1, len(stop))
                    if text.endswith(stop[:k])), default=0)

    def finish(self) -> str:
        piece = self.text[self.sent:]
        self.sent = len(self.text)
        return piece


def _live(stats: GenerationStats, started: float) -> dict[str, Any]:
    """The stats mid-answer: the loop adds up its wall time only at the end."""
    live = stats.as_dict()
    live["tokens_per_s"] = round(stats.generated / max(time.perf_counter() - started, 1e-6), 2)
    return live


class Worker:
    """Owns the ``EdgeClient`` and the queue; ``run_forever`` is the thread's body."""

    def __init__(self, config: ClientConfig, max_queue: int = 16,
                 trace: TraceWriter | None = None):
        self.config = config
        self.max_queue = max_queue
        self.trace = trace
        self.client: EdgeClient | None = None
        self.last_error = ""
        self._next_try = 0.0
        self._waiting: deque[Job] = deque()
        self._cond = threading.Condition()
        self._running: Job | None = None
        self._mean_s = 5.0  # running mean of the time per answer, for Retry-After
        self._stopping = False

    # ------------------------------------------------------------ the HTTP side

    def submit(self, job: Job) -> None:
        """Queue ``job``, or refuse it (429) when ``max_queue`` requests already wait."""
        with self._cond:
            ahead = len(self._waiting) + (self._running is not None)
            if ahead > self.max_queue:
                retry = max(1, math.ceil(ahead * self._mean_s))
                raise ApiError(429, f"{ahead} requests are ahead of this one and at most "
                                    f"{self.max_queue} may wait; retry in about {retry} s",
                               code="queue_full", kind="rate_limit_error",
                               headers={"Retry-After": str(retry)})
            self._waiting.append(job)
            self._cond.notify()

    def cancel(self, job: Job) -> None:
        """The client went away: drop the job if it waits, stop it at its next round if not."""
        job.cancelled.set()
        with self._cond:
            if job in self._waiting:
                self._waiting.remove(job)

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()

    @property
    def queued(self) -> int:
        return len(self._waiting)

    # ------------------------------------------------------------ the worker thread

    def connect(self) -> EdgeClient:
        """The client, connecting first if needed (at most every ``RECONNECT_EVERY_S``
        while the daemon stays away); 503 when it cannot be reached."""
        if self.client is not None:
            return self.client
        now = time.monotonic()
        if now < self._next_try and self.last_error:
            raise self._unavailable(self.last_error)
        self._next_try = now + RECONNECT_EVERY_S
        try:
            self.client = EdgeClient(self.config)
        except (WireError, ValueError) as exc:
            self.last_error = str(exc)
            raise self._unavailable(self.last_error) from exc
        self.last_error = ""
        return self.client

    def _unavailable(self, reason: str) -> ApiError:
        return ApiError(503, f"verifyd at {self.config.server} is unavailable: {reason}",
                        code="daemon_unavailable", kind="server_error",
                        headers={"Retry-After": str(int(RECONNECT_EVERY_S))})

    def run_forever(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                job = self._waiting.popleft()
                if job.cancelled.is_set():  # its client left between queue and start
                    continue
                self._running = job
            started = time.monotonic()
            try:
                self._answer(job)
            except ApiError as exc:
                job.emit(Failed(exc))
            except Exception as exc:  # a bug of ours must not stop the server
                log.exception("internal error answering a request")
                job.emit(Failed(ApiError(500, f"internal error in edgespec serve: {exc}",
                                         kind="server_error")))
            finally:
                with self._cond:
                    self._running = None
                self._mean_s = 0.8 * self._mean_s + 0.2 * (time.monotonic() - started)

    def _answer(self, job: Job) -> None:
        client = self.connect()
        prompt = self._prompt_ids(client, job)
        limit = self._max_new_tokens(client, len(prompt), job.max_tokens)
        try:
            sampling = job.sampling.resolve()
        except ValueError as exc:
            raise ApiError(400, str(exc)) from exc
        tokens = list(prompt)
        stats = GenerationStats()
        policy = client.new_policy(self.config.draft_tokens)
        policy.timed = not job.sampling.seeded  # seeded: the same rounds, the same tokens
        text = TextStream(client.text, job.stops)
        session = new_session_id()
        finish, piece = "length", ""
        started = time.perf_counter()
        rounds = client.generate(session, tokens, limit, stats, policy=policy,
                                 trace=self.trace, sampling=sampling)
        try:
            for new in rounds:
                if job.cancelled.is_set():
                    log.info("client went away: stopping its answer")
                    return
                piece, stopped = text.update(tokens[len(prompt):])
                if stopped or new[-1] in client.stop_ids:
                    finish = "stop"
                    break
                if piece:
                    job.emit(Piece(piece, _live(stats, started)))
                    piece = ""
            piece += text.finish()  # the held-back tail
        except LimitExceeded as exc:
            raise ApiError(400, str(exc), code="context_length_exceeded") from exc
        except WireError as exc:
            self._drop_if_down(client)
            raise ApiError(503, f"verifyd at {self.config.server} failed this request: {exc}",
                           code="daemon_unavailable", kind="server_error") from exc
        finally:
            rounds.close()
            client.end_session(session)
        generated = len(tokens) - len(prompt)
        job.emit(Finished(piece, text.text, finish, Usage(len(prompt), generated),
                          stats.as_dict()))

    def _drop_if_down(self, client: EdgeClient) -> None:
        """After the daemon stayed away, the next request starts over with a new client."""
        if client.link.down:
            client.close()
            self.client = None

    @staticmethod
    def _prompt_ids(client: EdgeClient, job: Job) -> list[int]:
        try:
            if job.messages is not None:
                return client.chat_tokens(job.messages)
            return client.prompt_tokens(job.prompt or "")
        except ChatTemplateError as exc:
            raise ApiError(400, f"messages: {exc}", param="messages") from exc

    def _max_new_tokens(self, client: EdgeClient, prompt: int, asked: int | None) -> int:
        """``asked``, or what the context has left; a prompt (plus ``asked``) past it is a 400
        in OpenAI's words. The margin keeps pipelined drafting inside the draft's context."""
        margin = 2 * (self.config.draft_tokens + 1)
        context = min(client.welcome.max_context, self.config.n_ctx) - margin
        if prompt >= context or (asked is not None and prompt + asked > context):
            raise ApiError(
                400, f"This model's maximum context length is {context} tokens. However, you "
                     f"requested {prompt + (asked or 0)} tokens ({prompt} in the messages, "
                     f"{asked or 0} in the completion). Please reduce the length of the "
                     "messages or completion.", param="messages", code="context_length_exceeded")
        return asked if asked is not None else context - prompt
