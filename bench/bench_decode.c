/* Decoding through lorad_decoder_step on random bf16 weights at real shapes; see bench/README.md.
 *
 *   bench_decode [--shape 110m|1.1b|both --threads 2 --prompt 128 --steps 64 --pp 512 --r 16 --rounds 1]
 *
 * Per shape (110m: dim 768, 12 layers, 12 heads, hidden 2048; 1.1b: TinyLlama, dim 2048, 22 layers,
 * 32 heads, 4 KV heads, hidden 5632; vocab 32000), every linear weight and the embeddings in BF16:
 *   - one stream decoding one token per step after a --prompt token prompt (--steps timed steps
 *     after one untimed), against its bandwidth bound: the bytes one step must read (the linear
 *     weights incl. the LM head, plus the KV cache up to that position) over the memory-read rate
 *     of summing a 2 GiB buffer with the same number of threads, measured in this run;
 *   - the same stream with an unmerged LoRA adapter (r on all seven linears);
 *   - 4 and 8 streams, each on its own adapter, stepped together (one lorad_decoder_step per
 *     token for all of them): aggregate tokens/s against the single stream's; and the same
 *     batches on the base alone;
 *   - one --pp token prompt in one item, against the bf16 product kernel at 512x4096x4096 and the
 *     vdpbf16ps inner-loop peak measured here (the fp32 kernel where bf16 compute is not usable).
 * --rounds N runs all of it N times in turn, so a slow spell of the shared host falls on every
 * run, and prints medians (ratios are taken within each round). Not a test: timings on a shared
 * machine are noisy. */
#include <errno.h>
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "decoder.h"
#include "gemm.h"
#include "lora.h"
#include "threadpool.h"

#define MAX_ROUNDS 16
#define MAX_STREAMS 8
#define READ_BUFFER_BYTES ((int64_t)2 << 30)

struct shape {
    const char *name;
    int dim, layers, heads, kv_heads, hidden, vocab;
};
static const struct shape shapes[] = {
    {"110m", 768, 12, 12, 12, 2048, 32000},
    {"1.1b", 2048, 22, 32, 4, 5632, 32000},
};

struct args {
    unsigned shapes; /* bit i: shapes[i] */
    int threads, prompt, steps, pp, r, rounds;
};

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static uint64_t rs = 88172645463325252ULL;
static float frand(void) {
    rs ^= rs << 13; rs ^= rs >> 7; rs ^= rs << 17;
    return (float)((double)(rs >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

/* Truncation, not rounding: a random base needs no round-to-nearest, and filling 1.1G values
 * through the exact conversion would be most of the 1.1b shape's set-up time. */
static uint16_t bf16_of(float v) {
    uint32_t u;
    memcpy(&u, &v, 4);
    return (uint16_t)(u >> 16);
}

struct base {
    struct lorad_base_weights w;
    void *mem;
};

static struct lorad_tensor make(char **p, int64_t rows, int64_t cols, bool bf16, float scale, float offset) {
    struct lorad_tensor t = {*p, bf16 ? LORAD_DTYPE_BF16 : LORAD_DTYPE_F32, rows, cols};
    for (int64_t i = 0; i < rows * cols; i++) {
        float v = offset + scale * frand();
        if (bf16) ((uint16_t *)*p)[i] = bf16_of(v);
        else ((float *)*p)[i] = v;
    }
    *p += rows * cols * (bf16 ? 2 : 4);
    return t;
}

/* A random base of shape s: every matrix BF16 (so the decoder keeps a bf16 KV cache and computes
 * prompts in bf16 where the CPU can), the norms F32, the LM head untied. */
static int make_base(struct base *b, const struct shape *s) {
    struct lorad_llama_config *c = &b->w.cfg;
    lorad_llama_config_defaults(c);
    c->dim = s->dim; c->hidden_dim = s->hidden; c->n_layers = s->layers; c->n_heads = s->heads;
    c->n_kv_heads = s->kv_heads; c->head_dim = s->dim / s->heads; c->vocab_size = s->vocab;
    c->max_seq_len = 4096;
    int64_t bytes = lorad_llama_config_n_params(c) * 2 + (2 * (int64_t)s->layers + 1) * s->dim * 4 + 4096;
    b->mem = malloc((size_t)bytes);
    b->w.layers = calloc((size_t)s->layers, sizeof *b->w.layers);
    if (!b->mem || !b->w.layers) return -ENOMEM;
    char *p = b->mem;
    int64_t d = c->dim, q = (int64_t)c->n_heads * c->head_dim, kv = (int64_t)c->n_kv_heads * c->head_dim;
    float sc = 0.04f;
    b->w.embed = make(&p, c->vocab_size, d, true, 1.0f, 0);
    for (int l = 0; l < c->n_layers; l++) {
        struct lorad_layer_weights *L = &b->w.layers[l];
        L->attn_norm = make(&p, 1, d, false, 0.1f, 1);
        L->wq = make(&p, q, d, true, sc, 0);
        L->wk = make(&p, kv, d, true, sc, 0);
        L->wv = make(&p, kv, d, true, sc, 0);
        L->wo = make(&p, d, q, true, sc, 0);
        L->ffn_norm = make(&p, 1, d, false, 0.1f, 1);
        L->w_gate = make(&p, c->hidden_dim, d, true, sc, 0);
        L->w_up = make(&p, c->hidden_dim, d, true, sc, 0);
        L->w_down = make(&p, d, c->hidden_dim, true, sc, 0);
    }
    b->w.final_norm = make(&p, 1, d, false, 0.1f, 1);
    b->w.lm_head = make(&p, c->vocab_size, d, true, sc, 0);
    return p <= (char *)b->mem + bytes ? 0 : -EOVERFLOW;
}

static void free_base(struct base *b) {
    free(b->mem);
    free(b->w.layers);
    *b = (struct base){0};
}

static int64_t tensor_bytes(const struct lorad_tensor *t) { return t->rows * t->cols * lorad_dtype_size(t->dtype); }

/* What a decode token must read of the base whatever the batch: every linear weight once. */
static int64_t linear_bytes(const struct lorad_base_weights *w) {
    int64_t n = tensor_bytes(&w->lm_head);
    for (int l = 0; l < w->cfg.n_layers; l++) {
        const struct lorad_layer_weights *L = &w->layers[l];
        const struct lorad_tensor *t[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down};
        for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) n += tensor_bytes(t[i]);
    }
    return n;
}

/* ---------------------------------------------------------------- reference rates */

/* The memory-read rate: each pool thread sums its static slice of a buffer far larger than any
 * cache, as the decode kernel streams its slice of each weight. Integer adds, so that arbitrary
 * bytes cannot hit slow float paths, and four accumulators so that the adds never bound it. */
struct sum_job {
    const uint64_t *buf;
    int64_t n; /* uint64 words */
    uint64_t sink[LORAD_MAX_THREADS];
};
__attribute__((target("avx512f"))) static uint64_t sum_avx512(const uint64_t *p, int64_t n) {
    __m512i s0 = _mm512_setzero_si512(), s1 = s0, s2 = s0, s3 = s0;
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        s0 = _mm512_add_epi64(s0, _mm512_load_si512((const void *)(p + i)));
        s1 = _mm512_add_epi64(s1, _mm512_load_si512((const void *)(p + i + 8)));
        s2 = _mm512_add_epi64(s2, _mm512_load_si512((const void *)(p + i + 16)));
        s3 = _mm512_add_epi64(s3, _mm512_load_si512((const void *)(p + i + 24)));
    }
    uint64_t s = (uint64_t)_mm512_reduce_add_epi64(_mm512_add_epi64(_mm512_add_epi64(s0, s1), _mm512_add_epi64(s2, s3)));
    for (; i < n; i++) s += p[i];
    return s;
}
static uint64_t sum_plain(const uint64_t *p, int64_t n) {
    uint64_t s[4] = {0};
    int64_t i = 0;
    for (; i + 4 <= n; i += 4)
        for (int k = 0; k < 4; k++) s[k] += p[i + k];
    for (; i < n; i++) s[0] += p[i];
    return s[0] + s[1] + s[2] + s[3];
}
static void sum_thread(void *ctx, int tid, int nt) {
    struct sum_job *j = ctx;
    int64_t b, e;
    lorad_pool_slice(j->n, tid, nt, 64, &b, &e); /* 512-byte units keep every slice aligned */
    j->sink[tid] = __builtin_cpu_supports("avx512f") ? sum_avx512(j->buf + b, e - b) : sum_plain(j->buf + b, e - b);
}
/* GB/s (1e9 bytes), the best of reps passes. */
static double read_rate(struct lorad_pool *pool, struct sum_job *j, int reps) {
    double best = 0;
    for (int r = 0; r < reps; r++) {
        double t0 = now();
        lorad_pool_run(pool, sum_thread, j);
        double rate = (double)j->n * 8 / (now() - t0) / 1e9;
        if (rate > best) best = rate;
    }
    return best;
}

/* GFLOP/s of the engine's partitioned product at 512x4096x4096 in compute, on bf16 weights for
 * bf16 compute (as the decoder's prompt products run on a bf16 base). */
static double gemm_rate(int threads, enum lorad_compute_dtype compute) {
    struct lorad_pool *pool;
    struct lorad_gemm g;
    if (lorad_pool_new(&pool, threads) < 0) return 0;
    if (lorad_gemm_init(&g, pool, compute) < 0) {
        lorad_pool_free(pool);
        return 0;
    }
    int64_t M = 512, N = 4096, K = 4096;
    float *A = malloc(sizeof(float) * (size_t)(M * K)), *B = malloc(sizeof(float) * (size_t)(N * K)),
          *C = malloc(sizeof(float) * (size_t)(M * N));
    uint16_t *Bh = malloc(sizeof(uint16_t) * (size_t)(N * K));
    double rate = 0;
    if (A && B && C && Bh) {
        for (int64_t i = 0; i < M * K; i++) A[i] = frand();
        for (int64_t i = 0; i < N * K; i++) B[i] = frand();
        struct lorad_tensor W = {B, LORAD_DTYPE_F32, N, K};
        if (compute == LORAD_COMPUTE_BFLOAT16) {
            for (int64_t i = 0; i < N * K; i++) Bh[i] = lorad_f32_to_bf16(B[i]);
            W = (struct lorad_tensor){Bh, LORAD_DTYPE_BF16, N, K};
        }
        lorad_gemm_xwt(&g, C, A, &W, M, false);
        double t0 = now();
        int reps = 5;
        for (int i = 0; i < reps; i++) lorad_gemm_xwt(&g, C, A, &W, M, false);
        rate = 2.0 * M * N * K * reps / (now() - t0) / 1e9;
    }
    free(A); free(B); free(C); free(Bh);
    lorad_gemm_destroy(&g);
    lorad_pool_free(pool);
    return rate;
}

/* The bf16 kernel's inner loop without memory: 24 independent vdpbf16ps accumulator chains, as
 * in its 12x32 tile, per thread (as bench_train_step measures it). 64 FLOP per instruction. */
struct peak_job {
    int64_t iters;
    float sink[LORAD_MAX_THREADS];
};
__attribute__((target("avx512f,avx512bw,avx512bf16"))) static void peak_thread(void *ctx, int tid, int nt) {
    (void)nt;
    struct peak_job *j = ctx;
    __m512 c[24];
    for (int i = 0; i < 24; i++) c[i] = _mm512_set1_ps((float)i);
    __m512bh a = (__m512bh)_mm512_set1_epi32(0x3f803f80), b = (__m512bh)_mm512_set1_epi32(0x3c003c00);
    for (int64_t k = 0; k < j->iters; k++) {
#pragma GCC unroll 24
        for (int i = 0; i < 24; i++) c[i] = _mm512_dpbf16_ps(c[i], a, b);
        __asm__ volatile("" : "+v"(a)); /* keep the loop from being folded */
    }
    __m512 sum = c[0];
    for (int i = 1; i < 24; i++) sum = _mm512_add_ps(sum, c[i]);
    j->sink[tid] = _mm512_reduce_add_ps(sum);
}
static double bf16_peak_rate(struct lorad_pool *pool) {
    if (!lorad_gemm_bf16_usable()) return 0;
    struct peak_job j = {.iters = 2000000};
    lorad_pool_run(pool, peak_thread, &j);
    double t0 = now();
    lorad_pool_run(pool, peak_thread, &j);
    return 64.0 * 24 * (double)j.iters * lorad_pool_size(pool) / (now() - t0) / 1e9;
}

/* ---------------------------------------------------------------- adapters */

static int64_t lora_floats(const struct lorad_llama_config *c, int r) {
    int64_t n = 0;
    for (int m = 0; m < LORAD_LM_HEAD; m++) {
        int64_t out, in;
        lorad_lora_module_shape(c, (enum lorad_lora_module)m, &out, &in);
        n += (int64_t)r * (in + out);
    }
    return n * c->n_layers;
}

/* A random adapter of rank r on all seven linears of every layer, built in memory under PEFT's
 * names as lorad_adapter_load would hand it over; buf (lora_floats) holds its tensors until
 * lorad_lora_weights_new has copied them. B is random, not PEFT's zeros, so that the products
 * are not of zeros (the timing does not depend on it; finite logits do). */
static int make_lora(struct lorad_lora_weights **ret, const struct lorad_base_weights *w, int r, float *buf, int id,
                     struct lorad_error *err) {
    const struct lorad_llama_config *c = &w->cfg;
    int n = 2 * LORAD_LM_HEAD * c->n_layers;
    struct lorad_adapter_tensor *t = calloc((size_t)n, sizeof *t);
    if (!t) return lorad_error_set(err, -ENOMEM, "", "out of memory");
    char path[32];
    snprintf(path, sizeof path, "bench-adapter-%d", id);
    struct lorad_adapter ad = {.path = path, .meta = {.r = r, .alpha = 2.0 * r}, .n_tensors = n, .tensors = t};
    float *p = buf;
    int k = 0;
    for (int l = 0; l < c->n_layers; l++)
        for (int m = 0; m < LORAD_LM_HEAD; m++) {
            int64_t out, in;
            lorad_lora_module_shape(c, (enum lorad_lora_module)m, &out, &in);
            const char *block = m <= LORAD_O_PROJ ? "self_attn" : "mlp", *name = lorad_lora_module_name((enum lorad_lora_module)m);
            for (int is_b = 0; is_b < 2; is_b++, k++) {
                int64_t rows = is_b ? out : r, cols = is_b ? r : in;
                float sc = is_b ? 0.01f : 1.0f / (float)in;
                snprintf(t[k].name, sizeof t[k].name, "model.layers.%d.%s.%s.lora_%c.weight", l, block, name, is_b ? 'B' : 'A');
                t[k].data = p;
                t[k].rows = rows;
                t[k].cols = cols;
                for (int64_t i = 0; i < rows * cols; i++) p[i] = sc * frand();
                p += rows * cols;
            }
        }
    int rc = lorad_lora_weights_new(ret, &ad, w, err);
    free(t);
    return rc;
}

/* ---------------------------------------------------------------- the runs */

static int32_t token(int stream, int i, int vocab) {
    return (int32_t)(((uint64_t)stream * 7919 + (uint64_t)i * 104729 + 13) % (uint64_t)vocab);
}

/* S streams (stream i on loras[i], or the base alone when loras is NULL): each prompt in its own
 * step, then one untimed step and `steps` timed ones of one token per stream, all S in one
 * lorad_decoder_step. *ret_step_s: seconds per timed step; *ret_prefill_tps: prompt tokens/s. */
static int run_streams(double *ret_step_s, double *ret_prefill_tps, struct lorad_decoder *d, struct lorad_kv_cache **caches,
                       struct lorad_lora_weights *const *loras, float *logits, int S, const struct args *a,
                       struct lorad_error *err) {
    int V = lorad_decoder_config(d)->vocab_size;
    struct lorad_decode_item items[MAX_STREAMS];
    int32_t *prompt = malloc(sizeof(int32_t) * (size_t)a->prompt), next[MAX_STREAMS];
    if (!prompt) return lorad_error_set(err, -ENOMEM, "", "out of memory");
    double prefill = 0;
    int rc = 0;
    for (int i = 0; i < S && rc == 0; i++) {
        lorad_kv_cache_reset(caches[i]);
        for (int t = 0; t < a->prompt; t++) prompt[t] = token(i, t, V);
        items[0] = (struct lorad_decode_item){caches[i], loras ? loras[i] : NULL, prompt, a->prompt, logits + (int64_t)i * V};
        double t0 = now();
        rc = lorad_decoder_step(d, items, 1, err);
        prefill += now() - t0;
    }
    free(prompt);
    if (rc < 0) return rc;
    double t0 = 0;
    for (int s = 0; s <= a->steps; s++) {
        if (s == 1) t0 = now(); /* step 0 warms up */
        for (int i = 0; i < S; i++) {
            next[i] = token(i, a->prompt + s, V);
            items[i] = (struct lorad_decode_item){caches[i], loras ? loras[i] : NULL, &next[i], 1, logits + (int64_t)i * V};
        }
        if ((rc = lorad_decoder_step(d, items, S, err)) < 0) return rc;
    }
    *ret_step_s = (now() - t0) / a->steps;
    *ret_prefill_tps = (double)S * a->prompt / prefill;
    return 0;
}

/* One prompt of n tokens in one item of n rows: seconds. */
static int run_prompt(double *ret_s, struct lorad_decoder *d, struct lorad_kv_cache *c, float *logits, int n,
                      struct lorad_error *err) {
    int V = lorad_decoder_config(d)->vocab_size;
    int32_t *toks = malloc(sizeof(int32_t) * (size_t)n);
    if (!toks) return lorad_error_set(err, -ENOMEM, "", "out of memory");
    for (int t = 0; t < n; t++) toks[t] = token(MAX_STREAMS, t, V);
    lorad_kv_cache_reset(c);
    struct lorad_decode_item it = {c, NULL, toks, n, logits};
    double t0 = now();
    int rc = lorad_decoder_step(d, &it, 1, err);
    *ret_s = now() - t0;
    free(toks);
    return rc;
}

static double median(const double *v, int n) {
    double t[MAX_ROUNDS];
    memcpy(t, v, sizeof(double) * (size_t)n);
    for (int i = 1; i < n; i++)
        for (int k = i; k > 0 && t[k - 1] > t[k]; k--) {
            double x = t[k];
            t[k] = t[k - 1];
            t[k - 1] = x;
        }
    return n % 2 ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2]);
}

/* The runs of a table, in the order they are made each round. */
/* The base-only batches are not goals of their own: beside the adapter rows they tell the small
 * kernel's batching apart from the cost of applying the adapters per item. */
enum { RUN_BASE, RUN_LORA, RUN_4_BASE, RUN_4, RUN_8_BASE, RUN_8, N_RUNS };
static const int run_streams_of[N_RUNS] = {1, 1, 4, 4, 8, 8};
static const bool run_lora[N_RUNS] = {false, true, false, true, false, true};
static const char *const run_names[N_RUNS] = {"1 stream, base", "1 stream, adapter", "4 streams, base only",
                                              "4 streams, 4 adapters", "8 streams, base only", "8 streams, 8 adapters"};

static const char *yes_no(bool met) { return met ? "met" : "NOT met"; }

static int bench_shape(const struct shape *s, const struct args *a, struct lorad_pool *pool, struct sum_job *rd) {
    struct lorad_error err = {0};
    struct base b = {0};
    struct lorad_decoder *d = NULL;
    struct lorad_kv_cache *caches[MAX_STREAMS] = {0}, *pc = NULL;
    struct lorad_lora_weights *loras[MAX_STREAMS] = {0};
    float *logits = NULL, *abuf = NULL;
    int rc;
    double t_setup = now();
    if ((rc = make_base(&b, s)) < 0) {
        fprintf(stderr, "%s: cannot allocate the random base\n", s->name);
        goto out;
    }
    const struct lorad_llama_config *c = &b.w.cfg;
    int max_rows = a->pp > a->prompt ? a->pp : a->prompt, cap = a->prompt + a->steps + 1;
    struct lorad_decoder_options o = {.threads = a->threads, .max_rows = max_rows, .max_seqs = MAX_STREAMS,
                                      .max_pos = cap > a->pp ? cap : a->pp, .compute_dtype = LORAD_COMPUTE_AUTO};
    if ((rc = lorad_decoder_new(&d, &b.w, &o, &err)) < 0) goto fail;
    for (int i = 0; i < MAX_STREAMS; i++)
        if ((rc = lorad_kv_cache_new(&caches[i], d, cap, &err)) < 0) goto fail;
    if ((rc = lorad_kv_cache_new(&pc, d, a->pp, &err)) < 0) goto fail;
    abuf = malloc(sizeof(float) * (size_t)lora_floats(c, a->r));
    logits = malloc(sizeof(float) * (size_t)MAX_STREAMS * (size_t)c->vocab_size);
    if (!abuf || !logits) {
        rc = lorad_error_set(&err, -ENOMEM, "", "out of memory");
        goto fail;
    }
    for (int i = 0; i < MAX_STREAMS; i++)
        if ((rc = make_lora(&loras[i], &b.w, a->r, abuf, i, &err)) < 0) goto fail;
    free(abuf);
    abuf = NULL;
    enum lorad_compute_dtype compute;
    if ((rc = lorad_compute_dtype_resolve(LORAD_COMPUTE_AUTO, true, "compute_dtype", &compute, &err)) < 0) goto fail;
    t_setup = now() - t_setup;

    /* The reference rates before and after the runs, the best of all samples: on a shared host a
     * single sample can be slowed by other processes and would flatter the ratios. */
    double bw = read_rate(pool, rd, 5), kern = gemm_rate(a->threads, compute), peak = bf16_peak_rate(pool);
    double tps[N_RUNS][MAX_ROUNDS], prefill[MAX_ROUNDS], pp_tps[MAX_ROUNDS];
    double vs1[N_RUNS][MAX_ROUNDS], vs1a[N_RUNS][MAX_ROUNDS];
    for (int r = 0; r < a->rounds; r++) {
        for (int k = 0; k < N_RUNS; k++) {
            double step_s = 0, pre = 0;
            if ((rc = run_streams(&step_s, &pre, d, caches, run_lora[k] ? loras : NULL, logits, run_streams_of[k], a,
                                  &err)) < 0)
                goto fail;
            tps[k][r] = run_streams_of[k] / step_s;
            if (k == RUN_BASE) prefill[r] = pre;
        }
        for (int k = 0; k < N_RUNS; k++) {
            vs1[k][r] = tps[k][r] / tps[RUN_BASE][r];
            vs1a[k][r] = tps[k][r] / tps[RUN_LORA][r];
        }
        double pp_s = 0;
        if ((rc = run_prompt(&pp_s, d, pc, logits, a->pp, &err)) < 0) goto fail;
        pp_tps[r] = a->pp / pp_s;
        double bw2 = read_rate(pool, rd, 3);
        if (bw2 > bw) bw = bw2;
        if (a->rounds > 1)
            printf("round %d, %s: 1 stream %.1f, with adapter %.1f, 4 streams %.1f / with adapters %.1f (%.2fx), "
                   "8 streams %.1f / with adapters %.1f (%.2fx) tok/s; prompt %d: %.1f tok/s; read rate %.1f GB/s\n",
                   r + 1, s->name, tps[RUN_BASE][r], tps[RUN_LORA][r], tps[RUN_4_BASE][r], tps[RUN_4][r], vs1[RUN_4][r],
                   tps[RUN_8_BASE][r], tps[RUN_8][r], vs1[RUN_8][r], a->pp, pp_tps[r], bw2);
        fflush(stdout);
    }
    double k2 = gemm_rate(a->threads, compute), p2 = bf16_peak_rate(pool);
    if (k2 > kern) kern = k2;
    if (p2 > peak) peak = p2;

    /* What one step must read: the linear weights once for all streams, and per stream its KV
     * cache up to its position (the timed steps are at positions prompt+1..prompt+steps, reading
     * one more key each) and its adapter's A and B. */
    int64_t wbytes = linear_bytes(&b.w), kv_tok = lorad_kv_cache_bytes_per_token(d);
    double kv_step = (double)kv_tok * (a->prompt + 1 + (a->steps + 1) / 2.0);
    double lbytes = (double)lorad_lora_weights_bytes(loras[0]);
    printf("\nshape %s: dim %d layers %d heads %d kv %d hidden %d vocab %d; bf16 base: %.1f MB of linear weights "
           "(incl. LM head); KV cache %.1f KB/token (%s); adapters r=%d on all seven linears, %.1f MB each (f32); "
           "set-up %.1f s\n",
           s->name, s->dim, s->layers, s->heads, s->kv_heads, s->hidden, s->vocab, wbytes / 1e6, kv_tok / 1e3,
           kv_tok == 2 * (int64_t)c->n_layers * c->n_kv_heads * c->head_dim * 2 ? "bf16" : "f32", a->r, lbytes / 1e6,
           t_setup);
    printf("threads %d, prompt %d, %d timed decode steps (one untimed first), prompt processing %d tokens, %d round(s)%s\n",
           a->threads, a->prompt, a->steps, a->pp, a->rounds, a->rounds > 1 ? ": medians" : "");
    printf("memory read rate (sum of a %.0f GiB buffer, %d threads, best of %d): %.1f GB/s\n",
           (double)READ_BUFFER_BYTES / (1 << 30), a->threads, 5 + 3 * a->rounds, bw);
    printf("| run | tok/s | ms/step | MB read/step | bound tok/s | of bound | vs 1 stream | vs 1 stream + adapter |\n");
    printf("|---|---|---|---|---|---|---|---|\n");
    double of_bound[N_RUNS];
    for (int k = 0; k < N_RUNS; k++) {
        int S = run_streams_of[k];
        double t = median(tps[k], a->rounds), step_bytes = (double)wbytes + S * (kv_step + (run_lora[k] ? lbytes : 0));
        double bound = S * bw * 1e9 / step_bytes;
        of_bound[k] = t / bound;
        printf("| %s | %.1f | %.2f | %.1f | %.1f | %.1f%% | %.2fx | %.2fx |\n", run_names[k], t, 1e3 * S / t,
               step_bytes / 1e6, bound, 100 * of_bound[k], median(vs1[k], a->rounds), median(vs1a[k], a->rounds));
    }
    /* Prompt FLOPs: every linear but the head per token, causal attention (QK^T and PV over the
     * earlier positions: 2*qd*T per token and layer for a prompt of T), the head once (only the
     * last row's logits are computed). */
    double qd = (double)c->n_heads * c->head_dim, kvd = (double)c->n_kv_heads * c->head_dim, D = c->dim;
    double nlin = (double)c->n_layers * (2 * D * qd + 2 * D * kvd + 3 * D * c->hidden_dim);
    double pp_flops = a->pp * (2 * nlin + 2.0 * c->n_layers * qd * a->pp) + 2 * D * c->vocab_size;
    double ppt = median(pp_tps, a->rounds), ach = ppt * pp_flops / a->pp / 1e9;
    bool bf16 = compute == LORAD_COMPUTE_BFLOAT16;
    printf("prompt processing, %d tokens in one item: %.1f tok/s (%.2f s), %.1f GFLOP/s (2*N_lin + 2*L*qd*T per token, "
           "the head once: %.1f GFLOP) = %.1f%% of the %s kernel at 512x4096x4096 (%.1f GFLOP/s)",
           a->pp, ppt, a->pp / ppt, ach, pp_flops / 1e9, 100 * ach / kern, bf16 ? "bf16" : "fp32", kern);
    if (peak > 0) printf(", %.1f%% of the vdpbf16ps peak (%.1f GFLOP/s)", 100 * ach / peak, peak);
    printf("\nprefill of the decode runs: %d-token prompts at %.1f tok/s\n", a->prompt, median(prefill, a->rounds));
    printf("goals: 1 stream >= 70%% of bound %s (%.1f%%); 4 streams >= 2.5x %s (%.2fx); 8 streams >= 4x %s (%.2fx); "
           "adapter costs %.1f%% of single-stream tok/s\n",
           yes_no(of_bound[RUN_BASE] >= 0.70), 100 * of_bound[RUN_BASE], yes_no(median(vs1[RUN_4], a->rounds) >= 2.5),
           median(vs1[RUN_4], a->rounds), yes_no(median(vs1[RUN_8], a->rounds) >= 4.0), median(vs1[RUN_8], a->rounds),
           100 * (1 - median(vs1[RUN_LORA], a->rounds)));
    fflush(stdout);
    rc = 0;
    goto out;
fail:
    fprintf(stderr, "%s: %s\n", s->name, err.message);
out:
    for (int i = 0; i < MAX_STREAMS; i++) {
        lorad_lora_weights_free(loras[i]);
        lorad_kv_cache_free(caches[i]);
    }
    lorad_kv_cache_free(pc);
    lorad_decoder_free(d);
    free(logits);
    free(abuf);
    free_base(&b);
    return rc;
}

static int parse(struct args *a, int argc, char **argv) {
    *a = (struct args){3, 2, 128, 64, 512, 16, 1};
    for (int i = 1; i < argc; i++) {
        const char *k = argv[i];
        int *iv = NULL;
        if (!strcmp(k, "--threads")) iv = &a->threads;
        else if (!strcmp(k, "--prompt")) iv = &a->prompt;
        else if (!strcmp(k, "--steps")) iv = &a->steps;
        else if (!strcmp(k, "--pp")) iv = &a->pp;
        else if (!strcmp(k, "--r")) iv = &a->r;
        else if (!strcmp(k, "--rounds")) iv = &a->rounds;
        else if (!strcmp(k, "--shape") && i + 1 < argc) {
            const char *v = argv[++i];
            a->shapes = !strcmp(v, "110m") ? 1u : !strcmp(v, "1.1b") ? 2u : !strcmp(v, "both") ? 3u : 0u;
            if (!a->shapes) {
                fprintf(stderr, "--shape must be 110m, 1.1b or both\n");
                return -1;
            }
        }
        else { fprintf(stderr, "unknown option %s\n", k); return -1; }
        if (iv) {
            if (i + 1 >= argc) return -1;
            *iv = atoi(argv[++i]);
        }
    }
    if (a->threads < 1 || a->threads > LORAD_MAX_THREADS || a->prompt < 1 || a->steps < 1 || a->pp < 1 || a->r < 1 ||
        a->rounds < 1 || a->rounds > MAX_ROUNDS) {
        fprintf(stderr, "--threads, --prompt, --steps, --pp, --r must be positive, --rounds 1..%d\n", MAX_ROUNDS);
        return -1;
    }
    return 0;
}

int main(int argc, char **argv) {
    struct args a;
    if (parse(&a, argc, argv) < 0) return 2;
    struct lorad_pool *pool;
    if (lorad_pool_new(&pool, a.threads) < 0) {
        fprintf(stderr, "cannot start %d threads\n", a.threads);
        return 1;
    }
    /* Filled (not just allocated) so that every page is resident before the first timed pass. */
    struct sum_job rd = {.n = READ_BUFFER_BYTES / 8};
    uint64_t *buf = aligned_alloc(64, (size_t)READ_BUFFER_BYTES);
    if (!buf) {
        fprintf(stderr, "cannot allocate the %lld-byte read buffer\n", (long long)READ_BUFFER_BYTES);
        return 1;
    }
    for (int64_t i = 0; i < rd.n; i++) buf[i] = (uint64_t)i * 0x9e3779b97f4a7c15ULL;
    rd.buf = buf;
    printf("products: %s; bf16 compute %s\n", lorad_gemm_uses_own_kernel() ? "engine AVX-512 kernels" : "OpenBLAS",
           lorad_gemm_bf16_usable() ? "usable (AVX512_BF16)" : "not usable");
    int rc = 0;
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0] && rc == 0; i++)
        if (a.shapes & (1u << i)) rc = bench_shape(&shapes[i], &a, pool, &rd);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("peak RSS %.0f MB (incl. the %.0f MB read buffer)\n", (double)ru.ru_maxrss * 1024 / 1e6,
           (double)READ_BUFFER_BYTES / 1e6);
    free(buf);
    lorad_pool_free(pool);
    return rc < 0 ? 1 : 0;
}
