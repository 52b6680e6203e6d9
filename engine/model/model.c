#include "model.h"

#include <assert.h>
#include <cblas.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "dora.h"
#include "lora_init_decomp.h"
#include "gemm.h"
#include "kernels.h"
#include "rng.h"
#include "threadpool.h"

/* Tokens per LM-head chunk: logits never exist for more than this many tokens at once. */
#define HEAD_CHUNK 128
#define N_BLOCK_MODULES 7

struct block_acts {
    float *inv1;            /* (N) */
    float *h1;              /* (N, d)   input_layernorm output */
    float *q;               /* (N, qd)  after RoPE */
    float *k, *v;           /* (N, kvd) k after RoPE */
    float *att;             /* (N, qd)  attention output (o_proj input) */
    float *lse;             /* (B, H, T) */
    float *x_mid;           /* (N, d)   residual after attention */
    float *inv2;            /* (N) */
    float *h2;              /* (N, d)   post_attention_layernorm output */
    float *gate, *up;       /* (N, hid) */
    float *u[N_BLOCK_MODULES]; /* (N, r) LoRA A outputs of adapted modules */
};

struct lorad_model {
    const struct lorad_base_weights *w;
    struct lorad_llama_config cfg;
    struct lorad_lora_config lc;
    struct lorad_run_options opts;
    struct lorad_pool *pool;
    struct lorad_gemm gemm;
    float scale;
    int64_t N, d, qd, kvd, hid, V, r, max_in, P;
    /* f32 copies of the small frozen vectors */
    float *attn_norm, *ffn_norm, *final_norm; /* (L, d), (L, d), (d) */
    float *bq, *bk, *bv;                      /* (L, qd), (L, kvd), (L, kvd) when attention_bias */
    float *rope_cos, *rope_sin;               /* (P, hd/2) */
    /* LoRA */
    int n_lora;
    struct lorad_lora_tensor *table;
    int lora_a[LORAD_MAX_LAYERS + 1][LORAD_N_LORA_MODULES]; /* table index of A (B follows), or -1 */
    size_t n_params;
    float *params, *grads;
    /* PiSSA / OLoRA (lorad_lora_init_from_base): the initial A0, B0 in the params layout, frozen;
     * every adapted linear subtracts scale B0 A0 x, so the base it trains on is the residual
     * W - scale B0 A0 without a copy of W. NULL for the other inits. */
    float *init_params;
    float *init_u; /* (N, r) x A0^T, or dy B0 in backward */
    /* DoRA (lc.use_dora): per adapted module, at dora_off into the two vectors below, the scale
     * m/n its forward applies and 1/n (n the row norms of W + scale B A), both refreshed from the
     * parameters at the start of every pass (dora_refresh) and constant through its backward */
    int64_t dora_off[LORAD_MAX_LAYERS + 1][LORAD_N_LORA_MODULES];
    float *dora_ms, *dora_inv_n; /* (sum of adapted modules' out) */
    float *dora_tmp;             /* (N, max out) or (HEAD_CHUNK, V) with lm_head: W d + scale u B^T */
    double *dora_colsum;         /* (max out) the magnitude gradient's column sums */
    float *dora_rows[LORAD_MAX_THREADS]; /* lorad_dora_scratch_floats(max_in) each */
    bool lora_enabled;
    bool dropout_active;
    uint64_t dropout_counter;
    int64_t drop_batch_row0, drop_T; /* the batch being trained: its row0 and T key the masks */
    /* activations */
    struct block_acts *acts; /* n_layers entries, or 1 with activation checkpointing */
    float *xs;               /* (L+1, N, d) residual stream at each layer input, and the final one */
    float *inv_f, *hf;       /* (N), (N, d) final norm */
    float *head_u;           /* (N, r) when lm_head is adapted */
    float *hb1, *hb2;        /* (N, hid) scratch */
    float *dres, *dh;        /* (N, d) */
    float *dq, *datt;        /* (N, qd) */
    float *dk, *dv;          /* (N, kvd) */
    float *du;               /* (N, r) */
    float *xd, *dtmp;        /* (N, max_in) dropout scratch, when dropout > 0 */
    float *logits;           /* (HEAD_CHUNK, V) */
    double *row_loss;        /* (HEAD_CHUNK) */
    uint8_t *row_correct;    /* (HEAD_CHUNK) */
    float *row_weight;       /* (max_batch) per-row gradient weights of forward_backward_rows */
    int32_t *pos_default;    /* (N) */
    int32_t *seg_default;    /* (N) */
    float *attn_scratch[LORAD_MAX_THREADS];
    /* KV cache for inference (batch 1) */
    int cache_cap, cache_len;
    float *kcache, *vcache;  /* (L, cache_cap, kvd) */
    void *arena;
};

/* ---------------------------------------------------------------- sizes and the arena */

struct carver {
    char *base; /* NULL while only counting */
    size_t used;
};
static void *carve(struct carver *c, size_t bytes) {
    size_t off = (c->used + 63) & ~(size_t)63;
    c->used = off + bytes;
    return c->base ? c->base + off : NULL;
}
#define CARVE_F(c, n) ((float *)carve((c), (size_t)(n) * sizeof(float)))

static void carve_all(struct lorad_model *m, struct carver *c, const struct lorad_llama_config *cfg,
                      const struct lorad_lora_config *lc, const struct lorad_run_options *o) {
    int64_t N = (int64_t)o->max_batch * o->max_seq, d = cfg->dim, qd = (int64_t)cfg->n_heads * cfg->head_dim;
    int64_t kvd = (int64_t)cfg->n_kv_heads * cfg->head_dim, hid = cfg->hidden_dim, r = lc->r, L = cfg->n_layers;
    int64_t max_in = d > qd ? d : qd;
    if (hid > max_in) max_in = hid;
    int64_t P = o->max_seq > o->kv_cache_len ? o->max_seq : o->kv_cache_len;
    int n_lora;
    size_t n_params;
    lorad_lora_layout_size(cfg, lc, &n_lora, &n_params);
    int n_acts = o->activation_checkpointing ? 1 : (int)L;
    int64_t chunk = N < HEAD_CHUNK ? N : HEAD_CHUNK;
    struct lorad_model dummy;
    if (!m) m = &dummy;
    m->attn_norm = CARVE_F(c, L * d);
    m->ffn_norm = CARVE_F(c, L * d);
    m->final_norm = CARVE_F(c, d);
    if (cfg->attention_bias) {
        m->bq = CARVE_F(c, L * qd);
        m->bk = CARVE_F(c, L * kvd);
        m->bv = CARVE_F(c, L * kvd);
    }
    m->rope_cos = CARVE_F(c, P * cfg->head_dim / 2);
    m->rope_sin = CARVE_F(c, P * cfg->head_dim / 2);
    m->table = carve(c, sizeof(struct lorad_lora_tensor) * (size_t)n_lora);
    m->params = CARVE_F(c, n_params);
    m->grads = CARVE_F(c, n_params);
    if (lorad_lora_init_from_base(lc->init)) {
        m->init_params = CARVE_F(c, n_params);
        m->init_u = CARVE_F(c, N * r); /* the head's chunks have at most N rows too */
    }
    m->acts = carve(c, sizeof(struct block_acts) * (size_t)n_acts);
    for (int l = 0; l < n_acts; l++) {
        struct block_acts a = {0};
        a.inv1 = CARVE_F(c, N);
        a.h1 = CARVE_F(c, N * d);
        a.q = CARVE_F(c, N * qd);
        a.k = CARVE_F(c, N * kvd);
        a.v = CARVE_F(c, N * kvd);
        a.att = CARVE_F(c, N * qd);
        a.lse = CARVE_F(c, N * cfg->n_heads);
        a.x_mid = CARVE_F(c, N * d);
        a.inv2 = CARVE_F(c, N);
        a.h2 = CARVE_F(c, N * d);
        a.gate = CARVE_F(c, N * hid);
        a.up = CARVE_F(c, N * hid);
        for (int k = 0; k < N_BLOCK_MODULES; k++)
            if (lc->targets & (1u << k)) a.u[k] = CARVE_F(c, N * r);
        if (c->base) m->acts[l] = a;
    }
    m->xs = CARVE_F(c, (L + 1) * N * d);
    m->inv_f = CARVE_F(c, N);
    m->hf = CARVE_F(c, N * d);
    if (lc->targets & (1u << LORAD_LM_HEAD)) m->head_u = CARVE_F(c, N * r);
    m->hb1 = CARVE_F(c, N * hid);
    m->hb2 = CARVE_F(c, N * hid);
    m->dres = CARVE_F(c, N * d);
    m->dh = CARVE_F(c, N * d);
    m->dq = CARVE_F(c, N * qd);
    m->datt = CARVE_F(c, N * qd);
    m->dk = CARVE_F(c, N * kvd);
    m->dv = CARVE_F(c, N * kvd);
    m->du = CARVE_F(c, N * r);
    if (lc->dropout > 0) {
        m->xd = CARVE_F(c, N * max_in);
        m->dtmp = CARVE_F(c, N * max_in);
    }
    if (lc->use_dora) {
        int64_t n_mag = 0, max_out = 0, tmp = 0;
        for (int k = 0; k < LORAD_N_LORA_MODULES; k++) {
            if (!(lc->targets & (1u << k))) continue;
            int64_t out, in;
            lorad_lora_module_shape(cfg, (enum lorad_lora_module)k, &out, &in);
            n_mag += k == LORAD_LM_HEAD ? out : L * out;
            if (out > max_out) max_out = out;
            int64_t rows_out = (k == LORAD_LM_HEAD ? chunk : N) * out;
            if (rows_out > tmp) tmp = rows_out;
        }
        m->dora_ms = CARVE_F(c, n_mag);
        m->dora_inv_n = CARVE_F(c, n_mag);
        m->dora_tmp = CARVE_F(c, tmp);
        m->dora_colsum = carve(c, sizeof(double) * (size_t)max_out);
        for (int t = 0; t < o->threads; t++) m->dora_rows[t] = CARVE_F(c, lorad_dora_scratch_floats(max_in));
    }
    m->logits = CARVE_F(c, chunk * cfg->vocab_size);
    m->row_loss = carve(c, sizeof(double) * (size_t)chunk);
    m->row_correct = carve(c, (size_t)chunk);
    m->row_weight = CARVE_F(c, o->max_batch);
    m->pos_default = carve(c, sizeof(int32_t) * (size_t)N);
    m->seg_default = carve(c, sizeof(int32_t) * (size_t)N);
    int64_t attn_floats = lorad_attention_scratch_floats(o->max_seq);
    if (o->kv_cache_len > attn_floats) attn_floats = o->kv_cache_len;
    for (int t = 0; t < o->threads; t++) m->attn_scratch[t] = CARVE_F(c, attn_floats);
    if (o->kv_cache_len > 0) {
        m->kcache = CARVE_F(c, L * o->kv_cache_len * kvd);
        m->vcache = CARVE_F(c, L * o->kv_cache_len * kvd);
    }
}

void lorad_model_memory_of(struct lorad_model_memory *ret, const struct lorad_llama_config *cfg,
                           const struct lorad_lora_config *lc, const struct lorad_run_options *opts) {
    struct carver c = {0};
    carve_all(NULL, &c, cfg, lc, opts);
    int n_lora;
    size_t n_params;
    lorad_lora_layout_size(cfg, lc, &n_lora, &n_params);
    int64_t attn_floats = lorad_attention_scratch_floats(opts->max_seq);
    if (opts->kv_cache_len > attn_floats) attn_floats = opts->kv_cache_len;
    /* the carver rounds every piece up to 64 bytes */
    int64_t copies = lorad_lora_init_from_base(lc->init) ? 3 : 2; /* params, grads, init factors */
    int64_t lora = copies * (((int64_t)n_params * 4 + 63) & ~(int64_t)63);
    int64_t attn = (int64_t)opts->threads * ((attn_floats * 4 + 63) & ~(int64_t)63);
    int64_t gemm = (int64_t)opts->threads * (int64_t)(lorad_gemm_scratch_floats(opts->compute_dtype) * sizeof(float));
    assert((int64_t)c.used >= lora + attn);
    *ret = (struct lorad_model_memory){.activations = (int64_t)c.used - lora - attn,
                                       .lora = lora,
                                       .scratch = attn + gemm,
                                       .total = (int64_t)c.used + gemm};
}

static int64_t base_bytes(const struct lorad_base_weights *w) {
    const struct lorad_llama_config *c = &w->cfg;
    int64_t total = 0;
#define ADD(t) total += (t).rows * (int64_t)lorad_dtype_row_bytes((t).dtype, (t).cols)
    ADD(w->embed);
    ADD(w->final_norm);
    if (!c->tie_embeddings) ADD(w->lm_head);
    for (int l = 0; l < c->n_layers; l++) {
        const struct lorad_layer_weights *L = &w->layers[l];
        ADD(L->attn_norm); ADD(L->wq); ADD(L->wk); ADD(L->wv); ADD(L->wo);
        ADD(L->ffn_norm); ADD(L->w_gate); ADD(L->w_up); ADD(L->w_down);
        if (c->attention_bias) { ADD(L->bq); ADD(L->bk); ADD(L->bv); }
    }
#undef ADD
    return total;
}

/* ---------------------------------------------------------------- creation */

static int validate_options(const struct lorad_run_options *o, const struct lorad_llama_config *cfg,
                            struct lorad_error *err) {
    if (o->threads < 1 || o->threads > LORAD_MAX_THREADS)
        return lorad_error_set(err, -EINVAL, "threads", "threads must be in [1, %d], got %d", LORAD_MAX_THREADS,
                               o->threads);
    if (o->max_batch < 1)
        return lorad_error_set(err, -EINVAL, "max_batch", "max_batch must be >= 1, got %d", o->max_batch);
    if (o->max_seq < 1 || o->max_seq > LORAD_MAX_SEQ_LEN)
        return lorad_error_set(err, -EINVAL, "max_seq", "max_seq must be in [1, %d], got %d", LORAD_MAX_SEQ_LEN,
                               o->max_seq);
    if ((int64_t)o->max_batch * o->max_seq > LORAD_MAX_BATCH_TOKENS)
        return lorad_error_set(err, -EINVAL, "max_batch", "max_batch * max_seq must be <= %lld",
                               (long long)LORAD_MAX_BATCH_TOKENS);
    if (o->kv_cache_len < 0 || o->kv_cache_len > LORAD_MAX_SEQ_LEN)
        return lorad_error_set(err, -EINVAL, "kv_cache_len", "kv_cache_len must be in [0, %d], got %d",
                               LORAD_MAX_SEQ_LEN, o->kv_cache_len);
    if (o->memory_limit_bytes < 0)
        return lorad_error_set(err, -EINVAL, "memory_limit_bytes", "memory_limit_bytes must be >= 0");
    if ((unsigned)o->compute_dtype > LORAD_COMPUTE_AUTO)
        return lorad_error_set(err, -EINVAL, "compute_dtype", "compute_dtype %d is not float32, bfloat16 or auto",
                               (int)o->compute_dtype);
    (void)cfg;
    return 0;
}

/* Whether every matrix a frozen-weight product reads is stored in bf16. */
bool lorad_base_linears_bf16(const struct lorad_base_weights *w) {
    if (w->lm_head.dtype != LORAD_DTYPE_BF16) return false;
    for (int l = 0; l < w->cfg.n_layers; l++) {
        const struct lorad_layer_weights *L = &w->layers[l];
        const struct lorad_tensor *t[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down};
        for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
            if (t[i]->dtype != LORAD_DTYPE_BF16) return false;
    }
    return true;
}

static void copy_vec(float *out, const struct lorad_tensor *t) { lorad_tensor_rows_f32(out, t, 0, 1, 0, t->cols); }

int lorad_model_new(struct lorad_model **ret_model, const struct lorad_base_weights *w,
                    const struct lorad_lora_config *lc, const struct lorad_run_options *opts,
                    struct lorad_error *err) {
    int r = lorad_base_weights_validate(w, err);
    if (r < 0) return r;
    if ((r = lorad_lora_config_validate(lc, err)) < 0) return r;
    if ((r = validate_options(opts, &w->cfg, err)) < 0) return r;
    if (w->cfg.head_dim % 2 != 0)
        return lorad_error_set(err, -EINVAL, "head_dim", "head_dim must be even for RoPE, got %d", w->cfg.head_dim);
    enum lorad_compute_dtype compute;
    if ((r = lorad_compute_dtype_resolve(opts->compute_dtype, lorad_base_linears_bf16(w), "compute_dtype", &compute, err)) < 0)
        return r;
    struct lorad_model_memory mem;
    struct lorad_run_options resolved = *opts;
    resolved.compute_dtype = compute;
    lorad_model_memory_of(&mem, &w->cfg, lc, &resolved);
    int64_t need = mem.total;
    if (opts->memory_limit_bytes > 0 && need + base_bytes(w) > opts->memory_limit_bytes)
        return lorad_error_set(err, -E2BIG, "memory_limit_bytes",
                               "memory_limit_bytes %lld is too small: base weights %lld + engine buffers %lld bytes",
                               (long long)opts->memory_limit_bytes, (long long)base_bytes(w), (long long)need);

    struct lorad_model *m = calloc(1, sizeof *m);
    if (!m) return lorad_error_set(err, -ENOMEM, "", "out of memory");
    m->w = w;
    m->cfg = w->cfg;
    m->lc = *lc;
    m->opts = *opts;
    struct carver c = {0};
    carve_all(NULL, &c, &w->cfg, lc, opts);
    m->arena = calloc(1, c.used + 64);
    if (!m->arena) {
        free(m);
        return lorad_error_set(err, -ENOMEM, "", "out of memory allocating %zu bytes of activations", c.used);
    }
    c.base = (char *)(((uintptr_t)m->arena + 63) & ~(uintptr_t)63);
    c.used = 0;
    carve_all(m, &c, &w->cfg, lc, opts);
    if ((r = lorad_pool_new(&m->pool, opts->threads)) < 0) {
        free(m->arena);
        free(m);
        return lorad_error_set(err, r, "threads", "cannot start %d threads", opts->threads);
    }
    if ((r = lorad_gemm_init(&m->gemm, m->pool, compute)) < 0) {
        lorad_pool_free(m->pool);
        free(m->arena);
        free(m);
        return lorad_error_set(err, r, "", "out of memory");
    }
    m->opts.compute_dtype = compute;

    const struct lorad_llama_config *cfg = &m->cfg;
    m->d = cfg->dim;
    m->qd = (int64_t)cfg->n_heads * cfg->head_dim;
    m->kvd = (int64_t)cfg->n_kv_heads * cfg->head_dim;
    m->hid = cfg->hidden_dim;
    m->V = cfg->vocab_size;
    m->r = lc->r;
    m->N = (int64_t)opts->max_batch * opts->max_seq;
    m->max_in = m->d > m->qd ? m->d : m->qd;
    if (m->hid > m->max_in) m->max_in = m->hid;
    m->P = opts->max_seq > opts->kv_cache_len ? opts->max_seq : opts->kv_cache_len;
    m->scale = lorad_lora_scale(lc);
    m->cache_cap = opts->kv_cache_len;
    m->lora_enabled = true;
    for (int l = 0; l < cfg->n_layers; l++) {
        copy_vec(m->attn_norm + l * m->d, &w->layers[l].attn_norm);
        copy_vec(m->ffn_norm + l * m->d, &w->layers[l].ffn_norm);
        if (cfg->attention_bias) {
            copy_vec(m->bq + l * m->qd, &w->layers[l].bq);
            copy_vec(m->bk + l * m->kvd, &w->layers[l].bk);
            copy_vec(m->bv + l * m->kvd, &w->layers[l].bv);
        }
    }
    copy_vec(m->final_norm, &w->final_norm);
    lorad_rope_tables(m->rope_cos, m->rope_sin, cfg, m->P);
    lorad_lora_layout_size(cfg, lc, &m->n_lora, &m->n_params);
    lorad_lora_layout(m->table, cfg, lc);
    for (int l = 0; l <= cfg->n_layers; l++)
        for (int k = 0; k < LORAD_N_LORA_MODULES; k++) m->lora_a[l][k] = -1;
    int64_t mag_off = 0;
    for (int i = 0; i < m->n_lora; i++) {
        int l = m->table[i].layer < 0 ? cfg->n_layers : m->table[i].layer;
        if (!m->table[i].is_b && !m->table[i].is_magnitude) m->lora_a[l][m->table[i].module] = i;
        if (m->table[i].is_magnitude) {
            m->dora_off[l][m->table[i].module] = mag_off;
            mag_off += m->table[i].rows;
        }
    }
    lorad_lora_init_params(m->params, m->table, m->n_lora, lc, opts->seed);
    lorad_model_dora_reset_magnitudes(m);
    *ret_model = m;
    return 0;
}

void lorad_model_free(struct lorad_model *m) {
    if (!m) return;
    lorad_gemm_destroy(&m->gemm);
    lorad_pool_free(m->pool);
    free(m->arena);
    free(m);
}

/* ---------------------------------------------------------------- LoRA linear */

struct dropout_ctx {
    float *out;
    const float *in;
    int64_t cols, row0;
    int64_t batch_row0, T; /* the batch's global first row and padded length */
    uint64_t seed, counter, layer, module;
    float p;
    bool accumulate;
};
/* out (M, cols) = in * mask / (1-p), or out += that with accumulate; the mask bit of element
 * (row0+i, k) comes from the counters (seed, counter, layer, module, element), where element
 * names (global batch row, position, k) and not the flat index, whose stride is the padded
 * length: a process holding a share of the rows pads differently but must draw the same bits. */
struct drop_job {
    struct dropout_ctx x;
    int64_t M;
};
static void drop_rows(void *c, int tid, int nt) {
    struct drop_job *j = c;
    struct dropout_ctx *x = &j->x;
    int64_t b, e;
    lorad_pool_slice(j->M, tid, nt, 1, &b, &e);
    float keep = 1.0f / (1.0f - x->p);
    for (int64_t i = b; i < e; i++)
        for (int64_t k = 0; k < x->cols; k++) {
            int64_t flat = x->row0 + i, row = x->batch_row0 + flat / x->T, t = flat % x->T;
            uint64_t elem = ((uint64_t)row * LORAD_MAX_SEQ_LEN + (uint64_t)t) * (uint64_t)x->cols + (uint64_t)k;
            float u = lorad_rng_uniform(lorad_rng_u64(x->seed, x->counter, x->layer, x->module, elem));
            float v = u >= x->p ? x->in[i * x->cols + k] * keep : 0.0f;
            if (x->accumulate) x->out[i * x->cols + k] += v;
            else x->out[i * x->cols + k] = v;
        }
}
/* One adapted linear of the model: its frozen weight and bias, and which LoRA pair (if the module
 * is adapted) and dropout stream it uses. */
struct linear {
    const struct lorad_tensor *W;  /* (out, in) */
    const float *bias;             /* (out) or NULL */
    int layer;                     /* 0..L-1, or L for the LM head */
    enum lorad_lora_module module;
};

/* The rows one call of a linear covers. */
struct linear_rows {
    float *u;     /* (M, r) drop(x) A^T: forward writes it, backward reads it */
    int64_t M;    /* rows of x */
    int64_t row0; /* index of x's first row in the batch: chunks draw the same dropout masks as one call */
};

/* Whether a result overwrites its output or is added to it (the residual add is fused this way). */
enum linear_out { LINEAR_STORE, LINEAR_ADD };

static struct linear layer_linear(const struct lorad_model *m, int l, enum lorad_lora_module module) {
    const struct lorad_layer_weights *W = &m->w->layers[l];
    bool bias = m->cfg.attention_bias;
    switch (module) {
    case LORAD_Q_PROJ: return (struct linear){&W->wq, bias ? m->bq + l * m->qd : NULL, l, module};
    case LORAD_K_PROJ: return (struct linear){&W->wk, bias ? m->bk + l * m->kvd : NULL, l, module};
    case LORAD_V_PROJ: return (struct linear){&W->wv, bias ? m->bv + l * m->kvd : NULL, l, module};
    case LORAD_O_PROJ: return (struct linear){&W->wo, NULL, l, module};
    case LORAD_GATE_PROJ: return (struct linear){&W->w_gate, NULL, l, module};
    case LORAD_UP_PROJ: return (struct linear){&W->w_up, NULL, l, module};
    case LORAD_DOWN_PROJ: return (struct linear){&W->w_down, NULL, l, module};
    case LORAD_LM_HEAD: case LORAD_N_LORA_MODULES: break;
    }
    assert(!"not a decoder-layer module");
    return (struct linear){0};
}

static struct linear head_linear(const struct lorad_model *m) {
    return (struct linear){&m->w->lm_head, NULL, m->cfg.n_layers, LORAD_LM_HEAD};
}

/* out (rows.M, cols) = in * mask / (1-p), stored or added; the mask is lin's dropout stream. */
static void apply_dropout(struct lorad_model *m, float *out, const float *in, int64_t cols, const struct linear *lin,
                          struct linear_rows rows, enum linear_out mode) {
    struct drop_job j = {{out, in, cols, rows.row0, m->drop_batch_row0, m->drop_T, m->opts.seed, m->dropout_counter, (uint64_t)lin->layer + 1,
                          (uint64_t)lin->module, m->lc.dropout, mode == LINEAR_ADD},
                         rows.M};
    lorad_pool_run(m->pool, drop_rows, &j);
}

static int lora_index(const struct lorad_model *m, int layer, int module) {
    if (!m->lora_enabled) return -1;
    return m->lora_a[layer][module];
}

/* ---------------------------------------------------------------- DoRA */

/* The frozen linear of module in layer l (0..L-1), or of the head (l == L). */
static struct linear module_linear(const struct lorad_model *m, int l, enum lorad_lora_module module) {
    return l == m->cfg.n_layers ? head_linear(m) : layer_linear(m, l, module);
}

/* norm (out) = the row norms of module's W + scale B A, for an adapted module (A at table[a]). */
static void module_row_norms(struct lorad_model *m, int l, enum lorad_lora_module module, int a, float *norm) {
    const float *A = m->params + m->table[a].offset, *B = m->params + m->table[a + 1].offset;
    lorad_dora_row_norms(&m->gemm, m->dora_rows, norm, module_linear(m, l, module).W, B, A, m->scale, m->r);
}

void lorad_model_dora_reset_magnitudes(struct lorad_model *m) {
    if (!m->lc.use_dora) return;
    for (int l = 0; l <= m->cfg.n_layers; l++)
        for (int k = 0; k < LORAD_N_LORA_MODULES; k++) {
            int a = m->lora_a[l][k];
            if (a < 0) continue;
            assert(m->table[a + 2].is_magnitude);
            module_row_norms(m, l, (enum lorad_lora_module)k, a, m->params + m->table[a + 2].offset);
        }
}

/* The scales m/n and 1/n of every adapted module from the current parameters: a pass calls it
 * once before its forward, so the backward of each call sees the norms its forward used. A zero
 * row (n = 0) gets scale 0: its W and B A rows are zero, so its output is the bias either way. */
static void dora_refresh(struct lorad_model *m) {
    if (!m->lc.use_dora) return;
    for (int l = 0; l <= m->cfg.n_layers; l++)
        for (int k = 0; k < LORAD_N_LORA_MODULES; k++) {
            int a = m->lora_a[l][k];
            if (a < 0) continue;
            const struct lorad_lora_tensor *mag = &m->table[a + 2];
            float *inv = m->dora_inv_n + m->dora_off[l][k], *ms = m->dora_ms + m->dora_off[l][k];
            module_row_norms(m, l, (enum lorad_lora_module)k, a, inv);
            for (int64_t j = 0; j < mag->rows; j++) {
                inv[j] = inv[j] > 0 ? 1.0f / inv[j] : 0.0f;
                ms[j] = m->params[mag->offset + (size_t)j] * inv[j];
            }
        }
}

/* y (M, out) = x W^T + bias + (ms - 1) * d W^T + ms * scale * (d A^T) B^T, stored or added to y,
 * with d = drop(x) and ms = m/n per output (PEFT's DoRA); rows.u keeps d A^T. Without dropout
 * d = x and it folds into ms * (x W^T + scale u B^T) + bias, one product of W; with dropout the
 * second product W d is needed, as in PEFT. */
static void dora_linear_forward(struct lorad_model *m, float *y, const float *x, struct linear lin,
                                struct linear_rows rows, enum linear_out mode, int a) {
    const struct lorad_tensor *W = lin.W;
    int64_t out = W->rows, in = W->cols, M = rows.M, r = m->r;
    const float *A = m->params + m->table[a].offset, *B = m->params + m->table[a + 1].offset;
    const float *ms = m->dora_ms + m->dora_off[lin.layer][lin.module]; // (out)
    float *u = rows.u, *tmp = m->dora_tmp;                             // (M, r), (M, out)
    if (!(m->dropout_active && m->lc.dropout > 0)) {
        float *z = mode == LINEAR_ADD ? tmp : y;
        lorad_gemm_xwt(&m->gemm, z, x, W, M, false);
        lorad_sgemm_par(&m->gemm, false, true, M, r, in, 1.0f, x, in, A, in, 0.0f, u, r);
        lorad_sgemm_par(&m->gemm, false, true, M, out, r, m->scale, u, r, B, r, 1.0f, z, out);
        for (int64_t i = 0; i < M; i++)
            for (int64_t j = 0; j < out; j++) {
                float v = ms[j] * z[i * out + j] + (lin.bias ? lin.bias[j] : 0.0f);
                y[i * out + j] = mode == LINEAR_ADD ? y[i * out + j] + v : v;
            }
        return;
    }
    apply_dropout(m, m->xd, x, in, &lin, rows, LINEAR_STORE);
    lorad_gemm_xwt(&m->gemm, y, x, W, M, mode == LINEAR_ADD);
    lorad_gemm_xwt(&m->gemm, tmp, m->xd, W, M, false);
    lorad_sgemm_par(&m->gemm, false, true, M, r, in, 1.0f, m->xd, in, A, in, 0.0f, u, r);
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < out; j++) y[i * out + j] += (lin.bias ? lin.bias[j] : 0.0f) - tmp[i * out + j];
    lorad_sgemm_par(&m->gemm, false, true, M, out, r, m->scale, u, r, B, r, 1.0f, tmp, out);
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < out; j++) y[i * out + j] += ms[j] * tmp[i * out + j];
}

/* The backward of dora_linear_forward: dx (M, in) stored or added; the grads of A, B and the
 * magnitude accumulate. With z = d W^T + scale u B^T (recomputed: one product of W) and
 * g' = ms * dy: d magnitude_j += sum_i dy_ij z_ij / n_j, A and B get LoRA's gradients of g', and
 * dx = g' W + du A without dropout, dy W + drop'((ms - 1) dy W + du A) with it. */
static void dora_linear_backward(struct lorad_model *m, float *dx, const float *dy, const float *x, struct linear lin,
                                 struct linear_rows rows, enum linear_out mode, int a) {
    const struct lorad_tensor *W = lin.W;
    int64_t out = W->rows, in = W->cols, r = m->r, M = rows.M;
    const float *A = m->params + m->table[a].offset, *B = m->params + m->table[a + 1].offset;
    float *dA = m->grads + m->table[a].offset, *dB = m->grads + m->table[a + 1].offset;
    float *dmag = m->grads + m->table[a + 2].offset;
    const float *ms = m->dora_ms + m->dora_off[lin.layer][lin.module];
    const float *inv_n = m->dora_inv_n + m->dora_off[lin.layer][lin.module];
    const float *u = rows.u;
    float *tmp = m->dora_tmp; // (M, out)
    bool drop = m->dropout_active && m->lc.dropout > 0;
    const float *xin = x;
    if (drop) {
        apply_dropout(m, m->xd, x, in, &lin, rows, LINEAR_STORE);
        xin = m->xd;
    }
    lorad_gemm_xwt(&m->gemm, tmp, xin, W, M, false);
    lorad_sgemm_par(&m->gemm, false, true, M, out, r, m->scale, u, r, B, r, 1.0f, tmp, out);
    double *colsum = m->dora_colsum;
    for (int64_t j = 0; j < out; j++) colsum[j] = 0.0;
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < out; j++) colsum[j] += (double)dy[i * out + j] * tmp[i * out + j];
    for (int64_t j = 0; j < out; j++) dmag[j] += (float)(colsum[j] * inv_n[j]);
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < out; j++) tmp[i * out + j] = ms[j] * dy[i * out + j];
    /* dB (out, r) += scale g'^T u; du (M, r) = scale g' B; dA (r, in) += du^T d */
    lorad_sgemm_par(&m->gemm, true, false, out, r, M, m->scale, tmp, out, u, r, 1.0f, dB, r);
    lorad_sgemm_par(&m->gemm, false, false, M, r, out, m->scale, tmp, out, B, r, 0.0f, m->du, r);
    lorad_sgemm_par(&m->gemm, true, false, r, in, M, 1.0f, m->du, r, xin, in, 1.0f, dA, in);
    if (!drop) {
        lorad_gemm_dyw(&m->gemm, dx, tmp, W, M, mode == LINEAR_ADD);
        lorad_sgemm_par(&m->gemm, false, false, M, in, r, 1.0f, m->du, r, A, in, 1.0f, dx, in);
        return;
    }
    lorad_gemm_dyw(&m->gemm, dx, dy, W, M, mode == LINEAR_ADD);
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < out; j++) tmp[i * out + j] = (ms[j] - 1.0f) * dy[i * out + j];
    lorad_gemm_dyw(&m->gemm, m->dtmp, tmp, W, M, false);
    lorad_sgemm_par(&m->gemm, false, false, M, in, r, 1.0f, m->du, r, A, in, 1.0f, m->dtmp, in);
    apply_dropout(m, dx, m->dtmp, in, &lin, rows, LINEAR_ADD);
}

/* ---------------------------------------------------------------- the residual base of PiSSA / OLoRA */

/* y (M, out) -= scale * (x A0^T) B0^T for the adapted module whose A is table[a]: the part of the
 * residual base W - scale B0 A0 beyond W. It sees x undropped, as PEFT's residual weight does. */
static void init_residual_forward(struct lorad_model *m, float *y, const float *x, int64_t M, int64_t out, int64_t in,
                                  int a) {
    const float *A0 = m->init_params + m->table[a].offset, *B0 = m->init_params + m->table[a + 1].offset;
    lorad_sgemm_par(&m->gemm, false, true, M, m->r, in, 1.0f, x, in, A0, in, 0.0f, m->init_u, m->r);
    lorad_sgemm_par(&m->gemm, false, true, M, out, m->r, -m->scale, m->init_u, m->r, B0, m->r, 1.0f, y, out);
}

/* Its backward: dx (M, in) -= scale * (dy B0) A0. A0 and B0 are frozen: no gradients. */
static void init_residual_backward(struct lorad_model *m, float *dx, const float *dy, int64_t M, int64_t out,
                                   int64_t in, int a) {
    const float *A0 = m->init_params + m->table[a].offset, *B0 = m->init_params + m->table[a + 1].offset;
    lorad_sgemm_par(&m->gemm, false, false, M, m->r, out, 1.0f, dy, out, B0, m->r, 0.0f, m->init_u, m->r);
    lorad_sgemm_par(&m->gemm, false, false, M, in, m->r, -m->scale, m->init_u, m->r, A0, in, 1.0f, dx, in);
}

/* y (M, out) = x (M, in) W^T + bias + scale * (drop(x) A^T) B^T, stored or added to y; rows.u
 * (M, r) keeps drop(x) A^T. */
static void lora_linear_forward(struct lorad_model *m, float *y, const float *x, struct linear lin,
                                struct linear_rows rows, enum linear_out mode) {
    const struct lorad_tensor *W = lin.W;
    int64_t out = W->rows, in = W->cols, M = rows.M;
    float *u = rows.u;
    int a = lora_index(m, lin.layer, lin.module);
    if (a >= 0 && m->lc.use_dora) {
        dora_linear_forward(m, y, x, lin, rows, mode, a);
        return;
    }
    lorad_gemm_xwt(&m->gemm, y, x, W, M, mode == LINEAR_ADD);
    if (lin.bias)
        for (int64_t i = 0; i < M; i++)
            for (int64_t j = 0; j < out; j++) y[i * out + j] += lin.bias[j];
    if (a < 0) return;
    if (m->init_params) init_residual_forward(m, y, x, M, out, in, a);
    const float *A = m->params + m->table[a].offset, *B = m->params + m->table[a + 1].offset;
    const float *xin = x;
    if (m->dropout_active && m->lc.dropout > 0) {
        apply_dropout(m, m->xd, x, in, &lin, rows, LINEAR_STORE);
        xin = m->xd;
    }
    lorad_sgemm_par(&m->gemm, false, true, M, m->r, in, 1.0f, xin, in, A, in, 0.0f, u, m->r);
    lorad_sgemm_par(&m->gemm, false, true, M, out, m->r, m->scale, u, m->r, B, m->r, 1.0f, y, out);
}

/* dx (M, in) = dy W + the LoRA path, stored or added to dx; grads of A and B accumulate. x is the
 * forward input, rows.u the drop(x) A^T forward saved. */
static void lora_linear_backward(struct lorad_model *m, float *dx, const float *dy, const float *x, struct linear lin,
                                 struct linear_rows rows, enum linear_out mode) {
    const struct lorad_tensor *W = lin.W;
    int64_t out = W->rows, in = W->cols, r = m->r, M = rows.M;
    const float *u = rows.u;
    int a = lora_index(m, lin.layer, lin.module);
    if (a >= 0 && m->lc.use_dora) {
        dora_linear_backward(m, dx, dy, x, lin, rows, mode, a);
        return;
    }
    lorad_gemm_dyw(&m->gemm, dx, dy, W, M, mode == LINEAR_ADD);
    if (a < 0) return;
    if (m->init_params) init_residual_backward(m, dx, dy, M, out, in, a);
    const float *A = m->params + m->table[a].offset, *B = m->params + m->table[a + 1].offset;
    float *dA = m->grads + m->table[a].offset, *dB = m->grads + m->table[a + 1].offset;
    bool drop = m->dropout_active && m->lc.dropout > 0;
    const float *xin = x;
    if (drop) {
        apply_dropout(m, m->xd, x, in, &lin, rows, LINEAR_STORE);
        xin = m->xd;
    }
    /* dB (out, r) += scale dy^T u */
    lorad_sgemm_par(&m->gemm, true, false, out, r, M, m->scale, dy, out, u, r, 1.0f, dB, r);
    /* du (M, r) = scale dy B */
    lorad_sgemm_par(&m->gemm, false, false, M, r, out, m->scale, dy, out, B, r, 0.0f, m->du, r);
    /* dA (r, in) += du^T drop(x) */
    lorad_sgemm_par(&m->gemm, true, false, r, in, M, 1.0f, m->du, r, xin, in, 1.0f, dA, in);
    if (!drop) {
        lorad_sgemm_par(&m->gemm, false, false, M, in, r, 1.0f, m->du, r, A, in, 1.0f, dx, in);
    } else {
        lorad_sgemm_par(&m->gemm, false, false, M, in, r, 1.0f, m->du, r, A, in, 0.0f, m->dtmp, in);
        apply_dropout(m, dx, m->dtmp, in, &lin, rows, LINEAR_ADD);
    }
}

/* One pass over decoder layer l: what every linear call in it shares. u is the layer's saved
 * drop(x) A^T per module (training), or NULL to use the model's scratch for all (inference, which
 * never runs backward). */
struct layer_pass {
    struct lorad_model *m;
    int l;
    int64_t N;       /* rows */
    float *const *u; /* (N_BLOCK_MODULES) of (N, r), or NULL */
};

static struct linear_rows pass_rows(const struct layer_pass *p, enum lorad_lora_module module) {
    return (struct linear_rows){p->u ? p->u[module] : p->m->du, p->N, 0};
}

/* lora_linear_forward of module in the pass's layer: y (N, out) from x (N, in). */
static void layer_linear_forward(const struct layer_pass *p, float *y, const float *x, enum lorad_lora_module module,
                                 enum linear_out mode) {
    lora_linear_forward(p->m, y, x, layer_linear(p->m, p->l, module), pass_rows(p, module), mode);
}

/* lora_linear_backward of module in the pass's layer: dx (N, in) from dy (N, out) and x. */
static void layer_linear_backward(const struct layer_pass *p, float *dx, const float *dy, const float *x,
                                  enum lorad_lora_module module, enum linear_out mode) {
    lora_linear_backward(p->m, dx, dy, x, layer_linear(p->m, p->l, module), pass_rows(p, module), mode);
}

/* ---------------------------------------------------------------- blocks */

struct run {
    int B, T;
    int64_t N;
    const int32_t *pos, *seg;
};

static struct block_acts *acts_of(struct lorad_model *m, int l) {
    return m->opts.activation_checkpointing ? &m->acts[0] : &m->acts[l];
}
static float *x_at(struct lorad_model *m, int l) { return m->xs + (int64_t)l * m->N * m->d; }

/* x_out (N, d) = block l applied to x_in (N, d); saves what backward needs in a. x_out NULL
 * (checkpointing recompute) skips the down projection, whose output backward does not need. */
static void block_forward(struct lorad_model *m, int l, struct block_acts *a, float *x_out, const float *x_in,
                          const struct run *rn) {
    const struct lorad_llama_config *c = &m->cfg;
    int64_t N = rn->N, d = m->d;
    const struct layer_pass lp = {m, l, N, a->u};
    lorad_rmsnorm_forward(m->pool, a->h1, a->inv1, x_in, m->attn_norm + l * d, c->norm_eps, N, d);
    layer_linear_forward(&lp, a->q, a->h1, LORAD_Q_PROJ, LINEAR_STORE);
    layer_linear_forward(&lp, a->k, a->h1, LORAD_K_PROJ, LINEAR_STORE);
    layer_linear_forward(&lp, a->v, a->h1, LORAD_V_PROJ, LINEAR_STORE);
    lorad_rope_forward(m->pool, a->q, rn->pos, m->rope_cos, m->rope_sin, N, c->n_heads, c->head_dim);
    lorad_rope_forward(m->pool, a->k, rn->pos, m->rope_cos, m->rope_sin, N, c->n_kv_heads, c->head_dim);
    struct lorad_attn_shape s = {rn->B, rn->T, c->n_heads, c->n_kv_heads, c->head_dim};
    lorad_attention_forward(m->pool, m->attn_scratch, a->att, a->lse, a->q, a->k, a->v, rn->seg, s);
    memcpy(a->x_mid, x_in, sizeof(float) * (size_t)(N * d));
    layer_linear_forward(&lp, a->x_mid, a->att, LORAD_O_PROJ, LINEAR_ADD);
    lorad_rmsnorm_forward(m->pool, a->h2, a->inv2, a->x_mid, m->ffn_norm + l * d, c->norm_eps, N, d);
    layer_linear_forward(&lp, a->gate, a->h2, LORAD_GATE_PROJ, LINEAR_STORE);
    layer_linear_forward(&lp, a->up, a->h2, LORAD_UP_PROJ, LINEAR_STORE);
    if (!x_out) {
        /* recompute for backward: only u of down_proj's LoRA is needed, not its output */
        int ai = lora_index(m, l, LORAD_DOWN_PROJ);
        if (ai < 0) return;
        lorad_swiglu_forward(m->pool, m->hb1, a->gate, a->up, N * m->hid);
        const float *xin = m->hb1;
        if (m->dropout_active && m->lc.dropout > 0) {
            struct linear down = layer_linear(m, l, LORAD_DOWN_PROJ);
            apply_dropout(m, m->xd, m->hb1, m->hid, &down, pass_rows(&lp, LORAD_DOWN_PROJ), LINEAR_STORE);
            xin = m->xd;
        }
        lorad_sgemm_par(&m->gemm, false, true, N, m->r, m->hid, 1.0f, xin, m->hid, m->params + m->table[ai].offset,
                        m->hid, 0.0f, a->u[LORAD_DOWN_PROJ], m->r);
        return;
    }
    lorad_swiglu_forward(m->pool, m->hb1, a->gate, a->up, N * m->hid);
    memcpy(x_out, a->x_mid, sizeof(float) * (size_t)(N * d));
    layer_linear_forward(&lp, x_out, m->hb1, LORAD_DOWN_PROJ, LINEAR_ADD);
}

/* On entry m->dres (N, d) holds d loss / d x_out of block l; on exit d loss / d x_in. */
static void block_backward(struct lorad_model *m, int l, struct block_acts *a, const float *x_in,
                           const struct run *rn) {
    const struct lorad_llama_config *c = &m->cfg;
    int64_t N = rn->N, d = m->d;
    const struct layer_pass lp = {m, l, N, a->u};
    /* MLP: x_out = x_mid + down(silu(gate) * up) */
    lorad_swiglu_forward(m->pool, m->hb1, a->gate, a->up, N * m->hid);
    layer_linear_backward(&lp, m->hb2, m->dres, m->hb1, LORAD_DOWN_PROJ, LINEAR_STORE);
    lorad_swiglu_backward(m->pool, m->hb1, m->hb2, m->hb2, a->gate, a->up, N * m->hid); /* hb1 = dgate, hb2 = dup */
    layer_linear_backward(&lp, m->dh, m->hb1, a->h2, LORAD_GATE_PROJ, LINEAR_STORE);
    layer_linear_backward(&lp, m->dh, m->hb2, a->h2, LORAD_UP_PROJ, LINEAR_ADD);
    lorad_rmsnorm_backward(m->pool, m->dres, m->dh, a->x_mid, a->inv2, m->ffn_norm + l * d, N, d);
    /* attention: x_mid = x_in + o(attn(rope(q), rope(k), v)) */
    layer_linear_backward(&lp, m->datt, m->dres, a->att, LORAD_O_PROJ, LINEAR_STORE);
    struct lorad_attn_shape s = {rn->B, rn->T, c->n_heads, c->n_kv_heads, c->head_dim};
    lorad_attention_backward(m->pool, m->attn_scratch, m->dq, m->dk, m->dv, m->datt, a->q, a->k, a->v, a->att, a->lse,
                             rn->seg, s);
    lorad_rope_backward(m->pool, m->dq, rn->pos, m->rope_cos, m->rope_sin, N, c->n_heads, c->head_dim);
    lorad_rope_backward(m->pool, m->dk, rn->pos, m->rope_cos, m->rope_sin, N, c->n_kv_heads, c->head_dim);
    layer_linear_backward(&lp, m->dh, m->dq, a->h1, LORAD_Q_PROJ, LINEAR_STORE);
    layer_linear_backward(&lp, m->dh, m->dk, a->h1, LORAD_K_PROJ, LINEAR_ADD);
    layer_linear_backward(&lp, m->dh, m->dv, a->h1, LORAD_V_PROJ, LINEAR_ADD);
    lorad_rmsnorm_backward(m->pool, m->dres, m->dh, x_in, a->inv1, m->attn_norm + l * d, N, d);
}

/* ---------------------------------------------------------------- the head, in token chunks */

/* What one pass over the head computes. Evaluation wants the loss only; training also the
 * gradient, every token's CE weighted by grad_scale or, with row_weight, by its row's weight. */
enum head_mode { HEAD_LOSS, HEAD_LOSS_AND_GRAD };
struct head_pass {
    enum head_mode mode;
    float grad_scale;        /* the weight of every token when row_weight is NULL */
    const float *row_weight; /* (B) or NULL */
    double *row_loss;        /* (B) or NULL: per-row CE sums are added here */
    int64_t *row_correct;    /* (B) or NULL: per-row correct counts are added here */
};

/* Cross-entropy (and with grad its logits gradient, in place) of the chunk's n tokens from token
 * c0, each row's tokens with that row's weight. */
static void head_chunk_crossentropy(struct lorad_model *m, const int32_t *labels, const struct run *rn,
                                    const struct head_pass *hp, int64_t c0, int64_t n) {
    bool grad = hp->mode == HEAD_LOSS_AND_GRAD;
    int64_t V = m->V;
    if (!hp->row_weight) {
        lorad_crossentropy_forward_backward(m->pool, m->logits, m->row_loss, m->row_correct, labels + c0,
                                            hp->grad_scale, grad, n, V);
        return;
    }
    for (int64_t i = 0; i < n;) {
        int64_t row = (c0 + i) / rn->T, end = (row + 1) * rn->T - c0; /* the row's tokens in the chunk */
        int64_t k = (end < n ? end : n) - i;
        lorad_crossentropy_forward_backward(m->pool, m->logits + i * V, m->row_loss + i, m->row_correct + i,
                                            labels + c0 + i, hp->row_weight[row], grad, k, V);
        i += k;
    }
}

/* Runs the final norm and the LM head chunk by chunk: CE sum and correct count (and per row, when
 * asked); with HEAD_LOSS_AND_GRAD also writes m->dres = d loss / d x_final. */
static void head_forward_backward(struct lorad_model *m, const int32_t *labels, const struct run *rn,
                                  const struct head_pass *hp, double *ret_loss, int64_t *ret_correct) {
    bool grad = hp->mode == HEAD_LOSS_AND_GRAD;
    int64_t N = rn->N, d = m->d;
    int L = m->cfg.n_layers;
    const float *xf = x_at(m, L);
    lorad_rmsnorm_forward(m->pool, m->hf, m->inv_f, xf, m->final_norm, m->cfg.norm_eps, N, d);
    if (grad) memset(m->dh, 0, sizeof(float) * (size_t)(N * d));
    double loss = 0.0;
    int64_t correct = 0;
    for (int64_t c0 = 0; c0 < N; c0 += HEAD_CHUNK) {
        int64_t n = N - c0 < HEAD_CHUNK ? N - c0 : HEAD_CHUNK;
        if (lorad_count_labels(labels + c0, n) == 0) continue; /* contributes nothing */
        float *u = m->head_u ? m->head_u + c0 * m->r : NULL;
        const struct linear_rows rows = {u, n, c0};
        lora_linear_forward(m, m->logits, m->hf + c0 * d, head_linear(m), rows, LINEAR_STORE);
        head_chunk_crossentropy(m, labels, rn, hp, c0, n);
        for (int64_t i = 0; i < n; i++) {
            loss += m->row_loss[i];
            correct += m->row_correct[i];
            if (hp->row_loss) hp->row_loss[(c0 + i) / rn->T] += m->row_loss[i];
            if (hp->row_correct) hp->row_correct[(c0 + i) / rn->T] += m->row_correct[i];
        }
        if (grad)
            lora_linear_backward(m, m->dh + c0 * d, m->logits, m->hf + c0 * d, head_linear(m), rows, LINEAR_STORE);
    }
    if (grad) {
        memset(m->dres, 0, sizeof(float) * (size_t)(N * d));
        lorad_rmsnorm_backward(m->pool, m->dres, m->dh, xf, m->inv_f, m->final_norm, N, d);
    }
    *ret_loss = loss;
    *ret_correct = correct;
}

/* ---------------------------------------------------------------- public API */

int64_t lorad_count_labels(const int32_t *labels, int64_t n) {
    int64_t c = 0;
    for (int64_t i = 0; i < n; i++) c += labels[i] != LORAD_IGNORE_INDEX;
    return c;
}

static int check_batch(struct lorad_model *m, const struct lorad_batch *b, struct run *rn, struct lorad_error *err) {
    if (b->B < 1 || b->B > m->opts.max_batch)
        return lorad_error_set(err, -EINVAL, "batch_size", "batch size %d outside [1, %d]", b->B, m->opts.max_batch);
    if (b->T < 1 || b->T > m->opts.max_seq)
        return lorad_error_set(err, -EINVAL, "seq_len", "sequence length %d outside [1, %d]", b->T, m->opts.max_seq);
    if (!b->tokens) return lorad_error_set(err, -EINVAL, "input_ids", "input_ids missing");
    if (!b->labels) return lorad_error_set(err, -EINVAL, "labels", "labels missing");
    int64_t N = (int64_t)b->B * b->T;
    for (int64_t i = 0; i < N; i++) {
        int t = (int)(i % b->T);
        if (b->tokens[i] < 0 || b->tokens[i] >= m->V)
            return lorad_error_set(err, -EINVAL, "input_ids", "input_ids[%lld] = %d outside [0, %lld)", (long long)i,
                                   b->tokens[i], (long long)m->V);
        if (b->labels[i] != LORAD_IGNORE_INDEX && (b->labels[i] < 0 || b->labels[i] >= m->V))
            return lorad_error_set(err, -EINVAL, "labels", "labels[%lld] = %d is neither -100 nor in [0, %lld)",
                                   (long long)i, b->labels[i], (long long)m->V);
        if (b->positions && (b->positions[i] < 0 || b->positions[i] >= m->P))
            return lorad_error_set(err, -EINVAL, "positions", "positions[%lld] = %d outside [0, %lld)", (long long)i,
                                   b->positions[i], (long long)m->P);
        if (b->seg_start && (b->seg_start[i] < 0 || b->seg_start[i] > t))
            return lorad_error_set(err, -EINVAL, "seg_start", "seg_start[%lld] = %d outside [0, %d]", (long long)i,
                                   b->seg_start[i], t);
    }
    rn->B = b->B;
    rn->T = b->T;
    rn->N = N;
    if (b->positions) {
        rn->pos = b->positions;
    } else {
        for (int64_t i = 0; i < N; i++) m->pos_default[i] = (int32_t)(i % b->T);
        rn->pos = m->pos_default;
    }
    if (b->seg_start) {
        rn->seg = b->seg_start;
    } else {
        memset(m->seg_default, 0, sizeof(int32_t) * (size_t)N);
        rn->seg = m->seg_default;
    }
    return 0;
}

static void model_forward(struct lorad_model *m, const struct lorad_batch *b, const struct run *rn) {
    if (m->lora_enabled) dora_refresh(m);
    lorad_embedding_forward(m->pool, x_at(m, 0), b->tokens, &m->w->embed, rn->N, m->d);
    for (int l = 0; l < m->cfg.n_layers; l++) block_forward(m, l, acts_of(m, l), x_at(m, l + 1), x_at(m, l), rn);
}

/* The decoder layers' backward from m->dres (d loss / d x_final), which the head pass wrote. */
static void blocks_backward(struct lorad_model *m, const struct run *rn) {
    for (int l = m->cfg.n_layers - 1; l >= 0; l--) {
        struct block_acts *a = acts_of(m, l);
        if (m->opts.activation_checkpointing) block_forward(m, l, a, NULL, x_at(m, l), rn); /* recompute */
        block_backward(m, l, a, x_at(m, l), rn);
    }
}

/* Forward with dropout masks of the current counter, keyed by b's rows. */
static void training_forward(struct lorad_model *m, const struct lorad_batch *b, const struct run *rn) {
    m->dropout_active = true;
    m->drop_batch_row0 = b->row0;
    m->drop_T = b->T;
    model_forward(m, b, rn);
}

/* The end of a training pass: the next micro-batch draws new masks. */
static void training_done(struct lorad_model *m) {
    m->dropout_active = false;
    m->dropout_counter++;
}

int lorad_model_forward_backward(struct lorad_model *m, const struct lorad_batch *b, int64_t denominator,
                                 double *ret_loss_sum, int64_t *ret_correct, struct lorad_error *err) {
    struct run rn;
    int r = check_batch(m, b, &rn, err);
    if (r < 0) return r;
    if (denominator < 1)
        return lorad_error_set(err, -EINVAL, "denominator", "denominator must be >= 1 (unmasked labels of the step)");
    training_forward(m, b, &rn);
    double loss;
    int64_t correct;
    const struct head_pass hp = {.mode = HEAD_LOSS_AND_GRAD, .grad_scale = (float)(1.0 / (double)denominator)};
    head_forward_backward(m, b->labels, &rn, &hp, &loss, &correct);
    blocks_backward(m, &rn);
    training_done(m);
    *ret_loss_sum = loss;
    *ret_correct = correct;
    return 0;
}

int lorad_model_forward_backward_rows(struct lorad_model *m, const struct lorad_batch *b, lorad_row_weights_fn weights,
                                      void *ctx, double *ret_row_loss, int64_t *ret_row_correct,
                                      struct lorad_error *err) {
    assert(weights);
    struct run rn;
    int r = check_batch(m, b, &rn, err);
    if (r < 0) return r;
    double row_loss[b->B], row_weight[b->B];
    int64_t row_correct[b->B];
    memset(row_loss, 0, sizeof row_loss);
    memset(row_correct, 0, sizeof row_correct);
    training_forward(m, b, &rn);
    /* The weights depend on every chunk's loss, and the logits of a chunk do not outlive it, so
     * the head runs twice: once for the losses the weights are computed from, once more for the
     * gradient. Both see the same activations and the same dropout masks (the counter moves only
     * in training_done), so the losses reported are those the gradient is taken of. */
    double loss;
    int64_t correct;
    const struct head_pass first = {.mode = HEAD_LOSS, .row_loss = row_loss, .row_correct = row_correct};
    head_forward_backward(m, b->labels, &rn, &first, &loss, &correct);
    if ((r = weights(ctx, row_loss, b->B, row_weight)) < 0) {
        training_done(m);
        return lorad_error_set(err, r, "", "the row weights could not be computed");
    }
    for (int i = 0; i < b->B; i++) {
        if (!isfinite(row_weight[i])) {
            training_done(m);
            return lorad_error_set(err, -ERANGE, "", "row %d has weight %g", i, row_weight[i]);
        }
        m->row_weight[i] = (float)row_weight[i];
    }
    const struct head_pass second = {.mode = HEAD_LOSS_AND_GRAD, .row_weight = m->row_weight};
    head_forward_backward(m, b->labels, &rn, &second, &loss, &correct);
    blocks_backward(m, &rn);
    training_done(m);
    memcpy(ret_row_loss, row_loss, sizeof row_loss);
    if (ret_row_correct) memcpy(ret_row_correct, row_correct, sizeof row_correct);
    return 0;
}

int lorad_model_eval(struct lorad_model *m, const struct lorad_batch *b, double *ret_loss_sum, int64_t *ret_correct,
                     int64_t *ret_tokens, struct lorad_error *err) {
    struct run rn;
    int r = check_batch(m, b, &rn, err);
    if (r < 0) return r;
    m->dropout_active = false;
    model_forward(m, b, &rn);
    double loss;
    int64_t correct;
    const struct head_pass hp = {.mode = HEAD_LOSS};
    head_forward_backward(m, b->labels, &rn, &hp, &loss, &correct);
    *ret_loss_sum = loss;
    *ret_correct = correct;
    *ret_tokens = lorad_count_labels(b->labels, rn.N);
    return 0;
}

int lorad_model_eval_rows(struct lorad_model *m, const struct lorad_batch *b, bool use_adapter, double *ret_row_loss,
                          int64_t *ret_row_correct, struct lorad_error *err) {
    struct run rn;
    int r = check_batch(m, b, &rn, err);
    if (r < 0) return r;
    double row_loss[b->B];
    int64_t row_correct[b->B];
    memset(row_loss, 0, sizeof row_loss);
    memset(row_correct, 0, sizeof row_correct);
    m->dropout_active = false;
    m->lora_enabled = use_adapter;
    model_forward(m, b, &rn);
    double loss;
    int64_t correct;
    const struct head_pass hp = {.mode = HEAD_LOSS, .row_loss = row_loss, .row_correct = row_correct};
    head_forward_backward(m, b->labels, &rn, &hp, &loss, &correct);
    m->lora_enabled = true;
    memcpy(ret_row_loss, row_loss, sizeof row_loss);
    if (ret_row_correct) memcpy(ret_row_correct, row_correct, sizeof row_correct);
    return 0;
}

/* ---------------------------------------------------------------- inference with a KV cache */

struct cache_attn {
    struct lorad_model *m;
    struct block_acts *a;
    int layer, n, p0;
};
static void cache_attn_thread(void *c, int tid, int nt) {
    struct cache_attn *x = c;
    struct lorad_model *m = x->m;
    const struct lorad_llama_config *cfg = &m->cfg;
    int hd = cfg->head_dim, rep = cfg->n_heads / cfg->n_kv_heads;
    float *w = m->attn_scratch[tid], scale = 1.0f / sqrtf((float)hd);
    const float *K = m->kcache + (int64_t)x->layer * m->cache_cap * m->kvd;
    const float *Vc = m->vcache + (int64_t)x->layer * m->cache_cap * m->kvd;
    int64_t b, e;
    lorad_pool_slice((int64_t)cfg->n_heads * x->n, tid, nt, 1, &b, &e);
    for (int64_t task = b; task < e; task++) {
        int h = (int)(task % cfg->n_heads), i = (int)(task / cfg->n_heads), g = h / rep, p = x->p0 + i;
        const float *q = x->a->q + (int64_t)i * m->qd + h * hd;
        float mx = -INFINITY, sum = 0.0f;
        for (int j = 0; j <= p; j++) {
            float s = 0.0f;
            for (int k = 0; k < hd; k++) s += q[k] * K[(int64_t)j * m->kvd + g * hd + k];
            w[j] = s * scale;
            mx = w[j] > mx ? w[j] : mx;
        }
        for (int j = 0; j <= p; j++) sum += (w[j] = expf(w[j] - mx));
        float *o = x->a->att + (int64_t)i * m->qd + h * hd;
        for (int k = 0; k < hd; k++) o[k] = 0.0f;
        for (int j = 0; j <= p; j++) {
            float pj = w[j] / sum;
            for (int k = 0; k < hd; k++) o[k] += pj * Vc[(int64_t)j * m->kvd + g * hd + k];
        }
    }
}

int lorad_model_infer(struct lorad_model *m, const int32_t *tokens, int n, bool use_adapter, float *ret_logits,
                      struct lorad_error *err) {
    const struct lorad_llama_config *c = &m->cfg;
    if (m->cache_cap == 0) return lorad_error_set(err, -EINVAL, "kv_cache_len", "the model has no KV cache");
    if (n < 1 || n > m->N) return lorad_error_set(err, -EINVAL, "input_ids", "need 1..%lld tokens, got %d", (long long)m->N, n);
    if (m->cache_len + n > m->cache_cap)
        return lorad_error_set(err, -ENOSPC, "kv_cache_len", "KV cache full (%d + %d > %d)", m->cache_len, n, m->cache_cap);
    for (int i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= m->V)
            return lorad_error_set(err, -EINVAL, "input_ids", "input_ids[%d] = %d outside [0, %lld)", i, tokens[i],
                                   (long long)m->V);
    m->lora_enabled = use_adapter;
    m->dropout_active = false;
    /* the parameters stay put while a sequence is generated: the norms of its first call serve */
    if (use_adapter && m->cache_len == 0) dora_refresh(m);
    struct block_acts *a = &m->acts[0];
    int64_t d = m->d;
    for (int i = 0; i < n; i++) m->pos_default[i] = m->cache_len + i;
    const int32_t *pos = m->pos_default;
    float *x = x_at(m, 0), *y = x_at(m, 1);
    lorad_embedding_forward(m->pool, x, tokens, &m->w->embed, n, d);
    for (int l = 0; l < c->n_layers; l++) {
        const struct layer_pass lp = {m, l, n, NULL};
        lorad_rmsnorm_forward(m->pool, a->h1, a->inv1, x, m->attn_norm + l * d, c->norm_eps, n, d);
        layer_linear_forward(&lp, a->q, a->h1, LORAD_Q_PROJ, LINEAR_STORE);
        layer_linear_forward(&lp, a->k, a->h1, LORAD_K_PROJ, LINEAR_STORE);
        layer_linear_forward(&lp, a->v, a->h1, LORAD_V_PROJ, LINEAR_STORE);
        lorad_rope_forward(m->pool, a->q, pos, m->rope_cos, m->rope_sin, n, c->n_heads, c->head_dim);
        lorad_rope_forward(m->pool, a->k, pos, m->rope_cos, m->rope_sin, n, c->n_kv_heads, c->head_dim);
        int64_t base = ((int64_t)l * m->cache_cap + m->cache_len) * m->kvd;
        memcpy(m->kcache + base, a->k, sizeof(float) * (size_t)(n * m->kvd));
        memcpy(m->vcache + base, a->v, sizeof(float) * (size_t)(n * m->kvd));
        struct cache_attn ca = {m, a, l, n, m->cache_len};
        lorad_pool_run(m->pool, cache_attn_thread, &ca);
        memcpy(y, x, sizeof(float) * (size_t)(n * d));
        layer_linear_forward(&lp, y, a->att, LORAD_O_PROJ, LINEAR_ADD);
        lorad_rmsnorm_forward(m->pool, a->h2, a->inv2, y, m->ffn_norm + l * d, c->norm_eps, n, d);
        layer_linear_forward(&lp, a->gate, a->h2, LORAD_GATE_PROJ, LINEAR_STORE);
        layer_linear_forward(&lp, a->up, a->h2, LORAD_UP_PROJ, LINEAR_STORE);
        lorad_swiglu_forward(m->pool, m->hb1, a->gate, a->up, n * m->hid);
        memcpy(x, y, sizeof(float) * (size_t)(n * d));
        layer_linear_forward(&lp, x, m->hb1, LORAD_DOWN_PROJ, LINEAR_ADD);
    }
    const float *last = x + (int64_t)(n - 1) * d;
    lorad_rmsnorm_forward(NULL, m->hf, m->inv_f, last, m->final_norm, c->norm_eps, 1, d);
    const struct linear_rows last_row = {m->du, 1, 0};
    lora_linear_forward(m, ret_logits, m->hf, head_linear(m), last_row, LINEAR_STORE);
    m->cache_len += n;
    m->lora_enabled = true;
    return 0;
}

void lorad_model_reset_cache(struct lorad_model *m) { m->cache_len = 0; }
int lorad_model_cache_len(const struct lorad_model *m) { return m->cache_len; }

/* ---------------------------------------------------------------- LoRA access */

float *lorad_model_params(struct lorad_model *m, size_t *ret_n) {
    if (ret_n) *ret_n = m->n_params;
    return m->params;
}
float *lorad_model_grads(struct lorad_model *m, size_t *ret_n) {
    if (ret_n) *ret_n = m->n_params;
    return m->grads;
}
void lorad_model_zero_grads(struct lorad_model *m) { memset(m->grads, 0, sizeof(float) * m->n_params); }
int lorad_model_n_lora_tensors(const struct lorad_model *m) { return m->n_lora; }
const struct lorad_lora_tensor *lorad_model_lora_tensor(const struct lorad_model *m, int i) {
    return i >= 0 && i < m->n_lora ? &m->table[i] : NULL;
}
float lorad_model_lora_scale(const struct lorad_model *m) { return m->scale; }
enum lorad_compute_dtype lorad_model_compute_dtype(const struct lorad_model *m) { return m->gemm.compute; }

const struct lorad_llama_config *lorad_model_config(const struct lorad_model *m) { return &m->cfg; }
uint64_t lorad_model_dropout_counter(const struct lorad_model *m) { return m->dropout_counter; }
void lorad_model_set_dropout_counter(struct lorad_model *m, uint64_t counter) { m->dropout_counter = counter; }

int lorad_model_find_lora(const struct lorad_model *m, const char *name) {
    static const char prefix[] = "base_model.model.";
    if (strncmp(name, prefix, sizeof prefix - 1) == 0) name += sizeof prefix - 1;
    for (int i = 0; i < m->n_lora; i++)
        if (strcmp(m->table[i].name, name) == 0) return i;
    return -ENOENT;
}

int lorad_model_set_lora_tensor(struct lorad_model *m, const char *name, const float *data, int64_t rows,
                                int64_t cols, struct lorad_error *err) {
    int i = lorad_model_find_lora(m, name);
    if (i < 0) return lorad_error_set(err, -ENOENT, name, "no LoRA tensor named %.200s in this adapter", name);
    const struct lorad_lora_tensor *t = &m->table[i];
    if (t->rows != rows || t->cols != cols)
        return lorad_error_set(err, -EINVAL, name, "LoRA tensor %.200s has shape [%lld, %lld], got [%lld, %lld]", name,
                               (long long)t->rows, (long long)t->cols, (long long)rows, (long long)cols);
    memcpy(m->params + t->offset, data, sizeof(float) * (size_t)(rows * cols));
    return 0;
}

int lorad_model_merged_weight(const struct lorad_model *m, int layer, enum lorad_lora_module module, float *out,
                              struct lorad_error *err) {
    const struct lorad_llama_config *c = &m->cfg;
    if (layer < -1 || layer >= c->n_layers || (layer == -1) != (module == LORAD_LM_HEAD) ||
        (int)module < 0 || module >= LORAD_N_LORA_MODULES)
        return lorad_error_set(err, -EINVAL, "layer", "no module %s in layer %d", lorad_lora_module_name(module), layer);
    const struct lorad_tensor *W = module_linear(m, layer < 0 ? c->n_layers : layer, module).W;
    lorad_tensor_rows_f32(out, W, 0, W->rows, 0, W->cols);
    int a = m->lora_a[layer < 0 ? c->n_layers : layer][module];
    if (a < 0) return 0;
    const float *A = m->params + m->table[a].offset, *B = m->params + m->table[a + 1].offset;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)W->rows, (int)W->cols, (int)m->r, m->scale, B,
                (int)m->r, A, (int)W->cols, 1.0f, out, (int)W->cols);
    if (m->init_params)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)W->rows, (int)W->cols, (int)m->r, -m->scale,
                    m->init_params + m->table[a + 1].offset, (int)m->r, m->init_params + m->table[a].offset,
                    (int)W->cols, 1.0f, out, (int)W->cols);
    if (m->lc.use_dora) lorad_dora_scale_rows(out, m->params + m->table[a + 2].offset, W->rows, W->cols);
    return 0;
}

/* ---------------------------------------------------------------- inits from the base */

int lorad_model_init_from_base(struct lorad_model *m, struct lorad_error *err) {
    if (!m->init_params) return 0;
    const struct lorad_llama_config *c = &m->cfg;
    int64_t max_w = 0;
    for (int k = 0; k < LORAD_N_LORA_MODULES; k++) {
        if (!(m->lc.targets & (1u << k))) continue;
        int64_t out, in;
        lorad_lora_module_shape(c, (enum lorad_lora_module)k, &out, &in);
        int64_t least = out < in ? out : in;
        if (m->r > least)
            return lorad_error_set(err, -EINVAL, "lora.r",
                                   "lora.r %lld exceeds %s's smaller dimension %lld: lora.init %s takes r singular "
                                   "directions of each adapted weight",
                                   (long long)m->r, lorad_lora_module_name((enum lorad_lora_module)k), (long long)least,
                                   lorad_lora_init_name(m->lc.init));
        if (out * in > max_w) max_w = out * in;
    }
    float *W = malloc(sizeof(float) * (size_t)max_w); // (out, in) of the module at hand
    if (!W) return lorad_error_set(err, -ENOMEM, "", "out of memory for a %lld-element weight", (long long)max_w);
    int rc = 0;
    for (int l = 0; l <= c->n_layers && rc == 0; l++)
        for (int k = 0; k < LORAD_N_LORA_MODULES && rc == 0; k++) {
            int a = m->lora_a[l][k];
            if (a < 0) continue;
            const struct lorad_tensor *t = module_linear(m, l, (enum lorad_lora_module)k).W;
            lorad_tensor_rows_f32(W, t, 0, t->rows, 0, t->cols);
            float *A0 = m->init_params + m->table[a].offset, *B0 = m->init_params + m->table[a + 1].offset;
            rc = m->lc.init == LORAD_LORA_INIT_PISSA
                     ? lorad_lora_init_pissa(A0, B0, W, t->rows, t->cols, m->lc.r, m->scale, err)
                     : lorad_lora_init_olora(A0, B0, W, t->rows, t->cols, m->lc.r, m->scale, err);
            if (rc < 0) {
                char what[sizeof err->message], param[sizeof err->param]; /* not formatted into themselves */
                snprintf(what, sizeof what, "%s", err->message);
                snprintf(param, sizeof param, "%s", err->param);
                lorad_error_set(err, rc, param, "%s: %s", m->table[a].name, what);
            }
        }
    free(W);
    if (rc < 0) {
        memset(m->init_params, 0, sizeof(float) * m->n_params);
        return rc;
    }
    memcpy(m->params, m->init_params, sizeof(float) * m->n_params);
    return 0;
}

float *lorad_model_init_factors(struct lorad_model *m, size_t *ret_n) {
    if (ret_n) *ret_n = m->init_params ? m->n_params : 0;
    return m->init_params;
}
