/* What the emulator's libraries share with each other (never seen by the backend).
 *
 * libascendcl.so owns device memory, contexts, streams, events, graphs, errors and counters and exports the
 * emu:: functions below; libnnopbase.so owns the aclTensor/aclScalar/... objects and the two-phase executor;
 * the libopapi_*.so operator libraries build executors whose kernels run on a stream. */
#ifndef ASW_EMU_INTERNAL_H
#define ASW_EMU_INTERNAL_H

#include "emu_api.h"

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#define EMU_EXPORT extern "C" __attribute__((visibility("default")))
#define EMU_INTERNAL __attribute__((visibility("default")))

namespace emu {

/* Return codes. Runtime values as in the vendor's acl_base_rt.h and error_codes/rt_error_codes.h, ACLNN values as
 * in ops-nn docs/zh/context/aclnn_return_code.md. */
enum : int {
    E_INVALID_PARAM = 100000,
    E_UNINITIALIZE = 100001,
    E_REPEAT_INITIALIZE = 100002,
    E_REPEAT_FINALIZE = 100037,
    E_BAD_ALLOC = 200000,
    E_INVALID_DEVICE = 200002,
    E_RT_PARAM_INVALID = 107000,
    E_RT_CONTEXT_NULL = 107002,
    E_RT_STREAM_CONTEXT = 107003,
    E_RT_INVALID_HANDLE = 107017,
    E_RT_STREAM_NOT_CAPTURED = 107029,
    E_RT_CAPTURE_MODE_NOT_SUPPORT = 107030,
    E_RT_STREAM_CAPTURE_UNMATCHED = 107036,
    E_RT_STREAM_CAPTURE_WRONG_THREAD = 107038,
    E_RT_STREAM_NOT_SUPPORT_OPERA = 107045,
    E_RT_FEATURE_NOT_SUPPORT = 207000,
    E_RT_MEMORY_FREE = 207002,
    E_RT_TASK_TYPE_NOT_SUPPORT = 507009,
    E_RT_AICORE_EXCEPTION = 507015,
    E_RT_STREAM_CAPTURE_INVALIDATED = 507903,
    NN_ERR_PARAM_NULLPTR = 161001,
    NN_ERR_PARAM_INVALID = 161002,
    NN_ERR_RUNTIME_ERROR = 361001,
    NN_ERR_INNER = 561000,
};

/* The calling thread's error text for aclGetRecentErrMsg; fail() also returns `code`. */
EMU_INTERNAL void set_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
EMU_INTERNAL int fail(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The emulator's read-write alias of device bytes [dev, dev + nbytes), or nullptr (with `err` set) unless that
 * whole range lies inside one live device allocation. Only the emulator ever touches device data. */
EMU_INTERNAL char *dev_alias(const void *dev, size_t nbytes, std::string &err);
/* Bytes from `dev` to the end of its live device allocation, 0 when `dev` is not inside one. */
EMU_INTERNAL size_t dev_bytes_after(const void *dev);

/* A task runs on the "device" (when its stream is drained) and returns 0 or an error code with `err` set. */
using TaskFn = std::function<int(std::string &err)>;
enum class TaskKind { Op, Copy, Memset, EventRecord, EventWait, EventReset, Replay, Update };
/* Enqueue on `stream` (nullptr = the current context's default stream), or record it when the stream is being
 * captured, or collect it when the stream is inside aclmdlRICaptureTaskUpdateBegin/End. Returns an ACL code. */
EMU_INTERNAL int enqueue(aclrtStream stream, TaskKind kind, const std::string &name, TaskFn fn);
/* ACL_SUCCESS if the calling thread has a current context, else the error (message set). */
EMU_INTERNAL int require_context();

/* ---- nnopbase objects (defined in nnopbase.cpp, read by the operator libraries) ---- */
struct TensorDesc {
    std::vector<int64_t> view, strides, storage;
    int64_t offset = 0;
    aclDataType dtype = ACL_DT_UNDEFINED;
    aclFormat format = ACL_FORMAT_ND;
    void *data = nullptr;
};

/* A tensor as a kernel sees it at execution time: the descriptor plus the alias of its storage. */
struct TV {
    TensorDesc d;
    char *base = nullptr; /* alias of d.data */
    size_t es = 0;        /* bytes per element */
    int64_t numel() const;
    /* element index (from base) of the view element with row-major linear index `lin` */
    int64_t elem(int64_t lin) const;
    float getf(int64_t e) const;
    void setf(int64_t e, float v) const; /* rounds to the dtype (round to nearest even) */
    int64_t geti(int64_t e) const;
    void seti(int64_t e, int64_t v) const;
    /* element e of this tensor = element se of src, converted (through float if either side is a float dtype) */
    void copy_elem(int64_t e, const TV &src, int64_t se) const;
    std::vector<float> load() const; /* the whole view in row-major order */
    std::vector<int64_t> loadi() const;
    void store(const std::vector<float> &v) const;
    void storei(const std::vector<int64_t> &v) const;
};

inline bool is_float(aclDataType dt) {
    return dt == ACL_FLOAT || dt == ACL_FLOAT16 || dt == ACL_BF16 || dt == ACL_DOUBLE;
}
size_t dtype_size(aclDataType dt); /* 0 for dtypes the emulator does not model */
const char *dtype_name(aclDataType dt);
float round_to(aclDataType dt, float v); /* the value after a store to dt and a load back */
float half_to_float(uint16_t h);
uint16_t float_to_half(float f);
float bf16_to_float(uint16_t h);
uint16_t float_to_bf16(float f);
bool is_contiguous(const TensorDesc &t);

/* Kernel of an operator: `ts` are the executor's tensors (inputs then outputs, absent optionals have base null),
 * `ws` the alias of the workspace. */
using KernelFn = std::function<int(const std::vector<TV> &ts, char *ws, std::string &err)>;

/* Phase 1: freeze copies of the tensors (nullptr = absent optional) into a new executor. */
EMU_INTERNAL int make_executor(const char *op, const std::vector<const aclTensor *> &inputs,
                               const std::vector<const aclTensor *> &outputs, uint64_t workspace, KernelFn kernel,
                               uint64_t *workspaceSize, aclOpExecutor **executor);
/* Phase 2: check the workspace and the executor, then enqueue the kernel on `stream`. */
EMU_INTERNAL int launch_executor(const char *op, void *workspace, uint64_t workspaceSize, aclOpExecutor *executor,
                                 aclrtStream stream);
EMU_INTERNAL const TensorDesc *tensor_desc(const aclTensor *t);
EMU_INTERNAL bool scalar_value(const aclScalar *s, double *value, aclDataType *dtype);
EMU_INTERNAL const std::vector<int64_t> *int_array_values(const aclIntArray *a);
EMU_INTERNAL const std::vector<const aclTensor *> *tensor_list_items(const aclTensorList *l);

} // namespace emu

#endif
