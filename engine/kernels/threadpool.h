/* The engine's own fixed pool of threads.
 *
 * Design (why not OpenBLAS threads): OpenBLAS is switched to one thread once, when the first pool
 * is created (openblas_set_num_threads(1)), and every GEMM is partitioned across this pool: each
 * worker multiplies its own slice single-threaded (cblas_sgemm, or the engine's AVX-512 kernel,
 * sgemm_avx512.h, which follows the same rule). Concurrent single-threaded sgemm calls from different
 * threads really run in parallel (measured 1.86x for two callers, docs/performance-facts), whereas
 * calls that each ask OpenBLAS for several threads are serialised inside OpenBLAS. So a run given
 * N threads uses exactly N threads (the caller plus N-1 workers), and two jobs with N/2 threads
 * each run side by side without oversubscription.
 *
 * Work is split statically (thread t always gets the same slice for the same sizes), so results
 * are bit-identical for a fixed thread count regardless of scheduling. */
#pragma once
#include <stdbool.h>
#include <stdint.h>

struct lorad_pool;

/* fn runs once on every thread of the pool with tid in [0, n_threads). */
typedef void (*lorad_pool_fn)(void *ctx, int tid, int n_threads);

/* Creates a pool of n_threads threads in total (the caller counts as one: n_threads-1 workers are
 * started). 1 <= n_threads <= LORAD_MAX_THREADS. Returns 0 and *ret_pool, -EINVAL, -ENOMEM or
 * the pthread_create error. */
#define LORAD_MAX_THREADS 256
int lorad_pool_new(struct lorad_pool **ret_pool, int n_threads);

/* Stops and joins the workers and frees the pool. Safe on NULL. */
void lorad_pool_free(struct lorad_pool *pool);

int lorad_pool_size(const struct lorad_pool *pool);

/* With spin, the threads poll for up to ~100 µs after a run before sleeping (off by default).
 * For callers that run many short products back to back, like a decode step, where waking
 * sleeping workers costs more than the work; it burns that time on idle threads, so a training
 * job, whose runs are long, leaves it off. */
void lorad_pool_set_spin(struct lorad_pool *pool, bool spin);

/* Runs fn(ctx, tid, n) on all threads and returns when every call has returned. Not reentrant:
 * fn must not call lorad_pool_run on the same pool. One caller at a time. */
void lorad_pool_run(struct lorad_pool *pool, lorad_pool_fn fn, void *ctx);

/* The static slice [*ret_begin, *ret_end) of n items that thread tid of n_threads owns,
 * in units of `align` items (the last slice takes the remainder). */
void lorad_pool_slice(int64_t n, int tid, int n_threads, int64_t align, int64_t *ret_begin, int64_t *ret_end);
