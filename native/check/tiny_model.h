/* tiny_model.h — a tiny random model laid out like a .asw data region, for the C checks in native/check/.
 *
 * GQA (4 query heads, 2 KV heads), q/k/v bias, untied output, 2 layers; ND tensors 512-byte aligned in file order.
 * Test code only: everything is static.
 */
#ifndef ASW_TINY_MODEL_H
#define ASW_TINY_MODEL_H

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "asw.h"

enum { HIDDEN = 64, LAYERS = 2, HEADS = 4, KV_HEADS = 2, HEAD_DIM = 16, FFN = 96, VOCAB = 128 };
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

/* random weights of `dtype` in every tensor of `l` (norms near 1, the rest small) */
static void fill_region(uint8_t *region, const layout_t *l, int dtype) {
    for (int i = 0; i < l->count; i++) {
        uint16_t *w = (uint16_t *)(region + l->refs[i].offset);
        int norm = strstr(l->refs[i].name, "norm") != NULL;
        for (uint64_t j = 0; j < l->refs[i].nbytes / 2u; j++)
            w[j] = to_u16(norm ? 1.0f + 0.1f * uniform() : 0.15f * uniform(), dtype);
    }
}

/* the config of the tiny model */
static asw_config tiny_config(int dtype) {
    asw_config cfg = {ASW_ABI_VERSION, dtype, ASW_LAYOUT_ND, LAYERS, HIDDEN, HEADS, KV_HEADS, HEAD_DIM, FFN, VOCAB,
                      1, 0, 1e-5f, 10000.0f, ASW_ROPE_NONE, 1.0f, 1.0f, 1.0f, 0};
    return cfg;
}

#endif /* ASW_TINY_MODEL_H */
