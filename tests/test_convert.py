"""ascend-convert on tiny random HF checkpoints: every stored tensor equals the documented transform of the source
bit for bit (computed here independently with torch), manifest contents, determinism, atomicity, hub ids."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from ascend_super.runtime import format as fmt
from conftest import SPECS, run_cli

TORCH_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def source_state(directory: Path) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(directory.glob("*.safetensors")):
        state.update(load_file(shard))
    return state


def expected_u16(state: dict[str, torch.Tensor], config: dict, dtype: str) -> dict[str, np.ndarray]:
    """DESIGN.md §3 written out independently: fuse rows q|k|v and gate|up, cast with torch, keep [out, in]."""
    target = TORCH_DTYPES[dtype]

    def cast(*names: str) -> np.ndarray:
        joined = torch.cat([state[n] for n in names], dim=0)
        return joined.to(target).view(torch.int16).numpy().view(np.uint16)

    out = {"token_embd.weight": cast("model.embed_tokens.weight")}
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out[f"blk.{i}.attn_norm.weight"] = cast(p + "input_layernorm.weight")
        out[f"blk.{i}.attn_qkv.weight"] = cast(*(p + f"self_attn.{x}_proj.weight" for x in "qkv"))
        if config["attention_bias"]:
            out[f"blk.{i}.attn_qkv.bias"] = cast(*(p + f"self_attn.{x}_proj.bias" for x in "qkv"))
        out[f"blk.{i}.attn_output.weight"] = cast(p + "self_attn.o_proj.weight")
        out[f"blk.{i}.ffn_norm.weight"] = cast(p + "post_attention_layernorm.weight")
        out[f"blk.{i}.ffn_gate_up.weight"] = cast(p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight")
        out[f"blk.{i}.ffn_down.weight"] = cast(p + "mlp.down_proj.weight")
    out["output_norm.weight"] = cast("model.norm.weight")
    if not config["tie_word_embeddings"]:
        out["output.weight"] = cast("lm_head.weight")
    return out


def nz_reference(matrix: np.ndarray) -> np.ndarray:
    """FRACTAL_NZ by the element formula of docs/FORMAT.md (not by reshapes): (n, k) -> ((k/16)(N/16) + n/16)·256
    + (n%16)·16 + k%16, over zero-padded dims."""
    out_dim, in_dim = matrix.shape
    n16, k16 = -(-out_dim // 16) * 16, -(-in_dim // 16) * 16
    flat = np.zeros(n16 * k16, dtype=np.uint16)
    n, k = np.meshgrid(np.arange(out_dim), np.arange(in_dim), indexing="ij")
    index = ((k // 16) * (n16 // 16) + n // 16) * 256 + (n % 16) * 16 + k % 16
    flat[index] = matrix
    return flat


@pytest.mark.parametrize("name", list(SPECS))
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_tensors_bit_exact(name: str, dtype: str, checkpoint_dir, converted) -> None:
    path = converted(name, dtype)
    with fmt.AswFile.open(path) as asw:
        expected = expected_u16(source_state(checkpoint_dir(name)), asw.config, dtype)
        assert [t.name for t in asw.tensors] == list(expected)  # execution order
        for tensor in asw.tensors:
            stored = asw.tensor_u16(tensor.name)
            assert stored.shape == expected[tensor.name].shape, tensor.name
            assert np.array_equal(stored, expected[tensor.name]), tensor.name
        asw.verify()
        assert asw.preamble.data_offset % asw.preamble.data_alignment == 0


@pytest.mark.parametrize("name", ["qwen2-tied-hd128", "llama-llama3"])
def test_nz_layout(name: str, checkpoint_dir, converted) -> None:
    path = converted(name, "fp16", "nz")
    with fmt.AswFile.open(path) as asw:
        expected = expected_u16(source_state(checkpoint_dir(name)), asw.config, "fp16")
        for tensor in asw.tensors:
            if tensor.name.endswith(("qkv.weight", "output.weight", "gate_up.weight", "down.weight")):
                assert tensor.layout == "nz", tensor.name
                assert np.array_equal(asw.tensor_bytes(tensor.name).view("<u2"), nz_reference(expected[tensor.name]))
            else:
                assert tensor.layout == "nd", tensor.name
                assert np.array_equal(asw.tensor_u16(tensor.name), expected[tensor.name])


def test_manifest_contents(checkpoint_dir, converted) -> None:
    directory = checkpoint_dir("llama-llama3")
    with fmt.AswFile.open(converted("llama-llama3")) as asw:
        m = asw.manifest
        spec = SPECS["llama-llama3"]
        assert m["arch"] == "llama" and m["dtype"] == "fp16" and m["layout"] == "nd"
        c = m["config"]
        assert (c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]) == (64, 4, 2, 16)
        assert c["intermediate_size"] == spec.ffn and c["vocab_size"] == spec.vocab
        assert c["rope_theta"] == 500000.0 and c["rope_scaling"]["rope_type"] == "llama3"
        assert c["rope_scaling"]["factor"] == 8.0 and c["rope_scaling"]["original_max_position_embeddings"] == 64
        assert c["attention_bias"] is False and c["tie_word_embeddings"] is False
        assert c["eos_token_id"] == [2] and c["bos_token_id"] == 1
        assert m["tokenizer"] == (directory / "tokenizer.json").read_text()
        assert m["chat_template"] == json.loads((directory / "tokenizer_config.json").read_text())["chat_template"]
        assert m["generation_config"] == {"bos_token_id": 1, "eos_token_id": [2]}
        assert m["special_tokens"]["eos_token"] == "<|im_end|>"
        assert m["source"]["kind"] == "hf-dir" and m["source"]["converter"].startswith("ascend-super ")
        assert set(m["source"]["files"]) == {"model.safetensors"}


def test_qwen2_defaults(converted) -> None:
    with fmt.AswFile.open(converted("qwen2-gqa-hd64")) as asw:
        assert asw.config["attention_bias"] is True  # Qwen2 always has q/k/v biases
        assert "blk.0.attn_qkv.bias" in asw.by_name


def test_rope_theta_old_spelling(tmp_path: Path, checkpoint_dir) -> None:
    source = checkpoint_dir("qwen2-gqa-hd64")
    directory = tmp_path / "old"
    shutil.copytree(source, directory)
    config = json.loads((directory / "config.json").read_text())
    config.pop("rope_parameters")
    config["rope_theta"] = 12345.0
    (directory / "config.json").write_text(json.dumps(config))
    result = run_cli("ascend-convert", str(directory), "-o", str(tmp_path / "o.asw"), "--align", "4096")
    assert result.returncode == 0, result.stderr
    with fmt.AswFile.open(tmp_path / "o.asw") as asw:
        assert asw.config["rope_theta"] == 12345.0


def test_deterministic(tmp_path: Path, checkpoint_dir) -> None:
    source = str(checkpoint_dir("llama-sharded-bf16"))
    outputs = [tmp_path / "a.asw", tmp_path / "b" / "b.asw"]
    for out in outputs:
        result = run_cli("ascend-convert", source, "-o", str(out), "--dtype", "bf16")
        assert result.returncode == 0, result.stderr
    assert outputs[0].read_bytes() == outputs[1].read_bytes()
    assert outputs[0].stat().st_size > fmt.DEFAULT_DATA_ALIGNMENT  # default 2 MiB data alignment


def test_sharded_source_files_recorded(converted) -> None:
    with fmt.AswFile.open(converted("llama-sharded-bf16", "bf16")) as asw:
        files = asw.manifest["source"]["files"]
        assert len(files) > 1 and all(name.startswith("model-") for name in files)
        assert all(len(h) == 16 for h in files.values())


def _converts_from(directory: Path, out: Path, file: str, state: dict[str, torch.Tensor], dtype: str) -> None:
    """Converting `directory` reads `file` alone, whose tensors are `state`."""
    result = run_cli("ascend-convert", str(directory), "-o", str(out), "--dtype", dtype)
    assert result.returncode == 0, result.stderr
    with fmt.AswFile.open(out) as asw:
        assert list(asw.manifest["source"]["files"]) == [file]
        expected = expected_u16(state, asw.config, dtype)
        for tensor in asw.tensors:
            assert np.array_equal(asw.tensor_u16(tensor.name), expected[tensor.name]), tensor.name


def test_single_file_beats_index(tmp_path: Path, checkpoint_dir) -> None:
    """A folder holding model.safetensors beside an index and its shards (other weights) is read as transformers reads
    it: model.safetensors alone."""
    directory = tmp_path / "both"
    shutil.copytree(checkpoint_dir("llama-sharded-bf16"), directory)
    single = {name: tensor * 0.5 for name, tensor in source_state(directory).items()}
    save_file(single, directory / "model.safetensors", metadata={"format": "pt"})
    _converts_from(directory, tmp_path / "o.asw", "model.safetensors", single, "bf16")


def test_transformers_weights_names_the_file_read(tmp_path: Path, checkpoint_dir) -> None:
    """config.json's transformers_weights names the file transformers loads first, before model.safetensors."""
    import transformers

    directory = tmp_path / "named"
    shutil.copytree(checkpoint_dir("qwen2-gqa-hd64"), directory)
    other = {name: tensor * 0.5 for name, tensor in load_file(directory / "model.safetensors").items()}
    save_file(other, directory / "other.safetensors", metadata={"format": "pt"})
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "transformers_weights": "other.safetensors"}))
    reference = transformers.AutoModelForCausalLM.from_pretrained(directory)
    assert torch.equal(reference.model.norm.weight.detach(), other["model.norm.weight"])  # transformers reads it
    out = tmp_path / "o.asw"
    _converts_from(directory, out, "other.safetensors", other, "fp16")
    (directory / "config.json").write_text(json.dumps({**config, "transformers_weights": "../x.safetensors"}))
    result = run_cli("ascend-convert", str(directory), "-o", str(out))
    assert result.returncode == 2 and "transformers_weights '../x.safetensors' is not a safetensors file" in \
        result.stderr.replace("\n", "")


def test_fp16_overflow_names_tensor_and_leaves_nothing(tmp_path: Path, checkpoint_dir) -> None:
    from safetensors.torch import save_file

    directory = tmp_path / "overflow"
    shutil.copytree(checkpoint_dir("qwen2-gqa-hd64"), directory)
    state = load_file(directory / "model.safetensors")
    state["model.layers.1.mlp.down_proj.weight"][3, 5] = 1e6
    save_file(state, directory / "model.safetensors", metadata={"format": "pt"})
    out = tmp_path / "out.asw"
    out.write_bytes(b"previous file")
    result = run_cli("ascend-convert", str(directory), "-o", str(out))
    assert result.returncode == 2
    assert "blk.1.ffn_down.weight" in result.stderr and "fp16 range" in result.stderr
    assert "Traceback" not in result.stderr
    assert out.read_bytes() == b"previous file"  # an existing output is only replaced by a complete file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.asw", "overflow"]  # no temporary file left
    ok = run_cli("ascend-convert", str(directory), "-o", str(out), "--dtype", "bf16", "--align", "4096")
    assert ok.returncode == 0, ok.stderr  # bf16 has the range


def test_interrupt_leaves_nothing(tmp_path: Path, checkpoint_dir) -> None:
    from ascend_super.convert.pipeline import convert
    from ascend_super.convert.sources.hub import open_source

    calls = []

    def interrupt(nbytes: int) -> None:
        calls.append(nbytes)
        if len(calls) == 5:
            raise KeyboardInterrupt

    out = tmp_path / "out.asw"
    with open_source(str(checkpoint_dir("qwen2-gqa-hd64"))) as source, pytest.raises(KeyboardInterrupt):
        convert(source, out, advance=interrupt)
    assert list(tmp_path.iterdir()) == []


def test_cli_summary_and_aliases(tmp_path: Path, checkpoint_dir) -> None:
    result = run_cli("ascend-convert", str(checkpoint_dir("qwen2-gqa-hd64")), "-o", str(tmp_path / "m.asw"))
    assert result.returncode == 0, result.stderr
    for word in ("parameters", "GB/s", "qwen2", "fp16"):
        assert word in result.stderr
    aliases = run_cli("ascend-convert", "--list-aliases")
    assert aliases.returncode == 0
    assert "deepseek-r1-7b" in aliases.stdout and "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B" in aliases.stdout
    assert "deepseek-ai/DeepSeek-R1-Distill-Llama-70B" in aliases.stdout


def populate_hub_cache(hf_home: Path, repo_id: str, commit: str, files_from: Path) -> None:
    """Lay out a huggingface_hub cache entry (blobs, snapshots/<commit>, refs/main) as a download would."""
    repo_dir = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / commit
    (repo_dir / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for index, file in enumerate(sorted(files_from.iterdir())):
        blob = repo_dir / "blobs" / f"{index:040x}"
        shutil.copy(file, blob)
        os.symlink(os.path.relpath(blob, snapshot), snapshot / file.name)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)


@pytest.mark.parametrize("spec", ["deepseek-r1-1.5b", "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"])
def test_hub_id_and_alias_offline(spec: str, tmp_path: Path, checkpoint_dir) -> None:
    commit = "0123456789abcdef0123456789abcdef01234567"
    populate_hub_cache(tmp_path / "hf", "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", commit,
                       checkpoint_dir("qwen2-gqa-hd64"))
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "m.asw"
    result = run_cli("ascend-convert", spec, "-o", str(out), "--align", "4096", env=env)
    assert result.returncode == 0, result.stderr
    with fmt.AswFile.open(out) as asw:
        source = asw.manifest["source"]
        assert source == {**source, "kind": "hf-hub", "id": "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B",
                          "revision": commit}
    missing = run_cli("ascend-convert", "someone/not-cached", "-o", str(tmp_path / "x.asw"), env=env)
    assert missing.returncode == 2 and "not in the local huggingface_hub cache" in missing.stderr
    assert "Traceback" not in missing.stderr
