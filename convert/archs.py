"""The one architecture table: which HF architectures we convert, how their tensors map to canonical ones, the
defaults their transformers config classes give absent keys, and which config values the runtime computes exactly.

Every difference between architectures is a field of `ArchSpec`; nothing else in the converter branches on the
architecture name. Adding Qwen3 later means adding a row (plus its q/k norm tensors to the format).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

_L = "model.layers.{i}."
# canonical name template ("{i}" = layer) -> HF source tensors whose rows are concatenated, in this order
_DECODER_SOURCES: dict[str, tuple[str, ...]] = {
    "token_embd.weight": ("model.embed_tokens.weight",),
    "blk.{i}.attn_norm.weight": (_L + "input_layernorm.weight",),
    "blk.{i}.attn_qkv.weight": (_L + "self_attn.q_proj.weight", _L + "self_attn.k_proj.weight",
                                _L + "self_attn.v_proj.weight"),
    "blk.{i}.attn_qkv.bias": (_L + "self_attn.q_proj.bias", _L + "self_attn.k_proj.bias",
                              _L + "self_attn.v_proj.bias"),
    "blk.{i}.attn_output.weight": (_L + "self_attn.o_proj.weight",),
    "blk.{i}.ffn_norm.weight": (_L + "post_attention_layernorm.weight",),
    "blk.{i}.ffn_gate_up.weight": (_L + "mlp.gate_proj.weight", _L + "mlp.up_proj.weight"),
    "blk.{i}.ffn_down.weight": (_L + "mlp.down_proj.weight",),
    "output_norm.weight": ("model.norm.weight",),
    "output.weight": ("lm_head.weight",),
}

# Source tensors that hold derived data the model recomputes from config.json, so transformers ignores the stored
# copy (it registers them as non-persistent buffers): regex -> why it is safe to skip. Any other unused tensor
# fails the conversion.
_DERIVED_TENSORS: dict[str, str] = {
    r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq": "rotary inv_freq, recomputed from rope_theta/head_dim",
    r"model\.rotary_emb\.inv_freq": "rotary inv_freq, recomputed from rope_theta/head_dim",
}

# config.json keys whose value changes the math -> the values the runtime implements (anything else is refused).
# Keys absent from config.json take the arch's transformers default first (`ArchSpec.hf_defaults`).
_RUNTIME_COMPUTES: dict[str, tuple[Any, ...]] = {
    "hidden_act": ("silu", "swish"),  # transformers' ACT2FN maps both to SiLU
}
# config.json keys that must be absent (or null): the runtime has nothing that computes what they describe
_MUST_BE_ABSENT: dict[str, str] = {
    "quantization_config": "quantized checkpoints",
}
# config.json list keys whose every entry must be one of these values
_EVERY_ENTRY: dict[str, tuple[Any, ...]] = {
    # transformers gives "sliding_attention" and "chunked_attention" layers a cache of the last positions only;
    # it reads the legacy "attention" as "full_attention"
    "layer_types": ("full_attention", "attention"),
}
# keys of a rope dict (rope_parameters / rope_scaling) and the values the runtime implements
ROPE_TYPES = ("default", "llama3")
ROPE_PARTIAL_ROTARY_FACTOR = 1.0

# transformers' config-class defaults for the keys the converter reads, shared by Qwen2Config and LlamaConfig
# (tests/test_strict.py checks every value against the installed transformers). None = derived: for
# num_key_value_heads the head count, for head_dim hidden_size // num_attention_heads.
_COMMON_DEFAULTS: dict[str, Any] = {
    "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32, "hidden_act": "silu",
    "rms_norm_eps": 1e-6, "tie_word_embeddings": False, "pad_token_id": None,
    "rope_theta": 10000.0,  # the class attribute default_theta
}


@dataclass(frozen=True)
class ArchSpec:
    hf_architecture: str  # config.json "architectures"[0]
    arch: str  # the manifest's "arch", and the config.json model_type transformers builds this architecture for
    hf_config_class: str  # the transformers config class whose defaults `hf_defaults` copies
    hf_defaults: dict[str, Any]  # value of every key the converter reads when config.json lacks it
    qkv_bias: bool  # whether q/k/v projections carry a bias (the manifest's attention_bias)
    runtime_computes: dict[str, tuple[Any, ...]]  # config key -> values the runtime implements
    must_be_absent: dict[str, str] = field(default_factory=lambda: dict(_MUST_BE_ABSENT))  # key -> what it means
    every_entry: dict[str, tuple[Any, ...]] = field(default_factory=lambda: dict(_EVERY_ENTRY))  # list key -> values
    derived_tensors: dict[str, str] = field(default_factory=lambda: dict(_DERIVED_TENSORS))
    sources: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(_DECODER_SOURCES))

    def source_names(self, canonical: str) -> tuple[str, ...]:
        """HF tensor names that make up one canonical tensor (e.g. blk.3.attn_qkv.weight -> q, k, v of layer 3)."""
        match = re.match(r"blk\.(\d+)\.(.*)", canonical)
        if match is None:
            return self.sources[canonical]
        template = "blk.{i}." + match.group(2)
        return tuple(name.format(i=match.group(1)) for name in self.sources[template])

    def derived_reason(self, name: str) -> str | None:
        """Why a source tensor that no canonical tensor uses may be skipped, or None when it may not."""
        return next((why for pattern, why in self.derived_tensors.items() if re.fullmatch(pattern, name)), None)


ARCHS: dict[str, ArchSpec] = {
    spec.hf_architecture: spec
    for spec in (
        # Qwen2Attention hard-codes bias=True on q/k/v and False on o_proj; Qwen2MLP has no biases; Qwen2Config
        # has no attention_bias / mlp_bias keys (a config.json that has them is ignored by transformers, so here).
        ArchSpec("Qwen2ForCausalLM", "qwen2", "Qwen2Config",
                 hf_defaults={**_COMMON_DEFAULTS, "vocab_size": 151936, "intermediate_size": 22016,
                              "num_key_value_heads": 32, "head_dim": None, "max_position_embeddings": 32768,
                              "bos_token_id": None, "eos_token_id": None, "use_sliding_window": False},
                 qkv_bias=True,
                 runtime_computes={**_RUNTIME_COMPUTES, "use_sliding_window": (False,)}),
        # LlamaAttention puts attention_bias on q, k, v AND o_proj; LlamaMLP puts mlp_bias on gate/up/down. The
        # runtime has a q/k/v bias only, so both must be false. LlamaConfig has no sliding_window or
        # attention_chunk_size, but keeps them from config.json, and transformers' cache then gives every layer a
        # window of that many positions (Qwen2Config drops sliding_window unless use_sliding_window is true).
        ArchSpec("LlamaForCausalLM", "llama", "LlamaConfig",
                 hf_defaults={**_COMMON_DEFAULTS, "vocab_size": 32000, "intermediate_size": 11008,
                              "num_key_value_heads": None, "head_dim": None, "max_position_embeddings": 2048,
                              "bos_token_id": 1, "eos_token_id": 2, "attention_bias": False, "mlp_bias": False},
                 qkv_bias=False,
                 runtime_computes={**_RUNTIME_COMPUTES, "attention_bias": (False,), "mlp_bias": (False,)},
                 must_be_absent={**_MUST_BE_ABSENT, "sliding_window": "sliding-window attention layers",
                                 "attention_chunk_size": "chunked attention layers"}),
    )
}


def supported() -> str:
    return ", ".join(ARCHS)
