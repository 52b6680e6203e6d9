/* The connection layer every store file builds on: connections and their pool, transactions,
 * the statement cache, binding and column reading, list pages and error mapping. Opening the
 * database (migrations, recovery) is store_open.c, above the files it calls. */
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "store_internal.h"

int store_errno(int rc) {
    switch (rc & 0xff) {
    case SQLITE_OK: case SQLITE_ROW: case SQLITE_DONE: return 0;
    case SQLITE_BUSY: case SQLITE_LOCKED: return -EBUSY;
    case SQLITE_FULL: return -ENOSPC;
    case SQLITE_READONLY: return -EROFS;
    case SQLITE_NOTADB: case SQLITE_CORRUPT: return -EBADMSG;
    case SQLITE_NOMEM: return -ENOMEM;
    case SQLITE_CONSTRAINT: return -EEXIST;
    case SQLITE_PERM: case SQLITE_AUTH: return -EACCES;
    case SQLITE_TOOBIG: return -E2BIG;
    default: return -EIO;
    }
}

int store_sqlite_error(sqlite3 *db, int rc, const char *what, struct lorad_error *err) {
    int r = store_errno(rc);
    if (r == 0) r = -EIO;
    return lorad_error_set(err, r, "", "%s: %s", what, db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
}

const char *lorad_store_sqlite_version(void) { return sqlite3_libversion(); }

int64_t store_now(void) { return (int64_t)time(NULL); }

/* ---- statements --------------------------------------------------------------------------- */

sqlite3_stmt *store_stmt(struct store_conn *c, const char *sql, int *ret_rc,
                         struct lorad_error *err) {
    c->bound = NULL;
    c->bind_rc = SQLITE_OK;
    for (int i = 0; i < c->n_cached; i++) {
        if (c->cache[i].sql == sql) {
            sqlite3_reset(c->cache[i].stmt);
            sqlite3_clear_bindings(c->cache[i].stmt);
            c->bound = c->cache[i].stmt;
            return c->cache[i].stmt;
        }
    }
    if (c->n_cached == STORE_STMT_CACHE) {
        /* Every statement is a literal in store/, so this is a build-time sizing bug. */
        assert(!"raise STORE_STMT_CACHE");
        *ret_rc = lorad_error_set(err, -EIO, "", "statement cache full (raise STORE_STMT_CACHE)");
        return NULL;
    }
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v3(c->db, sql, -1, SQLITE_PREPARE_PERSISTENT, &st, NULL);
    if (rc != SQLITE_OK) {
        *ret_rc = store_sqlite_error(c->db, rc, "cannot prepare statement", err);
        return NULL;
    }
    c->cache[c->n_cached].sql = sql;
    c->cache[c->n_cached].stmt = st;
    c->n_cached++;
    c->bound = st;
    return st;
}

void store_stmt_done(sqlite3_stmt *st) {
    if (!st) return;
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
}

int store_step(struct store_conn *c, sqlite3_stmt *st, const char *what, struct lorad_error *err) {
    if (st == c->bound && c->bind_rc != SQLITE_OK) {
        int rc = c->bind_rc;
        c->bind_rc = SQLITE_OK;
        int r = store_errno(rc);
        return lorad_error_set(err, r ? r : -EIO, "", "%s: cannot bind parameter %d: %s", what,
                               c->bind_index, sqlite3_errstr(rc));
    }
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) return 1;
    if (rc == SQLITE_DONE) return 0;
    return store_sqlite_error(c->db, rc, what, err);
}

static void bind_result(struct store_conn *c, sqlite3_stmt *st, int i, int rc) {
    assert(st == c->bound && "bind the statement store_stmt() returned last");
    if (rc != SQLITE_OK && c->bind_rc == SQLITE_OK) {
        c->bind_rc = rc;
        c->bind_index = i;
    }
}

void store_bind_text(struct store_conn *c, sqlite3_stmt *st, int i, const char *s) {
    bind_result(c, st, i,
                s ? sqlite3_bind_text(st, i, s, -1, SQLITE_TRANSIENT) : sqlite3_bind_null(st, i));
}

void store_bind_int64(struct store_conn *c, sqlite3_stmt *st, int i, int64_t v) {
    bind_result(c, st, i, sqlite3_bind_int64(st, i, v));
}

void store_bind_double(struct store_conn *c, sqlite3_stmt *st, int i, double v) {
    bind_result(c, st, i, isfinite(v) ? sqlite3_bind_double(st, i, v) : sqlite3_bind_null(st, i));
}

void store_bind_json(struct store_conn *c, sqlite3_stmt *st, int i, json_t *j) {
    if (!j) {
        bind_result(c, st, i, sqlite3_bind_null(st, i));
        return;
    }
    char *text = json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY);
    /* SQLite frees text with the destructor even when the bind fails. */
    bind_result(c, st, i, text ? sqlite3_bind_text(st, i, text, -1, free) : SQLITE_NOMEM);
}

static json_t *col_failed(struct store_row *row, int i, int rc, const char *why) {
    if (row->rc == 0) {
        row->rc = rc;
        row->col = i;
        row->why = why;
    }
    return NULL;
}

char *store_col_strdup(sqlite3_stmt *st, int i) {
    const char *s = (const char *)sqlite3_column_text(st, i);
    return s ? strdup(s) : NULL;
}

json_t *store_col_text(struct store_row *row, int i) {
    if (sqlite3_column_type(row->st, i) == SQLITE_NULL) return json_null();
    const char *s = (const char *)sqlite3_column_text(row->st, i);
    if (!s) return col_failed(row, i, -ENOMEM, NULL);
    json_t *j = json_string(s);
    if (j) return j;
    /* json_string() fails for invalid UTF-8 and for want of memory alike; the unchecked variant
     * fails only for the latter. */
    j = json_string_nocheck(s);
    if (!j) return col_failed(row, i, -ENOMEM, NULL);
    json_decref(j);
    return col_failed(row, i, -EBADMSG, "is not valid UTF-8");
}

json_t *store_col_int(struct store_row *row, int i) {
    if (sqlite3_column_type(row->st, i) == SQLITE_NULL) return json_null();
    json_t *j = json_integer(sqlite3_column_int64(row->st, i));
    return j ? j : col_failed(row, i, -ENOMEM, NULL);
}

json_t *store_col_real(struct store_row *row, int i) {
    if (sqlite3_column_type(row->st, i) == SQLITE_NULL) return json_null();
    double v = sqlite3_column_double(row->st, i);
    /* The store binds non-finite values as NULL, and JSON has no spelling for them. */
    if (!isfinite(v)) return col_failed(row, i, -EBADMSG, "is not a finite number");
    json_t *j = json_real(v);
    return j ? j : col_failed(row, i, -ENOMEM, NULL);
}

json_t *store_col_json(struct store_row *row, int i) {
    if (sqlite3_column_type(row->st, i) == SQLITE_NULL) return json_null();
    const char *s = (const char *)sqlite3_column_text(row->st, i);
    if (!s) return col_failed(row, i, -ENOMEM, NULL);
    json_error_t e;
    json_t *j = json_loads(s, JSON_DECODE_ANY, &e);
    if (j) return j;
    if (json_error_code(&e) == json_error_out_of_memory) return col_failed(row, i, -ENOMEM, NULL);
    return col_failed(row, i, -EBADMSG, "is not valid JSON");
}

int store_row_error(const struct store_row *row, const char *what, struct lorad_error *err) {
    if (row->rc != -EBADMSG) return lorad_error_set(err, -ENOMEM, "", "%s: out of memory", what);
    const char *key = (const char *)sqlite3_column_text(row->st, 0);
    /* The message ends up in a JSON reply: a key that is itself not UTF-8 is not repeated. */
    if (!key || store_check_utf8(key, "", NULL) < 0) key = "(unreadable)";
    return lorad_error_set(err, -EBADMSG, "", "%s: row with %s %s is corrupt: column %s %s", what,
                           sqlite3_column_name(row->st, 0), key,
                           sqlite3_column_name(row->st, row->col), row->why);
}

int store_row_object(sqlite3_stmt *st, store_from_row_fn *from_row, const char *what,
                     json_t **ret_obj, struct lorad_error *err) {
    struct store_row row = {.st = st};
    json_t *obj = from_row(&row);
    if (obj && row.rc == 0) {
        *ret_obj = obj;
        return 0;
    }
    json_decref(obj);
    return store_row_error(&row, what, err);
}

int store_check_utf8(const char *s, const char *param, struct lorad_error *err) {
    if (!s) return 0;
    json_t *j = json_string(s);
    if (!j) return lorad_error_set(err, -EINVAL, param, "not valid UTF-8");
    json_decref(j);
    return 0;
}

int store_check_json_size(json_t *j, size_t max, const char *param, struct lorad_error *err) {
    if (!j) return 0;
    size_t n = json_dumpb(j, NULL, 0, JSON_COMPACT | JSON_ENCODE_ANY);
    if (n == 0 || n > max)
        return lorad_error_set(err, -EINVAL, param, "must serialise to 1..%zu bytes, got %zu", max, n);
    return 0;
}

int store_check_limit(int limit, int max, struct lorad_error *err) {
    if (limit < 1 || limit > max)
        return lorad_error_set(err, -EINVAL, "limit", "limit must be 1..%d, got %d", max, limit);
    return 0;
}

/* {object:"list", data, has_more, first_id, last_id}; steals data. */
static json_t *list_page(json_t *data, bool has_more) {
    size_t n = json_array_size(data);
    json_t *first = n ? json_object_get(json_array_get(data, 0), "id") : NULL;
    json_t *last = n ? json_object_get(json_array_get(data, n - 1), "id") : NULL;
    return json_pack("{s:s, s:o, s:b, s:O?, s:O?}", "object", "list", "data", data, "has_more",
                     has_more, "first_id", first, "last_id", last);
}

int store_collect_rows(struct store_conn *c, sqlite3_stmt *st, int limit, store_from_row_fn *from_row,
                       const char *what, json_t **ret_rows, bool *ret_more, struct lorad_error *err) {
    json_t *rows = json_array();
    bool more = false;
    int r = rows ? 0 : lorad_error_set(err, -ENOMEM, "", "%s: out of memory", what);
    while (r == 0 && (r = store_step(c, st, what, err)) == 1) {
        if ((int)json_array_size(rows) == limit) {
            more = true;
            r = 0;
            break;
        }
        json_t *obj = NULL;
        r = store_row_object(st, from_row, what, &obj, err);
        if (r == 0 && json_array_append_new(rows, obj) < 0)
            r = lorad_error_set(err, -ENOMEM, "", "%s: out of memory", what);
    }
    store_stmt_done(st);
    if (r < 0) {
        json_decref(rows);
        return r;
    }
    *ret_rows = rows;
    if (ret_more) *ret_more = more;
    return 0;
}

int store_job_exists(struct store_conn *c, const char *job_id, const char *param,
                     struct lorad_error *err) {
    int r = 0;
    sqlite3_stmt *st = store_stmt(c, "SELECT 1 FROM jobs WHERE id = ?1", &r, err);
    if (!st) return r;
    store_bind_text(c, st, 1, job_id);
    r = store_step(c, st, "cannot look up job", err);
    store_stmt_done(st);
    if (r == 0) return lorad_error_set(err, -ENOENT, param, "no such job: %s", job_id);
    return r < 0 ? r : 0;
}

/* ---- connections -------------------------------------------------------------------------- */

void store_conn_close(struct store_conn *c) {
    if (!c) return;
    for (int i = 0; i < c->n_cached; i++) sqlite3_finalize(c->cache[i].stmt);
    sqlite3_close(c->db);
    free(c);
}

static int conn_exec(struct store_conn *c, const char *sql, const char *path, const char *what,
                     struct lorad_error *err) {
    int rc = sqlite3_exec(c->db, sql, NULL, NULL, NULL);
    if (rc == SQLITE_OK) return 0;
    return lorad_error_set(err, store_errno(rc) ? store_errno(rc) : -EIO, "", "%s: %s: %s", path,
                           what, sqlite3_errmsg(c->db));
}

int store_conn_open(struct lorad_store *s, bool first, struct store_conn **ret_conn,
                     struct lorad_error *err) {
    bool readonly = s->opts.flags & LORAD_STORE_READONLY;
    struct store_conn *c = calloc(1, sizeof *c);
    if (!c) return lorad_error_set(err, -ENOMEM, "", "out of memory");
    int flags = SQLITE_OPEN_NOMUTEX | (readonly ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE);
    if (first && !readonly) flags |= SQLITE_OPEN_CREATE;
    int rc = sqlite3_open_v2(s->path, &c->db, flags, NULL);
    if (rc != SQLITE_OK) {
        int r = lorad_error_set(err, store_errno(rc) ? store_errno(rc) : -EIO, "",
                                "%s: cannot open database: %s", s->path,
                                c->db ? sqlite3_errmsg(c->db) : sqlite3_errstr(rc));
        store_conn_close(c);
        return r;
    }
    sqlite3_extended_result_codes(c->db, 1);
    sqlite3_busy_timeout(c->db, s->opts.busy_timeout_ms);
    /* Read the header before any statement that could write: a file that is not a database
     * fails here and is left byte for byte as it was. */
    int r = conn_exec(c, "SELECT count(*) FROM sqlite_schema", s->path,
                      "not a usable SQLite database (refusing to touch it)", err);
    if (r == 0) r = conn_exec(c, "PRAGMA foreign_keys = ON", s->path, "foreign_keys", err);
    if (r == 0 && first && !readonly)
        r = conn_exec(c, "PRAGMA journal_mode = WAL", s->path, "cannot enable WAL", err);
    /* FULL: a committed transaction survives power loss too, not only a process crash. */
    if (r == 0) r = conn_exec(c, "PRAGMA synchronous = FULL", s->path, "synchronous", err);
    /* 512 KiB of page cache per connection instead of SQLite's 2 MB: the pool keeps up to pool_max
     * (16) connections open, each filling its own cache as the database grows, which could hold 32 MB
     * after a burst of SSE clients; a page not cached is a pread from the kernel's page cache. */
    if (r == 0) r = conn_exec(c, "PRAGMA cache_size = -512", s->path, "cache_size", err);
    if (r == 0 && s->opts.max_pages > 0) {
        /* An integer from the daemon's options, not client input; PRAGMA cannot be bound. */
        char sql[64];
        snprintf(sql, sizeof sql, "PRAGMA max_page_count = %" PRId64, s->opts.max_pages);
        r = conn_exec(c, sql, s->path, "max_page_count", err);
    }
    if (r < 0) {
        store_conn_close(c);
        return r;
    }
    *ret_conn = c;
    return 0;
}

int store_acquire(struct lorad_store *s, struct store_conn **ret_conn, struct lorad_error *err) {
    pthread_mutex_lock(&s->pool_lock);
    for (;;) {
        if (s->idle) {
            struct store_conn *c = s->idle;
            s->idle = c->next_idle;
            c->next_idle = NULL;
            pthread_mutex_unlock(&s->pool_lock);
            *ret_conn = c;
            return 0;
        }
        if (s->n_open < s->opts.pool_max) break;
        pthread_cond_wait(&s->pool_cond, &s->pool_lock);
    }
    s->n_open++;
    pthread_mutex_unlock(&s->pool_lock);
    struct store_conn *c = NULL;
    int r = store_conn_open(s, false, &c, err);
    if (r < 0) {
        pthread_mutex_lock(&s->pool_lock);
        s->n_open--;
        pthread_cond_signal(&s->pool_cond);
        pthread_mutex_unlock(&s->pool_lock);
        return r;
    }
    *ret_conn = c;
    return 0;
}

void store_release(struct lorad_store *s, struct store_conn *c) {
    if (!c) return;
    pthread_mutex_lock(&s->pool_lock);
    c->next_idle = s->idle;
    s->idle = c;
    pthread_cond_signal(&s->pool_cond);
    pthread_mutex_unlock(&s->pool_lock);
}

/* ---- transactions ------------------------------------------------------------------------- */

int store_tx_begin(struct lorad_store *s, struct store_conn *c, struct lorad_error *err) {
    pthread_mutex_lock(&s->write_lock);
    int r = 0;
    sqlite3_stmt *st = store_stmt(c, "BEGIN IMMEDIATE", &r, err);
    if (st) r = store_step(c, st, "cannot start transaction", err);
    store_stmt_done(st);
    if (r < 0) pthread_mutex_unlock(&s->write_lock);
    return r;
}

int store_tx_end(struct lorad_store *s, struct store_conn *c, int r, struct lorad_error *err) {
    int rr = 0;
    if (r >= 0) {
        sqlite3_stmt *st = store_stmt(c, "COMMIT", &rr, err);
        if (st) rr = store_step(c, st, "cannot commit", err);
        store_stmt_done(st);
        if (rr < 0) r = rr;
    }
    if (r < 0 && !sqlite3_get_autocommit(c->db)) {
        /* Some errors (SQLITE_FULL, IOERR) already rolled back; ROLLBACK only if still open. */
        sqlite3_exec(c->db, "ROLLBACK", NULL, NULL, NULL);
    }
    pthread_mutex_unlock(&s->write_lock);
    return r;
}

/* The sort key of the row a page starts after: sql selects one integer column for id ?1 (and job
 * ?2 when job_id is set). Without after, INT64_MAX: the page starts at the newest row. */
static int page_after_key(struct store_conn *c, const char *sql, const char *after, const char *job_id,
                          const char *what, int64_t *ret_key, struct lorad_error *err) {
    if (!after) {
        *ret_key = INT64_MAX;
        return 0;
    }
    int r;
    sqlite3_stmt *st = store_stmt(c, sql, &r, err);
    if (!st) return r;
    store_bind_text(c, st, 1, after);
    if (job_id) store_bind_text(c, st, 2, job_id);
    char failed[64];
    snprintf(failed, sizeof failed, "cannot read %s", what);
    r = store_step(c, st, failed, err);
    int64_t key = r == 1 ? sqlite3_column_int64(st, 0) : 0;
    store_stmt_done(st);
    if (r == 0) return lorad_error_set(err, -ENOENT, "after", "no such %s: %s", what, after);
    if (r < 0) return r;
    *ret_key = key;
    return 0;
}

int store_list(struct lorad_store *s, const struct store_list_query *q, const char *after, int limit,
               json_t **ret_page, struct lorad_error *err) {
    assert(!(q->job_id && q->filter));
    int r = store_check_limit(limit, q->max_limit, err);
    if (r < 0) return r;
    struct store_conn *c = NULL;
    r = store_acquire(s, &c, err);
    if (r < 0) return r;
    char failed[64];
    snprintf(failed, sizeof failed, "cannot list %ss", q->what);
    int64_t key = INT64_MAX;
    json_t *data = NULL;
    bool has_more = false;
    if (q->job_id && (r = store_job_exists(c, q->job_id, "fine_tuning_job_id", err)) < 0) goto out;
    if ((r = page_after_key(c, q->key_sql, after, q->job_id, q->what, &key, err)) < 0) goto out;
    sqlite3_stmt *st = store_stmt(c, q->page_sql, &r, err);
    if (!st) goto out;
    store_bind_text(c, st, 1, q->job_id ? q->job_id : q->filter);
    store_bind_int64(c, st, 2, key);
    store_bind_int64(c, st, 3, limit + 1); /* one more row than the page says whether there are more */
    r = store_collect_rows(c, st, limit, q->from_row, failed, &data, &has_more, err);
    if (r < 0) goto out;
    json_t *page = list_page(data, has_more);
    if (!page) {
        r = lorad_error_set(err, -ENOMEM, "", "%s: out of memory", failed);
        goto out;
    }
    *ret_page = page;
out:
    store_release(s, c);
    return r;
}
