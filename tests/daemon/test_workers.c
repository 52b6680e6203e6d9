/* The daemon's worker pool on a real store and a real model (stories260K.bin, pre-tokenised data):
 * jobs run to succeeded with their metrics and checkpoints recorded, cancel and pause act within a
 * step, pause/resume and a shutdown in the middle of a run end byte-identical to an uninterrupted
 * run made by calling the engine directly, and a job with bad data (or an unknown model) fails with
 * the right code while another job succeeds. */
#include "testutil.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "job_run.h"
#include "store.h"
#include "train.h"
#include "workers.h"

#define MODEL_ID "stories260K.bin"

struct env {
    char *dir, *state, *models, *jobs;
    struct lorad_store *store;
};

static struct env E;

static char *write_ids(const char *path, int n_records, int bad_line, int seq_len) {
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    for (int i = 0; i < n_records; i++) {
        fprintf(f, "{\"input_ids\":[1");
        for (int t = 0; t < seq_len; t++)
            fprintf(f, ",%d", i == bad_line && t == 3 ? 600 /* >= vocab 512 */ : 3 + (i * 31 + t * 7) % 500);
        fprintf(f, "]}\n");
    }
    fclose(f);
    return strdup(path);
}

/* A dataset registered in the store as an upload would be: files/<id>, path relative to state. */
static void make_file(int n_records, int bad_line, int seq_len, char id[LORAD_STORE_ID_MAX]) {
    assert_int_equal(lorad_store_new_id("file-", id), 0);
    char rel[64], abs[4096];
    snprintf(rel, sizeof rel, "files/%s", id);
    snprintf(abs, sizeof abs, "%s/%s", E.state, rel);
    free(write_ids(abs, n_records, bad_line, seq_len));
    struct lorad_store_file_new f = {.id = id, .filename = "ids.jsonl", .purpose = "fine-tune", .bytes = 1,
                                     .sha256 = "0000000000000000000000000000000000000000000000000000000000000000",
                                     .line_count = n_records, .status = "processed", .path = rel};
    struct lorad_error err = {0};
    int r = lorad_store_file_create(E.store, &f, NULL, &err);
    if (r < 0) fprintf(stderr, "%s\n", err.message);
    assert_int_equal(r, 0);
}

static char *spec_text(const char *model, const char *file_id, int n_epochs, int max_steps, int ckpt_every) {
    char *s = NULL;
    char steps[32] = "null", ckpt[32] = "null";
    if (max_steps > 0) snprintf(steps, sizeof steps, "%d", max_steps);
    if (ckpt_every > 0) snprintf(ckpt, sizeof ckpt, "%d", ckpt_every);
    assert_true(asprintf(&s,
                         "{\"model\":\"%s\",\"training_file\":\"%s\",\"seed\":7,\"hyperparameters\":{\"n_epochs\":%d,"
                         "\"batch_size\":2,\"max_seq_len\":16,\"max_steps\":%s,\"checkpoint_every_steps\":%s,"
                         "\"learning_rate\":0.001},\"lora\":{\"r\":4,\"dropout\":0.1}}",
                         model, file_id, n_epochs, steps, ckpt) > 0);
    return s;
}

static void parse_spec(const char *text, struct lorad_job_spec *spec) {
    json_t *body = json_loads(text, 0, NULL);
    assert_non_null(body);
    struct lorad_error err = {0};
    int r = lorad_job_spec_parse(body, spec, &err);
    if (r < 0) fprintf(stderr, "%s\n", err.message);
    assert_int_equal(r, 0);
    json_decref(body);
}

/* Creates a queued job the way the API does: the normalised spec is stored whole. */
static void make_job(const char *text, char id[LORAD_STORE_ID_MAX]) {
    struct lorad_job_spec spec;
    parse_spec(text, &spec);
    json_t *norm = lorad_job_spec_to_json(&spec);
    assert_non_null(norm);
    struct lorad_store_job_new j = {.model = spec.model, .training_file = spec.training_file, .spec = norm,
                                    .seed = spec.seed, .status = LORAD_JOB_QUEUED};
    json_t *job = NULL;
    struct lorad_error err = {0};
    int r = lorad_store_job_create(E.store, &j, &job, &err);
    if (r < 0) fprintf(stderr, "%s\n", err.message);
    assert_int_equal(r, 0);
    snprintf(id, LORAD_STORE_ID_MAX, "%s", json_string_value(json_object_get(job, "id")));
    json_decref(job);
    json_decref(norm);
    lorad_job_spec_clear(&spec);
}

static json_t *get_job(const char *id) {
    json_t *job = NULL;
    assert_int_equal(lorad_store_job_get(E.store, id, &job, NULL), 0);
    return job;
}

static enum lorad_job_status status_of(const char *id) {
    json_t *job = get_job(id);
    enum lorad_job_status s;
    assert_int_equal(lorad_job_status_parse(json_string_value(json_object_get(job, "status")), &s), 0);
    json_decref(job);
    return s;
}

static int64_t progress_step(const char *id) {
    json_t *job = get_job(id);
    int64_t step = json_integer_value(json_object_get(json_object_get(job, "progress"), "step"));
    json_decref(job);
    return step;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Waits until the job is in `want`; fails the test after timeout_s. */
static void wait_status(const char *id, enum lorad_job_status want, double timeout_s) {
    double end = now_s() + timeout_s;
    enum lorad_job_status s;
    while ((s = status_of(id)) != want) {
        if (now_s() > end) fail_msg("job %s is %s, waited %.0f s for %s", id, lorad_job_status_name(s), timeout_s,
                                    lorad_job_status_name(want));
        usleep(5000);
    }
}

static void wait_progress(const char *id, int64_t step, double timeout_s) {
    double end = now_s() + timeout_s;
    while (progress_step(id) < step) {
        if (now_s() > end) fail_msg("job %s did not reach step %lld", id, (long long)step);
        usleep(2000);
    }
}

static struct lorad_workers *start_pool(int workers) {
    struct lorad_workers_options o = {.store = E.store, .state_dir = E.state, .models_dir = E.models,
                                      .jobs_dir = E.jobs, .workers = workers, .threads_per_job = 1, .poll_ms = 50,
                                      .metrics_batch_rows = 1};
    struct lorad_workers *p = NULL;
    assert_int_equal(lorad_workers_start(&o, &p), 0);
    return p;
}

/* Every step 1..n has exactly one metrics row. */
static void assert_metrics_complete(const char *id, int64_t n) {
    json_t *rows = NULL;
    assert_int_equal(lorad_store_metrics_list(E.store, id, 0, 100000, &rows, NULL), 0);
    assert_int_equal(json_array_size(rows), n);
    for (int64_t i = 0; i < n; i++)
        assert_int_equal(json_integer_value(json_object_get(json_array_get(rows, (size_t)i), "step")), i + 1);
    json_decref(rows);
}

static int checkpoint_count(const char *id) {
    json_t *page = NULL;
    assert_int_equal(lorad_store_checkpoint_list(E.store, id, NULL, 100, &page, NULL), 0);
    int n = (int)json_array_size(json_object_get(page, "data"));
    json_decref(page);
    return n;
}

static void *adapter_of(const char *out_dir, size_t *ret_len) {
    char *p = test_path(out_dir, "adapter/adapter_model.safetensors");
    void *d = test_read_file(p, ret_len);
    free(p);
    return d;
}

static void *job_adapter(const char *id, size_t *ret_len) {
    char *out = test_path(E.jobs, id);
    void *d = adapter_of(out, ret_len);
    free(out);
    return d;
}

/* The independent reference: the same spec trained by calling the engine directly. */
static void *reference_adapter(const char *text, const char *file_id, size_t *ret_len) {
    struct lorad_job_spec spec;
    parse_spec(text, &spec);
    char data[4096], model[4096];
    snprintf(data, sizeof data, "%s/files/%s", E.state, file_id);
    snprintf(model, sizeof model, "%s/%s", E.models, MODEL_ID);
    char *out = test_path(E.dir, "reference");
    test_rmtree(out);
    struct lorad_train_options opt = {.model_path = model, .training_path = data, .out_dir = out, .threads = 1};
    struct lorad_train_result *res = calloc(1, sizeof *res);
    struct lorad_error err = {0};
    int r = lorad_train_run(&spec, &opt, NULL, res, &err);
    if (r < 0) fprintf(stderr, "%s\n", err.message);
    assert_int_equal(r, 0);
    assert_int_equal(res->outcome, LORAD_TRAIN_FINISHED);
    void *d = adapter_of(out, ret_len);
    free(res);
    free(out);
    lorad_job_spec_clear(&spec);
    return d;
}

static void assert_same_bytes(void *a, size_t na, void *b, size_t nb) {
    assert_int_equal(na, nb);
    assert_memory_equal(a, b, na);
    free(a);
    free(b);
}

/* ---- tests ------------------------------------------------------------------------------------- */

static int setup(void **state) {
    (void)state;
    E.dir = test_mkdtemp("workers");
    E.state = test_path(E.dir, "state");
    E.models = test_path(E.dir, "models");
    E.jobs = test_path(E.state, "jobs");
    char *files = test_path(E.state, "files");
    assert_int_equal(mkdir(E.state, 0700), 0);
    assert_int_equal(mkdir(files, 0700), 0);
    assert_int_equal(mkdir(E.jobs, 0700), 0);
    assert_int_equal(mkdir(E.models, 0700), 0);
    free(files);
    char *link = test_path(E.models, MODEL_ID);
    assert_int_equal(symlink(test_shared_data("stories260K.bin"), link), 0);
    free(link);
    char *db = test_path(E.state, "lorad.db");
    struct lorad_store_options so = {.flags = LORAD_STORE_RECOVER};
    assert_int_equal(lorad_store_open(db, &so, &E.store, NULL), 0);
    free(db);
    return 0;
}

static int teardown(void **state) {
    (void)state;
    lorad_store_close(E.store);
    test_rmtree(E.dir);
    free(E.dir);
    free(E.state);
    free(E.models);
    free(E.jobs);
    return 0;
}

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
    assert_int_equal(checkpoint_count(job), 5); /* steps 4, 8, 12, 16, 20 */
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

    assert_int_equal(lorad_store_job_resume(E.store, job, NULL, NULL), 0);
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
    assert_string_equal(lorad_job_error_code(-ERANGE, &err, res), "loss_not_finite");
    err.param[0] = '\0';
    assert_string_equal(lorad_job_error_code(-ENOSPC, &err, res), "disk_full");
    assert_string_equal(lorad_job_error_code(-EIO, &err, res), "training_failed");
    snprintf(err.param, sizeof err.param, "hyperparameters.batch_size");
    assert_string_equal(lorad_job_error_code(-EINVAL, &err, res), "training_failed");
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
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
