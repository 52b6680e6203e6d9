/* Helpers shared by the handler groups: error mapping, pagination arguments, id parameters,
 * JSON and file replies. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "adapter.h"
#include "handlers.h"
#include "handlers_internal.h"
#include "store.h"

int handler_reply_failure(struct lorad_api_reply *ret_reply, int r, const struct lorad_error *err,
                          const char *code) {
    unsigned status;
    const char *derived;
    switch (r) {
    case -ENOENT: status = 404, derived = "not_found"; break;
    case -EINVAL: case -ERANGE: case -E2BIG: status = 400, derived = "invalid_value"; break;
    case -EPERM: status = 409, derived = "invalid_state"; break;
    case -EBUSY: status = 409, derived = "busy"; break;
    case -EEXIST: status = 422, derived = "idempotency_key_reused"; break;
    case -EAGAIN: status = 429, derived = "queue_full"; break;
    case -ENOSPC: status = 503, derived = "disk_full"; break;
    case -EROFS: status = 503, derived = "read_only"; break;
    case -ENOMEM: status = 503, derived = "out_of_memory"; break;
    default: status = 500, derived = "internal_error"; break;
    }
    char fallback[160];
    const char *message = err && err->message[0] ? err->message : NULL;
    if (!message) {
        snprintf(fallback, sizeof fallback, "%s", strerror(-r));
        message = fallback;
    }
    const char *param = err && err->param[0] ? err->param : NULL;
    return lorad_api_reply_error(ret_reply, status, message, param, code ? code : derived);
}

int handler_query_int(const char *s, int64_t min, int64_t max, int64_t *ret_value) {
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end || v < min || v > max) return -EINVAL;
    *ret_value = v;
    return 0;
}

int handler_page_args(const struct lorad_api_request *req, const char *id_prefix, int default_limit,
                      int max_limit, int *ret_limit, const char **ret_after, struct lorad_api_reply *ret_reply) {
    int64_t limit = default_limit;
    const char *s = req->query(req, "limit");
    if (s && handler_query_int(s, 1, max_limit, &limit) < 0) {
        char msg[128];
        snprintf(msg, sizeof msg, "limit must be an integer between 1 and %d", max_limit);
        lorad_api_reply_error(ret_reply, 400, msg, "limit", "invalid_value");
        return -EINVAL;
    }
    const char *after = req->query(req, "after");
    if (after && !lorad_store_id_valid(id_prefix, after)) {
        lorad_api_reply_error(ret_reply, 400, "after is not a valid id", "after", "invalid_value");
        return -EINVAL;
    }
    *ret_limit = (int)limit;
    *ret_after = after;
    return 0;
}

const char *handler_id_param(const struct lorad_api_request *req, const char *name, const char *prefix,
                             struct lorad_api_reply *ret_reply) {
    const char *v = lorad_route_param(&req->params, name);
    if (v && lorad_store_id_valid(prefix, v)) return v;
    char msg[160];
    snprintf(msg, sizeof msg, "no such %s", name);
    lorad_api_reply_error(ret_reply, 404, msg, name, "not_found");
    return NULL;
}

int handler_reply_oom(struct lorad_api_reply *ret_reply) {
    return lorad_api_reply_error(ret_reply, 503, "out of memory", NULL, "out_of_memory");
}

int handler_reply_adapter_file(struct lorad_api_reply *ret_reply, const char *path, const char *content_type,
                               const char *download_name, const char *param) {
    static const char gguf[] = "/adapter.gguf";
    size_t n = strlen(path), k = sizeof gguf - 1;
    struct stat st;
    if (n > k && strcmp(path + n - k, gguf) == 0 && stat(path, &st) < 0 && errno == ENOENT) {
        char dir[4096];
        struct lorad_adapter_meta meta;
        struct lorad_error err = {0};
        if (n - k < sizeof dir) {
            memcpy(dir, path, n - k);
            dir[n - k] = '\0';
            if (lorad_adapter_read_config(dir, &meta, &err) == 0 && meta.use_dora)
                return lorad_api_reply_error(ret_reply, 404,
                                             "this is a DoRA adapter, which has no adapter.gguf: llama.cpp's GGUF LoRA "
                                             "cannot hold its magnitude vectors; download adapter_model.safetensors "
                                             "(PEFT) or merge it (lorad export --format merged)",
                                             param, "not_available_for_dora");
        }
    }
    return handler_reply_file(ret_reply, path, content_type, download_name, param);
}

int handler_reply_json(struct lorad_api_reply *ret_reply, unsigned status, json_t *obj) {
    if (!obj) return handler_reply_oom(ret_reply);
    ret_reply->status = status ? status : 200;
    ret_reply->json = obj;
    return 0;
}

int handler_reply_file(struct lorad_api_reply *ret_reply, const char *path, const char *content_type,
                       const char *download_name, const char *param) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        if (fd >= 0) close(fd);
        return lorad_api_reply_error(ret_reply, 404, "the file is not available", param, "not_found");
    }
    ret_reply->status = 200;
    ret_reply->has_file = true;
    ret_reply->file_fd = fd;
    ret_reply->file_size = (uint64_t)st.st_size;
    ret_reply->content_type = content_type;
    if (download_name) {
        snprintf(ret_reply->download_name_buf, sizeof ret_reply->download_name_buf, "%s", download_name);
        ret_reply->download_name = ret_reply->download_name_buf;
    }
    return 0;
}

int handler_reply_not_ready(struct lorad_api_reply *ret_reply) {
    return lorad_api_reply_error(ret_reply, 503, "the service is starting: the store is not open yet", NULL,
                                 "not_ready");
}
