/* libopapi_math.so of the emulator: the ops-math operators of the decode step (ArgMax, InplaceAdds, GtTensor,
 * InplaceCopy, Cast) as reference loops written from the hicann/ops-math documentation. Integer tensors are
 * computed in integers (the device position += 1 is exact), floats in fp32 rounded once to the output dtype. */
#include "ops_common.h"

#include <cmath>

using namespace emu;

static const std::initializer_list<aclDataType> kNumeric = {ACL_FLOAT, ACL_FLOAT16, ACL_BF16,  ACL_DOUBLE, ACL_INT8,
                                                            ACL_UINT8, ACL_INT16,   ACL_INT32, ACL_INT64};
static const std::initializer_list<aclDataType> kAll = {ACL_FLOAT, ACL_FLOAT16, ACL_BF16,  ACL_DOUBLE, ACL_INT8,
                                                        ACL_UINT8, ACL_INT16,   ACL_INT32, ACL_INT64,  ACL_BOOL};

/* ------------------------------------------------------------------ ArgMax: index of the first maximum along dim
 * (the first NaN when there is one, as np.argmax) */
EMU_EXPORT aclnnStatus aclnnArgMaxGetWorkspaceSize(const aclTensor *self, int64_t dim, bool keepdim, aclTensor *out,
                                                   uint64_t *workspaceSize, aclOpExecutor **executor) {
    const char *op = "aclnnArgMax";
    EMU_CHECK(need_tensor(op, "self", self, kNumeric));
    EMU_CHECK(need_tensor(op, "out", out, {ACL_INT32, ACL_INT64}));
    const Dims &sd = D(self).view;
    int64_t d = norm_dim(dim, sd.size());
    if (d < 0) return bad(op, "dim %lld out of range for %s", (long long)dim, dims_str(sd).c_str());
    Dims od;
    for (size_t i = 0; i < sd.size(); i++)
        if ((int64_t)i != d)
            od.push_back(sd[i]);
        else if (keepdim)
            od.push_back(1);
    EMU_CHECK(need_shape(op, "out", out, od));
    int64_t outer = 1, inner = 1, size = sd[d];
    for (int64_t i = 0; i < d; i++) outer *= sd[i];
    for (size_t i = (size_t)d + 1; i < sd.size(); i++) inner *= sd[i];
    if (size == 0) return bad(op, "the reduced dim is empty");
    return make_executor(
        op, {self}, {out}, 0,
        [=](const std::vector<TV> &t, char *, std::string &) {
            std::vector<float> x = t[0].load();
            std::vector<int64_t> res((size_t)(outer * inner));
            for (int64_t o = 0; o < outer; o++)
                for (int64_t i = 0; i < inner; i++) {
                    /* np.argmax, as Huawei's golden computes it: the first maximum, and a NaN is the maximum */
                    int64_t best = 0;
                    for (int64_t j = 1; j < size && !std::isnan(x[(o * size + best) * inner + i]); j++) {
                        float v = x[(o * size + j) * inner + i];
                        if (std::isnan(v) || v > x[(o * size + best) * inner + i]) best = j;
                    }
                    res[o * inner + i] = best;
                }
            t[1].storei(res);
            return 0;
        },
        workspaceSize, executor);
}
EMU_PHASE2(ArgMax)

/* ------------------------------------------------------------------ InplaceAdds: selfRef += alpha * other (scalars) */
EMU_EXPORT aclnnStatus aclnnInplaceAddsGetWorkspaceSize(const aclTensor *selfRef, const aclScalar *other,
                                                        const aclScalar *alpha, uint64_t *workspaceSize,
                                                        aclOpExecutor **executor) {
    const char *op = "aclnnInplaceAdds";
    EMU_CHECK(need_tensor(op, "selfRef", selfRef, kNumeric));
    double o, a;
    aclDataType ot, at;
    if (!scalar_value(other, &o, &ot) || !scalar_value(alpha, &a, &at))
        return fail(NN_ERR_PARAM_NULLPTR, "%s: other and alpha are required", op);
    aclDataType st = D(selfRef).dtype;
    bool int_self = !is_float(st);
    if (int_self && (is_float(ot) || is_float(at)) && (o != std::floor(o) || a != std::floor(a)))
        return bad(op, "a fractional scalar cannot be added in place to an integer tensor (%s)", dtype_name(st));
    /* the values are copied now: a captured launch replays these, whatever the host does later */
    return make_executor(
        op, {selfRef}, {}, 0,
        [=](const std::vector<TV> &t, char *, std::string &) {
            const TV &s = t[0];
            int64_t n = s.numel();
            if (int_self) {
                int64_t add = (int64_t)a * (int64_t)o;
                for (int64_t i = 0; i < n; i++) s.seti(s.elem(i), s.geti(s.elem(i)) + add);
            } else {
                float add = (float)(a * o);
                for (int64_t i = 0; i < n; i++) s.setf(s.elem(i), s.getf(s.elem(i)) + add);
            }
            return 0;
        },
        workspaceSize, executor);
}
EMU_PHASE2(InplaceAdds)

/* ------------------------------------------------------------------ GtTensor: out = self > other (broadcast) */
EMU_EXPORT aclnnStatus aclnnGtTensorGetWorkspaceSize(const aclTensor *self, const aclTensor *other, aclTensor *out,
                                                     uint64_t *workspaceSize, aclOpExecutor **executor) {
    const char *op = "aclnnGtTensor";
    EMU_CHECK(need_tensor(op, "self", self, kAll));
    EMU_CHECK(need_tensor(op, "other", other, kAll));
    EMU_CHECK(need_tensor(op, "out", out, kAll));
    Dims od;
    if (!broadcast_shape(D(self).view, D(other).view, &od))
        return bad(op, "self %s and other %s do not broadcast", dims_str(D(self).view).c_str(),
                   dims_str(D(other).view).c_str());
    EMU_CHECK(need_shape(op, "out", out, od));
    return make_executor(
        op, {self, other}, {out}, 0,
        [=](const std::vector<TV> &t, char *, std::string &) {
            const TV &a = t[0], &b = t[1], &o = t[2];
            bool ints = !is_float(a.d.dtype) && !is_float(b.d.dtype);
            for (int64_t i = 0; i < o.numel(); i++) {
                int64_t ea = a.elem(broadcast_index(i, od, a.d.view)), eb = b.elem(broadcast_index(i, od, b.d.view));
                bool gt = ints ? a.geti(ea) > b.geti(eb) : a.getf(ea) > b.getf(eb);
                o.seti(o.elem(i), gt ? 1 : 0);
            }
            return 0;
        },
        workspaceSize, executor);
}
EMU_PHASE2(GtTensor)

/* ------------------------------------------------------------------ InplaceCopy / Cast: element conversion */
static void convert(const TV &src, const TV &dst, const Dims &shape) {
    for (int64_t i = 0; i < dst.numel(); i++)
        dst.copy_elem(dst.elem(i), src, src.elem(broadcast_index(i, shape, src.d.view)));
}

EMU_EXPORT aclnnStatus aclnnInplaceCopyGetWorkspaceSize(aclTensor *selfRef, const aclTensor *src,
                                                        uint64_t *workspaceSize, aclOpExecutor **executor) {
    const char *op = "aclnnInplaceCopy";
    EMU_CHECK(need_tensor(op, "selfRef", selfRef, kAll));
    EMU_CHECK(need_tensor(op, "src", src, kAll));
    Dims bc, sd = D(selfRef).view;
    if (!broadcast_shape(sd, D(src).view, &bc) || bc != sd)
        return bad(op, "src %s does not broadcast to selfRef %s", dims_str(D(src).view).c_str(), dims_str(sd).c_str());
    return make_executor(
        op, {selfRef, src}, {}, 0,
        [=](const std::vector<TV> &t, char *, std::string &) {
            /* read everything first: source and destination may overlap */
            TV tmp = t[1];
            std::vector<char> copy;
            int64_t lo = 0, hi = 0;
            for (int64_t i = 0; i < tmp.numel(); i++) {
                int64_t e = tmp.elem(i);
                lo = i ? std::min(lo, e) : e;
                hi = i ? std::max(hi, e) : e;
            }
            if (tmp.numel()) {
                copy.assign(tmp.base + lo * (int64_t)tmp.es, tmp.base + (hi + 1) * (int64_t)tmp.es);
                tmp.base = copy.data() - lo * (int64_t)tmp.es;
            }
            convert(tmp, t[0], sd);
            return 0;
        },
        workspaceSize, executor);
}
EMU_PHASE2(InplaceCopy)

EMU_EXPORT aclnnStatus aclnnCastGetWorkspaceSize(const aclTensor *self, const aclDataType dtype, aclTensor *out,
                                                 uint64_t *workspaceSize, aclOpExecutor **executor) {
    const char *op = "aclnnCast";
    EMU_CHECK(need_tensor(op, "self", self, kAll));
    EMU_CHECK(need_tensor(op, "out", out, {dtype}));
    EMU_CHECK(need_shape(op, "out", out, D(self).view));
    Dims sd = D(self).view;
    return make_executor(
        op, {self}, {out}, 0,
        [=](const std::vector<TV> &t, char *, std::string &) {
            convert(t[0], t[1], sd);
            return 0;
        },
        workspaceSize, executor);
}
EMU_PHASE2(Cast)
