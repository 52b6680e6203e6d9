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

/* Rows [n0, n1) of W only, on the calling thread: y[m * ldy + n] (+)= x row m · W row n. The
 * same arithmetic as lorad_gemm_xwt_small, element for element, so callers can split W's rows
 * over their own pool job (several products, or a product and its epilogue, in one hand-off). */
void lorad_gemm_xwt_small_rows(float *y, int64_t ldy, const float *x, const struct lorad_tensor *w, int64_t M,
                               int64_t n0, int64_t n1, bool accumulate);

/* A low-rank update of one row, on the calling thread: y[n] += scale * sum_k u[k] Bt[k * ldb + n]
 * for n in [n0, n1), u (r) and Bt (r, ldb) f32 (a LoRA's B stored transposed). Each element's
 * arithmetic is fixed by r alone (one FMA chain over k ascending, then y += scale * sum), so it
 * does not depend on the slice it falls in. */
void lorad_lowrank_add_rows(float *y, const float *u, const float *Bt, int r, int64_t ldb, int64_t n0, int64_t n1,
                            float scale);

/* The plain loops of the same contracts, on the calling thread, in double, for the tests. */
void lorad_lowrank_add_rows_ref(float *y, const float *u, const float *Bt, int r, int64_t ldb, int64_t n0, int64_t n1,
                                float scale);
void lorad_gemm_xwt_small_ref(float *y, const float *x, const struct lorad_tensor *w, int64_t M, bool accumulate);
