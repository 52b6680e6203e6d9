/* Crash test: a child process trains a fake job (metrics every step, a checkpoint every 5) and
 * is killed with SIGKILL at a random moment, 20 times. After each kill the database opens cleanly
 * (integrity_check ok), recovery puts the job back in the queue, the metrics up to the last
 * committed checkpoint are all there, and that checkpoint's directory exists on disk: the child
 * makes the directory durable BEFORE it commits the row, as a worker must. The child records with
 * keep = KEEP, and after every kill at most the KEEP newest rows remain. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "fsutil.h"
#include "store_fixture.h"

enum { KILLS = 20, CKPT_EVERY = 5, KEEP = 2 };

/* Writes <dir>/step-N durably: a temporary directory with its file, both fsynced, renamed into
 * place, and the parent fsynced. A directory left by a run killed before its commit is replaced. */
static int write_checkpoint_dir(const char *ckpt_root, long step, char *out, size_t out_len) {
    char tmp[512], old[512], file[600];
    snprintf(tmp, sizeof tmp, "%s/step-%ld.tmp", ckpt_root, step);
    snprintf(old, sizeof old, "%s/step-%ld.old", ckpt_root, step);
    snprintf(out, out_len, "%s/step-%ld", ckpt_root, step);
    snprintf(file, sizeof file, "%s/adapter.bin", tmp);
    int r = lorad_remove_tree(tmp);
    if (r == 0 && mkdir(tmp, 0755) < 0) r = -errno;
    char body[64];
    int n = snprintf(body, sizeof body, "step %ld\n", step);
    if (r == 0) r = lorad_atomic_write_file(file, body, (size_t)n);
    if (r == 0) r = lorad_dir_swap_in(tmp, out, old);
    return r;
}

/* The child: claim, resume after the latest checkpoint, and train until killed. */
static void child(const char *db, const char *ckpt_root) {
    struct lorad_store *s = NULL;
    if (lorad_store_open(db, NULL, &s, NULL) < 0) _exit(2);
    json_t *job = NULL;
    if (lorad_store_job_claim_next(s, -1, &job, NULL, NULL) != 1) _exit(3);
    char id[LORAD_STORE_ID_MAX];
    snprintf(id, sizeof id, "%s", json_string_value(json_object_get(job, "id")));
    json_decref(job);
    int64_t step = 0;
    if (lorad_store_checkpoint_latest(s, id, NULL, &step, NULL, NULL) < 0) _exit(4);
    struct lorad_metrics_writer *w = NULL;
    if (lorad_metrics_writer_new(s, id, 3, &w, NULL) < 0) _exit(5);
    for (;;) {
        step++;
        struct lorad_metrics_row row = {.step = step, .total_steps = 1000000,
                                        .train_loss = 10.0 / (double)step, .tokens_seen = step * 64};
        if (lorad_metrics_writer_append(w, &row, NULL) < 0) _exit(6);
        if (step % CKPT_EVERY == 0) {
            char path[512];
            if (write_checkpoint_dir(ckpt_root, step, path, sizeof path) < 0) _exit(7);
            if (lorad_metrics_writer_checkpoint(w, step, path, NULL, KEEP, NULL, NULL) < 0) _exit(8);
        }
    }
}

static void check_integrity(const char *db) {
    sqlite3 *raw = NULL;
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_open_v2(db, &raw, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(raw, "PRAGMA integrity_check", -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_string_equal((const char *)sqlite3_column_text(st, 0), "ok");
    sqlite3_finalize(st);
    sqlite3_close(raw);
}

static void test_sigkill_loop(void **state) {
    (void)state;
    char *dir = test_mkdtemp("crash");
    char *db = test_path(dir, "lorad.db");
    char *ckpt_root = test_path(dir, "ckpt");
    assert_int_equal(mkdir(ckpt_root, 0755), 0);
    struct lorad_store *s = NULL;
    struct lorad_store_options opts = {.flags = LORAD_STORE_RECOVER};
    assert_int_equal(lorad_store_open(db, &opts, &s, NULL), 0);
    char file[LORAD_STORE_ID_MAX], job[LORAD_STORE_ID_MAX];
    fx_file(s, file);
    fx_job(s, file, LORAD_JOB_QUEUED, 0, job);
    lorad_store_close(s);

    srand((unsigned)time(NULL) ^ (unsigned)getpid());
    int64_t prev_step = 0;
    int restarted = 0;
    for (int round = 0; round < KILLS; round++) {
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) child(db, ckpt_root);
        struct timespec ts = {0, (20 + rand() % 280) * 1000L * 1000L};
        nanosleep(&ts, NULL);
        int status = 0;
        assert_int_equal(waitpid(pid, &status, WNOHANG), 0); /* still training, not failed */
        assert_int_equal(kill(pid, SIGKILL), 0);
        assert_int_equal(waitpid(pid, &status, 0), pid);
        assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);

        check_integrity(db);
        struct lorad_error err = {0};
        int r = lorad_store_open(db, &opts, &s, &err);
        if (r < 0) fprintf(stderr, "round %d: %s\n", round, err.message);
        assert_int_equal(r, 0);
        assert_int_equal(fx_status(s, job), LORAD_JOB_QUEUED);
        json_t *page = NULL;
        assert_int_equal(lorad_store_event_list(s, job, NULL, 1, &page, NULL), 0);
        json_t *ev = json_array_get(json_object_get(page, "data"), 0);
        const char *code = json_string_value(json_object_get(json_object_get(ev, "data"), "code"));
        if (code && !strcmp(code, "job_restarted")) restarted++;
        json_decref(page);

        int64_t step = 0;
        char *path = NULL;
        r = lorad_store_checkpoint_latest(s, job, NULL, &step, &path, NULL);
        assert_true(r >= 0);
        if (r == 1) {
            assert_true(step >= prev_step);
            assert_int_equal(step % CKPT_EVERY, 0);
            char expect_path[512], adapter[600], body[64] = "", want[64];
            snprintf(expect_path, sizeof expect_path, "%s/step-%lld", ckpt_root, (long long)step);
            assert_string_equal(path, expect_path);
            struct stat sb;
            assert_int_equal(stat(path, &sb), 0);
            assert_true(S_ISDIR(sb.st_mode));
            snprintf(adapter, sizeof adapter, "%s/adapter.bin", path);
            FILE *f = fopen(adapter, "r");
            assert_non_null(f);
            assert_non_null(fgets(body, sizeof body, f));
            fclose(f);
            snprintf(want, sizeof want, "step %lld\n", (long long)step);
            assert_string_equal(body, want);
            /* Every metrics row up to the checkpoint committed with it. */
            json_t *rows = NULL;
            assert_int_equal(lorad_store_metrics_list(s, job, 0, 100000, &rows, NULL), 0);
            assert_true((int64_t)json_array_size(rows) >= step);
            for (int64_t i = 0; i < step; i++)
                assert_int_equal(json_integer_value(json_object_get(json_array_get(rows, (size_t)i),
                                                                    "step")), i + 1);
            json_decref(rows);
            free(path);
            prev_step = step;
        }
        /* The rows beyond KEEP are forgotten in the checkpoint's own transaction: no kill leaves
         * more, and the ones left are the newest, ending at the latest. */
        json_t *list = NULL;
        assert_int_equal(lorad_store_checkpoint_list(s, job, NULL, 100, &list, NULL), 0);
        json_t *data = json_object_get(list, "data");
        assert_true(json_array_size(data) <= KEEP);
        assert_int_equal(json_array_size(data), r == 1 ? (size_t)(step / CKPT_EVERY < KEEP ? step / CKPT_EVERY : KEEP) : 0);
        for (size_t i = 0; i < json_array_size(data); i++)
            assert_int_equal(json_integer_value(json_object_get(json_array_get(data, i), "step_number")),
                             step - (int64_t)i * CKPT_EVERY);
        json_decref(list);
        lorad_store_close(s);
    }
    fprintf(stderr, "crash: %d kills, %d recoveries logged, last checkpoint step %lld\n", KILLS,
            restarted, (long long)prev_step);
    assert_true(restarted > 0);
    assert_true(prev_step > 0);
    test_rmtree(dir);
    free(ckpt_root);
    free(db);
    free(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_sigkill_loop)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
