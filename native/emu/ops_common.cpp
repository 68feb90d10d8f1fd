/* Shared argument checks, broadcasting and the fp32-accumulating matrix product of the emulator's operators. */
#include "ops_common.h"

#include <cstdarg>
#include <cstdio>
#include <cstring>

namespace emu {

std::string dims_str(const Dims &d) {
    std::string s = "[";
    for (size_t i = 0; i < d.size(); i++) s += (i ? ", " : "") + std::to_string(d[i]);
    return s + "]";
}

int64_t numel(const Dims &d) {
    int64_t n = 1;
    for (int64_t v : d) n *= v;
    return n;
}

int bad(const char *op, const char *fmt, ...) {
    char buf[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return fail(NN_ERR_PARAM_INVALID, "%s: %s", op, buf);
}

int need_tensor(const char *op, const char *name, const aclTensor *t, std::initializer_list<aclDataType> dtypes,
                bool nz_ok) {
    if (!t) return fail(NN_ERR_PARAM_NULLPTR, "%s: %s is null", op, name);
    const TensorDesc &d = D(t);
    bool ok = false;
    std::string allowed;
    for (aclDataType dt : dtypes) {
        ok = ok || d.dtype == dt;
        allowed += std::string(allowed.empty() ? "" : ", ") + dtype_name(dt);
    }
    if (!ok) return bad(op, "%s has dtype %s; supported: %s", name, dtype_name(d.dtype), allowed.c_str());
    if (d.format == ACL_FORMAT_FRACTAL_NZ && !nz_ok)
        return bad(op, "%s: FRACTAL_NZ is not supported here (ND only)", name);
    if (d.format != ACL_FORMAT_ND && d.format != ACL_FORMAT_NCHW && d.format != ACL_FORMAT_NHWC &&
        d.format != ACL_FORMAT_FRACTAL_NZ)
        return bad(op, "%s has format %d; supported: ND%s", name, (int)d.format, nz_ok ? ", FRACTAL_NZ" : "");
    return 0;
}

int need_shape(const char *op, const char *name, const aclTensor *t, const Dims &expect) {
    if (D(t).view != expect)
        return bad(op, "%s has shape %s, expected %s", name, dims_str(D(t).view).c_str(), dims_str(expect).c_str());
    return 0;
}

int need_same_dtype(const char *op, const char *a, const aclTensor *ta, const char *b, const aclTensor *tb) {
    if (D(ta).dtype != D(tb).dtype)
        return bad(op, "%s (%s) and %s (%s) must have the same dtype", a, dtype_name(D(ta).dtype), b,
                   dtype_name(D(tb).dtype));
    return 0;
}

int need_contiguous(const char *op, const char *name, const aclTensor *t) {
    if (!is_contiguous(D(t)))
        return bad(op, "%s must be contiguous (strides given for shape %s are not)", name, dims_str(D(t).view).c_str());
    return 0;
}

int64_t norm_dim(int64_t dim, size_t rank) {
    int64_t r = (int64_t)rank;
    if (dim < -r || dim >= r) return -1;
    return dim < 0 ? dim + r : dim;
}

bool broadcast_shape(const Dims &a, const Dims &b, Dims *out) {
    size_t n = std::max(a.size(), b.size());
    out->assign(n, 1);
    for (size_t i = 0; i < n; i++) {
        int64_t x = i < n - a.size() ? 1 : a[i - (n - a.size())];
        int64_t y = i < n - b.size() ? 1 : b[i - (n - b.size())];
        if (x != y && x != 1 && y != 1) return false;
        (*out)[i] = x == 1 ? y : x;
    }
    return true;
}

int64_t broadcast_index(int64_t lin, const Dims &out, const Dims &in) {
    int64_t res = 0, mul = 1;
    size_t off = out.size() - in.size();
    for (size_t i = out.size(); i-- > 0;) {
        int64_t idx = lin % out[i];
        lin /= out[i];
        if (i >= off) {
            int64_t d = in[i - off];
            if (d != 1) res += idx * mul;
            mul *= d;
        }
    }
    return res;
}

int matmul_kernel(const TV &a, const TV &b, const TV *bias, float alpha, float beta, const TV &out, char *ws) {
    int64_t M = a.d.view[0], K = a.d.view[1], N = b.d.view[1];
    float *acc = (float *)ws; /* [M, N] fp32 accumulators in the workspace */
    std::vector<float> am = a.load(), bm = b.load(), bt((size_t)(N * K));
    for (int64_t k = 0; k < K; k++)
        for (int64_t n = 0; n < N; n++) bt[(size_t)(n * K + k)] = bm[(size_t)(k * N + n)];
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++) {
            const float *x = &am[(size_t)(m * K)], *y = &bt[(size_t)(n * K)];
            float s = 0.0f;
            for (int64_t k = 0; k < K; k++) s += x[k] * y[k];
            acc[m * N + n] = s;
        }
    std::vector<float> res((size_t)(M * N));
    Dims od = out.d.view;
    for (int64_t i = 0; i < M * N; i++) {
        res[(size_t)i] = alpha * acc[i];
        if (bias) res[(size_t)i] += beta * bias->getf(bias->elem(broadcast_index(i, od, bias->d.view)));
    }
    out.store(res);
    return 0;
}

} // namespace emu
