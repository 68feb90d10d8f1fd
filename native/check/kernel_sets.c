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
#include "tiny_model.h"

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
