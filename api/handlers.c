/* Installs the handler groups over the route table's `not_wired` placeholders. */
#include "handlers.h"

#include "handlers_internal.h"

int lorad_api_handlers_install(void) {
    int (*const groups[])(void) = {
        lorad_api_install_file_routes,
        lorad_api_install_job_routes,
        lorad_api_install_model_routes,
        lorad_api_install_service_routes,
        lorad_api_install_inference_routes,
    };
    for (size_t i = 0; i < sizeof groups / sizeof groups[0]; i++) {
        int r = groups[i]();
        if (r < 0) return r;
    }
    return 0;
}
