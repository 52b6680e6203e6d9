/* Shared set-up for the store tests: a real database file in a fresh temporary directory, and
 * short-hands to make files and jobs. Every helper fails the running cmocka test on error. */
#pragma once
#include "store.h"
#include "testutil.h"

struct fx {
    char *dir;
    char *db;
    struct lorad_store *store;
};

/* Creates a temporary directory and opens <dir>/lorad.db with flags (LORAD_STORE_*). */
void fx_open(struct fx *fx, unsigned flags);
/* Closes and reopens the same database with flags. */
void fx_reopen(struct fx *fx, unsigned flags);
/* Closes the store and removes the directory. */
void fx_close(struct fx *fx);
/* Inserts a file row and writes its id. */
void fx_file(struct lorad_store *s, char out_id[LORAD_STORE_ID_MAX]);
/* Creates a job on training file file_id in the initial status (validating_files or queued). */
void fx_job(struct lorad_store *s, const char *file_id, enum lorad_job_status status, int priority,
            char out_id[LORAD_STORE_ID_MAX]);
/* fx_job with a memory estimate (0 = none stored, as for a job from before estimates). */
void fx_job_sized(struct lorad_store *s, const char *file_id, enum lorad_job_status status, int priority,
                  int64_t memory_bytes, char out_id[LORAD_STORE_ID_MAX]);
/* The job's status as stored. */
enum lorad_job_status fx_status(struct lorad_store *s, const char *job_id);
/* Number of events the job has. */
int fx_event_count(struct lorad_store *s, const char *job_id);
/* Moves a job with transition() to `to`, asserting success. */
void fx_move(struct lorad_store *s, const char *job_id, enum lorad_job_status to);
