/* Frozen base weights as views the engine does not own.
 *
 * Loaders map model files (mmap) and hand the engine a struct lorad_base_weights whose tensors
 * point into those mappings; a BF16 or F32 tensor is used in place, so two jobs on the same base
 * share its pages. Tensors in other dtypes (F16, quantised) are converted by the loader into
 * buffers the loader owns. The engine never writes through these pointers and never frees them:
 * the owner is released with lorad_base_weights_release().
 *
 * Layout is Hugging Face's: every projection is [out_features, in_features], row-major, and q/k
 * rows are in HF's rotate_half RoPE order (loaders of Meta-layout formats permute once at load). */
#pragma once
#include <stdint.h>

#include "llama_config.h"
#include "quant_blocks.h"

enum lorad_dtype {
    LORAD_DTYPE_F32 = 0,
    LORAD_DTYPE_BF16 = 1,
    LORAD_DTYPE_F16 = 2,
    /* GGML block formats, kept as stored (quant_blocks.h) */
    LORAD_DTYPE_Q8_0 = 3,
    LORAD_DTYPE_Q4_0 = 4,
    LORAD_DTYPE_Q4_K = 5,
    LORAD_DTYPE_Q6_K = 6,
};

/* Size in bytes of one element of dtype; 0 for the block formats (see quant_blocks.h for their
 * row sizes). */
int lorad_dtype_size(enum lorad_dtype dtype);
static inline int lorad_dtype_is_quantised(enum lorad_dtype dtype) { return dtype >= LORAD_DTYPE_Q8_0; }
/* "F32", "BF16", "F16", "Q8_0", "Q4_0", "Q4_K", "Q6_K". */
const char *lorad_dtype_name(enum lorad_dtype dtype);

/* A read-only 2-D view: rows x cols, row-major, contiguous. A vector has rows == 1. */
struct lorad_tensor {
    const void *data;
    enum lorad_dtype dtype;
    int64_t rows;
    int64_t cols;
};

struct lorad_layer_weights {
    struct lorad_tensor attn_norm; /* (1, dim)                      input_layernorm */
    struct lorad_tensor wq;        /* (n_heads*head_dim, dim)       self_attn.q_proj */
    struct lorad_tensor wk;        /* (n_kv_heads*head_dim, dim)    self_attn.k_proj */
    struct lorad_tensor wv;        /* (n_kv_heads*head_dim, dim)    self_attn.v_proj */
    struct lorad_tensor wo;        /* (dim, n_heads*head_dim)       self_attn.o_proj */
    struct lorad_tensor bq;        /* (1, n_heads*head_dim)   only with attention_bias */
    struct lorad_tensor bk;        /* (1, n_kv_heads*head_dim) only with attention_bias */
    struct lorad_tensor bv;        /* (1, n_kv_heads*head_dim) only with attention_bias */
    struct lorad_tensor ffn_norm;  /* (1, dim)                      post_attention_layernorm */
    struct lorad_tensor w_gate;    /* (hidden_dim, dim)             mlp.gate_proj */
    struct lorad_tensor w_up;      /* (hidden_dim, dim)             mlp.up_proj */
    struct lorad_tensor w_down;    /* (dim, hidden_dim)             mlp.down_proj */
};

/* One tensor of a decoder layer: where it lives in struct lorad_layer_weights, its HF name after
 * "model.layers.N." and its shape for a config. */
struct lorad_layer_tensor_spec {
    size_t offset; /* of the struct lorad_tensor within struct lorad_layer_weights */
    const char *hf_suffix;
    int64_t rows, cols;
};
#define LORAD_LAYER_MAX_TENSORS 12

/* The tensors of one decoder layer for cfg, in HF order (q/k/v biases only with
 * attention_bias): fills specs and returns how many. The one table loaders and validation share. */
int lorad_layer_tensor_specs(const struct lorad_llama_config *cfg,
                             struct lorad_layer_tensor_spec specs[LORAD_LAYER_MAX_TENSORS]);

static inline struct lorad_tensor *lorad_layer_tensor(struct lorad_layer_weights *layer,
                                                      const struct lorad_layer_tensor_spec *spec) {
    return (struct lorad_tensor *)((char *)layer + spec->offset);
}

struct lorad_base_weights {
    struct lorad_llama_config cfg;
    struct lorad_tensor embed;      /* (vocab, dim)   model.embed_tokens */
    struct lorad_layer_weights *layers; /* n_layers entries, owned by the owner below */
    struct lorad_tensor final_norm; /* (1, dim)       model.norm */
    struct lorad_tensor lm_head;    /* (vocab, dim)   lm_head; same data as embed when tied */
    /* Ownership: release(owner) frees the layers array and every mapping/buffer behind the
     * tensors. NULL release means the creator manages lifetime itself. */
    void (*release)(void *owner);
    void *owner;
};

/* Checks that every tensor is present with the shape cfg implies and a supported dtype; returns 0
 * or -EINVAL with err naming the tensor in HF spelling and the expected shape. */
int lorad_base_weights_validate(const struct lorad_base_weights *w, struct lorad_error *err);

/* Calls w->release(w->owner) if set and clears w. Safe on a zeroed struct. */
void lorad_base_weights_release(struct lorad_base_weights *w);

/* bf16 <-> f32. bf16 is the top half of an IEEE f32; rounding is to nearest even. */
static inline float lorad_bf16_to_f32(uint16_t h) {
    union { uint32_t u; float f; } v = {.u = (uint32_t)h << 16};
    return v.f;
}
uint16_t lorad_f32_to_bf16(float f);
float lorad_f16_to_f32(uint16_t h);
uint16_t lorad_f32_to_f16(float f);
