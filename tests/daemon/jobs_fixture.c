/* Real jobs for the daemon tests: a state directory with the models dir holding stories260K.bin,
 * datasets registered in a real store the way uploads are, jobs created the way the API creates
 * them, and an independent reference run of the engine. */
#include "jobs_fixture.h"

#define MODEL_ID JOBS_MODEL_ID

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "train.h"
#include "workers.h"

struct jobs_env E;



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
void make_file_status(int n_records, int bad_line, int seq_len, const char *status, char id[LORAD_STORE_ID_MAX]) {
    assert_int_equal(lorad_store_new_id("file-", id), 0);
    char rel[64], abs[4096];
    snprintf(rel, sizeof rel, "files/%s", id);
    snprintf(abs, sizeof abs, "%s/%s", E.state, rel);
    free(write_ids(abs, n_records, bad_line, seq_len));
    struct lorad_store_file_new f = {.id = id, .filename = "ids.jsonl", .purpose = "fine-tune", .bytes = 1,
                                     .sha256 = "0000000000000000000000000000000000000000000000000000000000000000",
                                     .line_count = n_records, .status = status, .path = rel};
    struct lorad_error err = {0};
    int r = lorad_store_file_create(E.store, &f, NULL, &err);
    if (r < 0) fprintf(stderr, "%s\n", err.message);
    assert_int_equal(r, 0);
}

char *spec_text(const char *model, const char *file_id, int n_epochs, int max_steps, int ckpt_every) {
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

void parse_spec(const char *text, struct lorad_job_spec *spec) {
    json_t *body = json_loads(text, 0, NULL);
    assert_non_null(body);
    struct lorad_error err = {0};
    int r = lorad_job_spec_parse(body, spec, &err);
    if (r < 0) fprintf(stderr, "%s\n", err.message);
    assert_int_equal(r, 0);
    json_decref(body);
}

/* Creates a queued job the way the API does: the normalised spec is stored whole. */
void make_job_status(const char *text, enum lorad_job_status status, char id[LORAD_STORE_ID_MAX]) {
    make_job_sized(text, status, 0, id);
}

void make_job_sized(const char *text, enum lorad_job_status status, int64_t memory_bytes,
                    char id[LORAD_STORE_ID_MAX]) {
    struct lorad_job_spec spec;
    parse_spec(text, &spec);
    json_t *norm = lorad_job_spec_to_json(&spec);
    assert_non_null(norm);
    struct lorad_store_job_new j = {.model = spec.model, .training_file = spec.training_file, .spec = norm,
                                    .seed = spec.seed, .status = status, .memory_bytes = memory_bytes};
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

json_t *get_job(const char *id) {
    json_t *job = NULL;
    assert_int_equal(lorad_store_job_get(E.store, id, &job, NULL), 0);
    return job;
}

enum lorad_job_status status_of(const char *id) {
    json_t *job = get_job(id);
    enum lorad_job_status s;
    assert_int_equal(lorad_job_status_parse(json_string_value(json_object_get(job, "status")), &s), 0);
    json_decref(job);
    return s;
}

int64_t progress_step(const char *id) {
    json_t *job = get_job(id);
    int64_t step = json_integer_value(json_object_get(json_object_get(job, "progress"), "step"));
    json_decref(job);
    return step;
}

double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Waits until the job is in `want`; fails the test after timeout_s. */
void wait_status(const char *id, enum lorad_job_status want, double timeout_s) {
    double end = now_s() + timeout_s;
    enum lorad_job_status s;
    while ((s = status_of(id)) != want) {
        if (now_s() > end) fail_msg("job %s is %s, waited %.0f s for %s", id, lorad_job_status_name(s), timeout_s,
                                    lorad_job_status_name(want));
        usleep(5000);
    }
}

void wait_progress(const char *id, int64_t step, double timeout_s) {
    double end = now_s() + timeout_s;
    while (progress_step(id) < step) {
        if (now_s() > end) fail_msg("job %s did not reach step %lld", id, (long long)step);
        usleep(2000);
    }
}

struct lorad_workers *start_pool(int workers) { return start_pool_limited(workers, 0); }

struct lorad_workers *start_pool_limited(int workers, int64_t memory_limit) {
    struct lorad_workers_options o = {.store = E.store, .state_dir = E.state, .models_dir = E.models,
                                      .jobs_dir = E.jobs, .workers = workers, .max_threads_per_job = 1, .poll_ms = 50,
                                      .metrics_batch_rows = 1, .memory_limit = memory_limit};
    struct lorad_workers *p = NULL;
    assert_int_equal(lorad_workers_start(&o, &p), 0);
    return p;
}

/* Every step 1..n has exactly one metrics row. */
void assert_metrics_complete(const char *id, int64_t n) {
    json_t *rows = NULL;
    assert_int_equal(lorad_store_metrics_list(E.store, id, 0, 100000, &rows, NULL), 0);
    assert_int_equal(json_array_size(rows), n);
    for (int64_t i = 0; i < n; i++)
        assert_int_equal(json_integer_value(json_object_get(json_array_get(rows, (size_t)i), "step")), i + 1);
    json_decref(rows);
}

int checkpoint_count(const char *id) {
    json_t *page = NULL;
    assert_int_equal(lorad_store_checkpoint_list(E.store, id, NULL, 100, &page, NULL), 0);
    int n = (int)json_array_size(json_object_get(page, "data"));
    json_decref(page);
    return n;
}

void *adapter_of(const char *out_dir, size_t *ret_len) {
    char *p = test_path(out_dir, "adapter/adapter_model.safetensors");
    void *d = test_read_file(p, ret_len);
    free(p);
    return d;
}

void *job_adapter(const char *id, size_t *ret_len) {
    char *out = test_path(E.jobs, id);
    void *d = adapter_of(out, ret_len);
    free(out);
    return d;
}

/* The independent reference: the same spec trained by calling the engine directly. */
void *reference_adapter(const char *text, const char *file_id, size_t *ret_len) {
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

void assert_same_bytes(void *a, size_t na, void *b, size_t nb) {
    assert_int_equal(na, nb);
    assert_memory_equal(a, b, na);
    free(a);
    free(b);
}

/* ---- set-up ---- */

int jobs_env_setup(void **state) {
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
    /* Without the real model every job would fail and the tests would wait for successes until
     * ctest's timeout: say what is missing at once instead. */
    const char *model = test_shared_data("stories260K.bin");
    if (access(model, R_OK) != 0) fail_msg("cannot read %s (the shared test data)", model);
    assert_int_equal(symlink(model, link), 0);
    free(link);
    char *db = test_path(E.state, "lorad.db");
    struct lorad_store_options so = {.flags = LORAD_STORE_RECOVER};
    assert_int_equal(lorad_store_open(db, &so, &E.store, NULL), 0);
    free(db);
    return 0;
}

int jobs_env_teardown(void **state) {
    (void)state;
    lorad_store_close(E.store);
    test_rmtree(E.dir);
    free(E.dir);
    free(E.state);
    free(E.models);
    free(E.jobs);
    return 0;
}


void make_file(int n_records, int bad_line, int seq_len, char id[LORAD_STORE_ID_MAX]) {
    make_file_status(n_records, bad_line, seq_len, "processed", id);
}

void make_job(const char *text, char id[LORAD_STORE_ID_MAX]) {
    make_job_status(text, LORAD_JOB_QUEUED, id);
}
