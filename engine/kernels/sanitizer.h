#ifndef LORAD_KERNELS_SANITIZER_H
#define LORAD_KERNELS_SANITIZER_H
/* The register-blocked GEMM microkernels read their packed panels 14 times per 24 FMAs; under
 * AddressSanitizer each of those reads is a shadow check, which made every training test 5-15 times
 * slower than release and left the sanitizer pass of scripts/test unable to run the whole suite.
 * So the microkernels alone carry LORAD_UNINSTRUMENTED, and their callers (which are instrumented,
 * as is the packing that reads the user's matrices) check the same bytes against ASan's shadow once
 * per packed panel and once per row of the C tile: an out-of-bounds panel or C access is still
 * reported by ASan, with its stack trace, at the call that would make it. */
#include <stddef.h>
#include <stdint.h>

#if defined(__SANITIZE_ADDRESS__)
#define LORAD_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define LORAD_ASAN 1
#endif
#endif

#ifdef LORAD_ASAN
#include <sanitizer/asan_interface.h>

#define LORAD_UNINSTRUMENTED __attribute__((no_sanitize("address", "undefined")))

/* Makes ASan report the first byte of [p, p + n) that the program may not touch (freed, a redzone
 * or never allocated), by reading it from instrumented code. Call it from instrumented code only:
 * inlined into a LORAD_UNINSTRUMENTED function the read would go unchecked. */
static inline void lorad_asan_check_region(const void *p, size_t n) {
    const char *bad = (const char *)__asan_region_is_poisoned((void *)(uintptr_t)p, n);
    if (bad) (void)*(const volatile char *)bad;
}
#else
#define LORAD_UNINSTRUMENTED
static inline void lorad_asan_check_region(const void *p, size_t n) {
    (void)p;
    (void)n;
}
#endif

/* The rows [0, mr) x columns [0, nr) of a C tile with row stride ldc, as a microkernel writes them. */
static inline void lorad_asan_check_tile(const float *c, int64_t ldc, int mr, int nr) {
    for (int i = 0; i < mr; i++) lorad_asan_check_region(c + i * ldc, (size_t)nr * sizeof *c);
}

#endif
