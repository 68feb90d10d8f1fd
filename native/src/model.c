/* model.c — the ABI entry points: config validation, tensor binding, the backend registry, sessions.
 *
 * Nothing here computes. asw_model_open checks the config, then checks every tensor of the table against the
 * shape the config implies (present once, inside the region, nbytes = its layout's size) and binds it to an
 * asw_weight; the backend (picked by name from the registry: "cpu" built in, "aclnn" dlopen'ed on demand) gets
 * only validated tensors. Sessions track the position and the queued decode steps and check every request
 * (context room, token ids, call order) before the backend sees it. A session holds a reference on its model,
 * so freeing a model before its sessions is safe: the last one out frees it.
 */
#define _GNU_SOURCE /* dladdr */
#include <dlfcn.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "asw.h"
#include "backend.h"
#include "kernels.h"

struct asw_model {
    asw_config cfg;
    asw_weights w;              /* bound tensors of the caller's data region */
    asw_layer_weights *layers;  /* [n_layers], w.layers */
    const asw_backend *backend;
    void *bmodel;               /* the backend's model state */
    int refs;                   /* 1 for the caller + 1 per live session; guarded by refs_lock */
    char describe[256];
};

struct asw_session {
    asw_model *model;
    void *bsession;  /* the backend's session state (KV cache, threads / device buffers) */
    int32_t max_len;
    int32_t pos;     /* positions in the cache, counting queued decode steps */
    int32_t pending; /* decode steps queued and not yet read */
    int32_t primed;  /* 1 once a forward has left an argmax for decode_enqueue */
};

static pthread_mutex_t refs_lock = PTHREAD_MUTEX_INITIALIZER;

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
    if (c->layout != ASW_LAYOUT_ND && c->layout != ASW_LAYOUT_NZ) {
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

/* Tensors stored FRACTAL_NZ in an nz file (docs/FORMAT.md §4); every other tensor is ND. */
static int nz_candidate(const char *name) {
    static const char *const suffixes[] = {".attn_qkv.weight", ".attn_output.weight", ".ffn_gate_up.weight",
                                           ".ffn_down.weight"};
    if (strcmp(name, "output.weight") == 0) return 1;
    size_t n = strlen(name);
    for (size_t i = 0; i < sizeof suffixes / sizeof suffixes[0]; i++) {
        size_t m = strlen(suffixes[i]);
        if (n > m && strcmp(name + n - m, suffixes[i]) == 0) return 1;
    }
    return 0;
}

typedef struct expected_tensor {
    char name[64];
    int64_t rows, cols;  /* shape [rows, cols]; cols = 0 for 1-D [rows] */
    asw_weight *slot;    /* where the bound tensor goes */
    int seen;
} expected_tensor;

static void expect(expected_tensor *e, int *n, const char *name, int64_t rows, int64_t cols, asw_weight *slot) {
    expected_tensor *t = &e[(*n)++];
    snprintf(t->name, sizeof t->name, "%s", name);
    t->rows = rows;
    t->cols = cols;
    t->slot = slot;
    t->seen = 0;
}

static void shape_str(int64_t rows, int64_t cols, char *buf, size_t len) {
    if (cols > 0)
        snprintf(buf, len, "[%" PRId64 ", %" PRId64 "]", rows, cols);
    else
        snprintf(buf, len, "[%" PRId64 "]", rows);
}

static uint64_t round16(int64_t v) { return ((uint64_t)v + 15u) / 16u * 16u; }

/* Checks one table entry against what the config expects and binds it. */
static int bind_one(const asw_config *c, expected_tensor *t, const asw_tensor_ref *r, const uint8_t *data,
                    uint64_t data_nbytes) {
    char want_shape[64], got_shape[64];
    shape_str(t->rows, t->cols, want_shape, sizeof want_shape);
    int want_ndim = t->cols > 0 ? 2 : 1;
    if (r->ndim != want_ndim || r->shape[0] != t->rows || (want_ndim == 2 && r->shape[1] != t->cols)) {
        if (r->ndim == 1 || r->ndim == 2)
            shape_str(r->shape[0], r->ndim == 2 ? r->shape[1] : 0, got_shape, sizeof got_shape);
        else
            snprintf(got_shape, sizeof got_shape, "(%d dims)", (int)r->ndim);
        asw_set_error("tensor '%s' has shape %s, the config implies %s", t->name, got_shape, want_shape);
        return 0;
    }
    int allowed_nz = c->layout == ASW_LAYOUT_NZ && nz_candidate(t->name);
    if (r->layout != ASW_LAYOUT_ND && !(r->layout == ASW_LAYOUT_NZ && allowed_nz)) {
        asw_set_error("tensor '%s' has layout %d; in a%s file it must be %s", t->name, (int)r->layout,
                      c->layout == ASW_LAYOUT_NZ ? "n nz" : "n nd", allowed_nz ? "nz" : "nd");
        return 0;
    }
    if (allowed_nz && r->layout != ASW_LAYOUT_NZ) {
        asw_set_error("tensor '%s' must be stored nz in an nz file", t->name);
        return 0;
    }
    uint64_t want = r->layout == ASW_LAYOUT_NZ ? round16(t->rows) * round16(t->cols) * 2u
                                               : (uint64_t)t->rows * (uint64_t)(t->cols > 0 ? t->cols : 1) * 2u;
    if (r->nbytes != want) {
        asw_set_error("tensor '%s' has %" PRIu64 " bytes, expected %" PRIu64 " (shape %s, %s, 2 bytes each)", t->name,
                      r->nbytes, want, want_shape, r->layout == ASW_LAYOUT_NZ ? "nz" : "nd");
        return 0;
    }
    if (r->offset > data_nbytes || r->nbytes > data_nbytes - r->offset) {
        asw_set_error("tensor '%s' at offset %" PRIu64 " + %" PRIu64 " bytes lies outside the data region (%" PRIu64
                      " bytes)",
                      t->name, r->offset, r->nbytes, data_nbytes);
        return 0;
    }
    if (((uintptr_t)data + r->offset) % 2 != 0) {
        asw_set_error("tensor '%s' at offset %" PRIu64 " is not 2-byte aligned", t->name, r->offset);
        return 0;
    }
    asw_weight *w = t->slot;
    w->host = (const uint16_t *)(data + r->offset);
    w->offset = r->offset;
    w->nbytes = r->nbytes;
    w->layout = r->layout;
    w->ndim = want_ndim;
    w->rows = t->rows;
    w->cols = t->cols > 0 ? t->cols : 1;
    return 1;
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
        if (!bind_one(c, t, r, data, data_nbytes)) goto done;
    }
    for (int j = 0; j < ne; j++)
        if (!e[j].seen) {
            char shape[64];
            shape_str(e[j].rows, e[j].cols, shape, sizeof shape);
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
 * backend registry: "cpu" is built in; "aclnn" lives in libasw_aclnn.so, opened on first use
 */

static void host_set_error(const char *message) { asw_set_error("%s", message); }

static const asw_host plugin_host = {ASW_BACKEND_ABI, host_set_error};

typedef struct plugin_slot {
    const char *name;
    const char *file;    /* library file name, looked up next to this library */
    const char *env;     /* environment variable with an explicit path */
    const asw_backend *backend;
    void *handle;        /* kept open for the life of the process */
} plugin_slot;

static plugin_slot plugins[] = {{"aclnn", "libasw_aclnn.so", "ASW_ACLNN_LIB", NULL, NULL}};
static pthread_mutex_t plugins_lock = PTHREAD_MUTEX_INITIALIZER;

/* Directory of this library (the plugin sits beside it). */
static void own_dir(char *buf, size_t len) {
    Dl_info info;
    buf[0] = '\0';
    if (dladdr((void *)&own_dir, &info) != 0 && info.dli_fname != NULL) {
        snprintf(buf, len, "%s", info.dli_fname);
        char *slash = strrchr(buf, '/');
        if (slash != NULL)
            slash[1] = '\0';
        else
            buf[0] = '\0';
    }
}

static const asw_backend *load_plugin(plugin_slot *p) {
    if (p->backend != NULL) return p->backend;
    char path[4096];
    const char *env = getenv(p->env);
    if (env != NULL && env[0] != '\0') {
        snprintf(path, sizeof path, "%s", env);
    } else {
        own_dir(path, sizeof path);
        size_t used = strlen(path);
        snprintf(path + used, sizeof path - used, "%s", p->file);
    }
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (h == NULL) {
        const char *why = dlerror();
        asw_set_error("backend '%s': cannot load %.3000s (%.500s); build it with `make native` or set %s", p->name,
                      path, why ? why : "unknown error", p->env);
        return NULL;
    }
    asw_backend_entry_fn entry = (asw_backend_entry_fn)dlsym(h, "asw_backend_entry");
    if (entry == NULL) {
        asw_set_error("backend '%s': %.3000s does not export asw_backend_entry", p->name, path);
        dlclose(h);
        return NULL;
    }
    const asw_backend *be = entry(&plugin_host);
    if (be == NULL) {
        dlclose(h); /* entry() set the error */
        return NULL;
    }
    if (be->abi != ASW_BACKEND_ABI) {
        asw_set_error("backend '%s': %.3000s speaks backend ABI %d, this library %d", p->name, path, (int)be->abi,
                      ASW_BACKEND_ABI);
        dlclose(h);
        return NULL;
    }
    if (be->prefill_block < 1 || be->lookahead < 0) {
        asw_set_error("backend '%s': %.3000s reports prefill block %d and lookahead %d (need >= 1 and >= 0)",
                      p->name, path, (int)be->prefill_block, (int)be->lookahead);
        dlclose(h);
        return NULL;
    }
    p->handle = h;
    p->backend = be;
    return be;
}

static const asw_backend *find_backend(const char *name) {
    if (name == NULL || strcmp(name, "cpu") == 0) return &asw_backend_cpu;
    for (size_t i = 0; i < sizeof plugins / sizeof plugins[0]; i++)
        if (strcmp(name, plugins[i].name) == 0) {
            pthread_mutex_lock(&plugins_lock);
            const asw_backend *be = load_plugin(&plugins[i]);
            pthread_mutex_unlock(&plugins_lock);
            return be;
        }
    asw_set_error("unknown backend '%.100s' (have: cpu, aclnn)", name);
    return NULL;
}

/* ---------------------------------------------------------------------------------------------------------
 * model
 */

static void model_release(asw_model *m) {
    pthread_mutex_lock(&refs_lock);
    int left = --m->refs;
    pthread_mutex_unlock(&refs_lock);
    if (left > 0) return;
    if (m->bmodel != NULL) m->backend->model_free(m->bmodel);
    free(m->layers);
    free(m);
}

asw_model *asw_model_open(const void *data, uint64_t data_nbytes, const asw_config *cfg,
                          const asw_tensor_ref *tensors, int32_t n_tensors, const asw_open_options *opt) {
    clear_error();
    if (cfg == NULL || opt == NULL) {
        asw_set_error("asw_model_open: cfg and opt must not be NULL");
        return NULL;
    }
    if (opt->abi_version != ASW_ABI_VERSION) {
        asw_set_error("asw_model_open: options abi_version %d, this library speaks %d", (int)opt->abi_version,
                      ASW_ABI_VERSION);
        return NULL;
    }
    if ((data == NULL && data_nbytes > 0) || n_tensors < 0 || (tensors == NULL && n_tensors > 0)) {
        asw_set_error("asw_model_open: bad data/tensor arguments");
        return NULL;
    }
    if (!validate_config(cfg)) return NULL;
    if (opt->activations != 0 && opt->activations != ASW_DTYPE_BF16) {
        asw_set_error("asw_model_open: activations %d is not 0 (f32) or bf16 (%d)", (int)opt->activations,
                      ASW_DTYPE_BF16);
        return NULL;
    }
    if (opt->activations == ASW_DTYPE_BF16 && cfg->dtype != ASW_DTYPE_BF16) {
        asw_set_error("bf16 activations need a bf16 file; this one's weights are fp16 (convert with --dtype bf16)");
        return NULL;
    }
    const asw_backend *be = find_backend(opt->backend);
    if (be == NULL) return NULL;

    asw_model *m = calloc(1, sizeof *m);
    if (m == NULL) {
        asw_set_error("out of memory (model)");
        return NULL;
    }
    m->cfg = *cfg;
    m->backend = be;
    m->refs = 1;
    m->layers = calloc((size_t)cfg->n_layers, sizeof *m->layers);
    if (m->layers == NULL) {
        asw_set_error("out of memory (layer table)");
        model_release(m);
        return NULL;
    }
    m->w.layers = m->layers;
    if (!bind_tensors(m, data, data_nbytes, tensors, n_tensors)) {
        model_release(m);
        return NULL;
    }
    m->bmodel = be->model_init(&m->cfg, &m->w, data, data_nbytes, opt);
    if (m->bmodel == NULL) {
        model_release(m);
        return NULL;
    }
    snprintf(m->describe, sizeof m->describe, "%s", be->describe(m->bmodel));
    return m;
}

void asw_model_free(asw_model *m) {
    if (m != NULL) model_release(m);
}

const char *asw_model_describe(const asw_model *m) { return m == NULL ? "" : m->describe; }

int32_t asw_model_lookahead(const asw_model *m) { return m == NULL ? 0 : m->backend->lookahead; }
int32_t asw_model_prefill_block(const asw_model *m) { return m == NULL ? 0 : m->backend->prefill_block; }

/* ---------------------------------------------------------------------------------------------------------
 * sessions
 */

asw_session *asw_session_new(asw_model *model, const asw_session_options *opt) {
    clear_error();
    if (model == NULL || opt == NULL) {
        asw_set_error("asw_session_new: model and opt must not be NULL");
        return NULL;
    }
    if (opt->abi_version != ASW_ABI_VERSION) {
        asw_set_error("asw_session_new: options abi_version %d, this library speaks %d", (int)opt->abi_version,
                      ASW_ABI_VERSION);
        return NULL;
    }
    if (opt->max_len < 1 || opt->max_len > (1 << 24)) {
        asw_set_error("asw_session_new: max_len %d is outside [1, %d]", (int)opt->max_len, 1 << 24);
        return NULL;
    }
    asw_session_options resolved = *opt;
    if (resolved.kv_dtype == 0) resolved.kv_dtype = model->cfg.dtype;
    if (resolved.kv_dtype != model->cfg.dtype) {
        asw_set_error("asw_session_new: kv_dtype %d is not supported; the KV cache uses the weight dtype (%d)",
                      (int)resolved.kv_dtype, (int)model->cfg.dtype);
        return NULL;
    }
    asw_session *s = calloc(1, sizeof *s);
    if (s == NULL) {
        asw_set_error("out of memory (session)");
        return NULL;
    }
    s->model = model;
    s->max_len = opt->max_len;
    s->bsession = model->backend->session_init(model->bmodel, &resolved);
    if (s->bsession == NULL) {
        free(s);
        return NULL;
    }
    pthread_mutex_lock(&refs_lock);
    model->refs++;
    pthread_mutex_unlock(&refs_lock);
    return s;
}

void asw_session_free(asw_session *s) {
    if (s == NULL) return;
    asw_model *m = s->model;
    m->backend->session_free(s->bsession);
    free(s);
    model_release(m);
}

int32_t asw_session_reset(asw_session *s) {
    clear_error();
    if (s == NULL) {
        asw_set_error("asw_session_reset: session is NULL");
        return ASW_ERR_ARG;
    }
    int32_t rc = s->model->backend->session_reset(s->bsession);
    s->pos = 0;
    s->pending = 0;
    s->primed = 0;
    return rc;
}

int32_t asw_session_pos(const asw_session *s) { return s == NULL ? 0 : s->pos; }

/* The output buffers a logits mode needs (ALL only when allow_all). */
static int check_outputs(const char *fn, int32_t vocab, int32_t logits_mode, int32_t k, const float *logits,
                         const int32_t *topk_ids) {
    switch (logits_mode) {
    case ASW_LOGITS_NONE: return 1;
    case ASW_LOGITS_LAST:
    case ASW_LOGITS_ALL:
        if (logits != NULL) return 1;
        asw_set_error("%s: logits is NULL but logits_mode is %d", fn, (int)logits_mode);
        return 0;
    case ASW_LOGITS_TOPK:
        if (logits != NULL && topk_ids != NULL && k >= 1 && k <= vocab) return 1;
        asw_set_error("%s: top-k needs logits and topk_ids buffers and 1 <= k <= vocab %d (got k = %d)", fn,
                      (int)vocab, (int)k);
        return 0;
    default:
        asw_set_error("%s: logits_mode %d is not none (0), last (1), all (2) or topk (3)", fn, (int)logits_mode);
        return 0;
    }
}

static int check_tokens(const int32_t *tokens, int32_t n, int32_t vocab) {
    for (int32_t i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= vocab) {
            asw_set_error("token id %d at index %d is outside the vocabulary [0, %d)", (int)tokens[i], (int)i,
                          (int)vocab);
            return 0;
        }
    return 1;
}

int32_t asw_forward(asw_session *s, const int32_t *tokens, int32_t n, int32_t logits_mode, int32_t k,
                    float *logits, int32_t *topk_ids, int32_t *argmax) {
    clear_error();
    if (s == NULL || tokens == NULL || n <= 0) {
        asw_set_error("asw_forward: need a session and n >= 1 tokens (got n = %d)", (int)n);
        return ASW_ERR_ARG;
    }
    if (!check_outputs("asw_forward", s->model->cfg.vocab, logits_mode, k, logits, topk_ids)) return ASW_ERR_ARG;
    if (s->pending > 0) {
        asw_set_error("asw_forward: %d queued decode steps must be read or discarded first", (int)s->pending);
        return ASW_ERR_STATE;
    }
    if (n > s->max_len - s->pos) {
        asw_set_error("context full: %d positions in the cache + %d new > max_len %d", (int)s->pos, (int)n,
                      (int)s->max_len);
        return ASW_ERR_CONTEXT;
    }
    if (!check_tokens(tokens, n, s->model->cfg.vocab)) return ASW_ERR_TOKEN;
    asw_outputs out = {logits_mode, k, logits, topk_ids, argmax};
    int32_t rc = s->model->backend->forward(s->bsession, tokens, n, s->pos, &out);
    if (rc != 0) {
        s->primed = 0; /* the kept argmax is not trustworthy after a failed step */
        return rc;
    }
    s->pos += n;
    s->primed = 1;
    return 0;
}

int32_t asw_prefill(asw_session *s, const int32_t *tokens, int32_t n, int32_t logits_mode, float *logits,
                    int32_t *argmax) {
    if (logits_mode == ASW_LOGITS_TOPK) {
        asw_set_error("asw_prefill: use asw_forward for top-k");
        return ASW_ERR_ARG;
    }
    return asw_forward(s, tokens, n, logits_mode, 0, logits, NULL, argmax);
}

int32_t asw_decode(asw_session *s, int32_t token, int32_t logits_mode, float *logits, int32_t *argmax) {
    return asw_prefill(s, &token, 1, logits_mode, logits, argmax);
}

int32_t asw_decode_enqueue(asw_session *s) {
    clear_error();
    if (s == NULL) {
        asw_set_error("asw_decode_enqueue: session is NULL");
        return ASW_ERR_ARG;
    }
    if (!s->primed) {
        asw_set_error("asw_decode_enqueue: no token to continue from; run asw_forward first");
        return ASW_ERR_STATE;
    }
    if (s->pending >= ASW_MAX_PENDING) {
        asw_set_error("asw_decode_enqueue: %d steps already queued (the most is %d)", (int)s->pending,
                      ASW_MAX_PENDING);
        return ASW_ERR_STATE;
    }
    if (s->pos >= s->max_len) {
        asw_set_error("context full: %d positions in the cache + 1 new > max_len %d", (int)s->pos, (int)s->max_len);
        return ASW_ERR_CONTEXT;
    }
    int32_t rc = s->model->backend->decode_enqueue(s->bsession, s->pos);
    if (rc != 0) {
        s->primed = 0;
        return rc;
    }
    s->pos++;
    s->pending++;
    return 0;
}

int32_t asw_decode_read(asw_session *s, int32_t *token) {
    clear_error();
    if (s == NULL || token == NULL) {
        asw_set_error("asw_decode_read: session and token must not be NULL");
        return ASW_ERR_ARG;
    }
    if (s->pending == 0) {
        asw_set_error("asw_decode_read: no decode step is queued");
        return ASW_ERR_STATE;
    }
    int32_t rc = s->model->backend->decode_read(s->bsession, token);
    s->pending--;
    if (rc != 0) {
        /* a failed step poisons the steps after it: drop them and their positions */
        s->model->backend->decode_discard(s->bsession);
        s->pos -= s->pending + 1;
        s->pending = 0;
        s->primed = 0;
    }
    return rc;
}

int32_t asw_decode_discard(asw_session *s) {
    clear_error();
    if (s == NULL) {
        asw_set_error("asw_decode_discard: session is NULL");
        return ASW_ERR_ARG;
    }
    if (s->pending == 0) return 0;
    int32_t rc = s->model->backend->decode_discard(s->bsession);
    s->pos -= s->pending;
    s->pending = 0;
    s->primed = 0; /* the kept argmax belongs to a dropped step */
    return rc;
}

int32_t asw_forward_batch(asw_session *const *sessions, int32_t n, const int32_t *tokens, int32_t logits_mode,
                          int32_t k, float *logits, int32_t *topk_ids, int32_t *argmax) {
    clear_error();
    if (sessions == NULL || tokens == NULL || n < 1 || n > ASW_MAX_BATCH) {
        asw_set_error("asw_forward_batch: need 1 <= n <= %d sessions and their tokens (got n = %d)", ASW_MAX_BATCH,
                      (int)n);
        return ASW_ERR_ARG;
    }
    if (logits_mode == ASW_LOGITS_ALL) {
        asw_set_error("asw_forward_batch: one token per session: use logits_mode last (1), not all (2)");
        return ASW_ERR_ARG;
    }
    asw_model *m = sessions[0] == NULL ? NULL : sessions[0]->model;
    if (m == NULL || !check_outputs("asw_forward_batch", m->cfg.vocab, logits_mode, k, logits, topk_ids))
        return ASW_ERR_ARG;
    if (!check_tokens(tokens, n, m->cfg.vocab)) return ASW_ERR_TOKEN;
    void *bs[ASW_MAX_BATCH];   /* [n] */
    int32_t pos[ASW_MAX_BATCH]; /* [n] */
    for (int32_t i = 0; i < n; i++) {
        asw_session *s = sessions[i];
        if (s == NULL || s->model != m) {
            asw_set_error("asw_forward_batch: session %d is %s", (int)i, s == NULL ? "NULL" : "of another model");
            return ASW_ERR_ARG;
        }
        for (int32_t j = 0; j < i; j++)
            if (sessions[j] == s) {
                asw_set_error("asw_forward_batch: sessions %d and %d are the same session", (int)j, (int)i);
                return ASW_ERR_ARG;
            }
        if (s->pending > 0) {
            asw_set_error("asw_forward_batch: session %d has %d queued decode steps", (int)i, (int)s->pending);
            return ASW_ERR_STATE;
        }
        if (s->pos >= s->max_len) {
            asw_set_error("context full in session %d: %d positions in the cache + 1 new > max_len %d", (int)i,
                          (int)s->pos, (int)s->max_len);
            return ASW_ERR_CONTEXT;
        }
        bs[i] = s->bsession;
        pos[i] = s->pos;
    }
    int32_t rc = 0;
    if (m->backend->forward_batch != NULL) {
        asw_outputs out = {logits_mode, k, logits, topk_ids, argmax};
        rc = m->backend->forward_batch(bs, n, tokens, pos, &out);
    } else { /* a backend without batching: the same results one session at a time */
        size_t width = logits_mode == ASW_LOGITS_TOPK ? (size_t)k : (size_t)m->cfg.vocab;
        for (int32_t i = 0; rc == 0 && i < n; i++) {
            asw_outputs out = {logits_mode, k, logits ? logits + (size_t)i * width : NULL,
                               topk_ids ? topk_ids + (size_t)i * width : NULL, argmax ? argmax + i : NULL};
            rc = m->backend->forward(bs[i], tokens + i, 1, pos[i], &out);
        }
    }
    for (int32_t i = 0; i < n; i++) sessions[i]->primed = rc == 0;
    if (rc != 0) return rc;
    for (int32_t i = 0; i < n; i++) sessions[i]->pos++;
    return 0;
}
