/* /v1/models: the base models of the models directory, the adapters of succeeded jobs and the
 * checkpoints of every job, in OpenAI's model-list shape (each one a model the inference routes
 * run), plus the final adapter files of a fine-tuned model.
 *
 * Base models are described from their headers only (config.json, the llama2.c header, the GGUF
 * metadata and tensor table), never by loading the weights, and each description is cached by
 * (path, mtime, size), so listing a directory of large models costs a few stat() calls.
 *
 * A fine-tuned model is named "ft:<base>:<suffix|lorad>:<job-id>" (lorad_store_fine_tuned_model_name).
 * Only the job id (the last ':' component, checked by lorad_store_id_valid) is used to find it, and
 * the whole name must then equal the job's fine_tuned_model; its files are read from
 * jobs_dir/<job-id>/adapter/ under fixed names. A checkpoint is named by its
 * fine_tuned_model_checkpoint ("ft:...:<job-id>:ckpt-step-N", model_resolve.c). No client string
 * ever becomes a path. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "adapter.h"
#include "gguf.h"
#include "handlers.h"
#include "handlers_internal.h"
#include "llama_config.h"
#include "load_hf.h"
#include "load_llama2c.h"
#include "model_dir.h"
#include "store.h"

#define MODELS_MAX_ADAPTER_PAGES 100 /* adapters listed: at most 100 pages of 100 succeeded jobs */
#define MODELS_CONFIG_MAX (1 << 20)  /* config.json bytes read */
#define MODELS_CACHE_SIZE 64
#define MODELS_MAX_CHECKPOINT_PAGES 10 /* per job: keep_checkpoints is at most 1000 */

/* Copies an engine message into out with every occurrence of path replaced by name: clients see
 * the entry's name, not where the state or models directory lies on the server. */
static void redact_path(const char *in, const char *path, const char *name, char *out, size_t cap) {
    size_t pl = strlen(path), n = 0, nl = strlen(name);
    while (*in && n + 1 < cap) {
        if (pl && strncmp(in, path, pl) == 0) {
            size_t k = nl < cap - 1 - n ? nl : cap - 1 - n;
            memcpy(out + n, name, k);
            n += k;
            in += pl;
        } else {
            out[n++] = *in++;
        }
    }
    out[n] = '\0';
}

/* ---- base models -------------------------------------------------------------------------- */

/* Maps an HF torch_dtype to the dtype names used elsewhere ("BF16", "F16", "F32"). */
static const char *hf_dtype_name(const char *torch_dtype) {
    if (!torch_dtype) return NULL;
    if (!strcmp(torch_dtype, "bfloat16")) return "BF16";
    if (!strcmp(torch_dtype, "float16")) return "F16";
    if (!strcmp(torch_dtype, "float32")) return "F32";
    return torch_dtype;
}

/* The size/shape fields every llama-family base model gets. */
static void set_config_fields(json_t *m, const struct lorad_llama_config *c) {
    json_object_set_new(m, "parameter_count", json_integer(lorad_llama_config_n_params(c)));
    json_object_set_new(m, "context_length", json_integer(c->max_seq_len));
    json_object_set_new(m, "vocab_size", json_integer(c->vocab_size));
    json_object_set_new(m, "hidden_size", json_integer(c->dim));
    json_object_set_new(m, "num_layers", json_integer(c->n_layers));
}

/* Fills m from dir/config.json alone. Returns 0 or -errno (err says why). */
static int describe_hf(const char *dir, json_t *m, struct lorad_error *err) {
    char path[4096 + 16];
    snprintf(path, sizeof path, "%s/config.json", dir);
    struct stat st;
    if (stat(path, &st) < 0) return lorad_error_set(err, -errno, "model", "%s: %s", path, strerror(errno));
    if (st.st_size > MODELS_CONFIG_MAX) return lorad_error_set(err, -EFBIG, "model", "%s: larger than 1 MiB", path);
    char *text = malloc((size_t)st.st_size + 1);
    if (!text) return lorad_error_set(err, -ENOMEM, "model", "out of memory");
    FILE *f = fopen(path, "rb");
    size_t len = f ? fread(text, 1, (size_t)st.st_size, f) : 0;
    if (f) fclose(f);
    text[len] = '\0';
    struct lorad_llama_config cfg;
    int r = lorad_hf_config_parse(text, len, path, &cfg, err);
    json_t *root = r == 0 ? json_loadb(text, len, 0, NULL) : NULL;
    free(text);
    if (r == 0) {
        const char *arch = json_string_value(json_array_get(json_object_get(root, "architectures"), 0));
        if (!arch) arch = json_string_value(json_object_get(root, "model_type"));
        const char *dtype = json_string_value(json_object_get(root, "torch_dtype"));
        if (!dtype) dtype = json_string_value(json_object_get(root, "dtype")); /* newer transformers */
        json_object_set_new(m, "architecture", arch ? json_string(arch) : json_null());
        json_object_set_new(m, "dtype", dtype ? json_string(hf_dtype_name(dtype)) : json_null());
        set_config_fields(m, &cfg);
    }
    json_decref(root);
    return r;
}

/* Fills m from the 28-byte llama2.c header and the file size. */
static int describe_llama2c(const char *path, json_t *m, struct lorad_error *err) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return lorad_error_set(err, -errno, "model", "%s: %s", path, strerror(errno));
    uint8_t header[LORAD_LLAMA2C_HEADER_BYTES];
    struct stat st;
    ssize_t n = pread(fd, header, sizeof header, 0);
    int r = fstat(fd, &st) < 0 ? -errno : 0;
    close(fd);
    if (r < 0) return lorad_error_set(err, r, "model", "%s: %s", path, strerror(-r));
    struct lorad_llama_config cfg;
    r = lorad_llama2c_parse_header(header, n > 0 ? (size_t)n : 0, (uint64_t)st.st_size, path, &cfg, err);
    if (r < 0) return r;
    json_object_set_new(m, "architecture", json_string("llama"));
    json_object_set_new(m, "dtype", json_string("F32"));
    set_config_fields(m, &cfg);
    return 0;
}

/* Fills m from the GGUF metadata and tensor table (the mapping is only read where the header
 * lies; tensor data is never touched, so a quantised model is not dequantised to be listed). */
static int describe_gguf(const char *path, json_t *m, struct lorad_error *err) {
    struct lorad_gguf *g;
    int r = lorad_gguf_open(path, &g, err);
    if (r < 0) return r;
    const char *arch = NULL;
    uint64_t arch_len = 0;
    char archbuf[64] = "", key[128];
    if (lorad_gguf_get_string(g, "general.architecture", &arch, &arch_len, NULL) == 0 && arch_len < sizeof archbuf) {
        memcpy(archbuf, arch, arch_len);
        archbuf[arch_len] = '\0';
    }
    json_object_set_new(m, "architecture", archbuf[0] ? json_string(archbuf) : json_null());
    /* Parameters: the elements of every tensor; dtype: the type most weight matrices have. */
    int64_t params = 0;
    int type_count[64] = {0};
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const struct lorad_gguf_tensor *t = &g->tensors[i];
        int64_t n = 1;
        for (uint32_t d = 0; d < t->n_dims; d++) n *= (int64_t)t->ne[d];
        params += n;
        if (t->n_dims >= 2 && t->type < 64) type_count[t->type]++;
    }
    int best = -1;
    for (int t = 0; t < 64; t++)
        if (type_count[t] && (best < 0 || type_count[t] > type_count[best])) best = t;
    const char *dtype = best >= 0 ? lorad_ggml_type_name((uint32_t)best) : NULL;
    json_object_set_new(m, "dtype", dtype ? json_string(dtype) : json_null());
    json_object_set_new(m, "parameter_count", json_integer(params));
    static const struct { const char *suffix, *field; } keys[] = {
        {"context_length", "context_length"}, {"embedding_length", "hidden_size"}, {"block_count", "num_layers"},
        {"vocab_size", "vocab_size"}};
    for (size_t k = 0; archbuf[0] && k < sizeof keys / sizeof keys[0]; k++) {
        int64_t v;
        snprintf(key, sizeof key, "%s.%s", archbuf, keys[k].suffix);
        if (lorad_gguf_get_int(g, key, 0, INT64_MAX, &v, NULL) == 0) json_object_set_new(m, keys[k].field, json_integer(v));
    }
    if (!json_object_get(m, "vocab_size")) {
        const struct lorad_gguf_tensor *emb = lorad_gguf_find_tensor(g, "token_embd.weight");
        if (emb && emb->n_dims == 2) json_object_set_new(m, "vocab_size", json_integer((json_int_t)emb->ne[1]));
    }
    lorad_gguf_close(g);
    return 0;
}

/* What identifies a version of a model entry on disk: for an HF directory its config.json, else
 * the file itself. */
struct model_stamp {
    struct timespec mtime;
    off_t size;
};

static int model_stamp(const char *path, enum lorad_model_format format, struct model_stamp *ret) {
    char p[4096 + 16];
    snprintf(p, sizeof p, format == LORAD_FORMAT_HF_DIR ? "%s/config.json" : "%s", path);
    struct stat st;
    if (stat(p, &st) < 0) return -errno;
    *ret = (struct model_stamp){st.st_mtim, st.st_size};
    return 0;
}

static struct {
    char path[4096];
    struct model_stamp stamp;
    json_t *model; /* the description, shared: handed out as deep copies */
} cache[MODELS_CACHE_SIZE];
static unsigned cache_next; /* round-robin victim when full */
static pthread_mutex_t cache_lock = PTHREAD_MUTEX_INITIALIZER;

static bool stamp_equal(const struct model_stamp *a, const struct model_stamp *b) {
    return a->size == b->size && a->mtime.tv_sec == b->mtime.tv_sec && a->mtime.tv_nsec == b->mtime.tv_nsec;
}

/* The model object of base model id at path: from the cache when the entry has not changed,
 * else read from its header (a model whose header cannot be read is still listed, with an
 * "error" saying why, so an operator sees it). Returns a new reference or NULL (ENOMEM). */
static json_t *base_model_object(const char *id, const char *path, enum lorad_model_format format) {
    struct model_stamp stamp;
    if (model_stamp(path, format, &stamp) < 0) return NULL;
    pthread_mutex_lock(&cache_lock);
    for (int i = 0; i < MODELS_CACHE_SIZE; i++) {
        if (cache[i].model && strcmp(cache[i].path, path) == 0 && stamp_equal(&cache[i].stamp, &stamp)) {
            json_t *copy = json_deep_copy(cache[i].model);
            pthread_mutex_unlock(&cache_lock);
            return copy;
        }
    }
    pthread_mutex_unlock(&cache_lock);

    json_t *m = json_pack("{s:s, s:s, s:I, s:s, s:s, s:s, s:s, s:n}", "id", id, "object", "model", "created",
                          (json_int_t)stamp.mtime.tv_sec, "owned_by", "lorad", "kind", "base", "format",
                          lorad_model_format_name(format), "root", id, "parent");
    if (!m) return NULL;
    struct lorad_error err = {0};
    int r = format == LORAD_FORMAT_HF_DIR ? describe_hf(path, m, &err)
            : format == LORAD_FORMAT_GGUF ? describe_gguf(path, m, &err)
                                          : describe_llama2c(path, m, &err);
    if (r < 0) {
        char msg[sizeof err.message];
        redact_path(err.message[0] ? err.message : strerror(-r), path, id, msg, sizeof msg);
        json_object_set_new(m, "error", json_string(msg));
    }

    if (strlen(path) < sizeof cache[0].path) {
        json_t *keep = json_deep_copy(m);
        pthread_mutex_lock(&cache_lock);
        int slot = -1;
        for (int i = 0; i < MODELS_CACHE_SIZE && slot < 0; i++)
            if (cache[i].model && strcmp(cache[i].path, path) == 0) slot = i; /* a stale version */
        for (int i = 0; i < MODELS_CACHE_SIZE && slot < 0; i++)
            if (!cache[i].model) slot = i;
        if (slot < 0) slot = (int)(cache_next++ % MODELS_CACHE_SIZE);
        json_decref(cache[slot].model);
        snprintf(cache[slot].path, sizeof cache[slot].path, "%s", path);
        cache[slot].stamp = stamp;
        cache[slot].model = keep;
        pthread_mutex_unlock(&cache_lock);
    }
    return m;
}

/* ---- fine-tuned adapters ------------------------------------------------------------------ */

static const char *const adapter_file_names[] = {"adapter_model.safetensors", "adapter_config.json", "adapter.tar",
                                                 "adapter.gguf"};
#define N_ADAPTER_FILES (sizeof adapter_file_names / sizeof adapter_file_names[0])

/* The model object of a succeeded job. Returns a new reference or NULL. */
static json_t *adapter_model_object(const struct lorad_app *app, json_t *job) {
    char name[512], dir[4096];
    const char *job_id = json_string_value(json_object_get(job, "id"));
    const char *base = json_string_value(json_object_get(job, "model"));
    if (!job_id || !base || lorad_store_job_fine_tuned_model(job, name, sizeof name) < 0) return NULL;
    json_t *finished = json_object_get(job, "finished_at");
    json_t *m = json_pack("{s:s, s:s, s:O, s:s, s:s, s:s, s:s, s:s, s:s}", "id", name, "object", "model", "created",
                          json_is_integer(finished) ? finished : json_object_get(job, "created_at"), "owned_by", "user",
                          "kind", "adapter", "root", base, "parent", base, "base_model", base, "fine_tuning_job_id", job_id);
    if (!m) return NULL;
    json_t *adapter = json_null(), *files = json_array();
    if (app->jobs_dir && snprintf(dir, sizeof dir, "%s/%s/adapter", app->jobs_dir, job_id) < (int)sizeof dir) {
        struct lorad_adapter_meta meta;
        struct lorad_error err = {0};
        if (lorad_adapter_read_config(dir, &meta, &err) == 0) {
            json_t *targets = json_array();
            for (int i = 0; i < meta.n_targets; i++) json_array_append_new(targets, json_string(meta.targets[i]));
            json_decref(adapter);
            adapter = json_pack("{s:i, s:f, s:f, s:b, s:b, s:f, s:o}", "r", meta.r, "alpha", meta.alpha, "dropout",
                                meta.dropout, "use_rslora", meta.use_rslora, "use_dora", meta.use_dora, "scale",
                                lorad_adapter_scale(&meta), "target_modules", targets);
        } else {
            char msg[sizeof err.message];
            redact_path(err.message, dir, "adapter", msg, sizeof msg);
            json_object_set_new(m, "error", json_string(msg));
        }
        for (size_t i = 0; files && i < N_ADAPTER_FILES; i++) {
            char path[4096 + 64];
            struct stat st;
            snprintf(path, sizeof path, "%s/%s", dir, adapter_file_names[i]);
            if (stat(path, &st) == 0 && S_ISREG(st.st_mode))
                json_array_append_new(files, json_pack("{s:s, s:I}", "name", adapter_file_names[i], "bytes",
                                                       (json_int_t)st.st_size));
        }
    }
    json_object_set_new(m, "adapter", adapter ? adapter : json_null());
    json_object_set_new(m, "files", files ? files : json_array());
    return m;
}

/* The model object of a job's checkpoint (ckpt: its fine_tuning.job.checkpoint object): parent is
 * the job's fine-tuned model once the job has succeeded, else the base. Returns a new reference or
 * NULL. */
static json_t *checkpoint_model_object(json_t *job, json_t *ckpt) {
    const char *base = json_string_value(json_object_get(job, "model"));
    const char *status = json_string_value(json_object_get(job, "status"));
    json_t *id = json_object_get(ckpt, "fine_tuned_model_checkpoint"), *created = json_object_get(ckpt, "created_at");
    json_t *job_id = json_object_get(job, "id"), *ck_id = json_object_get(ckpt, "id");
    json_t *step = json_object_get(ckpt, "step_number");
    char parent[512];
    if (!base || !json_is_string(id) || !json_is_integer(created) || !json_is_string(job_id) || !json_is_string(ck_id) ||
        !json_is_integer(step))
        return NULL;
    if (!status || strcmp(status, "succeeded") != 0 || lorad_store_job_fine_tuned_model(job, parent, sizeof parent) < 0)
        snprintf(parent, sizeof parent, "%s", base);
    return json_pack("{s:O, s:s, s:O, s:s, s:s, s:s, s:s, s:s, s:O, s:O, s:O}", "id", id, "object", "model", "created",
                     created, "owned_by", "user", "kind", "checkpoint", "root", base, "parent", parent, "base_model",
                     base, "fine_tuning_job_id", job_id, "checkpoint_id", ck_id, "step_number", step);
}

/* Appends the model object of every checkpoint of job to data, highest step first. */
static int append_checkpoints(struct lorad_app *app, json_t *job, json_t *data, struct lorad_error *err) {
    const char *job_id = json_string_value(json_object_get(job, "id"));
    char after[LORAD_STORE_ID_MAX] = "";
    for (int page_no = 0; job_id && page_no < MODELS_MAX_CHECKPOINT_PAGES; page_no++) {
        json_t *page = NULL;
        int r = lorad_store_checkpoint_list(app->store, job_id, after[0] ? after : NULL, 100, &page, err);
        if (r == -ENOENT) return 0; /* deleted meanwhile */
        if (r < 0) return r;
        size_t i;
        json_t *ck;
        json_array_foreach(json_object_get(page, "data"), i, ck) {
            json_t *m = checkpoint_model_object(job, ck);
            if (m) json_array_append_new(data, m);
        }
        const char *last = json_string_value(json_object_get(page, "last_id"));
        bool more = json_is_true(json_object_get(page, "has_more")) && last;
        if (more) snprintf(after, sizeof after, "%s", last);
        json_decref(page);
        if (!more) break;
    }
    return 0;
}

/* Appends to data the model object of each job of status (-1: any), newest first, made by
 * add(app, job, data). */
static int append_jobs(struct lorad_app *app, int status, json_t *data,
                       int (*add)(struct lorad_app *app, json_t *job, json_t *data, struct lorad_error *err),
                       struct lorad_error *err) {
    char after[LORAD_STORE_ID_MAX] = "";
    for (int page_no = 0; page_no < MODELS_MAX_ADAPTER_PAGES; page_no++) {
        json_t *page = NULL;
        int r = lorad_store_job_list(app->store, status, after[0] ? after : NULL, 100, &page, err);
        if (r < 0) return r;
        size_t i;
        json_t *job;
        json_array_foreach(json_object_get(page, "data"), i, job) {
            if ((r = add(app, job, data, err)) < 0) break;
        }
        const char *last = json_string_value(json_object_get(page, "last_id"));
        bool more = r == 0 && json_is_true(json_object_get(page, "has_more")) && last;
        if (more) snprintf(after, sizeof after, "%s", last);
        json_decref(page);
        if (r < 0) return r;
        if (!more) break;
    }
    return 0;
}

static int append_adapter(struct lorad_app *app, json_t *job, json_t *data, struct lorad_error *err) {
    (void)err;
    json_t *m = adapter_model_object(app, job);
    if (m) json_array_append_new(data, m);
    return 0;
}

static int reply_no_model(struct lorad_api_reply *ret_reply, const char *name) {
    char msg[256];
    snprintf(msg, sizeof msg, "model '%.180s' does not exist", name);
    return lorad_api_reply_error(ret_reply, 404, msg, "model", "model_not_found");
}

/* ---- handlers ----------------------------------------------------------------------------- */

static int add_base(void *ctx, const char *id, const char *path, enum lorad_model_format format) {
    json_t *m = base_model_object(id, path, format);
    if (m) json_array_append_new(ctx, m);
    return 0;
}

/* GET /v1/models: base models in name order, then adapters newest first, then the checkpoints of
 * every job (jobs newest first, each one's highest step first). */
static int handle_list(const struct lorad_api_request *req, struct lorad_api_reply *ret_reply) {
    struct lorad_app *app = handler_app(req);
    if (!app || !app->store) return handler_reply_not_ready(ret_reply);
    json_t *data = json_array();
    if (!data) return handler_reply_oom(ret_reply);
    if (app->models_dir) lorad_model_dir_scan(app->models_dir, add_base, data); /* unreadable dir: no base models */
    struct lorad_error err = {0};
    int r = append_jobs(app, LORAD_JOB_SUCCEEDED, data, append_adapter, &err);
    if (r == 0) r = append_jobs(app, -1, data, append_checkpoints, &err);
    if (r < 0) {
        json_decref(data);
        return handler_reply_failure(ret_reply, r, &err, NULL);
    }
    json_t *first = json_array_get(data, 0), *lastm = json_array_get(data, json_array_size(data) - 1);
    return handler_reply_json(ret_reply, 200,
                              json_pack("{s:s, s:o, s:b, s:O, s:O}", "object", "list", "data", data, "has_more", 0,
                                        "first_id", first ? json_object_get(first, "id") : json_null(), "last_id",
                                        lastm ? json_object_get(lastm, "id") : json_null()));
}

/* GET /v1/models/{model} */
static int handle_get(const struct lorad_api_request *req, struct lorad_api_reply *ret_reply) {
    struct lorad_app *app = handler_app(req);
    if (!app || !app->store) return handler_reply_not_ready(ret_reply);
    const char *name = lorad_route_param(&req->params, "model");
    if (!name) return reply_no_model(ret_reply, "");
    struct lorad_error err = {0};
    if (handler_model_is_checkpoint(name)) {
        json_t *job = NULL, *ck = NULL;
        int r = handler_find_checkpoint(app->store, name, &job, &ck, &err);
        if (r == -ENOENT) return reply_no_model(ret_reply, name);
        if (r < 0) return handler_reply_failure(ret_reply, r, &err, NULL);
        json_t *m = checkpoint_model_object(job, ck);
        json_decref(job);
        json_decref(ck);
        return handler_reply_json(ret_reply, 200, m);
    }
    if (strncmp(name, "ft:", 3) == 0) {
        json_t *job = NULL;
        int r = lorad_store_fine_tuned_job(app->store, name, &job, &err);
        if (r == -ENOENT) return reply_no_model(ret_reply, name);
        if (r < 0) return handler_reply_failure(ret_reply, r, &err, NULL);
        json_t *m = adapter_model_object(app, job);
        json_decref(job);
        return handler_reply_json(ret_reply, 200, m);
    }
    char path[4096];
    enum lorad_model_format format;
    if (!app->models_dir || lorad_model_dir_resolve(app->models_dir, name, path, sizeof path, &format, &err) < 0)
        return reply_no_model(ret_reply, name);
    json_t *m = base_model_object(name, path, format);
    if (!m) return reply_no_model(ret_reply, name); /* vanished between resolve and stat */
    return handler_reply_json(ret_reply, 200, m);
}

/* GET /v1/models/{model}/<file>: one of the final adapter files of a succeeded job. */
static int serve_adapter_file(const struct lorad_api_request *req, struct lorad_api_reply *ret_reply, size_t which,
                              const char *content_type) {
    struct lorad_app *app = handler_app(req);
    if (!app || !app->store || !app->jobs_dir) return handler_reply_not_ready(ret_reply);
    const char *name = lorad_route_param(&req->params, "model");
    if (!name) return reply_no_model(ret_reply, "");
    struct lorad_error err = {0};
    json_t *job = NULL;
    int r = strncmp(name, "ft:", 3) == 0 ? lorad_store_fine_tuned_job(app->store, name, &job, &err) : -ENOENT;
    if (r == -ENOENT) {
        char msg[256];
        snprintf(msg, sizeof msg, "model '%.160s' is not a fine-tuned model with adapter files", name);
        return lorad_api_reply_error(ret_reply, 404, msg, "model", "model_not_found");
    }
    if (r < 0) return handler_reply_failure(ret_reply, r, &err, NULL);
    char path[4096], download[128];
    const char *job_id = json_string_value(json_object_get(job, "id"));
    int n = snprintf(path, sizeof path, "%s/%s/adapter/%s", app->jobs_dir, job_id, adapter_file_names[which]);
    snprintf(download, sizeof download, "%s-%s", job_id, adapter_file_names[which]);
    json_decref(job);
    if (n < 0 || (size_t)n >= sizeof path) return lorad_api_reply_error(ret_reply, 500, "path too long", NULL, "internal_error");
    return handler_reply_adapter_file(ret_reply, path, content_type, download, "model");
}

static int handle_safetensors(const struct lorad_api_request *req, struct lorad_api_reply *ret_reply) {
    return serve_adapter_file(req, ret_reply, 0, "application/octet-stream");
}
static int handle_config(const struct lorad_api_request *req, struct lorad_api_reply *ret_reply) {
    return serve_adapter_file(req, ret_reply, 1, "application/json");
}
static int handle_tar(const struct lorad_api_request *req, struct lorad_api_reply *ret_reply) {
    return serve_adapter_file(req, ret_reply, 2, "application/x-tar");
}
static int handle_gguf(const struct lorad_api_request *req, struct lorad_api_reply *ret_reply) {
    return serve_adapter_file(req, ret_reply, 3, "application/octet-stream");
}

int lorad_api_install_model_routes(void) {
    static const struct {
        const char *path;
        lorad_api_handler_fn fn;
    } routes[] = {
        {"/v1/models", handle_list},
        {"/v1/models/{model}", handle_get},
        {"/v1/models/{model}/adapter_model.safetensors", handle_safetensors},
        {"/v1/models/{model}/adapter_config.json", handle_config},
        {"/v1/models/{model}/adapter.tar", handle_tar},
        {"/v1/models/{model}/adapter.gguf", handle_gguf},
    };
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++) {
        int r = lorad_api_set_handler("GET", routes[i].path, routes[i].fn);
        if (r < 0) return r;
    }
    return 0;
}
