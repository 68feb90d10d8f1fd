/* libnnopbase.so of the emulator: aclTensor/aclScalar/aclIntArray/... objects with the documented ownership
 * (scalars and arrays copy their values, a tensor list copies the pointer array and destroys its members), the
 * two-phase executor (phase 1 freezes copies of the descriptors, phase 2 checks workspace and reuse and enqueues
 * the kernel), and the element access the operator kernels use (dtype conversion, strides, FRACTAL_NZ). */
#include "emu_internal.h"

#include <cmath>
#include <cstring>
#include <mutex>
#include <set>

using namespace emu;

struct aclTensor {
    TensorDesc d;
};
struct aclScalar {
    aclDataType dtype;
    double value;
};
struct aclIntArray {
    std::vector<int64_t> v;
};
struct aclFloatArray {
    std::vector<float> v;
};
struct aclBoolArray {
    std::vector<bool> v;
};
struct aclTensorList {
    std::vector<const aclTensor *> v;
};

struct aclOpExecutor {
    std::string op;
    uint64_t workspace = 0;
    bool repeatable = false, consumed = false;
    size_t ninputs = 0;
    std::vector<TensorDesc> tensors; /* frozen at phase 1: inputs then outputs */
    std::vector<bool> present;
    KernelFn kernel;
};

namespace emu {

/* ------------------------------------------------------------------ dtypes */
size_t dtype_size(aclDataType dt) {
    switch ((int)dt) {
    case ACL_FLOAT:
    case ACL_INT32:
    case ACL_UINT32: return 4;
    case ACL_FLOAT16:
    case ACL_BF16:
    case ACL_INT16:
    case ACL_UINT16: return 2;
    case ACL_INT8:
    case ACL_UINT8:
    case ACL_BOOL: return 1;
    case ACL_INT64:
    case ACL_UINT64:
    case ACL_DOUBLE: return 8;
    default: return 0;
    }
}

const char *dtype_name(aclDataType dt) {
    switch ((int)dt) {
    case ACL_FLOAT: return "FLOAT";
    case ACL_FLOAT16: return "FLOAT16";
    case ACL_BF16: return "BF16";
    case ACL_INT8: return "INT8";
    case ACL_INT16: return "INT16";
    case ACL_INT32: return "INT32";
    case ACL_INT64: return "INT64";
    case ACL_UINT8: return "UINT8";
    case ACL_UINT16: return "UINT16";
    case ACL_UINT32: return "UINT32";
    case ACL_UINT64: return "UINT64";
    case ACL_DOUBLE: return "DOUBLE";
    case ACL_BOOL: return "BOOL";
    default: return "unsupported dtype";
    }
}

float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0) {
        float f = std::ldexp((float)man, -24);
        return sign ? -f : f;
    }
    if (exp == 31)
        bits = sign | 0x7f800000u | (man << 13);
    else
        bits = sign | ((exp + 112) << 23) | (man << 13);
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

uint16_t float_to_half(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
    x &= 0x7fffffffu;
    if (x >= 0x7f800000u) return sign | (x > 0x7f800000u ? 0x7e00 : 0x7c00);
    if (x >= 0x477ff000u) return sign | 0x7c00; /* >= 65520 rounds to infinity */
    if (x < 0x38800000u) {                      /* below 2^-14: subnormal, exact scaling then round to even */
        float a;
        memcpy(&a, &x, 4);
        return sign | (uint16_t)std::lrint(std::ldexp(a, 24));
    }
    x += 0xfffu + ((x >> 13) & 1u);
    return sign | (uint16_t)((x - 0x38000000u) >> 13);
}

float bf16_to_float(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

uint16_t float_to_bf16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40);
    x += 0x7fffu + ((x >> 16) & 1u);
    return (uint16_t)(x >> 16);
}

float round_to(aclDataType dt, float v) {
    if (dt == ACL_FLOAT16) return half_to_float(float_to_half(v));
    if (dt == ACL_BF16) return bf16_to_float(float_to_bf16(v));
    return v;
}

bool is_contiguous(const TensorDesc &t) {
    int64_t expect = 1;
    for (size_t i = t.view.size(); i-- > 0;) {
        if (t.view[i] != 1 && t.strides[i] != expect) return false;
        expect *= t.view[i];
    }
    return true;
}

/* ------------------------------------------------------------------ element access */
int64_t TV::numel() const {
    int64_t n = 1;
    for (int64_t v : d.view) n *= v;
    return n;
}

int64_t TV::elem(int64_t lin) const {
    size_t r = d.view.size();
    if (d.format != ACL_FORMAT_FRACTAL_NZ) {
        int64_t e = d.offset;
        for (size_t i = r; i-- > 0;) {
            int64_t idx = lin % d.view[i];
            lin /= d.view[i];
            e += idx * d.strides[i];
        }
        return e;
    }
    /* FRACTAL_NZ of the physical row-major matrix [R, C]: element (r, c) at ((c / C0) * Rpad + r) * C0 + c % C0;
     * a view with strides [1, rows] over the last two dims is the transpose of the physical matrix. */
    int64_t rows = d.view[r - 2], cols = d.view[r - 1];
    int64_t j = lin % cols, i = (lin / cols) % rows, batch = lin / (rows * cols);
    bool transposed = d.strides[r - 2] == 1 && d.strides[r - 1] == rows && rows != 1;
    int64_t R = transposed ? cols : rows, C = transposed ? rows : cols;
    int64_t pr = transposed ? j : i, pc = transposed ? i : j;
    int64_t c0 = (int64_t)(32 / es), rpad = (R + 15) / 16 * 16, c1 = (C + c0 - 1) / c0;
    return batch * c1 * rpad * c0 + ((pc / c0) * rpad + pr) * c0 + pc % c0;
}

float TV::getf(int64_t e) const {
    const char *p = base + e * (int64_t)es;
    switch ((int)d.dtype) {
    case ACL_FLOAT: {
        float v;
        memcpy(&v, p, 4);
        return v;
    }
    case ACL_FLOAT16: {
        uint16_t v;
        memcpy(&v, p, 2);
        return half_to_float(v);
    }
    case ACL_BF16: {
        uint16_t v;
        memcpy(&v, p, 2);
        return bf16_to_float(v);
    }
    case ACL_DOUBLE: {
        double v;
        memcpy(&v, p, 8);
        return (float)v;
    }
    default: return (float)geti(e);
    }
}

void TV::setf(int64_t e, float v) const {
    char *p = base + e * (int64_t)es;
    switch ((int)d.dtype) {
    case ACL_FLOAT: memcpy(p, &v, 4); return;
    case ACL_FLOAT16: {
        uint16_t h = float_to_half(v);
        memcpy(p, &h, 2);
        return;
    }
    case ACL_BF16: {
        uint16_t h = float_to_bf16(v);
        memcpy(p, &h, 2);
        return;
    }
    case ACL_DOUBLE: {
        double x = v;
        memcpy(p, &x, 8);
        return;
    }
    case ACL_BOOL: seti(e, v != 0.0f); return;
    default: seti(e, (int64_t)std::trunc(v)); return;
    }
}

int64_t TV::geti(int64_t e) const {
    const char *p = base + e * (int64_t)es;
    switch ((int)d.dtype) {
    case ACL_INT8: return (int8_t)*p;
    case ACL_UINT8:
    case ACL_BOOL: return (uint8_t)*p;
    case ACL_INT16: {
        int16_t v;
        memcpy(&v, p, 2);
        return v;
    }
    case ACL_UINT16: {
        uint16_t v;
        memcpy(&v, p, 2);
        return v;
    }
    case ACL_INT32: {
        int32_t v;
        memcpy(&v, p, 4);
        return v;
    }
    case ACL_UINT32: {
        uint32_t v;
        memcpy(&v, p, 4);
        return v;
    }
    case ACL_INT64:
    case ACL_UINT64: {
        int64_t v;
        memcpy(&v, p, 8);
        return v;
    }
    default: return (int64_t)getf(e);
    }
}

void TV::seti(int64_t e, int64_t v) const {
    char *p = base + e * (int64_t)es;
    switch ((int)d.dtype) {
    case ACL_INT8:
    case ACL_UINT8: *p = (char)v; return;
    case ACL_BOOL: *p = v != 0; return;
    case ACL_INT16:
    case ACL_UINT16: {
        int16_t x = (int16_t)v;
        memcpy(p, &x, 2);
        return;
    }
    case ACL_INT32:
    case ACL_UINT32: {
        int32_t x = (int32_t)v;
        memcpy(p, &x, 4);
        return;
    }
    case ACL_INT64:
    case ACL_UINT64: memcpy(p, &v, 8); return;
    default: setf(e, (float)v); return;
    }
}

/* Calls f(lin, e) for every view element in row-major order; ND views walk their strides without divisions. */
template <typename F> static void for_each_elem(const TV &t, F f) {
    int64_t n = t.numel();
    if (n == 0) return;
    if (t.d.format == ACL_FORMAT_FRACTAL_NZ) {
        for (int64_t i = 0; i < n; i++) f(i, t.elem(i));
        return;
    }
    size_t r = t.d.view.size();
    std::vector<int64_t> idx(r, 0);
    int64_t e = t.d.offset;
    for (int64_t i = 0; i < n; i++) {
        f(i, e);
        for (size_t k = r; k-- > 0;) { /* odometer step */
            if (++idx[k] < t.d.view[k]) {
                e += t.d.strides[k];
                break;
            }
            e -= (t.d.view[k] - 1) * t.d.strides[k];
            idx[k] = 0;
        }
    }
}

void TV::copy_elem(int64_t e, const TV &src, int64_t se) const {
    if (is_float(d.dtype) || is_float(src.d.dtype))
        setf(e, src.getf(se));
    else
        seti(e, src.geti(se));
}

std::vector<float> TV::load() const {
    std::vector<float> out((size_t)numel());
    for_each_elem(*this, [&](int64_t i, int64_t e) { out[i] = getf(e); });
    return out;
}
std::vector<int64_t> TV::loadi() const {
    std::vector<int64_t> out((size_t)numel());
    for_each_elem(*this, [&](int64_t i, int64_t e) { out[i] = geti(e); });
    return out;
}
void TV::store(const std::vector<float> &v) const {
    for_each_elem(*this, [&](int64_t i, int64_t e) { setf(e, v[i]); });
}
void TV::storei(const std::vector<int64_t> &v) const {
    for_each_elem(*this, [&](int64_t i, int64_t e) { seti(e, v[i]); });
}

/* ------------------------------------------------------------------ executors */
static std::mutex g_exec_mu;
static std::set<aclOpExecutor *> g_executors;

static int64_t storage_elems(const TensorDesc &t) {
    int64_t n = 1;
    for (int64_t v : t.storage) n *= v;
    return n;
}

const TensorDesc *tensor_desc(const aclTensor *t) {
    return t ? &t->d : nullptr;
}

bool scalar_value(const aclScalar *s, double *value, aclDataType *dtype) {
    if (!s) return false;
    *value = s->value;
    if (dtype) *dtype = s->dtype;
    return true;
}

const std::vector<int64_t> *int_array_values(const aclIntArray *a) {
    return a ? &a->v : nullptr;
}
const std::vector<const aclTensor *> *tensor_list_items(const aclTensorList *l) {
    return l ? &l->v : nullptr;
}

int make_executor(const char *op, const std::vector<const aclTensor *> &inputs,
                  const std::vector<const aclTensor *> &outputs, uint64_t workspace, KernelFn kernel,
                  uint64_t *workspaceSize, aclOpExecutor **executor) {
    if (!workspaceSize || !executor)
        return fail(NN_ERR_PARAM_NULLPTR, "%sGetWorkspaceSize: workspaceSize or executor is null", op);
    auto *ex = new aclOpExecutor();
    ex->op = op;
    ex->workspace = workspace;
    ex->ninputs = inputs.size();
    ex->kernel = std::move(kernel);
    std::vector<const aclTensor *> all(inputs);
    all.insert(all.end(), outputs.begin(), outputs.end());
    for (size_t i = 0; i < all.size(); i++) {
        ex->present.push_back(all[i] != nullptr);
        ex->tensors.push_back(all[i] ? all[i]->d : TensorDesc());
        if (!all[i]) continue;
        const TensorDesc &t = all[i]->d;
        if (!dtype_size(t.dtype)) {
            delete ex;
            return fail(NN_ERR_PARAM_INVALID, "%s: tensor %zu has a dtype the operator does not support (%d)", op, i,
                        (int)t.dtype);
        }
        if (t.format != ACL_FORMAT_FRACTAL_NZ) {
            int64_t last = t.offset;
            bool empty = false;
            for (size_t k = 0; k < t.view.size(); k++) {
                if (t.view[k] == 0)
                    empty = true;
                else
                    last += (t.view[k] - 1) * t.strides[k];
            }
            if (!empty && last >= storage_elems(t)) {
                delete ex;
                return fail(
                    NN_ERR_PARAM_INVALID,
                    "%s: tensor %zu's view (offset %lld, last element %lld) lies outside its storage of %lld elements",
                    op, i, (long long)t.offset, (long long)last, (long long)storage_elems(t));
            }
        }
    }
    {
        std::lock_guard<std::mutex> lk(g_exec_mu);
        g_executors.insert(ex);
    }
    *workspaceSize = workspace;
    *executor = ex;
    return 0;
}

int launch_executor(const char *op, void *workspace, uint64_t workspaceSize, aclOpExecutor *ex, aclrtStream stream) {
    if (!ex) return fail(NN_ERR_PARAM_NULLPTR, "%s: executor is null", op);
    {
        std::lock_guard<std::mutex> lk(g_exec_mu);
        if (!g_executors.count(ex))
            return fail(NN_ERR_PARAM_INVALID,
                        "%s: executor %p was not made by a GetWorkspaceSize call (or was destroyed)", op, (void *)ex);
        if (ex->consumed)
            return fail(NN_ERR_PARAM_INVALID,
                        "%s: executor %p was already run once and is not repeatable (call "
                        "aclSetAclOpExecutorRepeatable after phase 1)",
                        op, (void *)ex);
    }
    if (ex->op != op)
        return fail(NN_ERR_PARAM_INVALID, "%s: executor %p belongs to %s", op, (void *)ex, ex->op.c_str());
    if (workspaceSize < ex->workspace)
        return fail(NN_ERR_PARAM_INVALID, "%s: workspaceSize %llu is smaller than the %llu bytes phase 1 asked for", op,
                    (unsigned long long)workspaceSize, (unsigned long long)ex->workspace);
    if (ex->workspace > 0) {
        if (!workspace)
            return fail(NN_ERR_PARAM_NULLPTR, "%s: workspace is null but %llu bytes are needed", op,
                        (unsigned long long)ex->workspace);
        if (dev_bytes_after(workspace) < ex->workspace)
            return fail(NN_ERR_PARAM_INVALID, "%s: workspace %p is not %llu bytes of device memory", op, workspace,
                        (unsigned long long)ex->workspace);
    }
    std::vector<TensorDesc> tensors = ex->tensors;
    std::vector<bool> present = ex->present;
    KernelFn kernel = ex->kernel;
    uint64_t need = ex->workspace;
    std::string name = op;
    int rc = enqueue(stream, TaskKind::Op, op, [=](std::string &err) {
        std::vector<TV> ts(tensors.size());
        for (size_t i = 0; i < tensors.size(); i++) {
            ts[i].d = tensors[i];
            if (!present[i]) continue;
            ts[i].es = dtype_size(tensors[i].dtype);
            size_t bytes = (size_t)std::max<int64_t>(storage_elems(tensors[i]), 1) * ts[i].es;
            std::string e;
            if (!(ts[i].base = dev_alias(tensors[i].data, bytes, e))) {
                err = "tensor " + std::to_string(i) + ": " + e;
                return (int)E_RT_AICORE_EXCEPTION;
            }
        }
        char *ws = nullptr;
        if (need) {
            std::string e;
            if (!(ws = dev_alias(workspace, need, e))) {
                err = "workspace: " + e;
                return (int)E_RT_AICORE_EXCEPTION;
            }
        }
        return kernel(ts, ws, err);
    });
    if (rc) return rc;
    std::lock_guard<std::mutex> lk(g_exec_mu);
    if (!ex->repeatable) { /* freed by phase 2; a tombstone stays so a second run is reported, not undefined */
        ex->consumed = true;
        ex->tensors.clear();
        ex->kernel = nullptr;
    }
    return 0;
}

} // namespace emu

/* ================================================================== exported object API */

EMU_EXPORT aclTensor *aclCreateTensor(const int64_t *viewDims, uint64_t viewDimsNum, aclDataType dataType,
                                      const int64_t *stride, int64_t offset, aclFormat format,
                                      const int64_t *storageDims, uint64_t storageDimsNum, void *tensorData) {
    if (viewDimsNum > 0 && !viewDims) return set_error("aclCreateTensor: viewDims is null"), nullptr;
    if (storageDimsNum > 0 && !storageDims) return set_error("aclCreateTensor: storageDims is null"), nullptr;
    if (viewDimsNum > 8 || storageDimsNum > 8) return set_error("aclCreateTensor: more than 8 dims"), nullptr;
    if (offset < 0) return set_error("aclCreateTensor: negative offset"), nullptr;
    auto *t = new aclTensor();
    TensorDesc &d = t->d;
    d.view.assign(viewDims, viewDims + viewDimsNum);
    for (int64_t v : d.view)
        if (v < 0) {
            delete t;
            return set_error("aclCreateTensor: negative view dim"), nullptr;
        }
    if (stride) {
        d.strides.assign(stride, stride + viewDimsNum);
        for (int64_t s : d.strides)
            if (s < 0) {
                delete t;
                return set_error("aclCreateTensor: negative stride"), nullptr;
            }
    } else {
        d.strides.assign(viewDimsNum, 1);
        for (size_t i = viewDimsNum; i-- > 1;) d.strides[i - 1] = d.strides[i] * d.view[i];
    }
    if (storageDims)
        d.storage.assign(storageDims, storageDims + storageDimsNum);
    else {
        int64_t span = offset + 1;
        for (size_t i = 0; i < viewDimsNum; i++) span += (d.view[i] - 1) * d.strides[i];
        d.storage = {span};
    }
    d.offset = offset;
    d.dtype = dataType;
    d.format = format;
    d.data = tensorData;
    return t;
}

EMU_EXPORT aclnnStatus aclDestroyTensor(const aclTensor *tensor) {
    delete tensor;
    return 0;
}

EMU_EXPORT aclScalar *aclCreateScalar(void *value, aclDataType dataType) {
    if (!value) return set_error("aclCreateScalar: value is null"), nullptr;
    double v;
    const char *p = (const char *)value;
    switch ((int)dataType) {
    case ACL_FLOAT: {
        float f;
        memcpy(&f, p, 4);
        v = f;
        break;
    }
    case ACL_FLOAT16: {
        uint16_t h;
        memcpy(&h, p, 2);
        v = half_to_float(h);
        break;
    }
    case ACL_BF16: {
        uint16_t h;
        memcpy(&h, p, 2);
        v = bf16_to_float(h);
        break;
    }
    case ACL_DOUBLE: memcpy(&v, p, 8); break;
    case ACL_INT8: v = (int8_t)*p; break;
    case ACL_UINT8:
    case ACL_BOOL: v = (uint8_t)*p; break;
    case ACL_INT16: {
        int16_t x;
        memcpy(&x, p, 2);
        v = x;
        break;
    }
    case ACL_INT32: {
        int32_t x;
        memcpy(&x, p, 4);
        v = x;
        break;
    }
    case ACL_UINT32: {
        uint32_t x;
        memcpy(&x, p, 4);
        v = x;
        break;
    }
    case ACL_INT64: {
        int64_t x;
        memcpy(&x, p, 8);
        v = (double)x;
        break;
    }
    case ACL_UINT64: {
        uint64_t x;
        memcpy(&x, p, 8);
        v = (double)x;
        break;
    }
    default: return set_error("aclCreateScalar: unsupported dtype %d", (int)dataType), nullptr;
    }
    return new aclScalar{dataType, v};
}
EMU_EXPORT aclnnStatus aclDestroyScalar(const aclScalar *scalar) {
    delete scalar;
    return 0;
}

/* The array objects copy their values at creation (opbase common_types.cpp). */
template <typename A, typename T> static A *copy_array(const char *api, const T *value, uint64_t size) {
    if (size > 0 && !value) return set_error("%s: value is null", api), nullptr;
    auto *a = new A();
    if (size) a->v.assign(value, value + size);
    return a;
}

EMU_EXPORT aclIntArray *aclCreateIntArray(const int64_t *value, uint64_t size) {
    return copy_array<aclIntArray>("aclCreateIntArray", value, size);
}
EMU_EXPORT aclFloatArray *aclCreateFloatArray(const float *value, uint64_t size) {
    return copy_array<aclFloatArray>("aclCreateFloatArray", value, size);
}
EMU_EXPORT aclBoolArray *aclCreateBoolArray(const bool *value, uint64_t size) {
    return copy_array<aclBoolArray>("aclCreateBoolArray", value, size);
}
EMU_EXPORT aclnnStatus aclDestroyIntArray(const aclIntArray *array) {
    delete array;
    return 0;
}
EMU_EXPORT aclnnStatus aclDestroyFloatArray(const aclFloatArray *array) {
    delete array;
    return 0;
}
EMU_EXPORT aclnnStatus aclDestroyBoolArray(const aclBoolArray *array) {
    delete array;
    return 0;
}

EMU_EXPORT aclTensorList *aclCreateTensorList(const aclTensor *const *value, uint64_t size) {
    return copy_array<aclTensorList>("aclCreateTensorList", value, size); /* the pointers only */
}
/* Destroys the member tensors too (opbase common_types.cpp; llama.cpp relies on it). */
EMU_EXPORT aclnnStatus aclDestroyTensorList(const aclTensorList *array) {
    if (!array) return 0;
    for (const aclTensor *t : array->v) delete t;
    delete array;
    return 0;
}

static int live_executor(aclOpExecutor *ex, const char *api) {
    std::lock_guard<std::mutex> lk(g_exec_mu);
    if (!ex) return fail(NN_ERR_PARAM_NULLPTR, "%s: executor is null", api);
    if (!g_executors.count(ex) || ex->consumed)
        return fail(NN_ERR_PARAM_INVALID, "%s: executor %p is not live", api, (void *)ex);
    return 0;
}

/* Ops whose executor cannot be made repeatable: aclSetAclOpExecutorRepeatable.md rules out an op that runs a ViewCopy
 * with equal source and destination, which the in-place index copy does (ops-nn aclnn_index_copy.cpp: ScatterUpdate
 * on selfRef, then ViewCopy onto selfRef); opbase's op_executor.cpp then returns ACLNN_ERR_INNER. */
static const char *const k_unrepeatable_ops[] = {"aclnnInplaceIndexCopy"};

EMU_EXPORT aclnnStatus aclSetAclOpExecutorRepeatable(aclOpExecutor *executor) {
    int rc = live_executor(executor, "aclSetAclOpExecutorRepeatable");
    if (rc) return rc;
    for (const char *op : k_unrepeatable_ops)
        if (executor->op == op)
            return fail(NN_ERR_INNER, "aclSetAclOpExecutorRepeatable: %s runs a ViewCopy onto its own input, so its "
                                      "executor cannot be made repeatable", op);
    executor->repeatable = true;
    return 0;
}

EMU_EXPORT aclnnStatus aclDestroyAclOpExecutor(aclOpExecutor *executor) {
    if (!executor) return 0;
    std::lock_guard<std::mutex> lk(g_exec_mu);
    if (!g_executors.count(executor))
        return fail(NN_ERR_PARAM_INVALID, "aclDestroyAclOpExecutor: %p is not an executor", (void *)executor);
    if (!executor->repeatable)
        return fail(NN_ERR_PARAM_INVALID, "aclDestroyAclOpExecutor: only repeatable executors are destroyed by the "
                                          "caller (phase 2 frees the others)");
    g_executors.erase(executor);
    delete executor;
    return 0;
}

static aclnnStatus set_tensor_addr(aclOpExecutor *ex, size_t index, aclTensor *tensor, void *addr, bool output) {
    const char *api = output ? "aclSetOutputTensorAddr" : "aclSetInputTensorAddr";
    int rc = live_executor(ex, api);
    if (rc) return rc;
    size_t n = output ? ex->tensors.size() - ex->ninputs : ex->ninputs;
    if (index >= n) return fail(NN_ERR_PARAM_INVALID, "%s: index %zu, the operator has %zu", api, index, n);
    size_t i = output ? ex->ninputs + index : index;
    if (!ex->present[i])
        return fail(NN_ERR_PARAM_INVALID, "%s: tensor %zu was passed as nullptr in phase 1", api, index);
    ex->tensors[i].data = addr;
    if (tensor) tensor->d.data = addr;
    return 0;
}
EMU_EXPORT aclnnStatus aclSetInputTensorAddr(aclOpExecutor *executor, const size_t index, aclTensor *tensor,
                                             void *addr) {
    return set_tensor_addr(executor, index, tensor, addr, false);
}
EMU_EXPORT aclnnStatus aclSetOutputTensorAddr(aclOpExecutor *executor, const size_t index, aclTensor *tensor,
                                              void *addr) {
    return set_tensor_addr(executor, index, tensor, addr, true);
}

EMU_EXPORT aclnnStatus aclnnInit(const char *configPath) {
    (void)configPath;
    return 0;
}
EMU_EXPORT aclnnStatus aclnnFinalize() {
    return 0;
}
