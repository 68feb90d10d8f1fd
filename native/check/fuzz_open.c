/* fuzz_open.c — the C entry points under forged input: asw_model_open with mutated configs and tensor tables.
 *
 * Starts from the valid tiny model of tiny_model.h and applies 1 to 4 random mutations per case: config fields set
 * to edge values (0, -1, 1, INT32_MAX, huge, NaN, inf, negative floats, wrong enums), tensor entries with other
 * offsets, sizes, layouts, ranks, shapes or names (NULL, unknown, duplicated), entries dropped or repeated, a table
 * count or region length that lies, bad options. Every case must either open (then a session runs a prompt, a
 * pipelined decode step and a top-k step, and everything is freed) or be refused with a non-empty asw_last_error().
 * Built with AddressSanitizer and UndefinedBehaviorSanitizer by `make check-sanitize`, so any out-of-bounds
 * access, use after free, leak or undefined behaviour aborts the run.
 *
 *     fuzz_open [CASES] [SEED]        (default 100000 cases, seed 1)
 */
#define _POSIX_C_SOURCE 200112L
#include <inttypes.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "asw.h"
#include "tiny_model.h"

enum { EXTRA = 4 }; /* room for repeated entries */

static uint64_t fuzz_state;
static uint64_t next_u64(void) { /* splitmix64 */
    uint64_t z = (fuzz_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
static uint32_t below(uint32_t n) { return (uint32_t)(next_u64() % n); }

static int32_t edge_int(int32_t valid) {
    static const int64_t edges[] = {0, -1, 1, 2, 3, 15, 16, 17, 4096, 4097, 1 << 20, (1 << 24) + 1, INT32_MAX,
                                    INT32_MIN};
    switch (below(4)) {
    case 0: return (int32_t)edges[below(sizeof edges / sizeof edges[0])];
    case 1: return (int32_t)((int64_t)valid + (int64_t)below(5) - 2);
    case 2: return (int32_t)((int64_t)valid * 2);
    default: return (int32_t)next_u64();
    }
}

static float edge_float(void) {
    static const float edges[] = {0.0f, -0.0f, -1.0f, 1e-30f, 1e30f, 1.0f, 2.0f, 0.5f};
    switch (below(4)) {
    case 0: return NAN;
    case 1: return below(2) ? INFINITY : -INFINITY;
    default: return edges[below(sizeof edges / sizeof edges[0])];
    }
}

static uint64_t edge_u64(uint64_t valid, uint64_t region) {
    switch (below(6)) {
    case 0: return 0;
    case 1: return region;
    case 2: return region - 1;
    case 3: return UINT64_MAX - below(8);
    case 4: return valid + below(3) - 1;
    default: return next_u64() % (region * 2 + 1);
    }
}

static void mutate_config(asw_config *c) {
    int32_t *ints[] = {&c->abi_version, &c->dtype, &c->layout, &c->n_layers, &c->hidden, &c->n_heads,
                       &c->n_kv_heads, &c->head_dim, &c->ffn, &c->vocab, &c->attn_bias, &c->tie_embeddings,
                       &c->rope_scaling, &c->rope_original_max_pos};
    float *floats[] = {&c->rms_eps, &c->rope_theta, &c->rope_factor, &c->rope_low_freq_factor,
                       &c->rope_high_freq_factor};
    if (below(3)) {
        int32_t *v = ints[below(sizeof ints / sizeof ints[0])];
        *v = edge_int(*v);
    } else {
        *floats[below(sizeof floats / sizeof floats[0])] = edge_float();
    }
}

static void mutate_table(asw_tensor_ref *t, int32_t *n, uint64_t region, const layout_t *l) {
    static const char *const names[] = {"token_embd.weight", "output.weight", "blk.0.attn_qkv.weight",
                                        "blk.1.ffn_down.weight", "blk.9.attn_norm.weight", "junk", ""};
    asw_tensor_ref *e = &t[below((uint32_t)*n)];
    switch (below(9)) {
    case 0: e->offset = edge_u64(e->offset, region); break;
    case 1: e->nbytes = edge_u64(e->nbytes, region); break;
    case 2: e->layout = edge_int(e->layout); break;
    case 3: e->ndim = edge_int(e->ndim); break;
    case 4: e->shape[below(2)] = below(2) ? (int64_t)next_u64() : edge_int((int32_t)e->shape[0]); break;
    case 5: e->name = below(4) ? names[below(sizeof names / sizeof names[0])] : NULL; break;
    case 6: /* drop an entry */
        if (*n > 0) {
            int32_t i = (int32_t)below((uint32_t)*n);
            memmove(&t[i], &t[i + 1], (size_t)(*n - i - 1) * sizeof *t);
            (*n)--;
        }
        break;
    case 7: /* repeat an entry */
        if (*n < l->count + EXTRA) {
            asw_tensor_ref copy = t[below((uint32_t)*n)];
            t[(*n)++] = copy;
        }
        break;
    default: /* swap two entries' places */
    {
        asw_tensor_ref a = t[below((uint32_t)*n)];
        int32_t j = (int32_t)below((uint32_t)*n);
        e->offset = t[j].offset;
        t[j].offset = a.offset;
    }
    }
}

/* a session on an opened model: prompt, pipelined step, top-k step; errors are fine, crashes are not */
static void exercise(asw_model *m, int32_t vocab) {
    asw_session_options so = {ASW_ABI_VERSION, (int32_t)(1 + below(12)), 1, 0};
    asw_session *s = asw_session_new(m, &so);
    if (s == NULL) return;
    int32_t tokens[8], token = 0, ids[4];
    float vals[4];
    for (int i = 0; i < 8; i++) tokens[i] = vocab > 0 ? (int32_t)below((uint32_t)vocab) : 0;
    if (asw_forward(s, tokens, (int32_t)(1 + below(8)), ASW_LOGITS_NONE, 0, NULL, NULL, &token) == 0 &&
        asw_decode_enqueue(s) == 0)
        asw_decode_read(s, &token);
    asw_forward(s, &token, 1, ASW_LOGITS_TOPK, 4, vals, ids, NULL);
    asw_session_free(s);
}

int main(int argc, char **argv) {
    long cases = argc > 1 ? strtol(argv[1], NULL, 10) : 100000;
    fuzz_state = argc > 2 ? strtoull(argv[2], NULL, 10) : 1;
    static layout_t layout;
    build_layout(&layout);
    uint8_t *region = calloc(1, layout.size); /* [layout.size] */
    if (region == NULL) return 2;
    fill_region(region, &layout, ASW_DTYPE_F16);
    long opened = 0, refused = 0;
    for (long i = 0; i < cases; i++) {
        asw_config cfg = tiny_config(below(2) ? ASW_DTYPE_F16 : ASW_DTYPE_BF16);
        asw_tensor_ref table[MAX_TENSORS + EXTRA]; /* [n] */
        int32_t n = layout.count;
        memcpy(table, layout.refs, sizeof layout.refs[0] * (size_t)n);
        uint64_t region_len = layout.size;
        /* f32 activations, or bf16 ones (refused on fp16 configs) */
        asw_open_options opt = {ASW_ABI_VERSION, "cpu", 0, 0, NULL, below(2) ? 0 : ASW_DTYPE_BF16};
        int mutations = 1 + (int)below(4);
        for (int k = 0; k < mutations; k++) {
            uint32_t what = below(20);
            if (what < 8)
                mutate_config(&cfg);
            else if (what < 18)
                mutate_table(table, &n, layout.size, &layout);
            else if (what == 18)
                region_len = edge_u64(region_len, layout.size) % (layout.size + 1); /* a shorter region */
            else if (below(2))
                opt.abi_version = edge_int(opt.abi_version);
            else
                opt.activations = edge_int(opt.activations);
        }
        asw_model *m = asw_model_open(region, region_len, &cfg, table, n, &opt);
        if (m == NULL) {
            if (asw_last_error()[0] == '\0') {
                fprintf(stderr, "case %ld (seed %" PRIu64 "): refused without an error message\n", i, fuzz_state);
                return 1;
            }
            refused++;
            continue;
        }
        opened++;
        if (below(4) == 0) exercise(m, cfg.vocab); /* forward passes are the slow part: every fourth */
        asw_model_free(m);
    }
    free(region);
    printf("fuzz_open: %ld cases: %ld opened, %ld refused with a message, 0 crashes\n", cases, opened, refused);
    return 0;
}
