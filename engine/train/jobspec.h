/* The fine-tuning job spec: the body of POST /v1/fine_tuning/jobs and the JSON file `lorad train`
 * runs. One parser serves both, so the daemon and the CLI accept exactly the same jobs.
 *
 * Accepted shape (OpenAI's names where OpenAI has one):
 *   {"model", "training_file", "validation_file"?, "seed"?, "suffix"?, "metadata"?,
 *    "hyperparameters"?: {...}, "lora"?: {...}, "data"?: {...},
 *    "method"?: {"type": "supervised", "supervised"?: {"hyperparameters": {...}}}
 *             | {"type": "dpo", "dpo"?: {"hyperparameters": {"beta"?, ...}}}}
 * The method's hyperparameters are the top-level ones (which OpenAI deprecates but still takes)
 * plus, for DPO, beta; a key given in both places must have the same value in both. Every
 * hyperparameter may be given as "auto", meaning its default. Unknown keys are errors that name
 * the key. The defaults and bounds are the tables in jobspec.c (documented in openapi.yaml). */
#pragma once
#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "data_format.h"
#include "error.h"
#include "gemm.h"
#include "lora.h"  /* enum lorad_lora_init */
#include "optim.h" /* enum lorad_lr_schedule */

#define LORAD_JOB_MAX_TARGETS 8
#define LORAD_JOB_SUFFIX_MAX 64
#define LORAD_JOB_REF_MAX 1024 /* model / file references: ids or local paths */

struct lorad_hyperparameters {
    int n_epochs;
    int batch_size;
    double learning_rate;
    int gradient_accumulation_steps;
    int64_t max_steps;              /* 0 = no limit (JSON null) */
    int max_seq_len;
    enum lorad_lr_schedule lr_scheduler;
    int64_t warmup_steps;
    double weight_decay;
    double max_grad_norm;           /* 0 = no clipping (JSON null) */
    double adam_beta1;
    double adam_beta2;
    double adam_epsilon;
    bool packing;
    bool train_on_input;
    int64_t eval_every_steps;       /* 0 = only at the end (JSON null) */
    int64_t checkpoint_every_steps; /* 0 = only at the end (JSON null) */
    int keep_checkpoints;
    bool activation_checkpointing;
    enum lorad_compute_dtype compute_dtype; /* AUTO unless the job names one (gemm.h) */
    int threads;                    /* 0 = the runner decides (JSON null) */
};

struct lorad_lora_spec {
    int r;
    double alpha;
    double dropout;
    int n_targets;
    char targets[LORAD_JOB_MAX_TARGETS][16]; /* expanded: "all-linear" becomes the seven projections */
    bool use_rslora;
    bool use_dora;    /* DoRA (PEFT's use_dora) */
    enum lorad_lora_init init;
    double lr_ratio;  /* LoRA+: lr of lora_B / lr of lora_A; 1 = plain LoRA */
    char init_adapter[LORAD_JOB_REF_MAX];  /* "" = none */
};

enum lorad_train_method {
    LORAD_METHOD_SUPERVISED = 0, /* mean token cross-entropy of the trained tokens */
    LORAD_METHOD_DPO,            /* preference pairs (engine/train/dpo.h); the data must be "preference" */
};

struct lorad_method_spec {
    enum lorad_train_method type;
    double beta; /* DPO: the KL penalty's strength, (0, 10], default 0.1 */
};

struct lorad_job_spec {
    char model[LORAD_JOB_REF_MAX];
    char training_file[LORAD_JOB_REF_MAX];
    char validation_file[LORAD_JOB_REF_MAX]; /* "" = none */
    int64_t seed;
    char suffix[LORAD_JOB_SUFFIX_MAX + 1];   /* "" = none */
    json_t *metadata;                        /* owned; NULL = none */
    struct lorad_hyperparameters hp;
    struct lorad_method_spec method;
    struct lorad_lora_spec lora;
    enum lorad_data_format data_format;
    enum lorad_chat_template template;
};

/* Parses and validates body into a fully defaulted spec. body is borrowed. On failure returns
 * -EINVAL and err names the offending key as a dotted path (e.g. "hyperparameters.batch_size" or
 * "lora.target_modules[2]"). ret_spec is written only on success; release it with
 * lorad_job_spec_clear(). */
int lorad_job_spec_parse(const json_t *body, struct lorad_job_spec *ret_spec, struct lorad_error *err);

/* The normalised spec as JSON in the canonical shape above (every default filled in, nulls where
 * a field is off), with the hyperparameters both at the top level and, as OpenAI's job object
 * echoes them, in "method": {"type": T, T: {"hyperparameters": {..., "beta" for dpo}}}. A new
 * reference owned by the caller; NULL on ENOMEM. Parsing this JSON again yields the same spec. */
json_t *lorad_job_spec_to_json(const struct lorad_job_spec *spec);

/* The engine's LoRA config for the spec's lora block (targets parsed into the module bit set).
 * Returns 0, or -EINVAL naming "lora.target_modules" (cannot happen for a parsed spec). */
int lorad_job_lora_config(const struct lorad_job_spec *spec, struct lorad_lora_config *ret_config,
                          struct lorad_error *err);

/* Frees what the spec owns (its metadata). Safe to call twice. */
void lorad_job_spec_clear(struct lorad_job_spec *spec);

const char *lorad_lr_schedule_name(enum lorad_lr_schedule s);
/* "supervised" or "dpo". */
const char *lorad_train_method_name(enum lorad_train_method t);
/* Model rows per batch_size unit: a DPO pair is two rows (its two outputs). */
int lorad_job_rows_per_example(const struct lorad_job_spec *spec);
