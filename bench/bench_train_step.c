/* One LoRA training step (forward, backward, AdamW) on random frozen weights; see bench/README.md.
 *
 *   bench_train_step [--dim 768 --layers 12 --heads 12 --kv-heads 12 --hidden 2048 --vocab 32000
 *                     --seq 512 --batch 1 --r 8 --targets qv|all --threads 2 --steps 3 --ckpt
 *                     --rounds 1 --bf16 --quant q4_0|q4_k_m --compute float32|bfloat16|both --concurrency
 *                     --torch --openblas]
 *
 * Prints tokens/s, achieved GFLOP/s (formula printed), the partitioned cblas_sgemm rate at
 * 512x4096x4096 with the same threads in the same run, MFU = achieved / cblas_sgemm, and peak
 * RSS; on AVX-512 hosts also the engine's own kernel at that shape. --openblas runs the step on
 * cblas_sgemm even where the engine's kernel is available.
 * --concurrency also times two 1-thread runs side by side against one 1-thread run. --rounds N
 * repeats everything N times, alternating lorad and PyTorch, and prints each round's ratios, their
 * median and the best of each side.
 * --quant makes the matrices random GGUF blocks in llama.cpp's Q4_0 or Q4_K_M mix (see
 * matrix_dtype), kept quantised as the engine keeps a downloaded GGUF; with --compute bfloat16
 * the products decode them into bf16 tiles.
 * --compute picks the frozen-weight products' dtype (default float32); "both" runs a bf16-compute
 * step beside each fp32 one and prints their ratio, and the bf16 kernel's rate against the peak of
 * its inner loop (vdpbf16ps on registers, measured here) on AVX512_BF16 hosts.
 * --torch runs bench/torch_train_step.py with the same shape (through /usr/bin/python3) and
 * prints the ratios. Not a test: timings on a shared machine are noisy. */
#include <assert.h>
#include <errno.h>
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "gemm.h"
#include "model.h"
#include "optim.h"
#include "quant_blocks.h"
#include "threadpool.h"

struct args {
    int dim, layers, heads, kv_heads, hidden, vocab, seq, batch, r, threads, steps, rounds;
    bool all, ckpt, bf16, concurrency, torch, openblas;
    int compute; /* enum lorad_compute_dtype, or COMPUTE_BOTH */
    int quant;   /* QUANT_* */
};
#define COMPUTE_BOTH 3
enum { QUANT_NONE, QUANT_Q4_0, QUANT_Q4_K_M };

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

struct base {
    struct lorad_base_weights w;
    void *mem;
};

static void put_f16(char *at, float v) {
    uint16_t h = lorad_f32_to_f16(v);
    memcpy(at, &h, 2);
}

/* Random quantised blocks: random payload bytes, with each block's f16 scales chosen so that
 * |value| stays within about `scale` (the f32/bf16 tensors' range), whatever the payload. */
static void fill_quant(char *p, int64_t n_blocks, enum lorad_dtype dt, float scale) {
    int64_t bb = lorad_dtype_block_bytes(dt);
    for (int64_t i = 0; i < n_blocks * bb; i += 8) {
        rs ^= rs << 13; rs ^= rs >> 7; rs ^= rs << 17;
        memcpy(p + i, &rs, (size_t)(n_blocks * bb - i < 8 ? n_blocks * bb - i : 8));
    }
    for (int64_t b = 0; b < n_blocks; b++) {
        char *blk = p + b * bb;
        if (dt == LORAD_DTYPE_Q4_0) put_f16(blk, scale / 8);               /* d*(q-8), |q-8| <= 8 */
        else if (dt == LORAD_DTYPE_Q4_K) {                                   /* d*sc*q - dmin*m, sc,m < 64, q < 16 */
            put_f16(blk, scale / (63 * 15));
            put_f16(blk + 2, 7.5f * scale / (63 * 15));                     /* centres the mean of sc*q */
        } else if (dt == LORAD_DTYPE_Q6_K) put_f16(blk + 208, scale / (128 * 32)); /* d*scale*(q-32) */
    }
}

static struct lorad_tensor make(char **p, int64_t rows, int64_t cols, enum lorad_dtype dt, float scale, float offset) {
    struct lorad_tensor t = {*p, dt, rows, cols};
    if (lorad_dtype_is_quantised(dt)) {
        fill_quant(*p, rows * cols / lorad_dtype_block_values(dt), dt, scale);
        *p += rows * (int64_t)lorad_dtype_row_bytes(dt, cols);
        return t;
    }
    bool bf16 = dt == LORAD_DTYPE_BF16;
    for (int64_t i = 0; i < rows * cols; i++) {
        float v = offset + scale * frand();
        if (bf16) ((uint16_t *)*p)[i] = lorad_f32_to_bf16(v);
        else ((float *)*p)[i] = v;
    }
    *p += rows * cols * (bf16 ? 2 : 4);
    return t;
}

/* The matrix dtype of a base: f32, bf16, or a llama.cpp mix. Q4_0 files keep output in Q6_K;
 * Q4_K_M also puts attn_v and ffn_down in Q6_K (llama.cpp does that for about half of the
 * layers; all of them here, which over- rather than under-states memory). */
static enum lorad_dtype matrix_dtype(const struct args *a, const char *which) {
    if (a->quant == QUANT_NONE) return a->bf16 ? LORAD_DTYPE_BF16 : LORAD_DTYPE_F32;
    if (!strcmp(which, "output")) return LORAD_DTYPE_Q6_K;
    if (a->quant == QUANT_Q4_0) return LORAD_DTYPE_Q4_0;
    return !strcmp(which, "attn_v") || !strcmp(which, "ffn_down") ? LORAD_DTYPE_Q6_K : LORAD_DTYPE_Q4_K;
}

static int make_base(struct base *b, const struct args *a) {
    struct lorad_llama_config *c = &b->w.cfg;
    lorad_llama_config_defaults(c);
    c->dim = a->dim; c->hidden_dim = a->hidden; c->n_layers = a->layers; c->n_heads = a->heads;
    c->n_kv_heads = a->kv_heads; c->head_dim = a->dim / a->heads; c->vocab_size = a->vocab;
    c->max_seq_len = a->seq > 4096 ? a->seq : 4096;
    /* the matrices at their dtype's size (a quantised value takes under a byte), the norms in f32 */
    int64_t elem = a->quant != QUANT_NONE ? 1 : a->bf16 ? 2 : 4;
    int64_t bytes = lorad_llama_config_n_params(c) * elem + (2 * (int64_t)a->layers + 1) * a->dim * 4 + 4096;
    b->mem = malloc((size_t)bytes);
    b->w.layers = calloc((size_t)a->layers, sizeof *b->w.layers);
    if (!b->mem || !b->w.layers) return -ENOMEM;
    char *p = b->mem;
    int64_t d = c->dim, q = (int64_t)c->n_heads * c->head_dim, kv = (int64_t)c->n_kv_heads * c->head_dim;
    float s = 0.04f;
    enum lorad_dtype f32 = LORAD_DTYPE_F32;
    b->w.embed = make(&p, c->vocab_size, d, matrix_dtype(a, "embed"), 1.0f, 0);
    for (int l = 0; l < c->n_layers; l++) {
        struct lorad_layer_weights *L = &b->w.layers[l];
        L->attn_norm = make(&p, 1, d, f32, 0.1f, 1);
        L->wq = make(&p, q, d, matrix_dtype(a, "attn_q"), s, 0);
        L->wk = make(&p, kv, d, matrix_dtype(a, "attn_k"), s, 0);
        L->wv = make(&p, kv, d, matrix_dtype(a, "attn_v"), s, 0);
        L->wo = make(&p, d, q, matrix_dtype(a, "attn_output"), s, 0);
        L->ffn_norm = make(&p, 1, d, f32, 0.1f, 1);
        L->w_gate = make(&p, c->hidden_dim, d, matrix_dtype(a, "ffn_gate"), s, 0);
        L->w_up = make(&p, c->hidden_dim, d, matrix_dtype(a, "ffn_up"), s, 0);
        L->w_down = make(&p, d, c->hidden_dim, matrix_dtype(a, "ffn_down"), s, 0);
    }
    b->w.final_norm = make(&p, 1, d, f32, 0.1f, 1);
    b->w.lm_head = make(&p, c->vocab_size, d, matrix_dtype(a, "output"), s, 0);
    assert(p <= (char *)b->mem + bytes);
    return 0;
}

static double flops_per_token(const struct args *a, const struct lorad_llama_config *c, double *ret_lora) {
    double d = c->dim, kv = (double)c->n_kv_heads * c->head_dim, ff = c->hidden_dim, L = c->n_layers;
    double nmm = L * (2 * d * d + 2 * d * kv + 3 * d * ff) + d * c->vocab_size;
    double lora_io = a->all ? L * ((d + d) + (d + kv) * 2 + (d + d) + 2 * (d + ff) + (ff + d)) : L * ((d + d) + (d + kv));
    double lora = 6.0 * a->r * lora_io;
    double attn = 6.0 * L * d * a->seq;
    *ret_lora = lora;
    return (a->ckpt ? 6 : 4) * nmm + lora + attn;
}

struct job {
    const struct args *a;
    const struct lorad_base_weights *w;
    int threads;
    int steps;
    enum lorad_compute_dtype compute;
    double seconds;
    double loss;
    int rc;
};

static void *run_job(void *arg) {
    struct job *j = arg;
    const struct args *a = j->a;
    struct lorad_lora_config lc = {.r = a->r, .alpha = 16, .dropout = 0.0f,
                                   .targets = a->all ? LORAD_LORA_ALL_LINEAR
                                                     : (1u << LORAD_Q_PROJ) | (1u << LORAD_V_PROJ)};
    struct lorad_run_options o = {.threads = j->threads, .max_batch = a->batch, .max_seq = a->seq,
                                  .activation_checkpointing = a->ckpt, .seed = 1, .compute_dtype = j->compute};
    struct lorad_model *m;
    struct lorad_error err = {0};
    if ((j->rc = lorad_model_new(&m, j->w, &lc, &o, &err)) < 0) {
        fprintf(stderr, "model: %s\n", err.message);
        return NULL;
    }
    int64_t n = (int64_t)a->batch * a->seq;
    int32_t *ids = malloc((size_t)n * 4), *labels = malloc((size_t)n * 4);
    for (int64_t i = 0; i < n; i++) {
        ids[i] = (int32_t)((uint64_t)(i * 7919 + 13) % (uint64_t)a->vocab);
        labels[i] = (int32_t)((uint64_t)(i * 104729 + 7) % (uint64_t)a->vocab);
    }
    struct lorad_optim_config oc;
    lorad_optim_config_defaults(&oc);
    oc.max_grad_norm = 1.0;
    size_t np;
    float *params = lorad_model_params(m, &np), *grads = lorad_model_grads(m, NULL);
    struct lorad_adamw opt;
    lorad_adamw_init(&opt, np);
    struct lorad_batch b = {.tokens = ids, .labels = labels, .B = a->batch, .T = a->seq};
    double t0 = 0;
    for (int s = 0; s <= j->steps; s++) {
        if (s == 1) t0 = now(); /* step 0 warms up */
        double ls, norm, lr;
        int64_t corr;
        lorad_model_forward_backward(m, &b, n, &ls, &corr, &err);
        lorad_adamw_step(&opt, &oc, params, grads, NULL, NULL, &norm, &lr);
        j->loss = ls / (double)n;
    }
    j->seconds = (now() - t0) / j->steps;
    lorad_adamw_destroy(&opt);
    free(ids);
    free(labels);
    lorad_model_free(m);
    return NULL;
}

/* GFLOP/s of the engine's partitioned product at 512x4096x4096: through cblas_sgemm (OpenBLAS)
 * with openblas, else through the kernel the engine picks on this CPU. */
static double gemm_rate(int threads, bool openblas, enum lorad_compute_dtype compute) {
    struct lorad_pool *pool;
    struct lorad_gemm g;
    if (lorad_pool_new(&pool, threads) < 0 || lorad_gemm_init(&g, pool, compute) < 0) return 0;
    lorad_gemm_prefer_openblas(openblas);
    int64_t M = 512, N = 4096, K = 4096;
    float *A = malloc(sizeof(float) * (size_t)(M * K)), *B = malloc(sizeof(float) * (size_t)(N * K)),
          *C = malloc(sizeof(float) * (size_t)(M * N));
    for (int64_t i = 0; i < M * K; i++) A[i] = frand();
    for (int64_t i = 0; i < N * K; i++) B[i] = frand();
    struct lorad_tensor W = {B, LORAD_DTYPE_F32, N, K};
    uint16_t *Bh = NULL;
    if (compute == LORAD_COMPUTE_BFLOAT16) { /* a bf16 base, as bf16 compute is used on */
        Bh = malloc(sizeof(uint16_t) * (size_t)(N * K));
        for (int64_t i = 0; i < N * K; i++) Bh[i] = lorad_f32_to_bf16(B[i]);
        W = (struct lorad_tensor){Bh, LORAD_DTYPE_BF16, N, K};
    }
    lorad_gemm_xwt(&g, C, A, &W, M, false);
    double t0 = now();
    int reps = 5;
    for (int i = 0; i < reps; i++) lorad_gemm_xwt(&g, C, A, &W, M, false);
    double rate = 2.0 * M * N * K * reps / (now() - t0) / 1e9;
    lorad_gemm_prefer_openblas(false);
    free(A); free(B); free(C); free(Bh);
    lorad_gemm_destroy(&g);
    lorad_pool_free(pool);
    return rate;
}

#define MAX_ROUNDS 16

/* The bf16 kernel's inner loop without memory: 24 independent vdpbf16ps accumulator chains, as
 * in its 12x32 tile, per thread of the pool. 64 FLOP per instruction (16 lanes x 2 products). */
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
static double bf16_peak_rate(int threads) {
    if (!lorad_gemm_bf16_usable()) return 0;
    struct lorad_pool *pool;
    if (lorad_pool_new(&pool, threads) < 0) return 0;
    struct peak_job j = {.iters = 2000000};
    lorad_pool_run(pool, peak_thread, &j);
    double t0 = now();
    lorad_pool_run(pool, peak_thread, &j);
    double rate = 64.0 * 24 * (double)j.iters * threads / (now() - t0) / 1e9;
    lorad_pool_free(pool);
    return rate;
}

static double median(double *v, int n) {
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

static int parse(struct args *a, int argc, char **argv) {
    *a = (struct args){768, 12, 12, 12, 2048, 32000, 512, 1, 8, 2, 3, 1, false, false, false, false, false, false, LORAD_COMPUTE_FLOAT32, QUANT_NONE};
    for (int i = 1; i < argc; i++) {
        const char *k = argv[i];
        int *iv = NULL;
        if (!strcmp(k, "--dim")) iv = &a->dim;
        else if (!strcmp(k, "--layers")) iv = &a->layers;
        else if (!strcmp(k, "--heads")) iv = &a->heads;
        else if (!strcmp(k, "--kv-heads")) iv = &a->kv_heads;
        else if (!strcmp(k, "--hidden")) iv = &a->hidden;
        else if (!strcmp(k, "--vocab")) iv = &a->vocab;
        else if (!strcmp(k, "--seq")) iv = &a->seq;
        else if (!strcmp(k, "--batch")) iv = &a->batch;
        else if (!strcmp(k, "--r")) iv = &a->r;
        else if (!strcmp(k, "--threads")) iv = &a->threads;
        else if (!strcmp(k, "--steps")) iv = &a->steps;
        else if (!strcmp(k, "--rounds")) iv = &a->rounds;
        else if (!strcmp(k, "--ckpt")) a->ckpt = true;
        else if (!strcmp(k, "--bf16")) a->bf16 = true;
        else if (!strcmp(k, "--concurrency")) a->concurrency = true;
        else if (!strcmp(k, "--torch")) a->torch = true;
        else if (!strcmp(k, "--openblas")) a->openblas = true;
        else if (!strcmp(k, "--targets") && i + 1 < argc) a->all = !strcmp(argv[++i], "all");
        else if (!strcmp(k, "--quant") && i + 1 < argc) {
            const char *v = argv[++i];
            a->quant = !strcmp(v, "q4_0") ? QUANT_Q4_0 : !strcmp(v, "q4_k_m") ? QUANT_Q4_K_M : -1;
            if (a->quant < 0) {
                fprintf(stderr, "--quant must be q4_0 or q4_k_m\n");
                return -1;
            }
        }
        else if (!strcmp(k, "--compute") && i + 1 < argc) {
            const char *v = argv[++i];
            a->compute = !strcmp(v, "both") ? COMPUTE_BOTH : !strcmp(v, "bfloat16") ? LORAD_COMPUTE_BFLOAT16
                         : !strcmp(v, "float32") ? LORAD_COMPUTE_FLOAT32 : -1;
            if (a->compute < 0) {
                fprintf(stderr, "--compute must be float32, bfloat16 or both\n");
                return -1;
            }
        }
        else { fprintf(stderr, "unknown option %s\n", k); return -1; }
        if (iv) {
            if (i + 1 >= argc) return -1;
            *iv = atoi(argv[++i]);
        }
    }
    return 0;
}

/* One PyTorch peer run at the same shape: eager fp32, or under CPU bf16 autocast (the second
 * peer for bf16 compute). Activation checkpointing follows --ckpt so both sides recompute. */
static bool torch_run(const struct args *a, bool show_command, bool autocast, double *ret_tps, double *ret_rss) {
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "/usr/bin/python3 %s/torch_train_step.py --dim %d --layers %d --heads %d --kv-heads %d --hidden %d "
             "--vocab %d --seq %d --batch %d --r %d --targets %s --threads %d --steps %d%s%s",
             LORAD_BENCH_DIR, a->dim, a->layers, a->heads, a->kv_heads, a->hidden, a->vocab, a->seq, a->batch, a->r,
             a->all ? "all" : "qv", a->threads, a->steps, a->ckpt ? " --ckpt" : "", autocast ? " --autocast" : "");
    if (show_command) {
        printf("torch: %s\n", cmd);
        fflush(stdout);
    }
    FILE *f = popen(cmd, "r");
    if (!f) return false;
    char line[4096] = "";
    bool ok = false;
    while (fgets(line, sizeof line, f)) {
        char *t = strstr(line, "\"tokens_per_s\":"), *r = strstr(line, "\"peak_rss_bytes\":");
        if (t && r) {
            *ret_tps = strtod(t + 15, NULL);
            *ret_rss = strtod(r + 17, NULL);
            ok = true;
        }
    }
    return pclose(f) == 0 && ok;
}

int main(int argc, char **argv) {
    struct args a;
    if (parse(&a, argc, argv) < 0) return 2;
    if (a.kv_heads <= 0) a.kv_heads = a.heads;
    if (a.rounds < 1 || a.rounds > MAX_ROUNDS) {
        fprintf(stderr, "--rounds must be 1..%d\n", MAX_ROUNDS);
        return 2;
    }
    struct base b = {0};
    if (make_base(&b, &a) < 0) {
        fprintf(stderr, "cannot allocate the random base\n");
        return 1;
    }
    double lora_flops, fpt = flops_per_token(&a, &b.w.cfg, &lora_flops);
    /* the best of several sgemm samples around the run: on a shared machine a single sample can
     * be slowed by other processes and would inflate MFU */
    double sg = gemm_rate(a.threads, true, LORAD_COMPUTE_FLOAT32), own = gemm_rate(a.threads, false, LORAD_COMPUTE_FLOAT32);
    double tokens = (double)a.batch * a.seq;
    double best_tps = 0, best_ttps = 0, best_conc = 0, trss = 0, loss = 0;
    double ratio[MAX_ROUNDS], conc[MAX_ROUNDS], bf16_ratio[MAX_ROUNDS], best_bf16_tps = 0;
    /* bf16 compute against PyTorch eager fp32 and against PyTorch under bf16 autocast */
    double bf16_torch[MAX_ROUNDS], bf16_autocast[MAX_ROUNDS], best_atps = 0, arss = 0;
    bool torch_ok = a.torch, both = a.compute == COMPUTE_BOTH;
    bool bf16_run = both || a.compute == LORAD_COMPUTE_BFLOAT16, autocast_ok = a.torch && bf16_run;
    if ((both || a.compute == LORAD_COMPUTE_BFLOAT16) && !lorad_gemm_bf16_usable()) {
        fprintf(stderr, "bf16 compute is not available on this host (no AVX512_BF16, or LORAD_ISA/--openblas)\n");
        return 1;
    }
    /* Rounds alternate lorad and PyTorch (and the concurrency pair) so that a slow spell of the
     * shared host hits both sides rather than one. */
    for (int r = 0; r < a.rounds; r++) {
        lorad_gemm_prefer_openblas(a.openblas);
        struct job j = {&a, &b.w, a.threads, a.steps, both ? LORAD_COMPUTE_FLOAT32 : (enum lorad_compute_dtype)a.compute,
                        0, 0, 0};
        run_job(&j);
        if (j.rc < 0) return 1;
        double tps = tokens / j.seconds, btps = tps;
        loss = j.loss;
        if (tps > best_tps) best_tps = tps;
        char line[512];
        int len = snprintf(line, sizeof line, "round %d: lorad %.1f tokens/s", r + 1, tps);
        if (both) {
            struct job jb = {&a, &b.w, a.threads, a.steps, LORAD_COMPUTE_BFLOAT16, 0, 0, 0};
            run_job(&jb);
            if (jb.rc < 0) return 1;
            btps = tokens / jb.seconds;
            if (btps > best_bf16_tps) best_bf16_tps = btps;
            bf16_ratio[r] = btps / tps;
            len += snprintf(line + len, sizeof line - (size_t)len, "; bf16 compute %.1f tokens/s = %.2fx (loss %.4f vs %.4f)",
                            btps, bf16_ratio[r], jb.loss, j.loss);
        }
        if (a.concurrency) {
            struct job one = {&a, &b.w, 1, a.steps, j.compute, 0, 0, 0}, two[2] = {one, one};
            run_job(&one);
            pthread_t th[2];
            for (int i = 0; i < 2; i++) pthread_create(&th[i], NULL, run_job, &two[i]);
            for (int i = 0; i < 2; i++) pthread_join(th[i], NULL);
            double t1 = tokens / one.seconds, t2 = tokens / two[0].seconds + tokens / two[1].seconds;
            conc[r] = t2 / t1;
            if (conc[r] > best_conc) best_conc = conc[r];
            len += snprintf(line + len, sizeof line - (size_t)len,
                            "; one 1-thread run %.1f, two 1-thread runs together %.1f tokens/s = %.2fx", t1, t2, conc[r]);
        }
        lorad_gemm_prefer_openblas(false);
        if (torch_ok) {
            double ttps = 0;
            torch_ok = torch_run(&a, r == 0, false, &ttps, &trss);
            if (torch_ok) {
                ratio[r] = tps / ttps;
                bf16_torch[r] = btps / ttps;
                if (ttps > best_ttps) best_ttps = ttps;
                len += snprintf(line + len, sizeof line - (size_t)len, "; torch %.1f tokens/s; lorad/torch %.2fx", ttps,
                                ratio[r]);
                if (both)
                    len += snprintf(line + len, sizeof line - (size_t)len, "; lorad bf16/torch %.2fx", bf16_torch[r]);
            }
        }
        if (autocast_ok && torch_ok) {
            double atps = 0, rss_a = 0;
            autocast_ok = torch_run(&a, r == 0, true, &atps, &rss_a);
            if (autocast_ok) {
                bf16_autocast[r] = btps / atps;
                if (atps > best_atps) best_atps = atps, arss = rss_a;
                snprintf(line + len, sizeof line - (size_t)len, "; torch bf16 autocast %.1f tokens/s; lorad bf16/autocast %.2fx",
                         atps, bf16_autocast[r]);
            }
        }
        printf("%s\n", line);
        fflush(stdout);
    }
    for (int i = 0; i < 2; i++) {
        double s2 = gemm_rate(a.threads, true, LORAD_COMPUTE_FLOAT32), o2 = gemm_rate(a.threads, false, LORAD_COMPUTE_FLOAT32);
        if (s2 > sg) sg = s2;
        if (o2 > own) own = o2;
    }
    bool own_kernel = lorad_gemm_uses_own_kernel() && !a.openblas;
    double achieved = best_tps * fpt / 1e9;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double rss = (double)ru.ru_maxrss * 1024.0;
    printf("shape: dim %d layers %d heads %d kv %d hidden %d vocab %d seq %d batch %d r %d targets %s threads %d%s%s\n",
           a.dim, a.layers, a.heads, a.kv_heads, a.hidden, a.vocab, a.seq, a.batch, a.r, a.all ? "all-linear" : "q,v",
           a.threads, a.ckpt ? " ckpt" : "",
           a.quant == QUANT_Q4_0 ? " Q4_0" : a.quant == QUANT_Q4_K_M ? " Q4_K_M" : a.bf16 ? " bf16" : "");
    printf("flops/token = %d*N_mm + LoRA 6*r*sum(d_in+d_out) + attention 6*L*d*T = %.4f GFLOP (LoRA %.5f)\n",
           a.ckpt ? 6 : 4, fpt / 1e9, lora_flops / 1e9);
    printf("products: %s\n", own_kernel ? "engine AVX-512 kernel (sgemm_avx512.c)" : "OpenBLAS cblas_sgemm");
    printf("best of %d round(s): step %.3f s  tokens/s %.1f  achieved %.1f GFLOP/s  cblas_sgemm(512x4096x4096, %d threads, "
           "best of 3) %.1f GFLOP/s  MFU %.1f%%  peak RSS %.0f MB  loss %.4f\n",
           a.rounds, tokens / best_tps, best_tps, achieved, a.threads, sg, 100 * achieved / sg, rss / 1e6, loss);
    if (own_kernel)
        printf("engine kernel at 512x4096x4096: %.1f GFLOP/s (%.2fx cblas_sgemm); achieved / engine kernel %.1f%%\n", own,
               own / sg, 100 * achieved / own);
    if (both) {
        double bg = gemm_rate(a.threads, false, LORAD_COMPUTE_BFLOAT16), peak = bf16_peak_rate(a.threads);
        double bach = best_bf16_tps * fpt / 1e9;
        printf("bf16 compute: best %.1f tokens/s, achieved %.1f GFLOP/s; bf16/fp32 tokens/s median of rounds %.2fx, "
               "best/best %.2fx\n", best_bf16_tps, bach, median(bf16_ratio, a.rounds), best_bf16_tps / best_tps);
        printf("bf16 kernel at 512x4096x4096 (bf16 weights): %.1f GFLOP/s (%.2fx the fp32 one); vdpbf16ps inner-loop peak "
               "%.1f GFLOP/s; kernel / peak %.1f%%; bf16 step MFU (achieved / peak) %.1f%%\n",
               bg, bg / own, peak, 100 * bg / peak, 100 * bach / peak);
    }
    if (a.concurrency)
        printf("concurrency: two 1-thread runs / one 1-thread run: median %.2fx, best %.2fx over %d round(s)\n",
               median(conc, a.rounds), best_conc, a.rounds);
    if (a.torch) {
        if (torch_ok)
            printf("torch: best %.1f tokens/s  peak RSS %.0f MB  ->  lorad/torch tokens/s: median of rounds %.2fx, best/best "
                   "%.2fx  RSS ratio %.2f\n",
                   best_ttps, trss / 1e6, median(ratio, a.rounds), best_tps / best_ttps, rss / trss);
        else
            printf("torch: not available (no torch in /usr/bin/python3?)\n");
        if (torch_ok && bf16_run)
            printf("lorad bf16 compute / torch eager fp32 tokens/s: median of rounds %.2fx, best/best %.2fx\n",
                   median(bf16_torch, a.rounds), (both ? best_bf16_tps : best_tps) / best_ttps);
        if (autocast_ok && torch_ok)
            printf("torch bf16 autocast: best %.1f tokens/s  peak RSS %.0f MB  ->  lorad bf16 / autocast: median of rounds "
                   "%.2fx, best/best %.2fx\n",
                   best_atps, arss / 1e6, median(bf16_autocast, a.rounds), (both ? best_bf16_tps : best_tps) / best_atps);
        else if (bf16_run && torch_ok)
            printf("torch bf16 autocast: did not run\n");
    }
    free(b.mem);
    free(b.w.layers);
    return 0;
}
