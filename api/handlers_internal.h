/* Helpers shared by the handler groups (handlers_*.c). Private to api/. */
#pragma once
#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "app.h"
#include "data_format.h"
#include "error.h"
#include "routes.h"

/* Each handler group installs its routes with lorad_api_set_handler(); handlers.c calls them all.
 * Return 0 or -ENOENT. */
int lorad_api_install_file_routes(void);    /* handlers_files.c: /v1/files... */
int lorad_api_install_job_routes(void);     /* handlers_jobs.c: /v1/fine_tuning/jobs... */
int lorad_api_install_model_routes(void);   /* handlers_models.c: /v1/models... */
int lorad_api_install_service_routes(void); /* handlers_service.c: /readyz, /metrics gauges */
int lorad_api_install_inference_routes(void); /* handlers_inference.c: /v1/completions, /v1/chat/completions */

static inline struct lorad_app *handler_app(const struct lorad_api_request *req) {
    return (struct lorad_app *)req->app;
}

/* Answers a failed store/engine call with the one error shape: -ENOENT 404, -EINVAL/-ERANGE/
 * -E2BIG 400, -EPERM/-EBUSY 409, -EEXIST 422, -EAGAIN 429 (queue full), -ENOSPC/-EROFS/-ENOMEM
 * 503, others 500. The message and param come from err. code may be NULL (then derived from the
 * errno). Returns 0. */
int handler_reply_failure(struct lorad_api_reply *ret_reply, int r, const struct lorad_error *err,
                          const char *code);

/* A query parameter's decimal integer in [min, max]: 0 and *ret_value, or -EINVAL (no sign
 * games, no trailing text, no overflow). */
int handler_query_int(const char *s, int64_t min, int64_t max, int64_t *ret_value);

/* Reads ?limit (1..max_limit, default default_limit) and ?after (must be a valid id with
 * id_prefix when present). On bad input fills ret_reply with a 400 naming the parameter and
 * returns -EINVAL; on success returns 0. */
int handler_page_args(const struct lorad_api_request *req, const char *id_prefix, int default_limit,
                      int max_limit, int *ret_limit, const char **ret_after, struct lorad_api_reply *ret_reply);

/* The path parameter `name` if it is a valid id with prefix; else fills a 404 naming it and
 * returns NULL (an invalid id can never exist, and it never becomes a path). */
const char *handler_id_param(const struct lorad_api_request *req, const char *name, const char *prefix,
                             struct lorad_api_reply *ret_reply);

/* Fills a JSON reply (steals obj). status 200 unless given. Returns 0. */
/* 503 out_of_memory: the one reply for a failed allocation. */
int handler_reply_oom(struct lorad_api_reply *ret_reply);
int handler_reply_json(struct lorad_api_reply *ret_reply, unsigned status, json_t *obj);

/* Serves a regular file from disk as a download (Range is the transport's job). download_name
 * is copied into ret_reply->download_name_buf. Missing file: 404 naming param. Returns 0. */
int handler_reply_file(struct lorad_api_reply *ret_reply, const char *path, const char *content_type,
                       const char *download_name, const char *param);

/* handler_reply_file for a file of an adapter directory; an adapter.gguf that a DoRA adapter
 * (use_dora in its adapter_config.json) lacks gets a 404 saying why (code
 * "not_available_for_dora"). Returns 0. */
int handler_reply_adapter_file(struct lorad_api_reply *ret_reply, const char *path, const char *content_type,
                               const char *download_name, const char *param);

/* 503 {"code": "not_ready"}: the daemon has not opened the store yet (app or app->store NULL).
 * Returns 0. */
int handler_reply_not_ready(struct lorad_api_reply *ret_reply);

/* ---- model names (model_resolve.c) ------------------------------------------------------- */

enum handler_model_kind {
    HANDLER_MODEL_BASE,       /* an entry of the models directory */
    HANDLER_MODEL_FINE_TUNED, /* a succeeded job's final adapter: ft:<base>:<suffix>:<job-id> */
    HANDLER_MODEL_CHECKPOINT, /* a job's checkpoint: ft:<base>:<suffix>:<job-id>:ckpt-step-N */
};

/* What a model name of GET /v1/models runs: paths built by the server, never from the name. */
struct handler_model {
    enum handler_model_kind kind;
    char base_id[256];             /* the base model's id (the name itself for a base) */
    char base_path[4096];
    char adapter_path[8192];       /* "" for a base model */
    enum lorad_chat_template tmpl; /* the training job's data.template; AUTO for a base (its own) */
};

/* Resolves a model name. Returns 0 and *ret, -ENOENT (param "model", the message names the model)
 * when name is no model, or its base model is no longer in the models directory, or other -errno
 * from the store (err set). The caller checks that app->store is open. */
int handler_model_resolve(const struct lorad_app *app, const char *name, struct handler_model *ret,
                          struct lorad_error *err);

/* True when name has a checkpoint's shape (ft:...:<job-id>:ckpt-step-N with a valid job id). */
bool handler_model_is_checkpoint(const char *name);

/* The checkpoint the store publishes as name (its fine_tuned_model_checkpoint): 0 with *ret_job
 * (the job object) and *ret_checkpoint (its fine_tuning.job.checkpoint object), new references;
 * -ENOENT, err untouched, when there is none; other -errno from the store (err set). */
int handler_find_checkpoint(struct lorad_store *store, const char *name, json_t **ret_job, json_t **ret_checkpoint,
                            struct lorad_error *err);
