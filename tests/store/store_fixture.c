#include "store_fixture.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void open_store(struct fx *fx, unsigned flags) {
    struct lorad_store_options opts = {.flags = flags};
    struct lorad_error err = {0};
    int r = lorad_store_open(fx->db, &opts, &fx->store, &err);
    if (r < 0) fprintf(stderr, "open: %s\n", err.message);
    assert_int_equal(r, 0);
}

void fx_open(struct fx *fx, unsigned flags) {
    fx->dir = test_mkdtemp("store");
    fx->db = test_path(fx->dir, "lorad.db");
    open_store(fx, flags);
}

void fx_reopen(struct fx *fx, unsigned flags) {
    lorad_store_close(fx->store);
    fx->store = NULL;
    open_store(fx, flags);
}

void fx_close(struct fx *fx) {
    lorad_store_close(fx->store);
    test_rmtree(fx->dir);
    free(fx->db);
    free(fx->dir);
    memset(fx, 0, sizeof *fx);
}

void fx_file(struct lorad_store *s, char out_id[LORAD_STORE_ID_MAX]) {
    assert_int_equal(lorad_store_new_id("file-", out_id), 0);
    char path[64];
    snprintf(path, sizeof path, "files/%s.jsonl", out_id);
    struct lorad_store_file_new f = {
        .id = out_id, .filename = "train.jsonl", .purpose = "fine-tune", .bytes = 123,
        .sha256 = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        .line_count = 3, .format = "chat", .status = "processed", .path = path};
    struct lorad_error err = {0};
    int r = lorad_store_file_create(s, &f, NULL, &err);
    if (r < 0) fprintf(stderr, "file_create: %s\n", err.message);
    assert_int_equal(r, 0);
}

void fx_job(struct lorad_store *s, const char *file_id, enum lorad_job_status status, int priority,
            char out_id[LORAD_STORE_ID_MAX]) {
    fx_job_sized(s, file_id, status, priority, 0, out_id);
}

void fx_job_sized(struct lorad_store *s, const char *file_id, enum lorad_job_status status, int priority,
                  int64_t memory_bytes, char out_id[LORAD_STORE_ID_MAX]) {
    json_t *spec = json_pack("{s:{s:i, s:f}}", "hyperparameters", "n_epochs", 1,
                             "learning_rate_multiplier", 2.0);
    struct lorad_store_job_new j = {.model = "stories260K", .training_file = file_id,
                                    .spec = spec, .seed = 42, .priority = priority,
                                    .status = status, .memory_bytes = memory_bytes};
    json_t *job = NULL;
    struct lorad_error err = {0};
    int r = lorad_store_job_create(s, &j, &job, &err);
    if (r < 0) fprintf(stderr, "job_create: %s\n", err.message);
    assert_int_equal(r, 0);
    snprintf(out_id, LORAD_STORE_ID_MAX, "%s", json_string_value(json_object_get(job, "id")));
    json_decref(job);
    json_decref(spec);
}

enum lorad_job_status fx_status(struct lorad_store *s, const char *job_id) {
    json_t *job = NULL;
    assert_int_equal(lorad_store_job_get(s, job_id, &job, NULL), 0);
    enum lorad_job_status st;
    assert_int_equal(lorad_job_status_parse(json_string_value(json_object_get(job, "status")), &st), 0);
    json_decref(job);
    return st;
}

int fx_event_count(struct lorad_store *s, const char *job_id) {
    json_t *events = NULL;
    int64_t last = 0;
    assert_int_equal(lorad_store_event_since(s, job_id, 0, 1000, &events, &last, NULL), 0);
    int n = (int)json_array_size(events);
    json_decref(events);
    return n;
}

void fx_move(struct lorad_store *s, const char *job_id, enum lorad_job_status to) {
    struct lorad_store_transition t = {.to = to};
    struct lorad_error err = {0};
    int r = lorad_store_job_transition(s, job_id, &t, NULL, &err);
    if (r < 0) fprintf(stderr, "transition to %s: %s\n", lorad_job_status_name(to), err.message);
    assert_int_equal(r, 0);
}
