/* Matching request paths against the route table's templates such as
 * "/v1/fine_tuning/jobs/{fine_tuning_job_id}/events". A template segment in braces captures one
 * non-empty path segment; everything else matches literally. Used by the dispatcher and by the
 * test that checks the table against openapi.yaml. */
#pragma once
#include <stdbool.h>
#include <stddef.h>

#define LORAD_ROUTE_MAX_PARAMS 4
#define LORAD_ROUTE_MAX_PARAM_LEN 128

struct lorad_route_params {
    int n;
    char name[LORAD_ROUTE_MAX_PARAMS][64];
    char value[LORAD_ROUTE_MAX_PARAMS][LORAD_ROUTE_MAX_PARAM_LEN];
};

/* True when path (no query string) matches tmpl; captured segments go to ret_params if non-NULL
 * (written only on a match). A captured segment longer than LORAD_ROUTE_MAX_PARAM_LEN - 1 bytes
 * does not match, so no oversized client string reaches a handler. */
bool lorad_route_match(const char *tmpl, const char *path, struct lorad_route_params *ret_params);

/* Value of a captured parameter by name, or NULL. */
const char *lorad_route_param(const struct lorad_route_params *p, const char *name);
