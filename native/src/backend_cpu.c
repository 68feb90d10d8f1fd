/* backend_cpu.c — the cpu backend: a llama2.c-style forward pass over u16 weights used in place.
 *
 * Tokens go through the model in chunks of up to CHUNK positions (prefill) or one at a time (decode, the same
 * code with n = 1). Every matmul is threaded over output rows on the session's persistent pool; with one token
 * the SIMD kernel is a GEMV, with a chunk it is a GEMM: on the kernel set's outer-product kernel over f32 weight
 * panels converted once per chunk where the set says so (outer_matmul), else its dot-product tile. Prefill
 * attention runs flash-style on the outer-product kernel (attend_block); decode attends one query at a time.
 * The KV cache holds k (after RoPE) and v in the weight dtype. All accumulation is f32. With bf16 activations
 * (asw_open_options.activations) every matmul's input is rounded to bf16 first, and prefill matmuls of bf16 files
 * run on the bf16-pair kernel (VDPBF16PS) over the weights in place where the CPU makes that pay.
 */
#if defined(__linux__)
#define _DEFAULT_SOURCE /* madvise */
#include <sys/mman.h>
#endif
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "rope.h"
#include "kernels.h"
#include "threadpool.h"

enum { CHUNK = 64 }; /* prefill positions per pass; scratch buffers are sized for one chunk */
/* rows per scheduling block of a decode matmul (see "guided self-scheduling" above first_piece_blocks): whole cache
 * lines of Y, whole kernel tiles */
enum { SCHED_BLOCK = 16 };

/* blocks of SCHED_BLOCK rows (the last one short) in `rows` rows */
static inline int64_t sched_blocks(int64_t rows) { return (rows + SCHED_BLOCK - 1) / SCHED_BLOCK; }
/* the first row of block b of `rows` rows, or `rows` past the last block: block b is rows
 * [block_row(b), block_row(b + 1)) */
static inline int64_t block_row(int64_t b, int64_t rows) { return b * SCHED_BLOCK < rows ? b * SCHED_BLOCK : rows; }
/* Prefill matmuls on the outer-product kernel: weight rows converted to f32 PANEL whole rows at a time (once per
 * chunk; a panel is one sequential stream of memory), for at least OUTER_TOKENS tokens (fewer leave too many
 * vector lanes empty). */
enum { PANEL = 24, OUTER_TOKENS = 8 };
/* Prefill attention: keys per block, and queries per work item (at most 4 vectors of the outer kernel) */
enum { KEYS = 128, QUERIES = 64 };
_Static_assert(ASW_MAX_BATCH <= CHUNK, "a batched decode step must fit one chunk's scratch buffers");
/* Decode attention splits a row's keys into DECODE_SPLITS blocks at most, of DECODE_BLOCK_MIN keys at least (a
 * function of the row's length alone, so a batched step's rows equal lone steps bit for bit, whatever the threads);
 * each (row, KV group, block) is one work item, whose softmax partial (max, sum, unnormalized output per query
 * head) takes PART_HEAD + head_dim floats, merged after the items (merge_partials). */
enum { DECODE_SPLITS = 8, DECODE_BLOCK_MIN = 64, PART_HEAD = 16 };
enum { ATT_BLOCK_PREFETCH_MAX = 128 * 1024 }; /* bytes of one decode block's keys and values fetched at its start */

typedef struct cpu_model {
    asw_config cfg;
    asw_weights w;          /* tensors of the caller's region, used in place (layers array owned by model.c) */
    const asw_kernels *k;   /* SIMD kernel set chosen at open time */
    int bf16_inputs;        /* 1: every matmul's activations are rounded to bf16 first (asw_open_options.activations) */
    asw_outer_bf16_fn outer_bf16; /* with bf16_inputs: the bf16-pair prefill kernel of this CPU, or NULL */
    float *inv_freq;        /* [head_dim / 2] RoPE inverse frequencies (llama3 scaling applied) */
    float *norms;           /* [2 n_layers + 1, hidden] the RMSNorm weights in f32: attn_norm and ffn_norm of each
                             * layer, then output_norm (converted once here, not per element on every call) */
    float *qkv_bias;        /* [n_layers, qkv_dim] the q/k/v biases in f32, a layer's row used only where it has one
                             * (NULL: no layer has) */
    /* the greedy screen (see "the greedy screen" below; NULL: none) */
    int8_t *screen_q;       /* [vocab, hidden] each output row as int8 multiples of its scale */
    float *screen_scale;    /* [vocab] */
    float *screen_slack;    /* [vocab] |logit - scale * screened dot| <= slack * ||x|| (+ SCREEN_ABS) */
    double screen_dot_max;  /* the largest ||w_r|| and ||q_r||: with ||x||, a bound on every partial sum */
    char describe[64];
} cpu_model;

/* Rows of cpu_model.norms */
static float *attn_norm_f32(const cpu_model *m, int l) { return m->norms + (size_t)(2 * l) * m->cfg.hidden; }
static float *ffn_norm_f32(const cpu_model *m, int l) { return m->norms + (size_t)(2 * l + 1) * m->cfg.hidden; }
static float *output_norm_f32(const cpu_model *m) {
    return m->norms + (size_t)(2 * m->cfg.n_layers) * m->cfg.hidden;
}

/* q, k and v outputs of a layer's fused projection */
static int64_t qkv_width(const asw_config *c) { return (int64_t)(c->n_heads + 2 * c->n_kv_heads) * c->head_dim; }

/* Row l of cpu_model.qkv_bias (NULL: layer l has no bias) */
static const float *qkv_bias_f32(const cpu_model *m, int l) {
    return m->w.layers[l].attn_qkv_bias.host == NULL ? NULL : m->qkv_bias + (size_t)l * (size_t)qkv_width(&m->cfg);
}

typedef struct cpu_session {
    cpu_model *m;
    asw_pool *pool;
    int32_t max_len;
    /* activations of one chunk, nc <= CHUNK rows */
    float *x;        /* [CHUNK, hidden] residual stream */
    float *xb;       /* [CHUNK, hidden] RMS-normed input of a matmul */
    float *xb2;      /* [CHUNK, hidden] matmul output added to the residual */
    float *qkv;      /* [CHUNK, (n_heads + 2 n_kv_heads) head_dim] q | k | v per position */
    float *att;      /* [CHUNK, n_heads head_dim] attention output */
    float *hb;       /* [CHUNK, 2 ffn] gate | up */
    float *act;      /* [CHUNK, ffn] silu(gate) * up */
    float *rope_cos; /* [CHUNK, head_dim / 2] */
    float *rope_sin; /* [CHUNK, head_dim / 2] */
    float *scores;   /* [n_threads, score_floats] decode attention scores: a block of keys x one KV group's heads */
    size_t score_floats;
    float *partials; /* [part_rows, n_heads, DECODE_SPLITS, PART_HEAD + head_dim] decode attention per block of keys */
    int32_t part_rows;
    float *xt;       /* [max(hidden, q_dim, ffn), CHUNK] a prefill matmul's activations transposed (or, as u16,
                      * [widest / 2, CHUNK, 2] their bf16 pairs for outer_bf16) */
    float *panels;   /* [n_threads, panel_floats] per-thread f32 weight panels and output tiles of prefill matmuls */
    float *attn;     /* [n_threads, attn_floats] per-thread scratch of prefill attention (attend_block) */
    size_t panel_floats, attn_floats;
    int attn_tokens; /* tokens per work item of prefill attention */
    float *logits;   /* [vocab] last-position logits when the caller wants only the argmax or the top-k; the
                      * greedy screen's int8 dot products */
    int32_t *candidates; /* [vocab] rows the greedy screen computes exactly (NULL: the model has no screen) */
    double *block_hi;    /* [vocab / SCHED_BLOCK rounded up] the screen's largest upper bound of each block of rows */
    int32_t next_token;             /* argmax of the last step: the input of the next decode_enqueue */
    int32_t ring[ASW_MAX_PENDING];  /* tokens of queued decode steps (computed at enqueue), oldest at ring_head */
    int32_t ring_head, ring_count;
    float *batch_logits;            /* [batch_rows, vocab] logits of a batched step (grown on demand) */
    int rowwise;                    /* 1 while this session runs a batched decode step (see matmul_task) */
    int32_t batch_rows;
    uint16_t *key_cache;   /* [n_layers, n_kv_heads, max_len, head_dim] (dtype): kv_head_rows */
    uint16_t *value_cache; /* [n_layers, n_kv_heads, max_len, head_dim] (dtype) */
} cpu_session;

/* Where the rows of KV head g in layer l start in a session's key or value cache: [max_len, head_dim] u16, one
 * position after another. Head-major, so that attention reads one head's cache as one sequential stream (with the
 * heads of a position side by side, each head's d u16 came every kv_dim: a strided walk that fetched lines of the
 * other heads along with its own). */
static size_t kv_head_rows(const cpu_session *kv, int l, int g) {
    const asw_config *c = &kv->m->cfg;
    return ((size_t)l * (size_t)c->n_kv_heads + (size_t)g) * (size_t)kv->max_len * (size_t)c->head_dim;
}

/* ---------------------------------------------------------------------------------------------------------
 * model
 */

/* Tensors of the model in table order, for checks that apply to each. */
static int cpu_layouts_ok(const asw_config *cfg, const asw_weights *w) {
    if (cfg->layout == ASW_LAYOUT_NZ || w->token_embd.layout != ASW_LAYOUT_ND || w->output.layout != ASW_LAYOUT_ND) {
        asw_set_error("FRACTAL_NZ layout is for the aclnn backend; convert with --layout nd for the cpu backend");
        return 0;
    }
    for (int l = 0; l < cfg->n_layers; l++) {
        const asw_layer_weights *lw = &w->layers[l];
        const asw_weight *all[] = {&lw->attn_qkv, &lw->attn_output, &lw->ffn_gate_up, &lw->ffn_down};
        for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
            if (all[i]->layout != ASW_LAYOUT_ND) {
                asw_set_error("layer %d: FRACTAL_NZ weights are for the aclnn backend; convert with --layout nd for "
                              "the cpu backend", l);
                return 0;
            }
    }
    return 1;
}

static void cpu_model_free(void *bm);
static int build_screen(cpu_model *m);

static void *cpu_model_init(const asw_config *cfg, const asw_weights *w, const void *data, uint64_t data_nbytes,
                            const asw_open_options *opt) {
    (void)data;
    (void)data_nbytes;
    if (!cpu_layouts_ok(cfg, w)) return NULL;
    const char *why = NULL;
    const asw_kernels *k = kernels_select(&why);
    if (k == NULL) {
        asw_set_error("%s", why);
        return NULL;
    }
    cpu_model *m = calloc(1, sizeof *m);
    if (m == NULL) {
        asw_set_error("out of memory (cpu model)");
        return NULL;
    }
    m->cfg = *cfg;
    m->w = *w;
    m->k = k;
    m->bf16_inputs = opt->activations == ASW_DTYPE_BF16;
    m->outer_bf16 = m->bf16_inputs ? kernels_outer_bf16(k) : NULL;
    m->inv_freq = malloc((size_t)(cfg->head_dim / 2) * sizeof(float));
    m->norms = malloc((size_t)(2 * cfg->n_layers + 1) * (size_t)cfg->hidden * sizeof(float));
    if (m->inv_freq == NULL || m->norms == NULL) {
        asw_set_error("out of memory (rope and norm tables)");
        cpu_model_free(m);
        return NULL;
    }
    asw_rope_inv_freq(cfg, m->inv_freq);
    for (int l = 0; l < cfg->n_layers; l++) {
        k->to_f32(cfg->dtype, attn_norm_f32(m, l), w->layers[l].attn_norm.host, cfg->hidden);
        k->to_f32(cfg->dtype, ffn_norm_f32(m, l), w->layers[l].ffn_norm.host, cfg->hidden);
    }
    k->to_f32(cfg->dtype, output_norm_f32(m), w->output_norm.host, cfg->hidden);
    int biased = 0;
    for (int l = 0; l < cfg->n_layers; l++) biased |= w->layers[l].attn_qkv_bias.host != NULL;
    if (biased) {
        size_t width = (size_t)qkv_width(cfg);
        m->qkv_bias = malloc((size_t)cfg->n_layers * width * sizeof(float));
        if (m->qkv_bias == NULL) {
            asw_set_error("out of memory (bias table)");
            cpu_model_free(m);
            return NULL;
        }
        for (int l = 0; l < cfg->n_layers; l++)
            if (w->layers[l].attn_qkv_bias.host != NULL)
                k->to_f32(cfg->dtype, m->qkv_bias + (size_t)l * width, w->layers[l].attn_qkv_bias.host, (int64_t)width);
    }
    if (!build_screen(m)) {
        cpu_model_free(m);
        return NULL;
    }
    snprintf(m->describe, sizeof m->describe, "cpu %s%s", k->name,
             !m->bf16_inputs ? "" : m->outer_bf16 ? " bf16 activations (vdpbf16ps)" : " bf16 activations");
    return m;
}

static void cpu_model_free(void *bm) {
    cpu_model *m = bm;
    if (m == NULL) return;
    free(m->inv_freq);
    free(m->norms);
    free(m->qkv_bias);
    free(m->screen_q);
    free(m->screen_scale);
    free(m->screen_slack);
    free(m);
}

static const char *cpu_describe(void *bm) { return ((cpu_model *)bm)->describe; }

/* ---------------------------------------------------------------------------------------------------------
 * session
 */

static void cpu_session_free(void *bs) {
    cpu_session *s = bs;
    if (s == NULL) return;
    asw_pool_free(s->pool);
    free(s->x);
    free(s->xb);
    free(s->xb2);
    free(s->qkv);
    free(s->att);
    free(s->hb);
    free(s->act);
    free(s->rope_cos);
    free(s->rope_sin);
    free(s->scores);
    free(s->xt);
    free(s->panels);
    free(s->attn);
    free(s->logits);
    free(s->candidates);
    free(s->block_hi);
    free(s->batch_logits);
    free(s->partials);
    free(s->key_cache);
    free(s->value_cache);
    free(s);
}

/* n bytes starting on a cache line (free() releases it): the matmul inputs, so that a token's row of a multiple of
 * 16 floats never straddles two lines — a split 64-byte load costs two, and the batched GEMV is load-bound. The
 * outer-product kernel's operands too (the transposed activations, the weight panels, attention's blocks): on a
 * 2-core Zen 4 EPYC its AVX2 tile, whose 32-byte loads of activations split a line every k step when malloc's
 * 16-byte alignment left them there, ran at 61-72 GFLOP/s per thread in a 128-token prefill of the Qwen2-0.5B shape,
 * and at 79-85 lined up (one core's FMA peak there: ~110). */
static void *alloc_lines(size_t n) { return aligned_alloc(64, (n + 63) & ~(size_t)63); }

/* n bytes of KV cache or of the greedy screen's int8 rows (free() releases it). From 4 MiB up, on Linux, whole 2 MiB
 * pages marked MADV_HUGEPAGE: a decode step reaches each layer's cache after the weights have streamed through every
 * cache level, so with 4 KiB pages its reads also missed the TLB (attention 10.5-12 % of a decode step at a
 * 2,048-token context with 4 KiB pages, 7-7.5 % with 2 MiB ones; Qwen2-0.5B shape, two pairs of profiles, when one
 * head's rows were still d u16 every kv_dim). Smaller caches keep malloc's granularity (many small sessions would
 * each round up to 4 MiB). */
static void *alloc_huge(size_t n) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    const size_t huge = (size_t)2 << 20;
    if (n >= 2 * huge) {
        size_t len = (n + huge - 1) / huge * huge;
        void *p = aligned_alloc(huge, len);
        if (p != NULL) (void)madvise(p, len, MADV_HUGEPAGE); /* advice only: 4 KiB pages still work */
        return p;
    }
#endif
    return malloc(n);
}

/* floats of one row's decode attention partials: [n_heads, DECODE_SPLITS, PART_HEAD + head_dim] */
static size_t partial_row_floats(const asw_config *c) {
    return (size_t)c->n_heads * DECODE_SPLITS * (PART_HEAD + (size_t)c->head_dim);
}

static void *cpu_session_init(void *bm, const asw_session_options *opt) {
    cpu_model *m = bm;
    int32_t max_len = opt->max_len, n_threads = opt->n_threads;
    const asw_config *c = &m->cfg;
    cpu_session *s = calloc(1, sizeof *s);
    if (s == NULL) {
        asw_set_error("out of memory (cpu session)");
        return NULL;
    }
    s->m = m;
    s->max_len = max_len;
    s->pool = asw_pool_new(n_threads);
    if (s->pool == NULL) {
        cpu_session_free(s);
        return NULL;
    }
    /* model.c bounds every dimension, so these products fit comfortably in size_t */
    size_t nth = (size_t)asw_pool_size(s->pool);
    size_t qkv_dim = (size_t)qkv_width(c);
    size_t kv_dim = (size_t)c->n_kv_heads * (size_t)c->head_dim;
    size_t cache = (size_t)c->n_layers * (size_t)max_len * kv_dim;
    s->x = alloc_lines(CHUNK * (size_t)c->hidden * sizeof(float));
    s->xb = alloc_lines(CHUNK * (size_t)c->hidden * sizeof(float));
    s->xb2 = alloc_lines(CHUNK * (size_t)c->hidden * sizeof(float));
    s->qkv = alloc_lines(CHUNK * qkv_dim * sizeof(float));
    s->att = alloc_lines(CHUNK * (size_t)c->n_heads * (size_t)c->head_dim * sizeof(float));
    s->hb = alloc_lines(CHUNK * 2 * (size_t)c->ffn * sizeof(float));
    s->act = alloc_lines(CHUNK * (size_t)c->ffn * sizeof(float));
    s->rope_cos = malloc(CHUNK * (size_t)(c->head_dim / 2) * sizeof(float));
    s->rope_sin = malloc(CHUNK * (size_t)(c->head_dim / 2) * sizeof(float));
    int group = c->n_heads / c->n_kv_heads;
    /* decode attention: a block has at most max(DECODE_BLOCK_MIN, ceil(max_len / DECODE_SPLITS)) keys
     * (decode_blocks) */
    size_t block_keys = ((size_t)max_len + DECODE_SPLITS - 1) / DECODE_SPLITS;
    if (block_keys < DECODE_BLOCK_MIN) block_keys = DECODE_BLOCK_MIN;
    s->score_floats = (size_t)group * ((block_keys + 15) / 16 * 16);
    s->scores = alloc_lines(nth * s->score_floats * sizeof(float));
    s->partials = malloc(partial_row_floats(c) * sizeof(float));
    s->part_rows = 1;
    /* prefill: a work item of attention is attn_tokens whole tokens of one KV group's query heads (a function of
     * the shape only, never of the thread count, so results do not depend on it) */
    s->attn_tokens = group >= QUERIES ? 1 : QUERIES / group;
    size_t qp = (size_t)(s->attn_tokens * group + 15) / 16 * 16, D = (size_t)c->head_dim;
    s->attn_floats = 2 * D * qp + KEYS * D + KEYS * qp + 4 * qp; /* attend_block's layout */
    size_t widest = (size_t)c->hidden; /* the most columns of a matmul */
    if ((size_t)c->n_heads * D > widest) widest = (size_t)c->n_heads * D;
    if ((size_t)c->ffn > widest) widest = (size_t)c->ffn;
    s->panel_floats = (PANEL * CHUNK + PANEL * widest + 15) / 16 * 16; /* each thread's panel starts on a line */
    s->xt = alloc_lines(widest * CHUNK * sizeof(float));
    s->panels = alloc_lines(nth * s->panel_floats * sizeof(float));
    s->attn = alloc_lines(nth * s->attn_floats * sizeof(float));
    s->logits = malloc((size_t)c->vocab * sizeof(float));
    if (m->screen_q != NULL) {
        s->candidates = malloc((size_t)c->vocab * sizeof(int32_t));
        s->block_hi = malloc((size_t)sched_blocks(c->vocab) * sizeof(double));
    }
    s->key_cache = alloc_huge(cache * sizeof(uint16_t));
    s->value_cache = alloc_huge(cache * sizeof(uint16_t));
    if (!s->x || !s->xb || !s->xb2 || !s->qkv || !s->att || !s->hb || !s->act || !s->rope_cos || !s->rope_sin ||
        !s->scores || !s->partials || !s->xt || !s->panels || !s->attn || !s->logits || !s->key_cache ||
        !s->value_cache || (m->screen_q != NULL && (!s->candidates || !s->block_hi))) {
        asw_set_error("out of memory allocating a session of max_len %d (KV cache %zu bytes)", (int)max_len,
                      2 * cache * sizeof(uint16_t));
        cpu_session_free(s);
        return NULL;
    }
    return s;
}

/* ---------------------------------------------------------------------------------------------------------
 * threaded pieces
 */

typedef struct matmul_job {
    const asw_kernels *k;
    int dtype;
    float *Y;           /* [nt, ldy] */
    int64_t ldy;
    const uint16_t *W;  /* [rows, cols] */
    int64_t rows, cols;
    const float *X;     /* [nt, ldx] */
    int64_t ldx, nt;
    int rowwise;        /* 1: each token as its own GEMV (bit-identical to a lone decode step) */
    int64_t ntp;        /* > 0: the outer-product path; X is then [cols, ntp] (tokens padded to whole vectors) */
    float *panels;      /* [nth, panel_floats] */
    size_t panel_floats;
    atomic_llong next;  /* decode: blocks claimed after the first pieces (claim_piece) */
    const asw_weight *then; /* decode: the weights of the step's next matmul (NULL: none) */
    atomic_int idle;    /* decode: threads that have run out of pieces */
    const uint16_t *xp; /* prefill with outer_bf16: X as [cols / 2, ntp, 2] bf16 pairs (NULL: X above) */
    asw_outer_bf16_fn outer_bf16;
} matmul_job;

/* Rows r0..r1 of a prefill matmul on the outer-product kernel: PANEL weight rows at a time, converted to f32
 * (each weight converted once per chunk, not once per token tile), Z [rows, tokens] written back transposed into
 * Y [nt, ldy]. */
static void outer_rows(const matmul_job *j, int64_t r0, int64_t r1, float *buf) {
    const asw_kernels *k = j->k;
    float *zb = buf;                 /* [PANEL, CHUNK] outputs, row-major by weight row */
    float *wp = buf + PANEL * CHUNK; /* [PANEL, cols] f32 weights */
    int64_t nv = j->ntp / 16;
    for (int64_t rr = r0; rr < r1; rr += PANEL) {
        int64_t rn = r1 - rr < PANEL ? r1 - rr : PANEL;
        int64_t next = r1 - rr - rn < PANEL ? r1 - rr - rn : PANEL; /* rows of the next panel, fetched meanwhile */
        const uint16_t *then = j->W + (rr + rn) * j->cols;
        int64_t then_bytes = next * j->cols * (int64_t)sizeof(uint16_t);
        if (j->xp != NULL) { /* bf16 pairs: the weights as they are in the file */
            j->outer_bf16(zb, j->ntp, j->W + rr * j->cols, j->cols, j->xp, j->ntp, rn, nv, then, then_bytes);
        } else {
            k->to_f32(j->dtype, wp, j->W + rr * j->cols, rn * j->cols);
            k->outer(zb, j->ntp, wp, j->cols, 1, j->cols, j->X, j->ntp, rn, nv, 0, then, then_bytes);
        }
        for (int64_t t = 0; t < j->nt; t++)
            for (int64_t r = 0; r < rn; r++) j->Y[t * j->ldy + rr + r] = zb[r * j->ntp + t];
    }
}

/* Decode matmuls split their rows into pieces of whole SCHED_BLOCKs by guided self-scheduling: thread ith starts on
 * its own first piece, blocks [ith f, (ith + 1) f) with f = blocks / (2 nth) (so half the rows go in first pieces,
 * and a thread knows which rows it starts on, and can have fetched them: see matmul_task), then claims in turn 1/nth
 * of the blocks left (one at least), so pieces shrink as the matmul nears its end and threads reach the join within
 * about one small piece of each other; a thread whose core was taken away for a while (a busy host, a VM) holds the
 * others up by the piece it is on at most (a first piece: 1 / (2 nth) of the rows). Each row is still computed whole
 * by one thread, so the result does not depend on who took which piece. Against the previous fixed pieces (8 per
 * thread, the first own, the rest claimed in turn), where threads reached a join 5.2-5.4 us apart on average (0.63 ms
 * of a 9.2 ms SmolLM2 step, 119 joins), steps alternated in one process were 2-3.7 % shorter on SmolLM2 and 1.7-2.8 %
 * on the Qwen2-0.5B shape (2-core EPYC, 3-4 runs each; halving what is left instead: 0.7-1.2 %). A thread out of
 * pieces fetches up to IDLE_PREFETCH_MAX bytes of its first piece of the next matmul into L2 while it waits for the
 * others (see matmul_task): with the fixed pieces that took a 2-thread decode step of the Qwen2-0.5B shape from
 * 72.5 % to 75 % of the memory bandwidth measured around each step (bench/bandwidth.c reps alternated with steps in
 * one process, 48 steps per run, six interleaved rounds, 5 of 6 ahead; AVX2 kernels 70 % -> 72.5 %, 3 of 4 rounds
 * ahead); 128 KiB or 1 MiB of idle prefetch measured the same. */
enum { IDLE_PREFETCH_MAX = 512 * 1024 };

/* blocks in each thread's first piece */
static int64_t first_piece_blocks(int64_t blocks, int nth) {
    int64_t f = blocks / (2 * (int64_t)nth);
    return f > 0 ? f : 1;
}

/* blocks in all the first pieces: where claiming starts */
static int64_t first_pieces_end(int64_t blocks, int nth) {
    int64_t end = first_piece_blocks(blocks, nth) * nth;
    return end < blocks ? end : blocks;
}

/* thread ith's first piece of `blocks` blocks as [*b0, *b1); returns 0 if it is empty (ith has no first piece, when
 * there are fewer blocks than threads) */
static int first_piece(int64_t blocks, int ith, int nth, int64_t *b0, int64_t *b1) {
    int64_t f = first_piece_blocks(blocks, nth), end = first_pieces_end(blocks, nth);
    *b0 = (int64_t)ith * f < end ? (int64_t)ith * f : end;
    *b1 = *b0 + f < end ? *b0 + f : end;
    return *b0 < *b1;
}

/* claims the next piece after the first ones, 1/nth of the blocks left (one at least), as [*b0, *b1): `claimed` counts
 * the blocks claimed so far (zero at the start); returns 0 when none is left */
static int claim_piece(atomic_llong *claimed, int64_t blocks, int nth, int64_t *b0, int64_t *b1) {
    int64_t start = first_pieces_end(blocks, nth);
    long long cur = atomic_load_explicit(claimed, memory_order_relaxed), take;
    do {
        int64_t left = blocks - start - cur;
        if (left <= 0) return 0;
        take = left / nth > 0 ? left / nth : 1;
    } while (!atomic_compare_exchange_weak_explicit(claimed, &cur, cur + take, memory_order_relaxed,
                                                    memory_order_relaxed));
    *b0 = start + cur;
    *b1 = *b0 + take;
    return 1;
}

static void matmul_task(void *arg, int ith, int nth) {
    matmul_job *j = arg;
    int64_t blocks = sched_blocks(j->rows);
    int64_t r0 = block_row(blocks * ith / nth, j->rows), r1 = block_row(blocks * (ith + 1) / nth, j->rows);
    if (j->ntp > 0) {
        if (r0 < r1) outer_rows(j, r0, r1, j->panels + (size_t)ith * j->panel_floats);
        return;
    }
    if (!j->rowwise && j->nt > 1) {
        if (r0 < r1) j->k->matmul(j->dtype, j->Y, j->ldy, j->W, j->cols, r0, r1, j->X, j->ldx, j->nt);
        return;
    }
    /* decode: a GEMV (nt = 1), or a batched step whose weights are read once for every token, each token summed in
     * the lone-step order; rows in pieces (first_piece, claim_piece) */
    int64_t b0, b1;
    for (int more = first_piece(blocks, ith, nth, &b0, &b1); more;
         more = claim_piece(&j->next, blocks, nth, &b0, &b1)) {
        int64_t p0 = block_row(b0, j->rows), p1 = block_row(b1, j->rows);
        if (j->rowwise)
            j->k->gemv_batch(j->dtype, j->Y, j->ldy, j->W, j->cols, p0, p1, j->X, j->ldx, j->nt);
        else
            j->k->matmul(j->dtype, j->Y, j->ldy, j->W, j->cols, p0, p1, j->X, j->ldx, 1);
    }
    /* Out of pieces: until the last thread is done too (the last one returns at once), stream the start of this
     * thread's first piece of the next matmul into L2 (locality 2: prefetcht1 on x86, pldl2keep on Arm), so that
     * time waiting at the join, otherwise spent with this core's memory requests idle, starts the next matmul. */
    if (atomic_fetch_add_explicit(&j->idle, 1, memory_order_acq_rel) + 1 == nth || j->then == NULL) return;
    const asw_weight *then = j->then;
    if (!first_piece(sched_blocks(then->rows), ith, nth, &b0, &b1)) return;
    int64_t first = block_row(b0, then->rows), own = block_row(b1, then->rows) - first;
    const char *next = (const char *)(then->host + first * then->cols); /* [own, cols] u16 */
    size_t bytes = (size_t)own * (size_t)then->cols * sizeof(uint16_t);
    if (bytes > IDLE_PREFETCH_MAX) bytes = IDLE_PREFETCH_MAX;
    for (size_t off = 0; off < bytes; off += 64) {
        if (off % 4096 == 0 && atomic_load_explicit(&j->idle, memory_order_acquire) == nth) break;
        __builtin_prefetch(next + off, 0, 2);
    }
}

/* xp = X rounded to bf16 as [cols / 2, ntp, 2] pairs (see asw_outer_bf16_fn), the padding tokens nt..ntp zero;
 * column pairs split across threads in blocks of 8 */
typedef struct pair_job {
    uint16_t *xp;     /* [cols / 2, ntp, 2] */
    const float *X;   /* [nt, ldx] */
    int64_t ldx, cols, nt, ntp;
} pair_job;

static void pair_task(void *arg, int ith, int nth) {
    const pair_job *j = arg;
    int64_t pairs = j->cols / 2, blocks = (pairs + 7) / 8;
    int64_t i0 = blocks * ith / nth * 8, i1 = blocks * (ith + 1) / nth * 8;
    if (i1 > pairs) i1 = pairs;
    for (int64_t i = i0; i < i1; i++) {
        uint16_t *row = j->xp + i * j->ntp * 2; /* [ntp, 2] */
        for (int64_t t = 0; t < j->nt; t++) {
            row[2 * t] = (uint16_t)(asw_bf16_round_bits(j->X[t * j->ldx + 2 * i]) >> 16);
            row[2 * t + 1] = (uint16_t)(asw_bf16_round_bits(j->X[t * j->ldx + 2 * i + 1]) >> 16);
        }
        for (int64_t t = 2 * j->nt; t < 2 * j->ntp; t++) row[t] = 0;
    }
}

/* X[t, 0:cols] rounded to bf16 (nearest even) in place, t < nt: the input of a matmul with bf16 activations that
 * does not run on outer_bf16 (decode, batched steps, short chunks, CPUs without AVX512_BF16), so that every path
 * multiplies the same numbers */
static void round_to_bf16(float *X, int64_t ldx, int64_t cols, int64_t nt) {
    for (int64_t t = 0; t < nt; t++) {
        float *x = X + t * ldx; /* [cols] */
        for (int64_t i = 0; i < cols; i++) {
            uint32_t u = asw_bf16_round_bits(x[i]);
            memcpy(&x[i], &u, sizeof u);
        }
    }
}

typedef struct transpose_job {
    float *xt;        /* [cols, ntp] */
    const float *X;   /* [nt, ldx] */
    int64_t ldx, cols, nt, ntp;
} transpose_job;

/* xt = X transposed, the padding tokens nt..ntp zero; columns split across threads in blocks of 16 */
static void transpose_task(void *arg, int ith, int nth) {
    const transpose_job *j = arg;
    int64_t blocks = (j->cols + 15) / 16, i0 = blocks * ith / nth * 16, i1 = blocks * (ith + 1) / nth * 16;
    if (i1 > j->cols) i1 = j->cols;
    for (int64_t b = i0; b < i1; b += 16) {
        int64_t bn = i1 - b < 16 ? i1 - b : 16;
        for (int64_t t = 0; t < j->nt; t++)
            for (int64_t i = 0; i < bn; i++) j->xt[(b + i) * j->ntp + t] = j->X[t * j->ldx + b + i];
        for (int64_t i = 0; i < bn; i++)
            for (int64_t t = j->nt; t < j->ntp; t++) j->xt[(b + i) * j->ntp + t] = 0.0f;
    }
}

/* Y[t, 0:rows] = W[rows, cols] . X[t, 0:cols] for t < nt, on all threads; `then`: the weights of the matmul that
 * follows in the step (NULL: none), which threads idle at a decode matmul's end start fetching. With bf16
 * activations X is rounded to bf16 first (in place, or into the pair-packed copy of outer_bf16). */
static void matmul(cpu_session *s, float *Y, int64_t ldy, const uint16_t *W, int64_t rows, int64_t cols,
                   float *X, int64_t ldx, int64_t nt, const asw_weight *then) {
    const cpu_model *m = s->m;
    matmul_job j = {m->k, m->cfg.dtype, Y, ldy, W, rows, cols, X, ldx, nt, s->rowwise, 0, s->panels,
                    s->panel_floats, 0, then, 0, NULL, m->outer_bf16};
    int outer = !s->rowwise && nt >= OUTER_TOKENS;
    int64_t ntp = (nt + 15) / 16 * 16; /* tokens padded to whole 16-float vectors, on the outer-product paths */
    if (m->bf16_inputs && outer && m->outer_bf16 != NULL && cols % 2 == 0) {
        pair_job pj = {(uint16_t *)s->xt, X, ldx, cols, nt, ntp};
        asw_pool_run(s->pool, pair_task, &pj);
        j.xp = pj.xp;
        j.ntp = ntp;
        asw_pool_run(s->pool, matmul_task, &j);
        return;
    }
    if (m->bf16_inputs) round_to_bf16(X, ldx, cols, nt);
    if (outer && m->k->outer_matmul) {
        transpose_job tj = {s->xt, X, ldx, cols, nt, ntp};
        asw_pool_run(s->pool, transpose_task, &tj);
        j.X = s->xt;
        j.ldx = j.ntp = ntp;
    }
    asw_pool_run(s->pool, matmul_task, &j);
}

/* Where one row of a forward pass lives: the session whose KV cache it reads and writes, and its position. A
 * prefill chunk is n rows of one session at pos..pos+n-1; a batched decode step is one row per session. */
typedef struct row_kv {
    cpu_session *kv;
    int pos;
} row_kv;

typedef struct attention_job {
    cpu_session *s;      /* the session whose scratch and scores the pass uses */
    const row_kv *rows;  /* [n] */
    int layer;
    int n;               /* rows in this pass */
    int block;           /* 1: a prefill chunk (n > 1 rows of one session at consecutive positions): attend_block */
    int first[CHUNK + 1]; /* decode: row t's work items are first[t] .. first[t + 1] - 1 (decode_items) */
    atomic_int next;     /* decode: the next unclaimed work item */
} attention_job;

/* Denormal attention weights make the weighted sums several times slower on x86: flush them to zero while a
 * task runs (and restore the caller's mode, which may be Python's own thread). */
#if defined(__x86_64__)
#include <xmmintrin.h>
typedef unsigned int fp_mode;
static fp_mode flush_denormals(void) {
    fp_mode old = _mm_getcsr();
    _mm_setcsr(old | 0x8040u); /* FTZ | DAZ */
    return old;
}
static void restore_fp_mode(fp_mode old) { _mm_setcsr(old); }
#else
typedef int fp_mode;
static fp_mode flush_denormals(void) { return 0; }
static void restore_fp_mode(fp_mode old) { (void)old; }
#endif

/* How many blocks decode attention splits a row of len keys into (see DECODE_SPLITS), and where block b starts */
static int decode_blocks(int len) {
    int nb = (len + DECODE_BLOCK_MIN - 1) / DECODE_BLOCK_MIN;
    return nb < DECODE_SPLITS ? nb : DECODE_SPLITS;
}
static int decode_block_start(int len, int nb, int b) { return (int)((int64_t)len * b / nb); }

/* The partial of (row t, query head h, block b) in s->partials: [0] max score, [1] sum of exp(score - max),
 * [PART_HEAD ..] the unnormalized output [head_dim]; the heads of a row DECODE_SPLITS partials apart */
static float *partial(const cpu_session *s, int t, int h, int b) {
    const asw_config *c = &s->m->cfg;
    size_t part = PART_HEAD + (size_t)c->head_dim;
    return s->partials + (((size_t)t * c->n_heads + (size_t)h) * DECODE_SPLITS + (size_t)b) * part;
}

/* The work items of a decode pass, (row, KV group, block), numbered row by row into j->first */
static void decode_items(attention_job *j) {
    int G = j->s->m->cfg.n_kv_heads;
    j->first[0] = 0;
    for (int t = 0; t < j->n; t++) j->first[t + 1] = j->first[t] + G * decode_blocks(j->rows[t].pos + 1);
}

/* One decode work item: the query heads of KV group g in row t against block b of its cached keys, a softmax partial
 * per head (partial()): the group's scores for the block (each cache row converted once per tile of heads where the
 * set has group kernels), their exp and sum, and the weighted sum of the block's value rows. sc: [score_floats]. */
static void attend_part(const attention_job *j, int t, int g, int b, float *sc) {
    cpu_session *s = j->s;
    const asw_config *c = &s->m->cfg;
    const asw_kernels *k = s->m->k;
    int dt = c->dtype, D = c->head_dim, group = c->n_heads / c->n_kv_heads;
    size_t qkv_dim = (size_t)(c->n_heads + 2 * c->n_kv_heads) * D;
    int len = j->rows[t].pos + 1, nb = decode_blocks(len); /* causal: positions 0..pos of this row */
    int p0 = decode_block_start(len, nb, b), keys = decode_block_start(len, nb, b + 1) - p0;
    int64_t ld = (keys + 15) / 16 * 16;
    const float *q = s->qkv + t * qkv_dim + (size_t)g * group * D; /* [group, D] */
    const cpu_session *kv = j->rows[t].kv;
    size_t base = kv_head_rows(kv, j->layer, g) + (size_t)p0 * D;
    const uint16_t *kc = kv->key_cache + base, *vc = kv->value_cache + base; /* [keys, D] each */
    float *part = partial(s, t, g * group, b);                           /* heads `stride` floats apart */
    int64_t stride = DECODE_SPLITS * (PART_HEAD + (int64_t)D);
    float scale = 1.0f / sqrtf((float)D);
    /* The block's key rows, then its value rows, requested into L2 at once: the cache is in no cache level here (see
     * ASW_ATT_AHEAD), and a short block (at most 64 keys up to 512 positions) ends before the kernels' own
     * prefetch and the hardware's have got far ahead. SmolLM2 at 128-384 positions: attention 16-28 % shorter in
     * steps alternated with steps without (six runs); at 2,000 positions the same as without. Blocks too big to stay
     * in L2 beside the weights streaming through are left to the kernels. */
    size_t block_bytes = (size_t)keys * D * sizeof(uint16_t);
    if (2 * block_bytes <= ATT_BLOCK_PREFETCH_MAX) {
        asw_prefetch_l2(kc, (int64_t)block_bytes);
        asw_prefetch_l2(vc, (int64_t)block_bytes);
    }
    if (k->scores_group != NULL)
        k->scores_group(dt, sc, ld, kc, D, q, D, group, D, keys, scale);
    else
        asw_scores_by_head(k->scores, dt, sc, ld, kc, D, q, D, group, D, keys, scale);
    for (int h = 0; h < group; h++) part[h * stride + 1] = k->exp_sum(sc + h * ld, keys, &part[h * stride]);
    if (k->weighted_sum_group != NULL)
        k->weighted_sum_group(dt, part + PART_HEAD, stride, sc, ld, vc, D, group, D, keys);
    else
        asw_weighted_sum_by_head(k->weighted_sum, dt, part + PART_HEAD, stride, sc, ld, vc, D, group, D, keys);
}

/* att[t, h] = the partials of (t, h) merged, blocks in order: softmax(q . K / sqrt(D)) . V over all of row t's keys */
static void merge_partials(cpu_session *s, const row_kv *rows, int n) {
    const asw_config *c = &s->m->cfg;
    int D = c->head_dim;
    size_t part = PART_HEAD + (size_t)D;
    for (int t = 0; t < n; t++) {
        int nb = decode_blocks(rows[t].pos + 1);
        for (int h = 0; h < c->n_heads; h++) {
            const float *p = partial(s, t, h, 0); /* [nb, part] */
            float mx = p[0], sum = 0.0f;
            for (int b = 1; b < nb; b++) mx = p[b * part] > mx ? p[b * part] : mx;
            float *out = s->att + ((size_t)t * c->n_heads + (size_t)h) * D; /* [D] */
            memset(out, 0, (size_t)D * sizeof(float));
            for (int b = 0; b < nb; b++) {
                float w = expf(p[b * part] - mx);
                sum += w * p[b * part + 1];
                for (int i = 0; i < D; i++) out[i] += w * p[b * part + PART_HEAD + i];
            }
            float inv = 1.0f / sum;
            for (int i = 0; i < D; i++) out[i] *= inv;
        }
    }
}

/* Prefill attention of chunk rows t0..t1-1 (one session, position pos0 + t) for the query heads of KV head g,
 * flash-style: for each block of KEYS cache rows, the scores S [keys, queries] = K . Q^T and then the output
 * O^T [D, queries] += V^T . exp(S) run on the outer-product kernel, so each K and V row is converted once and used
 * by every query of the item; an online softmax in between. buf: [attn_floats] of this thread. */
static void attend_block(const attention_job *j, int g, int t0, int t1, float *buf) {
    cpu_session *s = j->s;
    const asw_config *c = &s->m->cfg;
    const asw_kernels *k = s->m->k;
    int dt = c->dtype, D = c->head_dim, group = c->n_heads / c->n_kv_heads;
    size_t qkv_dim = (size_t)(c->n_heads + 2 * c->n_kv_heads) * D, q_dim = (size_t)c->n_heads * D;
    int nq = (t1 - t0) * group, nv = (nq + 15) / 16, ldq = 16 * nv;
    size_t qp = (size_t)(s->attn_tokens * group + 15) / 16 * 16; /* >= ldq */
    float *qt = buf;                            /* [D, ldq] queries (scaled by 1/sqrt(D)), transposed */
    float *ot = qt + (size_t)D * qp;            /* [D, ldq] output, transposed */
    float *rows = ot + (size_t)D * qp;          /* [KEYS, D] K or V rows of one block in f32 */
    float *st = rows + (size_t)KEYS * D;        /* [KEYS, ldq] scores, then their exp */
    float *mx = st + (size_t)KEYS * qp, *sum = mx + qp, *corr = sum + qp; /* [ldq] each */
    int32_t *lim = (int32_t *)(corr + qp);      /* [ldq] last key each query sees */
    int32_t pos0 = j->rows[0].pos;
    float scale = 1.0f / sqrtf((float)D);
    for (int q = 0; q < ldq; q++) { /* query q: token t0 + q / group, head g * group + q % group */
        int real = q < nq, t = t0 + (real ? q / group : t1 - 1 - t0);
        const float *qv = s->qkv + (size_t)t * qkv_dim + (size_t)(g * group + q % group) * D; /* [D] */
        for (int i = 0; i < D; i++) qt[(size_t)i * ldq + q] = real ? scale * qv[i] : 0.0f;
        lim[q] = pos0 + t;
        mx[q] = -INFINITY;
        sum[q] = 0.0f;
    }
    memset(ot, 0, (size_t)D * ldq * sizeof(float));
    const cpu_session *kv = j->rows[0].kv;
    size_t base = kv_head_rows(kv, j->layer, g);
    const uint16_t *kc = kv->key_cache + base, *vc = kv->value_cache + base; /* [len, D] each */
    int32_t len = pos0 + t1;
    for (int32_t p0 = 0; p0 < len; p0 += KEYS) {
        int64_t pn = len - p0 < KEYS ? len - p0 : KEYS;
        k->to_f32(dt, rows, kc + (size_t)p0 * D, pn * D);
        k->outer(st, ldq, rows, D, 1, D, qt, ldq, pn, nv, 0, NULL, 0);
        k->softmax_block(st, pn, ldq, p0, lim, mx, sum, corr);
        if (p0 > 0)
            for (int i = 0; i < D; i++)
                for (int q = 0; q < ldq; q++) ot[(size_t)i * ldq + q] *= corr[q];
        k->to_f32(dt, rows, vc + (size_t)p0 * D, pn * D);
        k->outer(ot, ldq, rows, 1, D, pn, st, ldq, D, nv, 1, NULL, 0);
    }
    for (int q = 0; q < nq; q++) {
        float *out = s->att + (size_t)(t0 + q / group) * q_dim + (size_t)(g * group + q % group) * D; /* [D] */
        float inv = 1.0f / sum[q];
        for (int i = 0; i < D; i++) out[i] = ot[(size_t)i * ldq + q] * inv;
    }
}

/* Attention of every (row, head). A prefill chunk goes in work items of attn_tokens rows x one KV group
 * (attend_block), round-robin over the threads. Otherwise (decode, a batched step) the items are (row, KV group,
 * block of keys) (attend_part), claimed in turn, so the query heads of a group share each cache row they read and
 * the threads share the keys evenly whatever the number of heads; merge_partials then finishes each head. */
static void attention_task(void *arg, int ith, int nth) {
    attention_job *j = arg;
    cpu_session *s = j->s;
    fp_mode mode = flush_denormals();
    if (j->block) {
        int tb = s->attn_tokens, blocks = (j->n + tb - 1) / tb, G = s->m->cfg.n_kv_heads;
        for (int item = ith; item < blocks * G; item += nth) {
            int t0 = item / G * tb, t1 = t0 + tb < j->n ? t0 + tb : j->n;
            attend_block(j, item % G, t0, t1, s->attn + (size_t)ith * s->attn_floats);
        }
    } else {
        float *sc = s->scores + (size_t)ith * s->score_floats; /* [score_floats] */
        int t = 0;
        for (int item = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed); item < j->first[j->n];
             item = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed)) {
            while (item >= j->first[t + 1]) t++; /* items are claimed in increasing order */
            int nb = decode_blocks(j->rows[t].pos + 1), r = item - j->first[t];
            attend_part(j, t, r / nb, r % nb, sc); /* KV group r / nb, block r % nb */
        }
    }
    restore_fp_mode(mode);
}

typedef struct swiglu_job {
    const asw_kernels *k;
    float *act;       /* [n, ffn] */
    const float *hb;  /* [n, 2 ffn] */
    int64_t n, ffn;
} swiglu_job;

/* act = silu(gate) * up, rows split across threads */
static void swiglu_task(void *arg, int ith, int nth) {
    const swiglu_job *j = arg;
    int64_t total = j->n * j->ffn, i0 = total * ith / nth, i1 = total * (ith + 1) / nth;
    fp_mode mode = flush_denormals();
    while (i0 < i1) {
        int64_t t = i0 / j->ffn, f = i0 % j->ffn, len = j->ffn - f < i1 - i0 ? j->ffn - f : i1 - i0;
        const float *gate = j->hb + t * 2 * j->ffn + f; /* [len] */
        j->k->silu_mul(j->act + i0, gate, gate + j->ffn, len);
        i0 += len;
    }
    restore_fp_mode(mode);
}

/* ---------------------------------------------------------------------------------------------------------
 * small single-threaded pieces
 */

/* o = x / sqrt(mean(x^2) + eps) * w; the squares summed in NORM_LANES independent lanes (vectorizable: a single
 * running sum waits on the previous element) */
enum { NORM_LANES = 16 };
static void rmsnorm(float *o, const float *x, const float *w, int n, float eps) {
    float lane[NORM_LANES] = {0.0f};
    int i = 0;
    for (; i + NORM_LANES <= n; i += NORM_LANES)
        for (int j = 0; j < NORM_LANES; j++) lane[j] += x[i + j] * x[i + j];
    float ss = 0.0f;
    for (; i < n; i++) ss += x[i] * x[i];
    for (int j = 0; j < NORM_LANES; j++) ss += lane[j];
    float r = 1.0f / sqrtf(ss / (float)n + eps);
    for (i = 0; i < n; i++) o[i] = w[i] * (x[i] * r);
}

/* rotate-half RoPE of one head: x[j], x[j + half] rotated by angle j */
static void rope(float *x, const float *cos, const float *sin, int half) {
    for (int j = 0; j < half; j++) {
        float a = x[j], b = x[j + half];
        x[j] = a * cos[j] - b * sin[j];
        x[j + half] = b * cos[j] + a * sin[j];
    }
}

/* Index of the largest of v[0..n); -1 if any value is NaN (a NaN must never become token 0). */
static int32_t argmax(const float *v, int32_t n) {
    int32_t best = 0;
    int nan = v[0] != v[0];
    for (int32_t i = 1; i < n; i++) {
        nan |= v[i] != v[i];
        if (v[i] > v[best]) best = i;
    }
    return nan ? -1 : best;
}

/* The k largest of v[0..n) in descending order (ties: lower id first) into vals/ids; v has no NaN. A partial
 * insertion sort: O(n k), fine for the k <= a few hundred that sampling asks for. */
static void top_k(const float *v, int32_t n, int32_t k, float *vals, int32_t *ids) {
    int32_t have = 0;
    for (int32_t i = 0; i < n; i++) {
        if (have == k && !(v[i] > vals[k - 1])) continue;
        int32_t j = have < k ? have++ : k - 1;
        while (j > 0 && v[i] > vals[j - 1]) {
            vals[j] = vals[j - 1];
            ids[j] = ids[j - 1];
            j--;
        }
        vals[j] = v[i];
        ids[j] = i;
    }
}

/* fp16 turns |x| >= 65520 into inf, and inf in the KV cache into NaN scores: refuse instead (and say NaN when the
 * value already is one). */
static int kv_fits(int dtype, const float *x, int n, int layer, int pos, const char *what) {
    if (dtype != ASW_DTYPE_F16) return 1;
    for (int i = 0; i < n; i++)
        if (x[i] != x[i]) {
            asw_set_error("layer %d position %d: a %s value is NaN (the weights or the activations overflowed)", layer,
                          pos, what);
            return 0;
        } else if (!(fabsf(x[i]) < 65520.0f)) {
            asw_set_error("layer %d position %d: the %s %g does not fit the fp16 KV cache (largest 65504); "
                          "convert with --dtype bf16",
                          layer, pos, what, (double)x[i]);
            return 0;
        }
    return 1;
}

/* ---------------------------------------------------------------------------------------------------------
 * forward
 */

/* xb rows first..n-1 = rmsnorm(x rows first..n-1) * output_norm, the lm_head's input; returns row `first` */
static float *output_normed(cpu_session *s, int first, int n) {
    const asw_config *c = &s->m->cfg;
    int H = c->hidden;
    for (int t = first; t < n; t++)
        rmsnorm(s->xb + (size_t)t * H, s->x + (size_t)t * H, output_norm_f32(s->m), H, c->rms_eps);
    return s->xb + (size_t)first * H;
}

/* out [nt, vocab] = X [nt, hidden] . Woutput^T (the whole lm_head), then the next step's first weights */
static void lm_head(cpu_session *s, float *out, float *X, int nt) {
    const asw_config *c = &s->m->cfg;
    const asw_weights *w = &s->m->w;
    matmul(s, out, c->vocab, w->output.host, c->vocab, c->hidden, X, c->hidden, nt,
           c->n_layers > 0 ? &w->layers[0].attn_qkv : NULL);
}

/* One pass over n <= CHUNK rows: tokens[t] at rows[t] (its session's KV cache and position), on the scratch
 * buffers and threads of `s`. If out != NULL, logits of rows first..n-1 go to out ([n - first, vocab]). */
static int32_t forward_rows(cpu_session *s, const int32_t *tokens, int n, const row_kv *rows, float *out,
                            int first) {
    cpu_model *m = s->m;
    const asw_config *c = &m->cfg;
    const asw_weights *w = &m->w;
    const asw_kernels *k = m->k;
    int dt = c->dtype, H = c->hidden, D = c->head_dim, half = D / 2, F = c->ffn;
    int q_dim = c->n_heads * D, kv_dim = c->n_kv_heads * D, qkv_dim = q_dim + 2 * kv_dim;

    /* x [n, H] = token embeddings */
    for (int t = 0; t < n; t++)
        k->to_f32(dt, s->x + (size_t)t * H, w->token_embd.host + (size_t)tokens[t] * H, H);

    /* rope_cos, rope_sin [n, D/2] for each row's position (f32 like transformers) */
    for (int t = 0; t < n; t++)
        for (int j = 0; j < half; j++) {
            float angle = (float)rows[t].pos * m->inv_freq[j];
            s->rope_cos[t * half + j] = cosf(angle);
            s->rope_sin[t * half + j] = sinf(angle);
        }

    for (int l = 0; l < c->n_layers; l++) {
        const asw_layer_weights *lw = &w->layers[l];

        /* xb [n, H] = rmsnorm(x) * attn_norm */
        for (int t = 0; t < n; t++)
            rmsnorm(s->xb + (size_t)t * H, s->x + (size_t)t * H, attn_norm_f32(m, l), H, c->rms_eps);

        /* qkv [n, qkv_dim] = xb . Wqkv^T (+ bias) */
        matmul(s, s->qkv, qkv_dim, lw->attn_qkv.host, qkv_dim, H, s->xb, H, n, &lw->attn_output);
        const float *bias = qkv_bias_f32(m, l); /* [qkv_dim] or NULL */
        if (bias != NULL)
            for (int t = 0; t < n; t++) {
                float *row = s->qkv + (size_t)t * qkv_dim; /* [qkv_dim] */
                for (int i = 0; i < qkv_dim; i++) row[i] += bias[i];
            }

        /* RoPE on q and k; k, v [kv_dim] -> cache rows pos+t (rounded to dtype) */
        for (int t = 0; t < n; t++) {
            float *q = s->qkv + (size_t)t * qkv_dim; /* [n_heads, D] */
            float *kk = q + q_dim;                   /* [n_kv_heads, D] */
            float *v = kk + kv_dim;                  /* [n_kv_heads, D] */
            const float *cs = s->rope_cos + (size_t)t * half, *sn = s->rope_sin + (size_t)t * half;
            for (int h = 0; h < c->n_heads; h++) rope(q + h * D, cs, sn, half);
            for (int h = 0; h < c->n_kv_heads; h++) rope(kk + h * D, cs, sn, half);
            cpu_session *kv = rows[t].kv;
            if (!kv_fits(dt, kk, kv_dim, l, rows[t].pos, "key") || !kv_fits(dt, v, kv_dim, l, rows[t].pos, "value"))
                return ASW_ERR_NUMERIC;
            for (int h = 0; h < c->n_kv_heads; h++) { /* [D] at (layer l, head h, position pos) */
                size_t row = kv_head_rows(kv, l, h) + (size_t)rows[t].pos * D;
                k->from_f32(dt, kv->key_cache + row, kk + h * D, D);
                k->from_f32(dt, kv->value_cache + row, v + h * D, D);
            }
        }

        /* att [n, q_dim] = causal GQA attention over the cache */
        attention_job aj = {s, rows, l, n, n > 1 && !s->rowwise, {0}, 0};
        if (!aj.block) decode_items(&aj);
        asw_pool_run(s->pool, attention_task, &aj);
        if (!aj.block) merge_partials(s, rows, n);

        /* x += att . Wo^T */
        matmul(s, s->xb2, H, lw->attn_output.host, H, q_dim, s->att, q_dim, n, &lw->ffn_gate_up);
        for (size_t i = 0; i < (size_t)n * H; i++) s->x[i] += s->xb2[i];

        /* xb [n, H] = rmsnorm(x) * ffn_norm */
        for (int t = 0; t < n; t++)
            rmsnorm(s->xb + (size_t)t * H, s->x + (size_t)t * H, ffn_norm_f32(m, l), H, c->rms_eps);

        /* hb [n, 2F] = xb . Wgate_up^T;  act [n, F] = silu(gate) * up */
        matmul(s, s->hb, 2 * F, lw->ffn_gate_up.host, 2 * F, H, s->xb, H, n, &lw->ffn_down);
        swiglu_job sj = {s->m->k, s->act, s->hb, n, F};
        asw_pool_run(s->pool, swiglu_task, &sj);

        /* x += act . Wdown^T */
        matmul(s, s->xb2, H, lw->ffn_down.host, H, F, s->act, F, n,
               l + 1 < c->n_layers ? &w->layers[l + 1].attn_qkv : out != NULL ? &w->output : NULL);
        for (size_t i = 0; i < (size_t)n * H; i++) s->x[i] += s->xb2[i];
    }

    if (out != NULL) lm_head(s, out, output_normed(s, first, n), n - first); /* [n - first, vocab] */
    return 0;
}

/* tokens[0..n) of one session at positions pos..pos+n-1, n <= CHUNK */
static int32_t forward_chunk(cpu_session *s, const int32_t *tokens, int n, int pos, float *out, int first) {
    row_kv rows[CHUNK] = {{NULL, 0}}; /* [n] */
    for (int t = 0; t < n; t++) rows[t] = (row_kv){s, pos + t};
    return forward_rows(s, tokens, n, rows, out, first);
}

/* the error of a step whose logits at position pos hold a NaN */
static int32_t nan_logits(int32_t pos) {
    asw_set_error("the logits of position %d are NaN (the weights or the activations overflowed)", (int)pos);
    return ASW_ERR_NUMERIC;
}

/* argmax, top-k and the kept next token of one row's logits [vocab] */
static int32_t finish_row(cpu_session *s, const float *logits, int32_t pos, const asw_outputs *o, int32_t row) {
    int32_t vocab = s->m->cfg.vocab;
    int32_t best = argmax(logits, vocab);
    if (best < 0) return nan_logits(pos);
    if (o->logits_mode == ASW_LOGITS_TOPK)
        top_k(logits, vocab, o->k, o->logits + (size_t)row * o->k, o->topk_ids + (size_t)row * o->k);
    if (o->argmax != NULL) o->argmax[row] = best;
    s->next_token = best;
    return 0;
}

/* ---------------------------------------------------------------------------------------------------------
 * the greedy screen
 *
 * A greedy step needs the argmax of the logits, not the logits, and the lm_head is the largest matrix a step reads
 * (Qwen2-0.5B: 272 of 990 MB). The screen finds the argmax reading half of it: an int8 copy of each output row r,
 * w_r ~ scale_r q_r, made at open, bounds every logit, and only the rows whose upper bound reaches the largest lower
 * bound are computed by the decode GEMV itself. The token is the one the full GEMV would pick, ties included:
 *   the GEMV computes y_r = fl(w_r . x). With e_r = w_r - scale_r q_r and p_r = fl(q_r . x),
 *     |y_r - scale_r p_r| <= scale_r |p_r - q_r . x| + |e_r . x| + |y_r - w_r . x|
 *                         <= (||e_r|| + g (scale_r ||q_r|| + ||w_r||)) ||x||
 *   by Cauchy-Schwarz, where g = k u / (1 - k u), u = 2^-24, bounds the rounding of a k-term f32 dot product in
 *   any order relative to the sum of its terms' magnitudes (in the normal range: SCREEN_ABS adds the rest; nothing
 *   may overflow: SCREEN_DOT_LIMIT). e_r is exact in double and the norms are double sums; slack_r is the factor
 *   above with 1e-6 more on g and on the whole, rounded up to f32, which covers those sums and the double arithmetic
 *   of the bounds many times over. With lo_r = scale_r p_r - slack_r ||x|| - SCREEN_ABS <= y_r <= hi_r (the same
 *   with +), the first argmax a of y has y_a >= y_b >= lo_b for the row b with the largest lo, so hi_a >= max lo: a
 *   is a candidate, and the candidates' y, computed by the same GEMV as the whole lm_head's, give a bit for bit.
 * Where the bounds leave more than 1 / SCREEN_MAX_SHARE of the rows (and more than SCREEN_MIN_ROWS), the step
 * computes the whole lm_head instead; so do activations that are not finite or so large that a dot product could
 * overflow (which the whole lm_head then reports as it always did): with those excluded no logit is NaN or inf. The
 * int8 rows take vocab x hidden bytes (half the fp16 lm_head) plus 8 bytes a row of memory; ASW_GREEDY_SCREEN=0
 * turns the screen off. Steps that return logits or the top-k, and batched steps, compute the whole lm_head.
 */
enum { SCREEN_MAX_SHARE = 32, SCREEN_MIN_ROWS = 64 };
/* Below f32's normal range a rounding loses up to 2^-126 whatever the value (2^-149 with subnormals, 2^-126 when a
 * thread flushes them), which the relative bound above does not cover: every bound widens by this much for each of
 * a k-term dot product's <= 2k roundings. Negligible for any real logit. */
#define SCREEN_ABS(k) (2.0 * (double)(k) * 0x1p-126)
/* The bound assumes nothing overflows: no partial sum of a dot product exceeds ||w_r|| ||x|| (or ||q_r|| ||x||), so
 * above this the step computes the whole lm_head (which reports an overflow as it always did) */
#define SCREEN_DOT_LIMIT 1e36
_Atomic long long asw_greedy_screen_steps[2]; /* backend.h */

typedef struct screen_build_job {
    const cpu_model *m;
    atomic_int nonfinite; /* 1: a weight of the lm_head is inf or NaN: no screen */
    atomic_int nomem;     /* 1: a thread could not allocate its row buffer */
    double *dot_max;      /* [nth] per thread: the largest ||w_r|| and ||q_r|| of its rows */
} screen_build_job;

/* rows of the lm_head split evenly over the threads: q, scale and slack of each */
static void screen_build_task(void *arg, int ith, int nth) {
    screen_build_job *j = arg;
    const cpu_model *m = j->m;
    int64_t vocab = m->cfg.vocab, k = m->cfg.hidden;
    int64_t r0 = vocab * ith / nth, r1 = vocab * (ith + 1) / nth;
    float *w = malloc((size_t)k * sizeof(float)); /* [k] one row in f32 */
    if (w == NULL) {
        atomic_store(&j->nomem, 1);
        return;
    }
    const double u = 1.0 / 16777216.0, g = (double)k * u / (1.0 - (double)k * u);
    double dot_max = 0.0;
    for (int64_t r = r0; r < r1; r++) {
        m->k->to_f32(m->cfg.dtype, w, m->w.output.host + r * k, k);
        int finite;
        float amax = m->k->abs_max(w, k, &finite);
        if (!finite) {
            atomic_store(&j->nonfinite, 1);
            break;
        }
        int tiny = amax < ASW_SCREEN_TINY_ROW;
        float scale = tiny ? 0.0f : amax / 127.0f, inv = tiny ? 0.0f : 127.0f / amax;
        int8_t *q = m->screen_q + r * k; /* [k] */
        /* in double: no underflow of the squares, rounding far below the slack's */
        double sums[3]; /* ||e_r||^2, ||q_r||^2, ||w_r||^2 */
        m->k->quantize_i8(q, w, k, scale, inv, sums);
        double e2 = sums[0], q2 = sums[1], w2 = sums[2];
        double slack = (sqrt(e2) + (g + 1e-6) * ((double)scale * sqrt(q2) + sqrt(w2))) * (1.0 + 1e-6);
        float up = (float)slack;
        if ((double)up < slack) up = nextafterf(up, INFINITY);
        m->screen_scale[r] = scale;
        m->screen_slack[r] = up;
        dot_max = fmax(dot_max, fmax(sqrt(w2), sqrt(q2)));
    }
    j->dot_max[ith] = dot_max;
    free(w);
}

/* The screen of m's lm_head, unless ASW_GREEDY_SCREEN=0 or a weight is not finite (then the steps compute the whole
 * lm_head, which reports what it finds). 0 (error set) when out of memory or out of threads. */
static int build_screen(cpu_model *m) {
    const char *env = getenv("ASW_GREEDY_SCREEN");
    if (env != NULL && strcmp(env, "0") == 0) return 1;
    size_t vocab = (size_t)m->cfg.vocab, k = (size_t)m->cfg.hidden;
    m->screen_q = alloc_huge(vocab * k);
    m->screen_scale = malloc(vocab * sizeof(float));
    m->screen_slack = malloc(vocab * sizeof(float));
    asw_pool *pool = asw_pool_new(0); /* every core this process may run on */
    if (pool == NULL) return 0;       /* error set */
    int nth = asw_pool_size(pool);
    double *dot_max = calloc((size_t)nth, sizeof(double)); /* [nth] */
    screen_build_job j = {m, 0, 0, dot_max};
    int have = m->screen_q && m->screen_scale && m->screen_slack && dot_max;
    if (have) asw_pool_run(pool, screen_build_task, &j);
    asw_pool_free(pool);
    if (!have || atomic_load(&j.nomem)) {
        free(dot_max);
        asw_set_error("out of memory building the greedy screen (%zu bytes; ASW_GREEDY_SCREEN=0 goes without)",
                      vocab * (k + 2 * sizeof(float)));
        return 0;
    }
    for (int t = 0; t < nth; t++) m->screen_dot_max = fmax(m->screen_dot_max, dot_max[t]);
    free(dot_max);
    if (atomic_load(&j.nonfinite)) {
        free(m->screen_q);
        free(m->screen_scale);
        free(m->screen_slack);
        m->screen_q = NULL;
        m->screen_scale = m->screen_slack = NULL;
    }
    return 1;
}

typedef struct screen_job {
    const cpu_model *m;
    const float *x;   /* [hidden] the normed last row */
    double norm;      /* ||x|| */
    double margin;    /* SCREEN_ABS for this k */
    float *p;         /* [vocab] q_r . x */
    double *block_hi; /* [vocab / SCHED_BLOCK rounded up] the largest upper bound of each block of rows */
    atomic_llong next; /* blocks claimed after the first pieces (claim_piece) */
    _Atomic uint64_t best_lo; /* the largest lower bound so far, as the bits of a double */
} screen_job;

/* row r's bounds lo_r <= y_r <= hi_r given p_r (see the derivation above); screen_hi is one function for the
 * screen's pass and for the scan after it, so both compute the same double (no contraction into a fused
 * multiply-add: ISO C, -std=c11) */
static inline double screen_lo(const screen_job *j, int64_t r) {
    return (double)j->m->screen_scale[r] * j->p[r] - (double)j->m->screen_slack[r] * j->norm - j->margin;
}
static inline double screen_hi(const screen_job *j, int64_t r) {
    return (double)j->m->screen_scale[r] * j->p[r] + (double)j->m->screen_slack[r] * j->norm + j->margin;
}

static void raise_best_lo(_Atomic uint64_t *slot, double lo) {
    uint64_t seen = atomic_load(slot), bits;
    memcpy(&bits, &lo, sizeof bits);
    for (;;) {
        double cur;
        memcpy(&cur, &seen, sizeof cur);
        if (!(lo > cur) || atomic_compare_exchange_weak(slot, &seen, bits)) return;
    }
}

/* p = Q . x over the rows in pieces as matmul_task's decode GEMV, each piece's largest lower bound merged and each
 * block's largest upper bound kept (so that the scan for candidates skips the blocks whose rows all fall short) */
static void screen_task(void *arg, int ith, int nth) {
    screen_job *j = arg;
    const cpu_model *m = j->m;
    int64_t rows = m->cfg.vocab, k = m->cfg.hidden, blocks = sched_blocks(rows), b0, b1;
    for (int more = first_piece(blocks, ith, nth, &b0, &b1); more;
         more = claim_piece(&j->next, blocks, nth, &b0, &b1)) {
        int64_t p0 = block_row(b0, rows), p1 = block_row(b1, rows);
        m->k->gemv_i8(j->p, m->screen_q, k, p0, p1, j->x);
        double lo = -INFINITY;
        for (int64_t b = b0; b < b1; b++) {
            double hi = -INFINITY;
            for (int64_t r = block_row(b, rows); r < block_row(b + 1, rows); r++) {
                double v = screen_lo(j, r), u = screen_hi(j, r);
                lo = v > lo ? v : lo;
                hi = u > hi ? u : hi;
            }
            j->block_hi[b] = hi;
        }
        raise_best_lo(&j->best_lo, lo);
    }
}

/* The argmax of row t's logits into s->next_token (and o->argmax): through the screen where it can, else the whole
 * lm_head as finish_row does. */
static int32_t screened_argmax(cpu_session *s, int t, int32_t pos, const asw_outputs *o) {
    const cpu_model *m = s->m;
    const asw_config *c = &m->cfg;
    int H = c->hidden;
    int32_t vocab = c->vocab;
    float *x = output_normed(s, t, t + 1); /* [H] */
    if (m->bf16_inputs) round_to_bf16(x, H, H, 1); /* what matmul would multiply */
    double ss = 0.0;
    for (int i = 0; i < H; i++) ss += (double)x[i] * (double)x[i];
    double norm = sqrt(ss), margin = SCREEN_ABS(H);
    int32_t n = 0;
    if (isfinite(norm) && m->screen_dot_max * norm < SCREEN_DOT_LIMIT) {
        double none = -INFINITY;
        screen_job j = {m, x, norm, margin, s->logits, s->block_hi, 0, 0};
        memcpy(&j.best_lo, &none, sizeof none);
        asw_pool_run(s->pool, screen_task, &j);
        uint64_t bits = atomic_load(&j.best_lo);
        double lo;
        memcpy(&lo, &bits, sizeof lo);
        int32_t most = vocab / SCREEN_MAX_SHARE > SCREEN_MIN_ROWS ? vocab / SCREEN_MAX_SHARE : SCREEN_MIN_ROWS;
        int64_t blocks = sched_blocks(vocab);
        for (int64_t b = 0; b < blocks && n <= most; b++) {
            if (!(j.block_hi[b] >= lo)) continue; /* no row of the block reaches lo */
            for (int64_t r = block_row(b, vocab); r < block_row(b + 1, vocab) && n <= most; r++)
                if (screen_hi(&j, r) >= lo) s->candidates[n++] = (int32_t)r;
        }
        if (n > most) n = 0;
    }
    atomic_fetch_add_explicit(&asw_greedy_screen_steps[n == 0], 1, memory_order_relaxed);
    if (n == 0) { /* the whole lm_head */
        lm_head(s, s->logits, x, 1);
        return finish_row(s, s->logits, pos, o, 0);
    }
    int32_t best = -1;
    for (int32_t i = 0; i < n; i++) { /* increasing ids: the first of equal logits wins, as in argmax() */
        int32_t r = s->candidates[i];
        m->k->matmul(c->dtype, s->logits, 1, m->w.output.host, H, r, r + 1, x, H, 1);
        if (s->logits[r] != s->logits[r]) return nan_logits(pos);
        if (best < 0 || s->logits[r] > s->logits[best]) best = r;
    }
    if (o->argmax != NULL) o->argmax[0] = best;
    s->next_token = best;
    return 0;
}

static int32_t cpu_forward(void *bs, const int32_t *tokens, int32_t n, int32_t pos, const asw_outputs *o) {
    cpu_session *s = bs;
    int32_t vocab = s->m->cfg.vocab;
    int mode = o->logits_mode;
    float *last = NULL; /* [vocab] logits of position n - 1 */
    for (int32_t c0 = 0; c0 < n; c0 += CHUNK) {
        int nc = n - c0 < CHUNK ? n - c0 : CHUNK;
        int final = c0 + nc == n;
        int32_t rc;
        if (mode == ASW_LOGITS_ALL) {
            float *out = o->logits + (size_t)c0 * vocab; /* [nc, vocab] */
            rc = forward_chunk(s, tokens + c0, nc, pos + c0, out, 0);
            last = out + (size_t)(nc - 1) * vocab;
        } else if (final && mode == ASW_LOGITS_NONE && s->candidates != NULL) {
            rc = forward_chunk(s, tokens + c0, nc, pos + c0, NULL, 0);
            if (rc != 0) return rc;
            return screened_argmax(s, nc - 1, pos + n - 1, o);
        } else if (final) {
            last = mode == ASW_LOGITS_LAST ? o->logits : s->logits;
            rc = forward_chunk(s, tokens + c0, nc, pos + c0, last, nc - 1);
        } else {
            rc = forward_chunk(s, tokens + c0, nc, pos + c0, NULL, 0);
        }
        if (rc != 0) return rc;
    }
    return finish_row(s, last, pos + n - 1, o, 0);
}

/* One decode step for n <= CHUNK sessions of this model at once: each weight row is read once for the whole
 * batch (the matmuls become GEMMs over n rows); each row attends over its own session's cache. The pass runs on
 * the session with the longest cache (its scores buffer fits every row) and its threads. */
static int32_t cpu_forward_batch(void **bs, int32_t n, const int32_t *tokens, const int32_t *pos,
                                 const asw_outputs *o) {
    if (n == 1 && o->logits_mode == ASW_LOGITS_NONE && ((cpu_session *)bs[0])->candidates != NULL)
        return cpu_forward(bs[0], tokens, 1, pos[0], o); /* a lone greedy step (a server with one stream): the same
                                                          * token, through the greedy screen */
    row_kv rows[CHUNK] = {{NULL, 0}}; /* [n] */
    cpu_session *lead = bs[0];
    for (int32_t i = 0; i < n; i++) {
        rows[i] = (row_kv){bs[i], pos[i]};
        if (rows[i].kv->max_len > lead->max_len) lead = rows[i].kv;
    }
    int32_t vocab = lead->m->cfg.vocab;
    float *out = o->logits; /* [n, vocab] */
    if (o->logits_mode != ASW_LOGITS_LAST) {
        if (lead->batch_rows < n) {
            float *grown = realloc(lead->batch_logits, (size_t)n * (size_t)vocab * sizeof(float));
            if (grown == NULL) {
                asw_set_error("out of memory (logits of a batch of %d)", (int)n);
                return ASW_ERR_NOMEM;
            }
            lead->batch_logits = grown;
            lead->batch_rows = n;
        }
        out = lead->batch_logits;
    }
    if (lead->part_rows < n) {
        float *grown = realloc(lead->partials, (size_t)n * partial_row_floats(&lead->m->cfg) * sizeof(float));
        if (grown == NULL) {
            asw_set_error("out of memory (attention partials of a batch of %d)", (int)n);
            return ASW_ERR_NOMEM;
        }
        lead->partials = grown;
        lead->part_rows = n;
    }
    lead->rowwise = 1;
    int32_t rc = forward_rows(lead, tokens, n, rows, out, 0);
    lead->rowwise = 0;
    for (int32_t i = 0; rc == 0 && i < n; i++) rc = finish_row(rows[i].kv, out + (size_t)i * vocab, pos[i], o, i);
    return rc;
}

static int32_t cpu_session_reset(void *bs) {
    cpu_session *s = bs;
    s->ring_head = s->ring_count = 0;
    return 0;
}

/* The cpu computes a queued step at once; the ring only keeps the order the ABI promises. */
static int32_t cpu_decode_enqueue(void *bs, int32_t pos) {
    cpu_session *s = bs;
    int32_t token = s->next_token;
    asw_outputs o = {ASW_LOGITS_NONE, 0, NULL, NULL, NULL};
    int32_t rc = cpu_forward(s, &token, 1, pos, &o);
    if (rc != 0) return rc;
    s->ring[(s->ring_head + s->ring_count) % ASW_MAX_PENDING] = s->next_token;
    s->ring_count++;
    return 0;
}

static int32_t cpu_decode_read(void *bs, int32_t *token) {
    cpu_session *s = bs;
    *token = s->ring[s->ring_head];
    s->ring_head = (s->ring_head + 1) % ASW_MAX_PENDING;
    s->ring_count--;
    return 0;
}

static int32_t cpu_decode_discard(void *bs) { return cpu_session_reset(bs); }

const asw_backend asw_backend_cpu = {
    .abi = ASW_BACKEND_ABI,
    .name = "cpu",
    .lookahead = 0, /* decode_enqueue computes the step */
    .prefill_block = CHUNK,
    .model_init = cpu_model_init,
    .model_free = cpu_model_free,
    .describe = cpu_describe,
    .session_init = cpu_session_init,
    .session_free = cpu_session_free,
    .session_reset = cpu_session_reset,
    .forward = cpu_forward,
    .decode_enqueue = cpu_decode_enqueue,
    .decode_read = cpu_decode_read,
    .decode_discard = cpu_decode_discard,
    .forward_batch = cpu_forward_batch,
};
