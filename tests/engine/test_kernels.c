/* Kernels: the threaded versions against their plain reference loops, and every backward against
 * central finite differences of a float64 forward written from the maths (f64_llama.h).
 *
 * Tolerances come from the float32 error bound of f32_chain_error_bound (derived in f64_llama.c):
 * a result of `stages` chained float32 stages whose longest sum has n terms is within
 * stages * 6 n u (u = 2^-24) of the largest compared magnitude. The float64 differences are exact
 * to ~1e-10 and report their own error estimate, which is added. A wrong or missing term moves a
 * gradient by O(1) of its scale, far outside these bounds. */
#include "testutil.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bf16gemm_avx512.h"
#include "f64_llama.h"
#include "gemm.h"
#include "kernels.h"
#include "sgemm_avx512.h"
#include "threadpool.h"
#include "tiny_model.h"
#include "vec_math.h"

static struct lorad_pool *pool;
static float *scratch[LORAD_MAX_THREADS];

static int setup(void **state) {
    (void)state;
    assert_int_equal(lorad_pool_new(&pool, 2), 0);
    for (int t = 0; t < 2; t++) scratch[t] = malloc(sizeof(float) * (size_t)lorad_attention_scratch_floats(64));
    return 0;
}
static int teardown(void **state) {
    (void)state;
    for (int t = 0; t < 2; t++) free(scratch[t]);
    lorad_pool_free(pool);
    return 0;
}

static uint64_t rng = 12345;
static float *randv(int64_t n, double std) {
    float *p = malloc(sizeof(float) * (size_t)(n ? n : 1));
    for (int64_t i = 0; i < n; i++) p[i] = (float)(std * tiny_normal(&rng));
    return p;
}
/* max |a - b| <= rel * max |b|: a threaded kernel against its reference loop */
static void assert_close_tight(const float *a, const float *b, int64_t n, double rel, const char *what) {
    double mx = 0, md = 0;
    for (int64_t i = 0; i < n; i++) {
        mx = fmax(mx, fabs(b[i]));
        md = fmax(md, fabs((double)a[i] - b[i]));
    }
    if (!(md <= rel * mx)) fail_msg("%s: max diff %.3g, max ref %.3g (allowed %.3g)", what, md, mx, rel * mx);
}

/* y (ny) = f(x) in float64 */
typedef void (*fwd64_fn)(double *y, const double *x, void *ctx);
struct probe_ctx {
    fwd64_fn f;
    void *ctx;
    const float *w;
    int64_t ny;
    double *y;
};
/* The scalar the checks differentiate: L(x) = sum_i w_i f(x)_i. */
static double probe64(void *c, const double *x) {
    struct probe_ctx *p = c;
    p->f(p->y, x, p->ctx);
    double s = 0;
    for (int64_t i = 0; i < p->ny; i++) s += p->y[i] * p->w[i];
    return s;
}
/* analytic (nx), the float32 backward of L at x, against float64 central differences of L, within
 * the float32 bound for a backward of `stages` stages whose longest sum has n terms. */
static void check_backward(const float *analytic, const float *x, int64_t nx, int64_t ny, const float *w, fwd64_fn f,
                           void *ctx, int stages, int64_t n, const char *what) {
    double *xd = malloc(sizeof(double) * (size_t)nx), *ref = malloc(sizeof(double) * (size_t)nx);
    double *err = malloc(sizeof(double) * (size_t)nx);
    struct probe_ctx p = {f, ctx, w, ny, malloc(sizeof(double) * (size_t)ny)};
    for (int64_t i = 0; i < nx; i++) xd[i] = x[i];
    double scale = 0, bound = f32_chain_error_bound(stages, n);
    for (int64_t i = 0; i < nx; i++) {
        ref[i] = f64_central_difference(probe64, &p, xd, i, 1e-4, &err[i]);
        scale = fmax(scale, fabs(ref[i]));
    }
    assert_true(scale > 1e-3); /* real gradients */
    for (int64_t i = 0; i < nx; i++) {
        double tol = bound * scale + 2 * err[i] + 1e-12;
        if (!(fabs(analytic[i] - ref[i]) <= tol))
            fail_msg("%s [%lld]: analytic %.9g, float64 reference %.9g, tolerance %.3g (bound %.3g x scale %.3g)", what,
                     (long long)i, analytic[i], ref[i], tol, bound, scale);
    }
    free(xd); free(ref); free(err); free(p.y);
}

/* ---- GEMM ---- */
static void gemm_case(int64_t M) {
    int64_t N = 150, K = 53;
    float *x = randv(M * K, 1), *wf = randv(N * K, 1), *dy = randv(M * N, 1);
    uint16_t *wb = malloc(sizeof(uint16_t) * (size_t)(N * K));
    for (int64_t i = 0; i < N * K; i++) wb[i] = lorad_f32_to_bf16(wf[i]);
    struct lorad_gemm g;
    assert_int_equal(lorad_gemm_init(&g, pool, LORAD_COMPUTE_FLOAT32), 0);
    for (int dt = 0; dt < 2; dt++) {
        struct lorad_tensor W = {dt ? (const void *)wb : (const void *)wf, dt ? LORAD_DTYPE_BF16 : LORAD_DTYPE_F32, N, K};
        float *y = calloc((size_t)(M * N), 4), *yr = calloc((size_t)(M * N), 4);
        float *dx = calloc((size_t)(M * K), 4), *dxr = calloc((size_t)(M * K), 4);
        lorad_gemm_xwt(&g, y, x, &W, M, false);
        lorad_gemm_xwt_ref(yr, x, &W, M, false);
        /* one product summing K terms; accumulating adds a second stage */
        assert_close_tight(y, yr, M * N, f32_chain_error_bound(1, K), "xwt");
        lorad_gemm_xwt(&g, y, x, &W, M, true);
        lorad_gemm_xwt_ref(yr, x, &W, M, true);
        assert_close_tight(y, yr, M * N, f32_chain_error_bound(2, K), "xwt accumulate");
        lorad_gemm_dyw(&g, dx, dy, &W, M, false);
        lorad_gemm_dyw_ref(dxr, dy, &W, M, false);
        assert_close_tight(dx, dxr, M * K, f32_chain_error_bound(1, N), "dyw");
        /* M = 1 (inference) splits over N instead */
        lorad_gemm_xwt(&g, y, x, &W, 1, false);
        lorad_gemm_xwt_ref(yr, x, &W, 1, false);
        assert_close_tight(y, yr, N, f32_chain_error_bound(1, K), "xwt M=1");
        free(y); free(yr); free(dx); free(dxr);
    }
    lorad_gemm_destroy(&g);
    free(x); free(wf); free(dy); free(wb);
}
static void test_gemm_matches_reference(void **state) {
    (void)state;
    /* both backends on every host: the engine's kernel where the CPU has AVX-512, and OpenBLAS
     * (with its BF16 tiles), which hosts without AVX-512 use */
    for (int openblas = 0; openblas < 2; openblas++) {
        lorad_gemm_prefer_openblas(openblas);
        gemm_case(37);  /* split over the weight's rows (OpenBLAS) */
        gemm_case(300); /* split over tokens (OpenBLAS) */
    }
    lorad_gemm_prefer_openblas(false);
}

/* The engine's AVX-512 kernel on its own, against a plain double loop: both transposes, F32 and
 * BF16 B, alpha, beta (beta 0 must not read C, so C starts as NaN), and sizes that cross every
 * block edge (MC 384, KC 256, NC 1024, the 12x32 tile) as well as degenerate ones. */
static void sgemm_avx512_case(bool ta, bool tb, bool bf16, int64_t M, int64_t N, int64_t K, float alpha, float beta) {
    int64_t lda = (ta ? M : K) + 3, ldb = (tb ? K : N) + 5, ldc = N + 7;
    float *A = randv((ta ? K : M) * lda, 1), *Bf = randv((tb ? N : K) * ldb, 1), *C = randv(M * ldc, 1);
    uint16_t *Bh = malloc(sizeof(uint16_t) * (size_t)((tb ? N : K) * ldb));
    for (int64_t i = 0; i < (tb ? N : K) * ldb; i++) {
        Bh[i] = lorad_f32_to_bf16(Bf[i]);
        if (bf16) Bf[i] = lorad_bf16_to_f32(Bh[i]);
    }
    if (beta == 0.0f)
        for (int64_t i = 0; i < M * ldc; i++) C[i] = NAN;
    float *want = malloc(sizeof(float) * (size_t)(M * ldc));
    memcpy(want, C, sizeof(float) * (size_t)(M * ldc));
    lorad_sgemm_ref(ta, tb, bf16 ? LORAD_DTYPE_BF16 : LORAD_DTYPE_F32, M, N, K, alpha, A, lda,
                    bf16 ? (const void *)Bh : (const void *)Bf, ldb, 0, beta, want, ldc);
    double mx = 0;
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < N; j++) mx = fmax(mx, fabs(want[i * ldc + j]));
    float *work = malloc(sizeof(float) * LORAD_SGEMM_AVX512_WORK_FLOATS);
    float *keep = malloc(sizeof(float) * (size_t)(M * ldc));
    memcpy(keep, C, sizeof(float) * (size_t)(M * ldc));
    lorad_sgemm_avx512(ta, tb, bf16 ? LORAD_DTYPE_BF16 : LORAD_DTYPE_F32, M, N, K, alpha, A, lda,
                       bf16 ? (const void *)Bh : (const void *)Bf, ldb, 0, beta, C, ldc, work);
    double md = 0;
    for (int64_t i = 0; i < M; i++) {
        for (int64_t j = 0; j < N; j++) md = fmax(md, fabs((double)C[i * ldc + j] - want[i * ldc + j]));
        for (int64_t j = N; j < ldc; j++) /* the padding between rows stays untouched */
            if (!(C[i * ldc + j] == keep[i * ldc + j] || (isnan(C[i * ldc + j]) && isnan(keep[i * ldc + j]))))
                fail_msg("ta %d tb %d bf16 %d %ldx%ldx%ld: wrote C[%ld][%ld] past N", ta, tb, bf16, (long)M, (long)N,
                         (long)K, (long)i, (long)j);
    }
    /* a product summing K terms, then alpha and beta: two stages (K = 0 leaves only beta * C,
     * which one rounding makes exact in both) */
    double allowed = f32_chain_error_bound(2, K > 2 ? K : 2) * mx;
    if (!(md <= allowed))
        fail_msg("ta %d tb %d bf16 %d %ldx%ldx%ld alpha %g beta %g: max diff %.3g, max ref %.3g, allowed %.3g", ta, tb,
                 bf16, (long)M, (long)N, (long)K, alpha, beta, md, mx, allowed);
    free(A); free(Bf); free(Bh); free(C); free(want); free(work); free(keep);
}
static void test_sgemm_avx512_matches_reference(void **state) {
    (void)state;
    if (!lorad_sgemm_avx512_available()) skip();
    static const int64_t shapes[][3] = {{1, 1, 1}, {12, 32, 16}, {13, 33, 17}, {11, 31, 15}, {5, 200, 3},
                                        {400, 1060, 270}, {397, 40, 600}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (int flags = 0; flags < 8; flags++) {
            bool ta = flags & 1, tb = flags & 2, bf16 = flags & 4;
            float beta = (s + (size_t)flags) % 2 ? 1.3f : 0.0f;
            sgemm_avx512_case(ta, tb, bf16, shapes[s][0], shapes[s][1], shapes[s][2], 0.7f, beta);
        }
    sgemm_avx512_case(false, true, false, 7, 9, 0, 1.0f, 0.5f); /* K = 0 scales C by beta */
}

/* A (N, K) weight of random GGML blocks: random quant bytes, f16 scales small enough that values
 * stay O(1). */
static void *random_quant_weight(enum lorad_dtype dt, int64_t N, int64_t K) {
    int64_t nb = N * K / lorad_dtype_block_values(dt), bb = lorad_dtype_block_bytes(dt);
    uint8_t *w = malloc((size_t)(nb * bb));
    for (int64_t i = 0; i < nb * bb; i++) w[i] = (uint8_t)(tiny_rand(&rng) >> 24);
    for (int64_t b = 0; b < nb; b++) {
        uint8_t *p = w + b * bb;
        uint16_t h1 = lorad_f32_to_f16((float)(0.002 + 0.01 * tiny_uniform(&rng)));
        uint16_t h2 = lorad_f32_to_f16((float)(0.002 + 0.01 * tiny_uniform(&rng)));
        int off = dt == LORAD_DTYPE_Q6_K ? 208 : 0;
        p[off] = (uint8_t)h1; p[off + 1] = (uint8_t)(h1 >> 8);
        if (dt == LORAD_DTYPE_Q4_K) { p[2] = (uint8_t)h2; p[3] = (uint8_t)(h2 >> 8); }
    }
    return w;
}

/* Quantised weights stay quantised: every backend (the engine's fp32 kernel, OpenBLAS with
 * dequantised tiles, bf16 compute) decodes them while multiplying, against the plain loops that
 * decode element by element; both split directions and both products. */
static void test_gemm_quantised_weights(void **state) {
    (void)state;
    static const enum lorad_dtype dts[] = {LORAD_DTYPE_Q8_0, LORAD_DTYPE_Q4_0, LORAD_DTYPE_Q4_K, LORAD_DTYPE_Q6_K};
    int64_t N = 160, K = 512;
    struct lorad_gemm g;
    /* bf16-sized scratch, so the backends can take turns on one g */
    assert_int_equal(lorad_gemm_init(&g, pool, lorad_gemm_bf16_usable() ? LORAD_COMPUTE_BFLOAT16 : LORAD_COMPUTE_FLOAT32), 0);
    for (size_t d = 0; d < 4; d++) {
        void *wq = random_quant_weight(dts[d], N, K);
        struct lorad_tensor W = {wq, dts[d], N, K};
        /* the plain loops read the weight decoded once, element by element (lorad_tensor_value) */
        float *wf = malloc(sizeof(float) * (size_t)(N * K));
        for (int64_t r = 0; r < N; r++)
            for (int64_t c = 0; c < K; c++) wf[r * K + c] = lorad_tensor_value(&W, r, c);
        struct lorad_tensor Wf = {wf, LORAD_DTYPE_F32, N, K};
        for (int backend = 0; backend < 3; backend++) {
            if (backend == 2 && !lorad_gemm_bf16_usable()) continue;
            lorad_gemm_prefer_openblas(backend == 1);
            g.compute = backend == 2 ? LORAD_COMPUTE_BFLOAT16 : LORAD_COMPUTE_FLOAT32;
            for (int64_t M = 37; M <= 300; M += 263) {
                float *x = randv(M * K, 1), *dy = randv(M * N, 1);
                float *y = malloc(sizeof(float) * (size_t)(M * N)), *yr = malloc(sizeof(float) * (size_t)(M * N));
                float *dx = malloc(sizeof(float) * (size_t)(M * K)), *dxr = malloc(sizeof(float) * (size_t)(M * K));
                lorad_gemm_xwt(&g, y, x, &W, M, false);
                lorad_gemm_dyw(&g, dx, dy, &W, M, false);
                if (backend == 2) {
                    lorad_gemm_bf16_ref(true, LORAD_DTYPE_F32, M, N, K, x, K, wf, K, 0, 0.0f, yr, N);
                    lorad_gemm_bf16_ref(false, LORAD_DTYPE_F32, M, K, N, dy, N, wf, K, 0, 0.0f, dxr, K);
                } else {
                    lorad_gemm_xwt_ref(yr, x, &Wf, M, false);
                    lorad_gemm_dyw_ref(dxr, dy, &Wf, M, false);
                }
                char what[64];
                snprintf(what, sizeof what, "%s backend %d M %ld xwt", lorad_dtype_name(dts[d]), backend, (long)M);
                assert_close_tight(y, yr, M * N, f32_chain_error_bound(1, K), what);
                snprintf(what, sizeof what, "%s backend %d M %ld dyw", lorad_dtype_name(dts[d]), backend, (long)M);
                assert_close_tight(dx, dxr, M * K, f32_chain_error_bound(1, N), what);
                free(x); free(dy); free(y); free(yr); free(dx); free(dxr);
            }
        }
        free(wq); free(wf);
    }
    lorad_gemm_prefer_openblas(false);
    lorad_gemm_destroy(&g);
}

/* The BF16 kernel against its plain loop, element by element: the loop rounds both operands to
 * bf16 exactly as the kernel must, and sums the (exact) products in double, so the kernel may
 * differ only by its fp32 accumulation: |err_ij| <= f32_chain_error_bound(2, K) *
 * (sum_k |a_ik b_kj| + |beta C_ij|). To show the operands really are rounded, the same product
 * in fp32 without rounding must lie outside that bound somewhere. */
static void gemm_bf16_case(bool tb, bool bf16, int64_t M, int64_t N, int64_t K, float beta) {
    int64_t lda = K + 3, ldb = (tb ? K : N) + 5, ldc = N + 7, nb = (tb ? N : K) * ldb;
    float *A = randv(M * lda, 1), *Bf = randv(nb, 1), *C = randv(M * ldc, 1);
    uint16_t *Bh = malloc(sizeof(uint16_t) * (size_t)nb);
    for (int64_t i = 0; i < nb; i++) Bh[i] = lorad_f32_to_bf16(Bf[i]);
    if (beta == 0.0f)
        for (int64_t i = 0; i < M * ldc; i++) C[i] = NAN;
    enum lorad_dtype dt = bf16 ? LORAD_DTYPE_BF16 : LORAD_DTYPE_F32;
    const void *B = bf16 ? (const void *)Bh : (const void *)Bf;
    float *want = malloc(sizeof(float) * (size_t)(M * ldc)), *unrounded = malloc(sizeof(float) * (size_t)(M * ldc));
    float *got = malloc(sizeof(float) * (size_t)(M * ldc)), *work = malloc(sizeof(float) * LORAD_GEMM_BF16_WORK_FLOATS);
    memcpy(want, C, sizeof(float) * (size_t)(M * ldc));
    memcpy(got, C, sizeof(float) * (size_t)(M * ldc));
    memcpy(unrounded, C, sizeof(float) * (size_t)(M * ldc));
    lorad_gemm_bf16_ref(tb, dt, M, N, K, A, lda, B, ldb, 0, beta, want, ldc);
    lorad_sgemm_ref(false, tb, dt, M, N, K, 1.0f, A, lda, B, ldb, 0, beta, unrounded, ldc);
    lorad_gemm_bf16_avx512(tb, dt, M, N, K, A, lda, B, ldb, 0, beta, got, ldc, work);
    double bound = f32_chain_error_bound(2, K > 2 ? K : 2);
    int64_t outside = 0;
    for (int64_t i = 0; i < M; i++) {
        for (int64_t j = 0; j < N; j++) {
            double mag = beta == 0.0f ? 0.0 : fabs((double)beta * C[i * ldc + j]);
            for (int64_t k = 0; k < K; k++) {
                double b = bf16 ? lorad_bf16_to_f32(Bh[tb ? j * ldb + k : k * ldb + j]) : Bf[tb ? j * ldb + k : k * ldb + j];
                mag += fabs((double)A[i * lda + k] * b);
            }
            double tol = bound * mag, d = fabs((double)got[i * ldc + j] - want[i * ldc + j]);
            if (!(d <= tol))
                fail_msg("bf16 gemm tb %d bf16 %d %ldx%ldx%ld beta %g: C[%ld][%ld] = %.9g, reference %.9g, tolerance %.3g",
                         tb, bf16, (long)M, (long)N, (long)K, beta, (long)i, (long)j, got[i * ldc + j],
                         want[i * ldc + j], tol);
            if (fabs((double)unrounded[i * ldc + j] - want[i * ldc + j]) > tol) outside++;
        }
        for (int64_t j = N; j < ldc; j++) /* the padding between rows stays untouched */
            if (!(got[i * ldc + j] == C[i * ldc + j] || (isnan(got[i * ldc + j]) && isnan(C[i * ldc + j]))))
                fail_msg("bf16 gemm wrote C[%ld][%ld] past N", (long)i, (long)j);
    }
    /* worst-case bounds grow with K faster than bf16's typical error, so only short sums can show it */
    if (K >= 8 && K <= 64 && outside == 0) fail_msg("bf16 gemm %ldx%ldx%ld: fp32 without rounding is within the bound everywhere", (long)M, (long)N, (long)K);
    free(A); free(Bf); free(Bh); free(C); free(want); free(unrounded); free(got); free(work);
}
static void test_gemm_bf16_matches_reference(void **state) {
    (void)state;
    if (!lorad_gemm_bf16_avx512_available()) skip();
    /* every block edge: MR 12, NR 32 (and the 16-column halves), KC 512 with an odd tail, MC 384,
     * NC 3072, and odd K that needs a zero partner */
    static const int64_t shapes[][3] = {{1, 1, 1},       {12, 32, 32},    {13, 33, 17},  {11, 31, 15}, {5, 200, 3},
                                        {400, 1060, 545}, {397, 48, 1031}, {24, 64, 544}, {30, 3110, 70}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (int flags = 0; flags < 4; flags++) {
            if (shapes[s][0] * shapes[s][1] > 100000 && !(flags & 2)) continue; /* the big one with bf16 B only */
            gemm_bf16_case(flags & 1, flags & 2, shapes[s][0], shapes[s][1], shapes[s][2],
                           (s + (size_t)flags) % 2 ? 1.3f : 0.0f);
        }
}

/* The products over the pool compute in bf16 when asked, both ways of splitting included. */
static void test_gemm_compute_bf16(void **state) {
    (void)state;
    if (!lorad_gemm_bf16_usable()) skip();
    struct lorad_gemm g;
    assert_int_equal(lorad_gemm_init(&g, pool, LORAD_COMPUTE_BFLOAT16), 0);
    static const int64_t shapes[][3] = {{300, 150, 53}, {1, 640, 96}, {200, 40, 70}};
    for (size_t s = 0; s < 3; s++) {
        int64_t M = shapes[s][0], N = shapes[s][1], K = shapes[s][2];
        float *x = randv(M * K, 1), *dy = randv(M * N, 1), *wf = randv(N * K, 1);
        uint16_t *wb = malloc(sizeof(uint16_t) * (size_t)(N * K));
        for (int64_t i = 0; i < N * K; i++) wb[i] = lorad_f32_to_bf16(wf[i]);
        struct lorad_tensor W = {wb, LORAD_DTYPE_BF16, N, K};
        float *y = malloc(sizeof(float) * (size_t)(M * N)), *yr = malloc(sizeof(float) * (size_t)(M * N));
        float *dx = malloc(sizeof(float) * (size_t)(M * K)), *dxr = malloc(sizeof(float) * (size_t)(M * K));
        lorad_gemm_xwt(&g, y, x, &W, M, false);
        lorad_gemm_bf16_ref(true, LORAD_DTYPE_BF16, M, N, K, x, K, wb, K, 0, 0.0f, yr, N);
        assert_close_tight(y, yr, M * N, f32_chain_error_bound(1, K), "xwt bf16");
        lorad_gemm_dyw(&g, dx, dy, &W, M, false);
        lorad_gemm_bf16_ref(false, LORAD_DTYPE_BF16, M, K, N, dy, N, wb, K, 0, 0.0f, dxr, K);
        assert_close_tight(dx, dxr, M * K, f32_chain_error_bound(1, N), "dyw bf16");
        free(x); free(dy); free(wf); free(wb); free(y); free(yr); free(dx); free(dxr);
    }
    lorad_gemm_destroy(&g);
}

/* auto picks bf16 only for a bf16 base on a CPU that has the kernel; asking for bf16 elsewhere is
 * refused with the parameter named. */
static void test_compute_dtype_resolve(void **state) {
    (void)state;
    struct lorad_error err = {0};
    enum lorad_compute_dtype d = LORAD_COMPUTE_AUTO;
    assert_int_equal(lorad_compute_dtype_resolve(LORAD_COMPUTE_AUTO, false, "p", &d, &err), 0);
    assert_int_equal(d, LORAD_COMPUTE_FLOAT32);
    assert_int_equal(lorad_compute_dtype_resolve(LORAD_COMPUTE_AUTO, true, "p", &d, &err), 0);
    assert_int_equal(d, lorad_gemm_bf16_usable() ? LORAD_COMPUTE_BFLOAT16 : LORAD_COMPUTE_FLOAT32);
    lorad_gemm_prefer_openblas(true);
    d = LORAD_COMPUTE_AUTO;
    assert_int_equal(lorad_compute_dtype_resolve(LORAD_COMPUTE_BFLOAT16, true, "hyperparameters.compute_dtype", &d, &err),
                     -ENOTSUP);
    assert_int_equal(d, LORAD_COMPUTE_AUTO); /* not written on failure */
    assert_string_equal(err.param, "hyperparameters.compute_dtype");
    assert_non_null(strstr(err.message, "bfloat16"));
    lorad_gemm_prefer_openblas(false);
}

/* ---- RMSNorm ---- */
struct rms_c { double w[64]; int64_t N, C; };
static void rms_f(double *y, const double *x, void *c) {
    struct rms_c *r = c;
    f64_rmsnorm(y, x, r->w, (double)1e-5f, r->N, r->C);
}
static void test_rmsnorm(void **state) {
    (void)state;
    int64_t N = 5, C = 23;
    float *x = randv(N * C, 1), *w = randv(C, 1), *wo = randv(N * C, 1);
    float *y = malloc(4 * (size_t)(N * C)), *yr = malloc(4 * (size_t)(N * C)), inv[5], invr[5];
    lorad_rmsnorm_forward(pool, y, inv, x, w, 1e-5f, N, C);
    lorad_rmsnorm_forward_ref(yr, invr, x, w, 1e-5f, N, C);
    /* sum of squares, then the scaling: two stages over C terms; backward adds the dot product */
    assert_close_tight(y, yr, N * C, f32_chain_error_bound(2, C), "rmsnorm forward");
    float *dx = calloc((size_t)(N * C), 4), *dxr = calloc((size_t)(N * C), 4);
    lorad_rmsnorm_backward(pool, dx, wo, x, inv, w, N, C);
    lorad_rmsnorm_backward_ref(dxr, wo, x, invr, w, N, C);
    assert_close_tight(dx, dxr, N * C, f32_chain_error_bound(3, C), "rmsnorm backward vs ref");
    struct rms_c c = {.N = N, .C = C};
    for (int64_t j = 0; j < C; j++) c.w[j] = w[j];
    check_backward(dx, x, N * C, N * C, wo, rms_f, &c, 3, C, "rmsnorm backward vs finite differences");
    free(x); free(w); free(wo); free(y); free(yr); free(dx); free(dxr);
}

/* ---- RoPE with llama3 scaling ---- */
struct rope_c { const int32_t *pos; double inv_freq[32]; int64_t N; int nh, hd; };
static void rope_f(double *y, const double *x, void *c) {
    struct rope_c *r = c;
    memcpy(y, x, sizeof(double) * (size_t)(r->N * r->nh * r->hd));
    f64_rope(y, r->pos, r->inv_freq, r->N, r->nh, r->hd);
}
static void test_rope_llama3(void **state) {
    (void)state;
    struct lorad_llama_config cfg = tiny_config();
    cfg.head_dim = 16;
    cfg.rope_scaling = (struct lorad_rope_scaling){LORAD_ROPE_LLAMA3, 8, 1, 4, 64};
    /* the scaled frequencies follow transformers' rule: high band kept, low band / factor */
    double inv[8];
    lorad_rope_inv_freq(inv, &cfg);
    assert_true(fabs(inv[0] - 1.0) < 1e-12);                      /* wavelength 2pi < 16 */
    double f7 = pow(10000.0, -14.0 / 16);                           /* wavelength ~19870 > 64 */
    assert_true(fabs(inv[7] - f7 / 8) < 1e-15);
    double f2 = pow(10000.0, -4.0 / 16), wl = 2 * M_PI / f2;        /* ~62.8: medium band */
    double smooth = (64 / wl - 1) / (4 - 1);
    assert_true(fabs(inv[2] - ((1 - smooth) * f2 / 8 + smooth * f2)) < 1e-12);
    struct rope_c c = {.N = 7, .nh = 3, .hd = 16};
    f64_rope_inv_freq(c.inv_freq, &cfg); /* the float64 reference's own reading of the rule */
    for (int i = 0; i < 8; i++) assert_true(fabs(inv[i] - c.inv_freq[i]) <= 1e-15 * c.inv_freq[i]);

    int64_t N = 7;
    int nh = 3, hd = 16;
    int32_t pos[7] = {0, 1, 2, 30, 5, 63, 17};
    float *cs = malloc(4 * 64 * 8), *sn = malloc(4 * 64 * 8);
    lorad_rope_tables(cs, sn, &cfg, 64);
    float *x = randv(N * nh * hd, 1), *y = malloc(4 * (size_t)(N * nh * hd)), *yr = malloc(4 * (size_t)(N * nh * hd));
    memcpy(y, x, 4 * (size_t)(N * nh * hd));
    memcpy(yr, x, 4 * (size_t)(N * nh * hd));
    lorad_rope_forward(pool, y, pos, cs, sn, N, nh, hd);
    lorad_rope_forward_ref(yr, pos, &cfg, N, nh);
    /* x1 cos - x2 sin with cos/sin rounded into the tables: five roundings of terms no larger
     * than the output's scale, within the bound of three two-term stages */
    assert_close_tight(y, yr, N * nh * hd, f32_chain_error_bound(3, 2), "rope forward vs ref");
    float *wo = randv(N * nh * hd, 1), *dx = malloc(4 * (size_t)(N * nh * hd));
    memcpy(dx, wo, 4 * (size_t)(N * nh * hd));
    lorad_rope_backward(pool, dx, pos, cs, sn, N, nh, hd);
    c.pos = pos;
    check_backward(dx, x, N * nh * hd, N * nh * hd, wo, rope_f, &c, 3, 2, "rope backward vs finite differences");
    free(cs); free(sn); free(x); free(y); free(yr); free(wo); free(dx);
}

/* ---- attention with GQA and packing ---- */
struct att_c { const double *q, *k, *v; const int32_t *seg; struct lorad_attn_shape s; int which; };
static void att_f(double *y, const double *x, void *c) {
    struct att_c *a = c;
    const double *q = a->which == 0 ? x : a->q, *k = a->which == 1 ? x : a->k, *v = a->which == 2 ? x : a->v;
    f64_attention(y, q, k, v, a->seg, a->s.B, a->s.T, a->s.H, a->s.KV, a->s.hd);
}
static double *to_f64(const float *x, int64_t n) {
    double *d = malloc(sizeof(double) * (size_t)n);
    for (int64_t i = 0; i < n; i++) d[i] = x[i];
    return d;
}
static void test_attention_gqa_packed(void **state) {
    (void)state;
    struct lorad_attn_shape s = {2, 11, 4, 2, 6};
    int64_t nq = (int64_t)s.B * s.T * s.H * s.hd, nk = (int64_t)s.B * s.T * s.KV * s.hd;
    /* row 0: one sample; row 1: samples starting at 0, 4 and 9 */
    int32_t seg[22];
    for (int t = 0; t < 11; t++) {
        seg[t] = 0;
        seg[11 + t] = t < 4 ? 0 : t < 9 ? 4 : 9;
    }
    float *q = randv(nq, 1), *k = randv(nk, 1), *v = randv(nk, 1), *wo = randv(nq, 1);
    float *o = malloc(4 * (size_t)nq), *orf = malloc(4 * (size_t)nq), lse[88];
    lorad_attention_forward(pool, scratch, o, lse, q, k, v, seg, s);
    lorad_attention_forward_ref(orf, q, k, v, seg, s);
    /* scores (hd terms), softmax (T), weighted values (T): three stages */
    int64_t att_n = s.T > s.hd ? s.T : s.hd;
    assert_close_tight(o, orf, nq, f32_chain_error_bound(3, att_n), "attention forward vs ref");
    /* packing: token 5 of row 1 must not see token 3 — change k of row 1 token 3 and check */
    float *dq = malloc(4 * (size_t)nq), *dk = malloc(4 * (size_t)nk), *dv = malloc(4 * (size_t)nk);
    lorad_attention_backward(pool, scratch, dq, dk, dv, wo, q, k, v, o, lse, seg, s);
    /* backward: the forward's three stages, then dP = dO V^T, the softmax Jacobian and dS K or
     * dS^T Q: six */
    struct att_c c = {to_f64(q, nq), to_f64(k, nk), to_f64(v, nk), seg, s, 0};
    check_backward(dq, q, nq, nq, wo, att_f, &c, 6, att_n, "attention dq vs finite differences");
    c.which = 1;
    check_backward(dk, k, nk, nq, wo, att_f, &c, 6, att_n, "attention dk vs finite differences");
    c.which = 2;
    check_backward(dv, v, nk, nq, wo, att_f, &c, 6, att_n, "attention dv vs finite differences");
    free((void *)c.q); free((void *)c.k); free((void *)c.v);
    /* no gradient crosses a sample boundary: keys of sample [4, 9) in row 1 get nothing from
     * queries outside it; check the dk of token 3 (sample 0) is unaffected by queries >= 4 by
     * zeroing their upstream gradient and comparing */
    float *wo2 = malloc(4 * (size_t)nq), *dk2 = malloc(4 * (size_t)nk);
    memcpy(wo2, wo, 4 * (size_t)nq);
    for (int t = 4; t < 11; t++)
        for (int x = 0; x < s.H * s.hd; x++) wo2[((int64_t)11 + t) * s.H * s.hd + x] = 0;
    lorad_attention_backward(pool, scratch, dq, dk2, dv, wo2, q, k, v, o, lse, seg, s);
    for (int x = 0; x < s.KV * s.hd; x++) {
        int64_t i = ((int64_t)11 + 3) * s.KV * s.hd + x;
        assert_true(fabsf(dk2[i] - dk[i]) <= 1e-6f * (1 + fabsf(dk[i])));
    }
    free(q); free(k); free(v); free(wo); free(o); free(orf); free(dq); free(dk); free(dv); free(wo2); free(dk2);
}

/* ---- SwiGLU ---- */
struct sw_c { double up[64]; int64_t n; };
static void sw_f(double *y, const double *x, void *c) {
    struct sw_c *s = c;
    for (int64_t i = 0; i < s->n; i++) y[i] = f64_silu(x[i]) * s->up[i];
}
static void test_swiglu(void **state) {
    (void)state;
    int64_t n = 4096 * 2 + 37; /* exercises the threaded chunks and the tail */
    float *g = randv(n, 2), *u = randv(n, 1), *wo = randv(n, 1), *y = malloc(4 * (size_t)n), *yr = malloc(4 * (size_t)n);
    lorad_swiglu_forward(pool, y, g, u, n);
    lorad_swiglu_forward_ref(yr, g, u, n);
    /* exp (approximate, 2e-7 = 3.4u), 1 + e, the division and the product: three stages of a
     * 4-term floor (each 24u) cover them */
    assert_close_tight(y, yr, n, f32_chain_error_bound(3, 4), "swiglu forward vs ref");
    float *dg = malloc(4 * (size_t)n), *du = malloc(4 * (size_t)n);
    lorad_swiglu_backward(pool, dg, du, wo, g, u, n);
    struct sw_c c = {.n = 64};
    for (int64_t i = 0; i < 64; i++) c.up[i] = u[i];
    check_backward(dg, g, 64, 64, wo, sw_f, &c, 4, 4, "swiglu dgate vs finite differences");
    /* dup = dout * silu(gate) exactly: every element within the elementwise bound of its own size */
    double b = f32_chain_error_bound(4, 4);
    for (int64_t i = 0; i < n; i++) {
        double want = (double)wo[i] * f64_silu(g[i]);
        if (!(fabs(du[i] - want) <= b * fabs(want) + 1e-30))
            fail_msg("swiglu dup[%lld]: %.9g, float64 %.9g", (long long)i, du[i], want);
    }
    free(g); free(u); free(wo); free(y); free(yr); free(dg); free(du);
}

/* ---- cross-entropy ---- */
struct ce_c { const int32_t *labels; int64_t N, V; };
static void ce_f(double *y, const double *x, void *c) {
    struct ce_c *e = c;
    for (int64_t i = 0; i < e->N; i++) y[i] = f64_crossentropy_row(x + i * e->V, e->labels[i], e->V);
}
static void test_crossentropy(void **state) {
    (void)state;
    int64_t N = 6, V = 97;
    int32_t labels[6] = {3, -100, 96, 0, 50, -100};
    float *l = randv(N * V, 2), *lc = malloc(4 * (size_t)(N * V)), *dr = malloc(4 * (size_t)(N * V));
    memcpy(lc, l, 4 * (size_t)(N * V));
    l[0 * V + 3] = 9; /* row 0 predicts its label */
    memcpy(lc, l, 4 * (size_t)(N * V));
    double rl[6], rr[6];
    uint8_t corr[6];
    lorad_crossentropy_forward_backward(pool, lc, rl, corr, labels, 0.25f, true, N, V);
    lorad_crossentropy_ref(rr, dr, l, labels, 0.25f, N, V);
    /* max, exp of V shifted logits, their sum and its log: three stages over V terms */
    double ce_bound = f32_chain_error_bound(3, V);
    for (int i = 0; i < N; i++) assert_true(fabs(rl[i] - rr[i]) <= ce_bound * fmax(1.0, fabs(rr[i])));
    assert_true(rl[1] == 0 && rl[5] == 0);
    assert_int_equal(corr[0], 1);
    assert_close_tight(lc, dr, N * V, ce_bound, "crossentropy grad vs ref");
    float w[6] = {0.25f, 0.25f, 0.25f, 0.25f, 0.25f, 0.25f};
    struct ce_c c = {labels, N, V};
    check_backward(lc, l, N * V, N, w, ce_f, &c, 3, V, "crossentropy grad vs finite differences");
    free(l); free(lc); free(dr);
}

static void test_vector_exp(void **state) {
    (void)state;
    enum { n = 2003 };
    static float in[n], v[n];
    for (int i = 0; i < n; i++) in[i] = -100.0f + 189.5f * (float)i / n; /* x - 1.5 <= 88: the callers pass x <= 0 or -gate */
    in[0] = -INFINITY;
    memcpy(v, in, sizeof v);
    lorad_exp_shift_row(v, n, 1.5f);
    assert_true(v[0] == 0.0f);
    for (int i = 1; i < n; i++) {
        float x = in[i] - 1.5f;
        double ref = exp((double)x);
        if (x < -87.3f) assert_true(v[i] == 0.0f);
        else if (fabs(v[i] - ref) > 1e-6 * ref) fail_msg("exp(%g) = %g, expected %g", (double)x, (double)v[i], ref);
    }
}

static void test_pool_slices_cover_everything_once(void **state) {
    (void)state;
    for (int nt = 1; nt <= 5; nt++)
        for (int64_t n = 0; n < 50; n += 7) {
            int64_t next = 0;
            for (int t = 0; t < nt; t++) {
                int64_t b, e;
                lorad_pool_slice(n, t, nt, 4, &b, &e);
                assert_true(b == next || (b >= n && e >= n));
                if (e > b) next = e;
            }
            assert_int_equal(next, n);
        }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pool_slices_cover_everything_once),
        cmocka_unit_test(test_vector_exp),
        cmocka_unit_test(test_gemm_matches_reference),
        cmocka_unit_test(test_sgemm_avx512_matches_reference),
        cmocka_unit_test(test_gemm_bf16_matches_reference),
        cmocka_unit_test(test_gemm_compute_bf16),
        cmocka_unit_test(test_gemm_quantised_weights),
        cmocka_unit_test(test_compute_dtype_resolve),
        cmocka_unit_test(test_rmsnorm),
        cmocka_unit_test(test_rope_llama3),
        cmocka_unit_test(test_attention_gqa_packed),
        cmocka_unit_test(test_swiglu),
        cmocka_unit_test(test_crossentropy),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
