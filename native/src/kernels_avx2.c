/* kernels_avx2.c — AVX2 + FMA + F16C kernel set (x86-64 only, picked at run time, never -march=native).
 *
 * The decode GEMV, lone and batched, is gemv_chains.h's with 8-lane vectors: the lone one walks the rows one after
 * another with four independent accumulators, so the weights stream sequentially from memory (the bound at one
 * token); the batched one keeps each token's order bit for bit. Prefill chunks run on the outer-product
 * kernel at the end of this file, over weight panels the backend converts to f32 once per chunk. Fewer tokens than
 * that pays for (backend_cpu.c's OUTER_TOKENS) go through x86_loops.h's register-blocked dot-product GEMM: R weight
 * rows x T tokens of 8-lane f32 accumulators, each weight vector converted once (vcvtph2ps for fp16, one byte shuffle
 * for bf16) and reused across T tokens, with the inner dimension in blocks of KC so the token tile stays in L2.
 */
#include "asw.h"
#include "kernels.h"

#if defined(__x86_64__)
#include <immintrin.h>
#include <string.h>

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

/* the vector operations of gemv_chains.h (the decode GEMV, lone and batched) and x86_loops.h, with 8-lane vectors */
#define VEC __m256
#define VL 8
enum { BR = 4, BT = 8 }; /* the largest row and token tile: nr * nt accumulators + nr weights + 1 token in 16 ymm */
#define TILE_ROWS(nt) ((nt) == 2 ? 4 : (nt) <= 6 ? 2 : 1)
enum { KBLOCK = 512, ACT_L1 = 32 * 1024 }; /* 8 tokens' block: 16 KiB, half the 32 KiB L1 of most AVX2-only parts */
/* Below ACT_L1, rows one by one with tokens in pairs: the Qwen2-0.5B shape's 896-column matmuls took 12-17 % longer
 * in tiles at 4 and 8 tokens (2 threads, this set forced on an AVX-512 Xeon), where the 4,864-column down matmul in
 * blocked tiles took 20 % less. (Measured before chain_step kept each token vector in a register; since then, one
 * thread over one such matrix: tiles 0.73-1.06x the time of row pairs at 4-8 tokens, not measured in a whole step.) */
#define GEMV_NEAR_L2_PLAN 0 /* the lone GEMV on the ASW_GEMV_NEAR_L1 prefetch plan only (kernels.h) */
#define ROW_PAIRS_IN_L1 1
INL __m256 v_zero(void) { return _mm256_setzero_ps(); }
INL __m256 v_add(__m256 a, __m256 b) { return _mm256_add_ps(a, b); }
INL __m256 v_fma(__m256 a, __m256 b, __m256 c) { return _mm256_fmadd_ps(a, b, c); }
INL __m256 w_load(int dt, const uint16_t *p) { return ld8(dt, p); }
INL __m256 w_tail(int dt, const uint16_t *p, int n) { /* AVX2 has no 16-bit masked load: through a zeroed copy */
    uint16_t part[8] = {0};
    memcpy(part, p, sizeof(uint16_t) * (size_t)n);
    return ld8(dt, part);
}
INL __m256 x_load(const float *p) { return _mm256_loadu_ps(p); }
INL __m256 x_tail(const float *p, int n) {
    return _mm256_maskload_ps(p, _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)));
}
INL __m256 v_set1(float s) { return _mm256_set1_ps(s); }
INL void v_store(float *p, __m256 v) { _mm256_storeu_ps(p, v); }
INL void f16_store(uint16_t *p, __m256 v) {
    _mm_storeu_si128((__m128i *)p, _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
}
INL __m256 q_load(const int8_t *p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}
INL __m256 q_tail(const int8_t *p, int n) { /* through a zeroed copy, as w_tail */
    int8_t part[8] = {0};
    memcpy(part, p, (size_t)n);
    return q_load(part);
}
INL float hsum(__m256 v) { return hsum8(v); }
INL void hsum_n(float *out, const __m256 *v, int n) {
    for (int p = 0; p < n; p++) out[p] = hsum8(v[p]);
}
#include "gemv_chains.h"
#include "vector_loops.h"
#include "x86_loops.h" /* set_matmul .. set_weighted_sum; the last two for heads not whole 8-lane vectors */

GEMM_TILES(3, 3) /* the GEMM's tile functions and their table (x86_loops.h) */

/* Decode attention over heads of whole 8-lane vectors, without a horizontal sum or a load and store of the output
 * per key (set_dot and set_axpy of x86_loops.h do both, each key one chain of dependent FMAs). Scores go 8 keys at
 * a time, one accumulator per key, and one transposing reduction sums the 8 keys into one vector. The weighted sum
 * keeps up to 64 dimensions of the output in registers across all keys, in slices of 64 (each slice reads its own
 * cache lines of every row, so a 128-dimension head reads nothing twice). */
enum { ATT_KEYS = 8, ATT_SLICE = 64 };

/* lane j = sum of v[j]'s lanes, for 8 vectors: each lane summed in the same tree, ((0+1)+(2+3)) + ((4+5)+(6+7)) */
INL __m256 hsum8x8(const __m256 *v) {
    __m256 t0 = _mm256_hadd_ps(v[0], v[1]), t1 = _mm256_hadd_ps(v[2], v[3]); /* pair sums, per 128-bit lane */
    __m256 t2 = _mm256_hadd_ps(v[4], v[5]), t3 = _mm256_hadd_ps(v[6], v[7]);
    __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3); /* [v0..v3 low halves | v0..v3 high halves] */
    return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

/* lane j: the score of row min(j, last) of K (rows ldk apart) against q [d] (d a multiple of 8) */
INL __m256 scores8(int dt, const uint16_t *K, int64_t ldk, int last, const float *q, int64_t d) {
    const uint16_t *row[ATT_KEYS];
    __m256 a[ATT_KEYS];
#pragma GCC unroll 8
    for (int j = 0; j < ATT_KEYS; j++) {
        row[j] = K + (j < last ? j : last) * ldk;
        asw_prefetch_l1(row[j] + ASW_ATT_AHEAD * ldk, d * 2);
        a[j] = _mm256_setzero_ps();
    }
    for (int64_t i = 0; i < d; i += 8) {
        __m256 x = _mm256_loadu_ps(q + i);
#pragma GCC unroll 8
        for (int j = 0; j < ATT_KEYS; j++) a[j] = _mm256_fmadd_ps(ld8(dt, row[j] + i), x, a[j]);
    }
    return hsum8x8(a);
}

INL void scores_tiled(int dt, float *sc, const uint16_t *K, int64_t ldk, const float *q, int64_t d, int64_t len,
                      float scale) {
    __m256 vscale = _mm256_set1_ps(scale);
    int64_t p = 0;
    for (; p + ATT_KEYS <= len; p += ATT_KEYS)
        _mm256_storeu_ps(sc + p, _mm256_mul_ps(scores8(dt, K + p * ldk, ldk, ATT_KEYS - 1, q, d), vscale));
    if (p < len) { /* the last rows in the same arithmetic: the lanes past len repeat the last row, and are dropped */
        float s[ATT_KEYS];
        _mm256_storeu_ps(s, _mm256_mul_ps(scores8(dt, K + p * ldk, ldk, (int)(len - 1 - p), q, d), vscale));
        for (int j = 0; p + j < len; j++) sc[p + j] = s[j];
    }
}

INL void weighted_sum_regs(int dt, float *out, const float *w, const uint16_t *V, int64_t ldv, int64_t d,
                           int64_t len) {
    for (int64_t s0 = 0; s0 < d; s0 += ATT_SLICE) {
        int64_t nc = (d - s0 < ATT_SLICE ? d - s0 : ATT_SLICE) / 8; /* vectors in this slice */
        __m256 a[ATT_SLICE / 8];                                    /* [nc] the slice of the output so far */
#pragma GCC unroll 8
        for (int64_t c = 0; c < ATT_SLICE / 8; c++)
            a[c] = c < nc ? _mm256_loadu_ps(out + s0 + 8 * c) : _mm256_setzero_ps();
        for (int64_t p = 0; p < len; p++) {
            const uint16_t *v = V + p * ldv + s0; /* [8 nc] */
            __m256 wp = _mm256_set1_ps(w[p]);
            asw_prefetch_l1(v + ASW_ATT_AHEAD * ldv, 16 * nc);
#pragma GCC unroll 8
            for (int64_t c = 0; c < ATT_SLICE / 8; c++)
                if (c < nc) a[c] = _mm256_fmadd_ps(ld8(dt, v + 8 * c), wp, a[c]);
        }
#pragma GCC unroll 8
        for (int64_t c = 0; c < ATT_SLICE / 8; c++)
            if (c < nc) _mm256_storeu_ps(out + s0 + 8 * c, a[c]);
    }
}

TGT static void x_scores_tiled(int dtype, float *sc, const uint16_t *K, int64_t ldk, const float *q, int64_t d,
                               int64_t len, float scale) {
    if (d % 8)
        set_scores(dtype, sc, K, ldk, q, d, len, scale);
    else if (dtype == ASW_DTYPE_F16)
        scores_tiled(ASW_DTYPE_F16, sc, K, ldk, q, d, len, scale);
    else
        scores_tiled(ASW_DTYPE_BF16, sc, K, ldk, q, d, len, scale);
}

TGT static void x_weighted_sum_regs(int dtype, float *out, const float *w, const uint16_t *V, int64_t ldv, int64_t d,
                                    int64_t len) {
    if (d % 8)
        set_weighted_sum(dtype, out, w, V, ldv, d, len);
    else if (dtype == ASW_DTYPE_F16)
        weighted_sum_regs(ASW_DTYPE_F16, out, w, V, ldv, d, len);
    else
        weighted_sum_regs(ASW_DTYPE_BF16, out, w, V, ldv, d, len);
}

/* ---- the outer-product micro-kernel of prefill (see kernels.h): nr <= 6 rows x one 16-column vector (2 ymm), each
 * A element broadcast from memory into 2 FMAs; 12 accumulators + 2 B vectors + 1 broadcast of the 16 ymm. Prefill
 * matmuls run on it (outer_matmul 1) over f32 weight panels, as prefill attention does.
 *
 * The `#pragma GCC unroll`s matter: without them gcc 12 kept the accumulator array in memory as well and stored all
 * of it to the stack on every k step (12 stores per 12 FMAs), which had made this kernel lose to the dot-product
 * tile above. Unrolled, one thread over a 24-row panel and 64 tokens ran at 90-95 % of the FMA peak in three of
 * four runs, and a 128-token prefill of the Qwen2-0.5B shape (2 threads, this set forced on a 2-core AVX-512 Xeon)
 * took 1.14-1.33x the tile's tok/s per interleaved round (2,048 tokens: 1.04-1.36x). */
enum { OR = 6 };
/* k steps per pass: a 16-token strip of B (8 KiB) and the A rows of a 24-row panel (12 KiB) stay in L1 while the
 * panel's row tiles take turns over them */
enum { KO = 128 };

INL void otile(int nr, int add, float *Z, int64_t ldz, const float *A, int64_t lar, int64_t lak, int64_t kn,
               const float *B, int64_t ldb) {
    __m256 acc[OR][2];
#pragma GCC unroll 8
    for (int r = 0; r < nr; r++) {
        acc[r][0] = add ? _mm256_loadu_ps(Z + r * ldz) : _mm256_setzero_ps();
        acc[r][1] = add ? _mm256_loadu_ps(Z + r * ldz + 8) : _mm256_setzero_ps();
    }
    for (int64_t i = 0; i < kn; i++) {
        const float *a = A + i * lak, *b = B + i * ldb;
        __m256 b0 = _mm256_loadu_ps(b), b1 = _mm256_loadu_ps(b + 8);
#pragma GCC unroll 8
        for (int r = 0; r < nr; r++) {
            __m256 ar = _mm256_broadcast_ss(a + r * lar);
            acc[r][0] = _mm256_fmadd_ps(ar, b0, acc[r][0]);
            acc[r][1] = _mm256_fmadd_ps(ar, b1, acc[r][1]);
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < nr; r++) {
        _mm256_storeu_ps(Z + r * ldz, acc[r][0]);
        _mm256_storeu_ps(Z + r * ldz + 8, acc[r][1]);
    }
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
OTILE_FN(6)
static const otile_fn otiles[OR] = {otile_r1, otile_r2, otile_r3, otile_r4, otile_r5, otile_r6}; /* [rows - 1] */

/* Z[r, 16 v + j] (+)= sum_i A[r lar + i lak] B[i ldb + 16 v + j]: KO k steps at a time, each pass over every
 * (vector, row tile); each output still sums its k steps in order (a pass continues from the last one's Z). The
 * lines of `next` (the caller's next weight panel, NULL: none) are fetched into L2 a few before each tile, spread
 * over the whole call. */
TGT static void x_outer(float *Z, int64_t ldz, const float *A, int64_t lar, int64_t lak, int64_t kn, const float *B,
                        int64_t ldb, int64_t rows, int64_t nv, int add, const void *next, int64_t next_bytes) {
    int64_t tiles = (kn + KO - 1) / KO * nv * ((rows + OR - 1) / OR);
    const char *pf = next, *pf_end = next == NULL ? NULL : (const char *)next + next_bytes;
    int64_t per = next == NULL || tiles == 0 ? 0 : (next_bytes / 64 + tiles - 1) / tiles; /* lines per tile */
    for (int64_t k0 = 0; k0 < kn; k0 += KO) {
        int64_t kb = kn - k0 < KO ? kn - k0 : KO;
        for (int64_t v = 0; v < nv; v++)
            for (int64_t r = 0; r < rows; r += OR) {
                for (int64_t q = 0; q < per && pf < pf_end; q++, pf += 64) _mm_prefetch(pf, _MM_HINT_T1);
                int rn = rows - r < OR ? (int)(rows - r) : OR;
                otiles[rn - 1](add || k0 > 0, Z + r * ldz + 16 * v, ldz, A + r * lar + k0 * lak, lar, lak, kb,
                               B + k0 * ldb + 16 * v, ldb);
            }
    }
}

const asw_kernels asw_kernels_avx2 = {"avx2", set_matmul, gemv_batch, set_to_f32, set_from_f32, x_scores_tiled,
                                       x_weighted_sum_regs, x_outer, 1, exp_sum, silu_mul, softmax_block,
                                       NULL, NULL, gemv_i8, abs_max, quantize_i8};

#else
typedef int asw_empty_translation_unit; /* ISO C wants at least one declaration */
#endif /* __x86_64__ */
