"""A loaded model: the validated .asw mapping, its tokenizer and chat template, and the native model over the
data region (weights used in place, never copied on the cpu backend). This is the Python API:

    import ascend_super
    model = ascend_super.load("model.asw")
    for piece in model.generate("Why is the sky blue?", max_new_tokens=64):
        print(piece, end="", flush=True)
"""

from __future__ import annotations

import contextlib
import ctypes.util
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from . import format as fmt
from . import hub
from .chat import Message, render
from .generate import GenerationError, Sampling, Stats, generate_ids, prefill_slice
from .native import NativeError, NativeModel, NativeSession
from .tokenizer import TextTokenizer, TokenizerError

BACKENDS = ("auto", "cpu", "aclnn")
DEFAULT_CONTEXT = 4096
MAX_CONTEXT = 1 << 24  # the native library's bound on one session's KV-cache length (asw_session_new)


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run here; says why."""


def cann_present() -> bool:
    """Whether an AscendCL runtime is installed here (what `--backend auto` looks for)."""
    for env, sub in (("ASW_CANN_LIB_DIR", ""), ("ASCEND_HOME_PATH", "lib64")):
        root = os.environ.get(env)
        if root and any((Path(root) / sub / name).is_file() for name in ("libascendcl.so", "libacl_rt.so")):
            return True
    return ctypes.util.find_library("ascendcl") is not None


def resolve_backend(backend: str) -> str:
    """The backend a request names: `auto` is aclnn where CANN is installed, else cpu."""
    if backend not in BACKENDS:
        raise BackendUnavailable(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return "aclnn" if cann_present() else "cpu"
    return backend


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, as the native thread pool counts them)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def _unicode_text(text: str, what: str = "the prompt") -> str:
    """`text`, if every character of it is Unicode text (a lone surrogate, which JSON's \\ud800 escapes and
    surrogateescape can put in a str, is not: the tokenizer cannot take it)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise GenerationError(f"{what} is not valid Unicode: a lone surrogate U+{ord(text[exc.start]):04X} at "
                              f"character {exc.start}") from None
    return text


class Model:
    def __init__(self, path: str | os.PathLike[str], backend: str = "auto", threads: int | None = None,
                 device: int = 0, eager: bool = False, activations: str = "f32",
                 on_open: Callable[[fmt.AswFile], object] | None = None) -> None:
        """`on_open`: called with the validated file as soon as it is open, before any weight is read (the
        console scripts install their bus-error guard there: runtime/busguard.py)."""
        started = time.perf_counter()
        self.backend = resolve_backend(backend)
        cores = usable_cores()
        if threads is not None and not 1 <= threads <= cores:
            raise GenerationError(f"threads must be between 1 and the {cores} cores this process may use, "
                                  f"got {threads}")
        self.threads = threads
        # a local path, or hf:// / ms:// (see hub.py)
        self.asw = hub.open_model_file(path, self.backend, on_open=on_open)
        try:
            manifest = self.asw.manifest
            self.config: dict[str, Any] = manifest["config"]
            try:
                self.tokenizer = TextTokenizer(manifest["tokenizer"])
            except TokenizerError as exc:
                raise fmt.ManifestInvalid(f"{self.asw.path}: manifest {exc}") from None
            self.chat_template: str | None = manifest["chat_template"]
            self.special_tokens: dict[str, Any] = manifest["special_tokens"]
            # the source's generation_config.json, as stored (see generate.unapplied_generation_config)
            self.generation_config: dict[str, Any] = manifest["generation_config"]
            self.eos_ids: list[int] = list(self.config["eos_token_id"])
            # the cpu backend reads the weights in place, every one of them per decode step: 2 MiB pages make that
            # stream faster (runtime/hugepages.py); a device backend copies them once and gains nothing
            self.huge_pages = self.asw.map_weights_huge() if self.backend == "cpu" else None
            try:
                self.native: NativeModel | None = NativeModel(
                    self.asw.data_region(), self.config, self.asw.dtype, self.asw.layout,
                    [(t.name, t.offset, t.nbytes, t.layout, t.shape) for t in self.asw.tensors], self.backend,
                    device_id=device, eager=eager, soc_families=self.asw.requires["soc"], activations=activations)
            except NativeError as exc:  # the library's refusals of the file (a weight, a config value) name it
                if not str(exc).startswith("cannot open model"):
                    raise
                raise NativeError(f"{self.asw.path}: {exc}") from None
        except BaseException:
            self.asw.close()
            raise
        self.load_s = time.perf_counter() - started
        self._idle: dict[int, list[NativeSession]] = {}  # context length -> sessions not in use
        self._pool_lock = threading.Lock()  # guards _idle, _closed and native against a concurrent close()
        self._closed = False

    # --- prompts
    def prompt_ids(self, prompt: str | list[Message], raw: bool = False, system: str | None = None) -> list[int]:
        """Token ids for a prompt: the chat template applied to a user message (or a message list) unless `raw`."""
        if not isinstance(prompt, (str, list, tuple)):
            raise GenerationError(f"a prompt is text or a list of messages ({{\"role\": ..., \"content\": ...}} "
                                  f"maps), not {type(prompt).__name__}")
        if not prompt or isinstance(prompt, str) and not prompt.strip():
            raise GenerationError("the prompt is empty")
        if raw:
            if not isinstance(prompt, str):
                raise GenerationError("a raw prompt must be text, not a message list")
            return self.tokenizer.encode(_unicode_text(prompt), add_special_tokens=True)
        if self.chat_template is None:
            raise GenerationError("this model has no chat template; pass raw=True (--raw) to send the text as is")
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        for n, message in enumerate(messages):  # where in the message, not where in the rendered template
            if isinstance(message, dict) and isinstance(message.get("content"), str):
                _unicode_text(message["content"], "the prompt" if isinstance(prompt, str) else f"message {n}'s content")
        if system is not None:
            messages.insert(0, {"role": "system", "content": _unicode_text(system, "the system message")})
        text = render(self.chat_template, messages, self.special_tokens, add_generation_prompt=True)
        return self.tokenizer.encode(_unicode_text(text), add_special_tokens=False)

    # --- sessions
    def context_length(self, context: int | None) -> int:
        """The KV-cache length for a request: `context`, or the model's own capped at DEFAULT_CONTEXT."""
        if context is None:
            return min(int(self.config["max_position_embeddings"]), DEFAULT_CONTEXT)
        if isinstance(context, bool) or not isinstance(context, int):
            raise GenerationError(f"context must be a whole number of positions, got {context!r}")
        if context < 1:
            raise GenerationError(f"context must be >= 1, got {context}")
        if context > MAX_CONTEXT:
            raise GenerationError(f"context must be at most {MAX_CONTEXT} positions, got {context}")
        return context

    def session(self, context: int | None = None) -> NativeSession:
        """A fresh session with a KV cache of `context` positions (default: the model's, capped at 4096)."""
        length = self.context_length(context)
        with self._pool_lock:  # close() cannot free the native model while a session is being made on it
            if self._closed or self.native is None:
                raise GenerationError("the model is closed")
            return self.native.session(length, self.threads)

    @contextlib.contextmanager
    def _pooled_session(self, context: int | None) -> Iterator[NativeSession]:
        """An idle session of this length (made on first use), reset, returned to the pool afterwards; concurrent
        generations each get their own, so they never share a KV cache."""
        length = self.context_length(context)
        with self._pool_lock:
            idle = self._idle.setdefault(length, [])
            session = idle.pop() if idle else None
        if session is None:
            session = self.session(length)
        session.reset()
        try:
            yield session
        finally:
            with self._pool_lock:
                if self._closed:
                    session.close()
                else:
                    self._idle[length].append(session)

    # --- generation
    def generate_tokens(self, prompt_ids: Sequence[int], sampling: Sampling = Sampling(),
                        context: int | None = None, stats: Stats | None = None) -> Iterator[int]:
        """Yield generated token ids; `stats` (a Stats) is filled in as generation goes."""
        stats = stats if stats is not None else Stats()
        if not isinstance(stats, Stats):
            raise GenerationError(f"stats must be an ascend_super.Stats, not {type(stats).__name__}")
        stats.load_s = self.load_s
        stats.huge_pages = self.huge_pages
        with self._pooled_session(context) as session:
            yield from generate_ids(session, prompt_ids, sampling, self.eos_ids, stats, self.native.vocab,
                                    self.native.lookahead, prefill_slice(self.native.prefill_block))

    def generate(self, prompt: str | list[Message], *, raw: bool = False, system: str | None = None,
                 max_new_tokens: int = 256, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                 seed: int | None = None, context: int | None = None, stats: Stats | None = None) -> Iterator[str]:
        """Yield text pieces as they are generated (greedy unless temperature > 0)."""
        sampling = Sampling(max_new_tokens, temperature, top_k, top_p, seed)
        yield from self.text_pieces(self.generate_tokens(self.prompt_ids(prompt, raw, system), sampling, context,
                                                         stats))

    def text_pieces(self, tokens: Iterator[int]) -> Iterator[str]:
        """The text each generated token completes (DecodeStream: partial UTF-8 is held back), empty ones skipped,
        and at the end whatever is still held back (an unfinished character as U+FFFD, as tokenizer.decode gives)."""
        stream = self.tokenizer.stream()
        for token in tokens:
            piece = stream.step(token)
            if piece:
                yield piece
        rest = stream.flush()
        if rest:
            yield rest

    def close(self) -> None:
        """Free the native model and its sessions, then unmap the file and release its descriptor (at once, unless
        arrays from the mapping are still referenced elsewhere: then when the last of them goes)."""
        with self._pool_lock:
            if self._closed:
                return
            self._closed = True
            self._free_native()
        self.asw.close()

    def _free_native(self) -> None:
        """Close idle sessions and the native model (which closes sessions still in use) and drop every reference
        to them, so that nothing here keeps a view of the mapping alive (a helper: no local outlives it)."""
        for sessions in self._idle.values():
            for session in sessions:
                session.close()
        self._idle.clear()
        if self.native is not None:
            self.native.close()
            self.native = None

    def __enter__(self) -> "Model":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load(path: str | os.PathLike[str], backend: str = "auto", threads: int | None = None, device: int = 0,
         eager: bool = False, activations: str = "f32") -> Model:
    """Open a .asw file for generation: a local path or hf://OWNER/REPO/FILE.asw[@REV] / ms://... (downloaded
    into the hub's cache, checked once); `backend` auto|cpu|aclnn, `threads` None = all cores; aclnn: `device` id,
    `eager` = op-by-op decode instead of graph replay; cpu: `activations` "f32" (default, matches transformers'
    f32 reference) or "bf16" (bf16 files: every matmul input rounded to bf16, faster prefill on AVX512_BF16)."""
    return Model(path, backend, threads, device, eager, activations)
