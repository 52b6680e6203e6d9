/* lorad version: what this binary is and what it was built with. */
#include "cli.h"

#include "cpu_features.h"
#include "gemm.h"
#include "train_mpi.h"

#include <cblas.h>
#include <jansson.h>
#include <microhttpd.h>
#include <sqlite3.h>
#include <stdio.h>

#ifndef LORAD_VERSION
#define LORAD_VERSION "0.0.0"
#endif

int lorad_cmd_version(int argc, char **argv) {
    (void)argv;
    if (argc > 1) {
        fprintf(stderr, "lorad version: takes no arguments\n");
        return LORAD_EXIT_USAGE;
    }
    printf("lorad %s\n", LORAD_VERSION);
    printf("sqlite %s\n", sqlite3_libversion());
    printf("jansson %s\n", JANSSON_VERSION);
    printf("libmicrohttpd %s\n", MHD_get_version());
    printf("openblas %s\n", openblas_get_config());
    printf("isa %s (cpu %s)\n", lorad_isa_name(lorad_isa_active()), lorad_isa_name(lorad_isa_detected()));
    printf("gemm %s\n", lorad_gemm_kernel_description());
    printf("mpi: %s\n", lorad_mpi_available() ? "yes (mpirun -np K lorad train trains data-parallel)" : "no (built without MPI)");
    return LORAD_EXIT_OK;
}
