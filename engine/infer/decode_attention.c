#include "decode_attention.h"

#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "cpu_features.h"
#include "simd_sum.h"
#include "vec_math.h"

/* Every kernel below computes one (row, head) alone, in an order fixed by hd and n_keys: a score
 * is the fixed-order sum of one key's products, and each output element sums p_j V_j over j
 * ascending. So a row's answer never depends on the other rows of the step or on the thread
 * that ran it, which is what the decoder's batch invariance needs. The ISA is fixed per process
 * (lorad_isa_active). */

#define ALWAYS_INLINE static inline __attribute__((always_inline))
#define AVX512 __attribute__((target("avx512f")))
#define AVX2 __attribute__((target("avx2,fma")))

static inline float bf16_value(uint16_t h) {
    union { uint32_t u; float f; } v = {.u = (uint32_t)h << 16};
    return v.f;
}

/* scores (n) = exp(scores - max); returns the sum, which the caller divides the output by. */
static float exp_scores(float *scores, int n) {
    float mx = -INFINITY;
    for (int j = 0; j < n; j++) mx = scores[j] > mx ? scores[j] : mx;
    lorad_exp_shift_row(scores, n, mx);
    float sum = 0.0f;
    for (int j = 0; j < n; j++) sum += scores[j];
    return sum;
}

/* ---- AVX-512F: 16 lanes of the head dimension per vector ---- */

/* 16 elements of a K or V row from k on, n (<= 16) of them valid, zero past them. A 16-bit
 * masked load needs AVX512BW, which LORAD_ISA=avx512 does not promise, so a bf16 tail goes
 * through a zeroed copy. */
AVX512 ALWAYS_INLINE __m512 load16_avx512(const void *row, int k, int n, bool bf16) {
    if (bf16) {
        __m256i h;
        if (n == 16) h = _mm256_loadu_si256((const __m256i *)((const uint16_t *)row + k));
        else {
            uint16_t t[16] = {0};
            memcpy(t, (const uint16_t *)row + k, (size_t)n * sizeof t[0]);
            h = _mm256_loadu_si256((const __m256i *)t);
        }
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
    if (n == 16) return _mm512_loadu_ps((const float *)row + k);
    return _mm512_maskz_loadu_ps((__mmask16)((1u << n) - 1), (const float *)row + k);
}

AVX512 ALWAYS_INLINE void attend_avx512(float *out, float *scores, const float *q, const void *K, const void *V,
                                        int64_t stride, int n_keys, int hd, bool bf16) {
    size_t esz = bf16 ? 2 : 4;
    const char *Kb = K, *Vb = V;
    float scale = 1.0f / sqrtf((float)hd);
    for (int j = 0; j < n_keys; j++) {
        const char *kr = Kb + (size_t)j * (size_t)stride * esz;
        __m512 acc = _mm512_setzero_ps();
        for (int k = 0; k < hd; k += 16) {
            int n = hd - k < 16 ? hd - k : 16;
            __m512 qv = _mm512_maskz_loadu_ps((__mmask16)((1u << n) - 1), q + k);
            acc = _mm512_fmadd_ps(qv, load16_avx512(kr, k, n, bf16), acc);
        }
        scores[j] = lorad_hsum_avx512(acc) * scale;
    }
    float inv = 1.0f / exp_scores(scores, n_keys);
    /* four vectors of the output at a time stay in registers over all the keys */
    for (int k0 = 0; k0 < hd; k0 += 64) {
        __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
        int nc = (hd - k0 + 15) / 16;
        if (nc > 4) nc = 4;
        for (int j = 0; j < n_keys; j++) {
            const char *vr = Vb + (size_t)j * (size_t)stride * esz;
            __m512 p = _mm512_set1_ps(scores[j]);
            for (int c = 0; c < nc; c++) {
                int k = k0 + 16 * c, n = hd - k < 16 ? hd - k : 16;
                acc[c] = _mm512_fmadd_ps(p, load16_avx512(vr, k, n, bf16), acc[c]);
            }
        }
        for (int c = 0; c < nc; c++) {
            int k = k0 + 16 * c, n = hd - k < 16 ? hd - k : 16;
            _mm512_mask_storeu_ps(out + k, (__mmask16)((1u << n) - 1), _mm512_mul_ps(acc[c], _mm512_set1_ps(inv)));
        }
    }
}

AVX512 static void attend_f32_avx512(float *out, float *scores, const float *q, const float *K, const float *V,
                                     int64_t stride, int n_keys, int hd) {
    attend_avx512(out, scores, q, K, V, stride, n_keys, hd, false);
}
AVX512 static void attend_bf16_avx512(float *out, float *scores, const float *q, const uint16_t *K, const uint16_t *V,
                                      int64_t stride, int n_keys, int hd) {
    attend_avx512(out, scores, q, K, V, stride, n_keys, hd, true);
}

/* ---- AVX2 + FMA: the same with 8 lanes ---- */

AVX2 ALWAYS_INLINE __m256 load8_avx2(const void *row, int k, int n, bool bf16) {
    if (bf16) {
        __m128i h;
        if (n == 8) h = _mm_loadu_si128((const __m128i *)((const uint16_t *)row + k));
        else {
            uint16_t t[8] = {0};
            memcpy(t, (const uint16_t *)row + k, (size_t)n * sizeof t[0]);
            h = _mm_loadu_si128((const __m128i *)t);
        }
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    }
    if (n == 8) return _mm256_loadu_ps((const float *)row + k);
    return _mm256_maskload_ps((const float *)row + k, lorad_lanes_below_avx2(n));
}

AVX2 ALWAYS_INLINE void attend_avx2(float *out, float *scores, const float *q, const void *K, const void *V,
                                    int64_t stride, int n_keys, int hd, bool bf16) {
    size_t esz = bf16 ? 2 : 4;
    const char *Kb = K, *Vb = V;
    float scale = 1.0f / sqrtf((float)hd);
    for (int j = 0; j < n_keys; j++) {
        const char *kr = Kb + (size_t)j * (size_t)stride * esz;
        __m256 acc = _mm256_setzero_ps();
        for (int k = 0; k < hd; k += 8) {
            int n = hd - k < 8 ? hd - k : 8;
            __m256 qv = _mm256_maskload_ps(q + k, lorad_lanes_below_avx2(n));
            acc = _mm256_fmadd_ps(qv, load8_avx2(kr, k, n, bf16), acc);
        }
        scores[j] = lorad_hsum_avx2(acc) * scale;
    }
    float inv = 1.0f / exp_scores(scores, n_keys);
    for (int k0 = 0; k0 < hd; k0 += 32) {
        __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
        int nc = (hd - k0 + 7) / 8;
        if (nc > 4) nc = 4;
        for (int j = 0; j < n_keys; j++) {
            const char *vr = Vb + (size_t)j * (size_t)stride * esz;
            __m256 p = _mm256_set1_ps(scores[j]);
            for (int c = 0; c < nc; c++) {
                int k = k0 + 8 * c, n = hd - k < 8 ? hd - k : 8;
                acc[c] = _mm256_fmadd_ps(p, load8_avx2(vr, k, n, bf16), acc[c]);
            }
        }
        for (int c = 0; c < nc; c++) {
            int k = k0 + 8 * c, n = hd - k < 8 ? hd - k : 8;
            _mm256_maskstore_ps(out + k, lorad_lanes_below_avx2(n), _mm256_mul_ps(acc[c], _mm256_set1_ps(inv)));
        }
    }
}

AVX2 static void attend_f32_avx2(float *out, float *scores, const float *q, const float *K, const float *V,
                                 int64_t stride, int n_keys, int hd) {
    attend_avx2(out, scores, q, K, V, stride, n_keys, hd, false);
}
AVX2 static void attend_bf16_avx2(float *out, float *scores, const float *q, const uint16_t *K, const uint16_t *V,
                                  int64_t stride, int n_keys, int hd) {
    attend_avx2(out, scores, q, K, V, stride, n_keys, hd, true);
}

/* ---- plain x86-64 ---- */

static void attend_scalar(float *out, float *scores, const float *q, const void *K, const void *V, int64_t stride,
                          int n_keys, int hd, bool bf16) {
    float scale = 1.0f / sqrtf((float)hd);
    for (int j = 0; j < n_keys; j++) {
        float s = 0.0f;
        for (int k = 0; k < hd; k++) {
            int64_t at = j * stride + k;
            s += q[k] * (bf16 ? bf16_value(((const uint16_t *)K)[at]) : ((const float *)K)[at]);
        }
        scores[j] = s * scale;
    }
    float inv = 1.0f / exp_scores(scores, n_keys);
    memset(out, 0, sizeof(float) * (size_t)hd);
    for (int j = 0; j < n_keys; j++)
        for (int k = 0; k < hd; k++) {
            int64_t at = j * stride + k;
            out[k] += scores[j] * (bf16 ? bf16_value(((const uint16_t *)V)[at]) : ((const float *)V)[at]);
        }
    for (int k = 0; k < hd; k++) out[k] *= inv;
}

void lorad_decode_attend_f32(float *out, float *scores, const float *q, const float *K, const float *V,
                             int64_t stride, int n_keys, int hd) {
    enum lorad_isa isa = lorad_isa_active();
    if (isa >= LORAD_ISA_AVX512) attend_f32_avx512(out, scores, q, K, V, stride, n_keys, hd);
    else if (isa >= LORAD_ISA_AVX2) attend_f32_avx2(out, scores, q, K, V, stride, n_keys, hd);
    else attend_scalar(out, scores, q, K, V, stride, n_keys, hd, false);
}

void lorad_decode_attend_bf16(float *out, float *scores, const float *q, const uint16_t *K, const uint16_t *V,
                              int64_t stride, int n_keys, int hd) {
    enum lorad_isa isa = lorad_isa_active();
    if (isa >= LORAD_ISA_AVX512) attend_bf16_avx512(out, scores, q, K, V, stride, n_keys, hd);
    else if (isa >= LORAD_ISA_AVX2) attend_bf16_avx2(out, scores, q, K, V, stride, n_keys, hd);
    else attend_scalar(out, scores, q, K, V, stride, n_keys, hd, true);
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
