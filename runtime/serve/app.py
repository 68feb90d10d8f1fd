"""The HTTP side of `ascend-serve` (FastAPI): OpenAI's /v1/chat/completions, /v1/completions and /v1/models, plus
/health and /metrics. Handlers validate, turn the request into prompt ids and engine Params, submit it to the Engine
and stream (SSE, `data: {...}` lines ending with `data: [DONE]`) or collect its Outputs. Every error is the OpenAI
error JSON with a 4xx (or 5xx) status. A client that disconnects cancels its request; the engine frees the slot at
its next step.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, AsyncIterator, Callable, Sequence

from fastapi import FastAPI, Request
from pydantic import BaseModel
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from ..chat import ChatTemplateError
from ..generate import GenerationError, Sampling
from ..model import Model
from .engine import ContextExceeded, Engine, EngineClosed, EngineFailure, Handle, Output, Params, TokenLogprob
from .protocol import (ChatChoice, ChatChunkChoice, ChatCompletion, ChatCompletionChunk, ChatCompletionRequest,
                       ChatLogprobs, ChatTokenLogprob, Completion, CompletionChoice, CompletionLogprobs,
                       CompletionRequest, ModelCard, ModelList, ResponseMessage, TopLogprob, Usage, error_body,
                       _Common)

ENDPOINTS = {"/v1/chat/completions": "chat", "/v1/completions": "completions"}


class ApiError(Exception):
    """An error answered as the OpenAI error JSON."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def response(self) -> JSONResponse:
        return JSONResponse(error_body(self.message, self.kind, self.param, self.code), status_code=self.status)


class BearerAuth:
    """ASGI middleware: every path but /health needs `Authorization: Bearer KEY` (checked before the body is read)."""

    def __init__(self, app: ASGIApp, api_key: str, exempt: Sequence[str] = ("/health",)) -> None:
        self.app = app
        self._expected = f"Bearer {api_key}".encode()
        self._exempt = frozenset(exempt)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in self._exempt:
            given = next((value for name, value in scope["headers"] if name == b"authorization"), b"")
            if not hmac.compare_digest(given, self._expected):
                message = ("missing API key: send the header 'Authorization: Bearer KEY'" if not given
                           else "incorrect API key")
                await ApiError(401, message, code="invalid_api_key").response()(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def _wait_disconnect(request: Request) -> None:
    """Returns when the client closes the connection (the body has been read: only a disconnect can come)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _usage(out: Output) -> Usage:
    return Usage(prompt_tokens=out.prompt_tokens, completion_tokens=out.completion_tokens,
                 total_tokens=out.prompt_tokens + out.completion_tokens)


def _sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n"


@dataclass
class _Call:
    """One request as the handlers see it: the engine handle and what the response needs."""

    handle: Handle
    endpoint: str
    id: str
    created: int
    logprobs: int | None
    include_usage: bool
    outcome: str = "cancelled"  # set to the finish reason (or "error") when the response is complete
    counted: bool = False  # done() has cancelled it in the engine and counted it in /metrics


class _Stream(StreamingResponse):
    """An SSE response that cancels its request however it ends (done, client gone, server stopping) and counts it."""

    def __init__(self, content: AsyncIterator[str], call: _Call, on_done: Callable[[_Call], None]) -> None:
        super().__init__(content, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self._call = call
        self._on_done = on_done

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_done(self._call)


def create_app(model: Model, engine: Engine, served_name: str, api_key: str | None = None) -> FastAPI:
    """The ASGI app over a loaded model; the engine is started and stopped with the app's lifespan."""
    metrics = engine.metrics
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        engine.start()
        try:
            yield
        finally:
            await asyncio.get_running_loop().run_in_executor(None, engine.stop)

    app = FastAPI(title="ascend-serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    if api_key is not None:
        app.add_middleware(BearerAuth, api_key=api_key)

    # --- errors
    def count(request: Request, outcome: str) -> None:
        endpoint = ENDPOINTS.get(request.url.path)
        if endpoint:
            metrics.requests.labels(endpoint, outcome).inc()

    def rejected(request: Request) -> None:
        count(request, "rejected")

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        if exc.status < 500:
            rejected(request)
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        rejected(request)
        first = exc.errors()[0]
        loc = [str(part) for part in first.get("loc", ()) if part != "body"]
        param = loc[0] if loc else None
        if first.get("type") == "json_invalid":
            message = f"the request body is not valid JSON: {first.get('ctx', {}).get('error', first['msg'])}"
        elif first.get("type") == "extra_forbidden":
            message = f"unsupported parameter '{'.'.join(loc)}'"
        elif first.get("type") == "missing":
            message = f"missing required parameter '{'.'.join(loc)}'" if loc else "the request body is missing"
        else:
            why = first["msg"].removeprefix("Value error, ")  # a validator's own message
            message = f"invalid value for '{'.'.join(loc)}': {why}" if loc else why
        return ApiError(400, message, param).response()

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:  # a bug: still an OpenAI error body
        call: _Call | None = getattr(request.state, "call", None)
        if call is None:  # raised before the engine had the request
            count(request, "error")
        elif not call.counted:  # the engine's request is cancelled and counted once, as an error
            call.outcome = "error"
            done(call)
        return ApiError(500, f"internal error: {type(exc).__name__}: {exc}", kind="server_error").response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = {404: f"no route {request.method} {request.url.path}",
                   405: f"method {request.method} is not allowed on {request.url.path}"}.get(exc.status_code,
                                                                                         str(exc.detail))
        return ApiError(exc.status_code, message).response()

    # --- helpers
    @lru_cache(maxsize=1 << 16)
    def token_entry(token: int) -> tuple[str, list[int]]:
        """A token's text and bytes for logprobs: its bytes as UTF-8 text, or, for a token that carries part of a
        character, OpenAI's "bytes:\\xNN" spelling of them (so that distinct tokens stay distinct)."""
        raw = model.tokenizer.token_bytes(token)
        try:
            return raw.decode("utf-8"), list(raw)
        except UnicodeDecodeError:
            return "bytes:" + "".join(f"\\x{b:02x}" for b in raw), list(raw)

    def known_model(name: str) -> None:
        if name != served_name:
            raise ApiError(404, f"the model '{name}' does not exist; this server serves '{served_name}'", "model",
                           "model_not_found")

    def check(body: _Common) -> None:
        known_model(body.model)
        problem = body.unsupported()
        if problem:
            raise ApiError(400, problem[1], problem[0], "unsupported_parameter")

    def submit(endpoint: str, body: _Common, prompt_ids: list[int], max_tokens: int | None,
               logprobs: int | None, prompt_param: str) -> _Call:
        if max_tokens is None:
            max_tokens = max(engine.context - len(prompt_ids), 1)
        temperature = 1.0 if body.temperature is None else body.temperature
        if temperature == 0:  # greedy: the sampling knobs do not apply
            sampling = Sampling(max_tokens)
        else:
            sampling = Sampling(max_tokens, temperature, max(body.top_k or 0, 0),
                                1.0 if body.top_p is None else body.top_p, body.seed)
        try:
            handle = engine.submit(prompt_ids, Params(sampling, body.stop_strings(), logprobs))
        except ContextExceeded as exc:
            raise ApiError(400, str(exc), prompt_param, "context_length_exceeded") from None
        except GenerationError as exc:
            raise ApiError(400, str(exc)) from None
        except EngineClosed as exc:
            raise ApiError(503, str(exc), kind="server_error") from None
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        prefix = "chatcmpl" if endpoint == "chat" else "cmpl"
        return _Call(handle, endpoint, f"{prefix}-{uuid.uuid4().hex}", int(time.time()), logprobs, include_usage)

    def done(call: _Call) -> None:
        call.handle.cancel()
        if not call.counted:
            call.counted = True
            metrics.requests.labels(call.endpoint, call.outcome).inc()

    async def collect(call: _Call, request: Request) -> list[Output] | None:
        """All Outputs of a non-streamed request, or None when the client went away first (request cancelled)."""
        outputs: list[Output] = []

        async def consume() -> None:
            async for out in call.handle:
                outputs.append(out)

        consumer = asyncio.ensure_future(consume())
        watcher = asyncio.ensure_future(_wait_disconnect(request))
        try:
            await asyncio.wait({consumer, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
            if not consumer.done():  # the client left first (or the server stopped waiting): cancel the request
                consumer.cancel()
                done(call)
        if not consumer.done() or consumer.cancelled():
            return None
        try:
            consumer.result()
        except EngineFailure as exc:
            call.outcome = "error"
            done(call)
            raise ApiError(500, str(exc), kind="server_error") from None
        call.outcome = outputs[-1].finish_reason or "error"
        done(call)
        return outputs

    async def respond(call: _Call, request: Request, stream: Callable[[_Call], AsyncIterator[str]] | None,
                      whole: Callable[[str, list[TokenLogprob], Output], BaseModel]) -> Response:
        """The SSE stream of the request, or (not streamed) its whole response built by `whole` from the text,
        the logprob entries and the last Output."""
        request.state.call = call  # for the handler of unexpected errors
        if stream is not None:
            return _Stream(stream(call), call, done)
        outputs = await collect(call, request)
        if outputs is None:  # the client is gone: nobody reads this
            return Response(status_code=499)
        text = "".join(out.text for out in outputs)
        return JSONResponse(whole(text, [e for out in outputs for e in out.logprobs], outputs[-1]).model_dump())

    def chat_logprobs(entries: Sequence[TokenLogprob]) -> ChatLogprobs:
        def top(token: int, logprob: float) -> TopLogprob:
            text, raw = token_entry(token)
            return TopLogprob(token=text, logprob=logprob, bytes=raw)

        return ChatLogprobs(content=[ChatTokenLogprob(**top(e.token, e.logprob).model_dump(),
                                                      top_logprobs=[top(t, lp) for t, lp in e.top])
                                     for e in entries])

    def completion_logprobs(entries: Sequence[TokenLogprob]) -> CompletionLogprobs:
        def top(alternatives: Sequence[tuple[int, float]]) -> dict[str, float]:
            spelled: dict[str, float] = {}
            for token, logprob in alternatives:  # most likely first: a repeated spelling keeps its best
                spelled.setdefault(token_entry(token)[0], logprob)
            return spelled

        return CompletionLogprobs(tokens=[token_entry(e.token)[0] for e in entries],
                                  token_logprobs=[e.logprob for e in entries],
                                  top_logprobs=[top(e.top) for e in entries],
                                  text_offset=[e.text_offset for e in entries])

    # --- streams
    def sse_chunk(call: _Call, kind: type[ChatCompletionChunk] | type[Completion], choices: list[Any],
                  usage: Usage | None = None) -> str:
        """One `data:` event; `usage` (null but on the last one) only when the client asked for it."""
        data = kind(id=call.id, created=call.created, model=served_name, choices=choices, usage=usage).model_dump()
        if not call.include_usage:
            del data["usage"]
        return _sse(data)

    async def sse_stream(call: _Call, kind: type[ChatCompletionChunk] | type[Completion], opening: list[Any],
                         choices_of: Callable[[Output], list[list[Any]]]) -> AsyncIterator[str]:
        """The events of a streamed request: `opening` choices (if any), the chunks `choices_of` makes of each
        Output, the usage chunk when asked for, then [DONE] (or an error event if the engine failed)."""
        try:
            if opening:
                yield sse_chunk(call, kind, opening)
            async for out in call.handle:
                for choices in choices_of(out):
                    yield sse_chunk(call, kind, choices)
                if out.finish_reason:
                    if call.include_usage:
                        yield sse_chunk(call, kind, [], _usage(out))
                    call.outcome = out.finish_reason
            yield "data: [DONE]\n\n"
        except EngineFailure as exc:
            call.outcome = "error"
            yield _sse(error_body(str(exc), "server_error"))

    def chat_stream(call: _Call) -> AsyncIterator[str]:
        def choices_of(out: Output) -> list[list[Any]]:
            chunks: list[list[Any]] = []
            lp = chat_logprobs(out.logprobs) if call.logprobs is not None and out.logprobs else None
            if out.text or lp:
                chunks.append([ChatChunkChoice(delta={"content": out.text}, logprobs=lp)])
            if out.finish_reason:
                chunks.append([ChatChunkChoice(delta={}, finish_reason=out.finish_reason)])
            return chunks

        return sse_stream(call, ChatCompletionChunk, [ChatChunkChoice(delta={"role": "assistant", "content": ""})],
                          choices_of)

    def completion_stream(call: _Call) -> AsyncIterator[str]:
        def choices_of(out: Output) -> list[list[Any]]:
            lp = completion_logprobs(out.logprobs) if call.logprobs is not None else None
            if out.text or lp or out.finish_reason:
                return [[CompletionChoice(text=out.text, logprobs=lp, finish_reason=out.finish_reason)]]
            return []

        return sse_stream(call, Completion, [], choices_of)

    # --- routes
    @app.post("/v1/chat/completions", response_model=None)
    async def chat(body: ChatCompletionRequest, request: Request) -> Response:
        check(body)
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text(), "name": m.name}
                    for m in body.messages]  # an unset name is dropped before rendering, as transformers does
        try:
            prompt_ids = model.prompt_ids(messages)
        except (GenerationError, ChatTemplateError) as exc:
            raise ApiError(400, str(exc), "messages") from None
        logprobs = (body.top_logprobs or 0) if body.logprobs else None
        call = submit("chat", body, prompt_ids, body.max_completion_tokens or body.max_tokens, logprobs, "messages")

        def whole(text: str, entries: list[TokenLogprob], last: Output) -> ChatCompletion:
            return ChatCompletion(id=call.id, created=call.created, model=served_name, usage=_usage(last),
                                  choices=[ChatChoice(message=ResponseMessage(content=text),
                                                      logprobs=chat_logprobs(entries) if logprobs is not None
                                                      else None, finish_reason=last.finish_reason)])

        return await respond(call, request, chat_stream if body.stream else None, whole)

    @app.post("/v1/completions", response_model=None)
    async def completions(body: CompletionRequest, request: Request) -> Response:
        check(body)
        prompt = body.prompt_value()
        if isinstance(prompt, str):
            try:
                prompt_ids = model.prompt_ids(prompt, raw=True)
            except GenerationError as exc:
                raise ApiError(400, str(exc), "prompt") from None
        else:
            prompt_ids = list(prompt)
        call = submit("completions", body, prompt_ids, body.max_tokens, body.logprobs, "prompt")

        def whole(text: str, entries: list[TokenLogprob], last: Output) -> Completion:
            return Completion(id=call.id, created=call.created, model=served_name, usage=_usage(last),
                              choices=[CompletionChoice(text=text, logprobs=completion_logprobs(entries)
                                                        if body.logprobs is not None else None,
                                                        finish_reason=last.finish_reason)])

        return await respond(call, request, completion_stream if body.stream else None, whole)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return ModelList(data=[ModelCard(id=served_name, created=created, max_model_len=engine.context)]).model_dump()

    @app.get("/v1/models/{name:path}")
    async def model_card(name: str) -> dict[str, Any]:
        known_model(name)
        return ModelCard(id=served_name, created=created, max_model_len=engine.context).model_dump()

    @app.get("/health")
    async def health() -> Response:
        if not engine.alive:
            return ApiError(503, "the engine is not running", kind="server_error").response()
        return JSONResponse({"status": "ok"})

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app
