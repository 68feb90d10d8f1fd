/* kernels_portable.c — scalar conversions, the portable C kernel set, and the run-time choice of a set.
 *
 * The portable set is the reference every SIMD set is tested against; it is plain C11 with no intrinsics.
 */
#include <stdlib.h>
#include <string.h>

#include "asw.h"
#include "kernels.h"

/* ---------------------------------------------------------------------------------------------------------
 * scalar conversions (IEEE binary16 and bfloat16 <-> binary32, round to nearest even, NaN kept quiet)
 */

static inline uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static inline float bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

float asw_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    if (exp == 0) { /* zero or subnormal: man * 2^-24 (exact in f32) */
        float f = (float)man * 5.9604644775390625e-8f;
        return bits_f32(sign | f32_bits(f));
    }
    if (exp == 31) return bits_f32(sign | 0x7f800000u | (man << 13)); /* inf / nan */
    return bits_f32(sign | ((exp + 112u) << 23) | (man << 13));
}

float asw_bf16_to_f32(uint16_t h) { return bits_f32((uint32_t)h << 16); }

uint16_t asw_f32_to_f16(float f) {
    uint32_t x = f32_bits(f);
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) /* inf or nan (quieted) */
        return (uint16_t)(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u | ((ax >> 13) & 0x3ffu) : 0u));
    if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* >= 65520 rounds to inf */
    if (ax < 0x38800000u) {                                    /* below 2^-14: subnormal or zero */
        /* adding 0.5 leaves round-to-nearest-even(|f| / 2^-24) in the low mantissa bits */
        float r = bits_f32(ax) + 0.5f;
        return (uint16_t)(sign | (f32_bits(r) - 0x3f000000u));
    }
    uint32_t odd = (ax >> 13) & 1u;
    ax += 0xc8000fffu + odd; /* re-bias the exponent by -112 and round */
    return (uint16_t)(sign | (ax >> 13));
}

/* ---------------------------------------------------------------------------------------------------------
 * portable kernels
 */

static void p_matmul(int dtype, float *Y, int64_t ldy, const uint16_t *W, int64_t k, int64_t r0, int64_t r1,
                     const float *X, int64_t ldx, int64_t nt) {
    for (int64_t r = r0; r < r1; r++) {
        const uint16_t *w = W + r * k;
        for (int64_t t = 0; t < nt; t++) {
            const float *x = X + t * ldx;
            float s[4] = {0.0f, 0.0f, 0.0f, 0.0f};
            int64_t i = 0;
            for (; i + 4 <= k; i += 4)
                for (int j = 0; j < 4; j++) s[j] += asw_u16_to_f32(dtype, w[i + j]) * x[i + j];
            for (; i < k; i++) s[0] += asw_u16_to_f32(dtype, w[i]) * x[i];
            Y[t * ldy + r] = (s[0] + s[1]) + (s[2] + s[3]);
        }
    }
}

static void p_to_f32(int dtype, float *dst, const uint16_t *src, int64_t n) {
    for (int64_t i = 0; i < n; i++) dst[i] = asw_u16_to_f32(dtype, src[i]);
}

static void p_from_f32(int dtype, uint16_t *dst, const float *src, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        dst[i] = dtype == ASW_DTYPE_F16 ? asw_f32_to_f16(src[i]) : asw_f32_to_bf16(src[i]);
}

static inline float p_dot(int dtype, const uint16_t *a, const float *x, int64_t n) {
    float s = 0.0f;
    for (int64_t i = 0; i < n; i++) s += asw_u16_to_f32(dtype, a[i]) * x[i];
    return s;
}

static inline void p_axpy(int dtype, float *y, float s, const uint16_t *a, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] += s * asw_u16_to_f32(dtype, a[i]);
}

ASW_ATTENTION_LOOPS(p, )
ASW_GEMV_BATCH_BY_TOKEN(p, )
ASW_OUTER_LOOPS(p, )
ASW_GEMV_I8_LOOPS(p, )

#define TGT /* no target attribute: the compiler's baseline */
#include "vector_loops.h"

const asw_kernels asw_kernels_portable = {"portable", p_matmul, p_gemv_batch, p_to_f32, p_from_f32, p_scores,
                                       p_weighted_sum, p_outer, 0, exp_sum, silu_mul, softmax_block,
                                       NULL, NULL, p_gemv_i8, abs_max, quantize_i8};

/* ---------------------------------------------------------------------------------------------------------
 * run-time choice
 */

int32_t kernels_cpu_features(void) {
    int32_t f = 0;
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")) f |= 1;
    if ((f & 1) && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl"))
        f |= 2;
    if ((f & 2) && __builtin_cpu_supports("avx512bf16")) f |= 8;
#elif defined(__aarch64__)
    f |= 4;
#endif
    return f;
}

#if defined(__x86_64__)
/* The AVX-512 set with its decode GEMV's prefetch plan for this CPU (kernels.h): near into L2 on AMD (Zen 4 and
 * later: AMD's cores with AVX-512), near into L1 elsewhere. */
static const asw_kernels *avx512_for_this_cpu(void) {
    __builtin_cpu_init();
    return __builtin_cpu_is("amd") ? &asw_kernels_avx512_near_l2 : &asw_kernels_avx512;
}
#endif

asw_outer_bf16_fn kernels_outer_bf16(const asw_kernels *k) {
#if defined(__x86_64__)
    const char *force = getenv("ASW_VDPBF16PS");
    int on = force != NULL && force[0] != '\0' ? strcmp(force, "0") != 0 : __builtin_cpu_is("amd");
    if ((k == &asw_kernels_avx512 || k == &asw_kernels_avx512_near_l2) && (kernels_cpu_features() & 8) && on)
        return asw_outer_bf16_avx512;
#endif
    (void)k;
    return NULL;
}

const asw_kernels *kernels_select(const char **why) {
    int32_t f = kernels_cpu_features();
    const char *want = getenv("ASW_KERNELS");
    *why = NULL;
    if (want != NULL && want[0] != '\0' && strcmp(want, "auto") != 0) {
        if (strcmp(want, "portable") == 0) return &asw_kernels_portable;
#if defined(__x86_64__)
        if (strcmp(want, "avx2") == 0 && (f & 1)) return &asw_kernels_avx2;
        if (strcmp(want, "avx512") == 0 && (f & 2)) return avx512_for_this_cpu();
#endif
#if defined(__aarch64__)
        if (strcmp(want, "neon") == 0 && (f & 4)) return &asw_kernels_neon;
#endif
        *why = "ASW_KERNELS names a kernel set this build or CPU cannot run (choose portable, avx2, avx512, neon "
               "or auto; see asw_cpu_features())";
        return NULL;
    }
#if defined(__x86_64__)
    if (f & 2) return avx512_for_this_cpu();
    if (f & 1) return &asw_kernels_avx2;
#endif
#if defined(__aarch64__)
    if (f & 4) return &asw_kernels_neon;
#endif
    return &asw_kernels_portable;
}
