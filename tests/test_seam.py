"""The native seam (asw.h / backend.h): backend registry, per-tensor layout and shape, the pipelined greedy decode
that keeps the argmax inside the backend, top-k output for sampling, numeric failures reported instead of
turned into tokens, and sessions that keep their model alive.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import subprocess
from pathlib import Path

import numpy as np
import pytest

from ascend_super.runtime import native
from ascend_super.runtime.native import MAX_PENDING, NativeError, NativeModel

from reference import f32_to_u16
from test_native import CONFIGS, build, kernel_sets

CONFIG = CONFIGS["gqa7_bias_tied"]


@pytest.fixture(scope="module")
def packed():
    return build(CONFIG, "fp16", seed=5)


def open_model(data, tensors, config=CONFIG, dtype="fp16", layout="nd", **kw) -> NativeModel:
    return NativeModel(data, config, dtype, layout, tensors, **kw)


def greedy_by_steps(model: NativeModel, prompt: list[int], steps: int) -> list[int]:
    """Reference: the host feeds each argmax back with decode()."""
    with model.session(max_len=64) as s:
        _, token = s.prefill(prompt, logits="none")
        out = [token]
        for _ in range(steps):
            _, token = s.decode(token, logits="none")
            out.append(token)
        return out


def test_cpu_describes_itself_and_computes_steps_synchronously(packed):
    data, tensors, _ = packed
    with open_model(data, tensors) as model:
        assert model.describe() == f"cpu {native.kernel_name()}"
        assert model.lookahead == 0
        assert model.prefill_block == 64


def test_pipelined_decode_matches_host_fed_decode(packed):
    data, tensors, _ = packed
    prompt = [3, 17, 42, 9]
    with open_model(data, tensors) as model:
        want = greedy_by_steps(model, prompt, 10)
        with model.session(max_len=64) as s:
            _, first = s.prefill(prompt, logits="none")
            got = [first]
            s.enqueue()
            for _ in range(9):
                s.enqueue()  # step t+1 queued before token t is read
                got.append(s.read())
            got.append(s.read())
            assert got == want
            assert s.pos == len(prompt) + 10


def test_discard_gives_positions_back_and_needs_a_new_forward(packed):
    data, tensors, _ = packed
    with open_model(data, tensors) as model, model.session(max_len=64) as s:
        _, token = s.prefill([1, 2, 3], logits="none")
        for _ in range(MAX_PENDING):
            s.enqueue()
        with pytest.raises(NativeError, match=f"{MAX_PENDING} steps already queued"):
            s.enqueue()
        with pytest.raises(NativeError, match="queued decode steps must be read or discarded"):
            s.decode(token)
        first = s.read()
        s.discard()
        assert s.pos == 3 + 1
        with pytest.raises(NativeError, match="no decode step is queued"):
            s.read()
        with pytest.raises(NativeError, match="no token to continue from"):
            s.enqueue()  # the kept argmax belonged to a dropped step
        _, again = s.decode(first, logits="none")  # the host continues from what it read
        assert s.pos == 5 and 0 <= again < CONFIG["vocab_size"]


def test_enqueue_before_any_forward_and_after_reset_is_refused(packed):
    data, tensors, _ = packed
    with open_model(data, tensors) as model, model.session(max_len=8) as s:
        with pytest.raises(NativeError, match="no token to continue from"):
            s.enqueue()
        s.prefill([1, 2])
        s.enqueue()
        s.reset()
        assert s.pos == 0
        with pytest.raises(NativeError, match="no token to continue from"):
            s.enqueue()


def test_enqueue_stops_at_the_context(packed):
    data, tensors, _ = packed
    with open_model(data, tensors) as model, model.session(max_len=4) as s:
        s.prefill([1, 2, 3])
        s.enqueue()
        with pytest.raises(NativeError, match="context full: 4 positions in the cache \\+ 1 new > max_len 4"):
            s.enqueue()


@pytest.mark.parametrize("k", [1, 5, CONFIG["vocab_size"]])
def test_topk_is_the_largest_logits_in_order(packed, k):
    data, tensors, _ = packed
    with open_model(data, tensors) as model:
        with model.session(max_len=16) as s:
            logits, _ = s.prefill([5, 6, 7], logits="last")
        with model.session(max_len=16) as s:
            values, ids = s.forward_topk([5, 6, 7], k)
    order = np.argsort(-logits, kind="stable")[:k]
    np.testing.assert_array_equal(ids, order)
    np.testing.assert_array_equal(values, logits[order])
    with pytest.raises(NativeError, match="top-k needs 1 <= k"):
        open_model(data, tensors).session(4).forward_topk([1], 0)


def _with_tensor(data, tensors, name, values):
    """A copy of the region with tensor `name` replaced by `values` (fp16)."""
    data = data.copy()
    entry = next(t for t in tensors if t[0] == name)
    u16 = f32_to_u16(np.asarray(values, dtype=np.float32).reshape(entry[4]), "fp16")
    data[entry[1]:entry[1] + entry[2]] = u16.reshape(-1).view(np.uint8)
    return data


def test_nan_logits_are_an_error_not_token_zero(packed):
    data, tensors, _ = packed
    bad = _with_tensor(data, tensors, "output_norm.weight", np.full(CONFIG["hidden_size"], np.nan))
    with open_model(bad, tensors) as model, model.session(max_len=8) as s:
        with pytest.raises(NativeError, match="logits of position 1 are NaN"):
            s.prefill([1, 2], logits="none")
        with pytest.raises(NativeError, match="NaN"):
            s.forward_topk([1], 3)


def test_fp16_kv_overflow_is_reported(packed):
    data, tensors, _ = packed
    qkv_rows = (CONFIG["num_attention_heads"] + 2 * CONFIG["num_key_value_heads"]) * CONFIG["head_dim"]
    huge = np.full((qkv_rows, CONFIG["hidden_size"]), 60000.0)
    bad = _with_tensor(data, tensors, "blk.0.attn_qkv.weight", huge)
    with open_model(bad, tensors) as model, model.session(max_len=8) as s:
        with pytest.raises(NativeError, match=r"layer 0 position 0: the key .* does not fit the fp16 KV cache"):
            s.prefill([1, 2])


def test_bf16_kv_keeps_large_values(packed):
    data, tensors, weights = build(CONFIG, "bf16", seed=5)
    with open_model(data, tensors, dtype="bf16") as model, model.session(max_len=8) as s:
        s.prefill([1, 2])  # the bf16 range is the f32 range: nothing to refuse


def test_session_keeps_its_model_alive(packed):
    data, tensors, _ = packed
    model = open_model(data, tensors)
    session = model.session(max_len=16)
    want = greedy_by_steps(model, [4, 5], 3)
    lib = native._load()
    lib.asw_model_free(model._handle)  # the caller's reference goes first ...
    model._handle = None
    _, token = session.prefill([4, 5], logits="none")  # ... the session still works on the live model
    got = [token]
    for _ in range(3):
        _, token = session.decode(token, logits="none")
        got.append(token)
    assert got == want
    session.close()  # the last reference frees the model


def test_shapes_and_layouts_reach_the_native_checks(packed):
    data, tensors, _ = packed
    wrong = [(n, o, b, lay, (shape[1], shape[0]) if n == "blk.0.ffn_down.weight" else shape)
             for n, o, b, lay, shape in tensors]
    with pytest.raises(NativeError, match=r"'blk\.0\.ffn_down\.weight' has shape \[100, 96\], the config implies "
                                          r"\[96, 100\]"):
        open_model(data, wrong)
    nz_in_nd = [(n, o, b, "nz" if n == "blk.0.ffn_down.weight" else lay, s) for n, o, b, lay, s in tensors]
    with pytest.raises(NativeError, match=r"'blk\.0\.ffn_down\.weight' has layout 1; in an nd file it must be nd"):
        open_model(data, nz_in_nd)


def nz_table(config):
    """A zero region laid out like an nz file: matrices padded to 16 x 16 blocks."""
    from reference import tensor_shapes

    nz_suffixes = (".attn_qkv.weight", ".attn_output.weight", ".ffn_gate_up.weight", ".ffn_down.weight")
    tensors, offset = [], 0
    for name, shape in tensor_shapes(config).items():
        layout = "nz" if name.endswith(nz_suffixes) or name == "output.weight" else "nd"
        count = int(np.prod(shape)) if layout == "nd" else (-(-shape[0] // 16) * 16) * (-(-shape[1] // 16) * 16)
        offset = -(-offset // 512) * 512
        tensors.append((name, offset, 2 * count, layout, shape))
        offset += 2 * count
    return np.zeros(offset, dtype=np.uint8), tensors


def test_cpu_refuses_nz_files_in_its_own_words():
    data, tensors = nz_table(CONFIG)
    with pytest.raises(NativeError, match="FRACTAL_NZ layout is for the aclnn backend"):
        open_model(data, tensors, layout="nz")


def test_aclnn_plugin_missing_is_one_clear_error(packed, monkeypatch, tmp_path):
    data, tensors, _ = packed
    monkeypatch.setenv("ASW_ACLNN_LIB", str(tmp_path / "libasw_aclnn.so"))
    with pytest.raises(NativeError, match=r"backend 'aclnn': cannot load .*libasw_aclnn\.so"):
        open_model(data, tensors, backend="aclnn")


def test_plugin_without_entry_point_is_refused(packed, monkeypatch, tmp_path):
    data, tensors, _ = packed
    # any shared library without asw_backend_entry will do: the C library itself
    libc = ctypes.util.find_library("c")
    assert libc

    monkeypatch.setenv("ASW_ACLNN_LIB", libc)
    with pytest.raises(NativeError, match="does not export asw_backend_entry"):
        open_model(data, tensors, backend="aclnn")


@pytest.mark.parametrize("abi, block, message", [
    ("ASW_BACKEND_ABI + 1", "256", r"speaks backend ABI \d+, this library \d+"),
    ("ASW_BACKEND_ABI", "0", r"reports prefill block 0 and lookahead 1 \(need >= 1 and >= 0\)"),
])
def test_plugin_with_another_abi_or_no_prefill_block_is_refused(packed, monkeypatch, tmp_path, abi, block, message):
    """A plugin's table is checked before it is used: its ABI, and a prefill block the runtime divides by."""
    data, tensors, _ = packed
    repo = Path(__file__).resolve().parent.parent
    source = tmp_path / "plugin.c"
    source.write_text("#include \"backend.h\"\nstatic asw_backend table;\n"
                      "const asw_backend *asw_backend_entry(const asw_host *host) {\n    (void)host;\n"
                      f"    table.abi = {abi};\n    table.name = \"aclnn\";\n    table.lookahead = 1;\n"
                      f"    table.prefill_block = {block};\n    return &table;\n}}\n")
    plugin = tmp_path / "libplugin.so"
    subprocess.run(["gcc", "-std=c11", "-shared", "-fPIC", "-Wall", "-Werror", f"-I{repo / 'native/include'}",
                    f"-I{repo / 'native/src'}", str(source), "-o", str(plugin)], check=True)
    monkeypatch.setenv("ASW_ACLNN_LIB", str(plugin))
    with pytest.raises(NativeError, match=message):
        open_model(data, tensors, backend="aclnn")


@pytest.mark.parametrize(("dtype", "activations"), [("fp16", "f32"), ("bf16", "bf16")])
@pytest.mark.parametrize("kernels", kernel_sets())
def test_batched_step_rows_equal_separate_steps(packed, kernels, dtype, activations, monkeypatch):
    """Continuous batching: B sessions at different positions in one step give each exactly what it gets alone
    (also with bf16 activations, which a batched step rounds in place like a lone one)."""
    monkeypatch.setenv("ASW_KERNELS", kernels)
    data, tensors, _ = packed if dtype == "fp16" else build(CONFIG, dtype, seed=5)
    # 5 rows: the kernels' remainder groups too; two rows attend over several blocks of keys (64 and more each)
    prompts = [[1, 2, 3], [9], [4, 4, 4, 4, 4, 4, 4], [(7 * i) % 250 for i in range(70)],
               [(3 * i) % 250 for i in range(130)]]
    with open_model(data, tensors, dtype=dtype, activations=activations) as model:
        alone_logits, alone_tokens = [], []
        for prompt in prompts:
            with model.session(max_len=140) as s:
                _, token = s.prefill(prompt, logits="none")
                logits, nxt = s.decode(token, logits="last")
                alone_logits.append(logits)
                alone_tokens.append((token, nxt))
        sessions = [model.session(max_len=140 + 8 * i) for i in range(len(prompts))]  # different cache lengths
        firsts = [s.prefill(p, logits="none")[1] for s, p in zip(sessions, prompts)]
        argmax, values, _ = model.forward_batch(sessions, firsts, logits="last")
        for i in range(len(prompts)):
            np.testing.assert_array_equal(values[i], alone_logits[i])
            assert (firsts[i], int(argmax[i])) == alone_tokens[i]
            assert sessions[i].pos == len(prompts[i]) + 1
        top_argmax, top_values, top_ids = model.forward_batch(sessions, list(argmax), logits="topk", k=3)
        for s in sessions:
            s.enqueue()  # each session kept its own argmax from the batch
            assert s.read() >= 0
            s.close()
        assert top_values.shape == (5, 3) and np.all(top_ids[:, 0] == top_argmax)


def test_batch_is_checked(packed):
    data, tensors, _ = packed
    with open_model(data, tensors) as model, open_model(data, tensors) as other:
        a, b, c = model.session(8), model.session(8), other.session(8)
        for s in (a, b, c):
            s.prefill([1])
        with pytest.raises(NativeError, match="same session"):
            model.forward_batch([a, a], [1, 2])
        with pytest.raises(NativeError, match="belong to this model"):
            model.forward_batch([a, c], [1, 2])
        with pytest.raises(NativeError, match="one token each"):
            model.forward_batch([a, b], [1])
        with pytest.raises(NativeError, match="token id 9999 at index 1"):
            model.forward_batch([a, b], [1, 9999])
        a.enqueue()
        with pytest.raises(NativeError, match="session 0 has 1 queued decode steps"):
            model.forward_batch([a, b], [1, 2])
