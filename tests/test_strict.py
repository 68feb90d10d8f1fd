"""Never silently wrong: the converter computes exactly what transformers computes for a checkpoint, or refuses it
in one line naming what; and one validator (format.check_manifest_values) decides for converter, inspect and run.

Each test is named after the case it guards (issue 10 §1 and §2).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any, Callable

import msgpack
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from ascend_super.convert.archs import ARCHS
from ascend_super.convert.plan import manifest_config
from ascend_super.convert.sources.base import SourceError, SourceMeta
from ascend_super.runtime import format as fmt
from checkpoints import Spec, convert_checkpoint, make_checkpoint
from conftest import run_cli
from test_format import read_parts, rebuild


def _checkpoint(tmp_path: Path, spec: Spec, config: Callable[[dict], None] | None = None,
                state: Callable[[dict], None] | None = None) -> Path:
    directory = make_checkpoint(tmp_path / "src", spec)
    if config is not None:
        data = json.loads((directory / "config.json").read_text())
        config(data)
        (directory / "config.json").write_text(json.dumps(data))
    if state is not None:
        tensors = load_file(directory / "model.safetensors")
        state(tensors)
        save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
    return directory


def _refused(directory: Path, tmp_path: Path, message: str) -> None:
    out = tmp_path / "out.asw"
    with pytest.raises(SourceError) as exc:
        convert_checkpoint(directory, out)
    text = str(exc.value)
    assert message in text and "\n" not in text, text
    assert not out.exists()


LLAMA = Spec(arch="llama", hidden=64, heads=4, kv_heads=2, ffn=48, layers=2, vocab=320)
QWEN2 = Spec(arch="qwen2", hidden=64, heads=4, kv_heads=2, ffn=48, layers=2, vocab=320)


# ------------------------------------------------------------------------------------ §1 refusals of the math
def test_llama_attention_bias_refused(tmp_path: Path) -> None:
    """attention_bias puts a bias on o_proj too, which the runtime does not add."""
    directory = _checkpoint(tmp_path, dataclasses.replace(LLAMA, extra={"attention_bias": True}))
    _refused(directory, tmp_path, "config.json attention_bias is True; the runtime computes only False")


def test_llama_mlp_bias_refused(tmp_path: Path) -> None:
    directory = _checkpoint(tmp_path, dataclasses.replace(LLAMA, extra={"mlp_bias": True}))
    _refused(directory, tmp_path, "config.json mlp_bias is True; the runtime computes only False")


def test_hidden_act_other_than_silu_refused(tmp_path: Path) -> None:
    directory = _checkpoint(tmp_path, QWEN2, config=lambda c: c.update(hidden_act="gelu"))
    _refused(directory, tmp_path, "config.json hidden_act is 'gelu'; the runtime computes only 'silu' or 'swish'")


@pytest.mark.parametrize("where", ["top level", "rope_parameters"])
def test_partial_rotary_factor_refused(tmp_path: Path, where: str) -> None:
    def change(c: dict) -> None:
        (c if where == "top level" else c["rope_parameters"])["partial_rotary_factor"] = 0.5
    directory = _checkpoint(tmp_path, LLAMA, config=change)
    _refused(directory, tmp_path, "partial_rotary_factor is 0.5: partial rotary embedding is not supported")


def test_sliding_window_refused(tmp_path: Path) -> None:
    directory = _checkpoint(tmp_path, QWEN2, config=lambda c: c.update(use_sliding_window=True, sliding_window=8))
    _refused(directory, tmp_path, "config.json use_sliding_window is True; the runtime computes only False")


def test_llama_sliding_window_refused(tmp_path: Path) -> None:
    """LlamaConfig keeps an unknown sliding_window, and transformers' cache then keeps only the last that many
    positions of every layer (cache_utils' layer types); the runtime attends over all of them."""
    directory = _checkpoint(tmp_path, LLAMA, config=lambda c: c.update(sliding_window=16))
    _refused(directory, tmp_path, "config.json has sliding_window: sliding-window attention layers are not supported")


def test_llama_chunked_attention_refused(tmp_path: Path) -> None:
    directory = _checkpoint(tmp_path, LLAMA, config=lambda c: c.update(attention_chunk_size=16))
    _refused(directory, tmp_path, "config.json has attention_chunk_size: chunked attention layers are not supported")


def test_qwen2_sliding_window_size_without_use_sliding_window_converts(tmp_path: Path) -> None:
    """Released Qwen2 configs carry sliding_window beside use_sliding_window: false, which Qwen2Config ignores."""
    directory = _checkpoint(tmp_path, QWEN2, config=lambda c: c.update(use_sliding_window=False,
                                                                      sliding_window=131072))
    convert_checkpoint(directory, tmp_path / "out.asw")


@pytest.mark.parametrize("spec", [QWEN2, LLAMA], ids=["qwen2", "llama"])
def test_layer_types_other_than_full_attention_refused(tmp_path: Path, spec: Spec) -> None:
    """transformers builds a sliding-window cache for such layers (Qwen2 with use_sliding_window false raises)."""
    directory = _checkpoint(tmp_path, spec, config=lambda c: c.update(
        layer_types=["full_attention", "sliding_attention"]))
    _refused(directory, tmp_path, "config.json layer_types has 'sliding_attention'; the runtime computes only "
                                  "'full_attention' or 'attention' layers")


def test_layer_types_all_full_attention_converts(tmp_path: Path) -> None:
    """"attention" is the legacy name transformers reads as "full_attention"."""
    directory = _checkpoint(tmp_path, LLAMA, config=lambda c: c.update(layer_types=["full_attention", "attention"]))
    convert_checkpoint(directory, tmp_path / "out.asw")


def test_negative_pad_token_id_stored_as_none(tmp_path: Path) -> None:
    """Early Llama configs say pad_token_id -1 for none; transformers loads them, and no math reads the pad id."""
    directory = _checkpoint(tmp_path, LLAMA, config=lambda c: c.update(pad_token_id=-1))
    convert_checkpoint(directory, tmp_path / "out.asw")
    with fmt.AswFile.open(tmp_path / "out.asw") as asw:
        assert asw.config["pad_token_id"] is None


@pytest.mark.parametrize("with_file", [False, True], ids=["no generation_config.json", "generation_config.json"])
def test_generation_keys_of_config_json_count_where_transformers_reads_them(tmp_path: Path, with_file: bool) -> None:
    """Legacy checkpoints keep generation settings in config.json; transformers applies them when there is no
    generation_config.json (GenerationConfig.from_model_config) and ignores them beside one. The file keeps what
    transformers' model.generation_config holds, so the runtime's note names what it does not apply."""
    import transformers

    from ascend_super.runtime.generate import GENERATION_KEYS, unapplied_generation_config
    from ascend_super.runtime.generate import Sampling

    legacy = {"repetition_penalty": 1.5, "no_repeat_ngram_size": 2, "do_sample": True, "temperature": 0.7,
              "top_k": 5, "max_length": 40}
    directory = _checkpoint(tmp_path, LLAMA, config=lambda c: c.update(legacy))
    if not with_file:
        (directory / "generation_config.json").unlink()
    convert_checkpoint(directory, tmp_path / "out.asw")
    reference = transformers.AutoModelForCausalLM.from_pretrained(directory).generation_config
    named = {**legacy, **json.loads((directory / "generation_config.json").read_text())} if with_file else legacy
    expected = {key: getattr(reference, key) for key in GENERATION_KEYS
                if key in named and getattr(reference, key) == named[key]}  # what the files set and it kept
    with fmt.AswFile.open(tmp_path / "out.asw") as asw:
        stored = {key: value for key, value in asw.manifest["generation_config"].items() if key in GENERATION_KEYS}
    assert stored == expected
    assert (stored == legacy) is not with_file
    note = unapplied_generation_config(stored, Sampling())
    assert (note is not None and "repetition_penalty=1.5" in note) is not with_file


def test_model_type_conflicting_with_architectures_refused(tmp_path: Path) -> None:
    """AutoModelForCausalLM builds the model model_type names: a qwen2 architecture under model_type llama would
    lose its q/k/v biases there."""
    directory = _checkpoint(tmp_path, QWEN2, config=lambda c: c.update(model_type="llama"))
    _refused(directory, tmp_path, "config.json model_type is 'llama' but architectures[0] is 'Qwen2ForCausalLM'")


@pytest.mark.parametrize("kind", ["linear", "dynamic", "yarn", "longrope"])
def test_rope_types_other_than_default_and_llama3_refused(tmp_path: Path, kind: str) -> None:
    directory = _checkpoint(tmp_path, LLAMA, config=lambda c: c.update(
        rope_parameters={"rope_type": kind, "factor": 2.0, "rope_theta": 10000.0}))
    _refused(directory, tmp_path, f"rope type {kind!r} is not supported (supported: default, llama3)")


def test_quantized_checkpoint_refused(tmp_path: Path) -> None:
    directory = _checkpoint(tmp_path, QWEN2, config=lambda c: c.update(
        quantization_config={"quant_method": "fp8"}))
    _refused(directory, tmp_path, "config.json has quantization_config: quantized checkpoints are not supported")


def test_head_dim_conflicting_with_tensors_refused(tmp_path: Path) -> None:
    directory = _checkpoint(tmp_path, LLAMA, config=lambda c: c.update(head_dim=32))
    _refused(directory, tmp_path, "'model.layers.0.self_attn.q_proj.weight' has shape [64, 64], expected [128, 64]")


# ------------------------------------------------------------------------------- every source tensor is used
def test_stray_source_tensor_refused(tmp_path: Path) -> None:
    directory = _checkpoint(tmp_path, QWEN2, state=lambda s: s.update({"some.junk": torch.zeros(3)}))
    _refused(directory, tmp_path, "tensor(s) 'some.junk' are not part of the Qwen2ForCausalLM model config.json "
                                  "describes; refusing to drop them")


def test_layers_beyond_num_hidden_layers_refused(tmp_path: Path) -> None:
    directory = _checkpoint(tmp_path, dataclasses.replace(LLAMA, layers=3),
                            config=lambda c: c.update(num_hidden_layers=2))
    _refused(directory, tmp_path, "'model.layers.2.input_layernorm.weight'")


def test_rotary_inv_freq_skipped_as_derived_data(tmp_path: Path) -> None:
    """Old checkpoints carry rotary inv_freq buffers; transformers recomputes them and ignores the stored copy
    (the arch table's derived_tensors rule), so the file is the same as without them."""
    plain = convert_checkpoint(_checkpoint(tmp_path, LLAMA), tmp_path / "plain.asw")
    (tmp_path / "src").rename(tmp_path / "plain-src")
    inv_freq = {f"model.layers.{i}.self_attn.rotary_emb.inv_freq": torch.rand(8) for i in range(2)}
    with_buffers = convert_checkpoint(_checkpoint(tmp_path, LLAMA, state=lambda s: s.update(inv_freq)), tmp_path / "b.asw")
    with fmt.AswFile.open(plain) as a, fmt.AswFile.open(with_buffers) as b:
        assert a.tensors == b.tensors


# ------------------------------------------------------------------------------- conflicting config, settled
def test_tied_config_with_distinct_lm_head_keeps_lm_head_like_transformers(tmp_path: Path) -> None:
    """transformers unties when both matrices are stored with different values (and uses lm_head)."""
    import transformers

    directory = _checkpoint(tmp_path, dataclasses.replace(QWEN2, tied=False),
                            config=lambda c: c.update(tie_word_embeddings=True))
    out = convert_checkpoint(directory, tmp_path / "out.asw")
    model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    with fmt.AswFile.open(out) as asw:
        assert asw.config["tie_word_embeddings"] is False
        stored = asw.tensor_u16("output.weight").view(np.float16).astype(np.float32)
        want = model.lm_head.weight.detach().numpy().astype(np.float16).astype(np.float32)
        np.testing.assert_array_equal(stored, want)


def test_tied_config_with_identical_lm_head_stays_tied(tmp_path: Path) -> None:
    def copy_embedding(state: dict) -> None:
        state["lm_head.weight"] = state["model.embed_tokens.weight"].clone()
    directory = _checkpoint(tmp_path, dataclasses.replace(QWEN2, tied=True), state=copy_embedding)
    with fmt.AswFile.open(convert_checkpoint(directory, tmp_path / "out.asw")) as asw:
        assert asw.config["tie_word_embeddings"] is True and "output.weight" not in asw.by_name


def _meta(config: dict[str, Any]) -> SourceMeta:
    return SourceMeta(config=config, tokenizer_json="{}")


BASE = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 48,
        "vocab_size": 320, "rms_norm_eps": 1e-5}
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0}
# config.json variants, each read by transformers and by us: absent keys, both rope_theta spellings, legacy keys
VARIANTS: dict[str, dict[str, Any]] = {
    "no max_position_embeddings": {},
    "no num_key_value_heads, heads 32": {"num_attention_heads": 32, "hidden_size": 256, "num_key_value_heads": None},
    "no rms_norm_eps": {"rms_norm_eps": None},
    "explicit head_dim": {"head_dim": 32},
    "rope_theta at both levels": {"rope_theta": 500000.0, "rope_parameters": {"rope_type": "default",
                                                                             "rope_theta": 20000.0}},
    "rope_theta top level only": {"rope_theta": 500000.0},
    "legacy rope_scaling beside rope_parameters": {
        "rope_theta": 500000.0, "rope_scaling": {**LLAMA3, "original_max_position_embeddings": 64},
        "rope_parameters": {"rope_type": "default", "rope_theta": 20000.0}},
    "llama3 without original_max_position_embeddings": {"max_position_embeddings": 1024,
                                                        "rope_parameters": {**LLAMA3, "rope_theta": 5e5}},
    "top-level original_max_position_embeddings": {"original_max_position_embeddings": 32, "rope_parameters": {
        **LLAMA3, "rope_theta": 5e5, "original_max_position_embeddings": 64}},
    "top-level original_max_position_embeddings only": {"max_position_embeddings": 1024,
                                                        "original_max_position_embeddings": 32,
                                                        "rope_parameters": {**LLAMA3, "rope_theta": 5e5}},
}


@pytest.mark.parametrize("arch,variant", [(arch, variant) for variant in VARIANTS for arch in ARCHS
                                          if arch == "LlamaForCausalLM" or "llama3" not in json.dumps(VARIANTS[variant])])
def test_config_resolution_matches_transformers(arch: str, variant: str) -> None:
    """The manifest's hyper-parameters are the ones transformers' config class resolves from the same file."""
    import transformers

    hf = {**BASE, "architectures": [arch], **VARIANTS[variant]}
    hf = {key: value for key, value in hf.items() if value is not None}
    spec, config, defaulted = manifest_config(_meta(json.loads(json.dumps(hf))), "config.json")
    reference = getattr(transformers, ARCHS[arch].hf_config_class).from_dict(json.loads(json.dumps(hf)))
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "intermediate_size", "vocab_size", "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings"):
        assert config[key] == getattr(reference, key), key
    head_dim = getattr(reference, "head_dim", None) or reference.hidden_size // reference.num_attention_heads
    assert config["head_dim"] == head_dim
    # what the model computes with: its rotary embedding standardizes the rope parameters again once every
    # config.json key is an attribute (a top-level original_max_position_embeddings then replaces the dict's)
    reference.standardize_rope_params()
    rope = reference.rope_parameters
    assert config["rope_theta"] == rope["rope_theta"]
    if rope["rope_type"] == "default":
        assert config["rope_scaling"] is None
    else:
        assert config["rope_scaling"] == {key: rope[key] for key in config["rope_scaling"]}
    assert set(defaulted) >= {key for key in spec.hf_defaults if key not in hf and key != "rope_theta"}


@pytest.mark.parametrize("arch", list(ARCHS))
def test_default_table_matches_transformers_config_classes(arch: str) -> None:
    """The converter keeps transformers' defaults as data (it must not need transformers to run); they are the
    installed transformers' config-class defaults. None stands for a value derived from other keys."""
    import transformers

    spec = ARCHS[arch]
    cls = getattr(transformers, spec.hf_config_class)
    fields = {f.name: f.default for f in dataclasses.fields(cls)}
    for key, value in spec.hf_defaults.items():
        if key == "rope_theta":
            assert value == cls.default_theta
        elif key in fields:
            assert value == fields[key] and type(value) is type(fields[key]), key
        else:  # read by the modeling code with getattr(config, key, derived)
            assert value is None and key == "head_dim", key


def test_defaulted_config_keys_recorded_in_manifest(tmp_path: Path) -> None:
    directory = _checkpoint(tmp_path, QWEN2, config=lambda c: c.pop("max_position_embeddings"))
    with fmt.AswFile.open(convert_checkpoint(directory, tmp_path / "out.asw")) as asw:
        assert asw.config["max_position_embeddings"] == 32768  # Qwen2Config's default, not a guess
        assert "max_position_embeddings" in asw.manifest["defaulted_config"]
        assert asw.preamble.version_minor == fmt.VERSION_MINOR == 1


def test_broken_chat_template_refused_at_convert(tmp_path: Path) -> None:
    def break_template(directory: Path) -> None:
        config = json.loads((directory / "tokenizer_config.json").read_text())
        config["chat_template"] = "{% for m in messages %}{{ m['content'] }"
        (directory / "tokenizer_config.json").write_text(json.dumps(config))
    directory = make_checkpoint(tmp_path / "src", QWEN2)
    break_template(directory)
    _refused(directory, tmp_path, "chat template: ")


@pytest.mark.parametrize("names", [("default", "tool_use"), ("tool_use",)])
def test_named_template_files_take_the_place_of_tokenizer_config_s(tmp_path: Path, names: tuple[str, ...]) -> None:
    """additional_chat_templates/NAME.jinja files win over tokenizer_config.json's template in transformers: the
    default one is used, and without one transformers refuses to choose, so the converter refuses."""
    import transformers

    directory = _checkpoint(tmp_path, QWEN2)
    (directory / "additional_chat_templates").mkdir()
    for name in names:
        (directory / "additional_chat_templates" / f"{name}.jinja").write_text(
            f"[{name}]{{% for m in messages %}}{{{{ m.content }}}}{{% endfor %}}")
    messages = [{"role": "user", "content": "hi"}]
    reference = transformers.AutoTokenizer.from_pretrained(directory)
    if "default" not in names:
        with pytest.raises(ValueError):
            reference.apply_chat_template(messages, tokenize=False)
        _refused(directory, tmp_path, "named chat templates (tool_use) and none is named 'default'")
        return
    convert_checkpoint(directory, tmp_path / "out.asw")
    with fmt.AswFile.open(tmp_path / "out.asw") as asw:
        assert asw.manifest["chat_template"] == (directory / "additional_chat_templates" / "default.jinja").read_text()
    assert reference.apply_chat_template(messages, tokenize=False) == "[default]hi"


def test_named_chat_templates_without_a_default_are_refused(tmp_path: Path) -> None:
    """Several named templates and none named "default": transformers' apply_chat_template refuses to choose, and so
    does the converter (it took the first one)."""
    directory = make_checkpoint(tmp_path / "src", QWEN2)
    config = json.loads((directory / "tokenizer_config.json").read_text())
    config["chat_template"] = [{"name": "tool_use", "template": "{{ messages[0]['content'] }}"},
                               {"name": "rag", "template": "{{ messages[-1]['content'] }}"}]
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    _refused(directory, tmp_path, "named chat templates (rag, tool_use) and none is named 'default'")
    (directory / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")  # the way out the error names
    with fmt.AswFile.open(convert_checkpoint(directory, tmp_path / "ok.asw")) as asw:
        assert asw.manifest["chat_template"] == "{{ messages[0]['content'] }}"


# ------------------------------------------------------------------------------------------ §2 one validator
def _forge(tmp_path: Path, converted: Callable[..., Path], change: Callable[[dict], None]) -> Path:
    _, manifest, data = read_parts(converted("llama-llama3"))
    forged = msgpack.unpackb(msgpack.packb(manifest))
    change(forged)
    path = tmp_path / "forged.asw"
    rebuild(path, forged, data)
    return path


FORGED: dict[str, tuple[Callable[[dict], None], str]] = {
    "llama3 factor 0": (lambda m: m["config"]["rope_scaling"].update(factor=0.0),
                        "config.rope_scaling.factor is 0.0, not a positive finite number"),
    "llama3 low == high": (lambda m: m["config"]["rope_scaling"].update(low_freq_factor=4.0),
                           "config.rope_scaling.high_freq_factor 4.0 is not above low_freq_factor 4.0"),
    "tokenizer id >= vocab_size": (lambda m: m["config"].update(vocab_size=300),
                                   "tokenizer has token id 319, outside the model's vocab_size 300"),
    "10^12 layers": (lambda m: m["config"].update(num_hidden_layers=10**12),
                     "config.num_hidden_layers is 1000000000000, not an integer from 1 to 4096"),
    "infinite rope_theta": (lambda m: m["config"].update(rope_theta=float("inf")),
                            "config.rope_theta is inf, not a positive finite number"),
}


@pytest.mark.parametrize("case", list(FORGED))
def test_inspect_and_run_refuse_the_same_manifest(case: str, tmp_path: Path, converted) -> None:
    change, message = FORGED[case]
    path = _forge(tmp_path, converted, change)
    with pytest.raises(fmt.ManifestInvalid, match=message.replace("^", r"\^").replace(".", r"\.")):
        fmt.AswFile.open(path)
    for tool in (("ascend-inspect", str(path)), ("ascend-run", str(path), "--prompt", "hi", "--raw")):
        result = run_cli(*tool)
        assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr, \
            (tool[0], result.stderr)


def test_manifest_with_huge_layer_count_refused_before_tensor_table(tmp_path: Path, converted,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The config is checked before anything is derived from it (the tensor list of 10^12 layers)."""
    path = _forge(tmp_path, converted, lambda m: m["config"].update(num_hidden_layers=10**12))
    monkeypatch.setattr(fmt, "expected_tensors", lambda config: pytest.fail("tensor list derived first"))
    with pytest.raises(fmt.ManifestInvalid, match="num_hidden_layers"):
        fmt.AswFile.open(path)


def test_converter_refuses_tokenizer_ids_beyond_vocab(tmp_path: Path) -> None:
    directory = _checkpoint(tmp_path, QWEN2)
    shutil.copy(directory / "tokenizer.json", tmp_path / "tok.json")
    tokenizer = json.loads((directory / "tokenizer.json").read_text())
    tokenizer["added_tokens"].append({**tokenizer["added_tokens"][0], "id": 320, "content": "<|extra|>"})
    (directory / "tokenizer.json").write_text(json.dumps(tokenizer))
    _refused(directory, tmp_path, "tokenizer has token id 320, outside the model's vocab_size 320")
