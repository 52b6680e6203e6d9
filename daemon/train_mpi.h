/* `lorad train` under mpirun (issue 16): whether this process was launched as one of several
 * ranks, MPI's start and end, and the sums the engine's data-parallel hook takes: MPI_Allreduce,
 * checked to leave every rank with the same bits
 * (struct lorad_train_collective). Built with Open MPI when CMake finds it (LORAD_HAVE_MPI);
 * without it the functions say so and a launch under mpirun is refused rather than trained K
 * times over. */
#pragma once
#include <stdbool.h>
#include <stddef.h>

#include "train.h"

/* True when the environment says this process is one of several ranks (mpirun, srun). */
bool lorad_mpi_launched(void);

/* True when this binary was built with MPI. */
bool lorad_mpi_available(void);

/* How a rank exits when its collective watchdog fires (EX_TEMPFAIL: a restart may succeed). */
#define LORAD_MPI_EXIT_TIMEOUT 75

/* Initialises MPI and fills *ret (rank, world size, the sums). With collective_timeout_s > 0 a
 * rank whose sum waits longer exits LORAD_MPI_EXIT_TIMEOUT. 0, or -ENOTSUP without MPI with why
 * saying so, -ENOTCONN when srun started tasks that MPI does not join, -EIO when MPI_Init fails.
 * Call lorad_mpi_finish once after a 0. */
int lorad_mpi_start(struct lorad_train_collective *ret, int collective_timeout_s, int *argc, char ***argv, char *why,
                    size_t why_size);

/* Ends MPI (MPI_Finalize). */
void lorad_mpi_finish(void);

/* How many sums left the ranks with different bits after MPI_Allreduce, so that rank 0's copy
 * was broadcast (the same count on every rank). */
long long lorad_mpi_repairs(void);
