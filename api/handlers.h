/* The real handlers of the HTTP API, backed by store/ and engine/. The daemon calls
 * lorad_api_handlers_install() once before starting the server; it replaces every `not_wired`
 * handler of the route table (routes.c) with the one that serves it. */
#pragma once
#include <stddef.h>

struct lorad_app;
struct lorad_error;

/* Installs every handler group. Returns 0 or -ENOENT when a route is missing from the table. */
int lorad_api_handlers_install(void);

/* The fine-tuned model name of a succeeded job: "ft:<base>:<suffix or lorad>:<job-id>", where
 * base is the model id without directories. Returns 0, or -ENAMETOOLONG when cap is too small. */
int lorad_api_fine_tuned_model_name(const char *base_model, const char *suffix, const char *job_id,
                                    char *buf, size_t cap);

/* Attaches app to the job gauges of /metrics (lorad_jobs{status}, lorad_queue_depth,
 * lorad_train_tokens_total, lorad_job_tokens_per_second{job_id}) and registers them with
 * lorad_api_metrics_add_gauge() the first time. Optional: the first /metrics or /readyz request
 * attaches its req->app too. app must outlive the server. Returns 0, -EINVAL (app NULL) or the
 * registration's -ENOSPC. */
int lorad_api_service_attach(struct lorad_app *app);

/* The final adapter of the succeeded job whose fine_tuned_model is `name`: what lora.init_adapter
 * names through the API (a client string never becomes a path; the directory is derived from the
 * job id). Writes jobs_dir/<job-id>/adapter to ret_dir and the job's base model id to ret_base.
 * Returns 0; -ENOENT (param "lora.init_adapter") when name is not a succeeded job's model;
 * -ENAMETOOLONG; other -errno from the store. */
int lorad_api_fine_tuned_adapter_dir(const struct lorad_app *app, const char *name, char *ret_dir, size_t dir_cap,
                                     char *ret_base, size_t base_cap, struct lorad_error *err);
