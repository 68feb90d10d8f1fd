/* libopapi_transformer.so of the emulator: RotaryPositionEmbedding and FusedInferAttentionScoreV4 as reference loops
 * written from the hicann/ops-transformer documentation (docs/aclnnRotaryPositionEmbedding.md,
 * docs/aclnnFusedInferAttentionScoreV4.md). Attention: scores and softmax in fp32, the output rounded once. */
#include "ops_common.h"

#include <cmath>
#include <cstring>
#include <limits>

using namespace emu;

/* ------------------------------------------------------------------ RotaryPositionEmbedding */
EMU_EXPORT aclnnStatus aclnnRotaryPositionEmbeddingGetWorkspaceSize(const aclTensor *x, const aclTensor *cos,
                                                                    const aclTensor *sin, int64_t mode, aclTensor *out,
                                                                    uint64_t *workspaceSize, aclOpExecutor **executor) {
    const char *op = "aclnnRotaryPositionEmbedding";
    EMU_CHECK(need_tensor(op, "x", x, {ACL_BF16, ACL_FLOAT16, ACL_FLOAT}));
    aclDataType dt = D(x).dtype;
    EMU_CHECK(need_tensor(op, "cos", cos, {dt}));
    EMU_CHECK(need_tensor(op, "sin", sin, {dt}));
    EMU_CHECK(need_tensor(op, "out", out, {dt}));
    const Dims &xd = D(x).view, &cd = D(cos).view;
    if (xd.size() != 4) return bad(op, "x must be 4-D, got %s", dims_str(xd).c_str());
    EMU_CHECK(need_shape(op, "out", out, xd));
    EMU_CHECK(need_contiguous(op, "out", out));
    if (D(sin).view != cd)
        return bad(op, "cos %s and sin %s must have the same shape", dims_str(cd).c_str(),
                   dims_str(D(sin).view).c_str());
    if (mode != 0 && mode != 1)
        return bad(op, "mode %lld: Atlas A3/A2 support 0 (half) and 1 (interleave)", (long long)mode);
    int64_t dd = xd[3];
    if (dd > 1024 || dd % 2) return bad(op, "D = %lld must be even and <= 1024", (long long)dd);
    bool ok = cd.size() == 4 && cd[3] == dd;
    for (int i = 0; ok && i < 3; i++) ok = cd[i] == 1 || cd[i] == xd[i];
    /* documented cos/sin shapes: (1,1,1,D) (B,S,N,D) (B,1,N,D) (B,S,1,D) (1,1,N,D) (1,S,1,D) (B,1,1,D);
     * not (1,S,N,D) */
    if (ok && cd[0] == 1 && xd[0] != 1 && cd[1] != 1 && cd[2] != 1) ok = false;
    if (!ok)
        return bad(op, "cos/sin shape %s is not one of the documented shapes for x %s", dims_str(cd).c_str(),
                   dims_str(xd).c_str());
    Dims xs = xd;
    return make_executor(
        op, {x, cos, sin}, {out}, 0,
        [=](const std::vector<TV> &t, char *, std::string &) {
            std::vector<float> xv = t[0].load(), y(xv.size());
            int64_t rows = (int64_t)xv.size() / dd, half = dd / 2;
            for (int64_t r = 0; r < rows; r++) {
                const float *v = &xv[(size_t)(r * dd)];
                for (int64_t k = 0; k < dd; k++) {
                    float rot;
                    if (mode == 0)
                        rot = k < half ? -v[k + half] : v[k - half]; /* cat(-x2, x1) */
                    else
                        rot = k % 2 == 0 ? -v[k + 1] : v[k - 1]; /* (x0, x1) -> (-x1, x0) */
                    int64_t lin = r * dd + k;
                    float c = t[1].getf(t[1].elem(broadcast_index(lin, xs, t[1].d.view)));
                    float s = t[2].getf(t[2].elem(broadcast_index(lin, xs, t[2].d.view)));
                    y[(size_t)lin] = v[k] * c + rot * s;
                }
            }
            t[3].store(y);
            return 0;
        },
        workspaceSize, executor);
}
EMU_PHASE2(RotaryPositionEmbedding)

/* ------------------------------------------------------------------ FusedInferAttentionScoreV4 */
namespace {
enum class Layout { BSH, BSND, BNSD, BNSD_BSND };

/* Element index (row-major, before strides) of (b, n, s, d) in a tensor of `layout` with S, N, D. */
inline int64_t at(Layout l, int64_t b, int64_t n, int64_t s, int64_t d, int64_t S, int64_t N, int64_t Dh) {
    if (l == Layout::BNSD || l == Layout::BNSD_BSND) return ((b * N + n) * S + s) * Dh + d;
    return ((b * S + s) * N + n) * Dh + d;
}

struct FiaShape {
    Layout layout;
    int64_t B, S1, S2, N, Nkv, Dh;
};
} // namespace

EMU_EXPORT aclnnStatus aclnnFusedInferAttentionScoreV4GetWorkspaceSize(
    const aclTensor *query, const aclTensorList *key, const aclTensorList *value, const aclTensor *pseShiftOptional,
    const aclTensor *attenMaskOptional, const aclIntArray *actualSeqLengthsOptional,
    const aclIntArray *actualSeqLengthsKvOptional, const aclTensor *deqScale1Optional,
    const aclTensor *quantScale1Optional, const aclTensor *deqScale2Optional, const aclTensor *quantScale2Optional,
    const aclTensor *quantOffset2Optional, const aclTensor *antiquantScaleOptional,
    const aclTensor *antiquantOffsetOptional, const aclTensor *blockTableOptional,
    const aclTensor *queryPaddingSizeOptional, const aclTensor *kvPaddingSizeOptional,
    const aclTensor *keyAntiquantScaleOptional, const aclTensor *keyAntiquantOffsetOptional,
    const aclTensor *valueAntiquantScaleOptional, const aclTensor *valueAntiquantOffsetOptional,
    const aclTensor *keySharedPrefixOptional, const aclTensor *valueSharedPrefixOptional,
    const aclIntArray *actualSharedPrefixLenOptional, const aclTensor *queryRopeOptional,
    const aclTensor *keyRopeOptional, const aclTensor *keyRopeAntiquantScaleOptional,
    const aclTensor *dequantScaleQueryOptional, const aclTensor *learnableSinkOptional, int64_t numHeads,
    double scaleValue, int64_t preTokens, int64_t nextTokens, char *inputLayout, int64_t numKeyValueHeads,
    int64_t sparseMode, int64_t innerPrecise, int64_t blockSize, int64_t antiquantMode, bool softmaxLseFlag,
    int64_t keyAntiquantMode, int64_t valueAntiquantMode, int64_t queryQuantMode, const aclTensor *attentionOut,
    const aclTensor *softmaxLse, uint64_t *workspaceSize, aclOpExecutor **executor) {
    const char *op = "aclnnFusedInferAttentionScoreV4";
    (void)blockSize, (void)antiquantMode, (void)keyAntiquantMode, (void)valueAntiquantMode, (void)queryQuantMode;
    const void *unsupported[] = {deqScale1Optional,
                                 quantScale1Optional,
                                 deqScale2Optional,
                                 quantScale2Optional,
                                 quantOffset2Optional,
                                 antiquantScaleOptional,
                                 antiquantOffsetOptional,
                                 blockTableOptional,
                                 queryPaddingSizeOptional,
                                 kvPaddingSizeOptional,
                                 keyAntiquantScaleOptional,
                                 keyAntiquantOffsetOptional,
                                 valueAntiquantScaleOptional,
                                 valueAntiquantOffsetOptional,
                                 keySharedPrefixOptional,
                                 valueSharedPrefixOptional,
                                 actualSharedPrefixLenOptional,
                                 queryRopeOptional,
                                 keyRopeOptional,
                                 keyRopeAntiquantScaleOptional,
                                 dequantScaleQueryOptional,
                                 learnableSinkOptional};
    for (const void *p : unsupported)
        if (p)
            return bad(op, "quantisation, paged KV (blockTable), padding, shared prefix, rope split and sink inputs "
                           "are not emulated; pass nullptr");
    EMU_CHECK(need_tensor(op, "query", query, {ACL_FLOAT16, ACL_BF16}));
    aclDataType dt = D(query).dtype;
    EMU_CHECK(need_contiguous(op, "query", query));
    EMU_CHECK(need_tensor(op, "attentionOut", attentionOut, {dt}));
    if (!key || !value) return fail(NN_ERR_PARAM_NULLPTR, "%s: key or value is null", op);
    if (!inputLayout) return fail(NN_ERR_PARAM_NULLPTR, "%s: inputLayout is null", op);
    FiaShape sh;
    std::string lay = inputLayout;
    if (lay == "BSH")
        sh.layout = Layout::BSH;
    else if (lay == "BSND")
        sh.layout = Layout::BSND;
    else if (lay == "BNSD")
        sh.layout = Layout::BNSD;
    else if (lay == "BNSD_BSND")
        sh.layout = Layout::BNSD_BSND;
    else
        return bad(op, "inputLayout \"%s\" is not emulated (BSH, BSND, BNSD, BNSD_BSND)", inputLayout);
    const Dims &qd = D(query).view;
    if (numHeads <= 0) return bad(op, "numHeads must be > 0");
    sh.N = numHeads;
    sh.Nkv = numKeyValueHeads ? numKeyValueHeads : numHeads;
    if (sh.N % sh.Nkv || sh.N / sh.Nkv > 64)
        return bad(op, "numHeads %lld must be a multiple of numKeyValueHeads %lld (ratio <= 64)", (long long)sh.N,
                   (long long)sh.Nkv);
    if (sh.layout == Layout::BSH) {
        if (qd.size() != 3 || qd[2] % sh.N)
            return bad(op, "BSH query must be [B, S, numHeads*D], got %s", dims_str(qd).c_str());
        sh.B = qd[0], sh.S1 = qd[1], sh.Dh = qd[2] / sh.N;
    } else {
        if (qd.size() != 4) return bad(op, "%s query must be 4-D, got %s", inputLayout, dims_str(qd).c_str());
        bool bnsd = sh.layout != Layout::BSND;
        sh.B = qd[0], sh.S1 = bnsd ? qd[2] : qd[1], sh.Dh = qd[3];
        if ((bnsd ? qd[1] : qd[2]) != sh.N)
            return bad(op, "query heads %lld differ from numHeads %lld", (long long)(bnsd ? qd[1] : qd[2]),
                       (long long)sh.N);
    }
    if (sh.layout == Layout::BNSD_BSND && sh.S1 == 1) return bad(op, "BNSD_BSND needs Q_S > 1");
    if (sh.Dh > 512) return bad(op, "D = %lld exceeds 512", (long long)sh.Dh);
    /* key/value: one tensor holding the batch, or B tensors of batch 1 */
    const auto &ks = *tensor_list_items(key), &vs = *tensor_list_items(value);
    if (ks.size() != vs.size() || ks.empty() || (ks.size() != 1 && (int64_t)ks.size() != sh.B))
        return bad(op, "key/value lists must hold 1 tensor or B = %lld tensors (got %zu and %zu)", (long long)sh.B,
                   ks.size(), vs.size());
    int64_t kvb = ks.size() == 1 ? sh.B : 1;
    Dims kexpect;
    for (size_t i = 0; i < ks.size(); i++) {
        EMU_CHECK(need_tensor(op, "key", ks[i], {dt}));
        EMU_CHECK(need_tensor(op, "value", vs[i], {dt}));
        EMU_CHECK(need_contiguous(op, "key", ks[i]));
        EMU_CHECK(need_contiguous(op, "value", vs[i]));
        const Dims &kd = D(ks[i]).view;
        if (D(vs[i]).view != kd)
            return bad(op, "key %s and value %s shapes differ", dims_str(kd).c_str(), dims_str(D(vs[i]).view).c_str());
        if (i == 0) {
            if (sh.layout == Layout::BSH) {
                if (kd.size() != 3 || kd[2] != sh.Nkv * sh.Dh)
                    return bad(op, "BSH key must be [B, KV_S, %lld], got %s", (long long)(sh.Nkv * sh.Dh),
                               dims_str(kd).c_str());
                sh.S2 = kd[1];
            } else {
                bool bnsd = sh.layout != Layout::BSND;
                if (kd.size() != 4 || kd[3] != sh.Dh || (bnsd ? kd[1] : kd[2]) != sh.Nkv)
                    return bad(op, "%s key must have %lld heads of D = %lld, got %s", inputLayout, (long long)sh.Nkv,
                               (long long)sh.Dh, dims_str(kd).c_str());
                sh.S2 = bnsd ? kd[2] : kd[1];
            }
            if (kd[0] != kvb) return bad(op, "key batch %lld, expected %lld", (long long)kd[0], (long long)kvb);
            kexpect = kd;
        } else if (kd != kexpect)
            return bad(op, "all key/value tensors of the list must have the same shape");
    }
    Dims od = qd;
    if (sh.layout == Layout::BNSD_BSND) od = {sh.B, sh.S1, sh.N, sh.Dh};
    EMU_CHECK(need_shape(op, "attentionOut", attentionOut, od));
    /* KV lengths: host data, copied now (a captured launch replays them as they were) */
    std::vector<int64_t> kvlen((size_t)sh.B, sh.S2), qlen((size_t)sh.B, sh.S1);
    if (actualSeqLengthsKvOptional) {
        const auto &v = *int_array_values(actualSeqLengthsKvOptional);
        if (v.size() != 1 && (int64_t)v.size() < sh.B)
            return bad(op, "actualSeqLengthsKv has %zu entries for batch %lld", v.size(), (long long)sh.B);
        for (int64_t b = 0; b < sh.B; b++) {
            kvlen[b] = v.size() == 1 ? v[0] : v[b];
            if (kvlen[b] < 0 || kvlen[b] > sh.S2)
                return bad(op, "actualSeqLengthsKv[%lld] = %lld outside [0, %lld]", (long long)b, (long long)kvlen[b],
                           (long long)sh.S2);
        }
    }
    if (actualSeqLengthsOptional && sh.S1 > 1) {
        const auto &v = *int_array_values(actualSeqLengthsOptional);
        if (v.size() != 1 && (int64_t)v.size() < sh.B)
            return bad(op, "actualSeqLengths has %zu entries for batch %lld", v.size(), (long long)sh.B);
        for (int64_t b = 0; b < sh.B; b++) {
            qlen[b] = v.size() == 1 ? v[0] : v[b];
            if (qlen[b] < 0 || qlen[b] > sh.S1)
                return bad(op, "actualSeqLengths[%lld] = %lld outside [0, %lld]", (long long)b, (long long)qlen[b],
                           (long long)sh.S1);
        }
    }
    if (sparseMode != 0 && sparseMode != 2 && sparseMode != 3)
        return bad(op, "sparseMode %lld is not emulated (0, 2, 3)", (long long)sparseMode);
    if (innerPrecise < 0 || innerPrecise > 3) return bad(op, "innerPrecise must be 0..3");
    bool causal_mode = sh.S1 > 1 && (sparseMode == 2 || sparseMode == 3);
    Dims md;
    if (attenMaskOptional) {
        EMU_CHECK(need_tensor(op, "attenMask", attenMaskOptional, {ACL_BOOL, ACL_INT8, ACL_UINT8}));
        md = D(attenMaskOptional).view;
        if (causal_mode) {
            if (md.size() < 2 || md[md.size() - 1] != 2048 || md[md.size() - 2] != 2048 || numel(md) != 2048 * 2048)
                return bad(op, "sparseMode %lld needs the optimised (2048, 2048) attenMask, got %s",
                           (long long)sparseMode, dims_str(md).c_str());
        } else {
            bool ok;
            size_t r = md.size();
            if (sh.S1 == 1)
                ok = (r == 2 || r == 3 || r == 4) && md[0] == sh.B && md[r - 1] >= sh.S2 && (r < 3 || md[r - 2] == 1) &&
                     (r < 4 || md[1] == 1);
            else
                ok = (r >= 2 && r <= 4) && md[r - 1] >= sh.S2 && md[r - 2] >= sh.S1 &&
                     (r < 3 || md[0] == sh.B || md[0] == 1) && (r < 4 || md[1] == 1);
            if (!ok)
                return bad(
                    op, "attenMask shape %s does not fit Q_S %lld, KV_S %lld, B %lld (see the doc's attenMask shapes)",
                    dims_str(md).c_str(), (long long)sh.S1, (long long)sh.S2, (long long)sh.B);
        }
    } else if (causal_mode)
        return bad(op, "sparseMode %lld needs attenMask", (long long)sparseMode);
    if (pseShiftOptional) {
        EMU_CHECK(need_tensor(op, "pseShift", pseShiftOptional, {dt}));
        const Dims &pd = D(pseShiftOptional).view;
        if (pd.size() != 4 || (pd[0] != sh.B && pd[0] != 1) || pd[1] != sh.N || pd[2] != sh.S1 || pd[3] < sh.S2)
            return bad(op, "pseShift shape %s, expected (B or 1, %lld, %lld, %lld)", dims_str(pd).c_str(),
                       (long long)sh.N, (long long)sh.S1, (long long)sh.S2);
    }
    if (softmaxLseFlag) {
        EMU_CHECK(need_tensor(op, "softmaxLse", softmaxLse, {ACL_FLOAT}));
        EMU_CHECK(need_shape(op, "softmaxLse", softmaxLse, {sh.B, sh.N, sh.S1, 1}));
    }
    std::vector<const aclTensor *> ins{query};
    ins.insert(ins.end(), ks.begin(), ks.end());
    ins.insert(ins.end(), vs.begin(), vs.end());
    ins.push_back(pseShiftOptional);
    ins.push_back(attenMaskOptional);
    size_t nkv = ks.size();
    float scale = (float)scaleValue;
    uint64_t ws = (uint64_t)(sh.S1 * sh.S2) * 4; /* fp32 scores of one (batch, head) */
    return make_executor(
        op, ins, {attentionOut, softmaxLseFlag ? softmaxLse : nullptr}, ws,
        [=](const std::vector<TV> &t, char *w, std::string &) {
            const TV &q = t[0], &pse = t[1 + 2 * nkv], &mask = t[2 + 2 * nkv], &out = t[3 + 2 * nkv],
                     &lse = t[4 + 2 * nkv];
            float *scores = (float *)w;
            const int64_t B = sh.B, S1 = sh.S1, S2 = sh.S2, N = sh.N, Dh = sh.Dh, group = sh.N / sh.Nkv;
            Layout kl = sh.layout == Layout::BNSD_BSND ? Layout::BNSD : sh.layout;
            Layout ol = sh.layout == Layout::BNSD_BSND ? Layout::BSND : sh.layout;
            const float ninf = -std::numeric_limits<float>::infinity();
            for (int64_t b = 0; b < B; b++) {
                const TV &k = t[1 + (nkv == 1 ? 0 : b)], &v = t[1 + nkv + (nkv == 1 ? 0 : b)];
                int64_t kb = nkv == 1 ? b : 0;
                for (int64_t n = 0; n < N; n++) {
                    int64_t g = n / group;
                    for (int64_t i = 0; i < S1; i++) {
                        float *row = scores + i * S2;
                        bool any = false; /* an entry of this query row is not masked */
                        for (int64_t j = 0; j < S2; j++) {
                            bool masked = j >= kvlen[b];
                            if (S1 > 1) {
                                if (sparseMode == 0)
                                    masked = masked || j - i > nextTokens || i - j > preTokens;
                                else if (sparseMode == 2)
                                    masked = masked || j > i;
                                else
                                    masked = masked || j > i + (kvlen[b] - qlen[b]);
                            }
                            if (!masked && mask.base && !causal_mode) {
                                size_t r = md.size();
                                int64_t mi = md[r - 1] * (S1 > 1 ? i : 0) + j; /* index inside the last two dims */
                                int64_t inner = S1 > 1 ? md[r - 1] * md[r - 2] : md[r - 1];
                                int64_t mb = (r >= 3 || S1 == 1) && md[0] == B ? b : 0;
                                masked = mask.geti(mask.elem(mb * inner + mi)) != 0; /* 1 = masked out */
                            }
                            if (masked) {
                                row[j] = ninf;
                                continue;
                            }
                            any = true;
                            float s = 0.0f;
                            for (int64_t d = 0; d < Dh; d++)
                                s += q.getf(q.elem(at(sh.layout, b, n, i, d, S1, N, Dh))) *
                                     k.getf(k.elem(at(kl, kb, g, j, d, S2, sh.Nkv, Dh)));
                            s *= scale;
                            if (pse.base) {
                                int64_t pb = pse.d.view[0] == 1 ? 0 : b;
                                s += pse.getf(pse.elem(((pb * N + n) * S1 + i) * pse.d.view[3] + j));
                            }
                            row[j] = s;
                        }
                        /* a fully masked (or padded) query row gives zeros; otherwise a NaN or +inf score makes
                         * the softmax, and so the row's output, NaN (std::max skips a NaN, exp(NaN - mx) does not) */
                        const bool live = any && i < qlen[b];
                        float mx = ninf;
                        for (int64_t j = 0; j < S2; j++) mx = std::max(mx, row[j]);
                        float sum = 0.0f;
                        if (live)
                            for (int64_t j = 0; j < S2; j++)
                                sum += (row[j] = row[j] == ninf ? 0.0f : std::exp(row[j] - mx));
                        /* Every value row inside the KV length is multiplied by its weight, masked rows by 0, as the
                         * device's tiled P.V matmul does: a NaN or inf value in a masked row (stale rows past the
                         * position) makes the output NaN there too. Rows past an actual length are not read. */
                        const int64_t rows_read = std::min<int64_t>(S2, kvlen[b]);
                        for (int64_t d = 0; d < Dh; d++) {
                            float acc = 0.0f;
                            if (live)
                                for (int64_t j = 0; j < rows_read; j++)
                                    acc += row[j] * v.getf(v.elem(at(kl, kb, g, j, d, S2, sh.Nkv, Dh)));
                            out.setf(out.elem(at(ol, b, n, i, d, S1, N, Dh)), live ? acc / sum : 0.0f);
                        }
                        if (lse.base)
                            lse.setf(lse.elem((b * N + n) * S1 + i),
                                     live ? mx + std::log(sum) : std::numeric_limits<float>::infinity());
                    }
                }
            }
            return 0;
        },
        workspaceSize, executor);
}
EMU_PHASE2(FusedInferAttentionScoreV4)
