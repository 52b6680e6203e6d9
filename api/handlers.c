/* Installs the handler groups over the route table's `not_wired` placeholders, and names
 * fine-tuned models. */
#include "handlers.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "handlers_internal.h"

int lorad_api_handlers_install(void) {
    int (*const groups[])(void) = {
        lorad_api_install_file_routes,
        lorad_api_install_job_routes,
        lorad_api_install_model_routes,
        lorad_api_install_service_routes,
    };
    for (size_t i = 0; i < sizeof groups / sizeof groups[0]; i++) {
        int r = groups[i]();
        if (r < 0) return r;
    }
    return 0;
}

int lorad_api_fine_tuned_model_name(const char *base_model, const char *suffix, const char *job_id,
                                    char *buf, size_t cap) {
    /* OpenAI's ft:<base>:<org>:<suffix>:<id> shape, with the base's directories dropped because
     * a local model may be referenced by path. */
    const char *slash = strrchr(base_model, '/');
    const char *base = slash && slash[1] ? slash + 1 : base_model;
    int n = snprintf(buf, cap, "ft:%s:%s:%s", base, suffix && *suffix ? suffix : "lorad", job_id);
    if (n < 0 || (size_t)n >= cap) return -ENAMETOOLONG;
    return 0;
}
