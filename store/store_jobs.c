/* Fine-tuning jobs: creation with idempotency keys, the status machine, the queue and the
 * control requests (pause / cancel) the API leaves for the worker. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store_internal.h"

static const char *const STATUS_NAMES[LORAD_JOB_STATUS_COUNT] = {
    [LORAD_JOB_VALIDATING_FILES] = "validating_files",
    [LORAD_JOB_QUEUED] = "queued",
    [LORAD_JOB_RUNNING] = "running",
    [LORAD_JOB_PAUSED] = "paused",
    [LORAD_JOB_CANCELLING] = "cancelling",
    [LORAD_JOB_SUCCEEDED] = "succeeded",
    [LORAD_JOB_FAILED] = "failed",
    [LORAD_JOB_CANCELLED] = "cancelled",
};

#define BIT(s) (1u << (s))
/* LEGAL[from] = the set of statuses from may move to. docs/store.md explains each edge. */
static const unsigned LEGAL[LORAD_JOB_STATUS_COUNT] = {
    [LORAD_JOB_VALIDATING_FILES] =
        BIT(LORAD_JOB_QUEUED) | BIT(LORAD_JOB_FAILED) | BIT(LORAD_JOB_CANCELLED),
    [LORAD_JOB_QUEUED] = BIT(LORAD_JOB_RUNNING) | BIT(LORAD_JOB_PAUSED) | BIT(LORAD_JOB_CANCELLED),
    [LORAD_JOB_RUNNING] = BIT(LORAD_JOB_SUCCEEDED) | BIT(LORAD_JOB_FAILED) |
                          BIT(LORAD_JOB_CANCELLING) | BIT(LORAD_JOB_PAUSED) | BIT(LORAD_JOB_QUEUED),
    [LORAD_JOB_PAUSED] = BIT(LORAD_JOB_QUEUED) | BIT(LORAD_JOB_CANCELLED),
    [LORAD_JOB_CANCELLING] = BIT(LORAD_JOB_CANCELLED) | BIT(LORAD_JOB_FAILED),
    [LORAD_JOB_SUCCEEDED] = 0,
    [LORAD_JOB_FAILED] = 0,
    [LORAD_JOB_CANCELLED] = 0,
};

const char *lorad_job_status_name(enum lorad_job_status s) {
    return (unsigned)s < LORAD_JOB_STATUS_COUNT ? STATUS_NAMES[s] : "?";
}

int lorad_job_status_parse(const char *name, enum lorad_job_status *ret_status) {
    for (int i = 0; name && i < LORAD_JOB_STATUS_COUNT; i++) {
        if (!strcmp(name, STATUS_NAMES[i])) {
            *ret_status = (enum lorad_job_status)i;
            return 0;
        }
    }
    return -EINVAL;
}

bool lorad_job_transition_legal(enum lorad_job_status from, enum lorad_job_status to) {
    if ((unsigned)from >= LORAD_JOB_STATUS_COUNT || (unsigned)to >= LORAD_JOB_STATUS_COUNT)
        return false;
    return (LEGAL[from] & BIT(to)) != 0;
}

bool lorad_job_status_terminal(enum lorad_job_status s) {
    return s == LORAD_JOB_SUCCEEDED || s == LORAD_JOB_FAILED || s == LORAD_JOB_CANCELLED;
}

/* ---- reading ------------------------------------------------------------------------------ */

/* Columns 0..23 of a job row; column 24 is its queue_position (NULL unless queued), which the two
 * SELECTs below compute differently with the same meaning: 1 + the queued jobs ahead of it in the
 * order lorad_store_job_claim_next() takes them (priority DESC, then pk: FIFO within a priority). */
#define JOB_COLUMNS                                                                              \
    "j.id, j.model, j.training_file, j.validation_file, j.spec, j.status, j.created_at,"        \
    " j.started_at, j.finished_at, j.error_code, j.error_message, j.error_param, j.seed,"      \
    " j.suffix, j.fine_tuned_model, j.trained_tokens, j.progress_step,"                        \
    " j.progress_total_steps, j.progress_epoch, j.progress_tokens_per_s, j.progress_eta_s,"    \
    " j.priority, j.control, j.memory_bytes"

/* For one job: two counts, each a range of the jobs_queue index (status, priority DESC, pk), so
 * the cost is the job's place in the queue. One count with an OR of the two ranges costs ~4x. */
#define JOB_SELECT_ONE                                                                           \
    "SELECT " JOB_COLUMNS ","                                                                    \
    " CASE WHEN j.status = 'queued' THEN 1"                                                      \
    "   + (SELECT count(*) FROM jobs q WHERE q.status = 'queued' AND q.priority > j.priority)"  \
    "   + (SELECT count(*) FROM jobs q WHERE q.status = 'queued' AND q.priority = j.priority"   \
    "      AND q.pk < j.pk) END"                                                                 \
    " FROM jobs j "

/* For a page: a count per queued row made a page of 100 cost 100 walks of the queue (~60 ms
 * with 10000 queued). Instead the whole queue is numbered once, in jobs_queue's order (no sort),
 * and each row looks its number up (SQLite builds the automatic index on pk once per query, on
 * the page's first queued row; a page without one never numbers the queue). */
#define JOB_SELECT_PAGE                                                                          \
    "WITH queue(pk, position) AS (SELECT pk, row_number() OVER (ORDER BY priority DESC, pk)"    \
    "   FROM jobs WHERE status = 'queued')"                                                      \
    " SELECT " JOB_COLUMNS ","                                                                   \
    " CASE WHEN j.status = 'queued' THEN (SELECT position FROM queue WHERE queue.pk = j.pk) END" \
    " FROM jobs j "

static json_t *hyperparameters_of(json_t *spec) {
    json_t *h = json_object_get(spec, "hyperparameters");
    if (json_is_object(h)) return json_incref(h);
    json_t *method = json_object_get(spec, "method");
    const char *type = json_string_value(json_object_get(method, "type"));
    if (type) {
        h = json_object_get(json_object_get(method, type), "hyperparameters");
        if (json_is_object(h)) return json_incref(h);
    }
    return json_object();
}

static json_t *job_from_row(struct store_row *row) {
    sqlite3_stmt *st = row->st;
    json_t *spec = store_col_json(row, 4);
    if (!spec) return NULL;
    json_t *error = json_null();
    if (sqlite3_column_type(st, 9) != SQLITE_NULL) {
        json_decref(error);
        error = json_pack("{s:o, s:o, s:o}", "code", store_col_text(row, 9), "message",
                          store_col_text(row, 10), "param", store_col_text(row, 11));
    }
    json_t *estimated_finish = json_null();
    const char *status = (const char *)sqlite3_column_text(st, 5);
    double eta_s = sqlite3_column_double(st, 20);
    /* A non-finite eta is reported as corrupt by store_col_real() below. */
    if (status && !strcmp(status, "running") && sqlite3_column_type(st, 20) != SQLITE_NULL &&
        isfinite(eta_s))
        estimated_finish = json_integer(store_now() + (int64_t)ceil(eta_s));
    json_t *progress = json_pack("{s:o, s:o, s:o, s:o, s:o}", "step", store_col_int(row, 16),
                                 "total_steps", store_col_int(row, 17), "epoch",
                                 store_col_real(row, 18), "tokens_per_s", store_col_real(row, 19),
                                 "eta_s", store_col_real(row, 20));
    json_t *job = json_pack(
        "{s:o, s:s, s:o, s:o, s:o, s:o, s:s, s:[], s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o,"
        " s:o, s:o, s:o, s:o, s:o}",
        "id", store_col_text(row, 0), "object", "fine_tuning.job", "model", store_col_text(row, 1),
        "created_at", store_col_int(row, 6), "finished_at", store_col_int(row, 8),
        "fine_tuned_model", store_col_text(row, 14), "organization_id", "org-lorad",
        "result_files", "status", store_col_text(row, 5), "validation_file",
        store_col_text(row, 3), "training_file", store_col_text(row, 2), "hyperparameters",
        hyperparameters_of(spec), "trained_tokens", store_col_int(row, 15), "error", error,
        "seed", store_col_int(row, 12), "suffix", store_col_text(row, 13), "estimated_finish",
        estimated_finish, "progress", progress, "priority", store_col_int(row, 21),
        "queue_position", store_col_int(row, 24), "started_at", store_col_int(row, 7), "control",
        store_col_text(row, 22));
    if (job) json_object_set_new(job, "memory_estimate_bytes", store_col_int(row, 23));
    if (job && json_is_object(spec)) json_object_update_missing(job, spec);
    json_decref(spec);
    return job;
}

int store_job_get_conn(struct store_conn *c, const char *id, json_t **ret_job,
                       struct lorad_error *err) {
    int r = 0;
    sqlite3_stmt *st = store_stmt(c, JOB_SELECT_ONE "WHERE j.id = ?1", &r, err);
    if (!st) return r;
    store_bind_text(c, st, 1, id);
    r = store_step(c, st, "cannot read job", err);
    if (r == 1) {
        r = store_row_object(st, job_from_row, "cannot read job", ret_job, err);
    } else if (r == 0) {
        r = lorad_error_set(err, -ENOENT, "fine_tuning_job_id", "no such job: %s", id);
    }
    store_stmt_done(st);
    return r;
}

int lorad_store_job_get(struct lorad_store *s, const char *id, json_t **ret_job,
                        struct lorad_error *err) {
    struct store_conn *c = NULL;
    int r = store_acquire(s, &c, err);
    if (r < 0) return r;
    r = store_job_get_conn(c, id, ret_job, err);
    store_release(s, c);
    return r;
}

static int job_status_tx(struct store_conn *c, const char *id, enum lorad_job_status *ret_status,
                         struct lorad_error *err);

int lorad_store_job_status(struct lorad_store *s, const char *id,
                           enum lorad_job_status *ret_status, struct lorad_error *err) {
    struct store_conn *c = NULL;
    int r = store_acquire(s, &c, err);
    if (r < 0) return r;
    r = job_status_tx(c, id, ret_status, err);
    store_release(s, c);
    return r;
}

int lorad_store_job_list(struct lorad_store *s, int status, const char *after, int limit,
                         json_t **ret_page, struct lorad_error *err) {
    if (status >= LORAD_JOB_STATUS_COUNT)
        return lorad_error_set(err, -EINVAL, "status", "unknown status %d", status);
    const struct store_list_query q = {
        .what = "job", .max_limit = 100, .filter = status < 0 ? NULL : STATUS_NAMES[status],
        .key_sql = "SELECT pk FROM jobs WHERE id = ?1",
        .page_sql = JOB_SELECT_PAGE "WHERE (?1 IS NULL OR j.status = ?1) AND j.pk < ?2 ORDER BY j.pk DESC LIMIT ?3",
        .from_row = job_from_row};
    return store_list(s, &q, after, limit, ret_page, err);
}

int lorad_store_job_counts(struct lorad_store *s, int64_t counts[LORAD_JOB_STATUS_COUNT],
                           struct lorad_error *err) {
    struct store_conn *c = NULL;
    int r = store_acquire(s, &c, err);
    if (r < 0) return r;
    int64_t tmp[LORAD_JOB_STATUS_COUNT] = {0};
    sqlite3_stmt *st = store_stmt(c, "SELECT status, count(*) FROM jobs GROUP BY status", &r, err);
    if (st) {
        while ((r = store_step(c, st, "cannot count jobs", err)) == 1) {
            enum lorad_job_status status;
            if (lorad_job_status_parse((const char *)sqlite3_column_text(st, 0), &status) == 0)
                tmp[status] = sqlite3_column_int64(st, 1);
        }
        store_stmt_done(st);
    }
    if (r == 0) memcpy(counts, tmp, sizeof tmp);
    store_release(s, c);
    return r;
}

int lorad_store_job_trained_tokens_sum(struct lorad_store *s, int64_t *ret_sum,
                                       struct lorad_error *err) {
    struct store_conn *c = NULL;
    int r = store_acquire(s, &c, err);
    if (r < 0) return r;
    /* total() is a float sum that never overflows; exact for any realistic token count (< 2^53). */
    sqlite3_stmt *st = store_stmt(c, "SELECT CAST(total(trained_tokens) AS INTEGER) FROM jobs", &r, err);
    if (st) {
        r = store_step(c, st, "cannot sum trained tokens", err);
        if (r == 1) { /* an aggregate always yields its one row */
            *ret_sum = sqlite3_column_int64(st, 0);
            r = 0;
        }
        store_stmt_done(st);
    }
    store_release(s, c);
    return r;
}

/* ---- creating ----------------------------------------------------------------------------- */

static int file_exists(struct store_conn *c, const char *id, const char *param,
                       struct lorad_error *err) {
    int r = 0;
    sqlite3_stmt *st = store_stmt(c, "SELECT 1 FROM files WHERE id = ?1", &r, err);
    if (!st) return r;
    store_bind_text(c, st, 1, id);
    r = store_step(c, st, "cannot look up file", err);
    store_stmt_done(st);
    if (r == 0) return lorad_error_set(err, -ENOENT, param, "no such file: %s", id);
    return r < 0 ? r : 0;
}

/* 0 if the queue has room for one more job, -EAGAIN if max_queued_jobs (> 0; <= 0 = no limit)
 * are queued. Inside the write transaction that queues the job, so no writer fills the place
 * between the count and the change. */
static int queue_room_tx(struct store_conn *c, int64_t max_queued_jobs, struct lorad_error *err) {
    if (max_queued_jobs <= 0) return 0;
    int r = 0;
    sqlite3_stmt *st = store_stmt(c, "SELECT count(*) FROM jobs WHERE status = 'queued'", &r, err);
    if (!st) return r;
    r = store_step(c, st, "cannot count the queue", err);
    int64_t queued = r == 1 ? sqlite3_column_int64(st, 0) : 0;
    store_stmt_done(st);
    if (r < 0) return r;
    if (queued >= max_queued_jobs)
        return lorad_error_set(err, -EAGAIN, "",
                               "%lld jobs are queued (max_queued_jobs = %lld); retry later",
                               (long long)queued, (long long)max_queued_jobs);
    return 0;
}

/* Looks the key up: 0 = unknown, 1 = same request (job id copied to ret_id), -EEXIST = the key
 * was used for a different request. */
static int idempotency_lookup(struct store_conn *c, const char *key, const char *hash,
                              char ret_id[LORAD_STORE_ID_MAX], struct lorad_error *err) {
    int r = 0;
    sqlite3_stmt *st = store_stmt(c, "SELECT id, request_hash FROM jobs WHERE idempotency_key = ?1",
                                  &r, err);
    if (!st) return r;
    store_bind_text(c, st, 1, key);
    r = store_step(c, st, "cannot look up idempotency key", err);
    if (r == 1) {
        const char *stored = (const char *)sqlite3_column_text(st, 1);
        if (stored && !strcmp(stored, hash)) {
            snprintf(ret_id, LORAD_STORE_ID_MAX, "%s", (const char *)sqlite3_column_text(st, 0));
        } else {
            r = lorad_error_set(err, -EEXIST, "idempotency_key",
                                "idempotency key already used for a different request (job %s)",
                                (const char *)sqlite3_column_text(st, 0));
        }
    }
    store_stmt_done(st);
    return r;
}

int lorad_store_job_create(struct lorad_store *s, const struct lorad_store_job_new *j,
                           json_t **ret_job, struct lorad_error *err) {
    if (!j->model || !*j->model || strlen(j->model) > 256)
        return lorad_error_set(err, -EINVAL, "model", "model must be 1..256 bytes");
    if (!lorad_store_id_valid("file-", j->training_file))
        return lorad_error_set(err, -EINVAL, "training_file", "not a file id");
    if (j->validation_file && !lorad_store_id_valid("file-", j->validation_file))
        return lorad_error_set(err, -EINVAL, "validation_file", "not a file id");
    if (!json_is_object(j->spec)) return lorad_error_set(err, -EINVAL, "spec", "not an object");
    int r = store_check_json_size(j->spec, STORE_SPEC_MAX, "spec", err);
    if (r == 0) r = store_check_utf8(j->model, "model", err);
    if (r == 0) r = store_check_utf8(j->suffix, "suffix", err);
    if (r == 0) r = store_check_utf8(j->idempotency_key, "idempotency_key", err);
    if (r == 0) r = store_check_utf8(j->request_hash, "request_hash", err);
    if (r < 0) return r;
    if (j->suffix && strlen(j->suffix) > 64)
        return lorad_error_set(err, -EINVAL, "suffix", "suffix longer than 64 bytes");
    if (j->status != LORAD_JOB_VALIDATING_FILES && j->status != LORAD_JOB_QUEUED)
        return lorad_error_set(err, -EINVAL, "status", "a job starts validating_files or queued");
    if (j->idempotency_key && (!*j->idempotency_key || strlen(j->idempotency_key) > 255))
        return lorad_error_set(err, -EINVAL, "idempotency_key", "must be 1..255 bytes");
    if (j->idempotency_key && (!j->request_hash || !*j->request_hash))
        return lorad_error_set(err, -EINVAL, "request_hash", "required with an idempotency key");
    if (j->request_hash && strlen(j->request_hash) > 128)
        return lorad_error_set(err, -EINVAL, "request_hash", "longer than 128 bytes");

    char id[LORAD_STORE_ID_MAX];
    r = lorad_store_new_id("ftjob-", id);
    if (r < 0) return lorad_error_set(err, r, "", "getrandom failed");
    struct store_conn *c = NULL;
    r = store_acquire(s, &c, err);
    if (r < 0) return r;
    r = store_tx_begin(s, c, err);
    if (r < 0) goto out;
    if (j->idempotency_key) {
        r = idempotency_lookup(c, j->idempotency_key, j->request_hash, id, err);
        if (r != 0) goto end; /* 1: replay, id now names the existing job */
    }
    r = file_exists(c, j->training_file, "training_file", err);
    if (r == 0 && j->validation_file) r = file_exists(c, j->validation_file, "validation_file", err);
    if (r == 0 && j->status == LORAD_JOB_QUEUED) r = queue_room_tx(c, j->max_queued_jobs, err);
    if (r < 0) goto end;
    sqlite3_stmt *st = store_stmt(c,
        "INSERT INTO jobs(id, model, training_file, validation_file, spec, status, created_at,"
        " seed, suffix, idempotency_key, request_hash, priority, memory_bytes)"
        " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)", &r, err);
    if (!st) goto end;
    store_bind_text(c, st, 1, id);
    store_bind_text(c, st, 2, j->model);
    store_bind_text(c, st, 3, j->training_file);
    store_bind_text(c, st, 4, j->validation_file);
    store_bind_json(c, st, 5, j->spec);
    store_bind_text(c, st, 6, STATUS_NAMES[j->status]);
    store_bind_int64(c, st, 7, store_now());
    store_bind_int64(c, st, 8, j->seed);
    store_bind_text(c, st, 9, j->suffix);
    store_bind_text(c, st, 10, j->idempotency_key);
    store_bind_text(c, st, 11, j->idempotency_key ? j->request_hash : NULL);
    store_bind_int64(c, st, 12, j->priority);
    if (j->memory_bytes > 0) store_bind_int64(c, st, 13, j->memory_bytes);
    r = store_step(c, st, "cannot insert job", err);
    store_stmt_done(st);
    if (r < 0) goto end;
    char message[128];
    snprintf(message, sizeof message, "Created fine-tuning job: %s", id);
    json_t *data = json_pack("{s:s}", "to", STATUS_NAMES[j->status]);
    r = store_event_append_tx(c, id, "info", "status", message, data, NULL, err);
    json_decref(data);
end:
    r = store_tx_end(s, c, r, err);
    if (r >= 0 && ret_job) {
        int rr = store_job_get_conn(c, id, ret_job, err);
        if (rr < 0) r = rr;
    }
out:
    store_release(s, c);
    return r;
}

/* ---- the status machine ------------------------------------------------------------------- */

static int job_status_tx(struct store_conn *c, const char *id, enum lorad_job_status *ret_status,
                         struct lorad_error *err) {
    int r = 0;
    sqlite3_stmt *st = store_stmt(c, "SELECT status FROM jobs WHERE id = ?1", &r, err);
    if (!st) return r;
    store_bind_text(c, st, 1, id);
    r = store_step(c, st, "cannot read job", err);
    if (r == 1) {
        const char *name = (const char *)sqlite3_column_text(st, 0);
        enum lorad_job_status status;
        if (name && lorad_job_status_parse(name, &status) == 0) {
            *ret_status = status;
            r = 0;
        } else {
            r = lorad_error_set(err, -EBADMSG, "", "job %s has an unknown status %s", id, name ? name : "(null)");
        }
    } else if (r == 0) {
        r = lorad_error_set(err, -ENOENT, "fine_tuning_job_id", "no such job: %s", id);
    }
    store_stmt_done(st);
    return r;
}

int store_transition_tx(struct store_conn *c, const char *id,
                        const struct lorad_store_transition *t, struct lorad_error *err) {
    enum lorad_job_status from;
    int r = job_status_tx(c, id, &from, err);
    if (r < 0) return r;
    if (!lorad_job_transition_legal(from, t->to))
        return lorad_error_set(err, -EPERM, "status", "job %s cannot go from %s to %s", id,
                               STATUS_NAMES[from], lorad_job_status_name(t->to));
    bool failed = t->to == LORAD_JOB_FAILED;
    sqlite3_stmt *st = store_stmt(c,
        "UPDATE jobs SET status = ?2,"
        " started_at = CASE WHEN ?2 = 'running' AND started_at IS NULL THEN ?3 ELSE started_at END,"
        " finished_at = CASE WHEN ?4 THEN ?3 ELSE finished_at END,"
        " error_code = CASE WHEN ?5 THEN ?6 ELSE error_code END,"
        " error_message = CASE WHEN ?5 THEN ?7 ELSE error_message END,"
        " error_param = CASE WHEN ?5 THEN ?8 ELSE error_param END,"
        " fine_tuned_model = COALESCE(?9, fine_tuned_model),"
        " control = CASE WHEN ?2 = 'cancelling' THEN 'cancel' ELSE 'none' END"
        " WHERE id = ?1", &r, err);
    if (!st) return r;
    store_bind_text(c, st, 1, id);
    store_bind_text(c, st, 2, STATUS_NAMES[t->to]);
    store_bind_int64(c, st, 3, store_now());
    store_bind_int64(c, st, 4, lorad_job_status_terminal(t->to));
    store_bind_int64(c, st, 5, failed);
    store_bind_text(c, st, 6, failed ? (t->error_code ? t->error_code : "failed") : NULL);
    store_bind_text(c, st, 7, failed ? (t->error_message ? t->error_message : "") : NULL);
    store_bind_text(c, st, 8, failed ? t->error_param : NULL);
    store_bind_text(c, st, 9, t->to == LORAD_JOB_SUCCEEDED ? t->fine_tuned_model : NULL);
    r = store_step(c, st, "cannot update job status", err);
    store_stmt_done(st);
    if (r < 0) return r;

    /* t->message is stored as given: a copy cut at a byte count could split a UTF-8 character. */
    char fallback[64];
    snprintf(fallback, sizeof fallback, "Job %s -> %s", STATUS_NAMES[from], STATUS_NAMES[t->to]);
    const char *message = t->message ? t->message : fallback;
    json_t *data = json_is_object(t->data) ? json_deep_copy(t->data) : json_object();
    json_object_set_new(data, "from", json_string(STATUS_NAMES[from]));
    json_object_set_new(data, "to", json_string(STATUS_NAMES[t->to]));
    if (failed && t->error_code) json_object_set_new(data, "error_code", json_string(t->error_code));
    r = store_event_append_tx(c, id, failed ? "error" : "info", "status", message, data, NULL, err);
    json_decref(data);
    return r;
}

int lorad_store_job_transition(struct lorad_store *s, const char *id,
                               const struct lorad_store_transition *t, json_t **ret_job,
                               struct lorad_error *err) {
    int r = store_check_json_size(t->data, STORE_SMALL_JSON_MAX, "data", err);
    if (r == 0) r = store_check_utf8(t->message, "message", err);
    if (r == 0) r = store_check_utf8(t->error_code, "error.code", err);
    if (r == 0) r = store_check_utf8(t->error_message, "error.message", err);
    if (r == 0) r = store_check_utf8(t->error_param, "error.param", err);
    if (r == 0) r = store_check_utf8(t->fine_tuned_model, "fine_tuned_model", err);
    if (r < 0) return r;
    if (t->message && strlen(t->message) > 4096)
        return lorad_error_set(err, -EINVAL, "message", "message longer than 4096 bytes");
    if ((t->error_message && strlen(t->error_message) > 4096) ||
        (t->error_code && strlen(t->error_code) > 128) ||
        (t->error_param && strlen(t->error_param) > 256) ||
        (t->fine_tuned_model && strlen(t->fine_tuned_model) > 512))
        return lorad_error_set(err, -EINVAL, "error", "error fields or model name too long");
    struct store_conn *c = NULL;
    r = store_acquire(s, &c, err);
    if (r < 0) return r;
    r = store_tx_begin(s, c, err);
    if (r == 0) r = store_tx_end(s, c, store_transition_tx(c, id, t, err), err);
    if (r == 0 && ret_job) r = store_job_get_conn(c, id, ret_job, err);
    store_release(s, c);
    return r;
}

int lorad_store_job_claim_next(struct lorad_store *s, int64_t max_memory_bytes, json_t **ret_job,
                               int64_t *ret_waiting_bytes, struct lorad_error *err) {
    struct store_conn *c = NULL;
    int r = store_acquire(s, &c, err);
    if (r < 0) return r;
    char id[LORAD_STORE_ID_MAX] = "";
    int64_t waiting = 0;
    r = store_tx_begin(s, c, err);
    if (r < 0) goto out;
    /* Selecting and moving to running in one write transaction is what makes the claim atomic:
     * a second claimer's transaction starts only after this one committed. */
    sqlite3_stmt *st = store_stmt(c,
        "SELECT id, memory_bytes FROM jobs WHERE status = 'queued' ORDER BY priority DESC, pk LIMIT 1", &r, err);
    if (st) {
        r = store_step(c, st, "cannot read queue", err);
        if (r == 1) {
            int64_t need = sqlite3_column_int64(st, 1); /* NULL (an older job) reads as 0 */
            /* Only the head is considered: a big job is not overtaken for ever by small ones. */
            if (max_memory_bytes >= 0 && need > max_memory_bytes) {
                waiting = need;
                r = 0;
            } else {
                snprintf(id, sizeof id, "%s", (const char *)sqlite3_column_text(st, 0));
            }
        }
        store_stmt_done(st);
    }
    if (r == 1) {
        struct lorad_store_transition t = {.to = LORAD_JOB_RUNNING, .message = "Fine-tuning job started"};
        r = store_transition_tx(c, id, &t, err);
        if (r == 0) r = 1;
    }
    r = store_tx_end(s, c, r, err);
    if (r == 1 && ret_job) {
        int rr = store_job_get_conn(c, id, ret_job, err);
        if (rr < 0) r = rr;
    }
    if (r >= 0 && ret_waiting_bytes) *ret_waiting_bytes = waiting;
out:
    store_release(s, c);
    return r;
}

/* ---- control requests --------------------------------------------------------------------- */

int lorad_store_job_control(struct lorad_store *s, const char *id,
                            enum lorad_job_control *ret_control, struct lorad_error *err) {
    struct store_conn *c = NULL;
    int r = store_acquire(s, &c, err);
    if (r < 0) return r;
    sqlite3_stmt *st = store_stmt(c, "SELECT status, control FROM jobs WHERE id = ?1", &r, err);
    if (st) {
        store_bind_text(c, st, 1, id);
        r = store_step(c, st, "cannot read job", err);
        if (r == 1) {
            const char *status = (const char *)sqlite3_column_text(st, 0);
            const char *control = (const char *)sqlite3_column_text(st, 1);
            if (!strcmp(status, "cancelling") || !strcmp(control, "cancel"))
                *ret_control = LORAD_JOB_CONTROL_CANCEL;
            else if (!strcmp(control, "pause"))
                *ret_control = LORAD_JOB_CONTROL_PAUSE;
            else
                *ret_control = LORAD_JOB_CONTROL_NONE;
            r = 0;
        } else if (r == 0) {
            r = lorad_error_set(err, -ENOENT, "fine_tuning_job_id", "no such job: %s", id);
        }
        store_stmt_done(st);
    }
    store_release(s, c);
    return r;
}

static int set_control_tx(struct store_conn *c, const char *id, const char *control,
                          const char *message, struct lorad_error *err) {
    int r = 0;
    sqlite3_stmt *st = store_stmt(c, "UPDATE jobs SET control = ?2 WHERE id = ?1", &r, err);
    if (!st) return r;
    store_bind_text(c, st, 1, id);
    store_bind_text(c, st, 2, control);
    r = store_step(c, st, "cannot update job", err);
    store_stmt_done(st);
    if (r < 0) return r;
    return store_event_append_tx(c, id, "info", "message", message, NULL, NULL, err);
}

enum request { REQUEST_CANCEL, REQUEST_PAUSE, REQUEST_RESUME };

/* max_queued_jobs: the queue limit for a resume (see queue_room_tx()). */
static int request_tx(struct store_conn *c, const char *id, enum request req, int64_t max_queued_jobs,
                      struct lorad_error *err) {
    enum lorad_job_status from;
    int r = job_status_tx(c, id, &from, err);
    if (r < 0) return r;
    struct lorad_store_transition t = {0};
    switch (req) {
    case REQUEST_CANCEL:
        if (from == LORAD_JOB_CANCELLING) return 0;
        t.to = from == LORAD_JOB_RUNNING ? LORAD_JOB_CANCELLING : LORAD_JOB_CANCELLED;
        t.message = from == LORAD_JOB_RUNNING ? "Cancellation requested" : "Job cancelled";
        break;
    case REQUEST_PAUSE:
        if (from == LORAD_JOB_PAUSED) return 0;
        if (from == LORAD_JOB_RUNNING)
            return set_control_tx(c, id, "pause", "Pause requested; pausing at the next step", err);
        t.to = LORAD_JOB_PAUSED;
        t.message = "Job paused";
        break;
    case REQUEST_RESUME:
        if (from == LORAD_JOB_RUNNING)
            return set_control_tx(c, id, "none", "Pause request withdrawn", err);
        /* Only a paused job enters the queue; any other is refused by the transition (-EPERM). */
        if (from == LORAD_JOB_PAUSED) {
            r = queue_room_tx(c, max_queued_jobs, err);
            if (r < 0) return r;
        }
        t.to = LORAD_JOB_QUEUED;
        t.message = "Job resumed";
        break;
    }
    return store_transition_tx(c, id, &t, err);
}

static int request(struct lorad_store *s, const char *id, enum request req, int64_t max_queued_jobs,
                   json_t **ret_job, struct lorad_error *err) {
    struct store_conn *c = NULL;
    int r = store_acquire(s, &c, err);
    if (r < 0) return r;
    r = store_tx_begin(s, c, err);
    if (r == 0) r = store_tx_end(s, c, request_tx(c, id, req, max_queued_jobs, err), err);
    if (r == 0 && ret_job) r = store_job_get_conn(c, id, ret_job, err);
    store_release(s, c);
    return r;
}

int lorad_store_job_cancel(struct lorad_store *s, const char *id, json_t **ret_job,
                           struct lorad_error *err) {
    return request(s, id, REQUEST_CANCEL, 0, ret_job, err);
}

int lorad_store_job_pause(struct lorad_store *s, const char *id, json_t **ret_job,
                          struct lorad_error *err) {
    return request(s, id, REQUEST_PAUSE, 0, ret_job, err);
}

int lorad_store_job_resume(struct lorad_store *s, const char *id, int64_t max_queued_jobs,
                           json_t **ret_job, struct lorad_error *err) {
    return request(s, id, REQUEST_RESUME, max_queued_jobs, ret_job, err);
}

int lorad_store_job_set_progress(struct lorad_store *s, const char *id,
                                 const struct lorad_store_progress *p, struct lorad_error *err) {
    struct store_conn *c = NULL;
    int r = store_acquire(s, &c, err);
    if (r < 0) return r;
    r = store_tx_begin(s, c, err);
    if (r < 0) goto out;
    sqlite3_stmt *st = store_stmt(c,
        "UPDATE jobs SET progress_step = ?2, progress_total_steps = ?3, progress_epoch = ?4,"
        " progress_tokens_per_s = ?5, progress_eta_s = ?6,"
        " trained_tokens = CASE WHEN ?7 < 0 THEN trained_tokens ELSE ?7 END WHERE id = ?1",
        &r, err);
    if (st) {
        store_bind_text(c, st, 1, id);
        store_bind_int64(c, st, 2, p->step);
        store_bind_int64(c, st, 3, p->total_steps);
        store_bind_double(c, st, 4, p->epoch);
        store_bind_double(c, st, 5, p->tokens_per_s);
        store_bind_double(c, st, 6, p->eta_s);
        store_bind_int64(c, st, 7, p->trained_tokens);
        r = store_step(c, st, "cannot update progress", err);
        store_stmt_done(st);
        if (r == 0 && sqlite3_changes(c->db) == 0)
            r = lorad_error_set(err, -ENOENT, "fine_tuning_job_id", "no such job: %s", id);
    }
    r = store_tx_end(s, c, r, err);
out:
    store_release(s, c);
    return r;
}

/* ---- startup recovery --------------------------------------------------------------------- */

/* {id, step} of a checkpoint row (columns id, step). */
static json_t *checkpoint_ref_from_row(struct store_row *row) {
    return json_pack("{s:o, s:o}", "id", store_col_text(row, 0), "step", store_col_int(row, 1));
}

int store_recover_tx(struct store_conn *c, struct lorad_error *err) {
    int r = 0;
    for (;;) {
        /* One job per round: the statement is reset before the transition reuses the cache. */
        char id[LORAD_STORE_ID_MAX] = "";
        enum lorad_job_status from = LORAD_JOB_RUNNING;
        sqlite3_stmt *st = store_stmt(c,
            "SELECT id, status FROM jobs WHERE status IN ('running','cancelling') ORDER BY pk"
            " LIMIT 1", &r, err);
        if (!st) return r;
        r = store_step(c, st, "cannot scan jobs for recovery", err);
        if (r == 1) {
            snprintf(id, sizeof id, "%s", (const char *)sqlite3_column_text(st, 0));
            lorad_job_status_parse((const char *)sqlite3_column_text(st, 1), &from);
        }
        store_stmt_done(st);
        if (r <= 0) return r;

        json_t *ckpt = NULL;
        st = store_stmt(c, "SELECT id, step FROM checkpoints WHERE job_id = ?1"
                           " ORDER BY step DESC LIMIT 1", &r, err);
        if (!st) return r;
        store_bind_text(c, st, 1, id);
        r = store_step(c, st, "cannot read checkpoints", err);
        if (r == 1) r = store_row_object(st, checkpoint_ref_from_row, "cannot read checkpoints", &ckpt, err);
        store_stmt_done(st);
        if (r < 0) return r;
        if (!ckpt) ckpt = json_null(); /* none yet */
        char message[200];
        struct lorad_store_transition t = {.message = message};
        if (from == LORAD_JOB_RUNNING) {
            t.to = LORAD_JOB_QUEUED;
            if (json_is_object(ckpt))
                snprintf(message, sizeof message,
                         "Job restarted after lorad stopped; it resumes from checkpoint step %lld",
                         (long long)json_integer_value(json_object_get(ckpt, "step")));
            else
                snprintf(message, sizeof message,
                         "Job restarted after lorad stopped; no checkpoint, it starts over");
        } else {
            t.to = LORAD_JOB_CANCELLED;
            snprintf(message, sizeof message, "Job cancelled: lorad stopped while cancelling it");
        }
        t.data = json_pack("{s:s, s:o}", "code", "job_restarted", "checkpoint", ckpt);
        r = store_transition_tx(c, id, &t, err);
        json_decref(t.data);
        if (r < 0) return r;
    }
}

/* ---- idempotency look-up (before creating) ------------------------------------------------ */

int lorad_store_job_find_idempotent(struct lorad_store *s, const char *idempotency_key,
                                    const char *request_hash, json_t **ret_job,
                                    struct lorad_error *err) {
    if (!idempotency_key || !*idempotency_key || strlen(idempotency_key) > 255)
        return lorad_error_set(err, -EINVAL, "idempotency_key", "must be 1..255 bytes");
    if (!request_hash || !*request_hash)
        return lorad_error_set(err, -EINVAL, "request_hash", "required with an idempotency key");
    struct store_conn *c = NULL;
    int r = store_acquire(s, &c, err);
    if (r < 0) return r;
    char id[LORAD_STORE_ID_MAX];
    r = idempotency_lookup(c, idempotency_key, request_hash, id, err);
    if (r == 1 && ret_job) {
        int rr = store_job_get_conn(c, id, ret_job, err);
        if (rr < 0) r = rr;
    }
    store_release(s, c);
    return r;
}
