"""Every operator of the CANN emulator against a numpy reference written from the operator's documentation
(hicann/ops-nn, ops-math, ops-transformer docs/aclnn*.md), including the documented argument checks."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

from emu_support import (
    ACLNN_ERR_PARAM_INVALID,
    ACLNN_ERR_PARAM_NULLPTR,
    BF16,
    BOOL,
    FLOAT,
    FLOAT16,
    FORMAT_NZ,
    INT32,
    INT64,
    AclError,
    DevArray,
    Emu,
    fia_args,
    round_to,
)

P = ctypes.c_void_p
RTOL = {FLOAT: 1e-5, FLOAT16: 2e-3, BF16: 1.6e-2}  # about one unit in the last place of the output dtype


@pytest.fixture(scope="module")
def emu() -> Emu:
    return Emu.get()


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def rand(rng, shape, dtype, scale=1.0) -> np.ndarray:
    """Random values already representable in `dtype` (so the reference sees what the device sees)."""
    return round_to(rng.standard_normal(shape).astype(np.float32) * scale, dtype)


def close(got, ref, dtype, atol=1e-6):
    np.testing.assert_allclose(got, ref, rtol=RTOL[dtype], atol=atol)


def refused(emu, name, *args, code=ACLNN_ERR_PARAM_INVALID, match=""):
    with pytest.raises(AclError) as e:
        emu.phase1(name, *args)
    assert e.value.code == code and match in e.value.msg, e.value.msg


# ---------------------------------------------------------------------------------------------- Embedding
@pytest.mark.parametrize("dtype,itype", [(FLOAT16, INT32), (BF16, INT64), (FLOAT, INT64)])
def test_embedding(emu, rng, dtype, itype):
    w = rand(rng, (11, 6), dtype)
    idx = np.array([[3, 0], [10, 3]])
    weight, indices = DevArray(emu, w, dtype), DevArray(emu, idx, itype)
    out = DevArray(emu, np.zeros((2, 2, 6)), dtype)
    emu.run("Embedding", P(weight.t), P(indices.t), P(out.t))
    np.testing.assert_array_equal(out.read(), w[idx])


def test_embedding_checks(emu):
    weight = DevArray(emu, np.zeros((4, 3)), FLOAT16)
    bad_idx = DevArray(emu, np.array([4]), INT32)
    out = DevArray(emu, np.zeros((1, 3)), FLOAT16)
    refused(
        emu,
        "Embedding",
        P(weight.t),
        P(DevArray(emu, np.array([1.0]), FLOAT).t),
        P(out.t),
        match="indices has dtype FLOAT",
    )
    refused(
        emu,
        "Embedding",
        P(weight.t),
        P(bad_idx.t),
        P(DevArray(emu, np.zeros((2, 3)), FLOAT16).t),
        match="out has shape",
    )
    ws, ex = emu.phase1("Embedding", P(weight.t), P(bad_idx.t), P(out.t))
    emu.phase2("Embedding", ws, ex)
    with pytest.raises(AclError, match="index 4 out of range"):
        emu.sync()


# ---------------------------------------------------------------------------------------------- RmsNorm
def rms_ref(x, gamma, eps, ndim_g):
    axes = tuple(range(x.ndim - ndim_g, x.ndim))
    rstd = 1.0 / np.sqrt(np.mean(x * x, axis=axes, keepdims=True) + np.float32(eps))
    return (x * rstd * gamma).astype(np.float32), rstd.astype(np.float32)


@pytest.mark.parametrize(
    "dtype,gtype", [(FLOAT16, FLOAT), (FLOAT16, FLOAT16), (BF16, BF16), (BF16, FLOAT), (FLOAT, FLOAT)]
)
def test_rms_norm(emu, rng, dtype, gtype):
    x, g = rand(rng, (3, 5, 8), dtype), rand(rng, (8,), gtype)
    xd, gd = DevArray(emu, x, dtype), DevArray(emu, g, gtype)
    y, rstd = DevArray(emu, np.zeros_like(x), dtype), DevArray(emu, np.zeros((3, 5, 1)), FLOAT)
    emu.run("RmsNorm", P(xd.t), P(gd.t), ctypes.c_double(1e-5), P(y.t), P(rstd.t))
    ref_y, ref_rstd = rms_ref(x, g, 1e-5, 1)
    close(rstd.read(), ref_rstd, FLOAT)
    close(y.read(), round_to(ref_y, dtype), dtype)


def test_rms_norm_two_normalised_dims_and_checks(emu, rng):
    x, g = rand(rng, (2, 3, 4), FLOAT), rand(rng, (3, 4), FLOAT)
    xd, gd = DevArray(emu, x, FLOAT), DevArray(emu, g, FLOAT)
    y, rstd = DevArray(emu, np.zeros_like(x), FLOAT), DevArray(emu, np.zeros((2, 1, 1)), FLOAT)
    emu.run("RmsNorm", P(xd.t), P(gd.t), ctypes.c_double(1e-6), P(y.t), P(rstd.t))
    ref_y, ref_rstd = rms_ref(x, g, 1e-6, 2)
    close(y.read(), ref_y, FLOAT)
    close(rstd.read(), ref_rstd, FLOAT)
    bad_rstd = DevArray(emu, np.zeros((2,)), FLOAT)
    refused(emu, "RmsNorm", P(xd.t), P(gd.t), ctypes.c_double(1e-6), P(y.t), P(bad_rstd.t), match="rstdOut has shape")
    refused(emu, "RmsNorm", P(xd.t), P(gd.t), ctypes.c_double(1e-6), P(y.t), None, code=ACLNN_ERR_PARAM_NULLPTR)
    xh = DevArray(emu, x, FLOAT16)
    gb = DevArray(emu, g, BF16)
    refused(
        emu,
        "RmsNorm",
        P(xh.t),
        P(gb.t),
        ctypes.c_double(1e-6),
        P(DevArray(emu, x, FLOAT16).t),
        P(rstd.t),
        match="gamma has dtype BF16",
    )


# ---------------------------------------------------------------------------------------------- AddRmsNorm
@pytest.mark.parametrize("dtype", [FLOAT16, BF16, FLOAT])
def test_add_rms_norm_a3_numerics(emu, rng, dtype):
    x1, x2, g = rand(rng, (64, 128), dtype, 3), rand(rng, (64, 128), dtype, 3), rand(rng, (128,), dtype)
    a, b, gd = DevArray(emu, x1, dtype), DevArray(emu, x2, dtype), DevArray(emu, g, dtype)
    y, rstd = DevArray(emu, np.zeros_like(x1), dtype), DevArray(emu, np.zeros((64, 1)), FLOAT)
    xo = DevArray(emu, np.zeros_like(x1), dtype)
    emu.run("AddRmsNorm", P(a.t), P(b.t), P(gd.t), ctypes.c_double(1e-6), P(y.t), P(rstd.t), P(xo.t))
    # A3 (Ascend910_93): x = x1 + x2 rounded to the dtype; x * rstd rounded before the gamma multiply
    x = round_to(x1 + x2, dtype)
    r = 1.0 / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + np.float32(1e-6))
    np.testing.assert_array_equal(xo.read(), x)
    close(rstd.read(), r, FLOAT)
    documented = round_to(round_to(x * r, dtype) * g, dtype)
    got = y.read()
    close(got, documented, dtype)
    if dtype != FLOAT:  # bit-exact on nearly every element (only the fp32 sum order differs) ...
        assert np.mean(got == documented) > 0.99
        # ... which tells the documented rounding from a single final rounding on these inputs
        assert np.mean(got == round_to(x * r * g, dtype)) < 0.9


def test_add_rms_norm_optional_outputs(emu, rng):
    x1, x2, g = rand(rng, (2, 8), FLOAT16), rand(rng, (2, 8), FLOAT16), rand(rng, (1, 8), FLOAT16)
    a, b, gd = DevArray(emu, x1, FLOAT16), DevArray(emu, x2, FLOAT16), DevArray(emu, g, FLOAT16)
    y = DevArray(emu, np.zeros_like(x1), FLOAT16)
    emu.run("AddRmsNorm", P(a.t), P(b.t), P(gd.t), ctypes.c_double(1e-6), P(y.t), None, None)  # doc table: [1, H] gamma
    x = round_to(x1 + x2, FLOAT16)
    r = 1.0 / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + np.float32(1e-6))
    close(y.read(), round_to(round_to(x * r, FLOAT16) * g, FLOAT16), FLOAT16)
    g1 = DevArray(emu, g[0], FLOAT16)
    refused(
        emu,
        "AddRmsNorm",
        P(a.t),
        P(b.t),
        P(g1.t),
        ctypes.c_double(1e-6),
        P(y.t),
        None,
        None,
        match="gamma must be [1, 8]",
    )
    rstd = DevArray(emu, np.zeros((2, 1)), FLOAT)
    refused(
        emu,
        "AddRmsNorm",
        P(a.t),
        P(b.t),
        P(g1.t),
        ctypes.c_double(1e-6),
        P(y.t),
        P(rstd.t),
        None,
        code=ACLNN_ERR_PARAM_NULLPTR,
    )
    gf = DevArray(emu, g, FLOAT)
    refused(
        emu,
        "AddRmsNorm",
        P(a.t),
        P(b.t),
        P(gf.t),
        ctypes.c_double(1e-6),
        P(y.t),
        None,
        None,
        match="gamma has dtype FLOAT",
    )


# ---------------------------------------------------------------------------------------------- Mm / Addmm
def mm_ref(a, b, dtype, bias=None, alpha=1.0, beta=1.0):
    acc = a.astype(np.float32) @ b.astype(np.float32)
    if bias is not None:
        acc = alpha * acc + beta * bias
    return round_to(acc, dtype)


def weight_view(emu, w, dtype):
    """An HF-style row-major [N, K] weight passed as the transposed [K, N] view, strides [1, K]."""
    n, k = w.shape
    return DevArray(emu, w, dtype, shape=[k, n], strides=[1, k], storage=[n, k])


@pytest.mark.parametrize("dtype", [FLOAT16, BF16, FLOAT])
def test_mm_with_transposed_weight_view(emu, rng, dtype):
    a, w = rand(rng, (5, 24), dtype), rand(rng, (40, 24), dtype)
    ad, wd = DevArray(emu, a, dtype), weight_view(emu, w, dtype)
    out = DevArray(emu, np.zeros((5, 40)), dtype)
    emu.run("Mm", P(ad.t), P(wd.t), P(out.t), ctypes.c_int8(1))
    close(out.read(), mm_ref(a, w.T, dtype), dtype, atol=1e-3)


def test_mm_offset_view_and_checks(emu, rng):
    buf = rand(rng, (4, 8), FLOAT16)
    a = DevArray(emu, buf, FLOAT16, shape=[2, 8], strides=[8, 1], offset=16, storage=[4, 8])  # rows 2..3
    b = rand(rng, (8, 3), FLOAT16)
    bd, out = DevArray(emu, b, FLOAT16), DevArray(emu, np.zeros((2, 3)), FLOAT16)
    emu.run("Mm", P(a.t), P(bd.t), P(out.t), ctypes.c_int8(0))
    close(out.read(), mm_ref(buf[2:], b, FLOAT16), FLOAT16, atol=1e-3)
    refused(emu, "Mm", P(bd.t), P(bd.t), P(out.t), ctypes.c_int8(0), match="inner dims")
    hb = DevArray(emu, b, BF16)
    refused(
        emu,
        "Mm",
        P(DevArray(emu, buf, BF16).t),
        P(hb.t),
        P(DevArray(emu, np.zeros((4, 3)), BF16).t),
        ctypes.c_int8(2),
        match="USE_FP16",
    )
    past = DevArray(emu, buf, FLOAT16, shape=[2, 8], strides=[8, 1], offset=24, storage=[4, 8])
    refused(emu, "Mm", P(past.t), P(bd.t), P(out.t), ctypes.c_int8(0), match="outside its storage")


@pytest.mark.parametrize("bias_shape,alpha,beta", [((40,), 1.0, 1.0), ((1, 40), 2.0, 0.5), ((5, 40), 1.0, 1.0)])
def test_addmm(emu, rng, bias_shape, alpha, beta):
    a, w, bias = rand(rng, (5, 24), FLOAT16), rand(rng, (40, 24), FLOAT16), rand(rng, bias_shape, FLOAT16)
    ad, wd, bd = DevArray(emu, a, FLOAT16), weight_view(emu, w, FLOAT16), DevArray(emu, bias, FLOAT16)
    out = DevArray(emu, np.zeros((5, 40)), FLOAT16)
    emu.run(
        "Addmm",
        P(bd.t),
        P(ad.t),
        P(wd.t),
        P(emu.scalar(beta, FLOAT)),
        P(emu.scalar(alpha, FLOAT)),
        P(out.t),
        ctypes.c_int8(0),
    )
    close(out.read(), mm_ref(a, w.T, FLOAT16, bias, alpha, beta), FLOAT16, atol=2e-3)


# ---------------------------------------------------------------------------------------------- NZ weights
def nd_to_nz(m: np.ndarray, c0: int = 16) -> np.ndarray:
    """FRACTAL_NZ of a row-major [R, C] matrix: [ceil(C/c0), ceil(R/16), 16, c0] (ops-nn aclnnMatmulWeightNz.md)."""
    r, c = m.shape
    rp, cp = -(-r // 16) * 16, -(-c // c0) * c0
    pad = np.zeros((rp, cp), m.dtype)
    pad[:r, :c] = m
    return pad.reshape(rp // 16, 16, cp // c0, c0).transpose(2, 0, 1, 3).copy()


@pytest.mark.parametrize("dtype", [FLOAT16, BF16])
@pytest.mark.parametrize("transposed", [True, False])
def test_matmul_weight_nz(emu, rng, dtype, transposed):
    m, k, n = 3, 24, 40
    a, w = rand(rng, (m, k), dtype), rand(rng, (n, k), dtype)  # HF [out, in]
    phys = w if transposed else np.ascontiguousarray(w.T)
    nz = nd_to_nz(phys)
    strides = [1, k] if transposed else [n, 1]
    wd = DevArray(emu, nz, dtype, shape=[k, n], strides=strides, fmt=FORMAT_NZ, storage=list(nz.shape))
    ad, out = DevArray(emu, a, dtype), DevArray(emu, np.zeros((m, n)), dtype)
    emu.run("MatmulWeightNz", P(ad.t), P(wd.t), P(out.t), ctypes.c_int8(0))
    close(out.read(), mm_ref(a, w.T, dtype), dtype, atol=1e-3)
    if transposed:  # ops-nn rewrites a transposed mat2's view to [N, K]: the descriptor cannot be passed again
        refused(emu, "MatmulWeightNz", P(ad.t), P(wd.t), P(out.t), ctypes.c_int8(0), match="mat2 view strides")
        wd = DevArray(emu, nz, dtype, shape=[k, n], strides=strides, fmt=FORMAT_NZ, storage=list(nz.shape))
    bias = rand(rng, (n,), dtype)
    bd, out2 = DevArray(emu, bias, dtype), DevArray(emu, np.zeros((m, n)), dtype)
    emu.run(
        "AddmmWeightNz",
        P(bd.t),
        P(ad.t),
        P(wd.t),
        P(emu.scalar(1.0, FLOAT)),
        P(emu.scalar(1.0, FLOAT)),
        P(out2.t),
        ctypes.c_int8(0),
    )
    close(out2.read(), mm_ref(a, w.T, dtype, bias), dtype, atol=2e-3)


def test_matmul_weight_nz_checks(emu, rng):
    w = rand(rng, (40, 24), FLOAT16)
    a, out = DevArray(emu, rand(rng, (3, 24), FLOAT16), FLOAT16), DevArray(emu, np.zeros((3, 40)), FLOAT16)
    span = DevArray(
        emu, w, FLOAT16, shape=[24, 40], strides=[1, 24], fmt=FORMAT_NZ, storage=[40 * 24]
    )  # llama.cpp-style span
    refused(emu, "MatmulWeightNz", P(a.t), P(span.t), P(out.t), ctypes.c_int8(0), match="needs 1536")
    nd = weight_view(emu, w, FLOAT16)
    refused(emu, "MatmulWeightNz", P(a.t), P(nd.t), P(out.t), ctypes.c_int8(0), match="must be FRACTAL_NZ")
    nz = nd_to_nz(w)
    wd = DevArray(emu, nz, FLOAT16, shape=[24, 40], strides=[1, 24], fmt=FORMAT_NZ, storage=list(nz.shape))
    refused(emu, "Mm", P(a.t), P(wd.t), P(out.t), ctypes.c_int8(0), match="FRACTAL_NZ is not supported")


# ---------------------------------------------------------------------------------------------- RotaryPositionEmbedding
def rope_ref(x, cos, sin, mode):
    if mode == 0:
        half = x.shape[-1] // 2
        rot = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    else:
        rot = np.empty_like(x)
        rot[..., 0::2], rot[..., 1::2] = -x[..., 1::2], x[..., 0::2]
    return x * cos + rot * sin


@pytest.mark.parametrize("mode", [0, 1])
@pytest.mark.parametrize("dtype", [FLOAT16, BF16, FLOAT])
def test_rope_on_the_qk_part_of_a_fused_qkv_buffer(emu, rng, mode, dtype):
    s, hq, hkv, d = 3, 4, 2, 8
    qkv = rand(rng, (s, (hq + 2 * hkv) * d), dtype)
    width = (hq + 2 * hkv) * d
    # x = q|k heads of every row, viewed [1, S, Hq+Hkv, D] with the row stride of the fused buffer
    x = DevArray(emu, qkv, dtype, shape=[1, s, hq + hkv, d], strides=[s * width, width, d, 1], storage=list(qkv.shape))
    ang = rng.uniform(0, 6, (s, d)).astype(np.float32)
    cos, sin = round_to(np.cos(ang), dtype).reshape(1, s, 1, d), round_to(np.sin(ang), dtype).reshape(1, s, 1, d)
    cd, sd = DevArray(emu, cos, dtype), DevArray(emu, sin, dtype)
    out = DevArray(emu, np.zeros((1, s, hq + hkv, d)), dtype)
    emu.run("RotaryPositionEmbedding", P(x.t), P(cd.t), P(sd.t), ctypes.c_int64(mode), P(out.t))
    xin = qkv[:, : (hq + hkv) * d].reshape(1, s, hq + hkv, d)
    close(out.read(), round_to(rope_ref(xin, cos, sin, mode), dtype), dtype, atol=1e-3)
    # in place on a contiguous decode row
    row = DevArray(emu, qkv[:1, : (hq + hkv) * d].reshape(1, 1, hq + hkv, d), dtype)
    c1, s1 = DevArray(emu, cos[:, :1], dtype), DevArray(emu, sin[:, :1], dtype)
    emu.run("RotaryPositionEmbedding", P(row.t), P(c1.t), P(s1.t), ctypes.c_int64(mode), P(row.t))
    close(row.read(), round_to(rope_ref(xin[:, :1], cos[:, :1], sin[:, :1], mode), dtype), dtype, atol=1e-3)


def test_rope_checks(emu, rng):
    x = DevArray(emu, rand(rng, (1, 2, 3, 8), FLOAT16), FLOAT16)
    c = DevArray(emu, rand(rng, (1, 2, 1, 8), FLOAT16), FLOAT16)
    out = DevArray(emu, np.zeros((1, 2, 3, 8)), FLOAT16)
    refused(emu, "RotaryPositionEmbedding", P(x.t), P(c.t), P(c.t), ctypes.c_int64(2), P(out.t), match="mode 2")
    strided_out = DevArray(
        emu, np.zeros((1, 2, 6, 8)), FLOAT16, shape=[1, 2, 3, 8], strides=[96, 48, 8, 1], storage=[1, 2, 6, 8]
    )
    refused(
        emu,
        "RotaryPositionEmbedding",
        P(x.t),
        P(c.t),
        P(c.t),
        ctypes.c_int64(0),
        P(strided_out.t),
        match="out must be contiguous",
    )
    c32 = DevArray(emu, rand(rng, (1, 2, 1, 8), FLOAT), FLOAT)
    refused(
        emu,
        "RotaryPositionEmbedding",
        P(x.t),
        P(c32.t),
        P(c32.t),
        ctypes.c_int64(0),
        P(out.t),
        match="cos has dtype FLOAT",
    )
    bad = DevArray(emu, rand(rng, (1, 2, 3, 8), FLOAT16), FLOAT16, shape=[1, 2, 3, 8])
    x2 = DevArray(emu, rand(rng, (2, 2, 3, 8), FLOAT16), FLOAT16)
    out2 = DevArray(emu, np.zeros((2, 2, 3, 8)), FLOAT16)
    refused(
        emu,
        "RotaryPositionEmbedding",
        P(x2.t),
        P(bad.t),
        P(bad.t),
        ctypes.c_int64(0),
        P(out2.t),
        match="not one of the documented",
    )


# ---------------------------------------------------------------------------------------------- InplaceIndexCopy
def test_inplace_index_copy_kv_write(emu, rng):
    cache = rand(rng, (6, 2, 4), FLOAT16)
    cd = DevArray(emu, cache, FLOAT16)
    pos = DevArray(emu, np.array([4]), INT64)
    row = rand(rng, (1, 2, 4), FLOAT16)
    rd = DevArray(emu, row, FLOAT16)
    emu.run("InplaceIndexCopy", P(cd.t), ctypes.c_int64(0), P(pos.t), P(rd.t))
    cache[4] = row[0]
    np.testing.assert_array_equal(cd.read(), cache)
    # dim 1 with two indices
    src = rand(rng, (6, 2, 4), FLOAT16)
    idx = DevArray(emu, np.array([1, 0]), INT32)
    sd = DevArray(emu, src, FLOAT16)
    emu.run("InplaceIndexCopy", P(cd.t), ctypes.c_int64(-2), P(idx.t), P(sd.t))
    cache[:, 1], cache[:, 0] = src[:, 0], src[:, 1]
    np.testing.assert_array_equal(cd.read(), cache)
    refused(emu, "InplaceIndexCopy", P(cd.t), ctypes.c_int64(0), P(idx.t), P(rd.t), match="source")
    far = DevArray(emu, np.array([6]), INT64)
    ws, ex = emu.phase1("InplaceIndexCopy", P(cd.t), ctypes.c_int64(0), P(far.t), P(rd.t))
    emu.phase2("InplaceIndexCopy", ws, ex)
    with pytest.raises(AclError, match="out of range"):
        emu.sync()


# ------------------------------------------------------------------------------- FusedInferAttentionScoreV4
def attention_ref(q, k, v, scale, masked):
    """q [N, S1, D], k/v [Nkv, S2, D], masked [S1, S2] bool (True = masked out); GQA by head groups."""
    group = q.shape[0] // k.shape[0]
    out = np.zeros_like(q)
    for n in range(q.shape[0]):
        s = (q[n] @ k[n // group].T) * scale
        s = np.where(masked, -np.inf, s)
        p = np.exp(s - s.max(axis=-1, keepdims=True))
        out[n] = (p / p.sum(axis=-1, keepdims=True)) @ v[n // group]
    return out


@pytest.mark.parametrize("dtype", [FLOAT16, BF16])
def test_fia_decode_bsh_gqa_with_mask_and_kv_length(emu, rng, dtype):
    n, nkv, d, s2, pos = 4, 2, 8, 16, 9
    q, k, v = rand(rng, (1, 1, n * d), dtype), rand(rng, (1, s2, nkv * d), dtype), rand(rng, (1, s2, nkv * d), dtype)
    qd, kd, vd = DevArray(emu, q, dtype), DevArray(emu, k, dtype), DevArray(emu, v, dtype)
    mask = np.arange(s2)[None, :] > pos  # 1 = masked out (positions after the current one)
    md = DevArray(emu, mask, BOOL)
    out, lse = DevArray(emu, np.zeros_like(q), dtype), DevArray(emu, np.zeros((1, n, 1, 1)), FLOAT)
    scale = 1 / np.sqrt(d)
    emu.run("FusedInferAttentionScoreV4", *fia_args(emu, qd, [kd], [vd], n, nkv, scale, "BSH", out, mask=md, lse=lse))
    qh = q.reshape(1, n, d).transpose(1, 0, 2)
    kh, vh = k.reshape(s2, nkv, d).transpose(1, 0, 2), v.reshape(s2, nkv, d).transpose(1, 0, 2)
    ref = attention_ref(qh, kh, vh, scale, mask)
    close(out.read().reshape(1, n, d).transpose(1, 0, 2), round_to(ref, dtype), dtype, atol=2e-3)
    scores = np.where(mask, -np.inf, np.einsum("nd,nsd->ns", qh[:, 0], np.repeat(kh, n // nkv, axis=0)) * scale)
    ref_lse = np.log(np.exp(scores - scores.max(-1, keepdims=True)).sum(-1)) + scores.max(-1)
    close(lse.read().reshape(n), ref_lse, FLOAT, atol=1e-4)
    # actualSeqLengthsKv instead of a mask: the same result for length pos + 1
    out2 = DevArray(emu, np.zeros_like(q), dtype)
    emu.run("FusedInferAttentionScoreV4", *fia_args(emu, qd, [kd], [vd], n, nkv, scale, "BSH", out2, kv_lens=[pos + 1]))
    np.testing.assert_array_equal(out2.read(), out.read())


def test_fia_prefill_bnsd_causal(emu, rng):
    n, d, s = 2, 16, 5
    q, k, v = (rand(rng, (1, n, s, d), FLOAT16) for _ in range(3))
    qd, kd, vd = (DevArray(emu, x, FLOAT16) for x in (q, k, v))
    causal = np.triu(np.ones((s, s), bool), 1)
    out = DevArray(emu, np.zeros_like(q), FLOAT16)
    emu.run(
        "FusedInferAttentionScoreV4",
        *fia_args(emu, qd, [kd], [vd], n, n, 0.25, "BNSD", out, mask=DevArray(emu, causal, BOOL)),
    )
    close(out.read()[0], round_to(attention_ref(q[0], k[0], v[0], 0.25, causal), FLOAT16), FLOAT16, atol=2e-3)
    # sparseMode 2 (left-up causal) with the optimised 2048 x 2048 mask gives the same
    opt = DevArray(emu, np.triu(np.ones((2048, 2048), bool), 1), BOOL)
    out2 = DevArray(emu, np.zeros_like(q), FLOAT16)
    emu.run("FusedInferAttentionScoreV4", *fia_args(emu, qd, [kd], [vd], n, n, 0.25, "BNSD", out2, mask=opt, sparse=2))
    np.testing.assert_array_equal(out2.read(), out.read())
    # BNSD_BSND: BNSD in, BSND out
    out3 = DevArray(emu, np.zeros((1, s, n, d)), FLOAT16)
    emu.run(
        "FusedInferAttentionScoreV4",
        *fia_args(emu, qd, [kd], [vd], n, n, 0.25, "BNSD_BSND", out3, mask=DevArray(emu, causal, BOOL)),
    )
    np.testing.assert_array_equal(out3.read(), out.read().transpose(0, 2, 1, 3))


def test_fia_checks(emu, rng):
    q = DevArray(emu, rand(rng, (1, 1, 16), FLOAT16), FLOAT16)
    k = DevArray(emu, rand(rng, (1, 8, 16), FLOAT16), FLOAT16)
    out = DevArray(emu, np.zeros((1, 1, 16)), FLOAT16)
    refused(emu, "FusedInferAttentionScoreV4", *fia_args(emu, q, [k], [k], 2, 2, 1.0, "TND", out), match="not emulated")
    refused(
        emu,
        "FusedInferAttentionScoreV4",
        *fia_args(emu, q, [k], [k], 2, 2, 1.0, "BSH", out, kv_lens=[9]),
        match="outside [0, 8]",
    )
    refused(
        emu,
        "FusedInferAttentionScoreV4",
        *fia_args(emu, q, [k], [k], 4, 3, 1.0, "BSH", out),
        match="multiple of numKeyValueHeads",
    )
    q32 = DevArray(emu, rand(rng, (1, 1, 16), FLOAT), FLOAT)
    refused(
        emu,
        "FusedInferAttentionScoreV4",
        *fia_args(emu, q32, [k], [k], 2, 2, 1.0, "BSH", out),
        match="query has dtype FLOAT",
    )
    strided = DevArray(
        emu, rand(rng, (1, 16, 16), FLOAT16), FLOAT16, shape=[1, 8, 16], strides=[256, 32, 1], storage=[1, 16, 16]
    )
    refused(
        emu,
        "FusedInferAttentionScoreV4",
        *fia_args(emu, q, [strided], [strided], 2, 2, 1.0, "BSH", out),
        match="must be contiguous",
    )
    wrong_mask = DevArray(emu, np.zeros((1, 4)), BOOL)
    refused(
        emu,
        "FusedInferAttentionScoreV4",
        *fia_args(emu, q, [k], [k], 2, 2, 1.0, "BSH", out, mask=wrong_mask),
        match="attenMask shape",
    )


# ---------------------------------------------------------------------------------------------- SwiGlu
@pytest.mark.parametrize("dtype", [FLOAT16, BF16, FLOAT])
def test_swiglu_gate_is_the_first_half(emu, rng, dtype):
    x = rand(rng, (3, 10), dtype, 2)
    xd, out = DevArray(emu, x, dtype), DevArray(emu, np.zeros((3, 5)), dtype)
    emu.run("SwiGlu", P(xd.t), ctypes.c_int64(-1), P(out.t))
    a, b = x[:, :5], x[:, 5:]
    close(out.read(), round_to(a / (1 + np.exp(-a)) * b, dtype), dtype, atol=1e-3)


def test_swiglu_checks(emu, rng):
    odd = DevArray(emu, rand(rng, (2, 7), FLOAT16), FLOAT16)
    refused(
        emu, "SwiGlu", P(odd.t), ctypes.c_int64(-1), P(DevArray(emu, np.zeros((2, 3)), FLOAT16).t), match="must be even"
    )
    strided = DevArray(emu, rand(rng, (4, 8), FLOAT16), FLOAT16, shape=[2, 8], strides=[16, 1], storage=[4, 8])
    refused(
        emu,
        "SwiGlu",
        P(strided.t),
        ctypes.c_int64(-1),
        P(DevArray(emu, np.zeros((2, 4)), FLOAT16).t),
        match="contiguous",
    )


# ---------------------------------------------------------------------------------------------- ArgMax
@pytest.mark.parametrize("otype", [INT32, INT64])
def test_argmax_first_maximum(emu, rng, otype):
    x = rand(rng, (2, 50), FLOAT16)
    x[0, 7] = x[0, 30] = 9.0  # a tie: the first index wins
    xd = DevArray(emu, x, FLOAT16)
    out = DevArray(emu, np.zeros((2,)), otype)
    emu.run("ArgMax", P(xd.t), ctypes.c_int64(-1), ctypes.c_bool(False), P(out.t))
    np.testing.assert_array_equal(out.read(), np.argmax(x, axis=-1))
    keep = DevArray(emu, np.zeros((1, 50)), otype)
    emu.run("ArgMax", P(xd.t), ctypes.c_int64(0), ctypes.c_bool(True), P(keep.t))
    np.testing.assert_array_equal(keep.read()[0], np.argmax(x, axis=0))
    refused(
        emu,
        "ArgMax",
        P(xd.t),
        ctypes.c_int64(-1),
        ctypes.c_bool(False),
        P(DevArray(emu, np.zeros(2), FLOAT16).t),
        match="out has dtype",
    )


def test_argmax_points_at_a_nan_like_numpy(emu, rng):
    """Huawei's golden is np.argmax: the first NaN is the maximum (the backend reads the logit there to see NaNs)."""
    x = rand(rng, (3, 40), FLOAT16)
    x[0, 5] = x[0, 9] = np.nan
    x[1, 0] = np.nan
    xd = DevArray(emu, x, FLOAT16)
    out = DevArray(emu, np.zeros((3,)), INT32)
    emu.run("ArgMax", P(xd.t), ctypes.c_int64(-1), ctypes.c_bool(False), P(out.t))
    np.testing.assert_array_equal(out.read(), np.argmax(x, axis=-1))
    assert list(out.read()[:2]) == [5, 0]


# ---------------------------------------------------------------------------------------------- InplaceAdds / GtTensor
def test_inplace_adds(emu):
    pos = DevArray(emu, np.array([41]), INT32)
    emu.run("InplaceAdds", P(pos.t), P(emu.scalar(1, INT64)), P(emu.scalar(1, INT32)))
    assert pos.read()[0] == 42
    x = DevArray(emu, np.array([1.0, -2.0]), FLOAT16)
    emu.run("InplaceAdds", P(x.t), P(emu.scalar(0.25, FLOAT)), P(emu.scalar(2.0, FLOAT)))
    np.testing.assert_array_equal(x.read(), [1.5, -1.5])
    refused(emu, "InplaceAdds", P(pos.t), P(emu.scalar(0.5, FLOAT)), P(emu.scalar(1, INT32)), match="fractional")


def test_gt_tensor_attention_mask(emu):
    arange = DevArray(emu, np.arange(8).reshape(1, 8), INT64)
    pos = DevArray(emu, np.array([5]), INT64)
    out = DevArray(emu, np.zeros((1, 8)), BOOL)
    emu.run("GtTensor", P(arange.t), P(pos.t), P(out.t))
    np.testing.assert_array_equal(out.read(), np.arange(8).reshape(1, 8) > 5)
    a = DevArray(emu, np.array([[0.5], [2.0]]), FLOAT16)
    b = DevArray(emu, np.array([1.0, 0.25, 3.0]), FLOAT)
    o2 = DevArray(emu, np.zeros((2, 3)), BOOL)
    emu.run("GtTensor", P(a.t), P(b.t), P(o2.t))
    np.testing.assert_array_equal(o2.read(), np.array([[0.5], [2.0]]) > np.array([1.0, 0.25, 3.0]))
    refused(emu, "GtTensor", P(a.t), P(DevArray(emu, np.zeros((3, 2)), FLOAT).t), P(o2.t), match="do not broadcast")


# ---------------------------------------------------------------------------------------------- InplaceCopy / Cast
def test_inplace_copy_strided_broadcast_and_convert(emu, rng):
    dst = np.zeros((4, 6), np.float32)
    dd = DevArray(emu, dst, FLOAT16, shape=[4, 3], strides=[6, 2], storage=[4, 6])  # every other column
    src = rng.standard_normal(3).astype(np.float32)
    sd = DevArray(emu, src, FLOAT)
    emu.run("InplaceCopy", P(dd.t), P(sd.t))
    dst[:, ::2] = round_to(src, FLOAT16)
    np.testing.assert_array_equal(dd.read(), dst)
    refused(emu, "InplaceCopy", P(sd.t), P(dd.t), match="does not broadcast")


@pytest.mark.parametrize(
    "src,dst", [(FLOAT, FLOAT16), (FLOAT, BF16), (FLOAT16, FLOAT), (FLOAT, INT32), (INT32, FLOAT), (FLOAT, BOOL)]
)
def test_cast(emu, src, dst):
    x = np.array(
        [0.1, -2.7, 65504.0, 1e-8, 3.0, 0.0, 3.1e-5, -65519.0], np.float32
    )  # fp16 subnormal and rounding edges
    x = round_to(x, src) if src != INT32 else x.astype(np.int32)
    xd, out = DevArray(emu, x, src), DevArray(emu, np.zeros(8), dst)
    emu.run("Cast", P(xd.t), ctypes.c_int(dst), P(out.t))
    if dst in (FLOAT16, BF16, FLOAT):
        np.testing.assert_array_equal(out.read(), round_to(np.asarray(x, np.float32), dst))
    else:
        np.testing.assert_array_equal(out.read(), np.asarray(x).astype(np.int32 if dst == INT32 else np.bool_))


# ---------------------------------------------------------------------------------------------- Topk
@pytest.mark.parametrize("largest", [True, False])
def test_topk(emu, rng, largest):
    x = rand(rng, (2, 12), FLOAT)
    x[1, 3] = x[1, 8] = 5.0 if largest else -5.0  # a tie keeps the lower index first
    xd = DevArray(emu, x, FLOAT)
    vals, idx = DevArray(emu, np.zeros((2, 4)), FLOAT), DevArray(emu, np.zeros((2, 4)), INT64)
    emu.run(
        "Topk",
        P(xd.t),
        ctypes.c_int64(4),
        ctypes.c_int64(-1),
        ctypes.c_bool(largest),
        ctypes.c_bool(True),
        P(vals.t),
        P(idx.t),
    )
    order = np.argsort(-x if largest else x, axis=-1, kind="stable")[:, :4]
    np.testing.assert_array_equal(idx.read(), order)
    np.testing.assert_array_equal(vals.read(), np.take_along_axis(x, order, -1))
    refused(
        emu,
        "Topk",
        P(xd.t),
        ctypes.c_int64(13),
        ctypes.c_int64(-1),
        ctypes.c_bool(True),
        ctypes.c_bool(True),
        P(vals.t),
        P(idx.t),
        match="k 13",
    )
