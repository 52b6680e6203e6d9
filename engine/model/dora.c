#include "dora.h"

#include <cblas.h>
#include <math.h>

#include "threadpool.h"

struct norms_job {
    struct lorad_gemm *g;
    float *const *row_scratch;
    float *norm;
    const struct lorad_tensor *W;
    const float *B, *A;
    float scale;
    int64_t r;
};

/* norm[b..e) from rows b..e of W + scale B A, formed LORAD_DORA_ROWS at a time in rows; work is
 * the gemm scratch of the calling pool thread, or NULL to use OpenBLAS directly. */
static void norms_of_rows(float *norm, const struct lorad_tensor *W, const float *B, const float *A, float scale,
                          int64_t r, int64_t b, int64_t e, float *rows, float *work) {
    int64_t in = W->cols;
    for (int64_t j0 = b; j0 < e; j0 += LORAD_DORA_ROWS) {
        int64_t n = e - j0 < LORAD_DORA_ROWS ? e - j0 : LORAD_DORA_ROWS;
        lorad_tensor_rows_f32(rows, W, j0, n, 0, in); // (n, in)
        /* rows += scale * B[j0 : j0+n] (n, r) @ A (r, in) */
        if (work)
            lorad_sgemm_1t(false, false, n, in, r, scale, B + j0 * r, r, A, in, 1.0f, rows, in, work);
        else
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)n, (int)in, (int)r, scale, B + j0 * r, (int)r,
                        A, (int)in, 1.0f, rows, (int)in);
        for (int64_t i = 0; i < n; i++) {
            double s = 0.0;
            for (int64_t k = 0; k < in; k++) s += (double)rows[i * in + k] * rows[i * in + k];
            norm[j0 + i] = (float)sqrt(s);
        }
    }
}

static void norms_thread(void *ctx, int tid, int nt) {
    struct norms_job *j = ctx;
    int64_t b, e;
    lorad_pool_slice(j->W->rows, tid, nt, 1, &b, &e);
    norms_of_rows(j->norm, j->W, j->B, j->A, j->scale, j->r, b, e, j->row_scratch[tid], j->g->scratch[tid]);
}

void lorad_dora_row_norms(struct lorad_gemm *g, float *const *row_scratch, float *norm, const struct lorad_tensor *W,
                          const float *B, const float *A, float scale, int64_t r) {
    struct norms_job j = {g, row_scratch, norm, W, B, A, scale, r};
    lorad_pool_run(g->pool, norms_thread, &j);
}

void lorad_dora_row_norms_1t(float *norm, const struct lorad_tensor *W, const float *B, const float *A, float scale,
                             int64_t r, float *row_scratch) {
    norms_of_rows(norm, W, B, A, scale, r, 0, W->rows, row_scratch, NULL);
}

void lorad_dora_row_norms_ref(float *norm, const struct lorad_tensor *W, const float *B, const float *A, float scale,
                              int64_t r) {
    for (int64_t j = 0; j < W->rows; j++) {
        double s = 0.0;
        for (int64_t k = 0; k < W->cols; k++) {
            double ba = 0.0;
            for (int64_t q = 0; q < r; q++) ba += (double)B[j * r + q] * A[q * W->cols + k];
            double v = (double)lorad_tensor_at(W, j, k) + (double)scale * ba;
            s += v * v;
        }
        norm[j] = (float)sqrt(s);
    }
}

void lorad_dora_scale_rows(float *w, const float *magnitude, int64_t out, int64_t in) {
    for (int64_t j = 0; j < out; j++) {
        double s = 0.0;
        for (int64_t k = 0; k < in; k++) s += (double)w[j * in + k] * w[j * in + k];
        float f = s > 0 ? (float)(magnitude[j] / sqrt(s)) : 0.0f;
        for (int64_t k = 0; k < in; k++) w[j * in + k] *= f;
    }
}
