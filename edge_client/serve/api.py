"""The OpenAI request and response shapes ``edgespec serve`` speaks, and its error object.

Requests are validated strictly (JSON types as sent, unknown fields refused) because a field
we would quietly ignore is an answer the caller did not ask for: what we cannot honour (``n``
above 1, tools, logprobs, penalties) is an HTTP 400 naming the field, as OpenAI's own API
answers unknown arguments.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

ROLES = ("system", "developer", "user", "assistant")
MAX_STOPS = 4


class ApiError(Exception):
    """An OpenAI-style error: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None, kind: str = "invalid_request_error",
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = (
            status, message, param, code, kind)
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param,
                          "code": self.code}}


def unsupported(param: str, why: str) -> ApiError:
    return ApiError(400, f"{param}: {why}", param=param, code="unsupported_parameter")


# ---------------------------------------------------------------- requests


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class StreamOptions(_Strict):
    include_usage: bool = False


class ChatMessage(BaseModel):
    """One message; extra keys clients echo back (``refusal``, ``annotations``) are ignored,
    tool calls are refused."""

    model_config = ConfigDict(extra="ignore", strict=True)
    role: str
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[Any] | None = None
    function_call: dict[str, Any] | None = None

    @field_validator("role")
    @classmethod
    def _known_role(cls, role: str) -> str:
        if role in ("tool", "function"):
            raise ValueError(f"role {role!r} belongs to tool calling, which edgespec serve "
                             "does not support")
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}: use one of {', '.join(ROLES)}")
        return role

    def text(self) -> str:
        """The content as one string: only text parts can reach a text-only model."""
        if self.tool_calls or self.function_call:
            raise ValueError("tool calls are not supported")
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        texts = []
        for part in self.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ValueError(f"only text content parts are supported, got "
                                 f"{json.dumps(part.get('type'))}")
            texts.append(part["text"])
        return "".join(texts)


class _Generation(_Strict):
    """Fields both endpoints share; ``top_k`` is an extension (as vLLM has it)."""

    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0)
    seed: int | None = Field(None, ge=0, lt=1 << 63)
    stop: str | list[str] | None = None
    n: int | None = Field(None, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _few_stops(cls, stop: str | list[str] | None) -> str | list[str] | None:
        if isinstance(stop, list) and len(stop) > MAX_STOPS:
            raise ValueError(f"at most {MAX_STOPS} stop sequences")
        return stop

    def refuse_unsupported(self) -> None:
        if self.n is not None and self.n > 1:
            raise unsupported("n", "only n=1 is supported (one draft model, one answer)")
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name):
                raise unsupported(name, "penalties would change the target's distribution; "
                                        "only 0 is supported")
        if self.logit_bias:
            raise unsupported("logit_bias", "not supported")
        if self.stream_options is not None and not self.stream:
            raise ApiError(400, "stream_options: only allowed with stream=true",
                           param="stream_options")

    @property
    def stops(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return [s for s in stops if s]


class ChatRequest(_Generation):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None
    function_call: Any = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None

    def refuse_unsupported(self) -> None:
        super().refuse_unsupported()
        if self.logprobs or self.top_logprobs:
            raise unsupported("logprobs", "log probabilities are not computed")
        for name in ("tools", "functions"):
            if getattr(self, name):
                raise unsupported(name, "tool calling is not supported")
        for name in ("tool_choice", "function_call"):
            if getattr(self, name) not in (None, "none"):
                raise unsupported(name, "tool calling is not supported")
        if self.response_format and self.response_format.get("type") != "text":
            raise unsupported("response_format", "only {\"type\": \"text\"} is supported")
        if self.max_tokens and self.max_completion_tokens:
            raise ApiError(400, "give max_tokens or max_completion_tokens, not both",
                           param="max_completion_tokens")

    def chat_messages(self) -> list[dict[str, str]]:
        """Messages for the target's chat template (``developer`` is the newer ``system``)."""
        out = []
        for i, message in enumerate(self.messages):
            try:
                content = message.text()
            except ValueError as exc:
                raise ApiError(400, f"messages[{i}]: {exc}", param=f"messages[{i}]") from exc
            role = "system" if message.role == "developer" else message.role
            out.append({"role": role, "content": content})
        return out


class CompletionRequest(_Generation):
    prompt: str | list[str]
    echo: bool | None = None
    suffix: str | None = None
    best_of: int | None = None
    logprobs: int | None = None

    def refuse_unsupported(self) -> None:
        super().refuse_unsupported()
        if isinstance(self.prompt, list) and len(self.prompt) != 1:
            raise unsupported("prompt", "exactly one prompt per request")
        if self.echo:
            raise unsupported("echo", "not supported")
        if self.suffix:
            raise unsupported("suffix", "insertion is not supported")
        if self.best_of is not None and self.best_of > 1:
            raise unsupported("best_of", "only best_of=1 is supported")
        if self.logprobs:
            raise unsupported("logprobs", "log probabilities are not computed")

    @property
    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


def parse(kind: type[_Generation], raw: bytes) -> Any:
    """The request in ``raw`` (JSON), checked; any problem is a 400 saying where."""
    try:
        request = kind.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        if first["type"] == "json_invalid":
            raise ApiError(400, f"the body is not valid JSON: {first['msg']}") from None
        if first["type"] == "model_type" and not first["loc"]:
            raise ApiError(400, "the body must be a JSON object") from None
        problems = [_describe(error) for error in exc.errors()[:5]]
        raise ApiError(400, "; ".join(problems), param=_where(first["loc"]) or None) from None
    request.refuse_unsupported()
    return request


def _where(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _describe(error: Any) -> str:
    """One pydantic error as "where: what" (a wrong type says what it got)."""
    loc = tuple(p for p in error["loc"] if not (isinstance(p, str) and "[" in p))  # union arms
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        return f"{_where(loc)}: unrecognized request argument"
    if error["type"] == "missing":
        return f"{_where(loc)}: required"
    if error["type"].endswith("_type") and "input" in error:
        message += f" (got {type(error['input']).__name__})"
    return f"{_where(loc)}: {message}"


# ---------------------------------------------------------------- responses


@dataclass(slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    def as_dict(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}


def speculative_metrics(stats: dict[str, Any]) -> dict[str, Any]:
    """The request's speculative figures, in the extension field ``metrics`` (vLLM's name)."""
    return {"speculative_decoding": {
        "num_drafts": stats["rounds"], "num_draft_tokens": stats["drafted"],
        "num_accepted_tokens": stats["accepted"], "acceptance_rate": stats["acceptance_rate"],
        "mean_acceptance_length": stats["tokens_per_round"],
        "round_trip_ms": stats["round_trip_ms"], "tokens_per_s": stats["tokens_per_s"],
        "bytes_per_round": stats["bytes_per_round"], "verify": stats["verify"],
        "seed": stats["seed"] or None,
    }}


@dataclass(slots=True)
class Shape:
    """What one response is: chat or text completion, its id, model and creation time."""

    chat: bool
    model: str
    id: str
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def object(self) -> str:
        return "chat.completion" if self.chat else "text_completion"

    def whole(self, text: str, finish: str, usage: Usage, stats: dict[str, Any]
              ) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
        if self.chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        return {"id": self.id, "object": self.object, "created": self.created,
                "model": self.model, "choices": [choice], "usage": usage.as_dict(),
                "metrics": speculative_metrics(stats)}

    def chunk(self, text: str | None, finish: str | None = None,
              stats: dict[str, Any] | None = None, role: bool = False) -> dict[str, Any]:
        """One streamed piece; ``text`` None with ``finish`` None and no role is the usage
        chunk's empty ``choices``."""
        choices: list[dict[str, Any]] = []
        if text is not None or finish is not None or role:
            choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
            if self.chat:
                delta: dict[str, Any] = {"role": "assistant"} if role else {}
                if text is not None:
                    delta["content"] = text
                choice["delta"] = delta
            else:
                choice["text"] = text or ""
            choices.append(choice)
        out: dict[str, Any] = {"id": self.id, "created": self.created, "model": self.model,
                               "object": ("chat.completion.chunk" if self.chat
                                          else "text_completion"),
                               "choices": choices}
        if stats is not None:
            out["metrics"] = speculative_metrics(stats)
        return out


def sse(data: dict[str, Any] | Literal["[DONE]"]) -> bytes:
    """One server-sent event."""
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {payload}\n\n".encode()
