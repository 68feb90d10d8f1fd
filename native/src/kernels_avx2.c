/* kernels_avx2.c — AVX2 + FMA + F16C kernel set (x86-64 only, picked at run time, never -march=native).
 *
 * Decode (nt = 1) is a GEMV that walks the rows one after another with four independent accumulators, so the
 * weights stream sequentially from memory (the bound at one token). Prefill (nt > 1) is a register-blocked
 * dot-product GEMM: R weight rows x T tokens of 8-lane f32 accumulators, each weight vector converted once
 * (vcvtph2ps for fp16, one byte shuffle for bf16) and reused across T tokens, with the inner dimension in
 * blocks of KC so the token tile stays in L2.
 */
#include "asw.h"
#include "kernels.h"

#if defined(__x86_64__)
#include <immintrin.h>

#define TGT __attribute__((target("avx2,fma,f16c")))
#define INL TGT static inline __attribute__((always_inline))

enum { R = 3, T = 3, KC = 1024 }; /* 9 accumulators + 3 weights + 1 token vector: no spills in 16 ymm */

/* bf16: the 8 values are loaded into both 128-bit lanes (a plain load) and one byte shuffle puts word j of lane
 * j / 4 into the high half of dword j, zeroing the low halves (zero-extend + shift took two uops) */
INL __m256 ld8(int dt, const uint16_t *p) {
    if (dt == ASW_DTYPE_F16) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
    const __m256i to_high = _mm256_setr_epi8(-1, -1, 0, 1, -1, -1, 2, 3, -1, -1, 4, 5, -1, -1, 6, 7,
                                             -1, -1, 8, 9, -1, -1, 10, 11, -1, -1, 12, 13, -1, -1, 14, 15);
    __m256i both = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)p));
    return _mm256_castsi256_ps(_mm256_shuffle_epi8(both, to_high));
}

INL float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* Y[t*ldy + r] (+)= W[r, 0:k] . X[t, 0:k] for r < nr, t < nt; nr, nt are compile-time constants after inlining */
INL void tile(int dt, int nr, int nt, int add, float *Y, int64_t ldy, const uint16_t *W, int64_t ldw, int64_t k,
              const float *X, int64_t ldx) {
    __m256 acc[R][T];
    for (int r = 0; r < nr; r++)
        for (int t = 0; t < nt; t++) acc[r][t] = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= k; i += 8) {
        __m256 w[R];
        for (int r = 0; r < nr; r++) w[r] = ld8(dt, W + r * ldw + i);
        for (int t = 0; t < nt; t++) {
            __m256 x = _mm256_loadu_ps(X + t * ldx + i);
            for (int r = 0; r < nr; r++) acc[r][t] = _mm256_fmadd_ps(w[r], x, acc[r][t]);
        }
    }
    for (int r = 0; r < nr; r++)
        for (int t = 0; t < nt; t++) {
            float s = hsum8(acc[r][t]);
            for (int64_t j = i; j < k; j++) s += asw_u16_to_f32(dt, W[r * ldw + j]) * X[t * ldx + j];
            float *y = Y + t * ldy + r;
            *y = add ? *y + s : s;
        }
}

#define TILE_FN(name, dt, nr, nt)                                                                                  \
    TGT static void name(int add, float *Y, int64_t ldy, const uint16_t *W, int64_t ldw, int64_t k,              \
                         const float *X, int64_t ldx) {                                                           \
        tile(dt, nr, nt, add, Y, ldy, W, ldw, k, X, ldx);                                                        \
    }
typedef void (*tile_fn)(int, float *, int64_t, const uint16_t *, int64_t, int64_t, const float *, int64_t);

TILE_FN(h_r3t1, ASW_DTYPE_F16, 3, 1)
TILE_FN(h_r3t2, ASW_DTYPE_F16, 3, 2)
TILE_FN(h_r3t3, ASW_DTYPE_F16, 3, 3)
TILE_FN(h_r1t1, ASW_DTYPE_F16, 1, 1)
TILE_FN(h_r1t2, ASW_DTYPE_F16, 1, 2)
TILE_FN(h_r1t3, ASW_DTYPE_F16, 1, 3)
TILE_FN(b_r3t1, ASW_DTYPE_BF16, 3, 1)
TILE_FN(b_r3t2, ASW_DTYPE_BF16, 3, 2)
TILE_FN(b_r3t3, ASW_DTYPE_BF16, 3, 3)
TILE_FN(b_r1t1, ASW_DTYPE_BF16, 1, 1)
TILE_FN(b_r1t2, ASW_DTYPE_BF16, 1, 2)
TILE_FN(b_r1t3, ASW_DTYPE_BF16, 1, 3)

/* [dtype is f16][full R rows][tokens - 1] */
static const tile_fn tiles[2][2][T] = {
    {{b_r1t1, b_r1t2, b_r1t3}, {b_r3t1, b_r3t2, b_r3t3}},
    {{h_r1t1, h_r1t2, h_r1t3}, {h_r3t1, h_r3t2, h_r3t3}},
};

/* one row . nt <= 2 vectors, four independent accumulators per vector: the decode GEMV (nt = 1), and the batched
 * decode step, where each token is summed exactly as alone and each weight vector is converted once. Rows are walked
 * one after another so the weights stream through memory sequentially (interleaving rows defeats the prefetcher). */
INL void row_dot_n(int dt, int nt, float *y, int64_t ldy, const uint16_t *w, const float *X, int64_t ldx, int64_t k) {
    __m256 a[2][4]; /* [token][accumulator] */
    for (int t = 0; t < nt; t++) a[t][0] = a[t][1] = a[t][2] = a[t][3] = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= k; i += 32) {
        _mm_prefetch((const char *)(w + i + ASW_GEMV_PREFETCH_FAR), ASW_GEMV_PREFETCH_FAR_HINT); /* this step's line */
        _mm_prefetch((const char *)(w + i + ASW_GEMV_PREFETCH_NEAR), ASW_GEMV_PREFETCH_NEAR_HINT);
        __m256 w0 = ld8(dt, w + i), w1 = ld8(dt, w + i + 8), w2 = ld8(dt, w + i + 16), w3 = ld8(dt, w + i + 24);
        for (int t = 0; t < nt; t++) {
            const float *x = X + t * ldx;
            a[t][0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + i), a[t][0]);
            a[t][1] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + i + 8), a[t][1]);
            a[t][2] = _mm256_fmadd_ps(w2, _mm256_loadu_ps(x + i + 16), a[t][2]);
            a[t][3] = _mm256_fmadd_ps(w3, _mm256_loadu_ps(x + i + 24), a[t][3]);
        }
    }
    for (; i + 8 <= k; i += 8) {
        __m256 w0 = ld8(dt, w + i);
        for (int t = 0; t < nt; t++) a[t][0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(X + t * ldx + i), a[t][0]);
    }
    for (int t = 0; t < nt; t++) {
        const float *x = X + t * ldx;
        float s = hsum8(_mm256_add_ps(_mm256_add_ps(a[t][0], a[t][1]), _mm256_add_ps(a[t][2], a[t][3])));
        for (int64_t j = i; j < k; j++) s += asw_u16_to_f32(dt, w[j]) * x[j];
        y[t * ldy] = s;
    }
}

INL float row_dot(int dt, const uint16_t *w, const float *x, int64_t k) {
    float y;
    row_dot_n(dt, 1, &y, 0, w, x, 0, k);
    return y;
}

#define GEMV_BATCH_FN(name, dt)                                                                                    \
    TGT static void name(float *Y, int64_t ldy, const uint16_t *W, int64_t k, int64_t r0, int64_t r1,            \
                         const float *X, int64_t ldx, int64_t nt) {                                               \
        for (int64_t r = r0; r < r1; r++)                                                                          \
            for (int64_t t = 0; t < nt; t += 2) {                                                                  \
                float *y = Y + t * ldy + r;                                                                        \
                if (nt - t >= 2)                                                                                   \
                    row_dot_n(dt, 2, y, ldy, W + r * k, X + t * ldx, ldx, k);                                      \
                else                                                                                               \
                    row_dot_n(dt, 1, y, ldy, W + r * k, X + t * ldx, ldx, k);                                      \
            }                                                                                                      \
    }
GEMV_BATCH_FN(gemv_batch_f16, ASW_DTYPE_F16)
GEMV_BATCH_FN(gemv_batch_bf16, ASW_DTYPE_BF16)

TGT static void x_gemv_batch(int dtype, float *Y, int64_t ldy, const uint16_t *W, int64_t k, int64_t r0, int64_t r1,
                             const float *X, int64_t ldx, int64_t nt) {
    (dtype == ASW_DTYPE_F16 ? gemv_batch_f16 : gemv_batch_bf16)(Y, ldy, W, k, r0, r1, X, ldx, nt);
}

TGT static void gemv_f16(float *y, const uint16_t *W, int64_t k, int64_t r0, int64_t r1, const float *x) {
    for (int64_t r = r0; r < r1; r++) y[r] = row_dot(ASW_DTYPE_F16, W + r * k, x, k);
}

TGT static void gemv_bf16(float *y, const uint16_t *W, int64_t k, int64_t r0, int64_t r1, const float *x) {
    for (int64_t r = r0; r < r1; r++) y[r] = row_dot(ASW_DTYPE_BF16, W + r * k, x, k);
}

TGT static void x_matmul(int dtype, float *Y, int64_t ldy, const uint16_t *W, int64_t k, int64_t r0, int64_t r1,
                         const float *X, int64_t ldx, int64_t nt) {
    int f16 = dtype == ASW_DTYPE_F16;
    if (nt == 1) {
        (f16 ? gemv_f16 : gemv_bf16)(Y, W, k, r0, r1, X);
        return;
    }
    int64_t kc = KC;
    for (int64_t k0 = 0; k0 < k; k0 += kc) {
        int64_t kn = k - k0 < kc ? k - k0 : kc;
        int add = k0 > 0;
        for (int64_t r = r0; r < r1;) {
            int full = r + R <= r1;
            for (int64_t t = 0; t < nt; t += T) {
                int64_t tn = nt - t < T ? nt - t : T;
                tiles[f16][full][tn - 1](add, Y + t * ldy + r, ldy, W + r * k + k0, k, kn, X + t * ldx + k0, ldx);
            }
            r += full ? R : 1;
        }
    }
}

TGT static void x_to_f32(int dtype, float *dst, const uint16_t *src, int64_t n) {
    int64_t i = 0;
    if (dtype == ASW_DTYPE_F16)
        for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, ld8(ASW_DTYPE_F16, src + i));
    else
        for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, ld8(ASW_DTYPE_BF16, src + i));
    for (; i < n; i++) dst[i] = asw_u16_to_f32(dtype, src[i]);
}

TGT static void x_from_f32(int dtype, uint16_t *dst, const float *src, int64_t n) {
    int64_t i = 0;
    if (dtype == ASW_DTYPE_F16) {
        for (; i + 8 <= n; i += 8)
            _mm_storeu_si128((__m128i *)(dst + i), _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
        for (; i < n; i++) dst[i] = asw_f32_to_f16(src[i]);
    } else {
        for (; i < n; i++) dst[i] = asw_f32_to_bf16(src[i]);
    }
}

INL float x_dot(int dtype, const uint16_t *a, const float *x, int64_t n) {
    __m256 acc = _mm256_setzero_ps();
    int64_t i = 0;
    if (dtype == ASW_DTYPE_F16)
        for (; i + 8 <= n; i += 8) acc = _mm256_fmadd_ps(ld8(ASW_DTYPE_F16, a + i), _mm256_loadu_ps(x + i), acc);
    else
        for (; i + 8 <= n; i += 8) acc = _mm256_fmadd_ps(ld8(ASW_DTYPE_BF16, a + i), _mm256_loadu_ps(x + i), acc);
    float s = hsum8(acc);
    for (; i < n; i++) s += asw_u16_to_f32(dtype, a[i]) * x[i];
    return s;
}

INL void x_axpy(int dtype, float *y, float s, const uint16_t *a, int64_t n) {
    __m256 vs = _mm256_set1_ps(s);
    int64_t i = 0;
    if (dtype == ASW_DTYPE_F16)
        for (; i + 8 <= n; i += 8)
            _mm256_storeu_ps(y + i, _mm256_fmadd_ps(vs, ld8(ASW_DTYPE_F16, a + i), _mm256_loadu_ps(y + i)));
    else
        for (; i + 8 <= n; i += 8)
            _mm256_storeu_ps(y + i, _mm256_fmadd_ps(vs, ld8(ASW_DTYPE_BF16, a + i), _mm256_loadu_ps(y + i)));
    for (; i < n; i++) y[i] += s * asw_u16_to_f32(dtype, a[i]);
}

ASW_ATTENTION_LOOPS(x, TGT)

/* ---- the outer-product micro-kernel of prefill attention (see kernels.h): nr <= 5 rows x one 16-column vector
 * (2 ymm), each A element broadcast from memory into 2 FMAs; 10 accumulators + 2 B vectors + 1 broadcast of 16 ymm.
 * Prefill matmuls keep the dot-product tile above (outer_matmul 0): on a 2-core AVX-512 Xeon with this set forced,
 * a 256-token prefill took 5.3-5.5 s of CPU on `outer` against 3.6-4.5 s on the tile. */
enum { OR = 5 };

INL void otile(int nr, int add, float *Z, int64_t ldz, const float *A, int64_t lar, int64_t lak, int64_t kn,
               const float *B, int64_t ldb) {
    __m256 acc[OR][2];
    for (int r = 0; r < nr; r++)
        for (int v = 0; v < 2; v++) acc[r][v] = add ? _mm256_loadu_ps(Z + r * ldz + 8 * v) : _mm256_setzero_ps();
    for (int64_t i = 0; i < kn; i++) {
        const float *a = A + i * lak, *b = B + i * ldb;
        __m256 b0 = _mm256_loadu_ps(b), b1 = _mm256_loadu_ps(b + 8);
        for (int r = 0; r < nr; r++) {
            __m256 ar = _mm256_broadcast_ss(a + r * lar);
            acc[r][0] = _mm256_fmadd_ps(ar, b0, acc[r][0]);
            acc[r][1] = _mm256_fmadd_ps(ar, b1, acc[r][1]);
        }
    }
    for (int r = 0; r < nr; r++)
        for (int v = 0; v < 2; v++) _mm256_storeu_ps(Z + r * ldz + 8 * v, acc[r][v]);
}

typedef void (*otile_fn)(int, float *, int64_t, const float *, int64_t, int64_t, int64_t, const float *, int64_t);
#define OTILE_FN(nr)                                                                                               \
    TGT static void otile_r##nr(int add, float *Z, int64_t ldz, const float *A, int64_t lar, int64_t lak,        \
                                int64_t kn, const float *B, int64_t ldb) {                                        \
        otile(nr, add, Z, ldz, A, lar, lak, kn, B, ldb);                                                         \
    }
OTILE_FN(1)
OTILE_FN(2)
OTILE_FN(3)
OTILE_FN(4)
OTILE_FN(5)
static const otile_fn otiles[OR] = {otile_r1, otile_r2, otile_r3, otile_r4, otile_r5}; /* [rows - 1] */

TGT static void x_outer(float *Z, int64_t ldz, const float *A, int64_t lar, int64_t lak, int64_t kn, const float *B,
                        int64_t ldb, int64_t rows, int64_t nv, int add, const void *next, int64_t next_bytes) {
    (void)next; /* used for attention only, where there is nothing to prefetch */
    (void)next_bytes;
    for (int64_t v = 0; v < nv; v++)
        for (int64_t r = 0; r < rows; r += OR) {
            int rn = rows - r < OR ? (int)(rows - r) : OR;
            otiles[rn - 1](add, Z + r * ldz + 16 * v, ldz, A + r * lar, lar, lak, kn, B + 16 * v, ldb);
        }
}

const asw_kernels asw_kernels_avx2 = {"avx2", x_matmul, x_gemv_batch, x_to_f32, x_from_f32, x_scores,
                                       x_weighted_sum, x_outer, 0};

#else
typedef int asw_empty_translation_unit; /* ISO C wants at least one declaration */
#endif /* __x86_64__ */
