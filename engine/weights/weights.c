#include "weights.h"

#include <assert.h>
#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

int lorad_dtype_size(enum lorad_dtype dtype) {
    switch (dtype) {
    case LORAD_DTYPE_F32: return 4;
    case LORAD_DTYPE_BF16: return 2;
    case LORAD_DTYPE_F16: return 2;
    case LORAD_DTYPE_Q8_0: case LORAD_DTYPE_Q4_0: case LORAD_DTYPE_Q4_K: case LORAD_DTYPE_Q6_K: return 0;
    }
    return 0;
}

const char *lorad_dtype_name(enum lorad_dtype dtype) {
    switch (dtype) {
    case LORAD_DTYPE_F32: return "F32";
    case LORAD_DTYPE_BF16: return "BF16";
    case LORAD_DTYPE_F16: return "F16";
    case LORAD_DTYPE_Q8_0: return "Q8_0";
    case LORAD_DTYPE_Q4_0: return "Q4_0";
    case LORAD_DTYPE_Q4_K: return "Q4_K";
    case LORAD_DTYPE_Q6_K: return "Q6_K";
    }
    return "?";
}

int lorad_layer_tensor_specs(const struct lorad_llama_config *c,
                             struct lorad_layer_tensor_spec specs[LORAD_LAYER_MAX_TENSORS]) {
    int64_t q = (int64_t)c->n_heads * c->head_dim, kv = (int64_t)c->n_kv_heads * c->head_dim;
    int n = 0;
#define SPEC(field, suffix, R, C) \
    specs[n++] = (struct lorad_layer_tensor_spec){offsetof(struct lorad_layer_weights, field), suffix, R, C}
    SPEC(attn_norm, "input_layernorm.weight", 1, c->dim);
    SPEC(wq, "self_attn.q_proj.weight", q, c->dim);
    SPEC(wk, "self_attn.k_proj.weight", kv, c->dim);
    SPEC(wv, "self_attn.v_proj.weight", kv, c->dim);
    SPEC(wo, "self_attn.o_proj.weight", c->dim, q);
    if (c->attention_bias) {
        SPEC(bq, "self_attn.q_proj.bias", 1, q);
        SPEC(bk, "self_attn.k_proj.bias", 1, kv);
        SPEC(bv, "self_attn.v_proj.bias", 1, kv);
    }
    SPEC(ffn_norm, "post_attention_layernorm.weight", 1, c->dim);
    SPEC(w_gate, "mlp.gate_proj.weight", c->hidden_dim, c->dim);
    SPEC(w_up, "mlp.up_proj.weight", c->hidden_dim, c->dim);
    SPEC(w_down, "mlp.down_proj.weight", c->dim, c->hidden_dim);
#undef SPEC
    assert(n <= LORAD_LAYER_MAX_TENSORS);
    return n;
}

static int check_tensor(const struct lorad_tensor *t, const char *name, int64_t rows, int64_t cols,
                        struct lorad_error *err) {
    if (!t->data)
        return lorad_error_set(err, -EINVAL, name, "missing tensor %s, expected shape [%lld, %lld]", name,
                               (long long)rows, (long long)cols);
    if (t->rows != rows || t->cols != cols)
        return lorad_error_set(err, -EINVAL, name, "tensor %s has shape [%lld, %lld], expected [%lld, %lld]",
                               name, (long long)t->rows, (long long)t->cols, (long long)rows, (long long)cols);
    if (t->dtype == LORAD_DTYPE_F16)
        return lorad_error_set(err, -EINVAL, name, "tensor %s has dtype %s; the engine takes F32, BF16, Q8_0, Q4_0, Q4_K or Q6_K",
                               name, lorad_dtype_name(t->dtype));
    if (lorad_dtype_is_quantised(t->dtype) && t->cols % lorad_dtype_block_values(t->dtype) != 0)
        return lorad_error_set(err, -EINVAL, name, "tensor %s is %s with %lld columns, not a whole number of %lld-value blocks",
                               name, lorad_dtype_name(t->dtype), (long long)t->cols,
                               (long long)lorad_dtype_block_values(t->dtype));
    return 0;
}

int lorad_base_weights_validate(const struct lorad_base_weights *w, struct lorad_error *err) {
    const struct lorad_llama_config *c = &w->cfg;
    int r = lorad_llama_config_validate(c, err);
    if (r < 0) return r;
    if ((r = check_tensor(&w->embed, "model.embed_tokens.weight", c->vocab_size, c->dim, err)) < 0) return r;
    if ((r = check_tensor(&w->final_norm, "model.norm.weight", 1, c->dim, err)) < 0) return r;
    if ((r = check_tensor(&w->lm_head, "lm_head.weight", c->vocab_size, c->dim, err)) < 0) return r;
    if (!w->layers) return lorad_error_set(err, -EINVAL, "model.layers", "no decoder layers");
    struct lorad_layer_tensor_spec specs[LORAD_LAYER_MAX_TENSORS];
    int n = lorad_layer_tensor_specs(c, specs);
    for (int l = 0; l < c->n_layers; l++) {
        for (int i = 0; i < n; i++) {
            char name[128];
            snprintf(name, sizeof name, "model.layers.%d.%s", l, specs[i].hf_suffix);
            const struct lorad_tensor *t = lorad_layer_tensor((struct lorad_layer_weights *)&w->layers[l], &specs[i]);
            if ((r = check_tensor(t, name, specs[i].rows, specs[i].cols, err)) < 0) return r;
        }
    }
    return 0;
}

void lorad_base_weights_release(struct lorad_base_weights *w) {
    if (w->release) w->release(w->owner);
    memset(w, 0, sizeof *w);
}

uint16_t lorad_f32_to_bf16(float f) {
    union { float f; uint32_t u; } v = {.f = f};
    if (isnan(f)) return (uint16_t)((v.u >> 16) | 0x40); /* keep it a quiet NaN */
    uint32_t rounding = 0x7fff + ((v.u >> 16) & 1);
    return (uint16_t)((v.u + rounding) >> 16);
}

float lorad_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f, mant = h & 0x3ff, bits;
    if (exp == 0) {
        if (mant == 0) {
            bits = sign;
        } else { /* subnormal: normalise */
            exp = 127 - 15 + 1;
            while (!(mant & 0x400)) { mant <<= 1; exp--; }
            mant &= 0x3ff;
            bits = sign | (exp << 23) | (mant << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (mant << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
    }
    union { uint32_t u; float f; } v = {.u = bits};
    return v.f;
}

uint16_t lorad_f32_to_f16(float f) {
    union { float f; uint32_t u; } v = {.f = f};
    uint32_t sign = (v.u >> 16) & 0x8000;
    int32_t exp = (int32_t)((v.u >> 23) & 0xff) - 127 + 15;
    uint32_t mant = v.u & 0x7fffff;
    if (((v.u >> 23) & 0xff) == 0xff) return (uint16_t)(sign | 0x7c00 | (mant ? 0x200 : 0));
    if (exp >= 31) return (uint16_t)(sign | 0x7c00);
    if (exp <= 0) {
        if (exp < -10) return (uint16_t)sign;
        mant |= 0x800000;
        uint32_t shift = (uint32_t)(14 - exp);
        uint32_t half = mant >> shift;
        uint32_t rem = mant & ((1u << shift) - 1), mid = 1u << (shift - 1);
        if (rem > mid || (rem == mid && (half & 1))) half++;
        return (uint16_t)(sign | half);
    }
    uint32_t half = sign | ((uint32_t)exp << 10) | (mant >> 13);
    uint32_t rem = mant & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (half & 1))) half++;
    return (uint16_t)half;
}
