"""Each ACLNN operator of the aclnn backend run once on the device at a model's shapes, against a numpy reference
written from the operator's documentation (native/src/aclnn/OPS.md): the per-operator table of
`ascend-run --backend aclnn --selftest`.

The plugin's `asw_aclnn_op_check` uploads host arrays, runs one operator the way the backend calls it (weights as
the transposed view of the file's row-major or FRACTAL_NZ bytes) and copies every argument back.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .native import NativeError, cast_u16, library_path

# aclDataType values (native/src/aclnn/cann_api.h)
ACL_FLOAT, ACL_FLOAT16, ACL_INT32, ACL_INT64, ACL_BOOL, ACL_BF16 = 0, 1, 3, 9, 12, 27
ND, WEIGHT_ND, WEIGHT_NZ = 0, 1, 2
# |device - reference| <= REL[dtype] * max|reference|: a few roundings of the output dtype
REL = {"fp16": 4e-3, "bf16": 3e-2}


class _Arg(ctypes.Structure):
    _fields_ = [("host", ctypes.c_void_p), ("nbytes", ctypes.c_int64), ("dtype", ctypes.c_int32),
                ("kind", ctypes.c_int32), ("ndim", ctypes.c_int32), ("pad", ctypes.c_int32),
                ("dims", ctypes.c_int64 * 4)]


@dataclass
class Arg:
    data: np.ndarray  # host array (its bytes go up; the device contents come back into it)
    dtype: int
    dims: tuple[int, ...]
    kind: int = ND


@dataclass
class Result:
    op: str
    shapes: str
    error: float  # max |diff| / max |reference| (0 for exact checks that pass)
    bound: float
    ok: bool


def plugin() -> ctypes.CDLL:
    path = os.environ.get("ASW_ACLNN_LIB") or str(Path(library_path()).parent / "libasw_aclnn.so")
    lib = ctypes.CDLL(path)
    lib.asw_aclnn_op_check.restype = ctypes.c_int32
    lib.asw_aclnn_op_check.argtypes = [ctypes.c_int32, ctypes.c_char_p, ctypes.POINTER(_Arg), ctypes.c_int32,
                                       ctypes.POINTER(ctypes.c_double), ctypes.c_int32, ctypes.c_char_p,
                                       ctypes.c_int32]
    return lib


def run_op(lib: ctypes.CDLL, device: int, op: str, args: list[Arg], attrs: tuple[float, ...] = ()) -> None:
    packed = (_Arg * len(args))()
    for slot, a in zip(packed, args):
        assert a.data.flags.c_contiguous
        slot.host, slot.nbytes, slot.dtype, slot.kind = a.data.ctypes.data, a.data.nbytes, a.dtype, a.kind
        slot.ndim = len(a.dims)
        for i, d in enumerate(a.dims):
            slot.dims[i] = d
    values = (ctypes.c_double * max(1, len(attrs)))(*attrs)
    error = ctypes.create_string_buffer(2048)
    if lib.asw_aclnn_op_check(device, op.encode(), packed, len(args), values, len(attrs), error, len(error)) != 0:
        raise NativeError(f"{op}: {error.value.decode(errors='replace')}")


class Dtype:
    """Host views of the weight dtype: f32 values <-> the u16 bits the device holds."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.acl = ACL_FLOAT16 if name == "fp16" else ACL_BF16

    def bits(self, values: np.ndarray) -> np.ndarray:
        return cast_u16(np.ascontiguousarray(values, dtype=np.float32), self.name)[0]

    def values(self, bits: np.ndarray) -> np.ndarray:
        if self.name == "fp16":
            return bits.view(np.float16).astype(np.float32)
        return (bits.astype(np.uint32) << 16).view(np.float32)

    def round(self, values: np.ndarray) -> np.ndarray:
        return self.values(self.bits(values))


def nz_to_nd(bits: np.ndarray, n: int, k: int) -> np.ndarray:
    """The logical [n, k] matrix of FRACTAL_NZ storage [ceil(k/16), ceil(n/16), 16, 16] (docs/FORMAT.md §4)."""
    k1, n1 = -(-k // 16), -(-n // 16)
    return bits.reshape(k1, n1, 16, 16).transpose(1, 2, 0, 3).reshape(n1 * 16, k1 * 16)[:n, :k]


def _rms(x: np.ndarray, gamma: np.ndarray, eps: float) -> np.ndarray:
    x64 = x.astype(np.float64)
    return x64 / np.sqrt((x64 * x64).mean(axis=-1, keepdims=True) + eps) * gamma


def _rotate_half(x: np.ndarray) -> np.ndarray:
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def _attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """q [S, Hq, D], k/v [KV, Hkv, D], mask [S, KV] (True = masked) -> [S, Hq, D]; GQA head h reads h // group."""
    s, hq, d = q.shape
    group = hq // k.shape[1]
    out = np.zeros((s, hq, d))
    for h in range(hq):
        scores = q[:, h, :].astype(np.float64) @ k[:, h // group, :].T.astype(np.float64) / np.sqrt(d)
        scores = np.where(mask, -np.inf, scores)
        p = np.exp(scores - scores.max(axis=-1, keepdims=True))
        out[:, h, :] = (p / p.sum(axis=-1, keepdims=True)) @ v[:, h // group, :]
    return out


def check_all(config: dict, dtype_name: str, weight: tuple[np.ndarray, str, int, int], bias: np.ndarray | None,
              device: int, seed: int = 0) -> list[Result]:
    """Every operator once. `weight`: the file's layer-0 attn_qkv bytes (u16), its layout and logical [n, k];
    `bias`: that layer's attn_qkv.bias bits (None without attn_bias)."""
    lib = plugin()
    dt = Dtype(dtype_name)
    rng = np.random.default_rng(seed)
    H, D = int(config["hidden_size"]), int(config["head_dim"])
    Hq, Hkv = int(config["num_attention_heads"]), int(config["num_key_value_heads"])
    F, V = int(config["intermediate_size"]), int(config["vocab_size"])
    eps = float(config["rms_norm_eps"])
    S, KV = 4, 64
    results: list[Result] = []

    def rand(*shape: int, scale: float = 1.0) -> np.ndarray:
        return dt.bits(rng.standard_normal(shape).astype(np.float32) * scale)

    def close(op: str, shapes: str, got: np.ndarray, ref: np.ndarray) -> None:
        scale = max(float(np.abs(ref).max()), 1e-6)
        err = float(np.abs(got.astype(np.float64) - ref).max()) / scale
        results.append(Result(op, shapes, err, REL[dt.name], err <= REL[dt.name]))

    def exact(op: str, shapes: str, same: bool) -> None:
        results.append(Result(op, shapes, 0.0 if same else 1.0, 0.0, same))

    def attempt(op: str, shapes: str, body: Callable[[], None]) -> None:
        try:
            body()
        except NativeError as exc:
            results.append(Result(op, f"{shapes}: {exc}", float("nan"), 0.0, False))

    def rms_norm() -> None:
        x, g = rand(S, H), rand(H, scale=0.5)
        y, rstd = np.zeros((S, H), np.uint16), np.zeros((S, 1), np.float32)
        run_op(lib, device, "RmsNorm", [Arg(x, dt.acl, (S, H)), Arg(g, dt.acl, (H,)), Arg(y, dt.acl, (S, H)),
                                        Arg(rstd, ACL_FLOAT, (S, 1))], (eps,))
        close("RmsNorm", f"x [{S}, {H}]", dt.values(y), _rms(dt.values(x), dt.values(g), eps))

    def add_rms_norm() -> None:
        x1, x2, g = rand(S, H), rand(S, H), rand(H, scale=0.5)
        y, rstd, xo = np.zeros((S, H), np.uint16), np.zeros((S, 1), np.float32), np.zeros((S, H), np.uint16)
        run_op(lib, device, "AddRmsNorm", [Arg(x1, dt.acl, (S, H)), Arg(x2, dt.acl, (S, H)), Arg(g, dt.acl, (H,)),
                                           Arg(y, dt.acl, (S, H)), Arg(rstd, ACL_FLOAT, (S, 1)),
                                           Arg(xo, dt.acl, (S, H))], (eps,))
        added = dt.round(dt.values(x1) + dt.values(x2))
        close("AddRmsNorm", f"x [{S}, {H}] (sum)", dt.values(xo), added)
        close("AddRmsNorm", f"x [{S}, {H}] (norm)", dt.values(y), _rms(added, dt.values(g), eps))

    w_bits, layout, n, k = weight
    w_kind = WEIGHT_NZ if layout == "nz" else WEIGHT_ND
    w_logical = dt.values(nz_to_nd(w_bits, n, k) if layout == "nz" else w_bits.reshape(n, k))
    op_mm = "MatmulWeightNz" if layout == "nz" else "Mm"

    def matmul() -> None:
        x, y = rand(S, k), np.zeros((S, n), np.uint16)
        run_op(lib, device, "Mm", [Arg(x, dt.acl, (S, k)), Arg(np.ascontiguousarray(w_bits), dt.acl, (n, k), w_kind),
                                   Arg(y, dt.acl, (S, n))])
        close(op_mm, f"[{S}, {k}] x layer-0 attn_qkv [{n}, {k}] {layout}", dt.values(y),
              dt.values(x).astype(np.float64) @ w_logical.T.astype(np.float64))

    def addmm() -> None:
        assert bias is not None
        x, y = rand(S, k), np.zeros((S, n), np.uint16)
        run_op(lib, device, "Addmm", [Arg(np.ascontiguousarray(bias), dt.acl, (n,)), Arg(x, dt.acl, (S, k)),
                                      Arg(np.ascontiguousarray(w_bits), dt.acl, (n, k), w_kind),
                                      Arg(y, dt.acl, (S, n))])
        ref = dt.values(x).astype(np.float64) @ w_logical.T.astype(np.float64) + dt.values(bias)
        close("AddmmWeightNz" if layout == "nz" else "Addmm", f"+ bias [{n}]", dt.values(y), ref)

    def rope() -> None:
        x = rand(1, S, Hq + Hkv, D)
        angle = rng.uniform(0, 100, size=(1, S, 1, D // 2)).astype(np.float32)
        angle = np.concatenate([angle, angle], axis=-1)
        cos, sin = dt.bits(np.cos(angle)), dt.bits(np.sin(angle))
        out = np.zeros_like(x)
        run_op(lib, device, "RotaryPositionEmbedding",
               [Arg(x, dt.acl, x.shape), Arg(cos, dt.acl, cos.shape), Arg(sin, dt.acl, sin.shape),
                Arg(out, dt.acl, out.shape)], (0,))
        xv = dt.values(x).astype(np.float64)
        close("RotaryPositionEmbedding", f"mode 0, x [1, {S}, {Hq + Hkv}, {D}]", dt.values(out),
              xv * dt.values(cos) + _rotate_half(xv) * dt.values(sin))

    def swiglu() -> None:
        x, out = rand(S, 2 * F), np.zeros((S, F), np.uint16)
        run_op(lib, device, "SwiGlu", [Arg(x, dt.acl, (S, 2 * F)), Arg(out, dt.acl, (S, F))])
        xv = dt.values(x).astype(np.float64)
        gate, up = xv[:, :F], xv[:, F:]
        close("SwiGlu", f"x [{S}, {2 * F}]", dt.values(out), gate / (1 + np.exp(-gate)) * up)

    def attention(q_len: int) -> None:
        q, kk, vv = rand(1, q_len, Hq, D), rand(1, KV, Hkv, D), rand(1, KV, Hkv, D)
        last = KV - 8  # the last query sees positions 0..last + q_len - 1
        mask = np.arange(KV)[None, :] > (last + np.arange(q_len))[:, None]
        mask_arg = mask.reshape(1, KV) if q_len == 1 else mask.reshape(1, q_len, KV)
        mask_bytes = np.ascontiguousarray(mask_arg.astype(np.uint8))
        out = np.zeros_like(q)
        run_op(lib, device, "FusedInferAttentionScoreV4",
               [Arg(q, dt.acl, q.shape), Arg(kk, dt.acl, kk.shape), Arg(vv, dt.acl, vv.shape),
                Arg(mask_bytes, ACL_BOOL, mask_arg.shape), Arg(out, dt.acl, out.shape)], (Hq, Hkv))
        ref = _attention(dt.values(q)[0], dt.values(kk)[0], dt.values(vv)[0], mask)
        close("FusedInferAttentionScoreV4", f"q [1, {q_len}, {Hq}, {D}], KV {KV}, masked", dt.values(out)[0], ref)

    def index_copy() -> None:
        rows, width = 16, Hkv * D
        cache, index, source = rand(rows, width), np.array([5], np.int32), rand(1, width)
        want = cache.copy()
        want[5] = source[0]
        run_op(lib, device, "InplaceIndexCopy", [Arg(cache, dt.acl, (rows, width)), Arg(index, ACL_INT32, (1,)),
                                                 Arg(source, dt.acl, (1, width))])
        exact("InplaceIndexCopy", f"cache [{rows}, {width}] row 5", np.array_equal(cache, want))

    def embedding() -> None:
        table, ids, out = rand(64, H), np.array([3, 0, 63], np.int32), np.zeros((3, H), np.uint16)
        run_op(lib, device, "Embedding", [Arg(table, dt.acl, (64, H)), Arg(ids, ACL_INT32, (3,)),
                                          Arg(out, dt.acl, (3, H))])
        exact("Embedding", f"table [64, {H}], 3 ids", np.array_equal(out, table[ids]))

    def argmax_topk() -> None:
        logits = rand(1, V)
        am = np.zeros(1, np.int32)
        run_op(lib, device, "ArgMax", [Arg(logits, dt.acl, (1, V)), Arg(am, ACL_INT32, (1,))])
        values = dt.values(logits)[0]
        exact("ArgMax", f"[1, {V}]", int(am[0]) == int(np.argmax(values)))
        top_v, top_i = np.zeros((1, 8), np.uint16), np.zeros((1, 8), np.int64)
        run_op(lib, device, "Topk", [Arg(logits, dt.acl, (1, V)), Arg(top_v, dt.acl, (1, 8)),
                                     Arg(top_i, ACL_INT64, (1, 8))], (8,))
        order = np.argsort(-values, kind="stable")[:8]
        exact("Topk", f"k 8 of [1, {V}]", np.array_equal(np.sort(values[top_i[0]])[::-1], values[order])
              and np.array_equal(dt.values(top_v)[0], values[order]))

    def position_ops() -> None:
        arange, pos, mask = np.arange(KV, dtype=np.int32).reshape(1, KV), np.array([[40]], np.int32), \
            np.zeros((1, KV), np.uint8)
        run_op(lib, device, "GtTensor", [Arg(arange, ACL_INT32, (1, KV)), Arg(pos, ACL_INT32, (1, 1)),
                                         Arg(mask, ACL_BOOL, (1, KV))])
        exact("GtTensor", f"arange [1, {KV}] > position", np.array_equal(mask[0] != 0, np.arange(KV) > 40))
        pair = np.array([7, 1007], np.int32)
        run_op(lib, device, "InplaceAdds", [Arg(pair, ACL_INT32, (2,))], (1,))
        exact("InplaceAdds", "position pair += 1", pair.tolist() == [8, 1008])
        dst, src = np.zeros((S, Hkv * D), np.uint16), rand(S, Hkv * D)
        run_op(lib, device, "InplaceCopy", [Arg(dst, dt.acl, (S, Hkv * D)), Arg(src, dt.acl, (S, Hkv * D))])
        exact("InplaceCopy", f"[{S}, {Hkv * D}]", np.array_equal(dst, src))

    attempt("RmsNorm", "", rms_norm)
    attempt("AddRmsNorm", "", add_rms_norm)
    attempt(op_mm, "", matmul)
    if bias is not None:
        attempt("Addmm", "", addmm)
    attempt("RotaryPositionEmbedding", "", rope)
    attempt("SwiGlu", "", swiglu)
    attempt("FusedInferAttentionScoreV4", "decode", lambda: attention(1))
    attempt("FusedInferAttentionScoreV4", "prefill", lambda: attention(S))
    attempt("InplaceIndexCopy", "", index_copy)
    attempt("Embedding", "", embedding)
    attempt("ArgMax/Topk", "", argmax_topk)
    attempt("GtTensor/InplaceAdds/InplaceCopy", "", position_ops)
    return results
