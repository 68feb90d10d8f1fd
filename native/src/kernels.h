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
    /* The decode GEMV of a batched step: Y[t*ldy + r] = W[r] . X[t] for r in [r0, r1), t < nt, each token summed in
     * exactly the order of matmul with nt = 1 (a batched step equals lone steps bit for bit), the weights read from
     * memory once for all nt tokens. */
    void (*gemv_batch)(int dtype, float *Y, int64_t ldy, const uint16_t *W, int64_t k, int64_t r0, int64_t r1,
                       const float *X, int64_t ldx, int64_t nt);
    /* dst[i] = (float)src[i], i < n */
    void (*to_f32)(int dtype, float *dst, const uint16_t *src, int64_t n);
    /* dst[i] = src[i] rounded to `dtype` (round to nearest even), i < n */
    void (*from_f32)(int dtype, uint16_t *dst, const float *src, int64_t n);
    /* scores[p] = scale * sum_i K[p*ldk + i] * q[i]   for p < len, i < d: one query against cache rows */
    void (*scores)(int dtype, float *scores, const uint16_t *K, int64_t ldk, const float *q, int64_t d, int64_t len,
                   float scale);
    /* out[i] += sum_p w[p] * V[p*ldv + i]   for p < len, i < d: the attention-weighted sum of cache rows */
    void (*weighted_sum)(int dtype, float *out, const float *w, const uint16_t *V, int64_t ldv, int64_t d,
                         int64_t len);
    /* The outer-product micro-kernel of prefill, all f32:
     *   Z[r*ldz + j] (+)= sum_{i < kn} A[r*lar + i*lak] * B[i*ldb + j]   for r < rows, j < 16 nv
     * (accumulating into Z when add != 0). Each A element is broadcast and multiplied into whole vectors of B's
     * columns (tokens or queries), so no horizontal sums are needed; each output element is summed over i in
     * order, whatever the tiling. B and Z rows are padded to whole 16-float vectors. `next` [next_bytes] is a
     * hint: memory the caller reads after this call, which a set may prefetch while it computes (NULL: none). */
    void (*outer)(float *Z, int64_t ldz, const float *A, int64_t lar, int64_t lak, int64_t kn, const float *B,
                  int64_t ldb, int64_t rows, int64_t nv, int add, const void *next, int64_t next_bytes);
    /* 1: prefill matmuls convert weight panels to f32 once and run `outer` on the transposed activations (a set
     * whose register-tiled `outer` beats its dot-product `matmul` at a chunk of tokens); 0: `matmul` with nt tokens. */
    int outer_matmul;
    /* The exp-based loops, all f32 (vector_loops.h, compiled by each set for its own instructions):
     * x[i] = exp(x[i] - m) for i < n (n >= 1) with m = max(x), stored in *max; returns the sum (decode attention's
     * softmax over one block of keys, normalized when the blocks are merged) */
    float (*exp_sum)(float *x, int64_t n, float *max);
    /* act[i] = silu(gate[i]) * up[i] for i < n (SwiGLU) */
    void (*silu_mul)(float *act, const float *gate, const float *up, int64_t n);
    /* one block of keys p0..p0+pn-1 of prefill attention's online softmax over ldq queries: st [pn, ldq] scores in,
     * their exp(score - running max) out, 0 where p0 + p > lim[q] (a key after the query); mx, sum [ldq] the running
     * max and sum, updated; corr [ldq] out: the factor to scale the output accumulated so far by */
    void (*softmax_block)(float *st, int64_t pn, int64_t ldq, int32_t p0, const int32_t *lim, float *mx, float *sum,
                          float *corr);
    /* Decode attention for the g query heads of one KV group (q [g, ldq]), each cache row loaded and converted once
     * per tile of heads instead of once per head:
     *   sc[h*ldsc + p] = scale * sum_i K[p*ldk + i] * q[h*ldq + i]    for h < g, p < len, i < d
     * NULL: the caller runs `scores` once per head. */
    void (*scores_group)(int dtype, float *sc, int64_t ldsc, const uint16_t *K, int64_t ldk, const float *q,
                         int64_t ldq, int64_t g, int64_t d, int64_t len, float scale);
    /*   out[h*ldo + i] = sum_p w[h*ldw + p] * V[p*ldv + i]            for h < g, i < d (written, not added to)
     * NULL: the caller runs `weighted_sum` once per head. */
    void (*weighted_sum_group)(int dtype, float *out, int64_t ldo, const float *w, int64_t ldw, const uint16_t *V,
                               int64_t ldv, int64_t g, int64_t d, int64_t len);
    /* The greedy screen's GEMV (backend_cpu.c, screen_task): y[r] = sum_i Q[r*k + i] * x[i] for r in [r0, r1), Q
     * int8 [rows, k]. In any summation order: the screen bounds this sum's rounding, it never compares it bit for
     * bit with another kernel's. */
    void (*gemv_i8)(float *y, const int8_t *Q, int64_t k, int64_t r0, int64_t r1, const float *x);
    /* The greedy screen's build, one lm_head row w [k] at a time (vector_loops.h: the same values in every set):
     * max |w|, *finite = 0 if some w is inf or NaN */
    float (*abs_max)(const float *w, int64_t k, int *finite);
    /* q = w * inv rounded into [-127, 127]; sums = ||w - scale q||^2, ||q||^2, ||w||^2 in double. The backend passes
     * scale = inv = 0 for a row whose max |w| is below ASW_SCREEN_TINY_ROW. */
    void (*quantize_i8)(int8_t *q, const float *w, int64_t k, float scale, float inv, double sums[3]);
} asw_kernels;

/* Rows whose largest |w| is below this get no int8 copy in the greedy screen (q = 0, scale = 0, the whole row in the
 * slack): keeps 127 / max |w| finite and far from f32's subnormals. No trained lm_head has such rows; a zero row is
 * one. */
#define ASW_SCREEN_TINY_ROW 1e-30f

/* scores_group and weighted_sum_group head by head on a set's one-head `scores` and `weighted_sum`: what the caller
 * runs for a set without group loops, and what the group loops run for head sizes they do not cover */
static inline void asw_scores_by_head(void (*scores)(int, float *, const uint16_t *, int64_t, const float *, int64_t,
                                                     int64_t, float),
                                      int dtype, float *sc, int64_t ldsc, const uint16_t *K, int64_t ldk,
                                      const float *q, int64_t ldq, int64_t g, int64_t d, int64_t len, float scale) {
    for (int64_t h = 0; h < g; h++) scores(dtype, sc + h * ldsc, K, ldk, q + h * ldq, d, len, scale);
}
static inline void asw_weighted_sum_by_head(void (*weighted_sum)(int, float *, const float *, const uint16_t *,
                                                                 int64_t, int64_t, int64_t),
                                            int dtype, float *out, int64_t ldo, const float *w, int64_t ldw,
                                            const uint16_t *V, int64_t ldv, int64_t g, int64_t d, int64_t len) {
    for (int64_t h = 0; h < g; h++) {
        __builtin_memset(out + h * ldo, 0, (size_t)d * sizeof(float)); /* weighted_sum adds to its output */
        weighted_sum(dtype, out + h * ldo, w + h * ldw, V, ldv, d, len);
    }
}

/* The decode GEMV prefetches each weight line twice: ASW_GEMV_PREFETCH_FAR elements (8 KiB of u16) ahead into L2
 * and ASW_GEMV_PREFETCH_NEAR (2 KiB) ahead into L1 (x86 hints T1 and T0; the x86 files resolve the names). The
 * hardware streamer alone left a 2-thread decode step ~15 % short; one prefetch 4 KiB ahead into L1 closed part of
 * that; the two levels gained another 4-20 % per round over 6 interleaved rounds (median +8 %, Qwen2-0.5B shape,
 * AVX-512), and 0-6 % on a bare 2-thread GEMV over the mapped weights (four runs of 40 paired repetitions), where
 * one prefetch into L2 alone measured the same as one into L1. The far one keeps many lines in flight from L2
 * without holding the L1 fill buffers; the near one lands each line in L1 just before its loads, whose conversion
 * and FMA uops would otherwise wait in the scheduler on a miss and stop the core from issuing loads further ahead.
 * A prefetch never faults, so running past the last row is harmless. */
#define ASW_GEMV_PREFETCH_FAR 4096
/* 512 (1 KiB) before: measured with backend_cpu.c's idle prefetch (then 8 pieces per thread) */
#define ASW_GEMV_PREFETCH_NEAR 1024
#define ASW_GEMV_PREFETCH_FAR_HINT _MM_HINT_T1
#define ASW_GEMV_PREFETCH_NEAR_HINT _MM_HINT_T0

/* That is the ASW_GEMV_NEAR_L1 plan, measured on Intel. AMD Zen 4 (AMD's first cores with AVX-512, and the first
 * whose PREFETCHT1 fills L2 rather than L1) streamed the AVX-512 GEMV faster with both prefetches into L2, each
 * twice as far ahead (ASW_GEMV_NEAR_L2: 16 KiB and 4 KiB, T1): bench/gemv_ceiling.c on a 2-core EPYC (family 25
 * model 17), six interleaved runs, median 29.8 GB/s against 25.9 (0.91 of the probe rep against 0.78); the near
 * prefetch into L1 alone fell to 0.5 of it there. Its AVX2 GEMV was at 0.92 of the probe with the L1 plan and no
 * faster with the L2 one, so only the AVX-512 set has both (asw_kernels_avx512_near_l2, picked on AMD). */
enum { ASW_GEMV_NEAR_L1 = 0, ASW_GEMV_NEAR_L2 = 1 };
#define ASW_GEMV_L2_FAR 8192
#define ASW_GEMV_L2_NEAR 2048

/* Decode attention fetches each cache row ASW_ATT_AHEAD rows ahead into L1 (asw_prefetch_l1): the KV cache is in no
 * cache level when a decode step reaches it, the weights having streamed through since. A prefetch never faults, so
 * reaching past the last row is harmless. */
#define ASW_ATT_AHEAD 32
static inline void asw_prefetch_l1(const void *p, int64_t bytes) {
    for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch((const char *)p + b, 0, 3); /* x86: prefetcht0 */
}
static inline void asw_prefetch_l2(const void *p, int64_t bytes) {
    for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch((const char *)p + b, 0, 2); /* x86: prefetcht1 */
}

/* `outer` in plain C loops (compiled with the set's target attribute, so the j loop vectorizes): the sets without
 * a register-tiled version. */
#define ASW_OUTER_LOOPS(prefix, ATTR)                                                                              \
    ATTR static void prefix##_outer(float *Z, int64_t ldz, const float *A, int64_t lar, int64_t lak, int64_t kn, \
                                    const float *B, int64_t ldb, int64_t rows, int64_t nv, int add,               \
                                    const void *next, int64_t next_bytes) {                                       \
        (void)next;                                                                                               \
        (void)next_bytes;                                                                                         \
        for (int64_t r = 0; r < rows; r++) {                                                                      \
            float *z = Z + r * ldz; /* [16 nv] */                                                                 \
            if (!add)                                                                                             \
                for (int64_t j = 0; j < 16 * nv; j++) z[j] = 0.0f;                                                \
            for (int64_t i = 0; i < kn; i++) {                                                                    \
                float a = A[r * lar + i * lak];                                                                   \
                const float *b = B + i * ldb; /* [16 nv] */                                                       \
                for (int64_t j = 0; j < 16 * nv; j++) z[j] += a * b[j];                                           \
            }                                                                                                     \
        }                                                                                                         \
    }

/* gemv_batch for a set without a multi-token GEMV: rows in blocks small enough to stay in L2 while every token's
 * nt = 1 GEMV (prefix##_matmul) reads them, so the weights still come from memory once. */
#define ASW_GEMV_BATCH_BY_TOKEN(prefix, ATTR)                                                                      \
    ATTR static void prefix##_gemv_batch(int dtype, float *Y, int64_t ldy, const uint16_t *W, int64_t k,           \
                                         int64_t r0, int64_t r1, const float *X, int64_t ldx, int64_t nt) {         \
        int64_t step = (64 * 1024) / (k * 2) + 1;                                                                 \
        for (int64_t b0 = r0; b0 < r1; b0 += step) {                                                              \
            int64_t b1 = b0 + step < r1 ? b0 + step : r1;                                                         \
            for (int64_t t = 0; t < nt; t++) prefix##_matmul(dtype, Y + t * ldy, ldy, W, k, b0, b1, X + t * ldx, ldx, 1); \
        }                                                                                                         \
    }

/* gemv_i8 in plain C (compiled with the set's target attribute) for the sets without their own (portable, NEON): 16
 * independent lanes, which a compiler may turn into vectors without reassociating a sum */
#define ASW_GEMV_I8_LOOPS(prefix, ATTR)                                                                            \
    ATTR static void prefix##_gemv_i8(float *y, const int8_t *Q, int64_t k, int64_t r0, int64_t r1,              \
                                      const float *x) {                                                           \
        for (int64_t r = r0; r < r1; r++) {                                                                       \
            const int8_t *q = Q + r * k; /* [k] */                                                                \
            float lane[16] = {0.0f};                                                                              \
            int64_t i = 0;                                                                                        \
            for (; i + 16 <= k; i += 16)                                                                          \
                for (int j = 0; j < 16; j++) lane[j] += (float)q[i + j] * x[i + j];                               \
            float sum = 0.0f;                                                                                     \
            for (; i < k; i++) sum += (float)q[i] * x[i];                                                         \
            for (int j = 0; j < 16; j++) sum += lane[j];                                                          \
            y[r] = sum;                                                                                           \
        }                                                                                                         \
    }

/* The attention loops of a kernel set, from its inlined `prefix##_dot` (returns sum a[i] x[i]) and `prefix##_axpy`
 * (y[i] += s a[i]): one call per head instead of one per cache row. ATTR is the set's target attribute. */
#define ASW_ATTENTION_LOOPS(prefix, ATTR)                                                                          \
    ATTR static void prefix##_scores(int dtype, float *sc, const uint16_t *K, int64_t ldk, const float *q,        \
                                     int64_t d, int64_t len, float scale) {                                       \
        if (dtype == 1 /* ASW_DTYPE_F16 */)                                                                       \
            for (int64_t p = 0; p < len; p++) sc[p] = prefix##_dot(1, K + p * ldk, q, d) * scale;                 \
        else                                                                                                      \
            for (int64_t p = 0; p < len; p++) sc[p] = prefix##_dot(2, K + p * ldk, q, d) * scale;                 \
    }                                                                                                             \
    ATTR static void prefix##_weighted_sum(int dtype, float *out, const float *w, const uint16_t *V, int64_t ldv,  \
                                           int64_t d, int64_t len) {                                              \
        if (dtype == 1 /* ASW_DTYPE_F16 */)                                                                       \
            for (int64_t p = 0; p < len; p++) prefix##_axpy(1, out, w[p], V + p * ldv, d);                        \
        else                                                                                                      \
            for (int64_t p = 0; p < len; p++) prefix##_axpy(2, out, w[p], V + p * ldv, d);                        \
    }

/* The outer-product kernel of prefill matmuls whose activations are rounded to bf16 (asw_open_options.activations),
 * on bf16 pair dot products (VDPBF16PS: two products summed into each f32 lane per instruction):
 *   Z[r*ldz + j] = sum_{i < cols} W[r*cols + i] * x_j[i]   for r < rows, j < 16 nv
 * W: [rows, cols] bf16 weights read in place (cols even); XP: [cols / 2, ldp, 2] bf16, the activations of token j
 * as pairs (x_j[2i], x_j[2i + 1]) at XP[(i*ldp + j)*2]; Z rows padded to whole 16-float vectors. Each product is
 * exact in f32 (8-bit significands); sums are f32, pair by pair. `next` [next_bytes]: as for `outer`. */
typedef void (*asw_outer_bf16_fn)(float *Z, int64_t ldz, const uint16_t *W, int64_t cols, const uint16_t *XP,
                                  int64_t ldp, int64_t rows, int64_t nv, const void *next, int64_t next_bytes);
/* The bf16-pair kernel that goes with set `k` on this CPU, else NULL: the AVX-512 sets, where the CPU has
 * AVX512_BF16 and VDPBF16PS is fast. That is AMD (Zen 4: bench/fma_peak.c measured 103-108 G multiply-adds/s on one
 * core, twice its FMAs); on the Sapphire Rapids-class Xeon it measured 42.8 G against 86.5 G for FMA, half the rate,
 * so Intel keeps the f32 kernel (on the same rounded inputs). ASW_VDPBF16PS=1 / =0 forces it on / off (where the CPU
 * has it), for tests and A/B runs. */
asw_outer_bf16_fn kernels_outer_bf16(const asw_kernels *k);

/* Bit mask of the sets this build can run here: 1 = AVX2+F16C+FMA, 2 = AVX-512, 4 = NEON; 8 = AVX512_BF16 too (the
 * bf16-pair prefill kernel asw_outer_bf16_avx512 can run). */
int32_t kernels_cpu_features(void);
/* The set to use now (honours ASW_KERNELS). NULL with *why set when ASW_KERNELS names an unusable set. */
const asw_kernels *kernels_select(const char **why);

/* scalar conversions shared by all sets (and by the backend's small vector ops) */
float asw_f16_to_f32(uint16_t h);
float asw_bf16_to_f32(uint16_t h);
uint16_t asw_f32_to_f16(float f);
/* The bits of f32 `x` rounded to bf16 (nearest even; a NaN stays a quiet NaN) in the high half, the low half zero:
 * the f32 whose value is x's bf16. Branch-free and inline, so that loops over it vectorize. */
static inline uint32_t asw_bf16_round_bits(float x) {
    uint32_t u;
    __builtin_memcpy(&u, &x, sizeof u);
    uint32_t rounded = (u & 0x7fffffffu) > 0x7f800000u ? u | 0x00400000u : u + 0x7fffu + ((u >> 16) & 1u);
    return rounded & 0xffff0000u;
}
/* f rounded to bf16 (the high half of asw_bf16_round_bits(f)); inline too, so that the sets' from_f32 loops
 * vectorize (as a call it made bf16 KV-cache writes cost ~60 us of a 2,048-token SmolLM2 decode step) */
static inline uint16_t asw_f32_to_bf16(float f) { return (uint16_t)(asw_bf16_round_bits(f) >> 16); }
static inline float asw_u16_to_f32(int dtype, uint16_t h) {
    return dtype == 1 /* ASW_DTYPE_F16 */ ? asw_f16_to_f32(h) : asw_bf16_to_f32(h);
}

extern const asw_kernels asw_kernels_portable;
#if defined(__x86_64__)
extern const asw_kernels asw_kernels_avx2;
extern const asw_kernels asw_kernels_avx512;
extern const asw_kernels asw_kernels_avx512_near_l2; /* the same set, its decode GEMV on the ASW_GEMV_NEAR_L2 plan */
void asw_outer_bf16_avx512(float *Z, int64_t ldz, const uint16_t *W, int64_t cols, const uint16_t *XP, int64_t ldp,
                           int64_t rows, int64_t nv, const void *next, int64_t next_bytes); /* needs AVX512_BF16 */
#endif
#if defined(__aarch64__)
extern const asw_kernels asw_kernels_neon;
#endif

#endif /* ASW_KERNELS_H */
