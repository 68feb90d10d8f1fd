"""One timed greedy generation by one engine, in this process; bench/side_by_side.py starts one per run.

    python bench/run_engine.py ENGINE MODEL --prompt-ids FILE.json --new N --threads T [--paired-probe LIB --pairs P]
                               [--activations f32|bf16]
    python bench/run_engine.py ENGINE MODEL --prompt-ids FILE.json --new N --threads T --alternate-with ENGINE2 MODEL2

ENGINE is one of:
  ours          ascend_super.load(MODEL.asw, backend="cpu", threads=T, activations=--activations [f32]);
                session.prefill(prompt, logits="none")
                returns the first token (the argmax stays in the library), then N session.decode steps.
  llama.cpp     llama-cpp-python's low-level API (the C API through ctypes) on MODEL.gguf: n_threads =
                n_threads_batch = T, n_batch 2048 / n_ubatch 512 (llama-bench's defaults), everything else
                llama.cpp's default context parameters (flash attention "auto", f16 KV cache). The prompt is one
                llama_batch_get_one per n_batch tokens; each token comes from a greedy sampler
                (llama_sampler_init_greedy: the argmax); then N one-token llama_decode steps. The loop never looks
                at end-of-generation tokens, so exactly N tokens are decoded whatever the model emits.
  transformers  AutoModelForCausalLM (bf16, torch.set_num_threads(T), inference_mode, the default attention); MODEL
                is a checkpoint folder, or a .gguf that transformers dequantizes; a manual greedy loop on a
                DynamicCache: one forward over the prompt (logits_to_keep=1), then N one-token forwards.
Model files are read from 2 MiB pages where the system allows: ours asks for them at load (runtime/hugepages.py),
and before llama.cpp loads a GGUF this script leaves that file's page cache in 2 MiB folios the same way (untimed),
so that llama.cpp's own mapping gets 2 MiB pages too; both report the share of their mapping that got them
(huge_page_share). Every engine first runs an untimed warm-up (16 prompt tokens and 4 decode steps: every weight
page is touched and the thread pools are up), then forgets it (KV cleared) and runs the timed generation on the
prompt ids from FILE (a JSON list of ints: the same file for every engine).

Timed: prefill = from the call that receives the prompt until the first new token id is known (this is also the
time to first token, counted from a loaded model); decode = the N steps after it, each fed the previous token.
Prints one JSON object on stdout: engine, prefill_s, decode_s, prompt and new token counts, the generated token
ids, load_s, and for llama.cpp its own llama_perf_context counters as a cross-check.

Paired probe (--paired-probe, ours and llama.cpp): after the timed generation, untimed for it, P more decode steps
each between two reps of the memory-bandwidth probe (bench/bandwidth.c built as a library, loaded into this
process, the same thread count, _common.PROBE_MIB per rep): rep, step, rep, step, ..., rep. On a shared machine whose
bandwidth moves by 2x within seconds, a step and the reps on either side of it (tens of milliseconds apart) see the
same machine; a probe minutes away does not. Adds "pairs": {"step_s": [P], "probe_gbs": [P + 1]} to the JSON.

Alternated (--alternate-with, two of ours and llama.cpp: instead of the timed generation): both engines loaded in
this process, each warmed up and then fed the prompt, then N decode steps of each in the order A B B A A B ..., every
step after GAP_S seconds idle (the worker threads of the engine that stepped last have gone to sleep, so they do not
spin on the cores the other engine's step needs; both then wake their threads for every step alike). A step of one
engine always has a step of the other next to it, so their ratio compares the same seconds of the machine, which runs
in separate processes cannot. Prints one JSON object: engine, model, twin_engine, twin_model, "step_s" and "tokens"
(one list per engine, in that order), "prefill_s" (the two prefills, one after the other: informational), "extra".
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

WARMUP_PROMPT = 16
WARMUP_NEW = 4


@dataclass
class Pairing:
    """What --paired-probe asks for: bench/bandwidth.c's library, its threads, and how many paired steps."""

    library: Path
    threads: int
    pairs: int


class PairedProbe:
    """bench/bandwidth.c's library: one timed streaming read of its buffer by `threads` threads per rep()."""

    def __init__(self, library: Path, threads: int) -> None:
        import ctypes

        self.lib = ctypes.CDLL(str(library))
        self.lib.bw_open.restype = ctypes.c_void_p
        self.lib.bw_open.argtypes = [ctypes.c_int, ctypes.c_long]
        self.lib.bw_rep.restype = ctypes.c_double
        self.lib.bw_rep.argtypes = [ctypes.c_void_p]
        self.lib.bw_bytes.restype = ctypes.c_size_t
        self.lib.bw_bytes.argtypes = [ctypes.c_void_p]
        self.lib.bw_close.argtypes = [ctypes.c_void_p]
        from _common import PROBE_MIB  # this script's folder is on sys.path

        self.probe = self.lib.bw_open(threads, PROBE_MIB)
        if not self.probe:
            raise SystemExit(f"the paired bandwidth probe could not start ({library})")
        self.rep()  # waits for the readers' first touch of the buffer, then one untimed-for-the-result rep

    def rep(self) -> float:
        """GB/s of one rep."""
        return self.lib.bw_bytes(self.probe) / self.lib.bw_rep(self.probe) / 1e9

    def close(self) -> None:
        self.lib.bw_close(self.probe)


def paired_steps(pairing: Pairing, step: Callable[[int], int], token: int) -> dict[str, list[float]]:
    """rep, step, rep, ..., step, rep: each step's seconds and every rep's GB/s (one more rep than steps). The probe
    (its buffer, its threads) exists only for this, after the timed generation."""
    probe = PairedProbe(pairing.library, pairing.threads)
    try:
        step_s, probe_gbs = [], [probe.rep()]
        for _ in range(pairing.pairs):
            started = time.perf_counter()
            token = step(token)
            step_s.append(time.perf_counter() - started)
            probe_gbs.append(probe.rep())
    finally:
        probe.close()
    return {"step_s": step_s, "probe_gbs": probe_gbs}


class Timed:
    """A greedy generation split into its prefill (prompt in, first token out) and decode (N more tokens)."""

    def __init__(self) -> None:
        self.prefill_s = 0.0
        self.decode_s = 0.0
        self.tokens: list[int] = []

    def run(self, prefill: Callable[[list[int]], int], step: Callable[[int], int], prompt: list[int],
            new: int) -> "Timed":
        started = time.perf_counter()
        token = prefill(prompt)
        prefilled = time.perf_counter()
        tokens = [token]
        for _ in range(new):
            token = step(token)
            tokens.append(token)
        done = time.perf_counter()
        self.prefill_s, self.decode_s, self.tokens = prefilled - started, done - prefilled, tokens
        return self


class Opened:
    """An engine loaded in this process: greedy prefill and decode steps on one session, and what to report."""

    def __init__(self, load_s: float, prefill: Callable[[list[int]], int], step: Callable[[int], int],
                 reset: Callable[[], None], extra: Callable[[], dict[str, Any]], close: Callable[[], None]) -> None:
        self.load_s, self.prefill, self.step, self.reset, self.extra, self.close = \
            load_s, prefill, step, reset, extra, close

    def warm_up(self, prompt: list[int]) -> None:
        """Untimed: every weight page touched, the thread pools up; then the session forgotten (KV cleared)."""
        Timed().run(self.prefill, self.step, prompt[:WARMUP_PROMPT], WARMUP_NEW)
        self.reset()


def open_ours(model_path: Path, context: int, threads: int, activations: str = "f32") -> Opened:
    import ascend_super
    from ascend_super.runtime.hugepages import file_pmd_share
    from ascend_super.runtime.native import kernel_name

    started = time.perf_counter()
    model = ascend_super.load(model_path, backend="cpu", threads=threads, activations=activations)
    session = model.session(context)
    load_s = time.perf_counter() - started

    def prefill(ids: list[int]) -> int:
        return session.prefill(ids, logits="none")[1]

    def step(token: int) -> int:
        return session.decode(token, logits="none")[1]

    def extra() -> dict[str, Any]:
        return {"kernels": kernel_name(), "describe": model.native.describe(),
                "huge_page_share": file_pmd_share(model_path)}

    def close() -> None:
        session.close()
        model.close()

    return Opened(load_s, prefill, step, session.reset, extra, close)


def open_llama_cpp(model_path: Path, context: int, threads: int) -> Opened:
    import ctypes

    import llama_cpp as L

    quiet = L.llama_log_callback(lambda level, text, data: None)  # referenced until the end: C keeps calling it
    L.llama_log_set(quiet, ctypes.c_void_p(0))
    L.llama_backend_init()
    from ascend_super.runtime.hugepages import cache_in_huge_pages, file_pmd_share

    cache_in_huge_pages(model_path)  # the page cache in 2 MiB folios, as our runtime leaves its own file (untimed)
    started = time.perf_counter()
    mparams = L.llama_model_default_params()
    model = L.llama_model_load_from_file(str(model_path).encode(), mparams)
    if not model:
        raise SystemExit(f"llama.cpp could not load {model_path}")
    cparams = L.llama_context_default_params()
    cparams.n_ctx = context + 8
    cparams.n_batch = 2048
    cparams.n_ubatch = 512
    cparams.n_threads = threads
    cparams.n_threads_batch = threads
    cparams.no_perf = False
    ctx = L.llama_init_from_model(model, cparams)
    if not ctx:
        raise SystemExit(f"llama.cpp could not create a context for {model_path}")
    sampler = L.llama_sampler_init_greedy()
    load_s = time.perf_counter() - started
    n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(model))

    def decode(ids: list[int]) -> int:
        for start in range(0, len(ids), cparams.n_batch):
            chunk = ids[start:start + cparams.n_batch]
            array = (L.llama_token * len(chunk))(*chunk)
            rc = L.llama_decode(ctx, L.llama_batch_get_one(array, len(chunk)))
            if rc != 0:
                raise SystemExit(f"llama_decode failed ({rc}) on {model_path}")
        return int(L.llama_sampler_sample(sampler, ctx, -1))

    def step(token: int) -> int:
        return decode([token])

    def reset() -> None:
        L.llama_memory_clear(L.llama_get_memory(ctx), True)
        L.llama_perf_context_reset(ctx)

    def extra() -> dict[str, Any]:
        perf = L.llama_perf_context(ctx)
        return {
            "perf_prompt_ms": perf.t_p_eval_ms, "perf_prompt_tokens": perf.n_p_eval,
            "perf_eval_ms": perf.t_eval_ms, "perf_eval_tokens": perf.n_eval,
            "flash_attn_type": int(cparams.flash_attn_type), "n_vocab": int(n_vocab),
            "system_info": L.llama_print_system_info().decode(errors="replace").strip(),
            "version": getattr(L, "__version__", "?"), "huge_page_share": file_pmd_share(model_path),
        }

    def close() -> None:
        nonlocal quiet
        L.llama_sampler_free(sampler)
        L.llama_free(ctx)
        L.llama_model_free(model)
        del quiet

    return Opened(load_s, decode, step, reset, extra, close)


OPENERS: dict[str, Callable[..., Opened]] = {"ours": open_ours, "llama.cpp": open_llama_cpp}


def run_opened(opened: Opened, prompt: list[int], new: int, pairing: Pairing | None = None) -> dict[str, Any]:
    """Warm-up, then the timed generation (and the paired steps) on an engine opened for it; closes it."""
    try:
        opened.warm_up(prompt)
        timed = Timed().run(opened.prefill, opened.step, prompt, new)
        extra = opened.extra()  # llama.cpp's perf counters cover the timed generation only
        if pairing is not None:
            extra["pairs"] = paired_steps(pairing, opened.step, timed.tokens[-1])
    finally:
        opened.close()
    return {"load_s": opened.load_s, "timed": timed, "extra": extra}


def run_transformers(model_path: Path, prompt: list[int], new: int, threads: int) -> dict[str, Any]:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, DynamicCache

    torch.set_num_threads(threads)
    started = time.perf_counter()
    if model_path.suffix == ".gguf":
        model = AutoModelForCausalLM.from_pretrained(model_path.parent, gguf_file=model_path.name,
                                                     dtype=torch.bfloat16)
    else:
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.bfloat16)
    model.eval()
    load_s = time.perf_counter() - started
    state: dict[str, Any] = {}
    # transformers 5.x renamed forward(past_key_values=) to forward(cache=)
    cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    def forward(ids: list[int], **kw: Any) -> int:
        kw[cache_kw] = state["cache"]
        out = model(input_ids=torch.tensor([ids], dtype=torch.long), use_cache=True, **kw)
        return int(out.logits[0, -1].argmax())

    def prefill(ids: list[int]) -> int:
        state["cache"] = DynamicCache(config=model.config)
        return forward(ids, logits_to_keep=1)

    def step(token: int) -> int:
        return forward([token])

    with torch.inference_mode():
        Timed().run(prefill, step, prompt[:WARMUP_PROMPT], WARMUP_NEW)
        timed = Timed().run(prefill, step, prompt, new)
    extra = {"torch": torch.__version__, "transformers": transformers.__version__,
             "attn": getattr(model.config, "_attn_implementation", "?")}
    return {"load_s": load_s, "timed": timed, "extra": extra}


PAIRED = ("ours", "llama.cpp")  # the engines that take --paired-probe, and --alternate-with
PAIRS = 24  # paired decode steps per run (side_by_side's default too)
GAP_S = 0.01  # idle time before each alternated step: both engines' worker threads have stopped spinning by then


def alternate(engines: list[Opened], prompt: list[int], new: int, gap_s: float = GAP_S,
              clock: Callable[[], float] = time.perf_counter,
              sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """Two engines in one process, their decode steps alternated A B B A A B ... after each engine's prefill of the
    same prompt: every step of one has a step of the other next to it, so both see the same machine (on a shared VM
    whose bandwidth moves by 2x within seconds, runs in separate processes minutes apart do not). Every step starts
    after `gap_s` idle, so that neither engine's worker threads still spin on the cores the other steps on. Returns
    per engine its prefill seconds, each step's seconds and its tokens (the first is the prefill's)."""
    for engine in engines:
        engine.warm_up(prompt)
    prefill_s, tokens = [], []
    for engine in engines:
        started = clock()
        tokens.append([engine.prefill(prompt)])
        prefill_s.append(clock() - started)
    step_s: list[list[float]] = [[] for _ in engines]
    for i in range(new):
        for k in (0, 1) if i % 2 == 0 else (1, 0):
            sleep(gap_s)
            started = clock()
            tokens[k].append(engines[k].step(tokens[k][-1]))
            step_s[k].append(clock() - started)
    return {"prefill_s": prefill_s, "step_s": step_s, "tokens": tokens, "gap_s": gap_s}


def run_alternated(specs: list[tuple[str, Path]], prompt: list[int], new: int, threads: int) -> dict[str, Any]:
    """`alternate` on the engines of `specs` ((ENGINE, MODEL) each), opened one after the other in this process."""
    opened: list[Opened] = []
    try:
        for kind, model in specs:
            opened.append(OPENERS[kind](model, len(prompt) + new + 8, threads))
        result = alternate(opened, prompt, new)
        result["extra"] = [engine.extra() for engine in opened]
    finally:
        for engine in opened:
            engine.close()
    return result


def main() -> None:
    engines = sorted([*OPENERS, "transformers"])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("engine", choices=engines)
    parser.add_argument("model", type=Path)
    parser.add_argument("--prompt-ids", type=Path, required=True)
    parser.add_argument("--new", type=int, required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--paired-probe", type=Path, metavar="LIB", help="bench/bandwidth.c built as a library")
    parser.add_argument("--pairs", type=int, default=PAIRS, help=f"decode steps between probe reps [{PAIRS}]")
    parser.add_argument("--activations", choices=["f32", "bf16"], default="f32", help="ours: matmul inputs [f32]")
    parser.add_argument("--alternate-with", nargs=2, metavar=("ENGINE", "MODEL"),
                        help="decode steps alternated with this engine's in this process instead of a timed run")
    args = parser.parse_args()
    if args.paired_probe and args.engine not in PAIRED:
        parser.error(f"--paired-probe works with {' and '.join(PAIRED)}")
    if args.pairs < 1:
        parser.error("--pairs must be at least 1")
    if args.activations != "f32" and args.engine != "ours":
        parser.error("--activations works with ours")
    if args.alternate_with and (args.engine not in PAIRED or args.alternate_with[0] not in PAIRED
                                or args.paired_probe or args.activations != "f32"):
        parser.error(f"--alternate-with takes two of {', '.join(PAIRED)}, without --paired-probe or --activations")
    prompt = [int(x) for x in json.loads(args.prompt_ids.read_text())]
    header = {"engine": args.engine, "model": str(args.model), "threads": args.threads, "prompt_tokens": len(prompt)}
    if args.alternate_with:
        twin = (args.alternate_with[0], Path(args.alternate_with[1]))
        result = run_alternated([(args.engine, args.model), twin], prompt, args.new, args.threads)
        json.dump({**header, "twin_engine": twin[0], "twin_model": str(twin[1]), "new_tokens": args.new, **result},
                  sys.stdout)
        print()
        return
    pairing = Pairing(args.paired_probe, args.threads, args.pairs) if args.paired_probe else None
    if args.engine == "transformers":
        result = run_transformers(args.model, prompt, args.new, args.threads)
    else:
        context = len(prompt) + args.new + (pairing.pairs if pairing else 0) + 8
        options = {"activations": args.activations} if args.engine == "ours" else {}
        result = run_opened(OPENERS[args.engine](args.model, context, args.threads, **options), prompt, args.new,
                            pairing)
    timed: Timed = result["timed"]
    json.dump({**header, "new_tokens": len(timed.tokens) - 1,
               "prefill_s": timed.prefill_s, "decode_s": timed.decode_s, "tokens": timed.tokens,
               "load_s": result["load_s"], **result["extra"]}, sys.stdout)
    print()


if __name__ == "__main__":
    main()
