/* What the kernel says about memory, for the default memory limits of `lorad serve` and
 * `lorad train`. */
#pragma once
#include <stdint.h>

/* The share of MemAvailable the jobs may take when no limit is configured: the rest is left to
 * the page cache, the daemon itself and whatever else runs on the box. */
#define LORAD_DEFAULT_MEMORY_FRACTION 0.8

/* MemAvailable of /proc/meminfo in bytes: 0, or -errno when it cannot be read (-ENOENT: no
 * such line). */
int lorad_mem_available(int64_t *ret_bytes);

/* LORAD_DEFAULT_MEMORY_FRACTION of MemAvailable now, or -errno as lorad_mem_available. */
int lorad_default_memory_limit(int64_t *ret_bytes);
