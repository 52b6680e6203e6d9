/* The /v1/fine_tuning/jobs routes over real HTTP: the real transport on 127.0.0.1 port 0, the
 * real handlers (lorad_api_handlers_install), a real store in a fresh temporary state directory
 * per test, real dataset files, the real stories260K model in the models directory, and
 * checkpoint directories written by the engine's adapter writers.
 *
 * Covered: create (shape incl. hyperparameters and lora, every 400 naming its param, idempotent
 * replay and 422, 429 queue full, 503 stopping), list with status filter and pagination,
 * cancel/pause/resume incl. 409, events page, SSE stream with concurrent writers and
 * Last-Event-ID resume, metrics JSON and CSV, checkpoints list and every adapter file with
 * Range; and the same through curl (a chunk-encoded HTTP/1.1 stream, an independent client). */
#include "testutil.h"

#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "adapter.h"
#include "tar.h"
#include "app.h"
#include "handlers.h"
#include "jobspec.h"
#include "routes.h"
#include "server.h"
#include "store.h"

static struct lorad_api_server *srv;
static struct lorad_app app;
static atomic_int jobs_changed_calls;

/* Per-test state: a state directory with its store, files and models. */
static char *state_dir, *files_dir, *jobs_dir, *models_dir;
static char file_ok[LORAD_STORE_ID_MAX];      /* processed dataset */
static char file_valid[LORAD_STORE_ID_MAX];   /* processed validation dataset */
static char file_pending[LORAD_STORE_ID_MAX]; /* uploaded, not validated yet */

/* ---- a small HTTP/1.1 client ------------------------------------------------------------ */

struct resp {
    int status;
    char *head;  /* status line and headers, NUL-terminated */
    char *body;  /* de-chunked body, NUL-terminated */
    size_t body_len;
};

static void resp_free(struct resp *r) {
    free(r->head);
    free(r->body);
    memset(r, 0, sizeof *r);
}

static int connect_server(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(lorad_api_server_port(srv))};
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    return fd;
}

static void write_all(int fd, const char *p, size_t n) {
    while (n) {
        ssize_t w = write(fd, p, n);
        assert_true(w > 0);
        p += w;
        n -= (size_t)w;
    }
}

/* Decodes a chunked body in place; returns its length. */
static size_t dechunk(char *b, size_t n) {
    size_t in = 0, out = 0;
    for (;;) {
        char *end;
        unsigned long len = strtoul(b + in, &end, 16);
        char *crlf = strstr(end, "\r\n");
        assert_non_null(crlf);
        in = (size_t)(crlf + 2 - b);
        if (len == 0) break;
        assert_true(in + len <= n);
        memmove(b + out, b + in, len);
        out += len;
        in += len + 2;
    }
    b[out] = '\0';
    return out;
}

/* Sends one request (Connection: close) and reads the whole response. */
static struct resp request(const char *method, const char *target, const char *headers, const char *body) {
    int fd = connect_server();
    char *req = NULL;
    size_t blen = body ? strlen(body) : 0;
    int n = asprintf(&req, "%s %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n%s%sContent-Length: %zu\r\n\r\n",
                     method, target, headers ? headers : "", body ? "Content-Type: application/json\r\n" : "", blen);
    assert_true(n > 0);
    write_all(fd, req, (size_t)n);
    if (blen) write_all(fd, body, blen);
    free(req);
    size_t cap = 1 << 16, got = 0;
    char *buf = malloc(cap);
    assert_non_null(buf);
    ssize_t r;
    while ((r = read(fd, buf + got, cap - 1 - got)) > 0) {
        got += (size_t)r;
        if (cap - 1 - got == 0) {
            cap *= 2;
            buf = realloc(buf, cap);
            assert_non_null(buf);
        }
    }
    close(fd);
    buf[got] = '\0';
    struct resp out = {0};
    assert_int_equal(sscanf(buf, "HTTP/1.%*d %d", &out.status), 1);
    char *sep = strstr(buf, "\r\n\r\n");
    assert_non_null(sep);
    size_t head_len = (size_t)(sep - buf);
    out.head = strndup(buf, head_len);
    size_t body_len = got - head_len - 4;
    out.body = malloc(body_len + 1);
    assert_non_null(out.body);
    memcpy(out.body, sep + 4, body_len);
    out.body[body_len] = '\0';
    out.body_len = strcasestr(out.head, "Transfer-Encoding: chunked") ? dechunk(out.body, body_len) : body_len;
    free(buf);
    return out;
}

static struct resp get(const char *target) { return request("GET", target, NULL, NULL); }

/* The response body as JSON (fails the test when it is not). */
static json_t *json_of(const struct resp *r) {
    json_error_t e;
    json_t *j = json_loads(r->body, 0, &e);
    if (!j) fprintf(stderr, "not JSON (%s): %s\n", e.text, r->body);
    assert_non_null(j);
    return j;
}

/* Asserts an error reply: status, param (NULL = JSON null) and code. */
static void expect_error(struct resp *r, int status, const char *param, const char *code) {
    if (r->status != status) fprintf(stderr, "expected %d, got %d: %s\n", status, r->status, r->body);
    assert_int_equal(r->status, status);
    json_t *j = json_of(r);
    json_t *e = json_object_get(j, "error");
    assert_true(json_is_object(e));
    assert_true(json_string_length(json_object_get(e, "message")) > 0);
    json_t *p = json_object_get(e, "param");
    if (param) {
        if (!json_is_string(p)) fprintf(stderr, "expected param %s: %s\n", param, r->body);
        assert_string_equal(json_string_value(p), param);
    } else {
        assert_true(json_is_null(p));
    }
    if (code) assert_string_equal(json_string_value(json_object_get(e, "code")), code);
    json_decref(j);
    resp_free(r);
}

/* POSTs a job body; returns the response. */
static struct resp post_job(const char *body, const char *idempotency_key) {
    char headers[512] = "";
    if (idempotency_key) snprintf(headers, sizeof headers, "Idempotency-Key: %s\r\n", idempotency_key);
    return request("POST", "/v1/fine_tuning/jobs", headers, body);
}

/* Creates a job from body and copies its id; fails the test unless 200. */
static json_t *create_ok(const char *body, char out_id[LORAD_STORE_ID_MAX]) {
    struct resp r = post_job(body, NULL);
    if (r.status != 200) fprintf(stderr, "create: %d %s\n", r.status, r.body);
    assert_int_equal(r.status, 200);
    json_t *job = json_of(&r);
    resp_free(&r);
    if (out_id) snprintf(out_id, LORAD_STORE_ID_MAX, "%s", json_string_value(json_object_get(job, "id")));
    return job;
}

static char *simple_body(const char *extra) {
    char *b = NULL;
    assert_true(asprintf(&b, "{\"model\": \"stories260K.bin\", \"training_file\": \"%s\"%s%s}", file_ok,
                         extra ? ", " : "", extra ? extra : "") > 0);
    return b;
}

static void create_simple(char out_id[LORAD_STORE_ID_MAX]) {
    char *b = simple_body(NULL);
    json_decref(create_ok(b, out_id));
    free(b);
}

static int64_t queued_count(void) {
    int64_t counts[LORAD_JOB_STATUS_COUNT];
    assert_int_equal(lorad_store_job_counts(app.store, counts, NULL), 0);
    return counts[LORAD_JOB_QUEUED];
}

static int64_t job_count(void) {
    int64_t counts[LORAD_JOB_STATUS_COUNT], n = 0;
    assert_int_equal(lorad_store_job_counts(app.store, counts, NULL), 0);
    for (int i = 0; i < LORAD_JOB_STATUS_COUNT; i++) n += counts[i];
    return n;
}

static const char *jstr(json_t *o, const char *key) { return json_string_value(json_object_get(o, key)); }

/* ---- fixture ------------------------------------------------------------------------------ */

static void on_jobs_changed(void *ctx) {
    assert_ptr_equal(ctx, &app);
    atomic_fetch_add(&jobs_changed_calls, 1);
}

/* Stores a real JSONL dataset under files/<id> and its row with the given status. */
static void add_file(const char *status, char out_id[LORAD_STORE_ID_MAX]) {
    assert_int_equal(lorad_store_new_id("file-", out_id), 0);
    char *path = test_path(files_dir, out_id);
    const char *data = "{\"input_ids\": [1, 5, 9, 2]}\n{\"input_ids\": [1, 7, 7, 3, 2]}\n";
    test_write_file(path, data, strlen(data));
    char rel[64];
    snprintf(rel, sizeof rel, "files/%s", out_id);
    struct lorad_store_file_new f = {.id = out_id, .filename = "train.jsonl", .purpose = "fine-tune",
                                     .bytes = (int64_t)strlen(data),
                                     .sha256 = "0000000000000000000000000000000000000000000000000000000000000000",
                                     .line_count = 2, .format = "tokens", .status = status, .path = rel};
    struct lorad_error err = {0};
    int r = lorad_store_file_create(app.store, &f, NULL, &err);
    if (r < 0) fprintf(stderr, "%s\n", err.message);
    assert_int_equal(r, 0);
    free(path);
}

static int setup_state(void **state) {
    (void)state;
    state_dir = test_mkdtemp("api-jobs");
    files_dir = test_path(state_dir, "files");
    jobs_dir = test_path(state_dir, "jobs");
    models_dir = test_path(state_dir, "models");
    assert_int_equal(mkdir(files_dir, 0755), 0);
    assert_int_equal(mkdir(jobs_dir, 0755), 0);
    assert_int_equal(mkdir(models_dir, 0755), 0);
    /* The real llama2.c model as the one base model. */
    char *model = test_path(models_dir, "stories260K.bin");
    assert_int_equal(symlink(test_shared_data("stories260K.bin"), model), 0);
    free(model);
    char *db = test_path(state_dir, "lorad.db");
    struct lorad_store *store = NULL;
    struct lorad_error err = {0};
    assert_int_equal(lorad_store_open(db, NULL, &store, &err), 0);
    free(db);
    app.store = store;
    app.state_dir = state_dir;
    app.models_dir = models_dir;
    app.files_dir = files_dir;
    app.jobs_dir = jobs_dir;
    app.max_queued_jobs = 100;
    app.max_threads_per_job = 1;
    app.memory_limit = 0;
    atomic_store(&app.ready, true);
    atomic_store(&app.stopping, false);
    app.jobs_changed = on_jobs_changed;
    app.jobs_changed_ctx = &app;
    atomic_store(&jobs_changed_calls, 0);
    add_file("processed", file_ok);
    add_file("processed", file_valid);
    add_file("uploaded", file_pending);
    return 0;
}

static int teardown_state(void **state) {
    (void)state;
    lorad_store_close(app.store);
    app.store = NULL;
    test_rmtree(state_dir);
    free(state_dir);
    free(files_dir);
    free(jobs_dir);
    free(models_dir);
    return 0;
}

/* ---- create ------------------------------------------------------------------------------- */

static void test_create_shape(void **state) {
    (void)state;
    char body[1024];
    snprintf(body, sizeof body,
             "{\"model\": \"stories260K.bin\", \"training_file\": \"%s\", \"validation_file\": \"%s\","
             " \"suffix\": \"demo\", \"seed\": 7, \"priority\": 3, \"metadata\": {\"team\": \"a\"},"
             " \"hyperparameters\": {\"n_epochs\": 2, \"batch_size\": \"auto\", \"max_steps\": 10},"
             " \"lora\": {\"r\": 4, \"alpha\": 8, \"target_modules\": \"all-linear\"},"
             " \"data\": {\"format\": \"tokens\"}}",
             file_ok, file_valid);
    char id[LORAD_STORE_ID_MAX];
    json_t *job = create_ok(body, id);
    assert_true(lorad_store_id_valid("ftjob-", id));
    assert_string_equal(jstr(job, "object"), "fine_tuning.job");
    assert_string_equal(jstr(job, "model"), "stories260K.bin");
    assert_string_equal(jstr(job, "status"), "queued");
    assert_string_equal(jstr(job, "training_file"), file_ok);
    assert_string_equal(jstr(job, "validation_file"), file_valid);
    assert_string_equal(jstr(job, "suffix"), "demo");
    assert_int_equal(json_integer_value(json_object_get(job, "seed")), 7);
    assert_int_equal(json_integer_value(json_object_get(job, "priority")), 3);
    assert_int_equal(json_integer_value(json_object_get(job, "queue_position")), 1);
    assert_true(json_is_null(json_object_get(job, "error")));
    assert_true(json_is_null(json_object_get(job, "fine_tuned_model")));
    assert_true(json_is_null(json_object_get(job, "estimated_finish")));
    assert_true(json_is_integer(json_object_get(job, "created_at")));
    assert_string_equal(jstr(json_object_get(job, "metadata"), "team"), "a");
    /* Every hyperparameter, with the defaults filled in (values from docs/openapi, not our output). */
    json_t *hp = json_object_get(job, "hyperparameters");
    assert_int_equal(json_integer_value(json_object_get(hp, "n_epochs")), 2);
    assert_int_equal(json_integer_value(json_object_get(hp, "batch_size")), 2);
    assert_int_equal(json_integer_value(json_object_get(hp, "max_steps")), 10);
    assert_float_equal(json_real_value(json_object_get(hp, "learning_rate")), 3e-4, 1e-15);
    assert_int_equal(json_integer_value(json_object_get(hp, "max_seq_len")), 512);
    assert_string_equal(jstr(hp, "lr_scheduler"), "cosine");
    assert_true(json_is_null(json_object_get(hp, "threads")));
    assert_true(json_object_size(hp) >= 20);
    json_t *lora = json_object_get(job, "lora");
    assert_int_equal(json_integer_value(json_object_get(lora, "r")), 4);
    assert_float_equal(json_real_value(json_object_get(lora, "alpha")), 8, 0);
    assert_float_equal(json_real_value(json_object_get(lora, "dropout")), 0, 0);
    assert_int_equal(json_array_size(json_object_get(lora, "target_modules")), 7);
    assert_true(json_is_null(json_object_get(lora, "init_adapter")));
    assert_string_equal(jstr(json_object_get(job, "data"), "format"), "tokens");
    json_t *progress = json_object_get(job, "progress");
    const char *pkeys[] = {"step", "total_steps", "epoch", "tokens_per_s", "eta_s"};
    for (size_t i = 0; i < 5; i++) assert_non_null(json_object_get(progress, pkeys[i]));
    assert_int_equal(atomic_load(&jobs_changed_calls), 1);

    /* The stored spec is what the worker (and `lorad train`) parse: it parses back to the same job. */
    json_t *spec = json_pack("{s:O, s:O, s:O, s:O, s:O, s:O, s:O, s:O, s:O}", "model", json_object_get(job, "model"),
                             "training_file", json_object_get(job, "training_file"), "validation_file",
                             json_object_get(job, "validation_file"), "seed", json_object_get(job, "seed"), "suffix",
                             json_object_get(job, "suffix"), "metadata", json_object_get(job, "metadata"),
                             "hyperparameters", hp, "lora", lora, "data", json_object_get(job, "data"));
    struct lorad_job_spec parsed;
    struct lorad_error err = {0};
    assert_int_equal(lorad_job_spec_parse(spec, &parsed, &err), 0);
    assert_int_equal(parsed.lora.r, 4);
    assert_int_equal(parsed.hp.n_epochs, 2);
    assert_int_equal(parsed.data_format, LORAD_DATA_TOKENS);
    lorad_job_spec_clear(&parsed);
    json_decref(spec);

    /* Retrieve gives the same job. */
    char target[128];
    snprintf(target, sizeof target, "/v1/fine_tuning/jobs/%s", id);
    struct resp r = get(target);
    assert_int_equal(r.status, 200);
    json_t *again = json_of(&r);
    assert_string_equal(jstr(again, "id"), id);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(again, "lora"), "r")), 4);
    json_decref(again);
    resp_free(&r);
    json_decref(job);

    /* OpenAI's method form works; its hyperparameters land in the same place. */
    snprintf(body, sizeof body,
             "{\"model\": \"stories260K.bin\", \"training_file\": \"%s\", \"method\": {\"type\": \"supervised\","
             " \"supervised\": {\"hyperparameters\": {\"n_epochs\": 3, \"learning_rate_multiplier\": 2}}}}",
             file_ok);
    job = create_ok(body, NULL);
    hp = json_object_get(job, "hyperparameters");
    assert_int_equal(json_integer_value(json_object_get(hp, "n_epochs")), 3);
    assert_float_equal(json_real_value(json_object_get(hp, "learning_rate")), 6e-4, 1e-15);
    assert_int_equal(json_integer_value(json_object_get(job, "priority")), 0);
    assert_int_equal(json_integer_value(json_object_get(job, "queue_position")), 2);
    json_decref(job);

    snprintf(target, sizeof target, "/v1/fine_tuning/jobs/ftjob-AAAAAAAAAAAAAAAAAAAAAAAA");
    r = get(target);
    expect_error(&r, 404, "fine_tuning_job_id", NULL);
    r = get("/v1/fine_tuning/jobs/ftjob-..etc");
    expect_error(&r, 404, "fine_tuning_job_id", NULL);
}

static void test_create_errors(void **state) {
    (void)state;
    char body[1024];
    struct {
        const char *fmt; /* %s = the processed file id, where used */
        const char *param;
        const char *code;
    } cases[] = {
        {"{\"model\": \"stories260K.bin\", \"training_file\": \"%s\", \"hyperparameters\": {\"batch_size\": 0}}",
         "hyperparameters.batch_size", "invalid_value"},
        {"{\"model\": \"stories260K.bin\", \"training_file\": \"%s\", \"hyperparameters\": {\"learning_rat\": 1}}",
         "hyperparameters.learning_rat", NULL},
        {"{\"model\": \"stories260K.bin\", \"training_file\": \"%s\", \"lora\": {\"target_modules\": [\"q\"]}}",
         "lora.target_modules[0]", NULL},
        {"{\"model\": \"stories260K.bin\", \"training_file\": \"%s\", \"epochs\": 3}", "epochs", NULL},
        {"{\"training_file\": \"%s\"}", "model", NULL},
        {"{\"model\": \"nope.bin\", \"training_file\": \"%s\"}", "model", "model_not_found"},
        {"{\"model\": \"../models/stories260K.bin\", \"training_file\": \"%s\"}", "model", "model_not_found"},
        {"{\"model\": \"stories260K.bin\", \"training_file\": \"%s\", \"priority\": \"high\"}", "priority",
         "invalid_value"},
        {"{\"model\": \"stories260K.bin\", \"training_file\": \"%s\", \"priority\": 101}", "priority", NULL},
        {"{\"model\": \"stories260K.bin\", \"training_file\": \"%s\", \"lora\": {\"init_adapter\": \"/tmp/x\"}}",
         "lora.init_adapter", "model_not_found"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        snprintf(body, sizeof body, cases[i].fmt, file_ok);
        struct resp r = post_job(body, NULL);
        expect_error(&r, 400, cases[i].param, cases[i].code);
    }
    /* Files: ids only, stored, processed. */
    const char *fmt = "{\"model\": \"stories260K.bin\", \"training_file\": \"%s\"}";
    const char *bad_files[] = {"file-AAAAAAAAAAAAAAAAAAAAAAAA", "/etc/passwd", "files/x.jsonl"};
    for (size_t i = 0; i < 3; i++) {
        snprintf(body, sizeof body, fmt, bad_files[i]);
        struct resp r = post_job(body, NULL);
        expect_error(&r, 400, "training_file", "file_not_found");
    }
    snprintf(body, sizeof body, fmt, file_pending);
    struct resp r = post_job(body, NULL);
    expect_error(&r, 400, "training_file", "file_not_processed");
    snprintf(body, sizeof body, "{\"model\": \"stories260K.bin\", \"training_file\": \"%s\", \"validation_file\": \"%s\"}",
             file_ok, file_pending);
    r = post_job(body, NULL);
    expect_error(&r, 400, "validation_file", "file_not_processed");
    snprintf(body, sizeof body,
             "{\"model\": \"stories260K.bin\", \"training_file\": \"%s\", \"validation_file\": \"file-BBBBBBBBBBBBBBBBBBBBBBBB\"}",
             file_ok);
    r = post_job(body, NULL);
    expect_error(&r, 400, "validation_file", "file_not_found");
    /* stories260K has no tokenizer: a dataset of text is refused before a worker could fail on it. */
    char file_text[LORAD_STORE_ID_MAX];
    add_file("processed", file_text);
    assert_int_equal(lorad_store_file_set_status(app.store, file_text, "processed", "text", 2, NULL, NULL), 0);
    snprintf(body, sizeof body, fmt, file_text);
    r = post_job(body, NULL);
    expect_error(&r, 400, "training_file", "tokenizer_required");
    snprintf(body, sizeof body, "{\"model\": \"stories260K.bin\", \"training_file\": \"%s\", \"validation_file\": \"%s\"}",
             file_ok, file_text);
    r = post_job(body, NULL);
    expect_error(&r, 400, "validation_file", "tokenizer_required");
    r = post_job("[1, 2]", NULL);
    expect_error(&r, 400, NULL, NULL);
    /* None of them made a job or woke a worker. */
    assert_int_equal(job_count(), 0);
    assert_int_equal(atomic_load(&jobs_changed_calls), 0);
}

static void test_idempotency(void **state) {
    (void)state;
    char a[512], b[512], c[512];
    snprintf(a, sizeof a, "{\"model\": \"stories260K.bin\", \"training_file\": \"%s\", \"priority\": 1,"
                          " \"hyperparameters\": {\"n_epochs\": 2, \"batch_size\": 1}}", file_ok);
    /* The same request with other key order and spacing. */
    snprintf(b, sizeof b, "{\"hyperparameters\":{\"batch_size\":1,\"n_epochs\":2},\"priority\":1,"
                          "\"training_file\":\"%s\",\"model\":\"stories260K.bin\"}", file_ok);
    snprintf(c, sizeof c, "{\"model\": \"stories260K.bin\", \"training_file\": \"%s\", \"priority\": 1,"
                          " \"hyperparameters\": {\"n_epochs\": 3, \"batch_size\": 1}}", file_ok);
    struct resp r = post_job(a, "retry-123");
    assert_int_equal(r.status, 200);
    json_t *first = json_of(&r);
    resp_free(&r);
    r = post_job(b, "retry-123");
    assert_int_equal(r.status, 200);
    json_t *replay = json_of(&r);
    resp_free(&r);
    assert_string_equal(jstr(first, "id"), jstr(replay, "id"));
    json_decref(replay);
    assert_int_equal(job_count(), 1);
    assert_int_equal(atomic_load(&jobs_changed_calls), 1);

    r = post_job(c, "retry-123");
    expect_error(&r, 422, NULL, "idempotency_key_reused");
    assert_int_equal(job_count(), 1);

    /* Another key makes another job; the replay still answers when the queue is full. */
    r = post_job(c, "retry-456");
    assert_int_equal(r.status, 200);
    resp_free(&r);
    app.max_queued_jobs = 2;
    r = post_job(a, "retry-123");
    assert_int_equal(r.status, 200);
    replay = json_of(&r);
    resp_free(&r);
    assert_string_equal(jstr(first, "id"), jstr(replay, "id"));
    json_decref(replay);
    json_decref(first);
    r = post_job(a, "retry-789");
    expect_error(&r, 429, NULL, "queue_full");
    /* A key longer than 255 bytes is refused before anything. */
    char key[300];
    memset(key, 'k', 256);
    key[256] = '\0';
    r = post_job(a, key);
    expect_error(&r, 400, "Idempotency-Key", NULL);
    assert_int_equal(job_count(), 2);
}

struct racer {
    const char *body;
    int status;
};

static void *race_create(void *arg) {
    struct racer *r = arg;
    struct resp resp = post_job(r->body, NULL);
    r->status = resp.status;
    resp_free(&resp);
    return NULL;
}

static void *race_resume(void *arg) {
    struct racer *r = arg;
    char target[128];
    snprintf(target, sizeof target, "/v1/fine_tuning/jobs/%s/resume", r->body);
    struct resp resp = request("POST", target, NULL, NULL);
    r->status = resp.status;
    resp_free(&resp);
    return NULL;
}

/* Concurrent creates against a queue with room for 3: exactly 3 are accepted, the rest are 429,
 * so max_queued_jobs holds even when requests race. */
static void test_queue_limit_under_concurrency(void **state) {
    (void)state;
    app.max_queued_jobs = 3;
    char *body = simple_body(NULL);
    enum { N = 12 };
    struct racer racers[N];
    pthread_t th[N];
    for (int i = 0; i < N; i++) {
        racers[i] = (struct racer){.body = body};
        assert_int_equal(pthread_create(&th[i], NULL, race_create, &racers[i]), 0);
    }
    int ok = 0, full = 0;
    for (int i = 0; i < N; i++) {
        pthread_join(th[i], NULL);
        ok += racers[i].status == 200;
        full += racers[i].status == 429;
    }
    assert_int_equal(ok, 3);
    assert_int_equal(full, N - 3);
    assert_int_equal(queued_count(), 3);
    app.max_queued_jobs = 100;
    free(body);
}

static void test_queue_full_and_stopping(void **state) {
    (void)state;
    app.max_queued_jobs = 3;
    char ids[3][LORAD_STORE_ID_MAX];
    for (int i = 0; i < 3; i++) create_simple(ids[i]);
    char *body = simple_body(NULL);
    struct resp r = post_job(body, NULL);
    assert_int_equal(r.status, 429);
    assert_non_null(strstr(r.body, "\"type\":\"rate_limit_error\""));
    expect_error(&r, 429, NULL, "queue_full");
    assert_int_equal(queued_count(), 3);
    /* A running job leaves the queue: there is room again. */
    json_t *claimed = NULL;
    assert_int_equal(lorad_store_job_claim_next(app.store, -1, &claimed, NULL, NULL), 1);
    json_decref(claimed);
    r = post_job(body, NULL);
    assert_int_equal(r.status, 200);
    resp_free(&r);

    app.max_queued_jobs = 100;
    atomic_store(&app.stopping, true);
    r = post_job(body, NULL);
    assert_non_null(strstr(r.body, "\"type\":\"service_unavailable\""));
    expect_error(&r, 503, NULL, "shutting_down");
    atomic_store(&app.stopping, false);
    assert_int_equal(job_count(), 4);
    free(body);
}

/* ---- list and control --------------------------------------------------------------------- */

static void test_list_and_filter(void **state) {
    (void)state;
    enum { N = 7 };
    char ids[N][LORAD_STORE_ID_MAX];
    for (int i = 0; i < N; i++) create_simple(ids[i]);
    /* Cancel jobs 1 and 4 through the API. */
    for (int i = 1; i < N; i += 3) {
        char target[128];
        snprintf(target, sizeof target, "/v1/fine_tuning/jobs/%s/cancel", ids[i]);
        struct resp r = request("POST", target, NULL, NULL);
        assert_int_equal(r.status, 200);
        resp_free(&r);
    }
    /* Walk every page of size 2: newest first, each job once. */
    char after[LORAD_STORE_ID_MAX] = "";
    int seen = 0;
    for (int pages = 0; pages < 10; pages++) {
        char target[160];
        if (seen) snprintf(target, sizeof target, "/v1/fine_tuning/jobs?limit=2&after=%s", after);
        else snprintf(target, sizeof target, "/v1/fine_tuning/jobs?limit=2");
        struct resp r = get(target);
        assert_int_equal(r.status, 200);
        json_t *page = json_of(&r);
        resp_free(&r);
        assert_string_equal(jstr(page, "object"), "list");
        json_t *data = json_object_get(page, "data");
        for (size_t i = 0; i < json_array_size(data); i++) {
            assert_string_equal(jstr(json_array_get(data, i), "id"), ids[N - 1 - seen]);
            seen++;
        }
        if (json_array_size(data)) snprintf(after, sizeof after, "%s", jstr(page, "last_id"));
        bool more = json_is_true(json_object_get(page, "has_more"));
        json_decref(page);
        if (!more) break;
    }
    assert_int_equal(seen, N);

    struct resp r = get("/v1/fine_tuning/jobs?status=cancelled&limit=100");
    assert_int_equal(r.status, 200);
    json_t *page = json_of(&r);
    resp_free(&r);
    json_t *data = json_object_get(page, "data");
    assert_int_equal(json_array_size(data), 2);
    assert_string_equal(jstr(json_array_get(data, 0), "id"), ids[4]);
    assert_string_equal(jstr(json_array_get(data, 1), "id"), ids[1]);
    assert_string_equal(jstr(json_array_get(data, 0), "status"), "cancelled");
    json_decref(page);
    r = get("/v1/fine_tuning/jobs?status=queued");
    page = json_of(&r);
    resp_free(&r);
    assert_int_equal(json_array_size(json_object_get(page, "data")), N - 2);
    json_decref(page);

    r = get("/v1/fine_tuning/jobs?status=done");
    expect_error(&r, 400, "status", NULL);
    r = get("/v1/fine_tuning/jobs?limit=0");
    expect_error(&r, 400, "limit", NULL);
    r = get("/v1/fine_tuning/jobs?limit=101");
    expect_error(&r, 400, "limit", NULL);
    r = get("/v1/fine_tuning/jobs?after=nope");
    expect_error(&r, 400, "after", NULL);
    r = get("/v1/fine_tuning/jobs?after=ftjob-AAAAAAAAAAAAAAAAAAAAAAAA");
    expect_error(&r, 404, "after", NULL);
}

/* POSTs /v1/fine_tuning/jobs/<id>/<action>; returns the status and the job's status (or the
 * error message) in out. */
static int control(const char *id, const char *action, char *out, size_t cap) {
    char target[128];
    snprintf(target, sizeof target, "/v1/fine_tuning/jobs/%s/%s", id, action);
    struct resp r = request("POST", target, NULL, NULL);
    json_t *j = json_of(&r);
    int status = r.status;
    if (status == 200) snprintf(out, cap, "%s", jstr(j, "status"));
    else snprintf(out, cap, "%s", jstr(json_object_get(j, "error"), "message"));
    json_decref(j);
    resp_free(&r);
    return status;
}

static void test_controls(void **state) {
    (void)state;
    char a[LORAD_STORE_ID_MAX], b[LORAD_STORE_ID_MAX], out[512];
    create_simple(a);
    create_simple(b);
    int calls = atomic_load(&jobs_changed_calls);

    assert_int_equal(control(a, "pause", out, sizeof out), 200);
    assert_string_equal(out, "paused");
    assert_int_equal(control(a, "pause", out, sizeof out), 200); /* already paused: no change */
    assert_string_equal(out, "paused");
    assert_int_equal(atomic_load(&jobs_changed_calls), calls);
    assert_int_equal(control(a, "resume", out, sizeof out), 200);
    assert_string_equal(out, "queued");
    assert_int_equal(atomic_load(&jobs_changed_calls), calls + 1);
    assert_int_equal(control(a, "resume", out, sizeof out), 409);
    assert_non_null(strstr(out, "is queued"));

    /* A running job: pause is a request the worker sees; resume withdraws it. */
    json_t *claimed = NULL;
    assert_int_equal(lorad_store_job_claim_next(app.store, -1, &claimed, NULL, NULL), 1);
    assert_string_equal(jstr(claimed, "id"), a); /* a kept its place ahead of b */
    json_decref(claimed);
    assert_int_equal(control(a, "pause", out, sizeof out), 200);
    assert_string_equal(out, "running");
    enum lorad_job_control ctl;
    assert_int_equal(lorad_store_job_control(app.store, a, &ctl, NULL), 0);
    assert_int_equal(ctl, LORAD_JOB_CONTROL_PAUSE);
    assert_int_equal(control(a, "resume", out, sizeof out), 200);
    assert_int_equal(lorad_store_job_control(app.store, a, &ctl, NULL), 0);
    assert_int_equal(ctl, LORAD_JOB_CONTROL_NONE);
    calls = atomic_load(&jobs_changed_calls);
    assert_int_equal(control(a, "cancel", out, sizeof out), 200);
    assert_string_equal(out, "cancelling");
    assert_int_equal(atomic_load(&jobs_changed_calls), calls + 1);
    assert_int_equal(lorad_store_job_control(app.store, a, &ctl, NULL), 0);
    assert_int_equal(ctl, LORAD_JOB_CONTROL_CANCEL);
    assert_int_equal(control(a, "pause", out, sizeof out), 409);
    assert_non_null(strstr(out, "is cancelling"));
    struct lorad_store_transition t = {.to = LORAD_JOB_CANCELLED};
    assert_int_equal(lorad_store_job_transition(app.store, a, &t, NULL, NULL), 0);
    assert_int_equal(control(a, "cancel", out, sizeof out), 409);
    assert_non_null(strstr(out, "is cancelled"));
    assert_int_equal(control(a, "resume", out, sizeof out), 409);

    assert_int_equal(control(b, "cancel", out, sizeof out), 200);
    assert_string_equal(out, "cancelled");
    assert_int_equal(control("ftjob-AAAAAAAAAAAAAAAAAAAAAAAA", "cancel", out, sizeof out), 404);
    assert_int_equal(control("ftjob-short", "pause", out, sizeof out), 404);
}

/* Resuming a paused job puts it back in the queue, so it meets max_queued_jobs exactly as a new
 * job does: the same 429 queue_full (and the job stays paused), the same room once a place frees
 * up. A running job's pause request is withdrawn even when the queue is full (it does not enter
 * the queue), and an illegal resume is still 409. */
static void test_resume_queue_full(void **state) {
    (void)state;
    char paused[LORAD_STORE_ID_MAX], running[LORAD_STORE_ID_MAX], out[512];
    create_simple(running);
    json_t *claimed = NULL;
    assert_int_equal(lorad_store_job_claim_next(app.store, -1, &claimed, NULL, NULL), 1);
    json_decref(claimed);
    create_simple(paused);
    assert_int_equal(control(paused, "pause", out, sizeof out), 200);
    app.max_queued_jobs = 2;
    char queued[2][LORAD_STORE_ID_MAX];
    create_simple(queued[0]);
    create_simple(queued[1]);
    assert_int_equal(queued_count(), 2);

    char target[128];
    snprintf(target, sizeof target, "/v1/fine_tuning/jobs/%s/resume", paused);
    struct resp r = request("POST", target, NULL, NULL);
    assert_non_null(strstr(r.body, "\"type\":\"rate_limit_error\""));
    assert_non_null(strstr(r.body, "max_queued_jobs = 2"));
    expect_error(&r, 429, NULL, "queue_full");
    assert_int_equal(control(paused, "pause", out, sizeof out), 200);
    assert_string_equal(out, "paused"); /* still paused */
    assert_int_equal(queued_count(), 2);
    /* A new job meets the same refusal, word for word but for the job. */
    char *body = simple_body(NULL);
    struct resp c = post_job(body, NULL);
    expect_error(&c, 429, NULL, "queue_full");
    free(body);

    /* Not in the queue's way: withdrawing a running job's pause request; a queued job's resume. */
    assert_int_equal(control(running, "pause", out, sizeof out), 200);
    assert_int_equal(control(running, "resume", out, sizeof out), 200);
    assert_string_equal(out, "running");
    assert_int_equal(control(queued[0], "resume", out, sizeof out), 409);

    /* A place frees up: the resume goes through, and the queue is full again. */
    assert_int_equal(control(queued[1], "cancel", out, sizeof out), 200);
    assert_int_equal(control(paused, "resume", out, sizeof out), 200);
    assert_string_equal(out, "queued");
    assert_int_equal(queued_count(), 2);
    app.max_queued_jobs = 100;
}

/* Resumes racing creates for the last places: 6 paused jobs resumed while 6 jobs are created
 * against a queue with room for 3; exactly 3 of the 12 requests get in, the rest are 429. */
static void test_resume_limit_under_concurrency(void **state) {
    (void)state;
    enum { N = 6 };
    char paused[N][LORAD_STORE_ID_MAX], out[512];
    for (int i = 0; i < N; i++) {
        create_simple(paused[i]);
        assert_int_equal(control(paused[i], "pause", out, sizeof out), 200);
    }
    assert_int_equal(queued_count(), 0);
    app.max_queued_jobs = 3;
    char *body = simple_body(NULL);
    struct racer racers[2 * N];
    pthread_t th[2 * N];
    for (int i = 0; i < 2 * N; i++) {
        racers[i] = (struct racer){.body = i < N ? paused[i] : body};
        assert_int_equal(pthread_create(&th[i], NULL, i < N ? race_resume : race_create, &racers[i]), 0);
    }
    int ok = 0, full = 0;
    for (int i = 0; i < 2 * N; i++) {
        pthread_join(th[i], NULL);
        ok += racers[i].status == 200;
        full += racers[i].status == 429;
    }
    assert_int_equal(ok, 3);
    assert_int_equal(full, 2 * N - 3);
    assert_int_equal(queued_count(), 3);
    app.max_queued_jobs = 100;
    free(body);
}

/* ---- events ------------------------------------------------------------------------------- */

static void write_metrics(const char *job, int from, int to, int total) {
    struct lorad_metrics_writer *w = NULL;
    assert_int_equal(lorad_metrics_writer_new(app.store, job, 1000, &w, NULL), 0);
    for (int s = from; s <= to; s++) {
        struct lorad_metrics_row row = {
            .step = s, .total_steps = total, .epoch = s / 4.0, .train_loss = 4.0 - 0.125 * s,
            .train_mean_token_accuracy = s / 7.0, .lr = 1e-3, .grad_norm = 0.5 + s, .tokens_seen = 64 * s,
            .tokens_per_s = 100.5, .elapsed_s = 0.25 * s, .eta_s = 0.25 * (total - s),
            .valid_loss = s % 2 == 0 ? 3.5 - 0.1 * s : NAN, .valid_mean_token_accuracy = s % 2 == 0 ? 0.02 * s : NAN,
            /* a DPO step's figures on every third row; NULL elsewhere */
            .has_dpo = s % 3 == 0, .rewards_margin = 0.5 * s, .rewards_accuracy = 0.75,
            .rewards_chosen = 0.25 * s, .rewards_rejected = -0.25 * s,
            /* the whole validation set's on every fifth (a checkpoint step); NULL elsewhere */
            .has_full_valid = s % 5 == 0, .full_valid_loss = 3.25 - 0.1 * s, .full_valid_mean_token_accuracy = s / 30.0};
        assert_int_equal(lorad_metrics_writer_append(w, &row, NULL), 0);
    }
    assert_int_equal(lorad_metrics_writer_flush(w, NULL), 0);
    lorad_metrics_writer_free(w);
}

static void test_events_list(void **state) {
    (void)state;
    char id[LORAD_STORE_ID_MAX];
    create_simple(id);
    json_t *claimed = NULL;
    assert_int_equal(lorad_store_job_claim_next(app.store, -1, &claimed, NULL, NULL), 1);
    json_decref(claimed);
    write_metrics(id, 1, 3, 10); /* events: created, started, 3 metrics = 5 */
    char target[200];
    snprintf(target, sizeof target, "/v1/fine_tuning/jobs/%s/events?limit=100", id);
    struct resp r = get(target);
    assert_int_equal(r.status, 200);
    json_t *page = json_of(&r);
    resp_free(&r);
    json_t *data = json_object_get(page, "data");
    assert_int_equal(json_array_size(data), 5);
    json_t *newest = json_array_get(data, 0);
    assert_string_equal(jstr(newest, "object"), "fine_tuning.job.event");
    assert_string_equal(jstr(newest, "type"), "metrics");
    assert_string_equal(jstr(newest, "level"), "info");
    json_t *d = json_object_get(newest, "data");
    assert_int_equal(json_integer_value(json_object_get(d, "step")), 3);
    assert_int_equal(json_integer_value(json_object_get(d, "total_steps")), 10);
    assert_float_equal(json_real_value(json_object_get(d, "train_loss")), 4.0 - 0.375, 1e-12);
    assert_float_equal(json_real_value(json_object_get(d, "train_mean_token_accuracy")), 3 / 7.0, 0);
    assert_true(json_is_null(json_object_get(d, "valid_loss")));
    json_t *mid = json_array_get(data, 1); /* step 2 was evaluated */
    assert_float_equal(json_real_value(json_object_get(json_object_get(mid, "data"), "valid_loss")), 3.3, 1e-12);
    assert_float_equal(json_real_value(json_object_get(json_object_get(mid, "data"), "valid_mean_token_accuracy")),
                       0.04, 1e-12);
    assert_string_equal(jstr(json_array_get(data, 4), "type"), "status");
    char second[LORAD_STORE_ID_MAX];
    snprintf(second, sizeof second, "%s", jstr(json_array_get(data, 1), "id"));
    json_decref(page);

    snprintf(target, sizeof target, "/v1/fine_tuning/jobs/%s/events?limit=2&after=%s", id, second);
    r = get(target);
    assert_int_equal(r.status, 200);
    page = json_of(&r);
    resp_free(&r);
    assert_int_equal(json_array_size(json_object_get(page, "data")), 2);
    assert_true(json_is_true(json_object_get(page, "has_more")));
    assert_string_equal(jstr(json_array_get(json_object_get(page, "data"), 0), "type"), "metrics");
    json_decref(page);

    snprintf(target, sizeof target, "/v1/fine_tuning/jobs/%s/events?stream=maybe", id);
    r = get(target);
    expect_error(&r, 400, "stream", NULL);
    r = get("/v1/fine_tuning/jobs/ftjob-AAAAAAAAAAAAAAAAAAAAAAAA/events");
    expect_error(&r, 404, "fine_tuning_job_id", NULL);
    r = get("/v1/fine_tuning/jobs/ftjob-AAAAAAAAAAAAAAAAAAAAAAAA/events?stream=true");
    expect_error(&r, 404, "fine_tuning_job_id", NULL);
}

/* An SSE reader on its own thread: HTTP/1.0, so the stream is not chunk-encoded and ends when the
 * server closes it after [DONE]. */
struct stream_reader {
    char target[256];
    char last_event_id[32];
    pthread_mutex_t lock;
    char *buf;
    size_t len, cap;
    bool finished;
};

static void *stream_thread(void *p) {
    struct stream_reader *sr = p;
    int fd = connect_server();
    char req[512];
    int n = snprintf(req, sizeof req, "GET %s HTTP/1.0\r\nHost: x\r\n%s%s%s\r\n", sr->target,
                     sr->last_event_id[0] ? "Last-Event-ID: " : "", sr->last_event_id,
                     sr->last_event_id[0] ? "\r\n" : "");
    write_all(fd, req, (size_t)n);
    char chunk[4096];
    ssize_t r;
    while ((r = read(fd, chunk, sizeof chunk)) > 0) {
        pthread_mutex_lock(&sr->lock);
        if (sr->len + (size_t)r + 1 > sr->cap) {
            sr->cap = 2 * (sr->len + (size_t)r + 1);
            sr->buf = realloc(sr->buf, sr->cap);
        }
        memcpy(sr->buf + sr->len, chunk, (size_t)r);
        sr->len += (size_t)r;
        sr->buf[sr->len] = '\0';
        pthread_mutex_unlock(&sr->lock);
    }
    close(fd);
    pthread_mutex_lock(&sr->lock);
    sr->finished = true;
    pthread_mutex_unlock(&sr->lock);
    return NULL;
}

/* Waits (up to 10 s) until the stream's text contains needle. */
static void wait_for(struct stream_reader *sr, const char *needle) {
    for (int i = 0; i < 1000; i++) {
        pthread_mutex_lock(&sr->lock);
        bool found = sr->buf && strstr(sr->buf, needle);
        bool finished = sr->finished;
        pthread_mutex_unlock(&sr->lock);
        if (found) return;
        if (finished) break;
        usleep(10000);
    }
    fprintf(stderr, "stream never showed '%s': %s\n", needle, sr->buf ? sr->buf : "");
    fail();
}

/* Parses every "id: N\ndata: {...}\n\n" frame of an SSE body; checks ids are consecutive from
 * first_id, that each data's seq equals its id, and that [DONE] ends the stream. Returns the
 * number of events and the last event in *ret_last (new reference). */
static int check_frames(const char *text, int first_id, json_t **ret_last) {
    const char *body = strstr(text, "\r\n\r\n");
    assert_non_null(body);
    body += 4;
    int expect = first_id, count = 0;
    json_t *last = NULL;
    const char *p = body;
    for (;;) {
        if (!strncmp(p, ": keepalive\n\n", 13)) {
            p += 13;
            continue;
        }
        if (!strncmp(p, "data: [DONE]\n\n", 14)) {
            p += 14;
            break;
        }
        int id = 0, used = 0;
        if (sscanf(p, "id: %d\ndata: %n", &id, &used) != 1 || used == 0) {
            fprintf(stderr, "bad frame at: %.200s\n", p);
            fail();
        }
        assert_int_equal(id, expect++);
        const char *end = strstr(p + used, "\n\n");
        assert_non_null(end);
        json_error_t e;
        json_t *ev = json_loadb(p + used, (size_t)(end - (p + used)), 0, &e);
        assert_non_null(ev);
        assert_int_equal(json_integer_value(json_object_get(ev, "seq")), id);
        assert_string_equal(jstr(ev, "object"), "fine_tuning.job.event");
        json_decref(last);
        last = ev;
        count++;
        p = end + 2;
    }
    assert_int_equal(*p, '\0'); /* nothing after [DONE] */
    *ret_last = last;
    return count;
}

static void test_events_stream(void **state) {
    (void)state;
    char id[LORAD_STORE_ID_MAX];
    create_simple(id);
    json_t *claimed = NULL;
    assert_int_equal(lorad_store_job_claim_next(app.store, -1, &claimed, NULL, NULL), 1); /* seq 1 created, 2 started */
    json_decref(claimed);

    struct stream_reader sr = {.lock = PTHREAD_MUTEX_INITIALIZER};
    snprintf(sr.target, sizeof sr.target, "/v1/fine_tuning/jobs/%s/events?stream=true", id);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, stream_thread, &sr), 0);
    wait_for(&sr, "id: 2\n");
    /* A worker's writes while the stream is open: metrics batches, a message, a checkpoint-less
     * finish. Each appears once, in order. */
    write_metrics(id, 1, 4, 8);                                                       /* seq 3..6 */
    assert_int_equal(lorad_store_event_append(app.store, id, "warn", "message", "slow disk", NULL, NULL, NULL), 0); /* 7 */
    wait_for(&sr, "id: 7\n");
    write_metrics(id, 5, 8, 8);                                                       /* 8..11 */
    struct lorad_store_transition t = {.to = LORAD_JOB_SUCCEEDED, .fine_tuned_model = "ft:stories260K.bin:lorad:x"};
    assert_int_equal(lorad_store_job_transition(app.store, id, &t, NULL, NULL), 0);   /* 12 */
    pthread_join(th, NULL);

    assert_non_null(strcasestr(sr.buf, "Content-Type: text/event-stream"));
    json_t *last = NULL;
    assert_int_equal(check_frames(sr.buf, 1, &last), 12);
    assert_string_equal(jstr(last, "type"), "status");
    assert_string_equal(jstr(json_object_get(last, "data"), "to"), "succeeded");
    json_decref(last);
    /* A metrics frame carries the figures the writer stored. */
    const char *m = strstr(sr.buf, "id: 6\ndata: ");
    assert_non_null(m);
    json_t *ev = json_loadb(m + 12, (size_t)(strstr(m, "\n\n") - (m + 12)), 0, NULL);
    assert_non_null(ev);
    json_t *d = json_object_get(ev, "data");
    assert_int_equal(json_integer_value(json_object_get(d, "step")), 4);
    assert_int_equal(json_integer_value(json_object_get(d, "total_steps")), 8);
    assert_float_equal(json_real_value(json_object_get(d, "train_loss")), 3.5, 1e-12);
    assert_float_equal(json_real_value(json_object_get(d, "valid_loss")), 3.1, 1e-12);
    assert_float_equal(json_real_value(json_object_get(d, "train_mean_token_accuracy")), 4 / 7.0, 0);
    assert_float_equal(json_real_value(json_object_get(d, "valid_mean_token_accuracy")), 0.08, 1e-12);
    json_decref(ev);
    free(sr.buf);

    /* Resume after event 9: 10, 11, 12, then [DONE] at once (the job is over). */
    struct stream_reader again = {.lock = PTHREAD_MUTEX_INITIALIZER};
    snprintf(again.target, sizeof again.target, "/v1/fine_tuning/jobs/%s/events?stream=true", id);
    snprintf(again.last_event_id, sizeof again.last_event_id, "9");
    assert_int_equal(pthread_create(&th, NULL, stream_thread, &again), 0);
    pthread_join(th, NULL);
    assert_int_equal(check_frames(again.buf, 10, &last), 3);
    json_decref(last);
    assert_null(strstr(again.buf, "id: 9\n"));
    free(again.buf);

    snprintf(sr.target, sizeof sr.target, "/v1/fine_tuning/jobs/%s/events?stream=true&after=ftevent-AAAAAAAAAAAAAAAAAAAAAAAA", id);
    struct resp r = get(sr.target);
    expect_error(&r, 400, "after", NULL);
}

/* ---- metrics ------------------------------------------------------------------------------ */

static void test_metrics(void **state) {
    (void)state;
    char id[LORAD_STORE_ID_MAX];
    create_simple(id);
    char target[200];
    snprintf(target, sizeof target, "/v1/fine_tuning/jobs/%s/metrics", id);
    struct resp r = get(target);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "{\"object\":\"list\",\"data\":[],\"has_more\":false}");
    resp_free(&r);

    json_t *claimed = NULL;
    assert_int_equal(lorad_store_job_claim_next(app.store, -1, &claimed, NULL, NULL), 1);
    json_decref(claimed);
    enum { STEPS = 9 };
    write_metrics(id, 1, STEPS, STEPS);
    r = get(target);
    assert_int_equal(r.status, 200);
    assert_non_null(strcasestr(r.head, "Content-Type: application/json"));
    json_t *list = json_of(&r);
    resp_free(&r);
    assert_string_equal(jstr(list, "object"), "list");
    json_t *data = json_object_get(list, "data");
    assert_int_equal(json_array_size(data), STEPS);
    for (int s = 1; s <= STEPS; s++) {
        json_t *row = json_array_get(data, (size_t)s - 1);
        assert_int_equal(json_integer_value(json_object_get(row, "step")), s);
        assert_int_equal(json_integer_value(json_object_get(row, "tokens_seen")), 64 * s);
        assert_float_equal(json_real_value(json_object_get(row, "train_loss")), 4.0 - 0.125 * s, 0);
        assert_float_equal(json_real_value(json_object_get(row, "grad_norm")), 0.5 + s, 0);
        assert_float_equal(json_real_value(json_object_get(row, "eta_s")), 0.25 * (STEPS - s), 0);
        assert_int_equal(json_is_null(json_object_get(row, "valid_loss")), s % 2 != 0);
        assert_int_equal(json_is_null(json_object_get(row, "rewards_margin")), s % 3 != 0);
        assert_int_equal(json_is_null(json_object_get(row, "rewards_rejected")), s % 3 != 0);
        if (s % 3 == 0) assert_true(json_real_value(json_object_get(row, "rewards_rejected")) == -0.25 * s);
        assert_int_equal(json_is_null(json_object_get(row, "full_valid_loss")), s % 5 != 0);
        assert_int_equal(json_is_null(json_object_get(row, "full_valid_mean_token_accuracy")), s % 5 != 0);
        if (s % 5 == 0) {
            assert_true(json_real_value(json_object_get(row, "full_valid_loss")) == 3.25 - 0.1 * s);
            assert_true(json_real_value(json_object_get(row, "full_valid_mean_token_accuracy")) == s / 30.0);
        }
        assert_int_equal(json_object_size(row), 19);
    }
    json_decref(list);

    /* The metrics events say the whole validation set's loss where a step has it (OpenAI's
     * "full validation loss=" wording), and their data carries it; other steps' do not. */
    snprintf(target, sizeof target, "/v1/fine_tuning/jobs/%s/events?limit=100", id);
    r = get(target);
    assert_int_equal(r.status, 200);
    json_t *events = json_of(&r);
    resp_free(&r);
    int seen_full = 0;
    size_t ei;
    json_t *ev;
    json_array_foreach(json_object_get(events, "data"), ei, ev) {
        if (strcmp(jstr(ev, "type"), "metrics") != 0) continue;
        json_t *d = json_object_get(ev, "data");
        int s = (int)json_integer_value(json_object_get(d, "step"));
        const char *full = strstr(jstr(ev, "message"), ", full validation loss=");
        assert_int_equal(full != NULL, s % 5 == 0);
        assert_int_equal(json_object_get(d, "full_valid_loss") != NULL, s % 5 == 0);
        if (s % 5) continue;
        char want[64];
        snprintf(want, sizeof want, ", full validation loss=%.4f", 3.25 - 0.1 * s);
        assert_string_equal(full, want);
        assert_true(json_real_value(json_object_get(d, "full_valid_loss")) == 3.25 - 0.1 * s);
        assert_true(json_real_value(json_object_get(d, "full_valid_mean_token_accuracy")) == s / 30.0);
        seen_full++;
    }
    assert_int_equal(seen_full, 1); /* step 5 of 9 */
    json_decref(events);

    snprintf(target, sizeof target, "/v1/fine_tuning/jobs/%s/metrics?format=csv", id);
    r = get(target);
    assert_int_equal(r.status, 200);
    assert_non_null(strcasestr(r.head, "Content-Type: text/csv"));
    const char *header = "step,total_steps,epoch,train_loss,train_mean_token_accuracy,lr,grad_norm,tokens_seen,"
                         "tokens_per_s,elapsed_s,eta_s,valid_loss,valid_mean_token_accuracy,rewards_margin,"
                         "rewards_accuracy,rewards_chosen,rewards_rejected,full_valid_loss,"
                         "full_valid_mean_token_accuracy\n";
    assert_memory_equal(r.body, header, strlen(header));
    /* Each line: 19 cells; numbers read back exactly; nulls are empty cells. */
    char *save = NULL, *line = strtok_r(r.body + strlen(header), "\n", &save);
    for (int s = 1; s <= STEPS; s++, line = strtok_r(NULL, "\n", &save)) {
        assert_non_null(line);
        char *cells[19];
        int nc = 0;
        for (char *c = line;; c++) {
            cells[nc++] = c;
            c = strchr(c, ',');
            if (!c) break;
            *c = '\0';
            assert_true(nc < 19);
        }
        assert_int_equal(nc, 19);
        assert_int_equal(atoi(cells[0]), s);
        assert_int_equal(atoi(cells[1]), STEPS);
        assert_true(strtod(cells[2], NULL) == s / 4.0);
        assert_true(strtod(cells[3], NULL) == 4.0 - 0.125 * s);
        assert_true(strtod(cells[4], NULL) == s / 7.0); /* needs all 17 digits */
        assert_true(strtod(cells[5], NULL) == 1e-3);
        assert_int_equal(atoll(cells[7]), 64 * s);
        assert_true(strtod(cells[8], NULL) == 100.5);
        if (s % 2) {
            assert_string_equal(cells[11], "");
            assert_string_equal(cells[12], "");
        } else {
            assert_true(strtod(cells[11], NULL) == 3.5 - 0.1 * s);
            assert_true(strtod(cells[12], NULL) == 0.02 * s);
        }
        if (s % 3) {
            assert_string_equal(cells[13], "");
            assert_string_equal(cells[16], "");
        } else {
            assert_true(strtod(cells[13], NULL) == 0.5 * s);
            assert_true(strtod(cells[14], NULL) == 0.75);
            assert_true(strtod(cells[16], NULL) == -0.25 * s);
        }
        if (s % 5) {
            assert_string_equal(cells[17], "");
            assert_string_equal(cells[18], "");
        } else {
            assert_true(strtod(cells[17], NULL) == 3.25 - 0.1 * s);
            assert_true(strtod(cells[18], NULL) == s / 30.0); /* needs all 17 digits */
        }
    }
    assert_null(line);
    resp_free(&r);

    /* Pages: after_step and limit walk the rows; has_more is true until the last page. */
    int64_t after = -1;
    int seen = 0, pages = 0;
    for (bool more = true; more; pages++) {
        if (after < 0) snprintf(target, sizeof target, "/v1/fine_tuning/jobs/%s/metrics?limit=4", id);
        else snprintf(target, sizeof target, "/v1/fine_tuning/jobs/%s/metrics?limit=4&after_step=%lld", id,
                      (long long)after);
        r = get(target);
        assert_int_equal(r.status, 200);
        json_t *pg = json_of(&r);
        resp_free(&r);
        json_t *rows = json_object_get(pg, "data");
        more = json_is_true(json_object_get(pg, "has_more"));
        assert_int_equal(json_array_size(rows), more ? 4 : STEPS - seen);
        for (size_t k = 0; k < json_array_size(rows); k++)
            assert_int_equal(json_integer_value(json_object_get(json_array_get(rows, k), "step")), ++seen);
        after = seen;
        json_decref(pg);
    }
    assert_int_equal(seen, STEPS);
    assert_int_equal(pages, 3);
    snprintf(target, sizeof target, "/v1/fine_tuning/jobs/%s/metrics?format=csv&after_step=7", id);
    r = get(target);
    assert_int_equal(r.status, 200);
    assert_memory_equal(r.body, header, strlen(header));
    assert_true(strncmp(r.body + strlen(header), "8,", 2) == 0);
    assert_non_null(strstr(r.body + strlen(header), "\n9,"));
    resp_free(&r);
    const char *bad_pages[][2] = {{"limit=0", "limit"}, {"limit=100001", "limit"}, {"limit=4x", "limit"},
                                  {"after_step=-1", "after_step"}, {"after_step=1e3", "after_step"},
                                  {"after_step=99999999999999999999", "after_step"}};
    for (size_t k = 0; k < sizeof bad_pages / sizeof bad_pages[0]; k++) {
        snprintf(target, sizeof target, "/v1/fine_tuning/jobs/%s/metrics?%s", id, bad_pages[k][0]);
        r = get(target);
        expect_error(&r, 400, bad_pages[k][1], "invalid_value");
    }

    snprintf(target, sizeof target, "/v1/fine_tuning/jobs/%s/metrics?format=xml", id);
    r = get(target);
    expect_error(&r, 400, "format", NULL);
    r = get("/v1/fine_tuning/jobs/ftjob-AAAAAAAAAAAAAAAAAAAAAAAA/metrics?format=csv");
    expect_error(&r, 404, "fine_tuning_job_id", NULL);
}

/* ---- checkpoints -------------------------------------------------------------------------- */

/* Writes a real checkpoint directory with the engine's adapter writers (PEFT pair, GGUF, tar). */
static void write_checkpoint_dir(const char *dir, float seed) {
    struct lorad_llama_config cfg;
    lorad_llama_config_defaults(&cfg);
    cfg.dim = 16; cfg.hidden_dim = 32; cfg.n_layers = 1; cfg.n_heads = 2; cfg.n_kv_heads = 2;
    cfg.head_dim = 8; cfg.vocab_size = 32; cfg.max_seq_len = 16;
    struct lorad_adapter_meta meta = {.r = 2, .alpha = 4, .n_targets = 1};
    strcpy(meta.targets[0], "q_proj");
    strcpy(meta.base_model, "stories260K.bin");
    float a[2 * 16], b[16 * 2];
    for (int i = 0; i < 32; i++) a[i] = seed + 0.01f * (float)i, b[i] = seed - 0.02f * (float)i;
    struct lorad_adapter_tensor t[2] = {
        {.name = "model.layers.0.self_attn.q_proj.lora_A.weight", .data = a, .rows = 2, .cols = 16},
        {.name = "model.layers.0.self_attn.q_proj.lora_B.weight", .data = b, .rows = 16, .cols = 2},
    };
    struct lorad_error err = {0};
    assert_int_equal(lorad_adapter_write_peft(dir, &meta, t, 2, &err), 0);
    char *gguf = test_path(dir, "adapter.gguf"), *tar = test_path(dir, "adapter.tar");
    assert_int_equal(lorad_adapter_write_gguf(gguf, &meta, t, 2, &cfg, &err), 0);
    const char *names[] = {"adapter_model.safetensors", "adapter_config.json"};
    assert_int_equal(lorad_tar_write(tar, dir, names, 2, "adapter", &err), 0);
    free(gguf);
    free(tar);
}

static void mkdirs(const char *path) {
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s", path);
    for (char *p = tmp + 1; *p; p++)
        if (*p == '/') {
            *p = '\0';
            mkdir(tmp, 0755);
            *p = '/';
        }
    mkdir(tmp, 0755);
}

static void test_checkpoints(void **state) {
    (void)state;
    char id[LORAD_STORE_ID_MAX], other[LORAD_STORE_ID_MAX];
    create_simple(id);
    create_simple(other);
    json_t *claimed = NULL;
    assert_int_equal(lorad_store_job_claim_next(app.store, -1, &claimed, NULL, NULL), 1);
    assert_string_equal(jstr(claimed, "id"), id);
    json_decref(claimed);
    write_metrics(id, 1, 10, 10);
    /* Step 5 recorded relative to the state directory, step 10 as an absolute path. */
    char rel5[128], abs10[4096];
    snprintf(rel5, sizeof rel5, "jobs/%s/checkpoints/step-5", id);
    snprintf(abs10, sizeof abs10, "%s/%s/checkpoints/step-10", jobs_dir, id);
    char *abs5 = test_path(state_dir, rel5);
    mkdirs(abs5);
    mkdirs(abs10);
    write_checkpoint_dir(abs5, 0.5f);
    write_checkpoint_dir(abs10, 1.5f);
    struct lorad_metrics_writer *w = NULL;
    assert_int_equal(lorad_metrics_writer_new(app.store, id, 0, &w, NULL), 0);
    char ck5[LORAD_STORE_ID_MAX], ck10[LORAD_STORE_ID_MAX];
    assert_int_equal(lorad_metrics_writer_checkpoint(w, 5, rel5, NULL, 0, ck5, NULL), 0);
    assert_int_equal(lorad_metrics_writer_checkpoint(w, 10, abs10, NULL, 0, ck10, NULL), 0);
    lorad_metrics_writer_free(w);

    char target[300];
    snprintf(target, sizeof target, "/v1/fine_tuning/jobs/%s/checkpoints", id);
    struct resp r = get(target);
    assert_int_equal(r.status, 200);
    json_t *page = json_of(&r);
    resp_free(&r);
    json_t *data = json_object_get(page, "data");
    assert_int_equal(json_array_size(data), 2);
    assert_string_equal(jstr(json_array_get(data, 0), "id"), ck10);
    assert_int_equal(json_integer_value(json_object_get(json_array_get(data, 0), "step_number")), 10);
    assert_string_equal(jstr(json_array_get(data, 1), "id"), ck5);
    assert_string_equal(jstr(json_array_get(data, 1), "fine_tuning_job_id"), id);
    assert_float_equal(json_real_value(json_object_get(json_object_get(json_array_get(data, 1), "metrics"), "train_loss")),
                       4.0 - 0.125 * 5, 0);
    /* OpenAI's seven metrics keys; step 5 has the whole validation set's figures only (valid_*
     * null), step 10 both */
    for (int i = 0; i < 2; i++) {
        json_t *m = json_object_get(json_array_get(data, (size_t)i), "metrics");
        int step = i ? 5 : 10;
        assert_int_equal(json_object_size(m), 7);
        assert_int_equal(json_integer_value(json_object_get(m, "step")), step);
        assert_true(json_real_value(json_object_get(m, "train_mean_token_accuracy")) == step / 7.0);
        assert_true(json_real_value(json_object_get(m, "full_valid_loss")) == 3.25 - 0.1 * step);
        assert_true(json_real_value(json_object_get(m, "full_valid_mean_token_accuracy")) == step / 30.0);
        assert_int_equal(json_is_null(json_object_get(m, "valid_loss")), step == 5);
        assert_int_equal(json_is_null(json_object_get(m, "valid_mean_token_accuracy")), step == 5);
    }
    json_decref(page);
    snprintf(target, sizeof target, "/v1/fine_tuning/jobs/%s/checkpoints?limit=1", id);
    r = get(target);
    page = json_of(&r);
    resp_free(&r);
    assert_int_equal(json_array_size(json_object_get(page, "data")), 1);
    assert_true(json_is_true(json_object_get(page, "has_more")));
    json_decref(page);
    snprintf(target, sizeof target, "/v1/fine_tuning/jobs/%s/checkpoints?after=%s", id, ck10);
    r = get(target);
    page = json_of(&r);
    resp_free(&r);
    assert_int_equal(json_array_size(json_object_get(page, "data")), 1);
    assert_string_equal(jstr(json_array_get(json_object_get(page, "data"), 0), "id"), ck5);
    json_decref(page);

    struct {
        const char *name, *type;
    } files[] = {
        {"adapter_model.safetensors", "application/octet-stream"},
        {"adapter_config.json", "application/json"},
        {"adapter.tar", "application/x-tar"},
        {"adapter.gguf", "application/octet-stream"},
    };
    for (int c = 0; c < 2; c++) {
        const char *ck = c ? ck10 : ck5;
        const char *dir = c ? abs10 : abs5;
        int step = c ? 10 : 5;
        for (size_t i = 0; i < 4; i++) {
            char *path = test_path(dir, files[i].name);
            size_t len = 0;
            char *want = test_read_file(path, &len);
            free(path);
            assert_true(len > 20);
            snprintf(target, sizeof target, "/v1/fine_tuning/jobs/%s/checkpoints/%s/%s", id, ck, files[i].name);
            r = get(target);
            assert_int_equal(r.status, 200);
            assert_int_equal(r.body_len, len);
            assert_memory_equal(r.body, want, len);
            char line[256];
            snprintf(line, sizeof line, "Content-Type: %s", files[i].type);
            assert_non_null(strcasestr(r.head, line));
            snprintf(line, sizeof line, "filename=\"%s-step-%d-%s\"", id, step, files[i].name);
            assert_non_null(strstr(r.head, line));
            resp_free(&r);
            /* Range: bytes 10..19 -> 206 with those bytes. */
            r = request("GET", target, "Range: bytes=10-19\r\n", NULL);
            assert_int_equal(r.status, 206);
            assert_int_equal(r.body_len, 10);
            assert_memory_equal(r.body, want + 10, 10);
            snprintf(line, sizeof line, "Content-Range: bytes 10-19/%zu", len);
            assert_non_null(strcasestr(r.head, line));
            resp_free(&r);
            free(want);
        }
    }
    /* Another job's view of this checkpoint, an unknown one, a malformed one. */
    snprintf(target, sizeof target, "/v1/fine_tuning/jobs/%s/checkpoints/%s/adapter.tar", other, ck5);
    r = get(target);
    expect_error(&r, 404, "checkpoint_id", NULL);
    snprintf(target, sizeof target, "/v1/fine_tuning/jobs/%s/checkpoints/ftckpt-AAAAAAAAAAAAAAAAAAAAAAAA/adapter.tar", id);
    r = get(target);
    expect_error(&r, 404, "checkpoint_id", NULL);
    snprintf(target, sizeof target, "/v1/fine_tuning/jobs/%s/checkpoints/ftckpt-....x/adapter.tar", id);
    r = get(target);
    expect_error(&r, 404, "checkpoint_id", NULL);
    /* A checkpoint pruned from disk (keep_checkpoints) keeps its row but its files are gone. */
    test_rmtree(abs5);
    snprintf(target, sizeof target, "/v1/fine_tuning/jobs/%s/checkpoints/%s/adapter.gguf", id, ck5);
    r = get(target);
    expect_error(&r, 404, "checkpoint_id", NULL);
    r = get("/v1/fine_tuning/jobs/ftjob-AAAAAAAAAAAAAAAAAAAAAAAA/checkpoints");
    expect_error(&r, 404, "fine_tuning_job_id", NULL);
    free(abs5);
}

/* ---- an independent client ---------------------------------------------------------------- */

/* Runs a shell command line and returns its whole stdout (malloc'd). */
static char *run_capture(const char *cmd) {
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    size_t cap = 1 << 16, len = 0;
    char *out = malloc(cap);
    assert_non_null(out);
    size_t n;
    while ((n = fread(out + len, 1, cap - 1 - len, p)) > 0) {
        len += n;
        if (len + 1 == cap) {
            cap *= 2;
            out = realloc(out, cap);
            assert_non_null(out);
        }
    }
    out[len] = '\0';
    assert_int_equal(pclose(p), 0);
    return out;
}

/* curl (HTTP/1.1, so the stream is chunk-encoded) as the client: create with an idempotency key,
 * stream a finished job's events, resume with Last-Event-ID, download a checkpoint file range. */
static void test_with_curl(void **state) {
    (void)state;
    unsigned port = lorad_api_server_port(srv);
    char cmd[1024], body[256];
    snprintf(body, sizeof body, "{\\\"model\\\": \\\"stories260K.bin\\\", \\\"training_file\\\": \\\"%s\\\"}", file_ok);
    snprintf(cmd, sizeof cmd,
             "curl -sS --max-time 20 -H 'Content-Type: application/json' -H 'Idempotency-Key: curl-1' "
             "-d \"%s\" http://127.0.0.1:%u/v1/fine_tuning/jobs", body, port);
    char *out = run_capture(cmd);
    json_t *job = json_loads(out, 0, NULL);
    if (!job) fprintf(stderr, "curl said: %s\n", out);
    assert_non_null(job);
    free(out);
    char id[LORAD_STORE_ID_MAX];
    snprintf(id, sizeof id, "%s", jstr(job, "id"));
    json_decref(job);
    out = run_capture(cmd); /* the replay */
    job = json_loads(out, 0, NULL);
    assert_string_equal(jstr(job, "id"), id);
    json_decref(job);
    free(out);
    assert_int_equal(job_count(), 1);

    json_t *claimed = NULL;
    assert_int_equal(lorad_store_job_claim_next(app.store, -1, &claimed, NULL, NULL), 1);
    json_decref(claimed);
    write_metrics(id, 1, 3, 3); /* seq 3..5 */
    char *dir = NULL;
    assert_true(asprintf(&dir, "%s/%s/checkpoints/step-3", jobs_dir, id) > 0);
    mkdirs(dir);
    write_checkpoint_dir(dir, 2.5f);
    struct lorad_metrics_writer *w = NULL;
    assert_int_equal(lorad_metrics_writer_new(app.store, id, 0, &w, NULL), 0);
    char ck[LORAD_STORE_ID_MAX];
    assert_int_equal(lorad_metrics_writer_checkpoint(w, 3, dir, NULL, 0, ck, NULL), 0); /* seq 6 */
    lorad_metrics_writer_free(w);
    struct lorad_store_transition t = {.to = LORAD_JOB_FAILED, .error_code = "nan_loss",
                                       .error_message = "loss is NaN at step 3", .error_param = NULL};
    assert_int_equal(lorad_store_job_transition(app.store, id, &t, NULL, NULL), 0); /* seq 7 */

    snprintf(cmd, sizeof cmd, "curl -sSN --max-time 20 'http://127.0.0.1:%u/v1/fine_tuning/jobs/%s/events?stream=true'",
             port, id);
    out = run_capture(cmd);
    /* check_frames wants a head; curl prints only the body. */
    char *framed = NULL;
    assert_true(asprintf(&framed, "HTTP/1.1 200 OK\r\n\r\n%s", out) > 0);
    json_t *last = NULL;
    assert_int_equal(check_frames(framed, 1, &last), 7);
    assert_string_equal(jstr(last, "level"), "error");
    assert_string_equal(jstr(json_object_get(last, "data"), "to"), "failed");
    json_decref(last);
    free(framed);
    free(out);
    snprintf(cmd, sizeof cmd,
             "curl -sSN --max-time 20 -H 'Last-Event-ID: 5' 'http://127.0.0.1:%u/v1/fine_tuning/jobs/%s/events?stream=true'",
             port, id);
    out = run_capture(cmd);
    assert_true(asprintf(&framed, "HTTP/1.1 200 OK\r\n\r\n%s", out) > 0);
    assert_int_equal(check_frames(framed, 6, &last), 2);
    json_decref(last);
    free(framed);
    free(out);

    /* The failed job carries its error. */
    snprintf(cmd, sizeof cmd, "curl -sS --max-time 20 http://127.0.0.1:%u/v1/fine_tuning/jobs/%s", port, id);
    out = run_capture(cmd);
    job = json_loads(out, 0, NULL);
    assert_non_null(job);
    json_t *e = json_object_get(job, "error");
    assert_string_equal(jstr(e, "code"), "nan_loss");
    assert_string_equal(jstr(e, "message"), "loss is NaN at step 3");
    assert_true(json_is_null(json_object_get(e, "param")));
    json_decref(job);
    free(out);

    /* A range of the GGUF, written by curl to a file, equals those bytes on disk. */
    char *want_path = test_path(dir, "adapter.gguf"), *got_path = test_path(state_dir, "dl.part");
    size_t len = 0;
    char *want = test_read_file(want_path, &len);
    assert_true(len > 300);
    snprintf(cmd, sizeof cmd,
             "curl -sS --max-time 20 -r 100-299 -o '%s' -w '%%{http_code}' "
             "http://127.0.0.1:%u/v1/fine_tuning/jobs/%s/checkpoints/%s/adapter.gguf",
             got_path, port, id, ck);
    out = run_capture(cmd);
    assert_string_equal(out, "206");
    free(out);
    size_t got_len = 0;
    char *got = test_read_file(got_path, &got_len);
    assert_int_equal(got_len, 200);
    assert_memory_equal(got, want + 100, 200);
    free(got);
    free(want);
    free(want_path);
    free(got_path);
    free(dir);
}

/* ---- resource limits ---------------------------------------------------------------------- */

/* The operator's config is the ceiling: a job may ask for fewer threads than max_threads_per_job,
 * never more; and a job whose memory estimate exceeds memory_limit is refused at creation with
 * 400 naming the field to change and the bytes involved, before anything is stored. The estimate
 * itself is stored and shown as memory_estimate_bytes: at least the base weights (the model file
 * holds float32 weights, read whole), and larger for a larger batch. */
static void test_create_resource_limits(void **state) {
    (void)state;
    app.max_threads_per_job = 2;
    char *b = simple_body("\"hyperparameters\": {\"threads\": 3}");
    struct resp r = post_job(b, NULL);
    free(b);
    expect_error(&r, 400, "hyperparameters.threads", "invalid_value");
    assert_int_equal(job_count(), 0);
    b = simple_body("\"hyperparameters\": {\"threads\": 2, \"batch_size\": 1}");
    json_t *small = create_ok(b, NULL);
    free(b);
    b = simple_body("\"hyperparameters\": {\"threads\": 1, \"batch_size\": 16}");
    json_t *big = create_ok(b, NULL);
    free(b);
    json_t *small_est = json_object_get(small, "memory_estimate_bytes");
    json_t *big_est = json_object_get(big, "memory_estimate_bytes");
    assert_true(json_is_integer(small_est) && json_is_integer(big_est));
    struct stat st;
    char *model = test_path(models_dir, "stories260K.bin");
    assert_int_equal(stat(model, &st), 0);
    free(model);
    json_int_t small_bytes = json_integer_value(small_est), big_bytes = json_integer_value(big_est);
    assert_true(small_bytes >= st.st_size);
    assert_true(small_bytes < (json_int_t)1 << 30);
    assert_true(big_bytes > small_bytes);
    json_decref(small);
    json_decref(big);

    /* A limit between the two: the small job fits, the big one is refused for its batch. */
    app.memory_limit = small_bytes + (big_bytes - small_bytes) / 2;
    int64_t before = job_count();
    b = simple_body("\"hyperparameters\": {\"threads\": 2, \"batch_size\": 1}");
    json_decref(create_ok(b, NULL));
    free(b);
    b = simple_body("\"hyperparameters\": {\"threads\": 1, \"batch_size\": 16}");
    r = post_job(b, NULL);
    free(b);
    char limit_text[64], big_text[64];
    snprintf(limit_text, sizeof limit_text, "%lld bytes", (long long)app.memory_limit);
    snprintf(big_text, sizeof big_text, "%lld bytes", (long long)big_bytes);
    if (!strstr(r.body, limit_text) || !strstr(r.body, big_text))
        fprintf(stderr, "want '%s' and '%s' in: %s\n", limit_text, big_text, r.body);
    assert_non_null(strstr(r.body, limit_text));
    assert_non_null(strstr(r.body, big_text));
    expect_error(&r, 400, "hyperparameters.batch_size", "memory_limit_exceeded");
    assert_int_equal(job_count(), before + 1);

    /* A limit below the model itself names the model, whatever the batch. */
    app.memory_limit = st.st_size / 2;
    b = simple_body("\"hyperparameters\": {\"batch_size\": 1}");
    r = post_job(b, NULL);
    free(b);
    expect_error(&r, 400, "model", "memory_limit_exceeded");
    assert_int_equal(job_count(), before + 1);
    app.memory_limit = 0;
    app.max_threads_per_job = 1;
    app.memory_limit = 0;
}

/* ---- main --------------------------------------------------------------------------------- */

static int start_server(void **state) {
    (void)state;
    assert_int_equal(lorad_api_handlers_install(), 0);
    struct lorad_api_server_options o = {.bind_address = "127.0.0.1", .port = 0, .listen_fd = -1,
                                         .max_connections = 16, .connection_timeout_s = 10,
                                         .max_request_body = 1 << 16, .max_upload_bytes = 1 << 20,
                                         .max_json_depth = 32, .app = &app, .sse_poll_ms = 10,
                                         .sse_keepalive_ms = 40};
    assert_int_equal(lorad_api_server_start(&o, &srv), 0);
    return 0;
}

/* lora.init_adapter through the API names a succeeded job's fine_tuned_model, never a path: a
 * running or unknown job's name, or a path, is 400 naming the field; the succeeded job's name is
 * accepted and stored as given (the worker maps it to that job's adapter directory). */
static void test_init_adapter(void **state) {
    (void)state;
    char id[LORAD_STORE_ID_MAX], name[256], extra[400];
    create_simple(id);
    assert_int_equal(lorad_store_fine_tuned_model_name("stories260K.bin", NULL, id, name, sizeof name), 0);
    snprintf(extra, sizeof extra, "\"lora\": {\"init_adapter\": \"%s\"}", name);
    char *b = simple_body(extra);
    struct resp r = post_job(b, NULL);
    expect_error(&r, 400, "lora.init_adapter", "model_not_found"); /* queued, not succeeded */
    json_t *claimed = NULL;
    assert_int_equal(lorad_store_job_claim_next(app.store, -1, &claimed, NULL, NULL), 1);
    json_decref(claimed);
    struct lorad_store_transition t = {.to = LORAD_JOB_SUCCEEDED, .fine_tuned_model = name};
    assert_int_equal(lorad_store_job_transition(app.store, id, &t, NULL, NULL), 0);
    char new_id[LORAD_STORE_ID_MAX];
    json_t *job = create_ok(b, new_id);
    assert_string_equal(jstr(json_object_get(job, "lora"), "init_adapter"), name);
    json_decref(job);
    free(b);
    char dir[4096], base[256], want[4096];
    assert_int_equal(lorad_store_fine_tuned_adapter_dir(app.store, jobs_dir, name, dir, sizeof dir, base, sizeof base, NULL), 0);
    snprintf(want, sizeof want, "%s/%s/adapter", jobs_dir, id);
    assert_string_equal(dir, want);
    assert_string_equal(base, "stories260K.bin");
    /* The new job has not succeeded: its name is no model yet. */
    char forged[256];
    assert_int_equal(lorad_store_fine_tuned_model_name("stories260K.bin", NULL, new_id, forged, sizeof forged), 0);
    assert_int_equal(lorad_store_fine_tuned_adapter_dir(app.store, jobs_dir, forged, dir, sizeof dir, base, sizeof base, NULL), -ENOENT);
}

static int stop_server(void **state) {
    (void)state;
    lorad_api_server_stop(srv);
    return 0;
}

#define T(f) cmocka_unit_test_setup_teardown(f, setup_state, teardown_state)

int main(void) {
    const struct CMUnitTest tests[] = {
        T(test_create_shape),     T(test_create_errors), T(test_idempotency), T(test_queue_full_and_stopping),
        T(test_queue_limit_under_concurrency), T(test_resume_queue_full), T(test_resume_limit_under_concurrency),
        T(test_list_and_filter),  T(test_controls),      T(test_events_list), T(test_events_stream),
        T(test_metrics),          T(test_checkpoints),   T(test_with_curl),     T(test_init_adapter),
        T(test_create_resource_limits),
    };
    return cmocka_run_group_tests(tests, start_server, stop_server);
}
