"""Quick decode / prefill tok/s of the native cpu backend on a random model of Qwen2-0.5B's shape.

    .venv/bin/python bench/decode_native_smoke.py [--dtype fp16|bf16] [--threads 2] [--layers 24] [--hf]

No converter, no download: the weights are random u16 built in numpy and packed like a .asw data region.
--hf also times transformers (bf16, same shape, random init) for the "2x transformers" target.
Set ASW_KERNELS=portable|avx2|avx512 to time one kernel set.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from ascend_super.runtime import format as fmt
from ascend_super.runtime import native
from ascend_super.runtime.native import NativeModel

QWEN2_05B = {
    "hidden_size": 896, "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
    "head_dim": 64, "intermediate_size": 4864, "vocab_size": 151936, "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0, "rope_scaling": None, "max_position_embeddings": 32768,
    "tie_word_embeddings": True, "attention_bias": True,
}


def build(c: dict, dtype: str) -> tuple[np.ndarray, list[tuple[str, int, int, str, tuple[int, ...]]]]:
    rng = np.random.default_rng(0)
    table, offset = [], 0
    for name, shape in fmt.expected_tensors(c).items():  # the one tensor list
        offset = -(-offset // 512) * 512
        nbytes = int(np.prod(shape)) * 2
        table.append((name, offset, nbytes, shape))
        offset += nbytes
    data = np.zeros(offset, dtype=np.uint8)
    for name, off, nbytes, shape in table:
        scale = 1.0 if name.endswith("norm.weight") else 0.02
        value = rng.standard_normal(shape, dtype=np.float32) * np.float32(scale)
        if name.endswith("norm.weight"):
            value += 1.0
        if dtype == "fp16":
            u16 = value.astype(np.float16).view(np.uint16)
        else:
            u16 = (value.view(np.uint32) >> 16).astype(np.uint16)
        data[off:off + nbytes] = u16.reshape(-1).view(np.uint8)
    return data, [(n, o, b, "nd", shape) for n, o, b, shape in table]


def bench_hf(c: dict, steps: int, prompt: int) -> None:
    import torch
    import transformers

    cfg = transformers.Qwen2Config(**{k: v for k, v in c.items() if k not in ("rope_scaling", "attention_bias")})
    model = transformers.Qwen2ForCausalLM(cfg).to(torch.bfloat16).eval()
    ids = torch.randint(0, c["vocab_size"], (1, prompt))
    with torch.no_grad():
        t0 = time.perf_counter()
        out = model.generate(ids, max_new_tokens=steps, min_new_tokens=steps, do_sample=False)
        total = time.perf_counter() - t0
    assert out.shape[1] == prompt + steps
    print(f"transformers bf16 ({torch.get_num_threads()} threads): {steps / total:.2f} tok/s end-to-end "
          f"(prompt {prompt} + {steps} new)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtype", default="fp16", choices=["fp16", "bf16"])
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--hf", action="store_true")
    args = ap.parse_args()
    c = dict(QWEN2_05B, num_hidden_layers=args.layers)
    t0 = time.perf_counter()
    data, tensors = build(c, args.dtype)
    print(f"built {data.nbytes / 1e9:.2f} GB of {args.dtype} weights in {time.perf_counter() - t0:.1f} s; "
          f"kernels {native.kernel_name()}")
    with NativeModel(data, c, args.dtype, "nd", tensors) as model, \
            model.session(max_len=args.prompt + args.steps + 1, threads=args.threads or None) as s:
        prompt = np.random.default_rng(1).integers(0, c["vocab_size"], size=args.prompt).tolist()
        t0 = time.perf_counter()
        _, token = s.prefill(prompt, logits="none")
        t_prefill = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(args.steps):
            _, token = s.decode(token, logits="none")
        t_decode = time.perf_counter() - t0
    print(f"native prefill {args.prompt / t_prefill:.1f} tok/s, decode {args.steps / t_decode:.2f} tok/s "
          f"({data.nbytes / 1e9 * args.steps / t_decode:.1f} GB/s of weights)")
    if args.hf:
        bench_hf(c, args.steps, args.prompt)


if __name__ == "__main__":
    main()
