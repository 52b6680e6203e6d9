/* One queued job, run to its next status: the bridge between a stored job (store/) and
 * lorad_train_run (engine/train/train.h), the code path `lorad train` uses too.
 *
 * The runner rebuilds the job spec from the stored job, resolves the model in the models
 * directory and the files through the store, trains into JOBS/<job-id>/ with resume always on, and
 * mirrors the run into the store: every step becomes a metrics row and event, every checkpoint
 * commits with the metrics before it in one transaction, engine messages become events. Between
 * steps it polls the job's control request (cancel, pause) and the daemon's shutdown flag. At the
 * end it makes exactly one status transition:
 *   finished            -> succeeded (fine_tuned_model, trained_tokens)
 *   cancel request      -> cancelled
 *   pause request       -> paused
 *   daemon shutting down-> queued (the next start resumes it from its checkpoint)
 *   a rank lost         -> queued with a job_restarted event (distributed runs; after
 *                          distributed.max_restarts of them: failed)
 *   engine error        -> failed, with a code derived from the errno and param:
 *                          invalid_training_data, model_not_found, out_of_memory, memory_limit_exceeded,
 *                          nan_loss, disk_full, file_not_found, training_failed.
 * A failing job never takes the process down: every error ends in a transition, and an error of
 * the store itself is logged. */
#pragma once
#include <jansson.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "store.h"

struct lorad_train_result;
struct lorad_mpirun;

struct lorad_job_env {
    struct lorad_store *store;
    const char *state_dir;    /* file and checkpoint paths in the store are relative to it */
    const char *models_dir;
    const char *jobs_dir;     /* out_dir of job J is jobs_dir/J */
    int max_threads;          /* compute threads of a job whose spec leaves threads null, and the
                               * most a job asking for more gets (>= 1) */
    int64_t memory_limit;     /* > 0: the run refuses to start above it (0: no limit) */
    int metrics_batch_rows;   /* 0: flush metrics at most once a second or every 32 rows */
    const atomic_bool *shutdown; /* set: checkpoint and hand the job back to the queue */
    const struct lorad_mpirun *distributed; /* non-NULL: jobs run through mpirun (job_mpirun.h) */
    /* Called after each step with the run's tokens/s (for /metrics). May be NULL. */
    void (*on_rate)(void *ctx, double tokens_per_s);
    void *rate_ctx;
};

/* Runs `job` (a job object from lorad_store_job_claim_next, status running) until it finishes,
 * stops or fails, and makes its final transition. Returns the status the job was left in, or -errno
 * when even that transition could not be written (the job then stays running in the store, and
 * the next start's recovery requeues it). */
int lorad_job_run(const struct lorad_job_env *env, const json_t *job);

/* The error code a failed run is stored with (the list above), from lorad_train_run's result. */
const char *lorad_job_error_code(int rc, const struct lorad_error *err, const struct lorad_train_result *res);
