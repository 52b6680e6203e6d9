/* Opening the database: migrations from every earlier version, a newer schema, files that are
 * not (or no longer) SQLite databases, read-only mode and a full disk. */
#include <errno.h>
#include <fcntl.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "store_fixture.h"
#include "store_internal.h"

static void raw_exec(const char *path, const char *sql) {
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    char *msg = NULL;
    int rc = sqlite3_exec(db, sql, NULL, NULL, &msg);
    if (rc != SQLITE_OK) fprintf(stderr, "raw_exec: %s\n", msg);
    sqlite3_free(msg);
    assert_int_equal(rc, SQLITE_OK);
    sqlite3_close(db);
}

static long long raw_int(const char *path, const char *sql) {
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    long long v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

static char *raw_text(const char *path, const char *sql) {
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    char *v = strdup((const char *)sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

#define FILE_ID "file-AAAAAAAAAAAAAAAAAAAAAAAA"
#define JOB_ID "ftjob-BBBBBBBBBBBBBBBBBBBBBBBB"
#define HASH "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

/* Rows an older lorad could have written at each version (raw SQL, as that version's binary). */
static void seed(const char *db, int version) {
    if (version >= 1) {
        raw_exec(db,
            "INSERT INTO files(id, filename, purpose, bytes, sha256, status, path, created_at)"
            " VALUES ('" FILE_ID "', 'a.jsonl', 'fine-tune', 10, '" HASH "', 'processed',"
            " 'files/a.jsonl', 100);"
            "INSERT INTO jobs(id, model, training_file, spec, status, created_at, seed, priority)"
            " VALUES ('" JOB_ID "', 'm', '" FILE_ID "', '{\"hyperparameters\":{\"n_epochs\":2}}',"
            " 'running', 101, 7, 0);"
            "INSERT INTO events(id, job_id, seq, created_at, level, type, message)"
            " VALUES ('ftevent-CCCCCCCCCCCCCCCCCCCCCCCC', '" JOB_ID "', 1, 101, 'info', 'status',"
            " 'created');");
    }
    if (version >= 2) {
        raw_exec(db,
            "INSERT INTO metrics(job_id, step, total_steps, train_loss) VALUES ('" JOB_ID "', 1, 4, 2.5);"
            "INSERT INTO checkpoints(id, job_id, step, path, created_at) VALUES"
            " ('ftckpt-DDDDDDDDDDDDDDDDDDDDDDDD', '" JOB_ID "', 1, 'ck/1', 102);");
    }
    if (version >= 3)
        raw_exec(db, "INSERT INTO api_keys(name, key_sha256, created_at) VALUES ('k', '" HASH "', 1)");
}

static void test_migrate_from_every_version(void **state) {
    (void)state;
    assert_int_equal(lorad_store_schema_version(), store_schema_latest);
    assert_true(store_schema_latest >= 3);
    for (int from = 0; from < store_schema_latest; from++) {
        char *dir = test_mkdtemp("migrate");
        char *db = test_path(dir, "lorad.db");
        assert_int_equal(store_migrate_file_to(db, from, NULL), 0);
        assert_int_equal(raw_int(db, "PRAGMA user_version"), from);
        seed(db, from);

        struct lorad_store *s = NULL;
        struct lorad_error err = {0};
        struct lorad_store_options opts = {.flags = LORAD_STORE_RECOVER};
        int r = lorad_store_open(db, &opts, &s, &err);
        if (r < 0) fprintf(stderr, "from %d: %s\n", from, err.message);
        assert_int_equal(r, 0);
        assert_int_equal(raw_int(db, "PRAGMA user_version"), store_schema_latest);
        char *mode = raw_text(db, "PRAGMA journal_mode");
        assert_string_equal(mode, "wal");
        free(mode);

        if (from >= 1) {
            /* The old rows survived and read through today's code; the running job was
             * recovered to queued. */
            json_t *job = NULL;
            assert_int_equal(lorad_store_job_get(s, JOB_ID, &job, NULL), 0);
            assert_string_equal(json_string_value(json_object_get(job, "status")), "queued");
            assert_string_equal(json_string_value(json_object_get(job, "control")), "none");
            assert_int_equal(json_integer_value(json_object_get(
                                 json_object_get(job, "hyperparameters"), "n_epochs")), 2);
            json_decref(job);
            assert_int_equal(fx_event_count(s, JOB_ID), 2);
        } else {
            char file[LORAD_STORE_ID_MAX], job[LORAD_STORE_ID_MAX];
            fx_file(s, file);
            fx_job(s, file, LORAD_JOB_QUEUED, 0, job);
        }
        /* Every table of the latest schema works after the upgrade. */
        const char *job_id = JOB_ID;
        char made[LORAD_STORE_ID_MAX];
        if (from < 1) {
            json_t *page = NULL;
            assert_int_equal(lorad_store_job_list(s, -1, NULL, 1, &page, NULL), 0);
            snprintf(made, sizeof made, "%s",
                     json_string_value(json_object_get(json_array_get(json_object_get(page, "data"), 0), "id")));
            json_decref(page);
            job_id = made;
        }
        struct lorad_metrics_writer *w = NULL;
        assert_int_equal(lorad_metrics_writer_new(s, job_id, 1, &w, NULL), 0);
        struct lorad_metrics_row row = {.step = 2, .total_steps = 4, .train_loss = 1.5};
        assert_int_equal(lorad_metrics_writer_append(w, &row, NULL), 0);
        assert_int_equal(lorad_metrics_writer_checkpoint(w, 2, "ck/2", NULL, 0, NULL, NULL), 0);
        lorad_metrics_writer_free(w);
        json_t *rows = NULL;
        assert_int_equal(lorad_store_metrics_list(s, job_id, -1, 100, &rows, NULL), 0);
        assert_int_equal(json_array_size(rows), from >= 2 ? 2 : 1);
        json_decref(rows);
        r = lorad_store_api_key_add(s, "k", HASH, NULL);
        assert_int_equal(r, from >= 3 ? -EEXIST : 0);
        assert_int_equal(lorad_store_api_key_check(s, HASH, NULL), 1);
        lorad_store_close(s);
        char *ok = raw_text(db, "PRAGMA integrity_check");
        assert_string_equal(ok, "ok");
        free(ok);
        test_rmtree(dir);
        free(db);
        free(dir);
    }
}

static void test_newer_schema_refused(void **state) {
    (void)state;
    char *dir = test_mkdtemp("newer");
    char *db = test_path(dir, "lorad.db");
    assert_int_equal(store_migrate_file_to(db, store_schema_latest, NULL), 0);
    char sql[64];
    snprintf(sql, sizeof sql, "PRAGMA user_version = %d", store_schema_latest + 1);
    raw_exec(db, sql);
    struct lorad_store *s = NULL;
    struct lorad_error err = {0};
    assert_int_equal(lorad_store_open(db, NULL, &s, &err), -EPROTO);
    assert_null(s);
    assert_non_null(strstr(err.message, db));
    assert_non_null(strstr(err.message, "newer"));
    assert_int_equal(raw_int(db, "PRAGMA user_version"), store_schema_latest + 1);
    test_rmtree(dir);
    free(db);
    free(dir);
}


static void expect_refused_unchanged(const char *db, unsigned flags, const char *needle) {
    size_t n0 = 0, n1 = 0;
    char *before = test_read_file(db, &n0);
    struct lorad_store *s = NULL;
    struct lorad_error err = {0};
    struct lorad_store_options opts = {.flags = flags};
    assert_int_equal(lorad_store_open(db, &opts, &s, &err), -EBADMSG);
    assert_null(s);
    assert_non_null(strstr(err.message, db));
    if (!strstr(err.message, needle)) fprintf(stderr, "message: %s\n", err.message);
    assert_non_null(strstr(err.message, needle));
    char *after = test_read_file(db, &n1);
    assert_int_equal(n0, n1);
    assert_memory_equal(before, after, n0);
    free(before);
    free(after);
}

static void test_not_a_database_refused(void **state) {
    (void)state;
    char *dir = test_mkdtemp("notdb");
    char *db = test_path(dir, "lorad.db");
    FILE *f = fopen(db, "wb");
    for (int i = 0; i < 200; i++) fprintf(f, "{\"messages\": [\"this is a dataset, not a database\"]}\n");
    fclose(f);
    expect_refused_unchanged(db, 0, "file is not a database");
    expect_refused_unchanged(db, LORAD_STORE_RECOVER, "file is not a database");
    test_rmtree(dir);
    free(db);
    free(dir);
}

static void test_corrupt_database_refused(void **state) {
    (void)state;
    struct fx fx;
    fx_open(&fx, 0);
    char file[LORAD_STORE_ID_MAX], job[LORAD_STORE_ID_MAX];
    fx_file(fx.store, file);
    for (int i = 0; i < 20; i++) fx_job(fx.store, file, LORAD_JOB_QUEUED, 0, job);
    lorad_store_close(fx.store); /* last connection: the WAL is folded into the file */
    fx.store = NULL;
    long long page_size = raw_int(fx.db, "PRAGMA page_size");
    long long pages = raw_int(fx.db, "PRAGMA page_count");
    assert_true(pages >= 4);
    /* Scribble over page 3 (a b-tree page, past the header and the schema). */
    int fd = open(fx.db, O_WRONLY);
    assert_true(fd >= 0);
    char junk[512];
    memset(junk, 0x5a, sizeof junk);
    assert_int_equal(pwrite(fd, junk, sizeof junk, 2 * page_size), (ssize_t)sizeof junk);
    close(fd);
    expect_refused_unchanged(fx.db, LORAD_STORE_RECOVER, "corrupt");
    fx_close(&fx);
}

static void test_read_only(void **state) {
    (void)state;
    struct fx fx;
    fx_open(&fx, 0);
    char file[LORAD_STORE_ID_MAX], unused[LORAD_STORE_ID_MAX], job[LORAD_STORE_ID_MAX];
    fx_file(fx.store, file);
    fx_file(fx.store, unused);
    fx_job(fx.store, file, LORAD_JOB_QUEUED, 0, job);
    int events = fx_event_count(fx.store, job);
    fx_reopen(&fx, LORAD_STORE_READONLY);

    /* Reads work; every write fails with -EROFS, reported with SQLite's words. */
    assert_int_equal(fx_status(fx.store, job), LORAD_JOB_QUEUED);
    struct lorad_error err = {0};
    json_t *spec = json_object();
    struct lorad_store_job_new j = {.model = "m", .training_file = file, .spec = spec,
                                    .status = LORAD_JOB_QUEUED};
    int r_ = lorad_store_job_create(fx.store, &j, NULL, &err);
    assert_int_equal(r_, -EROFS);
    assert_true(strlen(err.message) > 0);
    json_decref(spec);
    struct lorad_store_transition t = {.to = LORAD_JOB_RUNNING};
    r_ = lorad_store_job_transition(fx.store, job, &t, NULL, &err);
    assert_int_equal(r_, -EROFS);
    r_ = lorad_store_event_append(fx.store, job, "info", "message", "x", NULL, NULL, &err);
    assert_int_equal(r_, -EROFS);
    assert_int_equal(lorad_store_file_delete(fx.store, unused, NULL, &err), -EROFS);

    /* A writer whose flushes keep failing buffers 64 batches, then refuses more. */
    struct lorad_metrics_writer *w = NULL;
    assert_int_equal(lorad_metrics_writer_new(fx.store, job, 2, &w, NULL), 0);
    int step = 0;
    for (;;) {
        struct lorad_metrics_row row = {.step = ++step, .total_steps = 1000};
        r_ = lorad_metrics_writer_append(w, &row, &err);
        if (r_ == -ENOBUFS) break;
        assert_int_equal(r_, step % 2 == 0 || lorad_metrics_writer_pending(w) > 2 ? -EROFS : 0);
        assert_true(step < 1000);
    }
    assert_int_equal(lorad_metrics_writer_pending(w), 2 * 64);
    lorad_metrics_writer_free(w);

    fx_reopen(&fx, 0);
    int64_t counts[LORAD_JOB_STATUS_COUNT];
    assert_int_equal(lorad_store_job_counts(fx.store, counts, NULL), 0);
    assert_int_equal(counts[LORAD_JOB_QUEUED], 1);
    assert_int_equal(counts[LORAD_JOB_RUNNING], 0);
    assert_int_equal(fx_event_count(fx.store, job), events);
    json_t *obj = NULL;
    assert_int_equal(lorad_store_file_get(fx.store, unused, &obj, NULL), 0);
    json_decref(obj);
    fx_close(&fx);
}

static void test_disk_full(void **state) {
    (void)state;
    struct fx fx;
    fx_open(&fx, 0);
    char file[LORAD_STORE_ID_MAX], job[LORAD_STORE_ID_MAX];
    fx_file(fx.store, file);
    fx_job(fx.store, file, LORAD_JOB_QUEUED, 0, job);
    lorad_store_close(fx.store);
    fx.store = NULL;
    long long pages = raw_int(fx.db, "PRAGMA page_count");

    /* A quota of a few pages above today's size stands in for a full disk. */
    struct lorad_store_options opts = {.max_pages = pages + 4};
    assert_int_equal(lorad_store_open(fx.db, &opts, &fx.store, NULL), 0);
    char big[3000];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    int ok = 0, r = 0;
    struct lorad_error err = {0};
    for (int i = 0; i < 200; i++) {
        r = lorad_store_event_append(fx.store, job, "info", "message", big, NULL, NULL, &err);
        if (r < 0) break;
        ok++;
    }
    assert_int_equal(r, -ENOSPC);
    assert_true(ok > 0);
    assert_non_null(strstr(err.message, "full"));
    int events = fx_event_count(fx.store, job);
    assert_int_equal(events, 1 + ok); /* creation event + every committed append, nothing more */
    /* A multi-row transaction fails as a whole. */
    struct lorad_metrics_writer *w = NULL;
    assert_int_equal(lorad_metrics_writer_new(fx.store, job, 64, &w, NULL), 0);
    for (int step = 1; step <= 40; step++) {
        struct lorad_metrics_row row = {.step = step, .total_steps = 40, .train_loss = 1.0};
        assert_int_equal(lorad_metrics_writer_append(w, &row, NULL), 0);
    }
    assert_int_equal(lorad_metrics_writer_checkpoint(w, 40, "ck/40", NULL, 0, NULL, &err), -ENOSPC);
    assert_int_equal(lorad_metrics_writer_pending(w), 40); /* kept for a retry */
    json_t *rows = NULL;
    assert_int_equal(lorad_store_metrics_list(fx.store, job, -1, 100, &rows, NULL), 0);
    assert_int_equal(json_array_size(rows), 0);
    json_decref(rows);
    assert_int_equal(lorad_store_checkpoint_latest(fx.store, job, NULL, NULL, NULL, NULL), 0);
    assert_int_equal(fx_event_count(fx.store, job), events);
    assert_int_equal(fx_status(fx.store, job), LORAD_JOB_QUEUED);

    /* Room again (another connection deletes the filler events, freeing pages): the same
     * writer's retry commits the 40 rows and the checkpoint together. */
    raw_exec(fx.db, "DELETE FROM events WHERE type = 'message'");
    char ck[LORAD_STORE_ID_MAX];
    assert_int_equal(lorad_metrics_writer_checkpoint(w, 40, "ck/40", NULL, 0, ck, &err), 0);
    assert_int_equal(lorad_metrics_writer_pending(w), 0);
    assert_int_equal(lorad_store_metrics_list(fx.store, job, -1, 100, &rows, NULL), 0);
    assert_int_equal(json_array_size(rows), 40);
    json_decref(rows);
    assert_true(lorad_store_id_valid("ftckpt-", ck));
    lorad_metrics_writer_free(w);
    fx_reopen(&fx, LORAD_STORE_RECOVER);
    char *check = raw_text(fx.db, "PRAGMA integrity_check");
    assert_string_equal(check, "ok");
    free(check);
    assert_int_equal(lorad_store_event_append(fx.store, job, "info", "message", big, NULL, NULL,
                                              NULL), 0);
    fx_close(&fx);
}

static void test_bad_paths(void **state) {
    (void)state;
    struct lorad_store *s = NULL;
    struct lorad_error err = {0};
    assert_int_equal(lorad_store_open("", NULL, &s, &err), -EINVAL);
    char *dir = test_mkdtemp("badpath");
    char *db = test_path(dir, "missing/lorad.db");
    assert_true(lorad_store_open(db, NULL, &s, &err) < 0);
    assert_non_null(strstr(err.message, db));
    struct lorad_store_options ro = {.flags = LORAD_STORE_READONLY};
    char *db2 = test_path(dir, "absent.db");
    assert_true(lorad_store_open(db2, &ro, &s, &err) < 0);
    assert_int_equal(access(db2, F_OK), -1); /* read-only never creates */
    assert_null(s);
    test_rmtree(dir);
    free(db);
    free(db2);
    free(dir);
}

/* Blob paths: inside the state directory they are kept relative (so it can move), outside it
 * absolute, and the two conversions invert each other. */
static void test_blob_paths(void **state) {
    (void)state;
    assert_string_equal(lorad_store_path_relative("/var/lib/lorad", "/var/lib/lorad/files/file-x"), "files/file-x");
    assert_string_equal(lorad_store_path_relative("/var/lib/lorad/", "/var/lib/lorad//jobs/j/ckpt"), "jobs/j/ckpt");
    assert_string_equal(lorad_store_path_relative("/var/lib/lorad", "/var/lib/lorad2/files/x"), "/var/lib/lorad2/files/x");
    assert_string_equal(lorad_store_path_relative("/var/lib/lorad", "/var/lib/lorad"), "/var/lib/lorad");
    assert_string_equal(lorad_store_path_relative(NULL, "/srv/x"), "/srv/x");
    char out[64];
    assert_int_equal(lorad_store_path_absolute("/var/lib/lorad", "files/file-x", NULL, out, sizeof out), 0);
    assert_string_equal(out, "/var/lib/lorad/files/file-x");
    assert_int_equal(lorad_store_path_absolute("/var/lib/lorad", "jobs/j/ckpt", "adapter.tar", out, sizeof out), 0);
    assert_string_equal(out, "/var/lib/lorad/jobs/j/ckpt/adapter.tar");
    assert_int_equal(lorad_store_path_absolute("/var/lib/lorad", "/srv/files/x", NULL, out, sizeof out), 0);
    assert_string_equal(out, "/srv/files/x");
    assert_int_equal(lorad_store_path_absolute("/var/lib/lorad", "files/file-x", NULL, out, 16), -ENAMETOOLONG);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_migrate_from_every_version),
        cmocka_unit_test(test_newer_schema_refused),
        cmocka_unit_test(test_not_a_database_refused),
        cmocka_unit_test(test_corrupt_database_refused),
        cmocka_unit_test(test_read_only),
        cmocka_unit_test(test_disk_full),
        cmocka_unit_test(test_bad_paths),
        cmocka_unit_test(test_blob_paths),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
