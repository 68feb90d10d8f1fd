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

#define ASW_ABI_VERSION 3

/* The library is built with -fvisibility=hidden: only functions marked ASW_API are exported. */
#if defined(__GNUC__)
#define ASW_API __attribute__((visibility("default")))
#else
#define ASW_API
#endif

/* weight dtype of the data region (also the KV-cache dtype) */
enum asw_dtype { ASW_DTYPE_F16 = 1, ASW_DTYPE_BF16 = 2 };
/* storage layout of one tensor */
enum asw_layout { ASW_LAYOUT_ND = 0, ASW_LAYOUT_NZ = 1 };
/* rope scaling */
enum asw_rope_scaling { ASW_ROPE_NONE = 0, ASW_ROPE_LLAMA3 = 1 };
/* source element types of asw_cast */
enum asw_src_type { ASW_SRC_F32 = 0, ASW_SRC_F16 = 1, ASW_SRC_BF16 = 2 };
/* what a forward call returns besides the argmax */
enum asw_logits_mode {
    ASW_LOGITS_NONE = 0, /* nothing: greedy decoding never copies logits */
    ASW_LOGITS_LAST = 1, /* [vocab] floats of the last position */
    ASW_LOGITS_ALL = 2,  /* [n, vocab] floats */
    ASW_LOGITS_TOPK = 3, /* the k largest logits of the last position, descending, and their token ids */
};

typedef struct asw_config {
    int32_t abi_version;      /* must be ASW_ABI_VERSION */
    int32_t dtype;            /* enum asw_dtype */
    int32_t layout;           /* enum asw_layout of the file (each tensor says its own in asw_tensor_ref) */
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

/* One tensor of the data region: canonical name (docs/FORMAT.md), byte offset from the region start, size,
 * storage layout and logical shape (HuggingFace orientation: [out, in] for matrices, [n] for vectors). */
typedef struct asw_tensor_ref {
    const char *name;
    uint64_t offset;
    uint64_t nbytes;
    int32_t layout;    /* enum asw_layout */
    int32_t ndim;      /* 1 or 2 */
    int64_t shape[2];  /* shape[1] unused when ndim == 1 */
} asw_tensor_ref;

/* How a model is opened. Zero-initialise, then set what you need. */
typedef struct asw_open_options {
    int32_t abi_version; /* must be ASW_ABI_VERSION */
    const char *backend; /* "cpu" (built in) or "aclnn" (libasw_aclnn.so, loaded on demand); NULL = "cpu" */
    int32_t device_id;   /* aclnn: the NPU to use (aclrtSetDevice); cpu: ignored */
    int32_t eager;       /* aclnn: 1 = op-by-op decode, 0 = captured graph replay (default); cpu: ignored */
    const char *soc_families; /* aclnn: "/"-separated SoC name prefixes the file's FRACTAL_NZ layout was made for
                               * (manifest requires.soc, e.g. "ascend910b/ascend910_93"), matched without case
                               * against aclrtGetSocName() before anything is uploaded; NULL or "": any */
    int32_t activations; /* cpu: 0 = every matmul takes its f32 activations as they are (the default, which matches
                          * transformers' f32 reference); ASW_DTYPE_BF16 = each matmul's input is rounded to bf16
                          * first (bf16 files only, whatever the backend), so prefill can run on VDPBF16PS where the
                          * CPU has AVX512_BF16; decode rounds the same way, so a prefill multiplies the same numbers
                          * as step-by-step decode (the results still differ by summation order, which rounding
                          * can amplify). aclnn: ignored (its activations are in the weight dtype already). */
} asw_open_options;

/* How a session is made. Zero-initialise, then set what you need. */
typedef struct asw_session_options {
    int32_t abi_version; /* must be ASW_ABI_VERSION */
    int32_t max_len;     /* KV-cache positions */
    int32_t n_threads;   /* cpu: worker threads (<= 0: every core this process may run on); aclnn: ignored */
    int32_t kv_dtype;    /* enum asw_dtype of the KV cache; 0 = the weight dtype (the only one supported now) */
} asw_session_options;

typedef struct asw_model asw_model;
typedef struct asw_session asw_session;

/* Last error of the calling thread ("" if none). Valid until the next call on this thread. */
ASW_API const char *asw_last_error(void);

/* Bitmask of SIMD kernels this build can use on this machine: 1 = AVX2+F16C+FMA, 2 = AVX-512, 4 = NEON, 8 = AVX-512
 * with AVX512_BF16 (VDPBF16PS, for bf16 activations). */
ASW_API int32_t asw_cpu_features(void);
/* Name of the kernel set picked at run time ("avx512", "avx2", "neon", "portable"). */
ASW_API const char *asw_kernel_name(void);

/* Open a model over `data` (the whole data region, `data_nbytes` long; must stay mapped until asw_model_free).
 * Every tensor is checked: present once, the shape the config implies, inside the region, nbytes = its layout's
 * size; the backend then checks the layouts it can run. Returns NULL on error. */
ASW_API asw_model *asw_model_open(const void *data, uint64_t data_nbytes, const asw_config *cfg,
                                  const asw_tensor_ref *tensors, int32_t n_tensors, const asw_open_options *opt);
/* Frees the model once its last session is gone: sessions keep their model alive, so any order is safe. */
ASW_API void asw_model_free(asw_model *model);
/* What the model runs on, e.g. "cpu avx512" or "aclnn Ascend910_9391 device 0 graph". */
ASW_API const char *asw_model_describe(const asw_model *model);
/* Decode steps worth queuing before reading the oldest: 1 when the backend runs steps asynchronously
 * (aclnn), 0 when asw_decode_enqueue computes the step itself (cpu). */
ASW_API int32_t asw_model_lookahead(const asw_model *model);
/* Prompt positions the backend runs per prefill pass (cpu 64, aclnn 256). Prefill calls whose lengths are
 * multiples of it (the last one excepted) give the logits one call over the whole prompt gives, bit for bit. */
ASW_API int32_t asw_model_prefill_block(const asw_model *model);

ASW_API asw_session *asw_session_new(asw_model *model, const asw_session_options *opt);
ASW_API void asw_session_free(asw_session *s);
/* Forget all positions (the KV cache is reused) and any pending decode steps. */
ASW_API int32_t asw_session_reset(asw_session *s);
/* Number of positions in the cache, counting decode steps enqueued and not yet read. */
ASW_API int32_t asw_session_pos(const asw_session *s);

/* Run `n` tokens at positions pos..pos+n-1 as one batch (prefill, or a decode step with a host token),
 * appending to the KV cache. logits_mode NONE / LAST ([vocab]) / ALL ([n, vocab] into `logits`) / TOPK (`k`
 * values into `logits`, descending, their ids into `topk_ids`). `argmax` (may be NULL) receives the argmax
 * of the last position; the backend also keeps it as the input of the next asw_decode_enqueue.
 * NaN logits are an error (ASW_ERR_NUMERIC), never token 0.
 * Returns 0, or a negative code (context full, bad token id, ...) with asw_last_error() set. */
ASW_API int32_t asw_forward(asw_session *s, const int32_t *tokens, int32_t n, int32_t logits_mode, int32_t k,
                            float *logits, int32_t *topk_ids, int32_t *argmax);

/* Compatibility wrappers: asw_forward without top-k. */
ASW_API int32_t asw_prefill(asw_session *s, const int32_t *tokens, int32_t n, int32_t logits_mode, float *logits,
                            int32_t *argmax);
ASW_API int32_t asw_decode(asw_session *s, int32_t token, int32_t logits_mode, float *logits, int32_t *argmax);

/* One decode step for n distinct sessions of the same model at once (continuous batching): sessions[i] takes
 * tokens[i] at its own next position, so each weight row is read once for the whole batch. logits_mode NONE,
 * LAST ([n, vocab] into `logits`) or TOPK ([n, k] values into `logits`, [n, k] ids into `topk_ids`); `argmax`
 * ([n], may be NULL) gets each row's argmax, which each session also keeps for asw_decode_enqueue. The rows give
 * the same results as n separate asw_forward calls. 1 <= n <= ASW_MAX_BATCH. */
#define ASW_MAX_BATCH 64
ASW_API int32_t asw_forward_batch(asw_session *const *sessions, int32_t n, const int32_t *tokens,
                                  int32_t logits_mode, int32_t k, float *logits, int32_t *topk_ids, int32_t *argmax);

/* Pipelined greedy decoding. asw_decode_enqueue queues one step whose input is the argmax of the previous step
 * (or of the last asw_forward), kept where the backend computes (on the device for aclnn: no host-to-device
 * copy). asw_decode_read returns the token of the oldest queued step, waiting for it. Queue step t+1 before
 * reading token t so the device never waits for the host; after a stop condition, asw_decode_discard drops the
 * steps still queued (their positions are given back). At most ASW_MAX_PENDING steps may be queued. */
#define ASW_MAX_PENDING 4
ASW_API int32_t asw_decode_enqueue(asw_session *s);
ASW_API int32_t asw_decode_read(asw_session *s, int32_t *token);
ASW_API int32_t asw_decode_discard(asw_session *s);

/* Command-line guard: a SIGBUS whose fault address lies in [begin, begin + nbytes) (a mapped .asw file truncated
 * under us) writes `message` to stderr and _exit(exit_code)s; any other SIGBUS keeps the default action. One
 * guarded range per process. Returns 0, or -1 (message over 1023 bytes, sigaction failed, no POSIX signals). */
ASW_API int32_t asw_exit_on_sigbus(const void *begin, uint64_t nbytes, const char *message, int32_t exit_code);

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
