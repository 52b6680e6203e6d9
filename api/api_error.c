#include "api_error.h"

const char *lorad_api_error_type(unsigned status) {
    switch (status) {
    case 401: return "authentication_error";
    case 403: return "permission_error";
    case 429: return "rate_limit_error";
    case 503: return "service_unavailable";
    default: return status >= 500 ? "server_error" : "invalid_request_error";
    }
}

json_t *lorad_api_error_body(unsigned status, const char *message, const char *param, const char *code) {
    return json_pack("{s:{s:s, s:s, s:s?, s:s?}}", "error", "message", message ? message : "",
                     "type", lorad_api_error_type(status), "param", param, "code", code);
}
