"""The HTTP front end: OpenAI's ``/v1/models``, ``/v1/chat/completions`` and
``/v1/completions`` (streamed as server-sent events or whole) and the chat page at ``/``.

Handlers only check requests and relay the worker's events; the answer itself comes from
the worker thread, so a slow or malformed request never holds up the one being answered.
"""

from __future__ import annotations

import asyncio
import ipaddress
import secrets
import socket
import threading
import time
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

import click
from edgespec.edge_client.config import ClientConfig
from edgespec.edge_client.sampling_setup import SamplingOptions
from edgespec.edge_client.serve.api import (
    ApiError,
    ChatRequest,
    CompletionRequest,
    Shape,
    parse,
    sse,
)
from edgespec.edge_client.serve.worker import Event, Failed, Finished, Job, Piece, Worker
from edgespec.edge_client.trace import TraceWriter
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

POLL_S = 0.5  # how often a waiting handler checks that its client is still there
OPENAI_TEMPERATURE = 1.0  # OpenAI's default when a request names none


class ClientGone(Exception):
    pass


def create_app(worker: Worker, model: str, max_body: int) -> FastAPI:
    app = FastAPI(title="edgespec serve", docs_url=None, redoc_url=None, openapi_url=None)
    created = int(time.time())

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> Response:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        error = ApiError(exc.status_code, f"{exc.detail}: {request.method} {request.url.path}")
        return JSONResponse(error.body(), status_code=exc.status_code, headers=exc.headers)

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        return (resources.files("edgespec.edge_client.serve") / "static" / "index.html"
                ).read_text(encoding="utf-8")

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [
            {"id": model, "object": "model", "created": created, "owned_by": "edgespec"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        body: ChatRequest = parse(ChatRequest, await read_body(request, max_body))
        _check_model(body.model, model)
        limit = body.max_completion_tokens or body.max_tokens
        job = _job(body, body.chat_messages(), None, limit)
        return await _respond(worker, request, job, Shape(True, model, _id("chatcmpl")), body)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        body: CompletionRequest = parse(CompletionRequest, await read_body(request, max_body))
        _check_model(body.model, model)
        job = _job(body, None, body.text, body.max_tokens)
        return await _respond(worker, request, job, Shape(False, model, _id("cmpl")), body)

    return app


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused (413) as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length", "")
    too_big = ApiError(413, f"the request body exceeds {limit} bytes", code="body_too_large")
    if declared.isdigit() and int(declared) > limit:
        raise too_big
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_big
    return bytes(body)


def _check_model(asked: str | None, served: str) -> None:
    if asked is not None and asked != served:
        raise ApiError(404, f"the model {asked!r} does not exist; this server serves "
                            f"{served!r}", param="model", code="model_not_found")


def _id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def _job(body: ChatRequest | CompletionRequest, messages: list[dict[str, str]] | None,
         prompt: str | None, max_tokens: int | None) -> Job:
    temperature = OPENAI_TEMPERATURE if body.temperature is None else body.temperature
    sampling = SamplingOptions(temperature=temperature, top_k=body.top_k or 0,
                               top_p=1.0 if body.top_p is None else body.top_p, seed=body.seed)
    return Job(messages, prompt, max_tokens, sampling, body.stops, asyncio.get_running_loop())


async def _next_event(worker: Worker, request: Request, job: Job) -> Event:
    """The job's next event; a client that went away meanwhile cancels the job."""
    while True:
        try:
            return await asyncio.wait_for(job.events.get(), POLL_S)
        except TimeoutError:
            if await request.is_disconnected():
                worker.cancel(job)
                raise ClientGone from None


async def _respond(worker: Worker, request: Request, job: Job, shape: Shape,
                   body: ChatRequest | CompletionRequest) -> Response:
    """Queue the job; wait for its first event, so that a refusal (context, daemon down)
    still gets its HTTP status even when streaming; then stream or collect the rest."""
    worker.submit(job)
    try:
        first = await _next_event(worker, request, job)
    except ClientGone:
        return Response(status_code=499)  # nobody reads it
    if isinstance(first, Failed):
        raise first.error
    if body.stream:
        usage = body.stream_options is not None and body.stream_options.include_usage
        return StreamingResponse(_stream(worker, request, job, shape, first, usage),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache",
                                          "X-Accel-Buffering": "no"})
    event = first
    try:
        while isinstance(event, Piece):
            event = await _next_event(worker, request, job)
    except ClientGone:
        return Response(status_code=499)
    if isinstance(event, Failed):
        raise event.error
    assert isinstance(event, Finished)
    return JSONResponse(shape.whole(event.full_text, event.finish_reason, event.usage,
                                    event.stats))


async def _stream(worker: Worker, request: Request, job: Job, shape: Shape, event: Event,
                  usage: bool) -> AsyncIterator[bytes]:
    """Server-sent events in OpenAI's order: role, content pieces, finish, usage, [DONE]."""
    finished = False
    try:
        if shape.chat:
            yield sse(shape.chunk("", role=True))
        while True:
            if isinstance(event, Piece):
                yield sse(shape.chunk(event.text, stats=event.stats))
            elif isinstance(event, Finished):
                if event.text:
                    yield sse(shape.chunk(event.text, stats=event.stats))
                yield sse(shape.chunk(None, event.finish_reason, stats=event.stats))
                if usage:
                    yield sse({**shape.chunk(None), "usage": event.usage.as_dict()})
                finished = True
                yield sse("[DONE]")
                return
            else:  # failed mid-answer: OpenAI's clients raise on an error event
                finished = True
                yield sse(event.error.body())
                yield sse("[DONE]")
                return
            event = await _next_event(worker, request, job)
    except ClientGone:
        return
    finally:
        if not finished:  # the client went away mid-stream: free its place and session
            worker.cancel(job)


def run_server(config: ClientConfig, host: str, port: int, max_queue: int, max_body: int,
               model_name: str | None, trace: TraceWriter | None) -> None:
    """Connect (or note that the daemon is down), start the worker, serve until Ctrl-C."""
    import uvicorn

    worker = Worker(config, max_queue, trace)
    target = "edgespec"
    try:  # connect now: a bad draft or key shows at once, and the first answer is quick
        target = worker.connect().welcome.model_name
    except ApiError as exc:
        click.secho(f"warning: {exc.message}; requests get HTTP 503 until it answers",
                    fg="yellow", err=True)
    model = model_name or target
    if not _is_loopback(host):
        click.secho(f"warning: serving {host} without authentication: anyone who can reach "
                    "this port can use your verifyd session", fg="yellow", err=True)
    threading.Thread(target=worker.run_forever, name="edgespec-serve", daemon=True).start()
    listener = socket.create_server((host, port), family=_family(host))
    bound = listener.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(worker, model, max_body),
                                           log_level="warning", timeout_graceful_shutdown=2))
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"edgespec serve ready on http://{shown}:{bound}/ (model {model}, verifyd "
               f"{config.server})", err=True)
    try:
        server.run(sockets=[listener])
    finally:
        worker.stop()


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
