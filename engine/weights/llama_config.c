#include "llama_config.h"

#include <errno.h>
#include <math.h>

void lorad_llama_config_defaults(struct lorad_llama_config *cfg) {
    *cfg = (struct lorad_llama_config){
        .norm_eps = 1e-6f,
        .rope_theta = 10000.0f,
        .rope_scaling = {.type = LORAD_ROPE_DEFAULT},
        .tie_embeddings = false,
        .attention_bias = false,
        .bos_id = 1,
        .eos_id = 2,
    };
}

static int check_range(struct lorad_error *err, const char *name, int v, int max) {
    if (v <= 0) return lorad_error_set(err, -EINVAL, name, "%s must be > 0, got %d", name, v);
    if (v > max) return lorad_error_set(err, -EINVAL, name, "%s must be <= %d, got %d", name, max, v);
    return 0;
}

int lorad_llama_config_validate(const struct lorad_llama_config *cfg, struct lorad_error *err) {
    int r;
    if ((r = check_range(err, "hidden_size", cfg->dim, LORAD_MAX_DIM)) < 0) return r;
    if ((r = check_range(err, "intermediate_size", cfg->hidden_dim, LORAD_MAX_HIDDEN_DIM)) < 0) return r;
    if ((r = check_range(err, "num_hidden_layers", cfg->n_layers, LORAD_MAX_LAYERS)) < 0) return r;
    if ((r = check_range(err, "num_attention_heads", cfg->n_heads, LORAD_MAX_HEADS)) < 0) return r;
    if ((r = check_range(err, "num_key_value_heads", cfg->n_kv_heads, LORAD_MAX_HEADS)) < 0) return r;
    if ((r = check_range(err, "head_dim", cfg->head_dim, LORAD_MAX_HEAD_DIM)) < 0) return r;
    if ((r = check_range(err, "vocab_size", cfg->vocab_size, LORAD_MAX_VOCAB)) < 0) return r;
    if ((r = check_range(err, "max_position_embeddings", cfg->max_seq_len, LORAD_MAX_SEQ_LEN)) < 0) return r;
    if (cfg->n_heads % cfg->n_kv_heads != 0)
        return lorad_error_set(err, -EINVAL, "num_key_value_heads",
                               "num_key_value_heads (%d) must divide num_attention_heads (%d)",
                               cfg->n_kv_heads, cfg->n_heads);
    if (cfg->head_dim % 2 != 0)
        return lorad_error_set(err, -EINVAL, "head_dim", "head_dim must be even for RoPE, got %d",
                               cfg->head_dim);
    if (!(cfg->norm_eps > 0.0f) || !isfinite(cfg->norm_eps))
        return lorad_error_set(err, -EINVAL, "rms_norm_eps", "rms_norm_eps must be finite and > 0");
    if (!(cfg->rope_theta > 0.0f) || !isfinite(cfg->rope_theta))
        return lorad_error_set(err, -EINVAL, "rope_theta", "rope_theta must be finite and > 0");
    if (cfg->rope_scaling.type == LORAD_ROPE_LLAMA3) {
        const struct lorad_rope_scaling *s = &cfg->rope_scaling;
        if (!(s->factor >= 1.0f) || !isfinite(s->factor))
            return lorad_error_set(err, -EINVAL, "rope_scaling.factor", "rope_scaling.factor must be >= 1");
        if (!(s->low_freq_factor > 0.0f) || !(s->high_freq_factor > s->low_freq_factor))
            return lorad_error_set(err, -EINVAL, "rope_scaling.high_freq_factor",
                                   "rope_scaling needs 0 < low_freq_factor < high_freq_factor");
        if (s->original_max_position_embeddings <= 0)
            return lorad_error_set(err, -EINVAL, "rope_scaling.original_max_position_embeddings",
                                   "rope_scaling.original_max_position_embeddings must be > 0");
    } else if (cfg->rope_scaling.type != LORAD_ROPE_DEFAULT) {
        return lorad_error_set(err, -EINVAL, "rope_scaling.rope_type", "unsupported rope_scaling type");
    }
    if (cfg->bos_id >= cfg->vocab_size || cfg->eos_id >= cfg->vocab_size)
        return lorad_error_set(err, -EINVAL, "bos_token_id", "bos/eos token id outside the vocabulary");
    return 0;
}

int64_t lorad_llama_config_n_params(const struct lorad_llama_config *cfg) {
    int64_t d = cfg->dim, q = (int64_t)cfg->n_heads * cfg->head_dim;
    int64_t kv = (int64_t)cfg->n_kv_heads * cfg->head_dim, f = cfg->hidden_dim, v = cfg->vocab_size;
    int64_t per_layer = d * q + 2 * d * kv + q * d + 3 * d * f + 2 * d;
    if (cfg->attention_bias) per_layer += q + 2 * kv;
    int64_t n = v * d + cfg->n_layers * per_layer + d;
    if (!cfg->tie_embeddings) n += v * d;
    return n;
}
