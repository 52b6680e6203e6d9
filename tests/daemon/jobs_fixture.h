/* Real jobs for the daemon tests (test_workers, test_serve_jobs): a temporary state directory whose
 * models dir holds stories260K.bin, datasets registered in a real store the way uploads are, jobs
 * created the way the API creates them (the normalised spec stored whole), and an independent
 * reference: the same spec trained by calling the engine directly. Every helper fails the running
 * cmocka test on error. */
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "jobspec.h"
#include "store.h"
#include "testutil.h"

#define JOBS_MODEL_ID "stories260K.bin"

struct jobs_env {
    char *dir, *state, *models, *jobs; /* jobs = state/jobs */
    struct lorad_store *store;         /* state/lorad.db */
};
extern struct jobs_env E;

/* cmocka group set-up / tear-down: creates the directories and opens the store with recovery (as
 * the daemon does); closes and removes them. */
int jobs_env_setup(void **state);
int jobs_env_teardown(void **state);

/* A pre-tokenised dataset of n_records lines (1 + seq_len ids each) stored as files/<id>; line
 * bad_line (0-based, -1: none) holds an id beyond the vocabulary. */
void make_file(int n_records, int bad_line, int seq_len, char id[LORAD_STORE_ID_MAX]);
/* The same with the file row's status ("processed", "error", ...). */
void make_file_status(int n_records, int bad_line, int seq_len, const char *status, char id[LORAD_STORE_ID_MAX]);
/* A job body: batch 2, max_seq_len 16, lr 1e-3, LoRA r 4 with dropout; max_steps/ckpt_every 0 = null.
 * malloc'd. */
char *spec_text(const char *model, const char *file_id, int n_epochs, int max_steps, int ckpt_every);
void parse_spec(const char *text, struct lorad_job_spec *spec);
/* Creates a queued job from the body text. */
void make_job(const char *text, char id[LORAD_STORE_ID_MAX]);
/* The same in another initial status (validating_files). */
void make_job_status(const char *text, enum lorad_job_status status, char id[LORAD_STORE_ID_MAX]);
/* The same with a stored memory estimate (0: none, as for a job from before estimates). */
void make_job_sized(const char *text, enum lorad_job_status status, int64_t memory_bytes,
                    char id[LORAD_STORE_ID_MAX]);

json_t *get_job(const char *id);
enum lorad_job_status status_of(const char *id);
int64_t progress_step(const char *id);
double now_s(void);
void wait_status(const char *id, enum lorad_job_status want, double timeout_s);
void wait_progress(const char *id, int64_t step, double timeout_s);

/* A worker pool on E: 1 thread per job, 50 ms polls, every metrics row committed at once. */
struct lorad_workers *start_pool(int workers);
/* The same with the pool's memory_limit (0: none). */
struct lorad_workers *start_pool_limited(int workers, int64_t memory_limit);

/* Every step 1..n has exactly one metrics row. */
void assert_metrics_complete(const char *id, int64_t n);
int checkpoint_count(const char *id);
/* adapter/adapter_model.safetensors of an output directory, or of the job's. malloc'd. */
void *adapter_of(const char *out_dir, size_t *ret_len);
void *job_adapter(const char *id, size_t *ret_len);
/* The same spec trained by lorad_train_run directly (1 thread) into E.dir/reference. */
void *reference_adapter(const char *text, const char *file_id, size_t *ret_len);
/* Compares and frees both. */
void assert_same_bytes(void *a, size_t na, void *b, size_t nb);
