#include "dora.h"

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

static void norms_thread(void *ctx, int tid, int nt) {
    struct norms_job *j = ctx;
    const struct lorad_tensor *W = j->W;
    int64_t in = W->cols, b, e;
    lorad_pool_slice(W->rows, tid, nt, 1, &b, &e);
    float *rows = j->row_scratch[tid]; // (LORAD_DORA_ROWS, in)
    for (int64_t j0 = b; j0 < e; j0 += LORAD_DORA_ROWS) {
        int64_t n = e - j0 < LORAD_DORA_ROWS ? e - j0 : LORAD_DORA_ROWS;
        lorad_tensor_rows_f32(rows, W, j0, n, 0, in);
        /* rows += scale * B[j0 : j0+n] (n, r) @ A (r, in) */
        lorad_sgemm_1t(false, false, n, in, j->r, j->scale, j->B + j0 * j->r, j->r, j->A, in, 1.0f, rows, in,
                       j->g->scratch[tid]);
        for (int64_t i = 0; i < n; i++) {
            double s = 0.0;
            for (int64_t k = 0; k < in; k++) s += (double)rows[i * in + k] * rows[i * in + k];
            j->norm[j0 + i] = (float)sqrt(s);
        }
    }
}

void lorad_dora_row_norms(struct lorad_gemm *g, float *const *row_scratch, float *norm, const struct lorad_tensor *W,
                          const float *B, const float *A, float scale, int64_t r) {
    struct norms_job j = {g, row_scratch, norm, W, B, A, scale, r};
    lorad_pool_run(g->pool, norms_thread, &j);
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
