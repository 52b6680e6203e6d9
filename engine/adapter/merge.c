/* Merging LoRA adapters into base weights and writing the merged model as safetensors. */
#include <assert.h>
#include <cblas.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dora.h"
#include "merge.h"
#include "safetensors_write.h"

void lorad_merge_matrix(float *w, const float *B, const float *A, float scale, int64_t out, int64_t in, int64_t r) {
    // w (out, in), B (out, r), A (r, in)
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (blasint)out, (blasint)in, (blasint)r, scale, B, (blasint)r,
                A, (blasint)in, 1.0f, w, (blasint)in);
}

void lorad_merge_matrix_ref(float *w, const float *B, const float *A, float scale, int64_t out, int64_t in, int64_t r) {
    for (int64_t o = 0; o < out; o++)
        for (int64_t i = 0; i < in; i++) {
            float acc = 0.0f;
            for (int64_t k = 0; k < r; k++) acc += B[o * r + k] * A[k * in + i];
            w[o * in + i] += scale * acc;
        }
}

bool lorad_merge_unties_head(const struct lorad_base_weights *base, const struct lorad_adapter *adapter) {
    const struct lorad_adapter_tensor *A, *B;
    return base->cfg.tie_embeddings && lorad_adapter_module(adapter, "lm_head", &A, &B) == 0;
}

static void tensor_to_f32(float *dst, const struct lorad_tensor *t) {
    size_t row_bytes = lorad_dtype_row_bytes(t->dtype, t->cols);
    for (int64_t r = 0; r < t->rows; r++)
        lorad_row_segment_f32(dst + r * t->cols, t->dtype, (const char *)t->data + (size_t)r * row_bytes, 0, t->cols);
}

/* Buffers created for the output; they must outlive the writer, which borrows them. */
struct out_buffers {
    void **p;
    size_t n, cap;
};

static void *out_alloc(struct out_buffers *b, size_t bytes) {
    if (b->n == b->cap) {
        size_t cap = b->cap ? 2 * b->cap : 64;
        void **p = realloc(b->p, cap * sizeof *p);
        if (!p) return NULL;
        b->p = p;
        b->cap = cap;
    }
    void *m = malloc(bytes ? bytes : 1);
    if (m) b->p[b->n++] = m;
    return m;
}

/* Adds base tensor t as name, merged with module's LoRA pair when the adapter has one. */
static int add_tensor(struct lorad_st_writer *w, struct out_buffers *bufs, const char *name, const struct lorad_tensor *t,
                      const char *module, const struct lorad_adapter *adapter, bool keep_dtype) {
    const struct lorad_adapter_tensor *A = NULL, *B = NULL;
    int adapted = module && lorad_adapter_module(adapter, module, &A, &B) == 0;
    enum lorad_dtype dtype = keep_dtype && t->dtype == LORAD_DTYPE_BF16 ? LORAD_DTYPE_BF16 : LORAD_DTYPE_F32;
    int64_t n = t->rows * t->cols;
    const void *data = t->data;
    if (adapted || t->dtype != dtype) {
        /* The writer borrows buffers until the end, so a BF16 result keeps only its 2-byte copy:
         * the f32 scratch is freed at once. */
        float *f = dtype == LORAD_DTYPE_BF16 ? malloc((size_t)n * sizeof(float))
                                             : out_alloc(bufs, (size_t)n * sizeof(float));
        if (!f) return -ENOMEM;
        tensor_to_f32(f, t);
        if (adapted) {
            assert(A->cols == t->cols && B->rows == t->rows && A->rows == B->cols);
            lorad_merge_matrix(f, B->data, A->data, (float)lorad_adapter_scale(&adapter->meta), t->rows, t->cols, A->rows);
            if (adapter->meta.use_dora) {
                char mag_name[160];
                snprintf(mag_name, sizeof mag_name, "%s.lora_magnitude_vector", module);
                const struct lorad_adapter_tensor *mag = lorad_adapter_find(adapter, mag_name);
                assert(mag && mag->rows == t->rows); /* lorad_adapter_load checked every module has one */
                lorad_dora_scale_rows(f, mag->data, t->rows, t->cols);
            }
        }
        data = f;
        if (dtype == LORAD_DTYPE_BF16) {
            uint16_t *h = out_alloc(bufs, (size_t)n * sizeof(uint16_t));
            if (h)
                for (int64_t i = 0; i < n; i++) h[i] = lorad_f32_to_bf16(f[i]);
            free(f);
            if (!h) return -ENOMEM;
            data = h;
        }
    }
    int64_t shape[2] = {t->rows, t->cols};
    int vector = t->rows == 1 && !module; /* norms and biases are 1-D in HF checkpoints */
    return lorad_st_writer_add(w, name, lorad_dtype_name(dtype), vector ? shape + 1 : shape, vector ? 1 : 2, data,
                               (size_t)n * (size_t)lorad_dtype_size(dtype));
}

int lorad_merge_write_safetensors(const char *path, const struct lorad_base_weights *base,
                                  const struct lorad_adapter *adapter, bool keep_dtype, struct lorad_error *err) {
    struct lorad_st_writer *w;
    int rc = lorad_st_writer_new(&w, path);
    if (rc < 0) return lorad_error_set(err, rc, "", "out of memory writing %s", path);
    struct out_buffers bufs = {0};
    rc = lorad_st_writer_metadata(w, "format", "pt");
    char name[160], module[128];
    if (rc == 0) rc = add_tensor(w, &bufs, "model.embed_tokens.weight", &base->embed, NULL, adapter, keep_dtype);
    for (int l = 0; rc == 0 && l < base->cfg.n_layers; l++) {
        const struct lorad_layer_weights *L = &base->layers[l];
        const struct { const char *suffix; const struct lorad_tensor *t; int adaptable; } parts[] = {
            {"input_layernorm", &L->attn_norm, 0},  {"self_attn.q_proj", &L->wq, 1},
            {"self_attn.k_proj", &L->wk, 1},        {"self_attn.v_proj", &L->wv, 1},
            {"self_attn.o_proj", &L->wo, 1},        {"post_attention_layernorm", &L->ffn_norm, 0},
            {"mlp.gate_proj", &L->w_gate, 1},       {"mlp.up_proj", &L->w_up, 1},
            {"mlp.down_proj", &L->w_down, 1},
        };
        for (size_t i = 0; rc == 0 && i < sizeof parts / sizeof parts[0]; i++) {
            snprintf(module, sizeof module, "model.layers.%d.%s", l, parts[i].suffix);
            snprintf(name, sizeof name, "%s.weight", module);
            rc = add_tensor(w, &bufs, name, parts[i].t, parts[i].adaptable ? module : NULL, adapter, keep_dtype);
        }
        if (base->cfg.attention_bias) {
            const struct { const char *suffix; const struct lorad_tensor *t; } biases[] = {
                {"q_proj", &L->bq}, {"k_proj", &L->bk}, {"v_proj", &L->bv}};
            for (size_t i = 0; rc == 0 && i < 3; i++) {
                snprintf(name, sizeof name, "model.layers.%d.self_attn.%s.bias", l, biases[i].suffix);
                rc = add_tensor(w, &bufs, name, biases[i].t, NULL, adapter, keep_dtype);
            }
        }
    }
    if (rc == 0) rc = add_tensor(w, &bufs, "model.norm.weight", &base->final_norm, NULL, adapter, keep_dtype);
    if (rc == 0 && (!base->cfg.tie_embeddings || lorad_merge_unties_head(base, adapter)))
        rc = add_tensor(w, &bufs, "lm_head.weight", &base->lm_head, "lm_head", adapter, keep_dtype);
    if (rc < 0) {
        lorad_st_writer_free(w);
        lorad_error_set(err, rc, "", "cannot assemble %s: %s", path, strerror(-rc));
    } else {
        rc = lorad_st_writer_finish(w, err);
    }
    for (size_t i = 0; i < bufs.n; i++) free(bufs.p[i]);
    free(bufs.p);
    return rc;
}
