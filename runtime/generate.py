"""The generation loop: prefill the prompt, then decode one token at a time until an eos id or the token budget,
yielding each token with the text it completed, and timing every phase.

Greedy decoding never copies logits: the backend keeps each step's argmax as the next step's input (on the device
for aclnn) and the host only reads the token back to stream it and check the stop conditions. On a backend that
runs steps asynchronously, step t+1 is queued before token t is read, so the device never waits for the host; a stop
is then seen one step late and the extra step is discarded. Sampling asks the backend for the k largest logits
(k = top_k, or SAMPLE_CANDIDATES when only temperature / top_p are set) and draws from those with a seeded numpy
generator.
"""

from __future__ import annotations

import math
import numbers
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator, Protocol, Sequence

import numpy as np

from .hugepages import HugePages

PREFILL_SLICE = 256  # prompt tokens per native call, at least (the backend batches them in its own blocks)
SAMPLE_CANDIDATES = 256  # logits the backend returns for sampling when top_k is not set


def prefill_slice(block: int) -> int:
    """Prompt tokens per native prefill call: PREFILL_SLICE rounded up to a multiple of the backend's prefill block
    (NativeModel.prefill_block), so that cutting a prompt into slices leaves the backend's passes, and so its
    logits, as they are for the whole prompt."""
    return -(-PREFILL_SLICE // block) * block


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


def _positive(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def _other_than(neutral: float) -> Callable[[object], bool]:
    return lambda value: value is not None and value != neutral


def _below_one(value: object) -> bool:
    return _positive(value) and value < 1  # type: ignore[operator]


def _set(value: object) -> bool:  # a generation mode or processor switched on by any value but None
    return value is not None


def _given(value: object) -> bool:
    return value is not None and value is not False and value != [] and value != {}


# When generate() applies a key of UNAPPLIED_GENERATION_KEYS: always, only when it samples (the warpers), or only
# when it does not (contrastive search).
ALWAYS, SAMPLING, GREEDY = "always", "sampling", "greedy"
# generation_config.json keys that change which tokens transformers 5.24's generate() picks (its logits processors,
# beams, contrastive search, stop strings, ...), none of which this runtime implements: key -> (whether a value has an
# effect there, when generate() applies it)
UNAPPLIED_GENERATION_KEYS: dict[str, tuple[Callable[[object], bool], str]] = {
    "repetition_penalty": (_other_than(1.0), ALWAYS), "encoder_repetition_penalty": (_other_than(1.0), ALWAYS),
    "no_repeat_ngram_size": (_positive, ALWAYS), "encoder_no_repeat_ngram_size": (_positive, ALWAYS),
    "bad_words_ids": (_given, ALWAYS), "sequence_bias": (_given, ALWAYS), "suppress_tokens": (_given, ALWAYS),
    "begin_suppress_tokens": (_given, ALWAYS), "forced_bos_token_id": (_set, ALWAYS),
    "forced_eos_token_id": (_set, ALWAYS), "min_length": (_positive, ALWAYS), "min_new_tokens": (_positive, ALWAYS),
    "exponential_decay_length_penalty": (_set, ALWAYS), "num_beams": (_other_than(1), ALWAYS),
    "guidance_scale": (_other_than(1.0), ALWAYS), "stop_strings": (_given, ALWAYS),
    "watermarking_config": (_set, ALWAYS), "dola_layers": (_set, ALWAYS), "token_healing": (bool, ALWAYS),
    "constraints": (_set, ALWAYS), "force_words_ids": (_set, ALWAYS),
    "penalty_alpha": (_positive, GREEDY),
    "min_p": (_positive, SAMPLING), "typical_p": (_below_one, SAMPLING), "epsilon_cutoff": (_below_one, SAMPLING),
    "eta_cutoff": (_below_one, SAMPLING), "top_h": (_set, SAMPLING),
}
# what generate() samples with when do_sample is set and the file leaves a key out (GenerationConfig's defaults)
_SAMPLING_DEFAULTS: dict[str, float] = {"temperature": 1.0, "top_k": 50, "top_p": 1.0}
# the generation keys this runtime reads or notes; a checkpoint without generation_config.json has transformers take
# them from config.json (GenerationConfig.from_model_config), so the converter does too
GENERATION_KEYS: tuple[str, ...] = ("do_sample", *_SAMPLING_DEFAULTS, "max_length", "max_new_tokens",
                                    *UNAPPLIED_GENERATION_KEYS)
_FLAG_OFF: dict[str, float] = {"top_k": 0, "top_p": 1.0}  # ascend-run's values that turn a cut off


def unimplemented_generation_keys(generation: dict[str, object], samples: bool) -> list[str]:
    """`key=value` for each key of UNAPPLIED_GENERATION_KEYS the file sets to a value with an effect in a
    generate() that samples or not (`samples`)."""
    return [f"{key}={generation[key]!r}" for key, (effective, when) in UNAPPLIED_GENERATION_KEYS.items()
            if key in generation and effective(generation[key]) and when != (GREEDY if samples else SAMPLING)]


def _generation_note(what: list[str]) -> str | None:
    return None if not what else (f"the model file's generation_config asks for {'; and '.join(what)}: "
                                  "transformers' generate() would pick other tokens")


def unapplied_generation_config(generation: dict[str, object], sampling: Sampling) -> str | None:
    """One line saying what the model file's generation_config asks of decoding that this run does not do, against
    generate() with the file's settings and this run's choice of sampling or not (where the file samples and this
    run is greedy: the ascend-run flags that sample as generate() would), or None when there is nothing."""
    parts = []
    file_samples = generation.get("do_sample") is True
    if file_samples and sampling.greedy:
        asked = {key: default if generation.get(key) is None else generation[key]
                 for key, default in _SAMPLING_DEFAULTS.items()}
        flags = " ".join(f"--{key.replace('_', '-')} {value}" for key, value in asked.items()
                         if key not in _FLAG_OFF or value != _FLAG_OFF[key])
        parts.append(f"sampling (do_sample=True; generate() then samples with "
                     f"{', '.join(f'{k}={v!r}' for k, v in asked.items())}) where this run is greedy (sample as it "
                     f"asks with {flags})")
    unapplied = unimplemented_generation_keys(generation, samples=file_samples or not sampling.greedy)
    if unapplied:
        parts.append(f"{', '.join(unapplied)}, which this runtime does not implement")
    return _generation_note(parts)


def server_generation_note(generation: dict[str, object]) -> str | None:
    """ascend-serve's line: the keys of UNAPPLIED_GENERATION_KEYS the file sets with an effect on sampled requests
    (each request brings its own temperature, top_p and seed), or None."""
    unapplied = unimplemented_generation_keys(generation, samples=True)
    return _generation_note([f"{', '.join(unapplied)}, which this server does not implement"] if unapplied else [])


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
    huge_pages: HugePages | None = None  # what load did about 2 MiB pages (cpu backend on Linux), None: nothing

    def line(self) -> str:
        """One line of stats; '-' for what was not measured (e.g. TTFT when interrupted during prefill)."""
        reread = f" (incl. {self.huge_pages.line()})" if self.huge_pages and self.huge_pages.reread else ""
        return (f"load {self.load_s:.2f} s{reread} | prompt {self.prompt_tokens} tok | "
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
    def forward_topk(self, tokens: Sequence[int], k: int) -> tuple[np.ndarray, np.ndarray]: ...
    def enqueue(self) -> None: ...
    def read(self) -> int: ...
    def discard(self) -> None: ...


def sample(values: np.ndarray, ids: np.ndarray, sampling: Sampling, rng: np.random.Generator) -> int:
    """One token from candidate logits `values` (descending) with ids `ids`: temperature, then top-k, then top-p
    (nucleus) filtering."""
    if not np.all(np.isfinite(values)):
        raise GenerationError("the model produced non-finite logits")
    with np.errstate(over="ignore"):  # a tiny temperature sends every logit but the largest to -inf: greedy
        scaled = (values.astype(np.float64) - np.max(values)) / sampling.temperature
    order = np.argsort(-scaled, kind="stable")  # already descending from the backend; stable keeps ties by id
    if sampling.top_k:
        order = order[: sampling.top_k]
    kept = scaled[order]
    probs = np.exp(kept - kept[0])
    probs /= probs.sum()
    if sampling.top_p < 1.0:
        cutoff = int(np.searchsorted(np.cumsum(probs), sampling.top_p)) + 1  # smallest prefix with mass >= top_p
        probs = probs[:cutoff] / probs[:cutoff].sum()
        order = order[:cutoff]
    return int(ids[order[rng.choice(len(order), p=probs)]])


def candidates(sampling: Sampling, vocab: int) -> int:
    """How many top logits the backend returns per sampled step."""
    return min(sampling.top_k or SAMPLE_CANDIDATES, vocab)


def generate_ids(session: Session, prompt_ids: Sequence[int], sampling: Sampling, eos_ids: Sequence[int],
                 stats: Stats, vocab: int, lookahead: int = 0, slice_tokens: int = PREFILL_SLICE) -> Iterator[int]:
    """Yield generated token ids (the eos token that stops generation is not yielded). Fills `stats`.
    `lookahead`: greedy steps queued ahead of the one being read (the backend's NativeModel.lookahead);
    `slice_tokens`: prompt tokens per prefill call, a multiple of the backend's prefill block (prefill_slice)."""
    sampling.check()
    prompt_ids = list(prompt_ids)  # any sequence: a numpy array has no single truth value
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
    k = candidates(sampling, vocab)
    stats.prompt_tokens = len(prompt_ids)
    stats.generated_token_ids = []
    eos = set(eos_ids)

    started = time.perf_counter()
    ids = list(prompt_ids)
    last_slice = (len(ids) - 1) // slice_tokens * slice_tokens
    for start in range(0, last_slice, slice_tokens):  # Python sees Ctrl-C between slices
        session.prefill(ids[start:start + slice_tokens], logits="none")
    if sampling.greedy:
        _, token = session.prefill(ids[last_slice:], logits="none")
    else:
        token = sample(*session.forward_topk(ids[last_slice:], k), sampling, rng)
    first = time.perf_counter()
    stats.ttft_s = first - started
    stats.prefill_tok_s = len(prompt_ids) / max(stats.ttft_s, 1e-9)
    stats.stop_reason = "length"
    decode_steps = 0
    remaining = sampling.max_new_tokens - 1  # decode steps that may still be needed
    queued = 0
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
            if sampling.greedy:
                # the step to read next, plus `lookahead` more, so the device works while the host reads
                while remaining and queued < 1 + lookahead:
                    session.enqueue()
                    remaining -= 1
                    queued += 1
                token = session.read()
                queued -= 1
            else:
                token = sample(*session.forward_topk([token], k), sampling, rng)
                remaining -= 1
            decode_steps += 1
    finally:
        if queued:
            session.discard()  # steps queued past a stop: their tokens are dropped and their positions given back
        elapsed = time.perf_counter() - first
        stats.decode_tok_s = decode_steps / elapsed if decode_steps and elapsed > 0 else 0.0
