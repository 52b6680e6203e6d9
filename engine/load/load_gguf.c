#include "load_gguf.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gguf.h"
#include "load_common.h"
#include "load_quant.h"

static void close_gguf(void *g) { lorad_gguf_close(g); }

static int get_cfg_int(const struct lorad_gguf *g, const char *key, int required, int64_t hi, int *out,
                       struct lorad_error *err) {
    int64_t v;
    int r = lorad_gguf_get_int(g, key, 1, hi, &v, err);
    if (r == -ENOENT) return required ? lorad_error_set(err, -EINVAL, key, "%s: missing GGUF key %s", g->path, key) : 0;
    if (r < 0) return r;
    *out = (int)v;
    return 0;
}

static int read_config(const struct lorad_gguf *g, struct lorad_llama_config *c, struct lorad_error *err) {
    const char *arch;
    uint64_t len;
    int r = lorad_gguf_get_string(g, "general.architecture", &arch, &len, err);
    if (r == -ENOENT) return lorad_error_set(err, -EINVAL, "general.architecture", "%s: missing general.architecture", g->path);
    if (r < 0) return r;
    if (len != 5 || memcmp(arch, "llama", 5) != 0)
        return lorad_error_set(err, -EINVAL, "general.architecture", "%s: architecture \"%.*s\" is not supported (llama)",
                               g->path, (int)(len > 64 ? 64 : len), arch);
    lorad_llama_config_defaults(c);
    c->norm_eps = 1e-5f;
    c->bos_id = c->eos_id = -1;
    if ((r = get_cfg_int(g, "llama.embedding_length", 1, LORAD_MAX_DIM, &c->dim, err)) < 0) return r;
    if ((r = get_cfg_int(g, "llama.feed_forward_length", 1, LORAD_MAX_HIDDEN_DIM, &c->hidden_dim, err)) < 0) return r;
    if ((r = get_cfg_int(g, "llama.block_count", 1, LORAD_MAX_LAYERS, &c->n_layers, err)) < 0) return r;
    if ((r = get_cfg_int(g, "llama.attention.head_count", 1, LORAD_MAX_HEADS, &c->n_heads, err)) < 0) return r;
    c->n_kv_heads = c->n_heads;
    if ((r = get_cfg_int(g, "llama.attention.head_count_kv", 0, LORAD_MAX_HEADS, &c->n_kv_heads, err)) < 0) return r;
    c->max_seq_len = 2048;
    if ((r = get_cfg_int(g, "llama.context_length", 0, LORAD_MAX_SEQ_LEN, &c->max_seq_len, err)) < 0) return r;
    c->head_dim = c->dim / c->n_heads;
    if ((r = get_cfg_int(g, "llama.attention.key_length", 0, LORAD_MAX_HEAD_DIM, &c->head_dim, err)) < 0) return r;
    int v_len = c->head_dim, rot = c->head_dim;
    if ((r = get_cfg_int(g, "llama.attention.value_length", 0, LORAD_MAX_HEAD_DIM, &v_len, err)) < 0) return r;
    if ((r = get_cfg_int(g, "llama.rope.dimension_count", 0, LORAD_MAX_HEAD_DIM, &rot, err)) < 0) return r;
    if (v_len != c->head_dim)
        return lorad_error_set(err, -EINVAL, "llama.attention.value_length", "%s: value_length %d != key_length %d is not supported",
                               g->path, v_len, c->head_dim);
    if (rot != c->head_dim)
        return lorad_error_set(err, -EINVAL, "llama.rope.dimension_count", "%s: partial RoPE (%d of %d dims) is not supported",
                               g->path, rot, c->head_dim);
    double f;
    if ((r = lorad_gguf_get_float(g, "llama.attention.layer_norm_rms_epsilon", &f, err)) == 0) c->norm_eps = (float)f;
    else if (r != -ENOENT) return r;
    if ((r = lorad_gguf_get_float(g, "llama.rope.freq_base", &f, err)) == 0) c->rope_theta = (float)f;
    else if (r != -ENOENT) return r;
    if (lorad_gguf_find_tensor(g, "rope_freqs.weight"))
        return lorad_error_set(err, -EINVAL, "rope_freqs.weight",
                               "%s: per-frequency RoPE factors (rope_freqs.weight, Llama 3.1 scaling) are not supported yet", g->path);
    const struct lorad_gguf_tensor *emb = lorad_gguf_find_tensor(g, "token_embd.weight");
    c->vocab_size = emb && emb->n_dims == 2 && emb->ne[1] <= LORAD_MAX_VOCAB ? (int)emb->ne[1] : 0;
    if ((r = get_cfg_int(g, "llama.vocab_size", 0, LORAD_MAX_VOCAB, &c->vocab_size, err)) < 0) return r;
    c->tie_embeddings = lorad_gguf_find_tensor(g, "output.weight") == NULL;
    return 0;
}

static enum lorad_src_type src_type(uint32_t t, int *ok) {
    *ok = 1;
    switch (t) {
    case LORAD_GGML_F32: return LORAD_SRC_F32;
    case LORAD_GGML_F16: return LORAD_SRC_F16;
    case LORAD_GGML_BF16: return LORAD_SRC_BF16;
    case LORAD_GGML_Q8_0: return LORAD_SRC_Q8_0;
    case LORAD_GGML_Q4_0: return LORAD_SRC_Q4_0;
    case LORAD_GGML_Q4_K: return LORAD_SRC_Q4_K;
    case LORAD_GGML_Q6_K: return LORAD_SRC_Q6_K;
    }
    *ok = 0;
    return LORAD_SRC_F32;
}

/* GGUF dims are innermost first: a (rows, cols) matrix is ne = [cols, rows], a vector ne = [cols]. */
static int load_tensor(const struct lorad_gguf *g, struct lorad_load_owner *o, const char *name, int64_t rows,
                       int64_t cols, int rope_head_dim, struct lorad_tensor *dst, struct lorad_error *err) {
    const struct lorad_gguf_tensor *t = lorad_gguf_find_tensor(g, name);
    if (!t)
        return lorad_error_set(err, -EINVAL, name, "%s: missing tensor %s, expected ne [%lld, %lld]", g->path, name,
                               (long long)cols, (long long)rows);
    int shape_ok = rows == 1 ? (t->n_dims == 1 && t->ne[0] == (uint64_t)cols)
                             : (t->n_dims == 2 && t->ne[0] == (uint64_t)cols && t->ne[1] == (uint64_t)rows);
    if (!shape_ok)
        return lorad_error_set(err, -EINVAL, name, "%s: tensor %s has ne [%llu, %llu, ...] (%u dims), expected [%lld, %lld]",
                               g->path, name, (unsigned long long)t->ne[0], (unsigned long long)t->ne[1], t->n_dims,
                               (long long)cols, (long long)rows);
    int ok;
    enum lorad_src_type type = src_type(t->type, &ok);
    if (!ok)
        return lorad_error_set(err, -EINVAL, name, "%s: tensor %s has type %s; supported are F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q6_K",
                               g->path, name, lorad_ggml_type_name(t->type));
    int r = lorad_load_import(o, dst, type, t->data, rows, cols, rope_head_dim);
    return r < 0 ? lorad_error_set(err, r, "model", "out of memory loading %s", name) : 0;
}

static int load_weights(const struct lorad_gguf *g, struct lorad_load_owner *o, struct lorad_base_weights *w,
                        struct lorad_error *err) {
    const struct lorad_llama_config *c = &w->cfg;
    int64_t q = (int64_t)c->n_heads * c->head_dim, kv = (int64_t)c->n_kv_heads * c->head_dim;
    int r;
    if ((r = load_tensor(g, o, "token_embd.weight", c->vocab_size, c->dim, 0, &w->embed, err)) < 0) return r;
    if ((r = load_tensor(g, o, "output_norm.weight", 1, c->dim, 0, &w->final_norm, err)) < 0) return r;
    if (c->tie_embeddings) w->lm_head = w->embed;
    else if ((r = load_tensor(g, o, "output.weight", c->vocab_size, c->dim, 0, &w->lm_head, err)) < 0) return r;
    for (int l = 0; l < c->n_layers; l++) {
        struct lorad_layer_weights *L = &w->layers[l];
        char name[96];
#define LOAD(field, suffix, R, C, HD)                                              \
        snprintf(name, sizeof name, "blk.%d.%s", l, suffix);                       \
        if ((r = load_tensor(g, o, name, R, C, HD, &L->field, err)) < 0) return r;
        LOAD(attn_norm, "attn_norm.weight", 1, c->dim, 0);
        LOAD(wq, "attn_q.weight", q, c->dim, c->head_dim);
        LOAD(wk, "attn_k.weight", kv, c->dim, c->head_dim);
        LOAD(wv, "attn_v.weight", kv, c->dim, 0);
        LOAD(wo, "attn_output.weight", c->dim, q, 0);
        LOAD(ffn_norm, "ffn_norm.weight", 1, c->dim, 0);
        LOAD(w_gate, "ffn_gate.weight", c->hidden_dim, c->dim, 0);
        LOAD(w_up, "ffn_up.weight", c->hidden_dim, c->dim, 0);
        LOAD(w_down, "ffn_down.weight", c->dim, c->hidden_dim, 0);
#undef LOAD
    }
    return 0;
}

/* ---- tokenizer.ggml.* ---- */

static uint64_t rd_u64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v |= (uint64_t)p[i] << (8 * i);
    return v;
}

/* Copies a GGUF string into a NUL-terminated owned string; NULL if absent. */
static int owned_string(const struct lorad_gguf *g, struct lorad_load_owner *o, const char *key, const char **ret,
                        struct lorad_error *err) {
    const char *s;
    uint64_t len;
    int r = lorad_gguf_get_string(g, key, &s, &len, err);
    if (r == -ENOENT) return 0;
    if (r < 0) return r;
    char *copy = lorad_load_owner_alloc(o, (size_t)len + 1);
    if (!copy) return lorad_error_set(err, -ENOMEM, "model", "out of memory");
    memcpy(copy, s, (size_t)len);
    copy[len] = '\0';
    *ret = copy;
    return 0;
}

/* A string array as NUL-terminated owned strings. Sizes were bounds-checked by the parser. */
static int string_array(const struct lorad_gguf *g, struct lorad_load_owner *o, const char *key, int max_n,
                        const char *const **ret, int *ret_n, struct lorad_error *err) {
    const struct lorad_gguf_kv *kv = lorad_gguf_find_kv(g, key);
    if (!kv) return 0;
    if (kv->type != LORAD_GGUF_ARRAY || kv->elem_type != LORAD_GGUF_STRING)
        return lorad_error_set(err, -EINVAL, key, "%s: GGUF key %s must be an array of strings", g->path, key);
    if (kv->n > (uint64_t)max_n)
        return lorad_error_set(err, -EINVAL, key, "%s: %s has %llu entries (limit %d)", g->path, key,
                               (unsigned long long)kv->n, max_n);
    uint64_t total = 0;
    const uint8_t *p = kv->data;
    for (uint64_t i = 0; i < kv->n; i++) {
        uint64_t len = rd_u64(p);
        total += len + 1;
        p += 8 + len;
    }
    char **strs = lorad_load_owner_alloc(o, (size_t)kv->n * sizeof *strs);
    char *arena = lorad_load_owner_alloc(o, (size_t)total);
    if (!strs || !arena) return lorad_error_set(err, -ENOMEM, "model", "out of memory");
    p = kv->data;
    for (uint64_t i = 0; i < kv->n; i++) {
        uint64_t len = rd_u64(p);
        memcpy(arena, p + 8, (size_t)len);
        arena[len] = '\0';
        strs[i] = arena;
        arena += len + 1;
        p += 8 + len;
    }
    *ret = (const char *const *)strs;
    *ret_n = (int)kv->n;
    return 0;
}

/* A numeric array of exactly n entries of elem_type (4-byte elements), copied (the mapping may
 * not be aligned for them). */
static int numeric_array(const struct lorad_gguf *g, struct lorad_load_owner *o, const char *key, uint32_t t1,
                         uint32_t t2, int n, void **ret, struct lorad_error *err) {
    const struct lorad_gguf_kv *kv = lorad_gguf_find_kv(g, key);
    if (!kv) return 0;
    if (kv->type != LORAD_GGUF_ARRAY || (kv->elem_type != t1 && kv->elem_type != t2))
        return lorad_error_set(err, -EINVAL, key, "%s: GGUF key %s has the wrong type", g->path, key);
    if (kv->n != (uint64_t)n)
        return lorad_error_set(err, -EINVAL, key, "%s: %s has %llu entries but tokenizer.ggml.tokens has %d", g->path,
                               key, (unsigned long long)kv->n, n);
    void *buf = lorad_load_owner_alloc(o, (size_t)n * 4);
    if (!buf) return lorad_error_set(err, -ENOMEM, "model", "out of memory");
    memcpy(buf, kv->data, (size_t)n * 4); /* little-endian file, little-endian host */
    *ret = buf;
    return 0;
}

static int token_id(const struct lorad_gguf *g, const char *key, int n_tokens, int *out, struct lorad_error *err) {
    int64_t v;
    int r = lorad_gguf_get_int(g, key, INT64_MIN, INT64_MAX, &v, err);
    if (r == -ENOENT) return 0;
    if (r < 0) return r;
    if (v < 0 || v >= n_tokens)
        return lorad_error_set(err, -EINVAL, key, "%s: %s = %lld is outside the vocabulary of %d tokens", g->path, key,
                               (long long)v, n_tokens);
    *out = (int)v;
    return 0;
}

static int flag(const struct lorad_gguf *g, const char *key, int *out, struct lorad_error *err) {
    bool b;
    int r = lorad_gguf_get_bool(g, key, &b, err);
    if (r == 0) *out = b;
    return r == -ENOENT ? 0 : r;
}

static int read_vocab(const struct lorad_gguf *g, struct lorad_load_owner *o, struct lorad_vocab_arrays *v,
                      struct lorad_error *err) {
    *v = (struct lorad_vocab_arrays){.bos_id = -1, .eos_id = -1, .unk_id = -1, .pad_id = -1, .add_bos = -1, .add_eos = -1};
    int r;
    if ((r = owned_string(g, o, "tokenizer.ggml.model", &v->model, err)) < 0) return r;
    if ((r = owned_string(g, o, "tokenizer.ggml.pre", &v->pre, err)) < 0) return r;
    if ((r = string_array(g, o, "tokenizer.ggml.tokens", LORAD_MAX_VOCAB, &v->tokens, &v->n_tokens, err)) < 0) return r;
    if ((r = string_array(g, o, "tokenizer.ggml.merges", 1 << 24, &v->merges, &v->n_merges, err)) < 0) return r;
    void *p = NULL;
    if ((r = numeric_array(g, o, "tokenizer.ggml.scores", LORAD_GGUF_F32, LORAD_GGUF_F32, v->n_tokens, &p, err)) < 0) return r;
    v->scores = p;
    p = NULL;
    if ((r = numeric_array(g, o, "tokenizer.ggml.token_type", LORAD_GGUF_I32, LORAD_GGUF_U32, v->n_tokens, &p, err)) < 0)
        return r;
    v->token_types = p;
    if ((r = token_id(g, "tokenizer.ggml.bos_token_id", v->n_tokens, &v->bos_id, err)) < 0) return r;
    if ((r = token_id(g, "tokenizer.ggml.eos_token_id", v->n_tokens, &v->eos_id, err)) < 0) return r;
    if ((r = token_id(g, "tokenizer.ggml.unknown_token_id", v->n_tokens, &v->unk_id, err)) < 0) return r;
    if ((r = token_id(g, "tokenizer.ggml.padding_token_id", v->n_tokens, &v->pad_id, err)) < 0) return r;
    if ((r = flag(g, "tokenizer.ggml.add_bos_token", &v->add_bos, err)) < 0) return r;
    return flag(g, "tokenizer.ggml.add_eos_token", &v->add_eos, err);
}

int lorad_load_gguf(const char *path, enum lorad_load_mode mode, struct lorad_base_weights *ret_w,
                    struct lorad_vocab_arrays *ret_vocab, struct lorad_error *err) {
    struct lorad_gguf *g;
    int r = lorad_gguf_open(path, &g, err);
    if (r < 0) return r;
    struct lorad_base_weights w = {0};
    if ((r = read_config(g, &w.cfg, err)) < 0) {
        lorad_gguf_close(g);
        return r;
    }
    struct lorad_load_owner *o = lorad_load_owner_new(w.cfg.n_layers, mode);
    if (!o || lorad_load_owner_attach(o, close_gguf, g) < 0) {
        if (!o) lorad_gguf_close(g);
        lorad_load_owner_release(o);
        return lorad_error_set(err, -ENOMEM, "model", "out of memory");
    }
    lorad_load_owner_install(o, &w);
    struct lorad_vocab_arrays vocab;
    r = read_vocab(g, o, &vocab, err);
    if (r == 0) {
        if (vocab.bos_id >= 0) w.cfg.bos_id = vocab.bos_id;
        if (vocab.eos_id >= 0) w.cfg.eos_id = vocab.eos_id;
        if (vocab.n_tokens > 0 && vocab.n_tokens != w.cfg.vocab_size)
            r = lorad_error_set(err, -EINVAL, "tokenizer.ggml.tokens", "%s: %d tokens but the model has a vocabulary of %d",
                                path, vocab.n_tokens, w.cfg.vocab_size);
    }
    if (r == 0) {
        struct lorad_error verr = {0};
        if ((r = lorad_llama_config_validate(&w.cfg, &verr)) < 0)
            lorad_error_set(err, r, verr.param, "%s: %s", path, verr.message);
    }
    if (r == 0) r = load_weights(g, o, &w, err);
    if (r == 0) r = lorad_base_weights_validate(&w, err);
    if (r < 0) {
        lorad_base_weights_release(&w);
        return r;
    }
    if (ret_vocab) *ret_vocab = vocab;
    *ret_w = w;
    return 0;
}
