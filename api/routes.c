#include "routes.h"

#include <assert.h>
#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "api_error.h"
#include "api_metrics.h"
#include "web_assets.h"

static int handler_livez(const struct lorad_api_request *req, struct lorad_api_reply *ret_reply) {
    (void)req;
    ret_reply->status = 200;
    ret_reply->json = json_pack("{s:s}", "status", "ok");
    return 0;
}

int lorad_api_handler_metrics(const struct lorad_api_request *req, struct lorad_api_reply *ret_reply) {
    (void)req;
    ret_reply->text = lorad_api_metrics_render(&ret_reply->text_len);
    if (!ret_reply->text) return lorad_api_reply_error(ret_reply, 500, "out of memory", NULL, NULL);
    ret_reply->status = 200;
    ret_reply->content_type = "text/plain; version=0.0.4";
    return 0;
}

#define J "/v1/fine_tuning/jobs/{fine_tuning_job_id}"
#define C J "/checkpoints/{checkpoint_id}"
#define NW lorad_api_handler_not_wired

/* Keep in the same order as openapi.yaml's paths so reviews can read them side by side. */
struct lorad_api_route lorad_api_routes[] = {
    {"POST", "/v1/files", NW, false, LORAD_BODY_UPLOAD},
    {"GET", "/v1/files", NW, false, LORAD_BODY_NONE},
    {"GET", "/v1/files/{file_id}", NW, false, LORAD_BODY_NONE},
    {"DELETE", "/v1/files/{file_id}", NW, false, LORAD_BODY_NONE},
    {"GET", "/v1/files/{file_id}/content", NW, false, LORAD_BODY_NONE},
    {"POST", "/v1/fine_tuning/jobs", NW, false, LORAD_BODY_JSON},
    {"GET", "/v1/fine_tuning/jobs", NW, false, LORAD_BODY_NONE},
    {"GET", J, NW, false, LORAD_BODY_NONE},
    {"POST", J "/cancel", NW, false, LORAD_BODY_NONE},
    {"POST", J "/pause", NW, false, LORAD_BODY_NONE},
    {"POST", J "/resume", NW, false, LORAD_BODY_NONE},
    {"GET", J "/events", NW, false, LORAD_BODY_NONE},
    {"GET", J "/metrics", NW, false, LORAD_BODY_NONE},
    {"GET", J "/checkpoints", NW, false, LORAD_BODY_NONE},
    {"GET", C "/adapter_model.safetensors", NW, false, LORAD_BODY_NONE},
    {"GET", C "/adapter_config.json", NW, false, LORAD_BODY_NONE},
    {"GET", C "/adapter.tar", NW, false, LORAD_BODY_NONE},
    {"GET", C "/adapter.gguf", NW, false, LORAD_BODY_NONE},
    {"GET", "/v1/models", NW, false, LORAD_BODY_NONE},
    {"GET", "/v1/models/{model}", NW, false, LORAD_BODY_NONE},
    {"GET", "/v1/models/{model}/adapter_model.safetensors", NW, false, LORAD_BODY_NONE},
    {"GET", "/v1/models/{model}/adapter_config.json", NW, false, LORAD_BODY_NONE},
    {"GET", "/v1/models/{model}/adapter.tar", NW, false, LORAD_BODY_NONE},
    {"GET", "/v1/models/{model}/adapter.gguf", NW, false, LORAD_BODY_NONE},
    {"POST", "/v1/chat/completions", NW, false, LORAD_BODY_JSON},
    {"POST", "/v1/completions", NW, false, LORAD_BODY_JSON},
    {"GET", "/livez", handler_livez, true, LORAD_BODY_NONE},
    {"GET", "/readyz", NW, true, LORAD_BODY_NONE},
    {"GET", "/metrics", lorad_api_handler_metrics, false, LORAD_BODY_NONE},
    /* the dashboard's files are public: what they show comes from the API, which needs the key */
    {"GET", "/", lorad_api_handler_ui_index, true, LORAD_BODY_NONE},
    {"GET", "/ui/{asset}", lorad_api_handler_ui_asset, true, LORAD_BODY_NONE},
};
const size_t lorad_api_n_routes = sizeof lorad_api_routes / sizeof lorad_api_routes[0];

int lorad_api_reply_error(struct lorad_api_reply *ret_reply, unsigned status, const char *message,
                          const char *param, const char *code) {
    ret_reply->status = status;
    ret_reply->json = lorad_api_error_body(status, message, param, code);
    return 0;
}

int lorad_api_handler_not_wired(const struct lorad_api_request *req, struct lorad_api_reply *ret_reply) {
    (void)req;
    return lorad_api_reply_error(ret_reply, 503, "this route is not connected to the job store yet", NULL,
                                 "not_wired");
}

int lorad_api_set_handler(const char *method, const char *path, lorad_api_handler_fn handler) {
    assert(handler);
    for (size_t i = 0; i < lorad_api_n_routes; i++) {
        if (strcmp(lorad_api_routes[i].method, method) == 0 && strcmp(lorad_api_routes[i].path, path) == 0) {
            lorad_api_routes[i].handler = handler;
            return 0;
        }
    }
    return -ENOENT;
}

const struct lorad_api_route *lorad_api_route_lookup(const char *method, const char *path,
                                                     struct lorad_route_params *ret_params,
                                                     unsigned *ret_status, char *allow, size_t allow_cap) {
    bool path_known = false;
    if (allow_cap) allow[0] = '\0';
    for (size_t i = 0; i < lorad_api_n_routes; i++) {
        struct lorad_route_params p;
        if (!lorad_route_match(lorad_api_routes[i].path, path, &p)) continue;
        if (strcmp(lorad_api_routes[i].method, method) == 0) {
            if (ret_params) *ret_params = p;
            return &lorad_api_routes[i];
        }
        path_known = true;
        if (allow_cap && !strstr(allow, lorad_api_routes[i].method)) {
            size_t used = strlen(allow);
            snprintf(allow + used, allow_cap - used, "%s%s", used ? ", " : "", lorad_api_routes[i].method);
        }
    }
    *ret_status = path_known ? 405 : 404;
    return NULL;
}
