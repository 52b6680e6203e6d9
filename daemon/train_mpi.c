#include "train_mpi.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#ifdef LORAD_HAVE_MPI
#include <mpi.h>
#endif

bool lorad_mpi_launched(void) {
    static const char *const vars[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS"};
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) {
        const char *v = getenv(vars[i]);
        if (v && atoi(v) > 1) return true;
    }
    return false;
}

#ifdef LORAD_HAVE_MPI
bool lorad_mpi_available(void) { return true; }

/* Reduce to rank 0, then broadcast: MPI_Allreduce may add in a different order on different
 * ranks, and ranks whose gradients differ in the last bit would drift apart under AdamW. */
static int sum(void *buf, size_t n, MPI_Datatype type) {
    int rank;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    const size_t chunk = (size_t)1 << 28; /* counts are int */
    size_t esz = type == MPI_DOUBLE ? sizeof(double) : sizeof(float);
    for (size_t off = 0; off < n; off += chunk) {
        int cnt = (int)(n - off < chunk ? n - off : chunk);
        char *p = (char *)buf + off * esz;
        int rc = rank == 0 ? MPI_Reduce(MPI_IN_PLACE, p, cnt, type, MPI_SUM, 0, MPI_COMM_WORLD)
                           : MPI_Reduce(p, NULL, cnt, type, MPI_SUM, 0, MPI_COMM_WORLD);
        if (rc == MPI_SUCCESS) rc = MPI_Bcast(p, cnt, type, 0, MPI_COMM_WORLD);
        if (rc != MPI_SUCCESS) return -EIO;
    }
    return 0;
}

static int sum_f64(void *ctx, double *buf, size_t n) {
    (void)ctx;
    return sum(buf, n, MPI_DOUBLE);
}

static int sum_f32(void *ctx, float *buf, size_t n) {
    (void)ctx;
    return sum(buf, n, MPI_FLOAT);
}

int lorad_mpi_start(struct lorad_train_collective *ret, int *argc, char ***argv, char *why, size_t why_size) {
    if (MPI_Init(argc, argv) != MPI_SUCCESS) {
        snprintf(why, why_size, "MPI_Init failed");
        return -EIO;
    }
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    *ret = (struct lorad_train_collective){.rank = rank, .world_size = size, .sum_f64 = sum_f64, .sum_f32 = sum_f32};
    return 0;
}

void lorad_mpi_finish(void) { MPI_Finalize(); }
#else
bool lorad_mpi_available(void) { return false; }

int lorad_mpi_start(struct lorad_train_collective *ret, int *argc, char ***argv, char *why, size_t why_size) {
    (void)ret, (void)argc, (void)argv;
    snprintf(why, why_size, "this lorad was built without MPI (install Open MPI's headers, libopenmpi-dev, and rebuild)");
    return -ENOTSUP;
}

void lorad_mpi_finish(void) {}
#endif
