/* A value SQLite refuses to bind (here: longer than the connection's SQLITE_LIMIT_LENGTH, set
 * through the store's private header on its one pooled connection) fails the call with the
 * bind's error naming the parameter, and nothing is written: no row stored with a NULL in its
 * place, nothing already stored overwritten. One case per store source that binds client data. */
#include <errno.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store_fixture.h"
#include "store_internal.h"

#define LIMIT 2048

/* Sets SQLITE_LIMIT_LENGTH on the store's connection; returns the old limit. The tests are
 * single-threaded, so the pool never opens a second connection and every call borrows this one. */
static int set_length_limit(struct lorad_store *s, int limit) {
    assert_int_equal(s->n_open, 1);
    struct store_conn *c = NULL;
    assert_int_equal(store_acquire(s, &c, NULL), 0);
    int old = sqlite3_limit(c->db, SQLITE_LIMIT_LENGTH, limit);
    store_release(s, c);
    assert_int_equal(s->n_open, 1);
    return old;
}

/* {"blob": "xxx…"} serialising to more than LIMIT bytes, under every store size check. */
static json_t *oversized(void) {
    char text[LIMIT + 100];
    memset(text, 'x', sizeof text - 1);
    text[sizeof text - 1] = '\0';
    return json_pack("{s:s}", "blob", text);
}

static void expect_bind_failure(int r, const struct lorad_error *err, int param) {
    if (r != -E2BIG) fprintf(stderr, "expected -E2BIG, got %d: %s\n", r, err->message);
    assert_int_equal(r, -E2BIG);
    char want[64];
    snprintf(want, sizeof want, "cannot bind parameter %d", param);
    if (!strstr(err->message, want)) fprintf(stderr, "message: %s\n", err->message);
    assert_non_null(strstr(err->message, want));
}

static void test_file_validation(void **state) {
    (void)state;
    struct fx fx;
    fx_open(&fx, 0);
    char file[LORAD_STORE_ID_MAX];
    fx_file(fx.store, file);
    json_t *ok = json_pack("{s:b}", "ok", 1);
    assert_int_equal(lorad_store_file_set_status(fx.store, file, "processed", "chat", 3, ok, NULL), 0);

    int old = set_length_limit(fx.store, LIMIT);
    json_t *big = oversized();
    struct lorad_error err = {0};
    int r = lorad_store_file_set_status(fx.store, file, "error", "tokens", 9, big, &err);
    expect_bind_failure(r, &err, 5);
    set_length_limit(fx.store, old);

    /* The stored report is still the old one, not a NULL written in its place. */
    json_t *f = NULL;
    assert_int_equal(lorad_store_file_get(fx.store, file, &f, NULL), 0);
    assert_true(json_equal(json_object_get(f, "validation"), ok));
    assert_string_equal(json_string_value(json_object_get(f, "status")), "processed");
    assert_string_equal(json_string_value(json_object_get(f, "format")), "chat");
    json_decref(f);
    json_decref(big);
    json_decref(ok);
    fx_close(&fx);
}

static void test_job_create_and_transition(void **state) {
    (void)state;
    struct fx fx;
    fx_open(&fx, 0);
    char file[LORAD_STORE_ID_MAX], job[LORAD_STORE_ID_MAX];
    fx_file(fx.store, file);
    fx_job(fx.store, file, LORAD_JOB_QUEUED, 0, job);
    fx_move(fx.store, job, LORAD_JOB_RUNNING);
    int events = fx_event_count(fx.store, job);

    int old = set_length_limit(fx.store, LIMIT);
    json_t *spec = oversized();
    struct lorad_store_job_new j = {.model = "m", .training_file = file, .spec = spec, .seed = 1,
                                    .status = LORAD_JOB_QUEUED};
    struct lorad_error err = {0};
    json_t *created = NULL;
    expect_bind_failure(lorad_store_job_create(fx.store, &j, &created, &err), &err, 5);
    assert_null(created);

    /* error_message within the store's own 4096-byte limit, over SQLite's. */
    char message[LIMIT + 100];
    memset(message, 'e', sizeof message - 1);
    message[sizeof message - 1] = '\0';
    struct lorad_store_transition t = {.to = LORAD_JOB_FAILED, .error_code = "boom",
                                       .error_message = message};
    expect_bind_failure(lorad_store_job_transition(fx.store, job, &t, NULL, &err), &err, 7);
    set_length_limit(fx.store, old);

    int64_t counts[LORAD_JOB_STATUS_COUNT];
    assert_int_equal(lorad_store_job_counts(fx.store, counts, NULL), 0);
    assert_int_equal(counts[LORAD_JOB_QUEUED], 0);
    assert_int_equal(counts[LORAD_JOB_RUNNING], 1);
    assert_int_equal(counts[LORAD_JOB_FAILED], 0);
    assert_int_equal(fx_status(fx.store, job), LORAD_JOB_RUNNING);
    assert_int_equal(fx_event_count(fx.store, job), events);
    json_decref(spec);
    fx_close(&fx);
}

static void test_event_and_checkpoint(void **state) {
    (void)state;
    struct fx fx;
    fx_open(&fx, 0);
    char file[LORAD_STORE_ID_MAX], job[LORAD_STORE_ID_MAX];
    fx_file(fx.store, file);
    fx_job(fx.store, file, LORAD_JOB_QUEUED, 0, job);
    fx_move(fx.store, job, LORAD_JOB_RUNNING);
    struct lorad_metrics_writer *w = NULL;
    assert_int_equal(lorad_metrics_writer_new(fx.store, job, 100, &w, NULL), 0);
    struct lorad_metrics_row row = {.step = 1, .total_steps = 10, .train_loss = 2.0};
    assert_int_equal(lorad_metrics_writer_append(w, &row, NULL), 0);
    int events = fx_event_count(fx.store, job);

    int old = set_length_limit(fx.store, LIMIT);
    json_t *big = oversized();
    struct lorad_error err = {0};
    int64_t seq = -1;
    expect_bind_failure(lorad_store_event_append(fx.store, job, "info", "message", "hi", big, &seq, &err),
                        &err, 7);
    assert_int_equal(seq, -1);
    char id[LORAD_STORE_ID_MAX] = "untouched";
    expect_bind_failure(lorad_metrics_writer_checkpoint(w, 1, "ck/step-1", big, 0, id, &err), &err, 5);
    assert_string_equal(id, "untouched");
    set_length_limit(fx.store, old);

    /* Nothing committed: no event, no checkpoint, the metrics row still buffered. */
    assert_int_equal(fx_event_count(fx.store, job), events);
    assert_int_equal(lorad_metrics_writer_pending(w), 1);
    assert_int_equal(lorad_store_checkpoint_latest(fx.store, job, NULL, NULL, NULL, NULL), 0);
    /* And the same calls work once the values fit. */
    assert_int_equal(lorad_metrics_writer_checkpoint(w, 1, "ck/step-1", big, 0, id, NULL), 0);
    assert_int_equal(lorad_store_checkpoint_latest(fx.store, job, NULL, NULL, NULL, NULL), 1);
    lorad_metrics_writer_free(w);
    json_decref(big);
    fx_close(&fx);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_file_validation),
        cmocka_unit_test(test_job_create_and_transition),
        cmocka_unit_test(test_event_and_checkpoint),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
