/* A job's run through mpirun (issue 16): the daemon's [distributed] section turned into a launch,
 * and a run with the contract of lorad_train_run whose ranks are `lorad train --jsonl` processes
 * on the configured hosts. Rank 0 runs where mpirun does (the first host) and writes the job's
 * directory; its report lines (train_wire.h) become the same callbacks an in-process run makes,
 * and the callbacks' poll becomes a `pause` / `cancel` line to rank 0, so the job runner tracks,
 * pauses, resumes and cancels the job exactly as a local one. */
#pragma once
#include <limits.h>

#include "config.h"
#include "error.h"
#include "train.h"

struct lorad_mpirun {
    char mpirun[LORAD_CONFIG_PATH_MAX];
    char hosts[LORAD_CONFIG_PATH_MAX];    /* "" or comma-separated */
    char hostfile[LORAD_CONFIG_PATH_MAX]; /* "" or a path */
    char args[LORAD_CONFIG_PATH_MAX];     /* extra launcher arguments, split at spaces */
    int ranks_per_host;
    int collective_timeout_s;
    int max_restarts;
    char lorad[PATH_MAX];                 /* this binary: every host runs it at the same path */
};

/* Checks the section and fills *ret. Returns 1 when distributed training is on, 0 when it is off
 * (ret untouched), -errno with err naming the option when the section is inconsistent (hosts and
 * hostfile both set, a binary without MPI, a launcher not found). */
int lorad_mpirun_from_config(const struct lorad_config_distributed *d, struct lorad_mpirun *ret,
                             struct lorad_error *err);

/* The ranks of a run on `hosts`: n_hosts * ranks_per_host, or 0 when mpirun decides (hostfile,
 * allocation). */
int lorad_mpirun_ranks(const struct lorad_mpirun *l);

/* Runs the job like lorad_train_run(spec, opt, cb, ret_result, err), with opt->out_dir holding the
 * job file it writes for the ranks (job.json) and opt->threads split among a host's ranks. The
 * same returns, plus -ECONNABORTED when the ranks ended without a result (a rank died, the
 * collective watchdog fired, mpirun failed): err then says how, ret_result holds the last step
 * seen, and a resume from the last checkpoint is the way on. */
int lorad_mpirun_train(const struct lorad_mpirun *l, const struct lorad_job_spec *spec,
                       const struct lorad_train_options *opt, const struct lorad_train_callbacks *cb,
                       struct lorad_train_result *ret_result, struct lorad_error *err);
