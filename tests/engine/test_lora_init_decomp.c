/* The PiSSA and OLoRA initialisations of engine/model/lora_init_decomp.h.
 *
 *   test_lora_init_decomp            argument checks and matrices whose SVD / QR is known in closed
 *                                    form (no Python; the sanitizer build runs it)
 *   test_lora_init_decomp reference  random weights of several shapes, ranks and scales against
 *                                    tests/reference/lora_init_decomp.py (torch.linalg.svd / qr in
 *                                    float64, written from PEFT's definitions), which also derives
 *                                    the tolerances from the float32 rounding of the outputs
 *
 * Only sign-invariant quantities are compared: B A, the residual W - s B A, the Gram matrices of
 * A and B, the zero pattern and |diag| of OLoRA's R. */
#include "testutil.h"

#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lora_init_decomp.h"
#include "rng.h"
#include "safetensors_write.h"

typedef int (*init_fn)(float *, float *, const float *, int64_t, int64_t, int, float, struct lorad_error *);
typedef int (*scratch_fn)(int64_t *, int64_t, int64_t, int, struct lorad_error *);

static const double U32 = 0x1p-24;

static float *alloc_floats(int64_t n) {
    float *p = malloc(sizeof(float) * (size_t)n);
    assert_non_null(p);
    return p;
}

/* W (out, in): N(0, 0.02^2) from counters, as base weights look. */
static void random_w(float *W, int64_t out, int64_t in, uint64_t seed) {
    for (int64_t e = 0; e < out * in; e++) W[e] = (float)(0.02 * lorad_rng_normal(lorad_rng_u64(seed, 0x77, (uint64_t)e, 0, 0)));
}

/* P (out, in) = B A and absP = |B| |A|, in double. */
static void product(double *P, double *absP, const float *B, const float *A, int64_t out, int64_t in, int r) {
    for (int64_t i = 0; i < out; i++)
        for (int64_t j = 0; j < in; j++) {
            double p = 0, q = 0;
            for (int t = 0; t < r; t++) {
                p += (double)B[i * r + t] * A[(int64_t)t * in + j];
                q += fabs((double)B[i * r + t] * A[(int64_t)t * in + j]);
            }
            P[i * in + j] = p;
            absP[i * in + j] = q;
        }
}

/* ---- arguments ------------------------------------------------------------------------------ */

static void check_refused(init_fn f, const char *method, const float *W, int64_t out, int64_t in, int r, float scale,
                          int want_rc, const char *want_param) {
    /* the outputs must stay untouched, so a short buffer stands for a huge one (ASan would see a write) */
    int64_t n_a = (r > 0 ? r : 1) * in, n_b = out * (r > 0 ? r : 1);
    if (n_a > 4096) n_a = 4096;
    if (n_b > 4096) n_b = 4096;
    float *A = alloc_floats(n_a), *B = alloc_floats(n_b);
    for (int64_t e = 0; e < n_a; e++) A[e] = -7.0f;
    for (int64_t e = 0; e < n_b; e++) B[e] = -7.0f;
    struct lorad_error err = {0};
    int rc = f(A, B, W, out, in, r, scale, &err);
    if (rc != want_rc)
        fail_msg("%s (%lld, %lld) r=%d scale=%g: rc %d, want %d (%s)", method, (long long)out, (long long)in, r,
                 (double)scale, rc, want_rc, err.message);
    assert_string_equal(err.param, want_param);
    assert_true(err.message[0] != '\0');
    if (strcmp(want_param, "lora.r") == 0) {
        assert_non_null(strstr(err.message, "lora.r"));
        char want[64];
        snprintf(want, sizeof want, "got %d", r);
        assert_non_null(strstr(err.message, want));
    }
    for (int64_t e = 0; e < n_a; e++) assert_true(A[e] == -7.0f); /* outputs only on success */
    for (int64_t e = 0; e < n_b; e++) assert_true(B[e] == -7.0f);
    free(A);
    free(B);
}

static void test_arguments(void **state) {
    (void)state;
    const int64_t out = 6, in = 4;
    float W[6 * 4];
    random_w(W, out, in, 1);
    init_fn fns[2] = {lorad_lora_init_pissa, lorad_lora_init_olora};
    scratch_fn scratch[2] = {lorad_lora_init_pissa_scratch_bytes, lorad_lora_init_olora_scratch_bytes};
    const char *names[2] = {"PiSSA", "OLoRA"};
    for (int f = 0; f < 2; f++) {
        check_refused(fns[f], names[f], W, out, in, 5, 1.0f, -EINVAL, "lora.r");  /* r > min(out, in) = 4 */
        check_refused(fns[f], names[f], W, in, out, 5, 1.0f, -EINVAL, "lora.r");  /* (4, 6) too */
        check_refused(fns[f], names[f], W, out, in, 0, 1.0f, -EINVAL, "lora.r");
        check_refused(fns[f], names[f], W, out, in, -3, 1.0f, -EINVAL, "lora.r");
        check_refused(fns[f], names[f], W, out, in, 2, 0.0f, -EINVAL, "lora.alpha");
        check_refused(fns[f], names[f], W, out, in, 2, -1.0f, -EINVAL, "lora.alpha");
        check_refused(fns[f], names[f], W, out, in, 2, NAN, -EINVAL, "lora.alpha");
        check_refused(fns[f], names[f], W, out, in, 2, INFINITY, -EINVAL, "lora.alpha");
        check_refused(fns[f], names[f], W, 0, in, 1, 1.0f, -EINVAL, "");
        float bad[6 * 4];
        memcpy(bad, W, sizeof bad);
        bad[13] = NAN;
        check_refused(fns[f], names[f], bad, out, in, 2, 1.0f, -ERANGE, "");
        bad[13] = -INFINITY;
        check_refused(fns[f], names[f], bad, out, in, 2, 1.0f, -ERANGE, "");
        /* the largest rank is allowed */
        float A[4 * 6], B[6 * 4]; /* (r, in) and (out, r) for (6, 4) and (4, 6) */
        struct lorad_error err = {0};
        assert_int_equal(fns[f](A, B, W, out, in, 4, 1.0f, &err), 0);
        assert_int_equal(fns[f](A, B, W, in, out, 4, 1.0f, &err), 0);

        /* scratch sizes: the same size errors; at least the f64 copy of W; beyond LAPACK's sizes */
        int64_t bytes = -1;
        err = (struct lorad_error){0};
        assert_int_equal(scratch[f](&bytes, out, in, 5, &err), -EINVAL);
        assert_string_equal(err.param, "lora.r");
        assert_int_equal(bytes, -1);
        assert_int_equal(scratch[f](&bytes, 4096, 11008, 16, &err), 0);
        if (f == 0) /* the f64 W, U, V^T and dgesdd's 4 k^2 */
            assert_true(bytes >= 8LL * (4096LL * 11008 + 4096LL * (4096 + 11008) + 4LL * 4096 * 4096));
        else /* Q[:, :r] and R[:r] in f64, and a little workspace: far less than a copy of W */
            assert_true(bytes >= 8LL * 16 * (4096 + 11008) && bytes < 8LL * 4096 * 11008 / 16);
        bytes = -1;
        assert_int_equal(scratch[f](&bytes, (int64_t)1 << 32, 8, 4, &err), -EOVERFLOW);
        assert_int_equal(bytes, -1);
        check_refused(fns[f], names[f], W, (int64_t)1 << 32, 8, 4, 1.0f, -EOVERFLOW, "");
    }
    /* PiSSA's SVD workspace (4 k^2 doubles) outgrows LAPACK's int long before the sizes do */
    int64_t bytes = -1;
    struct lorad_error err = {0};
    assert_int_equal(lorad_lora_init_pissa_scratch_bytes(&bytes, 1 << 16, 1 << 16, 8, &err), -EOVERFLOW);
}

/* ---- closed forms --------------------------------------------------------------------------- */

/* W (7, 5) = sum_j sign_j sigma_j e_{row_j} e_{col_j}^T: its singular values are the sigma_j, in
 * an order LAPACK must sort, so PiSSA's B A keeps the r largest entries divided by s and the
 * residual is W without them (times 1 - s/s = 0). */
static void test_pissa_closed_form(void **state) {
    (void)state;
    enum { OUT = 7, IN = 5 };
    const double sigma[IN] = {0.3, 2.0, 0.05, 1.1, 0.7}; /* descending: 2.0, 1.1, 0.7, 0.3, 0.05 */
    const int row[IN] = {4, 0, 6, 2, 3}, col[IN] = {1, 3, 0, 4, 2};
    const double sign[IN] = {1, -1, 1, 1, -1};
    float W[OUT * IN] = {0};
    for (int j = 0; j < IN; j++) W[row[j] * IN + col[j]] = (float)(sign[j] * sigma[j]);
    const float scales[3] = {2.0f, 0.25f, 1.0f};
    for (int r = 1; r <= IN; r++)
        for (int si = 0; si < 3; si++) {
            float s = scales[si], A[IN * IN], B[OUT * IN], res[OUT * IN];
            struct lorad_error err = {0};
            assert_int_equal(lorad_lora_init_pissa(A, B, W, OUT, IN, r, s, &err), 0);
            double P[OUT * IN], absP[OUT * IN];
            product(P, absP, B, A, OUT, IN, r);
            lorad_lora_init_residual(res, W, A, B, OUT, IN, r, s);
            for (int i = 0; i < OUT; i++)
                for (int c = 0; c < IN; c++) {
                    double w = W[i * IN + c], want = 0;
                    int rank_of = -1; /* 0-based rank of this entry's singular value, if it holds one */
                    for (int j = 0; j < IN; j++)
                        if (row[j] == i && col[j] == c) {
                            rank_of = 0;
                            for (int l = 0; l < IN; l++) rank_of += sigma[l] > sigma[j];
                        }
                    if (rank_of >= 0 && rank_of < r) want = w / s;
                    double tol = 2.02 * U32 * absP[i * IN + c] + 1e-12;
                    if (fabs(P[i * IN + c] - want) > tol)
                        fail_msg("PiSSA r=%d s=%g: (B A)[%d,%d] = %.9g, want %.9g", r, (double)s, i, c, P[i * IN + c],
                                 want);
                    double want_res = w - s * want;
                    if (fabs(res[i * IN + c] - want_res) > s * tol + 1.01 * U32 * fabs(want_res) + 1e-12)
                        fail_msg("PiSSA r=%d s=%g: residual[%d,%d] = %.9g, want %.9g", r, (double)s, i, c,
                                 (double)res[i * IN + c], want_res);
                }
            /* the rows of A (columns of B) are orthogonal, with squared norms sigma_j / s, descending */
            for (int j = 0; j < r; j++)
                for (int l = 0; l < r; l++) {
                    double ga = 0, gb = 0;
                    for (int c = 0; c < IN; c++) ga += (double)A[j * IN + c] * A[l * IN + c];
                    for (int i = 0; i < OUT; i++) gb += (double)B[i * r + j] * B[i * r + l];
                    const double sorted[IN] = {2.0, 1.1, 0.7, 0.3, 0.05};
                    double want = j == l ? sorted[j] / s : 0.0;
                    double tol = 2.02 * U32 * sqrt(sorted[j] * sorted[l]) / s + 1e-12;
                    assert_true(fabs(ga - want) <= tol);
                    assert_true(fabs(gb - want) <= tol);
                }
        }
}

/* An upper-trapezoidal W (W[i][c] = 0 for c < i) is its own R with Q = I (every Householder
 * reflector is the identity, exactly), so OLoRA's B A is W's first r rows, B^T B = I, A = R[:r]
 * up to signs; the residual is W - s (those rows). Tall and wide. */
static void test_olora_closed_form(void **state) {
    (void)state;
    const int64_t shapes[2][2] = {{7, 5}, {4, 9}};
    for (int sh = 0; sh < 2; sh++) {
        int64_t out = shapes[sh][0], in = shapes[sh][1], k = out < in ? out : in;
        float *W = alloc_floats(out * in), *res = alloc_floats(out * in);
        random_w(W, out, in, 5 + (uint64_t)sh);
        for (int64_t i = 0; i < out; i++)
            for (int64_t c = 0; c < in; c++)
                if (c < i) W[i * in + c] = 0;
        for (int r = 1; r <= k; r++) {
            float s = 1.5f, *A = alloc_floats(r * in), *B = alloc_floats(out * r);
            struct lorad_error err = {0};
            assert_int_equal(lorad_lora_init_olora(A, B, W, out, in, r, s, &err), 0);
            double *P = malloc(sizeof(double) * (size_t)(out * in)), *absP = malloc(sizeof(double) * (size_t)(out * in));
            assert_non_null(P);
            assert_non_null(absP);
            product(P, absP, B, A, out, in, r);
            lorad_lora_init_residual(res, W, A, B, out, in, r, s);
            for (int64_t i = 0; i < out; i++)
                for (int64_t c = 0; c < in; c++) {
                    double w = W[i * in + c], want = i < r ? w : 0.0;
                    double tol = 2.02 * U32 * absP[i * in + c] + 1e-15;
                    if (fabs(P[i * in + c] - want) > tol)
                        fail_msg("OLoRA (%lld, %lld) r=%d: (B A)[%lld,%lld] = %.9g, want %.9g", (long long)out,
                                 (long long)in, r, (long long)i, (long long)c, P[i * in + c], want);
                    double want_res = w - s * want;
                    if (fabs(res[i * in + c] - want_res) > s * tol + 1.01 * U32 * fabs(want_res) + 1e-15)
                        fail_msg("OLoRA r=%d: residual[%lld,%lld] = %.9g, want %.9g", r, (long long)i, (long long)c,
                                 (double)res[i * in + c], want_res);
                }
            for (int j = 0; j < r; j++) {
                for (int64_t c = 0; c < j; c++) assert_true(A[j * in + c] == 0.0f); /* upper trapezoidal */
                assert_true(fabs(fabs((double)A[j * in + j]) - fabs((double)W[j * in + j])) <=
                            1.01 * U32 * fabs((double)W[j * in + j]));
                for (int l = 0; l < r; l++) {
                    double g = 0;
                    for (int64_t i = 0; i < out; i++) g += (double)B[i * r + j] * B[i * r + l];
                    assert_true(fabs(g - (j == l)) <= 2.02 * U32 + 1e-15);
                }
            }
            free(P);
            free(absP);
            free(A);
            free(B);
        }
        free(W);
        free(res);
    }
}

/* ---- structure on random weights (no reference needed) -------------------------------------- */

/* What characterises the factors without computing another SVD / QR, for a random W. The f32
 * outputs are the f64 factors rounded once (relative error <= u each), which gives each bound:
 * a sum of products of rounded factors errs by at most 2u (+ u^2) times the sum of the products'
 * magnitudes, one factor against an exact quantity by u times it; `slack` covers the f64 stages
 * (some 1e-13 of the scale here, against the 1e-8 of the f32 terms). */
struct mats {
    int64_t out, in;
    int r;
    float s;
    float *W, *A, *B;
    double *P, *absP, *res; /* B A, |B| |A|, W - s B A (double, from the f32 factors) */
};

static void mats_init(struct mats *m, int64_t out, int64_t in, int r, float s, uint64_t seed, init_fn f) {
    *m = (struct mats){.out = out, .in = in, .r = r, .s = s};
    m->W = alloc_floats(out * in), m->A = alloc_floats(r * in), m->B = alloc_floats(out * r);
    m->P = malloc(sizeof(double) * (size_t)(out * in));
    m->absP = malloc(sizeof(double) * (size_t)(out * in));
    m->res = malloc(sizeof(double) * (size_t)(out * in));
    assert_true(m->P && m->absP && m->res);
    random_w(m->W, out, in, seed);
    struct lorad_error err = {0};
    if (f(m->A, m->B, m->W, out, in, r, s, &err) != 0) fail_msg("%s", err.message);
    product(m->P, m->absP, m->B, m->A, out, in, r);
    for (int64_t e = 0; e < out * in; e++) m->res[e] = m->W[e] - (double)s * m->P[e];
}

static void mats_free(struct mats *m) {
    free(m->W), free(m->A), free(m->B), free(m->P), free(m->absP), free(m->res);
}

/* B^T res (r, in) and res A^T (out, r) vanish up to the rounding of B (A) against res, and of B A
 * inside res: |B^T res| <= 1.01 (u |B|^T |res| + 2u s |B|^T (|B| |A|)) + slack, likewise for A. */
static void check_orthogonal_residual(const struct mats *m, const char *what, bool both_sides, double slack) {
    const int64_t out = m->out, in = m->in;
    const int r = m->r;
    for (int j = 0; j < r; j++)
        for (int64_t c = 0; c < in; c++) {
            double v = 0, bound = 0;
            for (int64_t i = 0; i < out; i++) {
                double b = m->B[i * r + j];
                v += b * m->res[i * in + c];
                bound += fabs(b) * (U32 * fabs(m->res[i * in + c]) + 2 * U32 * m->s * m->absP[i * in + c]);
            }
            if (fabs(v) > 1.01 * bound + slack) fail_msg("%s: (B^T res)[%d,%lld] = %.3e > %.3e", what, j, (long long)c, v, 1.01 * bound + slack);
        }
    if (!both_sides) return; /* QR leaves res A^T free: only the column space is fixed */
    for (int64_t i = 0; i < out; i++)
        for (int j = 0; j < r; j++) {
            double v = 0, bound = 0;
            for (int64_t c = 0; c < in; c++) {
                double a = m->A[(int64_t)j * in + c];
                v += m->res[i * in + c] * a;
                bound += fabs(a) * (U32 * fabs(m->res[i * in + c]) + 2 * U32 * m->s * m->absP[i * in + c]);
            }
            if (fabs(v) > 1.01 * bound + slack) fail_msg("%s: (res A^T)[%lld,%d] = %.3e > %.3e", what, (long long)i, j, v, 1.01 * bound + slack);
        }
}

/* PiSSA: A A^T = B^T B = diag(S_r / s), descending, and the residual W - s B A is orthogonal to
 * both factors, so s B A is a sum of r singular triplets of W (the reference test checks that they
 * are the largest). */
static void test_pissa_structure(void **state) {
    (void)state;
    const int64_t shapes[2][2] = {{48, 32}, {24, 64}};
    for (int sh = 0; sh < 2; sh++) {
        struct mats m;
        mats_init(&m, shapes[sh][0], shapes[sh][1], 6, 2.0f, 40 + (uint64_t)sh, lorad_lora_init_pissa);
        const double slack = 1e-12;
        double prev = INFINITY;
        for (int j = 0; j < m.r; j++)
            for (int l = 0; l < m.r; l++) {
                double ga = 0, gb = 0, na = 0, nb = 0, ma = 0, mb = 0;
                for (int64_t c = 0; c < m.in; c++) {
                    ga += (double)m.A[j * m.in + c] * m.A[l * m.in + c];
                    na += (double)m.A[j * m.in + c] * m.A[j * m.in + c];
                    ma += (double)m.A[l * m.in + c] * m.A[l * m.in + c];
                }
                for (int64_t i = 0; i < m.out; i++) {
                    gb += (double)m.B[i * m.r + j] * m.B[i * m.r + l];
                    nb += (double)m.B[i * m.r + j] * m.B[i * m.r + j];
                    mb += (double)m.B[i * m.r + l] * m.B[i * m.r + l];
                }
                double tol_a = 2.02 * U32 * sqrt(na * ma) + slack, tol_b = 2.02 * U32 * sqrt(nb * mb) + slack;
                if (j != l) {
                    assert_true(fabs(ga) <= tol_a);
                    assert_true(fabs(gb) <= tol_b);
                } else {
                    assert_true(fabs(ga - gb) <= tol_a + tol_b); /* both sigma_j / s */
                    assert_true(ga <= prev * (1 + 4 * U32));     /* descending */
                    prev = ga;
                }
            }
        check_orthogonal_residual(&m, "PiSSA", true, slack);
        mats_free(&m);
    }
}

/* OLoRA: B^T B = I; A upper trapezoidal; B A reproduces W's first r columns (the span of Q[:, :r]
 * is theirs, R[:r] their coordinates) and W - B A is orthogonal to B (s = 1 here: with any other
 * s the residual keeps (1 - s) B A). */
static void test_olora_structure(void **state) {
    (void)state;
    const int64_t shapes[2][2] = {{48, 32}, {24, 64}};
    for (int sh = 0; sh < 2; sh++) {
        struct mats m;
        mats_init(&m, shapes[sh][0], shapes[sh][1], 6, 1.0f, 50 + (uint64_t)sh, lorad_lora_init_olora);
        const double slack = 1e-12;
        for (int j = 0; j < m.r; j++) {
            for (int64_t c = 0; c < j; c++) assert_true(m.A[j * m.in + c] == 0.0f);
            for (int l = 0; l < m.r; l++) {
                double g = 0;
                for (int64_t i = 0; i < m.out; i++) g += (double)m.B[i * m.r + j] * m.B[i * m.r + l];
                assert_true(fabs(g - (j == l)) <= 2.02 * U32 + slack);
            }
        }
        for (int64_t i = 0; i < m.out; i++)
            for (int c = 0; c < m.r; c++) {
                double d = fabs(m.P[i * m.in + c] - m.W[i * m.in + c]);
                if (d > 2.02 * U32 * m.absP[i * m.in + c] + slack)
                    fail_msg("OLoRA: (B A)[%lld,%d] = %.9g, W = %.9g", (long long)i, c, m.P[i * m.in + c],
                             (double)m.W[i * m.in + c]);
            }
        check_orthogonal_residual(&m, "OLoRA", false, slack);
        mats_free(&m);
    }
}

/* The residual in place equals the residual into another buffer, and both equal the double sum. */
static void test_residual(void **state) {
    (void)state;
    enum { OUT = 5, IN = 300, R = 3 }; /* IN beyond one 256-column chunk */
    float W[OUT * IN], A[R * IN], B[OUT * R], res[OUT * IN], inplace[OUT * IN];
    random_w(W, OUT, IN, 11);
    random_w(A, R, IN, 12);
    random_w(B, OUT, R, 13);
    memcpy(inplace, W, sizeof W);
    lorad_lora_init_residual(res, W, A, B, OUT, IN, R, 3.0f);
    lorad_lora_init_residual(inplace, inplace, A, B, OUT, IN, R, 3.0f);
    assert_memory_equal(res, inplace, sizeof res);
    for (int i = 0; i < OUT; i++)
        for (int c = 0; c < IN; c++) {
            double want = W[i * IN + c];
            for (int t = 0; t < R; t++) want -= 3.0 * (double)B[i * R + t] * A[t * IN + c];
            assert_true(fabs(res[i * IN + c] - want) <= 1.01 * U32 * fabs(want) + 1e-15);
        }
}

/* ---- against the reference ------------------------------------------------------------------ */

struct ref_case {
    const char *method;
    int64_t out, in;
    int r;
    float alpha;
    bool rslora;
};

static void test_reference(void **state) {
    (void)state;
    static const struct ref_case cases[] = {
        {"pissa", 48, 32, 8, 16, false},    /* s = 2 */
        {"pissa", 24, 64, 4, 12, true},     /* rsLoRA: s = 12 / 2 = 6 */
        {"pissa", 40, 40, 40, 20, false},   /* full rank, s = 0.5 */
        {"pissa", 64, 16, 1, 16, false},    /* s = 16 */
        {"pissa", 192, 128, 16, 32, false}, /* s = 2 */
        {"olora", 48, 32, 8, 16, false},
        {"olora", 24, 64, 4, 12, true},
        {"olora", 40, 40, 40, 20, false},
        {"olora", 64, 16, 16, 16, false},   /* r = in: B A = W */
        {"olora", 192, 128, 16, 32, false},
    };
    enum { N = sizeof cases / sizeof cases[0] };
    float *bufs[N][4];
    char json[4096] = "[";
    char *dir = test_mkdtemp("lora-init");
    char *path = test_path(dir, "case.safetensors");
    struct lorad_st_writer *w;
    assert_int_equal(lorad_st_writer_new(&w, path), 0);
    for (int i = 0; i < N; i++) {
        const struct ref_case *c = &cases[i];
        float s = c->rslora ? (float)(c->alpha / sqrt((double)c->r)) : (float)((double)c->alpha / c->r);
        float *W = alloc_floats(c->out * c->in), *A = alloc_floats(c->r * c->in), *B = alloc_floats(c->out * c->r);
        float *res = alloc_floats(c->out * c->in);
        random_w(W, c->out, c->in, 100 + (uint64_t)i);
        int64_t bytes = 0;
        struct lorad_error err = {0};
        bool pissa = strcmp(c->method, "pissa") == 0;
        int rc = pissa ? lorad_lora_init_pissa(A, B, W, c->out, c->in, c->r, s, &err)
                       : lorad_lora_init_olora(A, B, W, c->out, c->in, c->r, s, &err);
        if (rc != 0) fail_msg("case %d: %s", i, err.message);
        rc = pissa ? lorad_lora_init_pissa_scratch_bytes(&bytes, c->out, c->in, c->r, &err)
                   : lorad_lora_init_olora_scratch_bytes(&bytes, c->out, c->in, c->r, &err);
        assert_int_equal(rc, 0);
        assert_true(bytes >= (int64_t)sizeof(double) * (pissa ? c->out * c->in : c->r * (c->out + c->in)));
        lorad_lora_init_residual(res, W, A, B, c->out, c->in, c->r, s);
        bufs[i][0] = W, bufs[i][1] = A, bufs[i][2] = B, bufs[i][3] = res;
        const char *names[4] = {"W", "A", "B", "residual"};
        int64_t shapes[4][2] = {{c->out, c->in}, {c->r, c->in}, {c->out, c->r}, {c->out, c->in}};
        for (int t = 0; t < 4; t++) {
            char name[64];
            snprintf(name, sizeof name, "case%d.%s", i, names[t]);
            assert_int_equal(lorad_st_writer_add(w, name, "F32", shapes[t], 2, bufs[i][t],
                                                 sizeof(float) * (size_t)(shapes[t][0] * shapes[t][1])),
                             0);
        }
        size_t len = strlen(json);
        snprintf(json + len, sizeof json - len, "%s{\"method\":\"%s\",\"r\":%d,\"scale\":%.9g}", i ? "," : "",
                 c->method, c->r, (double)s);
    }
    strcat(json, "]");
    assert_int_equal(lorad_st_writer_metadata(w, "cases", json), 0);
    struct lorad_error err = {0};
    assert_int_equal(lorad_st_writer_finish(w, &err), 0);
    char script[4096];
    snprintf(script, sizeof script, "%s/tests/reference/lora_init_decomp.py", LORAD_SOURCE_DIR);
    char *argv[] = {LORAD_PYTHON, script, "compare", path, NULL};
    int rc = test_run(argv);
    if (rc != 0) fail_msg("lora_init_decomp.py disagrees (exit %d); case kept in %s", rc, path);
    for (int i = 0; i < N; i++)
        for (int t = 0; t < 4; t++) free(bufs[i][t]);
    if (!getenv("LORAD_KEEP_CASES")) test_rmtree(dir);
    free(dir);
    free(path);
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "reference") == 0) {
        const struct CMUnitTest tests[] = {cmocka_unit_test(test_reference)};
        return cmocka_run_group_tests(tests, NULL, NULL);
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_arguments),
        cmocka_unit_test(test_pissa_closed_form),
        cmocka_unit_test(test_olora_closed_form),
        cmocka_unit_test(test_pissa_structure),
        cmocka_unit_test(test_olora_structure),
        cmocka_unit_test(test_residual),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
