/* Job events: an append-only log per job, numbered 1, 2, 3, … (seq) so a stream can resume
 * "after seq" without gaps or repeats. */
#include <errno.h>
#include <stdint.h>
#include <string.h>

#include "store_internal.h"

static bool level_valid(const char *l) {
    return l && (!strcmp(l, "info") || !strcmp(l, "warn") || !strcmp(l, "error"));
}

static bool type_valid(const char *t) {
    return t && (!strcmp(t, "message") || !strcmp(t, "metrics") || !strcmp(t, "checkpoint") ||
                 !strcmp(t, "status") || !strcmp(t, "job_restarted"));
}

int store_event_append_tx(struct store_conn *c, const char *job_id, const char *level,
                          const char *type, const char *message, json_t *data, int64_t *ret_seq,
                          struct lorad_error *err) {
    char id[LORAD_STORE_ID_MAX];
    int r = lorad_store_new_id("ftevent-", id);
    if (r < 0) return lorad_error_set(err, r, "", "getrandom failed");
    /* Inside the write transaction, MAX(seq)+1 cannot race with another writer. */
    sqlite3_stmt *st = store_stmt(c,
        "INSERT INTO events(id, job_id, seq, created_at, level, type, message, data)"
        " SELECT ?1, ?2, COALESCE(MAX(seq), 0) + 1, ?3, ?4, ?5, ?6, ?7 FROM events"
        " WHERE job_id = ?2 RETURNING seq", &r, err);
    if (!st) return r;
    store_bind_text(c, st, 1, id);
    store_bind_text(c, st, 2, job_id);
    store_bind_int64(c, st, 3, store_now());
    store_bind_text(c, st, 4, level);
    store_bind_text(c, st, 5, type);
    store_bind_text(c, st, 6, message ? message : "");
    store_bind_json(c, st, 7, data);
    r = store_step(c, st, "cannot append event", err);
    int64_t seq = r == 1 ? sqlite3_column_int64(st, 0) : 0;
    if (r == 1) r = store_step(c, st, "cannot append event", err);
    store_stmt_done(st);
    if (r < 0) return r;
    if (ret_seq) *ret_seq = seq;
    return 0;
}

int lorad_store_event_append(struct lorad_store *s, const char *job_id, const char *level,
                             const char *type, const char *message, json_t *data,
                             int64_t *ret_seq, struct lorad_error *err) {
    if (!level_valid(level)) return lorad_error_set(err, -EINVAL, "level", "bad event level");
    if (!type_valid(type)) return lorad_error_set(err, -EINVAL, "type", "bad event type");
    if (message && strlen(message) > 4096)
        return lorad_error_set(err, -EINVAL, "message", "event message longer than 4096 bytes");
    int r = store_check_json_size(data, STORE_SMALL_JSON_MAX, "data", err);
    if (r == 0) r = store_check_utf8(message, "message", err);
    if (r < 0) return r;
    struct store_conn *c = NULL;
    r = store_acquire(s, &c, err);
    if (r < 0) return r;
    int64_t seq = 0;
    r = store_job_exists(c, job_id, "fine_tuning_job_id", err);
    if (r == 0) r = store_tx_begin(s, c, err);
    if (r == 0)
        r = store_tx_end(s, c, store_event_append_tx(c, job_id, level, type, message, data, &seq, err),
                         err);
    store_release(s, c);
    if (r == 0 && ret_seq) *ret_seq = seq;
    return r;
}

static json_t *event_from_row(struct store_row *row) {
    /* columns: id, created_at, level, message, data, type, seq */
    return json_pack("{s:s, s:o, s:o, s:o, s:o, s:o, s:o}", "object", "fine_tuning.job.event",
                     "id", store_col_text(row, 0), "created_at", store_col_int(row, 1), "level",
                     store_col_text(row, 2), "message", store_col_text(row, 3), "data",
                     store_col_json(row, 4), "type", store_col_text(row, 5));
}

/* An event with its "seq", for streaming. */
static json_t *event_seq_from_row(struct store_row *row) {
    json_t *ev = event_from_row(row);
    if (ev && json_object_set_new(ev, "seq", store_col_int(row, 6)) < 0) {
        json_decref(ev);
        return NULL;
    }
    return ev;
}

int lorad_store_event_list(struct lorad_store *s, const char *job_id, const char *after,
                           int limit, json_t **ret_page, struct lorad_error *err) {
    const struct store_list_query q = {
        .what = "event", .max_limit = 100, .job_id = job_id,
        .key_sql = "SELECT seq FROM events WHERE id = ?1 AND job_id = ?2",
        .page_sql = "SELECT id, created_at, level, message, data, type, seq FROM events"
                    " WHERE job_id = ?1 AND seq < ?2 ORDER BY seq DESC LIMIT ?3",
        .from_row = event_from_row};
    return store_list(s, &q, after, limit, ret_page, err);
}

int lorad_store_event_since(struct lorad_store *s, const char *job_id, int64_t after_seq,
                            int limit, json_t **ret_events, int64_t *ret_last_seq,
                            struct lorad_error *err) {
    int r = store_check_limit(limit, 1000, err);
    if (r < 0) return r;
    struct store_conn *c = NULL;
    r = store_acquire(s, &c, err);
    if (r < 0) return r;
    r = store_job_exists(c, job_id, "fine_tuning_job_id", err);
    if (r < 0) goto out;
    sqlite3_stmt *st = store_stmt(c,
        "SELECT id, created_at, level, message, data, type, seq FROM events"
        " WHERE job_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3", &r, err);
    if (!st) goto out;
    store_bind_text(c, st, 1, job_id);
    store_bind_int64(c, st, 2, after_seq);
    store_bind_int64(c, st, 3, limit);
    json_t *events = NULL;
    r = store_collect_rows(c, st, limit, event_seq_from_row, "cannot list events", &events, NULL, err);
    if (r < 0) goto out;
    size_t n = json_array_size(events);
    int64_t last = n ? json_integer_value(json_object_get(json_array_get(events, n - 1), "seq")) : after_seq;
    *ret_events = events;
    if (ret_last_seq) *ret_last_seq = last;
out:
    store_release(s, c);
    return r;
}

int lorad_store_event_count(struct lorad_store *s, const char *job_id, const char *type, int64_t *ret_count,
                            struct lorad_error *err) {
    struct store_conn *c = NULL;
    int r = store_acquire(s, &c, err);
    if (r < 0) return r;
    sqlite3_stmt *st = store_stmt(c, "SELECT count(*) FROM events WHERE job_id = ?1 AND type = ?2", &r, err);
    if (st) {
        store_bind_text(c, st, 1, job_id);
        store_bind_text(c, st, 2, type);
        r = store_step(c, st, "cannot count events", err);
        int64_t n = r == 1 ? sqlite3_column_int64(st, 0) : 0;
        store_stmt_done(st);
        if (r == 1) {
            *ret_count = n;
            r = 0;
        }
    }
    store_release(s, c);
    return r;
}
