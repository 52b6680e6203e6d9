/* The application context every API handler sees as req->app.
 *
 * The daemon (daemon/cmd_serve.c) owns it: it opens the store, fills the directories and limits
 * from its config, and sets the hooks before starting the HTTP server. Handlers only read it and
 * call the hooks; they never free anything in it. api/ cannot include daemon/ headers, so the
 * daemon's wishes reach the handlers through this struct alone.
 *
 * State directory layout (all paths built by the daemon, never from client strings):
 *   STATE/lorad.db                    the SQLite store
 *   STATE/files/<file-id>             uploaded datasets, as uploaded
 *   STATE/uploads/                    temp files of uploads in flight (same filesystem: rename)
 *   STATE/jobs/<job-id>/              lorad_train_run's out_dir: metrics.jsonl,
 *                                     checkpoints/step-N/, adapter/ */
#pragma once
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

struct lorad_store;
struct lorad_api_metrics;
struct lorad_infer;

struct lorad_app {
    struct lorad_store *store;
    const char *state_dir;
    const char *models_dir;
    const char *files_dir;          /* STATE/files */
    const char *jobs_dir;           /* STATE/jobs */
    int64_t max_queued_jobs;        /* queued jobs beyond this: 429 */
    int max_threads_per_job;        /* threads of a job whose spec leaves threads null, and the most a
                                     * job may ask for (more is refused with 400) */
    int64_t memory_limit;           /* > 0: a job whose memory estimate exceeds it is refused (400) */
    struct lorad_api_metrics *metrics; /* Prometheus registry the /metrics handler renders */
    /* The inference service of /v1/completions and /v1/chat/completions (engine/infer/
     * infer_service.h), created before the HTTP servers start and freed after they stop. NULL:
     * inference is disabled (inference.enabled no) and those routes answer 503. */
    struct lorad_infer *infer;
    int infer_max_generations;      /* its max_generations: a request needing more sequences than
                                     * this can never run, so it is 400 rather than 429; 0: unknown */
    atomic_bool ready;              /* /readyz: true after recovery, false while stopping */
    atomic_bool stopping;           /* new jobs are refused with 503 while true */

    /* Called after a job was created, resumed or cancelled, so an idle worker looks at the queue
     * at once instead of at its next poll. May be NULL. Must not block. */
    void (*jobs_changed)(void *ctx);
    void *jobs_changed_ctx;

    /* Live figures of a running job that the store only has per step (tokens/s for /metrics).
     * Returns false when the job is not running here. May be NULL. */
    bool (*job_live_rate)(void *ctx, const char *job_id, double *ret_tokens_per_s);
    void *job_live_rate_ctx;
};
