"""Regenerates the golden artifact: a tiny random Qwen2 model as .asw (< 2 MB) and the greedy tokens transformers
produces for it (fp32 on the same fp16-rounded weights). tests/test_golden.py checks the runtime against it.

    .venv/bin/python artifacts/make_golden.py          # rewrites artifacts/golden-qwen2.{asw,json}

The checkpoint is made with tests/checkpoints.py; the prompt is chat-templated text. The script refuses to write a
golden whose transformers continuation has a near-tie (top-2 logit gap < MIN_GAP) anywhere, so the expected tokens
do not depend on rounding.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from checkpoints import Spec, make_checkpoint  # noqa: E402

NAME = "golden-qwen2"
SPEC = Spec(arch="qwen2", hidden=96, layers=2, heads=6, kv_heads=2, head_dim=32, ffn=136, vocab=320, seed=13)
PROMPT = "Why is the sky blue?"
NEW_TOKENS = 24
MIN_GAP = 0.05


def main() -> None:
    import torch
    import transformers

    from ascend_super.convert.pipeline import convert
    from ascend_super.convert.sources.hub import open_source
    from ascend_super.runtime.model import load

    with tempfile.TemporaryDirectory() as tmp:
        directory = make_checkpoint(Path(tmp) / "ckpt", SPEC)
        out = HERE / f"{NAME}.asw"
        with open_source(str(directory)) as source:
            convert(source, out, "fp16", "nd", data_alignment=4096)
        with load(out, backend="cpu") as model:
            prompt_ids = model.prompt_ids(PROMPT)
        reference = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
        with torch.no_grad():
            for param in reference.parameters():
                param.copy_(param.half().float())
            result = reference.generate(torch.tensor([prompt_ids]), max_new_tokens=NEW_TOKENS,
                                        min_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0,
                                        output_logits=True, return_dict_in_generate=True)
    tokens = result.sequences[0, len(prompt_ids):].tolist()
    gaps = [float(torch.topk(step[0], 2).values.diff().abs()) for step in result.logits]
    if min(gaps) < MIN_GAP:
        raise SystemExit(f"near-tie in the reference continuation (gap {min(gaps):.4f}); change SPEC.seed")
    (HERE / f"{NAME}.json").write_text(json.dumps({
        "asw": f"{NAME}.asw", "prompt": PROMPT, "prompt_ids": prompt_ids, "expected_tokens": tokens,
        "min_top2_gap": round(min(gaps), 4), "reference": f"transformers {transformers.__version__}, fp32 on fp16-rounded weights",
    }, indent=1) + "\n")
    print(f"wrote {out} ({out.stat().st_size} bytes) and {NAME}.json: {tokens}")


if __name__ == "__main__":
    main()
