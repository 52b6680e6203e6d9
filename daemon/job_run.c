#include "job_run.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "checkpoint_dir.h"
#include "fsutil.h"
#include "job_mpirun.h"
#include "jobspec.h"
#include "log.h"
#include "model_dir.h"
#include "train.h"

/* Why a run stopped early, as the poll callback decided it. */
enum stop_reason { STOP_NONE, STOP_CANCEL, STOP_PAUSE, STOP_SHUTDOWN };

struct job_ctx {
    const struct lorad_job_env *env;
    const char *id;
    struct lorad_metrics_writer *mw;
    enum stop_reason reason;
    double last_flush;   /* monotonic seconds of the last metrics commit */
    int store_errors;    /* logged once each kind, so a sick disk does not flood the log */
    /* Daemon paths and the names a client knows them by: events and errors name the latter. */
    const char *out_dir, *model_path, *model_id, *train_path, *train_id, *valid_path, *valid_id;
    int keep_checkpoints; /* the engine prunes older directories; their rows follow */
};

static double mono_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static bool starts_with(const char *s, const char *prefix) {
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

/* ---- spec and paths --------------------------------------------------------------------------- */

/* The spec the job was created with, as the store keeps it (the API stored
 * lorad_job_spec_to_json's object), parsed back. Returns 0 or -errno with err naming the field. */
static int stored_spec(const struct lorad_job_env *env, const char *id, struct lorad_job_spec *ret_spec,
                       struct lorad_error *err) {
    json_t *body = NULL;
    int r = lorad_store_job_spec(env->store, id, &body, err);
    if (r < 0) return r;
    r = lorad_job_spec_parse(body, ret_spec, err);
    json_decref(body);
    return r;
}

/* A checkpoint directory on disk without a row in the store was written by a run that died
 * before committing it. Its metrics may be missing from the store, so the run must resume from the
 * store's newest checkpoint instead (docs/store.md): remove every step-N newer than that. */
static void remove_orphan_checkpoints(const struct job_ctx *j, const char *out_dir, int64_t store_step) {
    char root[PATH_MAX], path[LORAD_CHECKPOINT_PATH_MAX];
    int64_t step;
    if (lorad_path_join(root, sizeof root, out_dir, "checkpoints") < 0) return;
    /* newest first, until the newest left is one the store knows */
    while (lorad_checkpoint_latest(root, &step, path, sizeof path) == 1 && step > store_step) {
        int r = lorad_remove_tree(path);
        if (r < 0) {
            log_warning("job %s: cannot remove uncommitted checkpoint %s: %s", j->id, path, strerror(-r));
            return;
        }
        log_info("job %s: removed uncommitted checkpoint step %lld (the store's newest is step %lld)", j->id,
                 (long long)step, (long long)store_step);
    }
}

/* Replaces every occurrence of `what` in s (cap bytes) by `with`. */
static void replace_all(char *s, size_t cap, const char *what, const char *with) {
    if (!what || !what[0] || !with) return;
    size_t wn = strlen(what), n = strlen(with);
    for (char *p = strstr(s, what); p; p = strstr(p + n, what)) {
        char tail[sizeof ((struct lorad_error *)0)->message];
        snprintf(tail, sizeof tail, "%s", p + wn);
        snprintf(p, cap - (size_t)(p - s), "%s%s", with, tail);
        if (strlen(s) + 1 >= cap) break; /* truncated: stop rather than loop on a cut name */
    }
}

/* Rewrites daemon paths in a message for clients: the job's directory disappears (paths become
 * relative to it, e.g. checkpoints/step-40), datasets and the model are named by their ids, and the
 * state directory is dropped. The log keeps the full paths for the operator. */
static void redact(const struct job_ctx *j, char *s, size_t cap) {
    char dir[4200];
    if (j->out_dir) {
        snprintf(dir, sizeof dir, "%s/", j->out_dir);
        replace_all(s, cap, dir, "");
    }
    replace_all(s, cap, j->train_path, j->train_id);
    replace_all(s, cap, j->valid_path, j->valid_id);
    replace_all(s, cap, j->model_path, j->model_id);
    snprintf(dir, sizeof dir, "%s/", j->env->state_dir);
    replace_all(s, cap, dir, "");
}

/* ---- error codes ------------------------------------------------------------------------------ */

const char *lorad_job_error_code(int rc, const struct lorad_error *err, const struct lorad_train_result *res) {
    const char *p = err ? err->param : "";
    bool data_param = starts_with(p, "training_file") || starts_with(p, "validation_file") ||
                      starts_with(p, "input_ids") || starts_with(p, "labels") || starts_with(p, "messages") ||
                      (res && res->train_report.n_invalid > 0);
    if (rc == -EINVAL && data_param) return "invalid_training_data";
    if (strcmp(p, "model") == 0 && (rc == -ENOENT || rc == -ENOTDIR)) return "model_not_found";
    if (rc == -ENOMEM) return "out_of_memory";
    if (rc == -E2BIG && (strcmp(p, "model") == 0 || starts_with(p, "hyperparameters."))) return "memory_limit_exceeded";
    if (rc == -ERANGE) return "nan_loss";
    if (rc == -ENOSPC || rc == -EDQUOT) return "disk_full";
    return "training_failed";
}

/* ---- the store side of the callbacks ---------------------------------------------------------- */

static void store_problem(struct job_ctx *j, int bit, const char *what, int r, const struct lorad_error *e) {
    if (j->store_errors & bit) return;
    j->store_errors |= bit;
    log_warning("job %s: %s: %s", j->id, what, e && e->message[0] ? e->message : strerror(-r));
}

static void on_step(void *ctx, const struct lorad_step_metrics *m) {
    struct job_ctx *j = ctx;
    struct lorad_metrics_row row = {
        .step = m->step, .total_steps = m->total_steps, .epoch = m->epoch, .train_loss = m->train_loss,
        .train_mean_token_accuracy = m->train_mean_token_accuracy, .lr = m->lr, .grad_norm = m->grad_norm,
        .tokens_seen = m->tokens_seen, .tokens_per_s = m->tokens_per_s, .elapsed_s = m->elapsed_s, .eta_s = m->eta_s,
        .valid_loss = m->has_valid ? m->valid_loss : NAN,
        .valid_mean_token_accuracy = m->has_valid ? m->valid_mean_token_accuracy : NAN,
        .has_dpo = m->has_dpo, .rewards_margin = m->rewards_margin, .rewards_accuracy = m->rewards_accuracy,
        .rewards_chosen = m->rewards_chosen, .rewards_rejected = m->rewards_rejected,
        .has_full_valid = m->has_full_valid, .full_valid_loss = m->full_valid_loss,
        .full_valid_mean_token_accuracy = m->full_valid_mean_token_accuracy};
    struct lorad_error e = {0};
    int r = lorad_metrics_writer_append(j->mw, &row, &e);
    if (r < 0) store_problem(j, 1, "cannot record metrics (retried with the next step)", r, &e);
    /* Batches keep commits cheap; a commit at least once a second keeps progress and event streams
     * live on slow steps. */
    double now = mono_s();
    if (lorad_metrics_writer_pending(j->mw) > 0 && (j->env->metrics_batch_rows == 0 && now - j->last_flush >= 1.0)) {
        r = lorad_metrics_writer_flush(j->mw, &e);
        if (r < 0) store_problem(j, 1, "cannot record metrics (retried with the next step)", r, &e);
        j->last_flush = now;
    }
    if (j->env->on_rate) j->env->on_rate(j->env->rate_ctx, m->tokens_per_s);
}

static void on_checkpoint(void *ctx, int64_t step, const char *dir, const struct lorad_step_metrics *m) {
    (void)m;
    struct job_ctx *j = ctx;
    struct lorad_error e = {0};
    char id[LORAD_STORE_ID_MAX];
    /* keep_checkpoints: the rows of the older checkpoints go in the same transaction as the new
     * one; the engine deletes their directories only after this returns. */
    int r = lorad_metrics_writer_checkpoint(j->mw, step, lorad_store_path_relative(j->env->state_dir, dir), NULL,
                                            j->keep_checkpoints, id, &e);
    j->last_flush = mono_s();
    /* Not fatal: the directory is an orphan the next resume removes, and training goes on. */
    if (r < 0) store_problem(j, 2, "cannot record checkpoint", r, &e);
    else log_debug("job %s: checkpoint %s at step %" PRId64, j->id, id, step);
}

static void on_message(void *ctx, const char *level, const char *message) {
    struct job_ctx *j = ctx;
    bool warn = strcmp(level, "warning") == 0 || strcmp(level, "warn") == 0;
    if (warn) log_warning("job %s: %s", j->id, message);
    else log_info("job %s: %s", j->id, message);
    char msg[sizeof ((struct lorad_error *)0)->message];
    snprintf(msg, sizeof msg, "%s", message);
    redact(j, msg, sizeof msg);
    struct lorad_error e = {0};
    int r = lorad_store_event_append(j->env->store, j->id, warn ? "warn" : "info", "message", msg, NULL, NULL, &e);
    if (r < 0) store_problem(j, 4, "cannot record event", r, &e);
}

static enum lorad_train_control poll_control(void *ctx) {
    struct job_ctx *j = ctx;
    enum lorad_job_control c = LORAD_JOB_CONTROL_NONE;
    struct lorad_error e = {0};
    int r = lorad_store_job_control(j->env->store, j->id, &c, &e);
    if (r < 0) store_problem(j, 8, "cannot read the job's control request", r, &e);
    if (c == LORAD_JOB_CONTROL_CANCEL) {
        j->reason = STOP_CANCEL;
        return LORAD_TRAIN_CANCEL;
    }
    if (c == LORAD_JOB_CONTROL_PAUSE) {
        j->reason = STOP_PAUSE;
        return LORAD_TRAIN_PAUSE;
    }
    if (j->env->shutdown && atomic_load(j->env->shutdown)) {
        j->reason = STOP_SHUTDOWN;
        return LORAD_TRAIN_PAUSE;
    }
    return LORAD_TRAIN_CONTINUE;
}

/* ---- final transitions ------------------------------------------------------------------------ */

static int current_status(const struct job_ctx *j, enum lorad_job_status *ret) {
    json_t *job = NULL;
    int r = lorad_store_job_get(j->env->store, j->id, &job, NULL);
    if (r < 0) return r;
    r = lorad_job_status_parse(json_string_value(json_object_get(job, "status")), ret);
    json_decref(job);
    return r;
}

/* The store may be briefly locked by another process (-EBUSY after its busy timeout): retry a few
 * times before giving up, since a lost final transition leaves the job `running` until restart. */
static int transition(struct job_ctx *j, const struct lorad_store_transition *t) {
    struct lorad_error e = {0};
    int r = 0;
    for (int attempt = 0; attempt < 5; attempt++) {
        r = lorad_store_job_transition(j->env->store, j->id, t, NULL, &e);
        if (r != -EBUSY && r != -EIO) break;
        usleep(200000);
    }
    if (r < 0 && r != -EPERM)
        log_error("job %s: cannot record status %s: %s", j->id, lorad_job_status_name(t->to),
                  e.message[0] ? e.message : strerror(-r));
    return r;
}

/* Moves the job to `t->to`; a cancel that arrived after the last poll (the job is `cancelling`)
 * wins over succeeded/paused/queued, which are not legal from there. Returns the status reached. */
static int settle(struct job_ctx *j, const struct lorad_store_transition *t) {
    int r = transition(j, t);
    if (r == 0) return (int)t->to;
    if (r != -EPERM) return r;
    enum lorad_job_status now;
    if (current_status(j, &now) < 0) return r;
    if (now == LORAD_JOB_CANCELLING) {
        struct lorad_store_transition c = {.to = LORAD_JOB_CANCELLED, .message = "Job cancelled"};
        r = transition(j, &c);
        return r < 0 ? r : LORAD_JOB_CANCELLED;
    }
    if (now == LORAD_JOB_RUNNING && t->to == LORAD_JOB_CANCELLED) {
        struct lorad_store_transition c = {.to = LORAD_JOB_CANCELLING};
        if ((r = transition(j, &c)) < 0) return r;
        r = transition(j, t);
        return r < 0 ? r : LORAD_JOB_CANCELLED;
    }
    log_error("job %s: cannot move from %s to %s", j->id, lorad_job_status_name(now), lorad_job_status_name(t->to));
    return -EPERM;
}

static int fail(struct job_ctx *j, const char *code, const char *message, const char *param) {
    log_error("job %s: failed (%s): %s%s%s%s", j->id, code, message, param && *param ? " [" : "",
              param && *param ? param : "", param && *param ? "]" : "");
    struct lorad_store_transition t = {.to = LORAD_JOB_FAILED, .message = "Job failed", .error_code = code,
                                       .error_message = message, .error_param = param && *param ? param : NULL};
    return settle(j, &t);
}

static void flush_metrics(struct job_ctx *j) {
    struct lorad_error e = {0};
    int r = 0;
    for (int attempt = 0; attempt < 5 && lorad_metrics_writer_pending(j->mw) > 0; attempt++) {
        r = lorad_metrics_writer_flush(j->mw, &e);
        if (r == 0) return;
        usleep(200000);
    }
    if (r < 0) log_error("job %s: %d metrics rows could not be recorded: %s", j->id, lorad_metrics_writer_pending(j->mw),
                         e.message[0] ? e.message : strerror(-r));
}

static int finish(struct job_ctx *j, const json_t *job, int rc, const struct lorad_error *err,
                  const struct lorad_train_result *res) {
    if (res->steps_done > 0) {
        /* trained_tokens lives with the progress figures; the final row's figures stay. */
        struct lorad_store_progress p = {.step = res->steps_done, .total_steps = res->total_steps,
                                         .epoch = res->last.epoch, .tokens_per_s = res->last.tokens_per_s,
                                         .eta_s = rc == 0 && res->outcome == LORAD_TRAIN_FINISHED ? 0 : res->last.eta_s,
                                         .trained_tokens = res->trained_tokens};
        struct lorad_error e = {0};
        int r = lorad_store_job_set_progress(j->env->store, j->id, &p, &e);
        if (r < 0) store_problem(j, 16, "cannot record progress", r, &e);
    }
    if (rc < 0) {
        struct lorad_error e = *err;
        if (!e.message[0]) snprintf(e.message, sizeof e.message, "%s", strerror(-rc));
        const char *code = lorad_job_error_code(rc, &e, res);
        /* A validation-file problem is reported by the corpus with param training_file. */
        if (j->valid_path && strstr(e.message, j->valid_path) && strcmp(e.param, "training_file") == 0)
            snprintf(e.param, sizeof e.param, "validation_file");
        redact(j, e.message, sizeof e.message);
        return fail(j, code, e.message, e.param);
    }
    struct lorad_store_transition t = {0};
    char data_buf[128];
    json_t *data = NULL;
    int status;
    switch (res->outcome) {
    case LORAD_TRAIN_FINISHED: {
        char name[512];
        const char *suffix = json_string_value(json_object_get(job, "suffix"));
        if (lorad_store_fine_tuned_model_name(json_string_value(json_object_get(job, "model")), suffix, j->id, name,
                                              sizeof name) < 0)
            return fail(j, "training_failed", "the fine-tuned model name is too long", "suffix");
        char msg[640];
        snprintf(msg, sizeof msg, "Job succeeded: the fine-tuned model is %s", name);
        t = (struct lorad_store_transition){.to = LORAD_JOB_SUCCEEDED, .message = msg, .fine_tuned_model = name};
        status = settle(j, &t);
        if (status == LORAD_JOB_SUCCEEDED)
            log_info("job %s: succeeded after %" PRId64 " steps, %" PRId64 " tokens, train_loss %.4f: %s", j->id,
                     res->steps_done, res->trained_tokens, res->last.train_loss, name);
        return status;
    }
    case LORAD_TRAIN_CANCELLED:
        t = (struct lorad_store_transition){.to = LORAD_JOB_CANCELLED, .message = "Job cancelled"};
        status = settle(j, &t);
        log_info("job %s: cancelled after step %" PRId64, j->id, res->steps_done);
        return status;
    case LORAD_TRAIN_PAUSED:
        break;
    }
    /* Paused: by the client's request, or by the daemon stopping, in which case the job goes back to
     * the queue (not `paused`, which only a client may resume) and the next start resumes it. A
     * pause request that arrived after the last poll still counts as the client's. */
    enum lorad_job_control c = LORAD_JOB_CONTROL_NONE;
    if (j->reason == STOP_SHUTDOWN && lorad_store_job_control(j->env->store, j->id, &c, NULL) == 0 &&
        c == LORAD_JOB_CONTROL_PAUSE)
        j->reason = STOP_PAUSE;
    snprintf(data_buf, sizeof data_buf, "{\"step\":%" PRId64 "}", res->steps_done);
    data = json_loads(data_buf, 0, NULL);
    if (j->reason == STOP_SHUTDOWN) {
        json_object_set_new(data, "code", json_string("daemon_stopping"));
        t = (struct lorad_store_transition){.to = LORAD_JOB_QUEUED, .data = data,
                                            .message = "The daemon is stopping: the job is queued again and resumes "
                                                       "from its checkpoint when it restarts"};
    } else {
        t = (struct lorad_store_transition){.to = LORAD_JOB_PAUSED, .data = data, .message = "Job paused"};
    }
    status = settle(j, &t);
    json_decref(data);
    log_info("job %s: %s at step %" PRId64 " of %" PRId64, j->id,
             status == LORAD_JOB_QUEUED ? "checkpointed for shutdown, queued again" : "paused", res->steps_done,
             res->total_steps);
    return status;
}

/* A data-parallel run lost a rank (it died, hung past the collective timeout, or mpirun failed):
 * the job goes back to the queue and resumes from its last checkpoint, at most max_restarts times
 * in its life, so a host that is gone for good ends in `failed` rather than a loop. */
static int restart(struct job_ctx *j, const struct lorad_error *why) {
    const struct lorad_mpirun *l = j->env->distributed;
    int64_t restarts = 0, step = 0;
    char *path = NULL;
    struct lorad_error e = {0};
    if (lorad_store_event_count(j->env->store, j->id, "job_restarted", &restarts, &e) < 0)
        store_problem(j, 4, "cannot count the job's restarts", -EIO, &e);
    if (lorad_store_checkpoint_latest(j->env->store, j->id, NULL, &step, &path, NULL) != 1) step = 0;
    free(path);
    char reason[sizeof why->message], msg[sizeof why->message + 256];
    snprintf(reason, sizeof reason, "%s", why->message);
    redact(j, reason, sizeof reason);
    if (restarts >= l->max_restarts) {
        snprintf(msg, sizeof msg, "lost a rank after %lld restarts (distributed.max_restarts): %s", (long long)restarts,
                 reason);
        return fail(j, "training_failed", msg, NULL);
    }
    log_warning("job %s: %s: restarting from step %lld (%lld of %d)", j->id, why->message, (long long)step,
                (long long)restarts + 1, l->max_restarts);
    snprintf(msg, sizeof msg, "Restarting from the checkpoint at step %lld (restart %lld of %d): %s", (long long)step,
             (long long)restarts + 1, l->max_restarts, reason);
    json_t *data = json_pack("{s:I, s:I, s:i}", "step", (json_int_t)step, "restart", (json_int_t)restarts + 1,
                             "max_restarts", l->max_restarts);
    int r = lorad_store_event_append(j->env->store, j->id, "warn", "job_restarted", msg, data, NULL, &e);
    if (r < 0) store_problem(j, 4, "cannot record event", r, &e);
    struct lorad_store_transition t = {.to = LORAD_JOB_QUEUED, .data = data,
                                       .message = "A rank was lost: the job is queued again and resumes from its "
                                                  "last checkpoint"};
    int status = settle(j, &t);
    json_decref(data);
    return status;
}

/* ---- the run ---------------------------------------------------------------------------------- */

int lorad_job_run(const struct lorad_job_env *env, const json_t *job) {
    const char *id = json_string_value(json_object_get(job, "id"));
    if (!id || !lorad_store_id_valid("ftjob-", id)) {
        log_error("worker: claimed a job without a valid id");
        return -EINVAL;
    }
    struct job_ctx j = {.env = env, .id = id};
    if (env->shutdown && atomic_load(env->shutdown)) {
        /* Claimed in the moment the daemon began to stop: hand it straight back. */
        struct lorad_store_transition t = {.to = LORAD_JOB_QUEUED, .message = "The daemon is stopping: job queued again"};
        return settle(&j, &t);
    }

    struct lorad_error err = {0};
    struct lorad_job_spec spec;
    int r = stored_spec(env, id, &spec, &err);
    if (r < 0) return fail(&j, "invalid_job_spec", err.message, err.param);

    char model_path[PATH_MAX], train_path[PATH_MAX], valid_path[PATH_MAX], out_dir[PATH_MAX];
    const char *model = json_string_value(json_object_get(job, "model"));
    const char *train_id = json_string_value(json_object_get(job, "training_file"));
    const char *valid_id = json_string_value(json_object_get(job, "validation_file"));
    char *rel = NULL;
    int status;
    struct lorad_train_result *res = NULL;
    enum lorad_model_format fmt;

    if (spec.lora.init_adapter[0]) {
        /* Through the API, init_adapter names a succeeded job's fine_tuned_model; the engine wants
         * that job's adapter directory, derived from the job id (never from a client string). */
        char dir[PATH_MAX], base[LORAD_MODEL_ID_MAX];
        r = lorad_store_fine_tuned_adapter_dir(env->store, env->jobs_dir, spec.lora.init_adapter, dir, sizeof dir, base,
                                               sizeof base, &err);
        if (r < 0 || strlen(dir) >= sizeof spec.lora.init_adapter) {
            status = fail(&j, "model_not_found", r < 0 ? err.message : "the adapter path is too long",
                          "lora.init_adapter");
            goto out;
        }
        snprintf(spec.lora.init_adapter, sizeof spec.lora.init_adapter, "%s", dir);
    }
    r = lorad_model_dir_resolve(env->models_dir, model ? model : "", model_path, sizeof model_path, &fmt, &err);
    if (r < 0) {
        char msg[512];
        snprintf(msg, sizeof msg, "model '%.256s' is not in the models directory", model ? model : "");
        status = fail(&j, "model_not_found", msg, "model");
        goto out;
    }
    if (!train_id || (r = lorad_store_file_path(env->store, train_id, &rel, &err)) < 0 ||
        lorad_store_path_absolute(env->state_dir, rel, NULL, train_path, sizeof train_path) < 0) {
        status = fail(&j, "file_not_found", train_id ? "the training file no longer exists" : "the job has no training file",
                      "training_file");
        goto out;
    }
    free(rel);
    rel = NULL;
    if (valid_id && ((r = lorad_store_file_path(env->store, valid_id, &rel, &err)) < 0 ||
                     lorad_store_path_absolute(env->state_dir, rel, NULL, valid_path, sizeof valid_path) < 0)) {
        status = fail(&j, "file_not_found", "the validation file no longer exists", "validation_file");
        goto out;
    }
    if (snprintf(out_dir, sizeof out_dir, "%s/%s", env->jobs_dir, id) >= (int)sizeof out_dir) {
        status = fail(&j, "training_failed", "the jobs directory path is too long", NULL);
        goto out;
    }

    /* Resume from the store's newest checkpoint, never from a directory the store does not know. */
    int64_t ckpt_step = 0;
    char *ckpt_path = NULL;
    r = lorad_store_checkpoint_latest(env->store, id, NULL, &ckpt_step, &ckpt_path, &err);
    free(ckpt_path);
    if (r < 0) {
        status = fail(&j, "training_failed", err.message, NULL);
        goto out;
    }
    remove_orphan_checkpoints(&j, out_dir, r == 1 ? ckpt_step : -1);

    r = lorad_metrics_writer_new(env->store, id, env->metrics_batch_rows, &j.mw, &err);
    if (r < 0) {
        status = fail(&j, "training_failed", err.message, NULL);
        goto out;
    }
    j.last_flush = mono_s();
    j.out_dir = out_dir;
    j.keep_checkpoints = spec.hp.keep_checkpoints;
    j.model_path = model_path;
    j.model_id = model;
    j.train_path = train_path;
    j.train_id = train_id;
    j.valid_path = valid_id ? valid_path : NULL;
    j.valid_id = valid_id;
    res = calloc(1, sizeof *res);
    if (!res) {
        status = fail(&j, "out_of_memory", "out of memory", NULL);
        goto out;
    }
    /* The operator's ceiling holds even for a job created under a larger one. */
    int threads = spec.hp.threads > 0 && spec.hp.threads < env->max_threads ? spec.hp.threads : env->max_threads;
    log_info("job %s: running %s on %s with %d threads%s", id, spec.model, train_id, threads,
             ckpt_step > 0 ? ", resuming from its checkpoint" : "");
    struct lorad_train_options opt = {.model_path = model_path, .training_path = train_path,
                                      .validation_path = j.valid_path, .out_dir = out_dir,
                                      .resume = true, .threads = threads, .memory_limit_bytes = env->memory_limit};
    struct lorad_train_callbacks cb = {.ctx = &j, .on_step = on_step, .on_checkpoint = on_checkpoint,
                                       .on_message = on_message, .poll = poll_control};
    lorad_error_clear(&err);
    if (env->distributed) r = lorad_mpirun_train(env->distributed, &spec, &opt, &cb, res, &err);
    else r = lorad_train_run(&spec, &opt, &cb, res, &err);
    flush_metrics(&j);
    if (r == -ECONNABORTED && env->distributed) status = restart(&j, &err);
    else status = finish(&j, job, r, &err, res);
out:
    if (env->on_rate) env->on_rate(env->rate_ctx, NAN);
    free(rel);
    free(res);
    lorad_metrics_writer_free(j.mw);
    lorad_job_spec_clear(&spec);
    return status;
}
