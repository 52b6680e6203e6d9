/* Concurrency: 8 threads write to 4 jobs while 4 threads read lists and stream events. Each job
 * has two writers, as in the daemon: a "worker" thread writing metrics, checkpoints and messages,
 * and an "API" thread appending messages to the same job's event log. All all through one shared struct lorad_store, for a few
 * seconds (LORAD_STORE_STRESS_S overrides). Afterwards nothing is lost or duplicated, and no
 * reader ever saw a gap or a repeat in a job's event sequence. */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "store_fixture.h"

enum { WRITERS = 8, JOBS = WRITERS / 2, READERS = 4, CKPT_EVERY = 25 };

static atomic_bool stop;

struct writer {
    struct lorad_store *store;
    int index;
    bool worker; /* metrics + checkpoints + messages; else messages only */
    char job[LORAD_STORE_ID_MAX];
    int messages, steps, checkpoints, failures;
    char why[700];
};

struct reader {
    struct lorad_store *store;
    struct writer *writers; /* writers[2k] is job k's worker */
    int64_t seen_seq[JOBS];
    int64_t seen_step[JOBS];
    long reads;
    int failures;
    char why[700];
};

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void *write_loop(void *arg) {
    struct writer *w = arg;
    struct lorad_error err = {0};
    struct lorad_metrics_writer *mw = NULL;
    if (w->worker && lorad_metrics_writer_new(w->store, w->job, 8, &mw, &err) < 0) {
        w->failures++;
        return NULL;
    }
    int r = 0;
    for (long i = 0; !atomic_load(&stop); i++) {
        if (w->worker) {
            struct lorad_metrics_row row = {.step = w->steps + 1, .total_steps = 1000000,
                                            .train_loss = 1.0 / (w->steps + 1),
                                            .tokens_seen = w->steps};
            r = lorad_metrics_writer_append(mw, &row, &err);
            if (r < 0) goto fail;
            w->steps++;
            if (w->steps % CKPT_EVERY == 0) {
                char path[48];
                snprintf(path, sizeof path, "ckpt/%d", w->steps);
                r = lorad_metrics_writer_checkpoint(mw, w->steps, path, NULL, 0, NULL, &err);
                if (r < 0) goto fail;
                w->checkpoints++;
            }
        }
        if (!w->worker || i % 3 == 0) {
            char msg[32];
            snprintf(msg, sizeof msg, "%d:%d", w->index, w->messages);
            r = lorad_store_event_append(w->store, w->job, "info", "message", msg, NULL, NULL, &err);
            if (r < 0) goto fail;
            w->messages++;
        }
    }
    if (mw && lorad_metrics_writer_flush(mw, &err) < 0) w->failures++;
    lorad_metrics_writer_free(mw);
    return NULL;
fail:
    w->failures++;
    snprintf(w->why, sizeof w->why, "%d %s", r, err.message);
    lorad_metrics_writer_free(mw);
    return NULL;
}

static void *read_loop(void *arg) {
    struct reader *rd = arg;
    struct lorad_error err = {0};
    while (!atomic_load(&stop) && !rd->failures) {
        for (int k = 0; k < JOBS && !rd->failures; k++) {
            json_t *events = NULL;
            int64_t last = 0;
            int r = lorad_store_event_since(rd->store, rd->writers[2 * k].job, rd->seen_seq[k], 200,
                                            &events, &last, &err);
            if (r < 0) {
                rd->failures++;
                snprintf(rd->why, sizeof rd->why, "event_since %d %s", r, err.message);
                break;
            }
            for (size_t i = 0; i < json_array_size(events); i++) {
                int64_t seq = json_integer_value(json_object_get(json_array_get(events, i), "seq"));
                if (seq != rd->seen_seq[k] + 1) {
                    rd->failures++;
                    snprintf(rd->why, sizeof rd->why, "job %d: seq %lld after %lld", k,
                             (long long)seq, (long long)rd->seen_seq[k]);
                    break;
                }
                rd->seen_seq[k] = seq;
            }
            json_decref(events);
            json_t *rows = NULL;
            r = lorad_store_metrics_list(rd->store, rd->writers[2 * k].job, rd->seen_step[k], 1000,
                                         &rows, &err);
            if (r < 0) {
                rd->failures++;
                snprintf(rd->why, sizeof rd->why, "metrics %d %s", r, err.message);
                break;
            }
            for (size_t i = 0; i < json_array_size(rows); i++) {
                int64_t step = json_integer_value(json_object_get(json_array_get(rows, i), "step"));
                if (step != rd->seen_step[k] + 1) {
                    rd->failures++;
                    snprintf(rd->why, sizeof rd->why, "job %d: step %lld after %lld", k,
                             (long long)step, (long long)rd->seen_step[k]);
                    break;
                }
                rd->seen_step[k] = step;
            }
            json_decref(rows);
            json_t *page = NULL;
            r = lorad_store_job_list(rd->store, LORAD_JOB_RUNNING, NULL, 20, &page, &err);
            if (r < 0 || json_array_size(json_object_get(page, "data")) != JOBS) {
                rd->failures++;
                snprintf(rd->why, sizeof rd->why, "job_list %d %s", r, err.message);
            }
            json_decref(page);
            rd->reads += 3;
        }
    }
    return NULL;
}

static void test_writers_and_readers(void **state) {
    (void)state;
    double seconds = 3.0;
    const char *env = getenv("LORAD_STORE_STRESS_S");
    if (env) seconds = atof(env);
    struct fx fx;
    fx_open(&fx, 0);
    char file[LORAD_STORE_ID_MAX];
    fx_file(fx.store, file);
    static struct writer writers[WRITERS];
    static struct reader readers[READERS];
    for (int k = 0; k < WRITERS; k++) {
        memset(&writers[k], 0, sizeof writers[k]);
        writers[k].store = fx.store;
        writers[k].index = k;
        writers[k].worker = k % 2 == 0;
        if (writers[k].worker) {
            fx_job(fx.store, file, LORAD_JOB_QUEUED, 0, writers[k].job);
            fx_move(fx.store, writers[k].job, LORAD_JOB_RUNNING);
        } else {
            memcpy(writers[k].job, writers[k - 1].job, LORAD_STORE_ID_MAX);
        }
    }
    atomic_store(&stop, false);
    pthread_t wt[WRITERS], rt[READERS];
    for (int k = 0; k < WRITERS; k++) assert_int_equal(pthread_create(&wt[k], NULL, write_loop, &writers[k]), 0);
    for (int k = 0; k < READERS; k++) {
        memset(&readers[k], 0, sizeof readers[k]);
        readers[k].store = fx.store;
        readers[k].writers = writers;
        assert_int_equal(pthread_create(&rt[k], NULL, read_loop, &readers[k]), 0);
    }
    double t0 = now_s();
    while (now_s() - t0 < seconds) {
        struct timespec ts = {0, 50 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    atomic_store(&stop, true);
    for (int k = 0; k < WRITERS; k++) pthread_join(wt[k], NULL);
    for (int k = 0; k < READERS; k++) pthread_join(rt[k], NULL);

    long total_steps = 0, total_reads = 0;
    for (int k = 0; k < READERS; k++) {
        if (readers[k].failures) fprintf(stderr, "reader %d: %s\n", k, readers[k].why);
        assert_int_equal(readers[k].failures, 0);
        total_reads += readers[k].reads;
    }
    for (int k = 0; k < WRITERS; k++) {
        if (writers[k].failures) fprintf(stderr, "writer %d: %s\n", k, writers[k].why);
        assert_int_equal(writers[k].failures, 0);
        assert_true(writers[k].messages > 0);
    }
    for (int k = 0; k < JOBS; k++) {
        struct writer *w = &writers[2 * k], *api = &writers[2 * k + 1];
        assert_true(w->steps > 0);
        total_steps += w->steps;
        /* Every event exactly once: creation, start, one per metrics row, one per checkpoint, and
         * each thread's messages 0..n-1 in the order that thread wrote them. */
        int64_t expected = 2 + w->steps + w->checkpoints + w->messages + api->messages;
        int64_t after = 0, n = 0;
        int next_message[2] = {0, 0};
        for (;;) {
            json_t *events = NULL;
            int64_t last = 0;
            assert_int_equal(lorad_store_event_since(fx.store, w->job, after, 1000, &events, &last, NULL), 0);
            size_t m = json_array_size(events);
            for (size_t i = 0; i < m; i++) {
                json_t *ev = json_array_get(events, i);
                assert_int_equal(json_integer_value(json_object_get(ev, "seq")), ++n);
                if (!strcmp(json_string_value(json_object_get(ev, "type")), "message")) {
                    int who = -1, idx = -1;
                    assert_int_equal(sscanf(json_string_value(json_object_get(ev, "message")),
                                            "%d:%d", &who, &idx), 2);
                    assert_true(who == w->index || who == api->index);
                    assert_int_equal(idx, next_message[who - w->index]++);
                }
            }
            after = last;
            json_decref(events);
            if (m == 0) break;
        }
        assert_int_equal(n, expected);
        assert_int_equal(next_message[0], w->messages);
        assert_int_equal(next_message[1], api->messages);
        json_t *rows = NULL;
        assert_int_equal(lorad_store_metrics_list(fx.store, w->job, 0, 100000, &rows, NULL), 0);
        assert_int_equal(json_array_size(rows), w->steps);
        json_decref(rows);
        for (int r = 0; r < READERS; r++) assert_true(readers[r].seen_seq[k] <= expected);
    }
    fprintf(stderr, "concurrency: %.1f s, %ld metric steps written, %ld reads\n", seconds,
            total_steps, total_reads);
    fx_close(&fx);
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_writers_and_readers)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
