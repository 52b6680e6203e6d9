/* The one error shape of the API, OpenAI's:
 *   {"error": {"message": "...", "type": "invalid_request_error", "param": "x" | null, "code": "..." | null}}
 * Every handler answers failures through this, so clients (and the OpenAI SDKs) see one format. */
#pragma once
#include <jansson.h>

/* The OpenAI error type that goes with an HTTP status: 400/404/405/409/413/415/422 ->
 * "invalid_request_error", 401/403 -> "authentication_error" / "permission_error",
 * 429 -> "rate_limit_error", 503 -> "service_unavailable", other 5xx -> "server_error". */
const char *lorad_api_error_type(unsigned status);

/* Builds the error body. param and code may be NULL (they become JSON null). Returns a new
 * reference owned by the caller, or NULL on allocation failure. */
json_t *lorad_api_error_body(unsigned status, const char *message, const char *param, const char *code);
