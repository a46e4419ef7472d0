"""``edgespec serve`` driven by real clients (the ``openai`` package, the ``llm`` CLI, curl)
against the real draft and a real verifyd; every answer is held against ``edgespec generate``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import pytest
import requests
from edgespec.tools.daemon_proc import free_port
from edgespec.tools.serve_proc import start_serve

pytestmark = pytest.mark.slow
QUESTION = "What is the capital of France, and what is it famous for?"
CODE = "def fibonacci(n):"
MAX = 40
THREADS = int(os.environ.get("EDGESPEC_TEST_THREADS", "1"))


def connect(url: str) -> Any:
    """An ``openai.OpenAI`` client (typed loosely: the tests send plain dicts, as JSON)."""
    return openai.OpenAI(base_url=f"{url}v1", api_key="unused", max_retries=0, timeout=120)


def model_of(client: openai.OpenAI) -> str:
    return client.models.list().data[0].id


def stream_text(stream) -> tuple[str, dict]:
    """Join a streamed chat answer; returns (text, the last chunk's extras and usage)."""
    pieces, last = [], {}
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        if chunk.choices and chunk.choices[0].finish_reason:
            last["finish_reason"] = chunk.choices[0].finish_reason
        if chunk.usage:
            last["usage"] = chunk.usage
        if chunk.model_extra and "metrics" in chunk.model_extra:
            last["metrics"] = chunk.model_extra["metrics"]
    return "".join(pieces), last


def test_openai_chat_streamed_equals_whole_equals_generate(served, generated):
    client = connect(served.url)
    model = model_of(client)
    messages = [{"role": "user", "content": QUESTION}]
    whole = client.chat.completions.create(model=model, messages=messages, max_tokens=MAX,
                                           temperature=0)
    streamed, last = stream_text(client.chat.completions.create(
        model=model, messages=messages, max_tokens=MAX, temperature=0, stream=True,
        stream_options={"include_usage": True}))
    want = generated(QUESTION, MAX)
    assert whole.choices[0].message.content == streamed == want["text"]
    assert whole.usage.prompt_tokens == len(want["prompt_token_ids"])
    assert whole.usage.completion_tokens == len(want["token_ids"])
    assert last["usage"] == whole.usage
    assert whole.choices[0].finish_reason == last["finish_reason"]
    spec = whole.model_extra["metrics"]["speculative_decoding"]
    assert spec["num_draft_tokens"] >= spec["num_accepted_tokens"] > 0
    assert 0 < spec["acceptance_rate"] <= 1 and spec["round_trip_ms"] > 0
    live = last["metrics"]["speculative_decoding"]  # its own rounds (k adapts to timings)
    assert live["num_draft_tokens"] >= live["num_accepted_tokens"] > 0


def test_openai_completions_take_the_raw_prompt(served, generated):
    client = connect(served.url)
    model = model_of(client)
    whole = client.completions.create(model=model, prompt=CODE, max_tokens=24, temperature=0)
    pieces = [c.choices[0].text for c in client.completions.create(
        model=model, prompt=CODE, max_tokens=24, temperature=0, stream=True) if c.choices]
    assert whole.choices[0].text == "".join(pieces) == generated(CODE, 24, "--raw")["text"]
    assert whole.choices[0].finish_reason == "length"


def test_seeded_sampling_repeats_and_matches_generate(served, generated):
    client = connect(served.url)
    model = model_of(client)
    ask = dict(model=model, messages=[{"role": "user", "content": QUESTION}], max_tokens=24,
               temperature=0.8, seed=11)
    first = client.chat.completions.create(**ask)
    again = client.chat.completions.create(**ask)
    streamed, _ = stream_text(client.chat.completions.create(**ask, stream=True))
    text = first.choices[0].message.content
    assert text == again.choices[0].message.content == streamed
    assert text == generated(QUESTION, 24, "--temperature", "0.8", "--seed", "11")["text"]
    assert first.model_extra["metrics"]["speculative_decoding"]["seed"] == 11


def test_concurrent_requests_each_get_their_own_answer(served, generated):
    client = connect(served.url)
    model = model_of(client)
    questions = ["Write a haiku about the ocean.", "What is photosynthesis?",
                 "Name a famous painter."]

    def ask(question: str) -> str:
        reply = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": question}], max_tokens=16,
            temperature=0)
        return str(reply.choices[0].message.content)

    with ThreadPoolExecutor(len(questions)) as pool:  # all queued at once, served in turn
        answers = list(pool.map(ask, questions))
    assert answers == [generated(q, 16)["text"] for q in questions]


def test_stop_sequence_ends_the_answer_before_it(served, generated):
    client = connect(served.url)
    full = generated(QUESTION, MAX)["text"]
    stop = full[len(full) // 2: len(full) // 2 + 3]
    reply = client.chat.completions.create(
        model=model_of(client), messages=[{"role": "user", "content": QUESTION}],
        max_tokens=MAX, temperature=0, stop=[stop])
    assert reply.choices[0].message.content == full[:full.index(stop)]
    assert reply.choices[0].finish_reason == "stop"


def test_llm_cli_uses_serve_as_an_openai_compatible_model(served, generated, tmp_path):
    model = model_of(connect(served.url))
    (tmp_path / "extra-openai-models.yaml").write_text(
        f"- model_id: edgespec\n  model_name: {model}\n  api_base: {served.url}v1\n")
    llm = Path(sys.executable).with_name("llm")
    done = subprocess.run(
        [str(llm), "-m", "edgespec", "--no-log", "-o", "temperature", "0", "-o", "max_tokens",
         str(MAX), QUESTION], capture_output=True, text=True, timeout=180,
        env={"PATH": "/usr/bin:/bin", "LLM_USER_PATH": str(tmp_path), "HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == generated(QUESTION, MAX)["text"].strip()


def curl(url: str, body: str | bytes, *extra: str) -> tuple[int, str]:
    """POST ``body`` with curl; (HTTP status, response body)."""
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed (tools/_system_deps.sh installs it)")
    done = subprocess.run(
        ["curl", "-sS", "-N", "-w", "\n%{http_code}", "-H", "Content-Type: application/json",
         "--data-binary", "@-", *extra, url], input=body if isinstance(body, bytes)
        else body.encode(), capture_output=True, timeout=180)
    out, _, status = done.stdout.decode().rpartition("\n")
    return int(status), out


def test_curl_streams_server_sent_events_and_gets_error_objects(served, generated):
    status, out = curl(f"{served.url}v1/chat/completions", json.dumps(
        {"messages": [{"role": "user", "content": QUESTION}], "max_tokens": MAX,
         "temperature": 0, "stream": True}))
    assert status == 200
    events = [line.removeprefix("data: ") for line in out.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == generated(QUESTION, MAX)["text"]
    status, out = curl(f"{served.url}v1/chat/completions", '{"messages": [')
    assert status == 400 and "not valid JSON" in json.loads(out)["error"]["message"]


def test_unsupported_and_impossible_requests_get_openai_errors(served):
    client = connect(served.url)
    model = model_of(client)
    hello = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=model, messages=hello, n=2)
    assert caught.value.status_code == 400 and "only n=1" in caught.value.message
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=model, messages=hello, temperature="hot")
    assert "temperature: Input should be a valid number (got str)" in caught.value.message
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "word " * 5000}])
    assert caught.value.code == "context_length_exceeded"
    assert "maximum context length" in caught.value.message
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="gpt-4o", messages=hello)
    assert "does not exist" in missing.value.message


BAD = [  # (body, status, what the message says)
    (b'{"messages": [', 400, "not valid JSON"),
    (b'{"messages": "hi"}', 400, "messages: Input should be a valid array (got str)"),
    (b'{"model": "x"}', 400, "messages: required"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": -1}', 400,
     "max_tokens: Input should be greater than or equal to 1"),
    (b'{"messages": [{"role": "oracle", "content": "hi"}]}', 400, "unknown role 'oracle'"),
    (b'{"messages": [{"role": "user", "content": 5}]}', 400, "messages[0].content"),
    (b'{"messages": [{"role": "user", "content": "' + b"x" * (2 << 20) + b'"}]}', 413,
     "exceeds"),
]


def test_bad_input_is_refused_and_the_answer_in_flight_is_untouched(served, generated):
    good: Any = {"messages": [{"role": "user", "content": QUESTION}], "max_tokens": MAX,
                 "temperature": 0, "stream": True}
    url = f"{served.url}v1/chat/completions"
    with requests.Session() as http, http.post(url, json=good, stream=True,
                                               timeout=120) as answer:
        lines = answer.iter_lines(decode_unicode=True)
        first = next(lines)  # the answer is under way
        for body, status, says in BAD:
            reply = requests.post(url, data=body, timeout=60,
                                  headers={"Content-Type": "application/json"})
            assert reply.status_code == status, (body[:60], reply.text)
            assert says in reply.json()["error"]["message"], reply.text
        assert requests.get(f"{served.url}v1/nowhere", timeout=60).status_code == 404
        assert requests.get(url, timeout=60).status_code == 405
        events: list[Any] = [first, *lines]
    chunks = [json.loads(e[6:]) for e in events if e.startswith("data: {")]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == generated(QUESTION, MAX)["text"]


def test_full_queue_is_429_and_a_client_that_leaves_frees_its_place(daemon, tmp_path):
    s = start_serve(daemon.endpoint, tmp_path / "serve.log", "--max-queue", "0",
                    threads=THREADS)
    try:
        client = connect(s.url)
        model = model_of(client)
        story = [{"role": "user", "content": "Tell me a long story about a dragon."}]
        long = client.chat.completions.create(model=model, messages=story, max_tokens=400,
                                              temperature=0, stream=True)
        next(iter(long))  # being answered now
        with pytest.raises(openai.RateLimitError) as caught:
            client.chat.completions.create(model=model, messages=story, max_tokens=4)
        assert int(caught.value.response.headers["Retry-After"]) >= 1
        assert "may wait" in caught.value.message
        long.close()  # the client goes away mid-answer
        deadline = time.monotonic() + 20
        while True:  # its place frees within a round or two, not after 400 tokens
            try:
                reply = client.chat.completions.create(model=model, messages=story,
                                                       max_tokens=4, temperature=0)
                break
            except openai.RateLimitError:
                assert time.monotonic() < deadline, "the abandoned answer kept its place"
                time.sleep(0.2)
        assert reply.usage.completion_tokens == 4
    finally:
        s.stop()


def test_daemon_down_is_503_saying_so(tmp_path):
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    s = start_serve(endpoint, tmp_path / "serve.log", "--connect-timeout", "1",
                    "--model-name", "edgespec", threads=THREADS)
    try:
        assert "requests get HTTP 503" in s.log.read_text()
        with pytest.raises(openai.InternalServerError) as caught:
            connect(s.url).chat.completions.create(
                model="edgespec", messages=[{"role": "user", "content": "hi"}])
        assert caught.value.status_code == 503
        assert f"verifyd at {endpoint} is unavailable" in caught.value.message
        assert caught.value.response.headers["Retry-After"]
    finally:
        s.stop()
