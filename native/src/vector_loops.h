/* vector_loops.h — the exp-based loops of the cpu backend (softmax and SwiGLU) and the greedy screen's build loops,
 * written once in plain C and compiled by each kernel set for its own instructions.
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

/* The greedy screen's build (backend_cpu.c, "the greedy screen"), one lm_head row at a time, in SCREEN_LANES
 * independent lanes written as GCC vector types (element i in lane i % SCREEN_LANES, the tail zero-padded), which the
 * compiler lowers to the set's own vectors: every set computes the same values (the build compiles with
 * -ffp-contract=off, so no set fuses a multiply and an add the others round twice), and the build runs at vector
 * speed (as scalar loops it took 0.27 s of a Qwen2-0.5B load, now 0.13 s; lane arrays did not vectorize). */
enum { SCREEN_LANES = 16 };
typedef float screen_f __attribute__((vector_size(4 * SCREEN_LANES)));
typedef int32_t screen_i __attribute__((vector_size(4 * SCREEN_LANES)));
typedef float screen_h __attribute__((vector_size(2 * SCREEN_LANES))); /* half the lanes */
typedef double screen_d __attribute__((vector_size(4 * SCREEN_LANES)));  /* half the lanes, in double */
typedef int8_t screen_q __attribute__((vector_size(SCREEN_LANES)));

/* *v = w[i..i+SCREEN_LANES) with zeros past k (a whole block: one vector load). Vectors travel by pointer and macro,
 * not by value: a 64-byte vector argument or result would change the ABI between sets (gcc -Wpsabi). */
TGT static inline void screen_load(screen_f *v, const float *w, int64_t i, int64_t k) {
    *v = (screen_f){0.0f};
    if (k - i >= SCREEN_LANES)
        __builtin_memcpy(v, w + i, sizeof *v);
    else
        __builtin_memcpy(v, w + i, (size_t)(k - i) * sizeof(float));
}

/* m ? a : b lane by lane (m: all ones or zero per lane, as a comparison gives) */
#define SCREEN_SELECT(m, a, b) ((screen_f)(((m) & (screen_i)(a)) | (~(m) & (screen_i)(b))))

/* max |w[i]| for i < k, and *finite = 0 if some w[i] is inf or NaN (1 otherwise: |w| * 0 sums to 0 exactly then, and
 * to NaN with an inf or a NaN) */
TGT static float abs_max(const float *w, int64_t k, int *finite) {
    screen_f top = {0.0f}, zero = {0.0f};
    for (int64_t i = 0; i < k; i += SCREEN_LANES) {
        screen_f v;
        screen_load(&v, w, i, k);
        screen_f a = (screen_f)((screen_i)v & 0x7fffffff); /* |w| */
        zero += a * 0.0f;
        top = SCREEN_SELECT(a > top, a, top);
    }
    float amax = 0.0f, sum = 0.0f;
    for (int l = 0; l < SCREEN_LANES; l++) {
        sum += zero[l];
        amax = top[l] > amax ? top[l] : amax;
    }
    *finite = sum == 0.0f;
    return amax;
}

/* q[i] = w[i] * inv rounded to an integer (nearest even) in [-127, 127], i < k, and the squared norms in double,
 * sums[0] = ||w - scale q||^2 (each difference exact: 24 x 8 significant bits), sums[1] = ||q||^2, sums[2] = ||w||^2.
 * Every term is non-negative, so the lanes' order moves each sum by a relative 2^-53 per term at most. */
TGT static void quantize_i8(int8_t *q, const float *w, int64_t k, float scale, float inv, double sums[3]) {
    const screen_f magic = (screen_f){0.0f} + 12582912.0f; /* 1.5 * 2^23: (x + it) - it rounds x, |x| < 2^22 */
    const screen_f hi = (screen_f){0.0f} + 127.0f, lo = (screen_f){0.0f} - 127.0f;
    const screen_d scale_d = (screen_d){0.0} + (double)scale;
    screen_d e2[2] = {{0.0}}, q2[2] = {{0.0}}, w2[2] = {{0.0}}; /* lanes 0..7 and 8..15 */
    for (int64_t i = 0; i < k; i += SCREEN_LANES) {
        screen_f v;
        screen_load(&v, w, i, k);
        screen_f n = (v * inv + magic) - magic; /* |w * inv| <= 127 up to rounding */
        n = SCREEN_SELECT(n > hi, hi, n);
        n = SCREEN_SELECT(n < lo, lo, n);
        screen_q qn = __builtin_convertvector(__builtin_convertvector(n, screen_i), screen_q);
        if (k - i >= SCREEN_LANES)
            __builtin_memcpy(q + i, &qn, sizeof qn);
        else
            __builtin_memcpy(q + i, &qn, (size_t)(k - i));
        screen_h vh[2], nh[2]; /* lanes 0..7 and 8..15 (a copy, not __builtin_shufflevector: GCC 12 and later) */
        __builtin_memcpy(vh, &v, sizeof vh);
        __builtin_memcpy(nh, &n, sizeof nh);
        for (int h = 0; h < 2; h++) {
            screen_d vd = __builtin_convertvector(vh[h], screen_d), nd = __builtin_convertvector(nh[h], screen_d);
            screen_d e = vd - scale_d * nd;
            e2[h] += e * e;
            q2[h] += nd * nd;
            w2[h] += vd * vd;
        }
    }
    sums[0] = sums[1] = sums[2] = 0.0;
    for (int h = 0; h < 2; h++)
        for (int l = 0; l < SCREEN_LANES / 2; l++) {
            sums[0] += e2[h][l];
            sums[1] += q2[h][l];
            sums[2] += w2[h][l];
        }
}

#endif /* ASW_VECTOR_LOOPS_H */
