/* backend.h — what model.c hands a backend, and the backend function table (the native seam).
 *
 * model.c validates the config, checks every tensor of the table against the shape the config implies, and
 * binds it to an asw_weight below; a backend only computes. Weights are u16 (fp16 or bf16), HuggingFace
 * orientation [out, in]. Each backend checks the layouts it can run (cpu: ND only; aclnn: ND and NZ).
 *
 * Backends live in a registry (model.c): "cpu" is built into the library; "aclnn" is a separate shared library
 * (libasw_aclnn.so next to the main library, or the path in ASW_ACLNN_LIB) opened with dlopen only when asked
 * for, so the cpu path never loads anything of CANN. A plugin exports
 *     const asw_backend *asw_backend_entry(const asw_host *host);
 * and reports errors through host->set_error.
 */
#ifndef ASW_BACKEND_H
#define ASW_BACKEND_H

#include <stdint.h>

#include "asw.h"

/* error codes returned through the ABI (asw_last_error() has the words) */
enum {
    ASW_ERR_ARG = -1,      /* bad argument (NULL, n <= 0, bad logits mode) */
    ASW_ERR_CONTEXT = -2,  /* pos + n > max_len */
    ASW_ERR_TOKEN = -3,    /* token id outside [0, vocab) */
    ASW_ERR_NOMEM = -4,    /* allocation failed */
    ASW_ERR_BACKEND = -5,  /* backend failure (device error, missing library, ...) */
    ASW_ERR_NUMERIC = -6,  /* NaN or inf where a number was needed (logits, KV values) */
    ASW_ERR_STATE = -7,    /* call out of order (decode_read with nothing queued, enqueue before a forward) */
};

#define ASW_BACKEND_ABI 2

/* One tensor of the data region. `host` points into the caller's mapping; `offset` is its byte offset from the
 * region start (a device backend addresses the same bytes inside its one device copy of the region). */
typedef struct asw_weight {
    const uint16_t *host; /* NULL when absent (attn_qkv.bias without attn_bias) */
    uint64_t offset;
    uint64_t nbytes;
    int32_t layout;       /* enum asw_layout */
    int32_t ndim;         /* 1 or 2 */
    int64_t rows, cols;   /* logical [rows, cols] = [out, in]; 1-D: [rows], cols = 1 */
} asw_weight;

typedef struct asw_layer_weights {
    asw_weight attn_norm;     /* [hidden] */
    asw_weight attn_qkv;      /* [(n_heads + 2 n_kv_heads) head_dim, hidden]: q rows, k rows, v rows */
    asw_weight attn_qkv_bias; /* [(n_heads + 2 n_kv_heads) head_dim]; host NULL without attn_bias */
    asw_weight attn_output;   /* [hidden, n_heads head_dim] */
    asw_weight ffn_norm;      /* [hidden] */
    asw_weight ffn_gate_up;   /* [2 ffn, hidden]: gate rows then up rows */
    asw_weight ffn_down;      /* [hidden, ffn] */
} asw_layer_weights;

typedef struct asw_weights {
    asw_weight token_embd;    /* [vocab, hidden] (always ND) */
    asw_layer_weights *layers;/* [n_layers] */
    asw_weight output_norm;   /* [hidden] */
    asw_weight output;        /* [vocab, hidden]; a copy of token_embd when tie_embeddings */
} asw_weights;

/* What a forward call must produce (model.c has checked the arguments against the mode). */
typedef struct asw_outputs {
    int32_t logits_mode; /* enum asw_logits_mode */
    int32_t k;           /* TOPK: 1 <= k <= vocab */
    float *logits;       /* LAST [vocab], ALL [n, vocab], TOPK [k]; NULL for NONE */
    int32_t *topk_ids;   /* TOPK [k] */
    int32_t *argmax;     /* [1] argmax of the last position, or NULL */
} asw_outputs;

typedef struct asw_backend {
    int32_t abi;          /* ASW_BACKEND_ABI */
    const char *name;
    /* Decode steps worth queuing ahead of the one being read: 0 for a backend that computes a step inside
     * decode_enqueue (cpu), 1 for one that only launches it (aclnn). */
    int32_t lookahead;
    /* Prompt positions per pass of a prefill (cpu: CHUNK; aclnn: PREFILL_CHUNK; a session shorter than it runs a
     * prompt in one pass), at least 1. A prompt fed in pieces whose lengths are multiples of it (the last piece
     * excepted) runs the same passes as the prompt fed whole: the same kernels on the same shapes. */
    int32_t prefill_block;
    /* Prepare the weights (cpu: choose kernels; aclnn: one device copy of the region). Refuse layouts it cannot
     * run here. NULL + error on failure. `data` is the mapped region; it stays mapped until model_free. */
    void *(*model_init)(const asw_config *cfg, const asw_weights *w, const void *data, uint64_t data_nbytes,
                        const asw_open_options *opt);
    void (*model_free)(void *bmodel);
    /* One line: backend, kernels or device, mode. */
    const char *(*describe)(void *bmodel);
    /* KV cache for opt->max_len positions (opt->kv_dtype already resolved to an enum asw_dtype). */
    void *(*session_init)(void *bmodel, const asw_session_options *opt);
    void (*session_free)(void *bsession);
    /* Forget every position and any queued step. */
    int32_t (*session_reset)(void *bsession);
    /* Run tokens[0..n) at positions pos..pos+n-1 (checked: 0 < n, pos + n <= max_len, ids < vocab, nothing
     * queued). Keeps the last position's argmax as the next decode_enqueue input (on the device for aclnn). */
    int32_t (*forward)(void *bsession, const int32_t *tokens, int32_t n, int32_t pos, const asw_outputs *out);
    /* Queue one greedy step at `pos` whose input is the kept argmax; it becomes the kept argmax in turn
     * (checked: pos < max_len, fewer than ASW_MAX_PENDING queued, a forward since the last reset). */
    int32_t (*decode_enqueue)(void *bsession, int32_t pos);
    /* Wait for the oldest queued step and return its token (checked: one is queued). */
    int32_t (*decode_read)(void *bsession, int32_t *token);
    /* Wait for every queued step and drop their tokens. */
    int32_t (*decode_discard)(void *bsession);
    /* One decode step for n distinct sessions of this model at once (continuous batching): tokens[i] at pos[i]
     * in bsessions[i] (checked: 1 <= n <= ASW_MAX_BATCH, room, ids, nothing queued). Outputs are per row:
     * LAST [n, vocab], TOPK [n, k] + ids [n, k], argmax [n]; each session keeps its own argmax. NULL: model.c
     * runs the sessions one by one. */
    int32_t (*forward_batch)(void **bsessions, int32_t n, const int32_t *tokens, const int32_t *pos,
                             const asw_outputs *out);
} asw_backend;

/* What the library offers a backend plugin. */
typedef struct asw_host {
    int32_t abi;                          /* ASW_BACKEND_ABI */
    void (*set_error)(const char *message); /* sets the calling thread's asw_last_error() */
} asw_host;

typedef const asw_backend *(*asw_backend_entry_fn)(const asw_host *host);

extern const asw_backend asw_backend_cpu;
#ifndef __cplusplus /* the aclnn backend (C++) has no use for it */
/* Greedy steps of the cpu backend that found their token through the greedy screen [0] and that computed the whole
 * lm_head instead [1] (backend_cpu.c): read by native/check, not exported. */
extern _Atomic long long asw_greedy_screen_steps[2];
#endif

/* printf-style: set the calling thread's asw_last_error() */
void asw_set_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif /* ASW_BACKEND_H */
