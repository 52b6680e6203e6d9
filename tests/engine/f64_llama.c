#include "f64_llama.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rng.h"

/* Test code: running out of memory here is a broken test machine, not a case to handle. */
static double *zeros(int64_t n) {
    double *p = calloc((size_t)(n > 0 ? n : 1), sizeof(double));
    if (!p) abort();
    return p;
}

static double at(const struct lorad_tensor *t, int64_t row, int64_t col) {
    int64_t i = row * t->cols + col;
    if (t->dtype == LORAD_DTYPE_BF16) {
        uint32_t bits = (uint32_t)((const uint16_t *)t->data)[i] << 16; /* bf16 is the top half of an f32 */
        float f;
        memcpy(&f, &bits, sizeof f);
        return f;
    }
    return ((const float *)t->data)[i];
}

static const char *const module_names[LORAD_N_LORA_MODULES] = {
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj",    "lm_head",
};

enum { PART_A, PART_B, PART_MAGNITUDE };

/* Layer (n_layers for lm_head), module and part (A, B or DoRA's magnitude) of a PEFT name, or -1. */
static int place(const char *name, int n_layers, int *ret_layer, int *ret_module, int *ret_part) {
    int layer = n_layers, used = 0;
    const char *rest = name;
    if (sscanf(name, "model.layers.%d.%n", &layer, &used) == 1 && used > 0) rest = name + used;
    else if (strncmp(name, "lm_head.", 8) != 0) return -1;
    for (int m = 0; m < LORAD_N_LORA_MODULES; m++) {
        size_t n = strlen(module_names[m]);
        if (strncmp(rest, module_names[m], n) != 0) continue;
        if (strcmp(rest + n, ".lora_A.weight") == 0) *ret_part = PART_A;
        else if (strcmp(rest + n, ".lora_B.weight") == 0) *ret_part = PART_B;
        else if (strcmp(rest + n, ".lora_magnitude_vector") == 0) *ret_part = PART_MAGNITUDE;
        else return -1;
        if ((m == LORAD_LM_HEAD) != (layer == n_layers) || layer < 0 || layer > n_layers) return -1;
        *ret_layer = layer;
        *ret_module = m;
        return 0;
    }
    return -1;
}

/* The frozen weight of module k in layer l (l == n_layers: the LM head). */
static const struct lorad_tensor *module_weight(const struct lorad_base_weights *w, int l, int k) {
    if (l == w->cfg.n_layers) return &w->lm_head;
    const struct lorad_layer_weights *L = &w->layers[l];
    const struct lorad_tensor *all[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down};
    return all[k];
}

int f64_llama_init(struct f64_llama *f, struct lorad_model *m, const struct lorad_base_weights *w,
                   const struct lorad_lora_config *lc, uint64_t seed) {
    memset(f, 0, sizeof *f);
    f->w = w;
    f->r = lc->r;
    f->scale = lc->use_rslora ? lc->alpha / sqrt((double)lc->r) : (double)lc->alpha / lc->r;
    f->dropout = lc->dropout;
    f->seed = seed;
    for (int l = 0; l <= LORAD_MAX_LAYERS; l++)
        for (int k = 0; k < LORAD_N_LORA_MODULES; k++) f->off_a[l][k] = f->off_b[l][k] = f->off_m[l][k] = -1;
    size_t n;
    const float *p = lorad_model_params(m, &n);
    f->params = malloc(sizeof(double) * (n ? n : 1));
    f->norms = calloc(n ? n : 1, sizeof(double));
    if (!f->params || !f->norms) {
        f64_llama_free(f);
        return -ENOMEM;
    }
    f->n_params = n;
    for (size_t i = 0; i < n; i++) f->params[i] = p[i];
    for (int i = 0; i < lorad_model_n_lora_tensors(m); i++) {
        const struct lorad_lora_tensor *t = lorad_model_lora_tensor(m, i);
        int layer, module, part;
        if (place(t->name, w->cfg.n_layers, &layer, &module, &part) < 0) {
            f64_llama_free(f);
            return -EINVAL;
        }
        int64_t(*off)[LORAD_N_LORA_MODULES] = part == PART_A ? f->off_a : part == PART_B ? f->off_b : f->off_m;
        off[layer][module] = (int64_t)t->offset;
    }
    /* DoRA's row norms ||W + scale B A|| at these parameters, held there: the engine treats them
     * as constants in backward (the paper's section 4.3), so the central differences of a loss
     * with them held are the derivative it computes */
    for (int l = 0; l <= w->cfg.n_layers; l++)
        for (int k = 0; k < LORAD_N_LORA_MODULES; k++) {
            if (f->off_m[l][k] < 0) continue;
            const struct lorad_tensor *W = module_weight(w, l, k);
            const double *A = f->params + f->off_a[l][k], *B = f->params + f->off_b[l][k];
            for (int64_t o = 0; o < W->rows; o++) {
                double ss = 0;
                for (int64_t j = 0; j < W->cols; j++) {
                    double ba = 0;
                    for (int q = 0; q < f->r; q++) ba += B[o * f->r + q] * A[q * W->cols + j];
                    double v = at(W, o, j) + f->scale * ba;
                    ss += v * v;
                }
                f->norms[f->off_m[l][k] + o] = sqrt(ss);
            }
        }
    return 0;
}

void f64_llama_free(struct f64_llama *f) {
    free(f->params);
    free(f->norms);
    f->params = NULL;
    f->norms = NULL;
}

/* ---------------------------------------------------------------- operations */

void f64_rmsnorm(double *out, const double *x, const double *w, double eps, int64_t N, int64_t C) {
    for (int64_t i = 0; i < N; i++) {
        double ss = 0;
        for (int64_t j = 0; j < C; j++) ss += x[i * C + j] * x[i * C + j];
        double inv = 1.0 / sqrt(ss / (double)C + eps);
        for (int64_t j = 0; j < C; j++) out[i * C + j] = x[i * C + j] * inv * w[j];
    }
}

/* transformers' default rope, and its "llama3" rule: wavelengths below
 * original_max / high_freq_factor keep their frequency, those above original_max / low_freq_factor
 * are divided by factor, and the band between interpolates smoothly. */
void f64_rope_inv_freq(double *inv_freq, const struct lorad_llama_config *cfg) {
    int hd = cfg->head_dim;
    const struct lorad_rope_scaling *s = &cfg->rope_scaling;
    for (int i = 0; i < hd / 2; i++) {
        double f = 1.0 / pow((double)cfg->rope_theta, (double)(2 * i) / hd);
        if (s->type == LORAD_ROPE_LLAMA3) {
            double old = s->original_max_position_embeddings, wavelen = 2 * M_PI / f;
            double low_wl = old / s->low_freq_factor, high_wl = old / s->high_freq_factor;
            if (wavelen > low_wl) {
                f = f / s->factor;
            } else if (wavelen >= high_wl) {
                double smooth = (old / wavelen - s->low_freq_factor) / (s->high_freq_factor - s->low_freq_factor);
                f = (1 - smooth) * f / s->factor + smooth * f;
            }
        }
        inv_freq[i] = f;
    }
}

/* rotate_half layout: the two halves of each head form the (cos, sin) pairs. */
void f64_rope(double *x, const int32_t *pos, const double *inv_freq, int64_t N, int n_heads, int head_dim) {
    int half = head_dim / 2;
    for (int64_t t = 0; t < N; t++)
        for (int h = 0; h < n_heads; h++) {
            double *v = x + (t * n_heads + h) * head_dim;
            for (int i = 0; i < half; i++) {
                double a = (double)pos[t] * inv_freq[i], c = cos(a), s = sin(a);
                double x1 = v[i], x2 = v[i + half];
                v[i] = x1 * c - x2 * s;
                v[i + half] = x2 * c + x1 * s;
            }
        }
}

void f64_attention(double *out, const double *q, const double *k, const double *v, const int32_t *seg, int B, int T,
                   int H, int KV, int hd) {
    double *p = zeros(T), scale = 1.0 / sqrt((double)hd);
    int group = H / KV;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int h = 0; h < H; h++) {
                const double *qv = q + ((int64_t)(b * T + t) * H + h) * hd;
                int kvh = h / group, start = seg ? seg[b * T + t] : 0;
                double mx = -INFINITY, sum = 0;
                for (int j = start; j <= t; j++) {
                    const double *kv = k + ((int64_t)(b * T + j) * KV + kvh) * hd;
                    double s = 0;
                    for (int e = 0; e < hd; e++) s += qv[e] * kv[e];
                    p[j] = s * scale;
                    mx = fmax(mx, p[j]);
                }
                for (int j = start; j <= t; j++) sum += (p[j] = exp(p[j] - mx));
                double *o = out + ((int64_t)(b * T + t) * H + h) * hd;
                for (int e = 0; e < hd; e++) o[e] = 0;
                for (int j = start; j <= t; j++) {
                    const double *vv = v + ((int64_t)(b * T + j) * KV + kvh) * hd;
                    for (int e = 0; e < hd; e++) o[e] += p[j] / sum * vv[e];
                }
            }
    free(p);
}

double f64_silu(double x) { return x / (1.0 + exp(-x)); }

double f64_crossentropy_row(const double *logits, int32_t label, int64_t V) {
    if (label == -100) return 0;
    double mx = -INFINITY, sum = 0;
    for (int64_t j = 0; j < V; j++) mx = fmax(mx, logits[j]);
    for (int64_t j = 0; j < V; j++) sum += exp(logits[j] - mx);
    return mx + log(sum) - logits[label];
}

/* ---------------------------------------------------------------- the model */

/* y (N, out) = x (N, in) W^T (+ bias) + scale * (drop(x) A^T) B^T for module (layer, module), N
 * the tokens of batch b, whose rows (from b->row0 in the whole batch) and positions key the masks. */
static void linear(const struct f64_llama *f, double *y, const double *x, const struct lorad_tensor *W,
                   const struct lorad_tensor *bias, int layer, int module, const struct lorad_batch *b) {
    int64_t out = W->rows, in = W->cols, N = (int64_t)b->B * b->T;
    for (int64_t i = 0; i < N; i++)
        for (int64_t o = 0; o < out; o++) {
            double s = bias ? at(bias, 0, o) : 0;
            for (int64_t j = 0; j < in; j++) s += x[i * in + j] * at(W, o, j);
            y[i * out + o] = s;
        }
    int64_t oa = f->off_a[layer][module], ob = f->off_b[layer][module], om = f->off_m[layer][module];
    if (oa < 0) return;
    const double *A = f->params + oa, *Bm = f->params + ob;
    double *u = zeros(f->r), *xd = zeros(in);
    double keep = 1.0 / (1.0 - (double)f->dropout);
    for (int64_t i = 0; i < N; i++) {
        for (int64_t j = 0; j < in; j++) {
            xd[j] = x[i * in + j];
            if (f->dropout > 0) {
                /* docs/engine.md: the element is (row of the whole batch, position, column) */
                uint64_t row = (uint64_t)(b->row0 + i / b->T), t = (uint64_t)(i % b->T);
                uint64_t elem = (row * LORAD_MAX_SEQ_LEN + t) * (uint64_t)in + (uint64_t)j;
                float draw = lorad_rng_uniform(
                    lorad_rng_u64(f->seed, f->counter, (uint64_t)layer + 1, (uint64_t)module, elem));
                xd[j] = draw >= f->dropout ? xd[j] * keep : 0.0;
            }
        }
        for (int k = 0; k < f->r; k++) {
            double s = 0;
            for (int64_t j = 0; j < in; j++) s += xd[j] * A[k * in + j];
            u[k] = s;
        }
        for (int64_t o = 0; o < out; o++) {
            double s = 0;
            for (int k = 0; k < f->r; k++) s += u[k] * Bm[o * f->r + k];
            if (om < 0) {
                y[i * out + o] += f->scale * s;
                continue;
            }
            /* DoRA as PEFT: + (m/n - 1) W drop(x) + (m/n) scale B A drop(x) */
            double wd = 0, ms = f->params[om + o] / f->norms[om + o];
            for (int64_t j = 0; j < in; j++) wd += xd[j] * at(W, o, j);
            y[i * out + o] += (ms - 1) * wd + ms * f->scale * s;
        }
    }
    free(u);
    free(xd);
}

static double *vec_of(const struct lorad_tensor *t) {
    double *v = zeros(t->cols);
    for (int64_t j = 0; j < t->cols; j++) v[j] = at(t, 0, j);
    return v;
}

double f64_llama_loss_sum(const struct f64_llama *f, const struct lorad_batch *b) {
    const struct lorad_llama_config *c = &f->w->cfg;
    int64_t N = (int64_t)b->B * b->T, d = c->dim, hid = c->hidden_dim, V = c->vocab_size;
    int64_t qd = (int64_t)c->n_heads * c->head_dim, kvd = (int64_t)c->n_kv_heads * c->head_dim;
    double *x = zeros(N * d), *h = zeros(N * d);
    double *q = zeros(N * qd), *att = zeros(N * qd);
    double *k = zeros(N * kvd), *v = zeros(N * kvd);
    double *g = zeros(N * hid), *up = zeros(N * hid);
    double *o = zeros(N * d), *logits = zeros(N * V);
    double *inv_freq = zeros(c->head_dim / 2 + 1);
    int32_t *pos = calloc((size_t)N, sizeof(int32_t));
    if (!pos) abort();
    for (int64_t i = 0; i < N; i++) pos[i] = b->positions ? b->positions[i] : (int32_t)(i % b->T);
    f64_rope_inv_freq(inv_freq, c);
    for (int64_t i = 0; i < N; i++)
        for (int64_t j = 0; j < d; j++) x[i * d + j] = at(&f->w->embed, b->tokens[i], j);
    for (int l = 0; l < c->n_layers; l++) {
        const struct lorad_layer_weights *L = &f->w->layers[l];
        bool bias = c->attention_bias;
        double *wn = vec_of(&L->attn_norm);
        f64_rmsnorm(h, x, wn, c->norm_eps, N, d);
        free(wn);
        linear(f, q, h, &L->wq, bias ? &L->bq : NULL, l, LORAD_Q_PROJ, b);
        linear(f, k, h, &L->wk, bias ? &L->bk : NULL, l, LORAD_K_PROJ, b);
        linear(f, v, h, &L->wv, bias ? &L->bv : NULL, l, LORAD_V_PROJ, b);
        f64_rope(q, pos, inv_freq, N, c->n_heads, c->head_dim);
        f64_rope(k, pos, inv_freq, N, c->n_kv_heads, c->head_dim);
        f64_attention(att, q, k, v, b->seg_start, b->B, b->T, c->n_heads, c->n_kv_heads, c->head_dim);
        linear(f, o, att, &L->wo, NULL, l, LORAD_O_PROJ, b);
        for (int64_t i = 0; i < N * d; i++) x[i] += o[i];
        wn = vec_of(&L->ffn_norm);
        f64_rmsnorm(h, x, wn, c->norm_eps, N, d);
        free(wn);
        linear(f, g, h, &L->w_gate, NULL, l, LORAD_GATE_PROJ, b);
        linear(f, up, h, &L->w_up, NULL, l, LORAD_UP_PROJ, b);
        for (int64_t i = 0; i < N * hid; i++) g[i] = f64_silu(g[i]) * up[i];
        linear(f, o, g, &L->w_down, NULL, l, LORAD_DOWN_PROJ, b);
        for (int64_t i = 0; i < N * d; i++) x[i] += o[i];
    }
    double *wn = vec_of(&f->w->final_norm);
    f64_rmsnorm(h, x, wn, c->norm_eps, N, d);
    free(wn);
    linear(f, logits, h, &f->w->lm_head, NULL, c->n_layers, LORAD_LM_HEAD, b);
    double loss = 0;
    for (int64_t i = 0; i < N; i++) loss += f64_crossentropy_row(logits + i * V, b->labels[i], V);
    free(x); free(h); free(q); free(att); free(k); free(v); free(g); free(up); free(o); free(logits);
    free(inv_freq); free(pos);
    return loss;
}

/* ---------------------------------------------------------------- differences and bounds */

double f64_central_difference(double (*f)(void *ctx, const double *x), void *ctx, double *x, int64_t i, double h,
                              double *ret_err) {
    double keep = x[i], fx[4];
    const double steps[4] = {h, -h, 2 * h, -2 * h};
    for (int s = 0; s < 4; s++) {
        x[i] = keep + steps[s];
        fx[s] = f(ctx, x);
    }
    x[i] = keep;
    /* (x + h) - x is not exactly h in floating point: divide by the steps actually taken */
    double d1 = (fx[0] - fx[1]) / ((keep + h) - (keep - h));
    double d2 = (fx[2] - fx[3]) / ((keep + 2 * h) - (keep - 2 * h));
    *ret_err = fabs(d1 - d2);
    return (4 * d1 - d2) / 3;
}

/* The float32 error bound.
 *
 * Every float32 operation rounds with relative error at most u = 2^-24. A stage that sums n
 * products (a matrix product's dot product, a norm's sum of squares, a softmax's sum) has an error
 * of at most gamma_n = n u / (1 - n u) times the sum of the terms' magnitudes in the worst case
 * (Higham, "Accuracy and Stability of Numerical Algorithms", 2nd ed., sec. 3.1). The worst case
 * needs every rounding to push the same way; modelling the roundings as independent, mean-zero
 * random errors, the error is at most lambda sqrt(n) u times that sum with probability at least
 * 1 - 2n exp(-lambda^2 / 2) (Higham and Mary, "A New Approach to Probabilistic Rounding Error
 * Analysis", SIAM J. Sci. Comput. 41(5), 2019). We take lambda = 6: a check then fails by bad luck
 * with probability below 1e-4 even for n = 1500. For terms of mixed sign the sum of magnitudes
 * exceeds the magnitude of the result by about sqrt(n), so a stage is accurate to
 * lambda n u of the scale of its output. The engine's exp approximation (relative error 2e-7,
 * engine/kernels/vec_math.h) is below that for every n >= 1. To first order, the errors introduced along
 * a chain add, so a result at the end of `stages` stages is accurate to stages * lambda * n * u
 * relative to its scale. A wrong or missing term of a gradient moves it by O(1) of its scale,
 * hundreds of times the bound at the sizes the tests use. */
double f32_chain_error_bound(int stages, int64_t n) {
    const double u = 0x1p-24, lambda = 6;
    return stages * lambda * (double)(n > 1 ? n : 1) * u;
}
