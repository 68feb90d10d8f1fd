/* kernels.h — the SIMD kernel sets of the cpu backend.
 *
 * Weights are u16 (fp16 or bf16, enum asw_dtype) rows in HuggingFace orientation [out, in]; activations are f32.
 * Every set implements the same table; kernels_select() picks one at run time from the CPU's features
 * (__builtin_cpu_supports) or from the environment variable ASW_KERNELS=portable|avx2|avx512|neon.
 * No kernel allocates, and none knows about threads: callers split the rows.
 */
#ifndef ASW_KERNELS_H
#define ASW_KERNELS_H

#include <stdint.h>

typedef struct asw_kernels {
    const char *name;
    /* Y[t*ldy + r] = sum_i W[r*k + i] * X[t*ldx + i]   for t in [0, nt), r in [r0, r1).
     * W: [rows, k] u16 of `dtype`; X: [nt, ldx] f32; Y: [nt, ldy] f32. nt = 1 is the decode GEMV. */
    void (*matmul)(int dtype, float *Y, int64_t ldy, const uint16_t *W, int64_t k, int64_t r0, int64_t r1,
                   const float *X, int64_t ldx, int64_t nt);
    /* dst[i] = (float)src[i], i < n */
    void (*to_f32)(int dtype, float *dst, const uint16_t *src, int64_t n);
    /* dst[i] = src[i] rounded to `dtype` (round to nearest even), i < n */
    void (*from_f32)(int dtype, uint16_t *dst, const float *src, int64_t n);
    /* returns sum_i a[i] * x[i]: q.k against a cache row */
    float (*dot)(int dtype, const uint16_t *a, const float *x, int64_t n);
    /* y[i] += s * a[i]: weighted sum of cache rows */
    void (*axpy)(int dtype, float *y, float s, const uint16_t *a, int64_t n);
} asw_kernels;

/* Bit mask of the sets this build can run here: 1 = AVX2+F16C+FMA, 2 = AVX-512, 4 = NEON. */
int32_t kernels_cpu_features(void);
/* The set to use now (honours ASW_KERNELS). NULL with *why set when ASW_KERNELS names an unusable set. */
const asw_kernels *kernels_select(const char **why);

/* scalar conversions shared by all sets (and by the backend's small vector ops) */
float asw_f16_to_f32(uint16_t h);
float asw_bf16_to_f32(uint16_t h);
uint16_t asw_f32_to_f16(float f);
uint16_t asw_f32_to_bf16(float f);
static inline float asw_u16_to_f32(int dtype, uint16_t h) {
    return dtype == 1 /* ASW_DTYPE_F16 */ ? asw_f16_to_f32(h) : asw_bf16_to_f32(h);
}

extern const asw_kernels asw_kernels_portable;
#if defined(__x86_64__)
extern const asw_kernels asw_kernels_avx2;
extern const asw_kernels asw_kernels_avx512;
#endif
#if defined(__aarch64__)
extern const asw_kernels asw_kernels_neon;
#endif

#endif /* ASW_KERNELS_H */
