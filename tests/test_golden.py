"""The committed golden artifact (artifacts/make_golden.py regenerates it): the runtime must reproduce the greedy
tokens transformers produced for it, and the file must verify."""

from __future__ import annotations

import json
from pathlib import Path

import ascend_super
from ascend_super.runtime import format as fmt
from ascend_super.runtime.generate import Sampling

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"


def test_golden_tokens() -> None:
    golden = json.loads((ARTIFACTS / "golden-qwen2.json").read_text())
    path = ARTIFACTS / golden["asw"]
    assert path.stat().st_size < 2 * 1024 * 1024
    with fmt.AswFile.open(path) as asw:
        asw.verify()
    with ascend_super.load(path, backend="cpu") as model:
        assert model.prompt_ids(golden["prompt"]) == golden["prompt_ids"]
        tokens = list(model.generate_tokens(golden["prompt_ids"],
                                            Sampling(max_new_tokens=len(golden["expected_tokens"]))))
    assert tokens == golden["expected_tokens"]
