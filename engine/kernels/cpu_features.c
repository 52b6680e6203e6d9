#include "cpu_features.h"

#include <cpuid.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static const char *const isa_names[] = {
    [LORAD_ISA_BASELINE] = "baseline",
    [LORAD_ISA_AVX2] = "avx2",
    [LORAD_ISA_AVX512] = "avx512",
    [LORAD_ISA_AVX512_BF16] = "avx512bf16",
};
#define N_ISA ((int)(sizeof isa_names / sizeof isa_names[0]))

const char *lorad_isa_name(enum lorad_isa isa) {
    return (int)isa >= 0 && (int)isa < N_ISA ? isa_names[isa] : "unknown";
}

/* XCR0 says which register states the OS saves on a context switch; a CPU feature is usable only
 * when its state is among them. */
static uint64_t os_saved_state(void) {
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}

/* CPUID bits read directly where compilers' __builtin_cpu_supports names differ (clang 14 knows
 * neither "osxsave" nor "avx512bf16"), so the engine builds with both gcc and clang (fuzzing). */
static bool cpuid_osxsave(void) {
    unsigned a, b, c, d;
    return __get_cpuid(1, &a, &b, &c, &d) && (c & (1u << 27));
}
static bool cpuid_avx512_bf16(void) {
    unsigned a, b, c, d;
    if (__get_cpuid_max(0, NULL) < 7) return false;
    __cpuid_count(7, 1, a, b, c, d);
    return (a & (1u << 5)) != 0;
}

static enum lorad_isa detect(void) {
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx") || !cpuid_osxsave()) return LORAD_ISA_BASELINE;
    uint64_t xcr0 = os_saved_state();
    if ((xcr0 & 0x6) != 0x6) return LORAD_ISA_BASELINE; /* SSE and AVX (ymm) state */
    if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) return LORAD_ISA_BASELINE;
    /* opmask, upper halves of zmm0-15 and zmm16-31 */
    if (!__builtin_cpu_supports("avx512f") || (xcr0 & 0xE0) != 0xE0) return LORAD_ISA_AVX2;
    /* vdpbf16ps on zmm also needs AVX512BW for the 16-bit packing the kernel does */
    if (cpuid_avx512_bf16() && __builtin_cpu_supports("avx512bw")) return LORAD_ISA_AVX512_BF16;
    return LORAD_ISA_AVX512;
}

/* -1 when the variable is unset, empty or "auto"; -2 when it is not a name we know. */
static int env_cap(void) {
    const char *v = getenv("LORAD_ISA");
    if (!v || !v[0] || strcmp(v, "auto") == 0) return -1;
    for (int i = 0; i < N_ISA; i++)
        if (strcmp(v, isa_names[i]) == 0) return i;
    return -2;
}

/* Jobs may start concurrently; every thread computes the same answer, so relaxed atomics
 * suffice for both caches. */
enum lorad_isa lorad_isa_detected(void) {
    static int cached = -1;
    int v = __atomic_load_n(&cached, __ATOMIC_RELAXED);
    if (v < 0) {
        v = (int)detect();
        __atomic_store_n(&cached, v, __ATOMIC_RELAXED);
    }
    return (enum lorad_isa)v;
}

enum lorad_isa lorad_isa_active(void) {
    static int cached = -1;
    int v = __atomic_load_n(&cached, __ATOMIC_RELAXED);
    if (v < 0) {
        v = (int)lorad_isa_detected();
        int cap = env_cap();
        if (cap >= 0 && cap < v) v = cap;
        __atomic_store_n(&cached, v, __ATOMIC_RELAXED);
    }
    return (enum lorad_isa)v;
}

int lorad_isa_check_env(struct lorad_error *err) {
    if (env_cap() != -2) return 0;
    return lorad_error_set(err, -EINVAL, "LORAD_ISA",
                           "environment variable LORAD_ISA=%.64s is not one of auto, avx512bf16, avx512, avx2, baseline",
                           getenv("LORAD_ISA"));
}
