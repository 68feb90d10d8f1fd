"""Tiny random HuggingFace checkpoints for tests, made with transformers (and a small trained BPE tokenizer)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = [
    "The quick brown fox jumps over the lazy dog. " * 3,
    "def add(a, b):\n    return a + b\n",
    "Ascend NPUs run large language models; the converter writes one file.",
    "你好，世界。今天天气很好。",
    "Numbers 0123456789 and symbols !@#$%^&*()[]{}",
]


@lru_cache(maxsize=None)
def tokenizer_json(vocab_size: int) -> str:
    """A byte-level BPE tokenizer.json with exactly `vocab_size` entries (special tokens first)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(CORPUS * 20, trainer)
    assert tokenizer.get_vocab_size() <= vocab_size, tokenizer.get_vocab_size()
    return tokenizer.to_str()


@dataclass
class Spec:
    arch: str = "qwen2"  # qwen2 | llama
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    head_dim: int | None = None
    ffn: int = 100
    vocab: int = 320
    tied: bool = False
    rope_scaling: dict[str, Any] | None = None
    rope_theta: float = 10000.0
    max_positions: int = 512
    torch_dtype: str = "float32"  # how the checkpoint stores weights: float32 | bfloat16 | float16
    shard_size: str | None = None  # e.g. "20KB" for a sharded checkpoint with an index
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def widen_init(model: Any) -> None:
    """transformers' random init is tiny (std 0.02): widen it so logits are informative and norms non-trivial
    (norm weights ~1 ± 0.1, biases ~0.2, matrices ~1/sqrt(fan-in))."""
    import torch

    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(1.0 + 0.1 * torch.randn_like(param))
            elif name.endswith("bias"):
                param.copy_(0.2 * torch.randn_like(param))
            else:
                param.copy_(torch.randn_like(param) / param.shape[-1] ** 0.5)


def make_checkpoint(directory: Path, spec: Spec) -> Path:
    import torch
    import transformers

    torch.manual_seed(spec.seed)
    common = dict(
        hidden_size=spec.hidden, intermediate_size=spec.ffn, num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads, num_key_value_heads=spec.kv_heads, vocab_size=spec.vocab,
        max_position_embeddings=spec.max_positions, tie_word_embeddings=spec.tied, rms_norm_eps=1e-5,
        bos_token_id=1, eos_token_id=2, **spec.extra,
    )
    if spec.head_dim is not None:
        common["head_dim"] = spec.head_dim
    rope = {"rope_type": "default", "rope_theta": spec.rope_theta}
    if spec.rope_scaling is not None:
        rope = {**spec.rope_scaling, "rope_theta": spec.rope_theta}
    common["rope_parameters"] = rope
    if spec.arch == "qwen2":
        model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**common))
    else:
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**common))
    widen_init(model)
    model = model.to(getattr(torch, spec.torch_dtype))
    kwargs = {"max_shard_size": spec.shard_size} if spec.shard_size else {}
    model.save_pretrained(directory, **kwargs)
    (directory / "tokenizer.json").write_text(tokenizer_json(spec.vocab), encoding="utf-8")
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "unk_token": None,
        "chat_template": CHAT_TEMPLATE, "add_bos_token": False,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }), encoding="utf-8")
    (directory / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": [2]}),
                                                      encoding="utf-8")
    return directory


def convert_checkpoint(directory: Path, out: Path) -> Path:
    """`out`: the .asw of the checkpoint folder `directory` (4 KiB data alignment keeps test files small)."""
    from ascend_super.convert.pipeline import convert
    from ascend_super.convert.sources.hub import open_source

    with open_source(str(directory)) as source:
        convert(source, out, data_alignment=4096)
    return out
