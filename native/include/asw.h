/* asw.h — the one C ABI of the ascend-super native library.
 *
 * The caller (runtime/native.py) maps a .asw file, validates it, and hands this library a pointer to the
 * data region plus a config struct and a tensor table derived from the manifest. Weights are used in place
 * (cpu backend) or uploaded once (aclnn backend). All functions are thread-compatible, not thread-safe:
 * one session is driven by one caller thread. Errors: functions return NULL / a negative code and
 * asw_last_error() (thread-local) says what and where.
 */
#ifndef ASW_H
#define ASW_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define ASW_ABI_VERSION 1

/* The library is built with -fvisibility=hidden: only functions marked ASW_API are exported. */
#if defined(__GNUC__)
#define ASW_API __attribute__((visibility("default")))
#else
#define ASW_API
#endif

/* weight dtype of the data region */
enum asw_dtype { ASW_DTYPE_F16 = 1, ASW_DTYPE_BF16 = 2 };
/* storage layout of 2-D weights */
enum asw_layout { ASW_LAYOUT_ND = 0, ASW_LAYOUT_NZ = 1 };
/* rope scaling */
enum asw_rope_scaling { ASW_ROPE_NONE = 0, ASW_ROPE_LLAMA3 = 1 };
/* source element types of asw_cast */
enum asw_src_type { ASW_SRC_F32 = 0, ASW_SRC_F16 = 1, ASW_SRC_BF16 = 2 };
/* what decode/prefill return */
enum asw_logits_mode { ASW_LOGITS_NONE = 0, ASW_LOGITS_LAST = 1, ASW_LOGITS_ALL = 2 };

typedef struct asw_config {
    int32_t abi_version;      /* must be ASW_ABI_VERSION */
    int32_t dtype;            /* enum asw_dtype */
    int32_t layout;           /* enum asw_layout */
    int32_t n_layers;
    int32_t hidden;           /* model width */
    int32_t n_heads;          /* query heads */
    int32_t n_kv_heads;       /* key/value heads (GQA: n_heads % n_kv_heads == 0) */
    int32_t head_dim;
    int32_t ffn;              /* intermediate size */
    int32_t vocab;
    int32_t attn_bias;        /* 1: attn_qkv.bias present */
    int32_t tie_embeddings;   /* 1: output = token_embd */
    float rms_eps;
    float rope_theta;
    int32_t rope_scaling;     /* enum asw_rope_scaling */
    float rope_factor;        /* llama3: factor */
    float rope_low_freq_factor;
    float rope_high_freq_factor;
    int32_t rope_original_max_pos;
} asw_config;

/* One tensor of the data region: canonical name (docs/FORMAT.md), byte offset from the region start, size. */
typedef struct asw_tensor_ref {
    const char *name;
    uint64_t offset;
    uint64_t nbytes;
} asw_tensor_ref;

typedef struct asw_model asw_model;
typedef struct asw_session asw_session;

/* Last error of the calling thread ("" if none). Valid until the next call on this thread. */
ASW_API const char *asw_last_error(void);

/* Bitmask of SIMD kernels this build can use on this machine: 1 = AVX2+F16C+FMA, 2 = AVX-512, 4 = NEON. */
ASW_API int32_t asw_cpu_features(void);
/* Name of the kernel set picked at run time ("avx512", "avx2", "neon", "portable"). */
ASW_API const char *asw_kernel_name(void);

/* Open a model over `data` (the whole data region, `data_nbytes` long; must stay mapped until asw_model_free).
 * `backend` is "cpu" (others reserved). Every tensor is checked: present, inside the region, nbytes = shape x 2.
 * Returns NULL on error. */
ASW_API asw_model *asw_model_open(const void *data, uint64_t data_nbytes, const asw_config *cfg,
                          const asw_tensor_ref *tensors, int32_t n_tensors, const char *backend);
ASW_API void asw_model_free(asw_model *model);

/* A session owns the KV cache for `max_len` positions and a thread pool of `n_threads` (<= 0: all cores). */
ASW_API asw_session *asw_session_new(asw_model *model, int32_t max_len, int32_t n_threads);
ASW_API void asw_session_free(asw_session *s);
/* Forget all positions (the KV cache is reused). */
ASW_API void asw_session_reset(asw_session *s);
/* Number of positions already in the cache. */
ASW_API int32_t asw_session_pos(const asw_session *s);

/* Run `n` tokens at positions pos..pos+n-1 as one batch (prefill), appending to the KV cache.
 * logits_mode: NONE writes nothing to `logits`; LAST writes [vocab] floats for the last token; ALL writes
 * [n, vocab]. `argmax` (may be NULL) receives the argmax token of the last position.
 * Returns 0, or a negative code (context full, bad token id, ...) with asw_last_error() set. */
ASW_API int32_t asw_prefill(asw_session *s, const int32_t *tokens, int32_t n, int32_t logits_mode, float *logits,
                    int32_t *argmax);

/* One decode step for `token` at the current position: same as asw_prefill with n = 1. */
ASW_API int32_t asw_decode(asw_session *s, int32_t token, int32_t logits_mode, float *logits, int32_t *argmax);

/* Converter utility: cast n values of `src_type` (enum asw_src_type) to `dtype` (enum asw_dtype) u16 bits,
 * rounding to nearest even with the run-time kernels. Returns how many finite values overflowed to +-inf
 * (fp16 only) and stores in *nonfinite how many source values were NaN or +-inf (the caller decides whether
 * either is an error), or returns -1 with asw_last_error() set. */
ASW_API int64_t asw_cast(const void *src, int32_t src_type, uint16_t *dst, int32_t dtype, int64_t n,
                         int64_t *nonfinite);

#ifdef __cplusplus
}
#endif
#endif /* ASW_H */
