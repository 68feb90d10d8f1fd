"""The generation loop: prefill the prompt, then decode one token at a time until an eos id or the token budget,
yielding each token with the text it completed, and timing every phase.

Greedy decoding asks the native library for the argmax only (no logits cross the ABI); sampling asks for the last
logits and draws with temperature / top-k / top-p from a seeded numpy generator.
"""

from __future__ import annotations

import math
import numbers
import time
from dataclasses import asdict, dataclass, field
from typing import Iterator, Protocol, Sequence

import numpy as np


PREFILL_SLICE = 256  # prompt tokens per native call (the backend batches them in its own chunks)


class GenerationError(ValueError):
    """Bad generation settings or a request that does not fit the session (e.g. context exceeded)."""


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0
    seed: int | None = None

    def check(self) -> None:
        for name in ("max_new_tokens", "top_k", "seed"):
            value = getattr(self, name)
            if not (value is None and name == "seed" or isinstance(value, numbers.Integral)
                    and not isinstance(value, bool)):
                raise GenerationError(f"{name} must be a whole number, got {value!r}")
        for name in ("temperature", "top_p"):
            value = getattr(self, name)
            if not isinstance(value, numbers.Real) or isinstance(value, bool):
                raise GenerationError(f"{name} must be a number, got {value!r}")
        if self.max_new_tokens < 1:
            raise GenerationError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not (0 <= self.temperature < math.inf):
            raise GenerationError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise GenerationError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise GenerationError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.seed is not None and self.seed < 0:
            raise GenerationError(f"seed must be >= 0, got {self.seed}")
        if self.greedy and (self.top_k or self.top_p < 1 or self.seed is not None):
            raise GenerationError("top_k, top_p and seed only apply when sampling: set temperature > 0")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class Stats:
    load_s: float = 0.0
    prompt_tokens: int = 0
    ttft_s: float = 0.0  # prefill start -> first generated token known
    prefill_tok_s: float = 0.0
    decode_tok_s: float = 0.0  # decode steps / time from the first token to the end
    generated_tokens: int = 0
    stop_reason: str = ""  # "eos" | "length"
    generated_token_ids: list[int] = field(default_factory=list)

    def line(self) -> str:
        """One line of stats; '-' for what was not measured (e.g. TTFT when interrupted during prefill)."""
        return (f"load {self.load_s:.2f} s | prompt {self.prompt_tokens} tok | "
                f"TTFT {f'{self.ttft_s * 1000:.0f} ms' if self.ttft_s else '-'} | "
                f"prefill {f'{self.prefill_tok_s:.1f} tok/s' if self.prefill_tok_s else '-'} | "
                f"decode {f'{self.decode_tok_s:.1f} tok/s' if self.decode_tok_s else '-'} | "
                f"generated {self.generated_tokens} tok ({self.stop_reason})")

    def as_dict(self) -> dict[str, object]:
        data = asdict(self)
        data.pop("generated_token_ids")
        return data


class Session(Protocol):
    """What the loop needs of a native session (runtime.native.NativeSession)."""

    @property
    def pos(self) -> int: ...
    @property
    def max_len(self) -> int: ...
    def prefill(self, tokens: Sequence[int], logits: str = "last") -> tuple[np.ndarray | None, int]: ...
    def decode(self, token: int, logits: str = "last") -> tuple[np.ndarray | None, int]: ...


def sample(logits: np.ndarray, sampling: Sampling, rng: np.random.Generator) -> int:
    """One token from `logits` with temperature, then top-k, then top-p (nucleus) filtering."""
    scaled = logits.astype(np.float64) / sampling.temperature
    order = np.argsort(-scaled, kind="stable")
    if sampling.top_k:
        order = order[: sampling.top_k]
    kept = scaled[order]
    probs = np.exp(kept - kept[0])
    probs /= probs.sum()
    if sampling.top_p < 1.0:
        cutoff = int(np.searchsorted(np.cumsum(probs), sampling.top_p)) + 1  # smallest prefix with mass >= top_p
        probs = probs[:cutoff] / probs[:cutoff].sum()
        order = order[:cutoff]
    return int(order[rng.choice(len(order), p=probs)])


def generate_ids(session: Session, prompt_ids: Sequence[int], sampling: Sampling, eos_ids: Sequence[int],
                 stats: Stats) -> Iterator[int]:
    """Yield generated token ids (the eos token that stops generation is not yielded). Fills `stats`."""
    sampling.check()
    if not prompt_ids:
        raise GenerationError("the prompt is empty (no tokens)")
    needed = session.pos + len(prompt_ids) + sampling.max_new_tokens
    if needed > session.max_len:
        raise GenerationError(
            f"prompt ({len(prompt_ids)} tokens) + max_new_tokens ({sampling.max_new_tokens}) = {needed} exceeds the "
            f"context of {session.max_len} tokens this session was made for; raise the context or lower "
            "max_new_tokens (--context / --max-new-tokens)"
        )
    rng = np.random.default_rng(sampling.seed)
    mode = "none" if sampling.greedy else "last"
    stats.prompt_tokens = len(prompt_ids)
    stats.generated_token_ids = []
    eos = set(eos_ids)

    started = time.perf_counter()
    ids = list(prompt_ids)
    for start in range(0, len(ids) - PREFILL_SLICE, PREFILL_SLICE):  # Python sees Ctrl-C between slices
        session.prefill(ids[start:start + PREFILL_SLICE], logits="none")
    logits, token = session.prefill(ids[(len(ids) - 1) // PREFILL_SLICE * PREFILL_SLICE:], logits=mode)
    if not sampling.greedy:
        token = sample(logits, sampling, rng)
    first = time.perf_counter()
    stats.ttft_s = first - started
    stats.prefill_tok_s = len(prompt_ids) / max(stats.ttft_s, 1e-9)
    stats.stop_reason = "length"
    decode_calls = 0
    try:
        while True:
            if token in eos:
                stats.stop_reason = "eos"
                return
            stats.generated_token_ids.append(token)
            stats.generated_tokens = len(stats.generated_token_ids)
            yield token
            if stats.generated_tokens >= sampling.max_new_tokens:
                return
            logits, token = session.decode(token, logits=mode)
            decode_calls += 1
            if not sampling.greedy:
                token = sample(logits, sampling, rng)
    finally:
        elapsed = time.perf_counter() - first
        stats.decode_tok_s = decode_calls / elapsed if decode_calls and elapsed > 0 else 0.0
