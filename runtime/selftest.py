"""`ascend-run --backend aclnn --selftest [MODEL.asw]`: the bring-up check for a machine with an Ascend NPU.

First every ACLNN operator the backend uses runs once on the device at the model's shapes against a numpy
reference (runtime/opcheck.py; the matmul with the file's own layer-0 QKV weight, ND or FRACTAL_NZ). Then it opens
the model on the aclnn backend twice (graph replay and eager decode) and, for ND files, on the cpu backend,
then checks, printing one table row each: prefill logits at every position against the cpu backend, host-fed decode
logits, top-k, greedy tokens through the pipelined device decode (graph and eager bit-identical, and equal to the
cpu backend's except right after a near-tie), and, for the golden model that ships with the source tree
(artifacts/golden-qwen2.asw, the default), the tokens transformers produced. Exit status 0 only if every row passes.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

import numpy as np

from . import opcheck
from .generate import GenerationError
from .model import Model
from .native import NativeSession

if TYPE_CHECKING:
    from .format import AswFile

OnOpen = Optional[Callable[["AswFile"], object]]  # called with each mapping of the file as it is opened

GOLDEN = Path(__file__).resolve().parent.parent / "artifacts" / "golden-qwen2.asw"
PROMPT_LENGTH = 24
DECODE_STEPS = 8
GREEDY_TOKENS = 16
TOPK = 8
# |aclnn - cpu| <= ATOL + RTOL * max|cpu logits| per position: twice the bound each backend meets against
# transformers in the tests (tests/test_parity.py, tests/test_aclnn_backend.py), since both errors add up here.
ATOL = {"fp16": 1e-2, "bf16": 1.2e-1}
RTOL = 4e-3
TIE_GAP = ATOL  # tokens may part right after the cpu's own top-2 logits came closer than this


@dataclass
class Row:
    check: str
    value: str
    bound: str
    ok: bool


def _scaled_error(ours: np.ndarray, ref: np.ndarray, dtype: str) -> tuple[float, float]:
    """(max |diff|, max |diff| / bound) over positions."""
    ref2, ours2 = np.atleast_2d(ref), np.atleast_2d(ours)
    bound = ATOL[dtype] + RTOL * np.abs(ref2).max(axis=-1, keepdims=True)
    error = np.abs(ours2 - ref2)
    return float(error.max()), float((error / bound).max())


def _pipelined_greedy(session: NativeSession, prompt: list[int], count: int) -> list[int]:
    """Greedy tokens the way generation runs them: the argmax stays on the device, step t+1 is queued before token
    t is read."""
    _, first = session.prefill(prompt, logits="none")
    tokens = [first]
    session.enqueue()
    while len(tokens) < count:
        if len(tokens) + 1 < count:
            session.enqueue()
        tokens.append(session.read())
    session.discard()
    return tokens


def _operator_rows(path: Path, device: int, on_open: OnOpen) -> list[opcheck.Result]:
    """The per-operator table at the model's shapes (its layer-0 QKV weight and bias from the file)."""
    from . import format as fmt

    with fmt.AswFile.open(path) as asw:
        if on_open is not None:
            on_open(asw)
        entry = asw.by_name["blk.0.attn_qkv.weight"]
        weight = asw.tensor_bytes(entry.name).view(np.uint16).copy()
        bias = None
        if "blk.0.attn_qkv.bias" in asw.by_name:
            bias = asw.tensor_bytes("blk.0.attn_qkv.bias").view(np.uint16).copy()
        config = dict(asw.manifest["config"])
        config.setdefault("head_dim", int(config["hidden_size"]) // int(config["num_attention_heads"]))
        return opcheck.check_all(config, asw.dtype, (weight, entry.layout, entry.shape[0], entry.shape[1]), bias,
                                 device)


def near_tie_gap(path: Path, ids: list[int], context: int, on_open: OnOpen = None) -> float:
    """The cpu backend's gap between its two largest logits after `ids` (where two greedy runs parted)."""
    with Model(path, "cpu", on_open=on_open) as cpu:
        logits, _ = cpu.session(context).prefill(ids, logits="last")
    top2 = np.sort(logits)[-2:]
    return float(top2[1] - top2[0])


def _prompt(vocab: int) -> list[int]:
    return np.random.default_rng(0).integers(3, vocab, size=PROMPT_LENGTH).tolist()


def run(model_path: Path | None, device: int, echo: Callable[[str], None], on_open: OnOpen = None) -> bool:
    """Run every check, print the table; True if all pass. `on_open` is called with each mapping of the file as it
    is opened (the console script's bus-error guard)."""
    started = time.perf_counter()
    path = model_path if model_path is not None else GOLDEN
    if model_path is None and not GOLDEN.is_file():
        raise GenerationError(f"the golden model ships with the source tree only ({GOLDEN} is missing): "
                              "pass a .asw file to check")
    rows: list[Row] = []
    echo(f"model: {path}")
    op_rows = _operator_rows(path, device, on_open)
    echo(f"{'operator':<28} {'shapes':<52} {'max err/max|ref|':<17} {'bound':<8} status")
    for r in op_rows:
        err = "exact" if r.bound == 0 and r.ok else f"{r.error:.2e}"
        echo(f"{r.op:<28} {r.shapes:<52} {err:<17} {r.bound:<8.0e} {'PASS' if r.ok else 'FAIL'}")
    rows.append(Row(f"{len(op_rows)} operator checks", f"{sum(r.ok for r in op_rows)} pass", "all",
                    all(r.ok for r in op_rows)))
    graph = Model(path, "aclnn", device=device, on_open=on_open)
    eager = Model(path, "aclnn", device=device, eager=True, on_open=on_open)
    cpu = Model(path, "cpu", on_open=on_open) if graph.asw.layout == "nd" else None
    dtype = graph.asw.dtype
    echo(f"model: {dtype}, {graph.asw.layout}")
    echo(f"device: {graph.native.describe()}")
    with graph, eager:
        prompt = _prompt(graph.native.vocab)
        context = min(graph.context_length(None), 512)
        g = graph.session(context)
        e = eager.session(context)
        if cpu is not None:
            with cpu:
                c = cpu.session(context)
                ours, _ = g.prefill(prompt, logits="all")
                theirs, _ = c.prefill(prompt, logits="all")
                worst, ratio = _scaled_error(ours, theirs, dtype)
                rows.append(Row(f"prefill logits, {PROMPT_LENGTH} positions vs cpu", f"{worst:.3g}",
                                f"{ratio:.2f}x", ratio <= 1.0))
                token = int(np.argmax(theirs[-1]))
                worst_ratio, worst_abs = 0.0, 0.0
                for _ in range(DECODE_STEPS):
                    ours, _ = g.decode(token)
                    theirs, _ = c.decode(token)
                    a, r = _scaled_error(ours, theirs, dtype)
                    worst_abs, worst_ratio = max(worst_abs, a), max(worst_ratio, r)
                    token = int(np.argmax(theirs))
                rows.append(Row(f"decode logits, {DECODE_STEPS} host-fed steps vs cpu", f"{worst_abs:.3g}",
                                f"{worst_ratio:.2f}x", worst_ratio <= 1.0))
                g.reset()
                c.reset()
                values, ids = g.forward_topk(prompt, TOPK)
                ref_values, ref_ids = c.forward_topk(prompt, TOPK)
                same = set(ids.tolist()) == set(ref_ids.tolist())
                a, r = _scaled_error(values, ref_values, dtype)
                rows.append(Row(f"top-{TOPK} ids and values vs cpu", f"{a:.3g}{'' if same else ' (ids differ)'}",
                                f"{r:.2f}x", same and r <= 1.0))
                g.reset()
                c.reset()
                cpu_tokens = _pipelined_greedy(c, prompt, GREEDY_TOKENS)
        g.reset()
        graph_tokens = _pipelined_greedy(g, prompt, GREEDY_TOKENS)
        eager_tokens = _pipelined_greedy(e, prompt, GREEDY_TOKENS)
        rows.append(Row(f"greedy {GREEDY_TOKENS} tokens, graph == eager", "identical" if graph_tokens == eager_tokens
                        else f"differ at {next(i for i, (a, b) in enumerate(zip(graph_tokens, eager_tokens)) if a != b)}",
                        "bit-identical", graph_tokens == eager_tokens))
        if cpu is not None:
            parted = next((i for i, (a, b) in enumerate(zip(graph_tokens, cpu_tokens)) if a != b), None)
            if parted is None:
                rows.append(Row(f"greedy {GREEDY_TOKENS} tokens vs cpu", "identical", "identical", True))
            else:
                gap = near_tie_gap(path, prompt + cpu_tokens[:parted], context, on_open)
                rows.append(Row(f"greedy {GREEDY_TOKENS} tokens vs cpu", f"part at {parted}, gap {gap:.2g}",
                                f"gap < {TIE_GAP[dtype]:g}", gap < TIE_GAP[dtype]))
        golden_json = path.with_suffix(".json")
        golden = json.loads(golden_json.read_text()) if golden_json.is_file() else {}
        if golden.get("asw") == path.name and "expected_tokens" in golden:
            expected = golden["expected_tokens"]
            g.reset()
            got = _pipelined_greedy(g, golden["prompt_ids"], len(expected))
            rows.append(Row("golden tokens (transformers)", "identical" if got == expected else "differ",
                            "identical", got == expected))
    width = max(len(r.check) for r in rows)
    echo(f"{'check':<{width}}  {'max |diff| / result':<22} {'vs bound':<14} status")
    for r in rows:
        echo(f"{r.check:<{width}}  {r.value:<22} {r.bound:<14} {'PASS' if r.ok else 'FAIL'}")
    ok = all(r.ok for r in rows)
    echo(f"selftest {'passed' if ok else 'FAILED'} in {time.perf_counter() - started:.1f} s")
    return ok
