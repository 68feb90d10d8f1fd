"""Prefill and decode tok/s of the native cpu backend vs transformers on a Qwen2-0.5B-shape model.

    .venv/bin/python bench/decode.py [--rounds 3] [--prompt 64] [--new 32] [--bf16] [--no-hf] [--no-keep-cache]

Model: random bf16 weights with Qwen2-0.5B's exact shapes (cached under .cache/bench/, see _common.py), converted
once to an fp16 .asw (cached; re-converted when the converter's source changes). --bf16 also times a bf16 .asw.

What is measured, all in this process:
  ours          ascend_super.load(asw, backend="cpu", threads=--threads [all cores]); one session (context =
                prompt + new + 8); per run: session.reset(); prefill(prompt ids, logits="none") is timed as prefill;
                then `new` session.decode(token, logits="none") steps, each fed the previous argmax, timed together
                as decode.
  transformers  AutoModelForCausalLM.from_pretrained(dir, dtype=torch.bfloat16), torch.inference_mode(), sdpa;
                a manual greedy loop with a DynamicCache: the first forward over the prompt (logits_to_keep=1, like
                generate()) is prefill; then `new` one-token forwards on the cache, each fed the previous argmax,
                are decode. Timed once per torch thread count in --hf-threads (default: all cores, then 1; the
                weights are shared, torch.set_num_threads before every run). The first count is the target's
                baseline; 1 thread is there because torch's bf16 matmuls on a small VM can be far slower with
                2 threads than with 1, and a fair "vs transformers" should name transformers' best setting too.
Both: the same random prompt (`--prompt` ids drawn from the full vocab, seed 0), greedy, eos ignored, the same
number of decode steps. prefill tok/s = prompt / prefill s; decode tok/s = new / decode s. One untimed warm-up
run per engine, then `--rounds` rounds; in each round every engine runs once, the order reversing between
rounds, with a 0.5 s pause between engines so the other's worker threads have gone to sleep. Medians reported.
Target: ours (fp16) / transformers decode >= 2x. Exit status 0 whatever the result (a report, not a test).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

DECODE_TARGET = 2.0
PAUSE_S = 0.5


class Ours:
    def __init__(self, asw: Path, dtype: str, threads: int, context: int) -> None:
        import ascend_super

        self.name = f"ours ({dtype} .asw, {threads} thr)"
        self.model = ascend_super.load(asw, backend="cpu", threads=threads)
        self.session = self.model.session(context)
        self.load_s = self.model.load_s

    def run(self, prompt: list[int], new: int) -> tuple[float, float, list[int]]:
        session = self.session
        session.reset()
        started = time.perf_counter()
        _, token = session.prefill(prompt, logits="none")
        prefilled = time.perf_counter()
        tokens = [token]
        for _ in range(new):
            _, token = session.decode(token, logits="none")
            tokens.append(token)
        done = time.perf_counter()
        return prefilled - started, done - prefilled, tokens

    def close(self) -> None:
        self.session.close()
        self.model.close()


class Transformers:
    def __init__(self, checkpoint: Path, threads: int, shared: "Transformers | None" = None) -> None:
        import torch
        from transformers import AutoModelForCausalLM, DynamicCache

        self.torch = torch
        self.cache_cls = DynamicCache
        self.threads = threads
        if shared is not None:  # same weights, another thread count
            self.model, self.load_s = shared.model, 0.0
        else:
            torch.set_num_threads(threads)
            started = time.perf_counter()
            self.model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.bfloat16).eval()
            self.load_s = time.perf_counter() - started
        import inspect

        # transformers 5.x renamed forward(past_key_values=) to forward(cache=)
        params = inspect.signature(self.model.forward).parameters
        self.cache_kw = "cache" if "cache" in params else "past_key_values"
        attn = getattr(self.model.config, "_attn_implementation", "?")
        self.name = f"transformers (bf16, {attn}, {threads} thr)"

    def run(self, prompt: list[int], new: int) -> tuple[float, float, list[int]]:
        torch = self.torch
        torch.set_num_threads(self.threads)  # process-wide: set before every run
        with torch.inference_mode():
            ids = torch.tensor([prompt], dtype=torch.long)
            cache = self.cache_cls(config=self.model.config)
            started = time.perf_counter()
            kw = {self.cache_kw: cache}
            out = self.model(input_ids=ids, use_cache=True, logits_to_keep=1, **kw)
            token = out.logits[:, -1].argmax(-1)
            prefilled = time.perf_counter()
            tokens = [int(token)]
            for _ in range(new):
                out = self.model(input_ids=token[:, None], use_cache=True, **kw)  # the cache grows in place
                token = out.logits[:, -1].argmax(-1)
                tokens.append(int(token))
            done = time.perf_counter()
        return prefilled - started, done - prefilled, tokens

    def close(self) -> None:
        del self.model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompt", type=int, default=64, help="prompt tokens [64]")
    parser.add_argument("--new", type=int, default=32, help="decode steps (new tokens after the prefill's) [32]")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for ours [all cores]")
    parser.add_argument("--hf-threads", default=f"{os.cpu_count()},1",
                        help="comma-separated torch thread counts to time transformers with; the first is the "
                             "baseline of the target [all cores,1]")
    parser.add_argument("--bf16", action="store_true", help="also time a bf16 .asw")
    parser.add_argument("--no-hf", action="store_true", help="skip transformers")
    C.add_common_args(parser, "keep the checkpoint and .asw files in .cache/bench/ for the next run [yes]")
    args = parser.parse_args()

    import numpy as np

    from ascend_super.runtime.native import kernel_name, library_path

    checkpoint = C.ensure_checkpoint(args.regen)
    asws = {"fp16": C.ensure_asw(checkpoint, "fp16")}
    if args.bf16:
        asws["bf16"] = C.ensure_asw(checkpoint, "bf16")
    vocab = C.QWEN2_05B["vocab_size"]
    prompt = np.random.default_rng(0).integers(0, vocab, size=args.prompt).tolist()
    context = args.prompt + args.new + 8

    print(f"machine   {C.machine_line()}")
    print(f"model     {checkpoint.name} (random weights, Qwen2-0.5B shapes)")
    print(f"kernels   ours: {kernel_name()} (ASW_KERNELS={os.environ.get('ASW_KERNELS', 'unset')}), "
          f"threads {args.threads}")
    lib = library_path()
    print(f"library   {lib.relative_to(C.ROOT) if lib.is_relative_to(C.ROOT) else lib} "
          f"(built {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(lib.stat().st_mtime))})")
    print(f"workload  prompt {args.prompt} random ids, {args.new} decode steps, greedy, eos ignored; "
          f"1 warm-up + {args.rounds} interleaved rounds")

    engines: list = []
    for dtype, path in asws.items():
        engines.append(Ours(path, dtype, args.threads, context))
    if not args.no_hf:
        hf_threads = list(dict.fromkeys(int(t) for t in args.hf_threads.split(",") if t.strip()))
        first = Transformers(checkpoint, hf_threads[0])
        engines += [first] + [Transformers(checkpoint, t, shared=first) for t in hf_threads[1:]]
    import torch

    print(f"torch     {torch.__version__}; "
          f"load s: " + ", ".join(f"{e.name} {e.load_s:.2f}" for e in engines))
    print()

    results: dict[str, dict[str, list[float]]] = {e.name: {"prefill": [], "decode": []} for e in engines}
    tokens: dict[str, list[int]] = {}
    for engine in engines:  # warm-up: page in weights, allocate caches, let the thread pools start
        engine.run(prompt, min(args.new, 4))
        time.sleep(PAUSE_S)
    for rnd in range(args.rounds):
        order = engines if rnd % 2 == 0 else engines[::-1]
        for engine in order:
            with C.Steal() as steal:
                prefill_s, decode_s, toks = engine.run(prompt, args.new)
            tokens[engine.name] = toks
            results[engine.name]["prefill"].append(args.prompt / prefill_s)
            results[engine.name]["decode"].append(args.new / decode_s)
            print(f"round {rnd + 1}  {engine.name:38}  prefill {args.prompt / prefill_s:8.1f} tok/s"
                  f"  decode {args.new / decode_s:7.2f} tok/s   ({steal})", flush=True)
            time.sleep(PAUSE_S)
    for engine in engines:
        engine.close()

    rows = []
    for name, r in results.items():
        rows.append([name, f"{C.median(r['prefill']):.1f}", C.spread(r["prefill"]),
                     f"{C.median(r['decode']):.2f}", C.spread(r["decode"]),
                     f"{1000 / C.median(r['decode']):.1f}"])
    print()
    print(C.table(["engine", "prefill tok/s", "min .. max", "decode tok/s", "min .. max", "ms/token"], rows))
    print()
    hfs = [e for e in engines if isinstance(e, Transformers)]
    ours = [e for e in engines if isinstance(e, Ours)]
    if hfs:
        def med(name: str, what: str) -> float:
            return C.median(results[name][what])

        best_dec = max(hfs, key=lambda e: med(e.name, "decode"))
        best_pre = max(hfs, key=lambda e: med(e.name, "prefill"))
        for engine in ours:
            for hf in hfs:
                dec = med(engine.name, "decode") / med(hf.name, "decode")
                pre = med(engine.name, "prefill") / med(hf.name, "prefill")
                line = f"{engine.name} / {hf.name}:  decode {dec:5.2f}x  prefill {pre:5.2f}x"
                if engine is ours[0] and hf is hfs[0]:
                    line += f"   <- target decode >= {DECODE_TARGET:g}x: {'PASS' if dec >= DECODE_TARGET else 'FAIL'}"
                print(line)
            if len(hfs) > 1:
                dec = med(engine.name, "decode") / med(best_dec.name, "decode")
                pre = med(engine.name, "prefill") / med(best_pre.name, "prefill")
                print(f"{engine.name} / best transformers:  decode {dec:5.2f}x (vs {best_dec.threads} thr)  "
                      f"prefill {pre:5.2f}x (vs {best_pre.threads} thr)"
                      f"   target decode >= {DECODE_TARGET:g}x: {'PASS' if dec >= DECODE_TARGET else 'FAIL'}")
        ref = tokens[hfs[0].name]
        for engine in ours:
            same = next((i for i, (a, b) in enumerate(zip(tokens[engine.name], ref)) if a != b), len(ref))
            print(f"greedy tokens: {engine.name} matches transformers for the first {same} of {len(ref)} "
                  f"(random weights, different precisions: a sanity check, not a parity test)")
    if not args.keep_cache:
        C.remove_cache()


if __name__ == "__main__":
    main()
