/* lorad inspect PATH [--seq-len N] [--batch N] [--lora-r N] [--json]: describes a model file or
 * directory (format, hyper-parameters, parameter count, dtypes, tokenizer) and estimates the
 * memory a LoRA fine-tuning run on it needs. */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "model_file.h"

#define MIB (1024.0 * 1024.0)

struct memory_estimate {
    double base, lora, activations, logits, total; /* bytes */
    int64_t lora_params;
};

/* An ESTIMATE of the resident memory of a LoRA run, in bytes, assuming LoRA rank r on all seven
 * projections of every layer (q,k,v,o,gate,up,down), f32 training state and no activation
 * checkpointing:
 *   base        = bytes of the frozen tensors as loaded (shared mapped pages + private copies)
 *   lora        = P * 4 bytes * 4 (parameters, gradients, AdamW m and v), where
 *                 P = L * r * [(d+q) + 2(d+kv) + (q+d) + 3(d+f)]   (r*(in+out) per adapted matrix)
 *   activations = B * T * L * 4 bytes * (4d + 2q + 2kv + 3f + 7r + H*T): per token and layer the
 *                 saved residual/normed inputs (4d), q and attention output (2q), k and v (2kv),
 *                 gate/up/activation (3f), the LoRA down-projections (7r) and the attention
 *                 probabilities (H*T, one row of T per head)
 *   logits      = B * T * V * 4 bytes * 2 (logits and their gradient) + B * T * d * 4 (embeddings)
 * with d = hidden_size, q = heads*head_dim, kv = kv_heads*head_dim, f = intermediate_size,
 * H = heads, V = vocab, L = layers. It ignores allocator overhead, per-thread scratch and the
 * optimiser's temporary buffers, so real usage is somewhat higher. */
static struct memory_estimate estimate(const struct lorad_model_file *mf, int seq_len, int batch, int r) {
    const struct lorad_llama_config *c = &mf->weights.cfg;
    double d = c->dim, q = (double)c->n_heads * c->head_dim, kv = (double)c->n_kv_heads * c->head_dim;
    double f = c->hidden_dim, L = c->n_layers, V = c->vocab_size, H = c->n_heads, T = seq_len, B = batch;
    struct memory_estimate m;
    m.lora_params = (int64_t)(L * r * ((d + q) + 2 * (d + kv) + (q + d) + 3 * (d + f)));
    m.base = (double)mf->mapped_bytes + (double)mf->owned_bytes;
    m.lora = (double)m.lora_params * 4 * 4;
    m.activations = B * T * L * 4 * (4 * d + 2 * q + 2 * kv + 3 * f + 7.0 * r + H * T);
    m.logits = B * T * V * 4 * 2 + B * T * d * 4;
    m.total = m.base + m.lora + m.activations + m.logits;
    return m;
}

static const char *tokenizer_kind(const struct lorad_model_file *mf) {
    if (mf->has_vocab) return "gguf-embedded";
    if (!mf->tokenizer_path) return "none";
    size_t n = strlen(mf->tokenizer_path);
    return n >= 5 && strcmp(mf->tokenizer_path + n - 5, ".json") == 0 ? "hf-tokenizer-json" : "sentencepiece";
}

static int parse_int(const char *flag, const char *s, int lo, int hi, int *out) {
    char *end;
    errno = 0;
    long v = s ? strtol(s, &end, 10) : 0;
    if (!s || errno || *end || end == s || v < lo || v > hi) {
        fprintf(stderr, "lorad inspect: %s needs an integer in [%d, %d]\n", flag, lo, hi);
        return -1;
    }
    *out = (int)v;
    return 0;
}

/* A float as the shortest decimal that round-trips through float (1e-05, not 9.99999974e-06). */
static double tidy(float f) {
    char buf[32];
    snprintf(buf, sizeof buf, "%.9g", (double)f);
    for (int prec = 1; prec <= 9; prec++) {
        snprintf(buf, sizeof buf, "%.*g", prec, (double)f);
        if (strtof(buf, NULL) == f) break;
    }
    return strtod(buf, NULL);
}

static json_t *to_json(const struct lorad_model_file *mf, const struct memory_estimate *m, int seq_len, int batch, int r) {
    const struct lorad_llama_config *c = &mf->weights.cfg;
    json_t *dtypes = json_object();
    for (int i = 0; i < mf->n_dtypes; i++) json_object_set_new(dtypes, mf->dtypes[i].name, json_integer(mf->dtypes[i].count));
    json_t *rope = json_null();
    if (c->rope_scaling.type == LORAD_ROPE_LLAMA3)
        rope = json_pack("{s:s, s:f, s:f, s:f, s:i}", "rope_type", "llama3", "factor", (double)c->rope_scaling.factor,
                         "low_freq_factor", (double)c->rope_scaling.low_freq_factor, "high_freq_factor",
                         (double)c->rope_scaling.high_freq_factor, "original_max_position_embeddings",
                         c->rope_scaling.original_max_position_embeddings);
    json_t *tok = json_pack("{s:s, s:i}", "kind", tokenizer_kind(mf), "vocab_size",
                            mf->has_vocab ? mf->vocab.n_tokens : c->vocab_size);
    if (mf->tokenizer_path) json_object_set_new(tok, "path", json_string(mf->tokenizer_path));
    if (mf->has_vocab && mf->vocab.model) json_object_set_new(tok, "model", json_string(mf->vocab.model));
    json_t *cfg = json_pack("{s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:f, s:f, s:o, s:b, s:b, s:i, s:i}",
                            "hidden_size", c->dim, "intermediate_size", c->hidden_dim, "num_hidden_layers", c->n_layers,
                            "num_attention_heads", c->n_heads, "num_key_value_heads", c->n_kv_heads, "head_dim",
                            c->head_dim, "vocab_size", c->vocab_size, "max_position_embeddings", c->max_seq_len,
                            "rms_norm_eps", tidy(c->norm_eps), "rope_theta", tidy(c->rope_theta), "rope_scaling", rope,
                            "tie_word_embeddings", c->tie_embeddings, "attention_bias", c->attention_bias,
                            "bos_token_id", c->bos_id, "eos_token_id", c->eos_id);
    json_t *mem = json_pack("{s:i, s:i, s:i, s:I, s:I, s:I, s:I, s:I, s:I, s:b}", "seq_len", seq_len, "batch", batch,
                            "lora_r", r, "lora_params", (json_int_t)m->lora_params, "base_bytes", (json_int_t)m->base,
                            "lora_state_bytes", (json_int_t)m->lora, "activation_bytes", (json_int_t)m->activations,
                            "logits_bytes", (json_int_t)m->logits, "total_bytes", (json_int_t)m->total, "estimate", 1);
    return json_pack("{s:s, s:s, s:s, s:o, s:I, s:o, s:I, s:I, s:o, s:o}", "path", mf->path, "format", mf->format_name,
                     "architecture", "llama", "config", cfg, "n_params", (json_int_t)lorad_llama_config_n_params(c),
                     "tensor_dtypes", dtypes, "mapped_bytes", (json_int_t)mf->mapped_bytes, "private_bytes",
                     (json_int_t)mf->owned_bytes, "tokenizer", tok, "memory", mem);
}

static void print_text(const struct lorad_model_file *mf, const struct memory_estimate *m, int seq_len, int batch, int r) {
    const struct lorad_llama_config *c = &mf->weights.cfg;
    printf("path:                     %s\n", mf->path);
    printf("format:                   %s\n", mf->format_name);
    printf("architecture:             llama\n");
    printf("hidden_size:              %d\n", c->dim);
    printf("intermediate_size:        %d\n", c->hidden_dim);
    printf("num_hidden_layers:        %d\n", c->n_layers);
    printf("num_attention_heads:      %d\n", c->n_heads);
    printf("num_key_value_heads:      %d\n", c->n_kv_heads);
    printf("head_dim:                 %d\n", c->head_dim);
    printf("vocab_size:               %d\n", c->vocab_size);
    printf("max_position_embeddings:  %d\n", c->max_seq_len);
    printf("rms_norm_eps:             %g\n", (double)c->norm_eps);
    printf("rope_theta:               %g\n", (double)c->rope_theta);
    if (c->rope_scaling.type == LORAD_ROPE_LLAMA3)
        printf("rope_scaling:             llama3 (factor %g, low_freq_factor %g, high_freq_factor %g, "
               "original_max_position_embeddings %d)\n", (double)c->rope_scaling.factor,
               (double)c->rope_scaling.low_freq_factor, (double)c->rope_scaling.high_freq_factor,
               c->rope_scaling.original_max_position_embeddings);
    else
        printf("rope_scaling:             none\n");
    printf("tie_word_embeddings:      %s\n", c->tie_embeddings ? "true" : "false");
    printf("attention_bias:           %s\n", c->attention_bias ? "true" : "false");
    printf("bos_token_id:             %d\n", c->bos_id);
    printf("eos_token_id:             %d\n", c->eos_id);
    int64_t n = lorad_llama_config_n_params(c);
    printf("parameters:               %lld (%.2f M)\n", (long long)n, (double)n / 1e6);
    printf("tensor dtypes:           ");
    for (int i = 0; i < mf->n_dtypes; i++) printf(" %s x %d", mf->dtypes[i].name, mf->dtypes[i].count);
    printf("\nweights in memory:        %.1f MiB shared (mapped in place), %.1f MiB private (converted)\n",
           (double)mf->mapped_bytes / MIB, (double)mf->owned_bytes / MIB);
    printf("tokenizer:                %s", tokenizer_kind(mf));
    if (mf->has_vocab) printf(" (%s, %d tokens)", mf->vocab.model ? mf->vocab.model : "?", mf->vocab.n_tokens);
    else if (mf->tokenizer_path) printf(" (%s)", mf->tokenizer_path);
    else printf(" (pass a tokenizer file)");
    printf("\n");
    printf("memory estimate for LoRA r=%d on q,k,v,o,gate,up,down, seq_len %d, batch %d:\n", r, seq_len, batch);
    printf("  base weights            %10.1f MiB\n", m->base / MIB);
    printf("  LoRA params+grads+AdamW %10.1f MiB (%lld parameters)\n", m->lora / MIB, (long long)m->lora_params);
    printf("  activations             %10.1f MiB\n", m->activations / MIB);
    printf("  logits                  %10.1f MiB\n", m->logits / MIB);
    printf("  total (estimate)       ~%10.1f MiB\n", m->total / MIB);
}

int lorad_cmd_inspect(int argc, char **argv) {
    const char *path = NULL;
    int seq_len = 512, batch = 1, r = 8, json = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--seq-len") == 0) {
            if (i + 1 >= argc || parse_int("--seq-len", argv[++i], 1, 1 << 20, &seq_len) < 0) return LORAD_EXIT_USAGE;
        } else if (strcmp(argv[i], "--batch") == 0) {
            if (i + 1 >= argc || parse_int("--batch", argv[++i], 1, 1 << 16, &batch) < 0) return LORAD_EXIT_USAGE;
        } else if (strcmp(argv[i], "--lora-r") == 0) {
            if (i + 1 >= argc || parse_int("--lora-r", argv[++i], 1, 4096, &r) < 0) return LORAD_EXIT_USAGE;
        } else if (strcmp(argv[i], "--json") == 0) {
            json = 1;
        } else if (argv[i][0] == '-' || path) {
            fprintf(stderr, "lorad inspect: unexpected argument %s\n", argv[i]);
            return LORAD_EXIT_USAGE;
        } else {
            path = argv[i];
        }
    }
    if (!path) {
        fprintf(stderr, "lorad inspect: missing PATH\n");
        return LORAD_EXIT_USAGE;
    }
    struct lorad_model_file *mf;
    struct lorad_error err = {0};
    if (lorad_model_file_open(path, &mf, &err) < 0) {
        fprintf(stderr, "lorad inspect: %s\n", err.message);
        return LORAD_EXIT_FAILURE;
    }
    struct memory_estimate m = estimate(mf, seq_len, batch, r);
    int rc = LORAD_EXIT_OK;
    if (json) {
        json_t *o = to_json(mf, &m, seq_len, batch, r);
        if (!o || json_dumpf(o, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER) < 0) rc = LORAD_EXIT_FAILURE;
        else printf("\n");
        json_decref(o);
    } else {
        print_text(mf, &m, seq_len, batch, r);
    }
    lorad_model_file_close(mf);
    return rc;
}
