/* What a model name of GET /v1/models means on disk, for the routes that run a model (inference)
 * and those that describe one (/v1/models/{model}).
 *
 * The three kinds of names, and how each reaches a path without the client's string ever becoming
 * one:
 *   <base>                                 matched against the models directory listing
 *                                          (lorad_model_dir_resolve);
 *   ft:<base>:<suffix>:<job-id>            a succeeded job's final adapter, jobs_dir/<job-id>/adapter
 *                                          (lorad_store_fine_tuned_adapter_dir: the id is validated
 *                                          and the whole name must be the job's);
 *   ft:<base>:<suffix>:<job-id>:ckpt-step-N  a checkpoint the store lists for that job under exactly
 *                                          that name; its directory is the one the worker recorded. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "handlers_internal.h"
#include "model_dir.h"
#include "store.h"

#define CKPT_MARK ":ckpt-step-"
#define CHECKPOINT_PAGES 20 /* keep_checkpoints is at most 1000: 10 pages of 100 */

/* The job id of a checkpoint name, into id: true when name has the checkpoint shape with a valid
 * job id before ":ckpt-step-<digits>". */
static bool checkpoint_name_job(const char *name, char id[LORAD_STORE_ID_MAX]) {
    if (strncmp(name, "ft:", 3) != 0) return false;
    const char *mark = strstr(name, CKPT_MARK), *next;
    while (mark && (next = strstr(mark + 1, CKPT_MARK))) mark = next; /* the last one */
    if (!mark) return false;
    const char *digits = mark + strlen(CKPT_MARK);
    if (!*digits || strspn(digits, "0123456789") != strlen(digits)) return false;
    const char *start = mark;
    while (start > name && start[-1] != ':') start--;
    size_t len = (size_t)(mark - start);
    if (len >= LORAD_STORE_ID_MAX) return false;
    memcpy(id, start, len);
    id[len] = '\0';
    return lorad_store_id_valid("ftjob-", id);
}

bool handler_model_is_checkpoint(const char *name) {
    char id[LORAD_STORE_ID_MAX];
    return checkpoint_name_job(name, id);
}

int handler_find_checkpoint(struct lorad_store *store, const char *name, json_t **ret_job, json_t **ret_checkpoint,
                            struct lorad_error *err) {
    /* Contract: 0 with *ret_job and *ret_checkpoint (new references), -ENOENT with err untouched
     * when no checkpoint of any job is published under name, other -errno (err set) from the store. */
    char id[LORAD_STORE_ID_MAX], after[LORAD_STORE_ID_MAX] = "";
    if (!checkpoint_name_job(name, id)) return -ENOENT;
    json_t *job = NULL;
    struct lorad_error e = {0};
    int r = lorad_store_job_get(store, id, &job, &e);
    if (r == -ENOENT) return -ENOENT;
    if (r < 0) {
        if (err) *err = e;
        return r;
    }
    for (int page_no = 0; page_no < CHECKPOINT_PAGES; page_no++) {
        json_t *page = NULL;
        r = lorad_store_checkpoint_list(store, id, after[0] ? after : NULL, 100, &page, &e);
        if (r < 0) break;
        size_t i;
        json_t *ck;
        json_array_foreach(json_object_get(page, "data"), i, ck) {
            const char *published = json_string_value(json_object_get(ck, "fine_tuned_model_checkpoint"));
            if (published && strcmp(published, name) == 0) {
                *ret_checkpoint = json_incref(ck);
                *ret_job = job;
                json_decref(page);
                return 0;
            }
        }
        const char *last = json_string_value(json_object_get(page, "last_id"));
        bool more = json_is_true(json_object_get(page, "has_more")) && last;
        if (more) snprintf(after, sizeof after, "%s", last);
        json_decref(page);
        if (!more) break;
    }
    json_decref(job);
    if (r < 0 && r != -ENOENT) {
        if (err) *err = e;
        return r;
    }
    return -ENOENT;
}

/* The chat template a job trained with (its spec's data.template), AUTO when it has none. */
static enum lorad_chat_template job_template(const json_t *spec_or_job) {
    const char *t = json_string_value(json_object_get(json_object_get(spec_or_job, "data"), "template"));
    for (int i = 0; t && lorad_chat_template_names[i]; i++)
        if (strcmp(t, lorad_chat_template_names[i]) == 0) return (enum lorad_chat_template)i;
    return LORAD_TEMPLATE_AUTO;
}

static int not_found(struct lorad_error *err, const char *name) {
    return lorad_error_set(err, -ENOENT, "model", "model '%.200s' does not exist", name);
}

/* The base of a fine-tuned model must still be in the models directory. */
static int resolve_base(const struct lorad_app *app, const char *name, struct handler_model *m,
                        struct lorad_error *err) {
    if (!app->models_dir || lorad_model_dir_resolve(app->models_dir, m->base_id, m->base_path, sizeof m->base_path,
                                                    NULL, NULL) < 0)
        return lorad_error_set(err, -ENOENT, "model", "the base model '%.100s' of '%.200s' is not in the models directory",
                               m->base_id, name);
    return 0;
}

static int resolve_checkpoint(const struct lorad_app *app, const char *name, struct handler_model *m,
                              struct lorad_error *err) {
    json_t *job = NULL, *ck = NULL;
    int r = handler_find_checkpoint(app->store, name, &job, &ck, err);
    if (r == -ENOENT) return not_found(err, name);
    if (r < 0) return r;
    const char *job_id = json_string_value(json_object_get(job, "id"));
    const char *ck_id = json_string_value(json_object_get(ck, "id"));
    const char *base = json_string_value(json_object_get(job, "model"));
    char *dir = NULL;
    if (!job_id || !ck_id || !base || strlen(base) >= sizeof m->base_id) r = not_found(err, name);
    else r = lorad_store_checkpoint_get(app->store, job_id, ck_id, NULL, &dir, err);
    if (r == 0 && lorad_store_path_absolute(app->state_dir, dir, NULL, m->adapter_path, sizeof m->adapter_path) < 0)
        r = lorad_error_set(err, -ENAMETOOLONG, "model", "checkpoint path too long");
    if (r == -ENOENT) r = not_found(err, name); /* pruned between the two reads */
    if (r == 0) {
        snprintf(m->base_id, sizeof m->base_id, "%s", base);
        m->tmpl = job_template(job);
        m->kind = HANDLER_MODEL_CHECKPOINT;
    }
    free(dir);
    json_decref(job);
    json_decref(ck);
    return r;
}

static int resolve_fine_tuned(const struct lorad_app *app, const char *name, struct handler_model *m,
                              struct lorad_error *err) {
    int r = lorad_store_fine_tuned_adapter_dir(app->store, app->jobs_dir, name, m->adapter_path,
                                               sizeof m->adapter_path, m->base_id, sizeof m->base_id, err);
    if (r == -ENOENT) return not_found(err, name);
    if (r < 0) return r;
    json_t *spec = NULL;
    /* The adapter lookup validated the name's last field as the job's id. */
    r = lorad_store_job_spec(app->store, strrchr(name, ':') + 1, &spec, err);
    if (r == -ENOENT) return not_found(err, name);
    if (r < 0) return r;
    m->tmpl = job_template(spec);
    m->kind = HANDLER_MODEL_FINE_TUNED;
    json_decref(spec);
    return 0;
}

int handler_model_resolve(const struct lorad_app *app, const char *name, struct handler_model *ret,
                          struct lorad_error *err) {
    /* Contract: *ret is written only on success; -ENOENT (param "model", message naming name) when
     * name is no model of GET /v1/models or its base has left the models directory. */
    struct handler_model *m = calloc(1, sizeof *m);
    if (!m) return lorad_error_set(err, -ENOMEM, NULL, "out of memory");
    int r;
    if (!app->store) {
        r = lorad_error_set(err, -ENOTCONN, NULL, "the store is not open yet");
    } else if (strncmp(name, "ft:", 3) != 0) {
        m->kind = HANDLER_MODEL_BASE;
        m->tmpl = LORAD_TEMPLATE_AUTO;
        snprintf(m->base_id, sizeof m->base_id, "%s", name);
        r = app->models_dir && strlen(name) < sizeof m->base_id
                ? lorad_model_dir_resolve(app->models_dir, name, m->base_path, sizeof m->base_path, NULL, NULL)
                : -ENOENT;
        if (r < 0) r = not_found(err, name);
    } else {
        r = handler_model_is_checkpoint(name) ? resolve_checkpoint(app, name, m, err)
                                               : resolve_fine_tuned(app, name, m, err);
        if (r == 0) r = resolve_base(app, name, m, err);
    }
    if (r == 0) *ret = *m;
    free(m);
    return r;
}
