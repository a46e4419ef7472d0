"""``edgespec serve``'s request checks, text pieces and queue, each alone (no model)."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest
from edgespec.edge_client.config import ClientConfig
from edgespec.edge_client.sampling_setup import SamplingOptions
from edgespec.edge_client.serve.api import ApiError, ChatRequest, CompletionRequest, parse
from edgespec.edge_client.serve.worker import Job, TextStream, Worker


def chat(**fields) -> bytes:
    return json.dumps({"messages": [{"role": "user", "content": "hi"}], **fields}).encode()


@pytest.mark.parametrize(("body", "status", "says"), [
    (b"{not json", 400, "not valid JSON"),
    (b"[1, 2]", 400, "JSON object"),
    (chat(n=2), 400, "only n=1"),
    (chat(temperature="hot"), 400, "temperature: Input should be a valid number (got str)"),
    (chat(max_tokens=-5), 400, "max_tokens: Input should be greater than or equal to 1"),
    (chat(max_tokens="5"), 400, "max_tokens: Input should be a valid integer"),
    (json.dumps({"model": "x"}).encode(), 400, "messages: required"),
    (json.dumps({"messages": []}).encode(), 400, "messages: List should have at least 1"),
    (json.dumps({"messages": [{"role": "wizard", "content": "x"}]}).encode(), 400,
     "messages[0].role: unknown role 'wizard'"),
    (json.dumps({"messages": [{"role": "tool", "content": "x"}]}).encode(), 400,
     "tool calling"),
    (chat(tools=[{"type": "function"}]), 400, "tools: tool calling is not supported"),
    (chat(logprobs=True), 400, "logprobs"),
    (chat(frequency_penalty=0.5), 400, "frequency_penalty"),
    (chat(stop=["a", "b", "c", "d", "e"]), 400, "at most 4 stop sequences"),
    (chat(surprise=1), 400, "surprise: unrecognized request argument"),
    (chat(max_tokens=5, max_completion_tokens=5), 400, "not both"),
])
def test_bad_chat_requests_are_400_saying_where(body, status, says):
    with pytest.raises(ApiError) as caught:
        parse(ChatRequest, body)
    assert caught.value.status == status
    assert says in caught.value.message, caught.value.message
    assert caught.value.body()["error"]["type"] == "invalid_request_error"


def test_good_chat_request_keeps_every_setting():
    body = parse(ChatRequest, chat(max_completion_tokens=7, temperature=0.5, top_p=0.9,
                                   seed=3, stop="END", stream=True,
                                   stream_options={"include_usage": True}))
    assert (body.max_completion_tokens, body.temperature, body.top_p, body.seed) == (
        7, 0.5, 0.9, 3)
    assert body.stops == ["END"] and body.stream and body.stream_options.include_usage


def test_text_parts_join_and_developer_is_system():
    body = parse(ChatRequest, json.dumps({"messages": [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text",
                                                                     "text": "b"}]},
        {"role": "assistant", "content": "ok", "refusal": None}]}).encode())
    assert body.chat_messages() == [{"role": "system", "content": "Be brief."},
                                    {"role": "user", "content": "ab"},
                                    {"role": "assistant", "content": "ok"}]
    image = parse(ChatRequest, json.dumps({"messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}
    ).encode())
    with pytest.raises(ApiError, match="only text content parts"):
        image.chat_messages()


def test_completion_requests_take_one_prompt():
    assert parse(CompletionRequest, b'{"prompt": ["one"]}').text == "one"
    with pytest.raises(ApiError, match="exactly one prompt"):
        parse(CompletionRequest, b'{"prompt": ["one", "two"]}')
    with pytest.raises(ApiError, match="echo"):
        parse(CompletionRequest, b'{"prompt": "x", "echo": true}')


def pieces(stream: TextStream, texts: list[str]) -> tuple[list[str], bool]:
    """Feed growing texts as if decoded from growing id lists."""
    out, stopped = [], False
    for n in range(1, len(texts) + 1):
        stream.decode = lambda _ids, n=n: texts[n - 1]
        piece, stopped = stream.update([])
        out.append(piece)
        if stopped:
            break
    return out, stopped


def test_text_stream_cuts_at_a_stop_sequence_split_across_rounds():
    stream = TextStream(lambda ids: "", ["STOP"])
    out, stopped = pieces(stream, ["Hello ST", "Hello STO", "Hello STOP and more"])
    assert stopped and "".join(out) == "Hello " and stream.text == "Hello "


def test_text_stream_holds_back_an_unfinished_character_and_a_stop_prefix():
    stream = TextStream(lambda ids: "", ["xyz"])
    out, stopped = pieces(stream, ["ab\ufffd", "abé x", "abé xy!"])
    assert not stopped
    assert out[0] == "ab"  # the U+FFFD may become a character
    assert "".join(out) + stream.finish() == "abé xy!"


class _Loop:
    """Enough of an event loop for jobs whose events nobody reads in these tests."""

    def call_soon_threadsafe(self, fn, *args):
        fn(*args)


def job() -> Job:
    return Job(None, "x", 1, SamplingOptions(), [], _Loop())


def test_queue_is_first_come_first_served_and_bounded_with_retry_after():
    worker = Worker(ClientConfig(draft_path="unused.gguf", threads=1), max_queue=2)
    order: list[Job] = []
    release = threading.Event()

    def answer(j: Job) -> None:
        order.append(j)
        release.wait(5)

    worker._answer = answer
    thread = threading.Thread(target=worker.run_forever)
    thread.start()
    try:
        first = job()
        worker.submit(first)
        while worker.queued:  # the worker took it
            pass
        waiting = [job(), job()]
        for j in waiting:
            worker.submit(j)
        with pytest.raises(ApiError) as caught:
            worker.submit(job())
        assert caught.value.status == 429 and int(caught.value.headers["Retry-After"]) >= 1
        worker.cancel(waiting[0])  # its client went away: it leaves the queue at once
        worker.submit(late := job())
        release.set()
        for _ in range(200):
            if len(order) == 3:
                break
            threading.Event().wait(0.01)
        assert order == [first, waiting[1], late]
    finally:
        worker.stop()
        release.set()
        thread.join(5)


def test_events_reach_the_requests_event_loop():
    async def main() -> object:
        j = Job(None, "x", 1, SamplingOptions(), [], asyncio.get_running_loop())
        threading.Thread(target=j.emit, args=("event",)).start()
        return await asyncio.wait_for(j.events.get(), 5)

    assert asyncio.run(main()) == "event"
