"""Aggregate output tok/s and inter-token latency of `ascend-serve` at 1, 2, 4 and 8 concurrent streams, side by side
with llama.cpp's own server (`llama-server`, continuous batching over parallel slots) on the same weights, in the
same run.

    .venv/bin/python bench/serve.py [--streams 1,2,4,8] [--prompt 32] [--new 64] [--threads N] [--rounds 3]
                                    [--no-llama] [--llama-cpp-python] [--peer URL --peer-model NAME] [--out DIR]

Model: the Qwen2-0.5B-shape random checkpoint of bench/_common.py with a WordLevel tokenizer that covers the whole
vocabulary (every generated token is text, so every token is one SSE chunk), converted once to fp16 .asw (cached).
llama.cpp gets the same weights as an F16 GGUF written by llama.cpp's own convert_hf_to_gguf.py (bench/_llama.py)
with a byte-level vocabulary (bench/hf_to_gguf.py --byte-vocab: its server takes text, and that vocabulary makes a
prompt of n letters n tokens and every generated id one chunk of text).

Servers, each in a subprocess with `--threads` CPU threads:
  ascend-serve      --max-batch = the largest concurrency
  llama-server      llama.cpp's C++ server, built once from the pinned llama-cpp-python sdist's vendor/llama.cpp
                    (bench/_llama.py ensure_llama_server: cmake, GGML_NATIVE=ON, static); --parallel = the largest
                    concurrency, --ctx-size = slots x the per-stream context, --cont-batching, --threads and
                    --threads-batch = --threads. --no-llama skips it.
  llama_cpp.server  with --llama-cpp-python: llama-cpp-python's own server, `interrupt_requests` off (else a waiting
                    request cuts the running stream short). Version 0.3.36 has no `n_parallel`: it holds one context
                    behind a lock (llama_cpp/server/app.py: `llama_outer_lock`, `llama_inner_lock`), so concurrent
                    requests run one after another; the results say so, measured.
For each concurrency c, c client threads each send one streamed /v1/completions request at the same moment through
the openai client (ascend-serve: `--prompt` random token ids, llama.cpp: `--prompt` random letters, the same count
of tokens, new ones for every stream of every round: llama-server keeps each slot's last prompt in its KV cache and,
given the same prompt again, prefills only its last token; `--new` tokens, temperature 0, no repetition penalty) and
note the arrival time of every chunk. Rounds
interleave the servers (the order alternates). Reported per server and c (median over --rounds rounds, one untimed
warm-up each):
  aggregate tok/s  all streams' generated tokens / (last stream's end - first request's start)
  per-stream tok/s  aggregate / c
  decode tok/s      the steady state with all c streams running: the chunks that arrived after every stream had
                    its first one and before the first stream ended, over that time (for c = 1 the stream's own
                    decode rate; none when the streams never all ran at once)
  ITL p50 / p99     over every gap between two consecutive chunks of one stream, all streams pooled
  TTFT median       request start to its first chunk
  concurrent        share of chunks that arrived while another stream of the round was between its first and last
                    chunk: near 1 when a server interleaves the streams, 0 when it serves them one after another
Targets (issue 11): ascend-serve's aggregate decode rate at 8 streams >= 4x its single-stream decode rate, and its
aggregate tok/s ahead of llama.cpp's server at every concurrency. Writes bench/results/serve.{md,json} (--out:
another folder) and prints the table and the targets PASS / FAIL.

--peer URL adds any other OpenAI-compatible server with the same weights (named --peer-model; it gets the token-id
prompts). Exit status 0 whatever the result (a report, not a test).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

TARGET = 4.0  # aggregate decode tok/s at 8 streams / 1 stream
RESULTS = Path(__file__).resolve().parent / "results"
LLAMA = "llama_cpp.server"  # llama-cpp-python's Python server (one request at a time)
LLAMA_CPP = "llama-server"  # llama.cpp's C++ server: continuous batching over --parallel slots
PEERS = (LLAMA_CPP, LLAMA)
OURS = "ascend-serve"
START_TIMEOUT_S = 600  # loading a 1 GB GGUF on 2 busy cores


@dataclass
class Target:
    """One server under test: its openai client, the model name it expects, a maker of fresh prompts (called once per
    stream of every round, so no prompt is ever sent twice: a server with a prompt cache, like llama-server's slots,
    would otherwise skip the prefill of a repeated prompt), extra request fields."""

    client: Any
    model: str
    new_prompt: Callable[[], Any]
    extra: dict[str, Any] = field(default_factory=dict)


def full_vocab_checkpoint(base: Path) -> Path:
    """`base` (weights linked, not copied) with a WordLevel tokenizer of one word per id, so that every generated
    token decodes to text. The links are relative (base is a sibling), so the cache folder can be moved or copied
    whole; a folder whose links no longer resolve is made again."""
    directory = base.with_name(base.name + "-fullvocab")
    stamp = directory / ".complete"
    names = ("config.json", "generation_config.json", "tokenizer_config.json",
             *[f.name for f in C.source_files(base)])
    if stamp.is_file() and all((directory / name).exists() for name in names):
        return directory
    from tokenizers import Tokenizer, models, pre_tokenizers

    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        link = directory / name
        if link.is_symlink() and not link.exists():  # dangling: its target moved
            link.unlink()
        if not link.exists():
            link.symlink_to(Path("..") / base.name / name)
    vocab_size = C.QWEN2_05B["vocab_size"]
    words = [f"w{i}" for i in range(vocab_size)]
    for offset, token in enumerate(C.SPECIAL_TOKENS):  # Qwen2's ids for them
        words[C.QWEN2_05B["eos_token_id"] + offset] = token
    tokenizer = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="w0"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    (directory / "tokenizer.json").write_text(tokenizer.to_str(), encoding="utf-8")
    stamp.write_text(time.strftime("%Y-%m-%d %H:%M:%S"), encoding="utf-8")
    return directory


def one_round(target: Target, c: int, new: int) -> dict[str, float]:
    """c concurrent streams; returns aggregate tok/s, ITL p50/p99 (s) and TTFT median (s). Tokens: the usage the
    server reports, else (llama_cpp.server sends none when streaming) the chunks that carried text."""
    barrier = threading.Barrier(c)
    prompts = [target.new_prompt() for _ in range(c)]

    def stream(index: int) -> tuple[float, list[float], int]:
        barrier.wait()
        started = time.perf_counter()
        arrivals, tokens = [], 0
        for chunk in target.client.completions.create(model=target.model, prompt=prompts[index],
                                                      max_tokens=new, temperature=0, stream=True,
                                                      stream_options={"include_usage": True},
                                                      extra_body=target.extra or None):
            if chunk.choices and chunk.choices[0].text:
                arrivals.append(time.perf_counter())
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
        return started, arrivals, tokens or len(arrivals)

    with ThreadPoolExecutor(c) as pool:
        records = list(pool.map(stream, range(c)))
    start = min(r[0] for r in records)
    end = max(r[1][-1] for r in records)
    gaps = [b - a for r in records for a, b in zip(r[1], r[1][1:])]
    quantiles = statistics.quantiles(gaps, n=100) if len(gaps) > 1 else [gaps[0]] * 99
    all_started, first_done = max(r[1][0] for r in records), min(r[1][-1] for r in records)
    decoded = sum(1 for r in records for t in r[1] if all_started < t <= first_done)
    spans = [(r[1][0], r[1][-1]) for r in records]
    overlapping = sum(1 for i, r in enumerate(records) for t in r[1]
                      if any(lo < t < hi for j, (lo, hi) in enumerate(spans) if j != i))
    return {"aggregate": sum(r[2] for r in records) / (end - start),
            "decode": decoded / (first_done - all_started) if first_done > all_started else float("nan"),
            "itl_p50": statistics.median(gaps), "itl_p99": quantiles[98],
            "ttft": statistics.median(r[1][0] - r[0] for r in records),
            "tokens": sum(r[2] for r in records),
            "concurrent": overlapping / sum(len(r[1]) for r in records)}


def llama_server_settings() -> set[str] | None:
    """The option names of llama_cpp.server, or None when it cannot be imported (the bench extra is missing)."""
    try:
        from llama_cpp.server.settings import Settings
    except ImportError:
        return None
    return set(Settings.model_fields)


def wait_until_up(process: subprocess.Popen, url: str, log: Path, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if process.poll() is not None:
            raise SystemExit(f"{what} exited with {process.returncode}; log {log}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"{what} did not answer {url} within {START_TIMEOUT_S} s; log {log}")
        time.sleep(0.5)


@contextlib.contextmanager
def running(command: list[str], port: int, what: str) -> Iterator[str]:
    """`command` (a server listening on loopback `port`) in a subprocess, its output in .cache/bench/<what>-<port>.log;
    yields its OpenAI base URL once /v1/models answers, and stops it on exit."""
    log = C.CACHE / f"{what.replace('.', '-')}-{port}.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until_up(process, f"http://127.0.0.1:{port}/v1/models", log, what)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def llama_server(gguf: Path, threads: int, slots: int, context: int, options: set[str]) -> Iterator[str]:
    """`python -m llama_cpp.server` on a free loopback port, serving `gguf` as model "bench"; yields its base URL."""
    from serving import free_port

    port = free_port()
    parallel = "n_parallel" in options
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", "bench",
               "--host", "127.0.0.1", "--port", str(port), "--n_threads", str(threads),
               "--n_threads_batch", str(threads), "--n_ctx", str(context * (slots if parallel else 1)),
               "--interrupt_requests", "False", "--verbose", "False"]
    if parallel:
        command += ["--n_parallel", str(slots)]
    with running(command, port, "llama_cpp.server") as url:
        yield url


@contextlib.contextmanager
def llama_cpp_server(binary: Path, gguf: Path, threads: int, slots: int, context: int) -> Iterator[str]:
    """llama.cpp's `llama-server` on a free loopback port: `slots` parallel slots of `context` tokens each
    (continuous batching), `threads` threads for decode and prompt; serving `gguf` as model "bench"."""
    from serving import free_port

    port = free_port()
    command = [str(binary), "--model", str(gguf), "--alias", "bench", "--host", "127.0.0.1", "--port", str(port),
               "--threads", str(threads), "--threads-batch", str(threads), "--parallel", str(slots),
               "--ctx-size", str(context * slots), "--cont-batching", "--no-webui"]
    with running(command, port, "llama-server") as url:
        yield url


def letters_prompt(rng, length: int) -> str:
    """A random lowercase word of `length` letters: `length` tokens in the byte-level vocabulary."""
    return "".join(chr(ord("a") + int(i)) for i in rng.integers(0, 26, length))


def ids_prompt(rng, length: int) -> list[int]:
    """`length` random token ids of the benchmark model's vocabulary."""
    return rng.integers(0, C.QWEN2_05B["vocab_size"] - 16, length).tolist()


def rate(value: float, unit: str = "", digits: int = 1) -> str:
    """`value` for a table, or – when it was not measurable (NaN)."""
    return "–" if math.isnan(value) else f"{value:.{digits}f}{unit}"


def write_results(out_dir: Path, summary: dict[str, dict[int, dict[str, float]]], meta: dict[str, Any],
                  targets: list[tuple[str, float, float, bool]]) -> str:
    levels = sorted({c for per in summary.values() for c in per})
    ours = summary[OURS]
    lines = [f"Measured {meta['when']} by `{meta['command']}`: {meta['rounds']} interleaved round(s), "
             f"{meta['prompt']}-token prompts (new random ones for every stream of every round, so no server can "
             f"answer from a prompt cache), {meta['new']} new tokens per stream, greedy, {meta['threads']} threads "
             "per server.",
             "",
             f"Machine: {meta['machine']}. Load average during the runs: {meta['load']}.", ""]
    peers = [peer for peer in PEERS if peer in summary]
    if LLAMA_CPP in summary:
        lines += [f"llama.cpp: `llama-server` built from the llama-cpp-python {meta['llama_version']} sdist's llama.cpp "
                  f"(bench/_llama.py), F16 GGUF of the same weights; {meta['llama_cpp_mode']}", ""]
    if LLAMA in summary:
        lines += [f"llama-cpp-python {meta['llama_version']} `llama_cpp.server`, the same GGUF; {meta['llama_mode']}",
                  ""]
    lines += ["| server | streams | aggregate tok/s | per stream tok/s | decode tok/s | ITL p50 ms | ITL p99 ms | "
              "TTFT ms | concurrent chunks | decode × 1 stream |" + "".join(f" aggregate × {p} |" for p in peers),
              "|---|---|---|---|---|---|---|---|---|---|" + "---|" * len(peers)]
    for name, per in summary.items():
        for c in levels:
            m = per[c]
            versus = "".join(f" {m['aggregate'] / summary[p][c]['aggregate']:.2f}× |" for p in peers)
            lines.append(f"| {name} | {c} | {m['aggregate']:.1f} | {m['aggregate'] / c:.1f} | {rate(m['decode'])} | "
                         f"{m['itl_p50'] * 1e3:.1f} | {m['itl_p99'] * 1e3:.1f} | {m['ttft'] * 1e3:.0f} | "
                         f"{m['concurrent'] * 100:.0f} % | {rate(m['decode'] / per[levels[0]]['decode'], '×', 2)} |"
                         f"{versus}")
    lines += ["", "Aggregate: all streams' tokens over first request to last chunk (prefill included). Decode: the chunks "
              "that arrived while every stream was running (after each had its first chunk, before the first one "
              "ended), over that time; – when the streams never all ran at once. Concurrent chunks: the share of a "
              "run's chunks that arrived while another stream was between its first and last chunk (0 %: the server "
              "served the streams one after another).", "",
              "Targets (issue 11 §3):", ""]
    lines += [f"- {text}: {value:.2f}× (target ≥ {goal:g}×) — **{'PASS' if ok else 'FAIL'}**"
              for text, value, goal, ok in targets]
    text = "\n".join(lines) + "\n"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "serve.md").write_text(text, encoding="utf-8")
    (out_dir / "serve.json").write_text(json.dumps({
        "meta": meta, "summary": {name: {str(c): m for c, m in per.items()} for name, per in summary.items()},
        "ours_decode_8_over_1": ours[8]["decode"] / ours[1]["decode"] if 1 in ours and 8 in ours else None,
        "targets": [{"what": t, "value": v, "goal": g, "pass": ok} for t, v, g, ok in targets]}, indent=1),
        encoding="utf-8")
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_common_args(parser, "keep the generated checkpoint, .asw and .gguf under .cache/bench [yes]")
    parser.add_argument("--streams", default="1,2,4,8", help="concurrency levels [1,2,4,8]")
    parser.add_argument("--prompt", type=int, default=32, help="prompt tokens per stream [32]")
    parser.add_argument("--new", type=int, default=64, help="tokens generated per stream [64]")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads per server [all]")
    parser.add_argument("--no-llama", action="store_true", help="skip llama.cpp's llama-server")
    parser.add_argument("--llama-cpp-python", action="store_true",
                        help="also llama-cpp-python's llama_cpp.server (serves one request at a time; slow)")
    parser.add_argument("--peer", help="base URL (…/v1) of another OpenAI-compatible server with the same weights")
    parser.add_argument("--peer-model", default="model", help="the model name the peer expects")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder [bench/results]")
    args = parser.parse_args()
    levels = [int(x) for x in args.streams.split(",")]

    import numpy as np
    import openai

    import _llama
    from serving import serve  # the tests' subprocess launcher (tests/ is on sys.path via _common)

    checkpoint = C.ensure_checkpoint(args.regen)
    asw = C.ensure_asw(full_vocab_checkpoint(checkpoint), "fp16")
    server_binary = None if args.no_llama else _llama.ensure_llama_server()
    options = llama_server_settings() if args.llama_cpp_python else None
    if args.llama_cpp_python and options is None:
        C.log("llama_cpp.server is not importable (pip install -e '.[bench]'): skipping it")
    gguf = (_llama.ensure_gguf_from_hf(checkpoint, "f16", no_vocab=False, byte_vocab=True)
            if server_binary or options else None)
    rng = np.random.default_rng(0)
    context = args.prompt + args.new + 8
    print(C.machine_line())
    print(f"model: {asw.name}; prompt {args.prompt} tok, {args.new} new tok per stream, {args.threads} threads per "
          f"server, ascend-serve --max-batch {max(levels)}; median of {args.rounds} rounds")
    results: dict[str, dict[int, list[dict[str, float]]]] = {}
    loads: list[float] = []
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(serve(asw, "--threads", str(args.threads), "--max-batch", str(max(levels)),
                                           "--context", str(context), "--served-model-name", "bench",
                                           log_dir=C.CACHE))

        def client(url: str) -> Any:
            return openai.OpenAI(base_url=url, api_key="-", max_retries=0, timeout=1800)

        targets = {OURS: Target(client(f"{server.base}/v1"), "bench", lambda: ids_prompt(rng, args.prompt))}
        peers = []
        if server_binary is not None:
            assert gguf is not None
            peers.append((LLAMA_CPP, llama_cpp_server(server_binary, gguf, args.threads, max(levels), context)))
        if options is not None:
            assert gguf is not None
            peers.append((LLAMA, llama_server(gguf, args.threads, max(levels), context, options)))
        for name, starting in peers:
            url = stack.enter_context(starting)
            targets[name] = Target(client(url), "bench", lambda: letters_prompt(rng, args.prompt),
                                   {"repeat_penalty": 1.0})
            counted = targets[name].client.completions.create(model="bench", prompt=targets[name].new_prompt(),
                                                              max_tokens=1, temperature=0)
            if counted.usage.prompt_tokens != args.prompt:
                C.log(f"{name} counts {counted.usage.prompt_tokens} prompt tokens, not {args.prompt}")
        if args.peer:
            targets["peer"] = Target(client(args.peer), args.peer_model, lambda: ids_prompt(rng, args.prompt))
        for name, target in targets.items():
            one_round(target, 1, 4)  # warm-up
            results[name] = {c: [] for c in levels}
        for round_index in range(args.rounds):
            for c in levels:
                order = list(targets.items()) if round_index % 2 == 0 else list(reversed(targets.items()))
                for name, target in order:
                    with C.Steal() as steal:
                        measured = one_round(target, c, args.new)
                    loads.append(os.getloadavg()[0])
                    C.log(f"round {round_index + 1} {name} x{c}: {measured['aggregate']:.1f} tok/s, {steal}, "
                          f"load {loads[-1]:.1f}")
                    results[name][c].append(measured)

    def median(values: list[float]) -> float:  # over the rounds that measured it
        kept = [v for v in values if not math.isnan(v)]
        return C.median(kept) if kept else float("nan")

    summary = {name: {c: {key: median([r[key] for r in runs]) for key in runs[0]} for c, runs in per.items()}
               for name, per in results.items()}
    rows = [[name, c, f"{m['aggregate']:.1f}", f"{m['aggregate'] / c:.1f}", rate(m['decode']),
             f"{m['itl_p50'] * 1000:.1f}", f"{m['itl_p99'] * 1000:.1f}", f"{m['ttft'] * 1000:.0f}",
             f"{m['concurrent'] * 100:.0f} %"] for name, per in summary.items() for c, m in per.items()]
    print(C.table(["server", "streams", "aggregate tok/s", "per stream", "decode tok/s", "ITL p50 ms", "ITL p99 ms",
                   "TTFT ms", "concurrent"], rows))
    ours = summary[OURS]
    checks: list[tuple[str, float, float, bool]] = []
    if 1 in ours and 8 in ours:
        ratio = ours[8]["decode"] / ours[1]["decode"]
        checks.append(("ascend-serve aggregate decode at 8 streams / 1 stream", ratio, TARGET, ratio >= TARGET))
    for peer in (p for p in PEERS if p in summary):
        for c in levels:
            ratio = ours[c]["aggregate"] / summary[peer][c]["aggregate"]
            checks.append((f"ascend-serve / {peer} aggregate at {c} stream{'s' if c > 1 else ''}", ratio, 1.0,
                           ratio > 1.0))
    for text, value, goal, ok in checks:
        print(f"{text}: {value:.2f}x (target >= {goal:g}x): {'PASS' if ok else 'FAIL'}")
    if "peer" in summary:
        for c in levels:
            print(f"x{c}: ascend-serve / peer aggregate = {ours[c]['aggregate'] / summary['peer'][c]['aggregate']:.2f}")
    llama_mode = ""
    if options is not None:
        llama_mode = (f"n_parallel {max(levels)}, n_ctx {context * max(levels)}." if "n_parallel" in options else
                      f"this version has no n_parallel and serves one request at a time behind a lock, so its "
                      f"aggregate cannot grow with the streams (n_ctx {context}; measured: "
                      f"{summary[LLAMA][max(levels)]['concurrent'] * 100:.0f} % of its chunks at {max(levels)} streams "
                      f"arrived while another stream was mid-way).")
    meta = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "command": "python bench/serve.py " + " ".join(sys.argv[1:]),
            "rounds": args.rounds, "prompt": args.prompt, "new": args.new, "threads": args.threads,
            "machine": C.machine_line(),
            "load": f"{min(loads):.1f}–{max(loads):.1f}" if loads else "?",
            "llama_version": _llama.installed_version() or _llama.pinned_version(), "llama_mode": llama_mode,
            "llama_cpp_mode": (f"--parallel {max(levels)} slots, --ctx-size {context * max(levels)} ({context} per "
                               f"slot), continuous batching, {args.threads} threads")}
    text = write_results(args.out, {k: v for k, v in summary.items() if k != "peer"}, meta, checks)
    C.log(f"wrote {args.out / 'serve.md'} and serve.json")
    print(json.dumps(summary))
    if not args.keep_cache:
        C.remove_cache()
    return 0 if text else 1


if __name__ == "__main__":
    sys.exit(main())
