#include "gemm.h"

#include <assert.h>
#include <cblas.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "bf16gemm_avx512.h"
#include "cpu_features.h"

static bool prefer_openblas;

void lorad_gemm_prefer_openblas(bool prefer) { prefer_openblas = prefer; }

bool lorad_gemm_uses_own_kernel(void) { return !prefer_openblas && lorad_isa_active() >= LORAD_ISA_AVX512; }

const char *lorad_gemm_kernel_description(void) {
    if (lorad_gemm_uses_own_kernel() && lorad_gemm_bf16_usable())
        return "engine AVX-512 kernel (OpenBLAS for outputs narrower than 32); bf16 compute on AVX512_BF16";
    if (lorad_gemm_uses_own_kernel()) return "engine AVX-512 kernel (OpenBLAS for outputs narrower than 32)";
    if (lorad_sgemm_avx512_available() && prefer_openblas) return "OpenBLAS (engine kernel switched off)";
    if (lorad_sgemm_avx512_available()) return "OpenBLAS (engine kernel switched off by LORAD_ISA)";
    return "OpenBLAS (this CPU has no AVX-512F)";
}

const char *const lorad_compute_dtype_names[] = {"float32", "bfloat16", "auto", NULL};

bool lorad_gemm_bf16_usable(void) {
    return !prefer_openblas && lorad_isa_active() >= LORAD_ISA_AVX512_BF16 && lorad_gemm_bf16_avx512_available();
}

int lorad_compute_dtype_resolve(enum lorad_compute_dtype requested, bool base_is_bf16, const char *param,
                                enum lorad_compute_dtype *ret, struct lorad_error *err) {
    enum lorad_compute_dtype d = requested;
    if (d == LORAD_COMPUTE_AUTO) d = base_is_bf16 && lorad_gemm_bf16_usable() ? LORAD_COMPUTE_BFLOAT16 : LORAD_COMPUTE_FLOAT32;
    if (d == LORAD_COMPUTE_BFLOAT16 && !lorad_gemm_bf16_usable()) {
        const char *why = lorad_gemm_bf16_avx512_available() ? "LORAD_ISA or the caller rules out the bf16 kernel"
                                                             : "this CPU has no AVX512_BF16";
        return lorad_error_set(err, -ENOTSUP, param, "compute_dtype \"bfloat16\" is not available: %s; use \"float32\" or \"auto\"", why);
    }
    assert(d == LORAD_COMPUTE_FLOAT32 || d == LORAD_COMPUTE_BFLOAT16);
    *ret = d;
    return 0;
}

size_t lorad_gemm_scratch_floats(enum lorad_compute_dtype compute) {
    if (compute == LORAD_COMPUTE_FLOAT32) return LORAD_GEMM_SCRATCH_FLOATS;
    return LORAD_GEMM_BF16_WORK_FLOATS > LORAD_GEMM_SCRATCH_FLOATS ? LORAD_GEMM_BF16_WORK_FLOATS
                                                                    : LORAD_GEMM_SCRATCH_FLOATS;
}

int lorad_gemm_init(struct lorad_gemm *g, struct lorad_pool *pool, enum lorad_compute_dtype compute) {
    assert(compute == LORAD_COMPUTE_FLOAT32 || compute == LORAD_COMPUTE_BFLOAT16);
    memset(g, 0, sizeof *g);
    g->pool = pool;
    g->compute = compute;
    g->scratch_floats = lorad_gemm_scratch_floats(compute);
    for (int t = 0; t < lorad_pool_size(pool); t++) {
        g->scratch[t] = malloc(g->scratch_floats * sizeof(float));
        if (!g->scratch[t]) {
            lorad_gemm_destroy(g);
            return -ENOMEM;
        }
    }
    return 0;
}

void lorad_gemm_destroy(struct lorad_gemm *g) {
    for (int t = 0; t < LORAD_MAX_THREADS; t++) {
        free(g->scratch[t]);
        g->scratch[t] = NULL;
    }
}

void lorad_tensor_rows_f32(float *out, const struct lorad_tensor *t, int64_t r0, int64_t n, int64_t c0, int64_t nc) {
    size_t row_bytes = lorad_dtype_row_bytes(t->dtype, t->cols);
    for (int64_t i = 0; i < n; i++)
        lorad_row_segment_f32(out + i * nc, t->dtype, (const char *)t->data + (size_t)(r0 + i) * row_bytes, c0, nc);
}

static bool own_kernel_takes(enum lorad_dtype dtype) {
    return lorad_gemm_uses_own_kernel() && (dtype == LORAD_DTYPE_F32 || dtype == LORAD_DTYPE_BF16 || lorad_dtype_is_quantised(dtype));
}

struct wjob {
    struct lorad_gemm *g;
    float *out;
    const float *in;
    const struct lorad_tensor *w;
    int64_t M;
    bool accumulate;
};

/* With OpenBLAS, splits over M (tokens) when every thread gets at least 128 rows: measured on
 * this machine the thinner token slices keep sgemm at full rate for 768x768 weights, where
 * slicing the weight halves it. Otherwise (inference, LM-head chunks) splits over the weight's
 * output dimension. The engine's own kernel packs whatever part of W a thread multiplies, so
 * slicing W packs each weight once in all rather than once per thread: it splits over N unless
 * N is too narrow for whole 32-column panels. */
static bool split_rows_of_m(const struct lorad_gemm *g, int64_t M, int64_t N, int n_threads) {
    if (g->compute == LORAD_COMPUTE_BFLOAT16 || lorad_gemm_uses_own_kernel()) return N < 64 * n_threads && M > N;
    return M >= 128 * (int64_t)n_threads || (N < 64 * n_threads && M > N);
}

static void xwt_part(struct wjob *j, int64_t m0, int64_t m1, int64_t n0, int64_t n1, int tid) {
    const struct lorad_tensor *w = j->w;
    int64_t K = w->cols, N = w->rows, M = m1 - m0;
    if (M <= 0 || n1 <= n0) return;
    float beta = j->accumulate ? 1.0f : 0.0f;
    if (j->g->compute == LORAD_COMPUTE_BFLOAT16) {
        assert(j->g->scratch_floats >= LORAD_GEMM_BF16_WORK_FLOATS);
        lorad_gemm_bf16_avx512(true, w->dtype, M, n1 - n0, K, j->in + m0 * K, K,
                               (const char *)w->data + n0 * lorad_dtype_row_bytes(w->dtype, K), K, 0, beta,
                               j->out + m0 * N + n0, N, j->g->scratch[tid]);
        return;
    }
    if (own_kernel_takes(w->dtype)) {
        lorad_sgemm_avx512(false, true, w->dtype, M, n1 - n0, K, 1.0f, j->in + m0 * K, K,
                           (const char *)w->data + n0 * lorad_dtype_row_bytes(w->dtype, K), K, 0, beta,
                           j->out + m0 * N + n0, N, j->g->scratch[tid]);
        return;
    }
    if (w->dtype == LORAD_DTYPE_F32) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)M, (int)(n1 - n0), (int)K, 1.0f,
                    j->in + m0 * K, (int)K, (const float *)w->data + n0 * K, (int)K, beta,
                    j->out + m0 * N + n0, (int)N);
        return;
    }
    int64_t tile = (int64_t)(LORAD_GEMM_SCRATCH_FLOATS / (size_t)K);
    assert(tile >= 1);
    float *s = j->g->scratch[tid];
    for (int64_t r = n0; r < n1; r += tile) {
        int64_t nr = n1 - r < tile ? n1 - r : tile;
        lorad_tensor_rows_f32(s, w, r, nr, 0, K);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)M, (int)nr, (int)K, 1.0f, j->in + m0 * K,
                    (int)K, s, (int)K, beta, j->out + m0 * N + r, (int)N);
    }
}

typedef void (*part_fn)(struct wjob *j, int64_t m0, int64_t m1, int64_t n0, int64_t n1, int tid);

/* Thread tid's share of a product with n_out output columns: a slice of the tokens or of the
 * columns (split_rows_of_m), whole 32-column panels in the latter case. */
static void run_share(struct wjob *j, part_fn part, int64_t n_out, int tid, int nt) {
    int64_t b, e;
    if (split_rows_of_m(j->g, j->M, n_out, nt)) {
        lorad_pool_slice(j->M, tid, nt, 1, &b, &e);
        part(j, b, e, 0, n_out, tid);
    } else {
        lorad_pool_slice(n_out, tid, nt, 32, &b, &e);
        part(j, 0, j->M, b, e, tid);
    }
}

static void xwt_thread(void *ctx, int tid, int nt) {
    struct wjob *j = ctx;
    run_share(j, xwt_part, j->w->rows, tid, nt);
}

void lorad_gemm_xwt(struct lorad_gemm *g, float *y, const float *x, const struct lorad_tensor *w, int64_t M,
                    bool accumulate) {
    struct wjob j = {g, y, x, w, M, accumulate};
    lorad_pool_run(g->pool, xwt_thread, &j);
}

static void dyw_part(struct wjob *j, int64_t m0, int64_t m1, int64_t k0, int64_t k1, int tid) {
    const struct lorad_tensor *w = j->w;
    int64_t K = w->cols, N = w->rows, M = m1 - m0, kc = k1 - k0;
    if (M <= 0 || kc <= 0) return;
    float beta = j->accumulate ? 1.0f : 0.0f;
    if (j->g->compute == LORAD_COMPUTE_BFLOAT16) {
        /* W's rows from their starts, op(B) from column k0 on (the form a quantised W needs) */
        assert(j->g->scratch_floats >= LORAD_GEMM_BF16_WORK_FLOATS);
        lorad_gemm_bf16_avx512(false, w->dtype, M, kc, N, j->in + m0 * N, N, w->data, K, k0, beta, j->out + m0 * K + k0, K,
                               j->g->scratch[tid]);
        return;
    }
    if (own_kernel_takes(w->dtype)) {
        lorad_sgemm_avx512(false, false, w->dtype, M, kc, N, 1.0f, j->in + m0 * N, N, w->data, K, k0, beta,
                           j->out + m0 * K + k0, K, j->g->scratch[tid]);
        return;
    }
    if (w->dtype == LORAD_DTYPE_F32) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)M, (int)kc, (int)N, 1.0f, j->in + m0 * N,
                    (int)N, (const float *)w->data + k0, (int)K, beta, j->out + m0 * K + k0, (int)K);
        return;
    }
    int64_t tile = (int64_t)(LORAD_GEMM_SCRATCH_FLOATS / (size_t)kc);
    float *s = j->g->scratch[tid];
    for (int64_t r = 0; r < N; r += tile) {
        int64_t nr = N - r < tile ? N - r : tile;
        lorad_tensor_rows_f32(s, w, r, nr, k0, kc);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)M, (int)kc, (int)nr, 1.0f,
                    j->in + m0 * N + r, (int)N, s, (int)kc, r == 0 ? beta : 1.0f, j->out + m0 * K + k0, (int)K);
    }
}

static void dyw_thread(void *ctx, int tid, int nt) {
    struct wjob *j = ctx;
    run_share(j, dyw_part, j->w->cols, tid, nt);
}

void lorad_gemm_dyw(struct lorad_gemm *g, float *dx, const float *dy, const struct lorad_tensor *w, int64_t M,
                    bool accumulate) {
    struct wjob j = {g, dx, dy, w, M, accumulate};
    lorad_pool_run(g->pool, dyw_thread, &j);
}

void lorad_sgemm_1t(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float *A,
                    int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc, float *work) {
    if (N >= 32 && lorad_gemm_uses_own_kernel()) {
        lorad_sgemm_avx512(trans_a, trans_b, LORAD_DTYPE_F32, M, N, K, alpha, A, lda, B, ldb, 0, beta, C, ldc, work);
        return;
    }
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans, (int)M, (int)N,
                (int)K, alpha, A, (int)lda, B, (int)ldb, beta, C, (int)ldc);
}

struct sjob {
    struct lorad_gemm *g;
    bool ta, tb;
    int64_t M, N, K, lda, ldb, ldc;
    float alpha, beta;
    const float *A, *B;
    float *C;
};

static void sgemm_thread(void *ctx, int tid, int nt) {
    struct sjob *j = ctx;
    int64_t b, e;
    const float *A = j->A, *B = j->B;
    float *C = j->C;
    int64_t M = j->M, N = j->N;
    if (j->M >= j->N) {
        lorad_pool_slice(j->M, tid, nt, 1, &b, &e);
        A += j->ta ? b : b * j->lda;
        C += b * j->ldc;
        M = e - b;
    } else {
        lorad_pool_slice(j->N, tid, nt, 32, &b, &e);
        B += j->tb ? b * j->ldb : b;
        C += b;
        N = e - b;
    }
    if (M <= 0 || N <= 0) return;
    if (j->K == 0) {
        for (int64_t i = 0; i < M; i++)
            for (int64_t k = 0; k < N; k++) C[i * j->ldc + k] *= j->beta;
        return;
    }
    lorad_sgemm_1t(j->ta, j->tb, M, N, j->K, j->alpha, A, j->lda, B, j->ldb, j->beta, C, j->ldc,
                   j->g->scratch[tid]);
}

void lorad_sgemm_par(struct lorad_gemm *g, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K,
                     float alpha, const float *A, int64_t lda, const float *B, int64_t ldb, float beta, float *C,
                     int64_t ldc) {
    struct sjob j = {g, trans_a, trans_b, M, N, K, lda, ldb, ldc, alpha, beta, A, B, C};
    lorad_pool_run(g->pool, sgemm_thread, &j);
}

void lorad_gemm_xwt_ref(float *y, const float *x, const struct lorad_tensor *w, int64_t M, bool accumulate) {
    int64_t N = w->rows, K = w->cols;
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++) {
            double s = accumulate ? y[m * N + n] : 0.0;
            for (int64_t k = 0; k < K; k++) s += (double)x[m * K + k] * lorad_tensor_at(w, n, k);
            y[m * N + n] = (float)s;
        }
}

void lorad_gemm_dyw_ref(float *dx, const float *dy, const struct lorad_tensor *w, int64_t M, bool accumulate) {
    int64_t N = w->rows, K = w->cols;
    for (int64_t m = 0; m < M; m++)
        for (int64_t k = 0; k < K; k++) {
            double s = accumulate ? dx[m * K + k] : 0.0;
            for (int64_t n = 0; n < N; n++) s += (double)dy[m * N + n] * lorad_tensor_at(w, n, k);
            dx[m * K + k] = (float)s;
        }
}
