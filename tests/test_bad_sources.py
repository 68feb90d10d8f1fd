"""Bad sources get one clear line naming the problem (exit 2), never a traceback, and leave no output."""

from __future__ import annotations

import json
import os
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


def _shard_outside(directory: Path) -> None:
    """A sharded checkpoint (no model.safetensors, which transformers would read first) whose index escapes it."""
    (directory / "model.safetensors").rename(directory / "model-00001-of-00001.safetensors")
    (directory / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"lm_head.weight": "../elsewhere.safetensors"}}))


CASES: dict[str, tuple[Callable[[Path], None], str]] = {
    "missing config": (lambda d: (d / "config.json").unlink(), "missing config.json"),
    "missing tokenizer": (lambda d: (d / "tokenizer.json").unlink(), "missing tokenizer.json"),
    "no weights": (lambda d: (d / "model.safetensors").unlink(), "no *.safetensors files"),
    "unknown arch": (lambda d: _edit_config(d, lambda c: c.update(architectures=["GPT2LMHeadModel"])),
                     "'GPT2LMHeadModel' is not supported (supported: Qwen2ForCausalLM, LlamaForCausalLM)"),
    "config lacks key": (lambda d: _edit_config(d, lambda c: c.pop("hidden_size")),
                         "expected [320, 4096] from config.json (config.json lacks hidden_size: Qwen2Config defaults"),
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
    "non-finite weight": (lambda d: _edit_state(d, lambda s: s["model.layers.1.self_attn.q_proj.weight"].__setitem__(
        (0, 0), float("inf"))), "blk.1.attn_qkv.weight (from model.layers.1.self_attn.q_proj.weight): 1 value(s) are NaN or infinite"),
    "tokenizer not loadable": (lambda d: (d / "tokenizer.json").write_text('{"x": 1}'),
                               "tokenizer.json cannot be loaded by tokenizers"),
    "eos id outside vocab": (lambda d: _edit_config(d, lambda c: c.update(eos_token_id=99999)),
                             "config.eos_token_id [99999, 2] has ids outside [0, 320)"),
    "negative rms eps": (lambda d: _edit_config(d, lambda c: c.update(rms_norm_eps=-1)),
                         "config.rms_norm_eps is -1.0, not a positive finite number"),
    "zero heads": (lambda d: _edit_config(d, lambda c: c.update(num_attention_heads=0)),
                   "num_attention_heads is 0, not a positive integer"),
    "shard outside folder": (lambda d: _shard_outside(d), "names a file outside the checkpoint folder"),
    "same tensor in two files": (lambda d: shutil.copy(d / "model.safetensors", d / "copy.safetensors") and
                                 (d / "model.safetensors").rename(d / "a.safetensors"),
                                 "without model.safetensors or model.safetensors.index.json, every *.safetensors"),
    "bad rope scaling": (lambda d: _edit_config(d, lambda c: c.update(rope_parameters={"rope_type": "yarn", "factor": 4.0})),
                         "rope type 'yarn' is not supported (supported: default, llama3)"),
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


def test_output_path_rules(tmp_path: Path, checkpoint_dir) -> None:
    directory = tmp_path / "src"
    shutil.copytree(checkpoint_dir("qwen2-gqa-hd64"), directory)
    weights = (directory / "model.safetensors").read_bytes()
    for target in ("model.safetensors", "config.json"):  # never overwrite what is being read
        result = run_cli("ascend-convert", str(directory), "-o", str(directory / target))
        assert result.returncode == 2 and "is one of the source's own files" in result.stderr, result.stderr
    assert (directory / "model.safetensors").read_bytes() == weights
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    result = run_cli("ascend-convert", str(directory), "-o", str(fifo))
    assert result.returncode == 2 and "is not a regular file" in result.stderr
    result = run_cli("ascend-convert", str(directory), "-o", str(tmp_path / "out") + "/", "--align", "4096")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "src-fp16.asw").is_file()  # a folder gets the default name
    result = run_cli("ascend-convert", str(directory), "-o", str(tmp_path / "x.asw"), "--align", str(2**32))
    assert result.returncode == 2 and "power of two from 512 to 1073741824" in result.stderr
    for wrong, message in ((directory / "model.safetensors", "pass the checkpoint folder"),
                           (tmp_path / "out" / "src-fp16.asw", "is already a .asw file")):
        result = run_cli("ascend-convert", str(wrong), "-o", str(tmp_path / "y.asw"))
        assert result.returncode == 2 and message in result.stderr


def test_not_a_source(tmp_path: Path) -> None:
    result = run_cli("ascend-convert", "not a thing!", "-o", str(tmp_path / "o.asw"))
    assert result.returncode == 2 and "not a directory, a .gguf file, a known alias" in result.stderr
