/* Argument checks and shape helpers shared by the emulator's operator libraries (ops_math, ops_nn,
 * ops_transformer). Each operator validates its arguments in phase 1 as its documentation says and returns
 * ACLNN_ERR_PARAM_NULLPTR / ACLNN_ERR_PARAM_INVALID with a message for aclGetRecentErrMsg. */
#ifndef ASW_EMU_OPS_COMMON_H
#define ASW_EMU_OPS_COMMON_H

#include "emu_internal.h"

#include <initializer_list>

namespace emu {

#define EMU_CHECK(expr)                                                                                                \
    do {                                                                                                               \
        int rc_ = (expr);                                                                                              \
        if (rc_) return rc_;                                                                                           \
    } while (0)

/* Phase 2 of an operator: the standard four-argument launch. */
#define EMU_PHASE2(Name)                                                                                               \
    EMU_EXPORT aclnnStatus aclnn##Name(void *workspace, uint64_t workspaceSize, aclOpExecutor *executor,               \
                                       aclrtStream stream) {                                                           \
        return emu::launch_executor("aclnn" #Name, workspace, workspaceSize, executor, stream);                        \
    }

using Dims = std::vector<int64_t>;

std::string dims_str(const Dims &d);
int64_t numel(const Dims &d);
/* Non-null tensor with a dtype from `dtypes` in ND format (unless nz_ok). */
int need_tensor(const char *op, const char *name, const aclTensor *t, std::initializer_list<aclDataType> dtypes,
                bool nz_ok = false);
int need_shape(const char *op, const char *name, const aclTensor *t, const Dims &expect);
int need_same_dtype(const char *op, const char *a, const aclTensor *ta, const char *b, const aclTensor *tb);
int need_contiguous(const char *op, const char *name, const aclTensor *t);
int bad(const char *op, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Normalise a possibly negative dim against a rank; -1 if out of range. */
int64_t norm_dim(int64_t dim, size_t rank);
/* numpy broadcast of two shapes; false if incompatible */
bool broadcast_shape(const Dims &a, const Dims &b, Dims *out);
/* Row-major linear index into `in` (broadcast to `out`) of the element at row-major index `lin` of `out`. */
int64_t broadcast_index(int64_t lin, const Dims &out, const Dims &in);
inline const TensorDesc &D(const aclTensor *t) {
    return *tensor_desc(t);
}

/* Matrix product shared by Mm/Addmm/MatmulWeightNz/AddmmWeightNz: out[m,n] = alpha*sum_k a[m,k]*b[k,n]
 * (+ beta*bias broadcast), accumulated in fp32 in the workspace, rounded once to out's dtype. */
int matmul_kernel(const TV &a, const TV &b, const TV *bias, float alpha, float beta, const TV &out, char *ws);

} // namespace emu

#endif
