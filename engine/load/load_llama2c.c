#include "load_llama2c.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "load_common.h"
#include "load_quant.h"

static int32_t rd_i32(const uint8_t *p) {
    return (int32_t)((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24);
}

/* Number of f32 values after the header. Every factor is bounded by the config limits, so the
 * products fit comfortably in 64 bits. */
static uint64_t n_floats(const struct lorad_llama_config *c) {
    uint64_t d = (uint64_t)c->dim, L = (uint64_t)c->n_layers, f = (uint64_t)c->hidden_dim, v = (uint64_t)c->vocab_size;
    uint64_t q = (uint64_t)c->n_heads * (uint64_t)c->head_dim, kv = (uint64_t)c->n_kv_heads * (uint64_t)c->head_dim;
    uint64_t n = v * d + L * (d + d * q + 2 * d * kv + q * d + d + 3 * d * f) + d;
    n += (uint64_t)c->max_seq_len * (uint64_t)c->head_dim; /* freq_cis_real + freq_cis_imag */
    if (!c->tie_embeddings) n += v * d;
    return n;
}

int lorad_llama2c_parse_header(const uint8_t *header, size_t header_len, uint64_t file_size, const char *source,
                               struct lorad_llama_config *ret_cfg, struct lorad_error *err) {
    if (header_len < LORAD_LLAMA2C_HEADER_BYTES)
        return lorad_error_set(err, -EINVAL, "model", "%s: too short for a llama2.c header", source);
    int32_t h[7];
    for (int i = 0; i < 7; i++) h[i] = rd_i32(header + 4 * i);
    struct lorad_llama_config c;
    lorad_llama_config_defaults(&c);
    c.dim = h[0];
    c.hidden_dim = h[1];
    c.n_layers = h[2];
    c.n_heads = h[3];
    c.n_kv_heads = h[4];
    c.tie_embeddings = h[5] > 0;
    c.vocab_size = h[5] == INT32_MIN ? 0 : (h[5] < 0 ? -h[5] : h[5]);
    c.max_seq_len = h[6];
    c.norm_eps = 1e-5f;
    c.rope_theta = 10000.0f;
    c.head_dim = c.n_heads > 0 ? c.dim / c.n_heads : 0;
    struct lorad_error verr = {0};
    int r = lorad_llama_config_validate(&c, &verr);
    if (r < 0) return lorad_error_set(err, r, verr.param, "%s: bad llama2.c header: %s", source, verr.message);
    if (c.dim % c.n_heads)
        return lorad_error_set(err, -EINVAL, "model", "%s: bad llama2.c header: dim %d is not a multiple of n_heads %d",
                               source, c.dim, c.n_heads);
    uint64_t want = LORAD_LLAMA2C_HEADER_BYTES + 4 * n_floats(&c);
    if (file_size != want)
        return lorad_error_set(err, -EINVAL, "model", "%s: llama2.c header implies %llu bytes but the file has %llu", source,
                               (unsigned long long)want, (unsigned long long)file_size);
    *ret_cfg = c;
    return 0;
}

static void unmap_free(void *p) {
    lorad_unmap(p);
    free(p);
}

int lorad_load_llama2c(const char *path, enum lorad_load_mode mode, struct lorad_base_weights *ret_w,
                       struct lorad_error *err) {
    struct lorad_mapping *m = calloc(1, sizeof *m);
    if (!m) return lorad_error_set(err, -ENOMEM, "model", "out of memory");
    int r = lorad_map_file(path, m, err);
    struct lorad_base_weights w = {0};
    if (r == 0) r = lorad_llama2c_parse_header(m->data, m->size, m->size, path, &w.cfg, err);
    if (r < 0) {
        lorad_unmap(m);
        free(m);
        return r;
    }
    const struct lorad_llama_config *c = &w.cfg;
    struct lorad_load_owner *o = lorad_load_owner_new(c->n_layers, mode);
    if (!o || lorad_load_owner_attach(o, unmap_free, m) < 0) {
        if (!o) unmap_free(m);
        lorad_load_owner_release(o);
        return lorad_error_set(err, -ENOMEM, "model", "out of memory");
    }
    lorad_load_owner_install(o, &w);
    int64_t d = c->dim, f = c->hidden_dim, v = c->vocab_size, L = c->n_layers;
    int64_t q = (int64_t)c->n_heads * c->head_dim, kv = (int64_t)c->n_kv_heads * c->head_dim;
    const float *p = (const float *)(m->data + LORAD_LLAMA2C_HEADER_BYTES); /* 4-aligned: page + 28 */
    /* Each stacked tensor: (layer l, rows, cols) at base + l*rows*cols. */
#define STACKED(field, R, C, HD)                                                               \
    for (int64_t l = 0; l < L && r == 0; l++)                                                  \
        r = lorad_load_import(o, &w.layers[l].field, LORAD_SRC_F32, p + l * (R) * (C), R, C, HD); \
    p += L * (R) * (C);
    r = lorad_load_import(o, &w.embed, LORAD_SRC_F32, p, v, d, 0);
    p += v * d;
    STACKED(attn_norm, 1, d, 0);
    STACKED(wq, q, d, c->head_dim);
    STACKED(wk, kv, d, c->head_dim);
    STACKED(wv, kv, d, 0);
    STACKED(wo, d, q, 0);
    STACKED(ffn_norm, 1, d, 0);
    STACKED(w_gate, f, d, 0);
    STACKED(w_down, d, f, 0);
    STACKED(w_up, f, d, 0);
#undef STACKED
    if (r == 0) r = lorad_load_import(o, &w.final_norm, LORAD_SRC_F32, p, 1, d, 0);
    p += d;
    p += (int64_t)c->max_seq_len * c->head_dim; /* freq_cis_real, freq_cis_imag */
    if (r == 0) {
        if (c->tie_embeddings) w.lm_head = w.embed;
        else r = lorad_load_import(o, &w.lm_head, LORAD_SRC_F32, p, v, d, 0);
    }
    if (r < 0) r = lorad_error_set(err, r, "model", "out of memory loading %s", path);
    if (r == 0) r = lorad_base_weights_validate(&w, err);
    if (r < 0) {
        lorad_base_weights_release(&w);
        return r;
    }
    *ret_w = w;
    return 0;
}
