/* cast.c — bulk casts to the file's u16 dtype for the converter (asw_cast in asw.h), on the run-time kernels.
 *
 * f32 / fp16 / bf16 source values go through an f32 block on the stack and come out as fp16 or bf16, rounded
 * to nearest even by the kernel set's from_f32 (F16C / AVX-512 / NEON / portable). Overflow (a finite value
 * that became +-inf in fp16) and non-finite source values (NaN, +-inf) are counted so the converter can name
 * the tensor.
 */
#include <stddef.h>
#include <string.h>

#include "asw.h"
#include "backend.h"
#include "kernels.h"

enum { CAST_BLOCK = 4096 }; /* values per pass: 16 KiB of f32 on the stack */

static int is_finite_f32(float f) {
    uint32_t bits;
    memcpy(&bits, &f, sizeof bits);
    return (bits & 0x7f800000u) != 0x7f800000u;
}

/* the counts below are plain int32 loops over one block so that the compiler vectorizes them: they cost more
 * than the cast itself when written per element over mixed widths */
static int32_t count_nonfinite(const float *values, int32_t n) {
    int32_t count = 0;
    for (int32_t i = 0; i < n; i++) count += !is_finite_f32(values[i]);
    return count;
}

static int32_t count_f16_inf(const uint16_t *h, int32_t n) {
    int32_t count = 0;
    for (int32_t i = 0; i < n; i++) count += (h[i] & 0x7fffu) == 0x7c00u;
    return count;
}

int64_t asw_cast(const void *src, int32_t src_type, uint16_t *dst, int32_t dtype, int64_t n, int64_t *nonfinite) {
    if (src == NULL || dst == NULL || nonfinite == NULL || n < 0) {
        asw_set_error("asw_cast: NULL buffer or negative count");
        return -1;
    }
    if (src_type != ASW_SRC_F32 && src_type != ASW_SRC_F16 && src_type != ASW_SRC_BF16) {
        asw_set_error("asw_cast: unknown source type %d", (int)src_type);
        return -1;
    }
    if (dtype != ASW_DTYPE_F16 && dtype != ASW_DTYPE_BF16) {
        asw_set_error("asw_cast: unknown dtype %d", (int)dtype);
        return -1;
    }
    const char *why = NULL;
    const asw_kernels *k = kernels_select(&why);
    if (k == NULL) {
        asw_set_error("%s", why);
        return -1;
    }
    float block[CAST_BLOCK]; /* [CAST_BLOCK] f32 staging */
    int64_t overflow = 0, bad = 0;
    for (int64_t start = 0; start < n; start += CAST_BLOCK) {
        int64_t count = n - start < CAST_BLOCK ? n - start : CAST_BLOCK;
        const float *values = block;
        if (src_type == ASW_SRC_F32) {
            values = (const float *)src + start;
        } else {
            k->to_f32(src_type == ASW_SRC_F16 ? ASW_DTYPE_F16 : ASW_DTYPE_BF16, block,
                      (const uint16_t *)src + start, count);
        }
        k->from_f32(dtype, dst + start, values, count);
        int32_t block_bad = count_nonfinite(values, (int32_t)count);
        bad += block_bad;
        if (dtype == ASW_DTYPE_F16 && block_bad == 0) {
            overflow += count_f16_inf(dst + start, (int32_t)count); /* every source value finite: each inf overflowed */
        } else if (dtype == ASW_DTYPE_F16) {
            for (int64_t i = 0; i < count; i++)
                overflow += ((dst[start + i] & 0x7fffu) == 0x7c00u) & is_finite_f32(values[i]);
        }
    }
    *nonfinite = bad;
    return overflow;
}
