"""A GGUF file (llama.cpp's format) presented as a HuggingFace checkpoint.

Tensors come out under their HuggingFace names in HF orientation ([out, in]), dequantized with the ``gguf``
package (every type its ``quants.dequantize`` supports). Two things llama.cpp's converter did are undone:

- GGUF lists a tensor's dimensions fastest-first (ggml ``ne`` order); the HF shape is that list reversed.
- For the ``llama`` architecture, convert_hf_to_gguf.py permuted the rows of Q and K (weights and biases) per
  head from HF's rotate-half order to the interleaved pairs ggml's rope wants. We apply the inverse so the
  tensors are in HF rotate-half order again. ``qwen2`` files are written unpermuted (llama.cpp uses NEOX rope).

Hyper-parameters come from the ``{arch}.*`` keys, the tokenizer is rebuilt from ``tokenizer.ggml.*``
(see gguf_tokenizer.py), the chat template from ``tokenizer.chat_template``. Llama-3 rope scaling, which
llama.cpp stores as a ``rope_freqs`` tensor of per-frequency factors, is turned back into HF's llama3 dict.

Every problem with the file is a `SourceError` naming the file and the problem.
"""

from __future__ import annotations

import math
import mmap
import re
from importlib.metadata import PackageNotFoundError, version
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..archs import ARCHS as HF_ARCHS
from .base import SourceError, SourceMeta, SourceTensor, file_xxh3
from .gguf_tokenizer import TokenizerBuildError, build_tokenizer, eos_ids

from gguf import GGMLQuantizationType, GGUFEndian, GGUFReader, Keys, MODEL_TENSOR, TENSOR_NAMES
from gguf.quants import dequantize as _dequantize

GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class _Arch:
    hf_class: str
    model_type: str
    permuted_qk: bool  # llama.cpp's converter permuted Q/K rows for interleaved rope
    rope_freqs: bool  # llama.cpp reads a rope_freqs tensor (per-dimension rope factors) for this arch


# general.architecture -> how to present it
ARCHS: dict[str, _Arch] = {
    "llama": _Arch("LlamaForCausalLM", "llama", permuted_qk=True, rope_freqs=True),
    # llama.cpp's qwen2 graph takes no rope factors, and its loader refuses a file with a tensor it does not use
    "qwen2": _Arch("Qwen2ForCausalLM", "qwen2", permuted_qk=False, rope_freqs=False),
}

# HF float dtypes by GGUF type name; any other type is reported under its GGUF name (e.g. "Q4_1")
_FLOAT_NAMES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}


def _tensor_table() -> tuple[dict[str, str], dict[str, str]]:
    """(GGUF global tensor name -> HF name, GGUF per-block suffix -> HF per-layer suffix), from gguf's constants."""
    T = TENSOR_NAMES
    glob = {
        T[MODEL_TENSOR.TOKEN_EMBD] + ".weight": "model.embed_tokens.weight",
        T[MODEL_TENSOR.OUTPUT_NORM] + ".weight": "model.norm.weight",
        T[MODEL_TENSOR.OUTPUT] + ".weight": "lm_head.weight",
    }
    per_block = {
        MODEL_TENSOR.ATTN_NORM: ("input_layernorm", ("weight",)),
        MODEL_TENSOR.ATTN_Q: ("self_attn.q_proj", ("weight", "bias")),
        MODEL_TENSOR.ATTN_K: ("self_attn.k_proj", ("weight", "bias")),
        MODEL_TENSOR.ATTN_V: ("self_attn.v_proj", ("weight", "bias")),
        MODEL_TENSOR.ATTN_OUT: ("self_attn.o_proj", ("weight", "bias")),
        MODEL_TENSOR.FFN_NORM: ("post_attention_layernorm", ("weight",)),
        MODEL_TENSOR.FFN_GATE: ("mlp.gate_proj", ("weight",)),
        MODEL_TENSOR.FFN_UP: ("mlp.up_proj", ("weight",)),
        MODEL_TENSOR.FFN_DOWN: ("mlp.down_proj", ("weight",)),
    }
    block = {}
    for mt, (hf, kinds) in per_block.items():
        fmt = T[mt]  # e.g. "blk.{bid}.attn_q"
        suffix = fmt.split("{bid}.", 1)[1]
        for kind in kinds:
            block[f"{suffix}.{kind}"] = f"{hf}.{kind}"
    return glob, block


def _gguf_version() -> str:
    try:
        return f"gguf {version('gguf')}"
    except PackageNotFoundError:  # pragma: no cover - imported above, so installed
        return "gguf"


def _field_value(field: Any) -> Any:
    """A metadata field as a Python value: scalars unwrapped, arrays as lists, strings decoded."""
    value = field.contents()
    if isinstance(value, np.generic):
        value = value.item()
    return value


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of convert_hf_to_gguf's ``LlamaModel.permute``: interleaved rope pairs back to rotate-half rows."""
    rows = w.shape[0]
    if rows % (2 * n_head):
        raise ValueError(f"{rows} rows do not split into {n_head} heads of even size")
    # permute: reshape(n_head, 2, half, ...).swapaxes(1, 2); the inverse reads the rows as (n_head, half, 2, ...)
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _llama3_factors(theta: float, head_dim: int, factor: float, lo: float, hi: float, orig: int) -> np.ndarray:
    """llama.cpp's rope_freqs for HF's llama3 rope scaling (convert_hf_to_gguf, LlamaModel.generate_extra_tensors)."""
    freqs = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    wavelen = 2 * math.pi / freqs
    out = np.empty_like(freqs)
    for i, w in enumerate(wavelen):
        if w < orig / hi:
            out[i] = 1.0
        elif w > orig / lo:
            out[i] = factor
        else:
            smooth = (orig / w - lo) / (hi - lo)
            out[i] = 1.0 / ((1 - smooth) / factor + smooth)
    return out


def _nice(x: float) -> float:
    r = round(x, 4)
    return float(r) if abs(r - x) <= 1e-6 * max(1.0, abs(x)) else float(x)


def _fit_llama3(factors: np.ndarray, theta: float, head_dim: int, orig: int | None) -> dict[str, Any] | None:
    """HF's llama3 rope_scaling dict reproducing `factors` (per frequency), or None when they are all 1.

    The factors only fix orig/low_freq_factor and orig/high_freq_factor (HF's formula depends on nothing else), so
    original_max_position_embeddings is taken from the file when it says, else Llama 3.1's 8192.
    """
    f = np.asarray(factors, dtype=np.float64)
    if f.shape != (head_dim // 2,):
        raise ValueError(f"rope_freqs has shape {tuple(f.shape)}, expected ({head_dim // 2},)")
    if np.allclose(f, 1.0, rtol=0, atol=1e-6):
        return None
    factor = float(f.max())
    orig = int(orig or 8192)
    wavelen = 2 * math.pi * theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    mid = (f > 1.0 + 1e-6) & (f < factor * (1 - 1e-6))
    if mid.sum() >= 2:
        smooth = (1.0 / f[mid] - 1.0 / factor) / (1.0 - 1.0 / factor)
        a, b = np.polyfit(orig / wavelen[mid], smooth, 1)  # smooth = (orig/w - lo) / (hi - lo)
        lo, hi = -b / a, -b / a + 1.0 / a
    else:
        lo, hi = 1.0, 4.0
    lo, hi, factor = _nice(lo), _nice(hi), _nice(factor)
    if not np.allclose(_llama3_factors(theta, head_dim, factor, lo, hi, orig), f, rtol=1e-4, atol=1e-6):
        raise ValueError("rope_freqs factors are not those of llama3 rope scaling")
    return {
        "rope_type": "llama3",
        "factor": factor,
        "low_freq_factor": lo,
        "high_freq_factor": hi,
        "original_max_position_embeddings": orig,
    }


@dataclass(frozen=True)
class _Entry:
    gguf_name: str
    tensor: Any  # gguf ReaderTensor
    shape: tuple[int, ...]  # HF orientation
    permute_heads: int | None  # un-permute rows for this many heads


class GGUFSource:
    """A ``.gguf`` file as a `Source` (see base.py)."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self._hash: str | None = None
        self._reader = self._open()
        self._values = self._read_metadata()
        self._arch_name, self._arch = self._architecture()
        self._entries: dict[str, _Entry] = {}
        self._rope_freqs: Any = None
        config = self._hyperparameters()
        self._map_tensors(config)
        self._finish_config(config)
        self.meta = self._build_meta(config)

    # -- opening ---------------------------------------------------------------------------------------------

    def _err(self, problem: str) -> SourceError:
        return SourceError(f"{self.path}: {problem}")

    def _open(self) -> Any:
        try:
            size = self.path.stat().st_size
            with open(self.path, "rb") as fh:
                magic = fh.read(4)
        except OSError as exc:
            raise self._err(f"cannot open: {exc.strerror or exc}") from None
        if magic != GGUF_MAGIC:
            raise self._err(f"not a GGUF file (starts with {magic!r}, expected {GGUF_MAGIC!r})")
        try:
            reader = GGUFReader(self.path, "r")
        except Exception as exc:  # the reader raises ValueError/IndexError/... on short or damaged files
            detail = (str(exc).splitlines() or [""])[0][:200]
            unknown_type = re.search(r"(\d+)\)? is not a valid GGMLQuantizationType", detail)
            if unknown_type:
                raise self._err(f"a tensor has ggml type {unknown_type.group(1)}, which the installed gguf package "
                                f"({_gguf_version()}) does not know: a newer gguf may read it") from None
            raise self._err(f"truncated or corrupt GGUF file ({size} bytes; gguf reader: "
                            f"{type(exc).__name__}: {detail})") from None
        if reader.endianess != GGUFEndian.LITTLE:  # gguf's tensor views would read its numbers in the wrong order
            raise self._err("big-endian GGUF file: only little-endian files are supported (llama.cpp refuses one "
                            "on a little-endian host too)")
        for t in reader.tensors:
            end = int(t.data_offset) + int(t.n_bytes)
            if end > size or int(t.data.nbytes) != int(t.n_bytes):
                raise self._err(f"truncated: tensor {t.name} needs bytes up to {end} but the file has {size}")
        self._check_tensor_placement(reader)
        return reader

    def _check_tensor_placement(self, reader: Any) -> None:
        """Each tensor's data right after the one before it in the tensor table, padded to the file's alignment, as
        llama.cpp's gguf loader requires (gguf.cpp: "tensor ... has offset ..., expected ..."); the gguf reader takes
        the offsets as they come, so one tensor could read another's bytes."""
        alignment, expected = int(reader.alignment), 0
        for t in reader.tensors:
            offset = int(t.data_offset) - int(reader.data_offset)
            if offset != expected:
                raise self._err(f"tensor {t.name}: its data at byte offset {int(t.data_offset)} ({offset} into the "
                                f"data section), where llama.cpp's loader expects {expected}: right after the tensor "
                                f"before it in the table, padded to the file's {alignment}-byte alignment")
            expected += -(-int(t.n_bytes) // alignment) * alignment

    def _read_metadata(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for key, field in self._reader.fields.items():
            if key.startswith("GGUF."):
                continue
            try:
                values[key] = _field_value(field)
            except Exception as exc:
                raise self._err(f"cannot decode metadata key {key} ({type(exc).__name__}: {exc})") from None
        return values

    def _key(self, template: str) -> str:
        return template.format(arch=self._arch_name)

    def _get(self, template: str, default: Any = None, *, required: bool = False) -> Any:
        key = self._key(template)
        if key not in self._values:
            if required:
                raise self._err(f"missing required key {key}")
            return default
        return self._values[key]

    def _architecture(self) -> tuple[str, _Arch]:
        key = Keys.General.ARCHITECTURE
        if key not in self._values:
            raise self._err(f"missing required key {key}")
        name = self._values[key]
        if name not in ARCHS:
            raise self._err(f"unsupported architecture {name!r} (supported: {', '.join(sorted(ARCHS))})")
        return name, ARCHS[name]

    # -- hyper-parameters ------------------------------------------------------------------------------------

    def _int(self, template: str, **kw: Any) -> int | None:
        v = self._get(template, **kw)
        if isinstance(v, list):  # per-layer arrays (some files): all layers must agree
            if not v or any(x != v[0] for x in v):
                raise self._err(f"{self._key(template)} differs between layers ({v[:8]}...), which is not supported")
            v = v[0]
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or int(v) <= 0:
            raise self._err(f"{self._key(template)} must be a positive integer, got {v!r}")
        return int(v)

    def _float(self, template: str, default: float | None = None, **kw: Any) -> float | None:
        v = self._get(template, default, **kw)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float, np.number)) or not math.isfinite(float(v)):
            raise self._err(f"{self._key(template)} must be a number, got {v!r}")
        return float(v)

    def _hyperparameters(self) -> dict[str, Any]:
        L, A = Keys.LLM, Keys.Attention
        hidden = self._int(L.EMBEDDING_LENGTH, required=True)
        layers = self._int(L.BLOCK_COUNT, required=True)
        heads = self._int(A.HEAD_COUNT, required=True)
        kv_heads = self._int(A.HEAD_COUNT_KV) or heads
        ffn = self._int(L.FEED_FORWARD_LENGTH, required=True)
        ctx = self._int(L.CONTEXT_LENGTH, required=True)
        eps = self._float(A.LAYERNORM_RMS_EPS, required=True)
        theta = self._float(Keys.Rope.FREQ_BASE, 10000.0)
        head_dim = self._int(A.KEY_LENGTH) or (hidden // heads)
        if heads % kv_heads:
            raise self._err(f"{heads} attention heads are not a multiple of {kv_heads} KV heads")
        value_dim = self._int(A.VALUE_LENGTH)
        if value_dim is not None and value_dim != head_dim:
            raise self._err(f"key length {head_dim} != value length {value_dim}, which is not supported")
        rot = self._int(Keys.Rope.DIMENSION_COUNT)
        if rot is not None and rot != head_dim:
            raise self._err(f"partial rotary embedding ({rot} of {head_dim} dims) is not supported")
        # experts name a mixture-of-experts model: llama.cpp's llama graph then routes through expert tensors (a dense
        # file fails its load) and refuses experts used without a count; its qwen2 graph ignores both keys, which its
        # converter writes for mixture-of-experts architectures only
        for template in (L.EXPERT_COUNT, L.EXPERT_USED_COUNT):
            experts = self._get(template)
            if experts:
                raise self._err(f"{self._key(template)}={experts!r}: mixture-of-experts models are not supported")
        causal = self._get(A.CAUSAL)
        if causal is not None and causal is not True:  # llama.cpp builds non-causal masks from it, for any arch
            raise self._err(f"{self._key(A.CAUSAL)}={causal!r}: only causal attention is supported")
        return {
            "architectures": [self._arch.hf_class],
            "model_type": self._arch.model_type,
            "hidden_size": hidden,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "num_key_value_heads": kv_heads,
            "head_dim": head_dim,
            "intermediate_size": ffn,
            "rms_norm_eps": eps,
            "rope_theta": theta,
            "rope_scaling": self._rope_scaling_from_keys(ctx),
            "max_position_embeddings": ctx,
            "hidden_act": "silu",
        }

    def _rope_scaling_from_keys(self, ctx: int) -> dict[str, Any] | None:
        R = Keys.Rope
        kind = self._get(R.SCALING_TYPE)
        factor = self._float(R.SCALING_FACTOR)
        orig = self._int(R.SCALING_ORIG_CTX_LEN)
        attn_factor = self._float(R.SCALING_ATTN_FACTOR)
        if kind != "yarn" and attn_factor is not None and attn_factor != 1.0:  # yarn's is refused with yarn
            raise self._err(f"{self._key(R.SCALING_ATTN_FACTOR)}={attn_factor!r}: llama.cpp scales rope's cos and "
                            "sin by it (for every scaling type), which is not supported")
        if kind is None or kind == "linear":
            # llama.cpp: the type defaults to "linear"; its factor is rope.scaling.factor, else scale_linear, and 0
            # (also when neither is there) or 1 scales nothing
            legacy = self._float("{arch}.rope.scale_linear")
            scale = factor if factor is not None else legacy
            if scale is not None and scale not in (0.0, 1.0):
                return {"rope_type": "linear", "factor": scale}
            return None
        if kind == "none":
            return None
        if kind != "yarn":
            raise self._err(f"unsupported rope scaling {self._key(R.SCALING_TYPE)}={kind!r} (supported: none, linear, "
                            "yarn, and llama3 via a rope_freqs tensor)")
        if factor is None:
            raise self._err(f"{self._key(R.SCALING_TYPE)}={kind!r} without {self._key(R.SCALING_FACTOR)}")
        out: dict[str, Any] = {"rope_type": "yarn", "factor": factor, "original_max_position_embeddings": orig or ctx}
        for key, name in ((R.SCALING_YARN_BETA_FAST, "beta_fast"), (R.SCALING_YARN_BETA_SLOW, "beta_slow"),
                          (R.SCALING_ATTN_FACTOR, "attention_factor")):
            if (v := self._float(key)) is not None:
                out[name] = v
        return out

    # -- tensors ---------------------------------------------------------------------------------------------

    def _map_tensors(self, config: dict[str, Any]) -> None:
        glob, block = _tensor_table()
        rope_freqs = TENSOR_NAMES[MODEL_TENSOR.ROPE_FREQS] + ".weight"
        ignorable = {"attn_rot_embd"}  # precomputed rope tables some old files carry
        layers = config["num_hidden_layers"]
        heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
        for t in self._reader.tensors:
            name = t.name
            if name == rope_freqs and self._arch.rope_freqs:
                self._rope_freqs = t
                continue
            hf = glob.get(name)
            if hf is None and name.startswith("blk."):
                parts = name.split(".", 2)
                if len(parts) == 3 and parts[1].isdigit():
                    bid, suffix = int(parts[1]), parts[2]
                    if suffix.split(".")[0] in ignorable:
                        continue
                    if suffix in block:
                        if bid >= layers:
                            raise self._err(f"tensor {name} is for layer {bid} but the file has {layers} layers")
                        hf = f"model.layers.{bid}.{block[suffix]}"
            if hf is None:
                raise self._err(f"unexpected tensor {name} for architecture {self._arch_name!r}")
            if hf in self._entries:
                raise self._err(f"duplicate tensor {name}")
            shape = tuple(int(d) for d in reversed([int(x) for x in t.shape]))
            permute = None
            if self._arch.permuted_qk:
                if ".self_attn.q_proj." in hf:
                    permute = heads
                elif ".self_attn.k_proj." in hf:
                    permute = kv_heads
            self._entries[hf] = _Entry(name, t, shape, permute)

    def _finish_config(self, config: dict[str, Any]) -> None:
        """Fill vocab, tying, biases and rope_freqs scaling from the tensors."""
        emb = self._entries.get("model.embed_tokens.weight")
        if emb is None:
            raise self._err("missing tensor token_embd.weight")
        vocab, hidden = emb.shape if len(emb.shape) == 2 else (None, None)
        if hidden != config["hidden_size"]:
            raise self._err(f"token_embd.weight has shape {emb.shape}, expected [vocab, {config['hidden_size']}]")
        tokens = self._values.get(Keys.Tokenizer.LIST)
        if isinstance(tokens, list) and len(tokens) != vocab:  # llama.cpp requires one row per token
            raise self._err(f"{len(tokens)} tokens but token_embd.weight has {vocab} rows (one per token expected)")
        config["vocab_size"] = vocab
        config["tie_word_embeddings"] = "lm_head.weight" not in self._entries

        # which tensors a layer needs, and their shapes, the planner checks against format.expected_tensors
        if any(".o_proj.bias" in hf for hf in self._entries):
            raise self._err("attention output biases (attn_output.bias) are not supported")
        config["attention_bias"] = any(".self_attn.q_proj.bias" in hf for hf in self._entries)
        if config["attention_bias"] and not HF_ARCHS[self._arch.hf_class].qkv_bias:  # named as the file has it
            raise self._err(f"q/k/v bias tensors (blk.0.attn_q.bias, ...) in a {self._arch_name} file are not "
                            "supported (the runtime adds them for qwen2 only)")

        if self._rope_freqs is not None:
            if config["rope_scaling"] is not None:
                raise self._err("both rope scaling keys and a rope_freqs tensor; cannot tell which applies")
            try:
                factors = _dequantize(self._rope_freqs.data, self._rope_freqs.tensor_type).reshape(-1)
                orig = self._int(Keys.Rope.SCALING_ORIG_CTX_LEN)
                config["rope_scaling"] = _fit_llama3(factors, config["rope_theta"], config["head_dim"], orig)
            except (ValueError, NotImplementedError) as exc:
                raise self._err(f"cannot express tensor rope_freqs.weight as rope scaling: {exc}") from None

    # -- metadata --------------------------------------------------------------------------------------------

    def _build_meta(self, config: dict[str, Any]) -> SourceMeta:
        T = Keys.Tokenizer
        try:
            tokenizer_json, tokenizer_config = build_tokenizer(self._values)
        except TokenizerBuildError as exc:
            raise self._err(f"tokenizer: {exc}") from None
        bos, eos = self._values.get(T.BOS_ID), self._values.get(T.EOS_ID)
        pad = self._values.get(T.PAD_ID)
        config["bos_token_id"] = bos
        config["eos_token_id"] = eos
        if pad is not None:
            config["pad_token_id"] = pad
        stops = eos_ids(self._values)
        generation = {"bos_token_id": bos, "eos_token_id": stops[0] if len(stops) == 1 else (stops or None)}
        if pad is not None:
            generation["pad_token_id"] = pad
        template = self._values.get(T.CHAT_TEMPLATE)
        if template is not None and not isinstance(template, str):
            raise self._err(f"{T.CHAT_TEMPLATE} is not a string")
        return SourceMeta(
            config=config,
            tokenizer_json=tokenizer_json,
            tokenizer_config=tokenizer_config,
            chat_template=template,
            generation_config=generation,
            provenance={"kind": "gguf", "id": self.path.name, "revision": None},
            config_origin="the config taken from its GGUF metadata",
        )

    # -- the Source protocol ---------------------------------------------------------------------------------

    def tensors(self) -> dict[str, SourceTensor]:
        out = {}
        for hf, e in self._entries.items():
            tname = e.tensor.tensor_type.name
            out[hf] = SourceTensor(hf, e.shape, _FLOAT_NAMES.get(tname, tname), int(e.tensor.n_bytes))
        return out

    def read(self, name: str) -> np.ndarray:
        """The tensor in HF orientation: float16 / float32 as stored, everything else dequantized to float32."""
        e = self._entries.get(name)
        if e is None:
            raise KeyError(name)
        return self.read_rows(name, 0, e.shape[0])

    def read_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) in HF orientation, dequantizing only those rows (and, for Q/K rows that llama.cpp
        permuted, only the whole heads that hold them), so memory stays one row block whatever the tensor."""
        if self._reader is None:
            raise self._err("source is closed")
        e = self._entries.get(name)
        if e is None:
            raise KeyError(name)
        t = e.tensor
        qtype = t.tensor_type
        first, last = start, stop
        if len(e.shape) == 1:
            first, last = 0, e.shape[0]
        elif e.permute_heads is not None:  # un-permuting mixes rows within a head: read whole heads
            head_rows = e.shape[0] // e.permute_heads
            first, last = start // head_rows * head_rows, -(-stop // head_rows) * head_rows
        try:
            raw = np.asarray(t.data)
            if len(e.shape) > 1:  # a 1-D tensor whole: a block type's data is bytes, not one entry per element
                raw = raw[first:last]
            if qtype == GGMLQuantizationType.F16:
                arr = raw.view(np.float16)
            elif qtype == GGMLQuantizationType.F64:
                arr = raw.view(np.float64).astype(np.float32)
            else:
                arr = _dequantize(raw, qtype)
            if arr.dtype.byteorder not in ("=", "|"):
                arr = arr.astype(arr.dtype.newbyteorder("="))
            arr = arr.reshape((last - first, *e.shape[1:]))
            if e.permute_heads is not None:
                arr = _unpermute(arr, e.permute_heads * (last - first) // e.shape[0])
            arr = arr[start - first:stop - first]
            arr = np.array(arr, copy=True, order="C")  # never a view into the memory map
        except NotImplementedError:
            raise self._err(f"tensor {t.name} has type {qtype.name}, which the gguf package cannot dequantize") from None
        except (ValueError, OSError) as exc:
            raise self._err(f"cannot read tensor {t.name} ({type(exc).__name__}: {exc})") from None
        row_bytes = int(t.n_bytes) // e.shape[0]
        self._release(int(t.data_offset) + first * row_bytes, (last - first) * row_bytes)
        return arr

    def _release(self, offset: int, length: int) -> None:
        """Drop the mapped pages of bytes just read from this process's resident set (they stay in the page
        cache), so the converter's RSS is one row block, not every byte of the file read so far."""
        mapping = getattr(self._reader.data, "_mmap", None) if self._reader is not None else None
        if mapping is None or not hasattr(mmap, "MADV_DONTNEED"):
            return
        start = offset // mmap.PAGESIZE * mmap.PAGESIZE
        end = min(len(mapping), offset + length)
        if end > start:
            mapping.madvise(mmap.MADV_DONTNEED, start, end - start)

    def file_names(self) -> list[str]:
        return [self.path.name]

    def file_hashes(self) -> dict[str, str]:
        if self._hash is None:
            self._hash = file_xxh3(self.path)
        return {self.path.name: self._hash}

    def close(self) -> None:
        self._reader = None

    def __enter__(self) -> "GGUFSource":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def is_gguf(path: Path | str) -> bool:
    """Whether `path` is a file starting with the GGUF magic (for source dispatch)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == GGUF_MAGIC
    except OSError:
        return False
