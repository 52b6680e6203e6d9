#include "train_mpi.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#ifdef LORAD_HAVE_MPI
#include <mpi.h>
#endif

bool lorad_mpi_launched(void) {
    static const char *const vars[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS",
                                       "SLURM_NTASKS"};
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) {
        const char *v = getenv(vars[i]);
        if (v && atoi(v) > 1) return true;
    }
    return false;
}

#ifdef LORAD_HAVE_MPI
bool lorad_mpi_available(void) { return true; }

/* The collective watchdog: a rank that died or hangs leaves the others blocked in a sum for
 * ever, and MPI only notices a death when its transport does. While a sum runs, `deadline` holds
 * when it must have finished; past it the watchdog exits the process, and mpirun then ends the
 * whole job (its default on a rank's non-zero exit), so whoever launched it can restart it from
 * its last checkpoint. The watchdog never calls MPI: it may run beside a blocked collective. */
static atomic_llong deadline_ns; /* CLOCK_MONOTONIC ns, 0 = no sum running */
static int timeout_s, my_rank;
static long long repairs; /* sums whose ranks' bits differed after MPI_Allreduce */

static long long mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void *watchdog(void *arg) {
    (void)arg;
    for (;;) {
        usleep(200000);
        long long d = atomic_load(&deadline_ns);
        if (d && mono_ns() > d) {
            fprintf(stderr, "lorad train: rank %d: a sum across ranks waited more than %d s for the others (a rank "
                    "died or hangs): exiting so the job can restart from its last checkpoint\n", my_rank, timeout_s);
            _exit(LORAD_MPI_EXIT_TIMEOUT);
        }
    }
    return NULL;
}

/* FNV-1a over 8-byte words (and the tail): tells whether the ranks hold the same bits. */
static uint64_t digest(const void *buf, size_t bytes) {
    const unsigned char *p = buf;
    uint64_t h = 1469598103934665603ULL, w;
    size_t i = 0;
    for (; i + 8 <= bytes; i += 8) {
        memcpy(&w, p + i, 8);
        h = (h ^ w) * 1099511628211ULL;
    }
    for (; i < bytes; i++) h = (h ^ p[i]) * 1099511628211ULL;
    return h;
}

/* Set from LORAD_TEST_MPI_DIVERGE=1: rank 1 flips the top exponent bit of every sum's first
 * element, so that without the repair below its run, and through its gradients rank 0's, would
 * go wrong: the tests see the repair work. */
static bool test_diverge;

/* MPI_Allreduce, then a check that every rank holds the same bits. MPI does not promise that
 * (an implementation may add in a different order on different ranks), and ranks whose gradients
 * differ in the last bit would drift apart under AdamW; when the digests differ, rank 0's sum is
 * broadcast. The check is one 16-byte allreduce. */
static int sum(void *buf, size_t n, MPI_Datatype type) {
    int rank;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    if (timeout_s > 0) atomic_store(&deadline_ns, mono_ns() + (long long)timeout_s * 1000000000LL);
    const size_t chunk = (size_t)1 << 28; /* counts are int */
    size_t esz = type == MPI_DOUBLE ? sizeof(double) : sizeof(float);
    int rc = MPI_SUCCESS;
    for (size_t off = 0; off < n && rc == MPI_SUCCESS; off += chunk) {
        int cnt = (int)(n - off < chunk ? n - off : chunk);
        rc = MPI_Allreduce(MPI_IN_PLACE, (char *)buf + off * esz, cnt, type, MPI_SUM, MPI_COMM_WORLD);
    }
    if (rc == MPI_SUCCESS && test_diverge && rank == 1 && n > 0) ((unsigned char *)buf)[esz - 1] ^= 0x40;
    uint64_t d = digest(buf, n * esz), v[2] = {d, ~d}; /* max of d and of ~d: max d == min d iff all equal */
    if (rc == MPI_SUCCESS) rc = MPI_Allreduce(MPI_IN_PLACE, v, 2, MPI_UINT64_T, MPI_MAX, MPI_COMM_WORLD);
    if (rc == MPI_SUCCESS && v[0] != ~v[1]) {
        repairs++;
        for (size_t off = 0; off < n && rc == MPI_SUCCESS; off += chunk) {
            int cnt = (int)(n - off < chunk ? n - off : chunk);
            rc = MPI_Bcast((char *)buf + off * esz, cnt, type, 0, MPI_COMM_WORLD);
        }
    }
    atomic_store(&deadline_ns, 0);
    return rc == MPI_SUCCESS ? 0 : -EIO;
}

static int sum_f64(void *ctx, double *buf, size_t n) {
    (void)ctx;
    return sum(buf, n, MPI_DOUBLE);
}

static int sum_f32(void *ctx, float *buf, size_t n) {
    (void)ctx;
    return sum(buf, n, MPI_FLOAT);
}

int lorad_mpi_start(struct lorad_train_collective *ret, int collective_timeout_s, int *argc, char ***argv, char *why,
                    size_t why_size) {
    int provided;
    /* FUNNELED: only this thread calls MPI; the compute pool and the watchdog never do. */
    if (MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS) {
        snprintf(why, why_size, "MPI_Init failed");
        return -EIO;
    }
    /* A failed collective returns its error (the run then fails with a message naming the sum)
     * rather than aborting every rank without a word. */
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    const char *tasks = getenv("SLURM_NTASKS");
    if (size == 1 && tasks && atoi(tasks) > 1) {
        snprintf(why, why_size, "srun started %s tasks and MPI sees each alone: launch with srun --mpi=pmix "
                 "(or mpirun inside the allocation)", tasks);
        MPI_Finalize();
        return -ENOTCONN;
    }
    my_rank = rank;
    timeout_s = collective_timeout_s;
    const char *diverge = getenv("LORAD_TEST_MPI_DIVERGE");
    test_diverge = diverge && strcmp(diverge, "1") == 0;
    pthread_t t;
    if (timeout_s > 0 && pthread_create(&t, NULL, watchdog, NULL) == 0) pthread_detach(t);
    *ret = (struct lorad_train_collective){.rank = rank, .world_size = size, .sum_f64 = sum_f64, .sum_f32 = sum_f32};
    return 0;
}

void lorad_mpi_finish(void) { MPI_Finalize(); }

long long lorad_mpi_repairs(void) { return repairs; }
#else
bool lorad_mpi_available(void) { return false; }

int lorad_mpi_start(struct lorad_train_collective *ret, int collective_timeout_s, int *argc, char ***argv, char *why,
                    size_t why_size) {
    (void)ret, (void)collective_timeout_s, (void)argc, (void)argv;
    snprintf(why, why_size, "this lorad was built without MPI (install Open MPI's headers, libopenmpi-dev, and rebuild)");
    return -ENOTSUP;
}

void lorad_mpi_finish(void) {}

long long lorad_mpi_repairs(void) { return 0; }
#endif
