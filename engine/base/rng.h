/* Counter-based random numbers: every value is a pure function of (seed, counters), so LoRA init
 * and dropout masks are identical for a fixed seed whatever the thread count or scheduling.
 * The mixer is splitmix64's finaliser applied along the counter chain. */
#pragma once
#include <math.h>
#include <stdint.h>

static inline uint64_t lorad_mix64(uint64_t z) {
    z += 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* A 64-bit value for the counter tuple (seed, a, b, c, d). */
static inline uint64_t lorad_rng_u64(uint64_t seed, uint64_t a, uint64_t b, uint64_t c, uint64_t d) {
    uint64_t h = lorad_mix64(seed);
    h = lorad_mix64(h ^ a);
    h = lorad_mix64(h ^ b);
    h = lorad_mix64(h ^ c);
    return lorad_mix64(h ^ d);
}

/* Uniform in [0, 1) with 24 random bits (exactly representable as float). */
static inline float lorad_rng_uniform(uint64_t bits) { return (float)(bits >> 40) * (1.0f / 16777216.0f); }

/* Standard normal from one 64-bit value (Box-Muller on its two 32-bit halves). */
static inline double lorad_rng_normal(uint64_t bits) {
    double u1 = ((double)(bits >> 32) + 1.0) / 4294967297.0; /* (0, 1) */
    double u2 = (double)(bits & 0xffffffffULL) / 4294967296.0;
    return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}
