#include "train_wire.h"

#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <unistd.h>

/* Writes o (stolen) as one line and flushes it: the daemon acts on each line as it comes. */
static bool emit(FILE *out, json_t *o) {
    char *text = o ? json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(17)) : NULL;
    json_decref(o);
    if (!text) return false;
    bool ok = strlen(text) < LORAD_WIRE_LINE_MAX && fprintf(out, "%s\n", text) >= 0 && fflush(out) == 0;
    free(text);
    return ok;
}

static json_t *metrics_json(const struct lorad_step_metrics *m) {
    json_t *o = lorad_step_metrics_json(m);
    if (o) json_object_set_new(o, "world_size", json_integer(m->world_size));
    return o;
}

bool lorad_wire_step(FILE *out, const struct lorad_step_metrics *m) {
    return emit(out, json_pack("{s:s, s:o*}", "event", "step", "metrics", metrics_json(m)));
}

bool lorad_wire_checkpoint(FILE *out, int64_t step, const char *dir, const struct lorad_step_metrics *m) {
    return emit(out, json_pack("{s:s, s:I, s:s, s:o*}", "event", "checkpoint", "step", (json_int_t)step, "dir", dir,
                               "metrics", m ? metrics_json(m) : json_null()));
}

bool lorad_wire_message(FILE *out, const char *level, const char *message) {
    return emit(out, json_pack("{s:s, s:s, s:s}", "event", "message", "level", level, "message", message));
}

static json_t *report_json(const struct lorad_dataset_report *r) {
    json_t *bad = json_array(), *counts = json_array();
    for (int i = 0; i < r->n_bad; i++)
        json_array_append_new(bad, json_pack("[I, i, s]", (json_int_t)r->bad[i].line, (int)r->bad[i].problem,
                                             r->bad[i].reason));
    for (int i = 0; i < LORAD_PROBLEM_COUNT; i++) json_array_append_new(counts, json_integer(r->counts[i]));
    return json_pack("{s:i, s:I, s:I, s:I, s:I, s:I, s:o, s:o}", "format", (int)r->format, "n_lines",
                     (json_int_t)r->n_lines, "n_records", (json_int_t)r->n_records, "n_invalid",
                     (json_int_t)r->n_invalid, "n_blank", (json_int_t)r->n_blank, "bytes", (json_int_t)r->bytes,
                     "counts", counts, "bad", bad);
}

bool lorad_wire_result(FILE *out, int rc, const struct lorad_error *err, const struct lorad_train_result *res) {
    json_t *o = json_pack("{s:s, s:i, s:s, s:s, s:i, s:I, s:I, s:I, s:I, s:i, s:s, s:o*}", "event", "result", "rc", rc,
                          "param", err->param, "message", err->message, "outcome", (int)res->outcome, "steps_done",
                          (json_int_t)res->steps_done, "total_steps", (json_int_t)res->total_steps, "trained_tokens",
                          (json_int_t)res->trained_tokens, "truncated", (json_int_t)res->truncated,
                          "compute_dtype", (int)res->compute_dtype, "final_checkpoint", res->final_checkpoint,
                          "train_report", report_json(&res->train_report));
    if (o && res->steps_done > 0) json_object_set_new(o, "last", metrics_json(&res->last));
    return emit(out, o);
}

struct heartbeat {
    FILE *out;
    int period_s;
};

static void *heartbeat(void *arg) {
    struct heartbeat h = *(struct heartbeat *)arg;
    free(arg);
    for (;;) {
        emit(h.out, json_pack("{s:s}", "event", "alive")); /* one fprintf per line: lines never interleave */
        sleep((unsigned)h.period_s);
    }
    return NULL;
}

int lorad_wire_heartbeat_start(FILE *out, int period_s) {
    struct heartbeat *h = malloc(sizeof *h);
    if (!h) return -ENOMEM;
    *h = (struct heartbeat){out, period_s};
    pthread_t t;
    int r = pthread_create(&t, NULL, heartbeat, h);
    if (r != 0) {
        free(h);
        return -r;
    }
    pthread_detach(t);
    return 0;
}

/* ---- the daemon's end ----------------------------------------------------------------------- */

static int64_t int_of(const json_t *o, const char *key) { return (int64_t)json_integer_value(json_object_get(o, key)); }

static void copy_string(char *dst, size_t cap, const json_t *o, const char *key) {
    const char *s = json_string_value(json_object_get(o, key));
    snprintf(dst, cap, "%s", s ? s : "");
}

/* Metrics as lorad_wire_step wrote them; false when they are not. */
static bool metrics_of(const json_t *o, struct lorad_step_metrics *ret) {
    if (!json_is_object(o) || lorad_step_metrics_from_json(o, ret) < 0) return false;
    ret->world_size = (int)int_of(o, "world_size");
    return true;
}

static void result_of(const json_t *o, int *ret_rc, struct lorad_error *ret_err, struct lorad_train_result *res) {
    *ret_rc = (int)int_of(o, "rc");
    copy_string(ret_err->param, sizeof ret_err->param, o, "param");
    copy_string(ret_err->message, sizeof ret_err->message, o, "message");
    memset(res, 0, sizeof *res);
    res->outcome = (enum lorad_train_outcome)int_of(o, "outcome");
    res->steps_done = int_of(o, "steps_done");
    res->total_steps = int_of(o, "total_steps");
    res->trained_tokens = int_of(o, "trained_tokens");
    res->truncated = int_of(o, "truncated");
    res->compute_dtype = (enum lorad_compute_dtype)int_of(o, "compute_dtype");
    copy_string(res->final_checkpoint, sizeof res->final_checkpoint, o, "final_checkpoint");
    if (!metrics_of(json_object_get(o, "last"), &res->last)) res->last = (struct lorad_step_metrics){0};
    const json_t *r = json_object_get(o, "train_report");
    struct lorad_dataset_report *rep = &res->train_report;
    rep->format = (enum lorad_data_format)int_of(r, "format");
    rep->n_lines = int_of(r, "n_lines");
    rep->n_records = int_of(r, "n_records");
    rep->n_invalid = int_of(r, "n_invalid");
    rep->n_blank = int_of(r, "n_blank");
    rep->bytes = int_of(r, "bytes");
    const json_t *counts = json_object_get(r, "counts");
    for (int i = 0; i < LORAD_PROBLEM_COUNT && i < (int)json_array_size(counts); i++)
        rep->counts[i] = (int64_t)json_integer_value(json_array_get(counts, (size_t)i));
    const json_t *bad = json_object_get(r, "bad");
    for (size_t i = 0; i < json_array_size(bad) && rep->n_bad < LORAD_DATASET_REPORT_LINES; i++) {
        const json_t *b = json_array_get(bad, i);
        struct lorad_bad_line *l = &rep->bad[rep->n_bad++];
        l->line = (int64_t)json_integer_value(json_array_get(b, 0));
        l->problem = (enum lorad_dataset_problem)json_integer_value(json_array_get(b, 1));
        const char *why = json_string_value(json_array_get(b, 2));
        snprintf(l->reason, sizeof l->reason, "%s", why ? why : "");
    }
}

enum lorad_wire_event lorad_wire_dispatch(const char *line, const struct lorad_train_callbacks *cb, int *ret_rc,
                                          struct lorad_error *ret_err, struct lorad_train_result *ret_res) {
    json_t *o = line[0] == '{' ? json_loads(line, JSON_REJECT_DUPLICATES, NULL) : NULL;
    const char *event = json_string_value(json_object_get(o, "event"));
    enum lorad_wire_event what = LORAD_WIRE_OTHER;
    struct lorad_step_metrics m;
    if (!event) {
        /* not ours */
    } else if (strcmp(event, "step") == 0 && metrics_of(json_object_get(o, "metrics"), &m)) {
        if (cb->on_step) cb->on_step(cb->ctx, &m);
        what = LORAD_WIRE_CALLBACK;
    } else if (strcmp(event, "checkpoint") == 0 && json_is_string(json_object_get(o, "dir"))) {
        bool has_m = metrics_of(json_object_get(o, "metrics"), &m);
        if (cb->on_checkpoint)
            cb->on_checkpoint(cb->ctx, int_of(o, "step"), json_string_value(json_object_get(o, "dir")),
                              has_m ? &m : NULL);
        what = LORAD_WIRE_CALLBACK;
    } else if (strcmp(event, "message") == 0 && json_is_string(json_object_get(o, "message"))) {
        const char *level = json_string_value(json_object_get(o, "level"));
        if (cb->on_message) cb->on_message(cb->ctx, level ? level : "info", json_string_value(json_object_get(o, "message")));
        what = LORAD_WIRE_CALLBACK;
    } else if (strcmp(event, "result") == 0 && json_is_integer(json_object_get(o, "rc"))) {
        result_of(o, ret_rc, ret_err, ret_res);
        what = LORAD_WIRE_RESULT;
    }
    json_decref(o);
    return what;
}

/* ---- the child's control input -------------------------------------------------------------- */

void lorad_wire_control_init(struct lorad_wire_control *c, int fd) {
    *c = (struct lorad_wire_control){.fd = fd, .asked = LORAD_TRAIN_CONTINUE};
}

static void ask(struct lorad_wire_control *c, enum lorad_train_control what) {
    if (c->asked != LORAD_TRAIN_CANCEL) c->asked = what;
}

enum lorad_train_control lorad_wire_control_poll(struct lorad_wire_control *c) {
    char buf[256];
    for (;;) {
        ssize_t n = read(c->fd, buf, sizeof buf);
        if (n == 0) { /* the daemon is gone: keep what was trained */
            ask(c, LORAD_TRAIN_PAUSE);
            break;
        }
        if (n < 0) break; /* EAGAIN: nothing more now (the fd is non-blocking), or an error */
        for (ssize_t i = 0; i < n; i++) {
            if (buf[i] != '\n') {
                if (c->n_pending < sizeof c->pending - 1) c->pending[c->n_pending++] = buf[i];
                continue;
            }
            c->pending[c->n_pending] = '\0';
            if (strcmp(c->pending, "cancel") == 0) ask(c, LORAD_TRAIN_CANCEL);
            else if (strcmp(c->pending, "pause") == 0) ask(c, LORAD_TRAIN_PAUSE);
            c->n_pending = 0;
        }
    }
    return c->asked;
}
