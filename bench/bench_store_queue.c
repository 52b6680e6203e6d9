/* bench_store_queue [--queued N] [--reps R]: how long the store takes to list a page of jobs and
 * to read one job while N jobs (default 10000) wait in the queue, since every queued job in a page
 * carries its queue_position. The jobs are inserted with one raw SQL statement into a real
 * database file (a create per job would time fsyncs, not the read); the reads go through the
 * store as the API calls them. Prints the median and worst of R (default 20) runs of each read.
 * Target (issue 13): every read under 50 ms with 10000 queued jobs. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <sqlite3.h>

#include "store.h"

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void die(const char *what, const struct lorad_error *err) {
    fprintf(stderr, "bench_store_queue: %s: %s\n", what, err ? err->message : "");
    exit(1);
}

/* n_queued queued jobs with priorities -3..3 in a scrambled order, interleaved with n_queued / 10
 * finished ones (a list without a status filter walks both). */
static void fill(const char *db, const char *file_id, int n_queued) {
    sqlite3 *raw = NULL;
    if (sqlite3_open_v2(db, &raw, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK) die("open raw", NULL);
    char sql[1024];
    snprintf(sql, sizeof sql,
             "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < %d)"
             " INSERT INTO jobs(id, model, training_file, spec, status, created_at, seed, priority)"
             " SELECT printf('ftjob-%%024d', i), 'stories260K', '%s', '{}',"
             " CASE WHEN i %% 11 = 0 THEN 'succeeded' ELSE 'queued' END, 1700000000 + i, 42,"
             " (i * 7919) %% 7 - 3 FROM n",
             n_queued + n_queued / 10, file_id);
    char *msg = NULL;
    if (sqlite3_exec(raw, sql, NULL, NULL, &msg) != SQLITE_OK) {
        fprintf(stderr, "bench_store_queue: fill: %s\n", msg);
        exit(1);
    }
    sqlite3_close(raw);
}

struct read {
    const char *name;
    int kind; /* 0 = list, 1 = get */
    int status, limit;
    const char *id;
};

int main(int argc, char **argv) {
    int n_queued = 10000, reps = 20;
    static const struct option opts[] = {{"queued", required_argument, NULL, 'q'},
                                         {"reps", required_argument, NULL, 'r'},
                                         {NULL, 0, NULL, 0}};
    for (int c; (c = getopt_long(argc, argv, "", opts, NULL)) != -1;) {
        if (c == 'q') n_queued = atoi(optarg);
        else if (c == 'r') reps = atoi(optarg);
        else return 2;
    }
    if (n_queued < 1 || reps < 1) return 2;

    char dir[] = "/tmp/lorad-bench-store-XXXXXX";
    if (!mkdtemp(dir)) die("mkdtemp", NULL);
    char db[sizeof dir + 16];
    snprintf(db, sizeof db, "%s/lorad.db", dir);
    struct lorad_error err = {0};
    struct lorad_store *s = NULL;
    if (lorad_store_open(db, NULL, &s, &err) < 0) die("open", &err);
    char file_id[LORAD_STORE_ID_MAX];
    lorad_store_new_id("file-", file_id);
    struct lorad_store_file_new f = {
        .id = file_id, .filename = "train.jsonl", .purpose = "fine-tune", .bytes = 1,
        .sha256 = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        .status = "processed", .path = "files/x"};
    if (lorad_store_file_create(s, &f, NULL, &err) < 0) die("file", &err);
    fill(db, file_id, n_queued);

    /* The newest queued job is last in the queue (FIFO within its priority): the longest count. */
    json_t *page = NULL;
    if (lorad_store_job_list(s, LORAD_JOB_QUEUED, NULL, 1, &page, &err) < 0) die("list", &err);
    char newest[LORAD_STORE_ID_MAX];
    snprintf(newest, sizeof newest, "%s", json_string_value(json_object_get(page, "first_id")));
    json_decref(page);

    const struct read reads[] = {
        {"list limit=20 (API default)", 0, -1, 20, NULL},
        {"list limit=100 (API max)", 0, -1, 100, NULL},
        {"list status=queued limit=100", 0, LORAD_JOB_QUEUED, 100, NULL},
        {"list status=succeeded limit=100", 0, LORAD_JOB_SUCCEEDED, 100, NULL},
        {"get newest queued job", 1, 0, 0, newest},
    };
    printf("%d queued jobs (+%d finished), %d runs each\n", n_queued, n_queued / 10, reps);
    double *t = calloc((size_t)reps, sizeof *t);
    for (size_t k = 0; k < sizeof reads / sizeof reads[0]; k++) {
        const struct read *rd = &reads[k];
        for (int i = 0; i < reps; i++) {
            json_t *obj = NULL;
            double t0 = now_ms();
            int r = rd->kind == 0 ? lorad_store_job_list(s, rd->status, NULL, rd->limit, &obj, &err)
                                  : lorad_store_job_get(s, rd->id, &obj, &err);
            t[i] = now_ms() - t0;
            if (r < 0) die(rd->name, &err);
            json_decref(obj);
        }
        qsort(t, (size_t)reps, sizeof *t, cmp_double);
        printf("  %-32s median %8.2f ms  worst %8.2f ms\n", rd->name, t[reps / 2], t[reps - 1]);
    }
    free(t);
    lorad_store_close(s);
    unlink(db);
    char side[sizeof db + 8];
    snprintf(side, sizeof side, "%s-wal", db);
    unlink(side);
    snprintf(side, sizeof side, "%s-shm", db);
    unlink(side);
    rmdir(dir);
    return 0;
}
