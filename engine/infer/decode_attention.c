#include "decode_attention.h"

#include <math.h>
#include <string.h>

#include "vec_math.h"

/* Partial sums in LANES independent accumulators, added in a fixed order at the end: the inner
 * loop over a fixed width is what the vectoriser turns into SIMD without reassociating floats. */
#define LANES 16

static inline float bf16_value(uint16_t h) {
    union { uint32_t u; float f; } v = {.u = (uint32_t)h << 16};
    return v.f;
}

static float dot_f32(const float *a, const float *b, int n) {
    float acc[LANES] = {0};
    int k = 0;
    for (; k + LANES <= n; k += LANES)
        for (int l = 0; l < LANES; l++) acc[l] += a[k + l] * b[k + l];
    float s = 0.0f;
    for (; k < n; k++) s += a[k] * b[k];
    for (int l = 0; l < LANES; l++) s += acc[l];
    return s;
}

static float dot_bf16(const float *a, const uint16_t *b, int n) {
    float acc[LANES] = {0};
    int k = 0;
    for (; k + LANES <= n; k += LANES)
        for (int l = 0; l < LANES; l++) acc[l] += a[k + l] * bf16_value(b[k + l]);
    float s = 0.0f;
    for (; k < n; k++) s += a[k] * bf16_value(b[k]);
    for (int l = 0; l < LANES; l++) s += acc[l];
    return s;
}

/* scores (n) = exp(scores - max) / sum: returns nothing, normalises in place. */
static void softmax_in_place(float *scores, int n) {
    float mx = -INFINITY;
    for (int j = 0; j < n; j++) mx = scores[j] > mx ? scores[j] : mx;
    lorad_exp_shift_row(scores, n, mx);
    float sum = 0.0f;
    for (int j = 0; j < n; j++) sum += scores[j];
    float inv = 1.0f / sum;
    for (int j = 0; j < n; j++) scores[j] *= inv;
}

void lorad_decode_attend_f32(float *out, float *scores, const float *q, const float *K, const float *V,
                             int64_t stride, int n_keys, int hd) {
    float scale = 1.0f / sqrtf((float)hd);
    for (int j = 0; j < n_keys; j++) scores[j] = dot_f32(q, K + j * stride, hd) * scale;
    softmax_in_place(scores, n_keys);
    memset(out, 0, sizeof(float) * (size_t)hd);
    for (int j = 0; j < n_keys; j++) {
        const float *v = V + j * stride;
        float p = scores[j];
        for (int k = 0; k < hd; k++) out[k] += p * v[k];
    }
}

void lorad_decode_attend_bf16(float *out, float *scores, const float *q, const uint16_t *K, const uint16_t *V,
                              int64_t stride, int n_keys, int hd) {
    float scale = 1.0f / sqrtf((float)hd);
    for (int j = 0; j < n_keys; j++) scores[j] = dot_bf16(q, K + j * stride, hd) * scale;
    softmax_in_place(scores, n_keys);
    memset(out, 0, sizeof(float) * (size_t)hd);
    for (int j = 0; j < n_keys; j++) {
        const uint16_t *v = V + j * stride;
        float p = scores[j];
        for (int k = 0; k < hd; k++) out[k] += p * bf16_value(v[k]);
    }
}

void lorad_decode_attend_ref(float *out, const float *q, const float *K, const float *V, int64_t stride, int n_keys,
                             int hd) {
    double mx = -INFINITY, sum = 0, acc[1024] = {0};
    double scale = 1.0 / sqrt((double)hd);
    for (int j = 0; j < n_keys; j++) {
        double s = 0;
        for (int k = 0; k < hd; k++) s += (double)q[k] * K[j * stride + k];
        mx = s * scale > mx ? s * scale : mx;
    }
    for (int j = 0; j < n_keys; j++) {
        double s = 0;
        for (int k = 0; k < hd; k++) s += (double)q[k] * K[j * stride + k];
        double p = exp(s * scale - mx);
        sum += p;
        for (int k = 0; k < hd && k < 1024; k++) acc[k] += p * V[j * stride + k];
    }
    for (int k = 0; k < hd && k < 1024; k++) out[k] = (float)(acc[k] / sum);
}
