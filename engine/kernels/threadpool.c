#include "threadpool.h"

#include <cblas.h>
#include <errno.h>
#include <immintrin.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

/* How long a spinning pool's threads poll before they sleep, in pause instructions (a pause is
 * some 10 to 150 cycles by CPU, so 100 µs or less). A decode step hands work to the pool about
 * twenty times per layer with a few µs of serial work in between; a sleeping worker costs a futex
 * wake each time (~25 µs measured per run), a polling one about a cache-line transfer. */
#define SPIN_PAUSES 4096

struct lorad_pool {
    int n_threads;
    pthread_t *threads;
    pthread_mutex_t mu;
    pthread_cond_t start_cv;
    pthread_cond_t done_cv;
    /* bumped for every run (with release order after fn and ctx are written); workers wait for a
     * new one. Written under mu, so a worker that checks it under mu and then waits on start_cv
     * cannot miss the broadcast. */
    _Atomic uint64_t generation;
    _Atomic int pending; /* workers that have not finished the current run */
    _Atomic int stopping;
    atomic_bool spin;
    lorad_pool_fn fn;
    void *ctx;
};

struct worker_arg {
    struct lorad_pool *pool;
    int tid;
};

/* Polls until the generation moves past seen or the pool stops; false when the spin ran out. */
static bool spin_for_work(struct lorad_pool *p, uint64_t seen) {
    if (!atomic_load_explicit(&p->spin, memory_order_relaxed)) return false;
    for (int i = 0; i < SPIN_PAUSES; i++) {
        if (atomic_load_explicit(&p->generation, memory_order_acquire) != seen ||
            atomic_load_explicit(&p->stopping, memory_order_relaxed))
            return true;
        _mm_pause();
    }
    return false;
}

static void *worker_main(void *arg_) {
    struct worker_arg arg = *(struct worker_arg *)arg_;
    free(arg_);
    struct lorad_pool *p = arg.pool;
    uint64_t seen = 0;
    pthread_setname_np(pthread_self(), "lorad-compute"); /* for top -H; it cannot fail at this length */
    for (;;) {
        if (!spin_for_work(p, seen)) {
            pthread_mutex_lock(&p->mu);
            while (!atomic_load(&p->stopping) && atomic_load(&p->generation) == seen)
                pthread_cond_wait(&p->start_cv, &p->mu);
            pthread_mutex_unlock(&p->mu);
        }
        if (atomic_load(&p->stopping)) break;
        seen = atomic_load_explicit(&p->generation, memory_order_acquire);
        p->fn(p->ctx, arg.tid, p->n_threads);
        if (atomic_fetch_sub_explicit(&p->pending, 1, memory_order_acq_rel) == 1) {
            /* the caller may be asleep on done_cv after checking pending under mu */
            pthread_mutex_lock(&p->mu);
            pthread_cond_signal(&p->done_cv);
            pthread_mutex_unlock(&p->mu);
        }
    }
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
    atomic_store(&p->stopping, 1);
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

void lorad_pool_set_spin(struct lorad_pool *p, bool spin) { atomic_store(&p->spin, spin); }

void lorad_pool_run(struct lorad_pool *p, lorad_pool_fn fn, void *ctx) {
    if (p->n_threads == 1) {
        fn(ctx, 0, 1);
        return;
    }
    p->fn = fn;
    p->ctx = ctx;
    atomic_store_explicit(&p->pending, p->n_threads - 1, memory_order_relaxed);
    pthread_mutex_lock(&p->mu);
    atomic_fetch_add_explicit(&p->generation, 1, memory_order_release);
    pthread_cond_broadcast(&p->start_cv); /* no system call when no worker sleeps */
    pthread_mutex_unlock(&p->mu);
    fn(ctx, 0, p->n_threads);
    bool spin = atomic_load_explicit(&p->spin, memory_order_relaxed);
    for (int i = 0; spin && i < SPIN_PAUSES; i++) {
        if (atomic_load_explicit(&p->pending, memory_order_acquire) == 0) return;
        _mm_pause();
    }
    pthread_mutex_lock(&p->mu);
    while (atomic_load_explicit(&p->pending, memory_order_acquire) > 0) pthread_cond_wait(&p->done_cv, &p->mu);
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
