/* kernel_sets.c — checks that every SIMD kernel set this machine can run gives the portable set's logits.
 *
 * Built and run by `make check-aarch64` for the NEON kernels (under qemu-aarch64 on x86 hosts, natively on an
 * aarch64 host); on x86 it checks AVX2 / AVX-512 the same way. Uses only the public ABI (asw.h): a tiny random
 * model (GQA, biases, untied output, fp16 and bf16) is opened once per kernel set (ASW_KERNELS), a 70-token
 * prompt (two prefill chunks) is prefilled with all logits, then 4 decode steps; the largest difference to the
 * portable set's logits, relative to the largest |logit|, must stay below 1e-4.
 */
#define _POSIX_C_SOURCE 200112L /* setenv */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "asw.h"

enum { HIDDEN = 64, LAYERS = 2, HEADS = 4, KV_HEADS = 2, HEAD_DIM = 16, FFN = 96, VOCAB = 128, PROMPT = 70, STEPS = 4 };
enum { MAX_TENSORS = 3 + LAYERS * 7, NAME_LEN = 48 };

static uint32_t rng_state = 12345u;
static float uniform(void) { /* xorshift32 in [-1, 1) */
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 17;
    rng_state ^= rng_state << 5;
    return (float)(rng_state >> 8) / (float)(1u << 23) - 1.0f;
}

static uint16_t to_u16(float f, int dtype) { /* round to nearest even; no NaN/inf appear here */
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    if (dtype == ASW_DTYPE_BF16) return (uint16_t)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
    uint32_t sign = (x >> 16) & 0x8000u, ax = x & 0x7fffffffu;
    if (ax < 0x38800000u) { /* subnormal half */
        float r;
        memcpy(&r, &ax, sizeof r);
        r += 0.5f;
        uint32_t rb;
        memcpy(&rb, &r, sizeof rb);
        return (uint16_t)(sign | (rb - 0x3f000000u));
    }
    ax += 0xc8000fffu + ((ax >> 13) & 1u);
    return (uint16_t)(sign | (ax >> 13));
}

typedef struct {
    char names[MAX_TENSORS][NAME_LEN];
    asw_tensor_ref refs[MAX_TENSORS];
    int count;
    uint64_t size;
} layout_t;

/* one ND tensor of shape [rows, cols] (cols = 0: 1-D [rows]) */
static void add(layout_t *l, const char *name, uint64_t rows, uint64_t cols) {
    uint64_t elements = rows * (cols ? cols : 1u);
    snprintf(l->names[l->count], NAME_LEN, "%s", name);
    l->size = (l->size + 511u) / 512u * 512u;
    l->refs[l->count] = (asw_tensor_ref){l->names[l->count], l->size, elements * 2u, ASW_LAYOUT_ND, cols ? 2 : 1,
                                         {(int64_t)rows, (int64_t)cols}};
    l->size += elements * 2u;
    l->count++;
}

static void build_layout(layout_t *l) {
    char name[NAME_LEN];
    const uint64_t qkv = (uint64_t)(HEADS + 2 * KV_HEADS) * HEAD_DIM;
    memset(l, 0, sizeof *l);
    add(l, "token_embd.weight", VOCAB, HIDDEN);
    for (int i = 0; i < LAYERS; i++) {
        snprintf(name, NAME_LEN, "blk.%d.attn_norm.weight", i), add(l, name, HIDDEN, 0);
        snprintf(name, NAME_LEN, "blk.%d.attn_qkv.weight", i), add(l, name, qkv, HIDDEN);
        snprintf(name, NAME_LEN, "blk.%d.attn_qkv.bias", i), add(l, name, qkv, 0);
        snprintf(name, NAME_LEN, "blk.%d.attn_output.weight", i), add(l, name, HIDDEN, (uint64_t)HEADS * HEAD_DIM);
        snprintf(name, NAME_LEN, "blk.%d.ffn_norm.weight", i), add(l, name, HIDDEN, 0);
        snprintf(name, NAME_LEN, "blk.%d.ffn_gate_up.weight", i), add(l, name, 2u * FFN, HIDDEN);
        snprintf(name, NAME_LEN, "blk.%d.ffn_down.weight", i), add(l, name, HIDDEN, FFN);
    }
    add(l, "output_norm.weight", HIDDEN, 0);
    add(l, "output.weight", VOCAB, HIDDEN);
}

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
        for (int i = 0; i < layout.count; i++) {
            uint16_t *w = (uint16_t *)(region + layout.refs[i].offset);
            int norm = strstr(layout.refs[i].name, "norm") != NULL;
            for (uint64_t j = 0; j < layout.refs[i].nbytes / 2u; j++)
                w[j] = to_u16(norm ? 1.0f + 0.1f * uniform() : 0.15f * uniform(), dtype);
        }
        asw_config cfg = {ASW_ABI_VERSION, dtype, ASW_LAYOUT_ND, LAYERS, HIDDEN, HEADS, KV_HEADS, HEAD_DIM, FFN, VOCAB,
                          1, 0, 1e-5f, 10000.0f, ASW_ROPE_NONE, 1.0f, 1.0f, 1.0f, 0};
        if (run("portable", region, &layout, &cfg, want) != 0) failures++;
        float scale = 0.0f;
        for (int j = 0; j < (PROMPT + STEPS) * VOCAB; j++) scale = fmaxf(scale, fabsf(want[j]));
        for (int k = 0; k < 3; k++) {
            if (!(asw_cpu_features() & bits[k])) continue;
            if (run(sets[k], region, &layout, &cfg, got) != 0) {
                failures++;
                continue;
            }
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
    printf("%d kernel set checks, %d failures\n", checked, failures);
    return failures != 0 || checked == 0;
}
