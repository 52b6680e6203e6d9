/* The hyper-parameters of a LlamaForCausalLM decoder, with Hugging Face transformers semantics.
 * Every loader (HF directory, GGUF, llama2.c) fills one of these; the engine validates it before
 * it allocates anything. */
#pragma once
#include <stdbool.h>
#include <stdint.h>

#include "error.h"

enum lorad_rope_type {
    LORAD_ROPE_DEFAULT = 0,
    LORAD_ROPE_LLAMA3 = 1, /* rope_scaling.rope_type == "llama3" */
};

struct lorad_rope_scaling {
    enum lorad_rope_type type;
    float factor;                        /* llama3: e.g. 8 or 32 */
    float low_freq_factor;               /* llama3: e.g. 1 */
    float high_freq_factor;              /* llama3: e.g. 4 */
    int original_max_position_embeddings; /* llama3: e.g. 8192 */
};

struct lorad_llama_config {
    int dim;          /* hidden_size */
    int hidden_dim;   /* intermediate_size */
    int n_layers;     /* num_hidden_layers */
    int n_heads;      /* num_attention_heads */
    int n_kv_heads;   /* num_key_value_heads; divides n_heads */
    int head_dim;     /* head_dim; may differ from dim / n_heads */
    int vocab_size;
    int max_seq_len;  /* max_position_embeddings */
    float norm_eps;   /* rms_norm_eps */
    float rope_theta;
    struct lorad_rope_scaling rope_scaling;
    bool tie_embeddings;  /* tie_word_embeddings: lm_head shares embed_tokens */
    bool attention_bias;  /* q/k/v projections have a bias (Qwen2-style) */
    int bos_id;           /* -1 when unknown */
    int eos_id;           /* -1 when unknown */
};

/* Limits on user-controlled sizes; a config beyond them is refused before any allocation. */
#define LORAD_MAX_DIM (1 << 16)
#define LORAD_MAX_HIDDEN_DIM (1 << 18)
#define LORAD_MAX_LAYERS 512
#define LORAD_MAX_HEADS 1024
#define LORAD_MAX_HEAD_DIM 1024
#define LORAD_MAX_VOCAB (1 << 22)
#define LORAD_MAX_SEQ_LEN (1 << 20)

/* Fills cfg with the defaults of transformers' LlamaConfig where a field has one
 * (norm_eps 1e-6, rope_theta 10000, no scaling, untied, no bias, bos 1, eos 2); sizes are 0. */
void lorad_llama_config_defaults(struct lorad_llama_config *cfg);

/* Checks every field: positive sizes within the limits, n_kv_heads dividing n_heads, finite
 * positive eps and theta, a coherent llama3 scaling block. Returns 0, or -EINVAL with err naming
 * the field in HF's spelling (e.g. "num_key_value_heads"). */
int lorad_llama_config_validate(const struct lorad_llama_config *cfg, struct lorad_error *err);

/* Number of parameters of the base model (embeddings, all blocks, final norm, untied head). */
int64_t lorad_llama_config_n_params(const struct lorad_llama_config *cfg);
