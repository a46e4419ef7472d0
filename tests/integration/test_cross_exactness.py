"""A draft with another tokenizer (SmolLM2, 49,152 BPE ids) before Gemma 3 270M (262,144
SentencePiece ids): every answer is still token-identical to Gemma alone, through a real
verifyd process, a real llama.cpp draft and real sockets; chat turns, a daemon restart and
clients of both kinds at once included. Near-ties only by the top-2 logit margin."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from edgespec.tools.daemon_proc import DaemonProcess, start_daemon
from edgespec.tools.prompts import CHAT_PROMPTS, humaneval_prompts
from edgespec.tools.target_alone import TargetAlone

from ..conftest import THREADS, assert_same_tokens

pytestmark = pytest.mark.slow
MAX_NEW = 64


@pytest.fixture(scope="module")
def gemma_daemon(gemma_dir: Path, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[DaemonProcess]:
    d = start_daemon(gemma_dir, tmp_path_factory.mktemp("verifyd-gemma") / "verifyd.log",
                     threads=THREADS)
    yield d
    d.stop()


@pytest.fixture(scope="module")
def gemma_alone(gemma_dir: Path) -> TargetAlone:
    return TargetAlone(gemma_dir, THREADS, memo=True)


def generate(endpoint: str, lines: list[dict], tmp_path: Path, *extra: str) -> list[dict]:
    prompt_file = tmp_path / f"prompts-{len(list(tmp_path.iterdir()))}.jsonl"
    prompt_file.write_text("\n".join(json.dumps(x) for x in lines))
    cmd = [sys.executable, "-m", "edgespec.edge_client.cli", "generate", "--server", endpoint,
           "--prompt-file", str(prompt_file), "--json", "--threads", "1", *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def check(gemma_alone: TargetAlone, prompt: list[int], got: list[int], n: int) -> None:
    assert_same_tokens(gemma_alone, prompt, got, gemma_alone.greedy(prompt, n))


def test_translated_greedy_matches_gemma_alone(gemma_daemon, gemma_alone, tmp_path):
    lines = [{"id": "chat", "prompt": CHAT_PROMPTS[1]},
             {"id": "code", "prompt": humaneval_prompts(1)[0], "raw": True}]
    results = generate(gemma_daemon.endpoint, lines, tmp_path, "--max-tokens", str(MAX_NEW))
    for result in results:
        assert "error" not in result, result
        stats = result["stats"]
        assert stats["tokenizers"].startswith("translating tokenizers")
        assert max(result["prompt_token_ids"] + result["token_ids"]) >= 49_152 or \
            result["prompt_token_ids"][0] == 2  # Gemma's ids (its bos), not the draft's
        assert result["draft_token_ids"]  # the draft's own ids, under their own name
        check(gemma_alone, result["prompt_token_ids"], result["token_ids"], MAX_NEW)
        assert stats["accepted"] > 0  # translated drafts are being accepted


def test_chat_turns_and_a_daemon_restart_stay_exact(gemma_dir, gemma_daemon, gemma_alone,
                                                    draft_gguf, tmp_path):
    from edgespec.edge_client.client import EdgeClient, new_session_id
    from edgespec.edge_client.config import ClientConfig
    from edgespec.edge_client.stats import GenerationStats

    d = start_daemon(gemma_dir, tmp_path / "a.log", threads=THREADS)
    port = d.endpoint.rsplit(":", 1)[1]
    client = EdgeClient(ClientConfig(server=d.endpoint, draft_path=str(draft_gguf), threads=1,
                                     reconnect_for_s=120.0))
    try:
        assert client.translation is not None
        messages = [{"role": "user", "content": "Name three rivers in Europe."}]
        sid = new_session_id()
        tokens = client.chat_tokens(messages)
        prompt = list(tokens)
        stats = GenerationStats()
        chunks = client.generate(sid, tokens, 40, stats)
        next(chunks)
        d.stop()  # the daemon goes away mid-answer and comes back on the same port
        d = start_daemon(gemma_dir, tmp_path / "b.log", threads=THREADS, port=int(port))
        for _ in chunks:
            pass
        assert stats.reconnects + stats.reopens >= 1
        check(gemma_alone, prompt, tokens[len(prompt):], 40)
        messages += [{"role": "assistant", "content": client.text(tokens[len(prompt):])},
                     {"role": "user", "content": "And two in Asia?"}]
        tokens = client.chat_tokens(messages)  # the second turn extends the first
        prompt = list(tokens)
        for _ in client.generate(sid, tokens, 32, GenerationStats()):
            pass
        check(gemma_alone, prompt, tokens[len(prompt):], 32)
    finally:
        client.close()
        d.stop()


def test_translating_and_same_tokenizer_clients_at_once(gemma_daemon, gemma_alone, tmp_path):
    """Two SmolLM2 drafts (translating) and two Gemma drafts (Gemma's own GGUF on llama.cpp:
    the same-tokenizer path) against one daemon, all at once."""
    from edgespec.models.paths import default_cache_dir, gemma_gguf

    same_draft = str(gemma_gguf(default_cache_dir()))
    jobs = []
    for i, draft in enumerate(["default", same_draft, "default", same_draft]):
        prompt_file = tmp_path / f"p{i}.jsonl"
        prompt_file.write_text(json.dumps({"id": i, "prompt": CHAT_PROMPTS[2 + i % 2]}))
        cmd = [sys.executable, "-m", "edgespec.edge_client.cli", "generate", "--server",
               gemma_daemon.endpoint, "--prompt-file", str(prompt_file), "--json",
               "--threads", "1", "--draft", draft, "--max-tokens", "24"]
        jobs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True))
    kinds = []
    for job in jobs:
        out, err = job.communicate(timeout=900)
        assert job.returncode == 0, err
        result = json.loads(out.splitlines()[-1])
        assert "error" not in result, result
        kinds.append(result["stats"]["tokenizers"] != "same")
        check(gemma_alone, result["prompt_token_ids"], result["token_ids"], 24)
    assert kinds == [True, False, True, False]


def test_bad_translation_requests_get_typed_errors_from_a_live_daemon(gemma_daemon, gemma_dir):
    """A client claiming to translate with the target's own tokenizer, a vocabulary range past
    the end and a translated id outside the vocabulary: typed errors; the daemon goes on."""
    import numpy as np
    from edgespec.edge_client.transport import Link
    from edgespec.models.fingerprint import fingerprint_hf_tokenizer
    from edgespec.wire.codec import Draft, Open, Opened, Vocab, VocabGet
    from edgespec.wire.errors import InvalidToken, LimitExceeded, ModelMismatch
    from edgespec.wire.protocol import TokenizerMode
    from transformers import AutoTokenizer

    gemma_fp = fingerprint_hf_tokenizer(AutoTokenizer.from_pretrained(gemma_dir))
    link = Link(gemma_daemon.endpoint, timeout_s=30)
    try:
        with pytest.raises(ModelMismatch, match="asks to translate"):
            link.hello(gemma_fp, mode=TokenizerMode.TRANSLATE)
        welcome = link.hello(b"\x00" * 32, mode=TokenizerMode.EITHER)
        assert welcome.translate and welcome.vocab_entries == 262_144
        with pytest.raises(LimitExceeded):
            link.request(VocabGet(1_000_000, 16), recover=False)
        chunk = link.request(VocabGet(262_000, 16_384), recover=False)
        assert isinstance(chunk, Vocab) and len(chunk.lengths) == 144  # the last entries only
        assert isinstance(link.request(Open(np.array([2, 818], np.int32), 4), 7), Opened)
        with pytest.raises(InvalidToken):
            link.request(Draft(2, np.array([5, 262_144], np.int32)), 7, recover=False)
        # the refused draft changed nothing: the session still verifies from where it was
        verdict = link.request(Draft(2, np.array([5], np.int32)), 7, recover=False)
        assert verdict.new_length in (3, 4)
    finally:
        link.close()
