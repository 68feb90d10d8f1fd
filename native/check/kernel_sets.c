/* kernel_sets.c — checks that every SIMD kernel set this machine can run gives the portable set's logits.
 *
 * Built and run by `make check-aarch64` for the NEON kernels (under qemu-aarch64 on x86 hosts, natively on an
 * aarch64 host); on x86 it checks AVX2 / AVX-512 the same way. Uses only the public ABI (asw.h): a tiny random
 * model (GQA, biases, untied output, fp16 and bf16) is opened once per kernel set (ASW_KERNELS), a 70-token
 * prompt (two prefill chunks) is prefilled with all logits, then 4 decode steps; the largest difference to the
 * portable set's logits, relative to the largest |logit|, must stay below 1e-4. Then each set's batched decode GEMV
 * (gemv_batch, 1..19 tokens, odd row counts and inner sizes with every tail, up to 40 rows and 4,877 columns) must
 * equal its own one-token GEMV bit for bit: a batched step gives each session exactly what its lone step gives.
 * And each set's decode attention loops must match the portable set's over head sizes the tiny model does not have
 * (tails of 16, wider than 128), and its exp-based loops (vector_loops.h, compiled for the set) the portable
 * set's over lengths with every vector tail. Where the CPU has AVX512_BF16, the bf16-pair prefill kernel is checked
 * against exact sums of its products. Each set's gemv_i8 must stay within the rounding bound the greedy screen
 * assumes, its screen build loops must compute their definition bit for bit, and greedy steps through the screen
 * must pick the argmax of the whole lm_head's logits, having used the screen (its step counters, backend.h).
 */
#define _POSIX_C_SOURCE 200112L /* setenv */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "asw.h"
#include "tiny_model.h"
#include "../src/backend.h"
#include "../src/kernels.h"

enum { PROMPT = 70, STEPS = 4 };

/* logits of every prompt position and of each decode step: [(PROMPT + STEPS), VOCAB] */
static int run(const char *kernels, const uint8_t *region, const layout_t *l, const asw_config *cfg, float *out) {
    if (setenv("ASW_KERNELS", kernels, 1) != 0) return -1;
    asw_open_options open = {.abi_version = ASW_ABI_VERSION, .backend = "cpu"};
    asw_model *m = asw_model_open(region, l->size, cfg, l->refs, l->count, &open);
    if (m == NULL) {
        fprintf(stderr, "%s: open: %s\n", kernels, asw_last_error());
        return -1;
    }
    asw_session_options so = {.abi_version = ASW_ABI_VERSION, .max_len = PROMPT + STEPS, .n_threads = 2};
    asw_session *s = asw_session_new(m, &so);
    if (s == NULL) {
        fprintf(stderr, "%s: session: %s\n", kernels, asw_last_error());
        asw_model_free(m);
        return -1;
    }
    int32_t tokens[PROMPT]; /* [PROMPT] */
    for (int i = 0; i < PROMPT; i++) tokens[i] = (int32_t)((i * 37 + 11) % VOCAB);
    int32_t next = 0;
    int rc = asw_prefill(s, tokens, PROMPT, ASW_LOGITS_ALL, out, &next);
    for (int t = 0; rc == 0 && t < STEPS; t++) rc = asw_decode(s, next, ASW_LOGITS_LAST, out + (size_t)(PROMPT + t) * VOCAB, &next);
    if (rc != 0) fprintf(stderr, "%s: forward: %s\n", kernels, asw_last_error());
    asw_session_free(s);
    asw_model_free(m);
    return rc;
}

/* One model of set `kernels`, two sessions fed the same tokens: each step of one returns the logits of the last
 * position (the whole lm_head), the other only its argmax (the greedy screen; its last step a batch of one). Every screened token must be the
 * argmax the first session returned, and the backend's step counters (backend.h) must say that `screened` of the
 * PROMPT + STEPS steps went through the screen and the rest computed the whole lm_head. Returns the failures. */
static int screen_run(const char *kernels, const uint8_t *region, const layout_t *l, const asw_config *cfg,
                      int screened, const char *what) {
    if (setenv("ASW_KERNELS", kernels, 1) != 0) return 1;
    asw_open_options open = {.abi_version = ASW_ABI_VERSION, .backend = "cpu"};
    asw_model *m = asw_model_open(region, l->size, cfg, l->refs, l->count, &open);
    asw_session_options so = {.abi_version = ASW_ABI_VERSION, .max_len = PROMPT + STEPS, .n_threads = 2};
    asw_session *full = m == NULL ? NULL : asw_session_new(m, &so);
    asw_session *fast = full == NULL ? NULL : asw_session_new(m, &so);
    float *logits = malloc(sizeof(float) * VOCAB); /* [VOCAB] */
    int bad = 0;
    if (fast == NULL || logits == NULL) {
        fprintf(stderr, "%s: screen: %s\n", kernels, logits == NULL ? "out of memory" : asw_last_error());
        bad = 1;
    }
    long long before[2] = {asw_greedy_screen_steps[0], asw_greedy_screen_steps[1]};
    int32_t tokens[PROMPT]; /* [PROMPT]: run()'s prompt */
    for (int i = 0; i < PROMPT; i++) tokens[i] = (int32_t)((i * 37 + 11) % VOCAB);
    int32_t want = -1, got = -1;
    int rc = bad ? 0 : asw_prefill(full, tokens, PROMPT, ASW_LOGITS_LAST, logits, &want);
    if (rc == 0 && !bad) rc = asw_prefill(fast, tokens, PROMPT, ASW_LOGITS_NONE, NULL, &got);
    for (int t = 0; rc == 0 && !bad; t++) {
        if (got != want && bad++ < 5)
            printf("%-8s greedy screen (%s), step %d: token %d, argmax %d\n", kernels, what, t, (int)got, (int)want);
        if (t == STEPS) break;
        int32_t fed = want;
        rc = asw_decode(full, fed, ASW_LOGITS_LAST, logits, &want);
        if (rc == 0 && t + 1 < STEPS) rc = asw_decode(fast, fed, ASW_LOGITS_NONE, NULL, &got);
        if (rc == 0 && t + 1 == STEPS) /* the last as a batch of one, which a lone greedy step serves */
            rc = asw_forward_batch(&fast, 1, &fed, ASW_LOGITS_NONE, 0, NULL, NULL, &got);
    }
    if (rc != 0) fprintf(stderr, "%s: screen: %s\n", kernels, asw_last_error()), bad++;
    long long steps[2] = {asw_greedy_screen_steps[0] - before[0], asw_greedy_screen_steps[1] - before[1]};
    if (!bad && (steps[0] != screened || steps[1] != STEPS + 1 - screened)) {
        printf("%-8s greedy screen (%s): %lld of %d steps screened, %lld on the whole lm_head; expected %d screened\n",
               kernels, what, steps[0], STEPS + 1, steps[1], screened);
        bad++;
    }
    asw_session_free(fast);
    asw_session_free(full);
    asw_model_free(m);
    free(logits);
    return bad;
}

/* The greedy screen of set `kernels`: the tiny model's steps all screened; then with every lm_head row equal (every
 * row a candidate) all on the whole lm_head, the same tokens either way. Returns the number of failures. */
static int check_screen(const char *kernels, const uint8_t *region, const layout_t *l, const asw_config *cfg) {
    int bad = screen_run(kernels, region, l, cfg, STEPS + 1, "random rows");
    const asw_tensor_ref *out = NULL;
    for (int i = 0; i < l->count; i++)
        if (strcmp(l->refs[i].name, "output.weight") == 0) out = &l->refs[i];
    uint8_t *same = malloc(l->size); /* [l->size] the region with every output row = row 0 */
    if (out == NULL || same == NULL) {
        fprintf(stderr, "%s: screen: %s\n", kernels, same == NULL ? "out of memory" : "no output.weight");
        free(same);
        return bad + 1;
    }
    memcpy(same, region, l->size);
    size_t row = (size_t)HIDDEN * sizeof(uint16_t);
    for (int r = 1; r < VOCAB; r++) memcpy(same + out->offset + (size_t)r * row, same + out->offset, row);
    bad += screen_run(kernels, same, l, cfg, 0, "equal rows");
    free(same);
    printf("%-8s %s greedy steps through the screen pick the whole lm_head's argmax, and fall back to it: %s\n",
           kernels, cfg->dtype == ASW_DTYPE_F16 ? "fp16" : "bf16", bad ? "FAIL" : "ok");
    return bad;
}

/* the next value of the checks' fixed pseudo-random sequence: an integer in [-1000, 1000] times `step` */
static float next_value(uint32_t *seed, float step) {
    *seed = *seed * 1664525u + 1013904223u;
    return (float)((int32_t)(*seed >> 8) % 2001 - 1000) * step;
}

/* gemv_batch of set `k` against its own matmul with one token, bit for bit; returns the number of mismatches */
static int check_gemv_batch(const asw_kernels *k, const char *label) {
    /* 2131 and 4877: activations of 4-8 tokens over 32 KiB, where the x86 sets run their blocked order (below it,
     * AVX2 runs row pairs); up to 40 rows (1, 4, .. 40): more than one group of tiles */
    static const int64_t inner[] = {16, 64, 77, 96, 200, 903, 2131, 4877};
    enum { MAX_ROWS = 41, MAX_K = 4877, MAX_NT = 19 };
    uint16_t *W = malloc(sizeof(uint16_t) * MAX_ROWS * MAX_K); /* [MAX_ROWS, MAX_K] */
    float *X = malloc(sizeof(float) * MAX_NT * MAX_K);         /* [MAX_NT, MAX_K] */
    float *got = malloc(sizeof(float) * MAX_NT * MAX_ROWS);    /* [MAX_NT, MAX_ROWS] */
    float *want = malloc(sizeof(float) * MAX_NT * MAX_ROWS);   /* [MAX_NT, MAX_ROWS]: each token's lone GEMV */
    if (W == NULL || X == NULL || got == NULL || want == NULL) {
        free(W), free(X), free(got), free(want);
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    int bad = 0;
    uint32_t seed = 12345;
    for (int dtype = ASW_DTYPE_F16; dtype <= ASW_DTYPE_BF16; dtype++)
        for (size_t ki = 0; ki < sizeof inner / sizeof inner[0]; ki++) {
            int64_t K = inner[ki];
            const char *dt = dtype == ASW_DTYPE_F16 ? "fp16" : "bf16";
            for (int64_t i = 0; i < MAX_ROWS * K; i++) {
                float v = next_value(&seed, 1e-3f);
                W[i] = dtype == ASW_DTYPE_F16 ? asw_f32_to_f16(v) : asw_f32_to_bf16(v);
            }
            for (int64_t i = 0; i < MAX_NT * K; i++) X[i] = next_value(&seed, 1e-2f);
            for (int64_t rows = 1; rows <= MAX_ROWS; rows += 3) { /* rows [1, rows): r0 > 0 too */
                for (int64_t t = 0; t < MAX_NT; t++)
                    k->matmul(dtype, want + t * MAX_ROWS, MAX_ROWS, W, K, 1, rows, X + t * K, K, 1);
                for (int64_t r = 1; r < rows; r++) { /* each row alone, as the greedy screen computes it */
                    float alone[MAX_ROWS];
                    k->matmul(dtype, alone, MAX_ROWS, W, K, r, r + 1, X, K, 1);
                    if (memcmp(&alone[r], &want[r], sizeof(float)) != 0 && bad++ < 5)
                        printf("%-8s %s matmul k=%d: row %d alone differs from rows 1..%d%s\n", k->name, dt, (int)K,
                               (int)r, (int)rows - 1, label);
                }
                for (int64_t nt = 1; nt <= MAX_NT; nt++) {
                    k->gemv_batch(dtype, got, MAX_ROWS, W, K, 1, rows, X, K, nt);
                    for (int64_t t = 0; t < nt; t++)
                        if (memcmp(want + t * MAX_ROWS + 1, got + t * MAX_ROWS + 1, sizeof(float) * (size_t)(rows - 1))
                            && bad++ < 5)
                            printf("%-8s %s gemv_batch k=%d rows=%d tokens=%d: token %d differs from its lone "
                                   "GEMV%s\n",
                                   k->name, dt, (int)K, (int)rows, (int)nt, (int)t, label);
                }
            }
        }
    free(W), free(X), free(got), free(want);
    printf("%-8s gemv_batch equals the lone GEMV%s bit for bit (and rows alone equal rows together): %s\n",
           k->name, label, bad ? "FAIL" : "ok");
    return bad;
}

/* gemv_i8 of set `k` within the rounding bound the greedy screen assumes (backend_cpu.c): |y - Q . x| <= g sum_i
 * |Q_i x_i|, g = k u / (1 - k u), u = 2^-24, against a double sum; returns the number of rows outside it */
static int check_gemv_i8(const asw_kernels *k) {
    static const int64_t inner[] = {1, 15, 16, 17, 64, 77, 96, 200, 896, 903, 4877};
    enum { ROWS = 9, MAX_K = 4877 };
    int8_t *Q = malloc((size_t)ROWS * MAX_K); /* [ROWS, MAX_K] */
    float *x = malloc(sizeof(float) * MAX_K); /* [MAX_K] */
    if (Q == NULL || x == NULL) {
        free(Q), free(x);
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    int bad = 0;
    uint32_t seed = 777;
    for (size_t ki = 0; ki < sizeof inner / sizeof inner[0]; ki++) {
        int64_t K = inner[ki];
        for (int64_t i = 0; i < ROWS * K; i++) Q[i] = (int8_t)(next_value(&seed, 1.0f) / 1000.0f * 127.0f);
        Q[0] = 127, Q[1] = -127; /* the extremes */
        for (int64_t i = 0; i < K; i++) x[i] = next_value(&seed, 1e-2f) * (i % 7 == 0 ? 1e3f : 1.0f);
        float y[ROWS + 1];
        y[ROWS] = 42.0f;
        k->gemv_i8(y + 1, Q + K, K, 0, ROWS - 1, x); /* rows 1.. at r0 = 0 of a shifted matrix */
        k->gemv_i8(y, Q, K, 0, 1, x);
        double g = (double)K / 16777216.0 / (1.0 - (double)K / 16777216.0);
        for (int r = 0; r < ROWS; r++) {
            double exact = 0.0, mag = 0.0;
            for (int64_t i = 0; i < K; i++) {
                exact += (double)Q[r * K + i] * (double)x[i];
                mag += fabs((double)Q[r * K + i] * (double)x[i]);
            }
            if (!(fabs((double)y[r] - exact) <= g * mag) && bad++ < 5)
                printf("%-8s gemv_i8 k=%d row %d: %.9g, exact %.9g, bound %.3g\n", k->name, (int)K, r, (double)y[r],
                       exact, g * mag);
        }
        if (y[ROWS] != 42.0f && bad++ < 5) printf("%-8s gemv_i8 k=%d wrote past its rows\n", k->name, (int)K);
    }
    free(Q), free(x);
    printf("%-8s gemv_i8 within the greedy screen's rounding bound: %s\n", k->name, bad ? "FAIL" : "ok");
    return bad;
}

/* check_attention's group half: set k's scores_group and weighted_sum_group for g query heads (q [g, d], weights
 * [g, len]) against the portable set's one-head loops, head by head. Returns the largest |difference| over the
 * groups, and in *worst_g the group size that had it. */
static float check_group_attention(const asw_kernels *k, int dtype, const uint16_t *KV, int64_t ld, int64_t d,
                                   int64_t len, uint32_t *seed, int *worst_g) {
    enum { MAX_G = 7, LDS = 80, MAX_D = 256 };
    static const int64_t groups[] = {1, 3, MAX_G};
    static float q[MAX_G * MAX_D], w[MAX_G * LDS], sc[MAX_G * LDS], want[LDS], out[MAX_G * (MAX_D + 8)],
        out_want[MAX_D];
    float worst_all = 0.0f;
    for (size_t gi = 0; gi < sizeof groups / sizeof groups[0]; gi++) {
        int64_t g = groups[gi], ldo = d + 8; /* outputs further apart than a head */
        for (int64_t i = 0; i < g * d; i++) q[i] = next_value(seed, 1e-3f);
        for (int64_t i = 0; i < g * LDS; i++) w[i] = fabsf(next_value(seed, 1e-3f));
        k->scores_group(dtype, sc, LDS, KV, ld, q, d, g, d, len, 0.125f);
        k->weighted_sum_group(dtype, out, ldo, w, LDS, KV, ld, g, d, len);
        float worst = 0.0f;
        for (int64_t h = 0; h < g; h++) {
            asw_kernels_portable.scores(dtype, want, KV, ld, q + h * d, d, len, 0.125f);
            for (int64_t p = 0; p < len; p++) worst = fmaxf(worst, fabsf(sc[h * LDS + p] - want[p]));
            memset(out_want, 0, sizeof out_want);
            asw_kernels_portable.weighted_sum(dtype, out_want, w + h * LDS, KV, ld, d, len);
            for (int64_t i = 0; i < d; i++) worst = fmaxf(worst, fabsf(out[h * ldo + i] - out_want[i]));
        }
        if (!(worst <= worst_all)) { /* NaN included */
            worst_all = worst;
            *worst_g = (int)g;
        }
    }
    return worst_all;
}

/* The decode attention loops (scores, weighted_sum, and where the set has them scores_group and weighted_sum_group
 * for 1, 3 and 7 query heads of a group, each head against the portable one-head loops) of set `k` against the
 * portable set's, over head sizes with and without a tail of 16, not whole 8-lane vectors (AVX2's per-key loops),
 * every tile shape of the group loops (3, 5 and 6 chunks: tiles of 4, 3 and 2 heads) and past the AVX-512 register
 * kernels' widest head (128), cache rows further apart than a head (the loops take any
 * row stride), key counts around the 8- and 16-key blocks; |difference| <= 1e-4 (inputs in [-1, 1]). Returns the
 * number of mismatches. */
static int check_attention(const asw_kernels *k) {
    static const int64_t dims[] = {8, 12, 16, 24, 36, 48, 64, 72, 80, 96, 128, 136, 256};
    static const int64_t lens[] = {1, 2, 15, 16, 17, 33, 70};
    enum { MAX_D = 256, MAX_LEN = 70, LD = MAX_D + 40 };
    uint16_t *KV = malloc(sizeof(uint16_t) * MAX_LEN * LD); /* [MAX_LEN, LD] cache rows */
    float *q = malloc(sizeof(float) * MAX_D);                /* [MAX_D] */
    float *w = malloc(sizeof(float) * MAX_LEN);              /* [MAX_LEN] */
    float *got = malloc(sizeof(float) * MAX_LEN), *want = malloc(sizeof(float) * MAX_LEN); /* [MAX_LEN] each */
    float *out_got = malloc(sizeof(float) * MAX_D), *out_want = malloc(sizeof(float) * MAX_D); /* [MAX_D] each */
    if (!KV || !q || !w || !got || !want || !out_got || !out_want) {
        free(KV), free(q), free(w), free(got), free(want), free(out_got), free(out_want);
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    int bad = 0;
    uint32_t seed = 777;
    for (int dtype = ASW_DTYPE_F16; dtype <= ASW_DTYPE_BF16; dtype++)
        for (size_t di = 0; di < sizeof dims / sizeof dims[0]; di++)
            for (size_t li = 0; li < sizeof lens / sizeof lens[0]; li++) {
                int64_t d = dims[di], len = lens[li];
                for (int64_t i = 0; i < MAX_LEN * LD; i++) {
                    float v = next_value(&seed, 1e-3f);
                    KV[i] = dtype == ASW_DTYPE_F16 ? asw_f32_to_f16(v) : asw_f32_to_bf16(v);
                }
                for (int64_t i = 0; i < d; i++) {
                    q[i] = next_value(&seed, 1e-3f);
                    out_got[i] = out_want[i] = next_value(&seed, 1e-3f);
                }
                for (int64_t p = 0; p < len; p++) w[p] = fabsf(next_value(&seed, 1e-3f));
                k->scores(dtype, got, KV, LD, q, d, len, 0.125f);
                asw_kernels_portable.scores(dtype, want, KV, LD, q, d, len, 0.125f);
                k->weighted_sum(dtype, out_got, w, KV, LD, d, len);
                asw_kernels_portable.weighted_sum(dtype, out_want, w, KV, LD, d, len);
                float worst = 0.0f;
                for (int64_t p = 0; p < len; p++) worst = fmaxf(worst, fabsf(got[p] - want[p]));
                for (int64_t i = 0; i < d; i++) worst = fmaxf(worst, fabsf(out_got[i] - out_want[i]));
                if (!(worst <= 1e-4f) && bad++ < 5)
                    printf("%-8s %s attention d=%d len=%d: differs from portable by %.3g\n", k->name,
                           dtype == ASW_DTYPE_F16 ? "fp16" : "bf16", (int)d, (int)len, worst);
                int g = 0;
                worst = k->scores_group == NULL ? 0.0f : check_group_attention(k, dtype, KV, LD, d, len, &seed, &g);
                if (!(worst <= 1e-4f) && bad++ < 5)
                    printf("%-8s %s group attention g=%d d=%d len=%d: differs from portable by %.3g\n", k->name,
                           dtype == ASW_DTYPE_F16 ? "fp16" : "bf16", g, (int)d, (int)len, worst);
            }
    free(KV), free(q), free(w), free(got), free(want), free(out_got), free(out_want);
    printf("%-8s decode attention loops match the portable set's: %s\n", k->name, bad ? "FAIL" : "ok");
    return bad;
}

/* The exp-based loops of set `k` (exp_sum, silu_mul, softmax_block: vector_loops.h compiled for the set)
 * against the portable set's, over lengths with every tail of 8 and 16 lanes and keys masked per query; relative
 * |difference| <= 1e-5 (inputs in [-8, 8]); the portable exp_sum also against the same in double. Returns the
 * number of mismatches. */
static int check_vector_loops(const asw_kernels *k) {
    static const int64_t lens[] = {1, 7, 8, 9, 15, 16, 17, 31, 100, 333};
    enum { MAX_N = 333, LDQ = 32, KEYS = 17 };
    float a[MAX_N], b[MAX_N], c[MAX_N], gate[MAX_N], up[MAX_N], st_got[KEYS * LDQ], st_want[KEYS * LDQ];
    float mx[2][LDQ], sum[2][LDQ], corr[2][LDQ];
    int32_t lim[LDQ];
    uint32_t seed = 4242;
    int bad = 0;
#define CLOSE(x, y) (fabsf((x) - (y)) <= 1e-5f * fmaxf(1.0f, fabsf(y)))
#define REL(x, y) (fabsf((x) - (y)) <= 1e-5f * fabsf(y)) /* exp_sum: values far below 1 */
    for (size_t li = 0; li < sizeof lens / sizeof lens[0]; li++) {
        int64_t n = lens[li];
        for (int64_t i = 0; i < n; i++) {
            a[i] = b[i] = c[i] = 8.0f * next_value(&seed, 1e-3f);
            gate[i] = 8.0f * next_value(&seed, 1e-3f);
            up[i] = next_value(&seed, 1e-3f);
        }
        float mx_got, mx_want;
        float s_got = k->exp_sum(a, n, &mx_got), s_want = asw_kernels_portable.exp_sum(b, n, &mx_want);
        double want_sum = 0.0; /* the portable set's against exp(x - max) and their sum in double */
        double mx = 1.0 * c[0];
        for (int64_t i = 1; i < n; i++) mx = c[i] > mx ? c[i] : mx;
        for (int64_t i = 0; i < n; i++) want_sum += exp(c[i] - mx);
        int ok = mx_got == (float)mx && mx_want == (float)mx && REL(s_got, s_want) && REL(s_want, (float)want_sum);
        for (int64_t i = 0; i < n; i++) ok &= REL(a[i], b[i]) && REL(b[i], (float)exp(c[i] - mx));
        k->silu_mul(a, gate, up, n);
        asw_kernels_portable.silu_mul(b, gate, up, n);
        for (int64_t i = 0; i < n; i++) ok &= CLOSE(a[i], b[i]);
        if (!ok && bad++ < 5)
            printf("%-8s exp_sum / silu_mul n=%d: differ from portable (or exp_sum from double)\n", k->name, (int)n);
    }
    for (int64_t ldq = 16; ldq <= LDQ; ldq += 16)
        for (int64_t pn = 1; pn <= KEYS; pn += 8) {
            for (int64_t q = 0; q < ldq; q++) {
                lim[q] = 3 + (int32_t)(q % 7) * 3; /* keys 0..lim[q] of the block p0 = 2 .. */
                mx[0][q] = mx[1][q] = q % 3 ? 0.25f : -INFINITY; /* a first block, and a later one */
                sum[0][q] = sum[1][q] = q % 3 ? 2.0f : 0.0f;
            }
            for (int64_t i = 0; i < pn * ldq; i++) st_got[i] = st_want[i] = 8.0f * next_value(&seed, 1e-3f);
            k->softmax_block(st_got, pn, ldq, 2, lim, mx[0], sum[0], corr[0]);
            asw_kernels_portable.softmax_block(st_want, pn, ldq, 2, lim, mx[1], sum[1], corr[1]);
            int ok = 1;
            for (int64_t i = 0; i < pn * ldq; i++) ok &= CLOSE(st_got[i], st_want[i]);
            for (int64_t q = 0; q < ldq; q++)
                ok &= mx[0][q] == mx[1][q] && CLOSE(sum[0][q], sum[1][q]) && CLOSE(corr[0][q], corr[1][q]);
            if (!ok && bad++ < 5)
                printf("%-8s softmax_block ldq=%d pn=%d: differs from portable\n", k->name, (int)ldq, (int)pn);
        }
#undef CLOSE
#undef REL
    printf("%-8s exp-based loops match the portable set's: %s\n", k->name, bad ? "FAIL" : "ok");
    return bad;
}

/* The greedy screen's build loops of set `k` (abs_max, quantize_i8: vector_loops.h compiled for the set) against
 * their definition written out here in scalar code, bit for bit: the same max, the same int8 row, the same double
 * sums (element i in lane i % SCREEN_LANES, each lane summed in order, then the lanes in order), over lengths with
 * every tail, on random rows and on edge rows: ties exactly half-way between two integers (to even), values that
 * round to +-127, -0.0, subnormals, rows below the screen's tiny threshold (scale and inv 0, as the backend passes
 * them); and rows with an inf or a NaN (at the head, the middle, the tail) reported as not finite. Returns the
 * number of mismatches. */
static int check_screen_build(const asw_kernels *k) {
    static const int64_t lens[] = {1, 7, 15, 16, 17, 31, 64, 100, 333, 896};
    enum { MAX_N = 896, LANES = 16, KINDS = 6 };
    float w[MAX_N];
    int8_t q_got[MAX_N], q_want[MAX_N];
    uint32_t seed = 777;
    int bad = 0;
    for (int kind = 0; kind < KINDS; kind++)
        for (size_t li = 0; li < sizeof lens / sizeof lens[0]; li++) {
            int64_t n = lens[li];
            for (int64_t i = 0; i < n; i++) {
                float r = next_value(&seed, 1e-3f);
                switch (kind) {
                case 0: w[i] = r * (i % 5 == 0 ? 3.0f : 0.05f); break;           /* random */
                case 1: w[i] = i == 0 ? 127.0f : (float)(i % 254 - 127) + 0.5f; break; /* inv 1: ties, +-126.5 */
                case 2: w[i] = i % 3 == 0 ? -0.0f : r * 1e-3f; break;            /* -0.0 among small values */
                case 3: w[i] = r * 1e-39f; break;                                  /* subnormal */
                case 4: w[i] = i % 2 ? -0.0f : r * 1e-31f; break;                  /* below the tiny threshold */
                default: w[i] = (i % 7 == 0 ? -1.0f : 1.0f) * (r + 2.0f); break;  /* rounds to +-127 often */
                }
            }
            float amax_want = 0.0f;
            for (int64_t i = 0; i < n; i++) amax_want = fabsf(w[i]) > amax_want ? fabsf(w[i]) : amax_want;
            int finite = 0;
            float amax = k->abs_max(w, n, &finite);
            int tiny = amax_want < ASW_SCREEN_TINY_ROW;
            float scale = tiny ? 0.0f : amax_want / 127.0f, inv = tiny ? 0.0f : 127.0f / amax_want;
            double lanes[3][LANES] = {{0.0}}, want[3] = {0.0, 0.0, 0.0}, got[3];
            for (int64_t i = 0; i < n; i++) {
                float r = (w[i] * inv + 12582912.0f) - 12582912.0f;
                r = r > 127.0f ? 127.0f : r < -127.0f ? -127.0f : r;
                q_want[i] = (int8_t)r;
                double e = (double)w[i] - (double)scale * (double)r;
                lanes[0][i % LANES] += e * e;
                lanes[1][i % LANES] += (double)r * (double)r;
                lanes[2][i % LANES] += (double)w[i] * (double)w[i];
            }
            for (int s = 0; s < 3; s++)
                for (int l = 0; l < LANES; l++) want[s] += lanes[s][l];
            k->quantize_i8(q_got, w, n, scale, inv, got);
            int ok = finite == 1 && amax == amax_want && memcmp(q_got, q_want, (size_t)n) == 0 &&
                     memcmp(got, want, sizeof got) == 0;
            int64_t at[3] = {0, n / 2, n - 1}; /* an inf or a NaN at the head, the middle, the tail */
            for (int a = 0; a < 3; a++) {
                float keep = w[at[a]];
                w[at[a]] = a == 1 ? NAN : (a == 0 ? -INFINITY : INFINITY);
                k->abs_max(w, n, &finite);
                ok &= finite == 0;
                w[at[a]] = keep;
            }
            if (!ok && bad++ < 5)
                printf("%-8s screen build kind %d n=%d: differs from its definition\n", k->name, kind, (int)n);
        }
    printf("%-8s greedy screen build loops match their definition bit for bit: %s\n", k->name, bad ? "FAIL" : "ok");
    return bad;
}

/* The bf16-pair prefill kernel (asw_outer_bf16_fn) against sums of the same products in double: each product of two
 * bf16 is exact in f32, so only the f32 summation may differ, by <= 1e-5 of the sum of |products|. Over inner sizes
 * of 1 to 448 pairs, row counts past every tile height, 1..4 vectors of tokens, prefetch hints on and off. Returns
 * the number of mismatches. Runs where the CPU has AVX512_BF16 (and says so when it does not). */
static int check_outer_bf16(asw_outer_bf16_fn outer_bf16) {
    static const int64_t inner[] = {2, 6, 32, 34, 96, 202, 896};
    enum { MAX_ROWS = 27, MAX_K = 896, LDP = 64, LDZ = 64 };
    uint16_t *W = malloc(sizeof(uint16_t) * MAX_ROWS * MAX_K); /* [MAX_ROWS, MAX_K] bf16 */
    uint16_t *XP = malloc(sizeof(uint16_t) * MAX_K * LDP);     /* [MAX_K / 2, LDP, 2] bf16 pairs */
    float *Z = malloc(sizeof(float) * MAX_ROWS * LDZ);          /* [MAX_ROWS, LDZ] */
    if (W == NULL || XP == NULL || Z == NULL) {
        free(W), free(XP), free(Z);
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    int bad = 0;
    uint32_t seed = 99;
    for (size_t ki = 0; ki < sizeof inner / sizeof inner[0]; ki++) {
        int64_t K = inner[ki];
        for (int64_t i = 0; i < MAX_ROWS * K; i++) W[i] = asw_f32_to_bf16(next_value(&seed, 1e-3f));
        for (int64_t i = 0; i < K * LDP; i++) XP[i] = asw_f32_to_bf16(next_value(&seed, 1e-2f));
        for (int64_t rows = 1; rows <= MAX_ROWS; rows += 2)
            for (int64_t nv = 1; nv <= 4; nv++) {
                outer_bf16(Z, LDZ, W, K, XP, LDP, rows, nv, rows % 4 ? W : NULL, (int64_t)sizeof(uint16_t) * K);
                double worst = 0.0;
                for (int64_t r = 0; r < rows; r++)
                    for (int64_t j = 0; j < 16 * nv; j++) {
                        double sum = 0.0, size = 0.0;
                        for (int64_t i = 0; i < K; i++) {
                            double product = (double)asw_bf16_to_f32(W[r * K + i]) *
                                             (double)asw_bf16_to_f32(XP[((i / 2) * LDP + j) * 2 + i % 2]);
                            sum += product;
                            size += fabs(product);
                        }
                        double e = fabs((double)Z[r * LDZ + j] - sum) / (size > 0.0 ? size : 1.0);
                        worst = e > worst ? e : worst;
                    }
                if (!(worst <= 1e-5) && bad++ < 5)
                    printf("outer_bf16 k=%d rows=%d vectors=%d: relative error %.3g\n", (int)K, (int)rows, (int)nv,
                           worst);
            }
    }
    free(W), free(XP), free(Z);
    printf("outer_bf16 (VDPBF16PS) sums its products to f32 precision: %s\n", bad ? "FAIL" : "ok");
    return bad;
}

int main(void) {
    static const char *sets[] = {"avx2", "avx512", "neon"};
    static const int32_t bits[] = {1, 2, 4};
    layout_t layout;
    build_layout(&layout);
    int failures = 0, checked = 0;
    for (int dtype = ASW_DTYPE_F16; dtype <= ASW_DTYPE_BF16; dtype++) {
        uint8_t *region = calloc(1, layout.size); /* [layout.size] the data region */
        float *want = malloc(sizeof(float) * (PROMPT + STEPS) * VOCAB); /* [PROMPT + STEPS, VOCAB] */
        float *got = malloc(sizeof(float) * (PROMPT + STEPS) * VOCAB);  /* [PROMPT + STEPS, VOCAB] */
        if (region == NULL || want == NULL || got == NULL) {
            fprintf(stderr, "out of memory\n");
            free(region), free(want), free(got);
            return 2;
        }
        fill_region(region, &layout, dtype);
        asw_config cfg = tiny_config(dtype);
        if (run("portable", region, &layout, &cfg, want) != 0) failures++;
        failures += check_screen("portable", region, &layout, &cfg) != 0, checked++;
        float scale = 0.0f;
        for (int j = 0; j < (PROMPT + STEPS) * VOCAB; j++) scale = fmaxf(scale, fabsf(want[j]));
        for (int k = 0; k < 3; k++) {
            if (!(asw_cpu_features() & bits[k])) continue;
            if (run(sets[k], region, &layout, &cfg, got) != 0) {
                failures++;
                continue;
            }
            failures += check_screen(sets[k], region, &layout, &cfg) != 0, checked++;
            float worst = 0.0f;
            for (int j = 0; j < (PROMPT + STEPS) * VOCAB; j++) worst = fmaxf(worst, fabsf(got[j] - want[j]));
            int ok = worst <= 1e-4f * scale;
            printf("%-6s %s: max |logit diff| %.3g (max |logit| %.3g) %s\n", sets[k],
                   dtype == ASW_DTYPE_F16 ? "fp16" : "bf16", worst, scale, ok ? "ok" : "FAIL");
            failures += !ok;
            checked++;
        }
        free(region), free(want), free(got);
    }
    failures += check_gemv_batch(&asw_kernels_portable, "") != 0;
    failures += check_gemv_i8(&asw_kernels_portable) != 0;
    failures += check_screen_build(&asw_kernels_portable) != 0;
    checked += 3;
#if defined(__x86_64__)
    if (asw_cpu_features() & 1) failures += check_gemv_batch(&asw_kernels_avx2, "") != 0, checked++;
    if (asw_cpu_features() & 2) failures += check_gemv_batch(&asw_kernels_avx512, "") != 0, checked++;
    if (asw_cpu_features() & 2)
        failures += check_gemv_batch(&asw_kernels_avx512_near_l2, " (near-L2 prefetch)") != 0, checked++;
    if (asw_cpu_features() & 1) failures += check_gemv_i8(&asw_kernels_avx2) != 0, checked++;
    if (asw_cpu_features() & 2) failures += check_gemv_i8(&asw_kernels_avx512) != 0, checked++;
    if (asw_cpu_features() & 1) failures += check_attention(&asw_kernels_avx2) != 0, checked++;
    if (asw_cpu_features() & 2) failures += check_attention(&asw_kernels_avx512) != 0, checked++;
    if (asw_cpu_features() & 1) failures += check_vector_loops(&asw_kernels_avx2) != 0, checked++;
    if (asw_cpu_features() & 2) failures += check_vector_loops(&asw_kernels_avx512) != 0, checked++;
    if (asw_cpu_features() & 1) failures += check_screen_build(&asw_kernels_avx2) != 0, checked++;
    if (asw_cpu_features() & 2) failures += check_screen_build(&asw_kernels_avx512) != 0, checked++;
    asw_outer_bf16_fn outer_bf16 = (asw_cpu_features() & 8) ? asw_outer_bf16_avx512 : NULL;
#else
    asw_outer_bf16_fn outer_bf16 = NULL;
#endif
    if (outer_bf16 != NULL)
        failures += check_outer_bf16(outer_bf16) != 0, checked++;
    else
        printf("outer_bf16 (VDPBF16PS): not checked, this CPU or build has no AVX512_BF16\n");
#if defined(__aarch64__)
    if (asw_cpu_features() & 4) failures += check_gemv_batch(&asw_kernels_neon, "") != 0, checked++;
    if (asw_cpu_features() & 4) failures += check_gemv_i8(&asw_kernels_neon) != 0, checked++;
    if (asw_cpu_features() & 4) failures += check_attention(&asw_kernels_neon) != 0, checked++;
    if (asw_cpu_features() & 4) failures += check_vector_loops(&asw_kernels_neon) != 0, checked++;
    if (asw_cpu_features() & 4) failures += check_screen_build(&asw_kernels_neon) != 0, checked++;
#endif
    printf("%d kernel set checks, %d failures\n", checked, failures);
    return failures != 0 || checked == 0;
}
