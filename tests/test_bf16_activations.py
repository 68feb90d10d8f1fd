"""bf16 activations (asw_open_options.activations, `--activations bf16`): every matmul of the cpu backend takes its
input rounded to bf16, on every path (prefill on VDPBF16PS where the CPU has AVX512_BF16, the f32 outer-product
kernel elsewhere, the decode GEMV), against the numpy reference that rounds the same inputs. Batched steps with bf16
activations are checked against lone steps in tests/test_seam.py.

Rounding to bf16 turns the last-bit differences of f32 sums (any two summation orders, or numpy's float64) into a
whole bf16 step now and then, where a value lies next to a rounding boundary; the next layer carries that into the
keys and values of its position and attention on into every later one. Over two layers and 80 positions the logits
of two correct implementations then differ by up to ~4e-3 of the largest logit: as much as the rounding changes
them. Over one layer and a dozen positions no value has landed on a boundary here, and they agree to ~1e-7. So the
exact checks run one layer and 12 positions (every matmul, the prefill and decode paths), where f32 activations miss
by ~100x; longer and deeper runs are checked against the drift bound. native/check/kernel_sets.c checks the
VDPBF16PS kernel on its own against exact sums.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from ascend_super.runtime import native
from ascend_super.runtime.native import NativeError, NativeModel

from reference import forward
from test_native import CONFIGS, build, kernel_sets

EXACT = 1e-5  # of the largest |logit|: one layer, a dozen positions (measured: ~1e-7)
DRIFT = 6e-3  # of the largest |logit|: any run (measured: <= 4e-3)
ONE_LAYER = {name: dict(config, num_hidden_layers=1) for name, config in CONFIGS.items()}
# the prefill kernels a bf16-activation run may take: each kernel set on its f32 kernels, and VDPBF16PS where the CPU
# has AVX512_BF16 (ASW_VDPBF16PS forces it on or off; by default only AMD takes it)
PATHS = {name: (name, "0") for name in kernel_sets()}
if native.cpu_features() & 8:
    PATHS["vdpbf16ps"] = ("avx512", "1")


@pytest.fixture(params=sorted(PATHS))
def path(request, monkeypatch) -> str:
    kernels, vdpbf16ps = PATHS[request.param]
    monkeypatch.setenv("ASW_KERNELS", kernels)
    monkeypatch.setenv("ASW_VDPBF16PS", vdpbf16ps)
    return request.param


def error(got: np.ndarray, want: np.ndarray) -> float:
    """largest |got - want| relative to the largest |want|"""
    return float(np.abs(got.astype(np.float64) - want).max() / np.abs(want).max())


def run(config: dict, tokens: list[int], prompt: int, activations: str = "bf16", seed: int = 1) -> np.ndarray:
    """logits [len(tokens), vocab]: a prefill of tokens[:prompt], then one decode step per token"""
    data, tensors, _ = build(config, "bf16", seed=seed)
    with NativeModel(data, config, "bf16", "nd", tensors, activations=activations) as model, \
            model.session(max_len=len(tokens), threads=2) as s:
        if activations == "bf16":
            assert model.describe() == f"cpu {native.kernel_name()} bf16 activations" + \
                (" (vdpbf16ps)" if os.environ.get("ASW_VDPBF16PS") == "1" else "")
        logits, _ = s.prefill(tokens[:prompt], logits="all")
        return np.concatenate([logits] + [s.decode(t)[0][None] for t in tokens[prompt:]])


def reference(config: dict, tokens: list[int], matmul_inputs: str | None = "bf16", seed: int = 1) -> np.ndarray:
    return forward(build(config, "bf16", seed=seed)[2], config, tokens, kv_dtype="bf16", matmul_inputs=matmul_inputs)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_one_layer_matches_the_rounding_reference(path, name):
    config = ONE_LAYER[name]
    tokens = np.random.default_rng(2).integers(0, config["vocab_size"], size=12).tolist()
    assert error(run(config, tokens, prompt=9), reference(config, tokens)) <= EXACT


def test_f32_activations_would_fail_that():
    config = ONE_LAYER["gqa7_bias_tied"]
    tokens = np.random.default_rng(2).integers(0, config["vocab_size"], size=12).tolist()
    rounded, plain = reference(config, tokens), reference(config, tokens, matmul_inputs=None)
    assert error(plain, rounded) > 100 * EXACT
    assert error(run(config, tokens, prompt=9, activations="f32"), plain) <= EXACT  # the default is unchanged


def test_prefill_equals_step_by_step_decode(path):
    config = ONE_LAYER["llama3_d128"]
    # 20 tokens: the prefill takes the outer-product path (>= 8 tokens), decode the GEMV
    tokens = np.random.default_rng(6).integers(0, config["vocab_size"], size=20).tolist()
    whole = run(config, tokens, prompt=len(tokens), seed=5)
    stepped = run(config, tokens, prompt=1, seed=5)
    assert error(stepped, whole) <= EXACT


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_long_and_deep_runs_stay_within_the_drift(path, name):
    config = CONFIGS[name]
    tokens = np.random.default_rng(2).integers(0, config["vocab_size"], size=84).tolist()
    assert error(run(config, tokens, prompt=76), reference(config, tokens)) <= DRIFT  # chunks of 64 and 12


def test_bf16_activations_need_a_bf16_file():
    config = CONFIGS["mha"]
    data, tensors, _ = build(config, "fp16", seed=1)
    with pytest.raises(NativeError, match="bf16 activations need a bf16 file; this one's weights are fp16"):
        NativeModel(data, config, "fp16", "nd", tensors, activations="bf16")
    with pytest.raises(NativeError, match="activations must be one of f32, bf16, got 'fp8'"):
        NativeModel(data, config, "fp16", "nd", tensors, activations="fp8")
