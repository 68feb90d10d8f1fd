"""A paper estimate (not a measurement) of single-batch decode time on one Ascend A3 die for
DeepSeek-R1-Distill-Qwen-7B in fp16, for the aclnn backend's decode step as designed (native/src/aclnn/).

Per token, every operator of the decode step is charged the bytes it moves through HBM (weights read once, the
KV cache read up to the current context, activations read and written) at `--bandwidth` times `--efficiency`,
plus a fixed on-device cost per kernel (`--kernel-us`). The host side costs one launch per operator in eager mode
(`--launch-us`, ~43 us measured on 910B3 by others) or one graph replay in graph mode (`--replay-us`), plus one
synchronisation and one 64-byte device-to-host copy per token (`--sync-us`). With the next step queued before the
current token is read, host and device overlap: a token costs max(host, device).

    python bench/ascend_estimate.py                      # the defaults below
    python bench/ascend_estimate.py --bandwidth 1.6e12 --context 4096 --efficiency 0.9

Every number this prints is an estimate from the parameters shown; nothing here ran on Ascend hardware.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

# DeepSeek-R1-Distill-Qwen-7B (Qwen2 architecture), from its config.json
MODEL = dict(hidden=3584, layers=28, heads=28, kv_heads=4, head_dim=128, ffn=18944, vocab=152064, tied=False,
             qkv_bias=True)
FP16 = 2

# published single-batch decode rates for this model on Ascend (tok/s), as quoted in issue 8 of this project
REFERENCE_POINTS = {"vLLM-Ascend": 37.6, "torch_npu (eager PyTorch)": 34.6, "direct C++ path": 47.1}


@dataclass
class Op:
    name: str
    count: int       # launches per token
    bytes: float     # HBM bytes moved per token by all `count` launches


def decode_ops(context: int) -> list[Op]:
    """The aclnn decode step (native/src/aclnn/README.md): 11 launches per layer + 8 per token."""
    m = MODEL
    H, D, L, F, V = m["hidden"], m["head_dim"], m["layers"], m["ffn"], m["vocab"]
    q, kv = m["heads"] * D, m["kv_heads"] * D
    qkv = q + 2 * kv
    act = lambda n: n * FP16  # noqa: E731  an activation vector of n fp16 values
    per_layer = [
        Op("RmsNorm/AddRmsNorm (attn)", L, L * (act(H) * 3 + act(H))),
        Op("Addmm qkv + bias", L, L * ((qkv * H + qkv) * FP16 + act(H) + act(qkv))),
        Op("RotaryPositionEmbedding q|k", L, L * (act(q + kv) * 2 + act(2 * D))),
        Op("InplaceIndexCopy k, v", 2 * L, L * act(2 * kv) * 2),
        Op("FusedInferAttentionScoreV4", L, L * (act(q) * 2 + 2 * context * kv * FP16 + context)),
        Op("Mm o_proj", L, L * (q * H * FP16 + act(q) + act(H))),
        Op("AddRmsNorm (ffn)", L, L * (act(H) * 4 + act(H))),
        Op("Mm gate|up", L, L * (2 * F * H * FP16 + act(H) + act(2 * F))),
        Op("SwiGlu", L, L * (act(2 * F) + act(F))),
        Op("Mm down", L, L * (F * H * FP16 + act(F) + act(H))),
    ]
    per_token = [
        Op("Embedding (token row)", 1, act(H) * 2),
        Op("Embedding (rope cos|sin row)", 1, act(2 * D) * 2),
        Op("GtTensor (attention mask)", 1, context * 4 + context),
        Op("AddRmsNorm (final)", 1, act(H) * 5),
        Op("Mm lm_head", 1, V * H * FP16 + act(H) + act(V)),
        Op("ArgMax", 1, act(V) + 4),
        Op("Embedding (the logit at the argmax)", 1, 12),
        Op("InplaceAdds (position += 1)", 1, 8),
    ]
    return per_layer + per_token


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--bandwidth", type=float, default=1.6e12,
                    help="HBM bytes/s of one die (default 1.6e12: the 910B-class figure; a parameter, check yours)")
    ap.add_argument("--efficiency", type=float, default=0.9, help="fraction of --bandwidth a GEMV reaches (0.9)")
    ap.add_argument("--kernel-us", type=float, default=3.0, help="fixed device time per kernel, us (assumed 3)")
    ap.add_argument("--launch-us", type=float, default=43.0, help="host time per eager ACLNN launch, us (43)")
    ap.add_argument("--replay-us", type=float, default=150.0, help="host time per graph replay, us (assumed 150)")
    ap.add_argument("--sync-us", type=float, default=30.0, help="host time per sync + 64-byte D2H copy, us (30)")
    ap.add_argument("--context", type=int, default=1024, help="KV positions read per step (1024)")
    args = ap.parse_args()

    ops = decode_ops(args.context)
    launches = sum(op.count for op in ops)
    moved = sum(op.bytes for op in ops)
    device_s = moved / (args.bandwidth * args.efficiency) + launches * args.kernel_us * 1e-6
    roofline = args.bandwidth / moved
    print("ESTIMATE (no hardware was used): DeepSeek-R1-Distill-Qwen-7B fp16, batch 1, one A3 die")
    print(f"  bandwidth {args.bandwidth / 1e12:.2f} TB/s x efficiency {args.efficiency:.2f}, context {args.context}, "
          f"{launches} kernels per token ({MODEL['layers']} layers)")
    print(f"  HBM bytes per token: {moved / 1e9:.2f} GB -> bandwidth limit {roofline:.1f} tok/s")
    print(f"\n  {'operator':34s} {'launches':>8s} {'MB/token':>10s} {'device us':>10s}")
    for op in ops:
        us = op.bytes / (args.bandwidth * args.efficiency) * 1e6 + op.count * args.kernel_us
        print(f"  {op.name:34s} {op.count:8d} {op.bytes / 1e6:10.2f} {us:10.1f}")
    for mode, host_s in (("graph (default)", args.replay_us * 1e-6 + args.sync_us * 1e-6),
                         ("eager (--eager)", launches * args.launch_us * 1e-6 + args.sync_us * 1e-6)):
        token_s = max(host_s, device_s)
        bound = "host-bound" if host_s > device_s else "device-bound"
        print(f"\n  {mode:16s}: host {host_s * 1e3:6.2f} ms, device {device_s * 1e3:6.2f} ms -> "
              f"{1 / token_s:6.1f} tok/s ({bound}; {100 * (1 / token_s) / roofline:.0f} % of the bandwidth limit)")
    print("\n  published reference points (measured by others, same model, one die):")
    for name, rate in REFERENCE_POINTS.items():
        print(f"    {name:28s} {rate:6.1f} tok/s")
    print("  design target: >= 100 tok/s (>= 89 % of the bandwidth limit at 1.6 TB/s)")


if __name__ == "__main__":
    main()
