#include "cpulist.h"

#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>

/* Reads one CPU number at *p (digits only) and advances *p past it. */
static int parse_cpu(const char **p, long *ret_cpu) {
    if (!isdigit((unsigned char)**p)) return -EINVAL;
    errno = 0;
    char *end = NULL;
    long v = strtol(*p, &end, 10);
    if (errno == ERANGE || v >= CPU_SETSIZE) return -ERANGE;
    *p = end;
    *ret_cpu = v;
    return 0;
}

static const char *skip_spaces(const char *p) {
    while (*p == ' ' || *p == '\t') p++;
    return p;
}

/* Contract: on any error *ret_set is untouched; the text is only read. */
int lorad_cpulist_parse(const char *text, cpu_set_t *ret_set) {
    cpu_set_t set;
    CPU_ZERO(&set);
    const char *p = text;
    for (;;) {
        p = skip_spaces(p);
        long lo, hi;
        int r = parse_cpu(&p, &lo);
        if (r < 0) return r;
        hi = lo;
        if (*p == '-') {
            p++;
            if ((r = parse_cpu(&p, &hi)) < 0) return r;
            if (hi < lo) return -EINVAL;
        }
        for (long c = lo; c <= hi; c++) CPU_SET((int)c, &set);
        p = skip_spaces(p);
        if (*p == '\0') break;
        if (*p != ',') return -EINVAL;
        p++;
    }
    *ret_set = set;
    return 0;
}

/* Contract: buf receives as many whole items as fit; a set too long for buf ends in "...". */
void lorad_cpulist_format(const cpu_set_t *set, char *buf, size_t size) {
    if (size == 0) return;
    buf[0] = '\0';
    size_t used = 0;
    for (int c = 0; c < CPU_SETSIZE; c++) {
        if (!CPU_ISSET(c, set)) continue;
        int hi = c;
        while (hi + 1 < CPU_SETSIZE && CPU_ISSET(hi + 1, set)) hi++;
        char item[32];
        int n = hi == c ? snprintf(item, sizeof item, "%s%d", used ? "," : "", c)
                        : snprintf(item, sizeof item, "%s%d-%d", used ? "," : "", c, hi);
        if (used + (size_t)n + 4 > size) {
            snprintf(buf + used, size - used, "...");
            return;
        }
        snprintf(buf + used, size - used, "%s", item);
        used += (size_t)n;
        c = hi;
    }
}

/* Contract: *ret_old is written before the change and only if it succeeds. */
int lorad_cpulist_pin_self(const cpu_set_t *set, cpu_set_t *ret_old) {
    cpu_set_t old;
    int r = pthread_getaffinity_np(pthread_self(), sizeof old, &old);
    if (r != 0) return -r;
    r = pthread_setaffinity_np(pthread_self(), sizeof *set, set);
    if (r != 0) return -r;
    if (ret_old) *ret_old = old;
    return 0;
}
