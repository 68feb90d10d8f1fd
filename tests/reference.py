"""Numpy reference of the decoder forward pass (Qwen2 / Llama), over canonical .asw tensor names.

Same math as transformers' Qwen2/Llama in fp32 (RMSNorm, fused q|k|v, rotate-half RoPE with optional llama3
scaling, causal GQA attention, SwiGLU MLP, final norm and output matrix), computed in float64 except the RoPE
tables, which follow transformers' float32 computation. `kv_dtype` optionally rounds k and v to fp16 / bf16 the
way the native KV cache stores them.

    weights = {name: float32 array}  # e.g. u16_to_f32(packed u16 tensor, "bf16")
    logits = forward(weights, config, token_ids, kv_dtype="bf16")   # [n, vocab] float64, every position
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np


def tensor_shapes(config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Canonical tensor names -> shape, in data-region order."""
    hidden = int(config["hidden_size"])
    heads, kv_heads = int(config["num_attention_heads"]), int(config["num_key_value_heads"])
    head_dim = int(config.get("head_dim") or hidden // heads)
    ffn, vocab = int(config["intermediate_size"]), int(config["vocab_size"])
    qkv = (heads + 2 * kv_heads) * head_dim
    shapes: dict[str, tuple[int, ...]] = {"token_embd.weight": (vocab, hidden)}
    for i in range(int(config["num_hidden_layers"])):
        shapes[f"blk.{i}.attn_norm.weight"] = (hidden,)
        shapes[f"blk.{i}.attn_qkv.weight"] = (qkv, hidden)
        if config.get("attention_bias"):
            shapes[f"blk.{i}.attn_qkv.bias"] = (qkv,)
        shapes[f"blk.{i}.attn_output.weight"] = (hidden, heads * head_dim)
        shapes[f"blk.{i}.ffn_norm.weight"] = (hidden,)
        shapes[f"blk.{i}.ffn_gate_up.weight"] = (2 * ffn, hidden)
        shapes[f"blk.{i}.ffn_down.weight"] = (hidden, ffn)
    shapes["output_norm.weight"] = (hidden,)
    if not config.get("tie_word_embeddings"):
        shapes["output.weight"] = (vocab, hidden)
    return shapes


def f32_to_u16(a: np.ndarray, dtype: str) -> np.ndarray:
    """Round float values to fp16 / bf16 (round to nearest even), returned as their uint16 bit patterns."""
    a = np.asarray(a, dtype=np.float32)
    if dtype == "fp16":
        with np.errstate(over="ignore"):
            return a.astype(np.float16).view(np.uint16)
    if dtype == "bf16":
        bits = a.view(np.uint32).astype(np.uint64)
        rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
        nan = np.isnan(a)
        if nan.any():
            rounded[nan] = ((bits[nan] >> 16) | 0x40).astype(np.uint16)
        return rounded
    raise ValueError(f"dtype {dtype!r}")


def u16_to_f32(u: np.ndarray, dtype: str) -> np.ndarray:
    """uint16 bit patterns of fp16 / bf16 -> float32 (exact)."""
    u = np.asarray(u, dtype=np.uint16)
    if dtype == "fp16":
        return u.view(np.float16).astype(np.float32)
    if dtype == "bf16":
        return (u.astype(np.uint32) << 16).view(np.float32)
    raise ValueError(f"dtype {dtype!r}")


def round_to(a: np.ndarray, dtype: str | None) -> np.ndarray:
    """a rounded to fp16 / bf16 and back (identity for None)."""
    if dtype is None:
        return a
    return u16_to_f32(f32_to_u16(a, dtype), dtype).astype(a.dtype)


def rope_inv_freq(config: Mapping[str, Any]) -> np.ndarray:
    """[head_dim/2] float32 inverse frequencies, float32 ops in transformers' order (llama3 scaling included)."""
    hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
    dim = int(config.get("head_dim") or hidden // heads)
    base = np.float32(config.get("rope_theta", 10000.0))
    exponent = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
    inv_freq = (np.float32(1.0) / np.power(base, exponent)).astype(np.float32)
    scaling = config.get("rope_scaling")
    if not scaling or scaling.get("rope_type", scaling.get("type")) in (None, "default"):
        return inv_freq
    assert scaling.get("rope_type", scaling.get("type")) == "llama3", scaling
    f32 = np.float32
    factor = f32(scaling["factor"])
    low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
    old = float(scaling["original_max_position_embeddings"])
    low_wavelen, high_wavelen = f32(old / low), f32(old / high)
    wavelen = (f32(1.0) / inv_freq) * f32(2 * math.pi)
    inv_llama = np.where(wavelen > low_wavelen, inv_freq / factor, inv_freq).astype(np.float32)
    smooth = ((f32(1.0) / wavelen) * f32(old) - f32(low)) / f32(high - low)
    smoothed = (f32(1.0) - smooth) * inv_llama / factor + smooth * inv_llama
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return np.where(medium, smoothed, inv_llama).astype(np.float32)


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def forward(weights: Mapping[str, np.ndarray], config: Mapping[str, Any], tokens: Sequence[int],
            kv_dtype: str | None = None, matmul_inputs: str | None = None) -> np.ndarray:
    """Logits [n, vocab] (float64) at every position of `tokens` (positions 0..n-1, full causal attention);
    `kv_dtype`: keys and values rounded to it (the cache), `matmul_inputs`: every matmul's activations rounded to it
    (the native library's bf16 activations)."""
    W = {k: np.asarray(v, dtype=np.float64) for k, v in weights.items()}
    hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
    kv_heads = int(config["num_key_value_heads"])
    D = int(config.get("head_dim") or hidden // heads)
    ffn, eps = int(config["intermediate_size"]), float(config["rms_norm_eps"])
    group = heads // kv_heads
    tokens = np.asarray(tokens, dtype=np.int64)
    n = len(tokens)

    inv_freq = rope_inv_freq(config)
    angles = np.arange(n, dtype=np.float32)[:, None] * inv_freq[None, :]  # [n, D/2] float32
    cos = np.cos(angles).astype(np.float64)[:, None, :]  # [n, 1, D/2]
    sin = np.sin(angles).astype(np.float64)[:, None, :]

    def inputs(a: np.ndarray) -> np.ndarray:  # [n, k] activations entering a matmul
        return a if matmul_inputs is None else round_to(a.astype(np.float32), matmul_inputs).astype(np.float64)

    def rope(x: np.ndarray) -> np.ndarray:  # [n, heads, D]
        a, b = x[..., : D // 2], x[..., D // 2:]
        return np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1)

    x = W["token_embd.weight"][tokens]  # [n, hidden]
    mask = np.triu(np.full((n, n), -np.inf), k=1)  # [n, n] causal
    for i in range(int(config["num_hidden_layers"])):
        p = f"blk.{i}."
        h = rms_norm(x, W[p + "attn_norm.weight"], eps)
        qkv = inputs(h) @ W[p + "attn_qkv.weight"].T  # [n, (heads + 2 kv_heads) D]
        if p + "attn_qkv.bias" in W:
            qkv = qkv + W[p + "attn_qkv.bias"]
        q = qkv[:, : heads * D].reshape(n, heads, D)
        k = qkv[:, heads * D: (heads + kv_heads) * D].reshape(n, kv_heads, D)
        v = qkv[:, (heads + kv_heads) * D:].reshape(n, kv_heads, D)
        q, k = rope(q), rope(k)
        if kv_dtype is not None:
            k = round_to(k.astype(np.float32), kv_dtype).astype(np.float64)
            v = round_to(v.astype(np.float32), kv_dtype).astype(np.float64)
        k = np.repeat(k, group, axis=1)  # [n, heads, D]
        v = np.repeat(v, group, axis=1)
        scores = np.einsum("qhd,khd->hqk", q, k) / math.sqrt(D) + mask  # [heads, n, n]
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        scores /= scores.sum(axis=-1, keepdims=True)
        att = np.einsum("hqk,khd->qhd", scores, v).reshape(n, heads * D)
        x = x + inputs(att) @ W[p + "attn_output.weight"].T
        h = rms_norm(x, W[p + "ffn_norm.weight"], eps)
        gu = inputs(h) @ W[p + "ffn_gate_up.weight"].T  # [n, 2 ffn]
        gate, up = gu[:, :ffn], gu[:, ffn:]
        x = x + inputs(gate / (1.0 + np.exp(-gate)) * up) @ W[p + "ffn_down.weight"].T
    h = rms_norm(x, W["output_norm.weight"], eps)
    out = W["token_embd.weight"] if config.get("tie_word_embeddings") else W["output.weight"]
    return inputs(h) @ out.T
