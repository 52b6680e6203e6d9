/* The decoder's step, layer by layer, over rows laid out item after item: the single tokens of
 * decoding items first (so their products run together through the small kernel), then each
 * prompt chunk. Every product is issued per item or per group of single-token rows, never over a
 * mix, which is what makes an item's answer independent of its neighbours. */
#include "decoder.h"

#include <assert.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapter_apply.h"
#include "decode_attention.h"
#include "dora.h"
#include "gemm_small.h"
#include "kernels.h"
#include "lora.h"
#include "map_file.h"
#include "model.h"
#include "threadpool.h"

#define N_MODULES LORAD_N_LORA_MODULES
#define MAX_GROUP 3 /* products one single_rows call takes: q, k and v */
#define LORA_U_FLOATS ((int64_t)1 << 16) /* per-thread scratch for x A^T, in row chunks */

struct lorad_lora_weights {
    int r, n_layers;
    float scale;
    /* A (r, in) and B transposed, Bt (r, out), of (layer, module); the LM head's at layer
     * n_layers. NULL: not adapted. All point into data. Bt because a decode row's update
     * y += s Bt^T u then runs along y in whole vectors (lorad_lowrank_add_rows). */
    const float *(*A)[N_MODULES], *(*Bt)[N_MODULES];
    /* DoRA: per adapted module the scale m / ||W + s B A|| of each output (fixed while the
     * adapter is loaded), which the output takes before the bias: y = ms (W x + s B A x) + b.
     * NULL without DoRA. */
    const float *(*ms)[N_MODULES];
    float *data;
    int64_t bytes;
};

struct lorad_kv_cache {
    int capacity, len, n_layers, n_kv_heads, head_dim;
    int64_t kvd;
    bool bf16;
    /* (L, n_kv_heads, capacity, head_dim) each, f32 or bf16: one head's keys are contiguous, so
     * a decode row's attention streams them (position-major rows kvd apart left every key a
     * cache miss the prefetchers did not cover: half the attention's time) */
    void *k, *v;       /* mapped, not malloc'd: a finished request's cache leaves the process */
    size_t half_bytes; /* of each */
    const struct lorad_decoder *owner;
};

/* One (product, row) adapter update: u = A x_row, then y_row += scale * Bt^T u. */
struct lora_task {
    int product, row, r;
    float scale;
    const float *A, *Bt; /* (r, in), (r, out) */
    float *u;            /* (r) in the decoder's u_rows buffer */
};

struct lorad_decoder {
    const struct lorad_base_weights *w;
    struct lorad_llama_config cfg;
    struct lorad_decoder_options opt;
    struct lorad_pool *pool;
    struct lorad_gemm gemm;
    int64_t d, qd, kvd, hid, V;
    bool kv_bf16;
    float *attn_norm, *ffn_norm, *final_norm; /* (L, d), (L, d), (d) */
    float *bq, *bk, *bv;                      /* (L, qd), (L, kvd), (L, kvd) with attention_bias */
    float *rope_cos, *rope_sin;               /* (max_pos, hd/2) */
    /* per step, max_rows rows */
    float *x, *h;            /* (R, d) residual stream, normed input */
    float *q, *att;          /* (R, qd) */
    float *k, *v;            /* (R, kvd) */
    float *gate, *up;        /* (R, hid); up holds silu(gate) * up after the SwiGLU */
    float *inv;              /* (R) */
    float *lse;              /* (H, R) the prompt attention's row log-sum-exp (unused after) */
    int32_t *tok, *pos, *seg;/* (R) */
    int *row_item;           /* (R) index into the step's ordered items */
    int *task_row;           /* (R) rows whose attention reads the cache */
    float *hf, *logits;      /* (S, d), (S, V): last rows of the items that want logits */
    float *dora_keep;        /* (R, d) the residual rows of DoRA items, before an accumulating product */
    float *attn_scratch[LORAD_MAX_THREADS]; /* lorad_attention_scratch_floats(max_rows) or max_pos */
    float *u_scratch[LORAD_MAX_THREADS];    /* (LORA_U_FLOATS) */
    struct lora_task *tasks;                /* (MAX_GROUP * S) of one single_rows call */
    float *u_rows;                          /* (u_rows_cap) their u, grown by plan() */
    int64_t u_rows_cap;
    int64_t bytes;
    /* the step being run */
    struct lorad_decode_item **order; /* (S) single-token items first */
    int *row0;                        /* (S) first row of each ordered item */
    int n_items, n_single, n_rows;
};

/* ---------------------------------------------------------------- construction */

static void *alloc_counted(struct lorad_decoder *d, size_t bytes) {
    d->bytes += (int64_t)bytes;
    return malloc(bytes ? bytes : 1);
}
#define ALLOC_F(d, n) ((float *)alloc_counted((d), (size_t)(n) * sizeof(float)))

static void copy_vec(float *out, const struct lorad_tensor *t) { lorad_tensor_rows_f32(out, t, 0, 1, 0, t->cols); }

/* Contract: w is borrowed for the decoder's life; every buffer is the decoder's. */
int lorad_decoder_new(struct lorad_decoder **ret, const struct lorad_base_weights *w,
                      const struct lorad_decoder_options *opt, struct lorad_error *err) {
    const struct lorad_llama_config *c = &w->cfg;
    if (opt->threads < 1 || opt->threads > LORAD_MAX_THREADS)
        return lorad_error_set(err, -EINVAL, "threads", "threads must be 1 to %d, got %d", LORAD_MAX_THREADS, opt->threads);
    if (opt->max_rows < 1 || opt->max_rows > LORAD_MAX_SEQ_LEN)
        return lorad_error_set(err, -EINVAL, "max_rows", "max_rows must be 1 to %d, got %d", LORAD_MAX_SEQ_LEN, opt->max_rows);
    if (opt->max_seqs < 1 || opt->max_seqs > LORAD_DECODER_MAX_SEQS)
        return lorad_error_set(err, -EINVAL, "max_seqs", "max_seqs must be 1 to %d, got %d", LORAD_DECODER_MAX_SEQS,
                               opt->max_seqs);
    if (opt->max_pos < 1 || opt->max_pos > LORAD_MAX_SEQ_LEN)
        return lorad_error_set(err, -EINVAL, "max_pos", "max_pos must be 1 to %d, got %d", LORAD_MAX_SEQ_LEN, opt->max_pos);
    enum lorad_compute_dtype compute;
    int rc = lorad_compute_dtype_resolve(opt->compute_dtype, lorad_base_linears_bf16(w), "compute_dtype", &compute, err);
    if (rc < 0) return rc;
    struct lorad_decoder *d = calloc(1, sizeof *d);
    if (!d) return lorad_error_set(err, -ENOMEM, "", "out of memory");
    d->w = w;
    d->cfg = *c;
    d->opt = *opt;
    d->d = c->dim;
    d->qd = (int64_t)c->n_heads * c->head_dim;
    d->kvd = (int64_t)c->n_kv_heads * c->head_dim;
    d->hid = c->hidden_dim;
    d->V = c->vocab_size;
    d->kv_bf16 = lorad_base_linears_bf16(w);
    int64_t L = c->n_layers, R = opt->max_rows, S = opt->max_seqs, hd2 = c->head_dim / 2;
    if ((rc = lorad_pool_new(&d->pool, opt->threads)) < 0) {
        free(d);
        return lorad_error_set(err, rc, "threads", "cannot start %d threads", opt->threads);
    }
    lorad_pool_set_spin(d->pool, true); /* a step is some 20 short products per layer */
    if (lorad_gemm_init(&d->gemm, d->pool, compute) < 0) goto oom;
    d->attn_norm = ALLOC_F(d, L * d->d);
    d->ffn_norm = ALLOC_F(d, L * d->d);
    d->final_norm = ALLOC_F(d, d->d);
    if (c->attention_bias) {
        d->bq = ALLOC_F(d, L * d->qd);
        d->bk = ALLOC_F(d, L * d->kvd);
        d->bv = ALLOC_F(d, L * d->kvd);
        if (!d->bq || !d->bk || !d->bv) goto oom;
    }
    d->rope_cos = ALLOC_F(d, (int64_t)opt->max_pos * hd2);
    d->rope_sin = ALLOC_F(d, (int64_t)opt->max_pos * hd2);
    d->x = ALLOC_F(d, R * d->d);
    d->h = ALLOC_F(d, R * d->d);
    d->q = ALLOC_F(d, R * d->qd);
    d->att = ALLOC_F(d, R * d->qd);
    d->k = ALLOC_F(d, R * d->kvd);
    d->v = ALLOC_F(d, R * d->kvd);
    d->gate = ALLOC_F(d, R * d->hid);
    d->up = ALLOC_F(d, R * d->hid);
    d->inv = ALLOC_F(d, R);
    d->lse = ALLOC_F(d, R * c->n_heads);
    d->tok = alloc_counted(d, sizeof(int32_t) * (size_t)R);
    d->pos = alloc_counted(d, sizeof(int32_t) * (size_t)R);
    d->seg = calloc((size_t)R, sizeof(int32_t));
    d->bytes += (int64_t)sizeof(int32_t) * R;
    d->row_item = alloc_counted(d, sizeof(int) * (size_t)R);
    d->task_row = alloc_counted(d, sizeof(int) * (size_t)R);
    d->hf = ALLOC_F(d, S * d->d);
    d->logits = ALLOC_F(d, S * d->V);
    d->dora_keep = ALLOC_F(d, R * d->d);
    d->order = alloc_counted(d, sizeof *d->order * (size_t)S);
    d->row0 = alloc_counted(d, sizeof *d->row0 * (size_t)S);
    d->tasks = alloc_counted(d, sizeof *d->tasks * MAX_GROUP * (size_t)S);
    int64_t attn = lorad_attention_scratch_floats(opt->max_rows);
    if (attn < opt->max_pos) attn = opt->max_pos;
    for (int t = 0; t < opt->threads; t++) {
        d->attn_scratch[t] = ALLOC_F(d, attn);
        d->u_scratch[t] = ALLOC_F(d, LORA_U_FLOATS);
        if (!d->attn_scratch[t] || !d->u_scratch[t]) goto oom;
    }
    if (!d->attn_norm || !d->ffn_norm || !d->final_norm || !d->rope_cos || !d->rope_sin || !d->x || !d->h || !d->q ||
        !d->att || !d->k || !d->v || !d->gate || !d->up || !d->inv || !d->lse || !d->tok || !d->pos || !d->seg ||
        !d->row_item || !d->task_row || !d->hf || !d->logits || !d->dora_keep || !d->order || !d->row0 || !d->tasks)
        goto oom;
    d->bytes += (int64_t)lorad_gemm_scratch_floats(compute) * (int64_t)sizeof(float) * opt->threads;
    for (int l = 0; l < c->n_layers; l++) {
        copy_vec(d->attn_norm + l * d->d, &w->layers[l].attn_norm);
        copy_vec(d->ffn_norm + l * d->d, &w->layers[l].ffn_norm);
        if (c->attention_bias) {
            copy_vec(d->bq + l * d->qd, &w->layers[l].bq);
            copy_vec(d->bk + l * d->kvd, &w->layers[l].bk);
            copy_vec(d->bv + l * d->kvd, &w->layers[l].bv);
        }
    }
    copy_vec(d->final_norm, &w->final_norm);
    lorad_rope_tables(d->rope_cos, d->rope_sin, c, opt->max_pos);
    *ret = d;
    return 0;
oom:
    lorad_decoder_free(d);
    return lorad_error_set(err, -ENOMEM, "", "out of memory for a decoder of %d rows", opt->max_rows);
}

void lorad_decoder_free(struct lorad_decoder *d) {
    if (!d) return;
    float **bufs[] = {&d->attn_norm, &d->ffn_norm, &d->final_norm, &d->bq, &d->bk, &d->bv, &d->rope_cos,
                      &d->rope_sin, &d->x, &d->h, &d->q, &d->att, &d->k, &d->v, &d->gate, &d->up, &d->inv,
                      &d->lse, &d->hf, &d->logits, &d->dora_keep};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) free(*bufs[i]);
    for (int t = 0; t < LORAD_MAX_THREADS; t++) {
        free(d->attn_scratch[t]);
        free(d->u_scratch[t]);
    }
    free(d->tok);
    free(d->pos);
    free(d->seg);
    free(d->row_item);
    free(d->task_row);
    free(d->order);
    free(d->row0);
    free(d->tasks);
    free(d->u_rows);
    lorad_gemm_destroy(&d->gemm);
    lorad_pool_free(d->pool);
    free(d);
}

const struct lorad_llama_config *lorad_decoder_config(const struct lorad_decoder *d) { return &d->cfg; }
int64_t lorad_decoder_bytes(const struct lorad_decoder *d) { return d->bytes; }

/* ---------------------------------------------------------------- adapters */

/* The module's name in PEFT's naming, e.g. "model.layers.3.self_attn.q_proj" or "lm_head". */
static void module_path(char *out, size_t cap, int layer, enum lorad_lora_module m) {
    if (m == LORAD_LM_HEAD) snprintf(out, cap, "lm_head");
    else snprintf(out, cap, "model.layers.%d.%s.%s", layer, m <= LORAD_O_PROJ ? "self_attn" : "mlp",
                  lorad_lora_module_name(m));
}

/* The frozen weight of module m in layer l of w (the LM head's whatever l). */
static const struct lorad_tensor *module_weight(const struct lorad_base_weights *w, int l, enum lorad_lora_module m) {
    const struct lorad_layer_weights *W = &w->layers[l < w->cfg.n_layers ? l : 0];
    switch (m) {
    case LORAD_Q_PROJ: return &W->wq;
    case LORAD_K_PROJ: return &W->wk;
    case LORAD_V_PROJ: return &W->wv;
    case LORAD_O_PROJ: return &W->wo;
    case LORAD_GATE_PROJ: return &W->w_gate;
    case LORAD_UP_PROJ: return &W->w_up;
    case LORAD_DOWN_PROJ: return &W->w_down;
    case LORAD_LM_HEAD: return &w->lm_head;
    case LORAD_N_LORA_MODULES: break;
    }
    assert(!"no such module");
    return NULL;
}

/* Contract: ad and base are borrowed for the call; the result owns copies of the tensors. */
int lorad_lora_weights_new(struct lorad_lora_weights **ret, const struct lorad_adapter *ad,
                           const struct lorad_base_weights *base, struct lorad_error *err) {
    const struct lorad_llama_config *cfg = &base->cfg;
    struct lorad_lora_config lc;
    int rc = lorad_adapter_lora_config(ad, &lc, err);
    if (rc < 0) return rc;
    if (cfg->n_layers < 1 || cfg->n_layers > LORAD_MAX_LAYERS)
        return lorad_error_set(err, -EINVAL, "num_hidden_layers", "a base of %d layers", cfg->n_layers);
    int L = cfg->n_layers;
    size_t n_rows = (size_t)(unsigned)L + 1;
    int64_t floats = 0;
    for (int l = 0; l <= L; l++)
        for (int m = 0; m < N_MODULES; m++) {
            if ((l == L) != (m == LORAD_LM_HEAD)) continue;
            char name[96];
            module_path(name, sizeof name, l, (enum lorad_lora_module)m);
            const struct lorad_adapter_tensor *A, *B;
            if (lorad_adapter_module(ad, name, &A, &B) < 0) continue;
            int64_t out, in;
            lorad_lora_module_shape(cfg, (enum lorad_lora_module)m, &out, &in);
            if (A->rows != lc.r || A->cols != in || B->rows != out || B->cols != lc.r)
                return lorad_error_set(err, -EINVAL, "adapter", "%s: %s has A [%lld, %lld] and B [%lld, %lld]; the base "
                                       "needs [%d, %lld] and [%lld, %d]", ad->path, name, (long long)A->rows,
                                       (long long)A->cols, (long long)B->rows, (long long)B->cols, lc.r, (long long)in,
                                       (long long)out, lc.r);
            floats += A->rows * A->cols + B->rows * B->cols + (lc.use_dora ? out : 0);
        }
    struct lorad_lora_weights *lw = calloc(1, sizeof *lw);
    if (!lw) return lorad_error_set(err, -ENOMEM, "", "out of memory");
    lw->r = lc.r;
    lw->n_layers = L;
    lw->scale = lorad_lora_scale(&lc);
    lw->A = calloc(n_rows, sizeof *lw->A);
    lw->Bt = calloc(n_rows, sizeof *lw->Bt);
    if (lc.use_dora) lw->ms = calloc(n_rows, sizeof *lw->ms);
    lw->data = malloc((size_t)(floats ? floats : 1) * sizeof(float));
    int64_t max_in = cfg->dim, qd = (int64_t)cfg->n_heads * cfg->head_dim;
    if (qd > max_in) max_in = qd;
    if (cfg->hidden_dim > max_in) max_in = cfg->hidden_dim;
    float *rows = lc.use_dora ? malloc(sizeof(float) * (size_t)lorad_dora_scratch_floats(max_in)) : NULL;
    if (!lw->A || !lw->Bt || !lw->data || (lc.use_dora && (!lw->ms || !rows))) {
        free(rows);
        lorad_lora_weights_free(lw);
        return lorad_error_set(err, -ENOMEM, "adapter", "out of memory for %lld adapter floats", (long long)floats);
    }
    lw->bytes = floats * (int64_t)sizeof(float) + (int64_t)(2 * (L + 1) * sizeof *lw->A);
    float *p = lw->data;
    for (int l = 0; l <= L; l++)
        for (int m = 0; m < N_MODULES; m++) {
            if ((l == L) != (m == LORAD_LM_HEAD)) continue;
            char name[96];
            module_path(name, sizeof name, l, (enum lorad_lora_module)m);
            const struct lorad_adapter_tensor *A, *B;
            if (lorad_adapter_module(ad, name, &A, &B) < 0) continue;
            size_t na = (size_t)(A->rows * A->cols), nb = (size_t)(B->rows * B->cols);
            memcpy(p, A->data, na * sizeof(float));
            lw->A[l][m] = p;
            p += na;
            for (int64_t o = 0; o < B->rows; o++) /* B (out, r) -> Bt (r, out) */
                for (int k = 0; k < lc.r; k++) p[k * B->rows + o] = B->data[o * lc.r + k];
            lw->Bt[l][m] = p;
            p += nb;
            if (!lc.use_dora) continue;
            char mag_name[128];
            snprintf(mag_name, sizeof mag_name, "%s.lora_magnitude_vector", name);
            const struct lorad_adapter_tensor *mag = lorad_adapter_find(ad, mag_name);
            assert(mag && mag->rows == B->rows); /* lorad_adapter_load: a magnitude in every module */
            lorad_dora_row_norms_1t(p, module_weight(base, l, (enum lorad_lora_module)m), B->data, A->data, lw->scale,
                                    lc.r, rows);
            for (int64_t o = 0; o < B->rows; o++) p[o] = p[o] > 0 ? mag->data[o] / p[o] : 0.0f;
            lw->ms[l][m] = p;
            p += B->rows;
        }
    free(rows);
    *ret = lw;
    return 0;
}

void lorad_lora_weights_free(struct lorad_lora_weights *lw) {
    if (!lw) return;
    free(lw->A);
    free(lw->Bt);
    free(lw->ms);
    free(lw->data);
    free(lw);
}

int64_t lorad_lora_weights_bytes(const struct lorad_lora_weights *lw) { return lw->bytes; }

/* ---------------------------------------------------------------- KV caches */

int64_t lorad_kv_cache_bytes_per_token(const struct lorad_decoder *d) {
    return 2 * (int64_t)d->cfg.n_layers * d->kvd * (d->kv_bf16 ? 2 : 4);
}

/* Contract: the cache belongs to the caller and may be used only with d (checked by the step). */
int lorad_kv_cache_new(struct lorad_kv_cache **ret, const struct lorad_decoder *d, int capacity,
                       struct lorad_error *err) {
    if (capacity < 1 || capacity > d->opt.max_pos)
        return lorad_error_set(err, -EINVAL, "max_tokens", "a sequence of %d tokens does not fit the %d positions of "
                               "this decoder", capacity, d->opt.max_pos);
    struct lorad_kv_cache *c = calloc(1, sizeof *c);
    if (!c) return lorad_error_set(err, -ENOMEM, "", "out of memory");
    c->capacity = capacity;
    c->n_layers = d->cfg.n_layers;
    c->kvd = d->kvd;
    c->n_kv_heads = d->cfg.n_kv_heads;
    c->head_dim = d->cfg.head_dim;
    c->bf16 = d->kv_bf16;
    c->owner = d;
    size_t half = (size_t)lorad_kv_cache_bytes_per_token(d) / 2 * (size_t)capacity;
    c->half_bytes = half;
    c->k = lorad_anon_alloc(half);
    c->v = lorad_anon_alloc(half);
    if (!c->k || !c->v) {
        lorad_kv_cache_free(c);
        return lorad_error_set(err, -ENOMEM, "", "out of memory for a KV cache of %d tokens", capacity);
    }
    *ret = c;
    return 0;
}

void lorad_kv_cache_free(struct lorad_kv_cache *c) {
    if (!c) return;
    lorad_anon_free(c->k, c->half_bytes);
    lorad_anon_free(c->v, c->half_bytes);
    free(c);
}

int lorad_kv_cache_len(const struct lorad_kv_cache *c) { return c->len; }
int lorad_kv_cache_capacity(const struct lorad_kv_cache *c) { return c->capacity; }
void lorad_kv_cache_reset(struct lorad_kv_cache *c) { c->len = 0; }

/* Stores rows (n, kvd) of k and v at positions c->len.. of layer l (not yet counted in len). */
static void cache_store(struct lorad_kv_cache *c, int l, const float *k, const float *v, int n) {
    int hd = c->head_dim;
    for (int g = 0; g < c->n_kv_heads; g++)
        for (int t = 0; t < n; t++) {
            int64_t at = (((int64_t)l * c->n_kv_heads + g) * c->capacity + c->len + t) * hd;
            const float *kr = k + t * c->kvd + (int64_t)g * hd, *vr = v + t * c->kvd + (int64_t)g * hd;
            if (c->bf16) {
                uint16_t *K = (uint16_t *)c->k + at, *V = (uint16_t *)c->v + at;
                for (int i = 0; i < hd; i++) {
                    K[i] = lorad_f32_to_bf16(kr[i]);
                    V[i] = lorad_f32_to_bf16(vr[i]);
                }
            } else {
                memcpy((float *)c->k + at, kr, sizeof(float) * (size_t)hd);
                memcpy((float *)c->v + at, vr, sizeof(float) * (size_t)hd);
            }
        }
}

/* ---------------------------------------------------------------- the step's products */

static const struct lorad_tensor *layer_weight(const struct lorad_decoder *d, int l, enum lorad_lora_module m) {
    return module_weight(d->w, l, m);
}

struct lora_job {
    struct lorad_decoder *d;
    float *y;       /* (rows, out) of the whole step */
    const float *x; /* (rows, in) */
    int layer;
    enum lorad_lora_module module;
    int64_t in, out;
    int first_item; /* items before it were updated by the decode rows' job */
    bool one_row;   /* the LM head: item i's one row is row i of x and y */
};

/* The prompt chunks' adapters: each thread takes every nt-th item from first_item on whose
 * adapter carries this module and adds scale * (x A^T) Bt to that item's rows, in chunks the u
 * scratch holds. */
static void lora_thread(void *ctx, int tid, int nt) {
    struct lora_job *j = ctx;
    struct lorad_decoder *d = j->d;
    float *u = d->u_scratch[tid];
    for (int i = j->first_item + tid; i < d->n_items; i += nt) {
        const struct lorad_decode_item *it = d->order[i];
        const struct lorad_lora_weights *lw = it->lora;
        if (!lw || !lw->A[j->layer][j->module]) continue;
        const float *A = lw->A[j->layer][j->module], *Bt = lw->Bt[j->layer][j->module];
        int r = lw->r;
        int64_t row0 = j->one_row ? i : d->row0[i], rows = j->one_row ? 1 : it->n;
        int64_t chunk = LORA_U_FLOATS / r;
        if (chunk < 1) chunk = 1; /* r <= LORAD_MAX_LORA_RANK < LORA_U_FLOATS */
        for (int64_t r0 = 0; r0 < rows; r0 += chunk) {
            int64_t m = rows - r0 < chunk ? rows - r0 : chunk;
            const float *x = j->x + (row0 + r0) * j->in;
            float *y = j->y + (row0 + r0) * j->out;
            // u (m, r) = x (m, in) A^T; y (m, out) += scale * u Bt
            lorad_sgemm_1t(false, true, m, r, j->in, 1.0f, x, j->in, A, j->in, 0.0f, u, r, d->gemm.scratch[tid]);
            lorad_sgemm_1t(false, false, m, j->out, r, lw->scale, u, r, Bt, j->out, 1.0f, y, j->out,
                           d->gemm.scratch[tid]);
        }
    }
}

/* Products of one step that share their input, over single rows (decode tokens, or the last
 * rows the LM head reads): row i's x is x + i * in and its y is y_p + i * out_p. */
struct rows_job {
    struct lorad_decoder *d;
    int n_products, n_rows;
    const float *x;
    float *y[MAX_GROUP];
    const struct lorad_tensor *W[MAX_GROUP];
    bool accumulate;
    /* the rows' adapter updates: task t is (product, row) with an adapter carrying the module */
    int n_tasks;
    int64_t u_rows; /* sum of the tasks' ranks */
};

/* Phase one: the tasks' u = A x, their A rows split evenly over the threads. */
static void rows_u_thread(void *ctx, int tid, int nt) {
    const struct rows_job *j = ctx;
    struct lorad_decoder *d = j->d;
    int64_t b, e, off = 0;
    lorad_pool_slice(j->u_rows, tid, nt, 1, &b, &e);
    for (int t = 0; t < j->n_tasks && off < e; off += d->tasks[t].r, t++) {
        const struct lora_task *k = &d->tasks[t];
        int64_t k0 = b > off ? b - off : 0, k1 = e - off < k->r ? e - off : k->r;
        if (k0 >= k1) continue;
        int64_t in = j->W[k->product]->cols;
        struct lorad_tensor A = {k->A, LORAD_DTYPE_F32, k->r, in};
        lorad_gemm_xwt_small_rows(k->u, 0, j->x + (int64_t)k->row * in, &A, 1, k0, k1, false);
    }
}

/* Phase two: every product over the thread's slice of its W rows, all rows at once through the
 * small kernel, then the adapters' updates of that slice while it is in cache. */
static void rows_thread(void *ctx, int tid, int nt) {
    const struct rows_job *j = ctx;
    struct lorad_decoder *d = j->d;
    for (int p = 0; p < j->n_products; p++) {
        const struct lorad_tensor *W = j->W[p];
        int64_t in = W->cols, out = W->rows, n0, n1;
        lorad_pool_slice(out, tid, nt, 16, &n0, &n1);
        for (int r0 = 0; r0 < j->n_rows; r0 += LORAD_GEMM_SMALL_MAX_ROWS) {
            int n = j->n_rows - r0 < LORAD_GEMM_SMALL_MAX_ROWS ? j->n_rows - r0 : LORAD_GEMM_SMALL_MAX_ROWS;
            lorad_gemm_xwt_small_rows(j->y[p] + r0 * out, out, j->x + r0 * in, W, n, n0, n1, j->accumulate);
        }
        for (int t = 0; t < j->n_tasks; t++) {
            const struct lora_task *k = &d->tasks[t];
            if (k->product == p)
                lorad_lowrank_add_rows(j->y[p] + (int64_t)k->row * out, k->u, k->Bt, k->r, out, n0, n1, k->scale);
        }
    }
}

/* ys[p] (+)= x W_p^T (+ the rows' adapters) for the n_rows single rows, products mods[p] of
 * layer l; row i's adapter is order[i]'s (for the LM head, order is compacted first). Two
 * hand-offs to the pool whatever the number of products and adapters. All W must pass
 * lorad_gemm_small_supports. */
static void single_rows(struct lorad_decoder *d, int l, int n, const enum lorad_lora_module *mods, float *const *ys,
                        const float *x, bool accumulate, int n_rows) {
    assert(n >= 1 && n <= MAX_GROUP && n_rows >= 1);
    struct rows_job j = {.d = d, .n_products = n, .n_rows = n_rows, .x = x, .accumulate = accumulate};
    float *u = d->u_rows;
    for (int p = 0; p < n; p++) {
        j.y[p] = ys[p];
        j.W[p] = layer_weight(d, l, mods[p]);
        for (int i = 0; i < n_rows; i++) {
            const struct lorad_lora_weights *lw = d->order[i]->lora;
            if (!lw || !lw->A[l][mods[p]]) continue;
            assert(j.n_tasks < MAX_GROUP * d->opt.max_seqs && u + lw->r <= d->u_rows + d->u_rows_cap);
            d->tasks[j.n_tasks++] = (struct lora_task){p, i, lw->r, lw->scale, lw->A[l][mods[p]], lw->Bt[l][mods[p]], u};
            u += lw->r;
            j.u_rows += lw->r;
        }
    }
    if (j.n_tasks) lorad_pool_run(d->pool, rows_u_thread, &j);
    lorad_pool_run(d->pool, rows_thread, &j);
}

/* The DoRA scale (lorad_lora_weights.ms) of module mod in layer l of the items whose adapter has
 * it: each of their rows of y (out) becomes keep + ms * (y - keep), keep being what the row holds
 * besides the module's product: the residual the product was added to (keep_rows, the same rows)
 * or the bias (or nothing). one_row: item i's only row is row i (the LM head's compacted rows). */
static void dora_scale(struct lorad_decoder *d, int l, enum lorad_lora_module mod, float *y, int64_t out,
                       const float *keep_rows, const float *bias, bool one_row) {
    for (int i = 0; i < d->n_items; i++) {
        const struct lorad_lora_weights *lw = d->order[i]->lora;
        if (!lw || !lw->ms || !lw->ms[l][mod]) continue;
        const float *ms = lw->ms[l][mod];
        int64_t r0 = one_row ? i : d->row0[i], r1 = one_row ? i + 1 : d->row0[i] + d->order[i]->n;
        for (int64_t row = r0; row < r1; row++)
            for (int64_t c = 0; c < out; c++) {
                float keep = keep_rows ? keep_rows[row * out + c] : bias ? bias[c] : 0.0f;
                y[row * out + c] = keep + ms[c] * (y[row * out + c] - keep);
            }
    }
}

/* Whether an item of the step has a DoRA adapter on module mod of layer l. */
static bool any_dora(const struct lorad_decoder *d, int l, enum lorad_lora_module mod) {
    for (int i = 0; i < d->n_items; i++) {
        const struct lorad_lora_weights *lw = d->order[i]->lora;
        if (lw && lw->ms && lw->ms[l][mod]) return true;
    }
    return false;
}

/* ys[p] (rows, out_p) (+)= x (rows, in) W_p^T for the step's rows, products mods[p] of layer l
 * sharing the input x, then biases and the items' adapters. Single-token rows go through
 * single_rows, or one at a time when a weight's dtype is not the small kernel's; each prompt
 * chunk alone through lorad_gemm_xwt. */
static void linears(struct lorad_decoder *d, int l, int n, const enum lorad_lora_module *mods, float *const *ys,
                    const float *x, bool accumulate) {
    /* an accumulating product adds to the residual, which DoRA's scale must leave out */
    bool keep = accumulate && any_dora(d, l, mods[0]);
    assert(!accumulate || n == 1);
    if (keep) memcpy(d->dora_keep, ys[0], sizeof(float) * (size_t)(d->n_rows * layer_weight(d, l, mods[0])->rows));
    bool small = true;
    for (int p = 0; p < n; p++) small = small && lorad_gemm_small_supports(layer_weight(d, l, mods[p]));
    if (small && d->n_single) single_rows(d, l, n, mods, ys, x, accumulate, d->n_single);
    for (int p = 0; p < n; p++) {
        const struct lorad_tensor *W = layer_weight(d, l, mods[p]);
        int64_t in = W->cols, out = W->rows;
        float *y = ys[p];
        if (!small)
            for (int i = 0; i < d->n_single; i++) lorad_gemm_xwt(&d->gemm, y + i * out, x + i * in, W, 1, accumulate);
        for (int i = d->n_single; i < d->n_items; i++) {
            int64_t row0 = d->row0[i];
            lorad_gemm_xwt(&d->gemm, y + row0 * out, x + row0 * in, W, d->order[i]->n, accumulate);
        }
        const float *bias = NULL;
        if (d->cfg.attention_bias) {
            if (mods[p] == LORAD_Q_PROJ) bias = d->bq + l * d->qd;
            else if (mods[p] == LORAD_K_PROJ) bias = d->bk + l * d->kvd;
            else if (mods[p] == LORAD_V_PROJ) bias = d->bv + l * d->kvd;
        }
        if (bias)
            for (int64_t i = 0; i < d->n_rows; i++)
                for (int64_t c = 0; c < out; c++) y[i * out + c] += bias[c];
        int first = small ? d->n_single : 0;
        bool any = false;
        for (int i = first; i < d->n_items && !any; i++) any = d->order[i]->lora && d->order[i]->lora->A[l][mods[p]];
        if (any) {
            struct lora_job j = {d, y, x, l, mods[p], in, out, first, false};
            lorad_pool_run(d->pool, lora_thread, &j);
        }
        if (keep || any_dora(d, l, mods[p])) dora_scale(d, l, mods[p], y, out, keep ? d->dora_keep : NULL, bias, false);
    }
}

/* ---------------------------------------------------------------- attention */

struct attn_job {
    struct lorad_decoder *d;
    int layer;
    int n_tasks; /* (row, head) pairs of the rows that read the cache */
    const int *task_row;
};

/* Rows that read their cache: each (row, head) task attends to positions 0..pos(row). */
static void cache_attn_thread(void *ctx, int tid, int nt) {
    struct attn_job *j = ctx;
    struct lorad_decoder *d = j->d;
    const struct lorad_llama_config *c = &d->cfg;
    int H = c->n_heads, hd = c->head_dim, rep = c->n_heads / c->n_kv_heads;
    int64_t b, e;
    lorad_pool_slice((int64_t)j->n_tasks * H, tid, nt, 1, &b, &e);
    for (int64_t t = b; t < e; t++) {
        int row = j->task_row[t / H], h = (int)(t % H), g = h / rep;
        const struct lorad_kv_cache *kc = d->order[d->row_item[row]]->cache;
        int n_keys = d->pos[row] + 1;
        int64_t at = ((int64_t)j->layer * kc->n_kv_heads + g) * kc->capacity * hd;
        const float *q = d->q + row * d->qd + h * hd;
        float *out = d->att + row * d->qd + h * hd;
        if (kc->bf16)
            lorad_decode_attend_bf16(out, d->attn_scratch[tid], q, (const uint16_t *)kc->k + at,
                                     (const uint16_t *)kc->v + at, hd, n_keys, hd);
        else
            lorad_decode_attend_f32(out, d->attn_scratch[tid], q, (const float *)kc->k + at, (const float *)kc->v + at,
                                    hd, n_keys, hd);
    }
}

/* att (rows, qd) of layer l. A prompt chunk that starts the sequence attends within itself with
 * the blocked causal kernel, on the f32 keys and values of this step; every other row (decode
 * tokens, later chunks) reads its cache, which already holds this step's rows. */
static void attention(struct lorad_decoder *d, int l) {
    int *task_row = d->task_row;
    const struct lorad_llama_config *c = &d->cfg;
    int n_tasks = 0;
    for (int i = 0; i < d->n_items; i++) {
        const struct lorad_decode_item *it = d->order[i];
        int row0 = d->row0[i];
        if (it->n > 1 && it->cache->len == 0) {
            struct lorad_attn_shape s = {1, it->n, c->n_heads, c->n_kv_heads, c->head_dim};
            lorad_attention_forward(d->pool, d->attn_scratch, d->att + row0 * d->qd, d->lse, d->q + row0 * d->qd,
                                    d->k + row0 * d->kvd, d->v + row0 * d->kvd, d->seg, s);
        } else {
            for (int r = 0; r < it->n; r++) task_row[n_tasks++] = row0 + r;
        }
    }
    if (n_tasks == 0) return;
    struct attn_job j = {d, l, n_tasks, task_row};
    lorad_pool_run(d->pool, cache_attn_thread, &j);
}

/* ---------------------------------------------------------------- the step */

/* Checks the items and lays out the step's rows; nothing is changed when an item is refused. */
static int plan(struct lorad_decoder *d, struct lorad_decode_item *items, int n_items, struct lorad_error *err) {
    if (n_items < 1 || n_items > d->opt.max_seqs)
        return lorad_error_set(err, -EINVAL, "items", "a step takes 1 to %d sequences, got %d", d->opt.max_seqs, n_items);
    int64_t rows = 0;
    for (int i = 0; i < n_items; i++) {
        const struct lorad_decode_item *it = &items[i];
        if (!it->cache || it->cache->owner != d)
            return lorad_error_set(err, -EINVAL, "items", "item %d has no KV cache of this decoder", i);
        for (int k = 0; k < i; k++)
            if (items[k].cache == it->cache) return lorad_error_set(err, -EINVAL, "items", "items %d and %d share a KV cache", k, i);
        if (it->n < 1) return lorad_error_set(err, -EINVAL, "tokens", "item %d has no tokens", i);
        if ((int64_t)it->cache->len + it->n > it->cache->capacity)
            return lorad_error_set(err, -ENOSPC, "tokens", "item %d: %d cached + %d new tokens exceed the cache's %d", i,
                                   it->cache->len, it->n, it->cache->capacity);
        if (it->lora && it->lora->n_layers != d->cfg.n_layers)
            return lorad_error_set(err, -EINVAL, "lora", "item %d: the adapter was made for %d layers, the base has %d", i,
                                   it->lora->n_layers, d->cfg.n_layers);
        for (int t = 0; t < it->n; t++)
            if (it->tokens[t] < 0 || it->tokens[t] >= d->V)
                return lorad_error_set(err, -EINVAL, "tokens", "item %d: token %d is %d, outside the vocabulary (%lld)",
                                       i, t, (int)it->tokens[t], (long long)d->V);
        rows += it->n;
    }
    if (rows > d->opt.max_rows)
        return lorad_error_set(err, -EINVAL, "items", "a step takes at most %d tokens, got %lld", d->opt.max_rows,
                               (long long)rows);
    /* the single rows' adapter vectors: at most MAX_GROUP products of every single row (the LM
     * head's rows are at most one per item) */
    int64_t u_need = 0;
    for (int i = 0; i < n_items; i++)
        if (items[i].lora && (items[i].n == 1 || items[i].logits)) u_need += (int64_t)MAX_GROUP * items[i].lora->r;
    if (u_need > d->u_rows_cap) {
        float *u = realloc(d->u_rows, sizeof(float) * (size_t)u_need);
        if (!u) return lorad_error_set(err, -ENOMEM, "", "out of memory for %lld adapter floats", (long long)u_need);
        d->bytes += (int64_t)sizeof(float) * (u_need - d->u_rows_cap);
        d->u_rows = u;
        d->u_rows_cap = u_need;
    }
    int s = 0;
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < n_items; i++)
            if ((items[i].n == 1) == (pass == 0)) d->order[s++] = &items[i];
    d->n_items = n_items;
    d->n_single = 0;
    int row = 0;
    for (int i = 0; i < n_items; i++) {
        struct lorad_decode_item *it = d->order[i];
        if (it->n == 1) d->n_single++;
        d->row0[i] = row;
        for (int t = 0; t < it->n; t++, row++) {
            d->tok[row] = it->tokens[t];
            d->pos[row] = it->cache->len + t;
            d->row_item[row] = i;
        }
    }
    d->n_rows = row;
    return 0;
}

/* Contract: items and their caches are the caller's; caches advance by their item's n. */
int lorad_decoder_step(struct lorad_decoder *d, struct lorad_decode_item *items, int n_items,
                       struct lorad_error *err) {
    int rc = plan(d, items, n_items, err);
    if (rc < 0) return rc;
    const struct lorad_llama_config *c = &d->cfg;
    int64_t R = d->n_rows, D = d->d;
    /* a few rows of elementwise work cost less on this thread than a hand-off (the kernels'
     * results do not depend on the pool) */
    struct lorad_pool *ew = R <= 2 * LORAD_GEMM_SMALL_MAX_ROWS ? NULL : d->pool;
    static const enum lorad_lora_module qkv[] = {LORAD_Q_PROJ, LORAD_K_PROJ, LORAD_V_PROJ},
                                        o[] = {LORAD_O_PROJ}, gate_up[] = {LORAD_GATE_PROJ, LORAD_UP_PROJ},
                                        down[] = {LORAD_DOWN_PROJ};
    lorad_embedding_forward(ew, d->x, d->tok, &d->w->embed, R, D);
    for (int l = 0; l < c->n_layers; l++) {
        lorad_rmsnorm_forward(ew, d->h, d->inv, d->x, d->attn_norm + l * D, c->norm_eps, R, D);
        linears(d, l, 3, qkv, (float *const[]){d->q, d->k, d->v}, d->h, false);
        lorad_rope_forward(ew, d->q, d->pos, d->rope_cos, d->rope_sin, R, c->n_heads, c->head_dim);
        lorad_rope_forward(ew, d->k, d->pos, d->rope_cos, d->rope_sin, R, c->n_kv_heads, c->head_dim);
        if (d->kv_bf16) /* every position, this step's too, attends to what a bf16 cache holds */
            for (int64_t i = 0; i < R * d->kvd; i++) {
                d->k[i] = lorad_bf16_to_f32(lorad_f32_to_bf16(d->k[i]));
                d->v[i] = lorad_bf16_to_f32(lorad_f32_to_bf16(d->v[i]));
            }
        for (int i = 0; i < d->n_items; i++)
            cache_store(d->order[i]->cache, l, d->k + d->row0[i] * d->kvd, d->v + d->row0[i] * d->kvd, d->order[i]->n);
        attention(d, l);
        linears(d, l, 1, o, (float *const[]){d->x}, d->att, true);
        lorad_rmsnorm_forward(ew, d->h, d->inv, d->x, d->ffn_norm + l * D, c->norm_eps, R, D);
        linears(d, l, 2, gate_up, (float *const[]){d->gate, d->up}, d->h, false);
        lorad_swiglu_forward(ew, d->up, d->gate, d->up, R * d->hid);
        linears(d, l, 1, down, (float *const[]){d->x}, d->up, true);
    }
    /* The LM head over the last row of each item that wants logits: those items are compacted to
     * the front of order, so row i of hf and of logits is order[i]'s. */
    int kept = 0;
    for (int i = 0; i < d->n_items; i++) {
        if (!d->order[i]->logits) continue;
        int64_t last = d->row0[i] + d->order[i]->n - 1;
        lorad_rmsnorm_forward(NULL, d->hf + kept * D, d->inv, d->x + last * D, d->final_norm, c->norm_eps, 1, D);
        d->order[kept++] = d->order[i];
    }
    d->n_items = kept;
    if (kept) {
        const struct lorad_tensor *head = &d->w->lm_head;
        static const enum lorad_lora_module lm_head[] = {LORAD_LM_HEAD};
        if (lorad_gemm_small_supports(head)) {
            single_rows(d, c->n_layers, 1, lm_head, (float *const[]){d->logits}, d->hf, false, kept);
        } else {
            for (int i = 0; i < kept; i++)
                lorad_gemm_xwt(&d->gemm, d->logits + i * d->V, d->hf + i * D, head, 1, false);
            bool any = false;
            for (int i = 0; i < kept && !any; i++) any = d->order[i]->lora && d->order[i]->lora->A[c->n_layers][LORAD_LM_HEAD];
            if (any) {
                struct lora_job j = {d, d->logits, d->hf, c->n_layers, LORAD_LM_HEAD, D, d->V, 0, true};
                lorad_pool_run(d->pool, lora_thread, &j);
            }
        }
        dora_scale(d, c->n_layers, LORAD_LM_HEAD, d->logits, d->V, NULL, NULL, true);
    }
    for (int i = 0; i < kept; i++) memcpy(d->order[i]->logits, d->logits + i * d->V, sizeof(float) * (size_t)d->V);
    for (int i = 0; i < n_items; i++) items[i].cache->len += items[i].n;
    return 0;
}
