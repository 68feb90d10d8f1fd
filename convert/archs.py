"""The one architecture table: which HF architectures we convert and how their tensors map to canonical ones.

Every difference between architectures is a field of `ArchSpec`; nothing else in the converter branches on the
architecture name. Adding Qwen3 later means adding a row (plus its q/k norm tensors to the format).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

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


@dataclass(frozen=True)
class ArchSpec:
    hf_architecture: str  # config.json "architectures"[0]
    arch: str  # the manifest's "arch"
    attention_bias_default: bool  # when config.json has no "attention_bias"
    tie_embeddings_default: bool  # when config.json has no "tie_word_embeddings"
    rope_theta_default: float  # when config.json names no rope_theta
    sources: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(_DECODER_SOURCES))

    def source_names(self, canonical: str) -> tuple[str, ...]:
        """HF tensor names that make up one canonical tensor (e.g. blk.3.attn_qkv.weight -> q, k, v of layer 3)."""
        match = re.match(r"blk\.(\d+)\.(.*)", canonical)
        if match is None:
            return self.sources[canonical]
        template = "blk.{i}." + match.group(2)
        return tuple(name.format(i=match.group(1)) for name in self.sources[template])


ARCHS: dict[str, ArchSpec] = {
    spec.hf_architecture: spec
    for spec in (
        ArchSpec("Qwen2ForCausalLM", "qwen2", attention_bias_default=True, tie_embeddings_default=False,
                 rope_theta_default=10000.0),
        ArchSpec("LlamaForCausalLM", "llama", attention_bias_default=False, tie_embeddings_default=False,
                 rope_theta_default=10000.0),
    )
}


def supported() -> str:
    return ", ".join(ARCHS)
