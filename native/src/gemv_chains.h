/* gemv_chains.h — the decode GEMV of an x86 kernel set, lone and batched, written once for any vector width.
 *
 * Included by kernels_avx512.c (16 f32 lanes) and kernels_avx2.c (8 lanes) after they define the vector type and
 * the few operations below; everything here is static to the including file.
 *
 * One row . x (row_dot: the decode GEMV) sums in a fixed order, and the batched GEMV repeats it for every token, so a
 * batched step gives each session exactly what its lone step gives, bit for bit (native/check/kernel_sets.c checks):
 * four accumulators ("chains"); chain j sums the VL-element chunks at 4 VL m + VL j, then chain 0 the whole chunks
 * past the last 4 VL, chain 1 the tail (zero-padded); the result is hsum((chain 0 + chain 1) + (chain 2 + chain 3)).
 *
 * The including file defines, before including:
 *   VEC, VL              the vector type and its f32 lanes
 *   BR, BT               the largest row and token tile of the batched GEMV (enum constants)
 *   TILE_ROWS(nt)        rows per batched tile for nt tokens: what fits the register file (at most BR; nt * rows
 *                        <= 16, the partial sums' room)
 *   KBLOCK, ACT_L1       the blocked order's columns per block, and the activation bytes above which it is used
 *                        (see tiles_blocked)
 *   ROW_PAIRS_IN_L1      1: below ACT_L1, rows one by one with tokens in pairs instead of tiles (see tokens_rows)
 *   GEMV_NEAR_L2_PLAN    1: also build the lone GEMV for the ASW_GEMV_NEAR_L2 prefetch plan (kernels.h)
 *   TGT, INL             its target attribute, and `static inline always_inline` with it
 *   v_zero(), v_add(a, b), v_fma(a, b, c)      (a * b + c)
 *   w_load(dt, p), w_tail(dt, p, n)   VL weights at p (u16 of dtype dt) as f32; the first n < VL, zeros after
 *   x_load(p), x_tail(p, n)           VL f32 at p; the first n < VL, zeros after (no tail reads past p + n)
 *   hsum(v)              the horizontal sum of v in one fixed tree
 *   hsum_n(out, v, n)    out[p] = hsum(v[p]) for p < n <= 16, bit for bit
 *   q_load(p), q_tail(p, n)           VL int8 at p as f32; the first n < VL, zeros after (gemv_i8)
 */
#ifndef ASW_GEMV_CHAINS_H
#define ASW_GEMV_CHAINS_H

enum { STEP = 4 * VL, CACHE_LINE = 64 }; /* elements one step of the four chains covers; bytes per cache line */

/* y[t*ldy] = w . X[t] for t < nt <= 2 (a constant after inlining), each token in row_dot's order, each weight vector
 * converted once for both. Rows are walked one after another so the weights stream through memory sequentially
 * (interleaving rows defeats the prefetcher); each step prefetches its own lines twice by the prefetch plan `plan`
 * (ASW_GEMV_NEAR_L1 or ASW_GEMV_NEAR_L2, a constant after inlining; kernels.h): far ahead into L2, then near ahead
 * into L1 or L2. */
INL void row_dot_n(int dt, int nt, int plan, float *y, int64_t ldy, const uint16_t *w, const float *X, int64_t ldx,
                   int64_t k) {
    VEC a[2][4]; /* [token][chain] */
    for (int t = 0; t < nt; t++) a[t][0] = a[t][1] = a[t][2] = a[t][3] = v_zero();
    const int l2 = plan == ASW_GEMV_NEAR_L2;
    const int64_t far_ahead = l2 ? ASW_GEMV_L2_FAR : ASW_GEMV_PREFETCH_FAR;
    const int64_t near_ahead = l2 ? ASW_GEMV_L2_NEAR : ASW_GEMV_PREFETCH_NEAR;
    int64_t i = 0;
    for (; i + STEP <= k; i += STEP) {
        const char *far = (const char *)(w + i + far_ahead);
        const char *near = (const char *)(w + i + near_ahead);
        for (int b = 0; b < STEP * (int)sizeof(uint16_t); b += CACHE_LINE) /* this step's lines */
            _mm_prefetch(far + b, ASW_GEMV_PREFETCH_FAR_HINT);
        for (int b = 0; b < STEP * (int)sizeof(uint16_t); b += CACHE_LINE) {
            if (l2)
                _mm_prefetch(near + b, _MM_HINT_T1);
            else
                _mm_prefetch(near + b, ASW_GEMV_PREFETCH_NEAR_HINT);
        }
        VEC w0 = w_load(dt, w + i), w1 = w_load(dt, w + i + VL), w2 = w_load(dt, w + i + 2 * VL),
            w3 = w_load(dt, w + i + 3 * VL);
        for (int t = 0; t < nt; t++) {
            const float *x = X + t * ldx;
            a[t][0] = v_fma(w0, x_load(x + i), a[t][0]);
            a[t][1] = v_fma(w1, x_load(x + i + VL), a[t][1]);
            a[t][2] = v_fma(w2, x_load(x + i + 2 * VL), a[t][2]);
            a[t][3] = v_fma(w3, x_load(x + i + 3 * VL), a[t][3]);
        }
    }
    for (; i + VL <= k; i += VL) {
        VEC w0 = w_load(dt, w + i);
        for (int t = 0; t < nt; t++) a[t][0] = v_fma(w0, x_load(X + t * ldx + i), a[t][0]);
    }
    if (i < k) {
        VEC w1 = w_tail(dt, w + i, (int)(k - i));
        for (int t = 0; t < nt; t++) a[t][1] = v_fma(w1, x_tail(X + t * ldx + i, (int)(k - i)), a[t][1]);
    }
    for (int t = 0; t < nt; t++) y[t * ldy] = hsum(v_add(v_add(a[t][0], a[t][1]), v_add(a[t][2], a[t][3])));
}

/* One row . x: the lone decode GEMV's order, which every batched path below repeats */
INL float row_dot(int dt, const uint16_t *w, const float *x, int64_t k) {
    float y;
    row_dot_n(dt, 1, ASW_GEMV_NEAR_L1, &y, 0, w, x, 0, k);
    return y;
}

/* Besides the next tile into L1, the batched GEMV fetches the line this many bytes further on into L2, as the
 * decode GEMV does (kernels.h): 2-4 tokens per step +3-10 %, 8 tokens +4 % (AVX-512, bench/batch_step.py, two
 * interleaved pairs of 3 rounds). */
enum { BATCH_PREFETCH_FAR = 16384 };

/* The lines of the tile that comes next, fetched a few per step while this tile computes (as many lines per step as
 * the step reads of its own weights, rounded up), so they arrive spread over the tile rather than in one burst, which
 * would fill the line-fill buffers and stall the tile's own loads. Rounding up matters with 8 lanes: fetching a
 * 2-row tile's successor at exactly the rate the tile reads made AVX2 tiles of 4 tokens over 896 columns ~20 %
 * slower (one thread). */
typedef struct {
    const char *at, *end; /* the next line to fetch, and the end of the range (at == end: nothing left) */
    int far;              /* also fetch BATCH_PREFETCH_FAR bytes further on into L2 */
} ahead_t;

/* acc[r][t] += W[r][i:i+n] . X[t][i:i+n], n = VL or a tail (fewer, zero-padded) */
INL void chain_step(int dt, int nr, int nt, VEC acc[BR][BT], const uint16_t *W, int64_t k, const float *X,
                    int64_t ldx, int64_t i, int n, ahead_t *ahead) {
    for (int q = 0; q < (nr * VL * (int)sizeof(uint16_t) + CACHE_LINE - 1) / CACHE_LINE; q++)
        if (ahead->at < ahead->end) {
            _mm_prefetch(ahead->at, _MM_HINT_T0);
            if (ahead->far) _mm_prefetch(ahead->at + BATCH_PREFETCH_FAR, ASW_GEMV_PREFETCH_FAR_HINT);
            ahead->at += CACHE_LINE;
        }
    VEC w[BR];
    for (int r = 0; r < nr; r++) w[r] = n == VL ? w_load(dt, W + r * k + i) : w_tail(dt, W + r * k + i, n);
    for (int t = 0; t < nt; t++) {
        VEC x = n == VL ? x_load(X + t * ldx + i) : x_tail(X + t * ldx + i, n);
        /* one load per token vector: left alone, gcc folds the load into each row's FMA, so nr rows load it nr
         * times, and the loads, not the FMAs, set the pace (8 tokens x 2 rows: 18 loads per 16 FMAs). Keeping it in
         * a register made an 8-token AVX-512 tile over 896 and 4,864 columns 28-33 % faster (one thread). */
        if (nr > 1) __asm__("" : "+v"(x));
        for (int r = 0; r < nr; r++) acc[r][t] = v_fma(w[r], x, acc[r][t]);
    }
}

/* after chain j's STEP-strided chunks, what row_dot adds to it last: chain 0 the whole chunks past the last STEP,
 * chain 1 the tail */
INL void chain_tail(int dt, int nr, int nt, VEC acc[BR][BT], const uint16_t *W, int64_t k, const float *X,
                    int64_t ldx, int j, ahead_t *ahead) {
    int64_t ks = k - k % STEP, kv = k - k % VL;
    if (j == 0)
        for (int64_t i = ks; i < kv; i += VL) chain_step(dt, nr, nt, acc, W, k, X, ldx, i, VL, ahead);
    if (j == 1 && kv < k) chain_step(dt, nr, nt, acc, W, k, X, ldx, kv, (int)(k - kv), ahead);
}

/* Y[t*ldy + r] = hsum((part 0 + part 1) + (part 2 + part 3)) of row r, token t: row_dot's final reduction */
INL void tile_reduce(int nr, int nt, VEC part[4][BR][BT], float *Y, int64_t ldy) {
    VEC v[16];
    float s[16];
    for (int p = 0; p < nr * nt; p++) {
        int r = p / nt, t = p % nt;
        v[p] = v_add(v_add(part[0][r][t], part[1][r][t]), v_add(part[2][r][t], part[3][r][t]));
    }
    hsum_n(s, v, nr * nt);
    for (int p = 0; p < nr * nt; p++) Y[(p % nt) * ldy + p / nt] = s[p];
}

/* Y[t*ldy + r] = W[r] . X[t] for r < nr, t < nt (constants after inlining), each in row_dot's order but one chain at
 * a time for the whole tile: nr * nt accumulators instead of 4 per product, so one weight vector (converted once)
 * serves nt tokens and one token vector serves nr rows. */
INL void tile_chains(int dt, int nr, int nt, float *Y, int64_t ldy, const uint16_t *W, int64_t k, const float *X,
                     int64_t ldx, const uint16_t *next) {
    VEC part[4][BR][BT];
    int64_t ks = k - k % STEP;
    /* the tile walks its rows four times (once per chain), which the hardware prefetcher does not follow ahead:
     * fetch the next tile's weights (nr rows at `next`, NULL: none) while this one computes (measured with AVX-512:
     * the batched GEMV of 4-8 tokens over a DRAM-resident matrix 20-40 % faster than without; spread over the steps
     * instead of one burst at the start: 8 tokens +15-40 % more, single thread) */
    ahead_t ahead = {(const char *)next, next == NULL ? NULL : (const char *)(next + nr * k), 1};
    for (int j = 0; j < 4; j++) {
        VEC acc[BR][BT];
        for (int r = 0; r < nr; r++)
            for (int t = 0; t < nt; t++) acc[r][t] = v_zero();
        for (int64_t i = VL * j; i < ks; i += STEP) chain_step(dt, nr, nt, acc, W, k, X, ldx, i, VL, &ahead);
        chain_tail(dt, nr, nt, acc, W, k, X, ldx, j, &ahead);
        for (int r = 0; r < nr; r++)
            for (int t = 0; t < nt; t++) part[j][r][t] = acc[r][t];
    }
    tile_reduce(nr, nt, part, Y, ldy);
}

/* When the tokens' activations outgrow L1 (nt * k f32 > ACT_L1 bytes; the down matmul: 8 x 4864 f32 = 152 KiB), a
 * tile walking all of k reads every activation line from L2 once per tile. The blocked order instead runs the chains
 * over KBLOCK columns for GROUP tiles at a time, so that block of activations (nt * KBLOCK f32) stays in L1 for all
 * of them, and keeps each (chain, row, token) partial sum in memory between blocks: every chain still adds its
 * chunks in row_dot's order (blocks are consecutive ranges of its chunks, the tails come last), so the result is
 * the same bit for bit. */
enum { GROUP = 8 }; /* tiles per group (measured as 16 with AVX-512: the same); partial sums: GROUP * 64 vectors */

/* the chains of one tile over columns [b0, b1) (multiples of STEP, b1 <= the last multiple of STEP in k), partial
 * sums in sv[4][nr][nt] (zero first when `first`); meanwhile fetch into L1 the same block of the tile that comes
 * next (nr <= 4 rows of k at `next`, already offset to its block; NULL: none), a quarter of it per chain */
INL void tile_block(int dt, int nr, int nt, VEC *sv, const uint16_t *W, int64_t k, const float *X, int64_t ldx,
                    int64_t b0, int64_t b1, int first, const uint16_t *next) {
    int64_t seg = (b1 - b0) * (int64_t)sizeof(uint16_t); /* bytes of one row's block */
    for (int j = 0; j < 4; j++) {
        VEC acc[BR][BT];
        for (int r = 0; r < nr; r++)
            for (int t = 0; t < nt; t++) acc[r][t] = first ? v_zero() : sv[(j * nr + r) * nt + t];
        ahead_t ahead = {NULL, NULL, 0};
        if (next != NULL) { /* nr <= 4: a quarter of nr row blocks lies within one row */
            int64_t v0 = j * nr * seg / 4;
            ahead.at = (const char *)(next + v0 / seg * k) + v0 % seg;
            ahead.end = ahead.at + nr * seg / 4;
        }
        for (int64_t i = b0 + VL * j; i < b1; i += STEP) chain_step(dt, nr, nt, acc, W, k, X, ldx, i, VL, &ahead);
        for (int r = 0; r < nr; r++)
            for (int t = 0; t < nt; t++) sv[(j * nr + r) * nt + t] = acc[r][t];
    }
}

/* the end of a blocked tile: chain 0's whole chunks past the last STEP, chain 1's tail, then row_dot's reduction */
INL void tile_finish(int dt, int nr, int nt, VEC *sv, float *Y, int64_t ldy, const uint16_t *W, int64_t k,
                     const float *X, int64_t ldx) {
    VEC part[4][BR][BT];
    int64_t ks = k - k % STEP;
    for (int j = 0; j < 4; j++) {
        VEC acc[BR][BT];
        for (int r = 0; r < nr; r++)
            for (int t = 0; t < nt; t++) acc[r][t] = ks > 0 ? sv[(j * nr + r) * nt + t] : v_zero();
        ahead_t none = {NULL, NULL, 0};
        chain_tail(dt, nr, nt, acc, W, k, X, ldx, j, &none);
        for (int r = 0; r < nr; r++)
            for (int t = 0; t < nt; t++) part[j][r][t] = acc[r][t];
    }
    tile_reduce(nr, nt, part, Y, ldy);
}

/* rows r..r1 (whole tiles of nr rows) in GROUP-tile groups, each group over the blocks of [0, ks) then finished */
INL void tiles_blocked(int dt, int nr, int nt, float *Y, int64_t ldy, const uint16_t *W, int64_t k, int64_t r,
                       int64_t r1, const float *X, int64_t ldx) {
    VEC sv[GROUP][4 * 16]; /* [tile][chain][row][token] partial sums */
    int64_t ks = k - k % STEP;
    for (; r < r1; r += GROUP * nr) {
        int64_t tiles = (r1 - r) / nr < GROUP ? (r1 - r) / nr : GROUP;
        for (int64_t b0 = 0; b0 < ks; b0 += KBLOCK) {
            int64_t b1 = b0 + KBLOCK < ks ? b0 + KBLOCK : ks;
            for (int64_t g = 0; g < tiles; g++) {
                const uint16_t *next = g + 1 < tiles ? W + (r + (g + 1) * nr) * k + b0
                                       : b1 < ks     ? W + r * k + b1
                                       : r + tiles * nr < r1 ? W + (r + tiles * nr) * k : NULL;
                tile_block(dt, nr, nt, sv[g], W + (r + g * nr) * k, k, X, ldx, b0, b1, b0 == 0, next);
            }
        }
        for (int64_t g = 0; g < tiles; g++)
            tile_finish(dt, nr, nt, sv[g], Y + r + g * nr, ldy, W + (r + g * nr) * k, k, X, ldx);
    }
}

/* nt tokens (2..BT, a constant after inlining) over rows [r0, r1). Where the activations fit in ACT_L1 and the set
 * asks for it (ROW_PAIRS_IN_L1), row by row, tokens in pairs (row_dot_n); otherwise in tiles: blocked where the
 * activations outgrow ACT_L1 and the tile has at most 4 rows (tile_block's prefetch assumes it), whole tiles
 * otherwise, then single rows. */
INL void tokens_rows(int dt, int nt, float *Y, int64_t ldy, const uint16_t *W, int64_t k, int64_t r0, int64_t r1,
                     const float *X, int64_t ldx) {
    const int rows = TILE_ROWS(nt);
    int64_t r = r0;
    int in_l1 = nt * k * (int64_t)sizeof(float) <= ACT_L1;
    if (ROW_PAIRS_IN_L1 && in_l1) {
        for (; r < r1; r++)
            for (int t = 0; t < nt; t += 2)
                if (nt - t >= 2)
                    row_dot_n(dt, 2, ASW_GEMV_NEAR_L1, Y + t * ldy + r, ldy, W + r * k, X + t * ldx, ldx, k);
                else
                    row_dot_n(dt, 1, ASW_GEMV_NEAR_L1, Y + t * ldy + r, ldy, W + r * k, X + t * ldx, ldx, k);
        return;
    }
    if (rows <= 4 && !in_l1) {
        int64_t whole = r0 + (r1 - r0) / rows * rows;
        tiles_blocked(dt, rows, nt, Y, ldy, W, k, r0, whole, X, ldx);
        r = whole;
    }
    for (; r + rows <= r1; r += rows)
        tile_chains(dt, rows, nt, Y + r, ldy, W + r * k, k, X, ldx, r + 2 * rows <= r1 ? W + (r + rows) * k : NULL);
    for (; r < r1; r++) tile_chains(dt, 1, nt, Y + r, ldy, W + r * k, k, X, ldx, NULL);
}

#define CHAIN_FN(name, dt, nt)                                                                                     \
    TGT static void name(float *Y, int64_t ldy, const uint16_t *W, int64_t k, int64_t r0, int64_t r1,            \
                         const float *X, int64_t ldx) {                                                           \
        tokens_rows(dt, nt, Y, ldy, W, k, r0, r1, X, ldx);                                                        \
    }
typedef void (*chain_fn)(float *, int64_t, const uint16_t *, int64_t, int64_t, int64_t, const float *, int64_t);
#define CHAIN_SET(p, dt)                                                                                           \
    CHAIN_FN(p##_c2, dt, 2)                                                                                        \
    CHAIN_FN(p##_c3, dt, 3)                                                                                        \
    CHAIN_FN(p##_c4, dt, 4)                                                                                        \
    CHAIN_FN(p##_c5, dt, 5)                                                                                        \
    CHAIN_FN(p##_c6, dt, 6)                                                                                        \
    CHAIN_FN(p##_c7, dt, 7)                                                                                        \
    CHAIN_FN(p##_c8, dt, 8)
CHAIN_SET(h, ASW_DTYPE_F16)
CHAIN_SET(b, ASW_DTYPE_BF16)

_Static_assert(BT == 8, "the table below has one entry per token count 2..8");
/* [dtype is f16][tokens - 2] */
static const chain_fn chains[2][BT - 1] = {{b_c2, b_c3, b_c4, b_c5, b_c6, b_c7, b_c8},
                                           {h_c2, h_c3, h_c4, h_c5, h_c6, h_c7, h_c8}};

/* rows [r0, r1) of W . x, each row_dot_n's (the same sums whatever the plan) */
#define GEMV_FN(name, dt, plan)                                                                                    \
    TGT static void name(float *y, const uint16_t *W, int64_t k, int64_t r0, int64_t r1, const float *x) {       \
        for (int64_t r = r0; r < r1; r++) row_dot_n(dt, 1, plan, y + r, 0, W + r * k, x, 0, k);                  \
    }
GEMV_FN(gemv_f16, ASW_DTYPE_F16, ASW_GEMV_NEAR_L1)
GEMV_FN(gemv_bf16, ASW_DTYPE_BF16, ASW_GEMV_NEAR_L1)
#if GEMV_NEAR_L2_PLAN
GEMV_FN(gemv_f16_l2, ASW_DTYPE_F16, ASW_GEMV_NEAR_L2)
GEMV_FN(gemv_bf16_l2, ASW_DTYPE_BF16, ASW_GEMV_NEAR_L2)
#endif

/* the decode GEMV, rows [r0, r1) of W . x by prefetch plan `plan`: matmul's nt = 1 */
TGT static void gemv(int dtype, int plan, float *y, const uint16_t *W, int64_t k, int64_t r0, int64_t r1,
                     const float *x) {
#if GEMV_NEAR_L2_PLAN
    if (plan == ASW_GEMV_NEAR_L2) {
        (dtype == ASW_DTYPE_F16 ? gemv_f16_l2 : gemv_bf16_l2)(y, W, k, r0, r1, x);
        return;
    }
#endif
    (void)plan;
    (dtype == ASW_DTYPE_F16 ? gemv_f16 : gemv_bf16)(y, W, k, r0, r1, x);
}

/* The greedy screen's GEMV (asw_kernels.gemv_i8): y[r] = Q[r] . x, int8 rows, four chains as in row_dot (any order
 * would do: the screen bounds the rounding). Rows stream one after another; each step fetches its line(s)
 * SCREEN_AHEAD bytes ahead into L2 (on the 2-core Zen 4 EPYC, 136 MB of rows over 2 threads: 8 KiB into L2 took
 * 0.47-0.55 of the fp16 GEMV's time over the same rows in fp16, 4 KiB 0.53-0.63, 1-2 KiB into L1 0.64-0.81). */
enum { SCREEN_AHEAD = 8192 };
TGT static void gemv_i8(float *y, const int8_t *Q, int64_t k, int64_t r0, int64_t r1, const float *x) {
    for (int64_t r = r0; r < r1; r++) {
        const int8_t *q = Q + r * k; /* [k] */
        VEC a0 = v_zero(), a1 = v_zero(), a2 = v_zero(), a3 = v_zero();
        int64_t i = 0;
        for (; i + STEP <= k; i += STEP) {
            if (STEP >= CACHE_LINE || i % CACHE_LINE == 0) /* 8 lanes: a line every other step */
                for (int b = 0; b < STEP; b += CACHE_LINE)
                    _mm_prefetch((const char *)(q + i + SCREEN_AHEAD + b), _MM_HINT_T1);
            a0 = v_fma(q_load(q + i), x_load(x + i), a0);
            a1 = v_fma(q_load(q + i + VL), x_load(x + i + VL), a1);
            a2 = v_fma(q_load(q + i + 2 * VL), x_load(x + i + 2 * VL), a2);
            a3 = v_fma(q_load(q + i + 3 * VL), x_load(x + i + 3 * VL), a3);
        }
        for (; i + VL <= k; i += VL) a0 = v_fma(q_load(q + i), x_load(x + i), a0);
        if (i < k) a1 = v_fma(q_tail(q + i, (int)(k - i)), x_tail(x + i, (int)(k - i)), a1);
        y[r] = hsum(v_add(v_add(a0, a1), v_add(a2, a3)));
    }
}

/* the batched decode GEMV (the set's gemv_batch): tokens in groups of up to BT, each group over the rows in tiles; a
 * lone token (a batch of one, or the last of 9, 17, ...) is the decode GEMV on prefetch plan `plan` */
INL void gemv_batch_plan(int plan, int dtype, float *Y, int64_t ldy, const uint16_t *W, int64_t k, int64_t r0,
                         int64_t r1, const float *X, int64_t ldx, int64_t nt) {
    int f16 = dtype == ASW_DTYPE_F16;
    for (int64_t t = 0; t < nt; t += BT) {
        int64_t tn = nt - t < BT ? nt - t : BT;
        if (tn == 1)
            gemv(dtype, plan, Y + t * ldy, W, k, r0, r1, X + t * ldx);
        else
            chains[f16][tn - 2](Y + t * ldy, ldy, W, k, r0, r1, X + t * ldx, ldx);
    }
}

TGT static void gemv_batch(int dtype, float *Y, int64_t ldy, const uint16_t *W, int64_t k, int64_t r0, int64_t r1,
                           const float *X, int64_t ldx, int64_t nt) {
    gemv_batch_plan(ASW_GEMV_NEAR_L1, dtype, Y, ldy, W, k, r0, r1, X, ldx, nt);
}

#if GEMV_NEAR_L2_PLAN
TGT static void gemv_batch_near_l2(int dtype, float *Y, int64_t ldy, const uint16_t *W, int64_t k, int64_t r0,
                                   int64_t r1, const float *X, int64_t ldx, int64_t nt) {
    gemv_batch_plan(ASW_GEMV_NEAR_L2, dtype, Y, ldy, W, k, r0, r1, X, ldx, nt);
}
#endif

#endif /* ASW_GEMV_CHAINS_H */
