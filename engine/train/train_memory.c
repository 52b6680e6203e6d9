#include "train_memory.h"

#include <errno.h>
#include <stdio.h>
#include <sys/stat.h>

#include "lora.h"
#include "model.h"
#include "threadpool.h"

/* Bytes per dataset line: the corpus index record (24 bytes, in an array that doubles as it
 * grows, so up to twice that) and an epoch plan's order and row entries (8 + 8), for the
 * training plan and the validation one. */
#define DATA_BYTES_PER_RECORD (2 * 24 + 2 * 16)
/* Token buffers per batch position: input ids, labels, positions and segment starts (int32). */
#define BATCH_BYTES_PER_TOKEN (4 * 4)
/* The tokenizer's tables against the size of its file: pieces and scores as read, plus the
 * lookup tables built from them (measured: about three times the file for SentencePiece and
 * tokenizer.json vocabularies), and per piece the id-to-piece and hash entries. */
#define TOKENIZER_FILE_FACTOR 3
#define TOKENIZER_BYTES_PER_PIECE 48

static int64_t tokenizer_bytes(const struct lorad_model_file *mf) {
    int64_t pieces = (int64_t)mf->weights.cfg.vocab_size * TOKENIZER_BYTES_PER_PIECE;
    if (mf->has_vocab) return pieces; /* the vocabulary itself is in owned_bytes */
    struct stat st;
    if (!mf->tokenizer_path || stat(mf->tokenizer_path, &st) < 0) return 0;
    return TOKENIZER_FILE_FACTOR * (int64_t)st.st_size + pieces;
}

int lorad_train_memory_estimate(struct lorad_memory_estimate *ret, const struct lorad_job_spec *spec,
                                const struct lorad_model_file *mf, int threads, int64_t n_records,
                                struct lorad_error *err) {
    const struct lorad_hyperparameters *hp = &spec->hp;
    struct lorad_lora_config lc;
    int r = lorad_job_lora_config(spec, &lc, err);
    if (r < 0) return r;
    if (threads < 1 || threads > LORAD_MAX_THREADS)
        return lorad_error_set(err, -EINVAL, "hyperparameters.threads", "threads must be in [1, %d], got %d",
                               LORAD_MAX_THREADS, threads);
    /* The compute dtype the run will resolve to sizes the GEMM scratch. A request that cannot be
     * met is the run's error to report; here it counts as bf16, the larger. */
    enum lorad_compute_dtype compute;
    struct lorad_error ignored = {0};
    if (lorad_compute_dtype_resolve(hp->compute_dtype, lorad_base_linears_bf16(&mf->weights), "compute_dtype", &compute,
                                    &ignored) < 0)
        compute = LORAD_COMPUTE_BFLOAT16;
    int rows = hp->batch_size * lorad_job_rows_per_example(spec); /* a DPO pair is two rows */
    struct lorad_run_options ro = {.threads = threads,
                                   .max_batch = rows,
                                   .max_seq = hp->max_seq_len,
                                   .activation_checkpointing = hp->activation_checkpointing,
                                   .compute_dtype = compute};
    struct lorad_model_memory mm;
    lorad_model_memory_of(&mm, &mf->weights.cfg, &lc, &ro);
    int n_tensors;
    size_t n_params;
    lorad_lora_layout_size(&mf->weights.cfg, &lc, &n_tensors, &n_params);
    int64_t step_tokens = (int64_t)rows * hp->max_seq_len * hp->gradient_accumulation_steps;
    struct lorad_memory_estimate e = {
        .base_weights = (int64_t)(mf->mapped_bytes + mf->owned_bytes),
        .activations = mm.activations,
        .lora_state = mm.lora + 2 * (int64_t)n_params * (int64_t)sizeof(float), /* + AdamW m and v */
        .scratch = mm.scratch,
        /* + the sample being rendered: tokens and a train mask of max_seq_len */
        .batches = step_tokens * BATCH_BYTES_PER_TOKEN + (int64_t)hp->max_seq_len * 5,
        .data = (n_records > 0 ? n_records : 0) * DATA_BYTES_PER_RECORD,
        .tokenizer = tokenizer_bytes(mf),
        /* the GGUF adapter is built in memory (f32, with q/k permuted copies) */
        .checkpoint = 2 * (int64_t)n_params * (int64_t)sizeof(float),
    };
    e.total = e.base_weights + e.activations + e.lora_state + e.scratch + e.batches + e.data + e.tokenizer +
              e.checkpoint;
    *ret = e;
    return 0;
}

static double gib(int64_t b) { return (double)b / (1024.0 * 1024.0 * 1024.0); }

void lorad_memory_estimate_describe(char *out, size_t n, const struct lorad_memory_estimate *e) {
    snprintf(out, n,
             "%.2f GiB (%lld bytes; GiB: base weights %.2f, activations %.2f, LoRA+AdamW %.3f, scratch %.3f, "
             "batches %.3f, dataset index %.3f, tokenizer %.3f, checkpoint %.3f)",
             gib(e->total), (long long)e->total, gib(e->base_weights), gib(e->activations), gib(e->lora_state),
             gib(e->scratch), gib(e->batches), gib(e->data), gib(e->tokenizer), gib(e->checkpoint));
}

int lorad_memory_estimate_check(const struct lorad_memory_estimate *e, int64_t limit, const char *limit_name,
                                struct lorad_error *err) {
    if (e->total <= limit) return 0;
    char what[512];
    lorad_memory_estimate_describe(what, sizeof what, e);
    if (e->base_weights >= limit)
        return lorad_error_set(err, -E2BIG, "model",
                               "the base model alone needs %.2f GiB, more than %s of %.2f GiB (%lld bytes); this job "
                               "needs an estimated %s",
                               gib(e->base_weights), limit_name, gib(limit), (long long)limit, what);
    return lorad_error_set(err, -E2BIG, "hyperparameters.batch_size",
                           "this job needs an estimated %s, more than %s of %.2f GiB (%lld bytes); lower "
                           "hyperparameters.batch_size, max_seq_len or gradient_accumulation_steps, or set "
                           "activation_checkpointing",
                           what, limit_name, gib(limit), (long long)limit);
}
