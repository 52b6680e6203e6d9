/* DoRA's column norms (Liu et al. 2024, "DoRA: Weight-Decomposed Low-Rank Adaptation"), as PEFT
 * computes them: for a frozen linear W (out, in) and its LoRA pair, the L2 norm of each output
 * row of the adapted weight, n_j = || W_j + scale * (B A)_j ||. The training model, the merge and
 * the decoder share them; the adapted weight is never held whole, only a few rows at a time. */
#pragma once
#include <stdint.h>

#include "gemm.h"

/* Rows of W + scale * B A each thread forms at once. */
#define LORAD_DORA_ROWS 16

/* Floats of per-thread scratch lorad_dora_row_norms needs for a W with `in` columns. */
static inline int64_t lorad_dora_scratch_floats(int64_t in) { return (int64_t)LORAD_DORA_ROWS * in; }

/* norm (out) = the row norms of W (out, in) + scale * B (out, r) @ A (r, in), the sum of squares
 * in double. Split over g's pool; row_scratch[tid] holds lorad_dora_scratch_floats(in) floats for
 * each of its threads. Bit-identical run to run for a fixed thread count, as every product is. */
void lorad_dora_row_norms(struct lorad_gemm *g, float *const *row_scratch, float *norm, const struct lorad_tensor *W,
                          const float *B, const float *A, float scale, int64_t r);

/* The same on the calling thread (OpenBLAS for the products), for callers without a pool: row_scratch
 * holds lorad_dora_scratch_floats(in) floats. */
void lorad_dora_row_norms_1t(float *norm, const struct lorad_tensor *W, const float *B, const float *A, float scale,
                             int64_t r, float *row_scratch);

/* The same with plain loops (double throughout), the reference for tests. */
void lorad_dora_row_norms_ref(float *norm, const struct lorad_tensor *W, const float *B, const float *A, float scale,
                              int64_t r);

/* w (out, in) = the merged DoRA weight from w = W + scale * B A: each row j times
 * magnitude_j / ||w_j|| (PEFT's merge); a zero row stays zero. */
void lorad_dora_scale_rows(float *w, const float *magnitude, int64_t out, int64_t in);
