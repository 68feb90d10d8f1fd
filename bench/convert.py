"""Conversion speed and memory on a Qwen2-0.5B-shape checkpoint: is `ascend-convert` close to just reading the source?

    .venv/bin/python bench/convert.py [--rounds 3] [--warm] [--dtype fp16] [--no-keep-cache] [--gguf]

What is measured, per round (rounds interleave the measurements and alternate their order):
  read     seconds to read every byte of every *.safetensors once (os.readinto, 16 MiB buffer, no processing).
  copy     (context only) read every byte and write it to a new file in the same cache folder, then fsync:
           the least a converter that writes its output durably can do; the file is deleted afterwards.
  convert  wall seconds of the real CLI, `ascend-convert DIR -o OUT.asw --dtype fp16`, in a child process
           (interpreter start and imports included), plus the "time" the CLI reports for the conversion itself.
           Peak RSS is that child's own ru_maxrss (os.wait4), so it includes mmap'd source pages it touched.
           The output .asw is deleted after each round.
Cold by default: before every read, copy and convert the source files are evicted from the page cache with
posix_fadvise(POSIX_FADV_DONTNEED) (checked with `fincore` where present), so all are measured reading from disk.
--warm reads each file once instead, so all are measured from the page cache.
  verify   `ascend-inspect --verify`'s hashing (AswFile.verify) of the converted fp16 file on a warm page cache
           (the file is read once first), with 1 thread and with 2 threads, rounds interleaved; GB/s of tensor data.
Targets: median convert / median read <= 2, converter peak RSS <= 1500 MB, verify >= 2 GB/s with 2 threads. The
script prints PASS/FAIL and always exits 0 (a report, not a test). --verify-only measures verify alone.

The checkpoint (random bf16 weights, Qwen2-0.5B's exact shapes, one 988 MB model.safetensors) is generated once
and cached under .cache/bench/ (see _common.py); --no-keep-cache removes .cache/bench/ at the end.
--gguf measures the same weights as a Q8_0 GGUF source instead (every weight is dequantized row block by row
block, so the memory target is the same).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

RATIO_TARGET = 2.0
VERIFY_TARGET_GBPS = 2.0
VERIFY_THREADS = (1, 2)
RSS_TARGET_MB = 1500.0
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
    cmd = C.convert_cmd(src, out, dtype)
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "COLUMNS": "120"})
    output = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0 or not out.is_file():
        raise SystemExit(f"ascend-convert failed (exit {proc.returncode}):\n{output}")
    match = re.search(r"\btime\s+([0-9.]+)\s*s", output)
    result = {"wall": wall, "inner": float(match.group(1)) if match else float("nan"),
              "rss_mb": usage.ru_maxrss / 1024, "cpu": usage.ru_utime + usage.ru_stime,
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
    parser.add_argument("--no-copy", action="store_true", help="skip the read+write+fsync context measurement")
    parser.add_argument("--verify-only", action="store_true", help="measure only the --verify hashing speed")
    parser.add_argument("--gguf", action="store_true", help="convert the same weights from a Q8_0 GGUF")
    C.add_common_args(parser, "keep the generated checkpoint in .cache/bench/ for the next run [yes]")
    args = parser.parse_args()

    checkpoint = ensure_source(args.gguf, args.regen)
    files = [checkpoint] if args.gguf else C.source_files(checkpoint)
    kind = "GGUF, Q8_0 weights" if args.gguf else f"{len(files)} safetensors file(s), bf16"
    source_nbytes = sum(f.stat().st_size for f in files)
    out = C.CACHE / f"bench-convert-{os.getpid()}.asw"
    copy_out = C.CACHE / f"bench-copy-{os.getpid()}.bin"
    state = "warm (page cache)" if args.warm else "cold (posix_fadvise DONTNEED before each measurement)"

    print(f"machine   {C.machine_line()}")
    print(f"source    {checkpoint}  ({kind}, {source_nbytes / 1e6:.0f} MB)")
    if args.verify_only:
        print(f"measured  warm page cache; {args.rounds} interleaved rounds; verify of the converted {args.dtype} file")
        print()
        measure_verify(checkpoint, args.dtype, args.rounds)
        return
    print(f"measured  {state}; {args.rounds} interleaved rounds; convert -> {args.dtype}, layout nd, via the CLI")
    print()

    reads: list[float] = []
    copies: list[float] = []
    converts: list[dict[str, float]] = []
    try:
        for rnd in range(args.rounds):
            steps = ["read", "copy", "convert"] if not args.no_copy else ["read", "convert"]
            if rnd % 2:
                steps.reverse()
            for step in steps:
                note = prepare(files, args.warm)
                with C.Steal() as steal:
                    if step == "read":
                        reads.append(time_read(files))
                    elif step == "copy":
                        copies.append(time_copy(files, copy_out))
                    else:
                        converts.append(time_convert(checkpoint, out, args.dtype))
                if step == "read":
                    shown = f"{reads[-1]:.2f} s"
                elif step == "copy":
                    shown = f"{copies[-1]:.2f} s"
                else:
                    r = converts[-1]
                    shown = (f"{r['wall']:.2f} s wall ({r['inner']:.2f} s reported by the CLI), "
                             f"peak RSS {r['rss_mb']:.0f} MB, cpu {r['cpu']:.2f} s")
                note = ", ".join(x for x in (note and f"before: {note}", str(steal)) if x)
                print(f"round {rnd + 1}  {step:7}  {shown}   [{note}]", flush=True)
    finally:
        for leftover in (out, copy_out):
            if leftover.exists():
                leftover.unlink()

    read_s = C.median(reads)
    conv_s = C.median([r["wall"] for r in converts])
    inner_s = C.median([r["inner"] for r in converts])
    rss_mb = max(r["rss_mb"] for r in converts)
    out_nbytes = converts[-1]["nbytes"]
    ratio = conv_s / read_s
    rows = [
        ["read source (baseline)", f"{read_s:.2f}", C.spread(reads), f"{source_nbytes / 1e9 / read_s:.2f} GB/s read"],
    ]
    if copies:
        copy_s = C.median(copies)
        rows.append(["read + write + fsync (context)", f"{copy_s:.2f}", C.spread(copies),
                     f"{source_nbytes / 1e9 / copy_s:.2f} GB/s copied"])
    rows += [
        ["ascend-convert, process wall", f"{conv_s:.2f}", C.spread([r['wall'] for r in converts]),
         f"{source_nbytes / 1e9 / conv_s:.2f} GB/s read, {out_nbytes / 1e9 / conv_s:.2f} GB/s written"],
        ["ascend-convert, reported time", f"{inner_s:.2f}", C.spread([r['inner'] for r in converts]),
         f"{out_nbytes / 1e9 / inner_s:.2f} GB/s written"],
    ]
    print()
    print(C.table(["what", "median s", "min .. max", "throughput"], rows))
    print()
    print(f"output size            {out_nbytes:,} bytes ({out_nbytes / 1e6:.0f} MB, {args.dtype})")
    print(f"convert / read         {ratio:.2f}x  (reported-time / read: {inner_s / read_s:.2f}x)   target <= {RATIO_TARGET:g}x"
          f"  -> {'PASS' if ratio <= RATIO_TARGET else 'FAIL'}")
    if copies:
        print(f"convert / copy         {conv_s / C.median(copies):.2f}x  (the floor for any converter that writes its "
              "output durably: read + write + fsync of the same bytes)")
    print(f"converter peak RSS     {rss_mb:.0f} MB (max over rounds, the child's ru_maxrss)   target <= {RSS_TARGET_MB:g} MB"
          f"  -> {'PASS' if rss_mb <= RSS_TARGET_MB else 'FAIL'}")
    print()
    measure_verify(checkpoint, args.dtype, args.rounds)
    if not args.keep_cache:
        C.remove_cache()


if __name__ == "__main__":
    main()
