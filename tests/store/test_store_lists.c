/* Keyset pagination (after, limit, has_more) for files, jobs, events and checkpoints at every
 * edge, the streaming read "events after seq", and the metrics curve with overwritten steps. */
#include <errno.h>
#include <math.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "store_fixture.h"

typedef int (*list_fn)(void *ctx, const char *after, int limit, json_t **ret_page,
                       struct lorad_error *err);

struct list_ctx {
    struct lorad_store *store;
    const char *key;  /* job id, purpose or NULL */
    int status;
};

static int list_files(void *p, const char *after, int limit, json_t **page, struct lorad_error *e) {
    struct list_ctx *c = p;
    return lorad_store_file_list(c->store, c->key, after, limit, page, e);
}
static int list_jobs(void *p, const char *after, int limit, json_t **page, struct lorad_error *e) {
    struct list_ctx *c = p;
    return lorad_store_job_list(c->store, c->status, after, limit, page, e);
}
static int list_events(void *p, const char *after, int limit, json_t **page, struct lorad_error *e) {
    struct list_ctx *c = p;
    return lorad_store_event_list(c->store, c->key, after, limit, page, e);
}
static int list_ckpts(void *p, const char *after, int limit, json_t **page, struct lorad_error *e) {
    struct list_ctx *c = p;
    return lorad_store_checkpoint_list(c->store, c->key, after, limit, page, e);
}

static const char *id_at(json_t *page, size_t i) {
    return json_string_value(json_object_get(json_array_get(json_object_get(page, "data"), i), "id"));
}

/* Walks every page with `limit` and checks it against expected (newest first). */
static void walk(list_fn fn, void *ctx, char (*expected)[LORAD_STORE_ID_MAX], int n, int limit) {
    char after[LORAD_STORE_ID_MAX] = "";
    int seen = 0;
    for (int pages = 0;; pages++) {
        assert_true(pages <= n + 1);
        json_t *page = NULL;
        assert_int_equal(fn(ctx, seen ? after : NULL, limit, &page, NULL), 0);
        assert_string_equal(json_string_value(json_object_get(page, "object")), "list");
        size_t got = json_array_size(json_object_get(page, "data"));
        int remaining = n - seen;
        assert_int_equal(got, remaining < limit ? remaining : limit);
        assert_int_equal(json_is_true(json_object_get(page, "has_more")), remaining > limit);
        for (size_t i = 0; i < got; i++) assert_string_equal(id_at(page, i), expected[seen + (int)i]);
        if (got) {
            assert_string_equal(json_string_value(json_object_get(page, "first_id")), expected[seen]);
            assert_string_equal(json_string_value(json_object_get(page, "last_id")),
                                expected[seen + (int)got - 1]);
            snprintf(after, sizeof after, "%s", expected[seen + (int)got - 1]);
        } else {
            assert_true(json_is_null(json_object_get(page, "first_id")));
        }
        seen += (int)got;
        bool more = json_is_true(json_object_get(page, "has_more"));
        json_decref(page);
        if (!more) break;
    }
    assert_int_equal(seen, n);
    /* After the last object: an empty page that says so. */
    if (n > 0) {
        json_t *page = NULL;
        assert_int_equal(fn(ctx, expected[n - 1], limit, &page, NULL), 0);
        assert_int_equal(json_array_size(json_object_get(page, "data")), 0);
        assert_false(json_is_true(json_object_get(page, "has_more")));
        json_decref(page);
    }
    struct lorad_error err = {0};
    json_t *page = NULL;
    assert_int_equal(fn(ctx, NULL, 0, &page, &err), -EINVAL);
    assert_string_equal(err.param, "limit");
    assert_int_equal(fn(ctx, NULL, 101, &page, &err), -EINVAL);
    assert_int_equal(fn(ctx, "ftxxx-AAAAAAAAAAAAAAAAAAAAAAAA", 5, &page, &err), -ENOENT);
    assert_string_equal(err.param, "after");
    assert_null(page);
}

static void walk_all_limits(list_fn fn, void *ctx, char (*expected)[LORAD_STORE_ID_MAX], int n) {
    int limits[] = {1, 2, 3, n > 1 ? n - 1 : 1, n > 0 ? n : 1, n + 1, 100};
    for (size_t i = 0; i < sizeof limits / sizeof limits[0]; i++) walk(fn, ctx, expected, n, limits[i]);
}

static void reverse(char (*ids)[LORAD_STORE_ID_MAX], int n) {
    for (int i = 0; i < n / 2; i++) {
        char tmp[LORAD_STORE_ID_MAX];
        memcpy(tmp, ids[i], sizeof tmp);
        memcpy(ids[i], ids[n - 1 - i], sizeof tmp);
        memcpy(ids[n - 1 - i], tmp, sizeof tmp);
    }
}

static void test_files_and_jobs(void **state) {
    (void)state;
    struct fx fx;
    fx_open(&fx, 0);
    enum { NF = 6, NJ = 9 };
    char files[NF][LORAD_STORE_ID_MAX], jobs[NJ][LORAD_STORE_ID_MAX];
    struct list_ctx ctx = {.store = fx.store, .status = -1};
    walk(list_files, &ctx, files, 0, 5); /* empty lists */
    walk(list_jobs, &ctx, jobs, 0, 5);
    for (int i = 0; i < NF; i++) fx_file(fx.store, files[i]);
    for (int i = 0; i < NJ; i++) fx_job(fx.store, files[0], LORAD_JOB_QUEUED, i % 2, jobs[i]);
    reverse(files, NF);
    reverse(jobs, NJ);
    walk_all_limits(list_files, &ctx, files, NF);
    ctx.key = "fine-tune";
    walk_all_limits(list_files, &ctx, files, NF);
    ctx.key = "batch";
    walk(list_files, &ctx, files, 0, 10);
    ctx.key = NULL;
    walk_all_limits(list_jobs, &ctx, jobs, NJ);

    /* Status filter: move every third job to running; each filtered list pages on its own. */
    char running[NJ][LORAD_STORE_ID_MAX], queued[NJ][LORAD_STORE_ID_MAX];
    int nr = 0, nq = 0;
    for (int i = 0; i < NJ; i++) {
        if (i % 3 == 0) {
            fx_move(fx.store, jobs[i], LORAD_JOB_RUNNING);
            memcpy(running[nr++], jobs[i], LORAD_STORE_ID_MAX);
        } else {
            memcpy(queued[nq++], jobs[i], LORAD_STORE_ID_MAX);
        }
    }
    ctx.status = LORAD_JOB_RUNNING;
    walk_all_limits(list_jobs, &ctx, running, nr);
    ctx.status = LORAD_JOB_QUEUED;
    walk_all_limits(list_jobs, &ctx, queued, nq);
    ctx.status = LORAD_JOB_FAILED;
    walk(list_jobs, &ctx, queued, 0, 3);
    struct lorad_error err = {0};
    json_t *page = NULL;
    assert_int_equal(lorad_store_job_list(fx.store, LORAD_JOB_STATUS_COUNT, NULL, 5, &page, &err),
                     -EINVAL);
    fx_close(&fx);
}

static void test_events(void **state) {
    (void)state;
    struct fx fx;
    fx_open(&fx, 0);
    char file[LORAD_STORE_ID_MAX], job[LORAD_STORE_ID_MAX], other[LORAD_STORE_ID_MAX];
    fx_file(fx.store, file);
    fx_job(fx.store, file, LORAD_JOB_QUEUED, 0, job);
    fx_job(fx.store, file, LORAD_JOB_QUEUED, 0, other);
    enum { N = 10 };
    for (int i = 2; i <= N; i++) {
        char msg[32];
        snprintf(msg, sizeof msg, "event %d", i);
        int64_t seq = 0;
        json_t *data = json_pack("{s:i}", "i", i);
        assert_int_equal(lorad_store_event_append(fx.store, job, "info", "message", msg, data,
                                                  &seq, NULL), 0);
        json_decref(data);
        assert_int_equal(seq, i); /* creation event is 1 */
    }
    assert_int_equal(lorad_store_event_append(fx.store, other, "warn", "message", "o", NULL, NULL,
                                              NULL), 0);

    /* Streaming read, 3 at a time: seq 1..N exactly once, in order. */
    char ids[N][LORAD_STORE_ID_MAX];
    int64_t after = 0;
    int got = 0;
    for (;;) {
        json_t *events = NULL;
        int64_t last = -1;
        assert_int_equal(lorad_store_event_since(fx.store, job, after, 3, &events, &last, NULL), 0);
        if (json_array_size(events) == 0) {
            assert_int_equal(last, after);
            json_decref(events);
            break;
        }
        for (size_t i = 0; i < json_array_size(events); i++) {
            json_t *ev = json_array_get(events, i);
            assert_int_equal(json_integer_value(json_object_get(ev, "seq")), got + 1);
            assert_string_equal(json_string_value(json_object_get(ev, "object")),
                                "fine_tuning.job.event");
            assert_true(lorad_store_id_valid("ftevent-", json_string_value(json_object_get(ev, "id"))));
            snprintf(ids[got++], LORAD_STORE_ID_MAX, "%s", json_string_value(json_object_get(ev, "id")));
        }
        assert_int_equal(last, got);
        after = last;
        json_decref(events);
    }
    assert_int_equal(got, N);
    reverse(ids, N);
    struct list_ctx ctx = {.store = fx.store, .key = job};
    walk_all_limits(list_events, &ctx, ids, N);

    /* Another job's event id is not a cursor for this job. */
    json_t *page = NULL, *events = NULL;
    assert_int_equal(lorad_store_event_list(fx.store, other, NULL, 1, &page, NULL), 0);
    struct lorad_error err = {0};
    json_t *bad = NULL;
    assert_int_equal(lorad_store_event_list(fx.store, job, id_at(page, 0), 5, &bad, &err), -ENOENT);
    json_decref(page);
    int64_t last = 0;
    assert_int_equal(lorad_store_event_since(fx.store, "ftjob-AAAAAAAAAAAAAAAAAAAAAAAA", 0, 5,
                                             &events, &last, &err), -ENOENT);
    assert_int_equal(lorad_store_event_append(fx.store, job, "debug", "message", "x", NULL, NULL,
                                              &err), -EINVAL);
    assert_int_equal(lorad_store_event_append(fx.store, job, "info", "progress", "x", NULL, NULL,
                                              &err), -EINVAL);
    fx_close(&fx);
}

static void test_checkpoints_and_metrics(void **state) {
    (void)state;
    struct fx fx;
    fx_open(&fx, 0);
    char file[LORAD_STORE_ID_MAX], job[LORAD_STORE_ID_MAX];
    fx_file(fx.store, file);
    fx_job(fx.store, file, LORAD_JOB_QUEUED, 0, job);
    fx_move(fx.store, job, LORAD_JOB_RUNNING);
    struct lorad_metrics_writer *w = NULL;
    assert_int_equal(lorad_metrics_writer_new(fx.store, job, 4, &w, NULL), 0);
    enum { STEPS = 35, EVERY = 5, NC = STEPS / EVERY };
    char ckpts[NC][LORAD_STORE_ID_MAX];
    for (int step = 1; step <= STEPS; step++) {
        struct lorad_metrics_row row = {
            .step = step, .total_steps = STEPS, .epoch = step / 10.0, .train_loss = 3.0 - step * 0.01,
            .train_mean_token_accuracy = 0.5, .lr = 1e-3, .grad_norm = 1.25, .tokens_seen = step * 100,
            .tokens_per_s = 50, .elapsed_s = step, .eta_s = STEPS - step,
            .valid_loss = step % EVERY == 0 ? 2.0 : NAN, .valid_mean_token_accuracy = NAN};
        assert_int_equal(lorad_metrics_writer_append(w, &row, NULL), 0);
        assert_true(lorad_metrics_writer_pending(w) < 4);
        if (step % EVERY == 0) {
            char path[32];
            snprintf(path, sizeof path, "ckpt/step-%d", step);
            assert_int_equal(lorad_metrics_writer_checkpoint(w, step, path, NULL, 0,
                                                             ckpts[step / EVERY - 1], NULL), 0);
            assert_int_equal(lorad_metrics_writer_pending(w), 0);
        }
    }
    reverse(ckpts, NC);
    struct list_ctx ctx = {.store = fx.store, .key = job};
    walk_all_limits(list_ckpts, &ctx, ckpts, NC);
    json_t *page = NULL;
    assert_int_equal(lorad_store_checkpoint_list(fx.store, job, NULL, 1, &page, NULL), 0);
    json_t *ck = json_array_get(json_object_get(page, "data"), 0);
    assert_string_equal(json_string_value(json_object_get(ck, "object")), "fine_tuning.job.checkpoint");
    assert_int_equal(json_integer_value(json_object_get(ck, "step_number")), 35);
    assert_string_equal(json_string_value(json_object_get(ck, "fine_tuning_job_id")), job);
    json_t *m = json_object_get(ck, "metrics");
    assert_float_equal(json_real_value(json_object_get(m, "train_loss")), 3.0 - 0.35, 1e-12);
    assert_float_equal(json_real_value(json_object_get(m, "valid_loss")), 2.0, 0);
    assert_true(json_is_null(json_object_get(m, "full_valid_loss")));
    assert_non_null(strstr(json_string_value(json_object_get(ck, "fine_tuned_model_checkpoint")),
                           "ckpt-step-35"));
    json_decref(page);

    /* One checkpoint by id: its step and recorded path, only under its own job. */
    int64_t ck_step = 0;
    char *path = NULL;
    assert_int_equal(lorad_store_checkpoint_get(fx.store, job, ckpts[NC - 1], &ck_step, &path, NULL), 0);
    assert_int_equal(ck_step, EVERY);
    assert_string_equal(path, "ckpt/step-5");
    free(path);
    path = NULL;
    assert_int_equal(lorad_store_checkpoint_get(fx.store, job, ckpts[0], &ck_step, NULL, NULL), 0);
    assert_int_equal(ck_step, STEPS);
    char other[LORAD_STORE_ID_MAX];
    fx_job(fx.store, file, LORAD_JOB_QUEUED, 0, other);
    struct lorad_error gerr = {0};
    ck_step = -1;
    assert_int_equal(lorad_store_checkpoint_get(fx.store, other, ckpts[0], &ck_step, &path, &gerr), -ENOENT);
    assert_string_equal(gerr.param, "checkpoint_id");
    assert_int_equal(ck_step, -1);
    assert_null(path);
    assert_int_equal(lorad_store_checkpoint_get(fx.store, job, "ftckpt-AAAAAAAAAAAAAAAAAAAAAAAA", &ck_step, &path,
                                                &gerr), -ENOENT);
    assert_string_equal(gerr.param, "checkpoint_id");
    assert_int_equal(lorad_store_checkpoint_get(fx.store, "ftjob-AAAAAAAAAAAAAAAAAAAAAAAA", ckpts[0], &ck_step,
                                                &path, &gerr), -ENOENT);
    assert_string_equal(gerr.param, "fine_tuning_job_id");

    /* Progress followed the newest row. */
    json_t *obj = NULL;
    assert_int_equal(lorad_store_job_get(fx.store, job, &obj, NULL), 0);
    json_t *progress = json_object_get(obj, "progress");
    assert_int_equal(json_integer_value(json_object_get(progress, "step")), 35);
    assert_int_equal(json_integer_value(json_object_get(obj, "trained_tokens")), 3500);
    json_decref(obj);
    /* A running job with an ETA is estimated to finish that many seconds from now (rounded up). */
    struct lorad_store_progress pr = {.step = 35, .total_steps = 40, .epoch = NAN, .tokens_per_s = NAN,
                                      .eta_s = 99.2, .trained_tokens = -1};
    assert_int_equal(lorad_store_job_set_progress(fx.store, job, &pr, NULL), 0);
    int64_t before = (int64_t)time(NULL);
    assert_int_equal(lorad_store_job_get(fx.store, job, &obj, NULL), 0);
    int64_t after = (int64_t)time(NULL);
    json_int_t finish = json_integer_value(json_object_get(obj, "estimated_finish"));
    assert_true(finish >= before + 100 && finish <= after + 100);
    assert_float_equal(json_real_value(json_object_get(json_object_get(obj, "progress"), "eta_s")), 99.2, 1e-9);
    json_decref(obj);

    /* A resumed run repeats steps 31..37: they overwrite; nothing is duplicated. */
    for (int step = 31; step <= 37; step++) {
        struct lorad_metrics_row row = {.step = step, .total_steps = 40, .train_loss = 9.0,
                                        .epoch = NAN, .train_mean_token_accuracy = NAN, .lr = NAN,
                                        .grad_norm = NAN, .tokens_per_s = NAN, .elapsed_s = NAN,
                                        .eta_s = NAN, .valid_loss = NAN,
                                        .valid_mean_token_accuracy = NAN};
        assert_int_equal(lorad_metrics_writer_append(w, &row, NULL), 0);
    }
    assert_int_equal(lorad_metrics_writer_flush(w, NULL), 0);
    lorad_metrics_writer_free(w);
    json_t *rows = NULL;
    assert_int_equal(lorad_store_metrics_list(fx.store, job, 0, 1000, &rows, NULL), 0);
    assert_int_equal(json_array_size(rows), 37);
    for (size_t i = 0; i < 37; i++) {
        json_t *row = json_array_get(rows, i);
        int step = (int)i + 1;
        assert_int_equal(json_integer_value(json_object_get(row, "step")), step);
        double loss = json_real_value(json_object_get(row, "train_loss"));
        if (step >= 31) assert_float_equal(loss, 9.0, 0);
        else assert_float_equal(loss, 3.0 - step * 0.01, 1e-12);
        assert_true(json_is_null(json_object_get(row, "valid_mean_token_accuracy")));
        if (step < 31)
            assert_int_equal(json_is_null(json_object_get(row, "valid_loss")), step % EVERY != 0);
    }
    json_decref(rows);
    assert_int_equal(lorad_store_metrics_list(fx.store, job, 30, 3, &rows, NULL), 0);
    assert_int_equal(json_array_size(rows), 3);
    assert_int_equal(json_integer_value(json_object_get(json_array_get(rows, 0), "step")), 31);
    json_decref(rows);
    fx_close(&fx);
}

/* Asserts the job's checkpoint list is exactly `steps` (newest first). */
static void expect_ckpt_steps(struct lorad_store *s, const char *job, const int64_t *steps, int n) {
    json_t *page = NULL;
    assert_int_equal(lorad_store_checkpoint_list(s, job, NULL, 100, &page, NULL), 0);
    json_t *data = json_object_get(page, "data");
    assert_int_equal(json_array_size(data), n);
    for (int i = 0; i < n; i++)
        assert_int_equal(json_integer_value(json_object_get(json_array_get(data, i), "step_number")), steps[i]);
    json_decref(page);
}

static int64_t last_metrics_step(struct lorad_store *s, const char *job) {
    json_t *rows = NULL;
    assert_int_equal(lorad_store_metrics_list(s, job, 0, 1000, &rows, NULL), 0);
    size_t n = json_array_size(rows);
    int64_t step = n ? json_integer_value(json_object_get(json_array_get(rows, n - 1), "step")) : 0;
    json_decref(rows);
    return step;
}

static void raw_exec(const char *db, const char *sql) {
    sqlite3 *raw = NULL;
    assert_int_equal(sqlite3_open_v2(db, &raw, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_exec(raw, sql, NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(raw);
}

/* keep > 0: the checkpoint's own transaction forgets the job's older rows (the engine's
 * keep_checkpoints), other jobs untouched; a refused argument or a failure inside the transaction
 * leaves rows, metrics, events and the buffer exactly as they were. */
static void test_checkpoint_keep(void **state) {
    (void)state;
    struct fx fx;
    fx_open(&fx, 0);
    char file[LORAD_STORE_ID_MAX], job[LORAD_STORE_ID_MAX], other[LORAD_STORE_ID_MAX];
    fx_file(fx.store, file);
    fx_job(fx.store, file, LORAD_JOB_QUEUED, 0, job);
    fx_job(fx.store, file, LORAD_JOB_QUEUED, 0, other);

    /* The other job keeps all (keep 0) of its three. */
    struct lorad_metrics_writer *wo = NULL;
    assert_int_equal(lorad_metrics_writer_new(fx.store, other, 100, &wo, NULL), 0);
    for (int step = 1; step <= 3; step++) {
        char path[32];
        snprintf(path, sizeof path, "other/step-%d", step);
        assert_int_equal(lorad_metrics_writer_checkpoint(wo, step, path, NULL, 0, NULL, NULL), 0);
    }
    const int64_t other_steps[] = {3, 2, 1};
    expect_ckpt_steps(fx.store, other, other_steps, 3);

    struct lorad_metrics_writer *w = NULL;
    assert_int_equal(lorad_metrics_writer_new(fx.store, job, 100, &w, NULL), 0);
    char ids[13][LORAD_STORE_ID_MAX];
    for (int step = 1; step <= 12; step++) {
        struct lorad_metrics_row row = {.step = step, .total_steps = 100, .train_loss = 1.0 / step,
                                        .tokens_seen = step * 10};
        assert_int_equal(lorad_metrics_writer_append(w, &row, NULL), 0);
        if (step % 3) continue;
        char path[32];
        snprintf(path, sizeof path, "ck/step-%d", step);
        assert_int_equal(lorad_metrics_writer_checkpoint(w, step, path, NULL, 2, ids[step], NULL), 0);
        int64_t want[2] = {step, step - 3};
        expect_ckpt_steps(fx.store, job, want, step == 3 ? 1 : 2);
    }
    assert_int_equal(lorad_store_checkpoint_get(fx.store, job, ids[6], NULL, NULL, NULL), -ENOENT);
    assert_int_equal(lorad_store_checkpoint_get(fx.store, job, ids[9], NULL, NULL, NULL), 0);
    expect_ckpt_steps(fx.store, other, other_steps, 3);
    const int64_t kept[] = {12, 9};
    int events = fx_event_count(fx.store, job);

    /* A refused argument writes nothing; the buffered row stays buffered. */
    struct lorad_metrics_row r13 = {.step = 13, .total_steps = 100, .train_loss = 0.5};
    assert_int_equal(lorad_metrics_writer_append(w, &r13, NULL), 0);
    struct lorad_error err = {0};
    char id[LORAD_STORE_ID_MAX] = "untouched";
    assert_int_equal(lorad_metrics_writer_checkpoint(w, 13, "ck/step-13", NULL, -1, id, &err), -EINVAL);
    assert_string_equal(err.param, "keep");
    assert_string_equal(id, "untouched");
    assert_int_equal(lorad_metrics_writer_pending(w), 1);
    expect_ckpt_steps(fx.store, job, kept, 2);
    assert_int_equal(last_metrics_step(fx.store, job), 12);
    assert_int_equal(fx_event_count(fx.store, job), events);

    /* A failure inside the transaction, after the insert (the prune is refused by a trigger):
     * everything rolls back, the new row included. */
    raw_exec(fx.db, "CREATE TRIGGER test_no_prune BEFORE DELETE ON checkpoints"
                    " BEGIN SELECT RAISE(ABORT, 'injected prune failure'); END;");
    struct lorad_metrics_row r14 = {.step = 14, .total_steps = 100, .train_loss = 0.4};
    assert_int_equal(lorad_metrics_writer_append(w, &r14, NULL), 0);
    assert_true(lorad_metrics_writer_checkpoint(w, 14, "ck/step-14", NULL, 2, id, &err) < 0);
    assert_non_null(strstr(err.message, "prune"));
    assert_string_equal(id, "untouched");
    assert_int_equal(lorad_metrics_writer_pending(w), 2);
    expect_ckpt_steps(fx.store, job, kept, 2);
    assert_int_equal(last_metrics_step(fx.store, job), 12);
    assert_int_equal(fx_event_count(fx.store, job), events);
    /* keep 0 does not prune, so it is unaffected by the trigger. */
    assert_int_equal(lorad_metrics_writer_checkpoint(wo, 4, "other/step-4", NULL, 0, NULL, NULL), 0);
    const int64_t other4[] = {4, 3, 2, 1};
    expect_ckpt_steps(fx.store, other, other4, 4);

    /* The retry, once the fault is gone, commits all of it. */
    raw_exec(fx.db, "DROP TRIGGER test_no_prune;");
    assert_int_equal(lorad_metrics_writer_checkpoint(w, 14, "ck/step-14", NULL, 2, id, NULL), 0);
    assert_int_equal(lorad_metrics_writer_pending(w), 0);
    const int64_t after[] = {14, 12};
    expect_ckpt_steps(fx.store, job, after, 2);
    assert_int_equal(last_metrics_step(fx.store, job), 14);
    assert_int_equal(fx_event_count(fx.store, job), events + 3); /* metrics 13, 14; checkpoint */
    expect_ckpt_steps(fx.store, other, other4, 4);
    lorad_metrics_writer_free(w);
    lorad_metrics_writer_free(wo);
    fx_close(&fx);
}

static void expect_corrupt(int r, const struct lorad_error *err, const char *id, const char *column) {
    if (r != -EBADMSG) fprintf(stderr, "expected -EBADMSG, got %d: %s\n", r, err->message);
    assert_int_equal(r, -EBADMSG);
    if (!strstr(err->message, id) || !strstr(err->message, column))
        fprintf(stderr, "message does not name %s and %s: %s\n", id, column, err->message);
    assert_non_null(strstr(err->message, id));
    assert_non_null(strstr(err->message, column));
}

static void raw_update(const char *db, const char *fmt, const char *id) {
    char sql[512];
    snprintf(sql, sizeof sql, fmt, id);
    raw_exec(db, sql);
}

static size_t page_size(json_t *page) { return json_array_size(json_object_get(page, "data")); }

/* A row the store cannot turn into its object (a JSON column that does not parse, text that is
 * not UTF-8, an infinite number, written behind the store's back) fails every read that meets it
 * with -EBADMSG naming the row and the column: never a page one row short, never a null served
 * in the stored value's place. Once repaired, the same reads return every row. */
static void test_corrupt_rows(void **state) {
    (void)state;
    struct fx fx;
    fx_open(&fx, 0);
    struct lorad_store *s = fx.store;
    char files[3][LORAD_STORE_ID_MAX], jobs[3][LORAD_STORE_ID_MAX];
    for (int i = 0; i < 3; i++) fx_file(s, files[i]);
    for (int i = 0; i < 3; i++) fx_job(s, files[0], LORAD_JOB_QUEUED, 0, jobs[i]);
    json_t *data = json_pack("{s:i}", "n", 1);
    assert_int_equal(lorad_store_event_append(s, jobs[1], "info", "message", "hi", data, NULL, NULL), 0);
    json_decref(data);
    struct lorad_metrics_writer *w = NULL;
    assert_int_equal(lorad_metrics_writer_new(s, jobs[1], 10, &w, NULL), 0);
    struct lorad_metrics_row row = {.step = 1, .total_steps = 2, .train_loss = 1.5};
    assert_int_equal(lorad_metrics_writer_append(w, &row, NULL), 0);
    char ckpt[LORAD_STORE_ID_MAX];
    assert_int_equal(lorad_metrics_writer_checkpoint(w, 1, "ck/step-1", NULL, 0, ckpt, NULL), 0);
    lorad_metrics_writer_free(w);
    struct lorad_error err = {0};
    json_t *page = NULL, *obj = NULL;

    /* files.validation */
    raw_update(fx.db, "UPDATE files SET validation = '{\"ok\": tru' WHERE id = '%s'", files[1]);
    expect_corrupt(lorad_store_file_list(s, NULL, NULL, 100, &page, &err), &err, files[1], "validation");
    assert_null(page);
    expect_corrupt(lorad_store_file_get(s, files[1], &obj, &err), &err, files[1], "validation");
    assert_null(obj);
    assert_int_equal(lorad_store_file_get(s, files[0], &obj, NULL), 0);
    json_decref(obj);
    raw_update(fx.db, "UPDATE files SET validation = NULL WHERE id = '%s'", files[1]);
    assert_int_equal(lorad_store_file_list(s, NULL, NULL, 100, &page, NULL), 0);
    assert_int_equal(page_size(page), 3);
    json_decref(page);

    /* jobs: a text column that is not UTF-8, then a spec that is not JSON */
    raw_update(fx.db, "UPDATE jobs SET suffix = CAST(x'c328' AS TEXT) WHERE id = '%s'", jobs[1]);
    page = NULL;
    expect_corrupt(lorad_store_job_list(s, -1, NULL, 100, &page, &err), &err, jobs[1], "suffix");
    expect_corrupt(lorad_store_job_list(s, LORAD_JOB_QUEUED, NULL, 100, &page, &err), &err, jobs[1],
                   "suffix");
    assert_null(page);
    obj = NULL;
    expect_corrupt(lorad_store_job_get(s, jobs[1], &obj, &err), &err, jobs[1], "suffix");
    assert_null(obj);
    raw_update(fx.db, "UPDATE jobs SET suffix = NULL, spec = 'not json' WHERE id = '%s'", jobs[1]);
    expect_corrupt(lorad_store_job_list(s, -1, NULL, 100, &page, &err), &err, jobs[1], "spec");
    raw_update(fx.db, "UPDATE jobs SET spec = '{}' WHERE id = '%s'", jobs[1]);
    assert_int_equal(lorad_store_job_list(s, -1, NULL, 100, &page, NULL), 0);
    assert_int_equal(page_size(page), 3);
    json_decref(page);

    /* events.data: the page and the stream */
    assert_int_equal(lorad_store_event_list(s, jobs[1], NULL, 1, &page, NULL), 0);
    char event[LORAD_STORE_ID_MAX];
    snprintf(event, sizeof event, "%s", json_string_value(json_object_get(page, "first_id")));
    json_decref(page);
    raw_update(fx.db, "UPDATE events SET data = '[1,' WHERE id = '%s'", event);
    page = NULL;
    expect_corrupt(lorad_store_event_list(s, jobs[1], NULL, 100, &page, &err), &err, event, "data");
    assert_null(page);
    json_t *events = NULL;
    int64_t last = -1;
    expect_corrupt(lorad_store_event_since(s, jobs[1], 0, 100, &events, &last, &err), &err, event, "data");
    assert_null(events);
    assert_int_equal(last, -1);

    /* checkpoints.metrics, metrics.train_loss */
    raw_update(fx.db, "UPDATE checkpoints SET metrics = '{' WHERE id = '%s'", ckpt);
    expect_corrupt(lorad_store_checkpoint_list(s, jobs[1], NULL, 100, &page, &err), &err, ckpt, "metrics");
    assert_null(page);
    raw_update(fx.db, "UPDATE metrics SET train_loss = 1e999 WHERE job_id = '%s'", jobs[1]);
    json_t *rows = NULL;
    expect_corrupt(lorad_store_metrics_list(s, jobs[1], 0, 100, &rows, &err), &err, "step", "train_loss");
    assert_null(rows);
    fx_close(&fx);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_files_and_jobs),
        cmocka_unit_test(test_events),
        cmocka_unit_test(test_checkpoints_and_metrics),
        cmocka_unit_test(test_checkpoint_keep),
        cmocka_unit_test(test_corrupt_rows),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
