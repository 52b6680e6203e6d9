/* lorad's persistent state: one SQLite database (files, jobs, events, metrics, checkpoints,
 * api_keys). Blobs (datasets, checkpoints) live as files under the state directory; the database
 * keeps their metadata and paths. See docs/store.md for the schema, the status machine and the
 * concurrency model.
 *
 * Threading: one struct lorad_store is shared by every thread. Each call borrows a connection
 * from the store's pool for its duration, so any thread may call any function at any time.
 * Writes are serialised inside the process by a mutex and across processes by SQLite's lock
 * (busy timeout). A struct lorad_metrics_writer belongs to one thread.
 *
 * Errors: functions return 0 (or a documented positive value) or -errno and fill the optional
 * struct lorad_error (engine/base/error.h). Codes used throughout:
 *   -ENOENT  object not found (param names the id field)
 *   -EINVAL  bad argument (param names it)
 *   -EPERM   illegal job status transition
 *   -EBUSY   file in use by a live job; database locked longer than the busy timeout
 *   -EEXIST  idempotency key reused with a different request
 *   -EAGAIN  the queue is full: max_queued_jobs jobs are queued (message says how many)
 *   -EROFS   store opened read-only, or the database file cannot be written
 *   -ENOSPC  disk (or max_pages quota) full; the transaction was rolled back
 *   -EBADMSG the file at the database path is not a SQLite database, or is corrupt, or a row
 *            read cannot be turned into its object (text not UTF-8, JSON that does not parse; the
 *            message names the row and column): a read never leaves such a row out
 *   -EPROTO  the database schema is newer than this binary
 *   -E2BIG   a value SQLite refuses to take (longer than its length limit); message names the
 *            SQL parameter
 *   -EIO     any other SQLite failure (message carries SQLite's text)
 * On failure nothing was committed and no ret_ parameter was written.
 *
 * JSON: objects come back as new jansson references (caller json_decref()s) in OpenAI-like
 * shapes; inputs are borrowed. Times are unix seconds. */
#pragma once
#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"

struct lorad_store;

/* ---- ids ---------------------------------------------------------------------------------- */

#define LORAD_STORE_ID_RANDOM_LEN 24
#define LORAD_STORE_ID_MAX 40 /* buffer size that fits any id with its NUL */

/* Writes prefix (e.g. "file-") followed by 24 random [A-Za-z0-9] from getrandom() into out
 * (LORAD_STORE_ID_MAX bytes). Returns 0 or -errno. */
int lorad_store_new_id(const char *prefix, char out[LORAD_STORE_ID_MAX]);
/* True iff str is exactly prefix followed by 24 [A-Za-z0-9]: safe to use in a path. */
bool lorad_store_id_valid(const char *prefix, const char *str);

/* Bytes SQLite has allocated now, over every connection of every store of the process (its page
 * caches, prepared statements, schema): sqlite3_memory_used(). For /metrics. */
int64_t lorad_store_sqlite_memory_used(void);

/* ---- open / close ------------------------------------------------------------------------- */

enum {
    LORAD_STORE_READONLY = 1 << 0, /* open read-only: every write fails with -EROFS */
    LORAD_STORE_RECOVER = 1 << 1,  /* run startup recovery (daemon start, once, before workers) */
};

struct lorad_store_options {
    unsigned flags;         /* LORAD_STORE_* */
    int busy_timeout_ms;    /* 0 -> 5000 */
    int pool_max;           /* max simultaneous connections; 0 -> 16 */
    int64_t max_pages;      /* 0 -> unlimited; else PRAGMA max_page_count (a disk quota) */
};

/* Opens (creating if missing) the database at path, applies pending migrations, checks the file
 * (PRAGMA quick_check when LORAD_STORE_RECOVER) and, with LORAD_STORE_RECOVER, runs recovery:
 * every `running` job goes back to `queued` (it keeps its checkpoints, so its worker resumes
 * from the latest) and every `cancelling` job becomes `cancelled`, each with a status event
 * whose data.code is "job_restarted". opts may be NULL. A file that is not a SQLite database is
 * refused (-EBADMSG, message names the path and SQLite's text) and never modified. A schema newer
 * than this binary is refused with -EPROTO. The caller owns *ret_store (lorad_store_close()). */
int lorad_store_open(const char *path, const struct lorad_store_options *opts,
                     struct lorad_store **ret_store, struct lorad_error *err);
/* Closes every pooled connection and frees store. No call may be in flight. NULL is a no-op. */
void lorad_store_close(struct lorad_store *store);
/* Schema version this binary writes (PRAGMA user_version after migrations). */
int lorad_store_schema_version(void);
/* The SQLite library version (for `lorad version`). */
const char *lorad_store_sqlite_version(void);

/* ---- files -------------------------------------------------------------------------------- */

struct lorad_store_file_new {
    const char *id;          /* from lorad_store_new_id("file-"), chosen first so the blob's
                              * path can be derived from it */
    const char *filename;    /* client's name, <= 255 bytes */
    const char *purpose;     /* "fine-tune", ... */
    int64_t bytes;
    const char *sha256;      /* 64 lowercase hex */
    int64_t line_count;
    const char *format;      /* detected: "chat", "completion", ... ; may be NULL */
    json_t *validation;      /* summary object, borrowed; may be NULL */
    const char *status;      /* "uploaded" | "processed" | "error" */
    const char *path;        /* where the blob lives, relative to the state directory */
};

/* Inserts a file row. Returns 0 and, if ret_file, the file object. -EEXIST if the id exists. */
int lorad_store_file_create(struct lorad_store *store, const struct lorad_store_file_new *f,
                            json_t **ret_file, struct lorad_error *err);
/* File object {id, object:"file", bytes, created_at, filename, purpose, status, sha256,
 * line_count, format, validation}. -ENOENT if absent. */
int lorad_store_file_get(struct lorad_store *store, const char *id, json_t **ret_file,
                         struct lorad_error *err);
/* The blob's path (malloc'd, caller frees). -ENOENT if absent. */
int lorad_store_file_path(struct lorad_store *store, const char *id, char **ret_path,
                          struct lorad_error *err);
/* Updates status / validation / format / line_count after validation. validation borrowed. */
int lorad_store_file_set_status(struct lorad_store *store, const char *id, const char *status,
                                const char *format, int64_t line_count, json_t *validation,
                                struct lorad_error *err);
/* Deletes the row. Refused with -EBUSY while a validating_files, queued, running or paused job
 * uses the file. On success *ret_path (if non-NULL, malloc'd) is the blob path: the caller
 * unlinks it (the store does no blob I/O). */
int lorad_store_file_delete(struct lorad_store *store, const char *id, char **ret_path,
                            struct lorad_error *err);
/* Newest first. purpose NULL = any. after: id of the last object of the previous page, or NULL;
 * an unknown after id is -ENOENT (param "after"). limit 1..100. *ret_page is
 * {object:"list", data:[...], has_more, first_id, last_id}. */
int lorad_store_file_list(struct lorad_store *store, const char *purpose, const char *after,
                          int limit, json_t **ret_page, struct lorad_error *err);

/* ---- jobs --------------------------------------------------------------------------------- */

enum lorad_job_status {
    LORAD_JOB_VALIDATING_FILES,
    LORAD_JOB_QUEUED,
    LORAD_JOB_RUNNING,
    LORAD_JOB_PAUSED,
    LORAD_JOB_CANCELLING,
    LORAD_JOB_SUCCEEDED,
    LORAD_JOB_FAILED,
    LORAD_JOB_CANCELLED,
    LORAD_JOB_STATUS_COUNT,
};

/* "validating_files", "queued", ... */
const char *lorad_job_status_name(enum lorad_job_status s);
/* Parses a status name. Returns 0 or -EINVAL. */
int lorad_job_status_parse(const char *name, enum lorad_job_status *ret_status);
/* The transition table (docs/store.md). from == to is never legal. */
bool lorad_job_transition_legal(enum lorad_job_status from, enum lorad_job_status to);
/* Terminal = succeeded | failed | cancelled. */
bool lorad_job_status_terminal(enum lorad_job_status s);

struct lorad_store_job_new {
    const char *model;
    const char *training_file;    /* must exist in files (-ENOENT, param "training_file") */
    const char *validation_file;  /* may be NULL; must exist if given */
    json_t *spec;                 /* full normalised job spec (object), borrowed */
    int64_t seed;
    const char *suffix;           /* may be NULL */
    int priority;                 /* higher first; FIFO within a priority */
    enum lorad_job_status status; /* initial: LORAD_JOB_VALIDATING_FILES or LORAD_JOB_QUEUED */
    const char *idempotency_key;  /* may be NULL, <= 255 bytes */
    const char *request_hash;     /* hash of the request body; required with a key */
    int64_t max_queued_jobs;      /* > 0: a queued job is refused (-EAGAIN) while this many are
                                   * queued; <= 0: no limit */
    int64_t memory_bytes;         /* the job's memory estimate (> 0), or 0: unknown */
};

/* Creates a job (id "ftjob-…") and its first status event in one transaction.
 * Returns 0 when created, 1 when idempotency_key already named a job created from the same
 * request_hash (that job is returned, nothing is written, even when the queue is full), -EEXIST
 * when the key names a job made from a different request, -EAGAIN when the job would be queued
 * and max_queued_jobs are queued already (counted in the same transaction, so concurrent creates
 * and resumes never exceed it). *ret_job (if non-NULL) is the job object. */
int lorad_store_job_create(struct lorad_store *store, const struct lorad_store_job_new *j,
                           json_t **ret_job, struct lorad_error *err);
/* Looks an idempotency key up without writing: 0 when the key is unknown, 1 when it named a job
 * created from the same request_hash (*ret_job, optional, is that job), -EEXIST (param
 * "idempotency_key", message names the job) when it was used for a different request. The API
 * uses it to replay before checks that would refuse a new job (queue full); the create call
 * still decides under the write lock. */
int lorad_store_job_find_idempotent(struct lorad_store *store, const char *idempotency_key,
                                    const char *request_hash, json_t **ret_job,
                                    struct lorad_error *err);
/* Job object: {id, object:"fine_tuning.job", model, created_at, finished_at, fine_tuned_model,
 * organization_id, result_files, status, validation_file, training_file, hyperparameters,
 * trained_tokens, error, seed, suffix, estimated_finish, progress{...}, priority,
 * queue_position (queued only), started_at, control} plus every spec key not already set. */
int lorad_store_job_get(struct lorad_store *store, const char *id, json_t **ret_job,
                        struct lorad_error *err);
/* Only a job's status, from the status column without building the job object: what the event
 * stream polls (every 250 ms per stream) to see whether the job has ended. -ENOENT (param
 * "fine_tuning_job_id") for an unknown id; -EBADMSG if the stored status is not one we know. */
int lorad_store_job_status(struct lorad_store *store, const char *id,
                           enum lorad_job_status *ret_status, struct lorad_error *err);
/* Newest first; status < 0 = any, else only that status. Pagination as for files. */
int lorad_store_job_list(struct lorad_store *store, int status, const char *after, int limit,
                         json_t **ret_page, struct lorad_error *err);
/* counts[s] = number of jobs in status s. */
int lorad_store_job_counts(struct lorad_store *store, int64_t counts[LORAD_JOB_STATUS_COUNT],
                           struct lorad_error *err);

/* *ret_sum = trained_tokens summed over every job (jobs without a figure count 0): the tokens
 * trained by this installation, for Prometheus. */
int lorad_store_job_trained_tokens_sum(struct lorad_store *store, int64_t *ret_sum,
                                       struct lorad_error *err);

/* The job's spec exactly as lorad_store_job_create() stored it (the normalised spec, without the
 * job's own columns): what a worker parses back into a struct lorad_job_spec. *ret_spec is a new
 * reference. -ENOENT (param "fine_tuning_job_id"); -EBADMSG when the stored spec is not an object. */
int lorad_store_job_spec(struct lorad_store *store, const char *id, json_t **ret_spec,
                         struct lorad_error *err);

/* ---- fine-tuned models (store_fine_tuned.c) ------------------------------------------------ */

/* The name a succeeded job publishes: "ft:<base>:<suffix or lorad>:<job-id>", base being the
 * model id without directories (OpenAI's ft: shape without the organisation). Returns 0, or
 * -ENAMETOOLONG when cap is too small. */
int lorad_store_fine_tuned_model_name(const char *base_model, const char *suffix, const char *job_id,
                                      char *buf, size_t cap);
/* A job object's published name: its fine_tuned_model, else the name built as above from its
 * model, suffix and id. Returns 0 or -ENAMETOOLONG. */
int lorad_store_job_fine_tuned_model(const json_t *job, char *buf, size_t cap);
/* The succeeded job whose published name is `name` (*ret_job, a new reference). -ENOENT, with err
 * untouched, when name is not ft:... with a valid job id, or that job has not succeeded, or its
 * name differs; other -errno from reading the job. */
int lorad_store_fine_tuned_job(struct lorad_store *store, const char *name, json_t **ret_job,
                               struct lorad_error *err);
/* The final adapter of that job, jobs_dir/<job-id>/adapter (derived from the id, never from the
 * client's string), in ret_dir, and the job's base model id in ret_base: what lora.init_adapter
 * names through the API. -ENOENT (param "lora.init_adapter") when name is not a succeeded job's
 * model or store/jobs_dir is NULL; -ENAMETOOLONG when a buffer is too small; other -errno. */
int lorad_store_fine_tuned_adapter_dir(struct lorad_store *store, const char *jobs_dir, const char *name,
                                       char *ret_dir, size_t dir_cap, char *ret_base, size_t base_cap,
                                       struct lorad_error *err);

struct lorad_store_transition {
    enum lorad_job_status to;
    const char *message;          /* status event message, <= 4096 bytes; NULL -> "Job <from> -> <to>" */
    json_t *data;                 /* extra event data, borrowed; may be NULL */
    const char *error_code;       /* with to == failed: stored as job.error */
    const char *error_message;
    const char *error_param;
    const char *fine_tuned_model; /* with to == succeeded */
};

/* THE one function that changes a job's status. In one transaction: checks the transition is
 * legal (-EPERM otherwise, message names both states), updates status and timestamps
 * (started_at on first run, finished_at on a terminal state), sets error / fine_tuned_model,
 * clears the control request (sets it to "cancel" when entering cancelling) and appends a
 * "status" event. *ret_job (optional) is the job after the change. */
int lorad_store_job_transition(struct lorad_store *store, const char *id,
                               const struct lorad_store_transition *t, json_t **ret_job,
                               struct lorad_error *err);

/* Atomically takes the next queued job (highest priority, then oldest) and moves it to running,
 * if its memory estimate is at most max_memory_bytes (< 0: any; a job without an estimate counts
 * as 0). Returns 1 and *ret_job, or 0 when nothing is queued or the next job does not fit
 * (ret_job untouched; *ret_waiting_bytes, if given, is then that job's estimate, 0 when the queue
 * is empty). Later jobs never overtake a next one that does not fit. Two callers never get the
 * same job. */
int lorad_store_job_claim_next(struct lorad_store *store, int64_t max_memory_bytes, json_t **ret_job,
                               int64_t *ret_waiting_bytes, struct lorad_error *err);

/* What the API asks of a job; the worker polls lorad_store_job_control() each step. */
enum lorad_job_control {
    LORAD_JOB_CONTROL_NONE,
    LORAD_JOB_CONTROL_PAUSE,   /* checkpoint, then transition running -> paused */
    LORAD_JOB_CONTROL_CANCEL,  /* stop, then transition cancelling -> cancelled */
};
int lorad_store_job_control(struct lorad_store *store, const char *id,
                            enum lorad_job_control *ret_control, struct lorad_error *err);
/* Cancel: validating_files/queued/paused -> cancelled; running -> cancelling (worker finishes
 * it); cancelling: no change. Terminal -> -EPERM. ret_job optional. */
int lorad_store_job_cancel(struct lorad_store *store, const char *id, json_t **ret_job,
                           struct lorad_error *err);
/* Pause: queued -> paused; running -> control "pause" (status stays running until the worker
 * checkpoints and moves it to paused); paused: no change. Others -> -EPERM. */
int lorad_store_job_pause(struct lorad_store *store, const char *id, json_t **ret_job,
                          struct lorad_error *err);
/* Resume: paused -> queued, refused with -EAGAIN (the job stays paused) when max_queued_jobs > 0
 * jobs are queued already, counted in the same transaction as the change, as for a created job;
 * running with a pending pause request: the request is withdrawn (never refused, the job does not
 * enter the queue). Others -> -EPERM. */
int lorad_store_job_resume(struct lorad_store *store, const char *id, int64_t max_queued_jobs,
                           json_t **ret_job, struct lorad_error *err);

struct lorad_store_progress {
    int64_t step, total_steps;
    double epoch, tokens_per_s, eta_s;  /* NAN = unknown */
    int64_t trained_tokens;             /* < 0 = leave unchanged */
};
/* Overwrites the job's progress figures (no event). */
int lorad_store_job_set_progress(struct lorad_store *store, const char *id,
                                 const struct lorad_store_progress *p, struct lorad_error *err);

/* ---- events ------------------------------------------------------------------------------- */

/* Appends an event with the job's next seq (1, 2, 3, … per job, no gaps). level "info" |
 * "warn" | "error"; type "message" | "metrics" | "checkpoint" | "status" | "job_restarted"; data
 * borrowed, may be NULL. *ret_seq optional. */
int lorad_store_event_append(struct lorad_store *store, const char *job_id, const char *level,
                             const char *type, const char *message, json_t *data,
                             int64_t *ret_seq, struct lorad_error *err);
/* *ret_count = the job's events of this type (0 for an unknown job). */
int lorad_store_event_count(struct lorad_store *store, const char *job_id, const char *type, int64_t *ret_count,
                            struct lorad_error *err);
/* OpenAI page of events, newest first: {object:"list", data:[{object:"fine_tuning.job.event",
 * id, created_at, level, message, data, type}], has_more, first_id, last_id}. */
int lorad_store_event_list(struct lorad_store *store, const char *job_id, const char *after,
                           int limit, json_t **ret_page, struct lorad_error *err);
/* For streaming: events with seq > after_seq, oldest first, at most limit (1..1000), as an array
 * of event objects that also carry "seq". *ret_last_seq = seq of the last one (after_seq if
 * none). Unknown job -> -ENOENT. */
int lorad_store_event_since(struct lorad_store *store, const char *job_id, int64_t after_seq,
                            int limit, json_t **ret_events, int64_t *ret_last_seq,
                            struct lorad_error *err);

/* ---- metrics and checkpoints -------------------------------------------------------------- */

/* One line of metrics.jsonl. Doubles that are NAN are stored as NULL (not evaluated); the rewards_*
 * only when has_dpo (a DPO job's step), the full_valid_* only when has_full_valid (a step that
 * checkpointed on schedule, with a validation set), NULL otherwise. */
struct lorad_metrics_row {
    int64_t step, total_steps;
    double epoch, train_loss, train_mean_token_accuracy, lr, grad_norm;
    int64_t tokens_seen;
    double tokens_per_s, elapsed_s, eta_s, valid_loss, valid_mean_token_accuracy;
    bool has_dpo;
    double rewards_margin, rewards_accuracy, rewards_chosen, rewards_rejected;
    bool has_full_valid;
    double full_valid_loss, full_valid_mean_token_accuracy; /* over the whole validation set */
};

/* Buffers a job's per-step metrics and writes them in batches: each row becomes a metrics row
 * (a repeated step overwrites the old one) and a "metrics" event, and the job's progress follows
 * the newest row. Owned by one thread. */
struct lorad_metrics_writer;

/* batch_rows: rows buffered before an automatic flush (1..4096; 0 -> 32). */
int lorad_metrics_writer_new(struct lorad_store *store, const char *job_id, int batch_rows,
                             struct lorad_metrics_writer **ret_writer, struct lorad_error *err);
/* Buffers row and, once batch_rows are buffered, writes them in one transaction. The row is
 * always kept unless the result is -EINVAL, -ENOMEM or -ENOBUFS (64 batches already wait); any other error is the failed flush's: the rows stay buffered and the next append,
 * flush or checkpoint retries them. */
int lorad_metrics_writer_append(struct lorad_metrics_writer *w, const struct lorad_metrics_row *row,
                                struct lorad_error *err);
/* Writes every buffered row in one transaction. */
int lorad_metrics_writer_flush(struct lorad_metrics_writer *w, struct lorad_error *err);
/* Number of rows buffered and not yet committed. */
int lorad_metrics_writer_pending(const struct lorad_metrics_writer *w);
/* Commits the buffered rows, a checkpoint row (id "ftckpt-…", step, path) and a "checkpoint"
 * event in ONE transaction, so metrics up to a checkpoint are never lost. The caller must have
 * made the checkpoint directory durable (fsync) before calling. metrics: the checkpoint's
 * metrics object, borrowed; NULL -> taken from the metrics row at that step. keep > 0: the same
 * transaction forgets every checkpoint row of the job but the newest `keep` (by step, counting
 * the new one), mirroring the engine's keep_checkpoints pruning of the directories, so no crash
 * can leave the list offering a pruned checkpoint next to the new one; keep 0 keeps every row;
 * keep < 0 is -EINVAL (param "keep"). On any failure nothing is written and the buffered rows
 * stay buffered. ret_id optional. */
int lorad_metrics_writer_checkpoint(struct lorad_metrics_writer *w, int64_t step, const char *path,
                                    json_t *metrics, int keep, char ret_id[LORAD_STORE_ID_MAX],
                                    struct lorad_error *err);
/* Frees w; buffered rows are discarded (flush first). NULL is a no-op. */
void lorad_metrics_writer_free(struct lorad_metrics_writer *w);

/* The loss curve: rows with step > after_step, ascending, at most limit (1..100000), as an array
 * of objects with every metrics.jsonl field (null where not evaluated). */
int lorad_store_metrics_list(struct lorad_store *store, const char *job_id, int64_t after_step,
                             int limit, json_t **ret_rows, struct lorad_error *err);
/* Checkpoints newest (highest step) first, paginated like files: {object:"list", data:[{object:
 * "fine_tuning.job.checkpoint", id, created_at, fine_tuned_model_checkpoint, step_number,
 * metrics{...}, fine_tuning_job_id}], has_more, first_id, last_id}. */
int lorad_store_checkpoint_list(struct lorad_store *store, const char *job_id, const char *after,
                                int limit, json_t **ret_page, struct lorad_error *err);
/* One checkpoint of a job, for downloads: its step and its directory as recorded by the worker
 * (malloc'd, caller frees; absolute, or relative to the state directory). -ENOENT with param
 * "fine_tuning_job_id" when the job does not exist, "checkpoint_id" when the job has no checkpoint
 * with that id (including another job's checkpoint). ret_step / ret_path optional. */
int lorad_store_checkpoint_get(struct lorad_store *store, const char *job_id,
                               const char *checkpoint_id, int64_t *ret_step, char **ret_path,
                               struct lorad_error *err);
/* The newest checkpoint of a job (what a resumed worker loads): returns 1 with its step and
 * malloc'd path (caller frees), or 0 if the job has none. ret_id optional. */
int lorad_store_checkpoint_latest(struct lorad_store *store, const char *job_id,
                                  char ret_id[LORAD_STORE_ID_MAX], int64_t *ret_step,
                                  char **ret_path, struct lorad_error *err);

/* ---- blob paths --------------------------------------------------------------------------- */

/* Blob paths (files.path, checkpoints.path) are kept relative to the state directory when the
 * blob lies inside it, absolute otherwise. This is the stored form of abs_path: a pointer into
 * abs_path just past "state_dir/", or abs_path itself. state_dir may be NULL. */
const char *lorad_store_path_relative(const char *state_dir, const char *abs_path);
/* The absolute form of a stored path, followed by "/name" unless name is NULL. Returns 0 or
 * -ENAMETOOLONG (out is then unspecified). */
int lorad_store_path_absolute(const char *state_dir, const char *stored, const char *name, char *out, size_t cap);

/* ---- api keys (hashes only) --------------------------------------------------------------- */

/* Stores the SHA-256 (64 lowercase hex) of an API key under a name; the key itself never
 * reaches the store. -EEXIST if that hash is already stored. */
int lorad_store_api_key_add(struct lorad_store *store, const char *name, const char *sha256_hex,
                            struct lorad_error *err);
/* Returns 1 if sha256_hex is a stored, non-revoked key hash, else 0. */
int lorad_store_api_key_check(struct lorad_store *store, const char *sha256_hex,
                              struct lorad_error *err);
