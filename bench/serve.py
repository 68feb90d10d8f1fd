"""Aggregate output tok/s and inter-token latency of `ascend-serve` at 1, 2, 4 and 8 concurrent streams.

    .venv/bin/python bench/serve.py [--streams 1,2,4,8] [--prompt 32] [--new 64] [--threads N] [--rounds 3]
                                    [--peer URL --peer-model NAME]

Model: the Qwen2-0.5B-shape random checkpoint of bench/_common.py with a WordLevel tokenizer that covers the whole
vocabulary (every generated token is text, so every token is one SSE chunk), converted once to fp16 .asw (cached).

What is measured: the server runs in a subprocess (`--max-batch 8`, `--threads`); for each concurrency c, c client
threads each send one streamed /v1/completions request at the same moment (a random prompt of `--prompt` token ids,
seed = stream index, `--new` tokens, greedy, eos ignored by the random weights in practice) through the openai client,
and note the arrival time of every chunk. Reported per c (median over --rounds rounds, one untimed warm-up):
  aggregate tok/s  all streams' generated tokens / (last stream's end - first request's start)
  per-stream tok/s  aggregate / c
  ITL p50 / p99     over every gap between two consecutive chunks of one stream, all streams pooled
  TTFT median       request start to its first chunk
Target (issue 11): aggregate at 8 streams >= 4x the single-stream rate.

--peer URL runs the same clients against another OpenAI-compatible server holding the same weights (for example
llama.cpp's server on an F16 GGUF of the checkpoint; start it yourself), named --peer-model, in the same rounds.
Exit status 0 whatever the result (a report, not a test).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

TARGET = 4.0


def full_vocab_checkpoint(base: Path) -> Path:
    """`base` (weights linked, not copied) with a WordLevel tokenizer of one word per id, so that every generated
    token decodes to text."""
    directory = base.with_name(base.name + "-fullvocab")
    stamp = directory / ".complete"
    if stamp.is_file():
        return directory
    from tokenizers import Tokenizer, models, pre_tokenizers

    directory.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "generation_config.json", "tokenizer_config.json", *[f.name for f in
                                                                                       C.source_files(base)]):
        link = directory / name
        if not link.exists():
            link.symlink_to(base / name)
    vocab_size = C.QWEN2_05B["vocab_size"]
    words = [f"w{i}" for i in range(vocab_size)]
    for offset, token in enumerate(C.SPECIAL_TOKENS):  # Qwen2's ids for them
        words[C.QWEN2_05B["eos_token_id"] + offset] = token
    tokenizer = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="w0"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    (directory / "tokenizer.json").write_text(tokenizer.to_str(), encoding="utf-8")
    stamp.write_text(time.strftime("%Y-%m-%d %H:%M:%S"), encoding="utf-8")
    return directory


def one_round(client, model: str, prompts: list[list[int]], new: int) -> dict[str, float]:
    """c = len(prompts) concurrent streams; returns aggregate tok/s, ITL p50/p99 (s) and TTFT median (s)."""
    barrier = threading.Barrier(len(prompts))

    def stream(index: int) -> tuple[float, list[float], int]:
        barrier.wait()
        started = time.perf_counter()
        arrivals, tokens = [], 0
        for chunk in client.completions.create(model=model, prompt=prompts[index], max_tokens=new, temperature=0,
                                               stream=True, stream_options={"include_usage": True}):
            if chunk.choices and chunk.choices[0].text:
                arrivals.append(time.perf_counter())
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
        return started, arrivals, tokens

    with ThreadPoolExecutor(len(prompts)) as pool:
        records = list(pool.map(stream, range(len(prompts))))
    start = min(r[0] for r in records)
    end = max(r[1][-1] for r in records)
    gaps = [b - a for r in records for a, b in zip(r[1], r[1][1:])]
    quantiles = statistics.quantiles(gaps, n=100) if len(gaps) > 1 else [gaps[0]] * 99
    return {"aggregate": sum(r[2] for r in records) / (end - start),
            "itl_p50": statistics.median(gaps), "itl_p99": quantiles[98],
            "ttft": statistics.median(r[1][0] - r[0] for r in records)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_common_args(parser, "keep the generated checkpoint and .asw under .cache/bench [yes]")
    parser.add_argument("--streams", default="1,2,4,8", help="concurrency levels [1,2,4,8]")
    parser.add_argument("--prompt", type=int, default=32, help="prompt tokens per stream [32]")
    parser.add_argument("--new", type=int, default=64, help="tokens generated per stream [64]")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="server CPU threads [all]")
    parser.add_argument("--peer", help="base URL (…/v1) of another OpenAI-compatible server with the same weights")
    parser.add_argument("--peer-model", default="model", help="the model name the peer expects")
    args = parser.parse_args()
    levels = [int(x) for x in args.streams.split(",")]

    import numpy as np
    import openai

    from serving import serve  # the tests' subprocess launcher (tests/ is on sys.path via _common)

    asw = C.ensure_asw(full_vocab_checkpoint(C.ensure_checkpoint(args.regen)), "fp16")
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, C.QWEN2_05B["vocab_size"] - 16, args.prompt).tolist() for _ in range(max(levels))]
    print(C.machine_line())
    print(f"model: {asw.name}; prompt {args.prompt} tok, {args.new} new tok per stream, server --threads "
          f"{args.threads} --max-batch {max(levels)}; median of {args.rounds} rounds")
    results: dict[str, dict[int, list[dict[str, float]]]] = {}
    with serve(asw, "--threads", str(args.threads), "--max-batch", str(max(levels)), "--context",
               str(args.prompt + args.new + 8), "--served-model-name", "bench", log_dir=C.CACHE) as server:
        targets = {"ascend-serve": (openai.OpenAI(base_url=f"{server.base}/v1", api_key="-", max_retries=0,
                                                  timeout=600), "bench")}
        if args.peer:
            targets["peer"] = (openai.OpenAI(base_url=args.peer, api_key="-", max_retries=0, timeout=600),
                               args.peer_model)
        for name, (client, model) in targets.items():
            one_round(client, model, prompts[:1], 4)  # warm-up
            results[name] = {c: [] for c in levels}
        for round_index in range(args.rounds):
            for c in levels:
                for name, (client, model) in (targets.items() if round_index % 2 == 0 else
                                              reversed(list(targets.items()))):
                    with C.Steal() as steal:
                        measured = one_round(client, model, prompts[:c], args.new)
                    C.log(f"round {round_index + 1} {name} x{c}: {measured['aggregate']:.1f} tok/s, {steal}")
                    results[name][c].append(measured)

    rows = []
    summary: dict[str, dict[int, dict[str, float]]] = {}
    for name, per_level in results.items():
        summary[name] = {}
        for c, runs in per_level.items():
            med = {key: C.median([r[key] for r in runs]) for key in runs[0]}
            summary[name][c] = med
            rows.append([name, c, f"{med['aggregate']:.1f}", f"{med['aggregate'] / c:.1f}",
                         f"{med['itl_p50'] * 1000:.1f}", f"{med['itl_p99'] * 1000:.1f}", f"{med['ttft'] * 1000:.0f}"])
    print(C.table(["server", "streams", "aggregate tok/s", "per stream", "ITL p50 ms", "ITL p99 ms", "TTFT ms"],
                  rows))
    ours = summary["ascend-serve"]
    if 1 in ours and 8 in ours:
        ratio = ours[8]["aggregate"] / ours[1]["aggregate"]
        print(f"aggregate at 8 streams / 1 stream: {ratio:.2f}x (target >= {TARGET:.0f}x: "
              f"{'met' if ratio >= TARGET else 'NOT met'})")
    if "peer" in summary:
        for c in levels:
            print(f"x{c}: ascend-serve / peer aggregate = {ours[c]['aggregate'] / summary['peer'][c]['aggregate']:.2f}")
    print(json.dumps(summary))
    if not args.keep_cache:
        C.remove_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
