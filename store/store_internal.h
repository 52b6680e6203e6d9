/* Private to store/: the connection pool, the statement cache, transactions and error mapping.
 * Tests may include it for the migration hook; api/ and daemon/ must not. */
#pragma once
#include <pthread.h>
#include <sqlite3.h>

#include "store.h"

#define STORE_STMT_CACHE 96

/* One SQLite connection and the statements prepared on it. Used by one thread at a time. */
struct store_conn {
    sqlite3 *db;
    struct {
        const char *sql; /* the static SQL text's address is the cache key */
        sqlite3_stmt *stmt;
    } cache[STORE_STMT_CACHE];
    int n_cached;
    /* The statement store_stmt() handed out last and its first failed bind (SQLITE_OK: none),
     * which store_step() reports instead of running the statement with that parameter NULL. */
    sqlite3_stmt *bound;
    int bind_rc, bind_index;
    struct store_conn *next_idle;
};

struct lorad_store {
    char *path;
    struct lorad_store_options opts;
    pthread_mutex_t pool_lock;
    pthread_cond_t pool_cond;
    struct store_conn *idle;
    int n_open;
    /* Serialises write transactions inside the process: fair and without busy-handler sleeps.
     * SQLite's own lock (and the busy timeout) still guards against other processes. */
    pthread_mutex_t write_lock;
};

/* Opens one connection with lorad's settings (busy timeout, foreign keys, synchronous FULL, the
 * page limit), refusing a file that is not a database without writing to it. first: the
 * connection that creates the file and switches it to WAL. Close it with store_conn_close. */
int store_conn_open(struct lorad_store *s, bool first, struct store_conn **ret_conn, struct lorad_error *err);
void store_conn_close(struct store_conn *c);
/* Borrow a connection (blocks while pool_max are in use); give it back with store_release(). */
int store_acquire(struct lorad_store *s, struct store_conn **ret_conn, struct lorad_error *err);
void store_release(struct lorad_store *s, struct store_conn *c);

/* The cached prepared statement for the static SQL text sql, reset and unbound. NULL on failure
 * (err set, *ret_rc = -errno). sql must be a string literal (its address is the key). It becomes
 * the connection's statement being bound: bind it (store_bind_*) before asking for another. */
sqlite3_stmt *store_stmt(struct store_conn *c, const char *sql, int *ret_rc,
                         struct lorad_error *err);
/* Resets st so its connection's locks are released; clears bindings. */
void store_stmt_done(sqlite3_stmt *st);
/* sqlite3_step(): 1 = row, 0 = done, -errno on error (err set with what and SQLite's text).
 * A statement one of whose binds failed is not run: the bind's error is returned (-E2BIG for a
 * value over SQLite's length limit, -ENOMEM, ...; err names the parameter). */
int store_step(struct store_conn *c, sqlite3_stmt *st, const char *what, struct lorad_error *err);

/* Maps a SQLite result code to -errno. */
int store_errno(int rc);
/* Sets err from the connection's last error: "<what>: <sqlite message>" and returns -errno. */
int store_sqlite_error(sqlite3 *db, int rc, const char *what, struct lorad_error *err);

/* Write transaction: takes the process write lock and BEGIN IMMEDIATE. store_tx_end() commits
 * when r >= 0 (rolls back if the commit fails) and rolls back when r < 0; it always drops the
 * lock and returns r or the commit's error. */
int store_tx_begin(struct lorad_store *s, struct store_conn *c, struct lorad_error *err);
int store_tx_end(struct lorad_store *s, struct store_conn *c, int r, struct lorad_error *err);

/* Unix seconds. */
int64_t store_now(void);

/* Binding helpers, the only way the store binds: they bind parameter i of st, which must be the
 * statement store_stmt() returned last on c, and record the first failure for store_step(), so
 * no caller can store a NULL where a value failed to bind. NULL text and NAN doubles bind SQL
 * NULL; json is serialised compactly. */
void store_bind_text(struct store_conn *c, sqlite3_stmt *st, int i, const char *s);
void store_bind_int64(struct store_conn *c, sqlite3_stmt *st, int i, int64_t v);
void store_bind_double(struct store_conn *c, sqlite3_stmt *st, int i, double v);
void store_bind_json(struct store_conn *c, sqlite3_stmt *st, int i, json_t *j);
/* A result row being turned into JSON. The column readers below return NULL for a column they
 * cannot read and record the first such column and why, so that a corrupt row (-EBADMSG) is told
 * apart from an allocation failure (-ENOMEM) and is never served with a null in its place. */
struct store_row {
    sqlite3_stmt *st;
    int rc;          /* 0, -EBADMSG or -ENOMEM */
    int col;         /* the column rc is about */
    const char *why; /* with -EBADMSG: "is not valid JSON", ... */
};
/* Column readers: a NULL column is json null; text that is not UTF-8, a JSON column that does not
 * parse and a non-finite real are corrupt (NULL, row->rc = -EBADMSG); NULL with -ENOMEM when out
 * of memory. */
json_t *store_col_text(struct store_row *row, int i);
json_t *store_col_int(struct store_row *row, int i);
json_t *store_col_real(struct store_row *row, int i);
json_t *store_col_json(struct store_row *row, int i);
/* A malloc'd copy of a NOT NULL text column, or NULL when out of memory (sqlite3_column_text
 * itself answers NULL then). The caller frees it. */
char *store_col_strdup(sqlite3_stmt *st, int i);
/* The error for a row whose object could not be built: -EBADMSG ("<what>: row with <column 0's
 * name> <its value> is corrupt: column <name> <why>") when a column was corrupt, else -ENOMEM. */
int store_row_error(const struct store_row *row, const char *what, struct lorad_error *err);
/* Builds an object from st's current row; column 0 must identify the row (its id). */
typedef json_t *store_from_row_fn(struct store_row *row);
/* *ret_obj = from_row(st's current row), or store_row_error(): a row one of whose columns failed
 * is an error even when from_row built something. */
int store_row_object(sqlite3_stmt *st, store_from_row_fn *from_row, const char *what,
                     json_t **ret_obj, struct lorad_error *err);

/* -EINVAL (param) unless s (may be NULL) is valid UTF-8: everything stored is later served as
 * JSON, and jansson refuses invalid UTF-8. */
int store_check_utf8(const char *s, const char *param, struct lorad_error *err);
/* -EINVAL (param) unless j (may be NULL) serialises to at most max bytes. */
int store_check_json_size(json_t *j, size_t max, const char *param, struct lorad_error *err);
#define STORE_SPEC_MAX (1u << 20)      /* job spec, file validation summary */
#define STORE_SMALL_JSON_MAX (64u << 10) /* event data, checkpoint metrics */
/* Checks limit against [1, max]: -EINVAL (param "limit") otherwise. */
int store_check_limit(int limit, int max, struct lorad_error *err);
/* Steps st through at most limit rows and turns each into an object with from_row
 * (store_row_object(): a row that cannot be turned into its object fails the call, so no row is
 * ever left out). *ret_rows is the array; *ret_more (optional) says whether st had another row.
 * Finishes st in every case. Returns 0 or -errno (err says `what` failed). */
int store_collect_rows(struct store_conn *c, sqlite3_stmt *st, int limit, store_from_row_fn *from_row,
                       const char *what, json_t **ret_rows, bool *ret_more, struct lorad_error *err);
/* One list route's query, for store_list(). Pages are newest first and continue below the sort
 * key of the `after` row (OpenAI's cursor pagination). */
struct store_list_query {
    const char *what;     /* "file", "job", ...: names the cursor in "no such <what>" and failures */
    int max_limit;        /* limit must be 1..max_limit (-EINVAL, param "limit") */
    const char *job_id;   /* rows of one job, which must exist (-ENOENT, param "fine_tuning_job_id"),
                           * bound as ?1 of both statements' second parameter; or NULL */
    const char *filter;   /* without job_id, ?1 of page_sql (NULL: no filter); must be NULL with one */
    const char *key_sql;  /* the sort key of the row with id ?1 (and job ?2 when job_id is set) */
    const char *page_sql; /* rows with ?1 (job_id or filter), sort key < ?2, newest first, LIMIT ?3 */
    store_from_row_fn *from_row;
};
/* Reads one list page {object:"list", data, has_more, first_id, last_id} into *ret_page, in one
 * connection borrowed for the call. A row that cannot be turned into its object fails the page
 * (store_row_object()), so a page is never short. -ENOENT (param "after") when the cursor row does
 * not exist; other -errno. */
int store_list(struct lorad_store *s, const struct store_list_query *q, const char *after, int limit,
               json_t **ret_page, struct lorad_error *err);
/* -ENOENT (param) unless job id exists. */
int store_job_exists(struct store_conn *c, const char *job_id, const char *param,
                     struct lorad_error *err);

/* Inside a write transaction. */
int store_event_append_tx(struct store_conn *c, const char *job_id, const char *level,
                          const char *type, const char *message, json_t *data, int64_t *ret_seq,
                          struct lorad_error *err);
int store_transition_tx(struct store_conn *c, const char *job_id,
                        const struct lorad_store_transition *t, struct lorad_error *err);
int store_recover_tx(struct store_conn *c, struct lorad_error *err);
/* Reads the job object on c (no transaction needed). */
int store_job_get_conn(struct store_conn *c, const char *id, json_t **ret_job,
                       struct lorad_error *err);

/* Migrations (store_schema.c). */
extern const int store_schema_latest;
/* Applies migrations on db until user_version == target (<= latest), each in its own
 * transaction. -EPROTO if the database is newer than latest. */
int store_migrate(sqlite3 *db, int target, const char *path, struct lorad_error *err);
/* PRAGMA user_version of db. */
int store_read_user_version(sqlite3 *db, int *ret_version, const char *path,
                             struct lorad_error *err);
/* Test hook: creates/upgrades the database at path to exactly `version` and closes it. */
int store_migrate_file_to(const char *path, int version, struct lorad_error *err);
