/* Jobs: the status machine as a table, idempotency keys, the queue, control requests, startup
 * recovery, file-in-use refusal and ids. All on real temporary database files. */
#include <errno.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store_fixture.h"

#define V LORAD_JOB_VALIDATING_FILES
#define Q LORAD_JOB_QUEUED
#define R LORAD_JOB_RUNNING
#define P LORAD_JOB_PAUSED
#define CI LORAD_JOB_CANCELLING
#define S LORAD_JOB_SUCCEEDED
#define F LORAD_JOB_FAILED
#define CD LORAD_JOB_CANCELLED
#define N LORAD_JOB_STATUS_COUNT

/* The legal transitions, written from issue #6 and docs/store.md (not from the code):
 * rows = from, columns = to, in the order V Q R P CI S F CD. */
static const char *const EXPECTED[N] = {
    /*           V Q R P I S F D */
    [V]  = ".x....xx", /* validation passes, fails, or the job is cancelled */
    [Q]  = "..xx...x", /* claimed by a worker, held (paused), cancelled */
    [R]  = ".x.xxxx.", /* requeued (restart), cancelling, paused, succeeded, failed */
    [P]  = ".x.....x", /* resumed into the queue, cancelled */
    [CI] = "......xx", /* the worker stops: cancelled (or failed while stopping) */
    [S]  = "........",
    [F]  = "........",
    [CD] = "........",
};

/* A legal route from a fresh queued/validating job to each status. */
static void drive_to(struct lorad_store *s, const char *file, enum lorad_job_status target,
                     char id[LORAD_STORE_ID_MAX]) {
    fx_job(s, file, target == V ? LORAD_JOB_VALIDATING_FILES : LORAD_JOB_QUEUED, 0, id);
    switch (target) {
    case V: case Q: break;
    case R: fx_move(s, id, R); break;
    case P: fx_move(s, id, P); break;
    case CI: fx_move(s, id, R); fx_move(s, id, CI); break;
    case S: fx_move(s, id, R); fx_move(s, id, S); break;
    case F: fx_move(s, id, R); fx_move(s, id, F); break;
    case CD: fx_move(s, id, CD); break;
    default: fail();
    }
    assert_int_equal(fx_status(s, id), target);
}

static void test_transition_table(void **state) {
    (void)state;
    struct fx fx;
    fx_open(&fx, 0);
    char file[LORAD_STORE_ID_MAX];
    fx_file(fx.store, file);
    int legal_seen = 0;
    for (int from = 0; from < N; from++) {
        for (int to = 0; to < N; to++) {
            bool legal = EXPECTED[from][to] == 'x';
            assert_int_equal(lorad_job_transition_legal((enum lorad_job_status)from, (enum lorad_job_status)to), legal);
            char id[LORAD_STORE_ID_MAX];
            drive_to(fx.store, file, (enum lorad_job_status)from, id);
            int events_before = fx_event_count(fx.store, id);
            struct lorad_store_transition t = {.to = (enum lorad_job_status)to, .message = "table"};
            struct lorad_error err = {0};
            json_t *job = NULL;
            int r = lorad_store_job_transition(fx.store, id, &t, &job, &err);
            if (legal) {
                legal_seen++;
                assert_int_equal(r, 0);
                assert_string_equal(json_string_value(json_object_get(job, "status")),
                                    lorad_job_status_name((enum lorad_job_status)to));
                json_decref(job);
                /* The transition's event was written with it. */
                json_t *events = NULL;
                int64_t last = 0;
                assert_int_equal(lorad_store_event_since(fx.store, id, events_before, 10, &events,
                                                         &last, NULL), 0);
                assert_int_equal(json_array_size(events), 1);
                json_t *ev = json_array_get(events, 0);
                assert_string_equal(json_string_value(json_object_get(ev, "type")), "status");
                json_t *data = json_object_get(ev, "data");
                assert_string_equal(json_string_value(json_object_get(data, "from")),
                                    lorad_job_status_name((enum lorad_job_status)from));
                assert_string_equal(json_string_value(json_object_get(data, "to")),
                                    lorad_job_status_name((enum lorad_job_status)to));
                json_decref(events);
            } else {
                assert_int_equal(r, -EPERM);
                assert_null(job);
                assert_non_null(strstr(err.message, lorad_job_status_name((enum lorad_job_status)from)));
                assert_int_equal(fx_status(fx.store, id), (enum lorad_job_status)from);
                assert_int_equal(fx_event_count(fx.store, id), events_before);
            }
        }
    }
    assert_int_equal(legal_seen, 15);
    fx_close(&fx);
}

static void test_transition_fields(void **state) {
    (void)state;
    struct fx fx;
    fx_open(&fx, 0);
    char file[LORAD_STORE_ID_MAX], a[LORAD_STORE_ID_MAX], b[LORAD_STORE_ID_MAX];
    fx_file(fx.store, file);
    fx_job(fx.store, file, LORAD_JOB_QUEUED, 0, a);
    fx_job(fx.store, file, LORAD_JOB_QUEUED, 0, b);
    json_t *job = NULL;
    assert_int_equal(lorad_store_job_get(fx.store, a, &job, NULL), 0);
    assert_string_equal(json_string_value(json_object_get(job, "object")), "fine_tuning.job");
    assert_true(json_is_null(json_object_get(job, "error")));
    assert_true(json_is_null(json_object_get(job, "finished_at")));
    assert_int_equal(json_integer_value(json_object_get(json_object_get(job, "hyperparameters"),
                                                        "n_epochs")), 1);
    assert_int_equal(json_integer_value(json_object_get(job, "seed")), 42);
    assert_int_equal(json_integer_value(json_object_get(job, "queue_position")), 1);
    assert_true(json_is_array(json_object_get(job, "result_files")));
    json_decref(job);

    fx_move(fx.store, a, R);
    struct lorad_store_transition t = {.to = F, .error_code = "invalid_training_file",
                                       .error_message = "line 3: not JSON",
                                       .error_param = "training_file"};
    assert_int_equal(lorad_store_job_transition(fx.store, a, &t, &job, NULL), 0);
    json_t *e = json_object_get(job, "error");
    assert_string_equal(json_string_value(json_object_get(e, "code")), "invalid_training_file");
    assert_string_equal(json_string_value(json_object_get(e, "message")), "line 3: not JSON");
    assert_string_equal(json_string_value(json_object_get(e, "param")), "training_file");
    assert_true(json_is_integer(json_object_get(job, "finished_at")));
    assert_true(json_is_integer(json_object_get(job, "started_at")));
    json_decref(job);

    fx_move(fx.store, b, R);
    t = (struct lorad_store_transition){.to = S, .fine_tuned_model = "ft:stories260K:lorad:x"};
    assert_int_equal(lorad_store_job_transition(fx.store, b, &t, &job, NULL), 0);
    assert_string_equal(json_string_value(json_object_get(job, "fine_tuned_model")),
                        "ft:stories260K:lorad:x");
    assert_true(json_is_null(json_object_get(job, "error")));
    json_decref(job);

    struct lorad_error err = {0};
    t = (struct lorad_store_transition){.to = R};
    assert_int_equal(lorad_store_job_transition(fx.store, "ftjob-nosuchjobnosuchjobnosu", &t,
                                                NULL, &err), -ENOENT);
    fx_close(&fx);
}

/* A status event's message is stored whole (up to 4096 bytes, like any event's), never cut at a
 * byte count: the daemon's "Job succeeded: the fine-tuned model is ft:<model>:<suffix>:<id>" can
 * pass 255 bytes with a long model name, and a cut inside a multi-byte character made the event a
 * corrupt row that failed the job's event list. Longer is refused before anything is written. */
static void test_transition_message(void **state) {
    (void)state;
    struct fx fx;
    fx_open(&fx, 0);
    char file[LORAD_STORE_ID_MAX], job[LORAD_STORE_ID_MAX];
    fx_file(fx.store, file);
    fx_job(fx.store, file, Q, 0, job);
    fx_move(fx.store, job, R);
    char message[4098] = "Job succeeded: the fine-tuned model is ft:";
    size_t n = strlen(message);
    while (n + 2 <= 300) { /* 2-byte characters across byte 255 */
        memcpy(message + n, "\xc3\xa9", 2);
        n += 2;
    }
    message[n] = '\0';
    struct lorad_store_transition t = {.to = S, .message = message};
    assert_int_equal(lorad_store_job_transition(fx.store, job, &t, NULL, NULL), 0);
    json_t *page = NULL;
    struct lorad_error err = {0};
    int r = lorad_store_event_list(fx.store, job, NULL, 1, &page, &err);
    if (r < 0) fprintf(stderr, "event list: %s\n", err.message);
    assert_int_equal(r, 0);
    json_t *ev = json_array_get(json_object_get(page, "data"), 0);
    assert_string_equal(json_string_value(json_object_get(ev, "message")), message);
    json_decref(page);

    char other[LORAD_STORE_ID_MAX];
    fx_job(fx.store, file, Q, 0, other);
    int events = fx_event_count(fx.store, other);
    memset(message, 'm', 4097);
    message[4097] = '\0';
    t = (struct lorad_store_transition){.to = P, .message = message};
    assert_int_equal(lorad_store_job_transition(fx.store, other, &t, NULL, &err), -EINVAL);
    assert_string_equal(err.param, "message");
    assert_int_equal(fx_status(fx.store, other), Q);
    assert_int_equal(fx_event_count(fx.store, other), events);
    message[4096] = '\0';
    assert_int_equal(lorad_store_job_transition(fx.store, other, &t, NULL, NULL), 0);
    fx_close(&fx);
}

/* lorad_store_job_status reads only the status column; it must agree with the status in the full
 * job object for every status, follow transitions, and refuse an unknown id without writing. */
static void test_job_status(void **state) {
    (void)state;
    struct fx fx;
    fx_open(&fx, 0);
    char file[LORAD_STORE_ID_MAX];
    fx_file(fx.store, file);
    for (int target = 0; target < N; target++) {
        char id[LORAD_STORE_ID_MAX];
        drive_to(fx.store, file, (enum lorad_job_status)target, id);
        enum lorad_job_status got = N;
        assert_int_equal(lorad_store_job_status(fx.store, id, &got, NULL), 0);
        assert_int_equal(got, target);
        json_t *job = NULL;
        assert_int_equal(lorad_store_job_get(fx.store, id, &job, NULL), 0);
        assert_string_equal(json_string_value(json_object_get(job, "status")), lorad_job_status_name(got));
        json_decref(job);
    }
    /* A change is seen by the next read (no caching). */
    char id[LORAD_STORE_ID_MAX];
    fx_job(fx.store, file, Q, 0, id);
    enum lorad_job_status got = N;
    assert_int_equal(lorad_store_job_status(fx.store, id, &got, NULL), 0);
    assert_int_equal(got, Q);
    fx_move(fx.store, id, R);
    assert_int_equal(lorad_store_job_status(fx.store, id, &got, NULL), 0);
    assert_int_equal(got, R);
    fx_move(fx.store, id, S);
    assert_int_equal(lorad_store_job_status(fx.store, id, &got, NULL), 0);
    assert_int_equal(got, S);

    struct lorad_error err = {0};
    got = N;
    assert_int_equal(lorad_store_job_status(fx.store, "ftjob-nosuchjobnosuchjobnosu", &got, &err), -ENOENT);
    assert_int_equal(got, N); /* untouched on failure */
    assert_string_equal(err.param, "fine_tuning_job_id");
    assert_non_null(strstr(err.message, "ftjob-nosuchjobnosuchjobnosu"));
    assert_int_equal(lorad_store_job_status(fx.store, "", &got, NULL), -ENOENT);
    fx_close(&fx);
}

/* The stored spec comes back as it was given, without the job's own columns merged in (the job
 * object has them); an unknown id is -ENOENT naming the field; a spec column that is not a JSON
 * object is -EBADMSG naming the job. Published names: the base model's directories are dropped,
 * a missing suffix reads "lorad", and only the succeeded job's exact name finds it. */
static void test_job_spec_and_fine_tuned_names(void **state) {
    (void)state;
    struct fx fx;
    fx_open(&fx, 0);
    char file[LORAD_STORE_ID_MAX], id[LORAD_STORE_ID_MAX];
    fx_file(fx.store, file);
    fx_job(fx.store, file, Q, 0, id);
    json_t *spec = NULL, *want = json_pack("{s:{s:i, s:f}}", "hyperparameters", "n_epochs", 1,
                                           "learning_rate_multiplier", 2.0);
    assert_int_equal(lorad_store_job_spec(fx.store, id, &spec, NULL), 0);
    assert_true(json_equal(spec, want));
    assert_null(json_object_get(spec, "status"));
    json_decref(spec);
    json_decref(want);
    struct lorad_error err = {0};
    spec = NULL;
    assert_int_equal(lorad_store_job_spec(fx.store, "ftjob-nosuchjobnosuchjobnosu", &spec, &err), -ENOENT);
    assert_null(spec);
    assert_string_equal(err.param, "fine_tuning_job_id");

    char name[256];
    assert_int_equal(lorad_store_fine_tuned_model_name("models/llama/tiny", NULL, id, name, sizeof name), 0);
    char expect[256];
    snprintf(expect, sizeof expect, "ft:tiny:lorad:%s", id);
    assert_string_equal(name, expect);
    assert_int_equal(lorad_store_fine_tuned_model_name("tiny", "mine", id, name, sizeof name), 0);
    snprintf(expect, sizeof expect, "ft:tiny:mine:%s", id);
    assert_string_equal(name, expect);
    assert_int_equal(lorad_store_fine_tuned_model_name("tiny", "mine", id, name, 12), -ENAMETOOLONG);

    /* Not succeeded yet: no model by that name. */
    char published[256], dir[4096], base[64];
    assert_int_equal(lorad_store_fine_tuned_model_name("stories260K", NULL, id, published, sizeof published), 0);
    json_t *job = NULL;
    assert_int_equal(lorad_store_fine_tuned_job(fx.store, published, &job, NULL), -ENOENT);
    fx_move(fx.store, id, R);
    struct lorad_store_transition t = {.to = S, .fine_tuned_model = published};
    assert_int_equal(lorad_store_job_transition(fx.store, id, &t, NULL, NULL), 0);
    assert_int_equal(lorad_store_fine_tuned_job(fx.store, published, &job, NULL), 0);
    assert_string_equal(json_string_value(json_object_get(job, "id")), id);
    json_decref(job);
    assert_int_equal(lorad_store_fine_tuned_adapter_dir(fx.store, "/srv/jobs", published, dir, sizeof dir, base,
                                                        sizeof base, NULL), 0);
    snprintf(expect, sizeof expect, "/srv/jobs/%s/adapter", id);
    assert_string_equal(dir, expect);
    assert_string_equal(base, "stories260K");
    /* The same id under another base or suffix, a path, or a too-small buffer. */
    char forged[256];
    snprintf(forged, sizeof forged, "ft:other:lorad:%s", id);
    assert_int_equal(lorad_store_fine_tuned_job(fx.store, forged, &job, NULL), -ENOENT);
    memset(&err, 0, sizeof err);
    assert_int_equal(lorad_store_fine_tuned_adapter_dir(fx.store, "/srv/jobs", "../../etc", dir, sizeof dir, base,
                                                        sizeof base, &err), -ENOENT);
    assert_string_equal(err.param, "lora.init_adapter");
    assert_int_equal(lorad_store_fine_tuned_adapter_dir(fx.store, "/srv/jobs", published, dir, 20, base,
                                                        sizeof base, NULL), -ENAMETOOLONG);

    /* A corrupt spec column is an error naming the job, never an empty spec. */
    sqlite3 *raw = NULL;
    assert_int_equal(sqlite3_open_v2(fx.db, &raw, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_exec(raw, "UPDATE jobs SET spec = '[1, 2]'", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(raw);
    memset(&err, 0, sizeof err);
    assert_int_equal(lorad_store_job_spec(fx.store, id, &spec, &err), -EBADMSG);
    assert_non_null(strstr(err.message, id));
    assert_int_equal(sqlite3_open_v2(fx.db, &raw, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_exec(raw, "UPDATE jobs SET spec = '{\"cut'", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(raw);
    memset(&err, 0, sizeof err);
    assert_int_equal(lorad_store_job_spec(fx.store, id, &spec, &err), -EBADMSG);
    assert_non_null(strstr(err.message, id));
    fx_close(&fx);
}

static void test_idempotency(void **state) {
    (void)state;
    struct fx fx;
    fx_open(&fx, 0);
    char file[LORAD_STORE_ID_MAX];
    fx_file(fx.store, file);
    json_t *spec = json_pack("{s:{}}", "hyperparameters");
    struct lorad_store_job_new j = {.model = "m", .training_file = file, .spec = spec,
                                    .status = LORAD_JOB_QUEUED, .idempotency_key = "key-1",
                                    .request_hash = "hash-A"};
    json_t *first = NULL, *again = NULL;
    assert_int_equal(lorad_store_job_create(fx.store, &j, &first, NULL), 0);
    assert_int_equal(lorad_store_job_create(fx.store, &j, &again, NULL), 1);
    assert_string_equal(json_string_value(json_object_get(first, "id")),
                        json_string_value(json_object_get(again, "id")));
    json_decref(again);

    /* The read-only look-up agrees with create: unknown 0, same request 1 (that job), other -EEXIST,
     * and it writes nothing. */
    int events_before = fx_event_count(fx.store, json_string_value(json_object_get(first, "id")));
    json_t *found = NULL;
    assert_int_equal(lorad_store_job_find_idempotent(fx.store, "key-unknown", "hash-A", &found, NULL), 0);
    assert_null(found);
    assert_int_equal(lorad_store_job_find_idempotent(fx.store, "key-1", "hash-A", &found, NULL), 1);
    assert_string_equal(json_string_value(json_object_get(first, "id")),
                        json_string_value(json_object_get(found, "id")));
    json_decref(found);
    found = NULL;
    struct lorad_error ferr = {0};
    assert_int_equal(lorad_store_job_find_idempotent(fx.store, "key-1", "hash-B", &found, &ferr), -EEXIST);
    assert_null(found);
    assert_string_equal(ferr.param, "idempotency_key");
    assert_non_null(strstr(ferr.message, json_string_value(json_object_get(first, "id"))));
    assert_int_equal(lorad_store_job_find_idempotent(fx.store, "", "hash-A", &found, &ferr), -EINVAL);
    assert_int_equal(lorad_store_job_find_idempotent(fx.store, "key-1", NULL, &found, &ferr), -EINVAL);
    assert_int_equal(fx_event_count(fx.store, json_string_value(json_object_get(first, "id"))), events_before);

    j.request_hash = "hash-B";
    json_t *conflict = NULL;
    struct lorad_error err = {0};
    assert_int_equal(lorad_store_job_create(fx.store, &j, &conflict, &err), -EEXIST);
    assert_null(conflict);
    assert_string_equal(err.param, "idempotency_key");

    /* A key with no request hash is a caller bug. */
    j.request_hash = NULL;
    assert_int_equal(lorad_store_job_create(fx.store, &j, NULL, &err), -EINVAL);
    /* Another key makes another job; no key always makes a new job. */
    j.idempotency_key = "key-2";
    j.request_hash = "hash-A";
    assert_int_equal(lorad_store_job_create(fx.store, &j, NULL, NULL), 0);
    j.idempotency_key = NULL;
    assert_int_equal(lorad_store_job_create(fx.store, &j, NULL, NULL), 0);
    assert_int_equal(lorad_store_job_create(fx.store, &j, NULL, NULL), 0);
    int64_t counts[LORAD_JOB_STATUS_COUNT];
    assert_int_equal(lorad_store_job_counts(fx.store, counts, NULL), 0);
    assert_int_equal(counts[Q], 4);

    /* The replay survives a restart: the key is in the database, not in memory. */
    fx_reopen(&fx, LORAD_STORE_RECOVER);
    j.idempotency_key = "key-1";
    j.request_hash = "hash-A";
    assert_int_equal(lorad_store_job_create(fx.store, &j, &again, NULL), 1);
    assert_string_equal(json_string_value(json_object_get(first, "id")),
                        json_string_value(json_object_get(again, "id")));
    json_decref(again);
    json_decref(first);

    /* Unknown files are refused with the field named. */
    j.idempotency_key = NULL;
    j.training_file = "file-AAAAAAAAAAAAAAAAAAAAAAAA";
    assert_int_equal(lorad_store_job_create(fx.store, &j, NULL, &err), -ENOENT);
    assert_string_equal(err.param, "training_file");
    j.training_file = "../../etc/passwd";
    assert_int_equal(lorad_store_job_create(fx.store, &j, NULL, &err), -EINVAL);
    json_decref(spec);
    fx_close(&fx);
}

static void test_claim_order(void **state) {
    (void)state;
    struct fx fx;
    fx_open(&fx, 0);
    char file[LORAD_STORE_ID_MAX], low1[40], high[40], low2[40], held[40];
    fx_file(fx.store, file);
    json_t *job = NULL;
    assert_int_equal(lorad_store_job_claim_next(fx.store, -1, &job, NULL, NULL), 0);
    assert_null(job);
    fx_job(fx.store, file, LORAD_JOB_QUEUED, 0, low1);
    fx_job(fx.store, file, LORAD_JOB_VALIDATING_FILES, 9, held); /* not queued: never claimed */
    fx_job(fx.store, file, LORAD_JOB_QUEUED, 5, high);
    fx_job(fx.store, file, LORAD_JOB_QUEUED, 0, low2);
    assert_int_equal(lorad_store_job_get(fx.store, low2, &job, NULL), 0);
    assert_int_equal(json_integer_value(json_object_get(job, "queue_position")), 3);
    json_decref(job);
    const char *expect[] = {high, low1, low2};
    for (int i = 0; i < 3; i++) {
        assert_int_equal(lorad_store_job_claim_next(fx.store, -1, &job, NULL, NULL), 1);
        assert_string_equal(json_string_value(json_object_get(job, "id")), expect[i]);
        assert_string_equal(json_string_value(json_object_get(job, "status")), "running");
        assert_true(json_is_null(json_object_get(job, "queue_position")));
        json_decref(job);
    }
    assert_int_equal(lorad_store_job_claim_next(fx.store, -1, &job, NULL, NULL), 0);
    fx_close(&fx);
}

/* Claiming within a memory budget: the head of the queue is claimed only when its estimate fits;
 * when it does not, nothing is claimed, the head's estimate is reported, and a smaller job behind
 * it is not claimed in its place (a big job would otherwise wait for ever behind small ones). A
 * job stored without an estimate counts as 0; a budget of -1 means no limit. */
static void test_claim_memory_budget(void **state) {
    (void)state;
    struct fx fx;
    fx_open(&fx, 0);
    char file[LORAD_STORE_ID_MAX], big[40], small[40], legacy[40];
    fx_file(fx.store, file);
    json_t *job = NULL;
    int64_t waiting = -7;
    assert_int_equal(lorad_store_job_claim_next(fx.store, 100, &job, &waiting, NULL), 0);
    assert_int_equal(waiting, 0); /* empty queue */
    fx_job_sized(fx.store, file, LORAD_JOB_QUEUED, 0, 1000, big);
    fx_job_sized(fx.store, file, LORAD_JOB_QUEUED, 0, 10, small);
    fx_job_sized(fx.store, file, LORAD_JOB_QUEUED, 0, 0, legacy);
    assert_int_equal(lorad_store_job_get(fx.store, big, &job, NULL), 0);
    assert_int_equal(json_integer_value(json_object_get(job, "memory_estimate_bytes")), 1000);
    json_decref(job);
    assert_int_equal(lorad_store_job_get(fx.store, legacy, &job, NULL), 0);
    assert_true(json_is_null(json_object_get(job, "memory_estimate_bytes")));
    json_decref(job);
    job = NULL;
    assert_int_equal(lorad_store_job_claim_next(fx.store, 999, &job, &waiting, NULL), 0);
    assert_null(job);
    assert_int_equal(waiting, 1000);
    assert_int_equal(fx_status(fx.store, big), LORAD_JOB_QUEUED);
    assert_int_equal(fx_status(fx.store, small), LORAD_JOB_QUEUED);
    assert_int_equal(lorad_store_job_claim_next(fx.store, 1000, &job, &waiting, NULL), 1);
    assert_string_equal(json_string_value(json_object_get(job, "id")), big);
    assert_int_equal(waiting, 0);
    json_decref(job);
    assert_int_equal(lorad_store_job_claim_next(fx.store, 9, &job, &waiting, NULL), 0);
    assert_int_equal(waiting, 10);
    assert_int_equal(lorad_store_job_claim_next(fx.store, -1, &job, NULL, NULL), 1);
    assert_string_equal(json_string_value(json_object_get(job, "id")), small);
    json_decref(job);
    assert_int_equal(lorad_store_job_claim_next(fx.store, 0, &job, &waiting, NULL), 1);
    assert_string_equal(json_string_value(json_object_get(job, "id")), legacy);
    json_decref(job);
    fx_close(&fx);
}

/* ---- queue positions at scale ------------------------------------------------------------- */

enum { BIG_QUEUE = 10000, BIG_OTHERS = 700 };

struct big_job {
    int64_t pk;
    int priority;
    bool queued;
    char id[LORAD_STORE_ID_MAX];
    int64_t position; /* expected; 0 = not queued */
};

static int cmp_queue_order(const void *a, const void *b) {
    const struct big_job *x = *(struct big_job *const *)a, *y = *(struct big_job *const *)b;
    if (x->priority != y->priority) return x->priority > y->priority ? -1 : 1;
    return (x->pk > y->pk) - (x->pk < y->pk);
}

/* Inserts the jobs with raw SQL in one transaction (a store create per job would take 10700
 * fsyncs): priorities -3..3 in a scrambled order, every 16th job another status. */
static struct big_job *insert_big_queue(const char *db, const char *file, int n) {
    struct big_job *jobs = calloc((size_t)n, sizeof *jobs);
    assert_non_null(jobs);
    sqlite3 *raw = NULL;
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_open_v2(db, &raw, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_exec(raw, "BEGIN", NULL, NULL, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(raw,
        "INSERT INTO jobs(pk, id, model, training_file, spec, status, created_at, seed, priority)"
        " VALUES (?1, ?2, 'm', ?3, '{}', ?4, 1, 0, ?5)", -1, &st, NULL), SQLITE_OK);
    static const char *const others[] = {"paused", "running", "succeeded", "validating_files"};
    uint32_t rng = 12345;
    for (int i = 0; i < n; i++) {
        struct big_job *j = &jobs[i];
        rng = rng * 1103515245u + 12345u;
        j->pk = 1000 + i;
        j->priority = (int)((rng >> 16) % 7) - 3;
        j->queued = i % 16 != 7;
        snprintf(j->id, sizeof j->id, "ftjob-%024d", i);
        sqlite3_bind_int64(st, 1, j->pk);
        sqlite3_bind_text(st, 2, j->id, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 3, file, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 4, j->queued ? "queued" : others[(i / 16) % 4], -1, SQLITE_STATIC);
        sqlite3_bind_int(st, 5, j->priority);
        assert_int_equal(sqlite3_step(st), SQLITE_DONE);
        sqlite3_reset(st);
    }
    sqlite3_finalize(st);
    assert_int_equal(sqlite3_exec(raw, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(raw);
    return jobs;
}

/* Expected positions: the queued jobs sorted by priority (higher first), then pk (older first). */
static void expect_positions(struct big_job *jobs, int n) {
    struct big_job **order = calloc((size_t)n, sizeof *order);
    assert_non_null(order);
    int nq = 0;
    for (int i = 0; i < n; i++) {
        jobs[i].position = 0;
        if (jobs[i].queued) order[nq++] = &jobs[i];
    }
    qsort(order, (size_t)nq, sizeof *order, cmp_queue_order);
    for (int k = 0; k < nq; k++) order[k]->position = k + 1;
    free(order);
}

static void check_position(const struct big_job *j, json_t *obj) {
    assert_string_equal(json_string_value(json_object_get(obj, "id")), j->id);
    json_t *pos = json_object_get(obj, "queue_position");
    if (j->position == 0) {
        assert_true(json_is_null(pos));
    } else {
        if (json_integer_value(pos) != j->position)
            fprintf(stderr, "%s: queue_position %lld, expected %lld\n", j->id,
                    (long long)json_integer_value(pos), (long long)j->position);
        assert_int_equal(json_integer_value(pos), j->position);
    }
}

/* Walks every page of the list (status -1 = all) newest first and checks each job's position. */
static void check_list_positions(struct lorad_store *s, const struct big_job *jobs, int n, int status) {
    char after[LORAD_STORE_ID_MAX] = "";
    int i = n - 1, seen = 0;
    for (;;) {
        json_t *page = NULL;
        assert_int_equal(lorad_store_job_list(s, status, seen ? after : NULL, 100, &page, NULL), 0);
        json_t *data = json_object_get(page, "data");
        for (size_t k = 0; k < json_array_size(data); k++, seen++) {
            while (status >= 0 && !jobs[i].queued) i--;
            check_position(&jobs[i--], json_array_get(data, k));
        }
        if (json_array_size(data)) snprintf(after, sizeof after, "%s", json_string_value(json_object_get(page, "last_id")));
        bool more = json_is_true(json_object_get(page, "has_more"));
        json_decref(page);
        if (!more) break;
    }
    int want = 0;
    for (int k = 0; k < n; k++) want += status < 0 || jobs[k].queued;
    assert_int_equal(seen, want);
}

static void check_get_positions(struct lorad_store *s, const struct big_job *jobs, int n, int stride) {
    for (int i = 0; i < n; i += stride) {
        json_t *job = NULL;
        assert_int_equal(lorad_store_job_get(s, jobs[i].id, &job, NULL), 0);
        check_position(&jobs[i], job);
        json_decref(job);
    }
}

/* 10000 queued jobs (and 700 in other states): every list page and every read gives each queued
 * job its place in the order the worker claims them (priority DESC, then FIFO), 1..n, computed
 * here independently by sorting; the other jobs have none. After a claim everyone moves up one. */
static void test_queue_positions_at_scale(void **state) {
    (void)state;
    struct fx fx;
    fx_open(&fx, 0);
    char file[LORAD_STORE_ID_MAX];
    fx_file(fx.store, file);
    const int n = BIG_QUEUE + BIG_OTHERS;
    struct big_job *jobs = insert_big_queue(fx.db, file, n);
    int nq = 0;
    for (int i = 0; i < n; i++) nq += jobs[i].queued;
    assert_true(nq >= BIG_QUEUE);
    expect_positions(jobs, n);
    check_list_positions(fx.store, jobs, n, -1);
    check_list_positions(fx.store, jobs, n, LORAD_JOB_QUEUED);
    check_get_positions(fx.store, jobs, n, 37);

    /* The worker takes position 1; the rest move up. */
    int first = -1;
    for (int i = 0; i < n; i++)
        if (jobs[i].position == 1) first = i;
    json_t *claimed = NULL;
    assert_int_equal(lorad_store_job_claim_next(fx.store, -1, &claimed, NULL, NULL), 1);
    assert_string_equal(json_string_value(json_object_get(claimed, "id")), jobs[first].id);
    json_decref(claimed);
    jobs[first].queued = false;
    expect_positions(jobs, n);
    check_list_positions(fx.store, jobs, n, LORAD_JOB_QUEUED);
    check_get_positions(fx.store, jobs, n, 101);
    free(jobs);
    fx_close(&fx);
}

struct claimer {
    struct lorad_store *store;
    char ids[200][LORAD_STORE_ID_MAX];
    int n;
    int failures;
};

static void *claim_loop(void *arg) {
    struct claimer *c = arg;
    for (;;) {
        json_t *job = NULL;
        int r = lorad_store_job_claim_next(c->store, -1, &job, NULL, NULL);
        if (r == 0) break;
        if (r < 0) {
            c->failures++;
            break;
        }
        snprintf(c->ids[c->n++], LORAD_STORE_ID_MAX, "%s",
                 json_string_value(json_object_get(job, "id")));
        json_decref(job);
    }
    return NULL;
}

static int cmp_id(const void *a, const void *b) { return strcmp(a, b); }

static void test_claim_atomic(void **state) {
    (void)state;
    struct fx fx;
    fx_open(&fx, 0);
    char file[LORAD_STORE_ID_MAX];
    fx_file(fx.store, file);
    enum { JOBS = 120, THREADS = 4 };
    for (int i = 0; i < JOBS; i++) {
        char id[LORAD_STORE_ID_MAX];
        fx_job(fx.store, file, LORAD_JOB_QUEUED, i % 3, id);
    }
    static struct claimer claimers[THREADS];
    pthread_t th[THREADS];
    for (int i = 0; i < THREADS; i++) {
        memset(&claimers[i], 0, sizeof claimers[i]);
        claimers[i].store = fx.store;
        assert_int_equal(pthread_create(&th[i], NULL, claim_loop, &claimers[i]), 0);
    }
    static char all[JOBS * 2][LORAD_STORE_ID_MAX];
    int n = 0;
    for (int i = 0; i < THREADS; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(claimers[i].failures, 0);
        for (int k = 0; k < claimers[i].n; k++) memcpy(all[n++], claimers[i].ids[k], LORAD_STORE_ID_MAX);
    }
    assert_int_equal(n, JOBS);
    qsort(all, (size_t)n, LORAD_STORE_ID_MAX, cmp_id);
    for (int i = 1; i < n; i++) assert_string_not_equal(all[i - 1], all[i]);
    int64_t counts[LORAD_JOB_STATUS_COUNT];
    assert_int_equal(lorad_store_job_counts(fx.store, counts, NULL), 0);
    assert_int_equal(counts[R], JOBS);
    assert_int_equal(counts[Q], 0);
    fx_close(&fx);
}

static enum lorad_job_control control_of(struct lorad_store *s, const char *id) {
    enum lorad_job_control c = 99;
    assert_int_equal(lorad_store_job_control(s, id, &c, NULL), 0);
    return c;
}

static void test_control_requests(void **state) {
    (void)state;
    struct fx fx;
    fx_open(&fx, 0);
    char file[LORAD_STORE_ID_MAX], a[40], b[40];
    fx_file(fx.store, file);
    fx_job(fx.store, file, LORAD_JOB_QUEUED, 0, a);
    fx_job(fx.store, file, LORAD_JOB_QUEUED, 0, b);

    /* queued: pause holds it, resume puts it back, cancel ends it. */
    assert_int_equal(lorad_store_job_pause(fx.store, a, NULL, NULL), 0);
    assert_int_equal(fx_status(fx.store, a), P);
    assert_int_equal(lorad_store_job_pause(fx.store, a, NULL, NULL), 0); /* already paused */
    assert_int_equal(lorad_store_job_resume(fx.store, a, 0, NULL, NULL), 0);
    assert_int_equal(fx_status(fx.store, a), Q);
    struct lorad_error err = {0};
    assert_int_equal(lorad_store_job_resume(fx.store, a, 0, NULL, &err), -EPERM);

    /* running: pause is a request the worker honours; resume withdraws it. */
    fx_move(fx.store, a, R);
    assert_int_equal(control_of(fx.store, a), LORAD_JOB_CONTROL_NONE);
    assert_int_equal(lorad_store_job_pause(fx.store, a, NULL, NULL), 0);
    assert_int_equal(fx_status(fx.store, a), R);
    assert_int_equal(control_of(fx.store, a), LORAD_JOB_CONTROL_PAUSE);
    assert_int_equal(lorad_store_job_resume(fx.store, a, 0, NULL, NULL), 0);
    assert_int_equal(control_of(fx.store, a), LORAD_JOB_CONTROL_NONE);
    assert_int_equal(lorad_store_job_pause(fx.store, a, NULL, NULL), 0);
    fx_move(fx.store, a, P); /* the worker checkpointed and stopped */
    assert_int_equal(control_of(fx.store, a), LORAD_JOB_CONTROL_NONE);
    assert_int_equal(lorad_store_job_resume(fx.store, a, 0, NULL, NULL), 0);
    assert_int_equal(fx_status(fx.store, a), Q);

    /* running: cancel goes through cancelling, which the worker sees and finishes. */
    fx_move(fx.store, a, R);
    json_t *job = NULL;
    assert_int_equal(lorad_store_job_cancel(fx.store, a, &job, NULL), 0);
    assert_string_equal(json_string_value(json_object_get(job, "status")), "cancelling");
    json_decref(job);
    assert_int_equal(control_of(fx.store, a), LORAD_JOB_CONTROL_CANCEL);
    assert_int_equal(lorad_store_job_cancel(fx.store, a, NULL, NULL), 0); /* idempotent */
    assert_int_equal(lorad_store_job_pause(fx.store, a, NULL, &err), -EPERM);
    fx_move(fx.store, a, CD);
    assert_int_equal(lorad_store_job_cancel(fx.store, a, NULL, &err), -EPERM);

    /* queued: cancel is immediate. */
    assert_int_equal(lorad_store_job_cancel(fx.store, b, NULL, NULL), 0);
    assert_int_equal(fx_status(fx.store, b), CD);
    assert_int_equal(lorad_store_job_cancel(fx.store, "ftjob-AAAAAAAAAAAAAAAAAAAAAAAA", NULL, &err),
                     -ENOENT);
    fx_close(&fx);
}

static int64_t queued_now(struct lorad_store *s) {
    int64_t counts[LORAD_JOB_STATUS_COUNT];
    assert_int_equal(lorad_store_job_counts(s, counts, NULL), 0);
    return counts[Q];
}

/* max_queued_jobs: a job that would enter the queue (created queued, or a paused one resumed) is
 * refused with -EAGAIN while that many are queued, and nothing is written; a replay, a job that
 * starts validating, withdrawing a running job's pause request and an illegal resume (-EPERM) are
 * not the queue's business. */
static void test_queue_limit(void **state) {
    (void)state;
    struct fx fx;
    fx_open(&fx, 0);
    char file[LORAD_STORE_ID_MAX], paused[40], running[40], a[40], b[40];
    fx_file(fx.store, file);
    fx_job(fx.store, file, Q, 0, running);
    fx_move(fx.store, running, R);
    assert_int_equal(lorad_store_job_pause(fx.store, running, NULL, NULL), 0); /* a request */
    fx_job(fx.store, file, Q, 0, paused);
    assert_int_equal(lorad_store_job_pause(fx.store, paused, NULL, NULL), 0);
    json_t *spec = json_pack("{s:{}}", "hyperparameters");
    struct lorad_store_job_new j = {.model = "m", .training_file = file, .spec = spec, .status = Q,
                                    .idempotency_key = "k", .request_hash = "h", .max_queued_jobs = 2};
    json_t *job = NULL;
    assert_int_equal(lorad_store_job_create(fx.store, &j, &job, NULL), 0);
    snprintf(a, sizeof a, "%s", json_string_value(json_object_get(job, "id")));
    json_decref(job);
    j.idempotency_key = NULL;
    assert_int_equal(lorad_store_job_create(fx.store, &j, NULL, NULL), 0);
    assert_int_equal(queued_now(fx.store), 2);

    struct lorad_error err = {0};
    job = NULL;
    assert_int_equal(lorad_store_job_create(fx.store, &j, &job, &err), -EAGAIN);
    assert_null(job);
    assert_string_equal(err.message, "2 jobs are queued (max_queued_jobs = 2); retry later");
    assert_string_equal(err.param, "");
    int events = fx_event_count(fx.store, paused);
    assert_int_equal(lorad_store_job_resume(fx.store, paused, 2, &job, &err), -EAGAIN);
    assert_null(job);
    assert_string_equal(err.message, "2 jobs are queued (max_queued_jobs = 2); retry later");
    assert_int_equal(fx_status(fx.store, paused), P);
    assert_int_equal(fx_event_count(fx.store, paused), events);
    assert_int_equal(queued_now(fx.store), 2);

    /* Not refused by a full queue. */
    j.idempotency_key = "k";
    assert_int_equal(lorad_store_job_create(fx.store, &j, &job, NULL), 1);
    assert_string_equal(json_string_value(json_object_get(job, "id")), a);
    json_decref(job);
    j.idempotency_key = NULL;
    j.status = V;
    assert_int_equal(lorad_store_job_create(fx.store, &j, NULL, NULL), 0);
    j.status = Q;
    assert_int_equal(lorad_store_job_resume(fx.store, running, 2, NULL, NULL), 0);
    assert_int_equal(control_of(fx.store, running), LORAD_JOB_CONTROL_NONE);
    assert_int_equal(lorad_store_job_resume(fx.store, a, 2, NULL, &err), -EPERM);
    assert_int_equal(queued_now(fx.store), 2);

    /* A place frees up (a claim): the resume gets it, then the queue is full again. A larger or
     * no limit (0) lets both through. */
    assert_int_equal(lorad_store_job_claim_next(fx.store, -1, NULL, NULL, NULL), 1);
    assert_int_equal(lorad_store_job_resume(fx.store, paused, 2, &job, NULL), 0);
    assert_string_equal(json_string_value(json_object_get(job, "status")), "queued");
    json_decref(job);
    assert_int_equal(lorad_store_job_create(fx.store, &j, NULL, NULL), -EAGAIN);
    j.max_queued_jobs = 3;
    assert_int_equal(lorad_store_job_create(fx.store, &j, NULL, NULL), 0);
    j.max_queued_jobs = 0;
    assert_int_equal(lorad_store_job_create(fx.store, &j, NULL, NULL), 0);
    fx_job(fx.store, file, Q, 0, b);
    assert_int_equal(lorad_store_job_pause(fx.store, b, NULL, NULL), 0);
    assert_int_equal(lorad_store_job_resume(fx.store, b, 0, NULL, NULL), 0);
    assert_int_equal(queued_now(fx.store), 5);
    json_decref(spec);
    fx_close(&fx);
}

static void test_recovery(void **state) {
    (void)state;
    struct fx fx;
    fx_open(&fx, 0);
    char file[LORAD_STORE_ID_MAX], run_ck[40], run_bare[40], cancelling[40], queued[40], paused[40];
    fx_file(fx.store, file);
    fx_job(fx.store, file, LORAD_JOB_QUEUED, 0, run_ck);
    fx_job(fx.store, file, LORAD_JOB_QUEUED, 0, run_bare);
    fx_job(fx.store, file, LORAD_JOB_QUEUED, 0, cancelling);
    fx_job(fx.store, file, LORAD_JOB_QUEUED, 0, queued);
    fx_job(fx.store, file, LORAD_JOB_QUEUED, 0, paused);
    fx_move(fx.store, run_ck, R);
    fx_move(fx.store, run_bare, R);
    fx_move(fx.store, cancelling, R);
    fx_move(fx.store, cancelling, CI);
    fx_move(fx.store, paused, P);
    struct lorad_metrics_writer *w = NULL;
    assert_int_equal(lorad_metrics_writer_new(fx.store, run_ck, 4, &w, NULL), 0);
    for (int step = 1; step <= 10; step++) {
        struct lorad_metrics_row row = {.step = step, .total_steps = 20, .train_loss = 1.0 / step};
        assert_int_equal(lorad_metrics_writer_append(w, &row, NULL), 0);
        if (step == 5 || step == 10) {
            char dir[32];
            snprintf(dir, sizeof dir, "ckpt/step-%d", step);
            assert_int_equal(lorad_metrics_writer_checkpoint(w, step, dir, NULL, 0, NULL, NULL), 0);
        }
    }
    lorad_metrics_writer_free(w);

    /* Plain reopen (an API or worker handle) never recovers. */
    fx_reopen(&fx, 0);
    assert_int_equal(fx_status(fx.store, run_ck), R);
    fx_reopen(&fx, LORAD_STORE_RECOVER);
    assert_int_equal(fx_status(fx.store, run_ck), Q);
    assert_int_equal(fx_status(fx.store, run_bare), Q);
    assert_int_equal(fx_status(fx.store, cancelling), CD);
    assert_int_equal(fx_status(fx.store, queued), Q);
    assert_int_equal(fx_status(fx.store, paused), P);

    const char *recovered[] = {run_ck, run_bare, cancelling};
    for (int i = 0; i < 3; i++) {
        json_t *page = NULL;
        assert_int_equal(lorad_store_event_list(fx.store, recovered[i], NULL, 1, &page, NULL), 0);
        json_t *ev = json_array_get(json_object_get(page, "data"), 0);
        assert_string_equal(json_string_value(json_object_get(json_object_get(ev, "data"), "code")),
                            "job_restarted");
        json_decref(page);
    }
    /* It keeps its latest checkpoint, from which the worker resumes. */
    int64_t step = 0;
    char *path = NULL;
    assert_int_equal(lorad_store_checkpoint_latest(fx.store, run_ck, NULL, &step, &path, NULL), 1);
    assert_int_equal(step, 10);
    assert_string_equal(path, "ckpt/step-10");
    free(path);
    assert_int_equal(lorad_store_checkpoint_latest(fx.store, run_bare, NULL, &step, &path, NULL), 0);
    /* Recovery is a no-op the second time. */
    int before = fx_event_count(fx.store, run_ck);
    fx_reopen(&fx, LORAD_STORE_RECOVER);
    assert_int_equal(fx_event_count(fx.store, run_ck), before);
    fx_close(&fx);
}

static void test_file_delete_in_use(void **state) {
    (void)state;
    struct fx fx;
    fx_open(&fx, 0);
    char train[40], valid[40], free_file[40], job[40];
    fx_file(fx.store, train);
    fx_file(fx.store, valid);
    fx_file(fx.store, free_file);
    json_t *spec = json_object();
    struct lorad_store_job_new j = {.model = "m", .training_file = train, .validation_file = valid,
                                    .spec = spec, .status = LORAD_JOB_QUEUED};
    json_t *obj = NULL;
    assert_int_equal(lorad_store_job_create(fx.store, &j, &obj, NULL), 0);
    snprintf(job, sizeof job, "%s", json_string_value(json_object_get(obj, "id")));
    json_decref(obj);
    json_decref(spec);
    struct lorad_error err = {0};
    enum lorad_job_status busy[] = {Q, R};
    for (int i = 0; i < 2; i++) {
        if (busy[i] == R) fx_move(fx.store, job, R);
        assert_int_equal(lorad_store_file_delete(fx.store, train, NULL, &err), -EBUSY);
        assert_non_null(strstr(err.message, job));
        assert_int_equal(lorad_store_file_delete(fx.store, valid, NULL, &err), -EBUSY);
    }
    char *path = NULL;
    assert_int_equal(lorad_store_file_delete(fx.store, free_file, &path, NULL), 0);
    assert_non_null(strstr(path, free_file));
    free(path);
    assert_int_equal(lorad_store_file_get(fx.store, free_file, &obj, &err), -ENOENT);
    assert_int_equal(lorad_store_file_delete(fx.store, free_file, NULL, &err), -ENOENT);

    fx_move(fx.store, job, S);
    assert_int_equal(lorad_store_file_delete(fx.store, train, NULL, NULL), 0);
    assert_int_equal(lorad_store_file_delete(fx.store, valid, NULL, NULL), 0);
    fx_close(&fx);
}

static void test_ids(void **state) {
    (void)state;
    char a[LORAD_STORE_ID_MAX], b[LORAD_STORE_ID_MAX];
    assert_int_equal(lorad_store_new_id("ftjob-", a), 0);
    assert_int_equal(lorad_store_new_id("ftjob-", b), 0);
    assert_int_equal(strlen(a), strlen("ftjob-") + 24);
    assert_string_not_equal(a, b);
    assert_true(lorad_store_id_valid("ftjob-", a));
    assert_false(lorad_store_id_valid("file-", a));
    assert_true(lorad_store_id_valid("file-", "file-abcdefghijklmnopqrstuvwX"));
    assert_false(lorad_store_id_valid("file-", "file-abcdefghijklmnopqrstuvw"));   /* 23 */
    assert_false(lorad_store_id_valid("file-", "file-abcdefghijklmnopqrstuvwXY")); /* 25 */
    assert_false(lorad_store_id_valid("file-", "file-../../../../etc/passwdxxxx"));
    assert_false(lorad_store_id_valid("file-", "file-abcdefghijklmnopqrstu/w"));
    assert_false(lorad_store_id_valid("file-", "file-abcdefghijklmnopqrstuv-X"));
    assert_false(lorad_store_id_valid("file-", ""));
    assert_false(lorad_store_id_valid("file-", NULL));
}

static void test_input_limits(void **state) {
    (void)state;
    struct fx fx;
    fx_open(&fx, 0);
    char file[LORAD_STORE_ID_MAX], id[LORAD_STORE_ID_MAX], job[LORAD_STORE_ID_MAX];
    fx_file(fx.store, file);
    fx_job(fx.store, file, LORAD_JOB_QUEUED, 0, job);
    struct lorad_error err = {0};
    /* Invalid UTF-8 could never be served back as JSON: refused at the door. */
    assert_int_equal(lorad_store_new_id("file-", id), 0);
    struct lorad_store_file_new f = {
        .id = id, .filename = "bad\xff\xfe.jsonl", .purpose = "fine-tune", .bytes = 1,
        .sha256 = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        .status = "uploaded", .path = "files/x"};
    assert_int_equal(lorad_store_file_create(fx.store, &f, NULL, &err), -EINVAL);
    assert_string_equal(err.param, "filename");
    f.filename = "ok.jsonl";
    f.id = "file-short";
    assert_int_equal(lorad_store_file_create(fx.store, &f, NULL, &err), -EINVAL);
    assert_string_equal(err.param, "id");
    /* A spec over 1 MiB. */
    char *big = malloc(1u << 21);
    memset(big, 'a', (1u << 21) - 1);
    big[(1u << 21) - 1] = '\0';
    json_t *spec = json_pack("{s:s}", "blob", big);
    struct lorad_store_job_new j = {.model = "m", .training_file = file, .spec = spec,
                                    .status = LORAD_JOB_QUEUED};
    assert_int_equal(lorad_store_job_create(fx.store, &j, NULL, &err), -EINVAL);
    assert_string_equal(err.param, "spec");
    json_decref(spec);
    assert_int_equal(lorad_store_event_append(fx.store, job, "info", "message", big, NULL, NULL,
                                              &err), -EINVAL);
    free(big);
    json_t *list = NULL;
    assert_int_equal(lorad_store_file_list(fx.store, NULL, NULL, 10, &list, NULL), 0);
    assert_int_equal(json_array_size(json_object_get(list, "data")), 1);
    json_decref(list);
    fx_close(&fx);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_transition_table),
        cmocka_unit_test(test_transition_fields),
        cmocka_unit_test(test_transition_message),
        cmocka_unit_test(test_job_status),
        cmocka_unit_test(test_job_spec_and_fine_tuned_names),
        cmocka_unit_test(test_idempotency),
        cmocka_unit_test(test_claim_order),
        cmocka_unit_test(test_claim_memory_budget),
        cmocka_unit_test(test_claim_atomic),
        cmocka_unit_test(test_queue_positions_at_scale),
        cmocka_unit_test(test_control_requests),
        cmocka_unit_test(test_queue_limit),
        cmocka_unit_test(test_recovery),
        cmocka_unit_test(test_file_delete_in_use),
        cmocka_unit_test(test_ids),
        cmocka_unit_test(test_input_limits),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
