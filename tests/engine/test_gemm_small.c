/* The decode-step product lorad_gemm_xwt_small: against its float64 reference loop within the
 * float32 error bound, accumulation, and the batch invariance its header promises (row m of y is
 * bit-identical whatever M is, whatever the other rows of x hold, whatever the thread count and
 * wherever row n falls in the kernel's blocking of W).
 *
 * The kernel picks its code by lorad_isa_active(), fixed per process, so ctest runs this file
 * again under LORAD_ISA=avx2 and LORAD_ISA=baseline (tests/engine/CMakeLists.txt); the first test
 * checks that the variable really selected the path it names.
 *
 * Error bound: each term x_mk w_nk is rounded at most once as a product and then passes through
 * at most ceil(K/8) lane additions, 4 additions of the horizontal sum and, with accumulate, the
 * one addition to y: d <= K + 6 roundings, so |y - exact| <= gamma_d (S + |y0|) with
 * S = sum_k |x_mk w_nk| and gamma_d = d u / (1 - d u) <= 1.1 d u (d u < 0.09 here), u = 2^-24.
 * The reference is exact to ~1e-16 relative and then rounded to float32 once (u |exact|). A wrong
 * or missing term moves an element by about |x w| ~ 0.3, orders of magnitude above the bound. */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_features.h"
#include "gemm.h"
#include "gemm_small.h"
#include "threadpool.h"

#define N_POOLS 3 /* thread counts 1, 2, 3 */
static struct lorad_pool *pools[N_POOLS];
static struct lorad_gemm gemms[N_POOLS];

static int setup(void **state) {
    (void)state;
    for (int i = 0; i < N_POOLS; i++) {
        if (lorad_pool_new(&pools[i], i + 1) != 0) return -1;
        if (lorad_gemm_init(&gemms[i], pools[i], LORAD_COMPUTE_FLOAT32) != 0) return -1;
    }
    return 0;
}
static int teardown(void **state) {
    (void)state;
    for (int i = 0; i < N_POOLS; i++) {
        lorad_gemm_destroy(&gemms[i]);
        lorad_pool_free(pools[i]);
    }
    return 0;
}

static uint64_t rng = 0x9E3779B97F4A7C15ull;
/* uniform in [-1, 1) (splitmix64) */
static double uniform(void) {
    uint64_t z = (rng += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (double)(z >> 11) * 0x1p-52 - 1.0;
}
static float *randv(int64_t n) {
    float *p = malloc(sizeof(float) * (size_t)(n > 0 ? n : 1));
    assert_non_null(p);
    for (int64_t i = 0; i < n; i++) p[i] = (float)uniform();
    return p;
}

/* A random W (N, K) held both as F32 and as its BF16 rounding. */
struct weights {
    float *f32;
    uint16_t *bf16;
    int64_t N, K;
};
static struct weights weights_new(int64_t N, int64_t K) {
    struct weights w = {randv(N * K), malloc(sizeof(uint16_t) * (size_t)(N * K > 0 ? N * K : 1)), N, K};
    assert_non_null(w.bf16);
    for (int64_t i = 0; i < N * K; i++) w.bf16[i] = lorad_f32_to_bf16(w.f32[i]);
    return w;
}
static void weights_free(struct weights *w) {
    free(w->f32);
    free(w->bf16);
}
/* Rows [r0, r0 + n) of w as a view in dtype dt (a row view moves where each row falls in the
 * kernel's blocking and in the threads' slices). */
static struct lorad_tensor weights_view(const struct weights *w, enum lorad_dtype dt, int64_t r0, int64_t n) {
    const void *data = dt == LORAD_DTYPE_BF16 ? (const void *)(w->bf16 + r0 * w->K) : (const void *)(w->f32 + r0 * w->K);
    return (struct lorad_tensor){data, dt, n, w->K};
}

/* y (M, N) against the reference yr within the bound of the header comment; y0 (M, N) is what
 * y held before an accumulating product, NULL otherwise. */
static void check_bound(const float *y, const float *yr, const float *y0, const float *x, const struct lorad_tensor *W,
                        int64_t M, const char *what) {
    int64_t N = W->rows, K = W->cols;
    const double u = 0x1p-24;
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++) {
            double s = y0 ? fabs((double)y0[m * N + n]) : 0.0;
            for (int64_t k = 0; k < K; k++) s += fabs((double)x[m * K + k] * lorad_tensor_at(W, n, k));
            double bound = 1.1 * (double)(K + 6) * u * s + u * s + 1e-30;
            double err = fabs((double)y[m * N + n] - (double)yr[m * N + n]);
            if (!(err <= bound))
                fail_msg("%s: %s N=%lld K=%lld M=%lld: y[%lld,%lld] = %.9g, reference %.9g (err %.3g > bound %.3g)", what,
                         lorad_dtype_name(W->dtype), (long long)N, (long long)K, (long long)M, (long long)m, (long long)n,
                         (double)y[m * N + n], (double)yr[m * N + n], err, bound);
        }
}

static float *nan_filled(int64_t n) {
    float *p = malloc(sizeof(float) * (size_t)(n > 0 ? n : 1));
    assert_non_null(p);
    for (int64_t i = 0; i < n; i++) p[i] = NAN; /* an element the kernel does not write fails the check */
    return p;
}

/* (N, K): K below, at and past one 16-lane vector, K not a multiple of 8 or 16, N below and
 * not a multiple of the row blockings (up to 8) nor of the 16-row thread slices, K = 0 (y = 0). */
static const int64_t shapes[][2] = {{1, 1},   {3, 15},  {13, 16}, {40, 17}, {67, 100},
                                    {130, 333}, {37, 64}, {5, 0},   {19, 1029}};
#define N_SHAPES ((int)(sizeof shapes / sizeof shapes[0]))
static const enum lorad_dtype dtypes[] = {LORAD_DTYPE_F32, LORAD_DTYPE_BF16};

/* LORAD_ISA, when it names a set, caps the kernels to it: the ctest variants of this file
 * really run the AVX2 and scalar code. */
static void test_isa_follows_env(void **state) {
    (void)state;
    enum lorad_isa active = lorad_isa_active(), want = lorad_isa_detected();
    const char *env = getenv("LORAD_ISA");
    for (int i = LORAD_ISA_BASELINE; i <= LORAD_ISA_AVX512_BF16; i++)
        if (env && strcmp(env, lorad_isa_name((enum lorad_isa)i)) == 0 && (enum lorad_isa)i < want) want = (enum lorad_isa)i;
    print_message("gemm_small runs the %s code (LORAD_ISA=%s)\n", lorad_isa_name(active), env ? env : "");
    assert_int_equal(active, want);
}

static void test_supports(void **state) {
    (void)state;
    struct lorad_tensor t = {NULL, LORAD_DTYPE_F32, 1, 32};
    assert_true(lorad_gemm_small_supports(&t));
    t.dtype = LORAD_DTYPE_BF16;
    assert_true(lorad_gemm_small_supports(&t));
    t.dtype = LORAD_DTYPE_F16;
    assert_false(lorad_gemm_small_supports(&t));
    t.dtype = LORAD_DTYPE_Q8_0;
    assert_false(lorad_gemm_small_supports(&t));
}

static void test_matches_reference(void **state) {
    (void)state;
    for (int s = 0; s < N_SHAPES; s++) {
        int64_t N = shapes[s][0], K = shapes[s][1];
        struct weights w = weights_new(N, K);
        float *x = randv(LORAD_GEMM_SMALL_MAX_ROWS * K);
        for (int d = 0; d < 2; d++) {
            struct lorad_tensor W = weights_view(&w, dtypes[d], 0, N);
            for (int64_t M = 1; M <= LORAD_GEMM_SMALL_MAX_ROWS; M++) {
                float *yr = nan_filled(M * N);
                lorad_gemm_xwt_small_ref(yr, x, &W, M, false);
                for (int p = 0; p < N_POOLS; p++) {
                    float *y = nan_filled(M * N);
                    lorad_gemm_xwt_small(&gemms[p], y, x, &W, M, false);
                    check_bound(y, yr, NULL, x, &W, M, "xwt_small");
                    free(y);
                }
                free(yr);
            }
        }
        free(x);
        weights_free(&w);
    }
}

/* y += x W^T: within the bound against the reference's y0 + exact, and (the header's single
 * addition of the dot) bit-identical to y0 + the non-accumulating product. */
static void test_accumulate(void **state) {
    (void)state;
    for (int s = 0; s < N_SHAPES; s++) {
        int64_t N = shapes[s][0], K = shapes[s][1];
        struct weights w = weights_new(N, K);
        float *x = randv(LORAD_GEMM_SMALL_MAX_ROWS * K);
        for (int d = 0; d < 2; d++) {
            struct lorad_tensor W = weights_view(&w, dtypes[d], 0, N);
            for (int64_t M = 1; M <= LORAD_GEMM_SMALL_MAX_ROWS; M += 3) {
                float *y0 = randv(M * N), *y = malloc(sizeof(float) * (size_t)(M * N)),
                      *yr = malloc(sizeof(float) * (size_t)(M * N)), *plain = nan_filled(M * N);
                for (int64_t i = 0; i < M * N; i++) y0[i] *= 10.0f;
                memcpy(y, y0, sizeof(float) * (size_t)(M * N));
                memcpy(yr, y0, sizeof(float) * (size_t)(M * N));
                lorad_gemm_xwt_small(&gemms[2], y, x, &W, M, true);
                lorad_gemm_xwt_small_ref(yr, x, &W, M, true);
                check_bound(y, yr, y0, x, &W, M, "xwt_small accumulate");
                lorad_gemm_xwt_small(&gemms[2], plain, x, &W, M, false);
                for (int64_t i = 0; i < M * N; i++) {
                    float want = y0[i] + plain[i];
                    if (memcmp(&y[i], &want, sizeof want) != 0)
                        fail_msg("accumulate %s N=%lld K=%lld M=%lld: y[%lld] = %.9g, y0 + product = %.9g",
                                 lorad_dtype_name(W.dtype), (long long)N, (long long)K, (long long)M, (long long)i,
                                 (double)y[i], (double)want);
                }
                free(y0); free(y); free(yr); free(plain);
            }
        }
        free(x);
        weights_free(&w);
    }
}

/* Row m of got (ldg columns, from column g0) equals row m of want (ldw, from w0) over n columns,
 * bit for bit. */
static void assert_rows_identical(const float *got, int64_t ldg, int64_t g0, const float *want, int64_t ldw, int64_t w0,
                                  int64_t m_got, int64_t m_want, int64_t n, const char *what, const struct lorad_tensor *W,
                                  int64_t M) {
    const float *a = got + m_got * ldg + g0, *b = want + m_want * ldw + w0;
    if (memcmp(a, b, sizeof(float) * (size_t)n) == 0) return;
    for (int64_t i = 0; i < n; i++)
        if (memcmp(&a[i], &b[i], sizeof a[i]) != 0)
            fail_msg("%s (%s K=%lld M=%lld): row %lld col %lld: %.9g != %.9g", what, lorad_dtype_name(W->dtype),
                     (long long)W->cols, (long long)M, (long long)m_want, (long long)(w0 + i), (double)a[i], (double)b[i]);
}

static void test_batch_invariance(void **state) {
    (void)state;
    static const int64_t inv_shapes[][2] = {{67, 333}, {45, 40}, {29, 2053}};
    for (int s = 0; s < 3; s++) {
        int64_t N = inv_shapes[s][0], K = inv_shapes[s][1];
        const int64_t MX = LORAD_GEMM_SMALL_MAX_ROWS;
        struct weights w = weights_new(N, K);
        /* two batches sharing every row of `xa` at its own index, with different other rows */
        float *xa = randv(MX * K), *xb = randv(MX * K), *row = malloc(sizeof(float) * (size_t)(K > 0 ? K : 1));
        float *y1 = nan_filled(N), *ya = nan_filled(MX * N), *yb = nan_filled(MX * N), *yt = nan_filled(MX * N);
        for (int d = 0; d < 2; d++) {
            struct lorad_tensor W = weights_view(&w, dtypes[d], 0, N);
            for (int64_t M = 1; M <= MX; M++) {
                lorad_gemm_xwt_small(&gemms[0], ya, xa, &W, M, false);
                lorad_gemm_xwt_small(&gemms[2], yt, xa, &W, M, false);
                for (int64_t m = 0; m < M; m++) {
                    /* threads 1 vs 3 */
                    assert_rows_identical(yt, N, 0, ya, N, 0, m, m, N, "threads 3 vs 1", &W, M);
                    /* row m alone, from a buffer of its own */
                    memcpy(row, xa + m * K, sizeof(float) * (size_t)K);
                    lorad_gemm_xwt_small(&gemms[1], y1, row, &W, 1, false);
                    assert_rows_identical(y1, N, 0, ya, N, 0, 0, m, N, "M=1 vs inside the batch", &W, M);
                    /* same row m, other rows different */
                    memcpy(xb + m * K, xa + m * K, sizeof(float) * (size_t)K);
                    lorad_gemm_xwt_small(&gemms[2], yb, xb, &W, M, false);
                    assert_rows_identical(yb, N, 0, ya, N, 0, m, m, N, "other rows of x changed", &W, M);
                    for (int64_t k = 0; k < K; k++) xb[m * K + k] = (float)uniform();
                }
                /* W from row r0 on: each row falls elsewhere in the row blocks (up to 8 rows) and
                 * in the remainder; a one-row W takes the remainder path only */
                for (int64_t r0 = 1; r0 <= 8 && r0 < N; r0++) {
                    struct lorad_tensor V = weights_view(&w, dtypes[d], r0, N - r0);
                    lorad_gemm_xwt_small(&gemms[2], yt, xa, &V, M, false);
                    for (int64_t m = 0; m < M; m++)
                        assert_rows_identical(yt, N - r0, 0, ya, N, r0, m, m, N - r0, "W from a later row", &W, M);
                }
                for (int64_t n = 0; n < N; n += 7) {
                    struct lorad_tensor V = weights_view(&w, dtypes[d], n, 1);
                    lorad_gemm_xwt_small(&gemms[1], yt, xa, &V, M, false);
                    for (int64_t m = 0; m < M; m++)
                        assert_rows_identical(yt, 1, 0, ya, N, n, m, m, 1, "one row of W", &W, M);
                }
            }
        }
        free(xa); free(xb); free(row); free(y1); free(ya); free(yb); free(yt);
        weights_free(&w);
    }
}

/* lorad_gemm_xwt_small_rows over slices that start anywhere (not only where the pool's 16-row
 * units fall) and a strided y: bit-identical to the whole product. */
static void test_rows_slices(void **state) {
    (void)state;
    int64_t N = 75, K = 67, ldy = N + 5;
    struct weights w = weights_new(N, K);
    float *x = randv(LORAD_GEMM_SMALL_MAX_ROWS * K);
    for (int d = 0; d < 2; d++) {
        struct lorad_tensor W = weights_view(&w, dtypes[d], 0, N);
        for (int64_t M = 1; M <= LORAD_GEMM_SMALL_MAX_ROWS; M++) {
            float *whole = nan_filled(M * N), *y = nan_filled(M * ldy);
            lorad_gemm_xwt_small(&gemms[1], whole, x, &W, M, false);
            const int64_t cuts[] = {0, 1, 7, 8, 30, 49, 74, 75};
            for (size_t c = 0; c + 1 < sizeof cuts / sizeof cuts[0]; c++)
                lorad_gemm_xwt_small_rows(y, ldy, x, &W, M, cuts[c], cuts[c + 1], false);
            for (int64_t m = 0; m < M; m++)
                assert_rows_identical(y, ldy, 0, whole, N, 0, m, m, N, "row slices", &W, M);
            free(whole);
            free(y);
        }
    }
    free(x);
    weights_free(&w);
}

/* lorad_lowrank_add_rows: y += scale * Bt^T u against the double loop within its bound (r
 * products and r - 1 additions in the chain, the scale, the final add: r + 2 roundings on
 * |scale| sum_k |u_k Bt_kn|, plus the add's on |y|), and bit-identical whatever the slicing. */
static void test_lowrank(void **state) {
    (void)state;
    const int ranks[] = {1, 8, 16, 17};
    const int64_t outs[] = {5, 16, 37, 2048};
    const double u_ = 0x1p-24;
    for (size_t a = 0; a < sizeof ranks / sizeof ranks[0]; a++)
        for (size_t b = 0; b < sizeof outs / sizeof outs[0]; b++) {
            int r = ranks[a];
            int64_t out = outs[b];
            float *u = randv(r), *Bt = randv(r * out), *y0 = randv(out), *y = malloc(sizeof(float) * (size_t)out),
                  *yr = malloc(sizeof(float) * (size_t)out), *ys = malloc(sizeof(float) * (size_t)out);
            float scale = 2.0f;
            memcpy(y, y0, sizeof(float) * (size_t)out);
            memcpy(yr, y0, sizeof(float) * (size_t)out);
            memcpy(ys, y0, sizeof(float) * (size_t)out);
            lorad_lowrank_add_rows(y, u, Bt, r, out, 0, out, scale);
            lorad_lowrank_add_rows_ref(yr, u, Bt, r, out, 0, out, scale);
            for (int64_t n = 0; n < out; n++) {
                double s = 0;
                for (int k = 0; k < r; k++) s += fabs((double)u[k] * Bt[k * out + n]);
                double bound = 1.1 * (r + 3) * u_ * (scale * s + fabs((double)y0[n])) + u_ * fabs((double)yr[n]) + 1e-30;
                double err = fabs((double)y[n] - (double)yr[n]);
                if (!(err <= bound))
                    fail_msg("lowrank r=%d out=%lld: y[%lld] = %.9g, reference %.9g, error %.3g > %.3g", r,
                             (long long)out, (long long)n, (double)y[n], (double)yr[n], err, bound);
            }
            /* slices at odd places: each element the same bits */
            for (int64_t n0 = 0; n0 < out; n0 += 3 + n0 % 5) {
                int64_t n1 = n0 + 3 + n0 % 5 < out ? n0 + 3 + n0 % 5 : out;
                lorad_lowrank_add_rows(ys, u, Bt, r, out, n0, n1, scale);
            }
            assert_memory_equal(ys, y, sizeof(float) * (size_t)out);
            free(u); free(Bt); free(y0); free(y); free(yr); free(ys);
        }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_isa_follows_env),
        cmocka_unit_test(test_supports),
        cmocka_unit_test(test_matches_reference),
        cmocka_unit_test(test_accumulate),
        cmocka_unit_test(test_batch_invariance),
        cmocka_unit_test(test_rows_slices),
        cmocka_unit_test(test_lowrank),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
