"""Side-by-side CPU benchmark: ours vs llama.cpp vs transformers on the same weights, prompts and threads.

    .venv/bin/python bench/side_by_side.py [--rounds 3] [--threads N] [--quick] [--engines ...] [--models ...]

Engines (bench/run_engine.py; every run is its own process):
  ours fp16 / ours bf16          .asw files written by ascend-convert (--dtype fp16 / bf16)
  ours bf16 act                  the bf16 file with bf16 activations (--activations bf16: VDPBF16PS prefill on AMD)
  llama.cpp F16 / llama.cpp BF16 GGUF files of the same weights written by llama.cpp itself: the random checkpoint by
                                 its convert_hf_to_gguf.py (from the pinned llama-cpp-python sdist), SmolLM2's Q4_1
                                 GGUF re-typed by llama_model_quantize (see _llama.py)
  transformers bf16              AutoModelForCausalLM in bf16 (SmolLM2: transformers dequantizes the same GGUF)
Models: "qwen2" — random weights with Qwen2-0.5B's exact shape (_common.ensure_checkpoint); "smollm2" —
SmolLM2-135M-Instruct from its Q4_1 GGUF (artifacts/fetch_smollm2.py). Cases: prompts of 128 and 2,048 token ids
(drawn at random from the model's vocabulary, seed 0, one JSON file every engine reads), 128 greedy decode steps.
Full mode: --rounds (3) interleaved rounds; in each round every case runs every engine once, the engine order
reversed on odd rounds. --quick: 1 round, a 64-token prompt, 16 decode steps (checks the whole pipeline in
minutes; results go to bench/results/quick/). Results are rewritten after every run, so a run stopped early keeps
the rounds it completed; --render DIR rewrites DIR's report from its side_by_side.json without running anything.

A memory read-bandwidth probe (bench/bandwidth.c, compiled here with the system's cc -O3 -march=native: one widest
vector load per cache line, the fastest plain reader measured) runs at the start of every round with the same thread
count; the best rate seen is the roofline's bandwidth:
  roofline tok/s = bandwidth / (weight bytes read per decode step + KV bytes read at the mean decode context),
weight bytes = every tensor of the fp16 .asw except an untied token embedding (one row of it is read), KV bytes =
2 (K and V) x layers x kv_heads x head_dim x 2 bytes x context. Medians over rounds are reported with [min .. max].
On a shared VM the best probe can be a moment when the neighbours were quiet, well above what the machine streams
most of the time, so the report also gives each share of the roofline at the median of all probes, and a paired
share (both informational: the target stays on the best probe). Paired: ours and llama.cpp run PAIRS more decode
steps after their timed generation, each between two reps of the same probe loaded into the engine's process
(bench/run_engine.py --paired-probe); a step's share is its tok/s over the roofline at the mean of the two reps around
it (KV bytes at that step's context), and the paired share is the median over a run's steps, then over rounds. It
compares a step with the bandwidth of the same fraction of a second, where this machine's bandwidth moves by 2x from
one second to the next. The probe reads 1 GiB per rep, about the bytes of a Qwen2-0.5B step: smaller buffers partly
stay in a large L3 (on the 260 MB-L3 VM we measured on, 256-512 MiB reps read at up to 1.5-2x the rate of 1-4 GiB
ones), which would overstate the bandwidth for a ~1 GB step.

After the probe, each round also runs bench/gemv_ceiling.c (the library's C sources built here as setup.py builds
them, with the probe linked in): the library's own decode GEMV over one 1 GiB fp16 matrix, alternated with probe
reps in one process. Its share of the probe is the ceiling for the decode shares above: a step adds its own costs
(many matmuls, each starting its streams cold and ending at a join).

Alternated (--alternate, by default "ours fp16/llama.cpp F16" and "ours bf16/ours fp16"): once per case and round,
after the case's runs, one more process per pair runs both engines side by side, their decode steps in the order
A B B A ... (bench/run_engine.py --alternate-with). The report gives the median over steps of the ratio of
neighbouring steps' speeds, per round and over rounds, next to the targets it bears on: the runs in separate
processes are minutes apart, and on a shared VM the machine changes in between (the bf16/fp16 decode ratio of one
SmolLM2 case moved between 0.89x and 1.00x from run to run that way, while alternated it stayed at 0.99-1.00x). It
is informational: the targets stay on the separate processes the issue asks for.

--kernels avx2 measures what a machine without AVX-512 gets, on one that has it: ours with its AVX2 kernel set
(ASW_KERNELS=avx2, also in gemv_ceiling), llama.cpp with libraries of the same sdist built for AVX2 + FMA + F16C only
(_llama.ensure_avx2_library, loaded through LLAMA_CPP_LIB_PATH), transformers with ATEN_CPU_CAPABILITY=avx2; results
go to bench/results/avx2/. The probe stays the machine's fastest reader: the bandwidth does not depend on the set.

Writes bench/results/side_by_side.{md,json,png} (the .md is the README's table) and prints the table and the
issue's targets with PASS/FAIL and the margin. The targets are checked here, never by a timed test; exit status 0
whatever the result.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402
import _llama  # noqa: E402
from run_engine import PAIRED, PAIRS  # noqa: E402  (the engines that take a paired probe; steps per run)

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
REFERENCE = "llama.cpp F16"
ENGINE_NAMES = ["ours fp16", "ours bf16", "ours bf16 act", "llama.cpp F16", "llama.cpp BF16", "transformers bf16"]
MODEL_NAMES = {"qwen2": "Qwen2-0.5B shape (random)", "smollm2": "SmolLM2-135M"}
CPU_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_bf16", "avx512_fp16", "avx512_vnni",
             "amx_bf16", "amx_tile", "asimd", "fphp", "asimdhp", "bf16", "sve")
PAUSE_S = 0.5  # between runs, so the previous process's threads are gone
ALTERNATIONS = "ours fp16/llama.cpp F16,ours bf16/ours fp16"  # --alternate's default
QUICK_PAIRS = 6  # paired decode steps per run of ours and llama.cpp with --quick (else run_engine.PAIRS)


@dataclass
class Engine:
    name: str
    kind: str  # run_engine.py's ENGINE
    model: Path
    options: tuple[str, ...] = ()  # more run_engine.py arguments


@dataclass
class Model:
    key: str
    title: str
    engines: list[Engine]
    vocab: int
    weight_bytes: int  # read per decode step
    kv_bytes_per_position: int
    screened_weight_bytes: int = 0  # read per greedy decode step of ours: the lm_head as its int8 screen (0: as above)


@dataclass
class Case:
    model: Model
    prompt: int
    new: int
    prompt_file: Path
    runs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    alternations: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # alternation_label: one per round

    @property
    def title(self) -> str:
        return f"{self.model.title}, prompt {self.prompt}"


# --------------------------------------------------------------------------- models
def bytes_per_step(asw: Path) -> tuple[int, int, int, int]:
    """(weight bytes a decode step reads, the same for a greedy step of ours, KV bytes per cached position, vocab)
    from the .asw manifest. Ours reads the lm_head of a greedy step as its int8 screen (backend_cpu.c: a byte per
    weight and 8 per row, plus the few rows it computes exactly, not counted), unless ASW_GREEDY_SCREEN=0."""
    from ascend_super.runtime.format import AswFile

    with AswFile.open(asw) as f:
        cfg = f.config
        total = sum(t.nbytes for t in f.tensors)
        embd = f.by_name["token_embd.weight"]
        if not cfg["tie_word_embeddings"]:
            total -= embd.nbytes - embd.nbytes // embd.shape[0]
        head = embd if cfg["tie_word_embeddings"] else f.by_name["output.weight"]
        vocab, hidden = int(cfg["vocab_size"]), int(cfg["hidden_size"])
        screened = total if os.environ.get("ASW_GREEDY_SCREEN") == "0" else total - head.nbytes + vocab * (hidden + 8)
        kv = 2 * int(cfg["num_hidden_layers"]) * int(cfg["num_key_value_heads"]) * int(cfg["head_dim"]) * 2
        return total, screened, kv, vocab


def prepare_model(key: str, engines: list[str], regen: bool) -> Model:
    """The model's files for every engine (made once, cached); transformers reads the source itself."""
    if key == "qwen2":
        source = C.ensure_checkpoint(regen)
    else:
        sys.path.insert(0, str(C.ROOT / "artifacts"))
        from fetch_smollm2 import smollm2_gguf

        source = smollm2_gguf()
    asw = {dtype: C.ensure_asw(source, dtype) for dtype in ("fp16", "bf16")}
    listed: list[Engine] = []
    for name in engines:
        if name == "ours bf16 act":
            listed.append(Engine(name, "ours", asw["bf16"], ("--activations", "bf16")))
        elif name.startswith("ours"):
            listed.append(Engine(name, "ours", asw[name.split()[1]]))
        elif name.startswith("llama.cpp"):
            outtype = name.split()[1].lower()
            gguf = (_llama.ensure_gguf_from_hf(source, outtype, no_vocab=True) if key == "qwen2"
                    else _llama.ensure_gguf_retyped(source, outtype))
            listed.append(Engine(name, "llama.cpp", gguf))
        else:
            listed.append(Engine(name, "transformers", source))
    weight_bytes, screened, kv, vocab = bytes_per_step(asw["fp16"])
    return Model(key, MODEL_NAMES[key], listed, vocab, weight_bytes, kv, screened)


# --------------------------------------------------------------------------- machine
def c_build(out: Path, sources: list[Path], flags: list[str], depends: Sequence[Path] = (),
            libs: Sequence[str] = ()) -> Path:
    """`out` compiled from `sources` with `flags`, unless it is newer than every source and `depends` file."""
    if out.is_file() and all(out.stat().st_mtime >= f.stat().st_mtime for f in [*sources, *depends]):
        return out
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise SystemExit(f"building {out.name} needs a C compiler (cc or gcc)")
    out.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([cc, "-std=c11", "-Wall", "-Wextra", "-pthread", *flags, *map(str, sources), "-o", str(out), *libs],
                   check=True)
    return out


def bandwidth_build(library: bool = False) -> Path:
    """bench/bandwidth.c compiled here: the probe program, or (`library`) the same probe as a shared library."""
    kind = ["-shared", "-fPIC", "-DBANDWIDTH_LIBRARY"] if library else []
    return c_build(C.CACHE / ("libbandwidth.so" if library else "bandwidth"), [BENCH / "bandwidth.c"],
                   ["-O3", "-march=native", *kind])


def ceiling_build(folder: Path = C.CACHE) -> Path:
    """bench/gemv_ceiling.c with the library's C sources (as setup.py builds them: never -march=native) and the
    probe (bandwidth.c as an object, -march=native like the probe program), built in `folder`."""
    probe = c_build(folder / "bandwidth-probe.o", [BENCH / "bandwidth.c"],
                    ["-O3", "-march=native", "-DBANDWIDTH_LIBRARY", "-c"])
    native = C.ROOT / "native"
    return c_build(folder / "gemv_ceiling", [BENCH / "gemv_ceiling.c", probe, *sorted((native / "src").glob("*.c"))],
                   ["-O3", "-fno-trapping-math", "-ffp-contract=off", f"-I{native / 'include'}"],
                   depends=sorted((native / "src").glob("*.h")) + sorted((native / "include").glob("*.h")),
                   libs=["-lm", "-ldl"])


def gemv_ceiling(threads: int, pairs: int = 8) -> dict[str, Any]:
    """The decode GEMV alone against the probe (bench/gemv_ceiling.c): the kernel set's name and, per pair, the GB/s
    of a probe rep and of the GEMV right after it."""
    out = subprocess.run([str(ceiling_build()), str(threads), str(C.PROBE_MIB), str(pairs)], check=True,
                         capture_output=True, text=True).stdout
    result: dict[str, Any] = {"kernels": "?", "pairs": []}
    for line in out.splitlines():
        parts = line.split()
        if parts[:1] == ["kernels"] and len(parts) == 2:
            result["kernels"] = parts[1]
        elif parts[:1] == ["pair"] and len(parts) == 4:
            result["pairs"].append([float(parts[2]), float(parts[3])])
    return result


def probe_bandwidth(threads: int, mib: int = C.PROBE_MIB, reps: int = 5) -> list[float]:
    """GB/s of each rep of a streaming read of `mib` MiB by `threads` threads."""
    out = subprocess.run([str(bandwidth_build()), str(threads), str(mib), str(reps)], check=True,
                         capture_output=True, text=True).stdout
    rates = []
    for line in out.splitlines():
        parts = line.split()
        if parts[:1] == ["rep"]:
            rates.append(int(parts[2]) / float(parts[3]) / 1e9)
    return rates


def cpu_info() -> dict[str, Any]:
    model, flags = platform.processor() or "?", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and model in ("?", "", platform.machine()):
                model = value.strip()
            elif key in ("flags", "Features") and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return {"model": model, "arch": platform.machine(), "cpus": os.cpu_count(),
            "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "flags": [f for f in CPU_FLAGS if f in flags], "machine": C.machine_line()}


def load_average() -> float:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return float("nan")


# --------------------------------------------------------------------------- runs
def avx2_everywhere(engines: list[str]) -> None:
    """Every engine started from here on (run_engine.py, gemv_ceiling) on AVX2 kernels: environment variables that
    our library, llama-cpp-python and torch read."""
    os.environ["ASW_KERNELS"] = "avx2"
    os.environ["ATEN_CPU_CAPABILITY"] = "avx2"
    if any(e.startswith("llama.cpp") for e in engines):
        os.environ["LLAMA_CPP_LIB_PATH"] = str(_llama.ensure_avx2_library())


def run_engine(engine: Engine, case: Case, threads: int, *more: str) -> dict[str, Any]:
    """One run_engine.py process for `engine` on `case` (with `more` arguments): its JSON, plus the load average
    before it and the hypervisor steal during it. A failed run stops the benchmark with the tail of its output."""
    cmd = [sys.executable, str(BENCH / "run_engine.py"), engine.kind, str(engine.model), "--prompt-ids",
           str(case.prompt_file), "--new", str(case.new), "--threads", str(threads), *more]
    load = load_average()
    with C.Steal() as steal:
        done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-12:])
        raise SystemExit(f"{engine.name} on {case.title} failed (exit {done.returncode}):\n{tail}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result.update(steal_pct=steal.percent, loadavg=load)
    return result


def run_one(engine: Engine, case: Case, threads: int, pairs: int) -> dict[str, Any]:
    more = [*engine.options]
    if engine.kind in PAIRED and pairs > 0:
        more += ["--paired-probe", str(bandwidth_build(library=True)), "--pairs", str(pairs)]
    result = run_engine(engine, case, threads, *more)
    if result["prompt_tokens"] != case.prompt or result["new_tokens"] != case.new:
        raise SystemExit(f"{engine.name}: ran {result['prompt_tokens']} prompt / {result['new_tokens']} new tokens, "
                         f"asked {case.prompt} / {case.new}")
    return result


def alternation_label(first: str, second: str) -> str:
    return f"{first} ÷ {second}"


def run_alternation(first: Engine, second: Engine, case: Case, threads: int) -> dict[str, Any]:
    """One process running both engines' decode steps alternated (run_engine.py --alternate-with)."""
    return run_engine(first, case, threads, "--alternate-with", second.kind, str(second.model))


def alternated_ratio(result: dict[str, Any]) -> float:
    """The first engine's decode speed over the second's in one alternated run: the median, over the run's steps,
    of the ratio of neighbouring steps' times (step i of each engine ran next to the other's step i)."""
    first, second = result["step_s"]
    return statistics.median(b / a for a, b in zip(first, second))


def med(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def rates(runs: list[dict[str, Any]], case: Case, what: str) -> list[float]:
    count = case.prompt if what == "prefill" else case.new
    return [count / r[f"{what}_s"] for r in runs]


def step_bytes(case: Case, context: float | None = None, engine: str = "") -> float:
    """Bytes a decode step of `engine` reads at `context` cached positions (default: the mean context of the timed
    steps): the model's, or for ours (greedy here) those of its screened steps."""
    if context is None:
        context = case.prompt + 1 + (case.new - 1) / 2
    weights = case.model.weight_bytes
    if engine.startswith("ours") and case.model.screened_weight_bytes:
        weights = case.model.screened_weight_bytes
    return weights + case.model.kv_bytes_per_position * context


def roofline(case: Case, bandwidth: float, context: float | None = None, engine: str = "") -> float:
    return bandwidth * 1e9 / step_bytes(case, context, engine)


def ceiling_shares(ceiling: dict[str, Any]) -> list[float]:
    """Per bench/gemv_ceiling.c pair: the GEMV's GB/s ÷ the probe rep's before it, in %."""
    return [100.0 * gemv / probe for probe, gemv in ceiling["pairs"]]


def ceiling_share(ceiling: dict[str, Any]) -> float:
    """The median of ceiling_shares."""
    return statistics.median(ceiling_shares(ceiling))


def paired_share(case: Case, runs: list[dict[str, Any]], engine: str) -> float | None:
    """Median over runs of the median over a run's paired steps of tok/s / roofline at the reps around the step
    (None when the engine ran no paired steps). Step i attends over prompt + new + 1 + i positions."""
    per_run = []
    for r in runs:
        pairs = r.get("pairs")
        if not pairs:
            continue
        probe = pairs["probe_gbs"]
        per_run.append(statistics.median(
            (1.0 / s) / roofline(case, (probe[i] + probe[i + 1]) / 2, case.prompt + case.new + 1 + i, engine)
            for i, s in enumerate(pairs["step_s"])))
    return 100.0 * statistics.median(per_run) if per_run else None


def summarize(case: Case, bandwidth: float, typical: float) -> list[dict[str, Any]]:
    """Per engine: medians and ranges, ratios to llama.cpp F16, and the share of the roofline at the best probe
    (`bandwidth`, the target's basis) and at the median probe (`typical`: what the machine usually streamed)."""
    rows = []
    ref = case.runs.get(REFERENCE)
    ref_decode = statistics.median(rates(ref, case, "decode")) if ref else None
    ref_prefill = statistics.median(rates(ref, case, "prefill")) if ref else None
    for name, runs in case.runs.items():
        roof = roofline(case, bandwidth, engine=name)
        decode, prefill = rates(runs, case, "decode"), rates(runs, case, "prefill")
        row = {"engine": name, "decode": statistics.median(decode), "decode_min": min(decode),
               "decode_max": max(decode), "prefill": statistics.median(prefill), "prefill_min": min(prefill),
               "prefill_max": max(prefill), "ttft_s": med(runs, "prefill_s"), "roofline": roof}
        row["decode_vs_ref"] = row["decode"] / ref_decode if ref_decode else None
        row["prefill_vs_ref"] = row["prefill"] / ref_prefill if ref_prefill else None
        row["roofline_pct"] = 100.0 * row["decode"] / roof
        row["roofline_pct_typical"] = 100.0 * row["decode"] / roofline(case, typical, engine=name)
        row["roofline_pct_paired"] = paired_share(case, runs, name)
        rows.append(row)
    return rows


def alternated_median(case: Case, label: str) -> float | None:
    """The median over rounds of alternated_ratio for one alternation of the case (None: not run)."""
    results = case.alternations.get(label)
    return statistics.median(alternated_ratio(r) for r in results) if results else None


def first_divergence(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


# --------------------------------------------------------------------------- targets
@dataclass
class Target:
    text: str
    value: float | None
    goal: float
    unit: str  # "x" or "%"
    note: str = ""  # said after the verdict

    @property
    def met(self) -> bool | None:
        return None if self.value is None else self.value >= self.goal

    def line(self) -> str:
        if self.value is None:
            return f"- {self.text}: not measured"
        short = self.goal - self.value
        verdict = "met" if self.met else \
            f"missed by {short:.2f}x" if self.unit == "x" else f"missed by {short:.0f} points"
        fmt = f"{self.value:.2f}{self.unit}" if self.unit == "x" else f"{self.value:.0f}%"
        goal = f"{self.goal:g}{self.unit}"
        return f"- {self.text}: {fmt} (target >= {goal}) — **{verdict}**{self.note}"


def targets(cases: list[Case], summaries: dict[str, list[dict[str, Any]]]) -> list[Target]:
    """Issue 9's targets for the cases measured (a case not run is simply not listed)."""
    def value(case: Case, engine: str, key: str) -> float | None:
        row = next((r for r in summaries[case.title] if r["engine"] == engine), None)
        return None if row is None else row[key]

    def alternated(case: Case, first: str, second: str) -> str:
        ratio = alternated_median(case, alternation_label(first, second))
        return "" if ratio is None else f" (alternated in one process: {ratio:.2f}x)"

    out: list[Target] = []
    for case in cases:
        versus_ref = alternated(case, "ours fp16", REFERENCE)
        if case.model.key == "qwen2":
            out.append(Target(f"Qwen2-0.5B decode at {case.prompt}-token context vs llama.cpp F16",
                              value(case, "ours fp16", "decode_vs_ref"), 1.2, "x", versus_ref))
            if case.prompt < 1024:
                typical = value(case, "ours fp16", "roofline_pct_typical")
                paired = value(case, "ours fp16", "roofline_pct_paired")
                note = "" if typical is None else f" ({typical:.0f} % at the median probe" + (
                    ")" if paired is None else f", {paired:.0f} % paired)")
                out.append(Target(f"Qwen2-0.5B decode at {case.prompt}-token context, share of the roofline",
                                  value(case, "ours fp16", "roofline_pct"), 85.0, "%", note))
        else:
            out.append(Target(f"SmolLM2 decode at {case.prompt}-token context vs llama.cpp F16",
                              value(case, "ours fp16", "decode_vs_ref"), 1.4, "x", versus_ref))
    for case in cases:
        out.append(Target(f"{case.model.title} prefill of {case.prompt} tokens vs llama.cpp F16",
                          value(case, "ours fp16", "prefill_vs_ref"), 1.0, "x"))
    for case in cases:
        fp16, bf16 = value(case, "ours fp16", "decode"), value(case, "ours bf16", "decode")
        out.append(Target(f"{case.title}: bf16 decode vs fp16 (within 10 %)",
                          None if fp16 is None or bf16 is None else bf16 / fp16, 0.9, "x",
                          alternated(case, "ours bf16", "ours fp16")))
    return out


def conversion_target(out_dir: Path) -> str | None:
    """The conversion line from bench/convert.py's latest results in `out_dir` (or the folder above it)."""
    path = next((p for p in (out_dir / "convert.json", out_dir.parent / "convert.json") if p.is_file()), None)
    if path is None:
        return None
    r = json.loads(path.read_text())
    verdict = "met" if r["convert_over_copy"] <= r["copy_target"] else \
        f"missed by {r['convert_over_copy'] - r['copy_target']:.2f}x"
    return (f"- conversion vs a durable copy (read + write + fsync) of the same bytes: "
            f"{r['convert_over_copy']:.2f}x (target <= {r['copy_target']:g}x) — **{verdict}** "
            f"(bench/convert.py, {r['when']}; converter peak RSS {r['peak_rss_mb']:.0f} MB)")


# --------------------------------------------------------------------------- output
def fmt_rate(median: float, lo: float, hi: float) -> str:
    return f"{median:.1f} [{lo:.1f}–{hi:.1f}]" if median < 100 else f"{median:.0f} [{lo:.0f}–{hi:.0f}]"


def huge_pages_note(shares: dict[str, float | None]) -> str:
    """The sentence on 2 MiB pages: the share of each engine's model-file mapping that got them (first run)."""
    known = {kind: share for kind, share in shares.items() if share is not None}
    if not known:
        return ""
    return (" Weights in 2 MiB pages (share of the model file's mapping, first run): "
            + ", ".join(f"{kind} {share * 100:.0f} %" for kind, share in known.items())
            + " (bench/run_engine.py puts every GGUF's page cache in 2 MiB folios before llama.cpp maps it, as our "
              "runtime does for its own file).")


def roofline_cell(row: dict[str, Any]) -> str:
    paired = row.get("roofline_pct_paired")
    return (f"{row['roofline_pct']:.0f} % ({row['roofline_pct_typical']:.0f} %"
            + ("" if paired is None else f"; {paired:.0f} %") + ")")


def markdown(meta: dict[str, Any], cases: list[Case], summaries: dict[str, list[dict[str, Any]]],
             goals: list[Target]) -> str:
    cpu = meta["cpu"]
    kernels = meta.get("kernels", "native")  # absent from results written before --kernels
    lines = [
        f"Measured {meta['when']} by "
        + (f"`{meta['command']}`" if "command" in meta  # absent from results written before it was recorded
           else "`make bench`" if kernels == "native" else f"`bench/side_by_side.py --kernels {kernels}`")
        + f" ({'quick mode' if meta['quick'] else 'full run'}"
        + ("" if kernels == "native" else f"; every engine on {kernels.upper()} kernels only") + "): "
        f"{meta['rounds_done']} of {meta['rounds']} interleaved round(s) completed"
        f"{'' if meta['rounds_done'] == meta['rounds'] else ' (stopped early)'}, "
        f"each run its own process, {meta['threads']} threads for every "
        f"engine, greedy, {meta['new']} decode steps after the prompt, identical prompt token ids.",
        "",
        f"Machine: {cpu['model']} ({cpu['arch']}), {cpu['cpus']} cpus ({cpu['usable_cpus']} usable), flags "
        f"{' '.join(cpu['flags']) or '-'}; measured read bandwidth {meta['bandwidth_gbs']:.1f} GB/s "
        f"({meta['threads']} threads, best of {len(meta['bandwidth_all'])} probes, "
        f"range {min(meta['bandwidth_all']):.1f}–{max(meta['bandwidth_all']):.1f}). "
        f"Ours: {meta['ours_kernels']} kernels; llama.cpp {meta['llama_version']} "
        f"({meta['llama_system_info']}).{huge_pages_note(meta.get('huge_pages') or {})}",
        "",
        *([f"ours bf16 act: the bf16 file with `--activations bf16` (every matmul input rounded to bf16; the library "
           f"said \"{meta['ours_bf16_act']}\"): an option, not the default, so the targets below stay on ours fp16 "
           f"and ours bf16.", ""] if meta.get("ours_bf16_act") else []),
        f"Noise: load average {meta['load_min']:.1f}–{meta['load_max']:.1f} during the runs (on "
        f"{cpu['usable_cpus']} cpus), hypervisor steal up to {meta['steal_max']:.0f} %; the widest decode "
        f"spread between rounds of one engine was {meta['worst_spread_pct']:.0f} % (max/min − 1). "
        f"[min–max] over rounds in brackets.",
        "",
        "| case | engine | runs | decode tok/s | prefill tok/s | TTFT s | decode × llama.cpp F16 "
        "| prefill × llama.cpp F16 | decode % of roofline: best probe (median probe; paired) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for case in cases:
        for r in summaries[case.title]:
            vs = (lambda x: "—" if x is None else f"{x:.2f}×")
            lines.append(
                f"| {case.title} | {r['engine']} | {len(case.runs[r['engine']])} | {fmt_rate(r['decode'], r['decode_min'], r['decode_max'])} | "
                f"{fmt_rate(r['prefill'], r['prefill_min'], r['prefill_max'])} | {r['ttft_s']:.2f} | "
                f"{vs(r['decode_vs_ref'])} | {vs(r['prefill_vs_ref'])} | {roofline_cell(r)} |")
    paired = []
    for case in cases:
        ours, ref = case.runs.get("ours fp16", []), case.runs.get(REFERENCE, [])
        pairs = list(zip(ours, ref))
        if pairs:
            paired.append(f"{case.title}: decode " + ", ".join(f"{b['decode_s'] / a['decode_s']:.2f}×" for a, b in pairs)
                          + "; prefill " + ", ".join(f"{b['prefill_s'] / a['prefill_s']:.2f}×" for a, b in pairs)
                          + " (load " + ", ".join(f"{a['loadavg']:.1f}" for a, _ in pairs) + ")")
    if paired:
        lines += ["", "Round by round, ours fp16 ÷ llama.cpp F16 (the two runs of a round are minutes apart, so they "
                  "share the machine's state better than the medians do): " + "; ".join(paired) + "."]
    alternated = [f"{label}: " + "; ".join(
        f"{case.title} {alternated_median(case, label):.2f}× ("
        + ", ".join(f"{alternated_ratio(r):.2f}" for r in case.alternations[label]) + ")"
        for case in cases if case.alternations.get(label))
        for label in dict.fromkeys(label for case in cases for label in case.alternations)]
    if alternated:
        gap = next(r["gap_s"] for case in cases for results in case.alternations.values() for r in results)
        lines += ["", f"Alternated in one process (bench/run_engine.py --alternate-with, once per case and round: "
                  f"both engines loaded side by side, each fed the prompt, then their decode steps in the order A B B "
                  f"A A B …, each after {gap * 1e3:.0f} ms idle; the median over a run's steps of the ratio of "
                  f"neighbouring steps' speeds, then over rounds, with each round's in brackets; informational, as the "
                  f"targets stay on the runs in separate processes above, but the two engines always share the "
                  f"machine's state here): " + "; ".join(alternated) + "."]
    lines += ["", "Roofline (tok/s = bandwidth ÷ bytes read per decode step): " + "; ".join(
        f"{c.title}: {roofline(c, meta['bandwidth_gbs']):.1f} tok/s "
        f"({step_bytes(c) / 1e6:.0f} MB/step"
        + (f"; ours {roofline(c, meta['bandwidth_gbs'], engine='ours'):.1f} tok/s at "
           f"{step_bytes(c, engine='ours') / 1e6:.0f} MB/step)" if c.model.screened_weight_bytes else ")")
        for c in cases) + f" at the best probe ({meta['bandwidth_gbs']:.1f} GB/s, the targets' basis); in brackets in "
        f"the table, the share at the median of all {len(meta['bandwidth_all'])} probes "
        f"({meta['bandwidth_median_gbs']:.1f} GB/s: what this machine usually streamed during the run)"
        + (f", and the paired share ({meta['pairs']} decode steps per run of ours and llama.cpp after the timed ones, "
           f"each between two probe reps in the same process: the median of step tok/s ÷ the roofline at the reps "
           f"around it; informational, as is the median-probe share)" if meta.get("pairs") else "") + "."
        + (" Ours' greedy steps read the lm_head as its int8 greedy screen (a byte per weight instead of two, and "
           "exact rows only for the few candidates it leaves: the same token, bit for bit), so every share of ours "
           "is against its own, smaller bytes; llama.cpp and transformers compute every logit."
           if any(c.model.screened_weight_bytes for c in cases) else ""),
        ""]
    ceiling = meta.get("ceiling")
    if ceiling and ceiling["pairs"]:
        shares = ceiling_shares(ceiling)
        lines += [f"Ceiling: the decode GEMV alone ({ceiling['kernels']} kernels, the library's thread pool, one "
                  f"{C.PROBE_MIB} MiB fp16 matrix of 896 columns: bench/gemv_ceiling.c) streamed at "
                  f"{statistics.median(shares):.0f} % of the probe rep just before it (median of {len(shares)} pairs, "
                  f"{min(shares):.0f}–{max(shares):.0f} %): about the most a decode step could reach without its own "
                  f"costs (a Qwen2-0.5B step is 97 matmuls, each starting its streams cold and ending at a join).",
                  ""]
    lines += ["Targets (issue 9 §2):", ""]
    lines += [t.line() for t in goals]
    lines.append(meta["conversion"] or "- conversion vs a durable copy: not measured (bench/convert.py)")
    if meta.get("agreement"):
        lines += ["", "Greedy tokens, first divergence from llama.cpp F16 (random or small models in different "
                  "precisions part early; a sanity check, not a parity test): " + "; ".join(meta["agreement"]) + "."]
    return "\n".join(lines) + "\n"


def plot(path: Path, cases: list[Case], summaries: dict[str, list[dict[str, Any]]], meta: dict[str, Any]) -> None:
    """One panel per (decode | prefill, case): median tok/s bars with min–max whiskers, the roofline dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = dict(zip(ENGINE_NAMES, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    fig, axes = plt.subplots(2, len(cases), figsize=(max(8.0, 3.3 * len(cases) + 1), 7), squeeze=False)
    for row, what in enumerate(("decode", "prefill")):
        for col, case in enumerate(cases):
            ax = axes[row][col]
            rows = summaries[case.title]
            xs = range(len(rows))
            ax.bar(xs, [r[what] for r in rows], color=[colors[r["engine"]] for r in rows],
                   yerr=[[r[what] - r[f"{what}_min"] for r in rows], [r[f"{what}_max"] - r[what] for r in rows]],
                   capsize=3)
            if what == "decode":
                ax.axhline(roofline(case, meta["bandwidth_gbs"]), color="k", linestyle="--", linewidth=1)
            ax.set_xticks(list(xs))
            ax.set_xticklabels([r["engine"].replace(" ", "\n", 1) for r in rows], fontsize=7)
            ax.set_title(f"{case.title}\n{what}", fontsize=8)
            if col == 0:
                ax.set_ylabel(f"{what} tok/s")
    fig.suptitle(f"{meta['cpu']['model']}, {meta['threads']} threads — {meta['when']}\nread bandwidth "
                 f"{meta['bandwidth_gbs']:.1f} GB/s (dashed: decode roofline) — load average {meta['load_min']:.0f}–{meta['load_max']:.0f}"
                 f"{' — QUICK' if meta['quick'] else ''}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_results(out_dir: Path, cases: list[Case], meta: dict[str, Any], bandwidth_all: list[float]) -> str:
    """side_by_side.{md,json,png} from the runs so far; returns the markdown."""
    done = [c for c in cases if c.runs]
    bandwidth = max(bandwidth_all)
    all_runs = [r for c in done for runs in c.runs.values() for r in runs]
    typical = statistics.median(bandwidth_all)
    summaries = {c.title: summarize(c, bandwidth, typical) for c in done}
    spreads = [max(v) / min(v) - 1 for c in done for runs in c.runs.values() for v in [rates(runs, c, "decode")]]
    first = lambda kind: next((r for r in all_runs if r["engine"] == kind), {})  # noqa: E731
    agreement = []
    for case in done:
        ref = case.runs.get(REFERENCE)
        for name, runs in case.runs.items():
            if ref and name != REFERENCE:
                agreement.append(f"{case.model.key}/{case.prompt} {name}: "
                                 f"{first_divergence(runs[0]['tokens'], ref[0]['tokens'])} of {case.new + 1}")
    meta = {
        **meta, "rounds_done": min(len(runs) for c in done for runs in c.runs.values()), "when": time.strftime("%Y-%m-%d %H:%M %Z", time.localtime(meta["started"])), "bandwidth_gbs": bandwidth, "bandwidth_median_gbs": typical,
        "bandwidth_all": bandwidth_all, "ours_kernels": first("ours").get("kernels", "?"),
        "ours_bf16_act": next((r.get("describe", "?") for c in done for r in c.runs.get("ours bf16 act", [])), None),
        "llama_version": first("llama.cpp").get("version", "-"),
        "llama_system_info": first("llama.cpp").get("system_info", "-"),
        "huge_pages": {kind: first(kind).get("huge_page_share") for kind in ("ours", "llama.cpp")},
        "load_min": min(r["loadavg"] for r in all_runs), "load_max": max(r["loadavg"] for r in all_runs),
        "steal_max": max(r["steal_pct"] for r in all_runs), "worst_spread_pct": 100 * max(spreads),
        "duration_s": meta.get("duration_s") or time.time() - meta["started"], "agreement": agreement, "conversion": conversion_target(out_dir),
    }
    goals = targets(done, summaries)
    out_dir.mkdir(parents=True, exist_ok=True)
    text = markdown(meta, done, summaries, goals)
    (out_dir / "side_by_side.md").write_text(text, encoding="utf-8")
    (out_dir / "side_by_side.json").write_text(json.dumps({
        "meta": meta,
        "cases": [{"model": c.model.key, "title": c.title, "prompt": c.prompt, "new": c.new,
                   "weight_bytes": c.model.weight_bytes, "kv_bytes_per_position": c.model.kv_bytes_per_position,
                   "screened_weight_bytes": c.model.screened_weight_bytes,
                   "summary": summaries[c.title], "runs": c.runs, "alternations": c.alternations} for c in done],
        "targets": [{"text": t.text, "value": t.value, "goal": t.goal, "unit": t.unit, "met": t.met} for t in goals],
    }, indent=1), encoding="utf-8")
    plot(out_dir / "side_by_side.png", done, summaries, meta)
    return text


# --------------------------------------------------------------------------- main
def render(out_dir: Path) -> str:
    """Rewrite side_by_side.{md,png} (and .json) in `out_dir` from its side_by_side.json, running nothing."""
    saved = json.loads((out_dir / "side_by_side.json").read_text())
    meta = saved["meta"]
    if "started" not in meta:  # written before the epoch was kept
        meta["started"] = time.mktime(time.strptime(meta["when"].rsplit(" ", 1)[0], "%Y-%m-%d %H:%M"))
    cases = []
    for c in saved["cases"]:
        model = Model(c["model"], MODEL_NAMES[c["model"]], [], 0, c["weight_bytes"], c["kv_bytes_per_position"],
                      c.get("screened_weight_bytes", 0))
        cases.append(Case(model, c["prompt"], c["new"], Path(), c["runs"], c.get("alternations", {})))
    return write_results(out_dir, cases, meta, meta["bandwidth_all"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--render", type=Path, metavar="DIR", help="only rewrite DIR's report from its .json")
    parser.add_argument("--quick", action="store_true", help="1 round, 64-token prompt, 16 decode steps")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="[usable cpus]")
    parser.add_argument("--prompts", default=None, help="comma-separated prompt lengths [128,2048; quick: 64]")
    parser.add_argument("--new", type=int, default=None, help="decode steps [128; quick: 16]")
    parser.add_argument("--engines", default=",".join(ENGINE_NAMES), help="comma-separated, from: "
                        + ", ".join(ENGINE_NAMES))
    parser.add_argument("--pairs", type=int, default=None,
                        help=f"paired decode steps per run, 0: none [{PAIRS}; quick: {QUICK_PAIRS}]")
    parser.add_argument("--models", default="qwen2,smollm2", help="comma-separated, from: qwen2, smollm2")
    parser.add_argument("--alternate", default=ALTERNATIONS,
                        help="comma-separated FIRST/SECOND engine pairs whose decode steps are also alternated in one "
                             "process, once per case and round (pairs whose engines are not run are skipped; "
                             f"'none': no alternation) [{ALTERNATIONS}]")
    parser.add_argument("--kernels", choices=("native", "avx2"), default="native",
                        help="avx2: every engine on AVX2 kernels only, results in bench/results/avx2 [native]")
    parser.add_argument("--out", type=Path, default=None,
                        help="results folder [bench/results; quick: .../quick; --kernels avx2: .../avx2]")
    C.add_common_args(parser, "keep the generated checkpoint, .asw and .gguf files in .cache/bench/ [yes]")
    args = parser.parse_args()
    if args.render:
        print(render(args.render))
        return
    rounds = 1 if args.quick else args.rounds
    prompts = [int(p) for p in (args.prompts or ("64" if args.quick else "128,2048")).split(",")]
    new = args.new or (16 if args.quick else 128)
    pairs = args.pairs if args.pairs is not None else QUICK_PAIRS if args.quick else PAIRS
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = [e for e in engines if e not in ENGINE_NAMES] + \
        [m for m in args.models.split(",") if m not in MODEL_NAMES]
    alternations = [] if args.alternate.strip() == "none" else \
        [tuple(e.strip() for e in pair.split("/")) for pair in args.alternate.split(",") if pair.strip()]
    unknown += [f"alternation {'/'.join(pair)}" for pair in alternations
                if len(pair) != 2 or any(e not in ENGINE_NAMES or e == "ours bf16 act" or e.startswith("transformers")
                                         for e in pair)]
    if unknown:
        raise SystemExit(f"unknown engine or model: {', '.join(unknown)}")
    alternations = [pair for pair in alternations if all(e in engines for e in pair)]
    if REFERENCE not in engines:
        C.log(f"note: without {REFERENCE} there is no reference for the ratios")
    out_dir = args.out or (RESULTS / "quick" if args.quick else RESULTS)
    if args.kernels == "avx2":
        avx2_everywhere(engines)
        out_dir = args.out or out_dir / "avx2"

    import numpy as np

    models = [prepare_model(key, engines, args.regen) for key in args.models.split(",")]
    cases: list[Case] = []
    ids_dir = C.CACHE / "prompts"
    ids_dir.mkdir(parents=True, exist_ok=True)
    for model in models:
        for prompt in prompts:
            ids = np.random.default_rng(0).integers(0, model.vocab, size=prompt).tolist()
            path = ids_dir / f"{model.key}-{prompt}.json"
            path.write_text(json.dumps(ids))
            cases.append(Case(model, prompt, new, path))

    cpu = cpu_info()
    C.log(f"{cpu['model']}, {cpu['usable_cpus']} usable cpus; {rounds} round(s) x {len(cases)} case(s) x "
          f"{len(engines)} engine(s), {args.threads} threads")
    bandwidth_all: list[float] = []
    meta = {"started": time.time(), "quick": args.quick, "rounds": rounds, "threads": args.threads, "new": new, "prompts": prompts,
            "cpu": cpu, "pairs": pairs, "kernels": args.kernels,
            "command": " ".join(["bench/side_by_side.py", *(shlex.quote(arg) for arg in sys.argv[1:])])}
    for rnd in range(rounds):
        bw = probe_bandwidth(args.threads)
        bandwidth_all += bw
        C.log(f"round {rnd + 1}: read bandwidth {max(bw):.1f} GB/s (reps {', '.join(f'{x:.1f}' for x in bw)})")
        ceiling = gemv_ceiling(args.threads)
        meta.setdefault("ceiling", {"kernels": ceiling["kernels"], "pairs": []})["pairs"] += ceiling["pairs"]
        C.log(f"round {rnd + 1}: decode GEMV alone at {ceiling_share(meta['ceiling']):.0f} % of the probe "
              f"({ceiling['kernels']} kernels, bench/gemv_ceiling.c)")
        for case in cases:
            order = case.model.engines if rnd % 2 == 0 else case.model.engines[::-1]
            for engine in order:
                result = run_one(engine, case, args.threads, pairs)
                case.runs.setdefault(engine.name, []).append(result)
                C.log(f"round {rnd + 1}  {case.title:38}  {engine.name:17}  "
                      f"prefill {case.prompt / result['prefill_s']:7.1f} tok/s  "
                      f"decode {case.new / result['decode_s']:6.2f} tok/s  "
                      f"(load {result['loadavg']:.1f}, steal {result['steal_pct']:.0f}%)")
                # after every run, so a run stopped early still leaves the rounds it completed on disk
                write_results(out_dir, cases, meta, bandwidth_all)
                time.sleep(PAUSE_S)
            by_name = {engine.name: engine for engine in case.model.engines}
            for first, second in alternations:
                result = run_alternation(by_name[first], by_name[second], case, args.threads)
                label = alternation_label(first, second)
                case.alternations.setdefault(label, []).append(result)
                C.log(f"round {rnd + 1}  {case.title:38}  {label}: {alternated_ratio(result):.2f}x alternated in "
                      f"one process (load {result['loadavg']:.1f}, steal {result['steal_pct']:.0f}%)")
                write_results(out_dir, cases, meta, bandwidth_all)
                time.sleep(PAUSE_S)

    text = write_results(out_dir, cases, meta, bandwidth_all)
    print(text)
    C.log(f"wrote {out_dir / 'side_by_side.md'}, .json, .png")
    if not args.keep_cache:
        C.remove_cache()


if __name__ == "__main__":
    main()
