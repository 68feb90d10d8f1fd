"""Turns a source (HF-named tensors + HF config) into a conversion plan: the manifest config, and for every
canonical tensor, in file order, the source tensors whose rows form it, its shape, layout and size.

All shape checks against the config happen here, before a single byte is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ascend_super.runtime import format as fmt

from .archs import ARCHS, ArchSpec, supported
from .sources.base import Source, SourceError, SourceMeta


@dataclass(frozen=True)
class PlannedTensor:
    name: str  # canonical
    parts: tuple[tuple[str, tuple[int, ...]], ...]  # (source name, expected source shape), rows concatenated
    shape: tuple[int, ...]
    layout: str
    nbytes: int
    source_nbytes: int  # bytes read from the source, for progress


@dataclass(frozen=True)
class Plan:
    arch: ArchSpec
    config: dict[str, Any]
    dtype: str
    layout: str
    tensors: tuple[PlannedTensor, ...]

    @property
    def source_nbytes(self) -> int:
        return sum(t.source_nbytes for t in self.tensors)

    @property
    def parameters(self) -> int:
        count = 0
        for tensor in self.tensors:
            elements = 1
            for dim in tensor.shape:
                elements *= dim
            count += elements
        return count


def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


def _id_list(*values: Any) -> list[int]:
    ids: list[int] = []
    for value in values:
        for token in value if isinstance(value, list) else [value]:
            if isinstance(token, int) and token not in ids:
                ids.append(token)
    return ids


def _rope_scaling(hf: dict[str, Any], where: str) -> dict[str, Any] | None:
    scaling = hf.get("rope_scaling") or hf.get("rope_parameters")
    if not isinstance(scaling, dict):
        return None
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind in (None, "default"):
        return None
    if kind != "llama3":
        raise SourceError(f"{where}: rope scaling type {kind!r} is not supported (supported: llama3)")
    try:
        return {
            "rope_type": "llama3",
            "factor": float(scaling["factor"]),
            "low_freq_factor": float(scaling["low_freq_factor"]),
            "high_freq_factor": float(scaling["high_freq_factor"]),
            "original_max_position_embeddings": int(scaling["original_max_position_embeddings"]),
        }
    except KeyError as exc:
        raise SourceError(f"{where}: llama3 rope scaling lacks {exc.args[0]!r}") from None


def manifest_config(meta: SourceMeta, where: str) -> tuple[ArchSpec, dict[str, Any]]:
    """The manifest's config map from a HF config.json (both rope_theta spellings, llama3 scaling, defaults)."""
    hf = meta.config
    architectures = hf.get("architectures") or []
    name = architectures[0] if architectures else None
    spec = ARCHS.get(name) if isinstance(name, str) else None
    if spec is None:
        raise SourceError(f"{where}: architecture {name!r} is not supported (supported: {supported()})")
    if hf.get("use_sliding_window"):
        raise SourceError(f"{where}: sliding-window attention (use_sliding_window=true) is not supported")
    try:
        for key in ("hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size", "vocab_size"):
            if not isinstance(hf[key], int) or isinstance(hf[key], bool) or hf[key] < 1:
                raise SourceError(f"{where}: config.json {key} is {hf[key]!r}, not a positive integer")
        hidden = int(hf["hidden_size"])
        heads = int(hf["num_attention_heads"])
        rope_parameters = hf.get("rope_parameters") if isinstance(hf.get("rope_parameters"), dict) else {}
        generation = meta.generation_config
        config: dict[str, Any] = {
            "hidden_size": hidden,
            "num_hidden_layers": int(hf["num_hidden_layers"]),
            "num_attention_heads": heads,
            "num_key_value_heads": int(_first(hf.get("num_key_value_heads"), heads)),
            "head_dim": int(_first(hf.get("head_dim"), hidden // heads)),
            "intermediate_size": int(hf["intermediate_size"]),
            "vocab_size": int(hf["vocab_size"]),
            "max_position_embeddings": int(_first(hf.get("max_position_embeddings"), 4096)),
            "rms_norm_eps": float(_first(hf.get("rms_norm_eps"), 1e-6)),
            "rope_theta": float(_first(hf.get("rope_theta"), rope_parameters.get("rope_theta"),
                                       spec.rope_theta_default)),
            "rope_scaling": _rope_scaling(hf, where),
            "tie_word_embeddings": bool(_first(hf.get("tie_word_embeddings"), spec.tie_embeddings_default)),
            "attention_bias": bool(_first(hf.get("attention_bias"), spec.attention_bias_default)),
            "bos_token_id": _first(hf.get("bos_token_id"), generation.get("bos_token_id")),
            "eos_token_id": _id_list(hf.get("eos_token_id"), generation.get("eos_token_id")),
            "pad_token_id": _first(hf.get("pad_token_id"), generation.get("pad_token_id")),
        }
    except KeyError as exc:
        raise SourceError(f"{where}: config.json lacks {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:
        raise SourceError(f"{where}: config.json has a malformed value: {exc}") from None
    try:
        fmt.check_config(Path(where), config)  # the reader's own rules, before any tensor is planned
    except fmt.FormatError as exc:
        raise SourceError(f"config.json would give an invalid model: {exc}") from None
    return spec, config


def _part_shapes(canonical: str, shape: tuple[int, ...], config: dict[str, Any]) -> list[tuple[int, ...]]:
    """Expected shapes of the source parts whose rows are concatenated into `canonical`."""
    q_rows = config["num_attention_heads"] * config["head_dim"]
    kv_rows = config["num_key_value_heads"] * config["head_dim"]
    tail = shape[1:]
    if canonical.endswith(("attn_qkv.weight", "attn_qkv.bias")):
        return [(q_rows, *tail), (kv_rows, *tail), (kv_rows, *tail)]
    if canonical.endswith("ffn_gate_up.weight"):
        return [(config["intermediate_size"], *tail)] * 2
    return [shape]


def build_plan(source: Source, dtype: str, layout: str) -> Plan:
    if dtype not in fmt.DTYPES:
        raise SourceError(f"dtype {dtype!r} is not one of {', '.join(fmt.DTYPES)}")
    if layout not in fmt.LAYOUTS:
        raise SourceError(f"layout {layout!r} is not one of {', '.join(fmt.LAYOUTS)}")
    where = str(source.path)
    spec, config = manifest_config(source.meta, where)
    available = source.tensors()
    planned: list[PlannedTensor] = []
    for name, shape in fmt.expected_tensors(config).items():
        parts = tuple(zip(spec.source_names(name), _part_shapes(name, shape, config)))
        source_nbytes = 0
        for part, part_shape in parts:
            info = available.get(part)
            if info is None:
                raise SourceError(f"{where}: tensor {part!r} is missing (needed for {name})")
            if info.shape != part_shape:
                raise SourceError(f"{where}: tensor {part!r} has shape {list(info.shape)}, expected "
                                  f"{list(part_shape)} from config.json")
            source_nbytes += info.nbytes
        tensor_layout = fmt.tensor_layout(name, layout)
        planned.append(PlannedTensor(name, parts, shape, tensor_layout,
                                     fmt.tensor_nbytes(shape, dtype, tensor_layout), source_nbytes))
    return Plan(spec, config, dtype, layout, tuple(planned))
