/* lorad inspect PATH [--seq-len N] [--batch N] [--lora-r N] [--threads N] [--job JOB.json] [--json]:
 * describes a model file or directory (format, hyper-parameters, parameter count, dtypes,
 * tokenizer) and the memory a LoRA fine-tuning job on it needs: the engine's estimate
 * (engine/train/train_memory.h), the one `lorad train` and the daemon enforce, for the job file given or
 * for LoRA r on all seven projections at --seq-len and --batch. The model is probed, not loaded:
 * nothing is converted, so inspecting a quantised GGUF is quick. */
#include <errno.h>
#include <stdbool.h>
#include <unistd.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "jobspec.h"
#include "model_file.h"
#include "train_memory.h"

#define MIB (1024.0 * 1024.0)

/* What the estimate was made for, as printed. */
struct job_shape {
    int seq_len, batch, r, threads;
    bool checkpointing;
    int64_t lora_params;
};

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

static json_t *to_json(const struct lorad_model_file *mf, const struct lorad_memory_estimate *m,
                       const struct job_shape *js) {
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
    json_t *mem = json_pack("{s:i, s:i, s:i, s:i, s:I, s:b, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:b}",
                            "seq_len", js->seq_len, "batch", js->batch, "lora_r", js->r, "threads", js->threads,
                            "lora_params", (json_int_t)js->lora_params,
                            "activation_checkpointing", js->checkpointing, "base_bytes", (json_int_t)m->base_weights,
                            "activation_bytes", (json_int_t)m->activations, "lora_state_bytes",
                            (json_int_t)m->lora_state, "scratch_bytes", (json_int_t)m->scratch, "batch_bytes",
                            (json_int_t)m->batches, "data_bytes", (json_int_t)m->data, "tokenizer_bytes",
                            (json_int_t)m->tokenizer, "checkpoint_bytes", (json_int_t)m->checkpoint, "total_bytes",
                            (json_int_t)m->total, "estimate", 1);
    return json_pack("{s:s, s:s, s:s, s:o, s:I, s:o, s:I, s:I, s:o, s:o}", "path", mf->path, "format", mf->format_name,
                     "architecture", "llama", "config", cfg, "n_params", (json_int_t)lorad_llama_config_n_params(c),
                     "tensor_dtypes", dtypes, "mapped_bytes", (json_int_t)mf->mapped_bytes, "private_bytes",
                     (json_int_t)mf->owned_bytes, "tokenizer", tok, "memory", mem);
}

static void print_text(const struct lorad_model_file *mf, const struct lorad_memory_estimate *m,
                       const struct job_shape *js) {
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
    printf("memory estimate for LoRA r=%d, seq_len %d, batch %d, %d threads%s:\n", js->r, js->seq_len, js->batch,
           js->threads, js->checkpointing ? ", activation checkpointing" : "");
    printf("  base weights            %10.1f MiB\n", (double)m->base_weights / MIB);
    printf("  activations             %10.1f MiB\n", (double)m->activations / MIB);
    printf("  LoRA params+grads+AdamW %10.1f MiB (%lld parameters)\n", (double)m->lora_state / MIB,
           (long long)js->lora_params);
    printf("  per-thread scratch      %10.1f MiB\n", (double)m->scratch / MIB);
    printf("  token batches           %10.1f MiB\n", (double)m->batches / MIB);
    printf("  tokenizer               %10.1f MiB\n", (double)m->tokenizer / MIB);
    printf("  checkpoint buffers      %10.1f MiB\n", (double)m->checkpoint / MIB);
    printf("  total (estimate)       ~%10.1f MiB (%lld bytes; the dataset index adds 80 bytes a line)\n",
           (double)m->total / MIB, (long long)m->total);
}

/* The spec the estimate is made for: the job file, or LoRA r (alpha 2r) on all seven projections
 * with batch and seq_len. The model and data fields only need to be present. */
static int make_spec(const char *job_path, const char *model, int seq_len, int batch, int r,
                     struct lorad_job_spec *ret_spec, struct lorad_error *err) {
    json_error_t jerr;
    json_t *body = job_path ? json_load_file(job_path, 0, &jerr)
                            : json_pack("{s:s, s:s, s:{s:i, s:i}, s:{s:i, s:i, s:s}}", "model", model, "training_file",
                                        "-", "hyperparameters", "batch_size", batch, "max_seq_len", seq_len, "lora",
                                        "r", r, "alpha", 2 * r, "target_modules", "all-linear");
    if (!body) {
        if (job_path) return lorad_error_set(err, -EINVAL, "", "%s:%d: %s", job_path, jerr.line, jerr.text);
        return lorad_error_set(err, -ENOMEM, "", "out of memory");
    }
    int rc = lorad_job_spec_parse(body, ret_spec, err);
    json_decref(body);
    return rc;
}

int lorad_cmd_inspect(int argc, char **argv) {
    const char *path = NULL, *job_path = NULL;
    int seq_len = 512, batch = 1, r = 8, json = 0;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    int threads = cores > 0 ? (int)cores : 1;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--seq-len") == 0) {
            if (i + 1 >= argc || parse_int("--seq-len", argv[++i], 1, 1 << 20, &seq_len) < 0) return LORAD_EXIT_USAGE;
        } else if (strcmp(argv[i], "--batch") == 0) {
            if (i + 1 >= argc || parse_int("--batch", argv[++i], 1, 1 << 16, &batch) < 0) return LORAD_EXIT_USAGE;
        } else if (strcmp(argv[i], "--lora-r") == 0) {
            if (i + 1 >= argc || parse_int("--lora-r", argv[++i], 1, 4096, &r) < 0) return LORAD_EXIT_USAGE;
        } else if (strcmp(argv[i], "--threads") == 0) {
            if (i + 1 >= argc || parse_int("--threads", argv[++i], 1, 256, &threads) < 0) return LORAD_EXIT_USAGE;
        } else if (strcmp(argv[i], "--job") == 0) {
            if (i + 1 >= argc) {
                fprintf(stderr, "lorad inspect: --job needs a job file\n");
                return LORAD_EXIT_USAGE;
            }
            job_path = argv[++i];
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
    struct lorad_error err = {0};
    struct lorad_job_spec spec;
    if (make_spec(job_path, path, seq_len, batch, r, &spec, &err) < 0) {
        fprintf(stderr, "lorad inspect: %s%s%s\n", job_path ? job_path : "", job_path ? ": " : "", err.message);
        return LORAD_EXIT_USAGE;
    }
    /* a job file's own thread count, as `lorad train` would use it */
    if (job_path && spec.hp.threads > 0) threads = spec.hp.threads;
    struct lorad_model_file *mf;
    if (lorad_model_file_probe(path, &mf, &err) < 0) {
        fprintf(stderr, "lorad inspect: %s\n", err.message);
        lorad_job_spec_clear(&spec);
        return LORAD_EXIT_FAILURE;
    }
    struct lorad_memory_estimate m;
    struct job_shape js = {spec.hp.max_seq_len, spec.hp.batch_size, spec.lora.r, threads,
                           spec.hp.activation_checkpointing, 0};
    struct lorad_lora_config lc;
    if (lorad_job_lora_config(&spec, &lc, &err) == 0) {
        int n_tensors;
        size_t n_params;
        lorad_lora_layout_size(&mf->weights.cfg, &lc, &n_tensors, &n_params);
        js.lora_params = (int64_t)n_params;
    }
    int rc = LORAD_EXIT_OK;
    if (lorad_train_memory_estimate(&m, &spec, mf, threads, 0, &err) < 0) {
        fprintf(stderr, "lorad inspect: %s\n", err.message);
        rc = LORAD_EXIT_FAILURE;
    } else if (json) {
        json_t *o = to_json(mf, &m, &js);
        if (!o || json_dumpf(o, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER) < 0) rc = LORAD_EXIT_FAILURE;
        else printf("\n");
        json_decref(o);
    } else {
        print_text(mf, &m, &js);
    }
    lorad_model_file_close(mf);
    lorad_job_spec_clear(&spec);
    return rc;
}
