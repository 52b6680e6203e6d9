#include "bf16gemm_avx512.h"

#include <assert.h>
#include <immintrin.h>

#include "cpu_features.h"
#include "sanitizer.h"
#include "sgemm_avx512.h"
#include "transpose_avx512.h"

/* Register tile as in the fp32 kernel. KC counts k values (KC / 2 pairs): a KC x NR panel of B in
 * bf16 is the same 32 KB as the fp32 kernel's, and the MC x KC block of A (384 KB) stays in L2.
 * NC is wide because A is packed (rounded, transposed) again for every NC columns of B: at 1024 a
 * thread's 2816-column half of TinyLlama's gate/up projections packed its activations three
 * times. The KC x NC block of B (3 MB) lives in L3 either way; the kernel streams its 32 KB
 * panels. */
#define MR 12
#define NR 32
#define MC 384
#define KC 512
#define NC 3072

#define BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512bf16")))

_Static_assert(MC % MR == 0 && NC % NR == 0 && KC % 32 == 0, "blocks are whole tiles and vectors");
_Static_assert(LORAD_GEMM_BF16_WORK_FLOATS >= (size_t)MC * KC / 2 + (size_t)KC * NC / 2 + (size_t)NR * KC + 16,
               "work holds both packs and a decoded panel");

bool lorad_gemm_bf16_avx512_available(void) { return lorad_isa_detected() >= LORAD_ISA_AVX512_BF16; }

/* The pair (lo, hi) as one packed lane: lo in the low half, as vdpbf16ps and memory order want. */
static inline uint32_t pair(uint16_t lo, uint16_t hi) { return (uint32_t)lo | (uint32_t)hi << 16; }

static inline uint16_t elem_bf16(enum lorad_dtype dt, const void *p, int64_t idx) {
    if (dt == LORAD_DTYPE_BF16) return ((const uint16_t *)p)[idx];
    return lorad_f32_to_bf16(((const float *)p)[idx]);
}

/* Element (r, c) of stored B (ldb elements per row) from column b_col0 on, any dtype, as bf16. */
static uint16_t stored_bf16(enum lorad_dtype dt, const void *B, int64_t ldb, int64_t b_col0, int64_t r, int64_t c) {
    if (!lorad_dtype_is_quantised(dt)) return elem_bf16(dt, B, r * ldb + b_col0 + c);
    struct lorad_tensor t = {B, dt, r + 1, ldb};
    return lorad_f32_to_bf16(lorad_tensor_value(&t, r, b_col0 + c));
}

/* 32 f32 at src rounded to bf16, in order, as 16 pairs. */
BF16_TARGET static inline __m512i round_32(const float *src) {
    return (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(src + 16), _mm512_loadu_ps(src));
}

/* 32 consecutive elements at src as bf16 (used as stored, or rounded from f32). */
BF16_TARGET static inline __m512i load_32(enum lorad_dtype dt, const void *src) {
    if (dt == LORAD_DTYPE_BF16) return _mm512_loadu_si512(src);
    return round_32((const float *)src);
}

/* ap (kc2, MR) pairs = bf16(A[i0:i0+mc, k0:k0+kc]) in MR-row panels, rows past mc zero. */
BF16_TARGET static void pack_a(uint32_t *ap, const float *A, int64_t lda, int64_t i0, int64_t mc, int64_t k0,
                               int64_t kc) {
    int64_t kc2 = (kc + 1) / 2, kv = kc & ~(int64_t)31;
    for (int64_t p = 0; p < mc; p += MR) {
        int64_t rows = mc - p < MR ? mc - p : MR;
        uint32_t *dst = ap + p * kc2;
        const float *src = A + (i0 + p) * lda + k0;
        int64_t kdone = 0;
        if (rows == MR) {
            /* 32 k of 12 rows: rounded to 16 pairs per row, then the pairs transposed. */
            for (int64_t k = 0; k < kv; k += 32) {
                __m512 r[16];
                for (int i = 0; i < MR; i++) r[i] = _mm512_castsi512_ps(round_32(src + i * lda + k));
                for (int i = MR; i < 16; i++) r[i] = _mm512_setzero_ps();
                lorad_transpose_16x16(r);
                for (int c = 0; c < 16; c++)
                    _mm512_mask_storeu_ps(dst + (k / 2 + c) * MR, (__mmask16)((1u << MR) - 1), r[c]);
            }
            kdone = kv;
        }
        for (int64_t kk = kdone / 2; kk < kc2; kk++)
            for (int64_t i = 0; i < MR; i++) {
                uint16_t lo = 0, hi = 0;
                if (i < rows) {
                    lo = lorad_f32_to_bf16(src[i * lda + 2 * kk]);
                    if (2 * kk + 1 < kc) hi = lorad_f32_to_bf16(src[i * lda + 2 * kk + 1]);
                }
                dst[kk * MR + i] = pair(lo, hi);
            }
    }
}

/* bp (nc rounded up to NR panels, each (kc2, NR) pairs) = bf16(op(B)[k0:k0+kc, j0:j0+nc]), zero
 * columns past nc and a zero partner for an odd last k. */
BF16_TARGET static void pack_b(uint32_t *bp, float *tmp, bool trans_b, enum lorad_dtype dt_in, const void *B_in,
                               int64_t ldb_in, int64_t b_col0, int64_t k0_in, int64_t kc, int64_t j0, int64_t nc) {
    int64_t kc2 = (kc + 1) / 2;
    for (int64_t p = 0; p < nc; p += NR) {
        int64_t cols = nc - p < NR ? nc - p : NR;
        uint32_t *dst = bp + p * kc2;
        /* A quantised B is decoded panel by panel into tmp (f32) and packed from there, so
         * it is dequantised once per pack and never as a whole. Segments are 32-aligned: K and
         * N are whole blocks, and k0, b_col0 and the panels' columns are multiples of 32. */
        enum lorad_dtype dt = dt_in;
        const void *B = (const char *)B_in + (lorad_dtype_is_quantised(dt_in) ? 0 : b_col0 * lorad_dtype_size(dt_in));
        int64_t ldb = ldb_in, k0 = k0_in, jp = j0 + p, esz = lorad_dtype_size(dt_in);
        if (lorad_dtype_is_quantised(dt_in)) {
            size_t row_bytes = lorad_dtype_row_bytes(dt_in, ldb_in);
            assert(cols == NR || trans_b);
            if (trans_b)
                for (int64_t c = 0; c < cols; c++)
                    lorad_row_segment_f32(tmp + c * kc, dt_in, (const char *)B_in + (size_t)(j0 + p + c) * row_bytes,
                                          b_col0 + k0_in, kc);
            else
                for (int64_t k = 0; k < kc; k++)
                    lorad_row_segment_f32(tmp + k * NR, dt_in, (const char *)B_in + (size_t)(k0_in + k) * row_bytes,
                                          b_col0 + j0 + p, NR);
            dt = LORAD_DTYPE_F32;
            B = tmp;
            ldb = trans_b ? kc : NR;
            k0 = 0;
            jp = 0;
            esz = 4;
        }
        const char *base = (const char *)B;
        if (trans_b) {
            /* B (N, K): a column of op(B) is a row of B, so its k pairs are consecutive 32-bit
             * lanes; blocks of 16 columns x 16 pairs are transposed in registers. */
            int64_t kv = kc & ~(int64_t)31, jv = cols & ~(int64_t)15;
            for (int64_t j = 0; j < jv; j += 16)
                for (int64_t k = 0; k < kv; k += 32) {
                    __m512 r[16];
                    for (int c = 0; c < 16; c++)
                        r[c] = _mm512_castsi512_ps(load_32(dt, base + ((jp + j + c) * ldb + k0 + k) * esz));
                    lorad_transpose_16x16(r);
                    for (int q = 0; q < 16; q++) _mm512_store_ps((float *)(dst + (k / 2 + q) * NR + j), r[q]);
                }
            for (int64_t j = 0; j < NR; j++) {
                int64_t row = (jp + j) * ldb + k0;
                for (int64_t kk = j < jv ? kv / 2 : 0; kk < kc2; kk++) {
                    uint16_t lo = 0, hi = 0;
                    if (j < cols) {
                        lo = elem_bf16(dt, B, row + 2 * kk);
                        if (2 * kk + 1 < kc) hi = elem_bf16(dt, B, row + 2 * kk + 1);
                    }
                    dst[kk * NR + j] = pair(lo, hi);
                }
            }
        } else {
            /* B (K, N): rows k and k+1 are interleaved element by element. unpack works within
             * 128-bit lanes, so lo holds columns {0-3, 8-11, 16-19, 24-27} and hi the others;
             * the permutes put them back in column order. */
            const __m512i first = _mm512_set_epi64(11, 10, 3, 2, 9, 8, 1, 0);
            const __m512i second = _mm512_set_epi64(15, 14, 7, 6, 13, 12, 5, 4);
            for (int64_t kk = 0; kk < kc2; kk++) {
                int64_t r0 = (k0 + 2 * kk) * ldb + jp, r1 = r0 + ldb;
                bool has_hi = 2 * kk + 1 < kc;
                if (cols == NR) {
                    __m512i a = load_32(dt, base + r0 * esz);
                    __m512i b = has_hi ? load_32(dt, base + r1 * esz) : _mm512_setzero_si512();
                    __m512i lo = _mm512_unpacklo_epi16(a, b), hi = _mm512_unpackhi_epi16(a, b);
                    _mm512_store_si512(dst + kk * NR, _mm512_permutex2var_epi64(lo, first, hi));
                    _mm512_store_si512(dst + kk * NR + 16, _mm512_permutex2var_epi64(lo, second, hi));
                } else {
                    for (int64_t j = 0; j < NR; j++) {
                        uint16_t lo = 0, hi = 0;
                        if (j < cols) {
                            lo = elem_bf16(dt, B, r0 + j);
                            if (has_hi) hi = elem_bf16(dt, B, r1 + j);
                        }
                        dst[kk * NR + j] = pair(lo, hi);
                    }
                }
            }
        }
    }
}

/* C[0:mr, 0:nr] (ldc) = beta * C + Ap · Bp over kc2 pairs for one MR x NR tile; beta == 0 does
 * not read C. ap (kc2, MR), bp (kc2, NR), both 64-byte aligned. Uninstrumented: the caller checks
 * the bytes it touches (sanitizer.h). */
BF16_TARGET LORAD_UNINSTRUMENTED static void kernel_12x32(int64_t kc2, const uint32_t *restrict ap, const uint32_t *restrict bp,
                                     float *restrict C, int64_t ldc, int mr, int nr, float beta) {
    __m512 c0[MR], c1[MR];
#pragma GCC unroll 12
    for (int i = 0; i < MR; i++) c0[i] = c1[i] = _mm512_setzero_ps();
    for (int64_t kk = 0; kk < kc2; kk++) {
        __m512bh b0 = (__m512bh)_mm512_load_si512(bp), b1 = (__m512bh)_mm512_load_si512(bp + 16);
#pragma GCC unroll 12
        for (int i = 0; i < MR; i++) {
            __m512bh a = (__m512bh)_mm512_set1_epi32((int)ap[i]);
            c0[i] = _mm512_dpbf16_ps(c0[i], a, b0);
            c1[i] = _mm512_dpbf16_ps(c1[i], a, b1);
        }
        ap += MR;
        bp += NR;
    }
    __mmask16 m0 = nr >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << nr) - 1);
    __mmask16 m1 = nr >= 32 ? (__mmask16)0xFFFF : nr > 16 ? (__mmask16)((1u << (nr - 16)) - 1) : 0;
    __m512 vb = _mm512_set1_ps(beta);
#pragma GCC unroll 12
    for (int i = 0; i < MR; i++) {
        if (i >= mr) break;
        float *row = C + i * ldc;
        __m512 r0 = c0[i], r1 = c1[i];
        if (beta != 0.0f) {
            r0 = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m0, row), r0);
            r1 = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m1, row + 16), r1);
        }
        _mm512_mask_storeu_ps(row, m0, r0);
        _mm512_mask_storeu_ps(row + 16, m1, r1);
    }
}

void lorad_gemm_bf16_avx512(bool trans_b, enum lorad_dtype b_dtype, int64_t M, int64_t N, int64_t K, const float *A,
                            int64_t lda, const void *B, int64_t ldb, int64_t b_col0, float beta, float *C, int64_t ldc,
                            float *work) {
    assert(lorad_gemm_bf16_avx512_available());
    assert(b_dtype == LORAD_DTYPE_F32 || b_dtype == LORAD_DTYPE_BF16 || lorad_dtype_is_quantised(b_dtype));
    if (M <= 0 || N <= 0) return;
    if (K == 0) {
        for (int64_t i = 0; i < M; i++)
            for (int64_t j = 0; j < N; j++) C[i * ldc + j] = beta == 0.0f ? 0.0f : beta * C[i * ldc + j];
        return;
    }
    uint32_t *ap = (uint32_t *)(((uintptr_t)work + 63) & ~(uintptr_t)63);
    uint32_t *bp = ap + (size_t)MC * KC / 2;
    float *tmp = (float *)(bp + (size_t)KC * NC / 2);
    for (int64_t j0 = 0; j0 < N; j0 += NC) {
        int64_t nc = N - j0 < NC ? N - j0 : NC;
        for (int64_t k0 = 0; k0 < K; k0 += KC) {
            int64_t kc = K - k0 < KC ? K - k0 : KC, kc2 = (kc + 1) / 2;
            float b = k0 == 0 ? beta : 1.0f;
            pack_b(bp, tmp, trans_b, b_dtype, B, ldb, b_col0, k0, kc, j0, nc);
            lorad_asan_check_region(bp, (size_t)((nc + NR - 1) / NR * NR * kc2) * sizeof *bp);
            for (int64_t i0 = 0; i0 < M; i0 += MC) {
                int64_t mc = M - i0 < MC ? M - i0 : MC;
                pack_a(ap, A, lda, i0, mc, k0, kc);
                lorad_asan_check_region(ap, (size_t)((mc + MR - 1) / MR * MR * kc2) * sizeof *ap);
                for (int64_t jr = 0; jr < nc; jr += NR) {
                    int nr = (int)(nc - jr < NR ? nc - jr : NR);
                    for (int64_t ir = 0; ir < mc; ir += MR) {
                        int mr = (int)(mc - ir < MR ? mc - ir : MR);
                        float *c = C + (i0 + ir) * ldc + j0 + jr;
                        lorad_asan_check_tile(c, ldc, mr, nr);
                        kernel_12x32(kc2, ap + ir * kc2, bp + jr * kc2, c, ldc, mr, nr, b);
                    }
                }
            }
        }
    }
}

void lorad_gemm_bf16_ref(bool trans_b, enum lorad_dtype b_dtype, int64_t M, int64_t N, int64_t K, const float *A,
                         int64_t lda, const void *B, int64_t ldb, int64_t b_col0, float beta, float *C, int64_t ldc) {
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < N; j++) {
            double acc = 0;
            for (int64_t k = 0; k < K; k++) {
                float a = lorad_bf16_to_f32(lorad_f32_to_bf16(A[i * lda + k]));
                float b = lorad_bf16_to_f32(stored_bf16(b_dtype, B, ldb, b_col0, trans_b ? j : k, trans_b ? k : j));
                acc += (double)a * b;
            }
            double prior = beta == 0.0f ? 0.0 : (double)beta * C[i * ldc + j];
            C[i * ldc + j] = (float)(acc + prior);
        }
}
