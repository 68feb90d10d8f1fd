/* x86_loops.h — the plain loops of an x86 kernel set (its matmul entry with the register-blocked GEMM of a few
 * tokens, the u16 <-> f32 conversions, and the one-head decode attention loops for head sizes its register kernels
 * do not cover), written once for any vector width.
 *
 * Included by kernels_avx512.c (16 f32 lanes) and kernels_avx2.c (8 lanes) after gemv_chains.h, whose vector
 * operations it uses (see there). Besides those the set defines:
 *   R, T, KC             the GEMM's tile (rows x tokens, R * T accumulators + R weights + 1 token in registers) and
 *                        its columns per block (enum constants)
 *   v_set1(s)            s in every lane
 *   v_store(p, v)        VL f32 to p
 *   f16_store(p, v)      v rounded to f16 (nearest even), VL u16 to p
 * and, after including this, its tiles: GEMM_TILES(T, R).
 * Everything here is static to the including file; the set's table (kernels.h) points at the set_* functions.
 */
#ifndef ASW_X86_LOOPS_H
#define ASW_X86_LOOPS_H

/* ---- the register-blocked GEMM of a few tokens (nt >= 2 below the backend's OUTER_TOKENS, batched steps off the
 * lone-step order): R weight rows x T tokens of VL-lane accumulators, each weight vector converted once and reused
 * across the tile's tokens, the inner tail zero-padded into one more vector. */

/* Y[t*ldy + r] (+)= W[r, 0:k] . X[t, 0:k] for r < nr, t < nt; nr, nt are compile-time constants after inlining */
INL void tile(int dt, int nr, int nt, int add, float *Y, int64_t ldy, const uint16_t *W, int64_t ldw, int64_t k,
              const float *X, int64_t ldx) {
    VEC acc[R][T];
    for (int r = 0; r < nr; r++)
        for (int t = 0; t < nt; t++) acc[r][t] = v_zero();
    int64_t i = 0;
    for (; i + VL <= k; i += VL) {
        VEC w[R];
        for (int r = 0; r < nr; r++) w[r] = w_load(dt, W + r * ldw + i);
        for (int t = 0; t < nt; t++) {
            VEC x = x_load(X + t * ldx + i);
            for (int r = 0; r < nr; r++) acc[r][t] = v_fma(w[r], x, acc[r][t]);
        }
    }
    if (i < k) {
        VEC w[R];
        for (int r = 0; r < nr; r++) w[r] = w_tail(dt, W + r * ldw + i, (int)(k - i));
        for (int t = 0; t < nt; t++) {
            VEC x = x_tail(X + t * ldx + i, (int)(k - i));
            for (int r = 0; r < nr; r++) acc[r][t] = v_fma(w[r], x, acc[r][t]);
        }
    }
    for (int r = 0; r < nr; r++)
        for (int t = 0; t < nt; t++) {
            float s = hsum(acc[r][t]);
            float *y = Y + t * ldy + r;
            *y = add ? *y + s : s;
        }
}

/* name: tile() for dtype dt, nr rows and nt tokens as a function of its own, for the table `tiles` */
#define TILE_FN(name, dt, nr, nt)                                                                                  \
    TGT static void name(int add, float *Y, int64_t ldy, const uint16_t *W, int64_t ldw, int64_t k,              \
                         const float *X, int64_t ldx) {                                                           \
        tile(dt, nr, nt, add, Y, ldy, W, ldw, k, X, ldx);                                                        \
    }
typedef void (*tile_fn)(int, float *, int64_t, const uint16_t *, int64_t, int64_t, const float *, int64_t);
/* [dtype is f16][full R rows][tokens - 1]: the including file defines it after this header, with GEMM_TILES */
static const tile_fn tiles[2][2][T];

#define TILE_FNS_T3(p, dt, nr)                                                                                     \
    TILE_FN(p##_r##nr##t1, dt, nr, 1) TILE_FN(p##_r##nr##t2, dt, nr, 2) TILE_FN(p##_r##nr##t3, dt, nr, 3)
#define TILE_FNS_T5(p, dt, nr)                                                                                     \
    TILE_FNS_T3(p, dt, nr) TILE_FN(p##_r##nr##t4, dt, nr, 4) TILE_FN(p##_r##nr##t5, dt, nr, 5)
#define TILE_LIST_T3(p, nr) p##_r##nr##t1, p##_r##nr##t2, p##_r##nr##t3
#define TILE_LIST_T5(p, nr) TILE_LIST_T3(p, nr), p##_r##nr##t4, p##_r##nr##t5
/* The set's tiles, tn and nr its T and R as literals (3 or 5 tokens): a function per shape (nr or 1 rows x 1..tn
 * tokens, fp16 and bf16) and the table `tiles` of them */
#define GEMM_TILES(tn, nr)                                                                                         \
    _Static_assert(T == tn && R == nr, "GEMM_TILES(T, R)");                                                      \
    TILE_FNS_T##tn(h, ASW_DTYPE_F16, nr) TILE_FNS_T##tn(h, ASW_DTYPE_F16, 1)                                     \
    TILE_FNS_T##tn(b, ASW_DTYPE_BF16, nr) TILE_FNS_T##tn(b, ASW_DTYPE_BF16, 1)                                   \
    static const tile_fn tiles[2][2][T] = {                                                                      \
        {{TILE_LIST_T##tn(b, 1)}, {TILE_LIST_T##tn(b, nr)}},                                                     \
        {{TILE_LIST_T##tn(h, 1)}, {TILE_LIST_T##tn(h, nr)}},                                                     \
    };

/* Y[t, r0:r1] = W[r0:r1] . X[t] for t < nt: the lone GEMV of gemv_chains.h for one token (the decode step), else
 * the set's GEMM tiles over blocks of KC columns */
TGT static void set_matmul(int dtype, float *Y, int64_t ldy, const uint16_t *W, int64_t k, int64_t r0, int64_t r1,
                           const float *X, int64_t ldx, int64_t nt) {
    int f16 = dtype == ASW_DTYPE_F16;
    if (nt == 1) {
        gemv(dtype, ASW_GEMV_NEAR_L1, Y, W, k, r0, r1, X);
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

/* dst[i] = src[i] as f32, i < n (exact) */
TGT static void set_to_f32(int dtype, float *dst, const uint16_t *src, int64_t n) {
    int64_t i = 0;
    if (dtype == ASW_DTYPE_F16)
        for (; i + VL <= n; i += VL) v_store(dst + i, w_load(ASW_DTYPE_F16, src + i));
    else
        for (; i + VL <= n; i += VL) v_store(dst + i, w_load(ASW_DTYPE_BF16, src + i));
    for (; i < n; i++) dst[i] = asw_u16_to_f32(dtype, src[i]);
}

/* dst[i] = src[i] rounded to dtype (nearest even), i < n */
TGT static void set_from_f32(int dtype, uint16_t *dst, const float *src, int64_t n) {
    int64_t i = 0;
    if (dtype == ASW_DTYPE_F16) {
        for (; i + VL <= n; i += VL) f16_store(dst + i, x_load(src + i));
        for (; i < n; i++) dst[i] = asw_f32_to_f16(src[i]);
    } else {
        for (; i < n; i++) dst[i] = asw_f32_to_bf16(src[i]); /* inline and branch-free: gcc vectorizes it */
    }
}

/* a[0:n] . x[0:n], the tail zero-padded into one more vector */
INL float set_dot(int dtype, const uint16_t *a, const float *x, int64_t n) {
    VEC acc = v_zero();
    int64_t i = 0;
    if (dtype == ASW_DTYPE_F16)
        for (; i + VL <= n; i += VL) acc = v_fma(w_load(ASW_DTYPE_F16, a + i), x_load(x + i), acc);
    else
        for (; i + VL <= n; i += VL) acc = v_fma(w_load(ASW_DTYPE_BF16, a + i), x_load(x + i), acc);
    if (i < n) acc = v_fma(w_tail(dtype, a + i, (int)(n - i)), x_tail(x + i, (int)(n - i)), acc);
    return hsum(acc);
}

/* y[0:n] += s * a[0:n] */
INL void set_axpy(int dtype, float *y, float s, const uint16_t *a, int64_t n) {
    VEC vs = v_set1(s);
    int64_t i = 0;
    if (dtype == ASW_DTYPE_F16)
        for (; i + VL <= n; i += VL) v_store(y + i, v_fma(vs, w_load(ASW_DTYPE_F16, a + i), x_load(y + i)));
    else
        for (; i + VL <= n; i += VL) v_store(y + i, v_fma(vs, w_load(ASW_DTYPE_BF16, a + i), x_load(y + i)));
    for (; i < n; i++) y[i] += s * asw_u16_to_f32(dtype, a[i]);
}

ASW_ATTENTION_LOOPS(set, TGT) /* set_scores, set_weighted_sum: one head at a time, one key at a time */

#endif /* ASW_X86_LOOPS_H */
