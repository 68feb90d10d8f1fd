"""Tokens/s of one batched decode step (NativeModel.forward_batch) for B = 1, 2, 4, 8 sessions, without the server.

    .venv/bin/python bench/batch_step.py [--batches 1,2,4,8] [--steps 16] [--prompt 32] [--threads N] [--rounds 5]
                                         [--dtype fp16|bf16]

Model: the Qwen2-0.5B-shape random checkpoint of bench/_common.py converted to .asw (cached under .cache/bench/).
Each round, for each B in turn (the order rotates between rounds, so a noisy neighbour hits every B alike), B
sessions are reset, each prefilled with its own `--prompt` random ids, then `--steps` batched greedy decode steps run
(logits "none", as the server's greedy requests do). Reported per B: the median over rounds of B * steps / seconds,
and its ratio to B = 1, and the same per CPU-second of this process (all its threads: steadier than wall time when
other work shares the cores) — the ratios are what the serving target (issue 11: 8 streams >= 4x one) depends on, and
only ratios within one run mean anything on a shared machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_common_args(parser, "keep the generated checkpoint and .asw under .cache/bench [yes]")
    parser.set_defaults(rounds=5)
    parser.add_argument("--batches", default="1,2,4,8", help="sessions per step [1,2,4,8]")
    parser.add_argument("--steps", type=int, default=16, help="decode steps timed per round [16]")
    parser.add_argument("--prompt", type=int, default=32, help="prompt tokens per session [32]")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads [all]")
    parser.add_argument("--dtype", choices=["fp16", "bf16"], default="fp16", help=".asw weight dtype [fp16]")
    args = parser.parse_args()
    batches = [int(x) for x in args.batches.split(",")]

    import numpy as np

    from ascend_super.runtime.model import Model

    asw = C.ensure_asw(C.ensure_checkpoint(args.regen), args.dtype)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, C.QWEN2_05B["vocab_size"] - 16, args.prompt).tolist() for _ in range(max(batches))]
    print(C.machine_line())
    print(f"model: {asw.name}; {args.steps} steps after a {args.prompt}-token prompt, {args.threads} threads, "
          f"median of {args.rounds} rounds")
    rates: dict[int, list[float]] = {b: [] for b in batches}
    cpu_rates: dict[int, list[float]] = {b: [] for b in batches}
    with Model(asw, backend="cpu", threads=args.threads) as model:
        native = model.native
        assert native is not None
        sessions = [model.session(args.prompt + args.steps + 8) for _ in range(max(batches))]
        for round_index in range(args.rounds + 1):  # round 0 warms up
            order = batches[round_index % len(batches):] + batches[:round_index % len(batches)]
            for b in order:
                tokens = []
                for session, prompt in zip(sessions[:b], prompts):
                    session.reset()
                    tokens.append(session.prefill(prompt, logits="none")[1])
                started, cpu_started = time.perf_counter(), time.process_time()
                for _ in range(args.steps):
                    tokens = native.forward_batch(sessions[:b], tokens)[0].tolist()
                elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
                if round_index:
                    rates[b].append(b * args.steps / elapsed)
                    cpu_rates[b].append(b * args.steps / cpu)
        for session in sessions:
            session.close()
    base, cpu_base = C.median(rates[batches[0]]), C.median(cpu_rates[batches[0]])
    rows = [[b, f"{C.median(r):.1f}", f"{C.median(r) / base:.2f}x", " ".join(f"{x:.0f}" for x in r),
             f"{C.median(cpu_rates[b]):.1f}", f"{C.median(cpu_rates[b]) / cpu_base:.2f}x"] for b, r in rates.items()]
    print(C.table(["B", "tok/s", f"vs B={batches[0]}", "rounds", "tok/CPU-s", f"vs B={batches[0]}"], rows))
    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
