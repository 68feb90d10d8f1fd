/* backend.h — what model.c hands a backend, and the backend function table.
 *
 * model.c validates the config and binds every tensor of the data region to the pointers below; a backend
 * (cpu now, aclnn later) only computes. Shapes are in HuggingFace orientation [out, in], row-major u16.
 */
#ifndef ASW_BACKEND_H
#define ASW_BACKEND_H

#include <stdint.h>

#include "asw.h"

/* internal error codes returned through the ABI (asw_last_error() has the words) */
enum {
    ASW_ERR_ARG = -1,      /* bad argument (NULL, n <= 0, bad logits mode) */
    ASW_ERR_CONTEXT = -2,  /* pos + n > max_len */
    ASW_ERR_TOKEN = -3,    /* token id outside [0, vocab) */
    ASW_ERR_NOMEM = -4,    /* allocation failed */
    ASW_ERR_BACKEND = -5,  /* backend failure */
};

typedef struct asw_layer_weights {
    const uint16_t *attn_norm;     /* [hidden] */
    const uint16_t *attn_qkv;      /* [(n_heads + 2 n_kv_heads) head_dim, hidden] */
    const uint16_t *attn_qkv_bias; /* [(n_heads + 2 n_kv_heads) head_dim], NULL without attn_bias */
    const uint16_t *attn_output;   /* [hidden, n_heads head_dim] */
    const uint16_t *ffn_norm;      /* [hidden] */
    const uint16_t *ffn_gate_up;   /* [2 ffn, hidden]: gate rows then up rows */
    const uint16_t *ffn_down;      /* [hidden, ffn] */
} asw_layer_weights;

typedef struct asw_weights {
    const uint16_t *token_embd;  /* [vocab, hidden] */
    asw_layer_weights *layers;   /* [n_layers] */
    const uint16_t *output_norm; /* [hidden] */
    const uint16_t *output;      /* [vocab, hidden]; == token_embd when tie_embeddings */
} asw_weights;

typedef struct asw_backend {
    const char *name;
    /* Prepare the weights (cpu: choose kernels; aclnn: upload the region once). NULL + error on failure. */
    void *(*model_init)(const asw_config *cfg, const asw_weights *w, const void *data, uint64_t data_nbytes);
    void (*model_free)(void *bmodel);
    /* KV cache for max_len positions and the session's threads (n_threads <= 0: all cores). */
    void *(*session_init)(void *bmodel, int32_t max_len, int32_t n_threads);
    void (*session_free)(void *bsession);
    /* Run tokens[0..n) at positions pos..pos+n-1 (already checked: 0 < n, pos + n <= max_len, ids < vocab).
     * logits: NONE nothing, LAST [vocab], ALL [n, vocab]. *argmax (if not NULL): argmax of the last position. */
    int32_t (*forward)(void *bsession, const int32_t *tokens, int32_t n, int32_t pos, int32_t logits_mode,
                       float *logits, int32_t *argmax);
    /* Name of the kernel set this model uses. */
    const char *(*kernel_name)(void *bmodel);
} asw_backend;

extern const asw_backend asw_backend_cpu;

/* printf-style: set the calling thread's asw_last_error() */
void asw_set_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif /* ASW_BACKEND_H */
