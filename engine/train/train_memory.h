/* How much memory a fine-tuning job takes, counted from what lorad_train_run allocates.
 *
 * One estimate serves the three places that must agree: the run refuses to start above
 * lorad_train_options.memory_limit_bytes, the daemon refuses a job at creation (and schedules
 * running jobs) against its memory_limit, and `lorad inspect` tells a user beforehand. Each term
 * is the size of buffers the run really allocates for the job's shapes (the model's activation
 * arena, the LoRA and AdamW state, a step's token batches, the dataset index, the tokenizer,
 * checkpoint buffers) plus the base weights as loaded (mapped pages count: every step touches
 * all of them). The process itself (code, libraries) is not included: it is there once, however
 * many jobs run. tests/train/train_memory.py holds the estimate to within 15% of measured peak
 * RSS. */
#pragma once
#include <stdint.h>

#include "error.h"
#include "jobspec.h"
#include "model_file.h"

struct lorad_memory_estimate {
    int64_t base_weights; /* the frozen tensors as loaded: mapped file pages + converted copies */
    int64_t activations;  /* the model's activation and gradient buffers for batch_size x max_seq_len */
    int64_t lora_state;   /* LoRA parameters, gradients and AdamW moments */
    int64_t scratch;      /* per-thread GEMM and attention scratch */
    int64_t batches;      /* the token buffers of one optimiser step (all its micro-batches) */
    int64_t data;         /* the datasets' line index and an epoch plan */
    int64_t tokenizer;    /* the tokenizer's tables */
    int64_t checkpoint;   /* buffers held while a checkpoint is written */
    int64_t total;
};

/* The estimate for spec on the model mf (opened or probed) with `threads` compute threads and
 * n_records dataset lines (training + validation; 0 when unknown). Returns 0, or -EINVAL naming
 * the spec's field when spec cannot run on mf at all (the model would refuse it). */
int lorad_train_memory_estimate(struct lorad_memory_estimate *ret, const struct lorad_job_spec *spec,
                                const struct lorad_model_file *mf, int threads, int64_t n_records,
                                struct lorad_error *err);

/* 0 when e fits in limit bytes; else -E2BIG with err saying so with the estimate in bytes and what
 * to lower, naming limit_name (the limit's name for the reader, e.g. "the server's memory_limit")
 * and, as param, the spec field to change: "model" when the base weights alone exceed the limit,
 * else "hyperparameters.batch_size". */
int lorad_memory_estimate_check(const struct lorad_memory_estimate *e, int64_t limit, const char *limit_name,
                                struct lorad_error *err);

/* One line for an error message or a log: "1.2 GiB (1288490188 bytes: base weights 0.9 GiB,
 * activations 0.2 GiB, ...)". Writes at most n bytes. */
void lorad_memory_estimate_describe(char *out, size_t n, const struct lorad_memory_estimate *e);
