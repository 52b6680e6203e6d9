/* The daemon's worker pool on a real store and a real model (stories260K.bin, pre-tokenised data):
 * jobs run to succeeded with their metrics and checkpoints recorded, cancel and pause act within a
 * step, pause/resume and a shutdown in the middle of a run end byte-identical to an uninterrupted
 * run made by calling the engine directly, and a job with bad data (or an unknown model) fails with
 * the right code while another job succeeds. */
#include "testutil.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "jobs_fixture.h"
#include "job_run.h"
#include "train.h"
#include "workers.h"

#define MODEL_ID JOBS_MODEL_ID

static void test_job_succeeds(void **state) {
    (void)state;
    char file[LORAD_STORE_ID_MAX], job[LORAD_STORE_ID_MAX];
    make_file(20, -1, 12, file);
    char *text = spec_text(MODEL_ID, file, 2, 0, 4); /* 20 records / 2 per step x 2 epochs = 20 steps */
    make_job(text, job);
    struct lorad_workers *pool = start_pool(1);
    lorad_workers_wake(pool);
    wait_status(job, LORAD_JOB_SUCCEEDED, 60);
    lorad_workers_free(pool);

    json_t *j = get_job(job);
    char want[256];
    snprintf(want, sizeof want, "ft:%s:lorad:%s", MODEL_ID, job);
    assert_string_equal(json_string_value(json_object_get(j, "fine_tuned_model")), want);
    assert_true(json_integer_value(json_object_get(j, "trained_tokens")) >= 20 * 2 * 12);
    assert_true(json_is_null(json_object_get(j, "error")));
    json_decref(j);
    assert_metrics_complete(job, 20);
    /* Checkpoints at 4, 8, ..., 20; keep_checkpoints (3) pruned the directories of 4 and 8, and their
     * rows went with them, so the list offers only files that exist. */
    assert_int_equal(checkpoint_count(job), 3);
    /* The checkpoint row's path is relative to the state dir and names a directory that exists. */
    char *path = NULL;
    int64_t step = 0;
    assert_int_equal(lorad_store_checkpoint_latest(E.store, job, NULL, &step, &path, NULL), 1);
    assert_int_equal(step, 20);
    char want_path[128];
    snprintf(want_path, sizeof want_path, "jobs/%s/checkpoints/step-20", job);
    assert_string_equal(path, want_path);
    char *abs = test_path(E.state, path);
    struct stat st;
    assert_int_equal(stat(abs, &st), 0);
    free(abs);
    free(path);

    /* The engine's messages are events, naming the model and file by id, never by daemon path. */
    json_t *page = NULL;
    assert_int_equal(lorad_store_event_list(E.store, job, NULL, 100, &page, NULL), 0);
    size_t i, n_messages = 0;
    json_t *ev;
    bool named_model = false;
    json_array_foreach(json_object_get(page, "data"), i, ev) {
        const char *m = json_string_value(json_object_get(ev, "message"));
        if (strcmp(json_string_value(json_object_get(ev, "type")), "message") == 0) n_messages++;
        if (strstr(m, "base model " MODEL_ID)) named_model = true;
        if (strstr(m, E.dir)) fail_msg("an event names a daemon path: %s", m);
    }
    assert_true(n_messages >= 2);
    assert_true(named_model);
    json_decref(page);

    size_t na, nb;
    void *a = job_adapter(job, &na), *b = reference_adapter(text, file, &nb);
    assert_same_bytes(a, na, b, nb);
    free(text);
}

static void test_cancel_within_a_step(void **state) {
    (void)state;
    char file[LORAD_STORE_ID_MAX], job[LORAD_STORE_ID_MAX];
    make_file(20, -1, 12, file);
    char *text = spec_text(MODEL_ID, file, 1000, 100000, 0);
    make_job(text, job);
    struct lorad_workers *pool = start_pool(1);
    wait_progress(job, 3, 30);
    assert_int_equal(lorad_store_job_cancel(E.store, job, NULL, NULL), 0);
    int64_t at_cancel = progress_step(job);
    wait_status(job, LORAD_JOB_CANCELLED, 30);
    /* The request was seen at the next step boundary: at most the step in flight finished. */
    int64_t last = progress_step(job);
    assert_true(last >= at_cancel);
    assert_true(last <= at_cancel + 1);
    assert_metrics_complete(job, last);
    assert_int_equal(lorad_workers_wait(pool, 5000), 0);
    lorad_workers_free(pool);
    free(text);
}

static void test_pause_resume_byte_identical(void **state) {
    (void)state;
    char file[LORAD_STORE_ID_MAX], job[LORAD_STORE_ID_MAX];
    make_file(24, -1, 12, file);
    char *text = spec_text(MODEL_ID, file, 10, 0, 25); /* 120 steps */
    make_job(text, job);
    struct lorad_workers *pool = start_pool(1);
    wait_progress(job, 5, 30);
    assert_int_equal(lorad_store_job_pause(E.store, job, NULL, NULL), 0);
    int64_t at_pause = progress_step(job);
    wait_status(job, LORAD_JOB_PAUSED, 30);
    int64_t paused_at = progress_step(job);
    assert_true(paused_at <= at_pause + 1);
    assert_true(paused_at < 120);
    /* The pause wrote a checkpoint at the step it stopped. */
    int64_t step = 0;
    char *path = NULL;
    assert_int_equal(lorad_store_checkpoint_latest(E.store, job, NULL, &step, &path, NULL), 1);
    assert_int_equal(step, paused_at);
    free(path);
    usleep(200000);
    assert_int_equal(status_of(job), LORAD_JOB_PAUSED); /* a paused job is not claimed again */

    assert_int_equal(lorad_store_job_resume(E.store, job, 0, NULL, NULL), 0);
    lorad_workers_wake(pool);
    wait_status(job, LORAD_JOB_SUCCEEDED, 60);
    lorad_workers_free(pool);
    assert_metrics_complete(job, 120);
    size_t na, nb;
    void *a = job_adapter(job, &na), *b = reference_adapter(text, file, &nb);
    assert_same_bytes(a, na, b, nb);
    free(text);
}

static void test_bad_jobs_fail_good_job_succeeds(void **state) {
    (void)state;
    char good_file[LORAD_STORE_ID_MAX], bad_file[LORAD_STORE_ID_MAX];
    char good[LORAD_STORE_ID_MAX], bad[LORAD_STORE_ID_MAX], nomodel[LORAD_STORE_ID_MAX];
    make_file(20, -1, 12, good_file);
    make_file(20, 6, 12, bad_file); /* line 7 has a token id beyond the vocabulary */
    char *t_bad = spec_text(MODEL_ID, bad_file, 1, 0, 0);
    char *t_nomodel = spec_text("no-such-model.bin", good_file, 1, 0, 0);
    char *t_good = spec_text(MODEL_ID, good_file, 1, 0, 0);
    make_job(t_bad, bad);
    make_job(t_nomodel, nomodel);
    make_job(t_good, good);
    struct lorad_workers *pool = start_pool(2);
    wait_status(bad, LORAD_JOB_FAILED, 30);
    wait_status(nomodel, LORAD_JOB_FAILED, 30);
    wait_status(good, LORAD_JOB_SUCCEEDED, 60);
    lorad_workers_free(pool);

    json_t *j = get_job(bad);
    json_t *e = json_object_get(j, "error");
    assert_string_equal(json_string_value(json_object_get(e, "code")), "invalid_training_data");
    const char *msg = json_string_value(json_object_get(e, "message"));
    fprintf(stderr, "bad data: %s [%s]\n", msg, json_string_value(json_object_get(e, "param")));
    assert_non_null(strstr(msg, bad_file));                  /* names the file by its id ... */
    assert_null(strstr(msg, E.state));                       /* ... not by the daemon's path */
    assert_string_equal(json_string_value(json_object_get(e, "param")), "training_file");
    json_decref(j);
    j = get_job(nomodel);
    e = json_object_get(j, "error");
    assert_string_equal(json_string_value(json_object_get(e, "code")), "model_not_found");
    assert_string_equal(json_string_value(json_object_get(e, "param")), "model");
    json_decref(j);
    assert_metrics_complete(good, 10);
    free(t_bad);
    free(t_nomodel);
    free(t_good);
}

static void test_shutdown_requeues_and_resumes_identically(void **state) {
    (void)state;
    char file[LORAD_STORE_ID_MAX], job[LORAD_STORE_ID_MAX];
    make_file(24, -1, 12, file);
    char *text = spec_text(MODEL_ID, file, 10, 0, 25); /* 120 steps */
    make_job(text, job);
    struct lorad_workers *pool = start_pool(1);
    wait_progress(job, 4, 30);
    lorad_workers_request_stop(pool);
    assert_int_equal(lorad_workers_wait(pool, 30000), 0);
    lorad_workers_free(pool);
    /* Back in the queue (not paused: nobody asked for a pause), with a checkpoint where it stopped. */
    assert_int_equal(status_of(job), LORAD_JOB_QUEUED);
    int64_t stopped_at = progress_step(job), step = 0;
    assert_true(stopped_at < 120);
    char *path = NULL;
    assert_int_equal(lorad_store_checkpoint_latest(E.store, job, NULL, &step, &path, NULL), 1);
    assert_int_equal(step, stopped_at);
    free(path);
    json_t *events = NULL;
    assert_int_equal(lorad_store_event_list(E.store, job, NULL, 1, &events, NULL), 0);
    json_t *last = json_array_get(json_object_get(events, "data"), 0);
    assert_string_equal(json_string_value(json_object_get(json_object_get(last, "data"), "code")), "daemon_stopping");
    json_decref(events);

    /* A checkpoint directory the store never recorded (a crash between rename and commit) must not
     * be resumed from: this one is empty, so resuming from it would fail the job. */
    char orphan[4096];
    snprintf(orphan, sizeof orphan, "%s/%s/checkpoints/step-%lld", E.jobs, job, (long long)stopped_at + 1);
    assert_int_equal(mkdir(orphan, 0700), 0);

    pool = start_pool(1);
    wait_status(job, LORAD_JOB_SUCCEEDED, 60);
    lorad_workers_free(pool);
    assert_metrics_complete(job, 120);
    size_t na, nb;
    void *a = job_adapter(job, &na), *b = reference_adapter(text, file, &nb);
    assert_same_bytes(a, na, b, nb);
    free(text);
}

/* lora.init_adapter through the API names a succeeded job's fine_tuned_model: the worker trains
 * from that job's adapter, exactly as the engine does when given the directory. */
static void test_init_adapter_continues_a_job(void **state) {
    (void)state;
    char file[LORAD_STORE_ID_MAX], first[LORAD_STORE_ID_MAX], second[LORAD_STORE_ID_MAX];
    make_file(20, -1, 12, file);
    char *t_first = spec_text(MODEL_ID, file, 1, 0, 0);
    make_job(t_first, first);
    struct lorad_workers *pool = start_pool(1);
    wait_status(first, LORAD_JOB_SUCCEEDED, 60);
    json_t *j = get_job(first);
    char name[256];
    snprintf(name, sizeof name, "%s", json_string_value(json_object_get(j, "fine_tuned_model")));
    json_decref(j);

    char *t_second = NULL, *t_reference = NULL;
    const char *fmt = "{\"model\":\"%s\",\"training_file\":\"%s\",\"seed\":9,\"hyperparameters\":{\"n_epochs\":1,"
                      "\"batch_size\":2,\"max_seq_len\":16,\"learning_rate\":0.001},"
                      "\"lora\":{\"r\":4,\"init_adapter\":\"%s\"}}";
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/%s/adapter", E.jobs, first);
    assert_true(asprintf(&t_second, fmt, MODEL_ID, file, name) > 0);
    assert_true(asprintf(&t_reference, fmt, MODEL_ID, file, dir) > 0);
    make_job(t_second, second);
    lorad_workers_wake(pool);
    wait_status(second, LORAD_JOB_SUCCEEDED, 60);
    lorad_workers_free(pool);
    assert_metrics_complete(second, 10);
    size_t na, nb, nc;
    void *a = job_adapter(second, &na), *b = reference_adapter(t_reference, file, &nb);
    void *c = job_adapter(first, &nc);
    assert_false(na == nc && memcmp(a, c, na) == 0); /* it trained on from there */
    free(c);
    assert_same_bytes(a, na, b, nb);

    /* A name that is no succeeded job's model fails the job, naming the field. */
    char third[LORAD_STORE_ID_MAX], *t_third = NULL;
    assert_true(asprintf(&t_third, fmt, MODEL_ID, file, "ft:stories260K.bin:lorad:ftjob-000000000000000000000000") > 0);
    make_job(t_third, third);
    pool = start_pool(1);
    wait_status(third, LORAD_JOB_FAILED, 30);
    lorad_workers_free(pool);
    j = get_job(third);
    assert_string_equal(json_string_value(json_object_get(json_object_get(j, "error"), "param")), "lora.init_adapter");
    json_decref(j);
    free(t_first);
    free(t_second);
    free(t_reference);
    free(t_third);
}

/* The running jobs' estimates stay within memory_limit. Two workers, two long jobs that each
 * claim 1 GiB (more than the real run needs, so the engine's own check passes): under a 1.5 GiB
 * limit the second waits while the first runs and starts once it ends; under 2 GiB both run at
 * once. A job whose estimate exceeds the whole limit (made under a larger one) is not left to
 * block the queue: it runs alone, and the engine refuses it with memory_limit_exceeded. */
static void test_memory_limit_schedules_jobs(void **state) {
    (void)state;
    const int64_t GiB = (int64_t)1 << 30;
    char file[LORAD_STORE_ID_MAX], a[LORAD_STORE_ID_MAX], b[LORAD_STORE_ID_MAX];
    make_file(20, -1, 12, file);
    char *text = spec_text(MODEL_ID, file, 1000, 100000, 0);
    make_job_sized(text, LORAD_JOB_QUEUED, GiB, a);
    make_job_sized(text, LORAD_JOB_QUEUED, GiB, b);
    struct lorad_workers *pool = start_pool_limited(2, GiB + GiB / 2);
    wait_progress(a, 2, 30);
    usleep(300000); /* six polls of the idle worker */
    /* busy counts a claim in progress (workers.h), so the idle worker's poll that finds nothing to
     * fit shows as a second busy worker for as long as its query takes (long under ASan): wait for
     * that to pass, then b must still be queued. */
    double end = now_s() + 10;
    while (lorad_workers_busy(pool) != 1 && now_s() < end) usleep(1000);
    assert_int_equal(lorad_workers_busy(pool), 1);
    assert_int_equal(status_of(b), LORAD_JOB_QUEUED);
    assert_int_equal(lorad_store_job_cancel(E.store, a, NULL, NULL), 0);
    wait_status(a, LORAD_JOB_CANCELLED, 30);
    wait_progress(b, 1, 30);
    assert_int_equal(lorad_store_job_cancel(E.store, b, NULL, NULL), 0);
    wait_status(b, LORAD_JOB_CANCELLED, 30);
    lorad_workers_free(pool);

    make_job_sized(text, LORAD_JOB_QUEUED, GiB, a);
    make_job_sized(text, LORAD_JOB_QUEUED, GiB, b);
    pool = start_pool_limited(2, 2 * GiB);
    wait_progress(a, 1, 30);
    wait_progress(b, 1, 30);
    assert_int_equal(lorad_workers_busy(pool), 2);
    assert_int_equal(lorad_store_job_cancel(E.store, a, NULL, NULL), 0);
    assert_int_equal(lorad_store_job_cancel(E.store, b, NULL, NULL), 0);
    wait_status(a, LORAD_JOB_CANCELLED, 30);
    wait_status(b, LORAD_JOB_CANCELLED, 30);
    lorad_workers_free(pool);

    /* 64 KiB is less than stories260K's weights alone. */
    make_job_sized(text, LORAD_JOB_QUEUED, GiB, a);
    pool = start_pool_limited(1, 64 << 10);
    wait_status(a, LORAD_JOB_FAILED, 30);
    lorad_workers_free(pool);
    json_t *j = get_job(a);
    json_t *e = json_object_get(j, "error");
    assert_string_equal(json_string_value(json_object_get(e, "code")), "memory_limit_exceeded");
    assert_string_equal(json_string_value(json_object_get(e, "param")), "model");
    assert_non_null(strstr(json_string_value(json_object_get(e, "message")), "65536 bytes"));
    json_decref(j);
    free(text);
}

static void test_error_codes(void **state) {
    (void)state;
    struct lorad_error err = {0};
    struct lorad_train_result *res = calloc(1, sizeof *res);
    snprintf(err.param, sizeof err.param, "training_file");
    assert_string_equal(lorad_job_error_code(-EINVAL, &err, res), "invalid_training_data");
    snprintf(err.param, sizeof err.param, "validation_file");
    assert_string_equal(lorad_job_error_code(-EINVAL, &err, res), "invalid_training_data");
    snprintf(err.param, sizeof err.param, "model");
    assert_string_equal(lorad_job_error_code(-ENOENT, &err, res), "model_not_found");
    err.param[0] = '\0';
    assert_string_equal(lorad_job_error_code(-ENOMEM, &err, res), "out_of_memory");
    snprintf(err.param, sizeof err.param, "hyperparameters.learning_rate");
    assert_string_equal(lorad_job_error_code(-ERANGE, &err, res), "nan_loss");
    err.param[0] = '\0';
    assert_string_equal(lorad_job_error_code(-ENOSPC, &err, res), "disk_full");
    assert_string_equal(lorad_job_error_code(-EIO, &err, res), "training_failed");
    snprintf(err.param, sizeof err.param, "hyperparameters.batch_size");
    assert_string_equal(lorad_job_error_code(-EINVAL, &err, res), "training_failed");
    /* The engine's memory check names the field to change; either way it is the limit's doing. */
    assert_string_equal(lorad_job_error_code(-E2BIG, &err, res), "memory_limit_exceeded");
    snprintf(err.param, sizeof err.param, "model");
    assert_string_equal(lorad_job_error_code(-E2BIG, &err, res), "memory_limit_exceeded");
    free(res);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_error_codes),
        cmocka_unit_test(test_job_succeeds),
        cmocka_unit_test(test_cancel_within_a_step),
        cmocka_unit_test(test_pause_resume_byte_identical),
        cmocka_unit_test(test_bad_jobs_fail_good_job_succeeds),
        cmocka_unit_test(test_shutdown_requeues_and_resumes_identically),
        cmocka_unit_test(test_init_adapter_continues_a_job),
        cmocka_unit_test(test_memory_limit_schedules_jobs),
    };
    return cmocka_run_group_tests(tests, jobs_env_setup, jobs_env_teardown);
}
