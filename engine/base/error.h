/* Error details for engine and store calls. Functions return 0 or -errno; when they fail and the
 * caller passed a struct lorad_error, it names the field (param) and says what is wrong (message),
 * so the daemon can answer {"error":{"message","param"}} and the CLI can print one line.
 * Libraries never print: the caller reports once. */
#pragma once
#include <stddef.h>

struct lorad_error {
    char message[512];  /* human-readable, names the file/line/field where one applies */
    char param[128];    /* the offending field, e.g. "hyperparameters.batch_size"; "" if none */
};

/* Formats message into err (if non-NULL), records param, and returns code (a negative errno), so
 * a failing path reads `return lorad_error_set(err, -EINVAL, "lora.r", "must be > 0, got %d", r);` */
int lorad_error_set(struct lorad_error *err, int code, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Clears err (if non-NULL). */
void lorad_error_clear(struct lorad_error *err);
