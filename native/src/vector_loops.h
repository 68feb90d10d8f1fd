/* vector_loops.h — the exp-based loops of the cpu backend (softmax and SwiGLU), written once in plain C and
 * compiled by each kernel set for its own instructions.
 *
 * Included by every kernels_*.c after it defines TGT (its target attribute; empty for the portable and NEON sets);
 * everything here is static to the including file, and the set's table (kernels.h) points at it. So ASW_KERNELS
 * picks these loops with the rest of the set: forcing avx2 on an AVX-512 machine runs their AVX2 code too (as
 * target_clones did not, picking by the CPU alone).
 */
#ifndef ASW_VECTOR_LOOPS_H
#define ASW_VECTOR_LOOPS_H

#include <math.h>
#include <stdint.h>

/* Vector-friendly exp (Cephes' polynomial, relative error ~1e-7 over the float range): no calls and no branches,
 * so the loops below vectorize (with -fno-trapping-math, as setup.py builds). */
TGT static inline float exp_poly(float x) {
    x = -87.0f > x ? -87.0f : x; /* the exact form of maxps / minps (a NaN x stays NaN): no branch */
    x = 88.0f < x ? 88.0f : x;
    float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f; /* round(x / ln 2) */
    float r = x - n * 0.693359375f - n * -2.12194440e-4f;             /* x - n ln 2 in two steps */
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    union { int32_t i; float f; } scale = {((int32_t)n + 127) << 23}; /* 2^n */
    return p * scale.f;
}

/* x[i] = exp(x[i] - m) for i < n (n >= 1), m = max(x) stored in *max; returns the sum of the x[i]: decode
 * attention's softmax over one block of keys. The max and the sum run in SOFTMAX_LANES independent lanes, so both
 * passes vectorize (a single running max or sum waits on the previous element: over a 2,048-key row that made the
 * softmax a fifth of decode attention's time). */
enum { SOFTMAX_LANES = 16 };
TGT static float exp_sum(float *x, int64_t n, float *max) {
    float lane[SOFTMAX_LANES];
    for (int j = 0; j < SOFTMAX_LANES; j++) lane[j] = x[0];
    int64_t i = 0;
    for (; i + SOFTMAX_LANES <= n; i += SOFTMAX_LANES)
        for (int j = 0; j < SOFTMAX_LANES; j++) lane[j] = x[i + j] > lane[j] ? x[i + j] : lane[j];
    float mx = x[0];
    for (int64_t t = i; t < n; t++) mx = x[t] > mx ? x[t] : mx;
    for (int j = 0; j < SOFTMAX_LANES; j++) mx = lane[j] > mx ? lane[j] : mx;
    for (int j = 0; j < SOFTMAX_LANES; j++) lane[j] = 0.0f;
    for (i = 0; i + SOFTMAX_LANES <= n; i += SOFTMAX_LANES)
        for (int j = 0; j < SOFTMAX_LANES; j++) {
            x[i + j] = exp_poly(x[i + j] - mx);
            lane[j] += x[i + j];
        }
    float sum = 0.0f;
    for (int64_t t = i; t < n; t++) {
        x[t] = exp_poly(x[t] - mx);
        sum += x[t];
    }
    for (int j = 0; j < SOFTMAX_LANES; j++) sum += lane[j];
    *max = mx;
    return sum;
}

/* act[i] = silu(gate[i]) * up[i] for i < n */
TGT static void silu_mul(float *act, const float *gate, const float *up, int64_t n) {
    for (int64_t i = 0; i < n; i++) act[i] = gate[i] / (1.0f + exp_poly(-gate[i])) * up[i];
}

/* One block of keys p0..p0+pn-1 in the online softmax of prefill attention, vectorized across the ldq queries:
 * st [pn, ldq] scores in, exp(score - running max) out (0 where the key is after the query: p0 + p > lim[q]);
 * mx, sum [ldq] running max and sum; corr [ldq] out: the factor the output accumulated so far must be scaled by. */
TGT static void softmax_block(float *st, int64_t pn, int64_t ldq, int32_t p0, const int32_t *lim, float *mx,
                              float *sum, float *corr) {
    for (int64_t q = 0; q < ldq; q++) corr[q] = mx[q];
    for (int64_t p = 0; p < pn; p++)
        for (int64_t q = 0; q < ldq; q++) {
            float v = p0 + (int32_t)p <= lim[q] ? st[p * ldq + q] : -INFINITY;
            corr[q] = v > corr[q] ? v : corr[q];
        }
    for (int64_t q = 0; q < ldq; q++) {
        float m = corr[q]; /* finite: every query sees key 0 in the first block */
        corr[q] = exp_poly(mx[q] - m);
        mx[q] = m;
        sum[q] *= corr[q];
    }
    for (int64_t p = 0; p < pn; p++)
        for (int64_t q = 0; q < ldq; q++) {
            float e = p0 + (int32_t)p <= lim[q] ? exp_poly(st[p * ldq + q] - mx[q]) : 0.0f;
            st[p * ldq + q] = e;
            sum[q] += e;
        }
}

#endif /* ASW_VECTOR_LOOPS_H */
