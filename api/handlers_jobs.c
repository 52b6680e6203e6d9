/* /v1/fine_tuning/jobs...: creating jobs (the job spec parser that `lorad train` uses, plus the
 * API's own rules: files by id only, models from the models directory, idempotency keys, the
 * queue limit), listing and retrieving them, cancel / pause / resume, events (a page or an SSE
 * stream), the metrics curve (JSON or CSV), checkpoints and their adapter files.
 *
 * No client string ever becomes a path: ids pass lorad_store_id_valid(), the model name is
 * matched against the models directory by lorad_model_dir_resolve(), and checkpoint files are
 * found through the path the worker recorded in the store. */
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "handlers.h"
#include "handlers_internal.h"
#include "jobspec.h"
#include "model_dir.h"
#include "model_file.h"
#include "sha256.h"
#include "store.h"
#include "train_memory.h"

#define JOBS "/v1/fine_tuning/jobs"
#define JOB JOBS "/{fine_tuning_job_id}"
#define CKPT JOB "/checkpoints/{checkpoint_id}"

/* "priority" is the API's, not the job spec's (the spec is what `lorad train` reads, and a local
 * run has no queue), so it is taken out of the body before the spec parser sees it. */
#define PRIORITY_MIN (-100)
#define PRIORITY_MAX 100
#define IDEMPOTENCY_KEY_MAX 255
/* Metrics are read from the store in pages of this many rows (the store's own maximum). */
/* Rows of one metrics reply: a job may have up to max_steps rows (1e9), so the reply is paged
 * to keep it to tens of MB (a row is ~300 bytes of JSON). */
#define METRICS_PAGE_MAX 100000
/* Events an SSE stream fetches per store read. */
#define STREAM_BATCH 100

static const char *job_id_param(const struct lorad_api_request *req, struct lorad_api_reply *ret_reply) {
    return handler_id_param(req, "fine_tuning_job_id", "ftjob-", ret_reply);
}

/* ---- create ------------------------------------------------------------------------------- */

/* Checks that id names a stored, validated dataset — a pre-tokenised one ({"input_ids"}) when
 * need_tokens, because the model has no tokenizer; preference pairs exactly when the job's method
 * is DPO. Fills a 400 naming param and returns -EINVAL otherwise (an unknown file is the
 * request's fault, hence 400 as OpenAI answers, not 404), so such a job is refused now instead of
 * failing later in a worker. */
static int check_file(struct lorad_app *app, const char *id, const char *param, bool need_tokens,
                      enum lorad_train_method method, int64_t *ret_lines, struct lorad_api_reply *ret_reply) {
    char msg[512];
    if (!lorad_store_id_valid("file-", id)) {
        /* In a job file for `lorad train` this may be a path; through the API only ids exist. */
        snprintf(msg, sizeof msg, "%s must be the id of an uploaded file (file-...), got '%.80s'", param, id);
        lorad_api_reply_error(ret_reply, 400, msg, param, "file_not_found");
        return -EINVAL;
    }
    json_t *file = NULL;
    struct lorad_error err = {0};
    int r = lorad_store_file_get(app->store, id, &file, &err);
    if (r == -ENOENT) {
        snprintf(msg, sizeof msg, "%s: no such file: %s", param, id);
        lorad_api_reply_error(ret_reply, 400, msg, param, "file_not_found");
        return -EINVAL;
    }
    if (r < 0) {
        handler_reply_failure(ret_reply, r, &err, NULL);
        return r;
    }
    const char *status = json_string_value(json_object_get(file, "status"));
    const char *purpose = json_string_value(json_object_get(file, "purpose"));
    const char *format = json_string_value(json_object_get(file, "format"));
    r = 0;
    if (!status || strcmp(status, "processed") != 0) {
        /* a file that failed validation: name its first bad line, as docs/api.md promises */
        json_t *first = json_array_get(json_object_get(json_object_get(file, "validation"), "bad_lines"), 0);
        char why[200] = "";
        if (status && !strcmp(status, "error") && first)
            snprintf(why, sizeof why, ": it failed validation; first bad line %lld (%s): %.120s",
                     (long long)json_integer_value(json_object_get(first, "line")),
                     json_string_value(json_object_get(first, "problem")) ? json_string_value(json_object_get(first, "problem")) : "?",
                     json_string_value(json_object_get(first, "reason")) ? json_string_value(json_object_get(first, "reason")) : "");
        else if (status && !strcmp(status, "error"))
            snprintf(why, sizeof why, ": it failed validation; see the file's validation report");
        snprintf(msg, sizeof msg, "%s: file %s is not ready for training (status %s%s)", param, id,
                 status ? status : "unknown", why);
        lorad_api_reply_error(ret_reply, 400, msg, param, "file_not_processed");
        r = -EINVAL;
    } else if (!purpose || strcmp(purpose, "fine-tune") != 0) {
        snprintf(msg, sizeof msg, "%s: file %s has purpose '%s', not 'fine-tune'", param, id, purpose ? purpose : "");
        lorad_api_reply_error(ret_reply, 400, msg, param, "invalid_file_purpose");
        r = -EINVAL;
    } else if (need_tokens && (!format || strcmp(format, "tokens") != 0)) {
        snprintf(msg, sizeof msg,
                 "%s: the model has no tokenizer, so its datasets must be pre-tokenised ({\"input_ids\": [...]}); "
                 "file %s is '%s'", param, id, format ? format : "unknown");
        lorad_api_reply_error(ret_reply, 400, msg, param, "tokenizer_required");
        r = -EINVAL;
    } else if (method == LORAD_METHOD_DPO && (!format || strcmp(format, "preference") != 0)) {
        snprintf(msg, sizeof msg,
                 "%s: method dpo trains on preference pairs ({\"input\", \"preferred_output\", "
                 "\"non_preferred_output\"} lines); file %s is '%s'", param, id, format ? format : "unknown");
        lorad_api_reply_error(ret_reply, 400, msg, param, "invalid_file_format");
        r = -EINVAL;
    } else if (method != LORAD_METHOD_DPO && format && strcmp(format, "preference") == 0) {
        snprintf(msg, sizeof msg, "%s: file %s holds preference pairs, which train with method.type \"dpo\"", param,
                 id);
        lorad_api_reply_error(ret_reply, 400, msg, param, "invalid_file_format");
        r = -EINVAL;
    }
    if (r == 0) *ret_lines = json_integer_value(json_object_get(file, "line_count"));
    json_decref(file);
    return r;
}

/* The operator's limits on what one job may take: at most max_threads_per_job threads (a client
 * may ask for fewer), and a memory estimate (lorad_train_memory_estimate, with the threads it will
 * run with and the datasets' line counts) within memory_limit. Sets *ret_memory_bytes to the
 * estimate, which the workers schedule by. Fills a 400 naming the field and returns -E2BIG when
 * a limit is exceeded; a model that cannot be probed is a 400 for "model". */
static int check_resources(struct lorad_app *app, const struct lorad_job_spec *spec, const char *model_path,
                           int64_t lines, int64_t *ret_memory_bytes, struct lorad_api_reply *ret_reply) {
    char msg[900];
    int ceiling = app->max_threads_per_job > 0 ? app->max_threads_per_job : 1;
    if (spec->hp.threads > ceiling) {
        snprintf(msg, sizeof msg,
                 "hyperparameters.threads is %d, more than this server's max_threads_per_job (%d); ask for at most "
                 "%d or leave it null",
                 spec->hp.threads, ceiling, ceiling);
        lorad_api_reply_error(ret_reply, 400, msg, "hyperparameters.threads", "invalid_value");
        return -E2BIG;
    }
    int threads = spec->hp.threads > 0 ? spec->hp.threads : ceiling;
    struct lorad_model_file *mf = NULL;
    struct lorad_error err = {0};
    int r = lorad_model_file_probe(model_path, &mf, &err);
    if (r == -ENOMEM) {
        handler_reply_oom(ret_reply);
        return r;
    }
    if (r < 0) {
        lorad_api_reply_error(ret_reply, 400, err.message, "model", "invalid_model");
        return r;
    }
    struct lorad_memory_estimate e;
    r = lorad_train_memory_estimate(&e, spec, mf, threads, lines, &err);
    lorad_model_file_close(mf);
    if (r == 0 && app->memory_limit > 0)
        r = lorad_memory_estimate_check(&e, app->memory_limit, "this server's memory_limit", &err);
    if (r < 0) {
        lorad_api_reply_error(ret_reply, 400, err.message, err.param[0] ? err.param : NULL,
                              r == -E2BIG ? "memory_limit_exceeded" : "invalid_value");
        return r;
    }
    *ret_memory_bytes = e.total;
    return 0;
}

/* sha256 hex of the body as canonical JSON (sorted keys, compact), so key order and whitespace do
 * not make two requests differ. Returns 0 or -ENOMEM. */
static int request_hash(const json_t *body, char ret_hex[65]) {
    char *text = json_dumps(body, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY);
    if (!text) return -ENOMEM;
    struct lorad_sha256 sha;
    lorad_sha256_init(&sha);
    lorad_sha256_update(&sha, text, strlen(text));
    free(text);
    uint8_t digest[32];
    lorad_sha256_final(&sha, digest);
    lorad_sha256_hex(digest, ret_hex);
    return 0;
}

/* Reads the optional "priority" member: an integer in [PRIORITY_MIN, PRIORITY_MAX], default 0. */
static int read_priority(const json_t *body, int *ret_priority, struct lorad_api_reply *ret_reply) {
    const json_t *p = json_object_get(body, "priority");
    if (!p || json_is_null(p)) {
        *ret_priority = 0;
        return 0;
    }
    if (!json_is_integer(p) || json_integer_value(p) < PRIORITY_MIN || json_integer_value(p) > PRIORITY_MAX) {
        char msg[128];
        snprintf(msg, sizeof msg, "priority must be an integer in [%d, %d] (higher runs first)", PRIORITY_MIN,
                 PRIORITY_MAX);
        lorad_api_reply_error(ret_reply, 400, msg, "priority", "invalid_value");
        return -EINVAL;
    }
    *ret_priority = (int)json_integer_value(p);
    return 0;
}

/* Parses the spec part of the body (everything but "priority") with the job spec parser and
 * applies the API's restrictions. On failure fills a 400 and returns -EINVAL (or the reply of
 * another failure and its code). */
static int parse_spec(const json_t *body, struct lorad_job_spec *ret_spec, struct lorad_api_reply *ret_reply) {
    json_t *spec_body = json_copy((json_t *)body); /* shallow: only the top level is changed */
    if (!spec_body) {
        handler_reply_oom(ret_reply);
        return -ENOMEM;
    }
    json_object_del(spec_body, "priority");
    struct lorad_error err = {0};
    int r = lorad_job_spec_parse(spec_body, ret_spec, &err);
    json_decref(spec_body);
    if (r < 0) {
        handler_reply_failure(ret_reply, r, &err, NULL);
        return r;
    }
    return 0;
}

/* Answers a store read: its object (stolen) on success, the mapped error otherwise. */
static int reply_result(struct lorad_api_reply *ret_reply, int r, json_t *obj, const struct lorad_error *err) {
    if (r < 0) return handler_reply_failure(ret_reply, r, err, NULL);
    return handler_reply_json(ret_reply, 200, obj);
}

static int reply_idempotency_conflict(struct lorad_api_reply *ret_reply, const struct lorad_error *err) {
    return lorad_api_reply_error(ret_reply, 422,
                                 err && err->message[0] ? err->message
                                                        : "Idempotency-Key already used for a different request",
                                 NULL, "idempotency_key_reused");
}

static void notify_jobs_changed(struct lorad_app *app) {
    if (app->jobs_changed) app->jobs_changed(app->jobs_changed_ctx);
}

static int create_job(const struct lorad_api_request *req, struct lorad_api_reply *ret_reply) {
    struct lorad_app *app = handler_app(req);
    if (atomic_load(&app->stopping))
        return lorad_api_reply_error(ret_reply, 503, "lorad is shutting down and accepts no new jobs", NULL,
                                     "shutting_down");
    const json_t *body = req->json_body;
    if (!json_is_object(body))
        return lorad_api_reply_error(ret_reply, 400, "the body must be a JSON object (the job spec)", NULL,
                                     "invalid_value");
    int priority;
    if (read_priority(body, &priority, ret_reply) < 0) return 0;

    const char *key = req->header(req, "Idempotency-Key");
    if (key && (!*key || strlen(key) > IDEMPOTENCY_KEY_MAX))
        return lorad_api_reply_error(ret_reply, 400, "Idempotency-Key must be 1..255 bytes", "Idempotency-Key",
                                     "invalid_value");
    struct lorad_job_spec spec;
    if (parse_spec(body, &spec, ret_reply) < 0) return 0;

    /* From here on every exit goes through `out`, which releases the spec. */
    struct lorad_error err = {0};
    json_t *job = NULL, *spec_json = NULL;
    char hash[65] = "";
    int r;
    if (key) {
        if (request_hash(body, hash) < 0) {
            handler_reply_oom(ret_reply);
            goto out;
        }
        /* A replay answers with the job it made even when new jobs would now be refused
         * (queue full, file since deleted): the request was already accepted once. */
        r = lorad_store_job_find_idempotent(app->store, key, hash, &job, &err);
        if (r == 1) {
            handler_reply_json(ret_reply, 200, job);
            goto out;
        }
        if (r == -EEXIST) {
            reply_idempotency_conflict(ret_reply, &err);
            goto out;
        }
        if (r < 0) {
            handler_reply_failure(ret_reply, r, &err, NULL);
            goto out;
        }
    }

    char model_path[4096];
    enum lorad_model_format model_format = LORAD_FORMAT_HF_DIR;
    r = app->models_dir ? lorad_model_dir_resolve(app->models_dir, spec.model, model_path, sizeof model_path,
                                                  &model_format, &err)
                        : lorad_error_set(&err, -ENOENT, "model", "no models directory is configured");
    if (r < 0) {
        lorad_api_reply_error(ret_reply, 400, err.message, "model", "model_not_found");
        goto out;
    }
    if (spec.lora.init_adapter[0]) {
        /* Through the API it names a fine-tuned model; the worker maps it to that job's adapter
         * directory again at run time (lorad_store_fine_tuned_adapter_dir), so no path is stored. */
        char dir[4096], base[LORAD_MODEL_ID_MAX];
        r = lorad_store_fine_tuned_adapter_dir(app->store, app->jobs_dir, spec.lora.init_adapter, dir, sizeof dir, base,
                                               sizeof base, &err);
        if (r == -ENOENT) {
            lorad_api_reply_error(ret_reply, 400, err.message, "lora.init_adapter", "model_not_found");
            goto out;
        }
        if (r < 0) {
            handler_reply_failure(ret_reply, r, &err, NULL);
            goto out;
        }
        if (strcmp(base, spec.model) != 0) {
            char msg[700];
            snprintf(msg, sizeof msg, "lora.init_adapter was trained on '%.200s', but this job's model is '%.200s'",
                     base, spec.model);
            lorad_api_reply_error(ret_reply, 400, msg, "lora.init_adapter", "invalid_value");
            goto out;
        }
    }
    /* A llama2.c file never carries a vocabulary (an HF dir or GGUF without one fails in the run). */
    bool need_tokens = model_format == LORAD_FORMAT_LLAMA2C;
    int64_t train_lines = 0, valid_lines = 0;
    if (check_file(app, spec.training_file, "training_file", need_tokens, spec.method.type, &train_lines, ret_reply) < 0)
        goto out;
    if (spec.validation_file[0] && check_file(app, spec.validation_file, "validation_file", need_tokens,
                                              spec.method.type, &valid_lines, ret_reply) < 0)
        goto out;
    int64_t memory_bytes = 0;
    if (check_resources(app, &spec, model_path, train_lines + valid_lines, &memory_bytes, ret_reply) < 0) goto out;

    spec_json = lorad_job_spec_to_json(&spec);
    if (!spec_json) {
        handler_reply_oom(ret_reply);
        goto out;
    }
    /* The files were checked above; they are processed, so the job goes straight to the queue.
     * The store counts the queue in the transaction that inserts (429 from -EAGAIN), so the limit
     * holds against concurrent creates and resumes. */
    struct lorad_store_job_new nj = {
        .model = spec.model,
        .training_file = spec.training_file,
        .validation_file = spec.validation_file[0] ? spec.validation_file : NULL,
        .spec = spec_json,
        .seed = spec.seed,
        .suffix = spec.suffix[0] ? spec.suffix : NULL,
        .priority = priority,
        .status = LORAD_JOB_QUEUED,
        .idempotency_key = key,
        .request_hash = key ? hash : NULL,
        .max_queued_jobs = app->max_queued_jobs,
        .memory_bytes = memory_bytes,
    };
    r = lorad_store_job_create(app->store, &nj, &job, &err);
    if (r == -EEXIST) {
        reply_idempotency_conflict(ret_reply, &err); /* a concurrent request took the key */
    } else if (r == -ENOENT && (!strcmp(err.param, "training_file") || !strcmp(err.param, "validation_file"))) {
        lorad_api_reply_error(ret_reply, 400, err.message, err.param, "file_not_found"); /* deleted meanwhile */
    } else if (r < 0) {
        handler_reply_failure(ret_reply, r, &err, NULL);
    } else {
        handler_reply_json(ret_reply, 200, job);
        if (r == 0) notify_jobs_changed(app);
    }
out:
    json_decref(spec_json);
    lorad_job_spec_clear(&spec);
    return 0;
}

/* ---- list, retrieve, control -------------------------------------------------------------- */

static int list_jobs(const struct lorad_api_request *req, struct lorad_api_reply *ret_reply) {
    struct lorad_app *app = handler_app(req);
    int limit;
    const char *after;
    if (handler_page_args(req, "ftjob-", 20, 100, &limit, &after, ret_reply) < 0) return 0;
    int status = -1;
    const char *s = req->query(req, "status");
    if (s) {
        enum lorad_job_status st;
        if (lorad_job_status_parse(s, &st) < 0) {
            char msg[256] = "status must be one of:";
            for (int i = 0; i < LORAD_JOB_STATUS_COUNT; i++)
                snprintf(msg + strlen(msg), sizeof msg - strlen(msg), "%s %s", i ? "," : "",
                         lorad_job_status_name((enum lorad_job_status)i));
            return lorad_api_reply_error(ret_reply, 400, msg, "status", "invalid_value");
        }
        status = (int)st;
    }
    json_t *page = NULL;
    struct lorad_error err = {0};
    int r = lorad_store_job_list(app->store, status, after, limit, &page, &err);
    return reply_result(ret_reply, r, page, &err);
}

static int get_job(const struct lorad_api_request *req, struct lorad_api_reply *ret_reply) {
    const char *id = job_id_param(req, ret_reply);
    if (!id) return 0;
    json_t *job = NULL;
    struct lorad_error err = {0};
    int r = lorad_store_job_get(handler_app(req)->store, id, &job, &err);
    return reply_result(ret_reply, r, job, &err);
}

enum control { CONTROL_CANCEL, CONTROL_PAUSE, CONTROL_RESUME };

struct control_action {
    const char *route;
    enum control control;
    const char *verb;    /* for the 409 message */
    const char *allowed; /* the statuses it applies to */
    bool notify;         /* the queue may have changed: wake a worker */
};

static const struct control_action CONTROL_ACTIONS[] = {
    {JOB "/cancel", CONTROL_CANCEL, "cancelled", "validating_files, queued, running, paused or cancelling",
     true},
    {JOB "/pause", CONTROL_PAUSE, "paused", "queued, running or paused", false},
    {JOB "/resume", CONTROL_RESUME, "resumed", "paused (or running with a pause pending)", true},
};

/* The store call of a control request; its result and ret_job are the store's. */
static int apply_control(struct lorad_app *app, enum control control, const char *id, json_t **ret_job,
                         struct lorad_error *err) {
    switch (control) {
    case CONTROL_CANCEL: return lorad_store_job_cancel(app->store, id, ret_job, err);
    case CONTROL_PAUSE: return lorad_store_job_pause(app->store, id, ret_job, err);
    /* A resumed job re-enters the queue: the same limit as a new one (429 from -EAGAIN). */
    case CONTROL_RESUME: return lorad_store_job_resume(app->store, id, app->max_queued_jobs, ret_job, err);
    }
    assert(!"unknown control");
    return -EINVAL;
}

static int control_job(const struct lorad_api_request *req, struct lorad_api_reply *ret_reply) {
    const struct control_action *a = NULL;
    for (size_t i = 0; i < sizeof CONTROL_ACTIONS / sizeof CONTROL_ACTIONS[0]; i++)
        if (!strcmp(req->route_template, CONTROL_ACTIONS[i].route)) a = &CONTROL_ACTIONS[i];
    if (!a) return -EINVAL; /* installed on a route it does not serve: a bug, the transport says 500 */
    const char *id = job_id_param(req, ret_reply);
    if (!id) return 0;
    struct lorad_app *app = handler_app(req);
    json_t *job = NULL;
    struct lorad_error err = {0};
    int r = apply_control(app, a->control, id, &job, &err);
    if (r == -EPERM) {
        /* Name the status the job is in now (the store's message names an edge, not the rule). */
        json_t *now = NULL;
        const char *status = "in a state that does not allow it";
        if (lorad_store_job_get(app->store, id, &now, NULL) == 0)
            status = json_string_value(json_object_get(now, "status"));
        char msg[320];
        snprintf(msg, sizeof msg, "job %s is %s; only %s jobs can be %s", id, status ? status : "?", a->allowed,
                 a->verb);
        json_decref(now);
        return lorad_api_reply_error(ret_reply, 409, msg, NULL, "invalid_state");
    }
    if (r < 0) return handler_reply_failure(ret_reply, r, &err, NULL);
    handler_reply_json(ret_reply, 200, job);
    if (a->notify) notify_jobs_changed(app);
    return 0;
}

/* ---- events ------------------------------------------------------------------------------- */

/* State of one SSE stream; lives until the transport calls stream_free. */
struct event_stream {
    struct lorad_store *store;
    char job_id[LORAD_STORE_ID_MAX];
    json_t *batch; /* events read but not yet sent, oldest first */
    size_t next;
};

static int stream_next(void *ctx, uint64_t after_seq, uint64_t *ret_seq, char **ret_json) {
    struct event_stream *es = ctx;
    for (int round = 0; round < 2; round++) {
        while (es->batch && es->next < json_array_size(es->batch)) {
            json_t *ev = json_array_get(es->batch, es->next++);
            json_int_t seq = json_integer_value(json_object_get(ev, "seq"));
            if (seq <= 0 || (uint64_t)seq <= after_seq) continue;
            char *text = json_dumps(ev, JSON_COMPACT);
            if (!text) return -ENOMEM;
            *ret_seq = (uint64_t)seq;
            *ret_json = text;
            return 1;
        }
        if (round == 1) break;
        json_decref(es->batch);
        es->batch = NULL;
        es->next = 0;
        /* Status first, then events: a job's terminal status event commits with the status, so
         * once the status read says terminal, the events read after it include every event.
         * Only the status column is read: this runs every poll of every open stream. */
        enum lorad_job_status status;
        int r = lorad_store_job_status(es->store, es->job_id, &status, NULL);
        if (r < 0) return r;
        bool terminal = lorad_job_status_terminal(status);
        int64_t after = after_seq > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)after_seq, last = 0;
        json_t *events = NULL;
        r = lorad_store_event_since(es->store, es->job_id, after, STREAM_BATCH, &events, &last, NULL);
        if (r < 0) return r;
        if (json_array_size(events) == 0) {
            json_decref(events);
            return terminal ? 2 : 0;
        }
        es->batch = events;
    }
    return 0;
}

static void stream_free(void *ctx) {
    struct event_stream *es = ctx;
    if (!es) return;
    json_decref(es->batch);
    free(es);
}

/* ?stream=true|false (also 1|0). Returns 0 with *ret, or -EINVAL after filling a 400. */
static int read_stream_flag(const struct lorad_api_request *req, bool *ret, struct lorad_api_reply *ret_reply) {
    const char *s = req->query(req, "stream");
    if (!s || !strcmp(s, "false") || !strcmp(s, "0")) *ret = false;
    else if (!strcmp(s, "true") || !strcmp(s, "1")) *ret = true;
    else {
        lorad_api_reply_error(ret_reply, 400, "stream must be true or false", "stream", "invalid_value");
        return -EINVAL;
    }
    return 0;
}

static int list_events(const struct lorad_api_request *req, struct lorad_api_reply *ret_reply) {
    struct lorad_app *app = handler_app(req);
    const char *id = job_id_param(req, ret_reply);
    if (!id) return 0;
    bool stream;
    if (read_stream_flag(req, &stream, ret_reply) < 0) return 0;
    struct lorad_error err = {0};
    if (!stream) {
        int limit;
        const char *after;
        if (handler_page_args(req, "ftevent-", 20, 100, &limit, &after, ret_reply) < 0) return 0;
        json_t *page = NULL;
        int r = lorad_store_event_list(app->store, id, after, limit, &page, &err);
        return reply_result(ret_reply, r, page, &err);
    }
    if (req->query(req, "after"))
        return lorad_api_reply_error(ret_reply, 400,
                                     "a stream starts at the job's first event; resume one with the Last-Event-ID "
                                     "header (the seq of the last event received), not with after",
                                     "after", "invalid_value");
    enum lorad_job_status status;
    int r = lorad_store_job_status(app->store, id, &status, &err); /* 404 now rather than an empty stream */
    if (r < 0) return handler_reply_failure(ret_reply, r, &err, NULL);
    struct event_stream *es = calloc(1, sizeof *es);
    if (!es) return handler_reply_oom(ret_reply);
    es->store = app->store;
    snprintf(es->job_id, sizeof es->job_id, "%s", id);
    ret_reply->status = 200;
    ret_reply->next_event = stream_next;
    ret_reply->sse_ctx = es;
    ret_reply->sse_free = stream_free;
    ret_reply->sse_after_seq = 0;
    return 0;
}

/* ---- metrics ------------------------------------------------------------------------------ */

/* The columns of a metrics row, in the store's order (docs/store.md). */
static const char *const METRIC_COLUMNS[] = {
    "step",     "total_steps", "epoch",      "train_loss", "train_mean_token_accuracy",
    "lr",       "grad_norm",   "tokens_seen", "tokens_per_s", "elapsed_s",
    "eta_s",    "valid_loss",  "valid_mean_token_accuracy", "rewards_margin", "rewards_accuracy",
    "rewards_chosen", "rewards_rejected", "full_valid_loss", "full_valid_mean_token_accuracy",
};
#define N_METRIC_COLUMNS (sizeof METRIC_COLUMNS / sizeof METRIC_COLUMNS[0])

/* Writes one CSV cell: integers as such, reals in the shortest form that reads back exactly,
 * nothing for null (not evaluated at that step). */
static void csv_cell(FILE *f, const json_t *v) {
    if (json_is_integer(v)) {
        fprintf(f, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
    } else if (json_is_real(v)) {
        double x = json_real_value(v);
        char cell[40];
        for (int prec = 15; prec <= 17; prec++) {
            snprintf(cell, sizeof cell, "%.*g", prec, x);
            if (strtod(cell, NULL) == x) break;
        }
        fputs(cell, f);
    }
}

static int get_metrics(const struct lorad_api_request *req, struct lorad_api_reply *ret_reply) {
    struct lorad_app *app = handler_app(req);
    const char *id = job_id_param(req, ret_reply);
    if (!id) return 0;
    const char *format = req->query(req, "format");
    bool csv = false;
    if (format && !strcmp(format, "csv")) csv = true;
    else if (format && strcmp(format, "json") != 0)
        return lorad_api_reply_error(ret_reply, 400, "format must be json or csv", "format", "invalid_value");

    int64_t after_step = -1, limit = METRICS_PAGE_MAX;
    const char *after_s = req->query(req, "after_step"), *limit_s = req->query(req, "limit");
    if (after_s && handler_query_int(after_s, 0, INT64_MAX, &after_step) < 0)
        return lorad_api_reply_error(ret_reply, 400, "after_step must be a step number (an integer >= 0)",
                                     "after_step", "invalid_value");
    if (limit_s && handler_query_int(limit_s, 1, METRICS_PAGE_MAX, &limit) < 0)
        return lorad_api_reply_error(ret_reply, 400, "limit must be an integer between 1 and 100000", "limit",
                                     "invalid_value");

    json_t *rows = NULL;
    struct lorad_error err = {0};
    int r = lorad_store_metrics_list(app->store, id, after_step, (int)limit, &rows, &err);
    if (r < 0) return handler_reply_failure(ret_reply, r, &err, NULL);
    bool has_more = false;
    if ((int64_t)json_array_size(rows) == limit) { /* a full page: is there a row after it? */
        json_t *next = NULL;
        int64_t last = json_integer_value(json_object_get(json_array_get(rows, (size_t)limit - 1), "step"));
        r = lorad_store_metrics_list(app->store, id, last, 1, &next, &err);
        if (r < 0) {
            json_decref(rows);
            return handler_reply_failure(ret_reply, r, &err, NULL);
        }
        has_more = json_array_size(next) > 0;
        json_decref(next);
    }
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (!f) {
        json_decref(rows);
        return handler_reply_oom(ret_reply);
    }
    if (csv) {
        for (size_t c = 0; c < N_METRIC_COLUMNS; c++) fprintf(f, "%s%s", c ? "," : "", METRIC_COLUMNS[c]);
        fputc('\n', f);
    } else {
        fputs("{\"object\":\"list\",\"data\":[", f);
    }
    size_t i;
    json_t *row;
    json_array_foreach(rows, i, row) {
        if (csv) {
            for (size_t c = 0; c < N_METRIC_COLUMNS; c++) {
                if (c) fputc(',', f);
                csv_cell(f, json_object_get(row, METRIC_COLUMNS[c]));
            }
            fputc('\n', f);
        } else {
            if (i) fputc(',', f);
            if (json_dumpf(row, f, JSON_COMPACT | JSON_PRESERVE_ORDER) < 0) r = -ENOMEM;
        }
    }
    json_decref(rows);
    if (!csv) fprintf(f, "],\"has_more\":%s}", has_more ? "true" : "false");
    bool write_failed = ferror(f) != 0;
    if (fclose(f) != 0) write_failed = true;
    if (r == 0 && write_failed) r = -ENOMEM;
    if (r < 0) {
        free(text);
        return handler_reply_failure(ret_reply, r, &err, NULL);
    }
    ret_reply->status = 200;
    ret_reply->text = text;
    ret_reply->text_len = len;
    ret_reply->content_type = csv ? "text/csv; charset=utf-8" : "application/json";
    return 0;
}

/* ---- checkpoints -------------------------------------------------------------------------- */

static int list_checkpoints(const struct lorad_api_request *req, struct lorad_api_reply *ret_reply) {
    const char *id = job_id_param(req, ret_reply);
    if (!id) return 0;
    int limit;
    const char *after;
    if (handler_page_args(req, "ftckpt-", 10, 100, &limit, &after, ret_reply) < 0) return 0;
    json_t *page = NULL;
    struct lorad_error err = {0};
    int r = lorad_store_checkpoint_list(handler_app(req)->store, id, after, limit, &page, &err);
    return reply_result(ret_reply, r, page, &err);
}

struct checkpoint_file {
    const char *route;
    const char *name; /* the file in the checkpoint directory */
    const char *content_type;
};

static const struct checkpoint_file CHECKPOINT_FILES[] = {
    {CKPT "/adapter_model.safetensors", "adapter_model.safetensors", "application/octet-stream"},
    {CKPT "/adapter_config.json", "adapter_config.json", "application/json"},
    {CKPT "/adapter.tar", "adapter.tar", "application/x-tar"},
    {CKPT "/adapter.gguf", "adapter.gguf", "application/octet-stream"},
};

static int get_checkpoint_file(const struct lorad_api_request *req, struct lorad_api_reply *ret_reply) {
    const struct checkpoint_file *cf = NULL;
    for (size_t i = 0; i < sizeof CHECKPOINT_FILES / sizeof CHECKPOINT_FILES[0]; i++)
        if (!strcmp(req->route_template, CHECKPOINT_FILES[i].route)) cf = &CHECKPOINT_FILES[i];
    if (!cf) return -EINVAL; /* installed on a route it does not serve: a bug, the transport says 500 */
    struct lorad_app *app = handler_app(req);
    const char *job_id = job_id_param(req, ret_reply);
    if (!job_id) return 0;
    const char *ckpt_id = handler_id_param(req, "checkpoint_id", "ftckpt-", ret_reply);
    if (!ckpt_id) return 0;
    int64_t step = 0;
    char *dir = NULL;
    struct lorad_error err = {0};
    int r = lorad_store_checkpoint_get(app->store, job_id, ckpt_id, &step, &dir, &err);
    if (r < 0) return handler_reply_failure(ret_reply, r, &err, NULL);
    /* The directory is the worker's record (absolute, or relative to the state directory); the
     * file name is ours. Nothing here comes from the request but the two validated ids. */
    char path[8192];
    r = lorad_store_path_absolute(app->state_dir, dir, cf->name, path, sizeof path);
    free(dir);
    if (r < 0)
        return lorad_api_reply_error(ret_reply, 500, "checkpoint path too long", NULL, "internal_error");
    char name[256];
    snprintf(name, sizeof name, "%s-step-%" PRId64 "-%s", job_id, step, cf->name);
    /* Rows of pruned checkpoints are forgotten with their directories; a download racing the
     * pruning finds no files: 404. */
    return handler_reply_adapter_file(ret_reply, path, cf->content_type, name, "checkpoint_id");
}

/* ---- install ------------------------------------------------------------------------------ */

int lorad_api_install_job_routes(void) {
    static const struct {
        const char *method, *path;
        lorad_api_handler_fn fn;
    } routes[] = {
        {"POST", JOBS, create_job},
        {"GET", JOBS, list_jobs},
        {"GET", JOB, get_job},
        {"POST", JOB "/cancel", control_job},
        {"POST", JOB "/pause", control_job},
        {"POST", JOB "/resume", control_job},
        {"GET", JOB "/events", list_events},
        {"GET", JOB "/metrics", get_metrics},
        {"GET", JOB "/checkpoints", list_checkpoints},
        {"GET", CKPT "/adapter_model.safetensors", get_checkpoint_file},
        {"GET", CKPT "/adapter_config.json", get_checkpoint_file},
        {"GET", CKPT "/adapter.tar", get_checkpoint_file},
        {"GET", CKPT "/adapter.gguf", get_checkpoint_file},
    };
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++) {
        int r = lorad_api_set_handler(routes[i].method, routes[i].path, routes[i].fn);
        if (r < 0) return r;
    }
    return 0;
}
