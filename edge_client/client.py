"""The edge client: the drafter, the link and the daemon's WELCOME, checked against each other."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator

from edgespec.edge_client.chat_template import render_chat
from edgespec.edge_client.config import ClientConfig
from edgespec.edge_client.draft_length import DraftLength, RoundTripModel
from edgespec.edge_client.drafter import Drafter
from edgespec.edge_client.sampling_setup import Sampling
from edgespec.edge_client.spec_loop import speculate
from edgespec.edge_client.stats import GenerationStats
from edgespec.edge_client.threads import ThreadSplit, client_threads, is_local_endpoint
from edgespec.edge_client.trace import TraceWriter
from edgespec.edge_client.translate import Translation, prepare, speculate_translated
from edgespec.edge_client.transport import Link, Liveness, expect, new_session_id
from edgespec.edge_client.tree_shape import MAX_NODES, TreeShape
from edgespec.models.fingerprint import describe_mismatch, fingerprint_llama
from edgespec.models.paths import default_cache_dir
from edgespec.models.vocab import Vocabulary
from edgespec.wire.codec import Close, Tokenize, Tokens
from edgespec.wire.curve import CurveClient
from edgespec.wire.errors import MalformedFrame, ModelMismatch, WireError
from edgespec.wire.protocol import TokenizerMode

__all__ = ["EdgeClient", "new_session_id"]


class EdgeClient:
    def __init__(self, config: ClientConfig):
        self.config = config
        local = is_local_endpoint(config.server)
        self.drafter = Drafter(config.draft_path, n_ctx=config.n_ctx,
                               n_threads=client_threads(config.threads, local))
        self.fingerprint = fingerprint_llama(self.drafter.llm)
        curve = CurveClient.from_options(config.server_key, config.client_key)
        self.link = Link(config.server, timeout_s=config.timeout_s, curve=curve,
                         liveness=Liveness(heartbeat_s=config.heartbeat_s,
                                           connect_timeout_s=config.connect_timeout_s,
                                           reconnect_for_s=config.reconnect_for_s,
                                           busy_for_s=config.busy_for_s))
        try:  # EITHER: the daemon says whether ids go as they are or are translated
            self.welcome = self.link.hello(self.fingerprint, mode=TokenizerMode.EITHER)
        except MalformedFrame:  # a daemon from before translation: ids as they are
            self.welcome = self.link.hello(self.fingerprint)
        self.translation: Translation | None = None
        if self.welcome.translate:
            self.translation = prepare(self.drafter, self.link, self.welcome,
                                       default_cache_dir())
        elif self.welcome.fingerprint != self.fingerprint:
            raise ModelMismatch(
                "the daemon's target does not share the draft's tokenizer: "
                + describe_mismatch(self.fingerprint, self.welcome.fingerprint)
            )
        self._said_raw = False
        self.stop_ids = tuple(self.welcome.eos_ids)
        self.threads = ThreadSplit.choose(config.threads, local, self.welcome)
        self.drafter.set_threads(self.threads.draft, self.threads.idle_draft)
        # what a round trip costs by width is this link's and this daemon's: every session
        # of this client learns into one model
        self.round_trip = RoundTripModel()
        self.policy = self.new_policy(config.draft_tokens)
        self.shape = TreeShape(shape=config.draft_shape,  # chain or tree, kept across turns
                               max_nodes=min(MAX_NODES, self.welcome.max_draft_tokens))

    def new_policy(self, draft_tokens: int) -> DraftLength:
        k_max = min(draft_tokens, self.welcome.max_draft_tokens)
        return DraftLength(k_max=k_max, adaptive=self.config.adaptive,
                           pipelined=self.config.pipeline, timed=self.config.timed_k,
                           chained=self.config.pipeline and self.config.chain,
                           round_trip=self.round_trip)

    def close(self) -> None:
        self.link.close()

    @property
    def tokenizers(self) -> str:
        """For the status line: "same", or that (and how much) we translate."""
        return self.translation.label if self.translation is not None else "same"

    def prompt_tokens(self, text: str) -> list[int]:
        """``text`` as the target's ids, raw (no chat template); translating, the daemon
        tokenizes it (exactly as the target alone would, its bos first)."""
        if self.translation is None:
            return self.drafter.tokenize(text)
        return expect(self.link.request(Tokenize(text, add_bos=True)), Tokens).tokens.tolist()

    def chat_tokens(self, messages: list[dict[str, str]]) -> list[int]:
        """The target's chat template over ``messages``, tokenized like the target would; a
        target without one (a base model such as Gemma 3 270M) gets the turns as raw text,
        which is said once."""
        if not self.welcome.chat_template:
            if not self._said_raw:
                print(f"note: {self.welcome.model_name} has no chat template (a base model): "
                      "prompts go as raw text", file=sys.stderr)
                self._said_raw = True
            return self.prompt_tokens("\n\n".join(m["content"] for m in messages))
        llm = self.drafter.llm
        if self.translation is not None:
            target = self.translation.target
            text = render_chat(self.welcome.chat_template, messages,
                               bos_token=_piece(target, "bos"), eos_token=_piece(target, "eos"))
            return expect(self.link.request(Tokenize(text, add_bos=False)),
                          Tokens).tokens.tolist()
        text = render_chat(
            self.welcome.chat_template, messages,
            bos_token=self.drafter.token_text(llm.token_bos()),
            eos_token=self.drafter.token_text(llm.token_eos()),
        )
        return self.drafter.tokenize(text, special=True)

    def generate(self, session_id: int, tokens: list[int], max_new_tokens: int,
                 stats: GenerationStats, policy: DraftLength | None = None,
                 on_wait: Callable[[str], None] | None = None,
                 trace: TraceWriter | None = None, sampling: Sampling | None = None
                 ) -> Iterator[list[int]]:
        """Extend ``tokens`` in place; yield each round's verified tokens (``trace``: record
        them for ``tools/replay``; ``sampling``: the target's and the draft's settings,
        greedy when None)."""
        sampling = sampling or Sampling()
        self.drafter.sampling = sampling.draft
        stats.verify, stats.seed = sampling.verify_label, sampling.target.seed
        stats.draft_threads, stats.daemon_threads = self.threads.draft, self.threads.daemon
        stats.idle_draft_threads = self.threads.idle_draft
        stats.thread_split = self.threads.reason
        self.link.notify = on_wait
        if self.translation is not None:
            stats.tokenizers = self.translation.label
            return speculate_translated(
                self.drafter, self.translation, self.link, session_id, tokens, max_new_tokens,
                policy or self.policy, self.stop_ids, stats, on_wait=on_wait, trace=trace,
                sampling=sampling.target)
        return speculate(
            self.drafter, self.link, session_id, tokens, max_new_tokens,
            policy or self.policy, self.stop_ids, stats,
            pipeline=self.config.pipeline, on_wait=on_wait, trace=trace,
            sampling=sampling.target, shape=self.shape, chain=self.config.chain,
        )

    def end_session(self, session_id: int) -> None:
        """Free the daemon's copy; ours is the truth, so failure here loses nothing."""
        if self.link.down:
            return  # unreachable: its copy expires on its own
        with contextlib.suppress(WireError):  # best effort: the daemon expires idle ones
            self.link.request(Close(), session_id, timeout_s=5.0, recover=False)

    def token_bytes(self, tokens: list[int]) -> bytes:
        """The text bytes of target ids, stop ids left out."""
        visible = [t for t in tokens if t not in self.stop_ids]
        if self.translation is not None:
            return self.translation.target.decode(visible)
        return self.drafter.detokenize(visible)

    def text(self, tokens: list[int]) -> str:
        return self.token_bytes(tokens).decode("utf-8", "replace")

    def draft_ids(self, text: str) -> list[int]:
        """``text`` in the draft's own ids (``--json`` shows them beside the target's)."""
        return self.drafter.tokenize(text, special=False)


def _piece(vocab: Vocabulary, name: str) -> str:
    ident = vocab.specials.get(name)
    return vocab.tokens[ident].decode("utf-8", "replace") if ident is not None else ""
