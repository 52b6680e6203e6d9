/* A job's stored spec, and fine-tuned models: the name a succeeded job publishes and the way back
 * from that name to the job and its adapter directory. The API (models routes, lora.init_adapter at
 * create time) and the job runner (init_adapter at run time) both ask these, so the rule lives with
 * the jobs it reads rather than in either caller. */
#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "store.h"
#include "store_internal.h"

int lorad_store_job_spec(struct lorad_store *s, const char *id, json_t **ret_spec, struct lorad_error *err) {
    /* Contract: *ret_spec is a new reference to the spec object exactly as the creator stored it
     * (none of the job's own columns merged in); the caller owns it. -ENOENT (param
     * "fine_tuning_job_id") for an unknown id; -EBADMSG when the stored column is not an object. */
    struct store_conn *c = NULL;
    int r = store_acquire(s, &c, err);
    if (r < 0) return r;
    /* id first: a corrupt row's error names the row by column 0 */
    sqlite3_stmt *st = store_stmt(c, "SELECT id, spec FROM jobs WHERE id = ?1", &r, err);
    if (!st) goto out;
    store_bind_text(c, st, 1, id);
    r = store_step(c, st, "cannot read job spec", err);
    if (r == 0) {
        r = lorad_error_set(err, -ENOENT, "fine_tuning_job_id", "no such job: %s", id);
    } else if (r == 1) {
        struct store_row row = {.st = st};
        json_t *spec = store_col_json(&row, 1);
        r = spec && row.rc == 0 ? 0 : store_row_error(&row, "cannot read job spec", err);
        if (r == 0 && !json_is_object(spec))
            r = lorad_error_set(err, -EBADMSG, "spec", "job %s: the stored spec is not a JSON object", id);
        if (r == 0)
            *ret_spec = json_incref(spec);
        json_decref(spec);
    }
    store_stmt_done(st);
out:
    store_release(s, c);
    return r;
}

int lorad_store_fine_tuned_model_name(const char *base_model, const char *suffix, const char *job_id, char *buf,
                                      size_t cap) {
    /* OpenAI's ft:<base>:<org>:<suffix>:<id> shape, with the base's directories dropped because
     * a local model may be referenced by path. */
    const char *slash = strrchr(base_model, '/');
    const char *base = slash && slash[1] ? slash + 1 : base_model;
    int n = snprintf(buf, cap, "ft:%s:%s:%s", base, suffix && *suffix ? suffix : "lorad", job_id);
    if (n < 0 || (size_t)n >= cap) return -ENAMETOOLONG;
    return 0;
}

int lorad_store_job_fine_tuned_model(const json_t *job, char *buf, size_t cap) {
    /* The stored name wins: it is what the job announced when it succeeded. */
    const char *stored = json_string_value(json_object_get(job, "fine_tuned_model"));
    if (stored) {
        int n = snprintf(buf, cap, "%s", stored);
        return n < 0 || (size_t)n >= cap ? -ENAMETOOLONG : 0;
    }
    const char *model = json_string_value(json_object_get(job, "model"));
    const char *id = json_string_value(json_object_get(job, "id"));
    return lorad_store_fine_tuned_model_name(model ? model : "", json_string_value(json_object_get(job, "suffix")),
                                             id ? id : "", buf, cap);
}

int lorad_store_fine_tuned_job(struct lorad_store *s, const char *name, json_t **ret_job, struct lorad_error *err) {
    /* Contract: the id is the name's last field, and the name must match the job's published name
     * in full, so "ft:other-base:x:<id>" does not reach <id>. *ret_job is a new reference. */
    const char *colon = strrchr(name, ':');
    if (strncmp(name, "ft:", 3) != 0 || !colon || !lorad_store_id_valid("ftjob-", colon + 1)) return -ENOENT;
    json_t *job = NULL;
    int r = lorad_store_job_get(s, colon + 1, &job, err);
    if (r < 0) return r;
    char expect[512];
    const char *status = json_string_value(json_object_get(job, "status"));
    if (!status || strcmp(status, "succeeded") != 0 || lorad_store_job_fine_tuned_model(job, expect, sizeof expect) < 0 ||
        strcmp(expect, name) != 0) {
        json_decref(job);
        return -ENOENT;
    }
    *ret_job = job;
    return 0;
}

int lorad_store_fine_tuned_adapter_dir(struct lorad_store *s, const char *jobs_dir, const char *name, char *ret_dir,
                                       size_t dir_cap, char *ret_base, size_t base_cap, struct lorad_error *err) {
    /* Contract: the directory is built from the job id the store holds, never from the client's
     * string, so a name cannot lead outside jobs_dir. Both ret_ buffers are written only on 0. */
    json_t *job = NULL;
    int r = s && jobs_dir ? lorad_store_fine_tuned_job(s, name, &job, err) : -ENOENT;
    if (r == -ENOENT)
        return lorad_error_set(err, -ENOENT, "lora.init_adapter",
                               "'%.200s' is not the fine_tuned_model of a succeeded job", name);
    if (r < 0) return r;
    const char *id = json_string_value(json_object_get(job, "id"));
    const char *base = json_string_value(json_object_get(job, "model"));
    assert(id && base); /* job_from_row always sets both from NOT NULL columns */
    char dir[4096];
    int n = snprintf(dir, sizeof dir, "%s/%s/adapter", jobs_dir, id);
    r = 0;
    if (n < 0 || (size_t)n >= dir_cap || (size_t)n >= sizeof dir || strlen(base) >= base_cap)
        r = lorad_error_set(err, -ENAMETOOLONG, "lora.init_adapter", "adapter path too long");
    if (r == 0) {
        memcpy(ret_dir, dir, (size_t)n + 1);
        memcpy(ret_base, base, strlen(base) + 1);
    }
    json_decref(job);
    return r;
}
