#include "meminfo.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

int lorad_mem_available(int64_t *ret_bytes) {
    FILE *f = fopen("/proc/meminfo", "re");
    if (!f) return -errno;
    char line[256];
    long long kb = -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "MemAvailable: %lld kB", &kb) == 1) break;
    fclose(f);
    if (kb < 0) return -ENOENT;
    *ret_bytes = (int64_t)kb * 1024;
    return 0;
}

int lorad_default_memory_limit(int64_t *ret_bytes) {
    int64_t avail;
    int r = lorad_mem_available(&avail);
    if (r < 0) return r;
    *ret_bytes = (int64_t)((double)avail * LORAD_DEFAULT_MEMORY_FRACTION);
    return 0;
}
