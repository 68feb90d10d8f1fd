"""Turns a source (HF-named tensors + HF config) into a conversion plan: the manifest config, and for every
canonical tensor, in file order, the source tensors whose rows form it, its shape, layout and size.

All shape checks against the config happen here, before a single byte is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ascend_super.runtime import format as fmt

from .archs import ARCHS, ROPE_TYPES, ArchSpec, supported
from .sources.base import Source, SourceError, SourceMeta

COMPARE_BLOCK_BYTES = 16 * 1024 * 1024  # bytes of source per block when comparing two tensors


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
    defaulted: list[str]  # config keys config.json lacks, filled with transformers' defaults
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


def _no_negative_id(value: Any) -> Any:
    """A pad id of -1 (early Llama configs) means none; nothing in the runtime reads the pad id, and transformers
    loads such a config as is."""
    return None if isinstance(value, int) and not isinstance(value, bool) and value < 0 else value


def _id_list(*values: Any) -> list[int]:
    ids: list[int] = []
    for value in values:
        for token in value if isinstance(value, list) else [value]:
            if isinstance(token, int) and token not in ids:
                ids.append(token)
    return ids


def _same_value(value: Any, allowed: tuple[Any, ...]) -> bool:
    """`value` is one of `allowed` with the same type (so 0 is not False and 1.0 is not True)."""
    return any(type(value) is type(a) and value == a for a in allowed)


class _Resolved:
    """config.json read the way the arch's transformers config class reads it: an absent key takes the class
    default (and is recorded in `defaulted`); an explicit null stays null."""

    def __init__(self, spec: ArchSpec, hf: dict[str, Any], where: str, origin: str = "config.json") -> None:
        self.spec, self.hf, self.where, self.origin = spec, hf, where, origin
        self.defaulted: list[str] = []

    def get(self, key: str) -> Any:
        if key in self.hf:
            return self.hf[key]
        if key not in self.spec.hf_defaults:
            raise KeyError(key)
        self.defaulted.append(key)
        return self.spec.hf_defaults[key]

    def refuse(self, problem: str) -> SourceError:
        return SourceError(f"{self.where}: {self.origin} {problem}")

    def integer(self, key: str, derived: int | None = None) -> int:
        value = self.get(key)
        if value is None and derived is not None:
            return derived
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise self.refuse(f"{key} is {value!r}, not a positive integer")
        return value

    def number(self, value: Any, key: str) -> float:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise self.refuse(f"{key} is {value!r}, not a number")
        return float(value)


def _token_ids(cfg: _Resolved, generation: dict[str, Any], key: str) -> Any:
    """generation_config.json's value of a special-token key; the config class default only when neither file
    names the key (transformers' generate reads generation_config.json, else the model config)."""
    if key in generation or key in cfg.hf:
        return generation.get(key)
    return cfg.get(key)


def _check_runtime_computes(cfg: _Resolved) -> None:
    """Refuse every config value that changes the math in a way the runtime does not compute."""
    for key, meaning in cfg.spec.must_be_absent.items():
        if cfg.hf.get(key) is not None:
            raise cfg.refuse(f"has {key}: {meaning} are not supported")
    for key, allowed in cfg.spec.runtime_computes.items():
        value = cfg.get(key)
        if not _same_value(value, allowed):
            raise cfg.refuse(f"{key} is {value!r}; the runtime computes only "
                             f"{' or '.join(repr(a) for a in allowed)} ({cfg.spec.hf_architecture})")
    for key, allowed in cfg.spec.every_entry.items():
        entries = cfg.hf.get(key)
        if entries is None:
            continue
        if not isinstance(entries, list):
            raise cfg.refuse(f"{key} is {entries!r}, not a list")
        other = next((entry for entry in entries if not _same_value(entry, allowed)), None)
        if other is not None:
            raise cfg.refuse(f"{key} has {other!r}; the runtime computes only "
                             f"{' or '.join(repr(a) for a in allowed)} layers")


def _rope(cfg: _Resolved, head_dim: int, max_positions: int) -> tuple[float, dict[str, Any] | None]:
    """(rope_theta, the manifest's rope_scaling) with transformers' precedence: the legacy `rope_scaling` dict
    replaces `rope_parameters`; a key inside that dict beats the same key at the top level of config.json."""
    hf = cfg.hf
    rope = hf.get("rope_scaling") or hf.get("rope_parameters") or {}
    if not isinstance(rope, dict):
        raise cfg.refuse(f"rope_parameters / rope_scaling is {rope!r}, not a map")
    nested = [key for key, value in rope.items() if isinstance(value, dict)]
    if nested:
        raise cfg.refuse(f"rope parameters per layer type ({', '.join(nested)}) are not supported")
    if "rope_theta" in rope:
        theta = rope["rope_theta"]
    elif "rope_theta" in hf:
        theta = hf["rope_theta"]
    else:
        theta = cfg.get("rope_theta")
    theta = cfg.number(theta, "rope_theta")
    partial = rope.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
    if int(head_dim * cfg.number(partial, "partial_rotary_factor")) != head_dim:
        raise cfg.refuse(f"partial_rotary_factor is {partial!r}: partial rotary embedding is not supported "
                         f"(the runtime rotates all {head_dim} dims of a head)")
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind not in ROPE_TYPES:
        raise cfg.refuse(f"rope type {kind!r} is not supported (supported: {', '.join(ROPE_TYPES)})")
    if kind == "default":
        return theta, None
    # transformers' standardize_rope_params, as the model's rotary embedding runs it (once every config.json key is
    # an attribute): a top-level original_max_position_embeddings replaces the dict's, else the dict's, else
    # max_position_embeddings
    original = hf.get("original_max_position_embeddings", rope.get("original_max_position_embeddings", max_positions))
    if "original_max_position_embeddings" not in rope and "original_max_position_embeddings" not in hf:
        cfg.defaulted.append("rope_scaling.original_max_position_embeddings")
    try:
        scaling = {"rope_type": "llama3", "factor": cfg.number(rope["factor"], "rope factor"),
                   "low_freq_factor": cfg.number(rope["low_freq_factor"], "rope low_freq_factor"),
                   "high_freq_factor": cfg.number(rope["high_freq_factor"], "rope high_freq_factor"),
                   "original_max_position_embeddings": original}
    except KeyError as exc:
        raise cfg.refuse(f"llama3 rope scaling lacks {exc.args[0]!r}") from None
    return theta, scaling


def manifest_config(meta: SourceMeta, where: str) -> tuple[ArchSpec, dict[str, Any], list[str]]:
    """The manifest's config map from a HF config.json, resolved as transformers resolves it (absent keys take
    the config class's defaults, listed in the third value); refuses what the runtime does not compute."""
    hf = meta.config
    architectures = hf.get("architectures") or []
    name = architectures[0] if architectures else None
    spec = ARCHS.get(name) if isinstance(name, str) else None
    if spec is None:
        raise SourceError(f"{where}: architecture {name!r} is not supported (supported: {supported()})")
    cfg = _Resolved(spec, hf, where, meta.config_origin)
    model_type = hf.get("model_type")
    if model_type is not None and model_type != spec.arch:  # AutoModelForCausalLM builds what model_type names
        raise cfg.refuse(f"model_type is {model_type!r} but architectures[0] is {name!r} (model_type "
                         f"{spec.arch!r}): transformers would build a {model_type!r} model; refusing the conflict")
    _check_runtime_computes(cfg)
    generation = meta.generation_config
    try:
        hidden = cfg.integer("hidden_size")
        heads = cfg.integer("num_attention_heads")
        head_dim = cfg.integer("head_dim", derived=hidden // heads)
        max_positions = cfg.integer("max_position_embeddings")
        rope_theta, rope_scaling = _rope(cfg, head_dim, max_positions)
        tie = cfg.get("tie_word_embeddings")
        if not isinstance(tie, bool):
            raise cfg.refuse(f"tie_word_embeddings is {tie!r}, not a boolean")
        config: dict[str, Any] = {
            "hidden_size": hidden,
            "num_hidden_layers": cfg.integer("num_hidden_layers"),
            "num_attention_heads": heads,
            "num_key_value_heads": cfg.integer("num_key_value_heads", derived=heads),
            "head_dim": head_dim,
            "intermediate_size": cfg.integer("intermediate_size"),
            "vocab_size": cfg.integer("vocab_size"),
            "max_position_embeddings": max_positions,
            "rms_norm_eps": cfg.number(cfg.get("rms_norm_eps"), "rms_norm_eps"),
            "rope_theta": rope_theta,
            "rope_scaling": rope_scaling,
            "tie_word_embeddings": tie,
            "attention_bias": spec.qkv_bias,
            "bos_token_id": _first(hf.get("bos_token_id"), _token_ids(cfg, generation, "bos_token_id")),
            "eos_token_id": _id_list(hf.get("eos_token_id"), _token_ids(cfg, generation, "eos_token_id")),
            "pad_token_id": _no_negative_id(_first(hf.get("pad_token_id"),
                                                   _token_ids(cfg, generation, "pad_token_id"))),
        }
    except KeyError as exc:
        raise cfg.refuse(f"lacks {exc.args[0]!r}") from None
    try:
        fmt.check_config(Path(where), config)  # the reader's own rules, before any tensor is planned
    except fmt.FormatError as exc:
        raise SourceError(f"{meta.config_origin} would give an invalid model: {exc}") from None
    return spec, config, sorted(set(cfg.defaulted))


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


def _same_tensor(source: Source, first: str, second: str) -> bool:
    """Whether two source tensors of equal shape hold the same values (read in row blocks)."""
    rows = source.tensors()[first].shape[0]
    step = max(1, COMPARE_BLOCK_BYTES // max(1, source.tensors()[first].nbytes // max(rows, 1)))
    return all(np.array_equal(source.read_rows(first, start, min(rows, start + step)),
                              source.read_rows(second, start, min(rows, start + step)))
               for start in range(0, rows, step))


def _settle_tied_output(source: Source, config: dict[str, Any], where: str) -> list[str]:
    """tie_word_embeddings with an lm_head.weight in the source: transformers ties only when the two matrices are
    equal and otherwise keeps lm_head (untied); so do we. Returns the source tensors this decision consumed."""
    available = source.tensors()
    head, embed = "lm_head.weight", "model.embed_tokens.weight"
    if not config["tie_word_embeddings"] or head not in available or embed not in available:
        return []
    if available[head].shape != available[embed].shape:
        raise SourceError(f"{where}: tensor {head!r} has shape {list(available[head].shape)}, expected "
                          f"{list(available[embed].shape)} like {embed!r}")
    if _same_tensor(source, head, embed):
        return [head]  # a stored copy of the tied matrix
    config["tie_word_embeddings"] = False  # transformers: "both are present with different values ... NOT tie"
    return []


def _check_all_consumed(spec: ArchSpec, available: dict[str, Any], used: set[str], where: str, origin: str) -> None:
    """Every source tensor is part of the model, or derived data the arch table names; else fail, naming it."""
    unused = [name for name in available if name not in used and spec.derived_reason(name) is None]
    if unused:
        more = f" (and {len(unused) - 3} more)" if len(unused) > 3 else ""
        raise SourceError(f"{where}: tensor(s) {', '.join(repr(n) for n in unused[:3])}{more} are not part of the "
                          f"{spec.hf_architecture} model {origin} describes; refusing to drop them")


def build_plan(source: Source, dtype: str, layout: str) -> Plan:
    if dtype not in fmt.DTYPES:
        raise SourceError(f"dtype {dtype!r} is not one of {', '.join(fmt.DTYPES)}")
    if layout not in fmt.LAYOUTS:
        raise SourceError(f"layout {layout!r} is not one of {', '.join(fmt.LAYOUTS)}")
    where = str(source.path)
    spec, config, defaulted = manifest_config(source.meta, where)
    available = source.tensors()
    used = set(_settle_tied_output(source, config, where))
    planned: list[PlannedTensor] = []
    for name, shape in fmt.expected_tensors(config).items():
        parts = tuple(zip(spec.source_names(name), _part_shapes(name, shape, config)))
        source_nbytes = 0
        for part, part_shape in parts:
            info = available.get(part)
            if info is None:
                raise SourceError(f"{where}: tensor {part!r} is missing (needed for {name})")
            if info.shape != part_shape:
                origin = source.meta.config_origin
                defaults = (f" ({origin} lacks {', '.join(defaulted)}: {spec.hf_config_class} defaults were used)"
                            if defaulted else "")
                raise SourceError(f"{where}: tensor {part!r} has shape {list(info.shape)}, expected "
                                  f"{list(part_shape)} from {origin}{defaults}")
            source_nbytes += info.nbytes
            used.add(part)
        tensor_layout = fmt.tensor_layout(name, layout)
        planned.append(PlannedTensor(name, parts, shape, tensor_layout,
                                     fmt.tensor_nbytes(shape, dtype, tensor_layout), source_nbytes))
    _check_all_consumed(spec, available, used, where, source.meta.config_origin)
    return Plan(spec, config, defaulted, dtype, layout, tuple(planned))
