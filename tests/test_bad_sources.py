"""Bad sources get one clear line naming the problem (exit 2), never a traceback, and leave no output."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import run_cli


def _edit_config(directory: Path, change: Callable[[dict], None]) -> None:
    config = json.loads((directory / "config.json").read_text())
    change(config)
    (directory / "config.json").write_text(json.dumps(config))


def _edit_state(directory: Path, change: Callable[[dict], None]) -> None:
    state = load_file(directory / "model.safetensors")
    change(state)
    save_file(state, directory / "model.safetensors", metadata={"format": "pt"})


CASES: dict[str, tuple[Callable[[Path], None], str]] = {
    "missing config": (lambda d: (d / "config.json").unlink(), "missing config.json"),
    "missing tokenizer": (lambda d: (d / "tokenizer.json").unlink(), "missing tokenizer.json"),
    "no weights": (lambda d: (d / "model.safetensors").unlink(), "no *.safetensors files"),
    "unknown arch": (lambda d: _edit_config(d, lambda c: c.update(architectures=["GPT2LMHeadModel"])),
                     "'GPT2LMHeadModel' is not supported (supported: Qwen2ForCausalLM, LlamaForCausalLM)"),
    "config lacks key": (lambda d: _edit_config(d, lambda c: c.pop("hidden_size")), "config.json lacks 'hidden_size'"),
    "config not json": (lambda d: (d / "config.json").write_text("{nope"), "config.json: not valid JSON"),
    "missing tensor": (lambda d: _edit_state(d, lambda s: s.pop("model.layers.1.mlp.up_proj.weight")),
                       "'model.layers.1.mlp.up_proj.weight' is missing (needed for blk.1.ffn_gate_up.weight)"),
    "mis-shaped tensor": (lambda d: _edit_state(d, lambda s: s.update({
        "model.layers.0.self_attn.k_proj.weight": torch.zeros(3, 128)})),
        "'model.layers.0.self_attn.k_proj.weight' has shape [3, 128], expected [64, 128]"),
    "unsupported dtype": (lambda d: _edit_state(d, lambda s: s.update({
        "model.layers.0.mlp.down_proj.weight": torch.zeros(128, 200, dtype=torch.int8)})),
        "'model.layers.0.mlp.down_proj.weight' has dtype I8"),
    "not safetensors": (lambda d: (d / "model.safetensors").write_bytes(b"\x10\x00garbage"),
                        "not a readable safetensors file"),
    "bad rope scaling": (lambda d: _edit_config(d, lambda c: c.update(rope_parameters={"rope_type": "yarn", "factor": 4.0})),
                         "rope scaling type 'yarn' is not supported"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_source(case: str, tmp_path: Path, checkpoint_dir) -> None:
    corrupt, message = CASES[case]
    directory = tmp_path / "src"
    shutil.copytree(checkpoint_dir("qwen2-gqa-hd64"), directory)
    corrupt(directory)
    out = tmp_path / "out.asw"
    result = run_cli("ascend-convert", str(directory), "-o", str(out))
    assert result.returncode == 2, result.stderr
    assert message in result.stderr.replace("\n", ""), result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists() and not list(tmp_path.glob("out.asw.tmp*"))


def test_not_a_source(tmp_path: Path) -> None:
    result = run_cli("ascend-convert", "not a thing!", "-o", str(tmp_path / "o.asw"))
    assert result.returncode == 2 and "not a directory, a .gguf file, a known alias" in result.stderr
