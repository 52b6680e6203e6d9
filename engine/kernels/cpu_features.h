/* Which instruction sets the engine's kernels may use.
 *
 * Every kernel that has a faster variant for a wider instruction set asks lorad_isa_active()
 * instead of the CPU directly, so one environment variable can make a big CPU take the path a
 * smaller one takes: the test suite runs the paths of a CPU without AVX-512 (or without AVX2) on
 * whatever host CI lands on, and a user can rule out the engine's own kernel when comparing
 * numbers.
 *
 *   LORAD_ISA=auto      (or unset, or empty) everything the CPU and the OS support
 *   LORAD_ISA=avx512bf16  at most AVX-512F with AVX512_BF16: bf16 compute on vdpbf16ps
 *   LORAD_ISA=avx512    at most AVX-512F: the engine's own sgemm for the weight products; bf16
 *                       compute, when a job asks for it, rounds operands and multiplies in fp32
 *   LORAD_ISA=avx2      at most AVX2+FMA: OpenBLAS for every product, AVX2 elementwise rows
 *   LORAD_ISA=baseline  plain x86-64: OpenBLAS for every product, scalar elementwise rows
 *
 * The variable is a ceiling: it never enables what the CPU lacks. OpenBLAS makes its own choice
 * of kernel, which OPENBLAS_CORETYPE (OpenBLAS's variable) overrides; docs/engine.md lists both. */
#pragma once
#include <stdbool.h>

#include "error.h"

enum lorad_isa {
    LORAD_ISA_BASELINE = 0,
    LORAD_ISA_AVX2 = 1,   /* AVX2 and FMA */
    LORAD_ISA_AVX512 = 2, /* AVX-512F with the OS saving zmm state */
    LORAD_ISA_AVX512_BF16 = 3, /* and AVX512_BF16 (vdpbf16ps): Cooper Lake, Sapphire Rapids, Zen 4 */
};

/* What the CPU and the OS support, detected once. */
enum lorad_isa lorad_isa_detected(void);

/* What the kernels use: the detected set capped by LORAD_ISA, read once per process. An
 * unrecognised value caps nothing (the caller that starts the process checks it first with
 * lorad_isa_check_env, so a typo is refused rather than ignored). */
enum lorad_isa lorad_isa_active(void);

/* "baseline", "avx2", "avx512" or "avx512bf16". */
const char *lorad_isa_name(enum lorad_isa isa);

/* Checks LORAD_ISA: 0 when unset or valid, else -EINVAL with err naming the variable, its value
 * and the accepted ones. */
int lorad_isa_check_env(struct lorad_error *err);
