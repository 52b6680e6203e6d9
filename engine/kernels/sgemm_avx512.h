/* The engine's own single-threaded sgemm for the frozen-weight products, on AVX-512 hosts.
 *
 * Why it exists: the environment pins OpenBLAS 0.3.21 to its AVX2 (Haswell) kernel, because that
 * build's AVX-512 kernels cannot be trusted on these CPUs. On an AVX-512 host the AVX2 kernel
 * leaves half of each FMA unit idle (measured 2026-11-29: OpenBLAS 121 GFLOP/s with its Haswell
 * kernel against 200 with its SkylakeX one, 512x4096x4096, 2 threads). The frozen projections are
 * ~85% of a LoRA step, so the engine multiplies them itself with a 512-bit micro-kernel.
 *
 * Design: classic packed GEMM. op(A) (M, K) is packed in MR-row panels (k-major) and scaled by
 * alpha; op(B) (K, N) in NR-column panels, widened from BF16 while packing, so a BF16 base costs
 * no separate widening pass. A 12x32 register tile accumulates in 24 zmm registers. The
 * blocking is fixed, so results depend only on the sizes (bit-identical run to run).
 *
 * The caller splits work over threads; each call is single-threaded and uses only `work`. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "weights.h"

/* Floats of `work` one call needs: the packed blocks of A and B and a 32-column panel of a
 * quantised B decoded to f32 (for either kernel). */
#define LORAD_SGEMM_AVX512_WORK_FLOATS ((size_t)(256 * 384 + 256 * 1024 + 32 * 512 + 64))

/* True when the CPU and the OS support AVX-512F (checked once), whatever LORAD_ISA says: the
 * kernel can run here. Whether products use it is lorad_gemm_uses_own_kernel's decision. */
bool lorad_sgemm_avx512_available(void);

/* C (M, N) = alpha * op(A) · op(B) + beta * C, row-major. op(A) is A (M, K) or, with trans_a,
 * A^T for A (K, M); op(B) is B (K, N) or, with trans_b, B^T for B (N, K), taken from column
 * b_col0 on of B's stored rows (ldb elements each). B holds b_dtype elements (F32, BF16 or a
 * block format of quant_blocks.h, decoded while packed; then B points at the first stored row's
 * start, ldb and N (trans_b: K) are whole blocks and b_col0 a multiple of 32). A and C are f32.
 * beta == 0 means C is not read. Requires lorad_sgemm_avx512_available(); work holds
 * LORAD_SGEMM_AVX512_WORK_FLOATS floats. */
void lorad_sgemm_avx512(bool trans_a, bool trans_b, enum lorad_dtype b_dtype, int64_t M, int64_t N, int64_t K,
                        float alpha, const float *A, int64_t lda, const void *B, int64_t ldb, int64_t b_col0, float beta,
                        float *C, int64_t ldc, float *work);

/* The plain loop the kernel is tested against: the same product with double accumulation, on any
 * CPU. Same arguments and beta == 0 rule, no work buffer. */
void lorad_sgemm_ref(bool trans_a, bool trans_b, enum lorad_dtype b_dtype, int64_t M, int64_t N, int64_t K, float alpha,
                     const float *A, int64_t lda, const void *B, int64_t ldb, int64_t b_col0, float beta, float *C,
                     int64_t ldc);
