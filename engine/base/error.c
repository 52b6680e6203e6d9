#include "error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int lorad_error_set(struct lorad_error *err, int code, const char *param, const char *fmt, ...) {
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->message, sizeof err->message, fmt, ap);
        va_end(ap);
        snprintf(err->param, sizeof err->param, "%s", param ? param : "");
    }
    return code;
}

void lorad_error_clear(struct lorad_error *err) {
    if (err) {
        err->message[0] = '\0';
        err->param[0] = '\0';
    }
}
