#include "tiny_model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

uint64_t tiny_rand(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}
double tiny_uniform(uint64_t *s) { return (double)(tiny_rand(s) >> 11) / 9007199254740992.0; }
double tiny_normal(uint64_t *s) {
    double u1 = tiny_uniform(s) + 1e-300, u2 = tiny_uniform(s);
    return sqrt(-2 * log(u1)) * cos(2 * M_PI * u2);
}

struct lorad_llama_config tiny_config(void) {
    struct lorad_llama_config c;
    lorad_llama_config_defaults(&c);
    c.dim = 36; c.hidden_dim = 52; c.n_layers = 2; c.n_heads = 4; c.n_kv_heads = 2; c.head_dim = 10;
    c.vocab_size = 97; c.max_seq_len = 64; c.norm_eps = 1e-5f;
    return c;
}

static struct lorad_tensor take(struct tiny_model *tm, size_t *off, int64_t rows, int64_t cols, double lo_scale,
                                double std, uint64_t *rng, bool round_bf16, bool as_bf16) {
    float *p = tm->f32 + *off;
    for (int64_t i = 0; i < rows * cols; i++) {
        float v = (float)(lo_scale + std * tiny_normal(rng));
        if (round_bf16) v = lorad_bf16_to_f32(lorad_f32_to_bf16(v));
        p[i] = v;
        if (tm->bf16) tm->bf16[*off + i] = lorad_f32_to_bf16(v);
    }
    struct lorad_tensor t = {p, LORAD_DTYPE_F32, rows, cols};
    if (as_bf16) {
        t.data = tm->bf16 + *off;
        t.dtype = LORAD_DTYPE_BF16;
    }
    *off += (size_t)(rows * cols);
    return t;
}

void tiny_model_init(struct tiny_model *tm, const struct lorad_llama_config *c, uint64_t seed, bool round_bf16,
                     bool bf16_matrices) {
    memset(tm, 0, sizeof *tm);
    int64_t d = c->dim, q = (int64_t)c->n_heads * c->head_dim, kv = (int64_t)c->n_kv_heads * c->head_dim,
            h = c->hidden_dim, V = c->vocab_size;
    size_t n = (size_t)(2 * V * d + d + c->n_layers * (2 * d + d * q * 2 + 2 * kv * d + q + 2 * kv + 3 * h * d));
    tm->n = n;
    tm->f32 = calloc(n, sizeof(float));
    if (bf16_matrices) tm->bf16 = calloc(n, sizeof(uint16_t));
    tm->w.layers = calloc((size_t)c->n_layers, sizeof(struct lorad_layer_weights));
    tm->w.cfg = *c;
    uint64_t rng = seed * 7919 + 17;
    size_t off = 0;
    bool b = bf16_matrices;
    tm->w.embed = take(tm, &off, V, d, 0, 1.0, &rng, round_bf16, b);
    for (int l = 0; l < c->n_layers; l++) {
        struct lorad_layer_weights *L = &tm->w.layers[l];
        L->attn_norm = take(tm, &off, 1, d, 1.0, 0.2, &rng, round_bf16, false);
        L->wq = take(tm, &off, q, d, 0, 1.2 / sqrt((double)d), &rng, round_bf16, b);
        L->wk = take(tm, &off, kv, d, 0, 1.2 / sqrt((double)d), &rng, round_bf16, b);
        L->wv = take(tm, &off, kv, d, 0, 1.0 / sqrt((double)d), &rng, round_bf16, b);
        L->wo = take(tm, &off, d, q, 0, 1.0 / sqrt((double)q), &rng, round_bf16, b);
        if (c->attention_bias) {
            L->bq = take(tm, &off, 1, q, 0, 0.1, &rng, round_bf16, false);
            L->bk = take(tm, &off, 1, kv, 0, 0.1, &rng, round_bf16, false);
            L->bv = take(tm, &off, 1, kv, 0, 0.1, &rng, round_bf16, false);
        }
        L->ffn_norm = take(tm, &off, 1, d, 1.0, 0.2, &rng, round_bf16, false);
        L->w_gate = take(tm, &off, h, d, 0, 1.0 / sqrt((double)d), &rng, round_bf16, b);
        L->w_up = take(tm, &off, h, d, 0, 1.0 / sqrt((double)d), &rng, round_bf16, b);
        L->w_down = take(tm, &off, d, h, 0, 1.0 / sqrt((double)h), &rng, round_bf16, b);
    }
    tm->w.final_norm = take(tm, &off, 1, d, 1.0, 0.2, &rng, round_bf16, false);
    if (c->tie_embeddings) tm->w.lm_head = tm->w.embed;
    else tm->w.lm_head = take(tm, &off, V, d, 0, 1.0 / sqrt((double)d), &rng, round_bf16, b);
}

void tiny_model_free(struct tiny_model *tm) {
    free(tm->f32);
    free(tm->bf16);
    free(tm->w.layers);
    memset(tm, 0, sizeof *tm);
}

void tiny_model_foreach(const struct tiny_model *tm, tiny_tensor_fn fn, void *user) {
    const struct lorad_llama_config *c = &tm->w.cfg;
    char name[128];
    fn(user, "model.embed_tokens.weight", &tm->w.embed);
    for (int l = 0; l < c->n_layers; l++) {
        const struct lorad_layer_weights *L = &tm->w.layers[l];
#define EMIT(field, suffix)                                               \
        snprintf(name, sizeof name, "model.layers.%d.%s", l, suffix);     \
        fn(user, name, &L->field);
        EMIT(attn_norm, "input_layernorm.weight");
        EMIT(wq, "self_attn.q_proj.weight");
        EMIT(wk, "self_attn.k_proj.weight");
        EMIT(wv, "self_attn.v_proj.weight");
        EMIT(wo, "self_attn.o_proj.weight");
        if (c->attention_bias) {
            EMIT(bq, "self_attn.q_proj.bias");
            EMIT(bk, "self_attn.k_proj.bias");
            EMIT(bv, "self_attn.v_proj.bias");
        }
        EMIT(ffn_norm, "post_attention_layernorm.weight");
        EMIT(w_gate, "mlp.gate_proj.weight");
        EMIT(w_up, "mlp.up_proj.weight");
        EMIT(w_down, "mlp.down_proj.weight");
#undef EMIT
    }
    fn(user, "model.norm.weight", &tm->w.final_norm);
    if (!c->tie_embeddings) fn(user, "lm_head.weight", &tm->w.lm_head);
}

void tiny_perturb_dora_magnitudes(struct lorad_model *m, double frac, uint64_t *state) {
    lorad_model_dora_reset_magnitudes(m);
    float *p = lorad_model_params(m, NULL);
    for (int i = 0; i < lorad_model_n_lora_tensors(m); i++) {
        const struct lorad_lora_tensor *t = lorad_model_lora_tensor(m, i);
        if (!t->is_magnitude) continue;
        for (int64_t j = 0; j < t->rows; j++) p[t->offset + (size_t)j] *= (float)(1.0 + frac * tiny_normal(state));
    }
}
