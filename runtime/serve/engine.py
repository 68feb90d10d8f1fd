"""The serving engine: one thread owns the model and runs continuous batching.

Requests wait in a queue until one of `max_batch` slots (a native session, i.e. a KV cache) is free, then join the
running batch between two steps. Each step
  1. drops cancelled requests (their slot is free for the next step),
  2. prefills up to one prefill block (the backend's NativeModel.prefill_block) of new requests' prompt tokens,
     each on its own session (oldest first: several short prompts share one step's budget, a long one takes it in
     pieces, so the others' next token is not held up by a long prompt;
     generate.prefill_slice tokens, shared alike, when nobody is decoding; a prompt is cut only at multiples of
     the block from its start, so it gets the logits it gets alone),
  3. decodes one token for every request past its prompt in ONE native call (NativeModel.forward_batch), so each
     weight row is read once per step for the whole batch.
Finished requests leave at once. Greedy requests produce the tokens they would produce alone; sampled ones draw
with generate.sample from their own seeded generator. Asking for logprobs makes that step return full logits.

The HTTP side talks to the engine through `Engine.submit` (from the event loop), which returns a `Handle`: an async
iterator of `Output`s, and `Handle.cancel()`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import AsyncIterator, Sequence

import numpy as np

from ..generate import GenerationError, Sampling, candidates, prefill_slice, sample
from ..model import Model
from ..native import MAX_BATCH, NativeSession
from ..tokenizer import TextStream
from .metrics import Metrics

MAX_LOGPROBS = 20  # top logprobs a request may ask for

log = logging.getLogger("ascend_serve.engine")


class EngineClosed(RuntimeError):
    """The engine is stopping or stopped and takes no new requests."""


class ContextExceeded(GenerationError):
    """The prompt plus the tokens asked for do not fit the server's context."""


class EngineFailure(RuntimeError):
    """A request failed inside the engine (the native library refused a step); the message says why."""


@dataclass(frozen=True)
class Params:
    """What a request asks of the engine besides its prompt."""

    sampling: Sampling  # max_new_tokens is the request's max_tokens
    stop: tuple[str, ...] = ()
    logprobs: int | None = None  # None: none; n: the chosen token's logprob and the n most likely alternatives


@dataclass(frozen=True)
class TokenLogprob:
    token: int
    logprob: float
    top: tuple[tuple[int, float], ...]  # (token id, logprob), most likely first
    text_offset: int = 0  # where the token's text starts in the request's text (the characters decoded before it)


@dataclass(frozen=True)
class Output:
    """New text of one request since its last Output (stop strings cut), the tokens that produced it, and on the
    last one the finish reason ("stop": eos or a stop string; "length": max_tokens)."""

    text: str
    tokens: tuple[int, ...]
    logprobs: tuple[TokenLogprob, ...]
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int


class StopMatcher:
    """Finds the earliest stop string in streamed text, across token boundaries. Text that could still be the start
    of a stop string is held back until the next piece decides it."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(stops)
        self._pending = ""

    def feed(self, piece: str) -> tuple[str, bool]:
        """(text that is now safe to send, whether a stop string was found); after a stop, nothing more is sent."""
        self._pending += piece
        if not self._stops:
            text, self._pending = self._pending, ""
            return text, False
        hits = [i for i in (self._pending.find(s) for s in self._stops) if i >= 0]
        if hits:
            text, self._pending = self._pending[: min(hits)], ""
            return text, True
        keep = 0
        for n in range(min(len(self._pending), max(map(len, self._stops)) - 1), 0, -1):
            if any(s.startswith(self._pending[-n:]) for s in self._stops):
                keep = n
                break
        text, self._pending = self._pending[: len(self._pending) - keep], self._pending[len(self._pending) - keep:]
        return text, False

    def flush(self) -> str:
        text, self._pending = self._pending, ""
        return text


def top_candidates(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k largest logits (descending, ties by id) and their ids, as the backend's top-k output gives them."""
    ids = np.argpartition(-logits, k - 1)[:k] if k < logits.size else np.arange(logits.size)
    ids = ids[np.lexsort((ids, -logits[ids]))]
    return logits[ids], ids.astype(np.int32)


def token_logprob(logits: np.ndarray, token: int, n: int, text_offset: int = 0) -> TokenLogprob:
    """log-softmax of the model's logits (before temperature) at `token`, and the n most likely tokens."""
    wide = logits.astype(np.float64)
    peak = wide.max()
    lse = peak + np.log(np.exp(wide - peak).sum())
    top: tuple[tuple[int, float], ...] = ()
    if n:
        values, ids = top_candidates(logits, n)
        top = tuple((int(i), float(v - lse)) for v, i in zip(values.astype(np.float64), ids))
    return TokenLogprob(token, float(wide[token] - lse), top, text_offset)


class Handle:
    """The HTTP side of one request: iterate it (async) for Outputs; cancel() when the client goes away."""

    def __init__(self, engine: "Engine", loop: asyncio.AbstractEventLoop) -> None:
        self._engine = engine
        self._loop = loop
        self._queue: asyncio.Queue[Output | EngineFailure] = asyncio.Queue()
        self.cancelled = False
        self.finished = False

    def _put(self, item: Output | EngineFailure) -> None:  # engine thread
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            pass

    def cancel(self) -> None:
        """Stop generating for this request (from any thread); its slot is freed at the next step."""
        if not self.finished and not self.cancelled:
            self.cancelled = True
            self._engine._wake()

    async def __aiter__(self) -> AsyncIterator[Output]:
        while True:
            item = await self._queue.get()
            if isinstance(item, EngineFailure):
                self.finished = True
                raise item
            if item.finish_reason is not None:
                self.finished = True
            yield item
            if self.finished:
                return


@dataclass(eq=False)
class _Request:
    """Engine-side state of one request."""

    handle: Handle
    prompt_ids: list[int]
    params: Params
    stream: TextStream
    arrival: float
    rng: np.random.Generator
    k: int  # sampling candidates asked of the backend
    matcher: StopMatcher
    stop_ids: frozenset[int]  # special tokens spelled as a stop string: the streamed text never holds them
    session: NativeSession | None = None
    prefilled: int = 0
    token: int = -1  # the last generated token: the next decode step's input
    generated: int = 0
    last_emit: float = 0.0  # when its last token was chosen (0: none yet)

    @property
    def greedy(self) -> bool:
        return self.params.sampling.greedy

    @property
    def decoding(self) -> bool:
        return self.prefilled == len(self.prompt_ids)


class Engine:
    """Continuous batching over one Model: start(), submit() from an asyncio event loop, stop()."""

    def __init__(self, model: Model, max_batch: int = 8, context: int | None = None,
                 metrics: Metrics | None = None) -> None:
        if not 1 <= max_batch <= MAX_BATCH:
            raise GenerationError(f"max batch must be between 1 and {MAX_BATCH}, got {max_batch}")
        self.model = model
        self.max_batch = max_batch
        self.context = model.context_length(context)
        self.metrics = metrics or Metrics()
        self._eos = frozenset(model.eos_ids)
        self._vocab = model.native.vocab
        # prompt tokens per step over all prefilling requests: one backend block while others decode, else a slice
        self._block = model.native.prefill_block
        self._slice = prefill_slice(self._block)
        self._cond = threading.Condition()
        self._waiting: deque[_Request] = deque()
        self._running: list[_Request] = []
        self._free: list[NativeSession] = []  # idle sessions (KV caches of `context` positions), made on demand
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="ascend-serve-engine", daemon=True)

    # --- API side (event loop thread)
    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._stopping

    def submit(self, prompt_ids: Sequence[int], params: Params) -> Handle:
        """Queue a request; raises GenerationError (a bad request: say it to the client) or EngineClosed."""
        params.sampling.check()
        if not prompt_ids:
            raise GenerationError("the prompt is empty (no tokens)")
        bad = [t for t in prompt_ids if not 0 <= t < self._vocab]
        if bad:
            raise GenerationError(f"prompt token id {bad[0]} is outside the vocabulary (0 .. {self._vocab - 1})")
        if params.logprobs is not None and not 0 <= params.logprobs <= MAX_LOGPROBS:
            raise GenerationError(f"top logprobs must be between 0 and {MAX_LOGPROBS}, got {params.logprobs}")
        needed = len(prompt_ids) + params.sampling.max_new_tokens
        if needed > self.context:
            raise ContextExceeded(
                f"this server's context is {self.context} tokens, but {needed} were requested "
                f"({len(prompt_ids)} in the prompt, {params.sampling.max_new_tokens} for the completion)")
        handle = Handle(self, asyncio.get_running_loop())
        request = _Request(handle, list(prompt_ids), params, self.model.tokenizer.stream(), time.perf_counter(),
                           np.random.default_rng(params.sampling.seed), candidates(params.sampling, self._vocab),
                           StopMatcher(params.stop),
                           frozenset(i for stop in params.stop for i in self.model.tokenizer.special_token_ids(stop)))
        with self._cond:
            if self._stopping:
                raise EngineClosed("the server is shutting down")
            self._waiting.append(request)
            self.metrics.waiting.set(len(self._waiting))
            self._cond.notify()
        return handle

    def stop(self, timeout: float = 10.0) -> None:
        """Stop stepping; requests still queued or running get an EngineFailure."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)
        for session in self._free:
            session.close()
        self._free.clear()

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify()

    # --- engine thread
    def _loop(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._stopping and not self._waiting and not self._running:
                        self._cond.wait()
                    if self._stopping:
                        break
                    joining = [self._waiting.popleft()
                               for _ in range(min(len(self._waiting), self.max_batch - len(self._running)))]
                    self.metrics.waiting.set(len(self._waiting))
                self._admit(joining)
                try:
                    self._step()
                except Exception as exc:  # never let one bad step kill the server: fail what was running
                    log.exception("engine step failed")
                    for request in list(self._running):
                        self._fail(request, f"generation failed: {exc}")
        finally:
            with self._cond:
                left = list(self._waiting) + self._running
                self._waiting.clear()
            for request in left:
                self._fail(request, "the server is shutting down")

    def _admit(self, joining: list[_Request]) -> None:
        """Give each joining request a session (reused or new, reset) and a place in the running batch."""
        for request in joining:
            if request.handle.cancelled:
                continue
            try:
                request.session = self._free.pop() if self._free else self.model.session(self.context)
                request.session.reset()
            except Exception as exc:
                self._fail(request, f"cannot allocate a KV cache: {exc}")
                continue
            self._running.append(request)
        self.metrics.running.set(len(self._running))

    def _step(self) -> None:
        for request in [r for r in self._running if r.handle.cancelled]:
            self._release(request)
        decoding = [r for r in self._running if r.decoding]
        prefilling = [r for r in self._running if not r.decoding]
        budget = self._block if decoding else self._slice
        for request in prefilling:
            if budget <= 0:
                break
            # a prompt is cut only at multiples of the backend's block from its start (the rest of it may be
            # shorter), so the backend runs the passes a lone prefill gives it: the same kernels, the same logits
            left = len(request.prompt_ids) - request.prefilled
            chunk = left if left <= budget else budget // self._block * self._block
            if chunk == 0:
                continue  # this step's budget left is below one block: the next step's starts with this request
            budget -= chunk
            try:
                self._prefill(request, chunk)
            except Exception as exc:
                self._fail(request, f"prefill failed: {exc}")
        if decoding:
            self._decode(decoding)
        self.metrics.running.set(len(self._running))

    def _prefill(self, request: _Request, chunk: int) -> None:
        assert request.session is not None
        start = request.prefilled
        ids = request.prompt_ids[start:start + chunk]
        request.prefilled = start + len(ids)
        self.metrics.prompt_tokens.inc(len(ids))
        if not request.decoding:
            request.session.prefill(ids, logits="none")
            return
        if request.params.logprobs is not None:
            logits, argmax = request.session.prefill(ids, logits="last")
            assert logits is not None
            self._advance(request, argmax, logits, None)
        elif request.greedy:
            _, argmax = request.session.prefill(ids, logits="none")
            self._advance(request, argmax, None, None)
        else:
            self._advance(request, -1, None, request.session.forward_topk(ids, request.k))

    def _decode(self, batch: list[_Request]) -> None:
        """One token for every request in `batch`, in one native call."""
        if any(r.params.logprobs is not None for r in batch):
            mode, k = "last", 0
        elif any(not r.greedy for r in batch):
            mode, k = "topk", max(r.k for r in batch if not r.greedy)
        else:
            mode, k = "none", 0
        self.metrics.batch_size.observe(len(batch))
        argmax, values, ids = self.model.native.forward_batch([r.session for r in batch], [r.token for r in batch],
                                                              logits=mode, k=k)
        for i, request in enumerate(batch):
            logits = values[i] if mode == "last" else None
            topk = (values[i, :request.k], ids[i, :request.k]) if mode == "topk" and not request.greedy else None
            try:
                self._advance(request, int(argmax[i]), logits, topk)
            except Exception as exc:  # e.g. non-finite logits for this request: the others go on
                self._fail(request, f"generation failed: {exc}")

    def _advance(self, request: _Request, argmax: int, logits: np.ndarray | None,
                 topk: tuple[np.ndarray, np.ndarray] | None) -> None:
        """Choose the request's next token from this step's output, stream its text, finish it if it is done."""
        sampling = request.params.sampling
        if request.greedy:
            token = argmax
        else:
            if topk is None:
                assert logits is not None
                topk = top_candidates(logits, request.k)
            token = sample(topk[0], topk[1], sampling, request.rng)
        now = time.perf_counter()
        if not request.last_emit:
            self.metrics.ttft.observe(now - request.arrival)
        else:
            self.metrics.itl.observe(now - request.last_emit)
        request.last_emit = now
        if token in self._eos:
            self._finish(request, self._drain(request)[0], (), (), "stop")
            return
        logprob = () if request.params.logprobs is None else \
            (token_logprob(logits, token, request.params.logprobs, request.stream.sent),)  # type: ignore[arg-type]
        request.generated += 1
        request.token = token
        self.metrics.generation_tokens.inc()
        if token in request.stop_ids:  # a stop string spelled like this special token: stop before its text
            self._finish(request, self._drain(request)[0], (token,), logprob, "stop")
            return
        text, stopped = request.matcher.feed(request.stream.step(token))
        if stopped:
            self._finish(request, text, (token,), logprob, "stop")
        elif request.generated >= sampling.max_new_tokens:
            rest, stopped = self._drain(request)
            self._finish(request, text + rest, (token,), logprob, "stop" if stopped else "length")
        else:
            request.handle._put(Output(text, (token,), logprob, None, len(request.prompt_ids), request.generated))

    @staticmethod
    def _drain(request: _Request) -> tuple[str, bool]:
        """At the end of generation: the text the detokenizer still holds, through the stop matcher, then what the
        matcher holds; and whether a stop string was found in it."""
        text, stopped = request.matcher.feed(request.stream.flush())
        return (text, True) if stopped else (text + request.matcher.flush(), False)

    def _finish(self, request: _Request, text: str, tokens: tuple[int, ...], logprobs: tuple[TokenLogprob, ...],
                reason: str) -> None:
        request.handle._put(Output(text, tokens, logprobs, reason, len(request.prompt_ids), request.generated))
        self._release(request)

    def _fail(self, request: _Request, message: str) -> None:
        request.handle._put(EngineFailure(message))
        self._release(request)

    def _release(self, request: _Request) -> None:
        """Take the request out of the batch and give its session back to the idle list."""
        if request in self._running:
            self._running.remove(request)
        if request.session is not None:
            if self._stopping:
                request.session.close()
            else:
                self._free.append(request.session)
            request.session = None
