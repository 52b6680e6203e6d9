#include "log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static _Atomic int current_level = LORAD_LOG_INFO;

void lorad_log_set_level(enum lorad_log_level level) {
    atomic_store(&current_level, (int)level);
}

int lorad_log_level_parse(const char *name, enum lorad_log_level *ret_level) {
    static const struct { const char *name; enum lorad_log_level level; } table[] = {
        {"error", LORAD_LOG_ERROR}, {"warning", LORAD_LOG_WARNING}, {"info", LORAD_LOG_INFO}, {"debug", LORAD_LOG_DEBUG}};
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
        if (strcmp(table[i].name, name) == 0) {
            *ret_level = table[i].level;
            return 0;
        }
    return -EINVAL;
}

bool lorad_log_enabled(enum lorad_log_level level) {
    return (int)level <= atomic_load(&current_level);
}

static const char *level_name(enum lorad_log_level level) {
    switch (level) {
    case LORAD_LOG_ERROR: return "error";
    case LORAD_LOG_WARNING: return "warning";
    case LORAD_LOG_INFO: return "info";
    case LORAD_LOG_DEBUG: return "debug";
    }
    return "?";
}

void lorad_log(enum lorad_log_level level, const char *fmt, ...) {
    if (!lorad_log_enabled(level)) return;
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    /* One event, one line: newlines inside a message would split it in the journal. */
    for (char *p = msg; *p; p++)
        if (*p == '\n' || *p == '\r') *p = ' ';
    char line[2200];
    if (getenv("JOURNAL_STREAM")) {
        snprintf(line, sizeof line, "<%d>%s\n", (int)level, msg);
    } else {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        struct tm tm;
        gmtime_r(&ts.tv_sec, &tm);
        char when[32];
        strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &tm);
        snprintf(line, sizeof line, "%s.%03ldZ %s %s\n", when, ts.tv_nsec / 1000000, level_name(level), msg);
    }
    /* A single write keeps lines whole when several threads log at once. */
    fputs(line, stderr);
    fflush(stderr);
}
