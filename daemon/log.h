/* Process logging: one line per event on stderr, which journald takes as it is.
 * Under systemd (JOURNAL_STREAM set) each line starts with the syslog priority prefix "<N>" so the
 * journal records levels; elsewhere it starts with a UTC timestamp and the level name. Only the
 * daemon logs: libraries return errors and the caller logs once. Never log secrets (API keys). */
#pragma once
#include <stdbool.h>

enum lorad_log_level { LORAD_LOG_ERROR = 3, LORAD_LOG_WARNING = 4, LORAD_LOG_INFO = 6, LORAD_LOG_DEBUG = 7 };

/* Sets the threshold; thread-safe (SIGHUP reloads it). */
void lorad_log_set_level(enum lorad_log_level level);
/* Parses "error", "warning", "info", "debug"; returns 0 or -EINVAL. */
int lorad_log_level_parse(const char *name, enum lorad_log_level *ret_level);
bool lorad_log_enabled(enum lorad_log_level level);

void lorad_log(enum lorad_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_error(...) lorad_log(LORAD_LOG_ERROR, __VA_ARGS__)
#define log_warning(...) lorad_log(LORAD_LOG_WARNING, __VA_ARGS__)
#define log_info(...) lorad_log(LORAD_LOG_INFO, __VA_ARGS__)
#define log_debug(...) lorad_log(LORAD_LOG_DEBUG, __VA_ARGS__)
