/* cann_api.h — our own declarations of every CANN entry point, type and constant the aclnn backend uses.
 *
 * No vendor header is copied into this repository. The facts come from the public CANN sources listed in
 * native/src/aclnn/OPS.md (hicann/runtime acl_rt.h / acl_base_rt.h, hicann/opbase acl_meta.h, the op_api headers
 * of hicann/ops-nn, ops-math and ops-transformer).
 *
 * ONE list per library (X-macros) yields, for each function, both
 *   - a prototype            `aclError aclrtMalloc(void **devPtr, size_t size, aclrtMemMallocPolicy policy);`
 *     (the CANN emulator, native/emu/, defines these), and
 *   - a function-pointer type `typedef aclError (*aclrtMalloc_fn)(void **, size_t, aclrtMemMallocPolicy);`
 *     (the backend resolves these with dlsym),
 * so the two cannot drift. Operators are listed once by name and phase-1 parameters; CANN_OPAPI_*_FUNCS derive the
 * `aclnnXxxGetWorkspaceSize` / `aclnnXxx` pair (phase 2 always has the standard four arguments).
 * CANN_ALL_FUNCS(X) lists every function as X(return type, name, (parameters)).
 *
 * Libraries (the list a symbol is in says which library exports it):
 *   libascendcl.so            CANN_ASCENDCL_FUNCS   runtime: init, device, context, stream, memory, event, capture
 *   libnnopbase.so            CANN_NNOPBASE_FUNCS   aclTensor & co., executor, aclnnInit
 *   libopapi_math.so          CANN_OPAPI_MATH_FUNCS         (ops-math)        } CANN >= 8.5 split; libopapi.so
 *   libopapi_nn.so            CANN_OPAPI_NN_FUNCS           (ops-nn)          } holds all of them in older CANN
 *   libopapi_transformer.so   CANN_OPAPI_TRANSFORMER_FUNCS  (ops-transformer) } and is the fallback
 *
 * Vendor-header conformance (tests/test_cann_headers.py): compile with ASW_CANN_VENDOR_RT_TYPES defined after
 * including the vendor <acl/acl.h>: our runtime typedefs/enums/constants are then NOT defined (the vendor's are
 * used), the prototypes are redeclared against the vendor's (a mismatch is a C++ "conflicting declaration" error),
 * and CANN_RT_ENUMS(E) / CANN_RT_INT_CONSTANTS(X) let the test static_assert every value against the vendor's.
 * ASW_CANN_VENDOR_NNOPBASE_TYPES does the same for the nnopbase opaque types and aclnnStatus.
 *
 * C11 and C++17 compatible.
 */
#ifndef ASW_CANN_API_H
#define ASW_CANN_API_H

#include <stddef.h>
#include <stdint.h>
#ifndef __cplusplus
#include <stdbool.h>
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------------------------------------------
 * Runtime enums and constants: one X(NAME, value) list per type [hicann/runtime include/external/acl/acl_base_rt.h, acl_rt.h; sources in OPS.md].
 * CANN_RT_ENUMS(E) calls E(type, LIST) for every enum type; CANN_RT_INT_CONSTANTS holds error codes and flags.
 * ------------------------------------------------------------------------------------------------------------ */
#define CANN_DATA_TYPES(X)                                                                                        \
    X(ACL_DT_UNDEFINED, -1)                                                                                      \
    X(ACL_FLOAT, 0)                                                                                              \
    X(ACL_FLOAT16, 1)                                                                                            \
    X(ACL_INT8, 2)                                                                                               \
    X(ACL_INT32, 3)                                                                                              \
    X(ACL_UINT8, 4)                                                                                              \
    X(ACL_INT16, 6)                                                                                              \
    X(ACL_UINT16, 7)                                                                                             \
    X(ACL_UINT32, 8)                                                                                             \
    X(ACL_INT64, 9)                                                                                              \
    X(ACL_UINT64, 10)                                                                                            \
    X(ACL_DOUBLE, 11)                                                                                            \
    X(ACL_BOOL, 12)                                                                                              \
    X(ACL_BF16, 27)

#define CANN_FORMATS(X)                                                                                           \
    X(ACL_FORMAT_UNDEFINED, -1)                                                                                  \
    X(ACL_FORMAT_NCHW, 0)                                                                                        \
    X(ACL_FORMAT_NHWC, 1)                                                                                        \
    X(ACL_FORMAT_ND, 2)                                                                                          \
    X(ACL_FORMAT_NC1HWC0, 3)                                                                                     \
    X(ACL_FORMAT_FRACTAL_Z, 4)                                                                                   \
    X(ACL_FORMAT_FRACTAL_NZ, 29)

#define CANN_MALLOC_POLICIES(X)                                                                                   \
    X(ACL_MEM_MALLOC_HUGE_FIRST, 0)                                                                              \
    X(ACL_MEM_MALLOC_HUGE_ONLY, 1)                                                                               \
    X(ACL_MEM_MALLOC_NORMAL_ONLY, 2)

#define CANN_MEMCPY_KINDS(X)                                                                                      \
    X(ACL_MEMCPY_HOST_TO_HOST, 0)                                                                                \
    X(ACL_MEMCPY_HOST_TO_DEVICE, 1)                                                                              \
    X(ACL_MEMCPY_DEVICE_TO_HOST, 2)                                                                              \
    X(ACL_MEMCPY_DEVICE_TO_DEVICE, 3)                                                                            \
    X(ACL_MEMCPY_DEFAULT, 4)

#define CANN_CAPTURE_MODES(X)                                                                                     \
    X(ACL_MODEL_RI_CAPTURE_MODE_GLOBAL, 0)                                                                       \
    X(ACL_MODEL_RI_CAPTURE_MODE_THREAD_LOCAL, 1)                                                                 \
    X(ACL_MODEL_RI_CAPTURE_MODE_RELAXED, 2)

#define CANN_CAPTURE_STATUSES(X)                                                                                  \
    X(ACL_MODEL_RI_CAPTURE_STATUS_NONE, 0)                                                                       \
    X(ACL_MODEL_RI_CAPTURE_STATUS_ACTIVE, 1)                                                                     \
    X(ACL_MODEL_RI_CAPTURE_STATUS_INVALIDATED, 2)

#define CANN_RT_ENUMS(E)                                                                                          \
    E(aclDataType, CANN_DATA_TYPES)                                                                              \
    E(aclFormat, CANN_FORMATS)                                                                                   \
    E(aclrtMemMallocPolicy, CANN_MALLOC_POLICIES)                                                                \
    E(aclrtMemcpyKind, CANN_MEMCPY_KINDS)                                                                        \
    E(aclmdlRICaptureMode, CANN_CAPTURE_MODES)                                                                   \
    E(aclmdlRICaptureStatus, CANN_CAPTURE_STATUSES)

/* error codes (aclError; `static const int` in the vendor header) and event flags (#define'd unsigned there) */
#define CANN_RT_INT_CONSTANTS(X)                                                                                  \
    X(ACL_SUCCESS, 0)                                                                                            \
    X(ACL_ERROR_INVALID_PARAM, 100000)                                                                           \
    X(ACL_ERROR_REPEAT_INITIALIZE, 100002)                                                                       \
    X(ACL_ERROR_BAD_ALLOC, 200000)                                                                               \
    X(ACL_ERROR_INTERNAL_ERROR, 500000)                                                                          \
    X(ACL_ERROR_RT_FAILURE, 500003)                                                                              \
    X(ACL_EVENT_SYNC, 0x1)                                                                                       \
    X(ACL_EVENT_CAPTURE_STREAM_PROGRESS, 0x2)                                                                    \
    X(ACL_EVENT_TIME_LINE, 0x8)                                                                                  \
    X(ACL_EVENT_DEVICE_USE_ONLY, 0x10)                                                                           \
    X(ACL_EVENT_EXTERNAL, 0x20)

/* ACLNN status codes [NN docs/zh/context/aclnn_return_code.md] (no vendor header defines these as symbols). */
#define CANN_ACLNN_STATUS(X)                                                                                      \
    X(ACLNN_SUCCESS, 0)                                                                                          \
    X(ACLNN_ERR_PARAM_NULLPTR, 161001)                                                                           \
    X(ACLNN_ERR_PARAM_INVALID, 161002)                                                                           \
    X(ACLNN_ERR_RUNTIME_ERROR, 361001)                                                                           \
    X(ACLNN_ERR_INNER, 561000)                                                                                   \
    X(ACLNN_ERR_INNER_TILING_ERROR, 561002)                                                                      \
    X(ACLNN_ERR_INNER_FIND_KERNEL_ERROR, 561003)                                                                 \
    X(ACLNN_ERR_INNER_NULLPTR, 561103)

#define CANN_ENUM_ITEM_(name, value) name = value,
#define CANN_DEFINE_ENUM_(type, LIST) typedef enum type { LIST(CANN_ENUM_ITEM_) } type;

enum cann_aclnn_status { CANN_ACLNN_STATUS(CANN_ENUM_ITEM_) };

#ifndef ASW_CANN_VENDOR_RT_TYPES
/* runtime types [hicann/runtime include/external/acl/acl_base_rt.h, acl_rt.h] */
typedef int aclError;
typedef uint16_t aclFloat16;
typedef void *aclrtStream;
typedef void *aclrtEvent;
typedef void *aclrtContext;
typedef void *aclrtTaskGrp;
typedef void *aclmdlRI;
CANN_RT_ENUMS(CANN_DEFINE_ENUM_)
enum cann_rt_int_constants { CANN_RT_INT_CONSTANTS(CANN_ENUM_ITEM_) };
#endif /* ASW_CANN_VENDOR_RT_TYPES */

#ifndef ASW_CANN_VENDOR_NNOPBASE_TYPES
/* nnopbase types [OB acl_meta.h]: opaque handles */
typedef int32_t aclnnStatus;
typedef struct aclOpExecutor aclOpExecutor;
typedef struct aclTensor aclTensor;
typedef struct aclScalar aclScalar;
typedef struct aclIntArray aclIntArray;
typedef struct aclFloatArray aclFloatArray;
typedef struct aclBoolArray aclBoolArray;
typedef struct aclTensorList aclTensorList;
#endif

/* ------------------------------------------------------------------------------------------------------------
 * libascendcl.so: X(return type, name, (parameters)) [hicann/runtime include/external/acl/acl_rt.h; sources in OPS.md]
 * ------------------------------------------------------------------------------------------------------------ */
#define CANN_ASCENDCL_FUNCS(X)                                                                                    \
    X(aclError, aclInit, (const char *configPath))                                                               \
    X(aclError, aclFinalize, (void))                                                                             \
    X(const char *, aclGetRecentErrMsg, (void))                                                                  \
    X(const char *, aclrtGetSocName, (void))                                                                     \
    X(aclError, aclrtSetDevice, (int32_t deviceId))                                                              \
    X(aclError, aclrtResetDevice, (int32_t deviceId))                                                            \
    X(aclError, aclrtGetDevice, (int32_t * deviceId))                                                            \
    X(aclError, aclrtGetDeviceCount, (uint32_t * count))                                                         \
    X(aclError, aclrtSynchronizeDevice, (void))                                                                  \
    X(aclError, aclrtCreateContext, (aclrtContext * context, int32_t deviceId))                                  \
    X(aclError, aclrtDestroyContext, (aclrtContext context))                                                     \
    X(aclError, aclrtSetCurrentContext, (aclrtContext context))                                                  \
    X(aclError, aclrtGetCurrentContext, (aclrtContext * context))                                                \
    X(aclError, aclrtCreateStream, (aclrtStream * stream))                                                       \
    X(aclError, aclrtDestroyStream, (aclrtStream stream))                                                        \
    X(aclError, aclrtSynchronizeStream, (aclrtStream stream))                                                    \
    X(aclError, aclrtMalloc, (void **devPtr, size_t size, aclrtMemMallocPolicy policy))                          \
    X(aclError, aclrtFree, (void *devPtr))                                                                       \
    X(aclError, aclrtMallocHost, (void **hostPtr, size_t size))                                                  \
    X(aclError, aclrtFreeHost, (void *hostPtr))                                                                  \
    X(aclError, aclrtMemcpy, (void *dst, size_t destMax, const void *src, size_t count, aclrtMemcpyKind kind))   \
    X(aclError, aclrtMemcpyAsync,                                                                                \
      (void *dst, size_t destMax, const void *src, size_t count, aclrtMemcpyKind kind, aclrtStream stream))     \
    X(aclError, aclrtMemset, (void *devPtr, size_t maxCount, int32_t value, size_t count))                      \
    X(aclError, aclrtMemsetAsync, (void *devPtr, size_t maxCount, int32_t value, size_t count, aclrtStream stream)) \
    X(aclError, aclrtCreateEvent, (aclrtEvent * event))                                                          \
    X(aclError, aclrtCreateEventWithFlag, (aclrtEvent * event, uint32_t flag))                                   \
    X(aclError, aclrtRecordEvent, (aclrtEvent event, aclrtStream stream))                                        \
    X(aclError, aclrtStreamWaitEvent, (aclrtStream stream, aclrtEvent event))                                    \
    X(aclError, aclrtResetEvent, (aclrtEvent event, aclrtStream stream))                                         \
    X(aclError, aclrtSynchronizeEvent, (aclrtEvent event))                                                       \
    X(aclError, aclrtDestroyEvent, (aclrtEvent event))                                                           \
    X(aclError, aclmdlRICaptureBegin, (aclrtStream stream, aclmdlRICaptureMode mode))                            \
    X(aclError, aclmdlRICaptureGetInfo, (aclrtStream stream, aclmdlRICaptureStatus * status, aclmdlRI * modelRI)) \
    X(aclError, aclmdlRICaptureEnd, (aclrtStream stream, aclmdlRI * modelRI))                                    \
    X(aclError, aclmdlRIExecuteAsync, (aclmdlRI modelRI, aclrtStream stream))                                    \
    X(aclError, aclmdlRIDestroy, (aclmdlRI modelRI))                                                             \
    X(aclError, aclmdlRICaptureTaskGrpBegin, (aclrtStream stream))                                               \
    X(aclError, aclmdlRICaptureTaskGrpEnd, (aclrtStream stream, aclrtTaskGrp * handle))                          \
    X(aclError, aclmdlRICaptureTaskUpdateBegin, (aclrtStream stream, aclrtTaskGrp handle))                       \
    X(aclError, aclmdlRICaptureTaskUpdateEnd, (aclrtStream stream))

/* ------------------------------------------------------------------------------------------------------------
 * libnnopbase.so [OB acl_meta.h, aclnn_base.h]
 * ------------------------------------------------------------------------------------------------------------ */
#define CANN_NNOPBASE_FUNCS(X)                                                                                    \
    X(aclnnStatus, aclnnInit, (const char *configPath))                                                          \
    X(aclnnStatus, aclnnFinalize, (void))                                                                        \
    X(aclTensor *, aclCreateTensor,                                                                              \
      (const int64_t *viewDims, uint64_t viewDimsNum, aclDataType dataType, const int64_t *stride, int64_t offset, \
       aclFormat format, const int64_t *storageDims, uint64_t storageDimsNum, void *tensorData))                 \
    X(aclScalar *, aclCreateScalar, (void *value, aclDataType dataType))                                        \
    X(aclIntArray *, aclCreateIntArray, (const int64_t *value, uint64_t size))                                   \
    X(aclBoolArray *, aclCreateBoolArray, (const bool *value, uint64_t size))                                    \
    X(aclTensorList *, aclCreateTensorList, (const aclTensor *const *value, uint64_t size))                      \
    X(aclnnStatus, aclDestroyTensor, (const aclTensor *tensor))                                                  \
    X(aclnnStatus, aclDestroyScalar, (const aclScalar *scalar))                                                  \
    X(aclnnStatus, aclDestroyIntArray, (const aclIntArray *array))                                               \
    X(aclnnStatus, aclDestroyBoolArray, (const aclBoolArray *array))                                             \
    X(aclnnStatus, aclDestroyTensorList, (const aclTensorList *array))                                           \
    X(aclnnStatus, aclSetAclOpExecutorRepeatable, (aclOpExecutor * executor))                                    \
    X(aclnnStatus, aclDestroyAclOpExecutor, (aclOpExecutor * executor))

/* ------------------------------------------------------------------------------------------------------------
 * Operators: OP(X, Name, (phase-1 parameters before workspaceSize/executor)). Phase 1 is
 *   aclnnStatus aclnn<Name>GetWorkspaceSize(<params>, uint64_t *workspaceSize, aclOpExecutor **executor);
 * phase 2 is
 *   aclnnStatus aclnn<Name>(void *workspace, uint64_t workspaceSize, aclOpExecutor *executor, aclrtStream stream);
 * Sources, dtypes and formats per operator: native/src/aclnn/OPS.md.
 * ------------------------------------------------------------------------------------------------------------ */
#define CANN_OPAPI_MATH_OPS(OP, X)                                                                                   \
    OP(X, ArgMax, (const aclTensor *self, int64_t dim, bool keepdim, aclTensor *out))                               \
    OP(X, InplaceAdds, (const aclTensor *selfRef, const aclScalar *other, const aclScalar *alpha))                  \
    OP(X, GtTensor, (const aclTensor *self, const aclTensor *other, aclTensor *out))                                \
    OP(X, InplaceCopy, (aclTensor * selfRef, const aclTensor *src))                                                 \
    OP(X, Cast, (const aclTensor *self, const aclDataType dtype, aclTensor *out))

#define CANN_OPAPI_NN_OPS(OP, X)                                                                                     \
    OP(X, Embedding, (const aclTensor *weight, const aclTensor *indices, const aclTensor *out))                     \
    OP(X, RmsNorm, (const aclTensor *x, const aclTensor *gamma, double epsilon, const aclTensor *yOut,              \
                 const aclTensor *rstdOut))                                                                      \
    OP(X, AddRmsNorm, (const aclTensor *x1, const aclTensor *x2, const aclTensor *gamma, double epsilon,           \
                    aclTensor *yOut, aclTensor *rstdOut, aclTensor *xOut))                                       \
    OP(X, Mm, (const aclTensor *self, const aclTensor *mat2, aclTensor *out, int8_t cubeMathType))                  \
    OP(X, Addmm, (const aclTensor *self, const aclTensor *mat1, const aclTensor *mat2, const aclScalar *beta,       \
               const aclScalar *alpha, aclTensor *out, int8_t cubeMathType))                                     \
    OP(X, MatmulWeightNz, (const aclTensor *self, const aclTensor *mat2, aclTensor *out, int8_t cubeMathType))      \
    OP(X, AddmmWeightNz, (const aclTensor *self, const aclTensor *mat1, const aclTensor *mat2,                      \
                       const aclScalar *beta, const aclScalar *alpha, aclTensor *out, int8_t cubeMathType))       \
    OP(X, SwiGlu, (const aclTensor *x, int64_t dim, const aclTensor *out))                                          \
    OP(X, InplaceIndexCopy, (aclTensor * selfRef, int64_t dim, const aclTensor *index, const aclTensor *source))    \
    OP(X, Topk, (const aclTensor *self, int64_t k, int64_t dim, bool largest, bool sorted, aclTensor *valuesOut,    \
              aclTensor *indicesOut))

#define CANN_OPAPI_TRANSFORMER_OPS(OP, X)                                                                            \
    OP(X, RotaryPositionEmbedding, (const aclTensor *x, const aclTensor *cos, const aclTensor *sin, int64_t mode,   \
                                 aclTensor *out))                                                                \
    OP(X, FusedInferAttentionScoreV4,                                                                               \
       (const aclTensor *query, const aclTensorList *key, const aclTensorList *value,                            \
        const aclTensor *pseShiftOptional, const aclTensor *attenMaskOptional,                                   \
        const aclIntArray *actualSeqLengthsOptional, const aclIntArray *actualSeqLengthsKvOptional,              \
        const aclTensor *deqScale1Optional, const aclTensor *quantScale1Optional,                                \
        const aclTensor *deqScale2Optional, const aclTensor *quantScale2Optional,                                \
        const aclTensor *quantOffset2Optional, const aclTensor *antiquantScaleOptional,                          \
        const aclTensor *antiquantOffsetOptional, const aclTensor *blockTableOptional,                           \
        const aclTensor *queryPaddingSizeOptional, const aclTensor *kvPaddingSizeOptional,                       \
        const aclTensor *keyAntiquantScaleOptional, const aclTensor *keyAntiquantOffsetOptional,                 \
        const aclTensor *valueAntiquantScaleOptional, const aclTensor *valueAntiquantOffsetOptional,             \
        const aclTensor *keySharedPrefixOptional, const aclTensor *valueSharedPrefixOptional,                    \
        const aclIntArray *actualSharedPrefixLenOptional, const aclTensor *queryRopeOptional,                    \
        const aclTensor *keyRopeOptional, const aclTensor *keyRopeAntiquantScaleOptional,                        \
        const aclTensor *dequantScaleQueryOptional, const aclTensor *learnableSinkOptional, int64_t numHeads,    \
        double scaleValue, int64_t preTokens, int64_t nextTokens, char *inputLayout, int64_t numKeyValueHeads,   \
        int64_t sparseMode, int64_t innerPrecise, int64_t blockSize, int64_t antiquantMode, bool softmaxLseFlag, \
        int64_t keyAntiquantMode, int64_t valueAntiquantMode, int64_t queryQuantMode,                            \
        const aclTensor *attentionOut, const aclTensor *softmaxLse))

/* Function lists per operator library, both phases of each operator: LIST(X) -> X(ret, name, (params)) ... */
#define CANN_OP_FUNCS_(X, Name, params)                                                                           \
    X(aclnnStatus, aclnn##Name##GetWorkspaceSize, CANN_OP_PHASE1_PARAMS_ params)                                 \
    X(aclnnStatus, aclnn##Name, (void *workspace, uint64_t workspaceSize, aclOpExecutor *executor, aclrtStream stream))
#define CANN_OP_PHASE1_PARAMS_(...) (__VA_ARGS__, uint64_t *workspaceSize, aclOpExecutor **executor)
#define CANN_OPAPI_MATH_FUNCS(X) CANN_OPAPI_MATH_OPS(CANN_OP_FUNCS_, X)
#define CANN_OPAPI_NN_FUNCS(X) CANN_OPAPI_NN_OPS(CANN_OP_FUNCS_, X)
#define CANN_OPAPI_TRANSFORMER_FUNCS(X) CANN_OPAPI_TRANSFORMER_OPS(CANN_OP_FUNCS_, X)

/* Every function, by library. */
#define CANN_ALL_FUNCS(X)                                                                                         \
    CANN_ASCENDCL_FUNCS(X) CANN_NNOPBASE_FUNCS(X) CANN_OPAPI_MATH_FUNCS(X) CANN_OPAPI_NN_FUNCS(X)               \
    CANN_OPAPI_TRANSFORMER_FUNCS(X)

/* The prototypes (defined by the emulator; the real libraries export them) and the function-pointer types. */
#define CANN_DECLARE_(ret, name, params) ret name params; typedef ret(*name##_fn) params;
CANN_ALL_FUNCS(CANN_DECLARE_)
#undef CANN_DECLARE_

#ifdef __cplusplus
}
#endif
#endif /* ASW_CANN_API_H */
