/* rope.h — RoPE inverse frequencies, shared by the cpu backend (C) and the aclnn backend (C++): one definition of
 * how positions become angles, exactly as transformers computes them (f32 operations in the same order). */
#ifndef ASW_ROPE_H
#define ASW_ROPE_H

#include <math.h>

#include "asw.h"

/* inv_freq [head_dim / 2] for the config, llama3 scaling applied */
static inline void asw_rope_inv_freq(const asw_config *c, float *inv_freq) {
    int half = c->head_dim / 2;
    for (int j = 0; j < half; j++) {
        float e = (float)(2 * j) / (float)c->head_dim;
        inv_freq[j] = 1.0f / powf(c->rope_theta, e);
    }
    if (c->rope_scaling != ASW_ROPE_LLAMA3) return;
    /* transformers modeling_rope_utils._compute_llama3_parameters */
    float factor = c->rope_factor;
    double old_len = (double)c->rope_original_max_pos;
    float low_wavelen = (float)(old_len / c->rope_low_freq_factor);
    float high_wavelen = (float)(old_len / c->rope_high_freq_factor);
    float band = (float)((double)c->rope_high_freq_factor - (double)c->rope_low_freq_factor);
    for (int j = 0; j < half; j++) {
        float inv = inv_freq[j];
        float wavelen = (1.0f / inv) * (float)(2.0 * 3.14159265358979323846);
        if (wavelen > low_wavelen) {
            inv_freq[j] = inv / factor;
        } else if (!(wavelen < high_wavelen)) {
            float smooth = ((1.0f / wavelen) * (float)old_len - c->rope_low_freq_factor) / band;
            inv_freq[j] = (1.0f - smooth) * inv / factor + smooth * inv;
        }
    }
}

#endif /* ASW_ROPE_H */
