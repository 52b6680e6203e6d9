/* Built with -O3 -fno-trapping-math (engine/CMakeLists.txt): the loops below only vectorise when
 * float compares may be if-converted, and we never rely on floating-point exception flags. */
#include "vec_math.h"

#include <stdbool.h>
#include <string.h>

#include "cpu_features.h"

#define ROW_KERNELS(SUFFIX)                                                                               \
    static inline float exp_approx_##SUFFIX(float x) {                                                   \
        /* written so a NaN x clamps to a finite value: converting NaN to int below would be UB */    \
        float xc = x > -87.3f ? x : -87.3f;                                                               \
        xc = xc < 88.3f ? xc : 88.3f;                                                                     \
        /* round to nearest with the 1.5*2^23 trick: no libm call inside the loop */                      \
        float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;                                \
        float r = xc - n * 0.693359375f;                                                                  \
        r = r + n * 2.12194440e-4f;                                                                       \
        float p = 1.9875691500e-4f;                                                                       \
        p = p * r + 1.3981999507e-3f;                                                                     \
        p = p * r + 8.3334519073e-3f;                                                                     \
        p = p * r + 4.1665795894e-2f;                                                                     \
        p = p * r + 1.6666665459e-1f;                                                                     \
        p = p * r + 5.0000001201e-1f;                                                                     \
        p = p * r * r + r + 1.0f;                                                                         \
        int32_t bits = ((int32_t)n + 127) * (1 << 23);                                                    \
        float scale;                                                                                      \
        memcpy(&scale, &bits, sizeof scale);                                                              \
        float y = p * scale;                                                                              \
        /* (x - x) is 0 for finite x and NaN for NaN: a NaN input still yields NaN */                 \
        return x < -87.3f ? 0.0f : y + (x - x);                                                           \
    }                                                                                                     \
    static void exp_shift_row_##SUFFIX(float *v, int64_t n, float shift) {                               \
        for (int64_t j = 0; j < n; j++) v[j] = exp_approx_##SUFFIX(v[j] - shift);                        \
    }                                                                                                     \
    static void swiglu_row_##SUFFIX(float *out, const float *gate, const float *up, int64_t n) {         \
        for (int64_t i = 0; i < n; i++) out[i] = gate[i] / (1.0f + exp_approx_##SUFFIX(-gate[i])) * up[i]; \
    }                                                                                                     \
    static void swiglu_back_row_##SUFFIX(float *dgate, float *dup, const float *dout, const float *gate, \
                                         const float *up, int64_t n) {                                    \
        for (int64_t i = 0; i < n; i++) {                                                                 \
            float g = gate[i], sg = 1.0f / (1.0f + exp_approx_##SUFFIX(-g)), d = dout[i];                 \
            dgate[i] = d * up[i] * sg * (1.0f + g * (1.0f - sg));                                         \
            dup[i] = d * g * sg;                                                                          \
        }                                                                                                 \
    }

#pragma GCC push_options
#pragma GCC target("avx2,fma")
ROW_KERNELS(avx2)
#pragma GCC pop_options
ROW_KERNELS(base)

static bool have_avx2_fma(void) { return lorad_isa_active() >= LORAD_ISA_AVX2; }

void lorad_exp_shift_row(float *v, int64_t n, float shift) {
    if (have_avx2_fma()) exp_shift_row_avx2(v, n, shift);
    else exp_shift_row_base(v, n, shift);
}

void lorad_swiglu_row(float *out, const float *gate, const float *up, int64_t n) {
    if (have_avx2_fma()) swiglu_row_avx2(out, gate, up, n);
    else swiglu_row_base(out, gate, up, n);
}

void lorad_swiglu_back_row(float *dgate, float *dup, const float *dout, const float *gate, const float *up,
                           int64_t n) {
    if (have_avx2_fma()) swiglu_back_row_avx2(dgate, dup, dout, gate, up, n);
    else swiglu_back_row_base(dgate, dup, dout, gate, up, n);
}
