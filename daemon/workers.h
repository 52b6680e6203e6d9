/* The worker pool: `workers` threads, each running one job at a time (daemon/job_run.h) with at
 * most `max_threads_per_job` compute threads of its own.
 *
 * A worker claims the next queued job with lorad_store_job_claim_next (priority, then FIFO; two
 * workers never get the same job, even across processes), but only when the job's memory estimate
 * fits in memory_limit beside the running jobs' estimates; the next job is never overtaken, so a
 * big one is not starved by small ones. When nothing can start it sleeps until
 * lorad_workers_wake() (the API's app->jobs_changed hook), a job of the pool ends, or the poll
 * interval passes.
 *
 * Stopping is two-phase so the daemon can keep systemd informed while checkpoints are written:
 * lorad_workers_request_stop() asks every running job to checkpoint and go back to `queued`
 * (returns at once), lorad_workers_wait() waits a bounded time for them, and lorad_workers_free()
 * joins the threads. */
#pragma once
#include <stdbool.h>
#include <stdint.h>

struct lorad_store;
struct lorad_workers;
struct lorad_mpirun;

struct lorad_workers_options {
    struct lorad_store *store;  /* borrowed; must outlive the pool */
    const char *state_dir;      /* borrowed strings, as for struct lorad_job_env */
    const char *models_dir;
    const char *jobs_dir;
    int workers;                /* threads, >= 1 */
    int max_threads_per_job;    /* >= 1: threads of a job whose spec leaves threads null, and the
                                 * most any job gets */
    int64_t memory_limit;       /* > 0: the running jobs' estimates stay within it; 0: no limit */
    unsigned poll_ms;           /* 0: look at the queue every 1000 ms when not woken */
    int metrics_batch_rows;     /* 0: the runner's default (see job_run.h) */
    const struct lorad_mpirun *distributed; /* borrowed; non-NULL: jobs run through mpirun */
};

/* Starts the threads. Returns 0 and *ret_pool, or -errno (no thread is left running). */
int lorad_workers_start(const struct lorad_workers_options *o, struct lorad_workers **ret_pool);

/* Makes idle workers look at the queue now. Never blocks for long; safe from any thread. ctx is the
 * pool (the signature of struct lorad_app's jobs_changed). */
void lorad_workers_wake(void *ctx);

/* Tokens per second of job_id if a worker of this pool is running it (struct lorad_app's
 * job_live_rate; ctx is the pool). False when the job is not running here or has no step yet. */
bool lorad_workers_live_rate(void *ctx, const char *job_id, double *ret_tokens_per_s);

/* Number of jobs being run right now, counting a claim in progress (a job the store may already
 * show running). */
int lorad_workers_busy(struct lorad_workers *pool);

/* Asks every running job to checkpoint and return to `queued`, and stops claiming new jobs.
 * Returns at once. */
void lorad_workers_request_stop(struct lorad_workers *pool);

/* Waits until no job is running or timeout_ms passes. Returns the number still running. */
int lorad_workers_wait(struct lorad_workers *pool, unsigned timeout_ms);

/* Requests a stop if none was requested, joins every thread (waiting for running jobs to hand
 * themselves back) and frees the pool. NULL is a no-op. */
void lorad_workers_free(struct lorad_workers *pool);
