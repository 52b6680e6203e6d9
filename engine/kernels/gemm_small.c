#include "gemm_small.h"

#include <assert.h>
#include <immintrin.h>
#include <string.h>

#include "cpu_features.h"
#include "simd_sum.h"
#include "threadpool.h"

/* How the arithmetic stays independent of M, of the other rows of x, of the thread count and of
 * the blocking: every output element (m, n) owns one accumulator vector (16 lanes on AVX-512, 8
 * on AVX2 and in the scalar code), which starts at zero and takes x[m, k] * W[n, k] for lane
 * k % lanes, k ascending, in whole vectors, then the zero-padded tail, then a fixed horizontal
 * sum. A block of R rows of W only shares the loads of x between the R rows' accumulators, so
 * the R-row body and the one-row remainder run the same operations on each element, and so does
 * splitting the rows of x into groups. Which kernel runs is fixed per process
 * (lorad_isa_active), so within one process an element's result depends on x row m, W row n and
 * K alone. */

/* Rows of x one kernel call takes at most; a larger M runs as groups of X_GROUP rows of x over
 * the same tile of W rows, the later groups reading the tile from cache. On AVX2 the 16 ymm
 * cannot hold the accumulators of more than 4 rows of x for more than one row of W (and M = 8 on
 * one row of W, 8 loads of x per 8 FMAs, ran at a fifth of the memory rate; in groups of 4, 3x
 * faster). On AVX-512 four rows of x (32 KB at K = 2048) stay in L1 where eight do not: M = 8 in
 * two groups ran 12-16% faster from DRAM than in one. */
#define X_GROUP 4
/* Rows of W per tile when M is split into groups: the tile (48 x K) stays in L2 while each group
 * passes over it (24 and 96 measured alike). */
#define TILE_ROWS 48

/* Rows R of W one kernel call handles at once, by rows of x. The R * M accumulator chains must
 * cover the FMA latency (two 4-cycle pipes want 8 or more: at M = 1 four rows ran latency-bound,
 * eight ran 15-25% faster from DRAM) and each load of x is reused R times; the accumulators, the
 * R rows of W and one row of x must still fit the registers: 32 zmm, 16 ymm. */
#define ROWS_avx512_1 8
#define ROWS_avx512_2 8
#define ROWS_avx512_3 6
#define ROWS_avx512_4 6
#define ROWS_avx2_1 6
#define ROWS_avx2_2 4
#define ROWS_avx2_3 3
#define ROWS_avx2_4 3
#define MAX_BLOCK 8

/* How far ahead of its loads each row of W is prefetched. With 3-8 rows streaming at once the
 * hardware prefetcher alone left M = 8 up to 20% slower from DRAM; 1 KB to 8 KB measured alike.
 * A prefetch past the end of W is harmless: prefetches never fault. */
#define PREFETCH_BYTES 1024

/* One call's rows: y (M, R) with row stride ldy (+)= x (M, K) · w^T for the R rows of W at w
 * (row_bytes apart), M <= X_GROUP. */
typedef void (*rows_fn)(float *y, int64_t ldy, const float *x, const char *w, size_t row_bytes, int64_t K,
                        bool accumulate);

#define ALWAYS_INLINE static inline __attribute__((always_inline))
#define AVX512 __attribute__((target("avx512f")))
#define AVX2 __attribute__((target("avx2,fma")))

/* ---- AVX-512F ---- */

/* 16 elements of a W row from k on as f32: BF16 is the top half of an f32, so widening is a
 * zero extension and a shift. */
AVX512 ALWAYS_INLINE __m512 w16_avx512(const char *row, int64_t k, bool bf16) {
    if (!bf16) return _mm512_loadu_ps((const float *)row + k);
    __m256i h = _mm256_loadu_si256((const __m256i *)((const uint16_t *)row + k));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

/* The last n (< 16) elements of a W row from k on, zero past them. A 16-bit masked load needs
 * AVX512BW, which LORAD_ISA=avx512 does not promise, so BF16 goes through a zeroed copy. */
AVX512 ALWAYS_INLINE __m512 w_tail_avx512(const char *row, int64_t k, int64_t n, bool bf16) {
    if (!bf16) return _mm512_maskz_loadu_ps((__mmask16)((1u << n) - 1), (const float *)row + k);
    uint16_t t[16] = {0};
    memcpy(t, (const uint16_t *)row + k, (size_t)n * sizeof t[0]);
    return w16_avx512((const char *)t, 0, true);
}

/* y (M, R) (+)= x (M, K) · w^T for R rows of W: the rows_fn contract, with R, M and the dtype
 * constants once inlined so the accumulators live in registers. */
AVX512 ALWAYS_INLINE void block_avx512(float *y, int64_t ldy, const float *x, const char *w, size_t row_bytes,
                                       int64_t K, bool accumulate, const int R, const int M, const bool bf16) {
    __m512 acc[MAX_BLOCK][X_GROUP];
#pragma GCC unroll 8
    for (int r = 0; r < R; r++)
#pragma GCC unroll 8
        for (int m = 0; m < M; m++) acc[r][m] = _mm512_setzero_ps();
    int64_t kv = K & ~(int64_t)15;
    for (int64_t k = 0; k < kv; k += 16) {
        __m512 wv[MAX_BLOCK];
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) wv[r] = w16_avx512(w + r * row_bytes, k, bf16);
        {
            /* each row's stream looks PREFETCH_BYTES ahead, running on into the same row of the
             * next block when this row ends (a row of 1.5 KB would otherwise start cold) */
            size_t ahead = (size_t)k * (bf16 ? 2 : 4) + PREFETCH_BYTES;
            if (ahead >= row_bytes) ahead += (size_t)(R - 1) * row_bytes;
#pragma GCC unroll 8
            for (int r = 0; r < R; r++) _mm_prefetch(w + r * row_bytes + ahead, _MM_HINT_T0);
        }
#pragma GCC unroll 8
        for (int m = 0; m < M; m++) {
            __m512 xv = _mm512_loadu_ps(x + m * K + k);
            /* keeps xv in a register: gcc would otherwise fold the load into each of the R FMAs,
             * R loads of x where one does, and with many rows of x the load ports are the limit */
            __asm__("" : "+v"(xv));
#pragma GCC unroll 8
            for (int r = 0; r < R; r++) acc[r][m] = _mm512_fmadd_ps(xv, wv[r], acc[r][m]);
        }
    }
    if (kv < K) {
        /* zero lanes past K in both operands: those lanes take 0 * 0, the same for every element */
        __mmask16 mask = (__mmask16)((1u << (K - kv)) - 1);
        __m512 wv[MAX_BLOCK];
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) wv[r] = w_tail_avx512(w + r * row_bytes, kv, K - kv, bf16);
#pragma GCC unroll 8
        for (int m = 0; m < M; m++) {
            __m512 xv = _mm512_maskz_loadu_ps(mask, x + m * K + kv);
#pragma GCC unroll 8
            for (int r = 0; r < R; r++) acc[r][m] = _mm512_fmadd_ps(xv, wv[r], acc[r][m]);
        }
    }
#pragma GCC unroll 8
    for (int m = 0; m < M; m++)
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            float s = lorad_hsum_avx512(acc[r][m]), *o = y + m * ldy + r;
            *o = accumulate ? *o + s : s;
        }
}

/* ---- AVX2 + FMA ---- */

AVX2 ALWAYS_INLINE __m256 w8_avx2(const char *row, int64_t k, bool bf16) {
    if (!bf16) return _mm256_loadu_ps((const float *)row + k);
    __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)row + k));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

AVX2 ALWAYS_INLINE __m256 w_tail_avx2(const char *row, int64_t k, int64_t n, bool bf16) {
    if (!bf16) return _mm256_maskload_ps((const float *)row + k, lorad_lanes_below_avx2(n));
    uint16_t t[8] = {0};
    memcpy(t, (const uint16_t *)row + k, (size_t)n * sizeof t[0]);
    return w8_avx2((const char *)t, 0, true);
}

/* block_avx512 with 8 lanes. */
AVX2 ALWAYS_INLINE void block_avx2(float *y, int64_t ldy, const float *x, const char *w, size_t row_bytes, int64_t K,
                                   bool accumulate, const int R, const int M, const bool bf16) {
    __m256 acc[MAX_BLOCK][X_GROUP];
#pragma GCC unroll 8
    for (int r = 0; r < R; r++)
#pragma GCC unroll 8
        for (int m = 0; m < M; m++) acc[r][m] = _mm256_setzero_ps();
    int64_t kv = K & ~(int64_t)7;
    for (int64_t k = 0; k < kv; k += 8) {
        __m256 wv[MAX_BLOCK];
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) wv[r] = w8_avx2(w + r * row_bytes, k, bf16);
#pragma GCC unroll 8
        for (int m = 0; m < M; m++) {
            __m256 xv = _mm256_loadu_ps(x + m * K + k);
            __asm__("" : "+v"(xv)); /* one load of x for the R FMAs, as in block_avx512 */
#pragma GCC unroll 8
            for (int r = 0; r < R; r++) acc[r][m] = _mm256_fmadd_ps(xv, wv[r], acc[r][m]);
        }
    }
    if (kv < K) {
        __m256i mask = lorad_lanes_below_avx2(K - kv);
        __m256 wv[MAX_BLOCK];
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) wv[r] = w_tail_avx2(w + r * row_bytes, kv, K - kv, bf16);
#pragma GCC unroll 8
        for (int m = 0; m < M; m++) {
            __m256 xv = _mm256_maskload_ps(x + m * K + kv, mask);
#pragma GCC unroll 8
            for (int r = 0; r < R; r++) acc[r][m] = _mm256_fmadd_ps(xv, wv[r], acc[r][m]);
        }
    }
#pragma GCC unroll 8
    for (int m = 0; m < M; m++)
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            float s = lorad_hsum_avx2(acc[r][m]), *o = y + m * ldy + r;
            *o = accumulate ? *o + s : s;
        }
}

/* ---- the specialised kernels: per ISA, dtype and M, the R-row body and the one-row remainder ---- */

#define DEFINE_ROWS(isa, ATTR, name, R, M, bf16)                                                              \
    ATTR static void name(float *y, int64_t ldy, const float *x, const char *w, size_t row_bytes, int64_t K, \
                          bool accumulate) {                                                                  \
        block_##isa(y, ldy, x, w, row_bytes, K, accumulate, R, M, bf16);                                     \
    }
#define DEFINE_M(isa, ATTR, M)                                                                    \
    DEFINE_ROWS(isa, ATTR, isa##_f32_##M, ROWS_##isa##_##M, M, false)                               \
    DEFINE_ROWS(isa, ATTR, isa##_f32_##M##_1, 1, M, false)                                       \
    DEFINE_ROWS(isa, ATTR, isa##_bf16_##M, ROWS_##isa##_##M, M, true)                               \
    DEFINE_ROWS(isa, ATTR, isa##_bf16_##M##_1, 1, M, true)

DEFINE_M(avx512, AVX512, 1) DEFINE_M(avx512, AVX512, 2) DEFINE_M(avx512, AVX512, 3) DEFINE_M(avx512, AVX512, 4)
DEFINE_M(avx2, AVX2, 1) DEFINE_M(avx2, AVX2, 2) DEFINE_M(avx2, AVX2, 3) DEFINE_M(avx2, AVX2, 4)

/* The kernels for one ISA, dtype and M. */
struct variant {
    int rows;      /* of W per call of block */
    rows_fn block; /* `rows` rows */
    rows_fn one;   /* one row, for the remainder of a thread's slice */
};

#define VARIANT(isa, dt, M) {ROWS_##isa##_##M, isa##_##dt##_##M, isa##_##dt##_##M##_1}

/* [dtype is BF16][rows of x - 1] */
static const struct variant variants_avx512[2][X_GROUP] = {
    {VARIANT(avx512, f32, 1), VARIANT(avx512, f32, 2), VARIANT(avx512, f32, 3), VARIANT(avx512, f32, 4)},
    {VARIANT(avx512, bf16, 1), VARIANT(avx512, bf16, 2), VARIANT(avx512, bf16, 3), VARIANT(avx512, bf16, 4)},
};
static const struct variant variants_avx2[2][X_GROUP] = {
    {VARIANT(avx2, f32, 1), VARIANT(avx2, f32, 2), VARIANT(avx2, f32, 3), VARIANT(avx2, f32, 4)},
    {VARIANT(avx2, bf16, 1), VARIANT(avx2, bf16, 2), VARIANT(avx2, bf16, 3), VARIANT(avx2, bf16, 4)},
};

/* ---- portable ---- */

#define SCALAR_LANES 8

/* y (M, N) with row stride ldy (+)= x (M, K) · W^T for rows [n0, n1) of W, on plain x86-64: the
 * AVX2 kernel's 8-lane order written out in scalars (products rounded separately: no FMA). Each
 * row of W is read once; its 8-element chunks meet every row of x. */
static void rows_scalar(float *y, int64_t ldy, const float *x, const struct lorad_tensor *w, int64_t M, int64_t n0,
                        int64_t n1, bool accumulate) {
    int64_t K = w->cols;
    size_t row_bytes = lorad_dtype_row_bytes(w->dtype, K);
    bool bf16 = w->dtype == LORAD_DTYPE_BF16;
    for (int64_t n = n0; n < n1; n++) {
        const char *row = (const char *)w->data + (size_t)n * row_bytes;
        float acc[LORAD_GEMM_SMALL_MAX_ROWS][SCALAR_LANES] = {{0}};
        for (int64_t k = 0; k < K; k += SCALAR_LANES) {
            /* the tail's lanes past K take 0 * 0 like the vector kernels' */
            float wv[SCALAR_LANES] = {0}, xv[SCALAR_LANES];
            int64_t nk = K - k < SCALAR_LANES ? K - k : SCALAR_LANES;
            for (int64_t l = 0; l < nk; l++)
                wv[l] = bf16 ? lorad_bf16_to_f32(((const uint16_t *)row)[k + l]) : ((const float *)row)[k + l];
            for (int64_t m = 0; m < M; m++) {
                for (int l = 0; l < SCALAR_LANES; l++) xv[l] = l < nk ? x[m * K + k + l] : 0.0f;
                for (int l = 0; l < SCALAR_LANES; l++) acc[m][l] += xv[l] * wv[l];
            }
        }
        for (int64_t m = 0; m < M; m++) {
            const float *a = acc[m];
            float s = ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]));
            float *o = y + m * ldy + n;
            *o = accumulate ? *o + s : s;
        }
    }
}

/* ---- the product ---- */

/* The kernels for one ISA and dtype, by rows of x; NULL: the scalar code. */
static const struct variant *variants_for(const struct lorad_tensor *w) {
    int dt = w->dtype == LORAD_DTYPE_BF16;
    enum lorad_isa isa = lorad_isa_active();
    return isa >= LORAD_ISA_AVX512 ? variants_avx512[dt] : isa >= LORAD_ISA_AVX2 ? variants_avx2[dt] : NULL;
}

/* Rows [m0, m0 + mg) of y (M, ldy) (+)= those rows of x (M, K) · W^T for W rows [n0, n1), v being
 * the kernels for mg rows of x: the R-row body, then the remainder one row at a time. */
static void rows_vector(float *y, int64_t ldy, const float *x, const struct lorad_tensor *W, const struct variant *v,
                        int64_t m0, int64_t n0, int64_t n1, bool accumulate) {
    int64_t K = W->cols;
    size_t row_bytes = lorad_dtype_row_bytes(W->dtype, K);
    const char *w = W->data;
    y += m0 * ldy;
    x += m0 * K;
    int64_t n = n0;
    for (; n + v->rows <= n1; n += v->rows) v->block(y + n, ldy, x, w + (size_t)n * row_bytes, row_bytes, K, accumulate);
    for (; n < n1; n++) v->one(y + n, ldy, x, w + (size_t)n * row_bytes, row_bytes, K, accumulate);
}

void lorad_gemm_xwt_small_rows(float *y, int64_t ldy, const float *x, const struct lorad_tensor *w, int64_t M,
                               int64_t n0, int64_t n1, bool accumulate) {
    assert(lorad_gemm_small_supports(w));
    assert(M >= 1 && M <= LORAD_GEMM_SMALL_MAX_ROWS && 0 <= n0 && n0 <= n1 && n1 <= w->rows);
    if (n0 >= n1) return;
    const struct variant *v = variants_for(w);
    if (!v) {
        rows_scalar(y, ldy, x, w, M, n0, n1, accumulate);
        return;
    }
    if (M <= X_GROUP) {
        rows_vector(y, ldy, x, w, &v[M - 1], 0, n0, n1, accumulate);
        return;
    }
    for (int64_t t = n0; t < n1; t += TILE_ROWS) {
        int64_t t1 = n1 - t < TILE_ROWS ? n1 : t + TILE_ROWS;
        for (int64_t m0 = 0; m0 < M; m0 += X_GROUP) {
            int64_t mg = M - m0 < X_GROUP ? M - m0 : X_GROUP;
            rows_vector(y, ldy, x, w, &v[mg - 1], m0, t, t1, accumulate);
        }
    }
}

struct small_job {
    float *y;
    const float *x;
    const struct lorad_tensor *w;
    int64_t M;
    bool accumulate;
};

/* Thread tid's slice of W's rows, in 16-row units so neighbouring threads' parts of a row of y
 * rarely share a cache line. */
static void small_thread(void *ctx, int tid, int n_threads) {
    const struct small_job *j = ctx;
    int64_t n0, n1;
    lorad_pool_slice(j->w->rows, tid, n_threads, 16, &n0, &n1);
    lorad_gemm_xwt_small_rows(j->y, j->w->rows, j->x, j->w, j->M, n0, n1, j->accumulate);
}

/* ---- the low-rank update ---- */

/* y[n] += scale * sum_k u[k] Bt[k, n] for n in [n0, n1): one FMA chain per element over k
 * ascending, the same in every lane and in the masked tail, so an element's result does not
 * depend on where a slice starts. */
AVX512 static void lowrank_avx512(float *y, const float *u, const float *Bt, int r, int64_t ldb, int64_t n0,
                                  int64_t n1, float scale) {
    for (int64_t n = n0; n < n1; n += 16) {
        __mmask16 m = n1 - n >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n1 - n)) - 1);
        __m512 acc = _mm512_setzero_ps();
        for (int k = 0; k < r; k++)
            acc = _mm512_fmadd_ps(_mm512_set1_ps(u[k]), _mm512_maskz_loadu_ps(m, Bt + k * ldb + n), acc);
        __m512 yv = _mm512_maskz_loadu_ps(m, y + n);
        _mm512_mask_storeu_ps(y + n, m, _mm512_fmadd_ps(_mm512_set1_ps(scale), acc, yv));
    }
}

AVX2 static void lowrank_avx2(float *y, const float *u, const float *Bt, int r, int64_t ldb, int64_t n0, int64_t n1,
                              float scale) {
    for (int64_t n = n0; n < n1; n += 8) {
        __m256i m = lorad_lanes_below_avx2(n1 - n < 8 ? n1 - n : 8);
        __m256 acc = _mm256_setzero_ps();
        for (int k = 0; k < r; k++)
            acc = _mm256_fmadd_ps(_mm256_set1_ps(u[k]), _mm256_maskload_ps(Bt + k * ldb + n, m), acc);
        __m256 yv = _mm256_maskload_ps(y + n, m);
        _mm256_maskstore_ps(y + n, m, _mm256_fmadd_ps(_mm256_set1_ps(scale), acc, yv));
    }
}

void lorad_lowrank_add_rows(float *y, const float *u, const float *Bt, int r, int64_t ldb, int64_t n0, int64_t n1,
                            float scale) {
    assert(r >= 1 && 0 <= n0 && n0 <= n1 && n1 <= ldb);
    enum lorad_isa isa = lorad_isa_active();
    if (isa >= LORAD_ISA_AVX512) lowrank_avx512(y, u, Bt, r, ldb, n0, n1, scale);
    else if (isa >= LORAD_ISA_AVX2) lowrank_avx2(y, u, Bt, r, ldb, n0, n1, scale);
    else
        for (int64_t n = n0; n < n1; n++) {
            float acc = 0.0f;
            for (int k = 0; k < r; k++) acc += u[k] * Bt[k * ldb + n];
            y[n] += scale * acc;
        }
}

bool lorad_gemm_small_supports(const struct lorad_tensor *w) {
    return w->dtype == LORAD_DTYPE_F32 || w->dtype == LORAD_DTYPE_BF16;
}

void lorad_gemm_xwt_small(struct lorad_gemm *g, float *y, const float *x, const struct lorad_tensor *w, int64_t M,
                          bool accumulate) {
    assert(lorad_gemm_small_supports(w));
    assert(M >= 1 && M <= LORAD_GEMM_SMALL_MAX_ROWS);
    struct small_job j = {y, x, w, M, accumulate};
    lorad_pool_run(g->pool, small_thread, &j);
}

void lorad_gemm_xwt_small_ref(float *y, const float *x, const struct lorad_tensor *w, int64_t M, bool accumulate) {
    int64_t N = w->rows, K = w->cols;
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++) {
            double s = 0.0;
            for (int64_t k = 0; k < K; k++) s += (double)x[m * K + k] * lorad_tensor_at(w, n, k);
            y[m * N + n] = accumulate ? (float)((double)y[m * N + n] + s) : (float)s;
        }
}

void lorad_lowrank_add_rows_ref(float *y, const float *u, const float *Bt, int r, int64_t ldb, int64_t n0, int64_t n1,
                                float scale) {
    for (int64_t n = n0; n < n1; n++) {
        double acc = 0.0;
        for (int k = 0; k < r; k++) acc += (double)u[k] * Bt[k * ldb + n];
        y[n] = (float)((double)y[n] + (double)scale * acc);
    }
}
