/* The engine's BF16 GEMM for the frozen-weight products, on CPUs with AVX512_BF16.
 *
 * Why it exists: a LoRA step is ~85% frozen-weight products, and the fp32 kernel already runs them
 * at ~95% of the cores' fp32 FMA peak. vdpbf16ps does a pair of bf16 products per fp32 lane and
 * instruction, twice the FLOPs of an fp32 FMA, and a bf16 base streams half the bytes.
 *
 * Numerics (what "bf16 compute" means throughout lorad): each element of A (activations or output
 * gradients, f32) is rounded to bf16, to nearest even, as it is packed; B is a bf16 weight used as
 * stored or an f32 weight rounded the same way; the products of the rounded operands accumulate
 * in fp32. tests/reference computes the same thing in PyTorch.
 *
 * Design: the fp32 kernel's (sgemm_avx512.h) packed GEMM with the same 12x32 register tile,
 * except that packed panels hold k in pairs: one 32-bit lane carries (k, k+1) of one row of op(A)
 * or one column of op(B), which is what vdpbf16ps multiplies. An odd K is padded with a zero.
 * The blocking is fixed, so results depend only on the sizes (bit-identical run to run).
 *
 * The caller splits work over threads; each call is single-threaded and uses only `work`. */
#pragma once
#include <stdbool.h>
#include <stdint.h>

#include "weights.h"

/* Floats of work one call needs: the packed blocks of A and B and a decoded panel of a quantised
 * B (bf16gemm_avx512.c's blocking), rounded up. */
#define LORAD_GEMM_BF16_WORK_FLOATS ((size_t)(384 * 512 / 2 + 512 * 3072 / 2 + 32 * 512 + 64))

/* True when the CPU and the OS support AVX-512F, AVX512BW and AVX512_BF16 (checked once),
 * whatever LORAD_ISA says. */
bool lorad_gemm_bf16_avx512_available(void);

/* C (M, N) = bf16(A) · op(bf16(B)) + beta * C, row-major, A (M, K) f32; op(B) is B (K, N) or,
 * with trans_b, B^T for B (N, K), from column b_col0 of B's stored rows, of b_dtype F32, BF16 or
 * a block format (decoded to f32, then rounded to bf16, while packed; addressing as for
 * lorad_sgemm_avx512). beta == 0 means C is not read. Requires lorad_gemm_bf16_avx512_available();
 * work holds LORAD_GEMM_BF16_WORK_FLOATS floats. */
void lorad_gemm_bf16_avx512(bool trans_b, enum lorad_dtype b_dtype, int64_t M, int64_t N, int64_t K, const float *A,
                            int64_t lda, const void *B, int64_t ldb, int64_t b_col0, float beta, float *C, int64_t ldc,
                            float *work);

/* The plain loop the kernel is tested against, on any CPU: the same bf16 rounding of both
 * operands (lorad_f32_to_bf16), products summed in double. Same arguments, no work buffer. */
void lorad_gemm_bf16_ref(bool trans_b, enum lorad_dtype b_dtype, int64_t M, int64_t N, int64_t K, const float *A,
                         int64_t lda, const void *B, int64_t ldb, int64_t b_col0, float beta, float *C, int64_t ldc);
