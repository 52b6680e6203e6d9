/* Per-step metrics (batched) and checkpoints. A checkpoint commits together with every metrics
 * row buffered before it, so a crash never leaves a checkpoint whose curve is missing. */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store_internal.h"

/* While the database refuses writes (full disk), rows queue up to this many batches; beyond it
 * append says -ENOBUFS rather than grow without bound. */
#define MAX_BACKLOG 64

struct lorad_metrics_writer {
    struct lorad_store *store;
    char job_id[LORAD_STORE_ID_MAX];
    int batch_rows;
    int n_rows;
    int cap_rows; /* grows while flushes fail, up to MAX_BACKLOG batches */
    struct lorad_metrics_row *rows;
};

static json_t *real_or_null(double v) { return isfinite(v) ? json_real(v) : json_null(); }

/* A row's DPO figure: NULL unless the row has them. */
static double dpo_value(const struct lorad_metrics_row *m, double v) { return m->has_dpo ? v : NAN; }

/* A row's whole-validation-set figure: NULL unless the row has them. */
static double full_valid_value(const struct lorad_metrics_row *m, double v) { return m->has_full_valid ? v : NAN; }

static json_t *row_to_json(const struct lorad_metrics_row *m) {
    json_t *o = json_pack("{s:I, s:I, s:o, s:o, s:o, s:o, s:o, s:I, s:o, s:o, s:o, s:o, s:o}",
                     "step", (json_int_t)m->step, "total_steps", (json_int_t)m->total_steps,
                     "epoch", real_or_null(m->epoch), "train_loss", real_or_null(m->train_loss),
                     "train_mean_token_accuracy", real_or_null(m->train_mean_token_accuracy),
                     "lr", real_or_null(m->lr), "grad_norm", real_or_null(m->grad_norm),
                     "tokens_seen", (json_int_t)m->tokens_seen, "tokens_per_s",
                     real_or_null(m->tokens_per_s), "elapsed_s", real_or_null(m->elapsed_s),
                     "eta_s", real_or_null(m->eta_s), "valid_loss", real_or_null(m->valid_loss),
                     "valid_mean_token_accuracy", real_or_null(m->valid_mean_token_accuracy));
    if (o && m->has_dpo) {
        json_object_set_new(o, "rewards_margin", real_or_null(m->rewards_margin));
        json_object_set_new(o, "rewards_accuracy", real_or_null(m->rewards_accuracy));
        json_object_set_new(o, "rewards_chosen", real_or_null(m->rewards_chosen));
        json_object_set_new(o, "rewards_rejected", real_or_null(m->rewards_rejected));
    }
    if (o && m->has_full_valid) {
        json_object_set_new(o, "full_valid_loss", real_or_null(m->full_valid_loss));
        json_object_set_new(o, "full_valid_mean_token_accuracy", real_or_null(m->full_valid_mean_token_accuracy));
    }
    return o;
}

int lorad_metrics_writer_new(struct lorad_store *s, const char *job_id, int batch_rows,
                             struct lorad_metrics_writer **ret_writer, struct lorad_error *err) {
    if (!lorad_store_id_valid("ftjob-", job_id))
        return lorad_error_set(err, -EINVAL, "fine_tuning_job_id", "not a job id");
    if (batch_rows == 0) batch_rows = 32;
    if (batch_rows < 1 || batch_rows > 4096)
        return lorad_error_set(err, -EINVAL, "batch_rows", "batch_rows must be 1..4096");
    struct lorad_metrics_writer *w = calloc(1, sizeof *w);
    if (w) w->rows = calloc((size_t)batch_rows, sizeof *w->rows);
    if (!w || !w->rows) {
        free(w);
        return lorad_error_set(err, -ENOMEM, "", "out of memory");
    }
    w->store = s;
    snprintf(w->job_id, sizeof w->job_id, "%s", job_id);
    w->batch_rows = batch_rows;
    w->cap_rows = batch_rows;
    *ret_writer = w;
    return 0;
}

void lorad_metrics_writer_free(struct lorad_metrics_writer *w) {
    if (!w) return;
    free(w->rows);
    free(w);
}

int lorad_metrics_writer_pending(const struct lorad_metrics_writer *w) { return w->n_rows; }

static int write_row_tx(struct store_conn *c, const char *job_id, const struct lorad_metrics_row *m,
                        struct lorad_error *err) {
    int r = 0;
    sqlite3_stmt *st = store_stmt(c,
        "INSERT INTO metrics(job_id, step, total_steps, epoch, train_loss,"
        " train_mean_token_accuracy, lr, grad_norm, tokens_seen, tokens_per_s, elapsed_s, eta_s,"
        " valid_loss, valid_mean_token_accuracy, rewards_margin, rewards_accuracy, rewards_chosen,"
        " rewards_rejected, full_valid_loss, full_valid_mean_token_accuracy)"
        " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20)"
        " ON CONFLICT (job_id, step) DO UPDATE SET total_steps = excluded.total_steps,"
        " epoch = excluded.epoch, train_loss = excluded.train_loss,"
        " train_mean_token_accuracy = excluded.train_mean_token_accuracy, lr = excluded.lr,"
        " grad_norm = excluded.grad_norm, tokens_seen = excluded.tokens_seen,"
        " tokens_per_s = excluded.tokens_per_s, elapsed_s = excluded.elapsed_s,"
        " eta_s = excluded.eta_s, valid_loss = excluded.valid_loss,"
        " valid_mean_token_accuracy = excluded.valid_mean_token_accuracy,"
        " rewards_margin = excluded.rewards_margin, rewards_accuracy = excluded.rewards_accuracy,"
        " rewards_chosen = excluded.rewards_chosen, rewards_rejected = excluded.rewards_rejected,"
        " full_valid_loss = excluded.full_valid_loss,"
        " full_valid_mean_token_accuracy = excluded.full_valid_mean_token_accuracy", &r, err);
    if (!st) return r;
    store_bind_text(c, st, 1, job_id);
    store_bind_int64(c, st, 2, m->step);
    store_bind_int64(c, st, 3, m->total_steps);
    store_bind_double(c, st, 4, m->epoch);
    store_bind_double(c, st, 5, m->train_loss);
    store_bind_double(c, st, 6, m->train_mean_token_accuracy);
    store_bind_double(c, st, 7, m->lr);
    store_bind_double(c, st, 8, m->grad_norm);
    store_bind_int64(c, st, 9, m->tokens_seen);
    store_bind_double(c, st, 10, m->tokens_per_s);
    store_bind_double(c, st, 11, m->elapsed_s);
    store_bind_double(c, st, 12, m->eta_s);
    store_bind_double(c, st, 13, m->valid_loss);
    store_bind_double(c, st, 14, m->valid_mean_token_accuracy);
    store_bind_double(c, st, 15, dpo_value(m, m->rewards_margin));
    store_bind_double(c, st, 16, dpo_value(m, m->rewards_accuracy));
    store_bind_double(c, st, 17, dpo_value(m, m->rewards_chosen));
    store_bind_double(c, st, 18, dpo_value(m, m->rewards_rejected));
    store_bind_double(c, st, 19, full_valid_value(m, m->full_valid_loss));
    store_bind_double(c, st, 20, full_valid_value(m, m->full_valid_mean_token_accuracy));
    r = store_step(c, st, "cannot write metrics", err);
    store_stmt_done(st);
    if (r < 0) return r;

    char message[200];
    int n = snprintf(message, sizeof message, "Step %lld/%lld: training loss=%.4f",
                     (long long)m->step, (long long)m->total_steps, m->train_loss);
    if (isfinite(m->valid_loss) && n > 0 && (size_t)n < sizeof message)
        n += snprintf(message + n, sizeof message - (size_t)n, ", validation loss=%.4f", m->valid_loss);
    if (m->has_full_valid && isfinite(m->full_valid_loss) && n > 0 && (size_t)n < sizeof message)
        n += snprintf(message + n, sizeof message - (size_t)n, ", full validation loss=%.4f", m->full_valid_loss);
    if (m->has_dpo && n > 0 && (size_t)n < sizeof message)
        snprintf(message + n, sizeof message - (size_t)n, ", reward margin=%.4f, reward accuracy=%.3f",
                 m->rewards_margin, m->rewards_accuracy);
    json_t *data = row_to_json(m);
    r = store_event_append_tx(c, job_id, "info", "metrics", message, data, NULL, err);
    json_decref(data);
    return r;
}

/* Writes the buffered rows and moves the job's progress to the newest. Inside a transaction. */
static int write_pending_tx(struct lorad_metrics_writer *w, struct store_conn *c,
                            struct lorad_error *err) {
    if (w->n_rows == 0) return 0;
    for (int i = 0; i < w->n_rows; i++) {
        int r = write_row_tx(c, w->job_id, &w->rows[i], err);
        if (r < 0) return r;
    }
    const struct lorad_metrics_row *m = &w->rows[w->n_rows - 1];
    int r = 0;
    sqlite3_stmt *st = store_stmt(c,
        "UPDATE jobs SET progress_step = ?2, progress_total_steps = ?3, progress_epoch = ?4,"
        " progress_tokens_per_s = ?5, progress_eta_s = ?6, trained_tokens = ?7 WHERE id = ?1",
        &r, err);
    if (!st) return r;
    store_bind_text(c, st, 1, w->job_id);
    store_bind_int64(c, st, 2, m->step);
    store_bind_int64(c, st, 3, m->total_steps);
    store_bind_double(c, st, 4, m->epoch);
    store_bind_double(c, st, 5, m->tokens_per_s);
    store_bind_double(c, st, 6, m->eta_s);
    store_bind_int64(c, st, 7, m->tokens_seen);
    r = store_step(c, st, "cannot update progress", err);
    store_stmt_done(st);
    return r;
}

int lorad_metrics_writer_flush(struct lorad_metrics_writer *w, struct lorad_error *err) {
    if (w->n_rows == 0) return 0;
    struct store_conn *c = NULL;
    int r = store_acquire(w->store, &c, err);
    if (r < 0) return r;
    r = store_job_exists(c, w->job_id, "fine_tuning_job_id", err);
    if (r == 0) r = store_tx_begin(w->store, c, err);
    if (r == 0) r = store_tx_end(w->store, c, write_pending_tx(w, c, err), err);
    store_release(w->store, c);
    if (r == 0) w->n_rows = 0;
    return r;
}

int lorad_metrics_writer_append(struct lorad_metrics_writer *w, const struct lorad_metrics_row *row,
                                struct lorad_error *err) {
    if (row->step < 0) return lorad_error_set(err, -EINVAL, "step", "negative step");
    if (w->n_rows == w->cap_rows) {
        if (w->cap_rows >= w->batch_rows * MAX_BACKLOG)
            return lorad_error_set(err, -ENOBUFS, "", "%d metrics rows wait for the database",
                                   w->n_rows);
        struct lorad_metrics_row *rows = realloc(w->rows, 2 * (size_t)w->cap_rows * sizeof *rows);
        if (!rows) return lorad_error_set(err, -ENOMEM, "", "out of memory");
        w->rows = rows;
        w->cap_rows *= 2;
    }
    w->rows[w->n_rows++] = *row;
    if (w->n_rows >= w->batch_rows) return lorad_metrics_writer_flush(w, err);
    return 0;
}

/* A checkpoint's own metrics, OpenAI's seven keys, from its step's metrics row (columns step,
 * train_loss, train_mean_token_accuracy, valid_loss, valid_mean_token_accuracy, full_valid_loss,
 * full_valid_mean_token_accuracy); null where the step did not evaluate. */
static json_t *checkpoint_metrics_from_row(struct store_row *row) {
    return json_pack("{s:o, s:o, s:o, s:o, s:o, s:o, s:o}", "step", store_col_int(row, 0),
                     "train_loss", store_col_real(row, 1), "train_mean_token_accuracy",
                     store_col_real(row, 2), "valid_loss", store_col_real(row, 3),
                     "valid_mean_token_accuracy", store_col_real(row, 4), "full_valid_loss",
                     store_col_real(row, 5), "full_valid_mean_token_accuracy", store_col_real(row, 6));
}

static int checkpoint_tx(struct lorad_metrics_writer *w, struct store_conn *c, int64_t step,
                         const char *path, json_t *metrics, int keep, char ret_id[LORAD_STORE_ID_MAX],
                         struct lorad_error *err) {
    int r = write_pending_tx(w, c, err);
    if (r < 0) return r;
    json_t *own = NULL;
    if (!metrics) {
        sqlite3_stmt *st = store_stmt(c,
            "SELECT step, train_loss, train_mean_token_accuracy, valid_loss, valid_mean_token_accuracy,"
            " full_valid_loss, full_valid_mean_token_accuracy"
            " FROM metrics WHERE job_id = ?1 AND step = ?2", &r, err);
        if (!st) return r;
        store_bind_text(c, st, 1, w->job_id);
        store_bind_int64(c, st, 2, step);
        r = store_step(c, st, "cannot read metrics", err);
        if (r == 1) r = store_row_object(st, checkpoint_metrics_from_row, "cannot read metrics", &own, err);
        else if (r == 0 && !(own = json_pack("{s:I}", "step", (json_int_t)step)))
            r = lorad_error_set(err, -ENOMEM, "", "out of memory");
        store_stmt_done(st);
        if (r < 0) return r;
        metrics = own;
    }
    char id[LORAD_STORE_ID_MAX];
    r = lorad_store_new_id("ftckpt-", id);
    if (r < 0) {
        json_decref(own);
        return lorad_error_set(err, r, "", "getrandom failed");
    }
    /* A resumed run that checkpoints the same step again replaces the row and keeps its id. */
    sqlite3_stmt *st = store_stmt(c,
        "INSERT INTO checkpoints(id, job_id, step, path, metrics, created_at)"
        " VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (job_id, step) DO UPDATE SET"
        " path = excluded.path, metrics = excluded.metrics, created_at = excluded.created_at"
        " RETURNING id", &r, err);
    if (!st) {
        json_decref(own);
        return r;
    }
    store_bind_text(c, st, 1, id);
    store_bind_text(c, st, 2, w->job_id);
    store_bind_int64(c, st, 3, step);
    store_bind_text(c, st, 4, path);
    store_bind_json(c, st, 5, metrics);
    store_bind_int64(c, st, 6, store_now());
    json_decref(own);
    r = store_step(c, st, "cannot insert checkpoint", err);
    if (r == 1) {
        snprintf(id, sizeof id, "%s", (const char *)sqlite3_column_text(st, 0));
        r = store_step(c, st, "cannot insert checkpoint", err);
    }
    store_stmt_done(st);
    if (r < 0) return r;
    /* Forget the rows the engine's keep_checkpoints pruning has removed from disk, in the same
     * transaction as the new row: committed separately, a crash between the two left the list
     * offering a checkpoint whose directory was gone. */
    if (keep > 0) {
        st = store_stmt(c,
            "DELETE FROM checkpoints WHERE job_id = ?1 AND step NOT IN"
            " (SELECT step FROM checkpoints WHERE job_id = ?1 ORDER BY step DESC LIMIT ?2)", &r, err);
        if (!st) return r;
        store_bind_text(c, st, 1, w->job_id);
        store_bind_int64(c, st, 2, keep);
        r = store_step(c, st, "cannot prune checkpoints", err);
        store_stmt_done(st);
        if (r < 0) return r;
    }
    char message[128];
    snprintf(message, sizeof message, "Checkpoint created at step %lld", (long long)step);
    json_t *data = json_pack("{s:s, s:I}", "checkpoint_id", id, "step", (json_int_t)step);
    r = store_event_append_tx(c, w->job_id, "info", "checkpoint", message, data, NULL, err);
    json_decref(data);
    if (r == 0 && ret_id) memcpy(ret_id, id, sizeof id);
    return r;
}

int lorad_metrics_writer_checkpoint(struct lorad_metrics_writer *w, int64_t step, const char *path,
                                    json_t *metrics, int keep, char ret_id[LORAD_STORE_ID_MAX],
                                    struct lorad_error *err) {
    if (step < 0) return lorad_error_set(err, -EINVAL, "step", "negative step");
    if (keep < 0) return lorad_error_set(err, -EINVAL, "keep", "keep must be >= 0, got %d", keep);
    if (!path || !*path) return lorad_error_set(err, -EINVAL, "path", "empty checkpoint path");
    if (strlen(path) > 1024) return lorad_error_set(err, -EINVAL, "path", "path longer than 1024 bytes");
    if (metrics && !json_is_object(metrics))
        return lorad_error_set(err, -EINVAL, "metrics", "not an object");
    int r = store_check_json_size(metrics, STORE_SMALL_JSON_MAX, "metrics", err);
    if (r < 0) return r;
    struct store_conn *c = NULL;
    r = store_acquire(w->store, &c, err);
    if (r < 0) return r;
    char id[LORAD_STORE_ID_MAX];
    r = store_job_exists(c, w->job_id, "fine_tuning_job_id", err);
    if (r == 0) r = store_tx_begin(w->store, c, err);
    if (r == 0)
        r = store_tx_end(w->store, c, checkpoint_tx(w, c, step, path, metrics, keep, id, err), err);
    store_release(w->store, c);
    if (r == 0) {
        w->n_rows = 0;
        if (ret_id) memcpy(ret_id, id, sizeof id);
    }
    return r;
}

/* A metrics row as metrics.jsonl has it (the columns of lorad_store_metrics_list's SELECT). */
static json_t *metrics_from_row(struct store_row *row) {
    static const char *const NAMES[] = {
        "step", "total_steps", "epoch", "train_loss", "train_mean_token_accuracy", "lr",
        "grad_norm", "tokens_seen", "tokens_per_s", "elapsed_s", "eta_s", "valid_loss",
        "valid_mean_token_accuracy", "rewards_margin", "rewards_accuracy", "rewards_chosen",
        "rewards_rejected", "full_valid_loss", "full_valid_mean_token_accuracy"};
    json_t *obj = json_object();
    for (int i = 0; obj && i < (int)(sizeof NAMES / sizeof NAMES[0]); i++) {
        bool integer = i == 0 || i == 1 || i == 7;
        if (json_object_set_new(obj, NAMES[i], integer ? store_col_int(row, i) : store_col_real(row, i)) < 0) {
            json_decref(obj);
            obj = NULL;
        }
    }
    return obj;
}

int lorad_store_metrics_list(struct lorad_store *s, const char *job_id, int64_t after_step,
                             int limit, json_t **ret_rows, struct lorad_error *err) {
    int r = store_check_limit(limit, 100000, err);
    if (r < 0) return r;
    struct store_conn *c = NULL;
    r = store_acquire(s, &c, err);
    if (r < 0) return r;
    r = store_job_exists(c, job_id, "fine_tuning_job_id", err);
    if (r < 0) goto out;
    sqlite3_stmt *st = store_stmt(c,
        "SELECT step, total_steps, epoch, train_loss, train_mean_token_accuracy, lr, grad_norm,"
        " tokens_seen, tokens_per_s, elapsed_s, eta_s, valid_loss, valid_mean_token_accuracy,"
        " rewards_margin, rewards_accuracy, rewards_chosen, rewards_rejected, full_valid_loss,"
        " full_valid_mean_token_accuracy"
        " FROM metrics WHERE job_id = ?1 AND step > ?2 ORDER BY step LIMIT ?3", &r, err);
    if (!st) goto out;
    store_bind_text(c, st, 1, job_id);
    store_bind_int64(c, st, 2, after_step);
    store_bind_int64(c, st, 3, limit);
    r = store_collect_rows(c, st, limit, metrics_from_row, "cannot list metrics", ret_rows, NULL, err);
out:
    store_release(s, c);
    return r;
}

static json_t *checkpoint_from_row(struct store_row *row) {
    sqlite3_stmt *st = row->st;
    /* columns: id, created_at, step, metrics, job_id, model, suffix */
    const char *suffix = (const char *)sqlite3_column_text(st, 6);
    char name[512];
    snprintf(name, sizeof name, "ft:%s:%s:%s:ckpt-step-%lld",
             (const char *)sqlite3_column_text(st, 5), suffix ? suffix : "lorad",
             (const char *)sqlite3_column_text(st, 4), (long long)sqlite3_column_int64(st, 2));
    return json_pack("{s:s, s:o, s:o, s:s, s:o, s:o, s:o}", "object", "fine_tuning.job.checkpoint",
                     "id", store_col_text(row, 0), "created_at", store_col_int(row, 1),
                     "fine_tuned_model_checkpoint", name, "step_number", store_col_int(row, 2),
                     "metrics", store_col_json(row, 3), "fine_tuning_job_id", store_col_text(row, 4));
}

int lorad_store_checkpoint_list(struct lorad_store *s, const char *job_id, const char *after,
                                int limit, json_t **ret_page, struct lorad_error *err) {
    const struct store_list_query q = {
        .what = "checkpoint", .max_limit = 100, .job_id = job_id,
        .key_sql = "SELECT step FROM checkpoints WHERE id = ?1 AND job_id = ?2",
        .page_sql = "SELECT c.id, c.created_at, c.step, c.metrics, c.job_id, j.model, j.suffix"
                    " FROM checkpoints c JOIN jobs j ON j.id = c.job_id"
                    " WHERE c.job_id = ?1 AND c.step < ?2 ORDER BY c.step DESC LIMIT ?3",
        .from_row = checkpoint_from_row};
    return store_list(s, &q, after, limit, ret_page, err);
}

/* Steps st (a SELECT of id, step, path) once. Returns 1 with the row's fields in the optional ret_
 * outputs (*ret_path malloc'd, caller frees), 0 when there is no row, or -errno. */
static int checkpoint_row(struct store_conn *c, sqlite3_stmt *st, char ret_id[LORAD_STORE_ID_MAX],
                          int64_t *ret_step, char **ret_path, struct lorad_error *err) {
    int r = store_step(c, st, "cannot read checkpoint", err);
    if (r != 1) return r;
    char *path = store_col_strdup(st, 2);
    if (!path) return lorad_error_set(err, -ENOMEM, "", "out of memory");
    if (ret_id) snprintf(ret_id, LORAD_STORE_ID_MAX, "%s", (const char *)sqlite3_column_text(st, 0));
    if (ret_step) *ret_step = sqlite3_column_int64(st, 1);
    if (ret_path) *ret_path = path;
    else free(path);
    return 1;
}

int lorad_store_checkpoint_latest(struct lorad_store *s, const char *job_id,
                                  char ret_id[LORAD_STORE_ID_MAX], int64_t *ret_step,
                                  char **ret_path, struct lorad_error *err) {
    struct store_conn *c = NULL;
    int r = store_acquire(s, &c, err);
    if (r < 0) return r;
    r = store_job_exists(c, job_id, "fine_tuning_job_id", err);
    if (r < 0) goto out;
    sqlite3_stmt *st = store_stmt(c,
        "SELECT id, step, path FROM checkpoints WHERE job_id = ?1 ORDER BY step DESC LIMIT 1",
        &r, err);
    if (!st) goto out;
    store_bind_text(c, st, 1, job_id);
    r = checkpoint_row(c, st, ret_id, ret_step, ret_path, err);
    store_stmt_done(st);
out:
    store_release(s, c);
    return r;
}

int lorad_store_checkpoint_get(struct lorad_store *s, const char *job_id, const char *checkpoint_id,
                               int64_t *ret_step, char **ret_path, struct lorad_error *err) {
    struct store_conn *c = NULL;
    int r = store_acquire(s, &c, err);
    if (r < 0) return r;
    r = store_job_exists(c, job_id, "fine_tuning_job_id", err);
    if (r < 0) goto out;
    /* Matching the job too: another job's checkpoint id is "not found" here, never served. */
    sqlite3_stmt *st = store_stmt(c,
        "SELECT id, step, path FROM checkpoints WHERE id = ?1 AND job_id = ?2", &r, err);
    if (!st) goto out;
    store_bind_text(c, st, 1, checkpoint_id);
    store_bind_text(c, st, 2, job_id);
    r = checkpoint_row(c, st, NULL, ret_step, ret_path, err);
    if (r == 1) r = 0;
    else if (r == 0)
        r = lorad_error_set(err, -ENOENT, "checkpoint_id", "job %s has no checkpoint %s", job_id, checkpoint_id);
    store_stmt_done(st);
out:
    store_release(s, c);
    return r;
}
