/* backend_aclnn.cpp — the ACLNN backend: the whole forward pass on an Ascend NPU through AscendCL + ACLNN.
 *
 * Built as its own library (libasw_aclnn.so) that model.c opens with dlopen only when "aclnn" is asked for; CANN
 * itself is opened with dlopen too (cann_loader.cpp), so nothing here is linked against CANN.
 *
 * Device memory (design: native/src/aclnn/README.md):
 *   model:   ONE allocation holding a copy of the file's data region (ONE logical upload, <= 256 MiB pieces);
 *            aclTensor descriptors of every weight created once, as views at each tensor's offset.
 *   session: ONE allocation for the KV cache [n_layers, 2, max_len, n_kv_heads * head_dim]; ONE for activations
 *            and tables; ONE workspace sized at session start by phase 1 of every operator at its largest shape;
 *            a small ring of pinned host slots for the decode tokens.
 * Decode keeps its input token, position and attention mask on the device, so a step needs no host-to-device copy:
 * in graph mode (the default) one captured step per KV-length bucket is replayed; eager mode runs the same
 * operators one by one. Prefill is eager, batched in chunks, with a host-built causal mask.
 */
#include <cstddef>
#include <algorithm>
#include <cctype>
#include <atomic>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

extern "C" {
#include "backend.h"
#include "rope.h"
}
#include "cann_loader.h"

namespace {

/* ------------------------------------------------------------------------------------------------------------
 * errors: every CANN return code goes through acl_check; backend entry points turn exceptions into host errors
 * ------------------------------------------------------------------------------------------------------------ */

const asw_host *g_host = nullptr;
std::atomic<const cann_api *> g_api{nullptr}; /* the resolved CANN functions (after the first model_init) */
inline const cann_api *api() { return g_api.load(std::memory_order_acquire); }
#define A api()

struct backend_error : std::runtime_error {
    int32_t code;
    backend_error(int32_t c, const std::string &m) : std::runtime_error(m), code(c) {}
};

std::string format(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
std::string format(const char *fmt, ...) {
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return buf;
}

[[noreturn]] void fail(int32_t code, const std::string &message) { throw backend_error(code, message); }

/* a failed CANN call: its name, the code and the runtime's own words */
void acl_check(int32_t err, const char *what) {
    if (err == 0) return;
    const char *msg = A->aclGetRecentErrMsg();
    fail(ASW_ERR_BACKEND, format("aclnn backend: %s failed with error %d%s%.700s", what, (int)err,
                                 msg != nullptr && *msg != '\0' ? ": " : "", msg != nullptr ? msg : ""));
}
#define ACL_CHECK(fn, ...) acl_check(A->fn(__VA_ARGS__), #fn)

template <class F>
int32_t guarded(F &&f) {
    try {
        return f();
    } catch (const backend_error &e) {
        g_host->set_error(e.what());
        return e.code;
    } catch (const std::bad_alloc &) {
        g_host->set_error("aclnn backend: out of host memory");
        return ASW_ERR_NOMEM;
    } catch (const std::exception &e) {
        g_host->set_error(format("aclnn backend: %.900s", e.what()).c_str());
        return ASW_ERR_BACKEND;
    }
}

/* ------------------------------------------------------------------------------------------------------------
 * host-side number conversions (the rope table goes up in the weight dtype; logits come back in it)
 * ------------------------------------------------------------------------------------------------------------ */

uint16_t f32_to_bf16(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);                                           /* round to nearest even */
    return (uint16_t)(u >> 16);
}

uint16_t f32_to_f16(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    uint32_t sign = (u >> 16) & 0x8000u, abs = u & 0x7fffffffu;
    if (abs > 0x7f800000u) return (uint16_t)(sign | 0x7e00u);
    if (abs >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* rounds to >= 65520: inf */
    if (abs < 0x38800000u) {                                  /* subnormal or zero in f16 */
        float a;
        std::memcpy(&a, &abs, 4);
        return (uint16_t)(sign | (uint32_t)std::nearbyint(a * 16777216.0f)); /* a / 2^-24, ties to even */
    }
    uint32_t m = abs + 0xc8000fffu + ((abs >> 13) & 1u); /* rebias 127 -> 15 and round to nearest even */
    return (uint16_t)(sign | (m >> 13));
}

float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu, u;
    if (e == 0) {
        float f = (float)m * (1.0f / 16777216.0f);
        return sign ? -f : f;
    }
    if (e == 31) u = sign | 0x7f800000u | (m << 13);
    else u = sign | ((e + 112) << 23) | (m << 13);
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

/* ------------------------------------------------------------------------------------------------------------
 * descriptors
 * ------------------------------------------------------------------------------------------------------------ */

/* An ND view of device memory: `dims` with `strides` (elements; empty = contiguous) starting `offset` elements
 * after `base`. Storage is the 1-D element span from base that the view touches. */
aclTensor *make_nd(void *base, aclDataType dt, const std::vector<int64_t> &dims, std::vector<int64_t> strides = {},
                   int64_t offset = 0) {
    if (strides.empty()) {
        strides.assign(dims.size(), 1);
        for (size_t i = dims.size(); i-- > 1;) strides[i - 1] = strides[i] * dims[i];
    }
    int64_t span = offset + 1;
    for (size_t i = 0; i < dims.size(); i++) span += (dims[i] - 1) * strides[i];
    aclTensor *t = A->aclCreateTensor(dims.data(), dims.size(), dt, strides.data(), offset, ACL_FORMAT_ND, &span, 1,
                                      base);
    if (t == nullptr) fail(ASW_ERR_BACKEND, "aclnn backend: aclCreateTensor failed for an ND view");
    return t;
}

/* The descriptors of one call, destroyed together (after phase 2 has been enqueued, as llama.cpp does). */
struct tensors {
    std::vector<aclTensor *> owned;
    std::vector<aclTensorList *> lists;
    tensors() = default;
    tensors(const tensors &) = delete;
    tensors &operator=(const tensors &) = delete;
    ~tensors() {
        for (aclTensorList *l : lists) A->aclDestroyTensorList(l); /* destroys its member too */
        for (aclTensor *t : owned) A->aclDestroyTensor(t);
    }
    aclTensor *own(aclTensor *t) { /* destroyed with the others */
        try {
            owned.push_back(t);
        } catch (...) {
            A->aclDestroyTensor(t);
            throw;
        }
        return t;
    }
    aclTensor *nd(void *base, aclDataType dt, const std::vector<int64_t> &dims, std::vector<int64_t> strides = {},
                  int64_t offset = 0) {
        owned.reserve(owned.size() + 1);
        aclTensor *t = make_nd(base, dt, dims, std::move(strides), offset);
        owned.push_back(t);
        return t;
    }
    /* a one-tensor list (FIA's key/value); the list owns the tensor */
    aclTensorList *list1(void *base, aclDataType dt, const std::vector<int64_t> &dims, int64_t offset) {
        lists.reserve(lists.size() + 1);
        aclTensor *t = make_nd(base, dt, dims, {}, offset);
        const aclTensor *members[1] = {t};
        aclTensorList *l = A->aclCreateTensorList(members, 1);
        if (l == nullptr) {
            A->aclDestroyTensor(t);
            fail(ASW_ERR_BACKEND, "aclnn backend: aclCreateTensorList failed");
        }
        lists.push_back(l);
        return l;
    }
};

/* a matmul weight: the transposed view [K, N] (strides [1, K]) of the row-major [N, K] = [out, in] tensor, ND or
 * FRACTAL_NZ (storage [ceil(K/16), ceil(N/16), 16, 16], docs/FORMAT.md §4) */
struct matrix {
    aclTensor *t = nullptr; /* the [K, N] view of an ND weight, made once; NULL for NZ (weight_nz: one per call) */
    bool nz = false;
    int64_t n = 0, k = 0; /* out, in */
    void *at = nullptr;   /* the weight's first byte on the device */
};

/* ------------------------------------------------------------------------------------------------------------
 * model
 * ------------------------------------------------------------------------------------------------------------ */

struct layer {
    aclTensor *attn_norm = nullptr, *qkv_bias = nullptr, *ffn_norm = nullptr;
    matrix qkv, o, gate_up, down;
};

struct aclnn_model {
    asw_config cfg{};
    int32_t device = 0;
    bool eager = false;
    bool device_set = false;
    aclrtContext ctx = nullptr;
    aclDataType dt = ACL_FLOAT16;
    void *region = nullptr; /* device copy of the data region */
    uint64_t region_nbytes = 0;
    aclTensor *token_embd = nullptr, *output_norm = nullptr;
    matrix output;
    std::vector<layer> layers;
    aclScalar *one_f = nullptr; /* FLOAT 1.0: Addmm beta and alpha */
    aclScalar *one_i = nullptr; /* INT32 1: the position increment and its alpha */
    std::vector<float> inv_freq; /* [head_dim / 2] */
    std::string describe;

    void make_current() const { ACL_CHECK(aclrtSetCurrentContext, ctx); }
    ~aclnn_model();
};

/* destroy what was created; safe on a partly built model */
aclnn_model::~aclnn_model() {
    if (A == nullptr) return;
    if (ctx != nullptr) A->aclrtSetCurrentContext(ctx);
    auto destroy_matrix = [](matrix &m) {
        if (m.t != nullptr) A->aclDestroyTensor(m.t);
    };
    for (layer &l : layers) {
        for (aclTensor *t : {l.attn_norm, l.qkv_bias, l.ffn_norm})
            if (t != nullptr) A->aclDestroyTensor(t);
        for (matrix *m : {&l.qkv, &l.o, &l.gate_up, &l.down}) destroy_matrix(*m);
    }
    if (token_embd != nullptr) A->aclDestroyTensor(token_embd);
    if (output_norm != nullptr) A->aclDestroyTensor(output_norm);
    destroy_matrix(output);
    if (one_f != nullptr) A->aclDestroyScalar(one_f);
    if (one_i != nullptr) A->aclDestroyScalar(one_i);
    if (region != nullptr) A->aclrtFree(region);
    if (ctx != nullptr) A->aclrtDestroyContext(ctx);
    if (device_set) A->aclrtResetDevice(device);
}

aclTensor *vector_view(const aclnn_model &m, const asw_weight &w, const char *what) {
    if (w.layout != ASW_LAYOUT_ND)
        fail(ASW_ERR_ARG, format("aclnn backend: %s must be ND (the file says NZ)", what));
    return make_nd(m.region, m.dt, {w.rows}, {}, (int64_t)(w.offset / 2));
}

/* The descriptor of an NZ weight: FRACTAL_NZ storage of the physical row-major [N, K] matrix, viewed as its transpose
 * [K, N]. Made for each call and destroyed after it: aclnnMatmulWeightNz rewrites the view of the mat2 it is given
 * to [N, K] (ops-nn aclnn_matmul.cpp, SetViewShape through a const_cast), so a descriptor kept for the next call
 * would be refused there (K differs) unless the matrix is square. */
aclTensor *weight_nz(const matrix &w, aclDataType dt) {
    int64_t dims[2] = {w.k, w.n}, strides[2] = {1, w.k};
    int64_t storage[4] = {(w.k + 15) / 16, (w.n + 15) / 16, 16, 16};
    aclTensor *t = A->aclCreateTensor(dims, 2, dt, strides, 0, ACL_FORMAT_FRACTAL_NZ, storage, 4, w.at);
    if (t == nullptr) fail(ASW_ERR_BACKEND, "aclnn backend: aclCreateTensor failed for a weight");
    return t;
}

matrix matrix_view(const aclnn_model &m, const asw_weight &w) {
    matrix r;
    r.n = w.rows;
    r.k = w.cols;
    r.nz = w.layout == ASW_LAYOUT_NZ;
    r.at = static_cast<char *>(m.region) + w.offset; /* 512-aligned: the storage starts at the tensor */
    if (r.nz) return r;
    int64_t dims[2] = {r.k, r.n}, strides[2] = {1, r.k}, storage[2] = {r.n, r.k};
    r.t = A->aclCreateTensor(dims, 2, m.dt, strides, 0, ACL_FORMAT_ND, storage, 2, r.at);
    if (r.t == nullptr) fail(ASW_ERR_BACKEND, "aclnn backend: aclCreateTensor failed for a weight");
    return r;
}

/* open CANN (once per process; every caller gets the same table) */
void ensure_api() {
    if (A != nullptr) return;
    std::string why;
    const cann_api *loaded = cann_load(&why);
    if (loaded == nullptr) fail(ASW_ERR_BACKEND, "backend 'aclnn' cannot run here: " + why);
    g_api.store(loaded, std::memory_order_release);
}

/* aclInit may run once per process; a repeated call answers ACL_ERROR_REPEAT_INITIALIZE, which is fine */
void init_runtime() {
    int32_t rc = A->aclInit(nullptr);
    if (rc != ACL_SUCCESS && rc != ACL_ERROR_REPEAT_INITIALIZE) acl_check(rc, "aclInit");
}

/* Whether SoC name `soc` starts (ignoring case) with one of the "/"-separated prefixes in `families`. */
bool soc_in_families(const char *soc, const char *families) {
    if (soc == nullptr) return false;
    auto lower = [](std::string text) {
        for (auto &ch : text) ch = (char)std::tolower((unsigned char)ch);
        return text;
    };
    const std::string name = lower(soc), all = lower(families);
    for (size_t start = 0; start <= all.size();) {
        size_t end = std::min(all.find('/', start), all.size());
        if (end > start && name.compare(0, end - start, all, start, end - start) == 0) return true;
        start = end + 1;
    }
    return false;
}

void *model_init(const asw_config *cfg, const asw_weights *w, const void *data, uint64_t data_nbytes,
                 const asw_open_options *opt) {
    void *result = nullptr;
    guarded([&]() -> int32_t {
        ensure_api();
        if (cfg->dtype != ASW_DTYPE_F16 && cfg->dtype != ASW_DTYPE_BF16)
            fail(ASW_ERR_ARG, format("aclnn backend: weight dtype %d is not fp16 or bf16", (int)cfg->dtype));
        if (cfg->head_dim % 2 != 0)
            fail(ASW_ERR_ARG, format("aclnn backend: head_dim %d is odd; rotary embedding needs it even",
                                     (int)cfg->head_dim));
        if (w->token_embd.layout != ASW_LAYOUT_ND)
            fail(ASW_ERR_ARG, "aclnn backend: token_embd.weight must be ND (the embedding gather reads rows)");
        auto m = std::make_unique<aclnn_model>();
        m->cfg = *cfg;
        m->device = opt->device_id;
        m->eager = opt->eager != 0;
        m->dt = cfg->dtype == ASW_DTYPE_F16 ? ACL_FLOAT16 : ACL_BF16;
        m->inv_freq.resize((size_t)(cfg->head_dim / 2));
        asw_rope_inv_freq(cfg, m->inv_freq.data());

        init_runtime();
        uint32_t count = 0;
        ACL_CHECK(aclrtGetDeviceCount, &count);
        if (opt->device_id < 0 || (uint32_t)opt->device_id >= count)
            fail(ASW_ERR_ARG, format("aclnn backend: device %d does not exist (this machine has %u NPU%s)",
                                     (int)opt->device_id, count, count == 1 ? "" : "s"));
        ACL_CHECK(aclrtSetDevice, m->device);
        m->device_set = true;
        ACL_CHECK(aclrtCreateContext, &m->ctx, m->device);
        m->make_current();
        const char *soc = A->aclrtGetSocName();
        if (opt->soc_families != nullptr && opt->soc_families[0] != '\0' && !soc_in_families(soc, opt->soc_families))
            fail(ASW_ERR_ARG, format("aclnn backend: the file's FRACTAL_NZ layout was made for SoC family %s; this "
                                     "device is %s: convert it again for this device (or use --layout nd)",
                                     opt->soc_families, soc != nullptr ? soc : "(unknown soc)"));

        /* ONE allocation for the whole data region and ONE logical upload of it, in pieces of <= 256 MiB */
        m->region_nbytes = data_nbytes;
        ACL_CHECK(aclrtMalloc, &m->region, (size_t)data_nbytes, ACL_MEM_MALLOC_HUGE_FIRST);
        const uint64_t piece = 256ull << 20;
        for (uint64_t off = 0; off < data_nbytes; off += piece) {
            uint64_t n = std::min(piece, data_nbytes - off);
            ACL_CHECK(aclrtMemcpy, static_cast<char *>(m->region) + off, (size_t)(data_nbytes - off),
                      static_cast<const char *>(data) + off, (size_t)n, ACL_MEMCPY_HOST_TO_DEVICE);
        }

        /* descriptors, once: views into the device region at each tensor's offset */
        m->token_embd = make_nd(m->region, m->dt, {w->token_embd.rows, w->token_embd.cols}, {},
                                (int64_t)(w->token_embd.offset / 2));
        m->output_norm = vector_view(*m, w->output_norm, "output_norm.weight");
        m->output = matrix_view(*m, w->output);
        m->layers.resize((size_t)cfg->n_layers);
        for (int l = 0; l < cfg->n_layers; l++) {
            const asw_layer_weights &lw = w->layers[l];
            layer &L = m->layers[(size_t)l];
            L.attn_norm = vector_view(*m, lw.attn_norm, "attn_norm.weight");
            L.ffn_norm = vector_view(*m, lw.ffn_norm, "ffn_norm.weight");
            if (lw.attn_qkv_bias.host != nullptr) L.qkv_bias = vector_view(*m, lw.attn_qkv_bias, "attn_qkv.bias");
            L.qkv = matrix_view(*m, lw.attn_qkv);
            L.o = matrix_view(*m, lw.attn_output);
            L.gate_up = matrix_view(*m, lw.ffn_gate_up);
            L.down = matrix_view(*m, lw.ffn_down);
        }
        float one_f = 1.0f;
        int32_t one_i = 1;
        m->one_f = A->aclCreateScalar(&one_f, ACL_FLOAT);
        m->one_i = A->aclCreateScalar(&one_i, ACL_INT32);
        if (m->one_f == nullptr || m->one_i == nullptr) fail(ASW_ERR_BACKEND, "aclnn backend: aclCreateScalar failed");
        m->describe = format("aclnn %s device %d %s", soc != nullptr ? soc : "(unknown soc)", (int)m->device,
                             m->eager ? "eager" : "graph");
        result = m.release();
        return 0;
    });
    return result;
}

void model_free(void *bm) {
    guarded([&]() -> int32_t {
        delete static_cast<aclnn_model *>(bm);
        return 0;
    });
}

const char *model_describe(void *bm) { return static_cast<aclnn_model *>(bm)->describe.c_str(); }

/* ------------------------------------------------------------------------------------------------------------
 * session
 * ------------------------------------------------------------------------------------------------------------ */

enum { PREFILL_CHUNK = 256, FIRST_BUCKET = 256 };
constexpr int64_t kNoLimit = 2147483647; /* FIA pre/next tokens: no band */

/* how a pass over the layers runs */
enum class pass { prefill, decode };
enum class mode { run, size };

/* What one decode step leaves for the host, read in one copy: the token and its logit, each at the start of a 32-byte
 * block of its own. Two ops write them (ArgMax, then Embedding), and a vector core moves data between its buffer and
 * device memory in 32-byte blocks; how a given op writes an output narrower than a block is not documented, so no
 * op's output shares a block with another's, and each starts 32-byte aligned (aclCreateTensor's documentation asks for
 * 32-byte-aligned tensor data). */
enum { TOKEN_BLOCK = 32 };
struct token_slot {
    int32_t token;  /* ArgMax of the last logits */
    uint8_t pad0[TOKEN_BLOCK - sizeof(int32_t)];
    uint16_t logit; /* the logit at `token`, fp16 or bf16 bits */
    uint8_t pad1[TOKEN_BLOCK - sizeof(uint16_t)];
};
static_assert(offsetof(token_slot, logit) == TOKEN_BLOCK && sizeof(token_slot) == 2 * TOKEN_BLOCK,
              "token and logit in blocks of their own");

struct aclnn_session {
    aclnn_model *m = nullptr;
    int32_t max_len = 0, chunk = 0;
    aclrtStream stream = nullptr;
    /* device memory */
    void *kv = nullptr;    /* [n_layers, 2, max_len, kv_dim] weight dtype */
    size_t kv_bytes = 0;
    /* A step of this session failed, or a queued step dropped unread had non-finite logits: KV rows past the
     * position the session keeps may hold NaN or inf (an fp16 overflow, a NaN weight). Decode attends over a whole
     * KV bucket with the rows past the position masked, and the device multiplies masked rows' values by their zero
     * weights (0 * inf = NaN), so the next forward (the only call allowed after a failure or a discard: model.c
     * asks for one) zeroes the rows from its position on before it computes. */
    bool kv_suspect = false;
    void *arena = nullptr; /* activations and tables, carved below */
    void *ws = nullptr;    /* the one workspace */
    uint64_t ws_size = 0;
    /* arena pieces (device addresses) */
    void *r[2]{}, *xn = nullptr, *tmp = nullptr, *qkv = nullptr, *qk = nullptr, *q = nullptr, *attn = nullptr,
         *gu = nullptr, *act = nullptr, *rstd = nullptr, *logits = nullptr, *topv = nullptr, *topi = nullptr,
         *ids = nullptr, *tok = nullptr, *posbuf = nullptr, *cs = nullptr, *arange = nullptr, *mask = nullptr,
         *rope = nullptr;
    /* decode: pinned token ring + one event per slot; graphs per KV bucket */
    token_slot *ring = nullptr; /* [ASW_MAX_PENDING] pinned */
    aclrtEvent events[ASW_MAX_PENDING]{};
    int32_t head = 0, pending = 0;
    int32_t dev_pos = -1; /* the position the device-held state (token, position) is ready for; -1 = none */
    std::vector<int32_t> buckets;
    std::map<int32_t, aclmdlRI> graphs;
    /* sizing */
    mode how = mode::run;
    uint64_t ws_needed = 0;

    ~aclnn_session();
};

aclnn_session::~aclnn_session() {
    if (A == nullptr || m == nullptr) return;
    A->aclrtSetCurrentContext(m->ctx);
    if (stream != nullptr) A->aclrtSynchronizeStream(stream);
    for (auto &g : graphs) A->aclmdlRIDestroy(g.second);
    for (aclrtEvent e : events)
        if (e != nullptr) A->aclrtDestroyEvent(e);
    if (ring != nullptr) A->aclrtFreeHost(ring);
    for (void *p : {kv, arena, ws})
        if (p != nullptr) A->aclrtFree(p);
    if (stream != nullptr) A->aclrtDestroyStream(stream);
}

/* phase 1 + phase 2 of one operator; in sizing mode only phase 1, remembering the largest workspace */
template <class P1, class P2, class... Args>
void launch(aclnn_session &s, const char *name, P1 phase1, P2 phase2, Args... args) {
    uint64_t need = 0;
    aclOpExecutor *ex = nullptr;
    int32_t rc = phase1(args..., &need, &ex);
    if (rc != 0) acl_check(rc, format("aclnn%sGetWorkspaceSize", name).c_str());
    if (s.how == mode::size) {
        s.ws_needed = std::max(s.ws_needed, need);
        /* Never run: make it repeatable, which hands it to the caller, then destroy it. An op whose executor cannot be
         * made repeatable (aclSetAclOpExecutorRepeatable.md: an internal copy or a ViewCopy onto its own input, as in
         * the in-place index copy) has no documented way to be freed without phase 2: its host memory is left (a few
         * executors per session start; phase 1 allocates no device memory). */
        if (ex != nullptr && A->aclSetAclOpExecutorRepeatable(ex) == 0) ACL_CHECK(aclDestroyAclOpExecutor, ex);
        return;
    }
    if (need > s.ws_size)
        fail(ASW_ERR_BACKEND, format("aclnn backend: aclnn%s needs a %llu-byte workspace, more than the %llu bytes "
                                     "sized at session start",
                                     name, (unsigned long long)need, (unsigned long long)s.ws_size));
    rc = phase2(need > 0 ? s.ws : nullptr, need, ex, s.stream);
    if (rc != 0) acl_check(rc, format("aclnn%s", name).c_str());
}
#define OP(s, Name, ...) launch(s, #Name, A->aclnn##Name##GetWorkspaceSize, A->aclnn##Name, __VA_ARGS__)

/* out [S, N] = x [S, K] . W^T (+ bias [N]) */
void matmul(aclnn_session &s, tensors &T, void *out, void *x, int64_t rows, const matrix &W,
            aclTensor *bias = nullptr, int64_t x_offset = 0) {
    aclDataType dt = s.m->dt;
    aclTensor *X = T.nd(x, dt, {rows, W.k}, {}, x_offset);
    aclTensor *Y = T.nd(out, dt, {rows, W.n});
    const int8_t keep_dtype = 0; /* cubeMathType KEEP_DTYPE: fp16/bf16 inputs, fp32 accumulation */
    aclScalar *one = s.m->one_f;
    aclTensor *Wt = W.nz ? T.own(weight_nz(W, dt)) : W.t; /* [K, N] */
    if (bias != nullptr) {
        if (W.nz) OP(s, AddmmWeightNz, bias, X, Wt, one, one, Y, keep_dtype);
        else OP(s, Addmm, bias, X, Wt, one, one, Y, keep_dtype);
    } else {
        if (W.nz) OP(s, MatmulWeightNz, X, Wt, Y, keep_dtype);
        else OP(s, Mm, X, Wt, Y, keep_dtype);
    }
}

/* One pass of S tokens through the model.
 *   prefill: token ids in `ids` [S], positions p..p+S-1, KV length kv = p+S, causal mask [1, S, kv] in `mask`
 *            (uploaded by the caller); logits of every row (all_rows) or of the last one only.
 *   decode:  S = 1, the token in `tok`, the position in `posbuf` (both on the device), KV length kv = the bucket,
 *            mask = arange > position computed here; the position is incremented at the end.
 * Always ends with the argmax of the last row in `tok` (the next decode input). */
void forward_pass(aclnn_session &s, pass kind, int64_t S, int64_t p, int64_t kv, bool all_rows, int32_t topk) {
    aclnn_model &m = *s.m;
    const asw_config &c = m.cfg;
    const aclDataType dt = m.dt;
    const int64_t H = c.hidden, D = c.head_dim, Hq = c.n_heads, Hkv = c.n_kv_heads, F = c.ffn, V = c.vocab;
    const int64_t qkv_dim = (Hq + 2 * Hkv) * D, qk_dim = (Hq + Hkv) * D, kv_dim = Hkv * D, L = c.n_layers;
    const int64_t ML = s.max_len;
    const bool decode = kind == pass::decode;
    tensors T;

    /* r0 [S, H] = token embeddings */
    aclTensor *ids = decode ? T.nd(s.tok, ACL_INT32, {1}) : T.nd(s.ids, ACL_INT32, {S});
    OP(s, Embedding, m.token_embd, ids, T.nd(s.r[0], dt, {S, H}));

    /* cos, sin [1, S, 1, D]: rows of the table [2 max_len, D] (cos rows, then sin rows) */
    aclTensor *cos, *sin;
    if (decode) {
        /* cs [2, D] = table rows {pos, max_len + pos}, gathered by the device-held position pair */
        OP(s, Embedding, T.nd(s.rope, dt, {2 * ML, D}), T.nd(s.posbuf, ACL_INT32, {2}), T.nd(s.cs, dt, {2, D}));
        cos = T.nd(s.cs, dt, {1, 1, 1, D});
        sin = T.nd(s.cs, dt, {1, 1, 1, D}, {}, D);
    } else {
        cos = T.nd(s.rope, dt, {1, S, 1, D}, {}, p * D);
        sin = T.nd(s.rope, dt, {1, S, 1, D}, {}, (ML + p) * D);
    }

    /* attention mask [1, kv] (decode) or [1, S, kv] (prefill), BOOL, 1 = masked */
    aclTensor *mask;
    if (decode) {
        mask = T.nd(s.mask, ACL_BOOL, {1, kv});
        OP(s, GtTensor, T.nd(s.arange, ACL_INT32, {1, kv}), T.nd(s.posbuf, ACL_INT32, {1, 1}), mask);
    } else {
        mask = T.nd(s.mask, ACL_BOOL, {1, S, kv});
    }

    static char layout[] = "BSND";
    const double scale = 1.0 / std::sqrt((double)D);
    aclTensor *rstd = T.nd(s.rstd, ACL_FLOAT, {S, 1});
    aclTensor *xn = T.nd(s.xn, dt, {S, H});
    aclTensor *tmp = T.nd(s.tmp, dt, {S, H});
    aclTensor *res[2] = {T.nd(s.r[0], dt, {S, H}), T.nd(s.r[1], dt, {S, H})};
    int cur = 0; /* which residual buffer holds the stream */
    for (int64_t l = 0; l < L; l++) {
        const layer &lw = m.layers[(size_t)l];
        char *kc = static_cast<char *>(s.kv) + (size_t)(l * 2) * (size_t)(ML * kv_dim) * 2; /* [max_len, kv_dim] */
        char *vc = kc + (size_t)(ML * kv_dim) * 2;                                       /* [max_len, kv_dim] */

        /* xn = rmsnorm(x) * attn_norm (layer > 0: x += the previous ffn output first) */
        if (l == 0) {
            OP(s, RmsNorm, res[cur], lw.attn_norm, (double)c.rms_eps, xn, rstd);
        } else {
            OP(s, AddRmsNorm, res[cur], tmp, lw.attn_norm, (double)c.rms_eps, xn, rstd, res[cur ^ 1]);
            cur ^= 1;
        }
        /* qkv [S, qkv_dim] = xn . Wqkv^T (+ bias) */
        matmul(s, T, s.qkv, s.xn, S, lw.qkv, lw.qkv_bias);
        /* qk [1, S, Hq + Hkv, D] = rope(q | k), mode 0 = rotate_half, once over the contiguous q|k part */
        aclTensor *x_qk = T.nd(s.qkv, dt, {1, S, Hq + Hkv, D}, {S * qkv_dim, qkv_dim, D, 1});
        OP(s, RotaryPositionEmbedding, x_qk, cos, sin, (int64_t)0, T.nd(s.qk, dt, {1, S, Hq + Hkv, D}));

        aclTensor *query;
        if (decode) {
            /* K, V rows at the device-held position */
            aclTensor *pos = T.nd(s.posbuf, ACL_INT32, {1});
            OP(s, InplaceIndexCopy, T.nd(kc, dt, {ML, kv_dim}), (int64_t)0, pos,
               T.nd(s.qk, dt, {1, kv_dim}, {}, Hq * D));
            OP(s, InplaceIndexCopy, T.nd(vc, dt, {ML, kv_dim}), (int64_t)0, pos,
               T.nd(s.qkv, dt, {1, kv_dim}, {}, qk_dim));
            query = T.nd(s.qk, dt, {1, 1, Hq, D});
        } else {
            /* K, V rows p..p+S-1, and a contiguous copy of q */
            OP(s, InplaceCopy, T.nd(kc, dt, {S, kv_dim}, {}, p * kv_dim),
               T.nd(s.qk, dt, {S, kv_dim}, {qk_dim, 1}, Hq * D));
            OP(s, InplaceCopy, T.nd(vc, dt, {S, kv_dim}, {}, p * kv_dim),
               T.nd(s.qkv, dt, {S, kv_dim}, {qkv_dim, 1}, qk_dim));
            OP(s, InplaceCopy, T.nd(s.q, dt, {S, Hq * D}), T.nd(s.qk, dt, {S, Hq * D}, {qk_dim, 1}));
            query = T.nd(s.q, dt, {1, S, Hq, D});
        }
        /* attn [1, S, Hq, D] = softmax(q k^T / sqrt(D) + mask) v over KV rows [0, kv) */
        aclTensorList *keys = T.list1(kc, dt, {1, kv, Hkv, D}, 0);
        aclTensorList *values = T.list1(vc, dt, {1, kv, Hkv, D}, 0);
        aclTensor *attn = T.nd(s.attn, dt, {1, S, Hq, D});
        OP(s, FusedInferAttentionScoreV4, query, keys, values, (const aclTensor *)nullptr, mask,
           (const aclIntArray *)nullptr, (const aclIntArray *)nullptr, (const aclTensor *)nullptr,
           (const aclTensor *)nullptr, (const aclTensor *)nullptr, (const aclTensor *)nullptr,
           (const aclTensor *)nullptr, (const aclTensor *)nullptr, (const aclTensor *)nullptr,
           (const aclTensor *)nullptr, (const aclTensor *)nullptr, (const aclTensor *)nullptr,
           (const aclTensor *)nullptr, (const aclTensor *)nullptr, (const aclTensor *)nullptr,
           (const aclTensor *)nullptr, (const aclTensor *)nullptr, (const aclTensor *)nullptr,
           (const aclIntArray *)nullptr, (const aclTensor *)nullptr, (const aclTensor *)nullptr,
           (const aclTensor *)nullptr, (const aclTensor *)nullptr, (const aclTensor *)nullptr, Hq, scale, kNoLimit,
           kNoLimit, layout, Hkv, (int64_t)0 /* sparseMode: the given mask */, (int64_t)0 /* innerPrecise: high
           precision */, (int64_t)0, (int64_t)0, false, (int64_t)0, (int64_t)0, (int64_t)0, attn,
           (const aclTensor *)nullptr);
        /* tmp [S, H] = attn . Wo^T;  x += tmp, xn = rmsnorm(x) * ffn_norm */
        matmul(s, T, s.tmp, s.attn, S, lw.o);
        OP(s, AddRmsNorm, res[cur], tmp, lw.ffn_norm, (double)c.rms_eps, xn, rstd, res[cur ^ 1]);
        cur ^= 1;
        /* gu [S, 2F] = xn . Wgate_up^T;  act [S, F] = silu(gate) * up;  tmp [S, H] = act . Wdown^T */
        matmul(s, T, s.gu, s.xn, S, lw.gate_up);
        OP(s, SwiGlu, T.nd(s.gu, dt, {S, 2 * F}), (int64_t)-1, T.nd(s.act, dt, {S, F}));
        matmul(s, T, s.tmp, s.act, S, lw.down);
    }
    /* xn = rmsnorm(x + tmp) * output_norm; logits = xn . Wout^T (every row, or the last one) */
    OP(s, AddRmsNorm, res[cur], tmp, m.output_norm, (double)c.rms_eps, xn, rstd, res[cur ^ 1]);
    int64_t rows = all_rows ? S : 1;
    matmul(s, T, s.logits, s.xn, rows, m.output, nullptr, all_rows ? 0 : (S - 1) * H);
    aclTensor *last = T.nd(s.logits, dt, {1, V}, {}, (rows - 1) * V); /* [1, V] */
    OP(s, ArgMax, last, (int64_t)-1, false, T.nd(s.tok, ACL_INT32, {1}));
    /* token_slot.logit = the logit at the argmax: ArgMax picks a NaN when there is one (np.argmax), so the host
     * sees NaN logits in the same read as the token instead of taking the index for a token */
    OP(s, Embedding, T.nd(s.logits, dt, {V, 1}, {}, (rows - 1) * V), T.nd(s.tok, ACL_INT32, {1}),
       T.nd(s.tok, dt, {1, 1}, {}, (int64_t)(offsetof(token_slot, logit) / 2)));
    if (topk > 0)
        OP(s, Topk, last, (int64_t)topk, (int64_t)-1, true, true, T.nd(s.topv, dt, {1, (int64_t)topk}),
           T.nd(s.topi, ACL_INT64, {1, (int64_t)topk}));
    if (decode) OP(s, InplaceAdds, T.nd(s.posbuf, ACL_INT32, {2}), m.one_i, m.one_i); /* position += 1 */
}

/* the smallest KV bucket that holds kv positions */
int32_t bucket_for(const aclnn_session &s, int32_t kv) {
    for (int32_t b : s.buckets)
        if (b >= kv) return b;
    return s.buckets.back();
}

void carve_arena(aclnn_session &s, size_t *total) {
    const asw_config &c = s.m->cfg;
    const size_t S = (size_t)s.chunk, H = (size_t)c.hidden, D = (size_t)c.head_dim, Hq = (size_t)c.n_heads,
                 Hkv = (size_t)c.n_kv_heads, F = (size_t)c.ffn, V = (size_t)c.vocab, ML = (size_t)s.max_len;
    struct piece {
        void **at;
        size_t bytes;
    } pieces[] = {
        {&s.r[0], S * H * 2},
        {&s.r[1], S * H * 2},
        {&s.xn, S * H * 2},
        {&s.tmp, S * H * 2},
        {&s.qkv, S * (Hq + 2 * Hkv) * D * 2},
        {&s.qk, S * (Hq + Hkv) * D * 2},
        {&s.q, S * Hq * D * 2},
        {&s.attn, S * Hq * D * 2},
        {&s.gu, S * 2 * F * 2},
        {&s.act, S * F * 2},
        {&s.rstd, S * 4},
        {&s.logits, S * V * 2},
        {&s.topv, V * 2},
        {&s.topi, V * 8},
        {&s.ids, S * 4},
        {&s.tok, sizeof(token_slot)}, /* int32 token, then the logit at it in the weight dtype (token_slot) */
        {&s.posbuf, 8},
        {&s.cs, 2 * D * 2},
        {&s.arange, ML * 4},
        {&s.mask, S * ML},
        {&s.rope, 2 * ML * D * 2},
    };
    size_t off = 0;
    for (piece &p : pieces) {
        *p.at = reinterpret_cast<void *>(off); /* offsets now, addresses once the arena exists */
        off += (p.bytes + 511) & ~(size_t)511;
    }
    if (total != nullptr) {
        *total = off;
        return;
    }
    for (piece &p : pieces) *p.at = static_cast<char *>(s.arena) + reinterpret_cast<size_t>(*p.at);
}

void session_free(void *bs) {
    guarded([&]() -> int32_t {
        delete static_cast<aclnn_session *>(bs);
        return 0;
    });
}

void *session_init(void *bm, const asw_session_options *opt) {
    void *result = nullptr;
    guarded([&]() -> int32_t {
        aclnn_model *m = static_cast<aclnn_model *>(bm);
        m->make_current();
        const asw_config &c = m->cfg;
        auto s = std::make_unique<aclnn_session>();
        s->m = m;
        s->max_len = opt->max_len;
        s->chunk = std::min<int32_t>(PREFILL_CHUNK, opt->max_len);
        if (opt->kv_dtype != 0 && opt->kv_dtype != c.dtype)
            fail(ASW_ERR_ARG, "aclnn backend: the KV cache dtype must be the weight dtype");
        for (int32_t b = FIRST_BUCKET; b < s->max_len; b *= 2) s->buckets.push_back(b);
        s->buckets.push_back(s->max_len);
        ACL_CHECK(aclrtCreateStream, &s->stream);

        const size_t kv_dim = (size_t)c.n_kv_heads * (size_t)c.head_dim;
        s->kv_bytes = (size_t)c.n_layers * 2 * (size_t)s->max_len * kv_dim * 2;
        ACL_CHECK(aclrtMalloc, &s->kv, s->kv_bytes, ACL_MEM_MALLOC_HUGE_FIRST);
        /* zeros, so the masked rows beyond the position are finite numbers (see kv_suspect) */
        ACL_CHECK(aclrtMemset, s->kv, s->kv_bytes, 0, s->kv_bytes);
        size_t arena_bytes = 0;
        carve_arena(*s, &arena_bytes);
        ACL_CHECK(aclrtMalloc, &s->arena, arena_bytes, ACL_MEM_MALLOC_HUGE_FIRST);
        carve_arena(*s, nullptr);

        /* tables: arange [max_len] INT32 and the rope table [2 max_len, D] (cos rows, then sin rows) */
        const int64_t ML = s->max_len, D = c.head_dim, half = D / 2;
        std::vector<int32_t> arange((size_t)ML);
        for (int64_t i = 0; i < ML; i++) arange[(size_t)i] = (int32_t)i;
        ACL_CHECK(aclrtMemcpy, s->arange, arange.size() * 4, arange.data(), arange.size() * 4,
                  ACL_MEMCPY_HOST_TO_DEVICE);
        std::vector<uint16_t> rope((size_t)(2 * ML * D));
        for (int64_t p = 0; p < ML; p++)
            for (int64_t j = 0; j < half; j++) {
                float angle = (float)p * m->inv_freq[(size_t)j]; /* f32 like transformers */
                float cv = std::cos(angle), sv = std::sin(angle);
                uint16_t ch = m->dt == ACL_FLOAT16 ? f32_to_f16(cv) : f32_to_bf16(cv);
                uint16_t sh = m->dt == ACL_FLOAT16 ? f32_to_f16(sv) : f32_to_bf16(sv);
                rope[(size_t)(p * D + j)] = rope[(size_t)(p * D + j + half)] = ch;
                rope[(size_t)((ML + p) * D + j)] = rope[(size_t)((ML + p) * D + j + half)] = sh;
            }
        ACL_CHECK(aclrtMemcpy, s->rope, rope.size() * 2, rope.data(), rope.size() * 2, ACL_MEMCPY_HOST_TO_DEVICE);

        /* the workspace: phase 1 of every operator at its largest shapes, then one allocation */
        s->how = mode::size;
        forward_pass(*s, pass::prefill, s->chunk, s->max_len - s->chunk, s->max_len, true, c.vocab);
        for (int32_t b : s->buckets) forward_pass(*s, pass::decode, 1, 0, b, false, 0);
        s->how = mode::run;
        s->ws_size = s->ws_needed;
        if (s->ws_size > 0) ACL_CHECK(aclrtMalloc, &s->ws, (size_t)s->ws_size, ACL_MEM_MALLOC_HUGE_FIRST);

        /* decode token ring: pinned host slots, one event each */
        ACL_CHECK(aclrtMallocHost, reinterpret_cast<void **>(&s->ring), sizeof(token_slot) * ASW_MAX_PENDING);
        for (aclrtEvent &e : s->events) ACL_CHECK(aclrtCreateEventWithFlag, &e, (uint32_t)ACL_EVENT_SYNC);
        result = s.release();
        return 0;
    });
    return result;
}

/* NULL for a finite logit of the session's dtype (fp16 or bf16 bits), else "NaN" or "infinite" */
const char *non_finite(const aclnn_session &s, uint16_t bits) {
    const bool f16 = s.m->dt == ACL_FLOAT16;
    const uint16_t exponent = f16 ? 0x7c00u : 0x7f80u, mantissa = f16 ? 0x03ffu : 0x007fu;
    if ((bits & exponent) != exponent) return nullptr;
    return (bits & mantissa) != 0 ? "NaN" : "infinite";
}

/* wait for the stream and forget the queued steps (a dropped step with non-finite logits marks the KV cache
 * suspect: its rows lie past the position kept) and the device-held token/position */
int32_t session_reset(void *bs) {
    return guarded([&]() -> int32_t {
        aclnn_session &s = *static_cast<aclnn_session *>(bs);
        s.m->make_current();
        ACL_CHECK(aclrtSynchronizeStream, s.stream);
        for (int32_t i = 0; i < s.pending; i++)
            if (non_finite(s, s.ring[(s.head + i) % ASW_MAX_PENDING].logit) != nullptr) s.kv_suspect = true;
        s.head = s.pending = 0;
        s.dev_pos = -1;
        return 0;
    });
}

/* KV rows [first, max_len) of every layer = 0 (after kv_suspect; the stream is idle) */
void zero_kv_rows(aclnn_session &s, int64_t first) {
    const asw_config &c = s.m->cfg;
    const size_t row = (size_t)c.n_kv_heads * (size_t)c.head_dim * 2, ML = (size_t)s.max_len;
    if (first == 0) {
        ACL_CHECK(aclrtMemset, s.kv, s.kv_bytes, 0, s.kv_bytes);
        return;
    }
    const size_t bytes = (ML - (size_t)first) * row;
    for (size_t part = 0; part < 2 * (size_t)c.n_layers; part++) { /* [n_layers, 2] blocks of [max_len, kv_dim] */
        char *at = static_cast<char *>(s.kv) + part * ML * row + (size_t)first * row;
        ACL_CHECK(aclrtMemset, at, bytes, 0, bytes);
    }
}

/* guarded() for a call that runs steps of session `bs`: a failure marks its KV cache suspect */
template <typename F>
int32_t guarded_step(void *bs, F &&f) {
    const int32_t rc = guarded(std::forward<F>(f));
    if (rc < 0) static_cast<aclnn_session *>(bs)->kv_suspect = true;
    return rc;
}

/* device u16 -> host f32 (`n` values) */
void read_floats(const aclnn_session &s, float *out, const void *dev, size_t n) {
    std::vector<uint16_t> h(n);
    ACL_CHECK(aclrtMemcpy, h.data(), n * 2, dev, n * 2, ACL_MEMCPY_DEVICE_TO_HOST);
    bool f16 = s.m->dt == ACL_FLOAT16;
    for (size_t i = 0; i < n; i++) out[i] = f16 ? f16_to_f32(h[i]) : bf16_to_f32(h[i]);
}

void check_finite(const float *v, size_t n, const char *what) {
    for (size_t i = 0; i < n; i++)
        if (!std::isfinite(v[i])) /* NaN, or an infinity: a logit beyond the weight dtype's range overflowed */
            fail(ASW_ERR_NUMERIC, format("aclnn backend: %s in the %s logits (index %zu)",
                                         std::isnan(v[i]) ? "NaN" : "an infinite value", what, i));
}

/* The token of a step, refused when it is not a token: NaN logits (ArgMax then points at a NaN, whose value came
 * along), an infinite logit at the argmax (the device holds logits in the weight dtype, so a logit beyond its range,
 * or an overflowed activation, became inf and the index says nothing), or an id outside the vocabulary. `pos` is the
 * position the logits belong to. */
void check_token(const aclnn_session &s, const token_slot &slot, int32_t pos) {
    if (const char *what = non_finite(s, slot.logit))
        fail(ASW_ERR_NUMERIC, format("the logits of position %d are %s (the weights or the activations overflowed)",
                                     (int)pos, what));
    if (slot.token < 0 || slot.token >= s.m->cfg.vocab)
        fail(ASW_ERR_NUMERIC, format("aclnn backend: the device produced token id %d outside [0, %d)",
                                     (int)slot.token, (int)s.m->cfg.vocab));
}

int32_t forward(void *bs, const int32_t *tokens, int32_t n, int32_t pos, const asw_outputs *out) {
    return guarded_step(bs, [&]() -> int32_t {
        aclnn_session &s = *static_cast<aclnn_session *>(bs);
        aclnn_model &m = *s.m;
        m.make_current();
        const int64_t V = m.cfg.vocab, ML = s.max_len;
        const bool all = out->logits_mode == ASW_LOGITS_ALL;
        const int32_t topk = out->logits_mode == ASW_LOGITS_TOPK ? out->k : 0;
        s.dev_pos = -1; /* the device-held state is rewritten below */
        if (s.kv_suspect) { /* rows from `pos` on are not the session's: no NaN or inf may stay in them */
            ACL_CHECK(aclrtSynchronizeStream, s.stream);
            zero_kv_rows(s, pos);
            s.kv_suspect = false;
        }
        std::vector<uint8_t> mask;
        for (int32_t c0 = 0; c0 < n; c0 += s.chunk) {
            const int64_t S = std::min<int64_t>(s.chunk, n - c0), p = pos + c0, kv = p + S;
            const bool final = c0 + S == n;
            /* the previous chunk has read ids and mask: upload this chunk's (host-to-device is fine in prefill) */
            ACL_CHECK(aclrtSynchronizeStream, s.stream);
            ACL_CHECK(aclrtMemcpy, s.ids, (size_t)S * 4, tokens + c0, (size_t)S * 4, ACL_MEMCPY_HOST_TO_DEVICE);
            mask.assign((size_t)(S * kv), 0);
            for (int64_t i = 0; i < S; i++)
                for (int64_t j = p + i + 1; j < kv; j++) mask[(size_t)(i * kv + j)] = 1; /* causal: j > p + i */
            ACL_CHECK(aclrtMemcpy, s.mask, mask.size(), mask.data(), mask.size(), ACL_MEMCPY_HOST_TO_DEVICE);
            forward_pass(s, pass::prefill, S, p, kv, all, final ? topk : 0);
            if (all) {
                ACL_CHECK(aclrtSynchronizeStream, s.stream);
                float *dst = out->logits + (size_t)c0 * (size_t)V;
                read_floats(s, dst, s.logits, (size_t)(S * V));
                check_finite(dst, (size_t)(S * V), "prompt");
            } else if (final) {
                ACL_CHECK(aclrtSynchronizeStream, s.stream);
                std::vector<float> last((size_t)V);
                float *dst = out->logits_mode == ASW_LOGITS_LAST ? out->logits : last.data();
                read_floats(s, dst, s.logits, (size_t)V);
                check_finite(dst, (size_t)V, "last position's");
            }
        }
        ACL_CHECK(aclrtSynchronizeStream, s.stream);
        if (topk > 0) {
            read_floats(s, out->logits, s.topv, (size_t)topk);
            std::vector<int64_t> ids((size_t)topk);
            ACL_CHECK(aclrtMemcpy, ids.data(), ids.size() * 8, s.topi, ids.size() * 8, ACL_MEMCPY_DEVICE_TO_HOST);
            for (int32_t i = 0; i < topk; i++) out->topk_ids[i] = (int32_t)ids[(size_t)i];
        }
        token_slot got{};
        ACL_CHECK(aclrtMemcpy, &got, sizeof got, s.tok, sizeof got, ACL_MEMCPY_DEVICE_TO_HOST);
        check_token(s, got, pos + n - 1);
        if (out->argmax != nullptr) *out->argmax = got.token;
        /* the next decode step reads its position pair {pos, max_len + pos} from the device */
        const int32_t next = pos + n;
        int32_t pair[2] = {next, (int32_t)(ML + next)};
        ACL_CHECK(aclrtMemcpy, s.posbuf, sizeof pair, pair, sizeof pair, ACL_MEMCPY_HOST_TO_DEVICE);
        s.dev_pos = next;
        return 0;
    });
}

/* capture one decode step at KV bucket b on the session's stream (thread-local mode: other threads' synchronous
 * copies stay legal while this one captures) */
aclmdlRI capture(aclnn_session &s, int32_t b) {
    ACL_CHECK(aclmdlRICaptureBegin, s.stream, ACL_MODEL_RI_CAPTURE_MODE_THREAD_LOCAL);
    try {
        forward_pass(s, pass::decode, 1, 0, b, false, 0);
    } catch (...) {
        aclmdlRI broken = nullptr;
        A->aclmdlRICaptureEnd(s.stream, &broken);
        if (broken != nullptr) A->aclmdlRIDestroy(broken);
        throw;
    }
    aclmdlRI g = nullptr;
    ACL_CHECK(aclmdlRICaptureEnd, s.stream, &g);
    return g;
}

int32_t decode_enqueue(void *bs, int32_t pos) {
    return guarded_step(bs, [&]() -> int32_t {
        aclnn_session &s = *static_cast<aclnn_session *>(bs);
        s.m->make_current();
        if (pos != s.dev_pos)
            fail(ASW_ERR_STATE, format("aclnn backend: decode step at position %d, but the device holds the state "
                                       "for position %d (run a forward first)",
                                       (int)pos, (int)s.dev_pos));
        if (s.pending >= ASW_MAX_PENDING) fail(ASW_ERR_STATE, "aclnn backend: decode queue full");
        const int32_t b = bucket_for(s, pos + 1);
        if (s.m->eager) {
            forward_pass(s, pass::decode, 1, 0, b, false, 0);
        } else {
            auto g = s.graphs.find(b);
            if (g == s.graphs.end()) g = s.graphs.emplace(b, capture(s, b)).first;
            ACL_CHECK(aclmdlRIExecuteAsync, g->second, s.stream);
        }
        /* the token and its logit (token_slot, 64 bytes) device-to-host into a pinned slot, then an event the read
         * waits on */
        const int32_t slot = (s.head + s.pending) % ASW_MAX_PENDING;
        ACL_CHECK(aclrtMemcpyAsync, &s.ring[slot], sizeof(token_slot), s.tok, sizeof(token_slot),
                  ACL_MEMCPY_DEVICE_TO_HOST, s.stream);
        ACL_CHECK(aclrtRecordEvent, s.events[slot], s.stream);
        s.pending++;
        s.dev_pos = pos + 1;
        return 0;
    });
}

int32_t decode_read(void *bs, int32_t *token) {
    return guarded_step(bs, [&]() -> int32_t {
        aclnn_session &s = *static_cast<aclnn_session *>(bs);
        s.m->make_current();
        if (s.pending == 0) fail(ASW_ERR_STATE, "aclnn backend: no decode step is queued");
        const int32_t slot = s.head;
        s.head = (s.head + 1) % ASW_MAX_PENDING;
        s.pending--;
        ACL_CHECK(aclrtSynchronizeEvent, s.events[slot]);
        check_token(s, s.ring[slot], s.dev_pos - s.pending - 1);
        *token = s.ring[slot].token;
        return 0;
    });
}

/* dropping the queued steps is a reset: the kept token belongs to a dropped step (model.c asks for a forward) */
int32_t decode_discard(void *bs) { return session_reset(bs); }

/* ------------------------------------------------------------------------------------------------------------
 * one operator on host data (the self-test's per-operator table; runtime/selftest.py holds the references)
 * ------------------------------------------------------------------------------------------------------------ */

/* how an argument is described to the operator */
enum { ARG_ND = 0, ARG_WEIGHT_ND = 1, ARG_WEIGHT_NZ = 2 };

}  // namespace

extern "C" {
/* One argument of asw_aclnn_op_check: host data in, and the same buffer receives the device contents afterwards. */
typedef struct asw_op_arg {
    void *host;
    int64_t nbytes;  /* bytes at host */
    int32_t dtype;   /* aclDataType */
    int32_t kind;    /* ARG_ND: contiguous `dims`; ARG_WEIGHT_ND / _NZ: a row-major (or NZ) [N, K] weight = dims,
                      * passed as the transposed view [K, N] as the backend does */
    int32_t ndim;
    int32_t pad;
    int64_t dims[4];
} asw_op_arg;
}

namespace {

struct op_check_state {
    int32_t device = -1;
    aclrtContext ctx = nullptr;
    aclrtStream stream = nullptr;
    std::vector<void *> buffers;
    ~op_check_state() {
        if (A == nullptr) return;
        if (ctx != nullptr) A->aclrtSetCurrentContext(ctx);
        if (stream != nullptr) A->aclrtSynchronizeStream(stream);
        for (void *b : buffers) A->aclrtFree(b);
        if (stream != nullptr) A->aclrtDestroyStream(stream);
        if (ctx != nullptr) A->aclrtDestroyContext(ctx);
        if (device >= 0) A->aclrtResetDevice(device);
    }
};

aclTensor *arg_tensor(tensors &T, const asw_op_arg &a, void *dev) {
    aclDataType dt = (aclDataType)a.dtype;
    if (a.kind == ARG_ND) return T.nd(dev, dt, std::vector<int64_t>(a.dims, a.dims + a.ndim));
    int64_t n = a.dims[0], k = a.dims[1], dims[2] = {k, n}, strides[2] = {1, k};
    aclTensor *t;
    if (a.kind == ARG_WEIGHT_NZ) {
        int64_t storage[4] = {(k + 15) / 16, (n + 15) / 16, 16, 16};
        t = A->aclCreateTensor(dims, 2, dt, strides, 0, ACL_FORMAT_FRACTAL_NZ, storage, 4, dev);
    } else {
        int64_t storage[2] = {n, k};
        t = A->aclCreateTensor(dims, 2, dt, strides, 0, ACL_FORMAT_ND, storage, 2, dev);
    }
    if (t == nullptr) fail(ASW_ERR_BACKEND, "aclCreateTensor failed for a weight");
    T.owned.push_back(t);
    return t;
}

void op_check(int32_t device, const std::string &op, asw_op_arg *args, int32_t n, const double *attrs,
              int32_t n_attrs) {
    ensure_api();
    init_runtime();
    op_check_state st;
    ACL_CHECK(aclrtSetDevice, device);
    st.device = device;
    ACL_CHECK(aclrtCreateContext, &st.ctx, device);
    ACL_CHECK(aclrtSetCurrentContext, st.ctx);
    ACL_CHECK(aclrtCreateStream, &st.stream);
    std::vector<void *> dev((size_t)n);
    tensors T;
    std::vector<aclTensor *> t((size_t)n);
    for (int32_t i = 0; i < n; i++) {
        ACL_CHECK(aclrtMalloc, &dev[(size_t)i], (size_t)args[i].nbytes, ACL_MEM_MALLOC_HUGE_FIRST);
        st.buffers.push_back(dev[(size_t)i]);
        ACL_CHECK(aclrtMemcpy, dev[(size_t)i], (size_t)args[i].nbytes, args[i].host, (size_t)args[i].nbytes,
                  ACL_MEMCPY_HOST_TO_DEVICE);
        t[(size_t)i] = arg_tensor(T, args[i], dev[(size_t)i]);
    }
    auto need = [&](int32_t args_wanted, int32_t attrs_wanted) {
        if (n != args_wanted || n_attrs < attrs_wanted)
            fail(ASW_ERR_ARG, format("%s takes %d arguments and %d attributes", op.c_str(), (int)args_wanted,
                                     (int)attrs_wanted));
    };
    /* the workspace: phase 1 sizes it, then the same call runs for real */
    aclnn_session s;
    s.stream = st.stream;
    auto run = [&](auto &&call) {
        s.how = mode::size;
        call();
        s.how = mode::run;
        s.ws_size = s.ws_needed;
        if (s.ws_size > 0) {
            ACL_CHECK(aclrtMalloc, &s.ws, (size_t)s.ws_size, ACL_MEM_MALLOC_HUGE_FIRST);
            st.buffers.push_back(s.ws);
        }
        call();
        s.ws = nullptr; /* freed with st.buffers */
    };
    const int8_t keep = 0;
    static char layout[] = "BSND";
    if (op == "RmsNorm") {
        need(4, 1);
        run([&] { OP(s, RmsNorm, t[0], t[1], attrs[0], t[2], t[3]); });
    } else if (op == "AddRmsNorm") {
        need(6, 1);
        run([&] { OP(s, AddRmsNorm, t[0], t[1], t[2], attrs[0], t[3], t[4], t[5]); });
    } else if (op == "Mm") {
        need(3, 0);
        if (args[1].kind == ARG_WEIGHT_NZ) /* a fresh weight descriptor per call, as in matmul() (see weight_nz) */
            run([&] { OP(s, MatmulWeightNz, t[0], arg_tensor(T, args[1], dev[1]), t[2], keep); });
        else run([&] { OP(s, Mm, t[0], t[1], t[2], keep); });
    } else if (op == "Addmm") {
        float one = 1.0f;
        aclScalar *alpha = A->aclCreateScalar(&one, ACL_FLOAT);
        need(4, 0);
        try {
            if (args[2].kind == ARG_WEIGHT_NZ)
                run([&] { OP(s, AddmmWeightNz, t[0], t[1], t[2], alpha, alpha, t[3], keep); });
            else run([&] { OP(s, Addmm, t[0], t[1], t[2], alpha, alpha, t[3], keep); });
        } catch (...) {
            A->aclDestroyScalar(alpha);
            throw;
        }
        A->aclDestroyScalar(alpha);
    } else if (op == "RotaryPositionEmbedding") {
        need(4, 1);
        run([&] { OP(s, RotaryPositionEmbedding, t[0], t[1], t[2], (int64_t)attrs[0], t[3]); });
    } else if (op == "SwiGlu") {
        need(2, 0);
        run([&] { OP(s, SwiGlu, t[0], (int64_t)-1, t[1]); });
    } else if (op == "FusedInferAttentionScoreV4") {
        need(5, 2); /* query [1, S, Hq, D], key, value [1, KV, Hkv, D], mask, out; attrs Hq, Hkv */
        const int64_t Hq = (int64_t)attrs[0], Hkv = (int64_t)attrs[1], D = args[0].dims[3];
        auto list = [&](int i) {
            std::vector<int64_t> dims(args[i].dims, args[i].dims + args[i].ndim);
            return T.list1(dev[(size_t)i], (aclDataType)args[i].dtype, dims, 0);
        };
        aclTensorList *k = list(1), *v = list(2);
        const aclTensor *none = nullptr;
        run([&] {
            OP(s, FusedInferAttentionScoreV4, t[0], k, v, none, t[3], (const aclIntArray *)nullptr,
               (const aclIntArray *)nullptr, none, none, none, none, none, none, none, none, none, none, none, none,
               none, none, none, none, (const aclIntArray *)nullptr, none, none, none, none, none, Hq,
               1.0 / std::sqrt((double)D), kNoLimit, kNoLimit, layout, Hkv, (int64_t)0, (int64_t)0, (int64_t)0,
               (int64_t)0, false, (int64_t)0, (int64_t)0, (int64_t)0, t[4], none);
        });
    } else if (op == "InplaceIndexCopy") {
        need(3, 0);
        run([&] { OP(s, InplaceIndexCopy, t[0], (int64_t)0, t[1], t[2]); });
    } else if (op == "Embedding") {
        need(3, 0);
        run([&] { OP(s, Embedding, t[0], t[1], t[2]); });
    } else if (op == "ArgMax") {
        need(2, 0);
        run([&] { OP(s, ArgMax, t[0], (int64_t)-1, false, t[1]); });
    } else if (op == "Topk") {
        need(3, 1);
        run([&] { OP(s, Topk, t[0], (int64_t)attrs[0], (int64_t)-1, true, true, t[1], t[2]); });
    } else if (op == "GtTensor") {
        need(3, 0);
        run([&] { OP(s, GtTensor, t[0], t[1], t[2]); });
    } else if (op == "InplaceAdds") {
        need(1, 1);
        int32_t value = (int32_t)attrs[0], one = 1;
        aclScalar *other = A->aclCreateScalar(&value, ACL_INT32), *alpha = A->aclCreateScalar(&one, ACL_INT32);
        try {
            run([&] { OP(s, InplaceAdds, t[0], other, alpha); });
        } catch (...) {
            A->aclDestroyScalar(other);
            A->aclDestroyScalar(alpha);
            throw;
        }
        A->aclDestroyScalar(other);
        A->aclDestroyScalar(alpha);
    } else if (op == "InplaceCopy") {
        need(2, 0);
        run([&] { OP(s, InplaceCopy, t[0], t[1]); });
    } else {
        fail(ASW_ERR_ARG, "unknown operator " + op);
    }
    ACL_CHECK(aclrtSynchronizeStream, st.stream);
    for (int32_t i = 0; i < n; i++)
        ACL_CHECK(aclrtMemcpy, args[i].host, (size_t)args[i].nbytes, dev[(size_t)i], (size_t)args[i].nbytes,
                  ACL_MEMCPY_DEVICE_TO_HOST);
}

/* the function table, filled by field name so it follows backend.h */
asw_backend make_table() {
    asw_backend t{};
    t.abi = ASW_BACKEND_ABI;
    t.name = "aclnn";
    t.lookahead = 1; /* decode_enqueue only launches a step: keep one queued ahead of the one being read */
    t.prefill_block = PREFILL_CHUNK; /* a session shorter than it prefills in one pass of at most max_len */
    t.model_init = model_init;
    t.model_free = model_free;
    t.describe = model_describe;
    t.session_init = session_init;
    t.session_free = session_free;
    t.session_reset = session_reset;
    t.forward = forward;
    t.decode_enqueue = decode_enqueue;
    t.decode_read = decode_read;
    t.decode_discard = decode_discard;
    return t;
}

}  // namespace

/* Run one operator on host buffers on `device` (its own context and stream): every argument is uploaded, the
 * operator runs (phase 1 sizes the workspace first), every argument comes back. 0, or -1 with `error` filled. For
 * the self-test's per-operator table; the argument order of each operator is in op_check(). */
extern "C" __attribute__((visibility("default"))) int32_t asw_aclnn_op_check(int32_t device, const char *op,
                                                                           asw_op_arg *args, int32_t n_args,
                                                                           const double *attrs, int32_t n_attrs,
                                                                           char *error, int32_t error_len) {
    try {
        op_check(device, op, args, n_args, attrs, n_attrs);
        return 0;
    } catch (const std::exception &e) {
        if (error != nullptr && error_len > 0) snprintf(error, (size_t)error_len, "%s", e.what());
        return -1;
    }
}

extern "C" __attribute__((visibility("default"))) const asw_backend *asw_backend_entry(const asw_host *host) {
    if (host == nullptr || host->set_error == nullptr) return nullptr;
    if (host->abi != ASW_BACKEND_ABI) {
        host->set_error(format("backend 'aclnn': the library speaks backend ABI %d, this plugin %d", (int)host->abi,
                               ASW_BACKEND_ABI)
                            .c_str());
        return nullptr;
    }
    g_host = host;
    static const asw_backend table = make_table();
    return &table;
}
