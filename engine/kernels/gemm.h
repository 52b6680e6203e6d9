/* Matrix products over the engine's thread pool (see threadpool.h for the threading design).
 *
 * Frozen weights are struct lorad_tensor views in HF layout W (N, K) = [out, in]. F32 weights are
 * handed to cblas_sgemm in place; BF16 weights are widened a tile of rows at a time into a
 * per-thread scratch buffer and multiplied tile by tile, so a BF16 base stays half the size in
 * memory. Every product is split statically over the pool (fixed slices for a fixed thread
 * count), so results are bit-identical run to run.
 *
 * The frozen-weight products (lorad_gemm_xwt, lorad_gemm_dyw) compute in the struct's compute
 * dtype: fp32, or bf16 operands with fp32 accumulation (bf16gemm_avx512.h says exactly what is
 * rounded). Every other product is fp32. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "bf16gemm_avx512.h"
#include "sgemm_avx512.h"
#include "threadpool.h"
#include "weights.h"

/* Floats of scratch each thread needs for float32 products: BF16 tiles for OpenBLAS, or the
 * packed blocks of the engine's fp32 AVX-512 kernel (sgemm_avx512.h), whichever is larger.
 * bf16 compute needs more (lorad_gemm_scratch_floats). */
#define LORAD_GEMM_SCRATCH_FLOATS ((size_t)1 << 19)
_Static_assert(LORAD_GEMM_SCRATCH_FLOATS >= LORAD_SGEMM_AVX512_WORK_FLOATS, "scratch holds the packed blocks");

/* The arithmetic of the frozen-weight products. AUTO is a request only (a job's default);
 * lorad_compute_dtype_resolve turns it into one of the other two. */
enum lorad_compute_dtype {
    LORAD_COMPUTE_FLOAT32 = 0,
    LORAD_COMPUTE_BFLOAT16 = 1,
    LORAD_COMPUTE_AUTO = 2,
};

/* "float32", "bfloat16", "auto" by value, NULL-terminated (the job spec's names). */
extern const char *const lorad_compute_dtype_names[];

/* Whether this process can compute in bf16: the CPU has AVX512_BF16, LORAD_ISA allows it and
 * products are not forced onto OpenBLAS. */
bool lorad_gemm_bf16_usable(void);

/* *ret = the dtype to compute in for a request and a base whose linear weights are all BF16
 * (base_is_bf16): AUTO is bf16 when the base is bf16 and lorad_gemm_bf16_usable(), else float32.
 * Asking for BFLOAT16 where it is not usable is -ENOTSUP with err naming param and the reason. */
int lorad_compute_dtype_resolve(enum lorad_compute_dtype requested, bool base_is_bf16, const char *param,
                                enum lorad_compute_dtype *ret, struct lorad_error *err);

/* Floats of per-thread scratch products computing in `compute` use: LORAD_GEMM_SCRATCH_FLOATS
 * for FLOAT32, at least the bf16 kernel's packed blocks for BFLOAT16 (and for AUTO, which may
 * become either). What lorad_gemm_init allocates, so memory estimates count it the same way. */
size_t lorad_gemm_scratch_floats(enum lorad_compute_dtype compute);

struct lorad_gemm {
    struct lorad_pool *pool;            /* borrowed */
    float *scratch[LORAD_MAX_THREADS];  /* one buffer of scratch_floats per thread */
    size_t scratch_floats;
    enum lorad_compute_dtype compute;   /* FLOAT32 or (when lorad_gemm_bf16_usable) BFLOAT16 */
};

/* Process-wide: makes products use OpenBLAS even on AVX-512 hosts, so a benchmark or test can
 * measure both in one run. Default false. Not thread-safe; call while no product runs. */
void lorad_gemm_prefer_openblas(bool prefer);

/* Allocates the per-thread scratch for pool (borrowed; must outlive g) and products computing in
 * `compute` (resolved: FLOAT32 or BFLOAT16). 0 or -ENOMEM. Products use the engine's AVX-512
 * kernel where the CPU has it (lorad_gemm_uses_own_kernel), else OpenBLAS. g->compute may later
 * be switched to FLOAT32, not to BFLOAT16 unless it was initialised so (the scratch is smaller). */
int lorad_gemm_init(struct lorad_gemm *g, struct lorad_pool *pool, enum lorad_compute_dtype compute);
void lorad_gemm_destroy(struct lorad_gemm *g);

/* y (M, N) = x (M, K) · W^T, W (N, K); with accumulate, y += instead. */
void lorad_gemm_xwt(struct lorad_gemm *g, float *y, const float *x, const struct lorad_tensor *w,
                    int64_t M, bool accumulate);

/* dx (M, K) = dy (M, N) · W, W (N, K); with accumulate, dx += instead. */
void lorad_gemm_dyw(struct lorad_gemm *g, float *dx, const float *dy, const struct lorad_tensor *w,
                    int64_t M, bool accumulate);

/* Row-major C (M, N) = alpha * op(A) · op(B) + beta * C, split over the pool along the larger
 * of M and N. op(A) is (M, K), op(B) is (K, N). */
void lorad_sgemm_par(struct lorad_gemm *g, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K,
                     float alpha, const float *A, int64_t lda, const float *B, int64_t ldb, float beta,
                     float *C, int64_t ldc);

/* True unless lorad_gemm_prefer_openblas(true) is in effect or the CPU lacks AVX-512F. */
bool lorad_gemm_uses_own_kernel(void);

/* What multiplies on this host, for `lorad version` and the daemon's start line. Static string. */
const char *lorad_gemm_kernel_description(void);

/* One thread's row-major C (M, N) = alpha * op(A) · op(B) + beta * C: the engine's kernel when
 * lorad_gemm_uses_own_kernel() and N >= 32 (narrower outputs waste most of its 32-column
 * tile), else cblas_sgemm. work holds LORAD_SGEMM_AVX512_WORK_FLOATS floats; only the engine's
 * kernel touches it. */
void lorad_sgemm_1t(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                    const float *A, int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc,
                    float *work);

/* Plain reference loops (double accumulation) for the tests. */
void lorad_gemm_xwt_ref(float *y, const float *x, const struct lorad_tensor *w, int64_t M, bool accumulate);
void lorad_gemm_dyw_ref(float *dx, const float *dy, const struct lorad_tensor *w, int64_t M, bool accumulate);

/* Element (row, col) of a frozen tensor as f32. */
static inline float lorad_tensor_at(const struct lorad_tensor *t, int64_t row, int64_t col) {
    int64_t i = row * t->cols + col;
    if (t->dtype == LORAD_DTYPE_BF16) return lorad_bf16_to_f32(((const uint16_t *)t->data)[i]);
    if (t->dtype == LORAD_DTYPE_F32) return ((const float *)t->data)[i];
    return lorad_tensor_value(t, row, col);
}

/* Copies rows [r0, r0+n) columns [c0, c0+nc) of t into out (n, nc) as f32 (for a quantised t,
 * c0 and nc are multiples of LORAD_QUANT_GROUP). */
void lorad_tensor_rows_f32(float *out, const struct lorad_tensor *t, int64_t r0, int64_t n, int64_t c0, int64_t nc);
