/* y (M, N) = x (M, K) · W^T for the few rows of a decode step (M <= LORAD_GEMM_SMALL_MAX_ROWS).
 *
 * Why not lorad_gemm_xwt: with one to eight rows a product is bound by reading W, and a GEMM
 * kernel that packs or widens W into scratch first writes and rereads it. This kernel streams
 * every row of W once from memory, widening BF16 in registers, and multiplies it against all M
 * rows of x (which stay in cache), so a step's cost is the bytes of W over the memory rate.
 *
 * Arithmetic: f32 products and f32 accumulation in a fixed order that depends on K only, so row
 * m of y is bit-identical whatever M is and whatever the other rows of x hold (a decode step's
 * answer never depends on which sequences share it), and bit-identical for any thread count.
 * Rows of W are split statically over the pool. F32 and BF16 weights; other dtypes are the
 * caller's business (lorad_gemm_small_supports). */
#pragma once
#include <stdbool.h>
#include <stdint.h>

#include "gemm.h"
#include "weights.h"

#define LORAD_GEMM_SMALL_MAX_ROWS 8

/* Whether lorad_gemm_xwt_small takes w. */
bool lorad_gemm_small_supports(const struct lorad_tensor *w);

/* y (M, N) = x (M, K) · W^T, W (N, K) F32 or BF16, 1 <= M <= LORAD_GEMM_SMALL_MAX_ROWS; with
 * accumulate, y += instead. Runs on g's pool (its scratch is not used). */
void lorad_gemm_xwt_small(struct lorad_gemm *g, float *y, const float *x, const struct lorad_tensor *w, int64_t M,
                          bool accumulate);

/* The plain loop of the same contract, on the calling thread, for the tests. */
void lorad_gemm_xwt_small_ref(float *y, const float *x, const struct lorad_tensor *w, int64_t M, bool accumulate);
