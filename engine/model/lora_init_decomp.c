#include "lora_init_decomp.h"

#include <errno.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>

/* LAPACK as OpenBLAS exports it (its bundled reference LAPACK, LP64: INTEGER is 32-bit), column-
 * major. The trailing size_t is the hidden length gfortran passes for a CHARACTER argument. */
extern void dgesdd_(const char *jobz, const int *m, const int *n, double *a, const int *lda, double *s, double *u,
                    const int *ldu, double *vt, const int *ldvt, double *work, const int *lwork, int *iwork,
                    int *info, size_t jobz_len);
extern void dgeqrf_(const int *m, const int *n, double *a, const int *lda, double *tau, double *work,
                    const int *lwork, int *info);
extern void dorgqr_(const int *m, const int *n, const int *k, double *a, const int *lda, const double *tau,
                    double *work, const int *lwork, int *info);

/* PiSSA reads the row-major W (out, in) as the column-major matrix M = W^T (in, out), lda = in,
 * without a transposing copy: M = U' S V'^T (dgesdd) is W = V' S U'^T, so PEFT's V is V' and its
 * U^T is U'^T: row j of A is column j of U' and row i of B is row i of V' (column i of V'^T).
 *
 * OLoRA needs only the first r Householder steps of W's QR: reflector j depends on columns 0..j
 * alone, so Q[:, :r] and R[:r, :r] are the QR of W[:, :r] (out, r) (dgeqrf + dorgqr on a column-
 * major copy of those columns), and the rest of R's first r rows is what the reflectors make of
 * the other columns, R[:r, r:] = Q[:, :r]^T W[:, r:]. That is O(out in r) time and O((out + in) r)
 * memory instead of a full QR, with the same signs as a full Householder QR (LAPACK's and
 * torch.linalg.qr's). */
struct plan {
    int m, n, k, r; /* PiSSA: LAPACK's M is m x n = in x out, k = min(m, n); OLoRA: m = out, n = in */
    int lwork;      /* doubles of LAPACK workspace */
    size_t n_doubles, n_ints;
    int64_t bytes;
};

static int check_shape(const char *method, int64_t out, int64_t in, int r, struct lorad_error *err) {
    if (out <= 0 || in <= 0)
        return lorad_error_set(err, -EINVAL, "", "%s: the base weight's shape (%lld, %lld) is empty", method,
                               (long long)out, (long long)in);
    int64_t k = out < in ? out : in;
    if (r < 1 || r > k)
        return lorad_error_set(err, -EINVAL, "lora.r",
                               "lora.r must be in [1, min(out, in)] = [1, %lld] for %s on a (%lld, %lld) weight, "
                               "got %d", (long long)k, method, (long long)out, (long long)in, r);
    if (out > INT_MAX || in > INT_MAX)
        return lorad_error_set(err, -EOVERFLOW, "", "%s: the base weight's shape (%lld, %lld) exceeds LAPACK's "
                               "32-bit sizes", method, (long long)out, (long long)in);
    return 0;
}

/* A workspace size LAPACK reported (in work[0]), at least min_lwork; -EOVERFLOW beyond int. */
static int lwork_of(double reported, double min_lwork, int *ret_lwork) {
    double w = reported > min_lwork ? reported : min_lwork;
    if (!(w >= 1.0)) w = 1.0;
    if (!(w <= (double)INT_MAX)) return -EOVERFLOW;
    *ret_lwork = (int)ceil(w);
    return 0;
}

/* n_doubles and n_ints into bytes, -EOVERFLOW beyond int64. */
static int plan_bytes(struct plan *p) {
    size_t d, i, total;
    if (__builtin_mul_overflow(p->n_doubles, sizeof(double), &d) || __builtin_mul_overflow(p->n_ints, sizeof(int), &i) ||
        __builtin_add_overflow(d, i, &total) || total > (size_t)INT64_MAX)
        return -EOVERFLOW;
    p->bytes = (int64_t)total;
    return 0;
}

/* The sum of products a*b + c*d + ... of sizes, -EOVERFLOW beyond size_t. */
static int add_product(size_t *acc, size_t a, size_t b) {
    size_t prod;
    if (__builtin_mul_overflow(a, b, &prod) || __builtin_add_overflow(*acc, prod, acc)) return -EOVERFLOW;
    return 0;
}

static int plan_pissa(struct plan *p, int64_t out, int64_t in, int r, struct lorad_error *err) {
    int rc = check_shape("PiSSA", out, in, r, err);
    if (rc < 0) return rc;
    *p = (struct plan){.m = (int)in, .n = (int)out, .k = (int)(in < out ? in : out), .r = r};
    int m = p->m, n = p->n, k = p->k, lda = m, ldu = m, ldvt = k, query = -1, info = 0, iwork_dummy = 0;
    double wq = 0, dummy = 0;
    dgesdd_("S", &m, &n, &dummy, &lda, &dummy, &dummy, &ldu, &dummy, &ldvt, &wq, &query, &iwork_dummy, &info, 1);
    /* dgesdd's documented minima for JOBZ = 'S' (LAPACK 3.6 and 3.7+), in case the query under-reports */
    double dk = k, dmx = m > n ? m : n;
    double min_lwork = fmax(4.0 * dk * dk + 7.0 * dk, 3.0 * dk + fmax(dmx, 4.0 * dk * dk + 4.0 * dk));
    if (info != 0 || lwork_of(wq, min_lwork, &p->lwork) < 0)
        return lorad_error_set(err, -EOVERFLOW, "", "PiSSA: the SVD workspace of a (%lld, %lld) weight exceeds "
                               "LAPACK's 32-bit sizes", (long long)out, (long long)in);
    size_t nd = (size_t)k + (size_t)p->lwork; /* S, work */
    if (add_product(&nd, (size_t)m, (size_t)n) < 0 ||  /* the f64 copy of W */
        add_product(&nd, (size_t)m, (size_t)k) < 0 ||  /* U' (in, k) */
        add_product(&nd, (size_t)k, (size_t)n) < 0)    /* V'^T (k, out) */
        return lorad_error_set(err, -EOVERFLOW, "", "PiSSA: a (%lld, %lld) weight is too large", (long long)out,
                               (long long)in);
    p->n_doubles = nd;
    p->n_ints = 8 * (size_t)k;
    if (plan_bytes(p) < 0)
        return lorad_error_set(err, -EOVERFLOW, "", "PiSSA: a (%lld, %lld) weight is too large", (long long)out,
                               (long long)in);
    return 0;
}

static int plan_olora(struct plan *p, int64_t out, int64_t in, int r, struct lorad_error *err) {
    int rc = check_shape("OLoRA", out, in, r, err);
    if (rc < 0) return rc;
    *p = (struct plan){.m = (int)out, .n = (int)in, .k = (int)(in < out ? in : out), .r = r};
    int m = p->m, lda = m, query = -1, info1 = 0, info2 = 0;
    double wq1 = 0, wq2 = 0, dummy = 0;
    dgeqrf_(&m, &r, &dummy, &lda, &dummy, &wq1, &query, &info1);
    dorgqr_(&m, &r, &r, &dummy, &lda, &dummy, &wq2, &query, &info2);
    /* the documented minima: dgeqrf and dorgqr LWORK >= N (here r) */
    if (info1 != 0 || info2 != 0 || lwork_of(fmax(wq1, wq2), (double)r, &p->lwork) < 0)
        return lorad_error_set(err, -EOVERFLOW, "", "OLoRA: the QR workspace of a (%lld, %lld) weight exceeds "
                               "LAPACK's 32-bit sizes", (long long)out, (long long)in);
    size_t nd = (size_t)r + (size_t)p->lwork; /* tau, work */
    if (add_product(&nd, (size_t)m, (size_t)r) < 0 ||        /* W[:, :r], then Q[:, :r] (out, r) */
        add_product(&nd, (size_t)r, (size_t)p->n) < 0)       /* R[:r] (r, in) */
        return lorad_error_set(err, -EOVERFLOW, "", "OLoRA: a (%lld, %lld) weight is too large", (long long)out,
                               (long long)in);
    p->n_doubles = nd;
    p->n_ints = 0;
    if (plan_bytes(p) < 0)
        return lorad_error_set(err, -EOVERFLOW, "", "OLoRA: a (%lld, %lld) weight is too large", (long long)out,
                               (long long)in);
    return 0;
}

int lorad_lora_init_pissa_scratch_bytes(int64_t *ret_bytes, int64_t out, int64_t in, int r, struct lorad_error *err) {
    struct plan p;
    int rc = plan_pissa(&p, out, in, r, err);
    if (rc < 0) return rc;
    *ret_bytes = p.bytes;
    return 0;
}

int lorad_lora_init_olora_scratch_bytes(int64_t *ret_bytes, int64_t out, int64_t in, int r, struct lorad_error *err) {
    struct plan p;
    int rc = plan_olora(&p, out, in, r, err);
    if (rc < 0) return rc;
    *ret_bytes = p.bytes;
    return 0;
}

static int check_scale(const char *method, float scale, struct lorad_error *err) {
    if (!isfinite(scale) || !(scale > 0.0f))
        return lorad_error_set(err, -EINVAL, "lora.alpha", "%s: the LoRA scale (alpha / r) must be finite and > 0, "
                               "got %g", method, (double)scale);
    return 0;
}

/* -ERANGE naming the first element of W (out, in) that is not finite. */
static int check_finite(const float *W, int64_t out, int64_t in, const char *method, struct lorad_error *err) {
    for (int64_t i = 0; i < out; i++)
        for (int64_t j = 0; j < in; j++)
            if (!isfinite(W[i * in + j]))
                return lorad_error_set(err, -ERANGE, "", "%s: the base weight's element (%lld, %lld) is %g", method,
                                       (long long)i, (long long)j, (double)W[i * in + j]);
    return 0;
}

int lorad_lora_init_pissa(float *ret_A, float *ret_B, const float *W, int64_t out, int64_t in, int r, float scale,
                          struct lorad_error *err) {
    struct plan p;
    int rc = plan_pissa(&p, out, in, r, err);
    if (rc < 0) return rc;
    if ((rc = check_scale("PiSSA", scale, err)) < 0) return rc;
    if ((rc = check_finite(W, out, in, "PiSSA", err)) < 0) return rc;
    double *mem = malloc((size_t)p.bytes);
    if (!mem)
        return lorad_error_set(err, -ENOMEM, "", "PiSSA: out of memory for the SVD of a (%lld, %lld) weight "
                               "(%lld bytes)", (long long)out, (long long)in, (long long)p.bytes);
    const int m = p.m, n = p.n, k = p.k;
    double *a = mem;                              // (in, out) column-major = W (out, in) row-major
    double *S = a + (size_t)m * (size_t)n;        // (k), descending
    double *U = S + k;                            // (in, k) column-major: U'[c, j] = U[c + j*in]
    double *VT = U + (size_t)m * (size_t)k;       // (k, out) column-major: V'[i, j] = VT[j + i*k]
    double *work = VT + (size_t)k * (size_t)n;    // (lwork)
    int *iwork = (int *)(work + p.lwork);         // (8k)
    for (size_t e = 0; e < (size_t)m * (size_t)n; e++) a[e] = W[e];
    int lda = m, ldu = m, ldvt = k, info = 0;
    dgesdd_("S", &m, &n, a, &lda, S, U, &ldu, VT, &ldvt, work, &p.lwork, iwork, &info, 1);
    if (info != 0) {
        rc = info > 0 ? lorad_error_set(err, -ERANGE, "", "PiSSA: the SVD of a (%lld, %lld) weight did not converge",
                                        (long long)out, (long long)in)
                      : lorad_error_set(err, -EINVAL, "", "PiSSA: LAPACK dgesdd rejected argument %d", -info);
        goto done;
    }
    /* sqrt(S[j] / scale) <= sqrt(S[0] / scale) and |U|, |V| <= 1: the largest factor element */
    double top = sqrt(S[0] / (double)scale);
    if (!(top * (1.0 + 1e-6) < (double)FLT_MAX)) {
        rc = lorad_error_set(err, -ERANGE, "", "PiSSA: the factors overflow float32 (sqrt(sigma_1 / scale) = %g)",
                             top);
        goto done;
    }
    for (int j = 0; j < r; j++) S[j] = sqrt(S[j] / (double)scale); // sqrt(Sr), Sr = S[:r] / scale
    for (int j = 0; j < r; j++)
        for (int64_t c = 0; c < in; c++) ret_A[(int64_t)j * in + c] = (float)(S[j] * U[(size_t)j * (size_t)m + (size_t)c]);
    for (int64_t i = 0; i < out; i++)
        for (int j = 0; j < r; j++) ret_B[i * r + j] = (float)(VT[(size_t)i * (size_t)k + (size_t)j] * S[j]);
done:
    free(mem);
    return rc;
}

int lorad_lora_init_olora(float *ret_A, float *ret_B, const float *W, int64_t out, int64_t in, int r, float scale,
                          struct lorad_error *err) {
    struct plan p;
    int rc = plan_olora(&p, out, in, r, err);
    if (rc < 0) return rc;
    if ((rc = check_scale("OLoRA", scale, err)) < 0) return rc;
    if ((rc = check_finite(W, out, in, "OLoRA", err)) < 0) return rc;
    double *mem = malloc((size_t)p.bytes);
    if (!mem)
        return lorad_error_set(err, -ENOMEM, "", "OLoRA: out of memory for the QR of a (%lld, %lld) weight "
                               "(%lld bytes)", (long long)out, (long long)in, (long long)p.bytes);
    const int m = p.m;
    double *Q = mem;                         // (out, r) column-major: W[:, :r], then Q[:, :r]
    double *tau = Q + (size_t)m * (size_t)r; // (r)
    double *Rr = tau + r;                    // (r, in) row-major: R[:r]
    double *work = Rr + (size_t)r * (size_t)in;
    for (int64_t i = 0; i < out; i++)
        for (int j = 0; j < r; j++) Q[(size_t)j * (size_t)m + (size_t)i] = W[i * in + j];
    int lda = m, info = 0;
    dgeqrf_(&m, &r, Q, &lda, tau, work, &p.lwork, &info);
    if (info != 0) {
        rc = lorad_error_set(err, -EINVAL, "", "OLoRA: LAPACK dgeqrf rejected argument %d", -info);
        goto done;
    }
    /* R[:r, :r] is on and above the diagonal: R[j, c] = Q[j + c*out] for c >= j; exact zeros below */
    for (int j = 0; j < r; j++)
        for (int c = 0; c < r; c++) Rr[(size_t)j * (size_t)in + (size_t)c] = c >= j ? Q[(size_t)c * (size_t)m + (size_t)j] : 0.0;
    dorgqr_(&m, &r, &r, Q, &lda, tau, work, &p.lwork, &info);
    if (info != 0) {
        rc = lorad_error_set(err, -EINVAL, "", "OLoRA: LAPACK dorgqr rejected argument %d", -info);
        goto done;
    }
    /* R[:r, r:] = Q[:, :r]^T W[:, r:], accumulated over W's rows */
    for (int j = 0; j < r; j++)
        for (int64_t c = r; c < in; c++) Rr[(size_t)j * (size_t)in + (size_t)c] = 0.0;
    for (int64_t i = 0; i < out; i++) {
        const float *w_row = W + i * in;
        for (int j = 0; j < r; j++) {
            double q = Q[(size_t)j * (size_t)m + (size_t)i], *r_row = Rr + (size_t)j * (size_t)in;
            for (int64_t c = r; c < in; c++) r_row[c] += q * w_row[c];
        }
    }
    double rmax = 0;
    for (size_t e = 0; e < (size_t)r * (size_t)in; e++) rmax = fmax(rmax, fabs(Rr[e]));
    if (!(rmax < (double)FLT_MAX)) {
        rc = lorad_error_set(err, -ERANGE, "", "OLoRA: R overflows float32 (max |R| = %g)", rmax);
        goto done;
    }
    for (int64_t i = 0; i < out; i++)
        for (int j = 0; j < r; j++) ret_B[i * r + j] = (float)Q[(size_t)j * (size_t)m + (size_t)i];
    for (size_t e = 0; e < (size_t)r * (size_t)in; e++) ret_A[e] = (float)Rr[e];
done:
    free(mem);
    return rc;
}

void lorad_lora_init_residual(float *residual, const float *W, const float *A, const float *B, int64_t out, int64_t in,
                              int r, float scale) {
    enum { CHUNK = 256 };
    double acc[CHUNK];
    for (int64_t i = 0; i < out; i++)
        for (int64_t j0 = 0; j0 < in; j0 += CHUNK) {
            int64_t nj = in - j0 < CHUNK ? in - j0 : CHUNK;
            for (int64_t j = 0; j < nj; j++) acc[j] = W[i * in + j0 + j];
            for (int t = 0; t < r; t++) {
                double b = (double)scale * B[i * r + t]; /* exact: a product of two floats */
                const float *a_row = A + (int64_t)t * in + j0;
                for (int64_t j = 0; j < nj; j++) acc[j] -= b * a_row[j];
            }
            for (int64_t j = 0; j < nj; j++) residual[i * in + j0 + j] = (float)acc[j];
        }
}
