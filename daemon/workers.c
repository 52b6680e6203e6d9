#include "workers.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "job_run.h"
#include "log.h"
#include "store.h"

struct worker {
    struct lorad_workers *pool;
    pthread_t thread;
    int index;
    /* The job this worker runs and its last rate; read by /metrics under pool->mu. */
    char job_id[LORAD_STORE_ID_MAX];
    double tokens_per_s;
};

struct lorad_workers {
    struct lorad_workers_options opt;
    /* Held by a worker from reading the free memory until its claimed job is counted in
     * reserved_bytes, so two workers never both take the same free memory. Taken before mu. */
    pthread_mutex_t claim_mu;
    pthread_mutex_t mu;
    pthread_cond_t wake;   /* the queue may have changed, or stop */
    pthread_cond_t idle;   /* a job ended */
    uint64_t generation;   /* bumped by every wake, so a wake between a claim and a wait is not lost */
    atomic_bool stopping;
    int busy;
    int64_t reserved_bytes; /* the memory estimates of the running jobs */
    int n;
    struct worker *w;
};

/* The absolute time ms from now on CLOCK_MONOTONIC, the clock both condition variables wait on:
 * a step of the wall clock (NTP, settimeofday, a resumed VM) must neither stretch a wait by the
 * size of the step nor end every wait at once. */
static void deadline_after(struct timespec *ts, unsigned ms) {
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

/* Initialises *c to time its waits on CLOCK_MONOTONIC (deadline_after's clock). Returns 0 or -errno;
 * *c is initialised only on success. */
static int cond_init_monotonic(pthread_cond_t *c) {
    pthread_condattr_t ca;
    int r = pthread_condattr_init(&ca);
    if (r != 0) return -r;
    r = pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    if (r == 0) r = pthread_cond_init(c, &ca);
    pthread_condattr_destroy(&ca);
    return -r;
}

static void set_rate(void *ctx, double tokens_per_s) {
    struct worker *w = ctx;
    pthread_mutex_lock(&w->pool->mu);
    w->tokens_per_s = tokens_per_s;
    pthread_mutex_unlock(&w->pool->mu);
}

static void *worker_main(void *arg) {
    struct worker *w = arg;
    struct lorad_workers *p = w->pool;
    char name[16]; /* the kernel's limit: top -H and /proc/PID/task/TID/comm show it */
    snprintf(name, sizeof name, "lorad-job-%d", w->index);
    pthread_setname_np(pthread_self(), name);
    struct lorad_job_env env = {.store = p->opt.store, .state_dir = p->opt.state_dir, .models_dir = p->opt.models_dir,
                                .jobs_dir = p->opt.jobs_dir, .max_threads = p->opt.max_threads_per_job,
                                .memory_limit = p->opt.memory_limit,
                                .metrics_batch_rows = p->opt.metrics_batch_rows, .shutdown = &p->stopping,
                                .distributed = p->opt.distributed,
                                .on_rate = set_rate, .rate_ctx = w};
    unsigned poll_ms = p->opt.poll_ms ? p->opt.poll_ms : 1000;
    int claim_errors = 0;
    int64_t logged_waiting = 0;
    pthread_mutex_lock(&p->mu);
    while (!atomic_load(&p->stopping)) {
        uint64_t seen = p->generation;
        pthread_mutex_unlock(&p->mu);
        json_t *job = NULL;
        struct lorad_error err = {0};
        int64_t waiting = 0;
        pthread_mutex_lock(&p->claim_mu);
        pthread_mutex_lock(&p->mu);
        /* With nothing running any job may start: one whose estimate exceeds the whole limit
         * (made under a larger one) then fails in the engine's own check, naming the limit,
         * instead of blocking the queue for ever. */
        int64_t free_bytes = p->opt.memory_limit <= 0 || p->busy == 0 ? -1 : p->opt.memory_limit - p->reserved_bytes;
        if (free_bytes < -1) free_bytes = 0;
        /* Counted busy before the claim commits, not after: the store shows the job running the
         * moment it commits, and a shutdown (or a test) that saw it running must not find the
         * pool idle in the gap before this worker counts it. Uncounted again if nothing came. */
        p->busy++;
        pthread_mutex_unlock(&p->mu);
        int r = lorad_store_job_claim_next(p->opt.store, free_bytes, &job, &waiting, &err);
        int64_t job_bytes = 0;
        pthread_mutex_lock(&p->mu);
        if (r == 1) {
            json_t *est = json_object_get(job, "memory_estimate_bytes");
            job_bytes = json_is_integer(est) ? json_integer_value(est) : 0;
            const char *id = json_string_value(json_object_get(job, "id"));
            snprintf(w->job_id, sizeof w->job_id, "%s", id ? id : "");
            w->tokens_per_s = NAN;
            p->reserved_bytes += job_bytes;
        } else {
            p->busy--;
            pthread_cond_broadcast(&p->idle);
        }
        pthread_mutex_unlock(&p->mu);
        pthread_mutex_unlock(&p->claim_mu);
        if (r == 1) {
            claim_errors = 0;
            logged_waiting = 0;
            lorad_job_run(&env, job);
            json_decref(job);
            pthread_mutex_lock(&p->mu);
            w->job_id[0] = '\0';
            p->busy--;
            p->reserved_bytes -= job_bytes;
            pthread_cond_broadcast(&p->idle);
            /* its memory is free again: a worker waiting for it looks at the queue now */
            p->generation++;
            pthread_cond_broadcast(&p->wake);
            continue; /* look for the next job at once */
        }
        if (r == 0 && waiting > 0 && waiting != logged_waiting && w->index == 0) {
            log_info("the next queued job needs an estimated %.2f GiB; it starts when running jobs free that much of "
                     "memory_limit (%.2f GiB)",
                     (double)waiting / (1 << 30), (double)p->opt.memory_limit / (1 << 30));
            logged_waiting = waiting;
        }
        if (r < 0 && claim_errors++ == 0)
            log_error("worker %d: cannot claim a job: %s", w->index, err.message[0] ? err.message : strerror(-r));
        pthread_mutex_lock(&p->mu);
        if (!atomic_load(&p->stopping) && p->generation == seen) {
            struct timespec ts;
            deadline_after(&ts, poll_ms);
            pthread_cond_timedwait(&p->wake, &p->mu, &ts);
        }
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

int lorad_workers_start(const struct lorad_workers_options *o, struct lorad_workers **ret_pool) {
    if (!o->store || o->workers < 1 || o->max_threads_per_job < 1 || o->memory_limit < 0) return -EINVAL;
    struct lorad_workers *p = calloc(1, sizeof *p);
    if (!p) return -ENOMEM;
    p->w = calloc((size_t)o->workers, sizeof *p->w);
    if (!p->w) {
        free(p);
        return -ENOMEM;
    }
    p->opt = *o;
    int r = cond_init_monotonic(&p->wake);
    if (r == 0 && (r = cond_init_monotonic(&p->idle)) < 0) pthread_cond_destroy(&p->wake);
    if (r < 0) {
        free(p->w);
        free(p);
        return r;
    }
    pthread_mutex_init(&p->claim_mu, NULL);
    pthread_mutex_init(&p->mu, NULL);
    atomic_init(&p->stopping, false);
    for (int i = 0; i < o->workers; i++) {
        p->w[i] = (struct worker){.pool = p, .index = i, .tokens_per_s = NAN};
        r = pthread_create(&p->w[i].thread, NULL, worker_main, &p->w[i]);
        if (r != 0) {
            lorad_workers_free(p); /* joins the p->n already running */
            return -r;
        }
        p->n++;
    }
    *ret_pool = p;
    return 0;
}

void lorad_workers_wake(void *ctx) {
    struct lorad_workers *p = ctx;
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    p->generation++;
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
}

bool lorad_workers_live_rate(void *ctx, const char *job_id, double *ret_tokens_per_s) {
    struct lorad_workers *p = ctx;
    bool found = false;
    if (!p || !job_id) return false;
    pthread_mutex_lock(&p->mu);
    for (int i = 0; i < p->n; i++)
        if (p->w[i].job_id[0] && strcmp(p->w[i].job_id, job_id) == 0 && isfinite(p->w[i].tokens_per_s)) {
            *ret_tokens_per_s = p->w[i].tokens_per_s;
            found = true;
        }
    pthread_mutex_unlock(&p->mu);
    return found;
}

int lorad_workers_busy(struct lorad_workers *p) {
    pthread_mutex_lock(&p->mu);
    int n = p->busy;
    pthread_mutex_unlock(&p->mu);
    return n;
}

void lorad_workers_request_stop(struct lorad_workers *p) {
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->stopping, true);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
}

int lorad_workers_wait(struct lorad_workers *p, unsigned timeout_ms) {
    struct timespec ts;
    deadline_after(&ts, timeout_ms);
    pthread_mutex_lock(&p->mu);
    while (p->busy > 0 && pthread_cond_timedwait(&p->idle, &p->mu, &ts) == 0) {
    }
    int n = p->busy;
    pthread_mutex_unlock(&p->mu);
    return n;
}

void lorad_workers_free(struct lorad_workers *p) {
    if (!p) return;
    lorad_workers_request_stop(p);
    for (int i = 0; i < p->n; i++) pthread_join(p->w[i].thread, NULL);
    pthread_cond_destroy(&p->idle);
    pthread_cond_destroy(&p->wake);
    pthread_mutex_destroy(&p->mu);
    pthread_mutex_destroy(&p->claim_mu);
    free(p->w);
    free(p);
}
