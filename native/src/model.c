/* model.c — the ABI entry points: config validation, tensor binding, sessions, dispatch to a backend.
 *
 * Nothing here computes. asw_model_open checks the config, then checks every tensor of the table against the
 * shape the config implies (present once, inside the region, nbytes = shape x 2) and binds it to a weight
 * pointer; the backend gets only validated pointers. Sessions track the position and check every request
 * (context room, token ids) before the backend sees it.
 */
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "asw.h"
#include "backend.h"
#include "kernels.h"

struct asw_model {
    asw_config cfg;
    asw_weights w;              /* pointers into the caller's data region */
    asw_layer_weights *layers;  /* [n_layers], w.layers */
    const asw_backend *backend;
    void *bmodel;               /* the backend's model state */
};

struct asw_session {
    asw_model *model;
    void *bsession; /* the backend's session state (KV cache, threads) */
    int32_t max_len;
    int32_t pos;    /* positions already in the cache */
};

/* ---------------------------------------------------------------------------------------------------------
 * errors
 */

static _Thread_local char last_error[1024];

void asw_set_error(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
}

const char *asw_last_error(void) { return last_error; }

static void clear_error(void) { last_error[0] = '\0'; }

/* ---------------------------------------------------------------------------------------------------------
 * features
 */

int32_t asw_cpu_features(void) { return kernels_cpu_features(); }

const char *asw_kernel_name(void) {
    const char *why = NULL;
    const asw_kernels *k = kernels_select(&why);
    if (k == NULL) {
        asw_set_error("%s", why);
        return "";
    }
    return k->name;
}

/* ---------------------------------------------------------------------------------------------------------
 * config
 */

static int check_range(const char *what, int64_t v, int64_t lo, int64_t hi) {
    if (v < lo || v > hi) {
        asw_set_error("config: %s = %" PRId64 " is outside [%" PRId64 ", %" PRId64 "]", what, v, lo, hi);
        return 0;
    }
    return 1;
}

static int check_positive_float(const char *what, float v) {
    if (!(v > 0.0f) || !isfinite(v)) {
        asw_set_error("config: %s = %g must be a positive finite number", what, (double)v);
        return 0;
    }
    return 1;
}

/* Bounds keep every product of dimensions far from overflow (all < 2^62). */
static int validate_config(const asw_config *c) {
    if (c->abi_version != ASW_ABI_VERSION) {
        asw_set_error("config: abi_version %d, this library speaks %d", (int)c->abi_version, ASW_ABI_VERSION);
        return 0;
    }
    if (c->dtype != ASW_DTYPE_F16 && c->dtype != ASW_DTYPE_BF16) {
        asw_set_error("config: dtype %d is not fp16 (%d) or bf16 (%d)", (int)c->dtype, ASW_DTYPE_F16, ASW_DTYPE_BF16);
        return 0;
    }
    if (c->layout == ASW_LAYOUT_NZ) {
        asw_set_error("FRACTAL_NZ layout is for the aclnn backend; convert with --layout nd for the cpu backend");
        return 0;
    }
    if (c->layout != ASW_LAYOUT_ND) {
        asw_set_error("config: layout %d is not nd (%d) or nz (%d)", (int)c->layout, ASW_LAYOUT_ND, ASW_LAYOUT_NZ);
        return 0;
    }
    if (!check_range("n_layers", c->n_layers, 1, 4096) || !check_range("hidden", c->hidden, 1, 1 << 20) ||
        !check_range("n_heads", c->n_heads, 1, 4096) || !check_range("n_kv_heads", c->n_kv_heads, 1, c->n_heads) ||
        !check_range("head_dim", c->head_dim, 2, 4096) || !check_range("ffn", c->ffn, 1, 1 << 22) ||
        !check_range("vocab", c->vocab, 1, 1 << 24) || !check_range("attn_bias", c->attn_bias, 0, 1) ||
        !check_range("tie_embeddings", c->tie_embeddings, 0, 1))
        return 0;
    if (c->n_heads % c->n_kv_heads != 0) {
        asw_set_error("config: n_heads %d is not a multiple of n_kv_heads %d", (int)c->n_heads, (int)c->n_kv_heads);
        return 0;
    }
    if (c->head_dim % 2 != 0) {
        asw_set_error("config: head_dim %d must be even for rotate-half RoPE", (int)c->head_dim);
        return 0;
    }
    if ((int64_t)c->n_heads * c->head_dim > (1 << 20)) {
        asw_set_error("config: n_heads x head_dim = %" PRId64 " is too large", (int64_t)c->n_heads * c->head_dim);
        return 0;
    }
    if (!check_positive_float("rms_eps", c->rms_eps) || !check_positive_float("rope_theta", c->rope_theta)) return 0;
    if (c->rope_scaling == ASW_ROPE_LLAMA3) {
        if (!check_positive_float("rope_factor", c->rope_factor) ||
            !check_positive_float("rope_low_freq_factor", c->rope_low_freq_factor) ||
            !check_positive_float("rope_high_freq_factor", c->rope_high_freq_factor) ||
            !check_range("rope_original_max_pos", c->rope_original_max_pos, 1, INT32_MAX))
            return 0;
        if (!(c->rope_high_freq_factor > c->rope_low_freq_factor)) {
            asw_set_error("config: llama3 rope needs high_freq_factor (%g) > low_freq_factor (%g)",
                          (double)c->rope_high_freq_factor, (double)c->rope_low_freq_factor);
            return 0;
        }
    } else if (c->rope_scaling != ASW_ROPE_NONE) {
        asw_set_error("config: rope_scaling %d is not none (%d) or llama3 (%d)", (int)c->rope_scaling, ASW_ROPE_NONE,
                      ASW_ROPE_LLAMA3);
        return 0;
    }
    return 1;
}

/* ---------------------------------------------------------------------------------------------------------
 * tensor binding
 */

typedef struct expected_tensor {
    char name[64];
    int64_t rows, cols;      /* shape [rows, cols]; cols = 0 for 1-D [rows] */
    const uint16_t **slot;   /* where the bound pointer goes */
    int seen;
} expected_tensor;

static void expect(expected_tensor *e, int *n, const char *name, int64_t rows, int64_t cols, const uint16_t **slot) {
    expected_tensor *t = &e[(*n)++];
    snprintf(t->name, sizeof t->name, "%s", name);
    t->rows = rows;
    t->cols = cols;
    t->slot = slot;
    t->seen = 0;
}

static void shape_str(const expected_tensor *t, char *buf, size_t len) {
    if (t->cols > 0)
        snprintf(buf, len, "[%" PRId64 ", %" PRId64 "]", t->rows, t->cols);
    else
        snprintf(buf, len, "[%" PRId64 "]", t->rows);
}

static int bind_tensors(asw_model *m, const uint8_t *data, uint64_t data_nbytes, const asw_tensor_ref *tensors,
                        int32_t n_tensors) {
    const asw_config *c = &m->cfg;
    int64_t H = c->hidden, D = c->head_dim;
    int64_t qkv = (int64_t)(c->n_heads + 2 * c->n_kv_heads) * D;
    int max_expected = 4 + 7 * c->n_layers;
    expected_tensor *e = calloc((size_t)max_expected, sizeof *e);
    if (e == NULL) {
        asw_set_error("out of memory (tensor table)");
        return 0;
    }
    int ne = 0;
    char name[64];
    expect(e, &ne, "token_embd.weight", c->vocab, H, &m->w.token_embd);
    for (int i = 0; i < c->n_layers; i++) {
        asw_layer_weights *lw = &m->layers[i];
        snprintf(name, sizeof name, "blk.%d.attn_norm.weight", i);
        expect(e, &ne, name, H, 0, &lw->attn_norm);
        snprintf(name, sizeof name, "blk.%d.attn_qkv.weight", i);
        expect(e, &ne, name, qkv, H, &lw->attn_qkv);
        if (c->attn_bias) {
            snprintf(name, sizeof name, "blk.%d.attn_qkv.bias", i);
            expect(e, &ne, name, qkv, 0, &lw->attn_qkv_bias);
        }
        snprintf(name, sizeof name, "blk.%d.attn_output.weight", i);
        expect(e, &ne, name, H, (int64_t)c->n_heads * D, &lw->attn_output);
        snprintf(name, sizeof name, "blk.%d.ffn_norm.weight", i);
        expect(e, &ne, name, H, 0, &lw->ffn_norm);
        snprintf(name, sizeof name, "blk.%d.ffn_gate_up.weight", i);
        expect(e, &ne, name, 2 * (int64_t)c->ffn, H, &lw->ffn_gate_up);
        snprintf(name, sizeof name, "blk.%d.ffn_down.weight", i);
        expect(e, &ne, name, H, c->ffn, &lw->ffn_down);
    }
    expect(e, &ne, "output_norm.weight", H, 0, &m->w.output_norm);
    if (!c->tie_embeddings) expect(e, &ne, "output.weight", c->vocab, H, &m->w.output);

    int ok = 0;
    for (int32_t i = 0; i < n_tensors; i++) {
        const asw_tensor_ref *r = &tensors[i];
        if (r->name == NULL) {
            asw_set_error("tensor #%d has no name", (int)i);
            goto done;
        }
        expected_tensor *t = NULL;
        for (int j = 0; j < ne && t == NULL; j++)
            if (strcmp(e[j].name, r->name) == 0) t = &e[j];
        if (t == NULL) {
            asw_set_error("unexpected tensor '%.200s': not used by this config (%d layers, attn_bias %d, "
                          "tie_embeddings %d)",
                          r->name, (int)c->n_layers, (int)c->attn_bias, (int)c->tie_embeddings);
            goto done;
        }
        if (t->seen) {
            asw_set_error("tensor '%s' appears twice in the tensor table", t->name);
            goto done;
        }
        t->seen = 1;
        char shape[64];
        shape_str(t, shape, sizeof shape);
        uint64_t want = (uint64_t)t->rows * (uint64_t)(t->cols > 0 ? t->cols : 1) * 2u;
        if (r->nbytes != want) {
            asw_set_error("tensor '%s' has %" PRIu64 " bytes, expected %" PRIu64 " (shape %s x 2 bytes)", t->name,
                          r->nbytes, want, shape);
            goto done;
        }
        if (r->offset > data_nbytes || r->nbytes > data_nbytes - r->offset) {
            asw_set_error("tensor '%s' at offset %" PRIu64 " + %" PRIu64 " bytes lies outside the data region (%" PRIu64
                          " bytes)",
                          t->name, r->offset, r->nbytes, data_nbytes);
            goto done;
        }
        if (((uintptr_t)data + r->offset) % 2 != 0) {
            asw_set_error("tensor '%s' at offset %" PRIu64 " is not 2-byte aligned", t->name, r->offset);
            goto done;
        }
        *t->slot = (const uint16_t *)(data + r->offset);
    }
    for (int j = 0; j < ne; j++)
        if (!e[j].seen) {
            char shape[64];
            shape_str(&e[j], shape, sizeof shape);
            asw_set_error("missing tensor '%s' (shape %s)", e[j].name, shape);
            goto done;
        }
    if (c->tie_embeddings) m->w.output = m->w.token_embd;
    ok = 1;
done:
    free(e);
    return ok;
}

/* ---------------------------------------------------------------------------------------------------------
 * model
 */

asw_model *asw_model_open(const void *data, uint64_t data_nbytes, const asw_config *cfg,
                          const asw_tensor_ref *tensors, int32_t n_tensors, const char *backend) {
    clear_error();
    if (cfg == NULL) {
        asw_set_error("asw_model_open: cfg is NULL");
        return NULL;
    }
    if ((data == NULL && data_nbytes > 0) || n_tensors < 0 || (tensors == NULL && n_tensors > 0)) {
        asw_set_error("asw_model_open: bad data/tensor arguments");
        return NULL;
    }
    const asw_backend *be = NULL;
    if (backend == NULL || strcmp(backend, "cpu") == 0) {
        be = &asw_backend_cpu;
    } else {
        asw_set_error("backend '%.100s' is not available in this build (have: cpu)", backend);
        return NULL;
    }
    if (!validate_config(cfg)) return NULL;

    asw_model *m = calloc(1, sizeof *m);
    if (m == NULL) {
        asw_set_error("out of memory (model)");
        return NULL;
    }
    m->cfg = *cfg;
    m->backend = be;
    m->layers = calloc((size_t)cfg->n_layers, sizeof *m->layers);
    if (m->layers == NULL) {
        asw_set_error("out of memory (layer table)");
        asw_model_free(m);
        return NULL;
    }
    m->w.layers = m->layers;
    if (!bind_tensors(m, data, data_nbytes, tensors, n_tensors)) {
        asw_model_free(m);
        return NULL;
    }
    m->bmodel = be->model_init(&m->cfg, &m->w, data, data_nbytes);
    if (m->bmodel == NULL) {
        asw_model_free(m);
        return NULL;
    }
    return m;
}

void asw_model_free(asw_model *m) {
    if (m == NULL) return;
    if (m->bmodel != NULL) m->backend->model_free(m->bmodel);
    free(m->layers);
    free(m);
}

/* ---------------------------------------------------------------------------------------------------------
 * sessions
 */

asw_session *asw_session_new(asw_model *model, int32_t max_len, int32_t n_threads) {
    clear_error();
    if (model == NULL) {
        asw_set_error("asw_session_new: model is NULL");
        return NULL;
    }
    if (max_len < 1 || max_len > (1 << 24)) {
        asw_set_error("asw_session_new: max_len %d is outside [1, %d]", (int)max_len, 1 << 24);
        return NULL;
    }
    asw_session *s = calloc(1, sizeof *s);
    if (s == NULL) {
        asw_set_error("out of memory (session)");
        return NULL;
    }
    s->model = model;
    s->max_len = max_len;
    s->bsession = model->backend->session_init(model->bmodel, max_len, n_threads);
    if (s->bsession == NULL) {
        free(s);
        return NULL;
    }
    return s;
}

void asw_session_free(asw_session *s) {
    if (s == NULL) return;
    s->model->backend->session_free(s->bsession);
    free(s);
}

void asw_session_reset(asw_session *s) {
    if (s != NULL) s->pos = 0;
}

int32_t asw_session_pos(const asw_session *s) { return s == NULL ? 0 : s->pos; }

int32_t asw_prefill(asw_session *s, const int32_t *tokens, int32_t n, int32_t logits_mode, float *logits,
                    int32_t *argmax) {
    clear_error();
    if (s == NULL || tokens == NULL || n <= 0) {
        asw_set_error("asw_prefill: need a session and n >= 1 tokens (got n = %d)", (int)n);
        return ASW_ERR_ARG;
    }
    if (logits_mode != ASW_LOGITS_NONE && logits_mode != ASW_LOGITS_LAST && logits_mode != ASW_LOGITS_ALL) {
        asw_set_error("asw_prefill: logits_mode %d is not none (0), last (1) or all (2)", (int)logits_mode);
        return ASW_ERR_ARG;
    }
    if (logits_mode != ASW_LOGITS_NONE && logits == NULL) {
        asw_set_error("asw_prefill: logits is NULL but logits_mode is %d", (int)logits_mode);
        return ASW_ERR_ARG;
    }
    if (n > s->max_len - s->pos) {
        asw_set_error("context full: %d positions in the cache + %d new > max_len %d", (int)s->pos, (int)n,
                      (int)s->max_len);
        return ASW_ERR_CONTEXT;
    }
    int32_t vocab = s->model->cfg.vocab;
    for (int32_t i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= vocab) {
            asw_set_error("token id %d at index %d is outside the vocabulary [0, %d)", (int)tokens[i], (int)i,
                          (int)vocab);
            return ASW_ERR_TOKEN;
        }
    int32_t rc = s->model->backend->forward(s->bsession, tokens, n, s->pos, logits_mode, logits, argmax);
    if (rc != 0) return rc;
    s->pos += n;
    return 0;
}

int32_t asw_decode(asw_session *s, int32_t token, int32_t logits_mode, float *logits, int32_t *argmax) {
    return asw_prefill(s, &token, 1, logits_mode, logits, argmax);
}
