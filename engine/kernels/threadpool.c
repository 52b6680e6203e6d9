#include "threadpool.h"

#include <cblas.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>

struct lorad_pool {
    int n_threads;
    pthread_t *threads;
    pthread_mutex_t mu;
    pthread_cond_t start_cv;
    pthread_cond_t done_cv;
    uint64_t generation; /* bumped for every run; workers wait for a new one */
    int pending;         /* workers that have not finished the current run */
    int stopping;
    lorad_pool_fn fn;
    void *ctx;
};

struct worker_arg {
    struct lorad_pool *pool;
    int tid;
};

static void *worker_main(void *arg_) {
    struct worker_arg arg = *(struct worker_arg *)arg_;
    free(arg_);
    struct lorad_pool *p = arg.pool;
    uint64_t seen = 0;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->stopping && p->generation == seen) pthread_cond_wait(&p->start_cv, &p->mu);
        if (p->stopping) break;
        seen = p->generation;
        lorad_pool_fn fn = p->fn;
        void *ctx = p->ctx;
        pthread_mutex_unlock(&p->mu);
        fn(ctx, arg.tid, p->n_threads);
        pthread_mutex_lock(&p->mu);
        if (--p->pending == 0) pthread_cond_signal(&p->done_cv);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

static pthread_once_t blas_once = PTHREAD_ONCE_INIT;
static void blas_single_thread(void) { openblas_set_num_threads(1); }

int lorad_pool_new(struct lorad_pool **ret_pool, int n_threads) {
    if (n_threads < 1 || n_threads > LORAD_MAX_THREADS) return -EINVAL;
    pthread_once(&blas_once, blas_single_thread);
    struct lorad_pool *p = calloc(1, sizeof *p);
    if (!p) return -ENOMEM;
    p->n_threads = n_threads;
    p->threads = calloc((size_t)n_threads, sizeof *p->threads);
    if (!p->threads) { free(p); return -ENOMEM; }
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->start_cv, NULL);
    pthread_cond_init(&p->done_cv, NULL);
    for (int t = 1; t < n_threads; t++) {
        struct worker_arg *a = malloc(sizeof *a);
        int r = ENOMEM;
        if (a) {
            a->pool = p;
            a->tid = t;
            r = pthread_create(&p->threads[t], NULL, worker_main, a);
        }
        if (r != 0) {
            free(a);
            p->n_threads = t; /* join only the workers already started */
            lorad_pool_free(p);
            return -r;
        }
    }
    *ret_pool = p;
    return 0;
}

void lorad_pool_free(struct lorad_pool *p) {
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    p->stopping = 1;
    pthread_cond_broadcast(&p->start_cv);
    pthread_mutex_unlock(&p->mu);
    for (int t = 1; t < p->n_threads; t++) pthread_join(p->threads[t], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->start_cv);
    pthread_cond_destroy(&p->done_cv);
    free(p->threads);
    free(p);
}

int lorad_pool_size(const struct lorad_pool *p) { return p->n_threads; }

void lorad_pool_run(struct lorad_pool *p, lorad_pool_fn fn, void *ctx) {
    if (p->n_threads == 1) {
        fn(ctx, 0, 1);
        return;
    }
    pthread_mutex_lock(&p->mu);
    p->fn = fn;
    p->ctx = ctx;
    p->pending = p->n_threads - 1;
    p->generation++;
    pthread_cond_broadcast(&p->start_cv);
    pthread_mutex_unlock(&p->mu);
    fn(ctx, 0, p->n_threads);
    pthread_mutex_lock(&p->mu);
    while (p->pending > 0) pthread_cond_wait(&p->done_cv, &p->mu);
    pthread_mutex_unlock(&p->mu);
}

void lorad_pool_slice(int64_t n, int tid, int n_threads, int64_t align, int64_t *ret_begin, int64_t *ret_end) {
    if (align < 1) align = 1;
    int64_t units = (n + align - 1) / align;
    int64_t b = units * tid / n_threads * align, e = units * (tid + 1) / n_threads * align;
    if (b > n) b = n;
    if (e > n) e = n;
    *ret_begin = b;
    *ret_end = e;
}
