/* Checkpoint directories: ROOT/step-N/ appears atomically.
 *
 * A checkpoint is written into ROOT/.step-N.tmp/, every file fsynced, then the directory is renamed
 * to ROOT/step-N and ROOT is fsynced. A directory named step-N is therefore always complete; a
 * crash leaves at most a .tmp directory, which the next run removes. Pruning to the newest `keep`
 * is a separate call, so a caller that records checkpoints elsewhere (the daemon's store) can
 * forget the old ones there first: a crash in between then leaves surplus directories, which the
 * next prune removes, rather than records of directories that are gone. */
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "error.h"

#define LORAD_CHECKPOINT_PATH_MAX 4096

/* Creates (emptying any leftover) ROOT/.step-N.tmp and returns its path in ret_tmp (cap bytes). */
int lorad_checkpoint_begin(const char *root, int64_t step, char *ret_tmp, size_t cap, struct lorad_error *err);

/* fsyncs the files in the temp dir, renames it to ROOT/step-N (replacing an older step-N, as a
 * resumed run that repeats a step does) and fsyncs ROOT. ret_final (cap bytes, may be NULL)
 * receives ROOT/step-N. */
int lorad_checkpoint_commit(const char *root, int64_t step, char *ret_final, size_t cap, struct lorad_error *err);

/* Deletes all but the newest keep (>= 1) step-N directories of ROOT; keep <= 0 keeps all. Best
 * effort: a directory that cannot be removed is left for the next prune. */
void lorad_checkpoint_prune(const char *root, int keep);

/* Finds the newest complete checkpoint. Returns 1 with *ret_step and ret_path, 0 when there is
 * none (or ROOT does not exist), -errno on error. */
int lorad_checkpoint_latest(const char *root, int64_t *ret_step, char *ret_path, size_t cap);

/* The steps of ROOT's complete checkpoints, newest first, in a malloc'd array the caller frees
 * (*ret_steps NULL when there are none, or ROOT does not exist). 0 or -errno. */
int lorad_checkpoint_steps(const char *root, int64_t **ret_steps, size_t *ret_n);

/* Removes leftover ROOT/.step-*.tmp directories of an interrupted run. */
int lorad_checkpoint_clean_temp(const char *root);

