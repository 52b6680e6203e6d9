#include <string.h>

#include "routes.h"
#include "web_assets.h"

/* Contract: name is any client string; the answer points into the static table or is NULL. */
const struct lorad_web_asset *lorad_web_asset_find(const char *name) {
    for (size_t i = 0; i < lorad_web_n_assets; i++)
        if (strcmp(lorad_web_assets[i].name, name) == 0) return &lorad_web_assets[i];
    return NULL;
}

/* The reply borrows the asset's static bytes; nothing is allocated. */
static int reply_asset(const struct lorad_web_asset *a, struct lorad_api_reply *ret_reply) {
    ret_reply->status = 200;
    ret_reply->content_type = a->content_type;
    ret_reply->static_body = a->data;
    ret_reply->static_len = a->len;
    ret_reply->page = true;
    return 0;
}

int lorad_api_handler_ui_index(const struct lorad_api_request *req, struct lorad_api_reply *ret_reply) {
    (void)req;
    const struct lorad_web_asset *a = lorad_web_asset_find("index.html");
    if (!a) return lorad_api_reply_error(ret_reply, 404, "this build has no dashboard (web/index.html)", NULL, "not_found");
    return reply_asset(a, ret_reply);
}

int lorad_api_handler_ui_asset(const struct lorad_api_request *req, struct lorad_api_reply *ret_reply) {
    const char *name = lorad_route_param(&req->params, "asset");
    const struct lorad_web_asset *a = name ? lorad_web_asset_find(name) : NULL;
    if (!a) return lorad_api_reply_error(ret_reply, 404, "no such dashboard file", "asset", "not_found");
    return reply_asset(a, ret_reply);
}
