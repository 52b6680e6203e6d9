/* The real handlers of the HTTP API, backed by store/ and engine/. The daemon calls
 * lorad_api_handlers_install() once before starting the server; it replaces every `not_wired`
 * handler of the route table (routes.c) with the one that serves it. */
#pragma once
#include <stddef.h>

struct lorad_app;
struct lorad_error;

/* Installs every handler group. Returns 0 or -ENOENT when a route is missing from the table. */
int lorad_api_handlers_install(void);

/* Attaches app to the gauges of /metrics (lorad_jobs{status}, lorad_queue_depth,
 * lorad_train_tokens_total, lorad_job_tokens_per_second{job_id}, and with app->infer the
 * lorad_inference_* series) and registers them with
 * lorad_api_metrics_add_gauge() the first time. Optional: the first /metrics or /readyz request
 * attaches its req->app too. app must outlive the server. Returns 0, -EINVAL (app NULL) or the
 * registration's -ENOSPC. */
int lorad_api_service_attach(struct lorad_app *app);
