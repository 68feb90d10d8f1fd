"""Conversion speed and memory on a Qwen2-0.5B-shape checkpoint: is `ascend-convert` close to a durable copy?

    .venv/bin/python bench/convert.py [--rounds 3] [--quick] [--warm] [--dtype fp16] [--no-keep-cache] [--gguf]
                                      [--verify-only]

What is measured, per round (rounds interleave the measurements and alternate their order):
  read     seconds to read every byte of every *.safetensors once (os.readinto, 16 MiB buffer, no processing).
  copy     read every byte and write it to a new file in the same cache folder, then fsync: the least a
           converter that writes its output durably can do (the target's floor); the file is deleted afterwards.
  convert  wall seconds of the real CLI (`ascend-convert DIR -o OUT.asw --dtype fp16`, its main() run by a fresh
           `python -c`), interpreter start and imports included, plus the "time" the CLI reports for the
           conversion itself. Peak RSS is the converter process's own high-water mark, VmHWM from
           /proc/self/status read at its exit (GNU `time -v` semantics, mmap'd source pages it touched
           included). Not the child's ru_maxrss from wait4: Linux carries the parent's RSS across fork + exec into
           that figure, which reported ~3 GB for a converter that peaks near 160 MB.
           The output .asw is deleted after each round.
Cold by default: before every read, copy and convert the source files are evicted from the page cache with
posix_fadvise(POSIX_FADV_DONTNEED) (checked with `fincore` where present), so all are measured reading from disk.
--warm reads each file once instead, so all are measured from the page cache.
Targets: median convert / median copy <= 1.2 (issue 9), converter peak RSS <= 1500 MB; convert / read is printed
for context. The script prints PASS/FAIL, writes bench/results/convert.json (bench/side_by_side.py quotes it;
--quick: one round, results under bench/results/quick/), and always exits 0 (a report, not a test).
After the conversion rounds:
  verify   `ascend-inspect --verify`'s hashing (AswFile.verify) of the converted fp16 file on a warm page cache
           (the file is read once first), with 1 thread and with 2 threads, rounds interleaved; GB/s of tensor data
           (target >= 2 GB/s with 2 threads). --verify-only measures verify alone.

The checkpoint (random bf16 weights, Qwen2-0.5B's exact shapes, one 988 MB model.safetensors) is generated once
and cached under .cache/bench/ (see _common.py); --no-keep-cache removes .cache/bench/ at the end.
--gguf measures the same weights as a Q8_0 GGUF source instead (every weight is dequantized row block by row
block, so the memory target is the same).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"

COPY_TARGET = 1.2
VERIFY_TARGET_GBPS = 2.0
VERIFY_THREADS = (1, 2)
RSS_TARGET_MB = 1500.0
PEAK_MARK = "bench-peak-rss-kb"
# the converter CLI's main() in a fresh interpreter that reports its own peak RSS (VmHWM) on stderr at exit
CHILD = f"""
import atexit, sys
def _peak():
    try:
        with open('/proc/self/status') as status:
            kb = next(int(line.split()[1]) for line in status if line.startswith('VmHWM:'))
    except (OSError, StopIteration, ValueError):
        return
    sys.stderr.write('{PEAK_MARK} %d\\n' % kb)
    sys.stderr.flush()
atexit.register(_peak)
from ascend_super.convert.cli import main
sys.exit(main())
"""
CHUNK = 16 * 1024 * 1024


def prepare(files: list[Path], warm: bool) -> str:
    """Put the files in the requested cache state; returns a note on what fincore saw ('' if unknown)."""
    if warm:
        read_all(files)
    else:
        C.drop_page_cache(files)
    res = C.resident_bytes(files)
    return "" if res is None else f"{res / 1e6:.0f} MB resident"


def read_all(files: list[Path]) -> int:
    buf = bytearray(CHUNK)
    total = 0
    for path in files:
        with open(path, "rb", buffering=0) as handle:
            while n := handle.readinto(buf):
                total += n
    return total


def time_read(files: list[Path]) -> float:
    started = time.perf_counter()
    read_all(files)
    return time.perf_counter() - started


def time_copy(files: list[Path], out: Path) -> float:
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    started = time.perf_counter()
    with open(out, "wb", buffering=0) as dst:
        for path in files:
            with open(path, "rb", buffering=0) as handle:
                while n := handle.readinto(buf):
                    dst.write(view[:n])
        os.fsync(dst.fileno())
    seconds = time.perf_counter() - started
    out.unlink()
    return seconds


def time_convert(src: Path, out: Path, dtype: str) -> dict[str, float]:
    cmd = [sys.executable, "-c", CHILD, str(src), "-o", str(out), "--dtype", dtype]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "COLUMNS": "120"})
    output = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0 or not out.is_file():
        raise SystemExit(f"ascend-convert failed (exit {proc.returncode}):\n{output}")
    match = re.search(r"\btime\s+([0-9.]+)\s*s", output)
    peak = re.search(rf"^{PEAK_MARK} (\d+)$", output, re.MULTILINE)
    result = {"wall": wall, "inner": float(match.group(1)) if match else float("nan"),
              "rss_mb": int(peak.group(1)) / 1024 if peak else float("nan"), "cpu": usage.ru_utime + usage.ru_stime,
              "nbytes": out.stat().st_size}
    out.unlink()
    return result


def measure_verify(checkpoint: Path, dtype: str, rounds: int) -> None:
    """Hash every tensor of the converted file from a warm page cache: median GB/s per thread count."""
    from ascend_super.runtime import format as fmt

    path = C.ensure_asw(checkpoint, dtype)
    read_all([path])  # warm
    speeds: dict[int, list[float]] = {threads: [] for threads in VERIFY_THREADS}
    for rnd in range(rounds):
        order = VERIFY_THREADS if rnd % 2 == 0 else tuple(reversed(VERIFY_THREADS))
        for threads in order:
            with fmt.AswFile.open(path) as asw, C.Steal() as steal:
                started = time.perf_counter()
                asw.verify(threads=threads)
                seconds = time.perf_counter() - started
                nbytes = asw.preamble.data_nbytes
            speeds[threads].append(nbytes / 1e9 / seconds)
            print(f"round {rnd + 1}  verify   {threads} thread(s): {seconds:.3f} s, {speeds[threads][-1]:.2f} GB/s   "
                  f"[{steal}]", flush=True)
    print()
    rows = [[f"verify, {threads} thread(s), warm", f"{C.median(speeds[threads]):.2f}",
             f"{min(speeds[threads]):.2f} .. {max(speeds[threads]):.2f}"] for threads in VERIFY_THREADS]
    print(C.table(["what", "median GB/s", "min .. max"], rows))
    best = C.median(speeds[max(VERIFY_THREADS)])
    print(f"verify, {max(VERIFY_THREADS)} threads   {best:.2f} GB/s ({nbytes / 1e6:.0f} MB of tensors)   target >= "
          f"{VERIFY_TARGET_GBPS:g} GB/s  -> {'PASS' if best >= VERIFY_TARGET_GBPS else 'FAIL'}")


def ensure_source(gguf: bool, regen: bool) -> Path:
    """The cached source, generated in a child process: a converter started from this process after it held the
    generated model would report this process's RSS as its own peak (Linux carries ru_maxrss across exec)."""
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r}); import _common as C; "
            f"p = C.ensure_checkpoint({regen!r}); print(C.ensure_gguf(p) if {gguf!r} else p)")
    done = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise SystemExit(f"generating the benchmark source failed (exit {done.returncode})")
    return Path(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtype", default="fp16", choices=["fp16", "bf16"], help="target dtype [fp16]")
    parser.add_argument("--warm", action="store_true", help="measure from the page cache instead of cold")
    parser.add_argument("--verify-only", action="store_true", help="measure only the --verify hashing speed")
    parser.add_argument("--quick", action="store_true", help="one round; results under bench/results/quick/")
    parser.add_argument("--gguf", action="store_true", help="convert the same weights from a Q8_0 GGUF")
    C.add_common_args(parser, "keep the generated checkpoint in .cache/bench/ for the next run [yes]")
    args = parser.parse_args()
    rounds = 1 if args.quick else args.rounds

    checkpoint = ensure_source(args.gguf, args.regen)
    files = [checkpoint] if args.gguf else C.source_files(checkpoint)
    kind = "GGUF, Q8_0 weights" if args.gguf else f"{len(files)} safetensors file(s), bf16"
    source_nbytes = sum(f.stat().st_size for f in files)
    out = C.CACHE / f"bench-convert-{os.getpid()}.asw"
    copy_out = C.CACHE / f"bench-copy-{os.getpid()}.bin"
    state = "warm (page cache)" if args.warm else "cold (posix_fadvise DONTNEED before each measurement)"
    when = time.strftime("%Y-%m-%d %H:%M %Z")

    print(f"machine   {C.machine_line()}")
    print(f"source    {checkpoint}  ({kind}, {source_nbytes / 1e6:.0f} MB)")
    if args.verify_only:
        print(f"measured  warm page cache; {rounds} interleaved rounds; verify of the converted {args.dtype} file")
        print()
        measure_verify(checkpoint, args.dtype, rounds)
        return
    print(f"measured  {state}; {rounds} interleaved rounds; convert -> {args.dtype}, layout nd, via the CLI")
    print()

    measured: dict[str, list[float]] = {"read": [], "copy": []}
    converts: list[dict[str, float]] = []
    try:
        for rnd in range(rounds):
            steps = ["read", "copy", "convert"]
            if rnd % 2:
                steps.reverse()
            for step in steps:
                note = prepare(files, args.warm)
                with C.Steal() as steal:
                    if step == "read":
                        measured["read"].append(time_read(files))
                    elif step == "copy":
                        measured["copy"].append(time_copy(files, copy_out))
                    else:
                        converts.append(time_convert(checkpoint, out, args.dtype))
                if step == "convert":
                    r = converts[-1]
                    shown = (f"{r['wall']:.2f} s wall ({r['inner']:.2f} s reported by the CLI), "
                             f"peak RSS {r['rss_mb']:.0f} MB, cpu {r['cpu']:.2f} s")
                else:
                    shown = f"{measured[step][-1]:.2f} s"
                note = ", ".join(x for x in (note and f"before: {note}", str(steal)) if x)
                print(f"round {rnd + 1}  {step:7}  {shown}   [{note}]", flush=True)
    finally:
        for leftover in (out, copy_out):
            if leftover.exists():
                leftover.unlink()

    reads, copies = measured["read"], measured["copy"]
    walls = [r["wall"] for r in converts]
    read_s, copy_s, conv_s = C.median(reads), C.median(copies), C.median(walls)
    inner_s = C.median([r["inner"] for r in converts])
    rss_mb = max(r["rss_mb"] for r in converts)
    out_nbytes = converts[-1]["nbytes"]
    over_copy, over_read = conv_s / copy_s, conv_s / read_s
    rows = [
        ["read source", f"{read_s:.2f}", C.spread(reads), f"{source_nbytes / 1e9 / read_s:.2f} GB/s read"],
        ["read + write + fsync (floor)", f"{copy_s:.2f}", C.spread(copies),
         f"{source_nbytes / 1e9 / copy_s:.2f} GB/s copied"],
        ["ascend-convert, process wall", f"{conv_s:.2f}", C.spread(walls),
         f"{source_nbytes / 1e9 / conv_s:.2f} GB/s read, {out_nbytes / 1e9 / conv_s:.2f} GB/s written"],
        ["ascend-convert, reported time", f"{inner_s:.2f}", C.spread([r['inner'] for r in converts]),
         f"{out_nbytes / 1e9 / inner_s:.2f} GB/s written"],
    ]
    print()
    print(C.table(["what", "median s", "min .. max", "throughput"], rows))
    print()
    print(f"output size            {out_nbytes:,} bytes ({out_nbytes / 1e6:.0f} MB, {args.dtype})")
    print(f"convert / copy         {over_copy:.2f}x  (the floor for any converter that writes its output durably: "
          f"read + write + fsync of the same bytes)   target <= {COPY_TARGET:g}x"
          f"  -> {'PASS' if over_copy <= COPY_TARGET else 'FAIL'}")
    print(f"convert / read         {over_read:.2f}x  (context; reported-time / read: {inner_s / read_s:.2f}x)")
    print(f"converter peak RSS     {rss_mb:.0f} MB (max over rounds; the converter's own VmHWM)   "
          f"target <= {RSS_TARGET_MB:g} MB  -> {'PASS' if rss_mb <= RSS_TARGET_MB else 'FAIL'}")
    results = RESULTS / "quick" if args.quick else RESULTS
    results.mkdir(parents=True, exist_ok=True)
    (results / "convert.json").write_text(json.dumps({
        "when": when, "machine": C.machine_line(), "state": state, "rounds": rounds, "dtype": args.dtype,
        "source_bytes": source_nbytes, "output_bytes": out_nbytes, "read_s": reads, "copy_s": copies,
        "convert_s": walls, "convert_reported_s": [r["inner"] for r in converts],
        "peak_rss_mb": rss_mb, "convert_over_copy": over_copy, "convert_over_read": over_read,
        "copy_target": COPY_TARGET, "rss_target_mb": RSS_TARGET_MB,
    }, indent=1), encoding="utf-8")
    print()
    measure_verify(checkpoint, args.dtype, rounds)
    if not args.keep_cache:
        C.remove_cache()

if __name__ == "__main__":
    main()
