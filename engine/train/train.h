/* One fine-tuning run: the code path shared by `lorad train` and the daemon's workers.
 *
 * The run reads the job spec, loads the base model and its tokenizer, validates and indexes the
 * datasets, trains LoRA with AdamW, and writes under out_dir:
 *   metrics.jsonl                       one line per optimiser step (train_metrics.h)
 *   checkpoints/step-N/                 adapter_model.safetensors, adapter_config.json,
 *                                       adapter.gguf, adapter.tar, training_state.safetensors
 *   adapter/                            the final adapter (PEFT directory)
 * Every `checkpoint_every_steps` and at the end it checkpoints atomically (with a validation set,
 * after a pass over the whole of it, whose loss the step's metrics carry as full_valid_loss); with
 * resume it continues from the newest complete checkpoint and produces bit-identical results to an
 * uninterrupted run with the same seed and threads. The engine never prints: it reports through
 * the callbacks. */
#pragma once
#include <stdbool.h>
#include <stdint.h>

#include "dataset.h"
#include "error.h"
#include "jobspec.h"
#include "train_metrics.h"

enum lorad_train_control {
    LORAD_TRAIN_CONTINUE = 0,
    LORAD_TRAIN_CANCEL = 1, /* stop at once; no final checkpoint */
    LORAD_TRAIN_PAUSE = 2,  /* checkpoint, then stop; a resume continues from there */
};

struct lorad_train_callbacks {
    void *ctx;
    /* After each optimiser step (and its evaluation, if any). */
    void (*on_step)(void *ctx, const struct lorad_step_metrics *m);
    /* After a checkpoint directory has been committed and before older ones beyond
     * keep_checkpoints are deleted, so a record of them can be dropped first. */
    void (*on_checkpoint)(void *ctx, int64_t step, const char *dir, const struct lorad_step_metrics *m);
    /* Human-readable progress events: "info", "warning". */
    void (*on_message)(void *ctx, const char *level, const char *message);
    /* Asked before each step; NULL means always continue. */
    enum lorad_train_control (*poll)(void *ctx);
};

/* Data-parallel training across world_size processes (issue 16). Each process runs the same job
 * with the same options and takes rows [n*rank/K, n*(rank+1)/K) of every n-row micro-batch; the
 * hook sums across processes, so every step normalises by the labels of the whole global step
 * and every process applies the same AdamW update. Only rank 0 writes metrics, checkpoints and the
 * adapter (the others' out_dir must be the same directory or a scratch one). The engine knows
 * nothing of the transport: the caller provides the sum (MPI in daemon/train_mpi.c). */
struct lorad_train_collective {
    int rank, world_size;
    void *ctx;
    /* buf (n) = the element-wise sum of every process's buf, bit-identical on all of them (so
     * that their parameters never drift apart). 0 or -errno. */
    int (*sum_f64)(void *ctx, double *buf, size_t n);
    int (*sum_f32)(void *ctx, float *buf, size_t n);
};

struct lorad_train_options {
    const char *model_path;      /* resolved base model: HF dir, .gguf or llama2.c .bin */
    const char *training_path;   /* resolved dataset files */
    const char *validation_path; /* NULL when none */
    const char *out_dir;
    bool resume;                 /* continue from out_dir's newest checkpoint if there is one */
    bool skip_invalid;           /* drop invalid dataset lines instead of failing */
    int threads;                 /* 0: spec's hyperparameters.threads, else all cores */
    int64_t memory_limit_bytes;  /* 0: no limit; else the run refuses (-E2BIG) a job whose
                                  * lorad_train_memory_estimate exceeds it */
    const struct lorad_train_collective *collective; /* NULL: this process alone */
};

enum lorad_train_outcome {
    LORAD_TRAIN_FINISHED = 0,
    LORAD_TRAIN_CANCELLED = 1,
    LORAD_TRAIN_PAUSED = 2,
};

struct lorad_train_result {
    enum lorad_train_outcome outcome;
    int64_t steps_done;
    int64_t total_steps;
    int64_t trained_tokens;
    struct lorad_step_metrics last;   /* last step's metrics (valid when steps_done > 0) */
    struct lorad_dataset_report train_report;
    int64_t truncated;                /* samples cut at max_seq_len */
    enum lorad_compute_dtype compute_dtype; /* what the frozen-weight products computed in (never AUTO) */
    char final_checkpoint[4096];      /* "" when none */
};

/* Runs the job. Returns 0 when the run finished, was cancelled or paused (see ret_result->outcome);
 * -errno with err naming the cause otherwise (bad data: -EINVAL with the file and line; out of
 * memory: -ENOMEM; a NaN loss: -ERANGE). ret_result is filled in both cases as far as it got. */
int lorad_train_run(const struct lorad_job_spec *spec, const struct lorad_train_options *opt,
                    const struct lorad_train_callbacks *cb, struct lorad_train_result *ret_result,
                    struct lorad_error *err);
