/* /readyz and the job and inference gauges of /metrics.
 *
 * The gauges need the app (its store), which lorad_api_handlers_install() does not have. They are
 * registered with lorad_api_metrics_add_gauge() exactly once, on the first /metrics or /readyz
 * request, from req->app; the daemon may instead call lorad_api_service_attach() after
 * installing the handlers (both paths are idempotent). The gauge callbacks read the app through
 * one atomic pointer, so a later attach (another app, as in tests) replaces it rather than
 * registering twice. */
#include <errno.h>
#include <malloc.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "api_metrics.h"
#include "handlers.h"
#include "handlers_internal.h"
#include "infer_service.h"
#include "store.h"

static _Atomic(struct lorad_app *) gauge_app;
static pthread_once_t gauge_once = PTHREAD_ONCE_INIT;
static int gauge_register_result;

/* A bounded appender: whole lines only, so a full buffer drops lines, never half of one. */
struct text_out {
    char *buf;
    size_t cap, len;
};

__attribute__((format(printf, 2, 3))) static void out_line(struct text_out *o, const char *fmt, ...) {
    if (o->cap == 0) return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(o->buf + o->len, o->cap - o->len, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= o->cap - o->len) {
        o->buf[o->len] = '\0'; /* did not fit: drop it */
        o->cap = o->len;       /* and everything after it, so the output stays a prefix of whole lines */
        return;
    }
    o->len += (size_t)n;
}

/* lorad_jobs{status}, lorad_queue_depth, lorad_train_tokens_total. */
static size_t gauge_jobs(void *ctx, char *out, size_t cap) {
    (void)ctx;
    struct lorad_app *app = atomic_load(&gauge_app);
    struct text_out o = {out, cap, 0};
    if (cap) out[0] = '\0';
    int64_t counts[LORAD_JOB_STATUS_COUNT], tokens = 0;
    if (!app || !app->store || lorad_store_job_counts(app->store, counts, NULL) < 0 ||
        lorad_store_job_trained_tokens_sum(app->store, &tokens, NULL) < 0)
        return 0; /* absent series, rather than made-up zeros, when the store cannot answer */
    out_line(&o, "# HELP lorad_jobs Fine-tuning jobs by status.\n# TYPE lorad_jobs gauge\n");
    for (int s = 0; s < LORAD_JOB_STATUS_COUNT; s++)
        out_line(&o, "lorad_jobs{status=\"%s\"} %lld\n", lorad_job_status_name(s), (long long)counts[s]);
    out_line(&o, "# HELP lorad_queue_depth Jobs waiting for a worker.\n# TYPE lorad_queue_depth gauge\n"
                 "lorad_queue_depth %lld\n", (long long)counts[LORAD_JOB_QUEUED]);
    /* A gauge despite the _total name: a resumed job re-reports the tokens of the steps it
     * repeats from its checkpoint, so the sum can go down. */
    out_line(&o, "# HELP lorad_train_tokens_total Tokens trained, summed over all jobs.\n"
                 "# TYPE lorad_train_tokens_total gauge\nlorad_train_tokens_total %lld\n", (long long)tokens);
    return o.len;
}

/* lorad_job_tokens_per_second{job_id} for every running job: the worker's live rate when the
 * daemon offers one, else the rate stored with the job's progress. */
static size_t gauge_rates(void *ctx, char *out, size_t cap) {
    (void)ctx;
    struct lorad_app *app = atomic_load(&gauge_app);
    struct text_out o = {out, cap, 0};
    if (cap) out[0] = '\0';
    json_t *page = NULL;
    /* Running jobs are bounded by the worker count, far below one page of 100. */
    if (!app || !app->store || lorad_store_job_list(app->store, LORAD_JOB_RUNNING, NULL, 100, &page, NULL) < 0) return 0;
    out_line(&o, "# HELP lorad_job_tokens_per_second Training throughput of each running job.\n"
                 "# TYPE lorad_job_tokens_per_second gauge\n");
    size_t i;
    json_t *job;
    json_array_foreach(json_object_get(page, "data"), i, job) {
        const char *id = json_string_value(json_object_get(job, "id"));
        if (!id || !lorad_store_id_valid("ftjob-", id)) continue; /* ids go into a label unescaped */
        double rate = NAN;
        if (!app->job_live_rate || !app->job_live_rate(app->job_live_rate_ctx, id, &rate)) {
            json_t *v = json_object_get(json_object_get(job, "progress"), "tokens_per_s");
            rate = json_is_number(v) ? json_number_value(v) : NAN;
        }
        if (isfinite(rate)) out_line(&o, "lorad_job_tokens_per_second{job_id=\"%s\"} %.6g\n", id, rate);
    }
    json_decref(page);
    return o.len;
}

/* The inference service's figures; nothing when inference is disabled. */
static size_t gauge_inference(void *ctx, char *out, size_t cap) {
    (void)ctx;
    struct lorad_app *app = atomic_load(&gauge_app);
    struct text_out o = {out, cap, 0};
    if (cap) out[0] = '\0';
    if (!app || !app->infer) return 0;
    struct lorad_infer_stats st;
    lorad_infer_get_stats(app->infer, &st);
    out_line(&o, "# HELP lorad_inference_generations Sequences being generated now.\n"
                 "# TYPE lorad_inference_generations gauge\nlorad_inference_generations %d\n", st.running);
    out_line(&o, "# HELP lorad_inference_tokens_generated_total Tokens generated since the daemon started.\n"
                 "# TYPE lorad_inference_tokens_generated_total counter\nlorad_inference_tokens_generated_total %llu\n",
             (unsigned long long)st.tokens_generated);
    out_line(&o, "# HELP lorad_inference_loaded Base models and adapters loaded for inference.\n"
                 "# TYPE lorad_inference_loaded gauge\nlorad_inference_loaded{kind=\"base\"} %d\n"
                 "lorad_inference_loaded{kind=\"adapter\"} %d\n", st.bases_loaded, st.adapters_loaded);
    out_line(&o, "# HELP lorad_inference_memory_bytes Bytes of loaded bases, adapters and KV caches.\n"
                 "# TYPE lorad_inference_memory_bytes gauge\nlorad_inference_memory_bytes %lld\n",
             (long long)st.bytes_loaded);
    return o.len;
}

/* The process's memory: resident set (the kernel's) and what malloc has handed out and not had
 * back (glibc's count, every arena). RSS includes what the allocator keeps free for reuse; the
 * in-use figure does not, so a leak shows there as growth that does not come back. */
static size_t gauge_process(void *ctx, char *out, size_t cap) {
    (void)ctx;
    struct text_out o = {out, cap, 0};
    if (cap) out[0] = '\0';
    long pages = 0, resident = 0;
    FILE *f = fopen("/proc/self/statm", "re");
    if (f) {
        if (fscanf(f, "%ld %ld", &pages, &resident) != 2) resident = -1;
        fclose(f);
    }
    if (f && resident >= 0)
        out_line(&o, "# HELP process_resident_memory_bytes Resident memory size in bytes.\n"
                     "# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes %lld\n",
                 (long long)resident * sysconf(_SC_PAGESIZE));
    struct mallinfo2 mi = mallinfo2();
    out_line(&o, "# HELP lorad_malloc_in_use_bytes Bytes malloc has handed out and not had back (all arenas).\n"
                 "# TYPE lorad_malloc_in_use_bytes gauge\nlorad_malloc_in_use_bytes %zu\n", mi.uordblks + mi.hblkhd);
    out_line(&o, "# HELP lorad_sqlite_memory_bytes Bytes of those SQLite holds (page caches of the pooled connections, "
                 "statements).\n# TYPE lorad_sqlite_memory_bytes gauge\nlorad_sqlite_memory_bytes %lld\n",
             (long long)lorad_store_sqlite_memory_used());
    return o.len;
}

static void gauge_register(void) {
    int r = lorad_api_metrics_add_gauge(gauge_jobs, NULL);
    if (r == 0) r = lorad_api_metrics_add_gauge(gauge_process, NULL);
    if (r == 0) r = lorad_api_metrics_add_gauge(gauge_rates, NULL);
    if (r == 0) r = lorad_api_metrics_add_gauge(gauge_inference, NULL);
    gauge_register_result = r;
}

int lorad_api_service_attach(struct lorad_app *app) {
    if (!app) return -EINVAL;
    atomic_store(&gauge_app, app);
    pthread_once(&gauge_once, gauge_register);
    return gauge_register_result;
}

/* GET /readyz: 200 once the daemon has recovered the store and started its workers, 503 while
 * starting ("not_ready"), stopping ("stopping") or when the store does not answer. */
static int handle_readyz(const struct lorad_api_request *req, struct lorad_api_reply *ret_reply) {
    struct lorad_app *app = handler_app(req);
    if (app && atomic_load(&gauge_app) != app) lorad_api_service_attach(app);
    if (app && atomic_load(&app->stopping))
        return lorad_api_reply_error(ret_reply, 503, "the service is shutting down", NULL, "stopping");
    if (!app || !app->store || !atomic_load(&app->ready))
        return lorad_api_reply_error(ret_reply, 503, "the service is starting", NULL, "not_ready");
    int64_t counts[LORAD_JOB_STATUS_COUNT];
    struct lorad_error err = {0};
    if (lorad_store_job_counts(app->store, counts, &err) < 0)
        return lorad_api_reply_error(ret_reply, 503, err.message[0] ? err.message : "the store does not answer", NULL,
                                     "store_unavailable");
    return handler_reply_json(ret_reply, 200, json_pack("{s:s}", "status", "ready"));
}

/* GET /metrics: the transport's registry, with the job gauges attached to this app first. */
static int handle_metrics(const struct lorad_api_request *req, struct lorad_api_reply *ret_reply) {
    struct lorad_app *app = handler_app(req);
    if (app && atomic_load(&gauge_app) != app) lorad_api_service_attach(app);
    return lorad_api_handler_metrics(req, ret_reply);
}

int lorad_api_install_service_routes(void) {
    int r = lorad_api_set_handler("GET", "/readyz", handle_readyz);
    if (r == 0) r = lorad_api_set_handler("GET", "/metrics", handle_metrics);
    return r;
}
