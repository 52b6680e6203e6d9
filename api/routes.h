/* The one route table of the HTTP API and the handler contract. openapi.yaml lists exactly the
 * same {method, path} pairs (tests/api/test_routes checks it). The transport (not yet written)
 * dispatches with lorad_api_dispatch_lookup(); the daemon swaps the `not_wired` handlers for real
 * ones backed by store/ and engine/ via lorad_api_set_handler(). */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "route_match.h"

/* What a streamed upload produced: the body went straight to temp_path, never into memory. */
struct lorad_api_upload {
    char temp_path[4096];
    uint64_t bytes;
    char sha256_hex[65];
    char filename[256];
    char purpose[64];
};

/* Everything a handler may read about one request. Owned by the transport for the request's life. */
struct lorad_api_request {
    void *app;                       /* set by the daemon when it creates the server */
    const char *method;
    const char *path;                /* without the query string */
    const char *route_template;      /* the matched template, also the metrics label */
    struct lorad_route_params params;/* captured, length-bounded path segments */
    json_t *json_body;               /* parsed JSON body or NULL (borrowed) */
    const struct lorad_api_upload *upload; /* NULL unless the route takes an upload */
    /* Query argument / header lookups (case-insensitive for headers); NULL when absent. */
    const char *(*query)(const struct lorad_api_request *r, const char *name);
    const char *(*header)(const struct lorad_api_request *r, const char *name);
    /* True once the server is stopping or the client has hung up (its end of the connection is
     * closed or shut down for writing): a handler that works long before it answers (a generation
     * without stream) polls it to give up early, since nobody will read the answer. A cheap
     * non-blocking check. NULL in requests built without a transport (tests). */
    bool (*gone)(const struct lorad_api_request *r);
    void *transport;                 /* private to the transport */
    void *transport_state;           /* private to the transport */
};

/* Event source of an SSE stream. Called repeatedly from the connection's own thread; returns
 * 1 with the next event after after_seq in *ret_seq and *ret_json (malloc'd, transport frees),
 * 0 when nothing new yet (the transport waits and sends keepalives), 2 when the stream is over
 * (the transport sends "data: [DONE]"), or -errno (the stream ends). */
typedef int (*lorad_api_next_event_fn)(void *ctx, uint64_t after_seq, uint64_t *ret_seq, char **ret_json);

/* Source of a raw byte stream: text the handler formats itself (e.g. OpenAI's `data: {...}` chunks,
 * no `id:` lines). Called repeatedly from the connection's own thread and may block up to
 * timeout_ms, so bytes go out as soon as they exist. Returns 1 with *ret_bytes (malloc'd,
 * NUL-terminated, non-empty; the transport frees it), 0 when nothing came within timeout_ms (the
 * transport then checks for a stop or a hung-up client and sends ": keepalive" after a silence),
 * 2 when the stream is over (nothing is added to it), or -errno (the connection is closed). */
typedef int (*lorad_api_stream_next_fn)(void *ctx, int timeout_ms, char **ret_bytes);

/* A reply the handler fills in; the transport sends it. Exactly one of json / text / static body /
 * file / sse / stream. */
struct lorad_api_reply {
    unsigned status;
    json_t *json;                    /* owned: the transport decrefs it */
    const char *content_type;        /* for non-JSON bodies (text, csv, files) */
    char *text;                      /* owned malloc'd text body (Prometheus, CSV) */
    size_t text_len;
    /* File download: the transport streams file_fd from disk (it closes it), answering a single
     * Range (bytes=a-b, a-, -n) with 206 + Content-Range, unsatisfiable ones with 416. */
    bool has_file;
    int file_fd;
    uint64_t file_size;
    const char *download_name;       /* for Content-Disposition; static, app-owned or download_name_buf */
    char download_name_buf[256];
    /* SSE: set next_event; the transport starts after Last-Event-ID (or sse_after_seq when that
     * header is absent) and calls sse_free(sse_ctx) when the stream ends. */
    lorad_api_next_event_fn next_event;
    void *sse_ctx;
    void (*sse_free)(void *ctx);
    uint64_t sse_after_seq;
    /* Raw stream (content_type, default text/event-stream): set stream_next. The transport calls
     * stream_free(stream_ctx) exactly once, as soon as the stream ends, the client hangs up (noticed
     * within 100 ms, also while the source is silent) or the server stops, so what the stream holds
     * (a generation's slots) is released at once. */
    lorad_api_stream_next_fn stream_next;
    void *stream_ctx;
    void (*stream_free)(void *ctx);
    /* Static body (the embedded dashboard): static_len bytes sent as they are, never freed. */
    const void *static_body;
    size_t static_len;
    /* The dashboard page's headers: a strict Content-Security-Policy (nothing but this origin's
     * own scripts, styles and API), no framing, no MIME sniffing, no referrer. */
    bool page;
    /* > 0: the reply carries `Retry-After: <seconds>` (429 and 503 answers). */
    unsigned retry_after_s;
};

typedef int (*lorad_api_handler_fn)(const struct lorad_api_request *req, struct lorad_api_reply *ret_reply);

struct lorad_api_route {
    const char *method;
    const char *path;                /* template, e.g. "/v1/files/{file_id}" */
    lorad_api_handler_fn handler;
    bool public_route;               /* true: no bearer token needed (/livez, /readyz) */
    enum lorad_api_body { LORAD_BODY_NONE, LORAD_BODY_JSON, LORAD_BODY_UPLOAD } body;
};

extern struct lorad_api_route lorad_api_routes[];
extern const size_t lorad_api_n_routes;

/* Answers 503 {"error":{..., "code":"not_wired"}}: the route exists but its handler is not
 * connected to the store/engine yet. */
int lorad_api_handler_not_wired(const struct lorad_api_request *req, struct lorad_api_reply *ret_reply);

/* GET /metrics: the Prometheus registry of api_metrics.h (request counters, latencies, gauges). */
int lorad_api_handler_metrics(const struct lorad_api_request *req, struct lorad_api_reply *ret_reply);

/* Fills ret_reply with the one error shape (api_error_body). Always returns 0. */
int lorad_api_reply_error(struct lorad_api_reply *ret_reply, unsigned status, const char *message,
                          const char *param, const char *code);

/* Replaces the handler of {method, path}. Returns 0 or -ENOENT when no such route. Call before
 * starting the server. */
int lorad_api_set_handler(const char *method, const char *path, lorad_api_handler_fn handler);

/* Finds the route for a request. Returns the route and fills ret_params on a match; on no match
 * returns NULL and sets *ret_status to 404 (unknown path) or 405 (known path, other method) and
 * writes the allowed methods, comma separated, into allow (for the Allow header). */
const struct lorad_api_route *lorad_api_route_lookup(const char *method, const char *path,
                                                     struct lorad_route_params *ret_params,
                                                     unsigned *ret_status, char *allow, size_t allow_cap);
