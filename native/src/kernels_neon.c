/* kernels_neon.c — NEON kernel set (aarch64 only, where NEON and the fp16 conversions are baseline).
 *
 * Kept deliberately simple: 4 weight rows x 1 token of 4-lane accumulators; prefill uses the same tile per token.
 */
#include "asw.h"
#include "kernels.h"

#if defined(__aarch64__)
#include <arm_neon.h>

static inline float32x4_t ld4(int dt, const uint16_t *p) {
    uint16x4_t h = vld1_u16(p);
    if (dt == ASW_DTYPE_F16) return vcvt_f32_f16(vreinterpret_f16_u16(h));
    return vreinterpretq_f32_u32(vshll_n_u16(h, 16));
}

static void n_matmul(int dtype, float *Y, int64_t ldy, const uint16_t *W, int64_t k, int64_t r0, int64_t r1,
                     const float *X, int64_t ldx, int64_t nt) {
    int64_t r = r0;
    for (; r + 4 <= r1; r += 4) {
        const uint16_t *w0 = W + r * k, *w1 = w0 + k, *w2 = w1 + k, *w3 = w2 + k;
        for (int64_t t = 0; t < nt; t++) {
            const float *x = X + t * ldx;
            float32x4_t a0 = vdupq_n_f32(0.0f), a1 = a0, a2 = a0, a3 = a0;
            int64_t i = 0;
            for (; i + 4 <= k; i += 4) {
                float32x4_t xv = vld1q_f32(x + i);
                a0 = vfmaq_f32(a0, ld4(dtype, w0 + i), xv);
                a1 = vfmaq_f32(a1, ld4(dtype, w1 + i), xv);
                a2 = vfmaq_f32(a2, ld4(dtype, w2 + i), xv);
                a3 = vfmaq_f32(a3, ld4(dtype, w3 + i), xv);
            }
            float s0 = vaddvq_f32(a0), s1 = vaddvq_f32(a1), s2 = vaddvq_f32(a2), s3 = vaddvq_f32(a3);
            for (; i < k; i++) {
                s0 += asw_u16_to_f32(dtype, w0[i]) * x[i];
                s1 += asw_u16_to_f32(dtype, w1[i]) * x[i];
                s2 += asw_u16_to_f32(dtype, w2[i]) * x[i];
                s3 += asw_u16_to_f32(dtype, w3[i]) * x[i];
            }
            float *y = Y + t * ldy + r;
            y[0] = s0;
            y[1] = s1;
            y[2] = s2;
            y[3] = s3;
        }
    }
    for (; r < r1; r++) {
        const uint16_t *w = W + r * k;
        for (int64_t t = 0; t < nt; t++) {
            const float *x = X + t * ldx;
            float32x4_t a = vdupq_n_f32(0.0f);
            int64_t i = 0;
            for (; i + 4 <= k; i += 4) a = vfmaq_f32(a, ld4(dtype, w + i), vld1q_f32(x + i));
            float s = vaddvq_f32(a);
            for (; i < k; i++) s += asw_u16_to_f32(dtype, w[i]) * x[i];
            Y[t * ldy + r] = s;
        }
    }
}

static void n_to_f32(int dtype, float *dst, const uint16_t *src, int64_t n) {
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) vst1q_f32(dst + i, ld4(dtype, src + i));
    for (; i < n; i++) dst[i] = asw_u16_to_f32(dtype, src[i]);
}

static void n_from_f32(int dtype, uint16_t *dst, const float *src, int64_t n) {
    int64_t i = 0;
    if (dtype == ASW_DTYPE_F16)
        for (; i + 4 <= n; i += 4) vst1_u16(dst + i, vreinterpret_u16_f16(vcvt_f16_f32(vld1q_f32(src + i))));
    for (; i < n; i++) dst[i] = dtype == ASW_DTYPE_F16 ? asw_f32_to_f16(src[i]) : asw_f32_to_bf16(src[i]);
}

static inline float n_dot(int dtype, const uint16_t *a, const float *x, int64_t n) {
    float32x4_t acc = vdupq_n_f32(0.0f);
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) acc = vfmaq_f32(acc, ld4(dtype, a + i), vld1q_f32(x + i));
    float s = vaddvq_f32(acc);
    for (; i < n; i++) s += asw_u16_to_f32(dtype, a[i]) * x[i];
    return s;
}

static inline void n_axpy(int dtype, float *y, float s, const uint16_t *a, int64_t n) {
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) vst1q_f32(y + i, vfmaq_n_f32(vld1q_f32(y + i), ld4(dtype, a + i), s));
    for (; i < n; i++) y[i] += s * asw_u16_to_f32(dtype, a[i]);
}

ASW_ATTENTION_LOOPS(n, )
ASW_GEMV_BATCH_BY_TOKEN(n, )
ASW_OUTER_LOOPS(n, )
ASW_GEMV_I8_LOOPS(n, )

#define TGT /* no target attribute: the compiler's baseline */
#include "vector_loops.h"

const asw_kernels asw_kernels_neon = {"neon", n_matmul, n_gemv_batch, n_to_f32, n_from_f32, n_scores,
                                       n_weighted_sum, n_outer, 0, exp_sum, silu_mul, softmax_block,
                                       NULL, NULL, n_gemv_i8, abs_max, quantize_i8};

#else
typedef int asw_empty_translation_unit; /* ISO C wants at least one declaration */
#endif /* __aarch64__ */
