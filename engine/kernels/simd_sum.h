/* The horizontal sums the decode kernels end each dot product with, in one fixed order (so a
 * kernel's result depends only on its operands), and AVX2's lane mask for tails. Header-only:
 * each function is compiled for its instruction set inside the caller's target-specific code. */
#pragma once
#include <immintrin.h>
#include <stdint.h>

__attribute__((target("avx512f"), always_inline)) static inline float lorad_hsum_avx512(__m512 v) {
    __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
    __m256 a = _mm256_add_ps(_mm512_castps512_ps256(v), hi);
    __m128 b = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    b = _mm_add_ps(b, _mm_movehl_ps(b, b));
    b = _mm_add_ss(b, _mm_movehdup_ps(b));
    return _mm_cvtss_f32(b);
}

__attribute__((target("avx2,fma"), always_inline)) static inline float lorad_hsum_avx2(__m256 v) {
    __m128 b = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    b = _mm_add_ps(b, _mm_movehl_ps(b, b));
    b = _mm_add_ss(b, _mm_movehdup_ps(b));
    return _mm_cvtss_f32(b);
}

/* Lanes [0, n) set, for vmaskmovps (which never faults on the lanes left out). */
__attribute__((target("avx2,fma"), always_inline)) static inline __m256i lorad_lanes_below_avx2(int64_t n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
