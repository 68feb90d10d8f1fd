/* kernels_avx512.c — AVX-512 (F + BW + VL) kernel set (x86-64 only, picked at run time).
 *
 * Same structure as kernels_avx2.c (the decode GEMV of gemv_chains.h, the register-blocked GEMM of x86_loops.h)
 * with 16-lane accumulators, a larger register tile (32 zmm registers), and masked loads for the inner-dimension
 * tails; plus the register-tiled outer-product kernel (`outer`) that prefill matmuls and attention use, the
 * decode attention kernels that keep a head (or a tile of a KV group's heads) in registers, and the bf16-pair
 * outer-product kernel for CPUs with AVX512_BF16.
 */
#include "asw.h"
#include "kernels.h"

#if defined(__x86_64__)
#include <immintrin.h>

#define TGT __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl")))
#define INL TGT static inline __attribute__((always_inline))

enum { R = 4, T = 5, KC = 1024 }; /* 20 accumulators + 4 weights + 1 token vector of 32 zmm */

/* 16 bf16 -> f32 in lane order with one shuffle uop: word j moves to the high half of dword j and the mask zeroes
 * the low halves (zero-extend + shift took two uops, the shift on an FMA port) */
INL __m512 bf16_widen(__m256i h) {
    const __m512i to_high = _mm512_set_epi16(15, 0, 14, 0, 13, 0, 12, 0, 11, 0, 10, 0, 9, 0, 8, 0,
                                             7, 0, 6, 0, 5, 0, 4, 0, 3, 0, 2, 0, 1, 0, 0, 0);
    return _mm512_castsi512_ps(_mm512_maskz_permutexvar_epi16(0xAAAAAAAAu, to_high, _mm512_castsi256_si512(h)));
}

INL __m512 ld16(int dt, const uint16_t *p) {
    __m256i h = _mm256_loadu_si256((const __m256i *)p);
    if (dt == ASW_DTYPE_F16) return _mm512_cvtph_ps(h);
    return bf16_widen(h);
}

/* the first n (< 16) elements, zeros after; reads nothing past p + n */
INL __m512 ld16_tail(int dt, const uint16_t *p, __mmask16 m) {
    __m256i h = _mm256_maskz_loadu_epi16(m, p);
    if (dt == ASW_DTYPE_F16) return _mm512_cvtph_ps(h);
    return bf16_widen(h);
}


/* The horizontal sum of a vector in one fixed tree — lanes j + (j + 8), then j + (j + 4), j + (j + 2), j + (j + 1) —
 * written out so that the lone step (hsum) and the batched step (hsum16, sixteen sums at once) add in exactly the
 * same order whatever the compiler's own _mm512_reduce_add_ps does. */
INL float hsum(__m512 v) {
    __m256 a = _mm256_add_ps(_mm512_castps512_ps256(v), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
    __m128 b = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    __m128 c = _mm_add_ps(b, _mm_movehl_ps(b, b)); /* c0 = b0 + b2, c1 = b1 + b3 */
    return _mm_cvtss_f32(_mm_add_ss(c, _mm_movehdup_ps(c)));
}

/* out[p] = hsum(v[p]) for p < 16, in hsum's tree, by transposing as it reduces (45 operations instead of 16 * 7) */
INL void hsum16(float *out, const __m512 *v) {
    __m512 t[8], u[4], w[2];
    /* level 1 puts v[j] in lane 4 (j % 4) + j / 4 of the result: feed it the inputs in that transposed order */
    static const int at[16] = {0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15};
    for (int i = 0; i < 8; i++) { /* halves of two vectors: [a0 + a2, a1 + a3 | b0 + b2, b1 + b3] (128-bit lanes) */
        __m512 a = v[at[2 * i]], b = v[at[2 * i + 1]];
        t[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x44), _mm512_shuffle_f32x4(a, b, 0xEE));
    }
    for (int i = 0; i < 4; i++) /* quarters: one 128-bit lane per input */
        u[i] = _mm512_add_ps(_mm512_shuffle_f32x4(t[2 * i], t[2 * i + 1], 0x88),
                             _mm512_shuffle_f32x4(t[2 * i], t[2 * i + 1], 0xDD));
    for (int i = 0; i < 2; i++) /* pairs within a lane: [c0, c1] of two inputs */
        w[i] = _mm512_add_ps(_mm512_shuffle_ps(u[2 * i], u[2 * i + 1], 0x44),
                             _mm512_shuffle_ps(u[2 * i], u[2 * i + 1], 0xEE));
    _mm512_storeu_ps(out, _mm512_add_ps(_mm512_shuffle_ps(w[0], w[1], 0x88), _mm512_shuffle_ps(w[0], w[1], 0xDD)));
}

/* the vector operations of gemv_chains.h (the decode GEMV, lone and batched) and x86_loops.h, with 16-lane vectors */
#define VEC __m512
#define VL 16
enum { BR = 8, BT = 8 }; /* the largest row and token tile: nr * nt <= 16 accumulators */
#define TILE_ROWS(nt) ((nt) >= 5 ? 2 : (nt) >= 3 ? 4 : 8)
enum { KBLOCK = 1024, ACT_L1 = 32 * 1024 }; /* 8 tokens' block: 32 KiB, within this Xeon's 48 KiB L1 */
#define GEMV_NEAR_L2_PLAN 1 /* both prefetch plans of the lone GEMV (kernels.h) */
#define ROW_PAIRS_IN_L1 0 /* tiles throughout (they replaced per-row token groups here; row pairs not re-measured) */
INL __m512 v_zero(void) { return _mm512_setzero_ps(); }
INL __m512 v_add(__m512 a, __m512 b) { return _mm512_add_ps(a, b); }
INL __m512 v_fma(__m512 a, __m512 b, __m512 c) { return _mm512_fmadd_ps(a, b, c); }
INL __m512 w_load(int dt, const uint16_t *p) { return ld16(dt, p); }
INL __m512 w_tail(int dt, const uint16_t *p, int n) { return ld16_tail(dt, p, (__mmask16)((1u << n) - 1u)); }
INL __m512 x_load(const float *p) { return _mm512_loadu_ps(p); }
INL __m512 x_tail(const float *p, int n) { return _mm512_maskz_loadu_ps((__mmask16)((1u << n) - 1u), p); }
INL __m512 v_set1(float s) { return _mm512_set1_ps(s); }
INL void v_store(float *p, __m512 v) { _mm512_storeu_ps(p, v); }
INL void f16_store(uint16_t *p, __m512 v) {
    _mm256_storeu_si256((__m256i *)p, _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
}
INL __m512 q_load(const int8_t *p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p)));
}
INL __m512 q_tail(const int8_t *p, int n) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8((__mmask16)((1u << n) - 1u), p)));
}
INL void hsum_n(float *out, const __m512 *v, int n) {
    __m512 all[16];
    for (int p = 0; p < 16; p++) all[p] = p < n ? v[p] : _mm512_setzero_ps();
    float s[16];
    hsum16(s, all);
    for (int p = 0; p < n; p++) out[p] = s[p];
}
#include "gemv_chains.h"
#include "vector_loops.h"
#include "x86_loops.h" /* set_matmul .. set_weighted_sum; the last two for heads wider than ATT_CHUNKS * 16 */

GEMM_TILES(5, 4) /* the GEMM's tile functions and their table (x86_loops.h) */

/* Decode attention for heads of up to ATT_CHUNKS * 16 dims, with the head in registers. Scores go 16 keys at a
 * time: each key's 16-lane partial products, then hsum16 sums the 16 keys at once (one horizontal reduction per
 * key cost more than its dot product at head_dim 64). The weighted sum keeps the output in registers across the
 * keys, in two sets (even and odd keys) so consecutive FMAs do not wait on each other, instead of loading and
 * storing it per key. Qwen2-0.5B shape at a 2,048-token context: attention ~11 of ~54 ms per step before. */
enum { ATT_CHUNKS = 8 };

/* the lanes of a head of d elements in its last 16-element chunk */
INL __mmask16 last_chunk_mask(int64_t d) { return (__mmask16)(d % 16 ? (1u << (d % 16)) - 1u : 0xFFFFu); }

/* the lanes of 16-element chunk c of a head in nc chunks: all but in the last, `tail` there */
INL __mmask16 part_mask(int64_t c, int64_t nc, __mmask16 tail) { return c + 1 < nc ? (__mmask16)0xFFFF : tail; }

INL __m512 ld16_part(int dt, const uint16_t *p, int64_t c, int64_t nc, __mmask16 tail) {
    return c + 1 < nc ? ld16(dt, p + 16 * c) : ld16_tail(dt, p + 16 * c, tail);
}

/* the 16-lane partial products of one cache row against the head in registers (sum them for the score) */
INL __m512 row_partial(int dt, const uint16_t *kr, const __m512 *qv, int64_t nc, __mmask16 tail) {
    __m512 a = _mm512_mul_ps(ld16_part(dt, kr, 0, nc, tail), qv[0]);
    for (int64_t c = 1; c < nc; c++) a = _mm512_fmadd_ps(ld16_part(dt, kr, c, nc, tail), qv[c], a);
    return a;
}

INL void scores_regs(int dt, float *sc, const uint16_t *K, int64_t ldk, const float *q, int64_t d, int64_t len,
                     float scale) {
    int64_t nc = (d + 15) / 16;
    __mmask16 tail = last_chunk_mask(d);
    __m512 qv[ATT_CHUNKS], vscale = _mm512_set1_ps(scale);
    for (int64_t c = 0; c < nc; c++) qv[c] = _mm512_maskz_loadu_ps(part_mask(c, nc, tail), q + 16 * c);
    int64_t p = 0;
    for (; p + 16 <= len; p += 16) {
        __m512 v[16];
        float s[16];
        for (int j = 0; j < 16; j++) {
            const uint16_t *kr = K + (p + j) * ldk; /* [d] */
            asw_prefetch_l1(kr + ASW_ATT_AHEAD * ldk, d * 2);
            v[j] = row_partial(dt, kr, qv, nc, tail);
        }
        hsum16(s, v);
        _mm512_storeu_ps(sc + p, _mm512_mul_ps(_mm512_loadu_ps(s), vscale));
    }
    for (; p < len; p++) sc[p] = hsum(row_partial(dt, K + p * ldk, qv, nc, tail)) * scale;
}

INL void weighted_sum_regs(int dt, float *out, const float *w, const uint16_t *V, int64_t ldv, int64_t d,
                           int64_t len) {
    int64_t nc = (d + 15) / 16;
    __mmask16 tail = last_chunk_mask(d);
    __m512 a[ATT_CHUNKS], b[ATT_CHUNKS]; /* [nc] the output so far: even keys (and the start), odd keys */
    for (int64_t c = 0; c < nc; c++) {
        a[c] = _mm512_maskz_loadu_ps(part_mask(c, nc, tail), out + 16 * c);
        b[c] = _mm512_setzero_ps();
    }
    int64_t p = 0;
    for (; p + 2 <= len; p += 2) {
        __m512 wa = _mm512_set1_ps(w[p]), wb = _mm512_set1_ps(w[p + 1]);
        const uint16_t *va = V + p * ldv, *vb = va + ldv; /* [d] each */
        asw_prefetch_l1(va + ASW_ATT_AHEAD * ldv, d * 2);
        asw_prefetch_l1(vb + ASW_ATT_AHEAD * ldv, d * 2);
        for (int64_t c = 0; c < nc; c++) {
            a[c] = _mm512_fmadd_ps(ld16_part(dt, va, c, nc, tail), wa, a[c]);
            b[c] = _mm512_fmadd_ps(ld16_part(dt, vb, c, nc, tail), wb, b[c]);
        }
    }
    if (p < len) {
        __m512 wa = _mm512_set1_ps(w[p]);
        for (int64_t c = 0; c < nc; c++) a[c] = _mm512_fmadd_ps(ld16_part(dt, V + p * ldv, c, nc, tail), wa, a[c]);
    }
    for (int64_t c = 0; c < nc; c++)
        _mm512_mask_storeu_ps(out + 16 * c, part_mask(c, nc, tail), _mm512_add_ps(a[c], b[c]));
}

/* CALL(dt, d) with dt and d constants where they are one of the usual values (fp16 or bf16; head size 64 or 128),
 * so that the inlined kernel is compiled for them */
#define BY_DTYPE_AND_HEAD(dtype, d, CALL)                                                                            \
    do {                                                                                                            \
        if ((dtype) == ASW_DTYPE_F16) {                                                                             \
            if ((d) == 64)                                                                                          \
                CALL(ASW_DTYPE_F16, 64);                                                                            \
            else if ((d) == 128)                                                                                    \
                CALL(ASW_DTYPE_F16, 128);                                                                           \
            else                                                                                                    \
                CALL(ASW_DTYPE_F16, d);                                                                             \
        } else if ((d) == 64) {                                                                                     \
            CALL(ASW_DTYPE_BF16, 64);                                                                               \
        } else if ((d) == 128) {                                                                                    \
            CALL(ASW_DTYPE_BF16, 128);                                                                              \
        } else {                                                                                                    \
            CALL(ASW_DTYPE_BF16, d);                                                                                \
        }                                                                                                           \
    } while (0)

/* Head sizes 64 and 128 (every supported model's) get their own copies with d a constant: gcc then unrolls the
 * chunk loops and keeps the query in registers instead of reloading it from the stack per row. One thread, 7 heads
 * over 2,100 cached fp16 rows in L2 on the EPYC (Zen 4): scores + softmax + weighted sum 106 -> 87 us. */
TGT static void z_scores_regs(int dtype, float *sc, const uint16_t *K, int64_t ldk, const float *q, int64_t d,
                              int64_t len, float scale) {
#define CALL(dt, dd) scores_regs(dt, sc, K, ldk, q, dd, len, scale)
    if (d > 16 * ATT_CHUNKS)
        set_scores(dtype, sc, K, ldk, q, d, len, scale);
    else
        BY_DTYPE_AND_HEAD(dtype, d, CALL);
#undef CALL
}

TGT static void z_weighted_sum_regs(int dtype, float *out, const float *w, const uint16_t *V, int64_t ldv, int64_t d,
                                    int64_t len) {
#define CALL(dt, dd) weighted_sum_regs(dt, out, w, V, ldv, dd, len)
    if (d > 16 * ATT_CHUNKS)
        set_weighted_sum(dtype, out, w, V, ldv, d, len);
    else
        BY_DTYPE_AND_HEAD(dtype, d, CALL);
#undef CALL
}

/* ---- decode attention for the query heads of one KV group (kernels.h scores_group, weighted_sum_group): each
 * cache row is loaded and converted once per tile of up to GROUP_TILE heads (16 / chunks of a head: the tile's
 * queries or outputs fill 16 registers) instead of once per head. Scores keep each (row, head) partial vector until
 * 16 rows have one, then sum them with hsum16 as scores_regs does. Head sizes that are not whole 16-float chunks,
 * or above 128, go head by head on the kernels above. One thread, the 7 query heads of a Qwen2-0.5B-shape group
 * over 2,100 cached fp16 rows in L2 on the EPYC (Zen 4): scores 39 -> 25 us, weighted sums 39 -> 20.5 us
 * (the one-head loops run 7 times against these; three rounds of 256 repetitions each). */
enum { GROUP_TILE = 4, GROUP_CHUNKS = 8 };

INL int group_tile(int64_t nc) { return nc <= 4 ? GROUP_TILE : (int)(16 / nc); }

INL void scores_group_regs(int dt, float *sc, int64_t ldsc, const uint16_t *K, int64_t ldk, const float *q,
                           int64_t ldq, int64_t g, int64_t d, int64_t len, float scale) {
    int64_t nc = d / 16;
    int ht = group_tile(nc);
    __m512 vscale = _mm512_set1_ps(scale);
    for (int64_t h0 = 0; h0 < g; h0 += ht) {
        int hn = g - h0 < ht ? (int)(g - h0) : ht;
        __m512 qv[GROUP_TILE * GROUP_CHUNKS]; /* [hn, nc] the tile's queries */
        for (int h = 0; h < hn; h++)
            for (int64_t c = 0; c < nc; c++) qv[h * nc + c] = _mm512_loadu_ps(q + (h0 + h) * ldq + 16 * c);
        int64_t p = 0;
        for (; p + 16 <= len; p += 16) {
            __m512 part[GROUP_TILE][16]; /* [hn, 16 rows] partial products */
            for (int j = 0; j < 16; j++) {
                const uint16_t *kr = K + (p + j) * ldk; /* [d] */
                asw_prefetch_l1(kr + ASW_ATT_AHEAD * ldk, d * 2);
                __m512 kv[GROUP_CHUNKS]; /* [nc] the row (the rest zero: dead code when d is a constant) */
                for (int64_t c = 0; c < GROUP_CHUNKS; c++) kv[c] = c < nc ? ld16(dt, kr + 16 * c) : _mm512_setzero_ps();
                for (int h = 0; h < hn; h++) {
                    __m512 a = _mm512_mul_ps(kv[0], qv[h * nc]);
                    for (int64_t c = 1; c < nc; c++) a = _mm512_fmadd_ps(kv[c], qv[h * nc + c], a);
                    part[h][j] = a;
                }
            }
            for (int h = 0; h < hn; h++) {
                float s16[16];
                hsum16(s16, part[h]);
                _mm512_storeu_ps(sc + (h0 + h) * ldsc + p, _mm512_mul_ps(_mm512_loadu_ps(s16), vscale));
            }
        }
        for (; p < len; p++) {
            const uint16_t *kr = K + p * ldk; /* [d] */
            for (int h = 0; h < hn; h++) {
                __m512 a = _mm512_mul_ps(ld16(dt, kr), qv[h * nc]);
                for (int64_t c = 1; c < nc; c++) a = _mm512_fmadd_ps(ld16(dt, kr + 16 * c), qv[h * nc + c], a);
                sc[(h0 + h) * ldsc + p] = hsum(a) * scale;
            }
        }
    }
}

INL void weighted_sum_group_regs(int dt, float *out, int64_t ldo, const float *w, int64_t ldw, const uint16_t *V,
                                 int64_t ldv, int64_t g, int64_t d, int64_t len) {
    int64_t nc = d / 16;
    int ht = group_tile(nc);
    for (int64_t h0 = 0; h0 < g; h0 += ht) {
        int hn = g - h0 < ht ? (int)(g - h0) : ht;
        __m512 acc[GROUP_TILE * GROUP_CHUNKS]; /* [hn, nc] the tile's outputs */
        for (int i = 0; i < hn * nc; i++) acc[i] = _mm512_setzero_ps();
        for (int64_t p = 0; p < len; p++) {
            const uint16_t *vr = V + p * ldv; /* [d] */
            asw_prefetch_l1(vr + ASW_ATT_AHEAD * ldv, d * 2);
            __m512 vv[GROUP_CHUNKS]; /* [nc] the row (as kv above) */
            for (int64_t c = 0; c < GROUP_CHUNKS; c++) vv[c] = c < nc ? ld16(dt, vr + 16 * c) : _mm512_setzero_ps();
            for (int h = 0; h < hn; h++) {
                __m512 wb = _mm512_set1_ps(w[(h0 + h) * ldw + p]);
                for (int64_t c = 0; c < nc; c++) acc[h * nc + c] = _mm512_fmadd_ps(vv[c], wb, acc[h * nc + c]);
            }
        }
        for (int h = 0; h < hn; h++)
            for (int64_t c = 0; c < nc; c++) _mm512_storeu_ps(out + (h0 + h) * ldo + 16 * c, acc[h * nc + c]);
    }
}

/* head sizes that are whole chunks up to 128 on the group kernels (64 and 128 compiled for, see z_scores_regs), the
 * rest head by head */
TGT static void z_scores_group(int dtype, float *sc, int64_t ldsc, const uint16_t *K, int64_t ldk, const float *q,
                               int64_t ldq, int64_t g, int64_t d, int64_t len, float scale) {
#define CALL(dt, dd) scores_group_regs(dt, sc, ldsc, K, ldk, q, ldq, g, dd, len, scale)
    if (d % 16 || d > 16 * GROUP_CHUNKS)
        asw_scores_by_head(z_scores_regs, dtype, sc, ldsc, K, ldk, q, ldq, g, d, len, scale);
    else
        BY_DTYPE_AND_HEAD(dtype, d, CALL);
#undef CALL
}

TGT static void z_weighted_sum_group(int dtype, float *out, int64_t ldo, const float *w, int64_t ldw,
                                     const uint16_t *V, int64_t ldv, int64_t g, int64_t d, int64_t len) {
#define CALL(dt, dd) weighted_sum_group_regs(dt, out, ldo, w, ldw, V, ldv, g, dd, len)
    if (d % 16 || d > 16 * GROUP_CHUNKS)
        asw_weighted_sum_by_head(z_weighted_sum_regs, dtype, out, ldo, w, ldw, V, ldv, g, d, len);
    else
        BY_DTYPE_AND_HEAD(dtype, d, CALL);
#undef CALL
}

/* ---- the outer-product micro-kernel of prefill (see kernels.h): nr rows x nv vectors of 16 columns, each A
 * element broadcast from memory into nv FMAs; nr x nv <= 24 accumulators + nv B vectors + 1 broadcast. */
enum { OV = 4 }; /* most B vectors per pass */

INL void otile(int nr, int nv, int add, float *Z, int64_t ldz, const float *A, int64_t lar, int64_t lak, int64_t kn,
               const float *B, int64_t ldb, const char *pf, int64_t step) {
    __m512 acc[24][OV];
    for (int r = 0; r < nr; r++)
        for (int v = 0; v < nv; v++) acc[r][v] = add ? _mm512_loadu_ps(Z + r * ldz + 16 * v) : _mm512_setzero_ps();
    int64_t left = step;
    for (int64_t i = 0; i < kn; i++) {
        const float *a = A + i * lak, *b = B + i * ldb;
        if (--left == 0) { /* one line of the caller's next data every `step` k steps, into L2 */
            _mm_prefetch(pf, _MM_HINT_T1);
            pf += 64;
            left = step;
        }
        __m512 bv[OV];
        for (int v = 0; v < nv; v++) bv[v] = _mm512_loadu_ps(b + 16 * v);
        for (int r = 0; r < nr; r++) {
            __m512 ar = _mm512_set1_ps(a[r * lar]);
            for (int v = 0; v < nv; v++) acc[r][v] = _mm512_fmadd_ps(ar, bv[v], acc[r][v]);
        }
    }
    for (int r = 0; r < nr; r++)
        for (int v = 0; v < nv; v++) _mm512_storeu_ps(Z + r * ldz + 16 * v, acc[r][v]);
}

typedef void (*otile_fn)(int, float *, int64_t, const float *, int64_t, int64_t, int64_t, const float *, int64_t,
                         const char *, int64_t);
#define OTILE_FN(nr, nv)                                                                                           \
    TGT static void otile_r##nr##v##nv(int add, float *Z, int64_t ldz, const float *A, int64_t lar, int64_t lak, \
                                       int64_t kn, const float *B, int64_t ldb, const char *pf, int64_t step) {   \
        otile(nr, nv, add, Z, ldz, A, lar, lak, kn, B, ldb, pf, step);                                           \
    }
/* Every tile shape (rows, vectors) of the outer-product kernels, rows up to otile_rows[vectors - 1]: FN(rows, nv)
 * for each, and the [nv - 1][rows - 1] table of the functions named prefix_r<rows>v<nv>. */
#define OUTER_ROWS6(FN, nv) FN(1, nv) FN(2, nv) FN(3, nv) FN(4, nv) FN(5, nv) FN(6, nv)
#define OUTER_SHAPES(FN)                                                                                               \
    OUTER_ROWS6(FN, 4) OUTER_ROWS6(FN, 3) FN(7, 3) FN(8, 3) OUTER_ROWS6(FN, 2) FN(7, 2) FN(8, 2) FN(9, 2) FN(10, 2)    \
    FN(11, 2) FN(12, 2) OUTER_ROWS6(FN, 1) FN(7, 1) FN(8, 1) FN(9, 1) FN(10, 1) FN(11, 1) FN(12, 1)
#define OUTER_LIST6(p, nv) p##_r1v##nv, p##_r2v##nv, p##_r3v##nv, p##_r4v##nv, p##_r5v##nv, p##_r6v##nv
#define OUTER_TABLE(p)                                                                                                 \
    {                                                                                                                  \
        {OUTER_LIST6(p, 1), p##_r7v1, p##_r8v1, p##_r9v1, p##_r10v1, p##_r11v1, p##_r12v1},                            \
        {OUTER_LIST6(p, 2), p##_r7v2, p##_r8v2, p##_r9v2, p##_r10v2, p##_r11v2, p##_r12v2},                            \
        {OUTER_LIST6(p, 3), p##_r7v3, p##_r8v3},                                                                       \
        {OUTER_LIST6(p, 4)},                                                                                           \
    }
OUTER_SHAPES(OTILE_FN)

/* rows per tile for nv vectors, and [nv - 1][rows - 1] */
static const int otile_rows[OV] = {12, 12, 8, 6};
static const otile_fn otiles[OV][12] = OUTER_TABLE(otile);

/* The k steps between two prefetched lines of `next` [next_bytes] in an outer-product call over `rows` rows and nv
 * vectors, each tile (otile_rows) taking kn steps: the prefetches spread evenly over the steps of all tiles (a burst
 * would stall on memory), never past the end of `next`; INT64_MAX: none. */
static int64_t prefetch_step(int64_t rows, int64_t nv, int64_t kn, const void *next, int64_t next_bytes) {
    int64_t tiles = 0;
    for (int64_t v0 = 0; v0 < nv; v0 += OV) {
        int rt = otile_rows[(nv - v0 < OV ? nv - v0 : OV) - 1];
        tiles += (rows + rt - 1) / rt;
    }
    int64_t lines = next == NULL ? 0 : next_bytes / 64;
    return lines == 0 || kn == 0 ? INT64_MAX : (kn * tiles + lines - 1) / lines;
}

/* TILE(r, v0, rn, vn, pf, step) for each tile of an outer-product call over `rows` rows and nv vectors, kn k steps
 * each: rows r..r+rn-1 x vectors v0..v0+vn-1, prefetching a line of `next` every `step` k steps from pf */
#define FOR_EACH_OUTER_TILE(rows, nv, kn, next, next_bytes, TILE)                                                    \
    do {                                                                                                            \
        const char *pf = (next);                                                                                    \
        int64_t step = prefetch_step(rows, nv, kn, next, next_bytes);                                               \
        for (int64_t v0 = 0; v0 < (nv); v0 += OV) {                                                                 \
            int vn = (nv) - v0 < OV ? (int)((nv) - v0) : OV;                                                        \
            int rt = otile_rows[vn - 1];                                                                            \
            for (int64_t r = 0; r < (rows); r += rt) {                                                              \
                int rn = (rows) - r < rt ? (int)((rows) - r) : rt;                                                  \
                TILE(r, v0, rn, vn, pf, step);                                                                      \
                pf += 64 * ((kn) / step);                                                                           \
            }                                                                                                       \
        }                                                                                                           \
    } while (0)

TGT static void z_outer(float *Z, int64_t ldz, const float *A, int64_t lar, int64_t lak, int64_t kn, const float *B,
                        int64_t ldb, int64_t rows, int64_t nv, int add, const void *next, int64_t next_bytes) {
#define TILE(r, v0, rn, vn, pf, step)                                                                                  \
    otiles[vn - 1][rn - 1](add, Z + r * ldz + 16 * v0, ldz, A + r * lar, lar, lak, kn, B + 16 * v0, ldb, pf, step)
    FOR_EACH_OUTER_TILE(rows, nv, kn, next, next_bytes, TILE);
#undef TILE
}

/* ---- the bf16-pair outer-product kernel (kernels.h: asw_outer_bf16_fn), for CPUs with AVX512_BF16: the same
 * tiling as `outer`, each weight pair (two bf16 of one row) broadcast as one dword into nv VDPBF16PS. The weights
 * come straight from the file (no f32 panel), the activations from the caller's pair-packed copy. */
#define TGT_BF16 __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512bf16")))

TGT_BF16 static inline __attribute__((always_inline)) void btile(int nr, int nv, float *Z, int64_t ldz,
                                                                 const uint16_t *W, int64_t cols, const uint16_t *XP,
                                                                 int64_t ldp, const char *pf, int64_t step) {
    __m512 acc[12][OV];
    for (int r = 0; r < nr; r++)
        for (int v = 0; v < nv; v++) acc[r][v] = _mm512_setzero_ps();
    int64_t left = step;
    for (int64_t i = 0; i < cols / 2; i++) {
        const uint16_t *b = XP + i * ldp * 2; /* [16 nv, 2] pairs of tokens */
        if (--left == 0) { /* one line of the caller's next data every `step` pair steps, into L2 */
            _mm_prefetch(pf, _MM_HINT_T1);
            pf += 64;
            left = step;
        }
        __m512i bv[OV];
        for (int v = 0; v < nv; v++) bv[v] = _mm512_loadu_si512((const void *)(b + 32 * v));
        for (int r = 0; r < nr; r++) {
            int32_t pair; /* W[r, 2i], W[r, 2i + 1] */
            __builtin_memcpy(&pair, W + r * cols + 2 * i, sizeof pair);
            __m512bh ar = (__m512bh)_mm512_set1_epi32(pair);
            for (int v = 0; v < nv; v++) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], ar, (__m512bh)bv[v]);
        }
    }
    for (int r = 0; r < nr; r++)
        for (int v = 0; v < nv; v++) _mm512_storeu_ps(Z + r * ldz + 16 * v, acc[r][v]);
}

typedef void (*btile_fn)(float *, int64_t, const uint16_t *, int64_t, const uint16_t *, int64_t, const char *,
                         int64_t);
#define BTILE_FN(nr, nv)                                                                                           \
    TGT_BF16 static void btile_r##nr##v##nv(float *Z, int64_t ldz, const uint16_t *W, int64_t cols,              \
                                            const uint16_t *XP, int64_t ldp, const char *pf, int64_t step) {      \
        btile(nr, nv, Z, ldz, W, cols, XP, ldp, pf, step);                                                       \
    }
OUTER_SHAPES(BTILE_FN)

static const btile_fn btiles[OV][12] = OUTER_TABLE(btile); /* rows per tile as otile_rows */

TGT_BF16 void asw_outer_bf16_avx512(float *Z, int64_t ldz, const uint16_t *W, int64_t cols, const uint16_t *XP,
                                    int64_t ldp, int64_t rows, int64_t nv, const void *next, int64_t next_bytes) {
    int64_t kn = cols / 2; /* pair steps */
#define TILE(r, v0, rn, vn, pf, step)                                                                                  \
    btiles[vn - 1][rn - 1](Z + r * ldz + 16 * v0, ldz, W + r * cols, cols, XP + 32 * v0, ldp, pf, step)
    FOR_EACH_OUTER_TILE(rows, nv, kn, next, next_bytes, TILE);
#undef TILE
}

const asw_kernels asw_kernels_avx512 = {"avx512", set_matmul, gemv_batch, set_to_f32, set_from_f32, z_scores_regs,
                                       z_weighted_sum_regs, z_outer, 1, exp_sum, silu_mul, softmax_block,
                                       z_scores_group, z_weighted_sum_group, gemv_i8, abs_max, quantize_i8};

/* matmul and gemv_batch with the decode GEMV on the ASW_GEMV_NEAR_L2 prefetch plan (the same sums); the batched
 * tiles of 2 or more tokens keep their own prefetch (not measured on AMD) */
TGT static void z_matmul_near_l2(int dtype, float *Y, int64_t ldy, const uint16_t *W, int64_t k, int64_t r0,
                                 int64_t r1, const float *X, int64_t ldx, int64_t nt) {
    if (nt == 1)
        gemv(dtype, ASW_GEMV_NEAR_L2, Y, W, k, r0, r1, X);
    else
        set_matmul(dtype, Y, ldy, W, k, r0, r1, X, ldx, nt);
}

const asw_kernels asw_kernels_avx512_near_l2 = {"avx512", z_matmul_near_l2, gemv_batch_near_l2, set_to_f32,
                                               set_from_f32, z_scores_regs, z_weighted_sum_regs, z_outer, 1,
                                               exp_sum, silu_mul, softmax_block, z_scores_group,
                                               z_weighted_sum_group, gemv_i8, abs_max, quantize_i8};

#else
typedef int asw_empty_translation_unit; /* ISO C wants at least one declaration */
#endif /* __x86_64__ */
