/* The dashboard's files (web/), embedded at build time by cmake/embed_web.cmake, and the two
 * public routes that serve them: GET / (index.html) and GET /ui/{asset}. */
#pragma once
#include <stddef.h>

#include "routes.h"

struct lorad_web_asset {
    const char *name;         /* the file's name in web/, e.g. "app.js" */
    const char *content_type;
    const unsigned char *data;/* static, len bytes (plus a NUL not counted) */
    size_t len;
};

extern const struct lorad_web_asset lorad_web_assets[];
extern const size_t lorad_web_n_assets;

/* The asset called name, or NULL. Names are compared whole, so "../x" or "a/b" never match. */
const struct lorad_web_asset *lorad_web_asset_find(const char *name);

/* GET /: index.html. GET /ui/{asset}: that file, 404 (code "not_found", param "asset") when
 * there is none. Both carry the page's security headers (lorad_api_reply.page). */
int lorad_api_handler_ui_index(const struct lorad_api_request *req, struct lorad_api_reply *ret_reply);
int lorad_api_handler_ui_asset(const struct lorad_api_request *req, struct lorad_api_reply *ret_reply);
