/* Schema migrations. Migration k (1-based) takes the database from user_version k-1 to k and is
 * a fixed SQL text run in one transaction. Never edit a released migration: add the next one. */
#include <assert.h>
#include <errno.h>

#include "store_internal.h"

static const char *const MIGRATIONS[] = {
    /* 1: files, jobs, events. */
    "CREATE TABLE files("
    "  pk INTEGER PRIMARY KEY,"
    "  id TEXT NOT NULL UNIQUE,"
    "  filename TEXT NOT NULL,"
    "  purpose TEXT NOT NULL,"
    "  bytes INTEGER NOT NULL CHECK (bytes >= 0),"
    "  sha256 TEXT NOT NULL,"
    "  line_count INTEGER NOT NULL DEFAULT 0,"
    "  format TEXT,"
    "  validation TEXT,"
    "  status TEXT NOT NULL CHECK (status IN ('uploaded','processed','error')),"
    "  path TEXT NOT NULL,"
    "  created_at INTEGER NOT NULL);"
    "CREATE INDEX files_purpose ON files(purpose, pk);"
    "CREATE TABLE jobs("
    "  pk INTEGER PRIMARY KEY,"
    "  id TEXT NOT NULL UNIQUE,"
    "  model TEXT NOT NULL,"
    "  training_file TEXT NOT NULL,"
    "  validation_file TEXT,"
    "  spec TEXT NOT NULL,"
    "  status TEXT NOT NULL CHECK (status IN ('validating_files','queued','running','paused',"
    "                                         'cancelling','succeeded','failed','cancelled')),"
    "  created_at INTEGER NOT NULL,"
    "  started_at INTEGER,"
    "  finished_at INTEGER,"
    "  error_code TEXT,"
    "  error_message TEXT,"
    "  error_param TEXT,"
    "  seed INTEGER NOT NULL,"
    "  suffix TEXT,"
    "  fine_tuned_model TEXT,"
    "  trained_tokens INTEGER,"
    "  progress_step INTEGER,"
    "  progress_total_steps INTEGER,"
    "  progress_epoch REAL,"
    "  progress_tokens_per_s REAL,"
    "  progress_eta_s REAL,"
    "  idempotency_key TEXT UNIQUE,"
    "  request_hash TEXT,"
    "  priority INTEGER NOT NULL DEFAULT 0);"
    "CREATE INDEX jobs_queue ON jobs(status, priority DESC, pk);"
    "CREATE INDEX jobs_training_file ON jobs(training_file);"
    "CREATE INDEX jobs_validation_file ON jobs(validation_file);"
    "CREATE TABLE events("
    "  pk INTEGER PRIMARY KEY,"
    "  id TEXT NOT NULL UNIQUE,"
    "  job_id TEXT NOT NULL REFERENCES jobs(id),"
    "  seq INTEGER NOT NULL,"
    "  created_at INTEGER NOT NULL,"
    "  level TEXT NOT NULL CHECK (level IN ('info','warn','error')),"
    "  type TEXT NOT NULL CHECK (type IN ('message','metrics','checkpoint','status')),"
    "  message TEXT NOT NULL,"
    "  data TEXT,"
    "  UNIQUE (job_id, seq));"
    "PRAGMA user_version = 1;",

    /* 2: per-step metrics (a repeated step overwrites) and checkpoints. */
    "CREATE TABLE metrics("
    "  job_id TEXT NOT NULL REFERENCES jobs(id),"
    "  step INTEGER NOT NULL,"
    "  total_steps INTEGER,"
    "  epoch REAL,"
    "  train_loss REAL,"
    "  train_mean_token_accuracy REAL,"
    "  lr REAL,"
    "  grad_norm REAL,"
    "  tokens_seen INTEGER,"
    "  tokens_per_s REAL,"
    "  elapsed_s REAL,"
    "  eta_s REAL,"
    "  valid_loss REAL,"
    "  valid_mean_token_accuracy REAL,"
    "  PRIMARY KEY (job_id, step)) WITHOUT ROWID;"
    "CREATE TABLE checkpoints("
    "  pk INTEGER PRIMARY KEY,"
    "  id TEXT NOT NULL UNIQUE,"
    "  job_id TEXT NOT NULL REFERENCES jobs(id),"
    "  step INTEGER NOT NULL,"
    "  path TEXT NOT NULL,"
    "  metrics TEXT,"
    "  created_at INTEGER NOT NULL,"
    "  UNIQUE (job_id, step));"
    "PRAGMA user_version = 2;",

    /* 3: the API's control requests to a worker, and API key hashes. */
    "ALTER TABLE jobs ADD COLUMN control TEXT NOT NULL DEFAULT 'none'"
    "  CHECK (control IN ('none','pause','cancel'));"
    "CREATE TABLE api_keys("
    "  pk INTEGER PRIMARY KEY,"
    "  name TEXT NOT NULL,"
    "  key_sha256 TEXT NOT NULL UNIQUE,"
    "  created_at INTEGER NOT NULL,"
    "  revoked_at INTEGER);"
    "PRAGMA user_version = 3;",

    /* 4: each job's memory estimate at creation (bytes), so workers only start what fits; NULL
     * for jobs made before it was recorded. */
    "ALTER TABLE jobs ADD COLUMN memory_bytes INTEGER CHECK (memory_bytes IS NULL OR memory_bytes >= 0);"
    "PRAGMA user_version = 4;",

    /* 5: event type job_restarted (a data-parallel run lost a rank and goes back to its last
     * checkpoint). SQLite cannot change a CHECK in place: the table is rebuilt, rows and pks kept. */
    "CREATE TABLE events_v5("
    "  pk INTEGER PRIMARY KEY,"
    "  id TEXT NOT NULL UNIQUE,"
    "  job_id TEXT NOT NULL REFERENCES jobs(id),"
    "  seq INTEGER NOT NULL,"
    "  created_at INTEGER NOT NULL,"
    "  level TEXT NOT NULL CHECK (level IN ('info','warn','error')),"
    "  type TEXT NOT NULL CHECK (type IN ('message','metrics','checkpoint','status','job_restarted')),"
    "  message TEXT NOT NULL,"
    "  data TEXT,"
    "  UNIQUE (job_id, seq));"
    "INSERT INTO events_v5(pk, id, job_id, seq, created_at, level, type, message, data)"
    "  SELECT pk, id, job_id, seq, created_at, level, type, message, data FROM events;"
    "DROP TABLE events;"
    "ALTER TABLE events_v5 RENAME TO events;"
    "PRAGMA user_version = 5;",

    /* 6: the DPO figures of a step (NULL for other methods). */
    "ALTER TABLE metrics ADD COLUMN rewards_margin REAL;"
    "ALTER TABLE metrics ADD COLUMN rewards_accuracy REAL;"
    "ALTER TABLE metrics ADD COLUMN rewards_chosen REAL;"
    "ALTER TABLE metrics ADD COLUMN rewards_rejected REAL;"
    "PRAGMA user_version = 6;",

    /* 7: the loss and token accuracy over the whole validation set, at the steps that checkpoint
     * on schedule (NULL elsewhere). */
    "ALTER TABLE metrics ADD COLUMN full_valid_loss REAL;"
    "ALTER TABLE metrics ADD COLUMN full_valid_mean_token_accuracy REAL;"
    "PRAGMA user_version = 7;",
};

const int store_schema_latest = (int)(sizeof MIGRATIONS / sizeof MIGRATIONS[0]);

int lorad_store_schema_version(void) { return store_schema_latest; }

int store_read_user_version(sqlite3 *db, int *ret_version, const char *path,
                             struct lorad_error *err) {
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &st, NULL);
    if (rc == SQLITE_OK) rc = sqlite3_step(st);
    if (rc != SQLITE_ROW) {
        int r = store_errno(rc);
        lorad_error_set(err, r, "", "%s: cannot read schema version: %s", path, sqlite3_errmsg(db));
        sqlite3_finalize(st);
        return r;
    }
    *ret_version = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    return 0;
}

static int exec(sqlite3 *db, const char *sql, const char *path, const char *what,
                struct lorad_error *err) {
    int rc = sqlite3_exec(db, sql, NULL, NULL, NULL);
    if (rc == SQLITE_OK) return 0;
    int r = store_errno(rc);
    return lorad_error_set(err, r, "", "%s: %s: %s", path, what, sqlite3_errmsg(db));
}

int store_migrate(sqlite3 *db, int target, const char *path, struct lorad_error *err) {
    assert(target >= 0 && target <= store_schema_latest);
    for (;;) {
        /* Each step re-reads the version under the write lock, so two processes opening a fresh
         * database at once apply each migration exactly once. */
        int r = exec(db, "BEGIN IMMEDIATE", path, "cannot start migration", err);
        if (r < 0) return r;
        int version = 0;
        r = store_read_user_version(db, &version, path, err);
        if (r < 0) goto fail;
        if (version > store_schema_latest) {
            r = lorad_error_set(err, -EPROTO, "",
                                "%s: database schema version %d is newer than this lorad knows "
                                "(%d); upgrade lorad or use another state directory",
                                path, version, store_schema_latest);
            goto fail;
        }
        if (version >= target) {
            sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
            return 0;
        }
        r = exec(db, MIGRATIONS[version], path, "migration failed", err);
        if (r < 0) goto fail;
        r = exec(db, "COMMIT", path, "cannot commit migration", err);
        if (r < 0) goto fail;
        continue;
    fail:
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
        return r;
    }
}

int store_migrate_file_to(const char *path, int version, struct lorad_error *err) {
    sqlite3 *db = NULL;
    int rc = sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL);
    if (rc != SQLITE_OK) {
        int r = store_sqlite_error(db, rc, path, err);
        sqlite3_close(db);
        return r;
    }
    int r = exec(db, "PRAGMA journal_mode=WAL", path, "cannot enable WAL", err);
    if (r == 0) r = store_migrate(db, version, path, err);
    sqlite3_close(db);
    return r;
}
