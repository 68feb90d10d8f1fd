/* libopapi_nn.so of the emulator: the ops-nn operators the decode step needs, as plain reference loops written from
 * the hicann/ops-nn documentation (docs/aclnn*.md): Embedding, RmsNorm, AddRmsNorm, Mm, Addmm, MatmulWeightNz,
 * AddmmWeightNz, SwiGlu, InplaceIndexCopy, Topk. Numerics follow the A3 (Ascend910_93) documentation: matrix
 * products accumulate in fp32 and round once; AddRmsNorm rounds x1 + x2 and x * rstd to the input dtype. */
#include "ops_common.h"

#include <algorithm>
#include <cmath>
#include <numeric>

using namespace emu;

static const std::initializer_list<aclDataType> kFloat3 = {ACL_FLOAT, ACL_FLOAT16, ACL_BF16};

/* ------------------------------------------------------------------ Embedding: out = weight[indices] */
EMU_EXPORT aclnnStatus aclnnEmbeddingGetWorkspaceSize(const aclTensor *weight, const aclTensor *indices,
                                                      const aclTensor *out, uint64_t *workspaceSize,
                                                      aclOpExecutor **executor) {
    const char *op = "aclnnEmbedding";
    EMU_CHECK(need_tensor(op, "weight", weight,
                          {ACL_FLOAT, ACL_FLOAT16, ACL_BF16, ACL_INT64, ACL_INT32, ACL_INT16, ACL_INT8, ACL_UINT8,
                           ACL_BOOL, ACL_DOUBLE}));
    EMU_CHECK(need_tensor(op, "indices", indices, {ACL_INT32, ACL_INT64}));
    EMU_CHECK(need_tensor(op, "out", out, {D(weight).dtype}));
    if (D(weight).view.size() != 2) return bad(op, "weight must be 2-D, got %s", dims_str(D(weight).view).c_str());
    Dims expect = D(indices).view;
    expect.push_back(D(weight).view[1]);
    EMU_CHECK(need_shape(op, "out", out, expect));
    int64_t rows = D(weight).view[0];
    return make_executor(
        op, {weight, indices}, {out}, 0,
        [rows](const std::vector<TV> &t, char *, std::string &err) {
            const TV &w = t[0], &idx = t[1], &o = t[2];
            int64_t n = idx.numel(), h = w.d.view[1];
            for (int64_t i = 0; i < n; i++) {
                int64_t r = idx.geti(idx.elem(i));
                if (r < 0 || r >= rows) {
                    err = "index " + std::to_string(r) + " out of range [0, " + std::to_string(rows) + ")";
                    return (int)E_RT_AICORE_EXCEPTION;
                }
                for (int64_t j = 0; j < h; j++) { o.copy_elem(o.elem(i * h + j), w, w.elem(r * h + j)); }
            }
            return 0;
        },
        workspaceSize, executor);
}
EMU_PHASE2(Embedding)

/* ------------------------------------------------------------------ RmsNorm / AddRmsNorm */

/* rstd shape: x's dims with the trailing gamma.ndim dims set to 1 */
static int check_norm_shapes(const char *op, const aclTensor *x, const aclTensor *gamma, const aclTensor *rstd,
                             bool row_gamma_ok, int64_t *rows, int64_t *cols) {
    const Dims &xd = D(x).view, &gd = D(gamma).view;
    Dims g = gd;
    /* AddRmsNorm's [1, last dim] gamma (its doc's combinations with a null rstd) normalises over the last dim */
    if (row_gamma_ok && g.size() == 2 && g[0] == 1 && g[1] == xd.back()) g = {g[1]};
    if (g.size() > xd.size() || !std::equal(g.begin(), g.end(), xd.end() - g.size()))
        return bad(op, "gamma %s must equal the trailing dims of x %s", dims_str(gd).c_str(), dims_str(xd).c_str());
    *cols = numel(g);
    *rows = *cols ? numel(xd) / *cols : 0;
    if (rstd) {
        Dims r = xd;
        for (size_t i = xd.size() - g.size(); i < xd.size(); i++) r[i] = 1;
        EMU_CHECK(need_shape(op, "rstdOut", rstd, r));
    }
    return 0;
}

EMU_EXPORT aclnnStatus aclnnRmsNormGetWorkspaceSize(const aclTensor *x, const aclTensor *gamma, double epsilon,
                                                    const aclTensor *yOut, const aclTensor *rstdOut,
                                                    uint64_t *workspaceSize, aclOpExecutor **executor) {
    const char *op = "aclnnRmsNorm";
    EMU_CHECK(need_tensor(op, "x", x, kFloat3));
    aclDataType xt = D(x).dtype;
    if (xt == ACL_FLOAT)
        EMU_CHECK(need_tensor(op, "gamma", gamma, {ACL_FLOAT}));
    else
        EMU_CHECK(need_tensor(op, "gamma", gamma, {xt, ACL_FLOAT}));
    EMU_CHECK(need_tensor(op, "yOut", yOut, {xt}));
    EMU_CHECK(need_tensor(op, "rstdOut", rstdOut, {ACL_FLOAT}));
    EMU_CHECK(need_shape(op, "yOut", yOut, D(x).view));
    int64_t rows, cols;
    EMU_CHECK(check_norm_shapes(op, x, gamma, rstdOut, false, &rows, &cols));
    float eps = (float)epsilon;
    return make_executor(
        op, {x, gamma}, {yOut, rstdOut}, 0,
        [=](const std::vector<TV> &t, char *, std::string &) {
            std::vector<float> xv = t[0].load(), g = t[1].load(), y(xv.size()), rstd((size_t)rows);
            for (int64_t r = 0; r < rows; r++) { /* fp32: y = x * rstd * gamma (ops-nn rms_norm golden) */
                float ss = 0.0f;
                for (int64_t c = 0; c < cols; c++) ss += xv[r * cols + c] * xv[r * cols + c];
                rstd[r] = 1.0f / std::sqrt(ss / (float)cols + eps);
                for (int64_t c = 0; c < cols; c++) y[r * cols + c] = xv[r * cols + c] * rstd[r] * g[c];
            }
            t[2].store(y);
            t[3].store(rstd);
            return 0;
        },
        workspaceSize, executor);
}
EMU_PHASE2(RmsNorm)

EMU_EXPORT aclnnStatus aclnnAddRmsNormGetWorkspaceSize(const aclTensor *x1, const aclTensor *x2, const aclTensor *gamma,
                                                       double epsilon, aclTensor *yOut, aclTensor *rstdOut,
                                                       aclTensor *xOut, uint64_t *workspaceSize,
                                                       aclOpExecutor **executor) {
    const char *op = "aclnnAddRmsNorm";
    EMU_CHECK(need_tensor(op, "x1", x1, kFloat3));
    aclDataType xt = D(x1).dtype;
    EMU_CHECK(need_tensor(op, "x2", x2, {xt}));
    EMU_CHECK(need_tensor(op, "gamma", gamma, {xt}));
    EMU_CHECK(need_tensor(op, "yOut", yOut, {xt}));
    EMU_CHECK(need_shape(op, "x2", x2, D(x1).view));
    EMU_CHECK(need_shape(op, "yOut", yOut, D(x1).view));
    if (epsilon < 0) return bad(op, "epsilon must be >= 0");
    if (rstdOut && !xOut) return fail(NN_ERR_PARAM_NULLPTR, "%s: xOut is null while rstdOut is given", op);
    if (rstdOut) EMU_CHECK(need_tensor(op, "rstdOut", rstdOut, {ACL_FLOAT}));
    if (xOut) {
        EMU_CHECK(need_tensor(op, "xOut", xOut, {xt}));
        EMU_CHECK(need_shape(op, "xOut", xOut, D(x1).view));
    }
    if ((!rstdOut || !xOut) && xt == ACL_FLOAT) return bad(op, "FLOAT32 needs both rstdOut and xOut");
    if (!rstdOut && !(D(gamma).view.size() == 2 && D(gamma).view[0] == 1 && D(gamma).view[1] == D(x1).view.back()))
        return bad(op, "with rstdOut null, gamma must be [1, %lld] (doc combination table)",
                   (long long)D(x1).view.back());
    int64_t rows, cols;
    EMU_CHECK(check_norm_shapes(op, x1, gamma, rstdOut, rstdOut == nullptr, &rows, &cols));
    float eps = (float)epsilon;
    return make_executor(
        op, {x1, x2, gamma}, {yOut, rstdOut, xOut}, 0,
        [=](const std::vector<TV> &t, char *, std::string &) {
            std::vector<float> a = t[0].load(), b = t[1].load(), g = t[2].load(), x(a.size()), y(a.size()),
                               rstd((size_t)rows);
            /* A3: x = x1 + x2 rounded to the input dtype; x * rstd rounded before the gamma multiply (ops-nn golden) */
            for (size_t i = 0; i < a.size(); i++) x[i] = round_to(xt, a[i] + b[i]);
            for (int64_t r = 0; r < rows; r++) {
                float ss = 0.0f;
                for (int64_t c = 0; c < cols; c++) ss += x[r * cols + c] * x[r * cols + c];
                rstd[r] = 1.0f / std::sqrt(ss / (float)cols + eps);
                for (int64_t c = 0; c < cols; c++) y[r * cols + c] = round_to(xt, x[r * cols + c] * rstd[r]) * g[c];
            }
            t[3].store(y);
            if (t[4].base) t[4].store(rstd);
            if (t[5].base) t[5].store(x);
            return 0;
        },
        workspaceSize, executor);
}
EMU_PHASE2(AddRmsNorm)

/* ------------------------------------------------------------------ matrix products */

static int check_cube_math(const char *op, aclDataType dt, int8_t cubeMathType) {
    if (cubeMathType < 0 || cubeMathType > 4) return bad(op, "cubeMathType %d is not one of 0..4", (int)cubeMathType);
    if (dt == ACL_BF16 && cubeMathType == 2)
        return bad(op, "cubeMathType USE_FP16 (2) is not allowed for BFLOAT16 inputs");
    return 0;
}

/* mat2 in FRACTAL_NZ: storage must hold exactly the padded NZ shape of its physical row-major matrix */
static int check_nz_weight(const char *op, const aclTensor *mat2) {
    const TensorDesc &d = D(mat2);
    if (d.format != ACL_FORMAT_FRACTAL_NZ)
        return bad(op, "mat2 must be FRACTAL_NZ (format 29), got format %d", (int)d.format);
    if (d.dtype != ACL_FLOAT16 && d.dtype != ACL_BF16) return bad(op, "FRACTAL_NZ mat2 must be FLOAT16 or BFLOAT16");
    if (d.offset != 0) return bad(op, "FRACTAL_NZ mat2 must have offset 0");
    int64_t K = d.view[0], N = d.view[1];
    bool transposed = d.strides[0] == 1 && d.strides[1] == K && K != 1;
    bool plain = d.strides[0] == N && d.strides[1] == 1;
    if (!transposed && !plain) return bad(op, "FRACTAL_NZ mat2 view strides must be [N, 1] or the transposed [1, K]");
    int64_t R = transposed ? N : K, C = transposed ? K : N;
    int64_t need = (C + 15) / 16 * ((R + 15) / 16) * 16 * 16;
    if (numel(d.storage) != need)
        return bad(op,
                   "FRACTAL_NZ mat2 storage %s holds %lld elements; the NZ shape [%lld, %lld, 16, 16] of the physical "
                   "[%lld, %lld] needs %lld",
                   dims_str(d.storage).c_str(), (long long)numel(d.storage), (long long)((C + 15) / 16),
                   (long long)((R + 15) / 16), (long long)R, (long long)C, (long long)need);
    return 0;
}

/* Mm / Addmm / MatmulWeightNz / AddmmWeightNz: self|mat1 [M,K] @ mat2 [K,N] (+ bias), out [M,N] */
static int matmul_phase1(const char *op, const aclTensor *bias, const aclTensor *mat1, const aclTensor *mat2,
                         const aclScalar *beta, const aclScalar *alpha, aclTensor *out, int8_t cubeMathType, bool nz,
                         uint64_t *workspaceSize, aclOpExecutor **executor) {
    EMU_CHECK(need_tensor(op, "self/mat1", mat1, kFloat3));
    aclDataType dt = D(mat1).dtype;
    EMU_CHECK(need_tensor(op, "mat2", mat2, {dt}, nz));
    EMU_CHECK(need_tensor(op, "out", out, {dt}));
    if (nz) EMU_CHECK(check_nz_weight(op, mat2));
    EMU_CHECK(check_cube_math(op, dt, cubeMathType));
    const Dims &a = D(mat1).view, &b = D(mat2).view;
    if (a.size() != 2 || b.size() != 2)
        return bad(op, "both matrices must be 2-D, got %s and %s", dims_str(a).c_str(), dims_str(b).c_str());
    if (a[1] != b[0]) return bad(op, "inner dims differ: %s @ %s", dims_str(a).c_str(), dims_str(b).c_str());
    EMU_CHECK(need_shape(op, "out", out, {a[0], b[1]}));
    float fa = 1.0f, fb = 0.0f;
    if (bias) {
        EMU_CHECK(need_tensor(op, "self (bias)", bias, {dt}));
        Dims bc;
        if (D(bias).view.size() > 2 || !broadcast_shape(D(bias).view, {a[0], b[1]}, &bc) || bc != Dims{a[0], b[1]})
            return bad(op, "bias %s does not broadcast to [%lld, %lld]", dims_str(D(bias).view).c_str(),
                       (long long)a[0], (long long)b[1]);
        double v;
        if (!scalar_value(alpha, &v, nullptr) || (fa = (float)v, !scalar_value(beta, &v, nullptr)))
            return fail(NN_ERR_PARAM_NULLPTR, "%s: alpha and beta are required", op);
        fb = (float)v;
    }
    uint64_t ws = (uint64_t)(a[0] * b[1]) * 4; /* fp32 accumulators */
    return make_executor(
        op, {bias, mat1, mat2}, {out}, ws,
        [=](const std::vector<TV> &t, char *w, std::string &) {
            return matmul_kernel(t[1], t[2], t[0].base ? &t[0] : nullptr, fa, fb, t[3], w);
        },
        workspaceSize, executor);
}

EMU_EXPORT aclnnStatus aclnnMmGetWorkspaceSize(const aclTensor *self, const aclTensor *mat2, aclTensor *out,
                                               int8_t cubeMathType, uint64_t *workspaceSize, aclOpExecutor **executor) {
    return matmul_phase1("aclnnMm", nullptr, self, mat2, nullptr, nullptr, out, cubeMathType, false, workspaceSize,
                         executor);
}
EMU_PHASE2(Mm)

EMU_EXPORT aclnnStatus aclnnAddmmGetWorkspaceSize(const aclTensor *self, const aclTensor *mat1, const aclTensor *mat2,
                                                  const aclScalar *beta, const aclScalar *alpha, aclTensor *out,
                                                  int8_t cubeMathType, uint64_t *workspaceSize,
                                                  aclOpExecutor **executor) {
    if (!self) return fail(NN_ERR_PARAM_NULLPTR, "aclnnAddmm: self is null");
    return matmul_phase1("aclnnAddmm", self, mat1, mat2, beta, alpha, out, cubeMathType, false, workspaceSize,
                         executor);
}
EMU_PHASE2(Addmm)

EMU_EXPORT aclnnStatus aclnnMatmulWeightNzGetWorkspaceSize(const aclTensor *self, const aclTensor *mat2, aclTensor *out,
                                                           int8_t cubeMathType, uint64_t *workspaceSize,
                                                           aclOpExecutor **executor) {
    aclnnStatus rc = matmul_phase1("aclnnMatmulWeightNz", nullptr, self, mat2, nullptr, nullptr, out, cubeMathType,
                                   true, workspaceSize, executor);
    /* As ops-nn's aclnn_matmul.cpp does (SetViewShape(SwapLastTwoDimValue(...)) through a const_cast): a transposed
     * mat2 view [K, N] (strides {1, K}) leaves this call as [N, K], so a caller that passes the same descriptor
     * again is refused (K differs) unless the matrix is square. The executor keeps its own frozen copy. */
    TensorDesc &w = const_cast<TensorDesc &>(D(mat2));
    if (rc == 0 && w.view.size() == 2 && w.strides.size() == 2 && w.strides[0] == 1 && w.strides[1] == w.view[0])
        std::swap(w.view[0], w.view[1]);
    return rc;
}
EMU_PHASE2(MatmulWeightNz)

EMU_EXPORT aclnnStatus aclnnAddmmWeightNzGetWorkspaceSize(const aclTensor *self, const aclTensor *mat1,
                                                          const aclTensor *mat2, const aclScalar *beta,
                                                          const aclScalar *alpha, aclTensor *out, int8_t cubeMathType,
                                                          uint64_t *workspaceSize, aclOpExecutor **executor) {
    if (!self) return fail(NN_ERR_PARAM_NULLPTR, "aclnnAddmmWeightNz: self is null");
    return matmul_phase1("aclnnAddmmWeightNz", self, mat1, mat2, beta, alpha, out, cubeMathType, true, workspaceSize,
                         executor);
}
EMU_PHASE2(AddmmWeightNz)

/* ------------------------------------------------------------------ SwiGlu: out = silu(first half) * second half */
EMU_EXPORT aclnnStatus aclnnSwiGluGetWorkspaceSize(const aclTensor *x, int64_t dim, const aclTensor *out,
                                                   uint64_t *workspaceSize, aclOpExecutor **executor) {
    const char *op = "aclnnSwiGlu";
    EMU_CHECK(need_tensor(op, "x", x, kFloat3));
    EMU_CHECK(need_tensor(op, "out", out, {D(x).dtype}));
    EMU_CHECK(need_contiguous(op, "x", x));
    Dims xd = D(x).view;
    int64_t d = norm_dim(dim, xd.size());
    if (d < 0) return bad(op, "dim %lld out of range for %s", (long long)dim, dims_str(xd).c_str());
    if (xd[d] % 2) return bad(op, "x's size along dim %lld must be even, got %lld", (long long)dim, (long long)xd[d]);
    Dims od = xd;
    od[d] /= 2;
    EMU_CHECK(need_shape(op, "out", out, od));
    int64_t outer = 1, inner = 1, half = od[d];
    for (int64_t i = 0; i < d; i++) outer *= xd[i];
    for (size_t i = (size_t)d + 1; i < xd.size(); i++) inner *= xd[i];
    return make_executor(
        op, {x}, {out}, 0,
        [=](const std::vector<TV> &t, char *, std::string &) {
            std::vector<float> xv = t[0].load(), y((size_t)(outer * half * inner));
            for (int64_t o = 0; o < outer; o++)
                for (int64_t h = 0; h < half; h++)
                    for (int64_t i = 0; i < inner; i++) {
                        float a = xv[(o * 2 * half + h) * inner + i], b = xv[(o * 2 * half + half + h) * inner + i];
                        y[(o * half + h) * inner + i] = a / (1.0f + std::exp(-a)) * b;
                    }
            t[1].store(y);
            return 0;
        },
        workspaceSize, executor);
}
EMU_PHASE2(SwiGlu)

/* ------------------------------------------------------------------ InplaceIndexCopy: selfRef.index_copy_(dim, index,
 * source) */
EMU_EXPORT aclnnStatus aclnnInplaceIndexCopyGetWorkspaceSize(aclTensor *selfRef, int64_t dim, const aclTensor *index,
                                                             const aclTensor *source, uint64_t *workspaceSize,
                                                             aclOpExecutor **executor) {
    const char *op = "aclnnInplaceIndexCopy";
    EMU_CHECK(need_tensor(op, "selfRef", selfRef,
                          {ACL_FLOAT, ACL_BF16, ACL_FLOAT16, ACL_INT32, ACL_INT64, ACL_INT16, ACL_INT8, ACL_UINT8,
                           ACL_DOUBLE, ACL_BOOL}));
    EMU_CHECK(need_tensor(op, "index", index, {ACL_INT32, ACL_INT64}));
    EMU_CHECK(need_tensor(op, "source", source, {D(selfRef).dtype}));
    const Dims &sd = D(selfRef).view, &src = D(source).view;
    int64_t d = norm_dim(dim, sd.size());
    if (d < 0) return bad(op, "dim %lld out of range for %s", (long long)dim, dims_str(sd).c_str());
    if (D(index).view.size() > 1) return bad(op, "index must be 0-D or 1-D, got %s", dims_str(D(index).view).c_str());
    int64_t n = numel(D(index).view);
    Dims expect = sd;
    expect[d] = n;
    if (src != expect)
        return bad(op, "source %s must be selfRef %s with dim %lld of size %lld (index elements)",
                   dims_str(src).c_str(), dims_str(sd).c_str(), (long long)dim, (long long)n);
    int64_t outer = 1, inner = 1, size = sd[d];
    for (int64_t i = 0; i < d; i++) outer *= sd[i];
    for (size_t i = (size_t)d + 1; i < sd.size(); i++) inner *= sd[i];
    return make_executor(
        op, {selfRef, index, source}, {}, 0,
        [=](const std::vector<TV> &t, char *, std::string &err) {
            const TV &self = t[0], &idx = t[1], &s = t[2];
            for (int64_t j = 0; j < n; j++) {
                int64_t k = idx.geti(idx.elem(j));
                if (k < 0) k += size;
                if (k < 0 || k >= size) {
                    err = "index " + std::to_string(idx.geti(idx.elem(j))) + " out of range for size " +
                          std::to_string(size);
                    return (int)E_RT_AICORE_EXCEPTION;
                }
                for (int64_t o = 0; o < outer; o++)
                    for (int64_t i = 0; i < inner; i++) {
                        self.copy_elem(self.elem((o * size + k) * inner + i), s, s.elem((o * n + j) * inner + i));
                    }
            }
            return 0;
        },
        workspaceSize, executor);
}
EMU_PHASE2(InplaceIndexCopy)

/* ------------------------------------------------------------------ Topk: k extreme values along dim, sorted, with
 * indices */
EMU_EXPORT aclnnStatus aclnnTopkGetWorkspaceSize(const aclTensor *self, int64_t k, int64_t dim, bool largest,
                                                 bool sorted, aclTensor *valuesOut, aclTensor *indicesOut,
                                                 uint64_t *workspaceSize, aclOpExecutor **executor) {
    const char *op = "aclnnTopk";
    EMU_CHECK(need_tensor(
        op, "self", self,
        {ACL_INT8, ACL_UINT8, ACL_INT16, ACL_INT32, ACL_INT64, ACL_FLOAT16, ACL_FLOAT, ACL_DOUBLE, ACL_BF16}));
    EMU_CHECK(need_tensor(op, "valuesOut", valuesOut, {D(self).dtype}));
    EMU_CHECK(need_tensor(op, "indicesOut", indicesOut, {ACL_INT64, ACL_INT32}));
    const Dims &sd = D(self).view;
    int64_t d = norm_dim(dim, sd.size());
    if (d < 0) return bad(op, "dim %lld out of range for %s", (long long)dim, dims_str(sd).c_str());
    if (k < 0 || k > sd[d]) return bad(op, "k %lld must be in [0, %lld]", (long long)k, (long long)sd[d]);
    if (!sorted) return bad(op, "sorted=false is not supported (the doc: only true for now)");
    Dims od = sd;
    od[d] = k;
    EMU_CHECK(need_shape(op, "valuesOut", valuesOut, od));
    EMU_CHECK(need_shape(op, "indicesOut", indicesOut, od));
    int64_t outer = 1, inner = 1, size = sd[d];
    for (int64_t i = 0; i < d; i++) outer *= sd[i];
    for (size_t i = (size_t)d + 1; i < sd.size(); i++) inner *= sd[i];
    return make_executor(
        op, {self}, {valuesOut, indicesOut}, 0,
        [=](const std::vector<TV> &t, char *, std::string &) {
            std::vector<float> x = t[0].load(), vals((size_t)(outer * k * inner));
            std::vector<int64_t> idx(vals.size()), order((size_t)size);
            for (int64_t o = 0; o < outer; o++)
                for (int64_t i = 0; i < inner; i++) {
                    auto at = [&](int64_t j) { return x[(o * size + j) * inner + i]; };
                    std::iota(order.begin(), order.end(), 0);
                    /* ties keep the lower index first */
                    std::stable_sort(order.begin(), order.end(),
                                     [&](int64_t p, int64_t q) { return largest ? at(p) > at(q) : at(p) < at(q); });
                    for (int64_t j = 0; j < k; j++) {
                        vals[(o * k + j) * inner + i] = at(order[j]);
                        idx[(o * k + j) * inner + i] = order[j];
                    }
                }
            t[1].store(vals);
            t[2].storei(idx);
            return 0;
        },
        workspaceSize, executor);
}
EMU_PHASE2(Topk)
