"""The native library (native/, via runtime/native.py) against the numpy reference in tests/reference.py.

Random weights are built here in numpy and packed like a .asw data region (512-byte aligned u16 tensors), so
these tests need no converter and no transformers. Every kernel set this machine can run is tested (ASW_KERNELS).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ascend_super.runtime import native
from ascend_super.runtime.native import NativeError, NativeModel

from reference import f32_to_u16, forward, tensor_shapes, u16_to_f32

ALIGN = 512


def kernel_sets() -> list[str]:
    sets = ["portable"]
    features = native.cpu_features()
    if features & 1:
        sets.append("avx2")
    if features & 2:
        sets.append("avx512")
    if features & 4:
        sets.append("neon")
    return sets


def make_config(**over) -> dict:
    config = {
        "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "head_dim": 16, "intermediate_size": 96, "vocab_size": 211, "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0, "rope_scaling": None, "max_position_embeddings": 4096,
        "tie_word_embeddings": False, "attention_bias": False,
    }
    config.update(over)
    return config


CONFIGS = {
    # Qwen2-like: GQA 7:1, head_dim 64, ffn not a multiple of 16, q/k/v bias, tied embeddings
    "gqa7_bias_tied": make_config(hidden_size=96, num_attention_heads=7, num_key_value_heads=1, head_dim=64,
                                  intermediate_size=100, vocab_size=257, attention_bias=True,
                                  tie_word_embeddings=True, rope_theta=1000000.0),
    # Llama-3-like: head_dim 128, llama3 rope scaling with all three bands, untied, odd sizes
    "llama3_d128": make_config(hidden_size=72, num_attention_heads=2, num_key_value_heads=1, head_dim=128,
                               intermediate_size=203, vocab_size=300, rope_theta=500000.0,
                               rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                             "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
    # plain multi-head attention, small head_dim, bias, untied
    "mha": make_config(hidden_size=48, num_attention_heads=3, num_key_value_heads=3, head_dim=16,
                       intermediate_size=64, attention_bias=True),
}


def build(config: dict, dtype: str, seed: int = 0):
    """(data uint8 region, tensor table, float32 weights of the rounded values)."""
    rng = np.random.default_rng(seed)
    shapes = tensor_shapes(config)
    packed, weights = {}, {}
    for name, shape in shapes.items():
        if name.endswith("norm.weight"):
            value = 1.0 + 0.1 * rng.standard_normal(shape)
        elif name.endswith(".bias"):
            value = 0.1 * rng.standard_normal(shape)
        elif name == "token_embd.weight":
            value = rng.standard_normal(shape)
        else:
            value = rng.standard_normal(shape) / np.sqrt(shape[1])
        packed[name] = f32_to_u16(value.astype(np.float32), dtype)
        weights[name] = u16_to_f32(packed[name], dtype)
    tensors, offset = [], 0
    for name, arr in packed.items():
        offset = -(-offset // ALIGN) * ALIGN
        tensors.append((name, offset, arr.nbytes, "nd", shapes[name]))
        offset += arr.nbytes
    data = np.zeros(offset, dtype=np.uint8)
    for (name, off, nbytes, _, _) in tensors:
        data[off:off + nbytes] = packed[name].reshape(-1).view(np.uint8)
    return data, tensors, weights


def assert_close(got: np.ndarray, want: np.ndarray, dtype: str, what: str = "") -> None:
    tol = 5e-4 * float(np.abs(want).max()) + 1e-5  # measured: <= 1e-4 (k/v rounding ties)
    err = float(np.abs(got.astype(np.float64) - want).max())
    assert err <= tol, f"{what}: max abs error {err:.3g} > {tol:.3g}"
    assert np.array_equal(np.argmax(got, axis=-1), np.argmax(want, axis=-1)) or err < tol, what


@pytest.fixture(params=kernel_sets())
def kernels(request, monkeypatch) -> str:
    monkeypatch.setenv("ASW_KERNELS", request.param)
    assert native.kernel_name() == request.param
    return request.param


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_prefill_and_decode_match_reference(kernels, name, dtype):
    config = CONFIGS[name]
    data, tensors, weights = build(config, dtype, seed=1)
    rng = np.random.default_rng(2)
    tokens = rng.integers(0, config["vocab_size"], size=15).tolist()
    prompt, steps = tokens[:11], tokens[11:]
    want = forward(weights, config, tokens, kv_dtype=dtype)  # [15, vocab]
    with NativeModel(data, config, dtype, "nd", tensors) as model, model.session(max_len=32, threads=2) as s:
        logits, top = s.prefill(prompt, logits="all")
        assert logits.shape == (len(prompt), config["vocab_size"])
        assert_close(logits, want[: len(prompt)], dtype, "prefill")
        assert top == int(np.argmax(logits[-1]))
        for i, token in enumerate(steps):
            step, top = s.decode(token)
            assert step.shape == (config["vocab_size"],)
            assert_close(step, want[len(prompt) + i], dtype, f"decode step {i}")
            assert top == int(np.argmax(step))
        assert s.pos == len(tokens)


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_long_prompt_spans_chunks(kernels, dtype):
    config = CONFIGS["gqa7_bias_tied"]
    data, tensors, weights = build(config, dtype, seed=3)
    tokens = np.random.default_rng(4).integers(0, config["vocab_size"], size=153).tolist()
    want = forward(weights, config, tokens, kv_dtype=dtype)
    with NativeModel(data, config, dtype, "nd", tensors) as model, model.session(max_len=160) as s:
        logits, _ = s.prefill(tokens[:150], logits="all")  # 150 positions: chunks of 64 + 64 + 22
        assert_close(logits, want[:150], dtype, "long prefill")
        for i in range(150, 153):
            step, _ = s.decode(tokens[i])
            assert_close(step, want[i], dtype, f"decode at position {i}")
        # the same sequence in uneven pieces continues the cache correctly
        s.reset()
        assert s.pos == 0
        parts = [s.prefill(tokens[:70], logits="all")[0], s.prefill(tokens[70:71], logits="all")[0],
                 s.prefill(tokens[71:150], logits="all")[0]]
        np.testing.assert_allclose(np.concatenate(parts), logits, rtol=0, atol=1e-4 * np.abs(logits).max())


@pytest.mark.parametrize("name", ["gqa7_bias_tied", "llama3_d128", "mha"])
def test_decode_over_many_blocks_of_keys(kernels, name):
    """Decode attention splits a row's keys into at most 8 blocks of at least 64 (softmax partials merged after):
    past 8 x 64 keys the blocks grow and stop being whole multiples of 16; decode there still matches the reference."""
    config, dtype = CONFIGS[name], "fp16"
    data, tensors, weights = build(config, dtype, seed=11)
    tokens = np.random.default_rng(12).integers(0, config["vocab_size"], size=603).tolist()
    want = forward(weights, config, tokens, kv_dtype=dtype)
    with NativeModel(data, config, dtype, "nd", tensors) as model, model.session(max_len=603) as s:
        s.prefill(tokens[:600], logits="none")
        for i in range(600, 603):  # 601..603 keys: blocks of 75-76
            step, _ = s.decode(tokens[i])
            assert_close(step, want[i], dtype, f"{name} decode at position {i}")


def test_llama3_scaling_is_applied():
    """The llama3 case above would fail without the scaling: the reference without it is far off."""
    config, dtype = CONFIGS["llama3_d128"], "fp16"
    data, tensors, weights = build(config, dtype, seed=1)
    tokens = np.random.default_rng(2).integers(0, config["vocab_size"], size=15).tolist()
    unscaled = forward(weights, dict(config, rope_scaling=None), tokens, kv_dtype=dtype)
    with NativeModel(data, config, dtype, "nd", tensors) as model, model.session(max_len=16) as s:
        logits, _ = s.prefill(tokens, logits="all")
    assert np.abs(logits - unscaled).max() > 20 * 5e-4 * np.abs(unscaled).max()


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_decode_with_cache_equals_recompute(kernels, name, dtype):
    """Prefill of a prompt longer than two chunks and than one block of keys (the prefill attention's work items,
    its online softmax across key blocks, the outer-product matmuls) gives, at every position, the logits of
    feeding the same tokens one decode step at a time (GEMV matmuls, one query at a time attention): GQA 7:1 with
    head_dim 64, GQA 2:1 with head_dim 128, and plain multi-head attention."""
    config = CONFIGS[name]
    data, tensors, _ = build(config, dtype, seed=5)
    tokens = np.random.default_rng(6).integers(0, config["vocab_size"], size=140).tolist()
    with NativeModel(data, config, dtype, "nd", tensors) as model, model.session(max_len=140) as s:
        first, _ = s.prefill(tokens[:1], logits="all")
        stepped = [first[0]] + [s.decode(t)[0] for t in tokens[1:]]
        s.reset()
        whole, _ = s.prefill(tokens, logits="all")
    np.testing.assert_allclose(np.stack(stepped), whole, rtol=0, atol=1e-4 * np.abs(whole).max())


def test_threads_give_identical_results():
    """Bit for bit, whatever the threads: prefill, and a decode step whose attention goes in three blocks of keys
    that the threads claim in turn."""
    config, dtype = CONFIGS["gqa7_bias_tied"], "fp16"
    data, tensors, _ = build(config, dtype, seed=7)
    tokens = np.random.default_rng(8).integers(0, config["vocab_size"], size=140).tolist()
    results = []
    with NativeModel(data, config, dtype, "nd", tensors) as model:
        for threads in (1, 2, 3, 0):
            with model.session(max_len=148, threads=threads) as s:
                logits, _ = s.prefill(tokens, logits="all")
                step, _ = s.decode(tokens[0])
                results.append((logits, step))
    for logits, step in results[1:]:
        assert np.array_equal(logits, results[0][0]) and np.array_equal(step, results[0][1])


def test_logits_modes_and_argmax(kernels):
    config, dtype = CONFIGS["mha"], "fp16"
    data, tensors, _ = build(config, dtype, seed=9)
    tokens = [5, 17, 3, 99, 0, 210]
    with NativeModel(data, config, dtype, "nd", tensors) as model:
        with model.session(max_len=16) as s:
            all_logits, top_all = s.prefill(tokens, logits="all")
            s.reset()
            last, top_last = s.prefill(tokens, logits="last")
            s.reset()
            nothing, top_none = s.prefill(tokens, logits="none")
            assert nothing is None
            # "last" runs the output matmul as one token's GEMV, "all" as a matmul over every token: the same sums in
            # another order, so equal to float rounding only (bit for bit here with AVX-512 and 6 tokens, by chance)
            np.testing.assert_allclose(last, all_logits[-1], rtol=1e-5, atol=1e-5)
            assert top_all == top_last == top_none == int(np.argmax(last))
            none_step, top = s.decode(7, logits="none")
            assert none_step is None and 0 <= top < config["vocab_size"]
            with pytest.raises(NativeError, match="logits"):
                s.decode(7, logits="some")


# ------------------------------------------------------------------------------------------------- errors


def open_model(config, dtype, tensors, data, layout="nd"):
    return NativeModel(data, config, dtype, layout, tensors)


@pytest.fixture(scope="module")
def small():
    config = CONFIGS["mha"]
    data, tensors, _ = build(config, "fp16", seed=11)
    return config, data, tensors


def test_missing_tensor(small):
    config, data, tensors = small
    with pytest.raises(NativeError, match=r"missing tensor 'blk\.1\.ffn_down\.weight'"):
        open_model(config, "fp16", [t for t in tensors if t[0] != "blk.1.ffn_down.weight"], data)


def test_tensor_outside_region(small):
    config, data, tensors = small
    bad = [(n, o + (len(data) if n == "output.weight" else 0), b, *rest) for n, o, b, *rest in tensors]
    with pytest.raises(NativeError, match=r"'output\.weight'.*outside the data region"):
        open_model(config, "fp16", bad, data)
    huge = [(n, (2**64 - 2) if n == "token_embd.weight" else o, b, *rest) for n, o, b, *rest in tensors]
    with pytest.raises(NativeError, match=r"'token_embd\.weight'.*outside the data region"):
        open_model(config, "fp16", huge, data)


def test_wrong_nbytes(small):
    config, data, tensors = small
    bad = [(n, o, b - 2 if n == "blk.0.attn_qkv.weight" else b, *rest) for n, o, b, *rest in tensors]
    with pytest.raises(NativeError, match=r"'blk\.0\.attn_qkv\.weight' has \d+ bytes, expected"):
        open_model(config, "fp16", bad, data)


def test_unexpected_and_duplicate_tensors(small):
    config, data, tensors = small
    with pytest.raises(NativeError, match=r"unexpected tensor 'blk\.9\.attn_norm\.weight'"):
        open_model(config, "fp16", tensors + [("blk.9.attn_norm.weight", 0, 96, "nd", (48,))], data)
    with pytest.raises(NativeError, match=r"'output_norm\.weight' appears twice"):
        open_model(config, "fp16", tensors + [t for t in tensors if t[0] == "output_norm.weight"], data)
    tied = dict(config, tie_word_embeddings=True)
    with pytest.raises(NativeError, match=r"unexpected tensor 'output\.weight'"):
        open_model(tied, "fp16", tensors, data)


def test_bad_config(small):
    config, data, tensors = small
    with pytest.raises(NativeError, match="n_heads 3 is not a multiple of n_kv_heads 2"):
        open_model(dict(config, num_key_value_heads=2), "fp16", tensors, data)
    with pytest.raises(NativeError, match="rope_scaling"):
        open_model(dict(config, rope_scaling={"rope_type": "yarn", "factor": 2.0}), "fp16", tensors, data)
    with pytest.raises(NativeError, match="unknown backend 'npu'"):
        NativeModel(data, config, "fp16", "nd", tensors, backend="npu")


def test_bad_kernel_env(small, monkeypatch):
    config, data, tensors = small
    monkeypatch.setenv("ASW_KERNELS", "sse9")
    with pytest.raises(NativeError, match="ASW_KERNELS"):
        native.kernel_name()
    with pytest.raises(NativeError, match="ASW_KERNELS"):
        open_model(config, "fp16", tensors, data)


def test_context_overflow_and_bad_tokens(small):
    config, data, tensors = small
    with open_model(config, "fp16", tensors, data) as model, model.session(max_len=8) as s:
        s.prefill([1, 2, 3, 4, 5])
        with pytest.raises(NativeError, match="context full: 5 positions in the cache \\+ 4 new > max_len 8"):
            s.prefill([1, 2, 3, 4])
        assert s.pos == 5
        with pytest.raises(NativeError, match="token id 211 at index 1 is outside the vocabulary"):
            s.prefill([1, 211])
        with pytest.raises(NativeError, match="token id -1"):
            s.decode(-1)
        with pytest.raises(NativeError, match="32-bit"):
            s.decode(2**40)
        with pytest.raises(NativeError, match="at least one token"):
            s.prefill([])
        assert s.pos == 5
        s.prefill([1, 2, 3])
        with pytest.raises(NativeError, match="context full"):
            s.decode(1)
        s.reset()
        s.decode(1)
        assert s.pos == 1
    with pytest.raises(NativeError, match="closed"):
        s.decode(1)


def test_every_kernel_set_matches_portable_on_aarch64_too() -> None:
    """`make check-aarch64`: the library builds for aarch64 with -Werror and its NEON kernels give the portable
    kernels' logits (run under qemu). The cross toolchain comes from Debian (.ci/run installs it)."""
    import shutil
    import subprocess

    if not (shutil.which("aarch64-linux-gnu-gcc") and shutil.which("qemu-aarch64")):
        pytest.skip("needs gcc-aarch64-linux-gnu, qemu-user and libc6-arm64-cross (apt-get install ...)")
    repo = Path(__file__).resolve().parent.parent
    result = subprocess.run(["make", "-s", "check-aarch64"], cwd=repo, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "neon   fp16" in result.stdout and "neon   bf16" in result.stdout and ", 0 failures" in result.stdout


def test_pool_worker_steps_off_the_callers_core(tmp_path: Path) -> None:
    """native/check/pool_placement.c: a pool worker found on its caller's core at the start of a job moves to
    another core it may use (a KVM guest wakes it there after an idle spell, and a decode step then ran ~1.6x
    slower), and takes its own affinity back when it sleeps. Skips itself on fewer than 2 usable cores."""
    import os
    import shutil
    import subprocess

    cc = os.environ.get("CC") or shutil.which("gcc") or "cc"  # the library itself needs one to build
    native_dir = Path(__file__).resolve().parent.parent / "native"
    exe = tmp_path / "pool_placement"
    subprocess.run([cc, "-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-pthread", f"-I{native_dir / 'include'}",
                    str(native_dir / "check" / "pool_placement.c"), *map(str, sorted((native_dir / "src").glob("*.c"))),
                    "-o", str(exe), "-lm", "-ldl"], check=True, timeout=300)
    result = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    if "skipped" in result.stdout:  # not Linux, fewer than 2 usable cores, or affinity cannot be set here
        pytest.skip(result.stdout.strip())
    assert "passed" in result.stdout, result.stdout
