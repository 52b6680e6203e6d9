#include "sgemm_avx512.h"

#include <assert.h>
#include <immintrin.h>

#include "cpu_features.h"
#include "sanitizer.h"
#include "transpose_avx512.h"

/* Register tile and cache blocks. MR x NR = 12 x 32 takes 24 of the 32 zmm registers as
 * accumulators. A KC x NR panel of B (32 KB) stays in L1 while the MR-row panels of A stream
 * past it from L2; the packed MC x KC block of A (384 KB) and KC x NC block of B (1 MB) fit L2. */
#define MR 12
#define NR 32
#define MC 384
#define KC 256
#define NC 1024

_Static_assert(MC % MR == 0 && NC % NR == 0, "blocks are whole tiles");
_Static_assert(LORAD_SGEMM_AVX512_WORK_FLOATS >= (size_t)MC * KC + (size_t)KC * NC + (size_t)NR * KC + 16,
               "work holds both packs and a decoded panel");

bool lorad_sgemm_avx512_available(void) { return lorad_isa_detected() >= LORAD_ISA_AVX512; }

/* dst (kc, MR) = alpha * the MR rows of src (row stride lda) transposed, 16 k at a time through
 * a register transpose with four zero rows; the ragged end of k element by element. */
__attribute__((target("avx512f"))) static void pack_a_rows(float *dst, const float *src, int64_t lda, int64_t kc,
                                                          float alpha) {
    __m512 va = _mm512_set1_ps(alpha);
    int64_t kv = kc & ~(int64_t)15;
    for (int64_t k = 0; k < kv; k += 16) {
        __m512 r[16];
        for (int i = 0; i < MR; i++) r[i] = _mm512_mul_ps(va, _mm512_loadu_ps(src + i * lda + k));
        for (int i = MR; i < 16; i++) r[i] = _mm512_setzero_ps();
        lorad_transpose_16x16(r);
        for (int c = 0; c < 16; c++) _mm512_mask_storeu_ps(dst + (k + c) * MR, (__mmask16)((1u << MR) - 1), r[c]);
    }
    for (int64_t k = kv; k < kc; k++)
        for (int i = 0; i < MR; i++) dst[k * MR + i] = alpha * src[i * lda + k];
}

/* Ap (mc rounded up to MR panels, each (kc, MR)) = alpha * op(A)[i0:i0+mc, k0:k0+kc], zero rows
 * past mc so the kernel never branches on M. */
__attribute__((target("avx512f"))) static void pack_a(float *ap, bool trans_a, const float *A, int64_t lda,
                                                     int64_t i0, int64_t mc, int64_t k0, int64_t kc, float alpha) {
    for (int64_t p = 0; p < mc; p += MR) {
        int64_t rows = mc - p < MR ? mc - p : MR;
        float *dst = ap + p * kc;
        if (!trans_a && rows == MR) {
            pack_a_rows(dst, A + (i0 + p) * lda + k0, lda, kc, alpha);
        } else if (!trans_a) {
            for (int64_t i = 0; i < rows; i++) {
                const float *src = A + (i0 + p + i) * lda + k0;
                for (int64_t k = 0; k < kc; k++) dst[k * MR + i] = alpha * src[k];
            }
        } else {
            for (int64_t k = 0; k < kc; k++) {
                const float *src = A + (k0 + k) * lda + i0 + p;
                for (int64_t i = 0; i < rows; i++) dst[k * MR + i] = alpha * src[i];
            }
        }
        for (int64_t i = rows; i < MR; i++)
            for (int64_t k = 0; k < kc; k++) dst[k * MR + i] = 0.0f;
    }
}

__attribute__((target("avx512f"))) static inline __m512 bf16x16_to_f32(const uint16_t *src) {
    __m256i h = _mm256_loadu_si256((const __m256i *)src);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

/* dst (32) = 32 consecutive elements at src as f32; dst 64-byte aligned. */
__attribute__((target("avx512f"))) static inline void copy_32(float *dst, enum lorad_dtype dt, const void *src) {
    if (dt == LORAD_DTYPE_F32) {
        _mm512_store_ps(dst, _mm512_loadu_ps((const float *)src));
        _mm512_store_ps(dst + 16, _mm512_loadu_ps((const float *)src + 16));
    } else {
        _mm512_store_ps(dst, bf16x16_to_f32((const uint16_t *)src));
        _mm512_store_ps(dst + 16, bf16x16_to_f32((const uint16_t *)src + 16));
    }
}

static inline float b_elem(enum lorad_dtype dt, const void *B, int64_t idx) {
    if (dt == LORAD_DTYPE_BF16) return lorad_bf16_to_f32(((const uint16_t *)B)[idx]);
    return ((const float *)B)[idx];
}

/* Element (r, c) of stored B (ldb elements per row) from column b_col0 on, any dtype. */
static float stored_elem(enum lorad_dtype dt, const void *B, int64_t ldb, int64_t b_col0, int64_t r, int64_t c) {
    if (!lorad_dtype_is_quantised(dt)) return b_elem(dt, B, r * ldb + b_col0 + c);
    struct lorad_tensor t = {B, dt, r + 1, ldb};
    return lorad_tensor_value(&t, r, b_col0 + c);
}

/* dst[k * NR + j] = src row j, element k, for 16 rows (row stride ld elements) and 16 k. */
__attribute__((target("avx512f"))) static void transpose_block(float *dst, enum lorad_dtype dt, const void *src,
                                                              int64_t ld) {
    __m512 r[16];
    for (int j = 0; j < 16; j++) {
        if (dt == LORAD_DTYPE_F32) {
            r[j] = _mm512_loadu_ps((const float *)src + j * ld);
        } else {
            r[j] = bf16x16_to_f32((const uint16_t *)src + j * ld);
        }
    }
    lorad_transpose_16x16(r);
    for (int k = 0; k < 16; k++) _mm512_store_ps(dst + k * NR, r[k]);
}

/* Bp (nc rounded up to NR panels, each (kc, NR)) = op(B)[k0:k0+kc, j0:j0+nc] as f32, zero
 * columns past nc. */
__attribute__((target("avx512f"))) static void pack_b(float *bp, float *tmp, bool trans_b, enum lorad_dtype dt_in,
                                                     const void *B_in, int64_t ldb_in, int64_t b_col0, int64_t k0_in,
                                                     int64_t kc, int64_t j0, int64_t nc) {
    for (int64_t p = 0; p < nc; p += NR) {
        int64_t cols = nc - p < NR ? nc - p : NR;
        float *dst = bp + p * kc;
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
        if (trans_b) {
            /* B (N, K): column j of op(B) is row j of B, contiguous in k. Whole 16x16 blocks
             * are transposed in registers, the ragged edges element by element. */
            int64_t kv = kc & ~(int64_t)15, jv = cols & ~(int64_t)15;
            for (int64_t j = 0; j < jv; j += 16)
                for (int64_t k = 0; k < kv; k += 16)
                    transpose_block(dst + k * NR + j, dt, (const char *)B + ((jp + j) * ldb + k0 + k) * esz, ldb);
            for (int64_t j = 0; j < cols; j++) {
                int64_t row = (jp + j) * ldb + k0;
                for (int64_t k = j < jv ? kv : 0; k < kc; k++) dst[k * NR + j] = b_elem(dt, B, row + k);
            }
        } else {
            for (int64_t k = 0; k < kc; k++) {
                int64_t row = (k0 + k) * ldb + jp;
                if (cols == NR) {
                    copy_32(dst + k * NR, dt, (const char *)B + row * esz);
                } else {
                    for (int64_t j = 0; j < cols; j++) dst[k * NR + j] = b_elem(dt, B, row + j);
                }
            }
        }
        if (cols < NR)
            for (int64_t k = 0; k < kc; k++)
                for (int64_t j = cols; j < NR; j++) dst[k * NR + j] = 0.0f;
    }
}

/* C[0:mr, 0:nr] (ldc) = beta * C + Ap · Bp over kc, for one MR x NR tile; beta == 0 does not read
 * C. ap (kc, MR), bp (kc, NR), both 64-byte aligned. Uninstrumented: the caller checks the bytes
 * it touches (sanitizer.h). */
__attribute__((target("avx512f"))) LORAD_UNINSTRUMENTED static void kernel_12x32(int64_t kc, const float *restrict ap,
                                                           const float *restrict bp, float *restrict C, int64_t ldc,
                                                           int mr, int nr, float beta) {
    __m512 c0[MR], c1[MR];
#pragma GCC unroll 12
    for (int i = 0; i < MR; i++) c0[i] = c1[i] = _mm512_setzero_ps();
    for (int64_t k = 0; k < kc; k++) {
        __m512 b0 = _mm512_load_ps(bp), b1 = _mm512_load_ps(bp + 16);
#pragma GCC unroll 12
        for (int i = 0; i < MR; i++) {
            __m512 a = _mm512_set1_ps(ap[i]);
            c0[i] = _mm512_fmadd_ps(a, b0, c0[i]);
            c1[i] = _mm512_fmadd_ps(a, b1, c1[i]);
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

void lorad_sgemm_avx512(bool trans_a, bool trans_b, enum lorad_dtype b_dtype, int64_t M, int64_t N, int64_t K,
                        float alpha, const float *A, int64_t lda, const void *B, int64_t ldb, int64_t b_col0, float beta,
                        float *C, int64_t ldc, float *work) {
    assert(lorad_sgemm_avx512_available());
    assert(b_dtype == LORAD_DTYPE_F32 || b_dtype == LORAD_DTYPE_BF16 || lorad_dtype_is_quantised(b_dtype));
    if (M <= 0 || N <= 0) return;
    if (K == 0 || alpha == 0.0f) {
        for (int64_t i = 0; i < M; i++)
            for (int64_t j = 0; j < N; j++) C[i * ldc + j] = beta == 0.0f ? 0.0f : beta * C[i * ldc + j];
        return;
    }
    float *ap = (float *)(((uintptr_t)work + 63) & ~(uintptr_t)63);
    float *bp = ap + (size_t)MC * KC, *tmp = bp + (size_t)KC * NC;
    /* B is packed once per call (it is the weight, usually the larger operand); A once per NC
     * columns. */
    for (int64_t j0 = 0; j0 < N; j0 += NC) {
        int64_t nc = N - j0 < NC ? N - j0 : NC;
        for (int64_t k0 = 0; k0 < K; k0 += KC) {
            int64_t kc = K - k0 < KC ? K - k0 : KC;
            float b = k0 == 0 ? beta : 1.0f;
            pack_b(bp, tmp, trans_b, b_dtype, B, ldb, b_col0, k0, kc, j0, nc);
            lorad_asan_check_region(bp, (size_t)((nc + NR - 1) / NR * NR * kc) * sizeof *bp);
            for (int64_t i0 = 0; i0 < M; i0 += MC) {
                int64_t mc = M - i0 < MC ? M - i0 : MC;
                pack_a(ap, trans_a, A, lda, i0, mc, k0, kc, alpha);
                lorad_asan_check_region(ap, (size_t)((mc + MR - 1) / MR * MR * kc) * sizeof *ap);
                for (int64_t jr = 0; jr < nc; jr += NR) {
                    int nr = (int)(nc - jr < NR ? nc - jr : NR);
                    for (int64_t ir = 0; ir < mc; ir += MR) {
                        int mr = (int)(mc - ir < MR ? mc - ir : MR);
                        float *c = C + (i0 + ir) * ldc + j0 + jr;
                        lorad_asan_check_tile(c, ldc, mr, nr);
                        kernel_12x32(kc, ap + ir * kc, bp + jr * kc, c, ldc, mr, nr, b);
                    }
                }
            }
        }
    }
}

void lorad_sgemm_ref(bool trans_a, bool trans_b, enum lorad_dtype b_dtype, int64_t M, int64_t N, int64_t K, float alpha,
                     const float *A, int64_t lda, const void *B, int64_t ldb, int64_t b_col0, float beta, float *C,
                     int64_t ldc) {
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < N; j++) {
            double acc = 0;
            for (int64_t k = 0; k < K; k++)
                acc += (double)(trans_a ? A[k * lda + i] : A[i * lda + k]) *
                       stored_elem(b_dtype, B, ldb, b_col0, trans_b ? j : k, trans_b ? k : j);
            double prior = beta == 0.0f ? 0.0 : (double)beta * C[i * ldc + j];
            C[i * ldc + j] = (float)((double)alpha * acc + prior);
        }
}
