"""One timed greedy generation by one engine, in this process; bench/side_by_side.py starts one per run.

    python bench/run_engine.py ENGINE MODEL --prompt-ids FILE.json --new N --threads T [--paired-probe LIB --pairs P]
                               [--activations f32|bf16]

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


def run_ours(model_path: Path, prompt: list[int], new: int, threads: int,
             pairing: Pairing | None = None, activations: str = "f32") -> dict[str, Any]:
    import ascend_super

    started = time.perf_counter()
    model = ascend_super.load(model_path, backend="cpu", threads=threads, activations=activations)
    session = model.session(len(prompt) + new + (pairing.pairs if pairing else 0) + 8)
    load_s = time.perf_counter() - started

    def prefill(ids: list[int]) -> int:
        return session.prefill(ids, logits="none")[1]

    def step(token: int) -> int:
        return session.decode(token, logits="none")[1]

    Timed().run(prefill, step, prompt[:WARMUP_PROMPT], WARMUP_NEW)
    session.reset()
    timed = Timed().run(prefill, step, prompt, new)
    from ascend_super.runtime.native import kernel_name

    from ascend_super.runtime.hugepages import file_pmd_share

    extra = {"kernels": kernel_name(), "describe": model.native.describe(),
             "huge_page_share": file_pmd_share(model_path)}
    if pairing is not None:
        extra["pairs"] = paired_steps(pairing, step, timed.tokens[-1])
    session.close()
    model.close()
    return {"load_s": load_s, "timed": timed, "extra": extra}


def run_llama_cpp(model_path: Path, prompt: list[int], new: int, threads: int,
                  pairing: Pairing | None = None) -> dict[str, Any]:
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
    cparams.n_ctx = len(prompt) + new + (pairing.pairs if pairing else 0) + 16
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

    Timed().run(decode, step, prompt[:WARMUP_PROMPT], WARMUP_NEW)
    L.llama_memory_clear(L.llama_get_memory(ctx), True)
    L.llama_perf_context_reset(ctx)
    timed = Timed().run(decode, step, prompt, new)
    perf = L.llama_perf_context(ctx)
    extra = {
        "perf_prompt_ms": perf.t_p_eval_ms, "perf_prompt_tokens": perf.n_p_eval,
        "perf_eval_ms": perf.t_eval_ms, "perf_eval_tokens": perf.n_eval,
        "flash_attn_type": int(cparams.flash_attn_type), "n_vocab": int(n_vocab),
        "system_info": L.llama_print_system_info().decode(errors="replace").strip(),
        "version": getattr(L, "__version__", "?"), "huge_page_share": file_pmd_share(model_path),
    }
    if pairing is not None:
        extra["pairs"] = paired_steps(pairing, step, timed.tokens[-1])
    L.llama_sampler_free(sampler)
    L.llama_free(ctx)
    L.llama_model_free(model)
    del quiet
    return {"load_s": load_s, "timed": timed, "extra": extra}


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


ENGINES = {"ours": run_ours, "llama.cpp": run_llama_cpp, "transformers": run_transformers}
PAIRED = ("ours", "llama.cpp")  # the engines that take --paired-probe
PAIRS = 24  # paired decode steps per run (side_by_side's default too)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("engine", choices=sorted(ENGINES))
    parser.add_argument("model", type=Path)
    parser.add_argument("--prompt-ids", type=Path, required=True)
    parser.add_argument("--new", type=int, required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--paired-probe", type=Path, metavar="LIB", help="bench/bandwidth.c built as a library")
    parser.add_argument("--pairs", type=int, default=PAIRS, help=f"decode steps between probe reps [{PAIRS}]")
    parser.add_argument("--activations", choices=["f32", "bf16"], default="f32", help="ours: matmul inputs [f32]")
    args = parser.parse_args()
    if args.paired_probe and args.engine not in PAIRED:
        parser.error(f"--paired-probe works with {' and '.join(PAIRED)}")
    if args.pairs < 1:
        parser.error("--pairs must be at least 1")
    prompt = [int(x) for x in json.loads(args.prompt_ids.read_text())]
    if args.activations != "f32" and args.engine != "ours":
        parser.error("--activations works with ours")
    kw: dict[str, Any] = {"pairing": Pairing(args.paired_probe, args.threads, args.pairs)} if args.paired_probe else {}
    if args.engine == "ours":
        kw["activations"] = args.activations
    result = ENGINES[args.engine](args.model, prompt, args.new, args.threads, **kw)
    timed: Timed = result["timed"]
    json.dump({"engine": args.engine, "model": str(args.model), "threads": args.threads,
               "prompt_tokens": len(prompt), "new_tokens": len(timed.tokens) - 1,
               "prefill_s": timed.prefill_s, "decode_s": timed.decode_s, "tokens": timed.tokens,
               "load_s": result["load_s"], **result["extra"]}, sys.stdout)
    print()


if __name__ == "__main__":
    main()
