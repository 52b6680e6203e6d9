/* The fine-tuning run (train.h): model + tokenizer + corpus → steps → checkpoints → adapter.
 *
 * Exact resume rests on three facts: the engine is bit-deterministic for a fixed seed and thread
 * count; every source of randomness is a counter-based function of the seed (LoRA init, the epoch
 * order, dropout masks via the model's dropout counter); and a checkpoint holds every piece of
 * mutable state (LoRA params, AdamW m/v/step, the data cursor, the dropout counter). Restoring
 * those reproduces the uninterrupted run bit for bit. */
#include "train.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "adapter.h"
#include "adapter_apply.h"
#include "adapter_read.h"
#include "checkpoint_dir.h"
#include "dpo.h"
#include "fsutil.h"
#include "model.h"
#include "model_file.h"
#include "model_tokenizer.h"
#include "optim.h"
#include "safetensors_read.h"
#include "safetensors_write.h"
#include "samples.h"
#include "tar.h"
#include "tokenizer.h"
#include "train_memory.h"

#define STATE_FILE "training_state.safetensors"
#define STATE_FORMAT "lorad-training-state-1"

struct cursor {
    int64_t step;          /* optimiser steps completed */
    int epoch;             /* epoch of the next row */
    int64_t row;           /* next row of that epoch's plan */
    int64_t tokens_seen;
    double elapsed_before; /* seconds spent in earlier processes of this run */
};

struct run {
    float *lr_scale;                     /* (n_params) LoRA+ learning-rate scales, or NULL */
    const struct lorad_job_spec *spec;
    const struct lorad_train_options *opt;
    const struct lorad_train_callbacks *cb;
    struct lorad_train_result *res;
    struct lorad_error *err;

    struct lorad_model_file *mf;
    struct lorad_tokenizer *tok;
    struct lorad_encoder enc;
    struct lorad_corpus *train, *valid;
    struct lorad_model *model;
    struct lorad_adamw adam;
    struct lorad_optim_config ocfg;
    int threads;
    char spec_hash[17];

    int64_t total_steps;
    int rows_per_micro;    /* batch_size: plan rows (records, or packed rows) per micro-batch */
    int rows_per_example;  /* model rows per plan row: 2 for DPO (a pair's two outputs), else 1 */
    int micro_per_step;    /* gradient_accumulation_steps */
    struct lorad_epoch_plan plan;
    int plan_epoch;        /* epoch plan currently holds; -1 none */
    struct lorad_batch *micro; /* (micro_per_step) */

    struct cursor cur;
    int64_t last_checkpoint_step;
    double t_start;
    double step_sum_s;       /* this step's time in collective sums, and their payload bytes */
    int64_t step_sum_bytes;
    int64_t steps_this_process;

    char ckpt_root[LORAD_CHECKPOINT_PATH_MAX];
    char metrics_path[LORAD_CHECKPOINT_PATH_MAX];
};

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void say(struct run *r, const char *level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void say(struct run *r, const char *level, const char *fmt, ...) {
    if (!r->cb || !r->cb->on_message) return;
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    r->cb->on_message(r->cb->ctx, level, buf);
}

/* ---- the tokenizer as the corpus sees it ----------------------------------------------------- */

/* The model's own tokenizer: a GGUF's vocabulary or the file beside an HF model's weights. */
static int load_tokenizer(struct run *r) {
    r->enc = (struct lorad_encoder){.bos_id = -1, .eos_id = -1, .vocab_size = r->mf->weights.cfg.vocab_size};
    int rc = lorad_model_file_tokenizer(r->mf, NULL, &r->tok, r->err);
    if (rc < 0) return rc;
    if (!r->tok) {
        /* A llama2.c .bin carries no tokenizer: the data must be pre-tokenised. */
        say(r, "info", "%s has no tokenizer: training data must be {\"input_ids\": [...]} records", r->opt->model_path);
        return 0;
    }
    lorad_encoder_from_tokenizer(&r->enc, r->tok, lorad_tokenizer_vocab_size(r->tok));
    return 0;
}

/* ---- data ----------------------------------------------------------------------------------- */

/* A DPO job trains on preference pairs and a supervised one on anything else; the file is named
 * by param. */
static int check_corpus_method(struct run *r, const struct lorad_corpus *c, const char *path, const char *param) {
    bool pairs = lorad_corpus_format(c) == LORAD_DATA_PREFERENCE;
    if (r->spec->method.type == LORAD_METHOD_DPO && !pairs)
        return lorad_error_set(r->err, -EINVAL, param,
                               "%s: method dpo trains on preference pairs ({\"input\", \"preferred_output\", "
                               "\"non_preferred_output\"} lines), but the file is %s data",
                               path, lorad_data_format_name(lorad_corpus_format(c)));
    if (r->spec->method.type != LORAD_METHOD_DPO && pairs)
        return lorad_error_set(r->err, -EINVAL, param,
                               "%s holds preference pairs, which train with method.type \"dpo\" (this job is %s)",
                               path, lorad_train_method_name(r->spec->method.type));
    assert(lorad_corpus_rows_per_record(c) == r->rows_per_example);
    return 0;
}

static int open_corpora(struct run *r) {
    const struct lorad_hyperparameters *hp = &r->spec->hp;
    enum lorad_chat_template tmpl = lorad_encoder_template(&r->enc, r->spec->template);
    struct lorad_corpus_options co = {.format = r->spec->data_format,
                                      .tmpl = tmpl,
                                      .train_on_input = hp->train_on_input,
                                      .max_seq_len = hp->max_seq_len,
                                      .skip_invalid = r->opt->skip_invalid};
    int rc = lorad_corpus_open(&r->train, r->opt->training_path, &co, &r->enc, &r->res->train_report, r->err);
    if (rc < 0) {
        if (!r->err->param[0]) snprintf(r->err->param, sizeof r->err->param, "training_file");
        return rc;
    }
    if ((rc = check_corpus_method(r, r->train, r->opt->training_path, "training_file")) < 0) return rc;
    say(r, "info", "training data: %" PRId64 " %s (%s, template %s), %" PRId64 " tokens, %" PRId64
        " truncated to %d", lorad_corpus_size(r->train), r->rows_per_example > 1 ? "pairs" : "samples",
        lorad_data_format_name(lorad_corpus_format(r->train)), lorad_chat_template_name(tmpl),
        lorad_corpus_tokens(r->train), lorad_corpus_truncated(r->train), hp->max_seq_len);
    if (r->res->train_report.n_invalid > 0)
        say(r, "warning", "skipped %" PRId64 " invalid lines of the training file", r->res->train_report.n_invalid);
    r->res->truncated = lorad_corpus_truncated(r->train);

    if (r->opt->validation_path) {
        struct lorad_dataset_report vrep;
        rc = lorad_corpus_open(&r->valid, r->opt->validation_path, &co, &r->enc, &vrep, r->err);
        if (rc < 0) {
            if (!r->err->param[0]) snprintf(r->err->param, sizeof r->err->param, "validation_file");
            return rc;
        }
        if ((rc = check_corpus_method(r, r->valid, r->opt->validation_path, "validation_file")) < 0) return rc;
    } else if (hp->eval_every_steps > 0 && lorad_corpus_size(r->train) >= 2) {
        /* A held-out tenth (at least one sample, at most 1000) measures generalisation. */
        int64_t n = lorad_corpus_size(r->train) / 10;
        if (n < 1) n = 1;
        if (n > 1000) n = 1000;
        rc = lorad_corpus_split_holdout(r->train, n, &r->valid, r->err);
        if (rc < 0) {
            if (!r->err->param[0]) snprintf(r->err->param, sizeof r->err->param, "training_file");
            return rc;
        }
        say(r, "info", "holding out %" PRId64 " samples of the training file for validation", n);
    }
    return 0;
}

static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

/* Makes r->plan the plan of `epoch` (0-based), building it unless it already is. */
static int ensure_plan(struct run *r, int epoch) {
    if (r->plan_epoch == epoch) return 0;
    lorad_epoch_plan_clear(&r->plan);
    r->plan_epoch = -1;
    const struct lorad_hyperparameters *hp = &r->spec->hp;
    int rc = lorad_epoch_plan_build(&r->plan, r->train, (uint64_t)r->spec->seed, epoch, true, hp->packing,
                                    hp->max_seq_len);
    if (rc < 0) return lorad_error_set(r->err, rc, "", "cannot plan epoch %d", epoch + 1);
    r->plan_epoch = epoch;
    return 0;
}

/* Steps of the whole run: each epoch's rows cut into steps of batch_size × accumulation rows (the
 * last step of an epoch may be short), capped by max_steps. Without packing a row is one record whatever the order,
 * so nothing is built to count them. With packing the rows depend on the epoch's shuffle, so the
 * plan is built through ensure_plan, the one place plans are made, and the last one counted stays
 * for the run (for one epoch, or max_steps within it, the plan the run uses is the one counted).
 * Keeping every epoch's plan instead would cost 16 bytes per record per epoch, which the memory
 * estimate counts once. */
static int count_steps(struct run *r) {
    const struct lorad_hyperparameters *hp = &r->spec->hp;
    int64_t rows_per_step = (int64_t)r->rows_per_micro * r->micro_per_step, total = 0;
    for (int e = 0; e < hp->n_epochs; e++) {
        int64_t rows = lorad_corpus_size(r->train);
        if (hp->packing) {
            int rc = ensure_plan(r, e);
            if (rc < 0) return rc;
            rows = r->plan.n_rows;
        }
        total += ceil_div(rows, rows_per_step);
        if (hp->max_steps > 0 && total >= hp->max_steps) break;
    }
    if (hp->max_steps > 0 && total > hp->max_steps) total = hp->max_steps;
    r->total_steps = total;
    return 0;
}

/* ---- model ---------------------------------------------------------------------------------- */

/* Refuses a run whose estimated memory exceeds the caller's limit before anything big is
 * allocated, and reports the estimate. */
static int check_memory(struct run *r) {
    int64_t records = lorad_corpus_size(r->train) + (r->valid ? lorad_corpus_size(r->valid) : 0);
    struct lorad_memory_estimate e;
    int rc = lorad_train_memory_estimate(&e, r->spec, r->mf, r->threads, records, r->err);
    if (rc < 0) return rc;
    char what[400];
    lorad_memory_estimate_describe(what, sizeof what, &e);
    say(r, "info", "memory estimate %s", what);
    if (r->opt->memory_limit_bytes > 0)
        return lorad_memory_estimate_check(&e, r->opt->memory_limit_bytes, "the memory limit", r->err);
    return 0;
}

static int build_model(struct run *r) {
    const struct lorad_job_spec *s = r->spec;
    struct lorad_lora_config lc;
    int rc = lorad_job_lora_config(s, &lc, r->err);
    if (rc < 0) return rc;
    struct lorad_run_options ro = {.threads = r->threads,
                                   .max_batch = r->rows_per_micro * r->rows_per_example,
                                   .max_seq = s->hp.max_seq_len,
                                   .activation_checkpointing = s->hp.activation_checkpointing,
                                   .seed = (uint64_t)s->seed,
                                   .compute_dtype = s->hp.compute_dtype};
    rc = lorad_model_new(&r->model, &r->mf->weights, &lc, &ro, r->err);
    if (rc < 0) {
        /* The engine names its own fields; map them to the job spec's. */
        if (strcmp(r->err->param, "max_batch") == 0) snprintf(r->err->param, sizeof r->err->param, "hyperparameters.batch_size");
        else if (strcmp(r->err->param, "max_seq") == 0) snprintf(r->err->param, sizeof r->err->param, "hyperparameters.max_seq_len");
        else if (strcmp(r->err->param, "threads") == 0) snprintf(r->err->param, sizeof r->err->param, "hyperparameters.threads");
        else if (strcmp(r->err->param, "compute_dtype") == 0)
            snprintf(r->err->param, sizeof r->err->param, "hyperparameters.compute_dtype");
        return rc;
    }
    r->res->compute_dtype = lorad_model_compute_dtype(r->model);
    say(r, "info", "computing in %s (%s requested; base stored as %s)", lorad_compute_dtype_names[r->res->compute_dtype],
        lorad_compute_dtype_names[s->hp.compute_dtype], lorad_dtype_name(r->mf->weights.lm_head.dtype));
    size_t n;
    lorad_model_params(r->model, &n);
    if (lorad_adamw_init(&r->adam, n) < 0) return lorad_error_set(r->err, -ENOMEM, "", "out of memory for AdamW state");
    if (s->lora.lr_ratio != 1.0) {
        /* LoRA+ (Hayou et al.): every lora_B element at lr_ratio times the learning rate */
        float *scale = malloc(sizeof(float) * (n ? n : 1));
        if (!scale) return lorad_error_set(r->err, -ENOMEM, "", "out of memory for the LoRA+ learning rates");
        for (size_t i = 0; i < n; i++) scale[i] = 1.0f;
        for (int t = 0; t < lorad_model_n_lora_tensors(r->model); t++) {
            const struct lorad_lora_tensor *lt = lorad_model_lora_tensor(r->model, t);
            if (!lt->is_b) continue;
            for (int64_t i = 0; i < lt->rows * lt->cols; i++) scale[lt->offset + (size_t)i] = (float)s->lora.lr_ratio;
        }
        r->lr_scale = scale;
        r->adam.lr_scale = scale;
    }

    lorad_optim_config_defaults(&r->ocfg);
    r->ocfg.lr = s->hp.learning_rate;
    r->ocfg.beta1 = s->hp.adam_beta1;
    r->ocfg.beta2 = s->hp.adam_beta2;
    r->ocfg.eps = s->hp.adam_epsilon;
    r->ocfg.weight_decay = s->hp.weight_decay;
    r->ocfg.max_grad_norm = s->hp.max_grad_norm;
    r->ocfg.warmup_steps = s->hp.warmup_steps;
    r->ocfg.total_steps = r->total_steps;
    r->ocfg.schedule = s->hp.lr_scheduler;
    rc = lorad_optim_config_validate(&r->ocfg, r->err);
    if (rc < 0) return rc;

    r->micro = calloc((size_t)r->micro_per_step, sizeof *r->micro);
    if (!r->micro) return lorad_error_set(r->err, -ENOMEM, "", "out of memory for batches");
    for (int k = 0; k < r->micro_per_step; k++)
        if (lorad_batch_alloc(&r->micro[k], r->rows_per_micro * r->rows_per_example, s->hp.max_seq_len) < 0)
            return lorad_error_set(r->err, -ENOMEM, "", "out of memory for batches");
    return 0;
}

/* init_adapter: start from an existing adapter's weights (shape-checked against this base). */
static int load_init_adapter(struct run *r) {
    const char *path = r->spec->lora.init_adapter;
    if (!path[0]) return 0;
    struct lorad_adapter *a = NULL;
    int rc = lorad_adapter_load(path, lorad_model_config(r->model), &a, r->err);
    if (rc < 0) {
        snprintf(r->err->param, sizeof r->err->param, "lora.init_adapter");
        return rc;
    }
    if (a->meta.r != r->spec->lora.r) {
        rc = lorad_error_set(r->err, -EINVAL, "lora.init_adapter", "%s has rank %d but lora.r is %d", path, a->meta.r,
                             r->spec->lora.r);
        goto out;
    }
    if (a->meta.use_dora && !r->spec->lora.use_dora) {
        rc = lorad_error_set(r->err, -EINVAL, "lora.init_adapter",
                             "%s is a DoRA adapter (use_dora in its adapter_config.json): set lora.use_dora to continue "
                             "training it", path);
        goto out;
    }
    rc = lorad_adapter_copy_into(a, r->model, r->err);
    if (rc < 0) {
        snprintf(r->err->param, sizeof r->err->param, "lora.init_adapter");
        goto out;
    }
    /* a plain LoRA adapter continued as DoRA: the magnitudes start where PEFT puts them, at the
     * norms of the adapted weight, so the first step starts from the adapter's own outputs */
    if (r->spec->lora.use_dora && !a->meta.use_dora) lorad_model_dora_reset_magnitudes(r->model);
    say(r, "info", "initialised LoRA weights from %s (%d tensors)", path, a->n_tensors);
out:
    lorad_adapter_free(a);
    return rc;
}

/* ---- adapter files and checkpoints --------------------------------------------------------- */

/* An adapter trained from PiSSA / OLoRA factors fits the residual base W - s B0 A0, which no other
 * tool has. As PEFT's save_pretrained(path_initial_model_for_weight_conversion=...) does, it is
 * written as the plain LoRA of rank 2r on the original base that computes the same weight:
 *   W + s B A - s B0 A0 = W + s' [B, -B0] [A; A0],
 * with s' = s, so alpha doubles with r (alpha/r), or grows by sqrt(2) with rsLoRA (alpha/sqrt(r)).
 * ts[i].data then points into *ret_buf (2 n floats), which the caller frees. */
static int residual_free_tensors(struct run *r, struct lorad_adapter_tensor *ts, int n, float **ret_buf,
                                 struct lorad_adapter_meta *meta) {
    size_t n_floats;
    const float *params = lorad_model_params(r->model, &n_floats);
    const float *init = lorad_model_init_factors(r->model, NULL);
    float *buf = malloc(sizeof(float) * 2 * (n_floats ? n_floats : 1));
    if (!buf) return lorad_error_set(r->err, -ENOMEM, "", "out of memory for the rank-%d adapter", 2 * meta->r);
    size_t at = 0;
    int64_t k = meta->r;
    for (int i = 0; i < n; i++) {
        const struct lorad_lora_tensor *t = lorad_model_lora_tensor(r->model, i);
        const float *p = params + t->offset, *p0 = init + t->offset;
        float *o = buf + at;
        if (!t->is_b) { /* A' (2r, in) = [A; A0] */
            memcpy(o, p, sizeof(float) * (size_t)(t->rows * t->cols));
            memcpy(o + t->rows * t->cols, p0, sizeof(float) * (size_t)(t->rows * t->cols));
            ts[i].rows = 2 * t->rows;
            ts[i].cols = t->cols;
        } else { /* B' (out, 2r) = [B, -B0] */
            for (int64_t j = 0; j < t->rows; j++)
                for (int64_t c = 0; c < k; c++) {
                    o[j * 2 * k + c] = p[j * k + c];
                    o[j * 2 * k + k + c] = -p0[j * k + c];
                }
            ts[i].rows = t->rows;
            ts[i].cols = 2 * k;
        }
        ts[i].data = o;
        at += (size_t)(2 * t->rows * t->cols);
    }
    assert(at == 2 * n_floats);
    meta->r = 2 * meta->r;
    meta->alpha = meta->use_rslora ? meta->alpha * sqrt(2.0) : 2.0 * meta->alpha;
    *ret_buf = buf;
    return 0;
}

static int write_adapter_files(struct run *r, const char *dir) {
    int n = lorad_model_n_lora_tensors(r->model);
    const float *params = lorad_model_params(r->model, NULL);
    struct lorad_adapter_tensor *ts = calloc((size_t)n, sizeof *ts);
    if (!ts) return lorad_error_set(r->err, -ENOMEM, "", "out of memory");
    for (int i = 0; i < n; i++) {
        const struct lorad_lora_tensor *t = lorad_model_lora_tensor(r->model, i);
        snprintf(ts[i].name, sizeof ts[i].name, "%s", t->name);
        ts[i].data = params + t->offset;
        ts[i].rows = t->rows;
        ts[i].cols = t->cols;
    }
    struct lorad_adapter_meta meta = {.r = r->spec->lora.r,
                                      .alpha = r->spec->lora.alpha,
                                      .dropout = r->spec->lora.dropout,
                                      .use_rslora = r->spec->lora.use_rslora,
                                      .use_dora = r->spec->lora.use_dora,
                                      .n_targets = r->spec->lora.n_targets};
    for (int i = 0; i < meta.n_targets; i++) snprintf(meta.targets[i], sizeof meta.targets[i], "%s", r->spec->lora.targets[i]);
    snprintf(meta.base_model, sizeof meta.base_model, "%s", r->spec->model);
    float *converted = NULL;
    if (lorad_model_init_factors(r->model, NULL) && residual_free_tensors(r, ts, n, &converted, &meta) < 0) {
        free(ts);
        return -ENOMEM;
    }

    char path[LORAD_CHECKPOINT_PATH_MAX];
    int rc = lorad_adapter_write_peft(dir, &meta, ts, n, r->err);
    /* llama.cpp's LoRA format has no magnitude vectors: a DoRA adapter has no adapter.gguf (the
     * download and `lorad export` say why; the merged model is the way into llama.cpp) */
    if (rc == 0 && !meta.use_dora && (rc = lorad_path_join(path, sizeof path, dir, "adapter.gguf")) == 0)
        rc = lorad_adapter_write_gguf(path, &meta, ts, n, lorad_model_config(r->model), r->err);
    if (rc == 0 && (rc = lorad_path_join(path, sizeof path, dir, "adapter.tar")) == 0) {
        const char *names[] = {"adapter_model.safetensors", "adapter_config.json"};
        rc = lorad_tar_write(path, dir, names, 2, "adapter", r->err);
    }
    free(converted);
    free(ts);
    return rc;
}

/* A hash of the normalised spec: a resume under a different spec would not reproduce the run.
 * The compute dtype is left out, like the thread count: restore warns when either differs, and
 * checkpoints written before the field existed still resume. */
static void hash_spec(struct run *r) {
    json_t *j = lorad_job_spec_to_json(r->spec);
    json_t *hp = j ? json_object_get(j, "hyperparameters") : NULL;
    if (hp) json_object_del(hp, "compute_dtype");
    /* A supervised job's method echoes its hyperparameters and nothing else: without it the hash
     * stays that of checkpoints written before "method" was echoed. */
    if (j && r->spec->method.type == LORAD_METHOD_SUPERVISED) json_object_del(j, "method");
    /* likewise lora.lr_ratio at its default: checkpoints from before LoRA+ still resume */
    if (j && r->spec->lora.lr_ratio == 1.0) json_object_del(json_object_get(j, "lora"), "lr_ratio");
    /* and lora.use_dora when off: checkpoints from before DoRA still resume */
    if (j && !r->spec->lora.use_dora) json_object_del(json_object_get(j, "lora"), "use_dora");
    char *s = j ? json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    uint64_t h = 1469598103934665603ull;
    for (const char *p = s ? s : ""; *p; p++) h = (h ^ (uint8_t)*p) * 1099511628211ull;
    snprintf(r->spec_hash, sizeof r->spec_hash, "%016" PRIx64, h);
    free(s);
    json_decref(j);
}

static int write_state(struct run *r, const char *dir) {
    char path[LORAD_CHECKPOINT_PATH_MAX];
    int rc = lorad_path_join(path, sizeof path, dir, STATE_FILE);
    if (rc < 0) return lorad_error_set(r->err, rc, "", "checkpoint path too long");
    size_t n;
    const float *params = lorad_model_params(r->model, &n);
    struct lorad_st_writer *w;
    if ((rc = lorad_st_writer_new(&w, path)) < 0) return lorad_error_set(r->err, rc, "", "out of memory");
    int64_t shape[1] = {(int64_t)n};
    char v[9][64];
    snprintf(v[0], sizeof v[0], "%" PRId64, r->cur.step);
    snprintf(v[1], sizeof v[1], "%d", r->cur.epoch);
    snprintf(v[2], sizeof v[2], "%" PRId64, r->cur.row);
    snprintf(v[3], sizeof v[3], "%" PRId64, r->cur.tokens_seen);
    snprintf(v[4], sizeof v[4], "%.17g", r->cur.elapsed_before + (now_s() - r->t_start));
    snprintf(v[5], sizeof v[5], "%" PRIu64, lorad_model_dropout_counter(r->model));
    snprintf(v[6], sizeof v[6], "%" PRId64, r->adam.step);
    snprintf(v[7], sizeof v[7], "%d", r->threads);
    snprintf(v[8], sizeof v[8], "%" PRId64, lorad_corpus_size(r->train));
    const char *keys[9] = {"step", "epoch", "row", "tokens_seen", "elapsed_s", "dropout_counter", "adam_step",
                           "threads", "train_samples"};
    rc = lorad_st_writer_metadata(w, "format", STATE_FORMAT);
    if (rc == 0) rc = lorad_st_writer_metadata(w, "spec_hash", r->spec_hash);
    if (rc == 0) rc = lorad_st_writer_metadata(w, "compute_dtype", lorad_compute_dtype_names[r->res->compute_dtype]);
    for (int i = 0; i < 9 && rc == 0; i++) rc = lorad_st_writer_metadata(w, keys[i], v[i]);
    if (rc == 0) rc = lorad_st_writer_add(w, "lora.params", "F32", shape, 1, params, n * sizeof(float));
    if (rc == 0) rc = lorad_st_writer_add(w, "adamw.m", "F32", shape, 1, r->adam.m, n * sizeof(float));
    if (rc == 0) rc = lorad_st_writer_add(w, "adamw.v", "F32", shape, 1, r->adam.v, n * sizeof(float));
    const float *init = lorad_model_init_factors(r->model, NULL);
    if (rc == 0 && init) rc = lorad_st_writer_add(w, "lora.init_factors", "F32", shape, 1, init, n * sizeof(float));
    if (rc < 0) {
        lorad_st_writer_free(w);
        return lorad_error_set(r->err, rc, "", "cannot build %s", path);
    }
    return lorad_st_writer_finish(w, r->err);
}

static const struct lorad_train_collective *collective_of(const struct run *r) {
    const struct lorad_train_collective *c = r->opt->collective;
    return c && c->world_size > 1 ? c : NULL;
}

/* Whether this process writes the run's files (rank 0, or the only process). */
static bool is_writer(const struct run *r) { return !collective_of(r) || r->opt->collective->rank == 0; }

/* Books a finished sum that started at t0; an error names `what`. */
static int sum_done(struct run *r, int rc, double t0, size_t bytes, const char *what) {
    r->step_sum_s += now_s() - t0;
    r->step_sum_bytes += (int64_t)bytes;
    if (rc < 0)
        return lorad_error_set(r->err, rc, "", "summing %s across %d processes failed: %s", what,
                               r->opt->collective->world_size, strerror(-rc));
    return 0;
}
/* buf (n) summed across the processes (nothing to do alone). */
static int sum_f64(struct run *r, double *buf, size_t n, const char *what) {
    const struct lorad_train_collective *c = collective_of(r);
    double t0 = now_s();
    return c ? sum_done(r, c->sum_f64(c->ctx, buf, n), t0, n * sizeof *buf, what) : 0;
}
static int sum_f32(struct run *r, float *buf, size_t n, const char *what) {
    const struct lorad_train_collective *c = collective_of(r);
    double t0 = now_s();
    return c ? sum_done(r, c->sum_f32(c->ctx, buf, n), t0, n * sizeof *buf, what) : 0;
}

static int checkpoint(struct run *r, const struct lorad_step_metrics *m) {
    char tmp[LORAD_CHECKPOINT_PATH_MAX], final[LORAD_CHECKPOINT_PATH_MAX];
    if (!is_writer(r)) { /* rank 0 writes it; the others hold the same state */
        r->last_checkpoint_step = r->cur.step;
        return 0;
    }
    int rc = lorad_checkpoint_begin(r->ckpt_root, r->cur.step, tmp, sizeof tmp, r->err);
    if (rc == 0) rc = write_adapter_files(r, tmp);
    if (rc == 0) rc = write_state(r, tmp);
    if (rc == 0) rc = lorad_checkpoint_commit(r->ckpt_root, r->cur.step, final, sizeof final, r->err);
    if (rc < 0) return rc;
    r->last_checkpoint_step = r->cur.step;
    snprintf(r->res->final_checkpoint, sizeof r->res->final_checkpoint, "%s", final);
    /* The callback records the checkpoint (and forgets pruned ones) before their directories go,
     * so no record ever names a deleted directory, even after a crash in between. */
    if (r->cb && r->cb->on_checkpoint) r->cb->on_checkpoint(r->cb->ctx, r->cur.step, final, m);
    lorad_checkpoint_prune(r->ckpt_root, r->spec->hp.keep_checkpoints);
    return 0;
}

static int meta_i64(const struct lorad_st_file *f, const char *key, int64_t *ret, struct lorad_error *err) {
    const char *s = lorad_st_metadata(f, key);
    char *end;
    errno = 0;
    long long v = s ? strtoll(s, &end, 10) : 0;
    if (!s || errno || end == s || *end)
        return lorad_error_set(err, -EINVAL, "", "%s: training state has no valid \"%s\"", lorad_st_path(f), key);
    *ret = v;
    return 0;
}

static int read_f32(const struct lorad_st_file *f, const char *name, float *dst, size_t n, struct lorad_error *err) {
    const struct lorad_st_tensor *t = lorad_st_find(f, name);
    if (!t || strcmp(t->dtype, "F32") != 0 || t->nbytes != n * sizeof(float))
        return lorad_error_set(err, -EINVAL, "", "%s: tensor %s missing or not F32[%zu]", lorad_st_path(f), name, n);
    memcpy(dst, t->data, n * sizeof(float));
    return 0;
}

/* Restores everything a checkpoint holds; refuses one written for another spec or dataset. */
/* Restores the run from checkpoint dir (of step). On failure *ret_damaged says whether the fault
 * is the checkpoint's own bytes (unreadable, truncated, inconsistent: an older checkpoint may
 * do) rather than the job's (another spec, changed data: no checkpoint will do). */
static int restore(struct run *r, const char *dir, int64_t step, bool *ret_damaged) {
    char path[LORAD_CHECKPOINT_PATH_MAX];
    *ret_damaged = false;
    int rc = lorad_path_join(path, sizeof path, dir, STATE_FILE);
    if (rc < 0) return lorad_error_set(r->err, rc, "", "checkpoint path too long");
    struct lorad_st_file *f;
    *ret_damaged = true;
    if ((rc = lorad_st_open(path, &f, r->err)) < 0) return rc;
    const char *fmt = lorad_st_metadata(f, "format"), *hash = lorad_st_metadata(f, "spec_hash");
    int64_t v[8];
    const char *keys[8] = {"step", "epoch", "row", "tokens_seen", "dropout_counter", "adam_step", "threads",
                           "train_samples"};
    if (!fmt || strcmp(fmt, STATE_FORMAT) != 0) {
        rc = lorad_error_set(r->err, -EINVAL, "", "%s: not a lorad training state of this version", path);
        goto out;
    }
    if (!hash || strcmp(hash, r->spec_hash) != 0) {
        *ret_damaged = false;
        rc = lorad_error_set(r->err, -EINVAL, "", "%s was written for a different job spec; cannot resume", dir);
        goto out;
    }
    for (int i = 0; i < 8; i++)
        if ((rc = meta_i64(f, keys[i], &v[i], r->err)) < 0) goto out;
    if (v[0] != step || v[1] < 0 || v[2] < 0 || v[5] != step) {
        rc = lorad_error_set(r->err, -EINVAL, "", "%s: inconsistent training state", path);
        goto out;
    }
    if (v[7] != lorad_corpus_size(r->train)) {
        *ret_damaged = false;
        rc = lorad_error_set(r->err, -EINVAL, "training_file",
                             "the training data changed since %s (%" PRId64 " samples then, %" PRId64 " now)", dir,
                             v[7], lorad_corpus_size(r->train));
        goto out;
    }
    if (v[6] != r->threads)
        say(r, "warning", "resuming with %d threads where the checkpoint used %" PRId64
            ": results will not be bit-identical to an uninterrupted run", r->threads, v[6]);
    const char *was = lorad_st_metadata(f, "compute_dtype"), *now = lorad_compute_dtype_names[r->res->compute_dtype];
    if (was && strcmp(was, now) != 0)
        say(r, "warning", "resuming computing in %s where the checkpoint computed in %s"
            ": results will not be bit-identical to an uninterrupted run", now, was);
    size_t n;
    float *params = lorad_model_params(r->model, &n);
    if ((rc = read_f32(f, "lora.params", params, n, r->err)) < 0 || (rc = read_f32(f, "adamw.m", r->adam.m, n, r->err)) < 0 ||
        (rc = read_f32(f, "adamw.v", r->adam.v, n, r->err)) < 0)
        goto out;
    float *init = lorad_model_init_factors(r->model, NULL);
    if (init && (rc = read_f32(f, "lora.init_factors", init, n, r->err)) < 0) goto out;
    const char *el = lorad_st_metadata(f, "elapsed_s");
    r->cur = (struct cursor){.step = v[0], .epoch = (int)v[1], .row = v[2], .tokens_seen = v[3],
                             .elapsed_before = el ? strtod(el, NULL) : 0};
    r->adam.step = v[5];
    lorad_model_set_dropout_counter(r->model, (uint64_t)v[4]);
    r->last_checkpoint_step = step;
    snprintf(r->res->final_checkpoint, sizeof r->res->final_checkpoint, "%s", dir);
out:
    lorad_st_close(f);
    return rc;
}

/* out_dir/adapter appears whole: written beside it, then swapped in by rename. */
static int write_final_adapter(struct run *r) {
    char tmp[LORAD_CHECKPOINT_PATH_MAX], final[LORAD_CHECKPOINT_PATH_MAX], old[LORAD_CHECKPOINT_PATH_MAX];
    if (!is_writer(r)) return 0;
    if (lorad_path_join(tmp, sizeof tmp, r->opt->out_dir, ".adapter.tmp") < 0 ||
        lorad_path_join(final, sizeof final, r->opt->out_dir, "adapter") < 0 ||
        lorad_path_join(old, sizeof old, r->opt->out_dir, ".adapter.old") < 0)
        return lorad_error_set(r->err, -ENAMETOOLONG, "", "output path too long");
    lorad_remove_tree(tmp);
    lorad_remove_tree(old);
    int rc = write_adapter_files(r, tmp);
    if (rc < 0) return rc;
    if ((rc = lorad_dir_swap_in(tmp, final, old)) < 0)
        return lorad_error_set(r->err, rc, "", "cannot create %s: %s", final, strerror(-rc));
    return 0;
}

/* ---- steps ---------------------------------------------------------------------------------- */

/* The figures of one pass over the validation set. */
struct eval_figures {
    double loss;  /* mean CE over its trained tokens; DPO: mean pair loss */
    double acc;   /* argmax hits over those tokens (DPO: the preferred outputs' tokens) */
    int64_t n;    /* what loss is the mean over: trained tokens, or pairs */
};

/* The model as it stands (adapter on, no dropout, no gradients) over every row of the validation
 * set in file order, in micro-batches of batch_size rows: the token losses are summed over the
 * whole set before the one division, so the result is the exact mean however the rows fall into
 * batches. Touches nothing training reads next (micro[0] is refilled by the next step, and an
 * evaluation draws no dropout), so evaluating never changes the run. *ret written on success. */
static int evaluate(struct run *r, struct eval_figures *ret) {
    struct lorad_epoch_plan p;
    int rc = lorad_epoch_plan_build(&p, r->valid, 0, 0, false, false, r->spec->hp.max_seq_len);
    if (rc < 0) return lorad_error_set(r->err, rc, "", "cannot plan validation");
    double loss = 0;
    int64_t correct = 0, tokens = 0;
    struct lorad_dpo_sums dpo = {0};
    struct lorad_batch *b = &r->micro[0];
    for (int64_t row = 0; row < p.n_rows && rc == 0; row += r->rows_per_micro) {
        int n = (int)(p.n_rows - row < r->rows_per_micro ? p.n_rows - row : r->rows_per_micro);
        rc = lorad_batch_fill(b, r->valid, &p, row, n, r->err);
        if (rc < 0) break;
        if (r->rows_per_example > 1) {
            /* DPO: the mean pair loss, and the token accuracy over the preferred outputs */
            rc = lorad_dpo_eval(r->model, b, r->spec->method.beta, &dpo, &correct, &tokens, r->err);
            continue;
        }
        double l;
        int64_t c, t;
        rc = lorad_model_eval(r->model, b, &l, &c, &t, r->err);
        if (rc < 0) break; /* l, c and t are written only on success */
        loss += l;
        correct += c;
        tokens += t;
    }
    lorad_epoch_plan_clear(&p);
    if (rc < 0) return rc;
    double acc = tokens ? (double)correct / (double)tokens : 0;
    if (r->rows_per_example > 1)
        *ret = (struct eval_figures){.loss = dpo.pairs ? dpo.loss / (double)dpo.pairs : 0, .acc = acc, .n = dpo.pairs};
    else
        *ret = (struct eval_figures){.loss = tokens ? loss / (double)tokens : 0, .acc = acc, .n = tokens};
    return 0;
}

/* One optimiser step: up to micro_per_step micro-batches from the cursor, normalised by the
 * labels of the whole step (torchtune), or for DPO by its pairs, then AdamW. With several
 * processes each fills its share of every micro-batch's rows; label counts, losses and gradients
 * are summed across them. */
static int train_step(struct run *r, struct lorad_step_metrics *m) {
    int rc;
    for (;;) {
        if ((rc = ensure_plan(r, r->cur.epoch)) < 0) return rc;
        if (r->cur.row < r->plan.n_rows) break;
        r->cur.epoch++;
        r->cur.row = 0;
    }
    const struct lorad_train_collective *coll = collective_of(r);
    int rank = coll ? coll->rank : 0, world = coll ? coll->world_size : 1;
    bool dpo = r->rows_per_example > 1;
    int n_micro = 0;
    int64_t denom = 0, tokens = 0, pairs = 0;
    bool mine[r->micro_per_step];
    for (int k = 0; k < r->micro_per_step && r->cur.row < r->plan.n_rows; k++) {
        int64_t left = r->plan.n_rows - r->cur.row;
        int n = (int)(left < r->rows_per_micro ? left : r->rows_per_micro);
        int64_t b = r->cur.row + (int64_t)n * rank / world, e = r->cur.row + (int64_t)n * (rank + 1) / world;
        mine[k] = e > b;
        if (mine[k]) {
            if ((rc = lorad_batch_fill(&r->micro[k], r->train, &r->plan, b, (int)(e - b), r->err)) < 0) return rc;
            r->micro[k].row0 = (b - r->cur.row) * r->rows_per_example;
            denom += r->micro[k].n_labels;
            tokens += r->micro[k].n_tokens;
        }
        r->cur.row += n;
        pairs += n; /* every process counts every pair of the step: the DPO loss is their mean */
        n_micro++;
    }
    double counts[2] = {(double)denom, (double)tokens}; /* exact: both far below 2^53 */
    if ((rc = sum_f64(r, counts, 2, "label counts")) < 0) return rc;
    denom = (int64_t)counts[0];
    tokens = (int64_t)counts[1];
    double loss = 0;
    int64_t correct = 0, chosen_labels = 0;
    struct lorad_dpo_sums ds = {0};
    /* Micro-batch k draws dropout stream first_stream + k on every process, whether or not this
     * one holds any of its rows, so the masks do not depend on the number of processes. */
    uint64_t first_stream = lorad_model_dropout_counter(r->model);
    for (int k = 0; k < n_micro; k++) {
        if (!mine[k]) continue;
        lorad_model_set_dropout_counter(r->model, first_stream + (uint64_t)k);
        if (dpo) {
            rc = lorad_dpo_forward_backward(r->model, &r->micro[k], r->spec->method.beta, 1.0 / (double)pairs, &ds,
                                            &correct, &chosen_labels, r->err);
            if (rc == -ERANGE) /* a weight was not finite: the policy's log-probabilities were not */
                return lorad_error_set(r->err, rc, "hyperparameters.learning_rate",
                                       "the loss became NaN/inf at step %" PRId64 ": lower the learning rate",
                                       r->cur.step + 1);
            if (rc < 0) return rc;
            continue;
        }
        double l;
        int64_t c;
        rc = lorad_model_forward_backward(r->model, &r->micro[k], denom > 0 ? denom : 1, &l, &c, r->err);
        if (rc < 0) return rc;
        loss += l;
        correct += c;
    }
    lorad_model_set_dropout_counter(r->model, first_stream + (uint64_t)n_micro);
    if (coll) {
        size_t n_grads;
        float *grads = lorad_model_grads(r->model, &n_grads);
        if ((rc = sum_f32(r, grads, n_grads, "gradients")) < 0) return rc;
        if (dpo) {
            double sums[7] = {ds.loss, ds.margin, ds.chosen, ds.rejected, (double)ds.correct, (double)correct,
                              (double)chosen_labels};
            if ((rc = sum_f64(r, sums, 7, "losses")) < 0) return rc;
            ds = (struct lorad_dpo_sums){sums[0], sums[1], sums[2], sums[3], (int64_t)sums[4], pairs};
            correct = (int64_t)sums[5];
            chosen_labels = (int64_t)sums[6];
        } else {
            double sums[2] = {loss, (double)correct};
            if ((rc = sum_f64(r, sums, 2, "losses")) < 0) return rc;
            loss = sums[0];
            correct = (int64_t)sums[1];
        }
    }
    double norm, lr;
    rc = lorad_adamw_step(&r->adam, &r->ocfg, lorad_model_params(r->model, NULL), lorad_model_grads(r->model, NULL),
                          NULL, NULL, &norm, &lr);
    if (rc < 0) return lorad_error_set(r->err, rc, "", "optimizer step failed");
    r->cur.step++;
    r->cur.tokens_seen += tokens;
    r->steps_this_process++;
    double train_loss = dpo ? ds.loss / (double)pairs : denom > 0 ? loss / (double)denom : 0;
    int64_t acc_denom = dpo ? chosen_labels : denom;
    if (!isfinite(train_loss) || !isfinite(norm))
        return lorad_error_set(r->err, -ERANGE, "hyperparameters.learning_rate",
                               "the loss became %s at step %" PRId64 " (grad norm %g): lower the learning rate",
                               isfinite(train_loss) ? "finite but the gradient did not" : "NaN/inf", r->cur.step, norm);

    double run_s = now_s() - r->t_start;
    *m = (struct lorad_step_metrics){
        .step = r->cur.step,
        .total_steps = r->total_steps,
        .epoch = r->cur.epoch + (double)r->cur.row / (double)r->plan.n_rows,
        .train_loss = train_loss,
        .train_mean_token_accuracy = acc_denom > 0 ? (double)correct / (double)acc_denom : 0,
        .lr = lr,
        .grad_norm = norm,
        .tokens_seen = r->cur.tokens_seen,
        .elapsed_s = r->cur.elapsed_before + run_s,
        .world_size = world,
        .has_dpo = dpo,
        .rewards_margin = dpo ? ds.margin / (double)pairs : 0,
        .rewards_accuracy = dpo ? (double)ds.correct / (double)pairs : 0,
        .rewards_chosen = dpo ? ds.chosen / (double)pairs : 0,
        .rewards_rejected = dpo ? ds.rejected / (double)pairs : 0,
    };
    return 0;
}

/* ---- the run -------------------------------------------------------------------------------- */

static int threads_for(const struct run *r) {
    if (r->opt->threads > 0) return r->opt->threads;
    if (r->spec->hp.threads > 0) return r->spec->hp.threads;
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

/* The validation figures of step m->step, into *m: valid_* every eval_every_steps and at the
 * last step, full_valid_* at the steps that checkpoint on schedule (so a checkpoint's metrics
 * carry them, and the cost is one pass per checkpoint), with an event giving the count it is the
 * mean over. A pause checkpoint gets none: its step's metrics are already written, and a paused
 * then resumed run must record what an uninterrupted one does. Both figures come from the same
 * pass over the whole set, so a step due both makes it once. */
static int validate(struct run *r, struct lorad_step_metrics *m, bool last, bool scheduled_checkpoint) {
    if (!r->valid) return 0;
    int64_t every = r->spec->hp.eval_every_steps;
    bool eval = last || (every > 0 && m->step % every == 0);
    if (!eval && !scheduled_checkpoint) return 0;
    struct eval_figures ev = {0}; /* written on success only, which gcc cannot see */
    int rc = evaluate(r, &ev);
    if (rc < 0) return rc;
    if (eval) {
        m->has_valid = true;
        m->valid_loss = ev.loss;
        m->valid_mean_token_accuracy = ev.acc;
    }
    if (scheduled_checkpoint) {
        m->has_full_valid = true;
        m->full_valid_loss = ev.loss;
        m->full_valid_mean_token_accuracy = ev.acc;
        say(r, "info", "full validation loss %.4f (token accuracy %.4f) over %" PRId64 " %s at step %" PRId64, ev.loss,
            ev.acc, ev.n, r->rows_per_example > 1 ? "pairs" : "tokens", m->step);
    }
    return 0;
}

static int run_steps(struct run *r) {
    const struct lorad_hyperparameters *hp = &r->spec->hp;
    int64_t tokens_at_start = r->cur.tokens_seen;
    struct lorad_step_metrics m = {0};
    while (r->cur.step < r->total_steps) {
        r->step_sum_s = 0;
        r->step_sum_bytes = 0;
        enum lorad_train_control c = r->cb && r->cb->poll ? r->cb->poll(r->cb->ctx) : LORAD_TRAIN_CONTINUE;
        if (collective_of(r)) { /* every process stops together: the most drastic request wins */
            double v[2] = {c == LORAD_TRAIN_CANCEL, c == LORAD_TRAIN_PAUSE};
            int rc = sum_f64(r, v, 2, "stop requests");
            if (rc < 0) return rc;
            c = v[0] > 0 ? LORAD_TRAIN_CANCEL : v[1] > 0 ? LORAD_TRAIN_PAUSE : LORAD_TRAIN_CONTINUE;
        }
        if (c == LORAD_TRAIN_CANCEL) {
            r->res->outcome = LORAD_TRAIN_CANCELLED;
            return 0;
        }
        if (c == LORAD_TRAIN_PAUSE) {
            if (r->last_checkpoint_step != r->cur.step) {
                int rc = checkpoint(r, &m);
                if (rc < 0) return rc;
            }
            r->res->outcome = LORAD_TRAIN_PAUSED;
            return 0;
        }
        int rc = train_step(r, &m);
        if (rc < 0) return rc;
        m.collective_s = r->step_sum_s;
        m.collective_bytes = r->step_sum_bytes;
        double run_s = now_s() - r->t_start;
        m.tokens_per_s = run_s > 0 ? (double)(r->cur.tokens_seen - tokens_at_start) / run_s : 0;
        m.eta_s = run_s / (double)r->steps_this_process * (double)(r->total_steps - r->cur.step);
        bool last = r->cur.step == r->total_steps;
        bool scheduled_checkpoint =
            last || (hp->checkpoint_every_steps > 0 && r->cur.step % hp->checkpoint_every_steps == 0);
        if ((rc = validate(r, &m, last, scheduled_checkpoint)) < 0) return rc;
        if (is_writer(r) && (rc = lorad_metrics_append(r->metrics_path, &m)) < 0)
            return lorad_error_set(r->err, rc, "", "cannot append to %s: %s", r->metrics_path, strerror(-rc));
        r->res->steps_done = r->cur.step;
        r->res->trained_tokens = r->cur.tokens_seen;
        r->res->last = m;
        if (r->cb && r->cb->on_step) r->cb->on_step(r->cb->ctx, &m);
        if (scheduled_checkpoint && (rc = checkpoint(r, &m)) < 0) return rc;
    }
    r->res->outcome = LORAD_TRAIN_FINISHED;
    return write_final_adapter(r);
}

/* PiSSA / OLoRA: the factors of the base weights, computed by one process and summed into the
 * others' zeros, so that every process holds the same bits whatever its LAPACK rounds. */
static int init_from_base(struct run *r) {
    size_t n;
    float *init = lorad_model_init_factors(r->model, &n);
    if (!init) return 0;
    const char *name = r->spec->lora.init == LORAD_LORA_INIT_PISSA ? "PiSSA" : "OLoRA";
    double t0 = now_s();
    if (is_writer(r)) {
        say(r, "info", "computing %s factors of the %d adapted weights", name, lorad_model_n_lora_tensors(r->model) / 2);
        int rc = lorad_model_init_from_base(r->model, r->err);
        if (rc < 0) {
            if (strcmp(r->err->param, "") == 0) snprintf(r->err->param, sizeof r->err->param, "lora.init");
            return rc;
        }
    }
    int rc = sum_f32(r, init, n, "the initial factors");
    if (rc < 0) return rc;
    memcpy(lorad_model_params(r->model, NULL), init, sizeof(float) * n);
    say(r, "info", "%s factors ready in %.1f s", name, now_s() - t0);
    return 0;
}

static int resume_or_start(struct run *r) {
    int rc = is_writer(r) ? lorad_checkpoint_clean_temp(r->ckpt_root) : 0;
    if (rc < 0 && rc != -ENOENT) return lorad_error_set(r->err, rc, "", "cannot clean %s", r->ckpt_root);
    if (r->opt->resume) {
        int64_t step;
        char dir[LORAD_CHECKPOINT_PATH_MAX];
        rc = lorad_checkpoint_latest(r->ckpt_root, &step, dir, sizeof dir);
        if (rc < 0) return lorad_error_set(r->err, rc, "", "cannot read %s: %s", r->ckpt_root, strerror(-rc));
        if (rc == 1) {
            /* newest first; a damaged one (a truncated file, a disk that lied about a sync) gives
             * way to the one before it, which the run then repeats the steps from */
            int64_t *steps;
            size_t n;
            if ((rc = lorad_checkpoint_steps(r->ckpt_root, &steps, &n)) < 0)
                return lorad_error_set(r->err, rc, "", "cannot read %s: %s", r->ckpt_root, strerror(-rc));
            bool damaged = false;
            for (size_t i = 0; i < n; i++) {
                step = steps[i];
                snprintf(dir, sizeof dir, "%s/step-%" PRId64, r->ckpt_root, step);
                if ((rc = restore(r, dir, step, &damaged)) == 0 || !damaged) break;
                if (i + 1 < n)
                    say(r, "warning", "checkpoint %s is damaged (%s); resuming from the one before it, step %" PRId64,
                        dir, r->err->message, steps[i + 1]);
            }
            free(steps);
            if (rc < 0 && damaged) {
                char last[sizeof r->err->message];
                snprintf(last, sizeof last, "%s", r->err->message); /* not formatted into itself */
                return lorad_error_set(r->err, rc, "", "every checkpoint of %s is damaged; the last: %s", r->ckpt_root,
                                       last);
            }
            if (rc < 0) return rc;
            if (is_writer(r) && (rc = lorad_metrics_truncate_after(r->metrics_path, step)) < 0)
                return lorad_error_set(r->err, rc, "", "cannot truncate %s", r->metrics_path);
            r->res->steps_done = step;
            r->res->trained_tokens = r->cur.tokens_seen;
            say(r, "info", "resuming from %s (step %" PRId64 " of %" PRId64 ")", dir, step, r->total_steps);
            return 0;
        }
    }
    /* A fresh run owns its history: old metrics would otherwise interleave with the new ones. */
    if (is_writer(r) && (rc = lorad_metrics_truncate_after(r->metrics_path, 0)) < 0)
        return lorad_error_set(r->err, rc, "", "cannot reset %s", r->metrics_path);
    if ((rc = init_from_base(r)) < 0) return rc;
    return load_init_adapter(r);
}

int lorad_train_run(const struct lorad_job_spec *spec, const struct lorad_train_options *opt,
                    const struct lorad_train_callbacks *cb, struct lorad_train_result *ret_result,
                    struct lorad_error *err) {
    assert(spec && opt && ret_result);
    struct lorad_error local_err;
    if (!err) err = &local_err;
    lorad_error_clear(err);
    memset(ret_result, 0, sizeof *ret_result);
    struct run r = {.spec = spec, .opt = opt, .cb = cb, .res = ret_result, .err = err, .plan_epoch = -1,
                    .last_checkpoint_step = -1};
    r.rows_per_micro = spec->hp.batch_size;
    r.rows_per_example = lorad_job_rows_per_example(spec);
    r.micro_per_step = spec->hp.gradient_accumulation_steps;
    r.threads = threads_for(&r);
    r.t_start = now_s();
    hash_spec(&r);

    int rc;
    if (!opt->model_path || !opt->training_path || !opt->out_dir) {
        rc = lorad_error_set(err, -EINVAL, "", "model, training file and output directory are required");
        goto out;
    }
    if ((rc = lorad_mkdir_p(opt->out_dir)) < 0) {
        rc = lorad_error_set(err, rc, "", "cannot create %s: %s", opt->out_dir, strerror(-rc));
        goto out;
    }
    if (lorad_path_join(r.ckpt_root, sizeof r.ckpt_root, opt->out_dir, "checkpoints") < 0 ||
        lorad_path_join(r.metrics_path, sizeof r.metrics_path, opt->out_dir, "metrics.jsonl") < 0) {
        rc = lorad_error_set(err, -ENAMETOOLONG, "", "output path too long");
        goto out;
    }
    if ((rc = lorad_model_file_open(opt->model_path, &r.mf, err)) < 0) {
        if (!err->param[0]) snprintf(err->param, sizeof err->param, "model");
        goto out;
    }
    say(&r, "info", "base model %s (%s): %d layers, dim %d, vocab %d", opt->model_path, r.mf->format_name,
        r.mf->weights.cfg.n_layers, r.mf->weights.cfg.dim, r.mf->weights.cfg.vocab_size);
    if ((rc = load_tokenizer(&r)) < 0) goto out;
    if ((rc = open_corpora(&r)) < 0) goto out;
    if ((rc = count_steps(&r)) < 0) goto out;
    ret_result->total_steps = r.total_steps;
    if ((rc = check_memory(&r)) < 0) goto out;
    if ((rc = build_model(&r)) < 0) goto out;
    if ((rc = resume_or_start(&r)) < 0) goto out;
    say(&r, "info", "training %" PRId64 " steps with %d threads", r.total_steps, r.threads);
    if (r.cur.step >= r.total_steps) {
        /* Killed after the last checkpoint but before the adapter was in place. */
        ret_result->outcome = LORAD_TRAIN_FINISHED;
        rc = write_final_adapter(&r);
    } else {
        rc = run_steps(&r);
    }
out:
    if (r.micro)
        for (int k = 0; k < r.micro_per_step; k++) lorad_batch_free(&r.micro[k]);
    free(r.micro);
    lorad_epoch_plan_clear(&r.plan);
    lorad_adamw_destroy(&r.adam);
    free(r.lr_scale);
    lorad_model_free(r.model);
    lorad_corpus_free(r.valid);
    lorad_corpus_free(r.train);
    lorad_tokenizer_free(r.tok);
    lorad_model_file_close(r.mf);
    return rc;
}
