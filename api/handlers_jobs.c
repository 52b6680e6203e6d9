/* Placeholder: this group's routes stay `not_wired` until its handlers are written. */
#include "handlers_internal.h"

int lorad_api_install_job_routes(void) {
    return 0;
}
