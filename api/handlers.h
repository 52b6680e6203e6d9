/* The real handlers of the HTTP API, backed by store/ and engine/. The daemon calls
 * lorad_api_handlers_install() once before starting the server; it replaces every `not_wired`
 * handler of the route table (routes.c) with the one that serves it. */
#pragma once
#include <stddef.h>

/* Installs every handler group. Returns 0 or -ENOENT when a route is missing from the table. */
int lorad_api_handlers_install(void);

/* The fine-tuned model name of a succeeded job: "ft:<base>:<suffix or lorad>:<job-id>", where
 * base is the model id without directories. Returns 0, or -ENAMETOOLONG when cap is too small. */
int lorad_api_fine_tuned_model_name(const char *base_model, const char *suffix, const char *job_id,
                                    char *buf, size_t cap);
