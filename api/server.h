/* The HTTP server: libmicrohttpd with one thread per connection, so an SSE stream, a generation or
 * a large download never blocks other requests; the connection limit bounds the thread count. */
#pragma once
#include <stddef.h>
#include <stdint.h>

struct lorad_api_keys;

struct lorad_api_server_options {
    const char *bind_address;     /* "127.0.0.1"; ignored when listen_fd >= 0 */
    uint16_t port;                /* 0 = pick a free port; see lorad_api_server_port() */
    int listen_fd;                /* >= 0: an inherited listening socket (systemd); -1 otherwise */
    unsigned max_connections;
    unsigned connection_timeout_s;
    size_t max_request_body;      /* JSON bodies above this are 413 */
    uint64_t max_upload_bytes;    /* upload bodies above this are 413 */
    const char *upload_dir;       /* uploads stream into temp files here (NULL: /tmp); the
                                   * transport unlinks the temp file after the handler returns,
                                   * so a handler keeps it by rename()ing it */
    unsigned max_json_depth;      /* deeper JSON is 400 */
    struct lorad_api_keys *keys;  /* borrowed: outlives the server, shared by every listener so one
                                   * SIGHUP swaps the keys of all (api_keys.h); NULL: no auth */
    void *app;                    /* handed to every handler as req->app */
    unsigned sse_poll_ms;         /* wait between empty polls of an event source (0: 250) */
    unsigned sse_keepalive_ms;    /* ": keepalive" after this much silence on any stream (0: 15000) */
};

struct lorad_api_server;

/* Starts listening. Returns 0 and *ret_server (stop with lorad_api_server_stop), or -errno. */
int lorad_api_server_start(const struct lorad_api_server_options *o, struct lorad_api_server **ret_server);
/* The port actually bound (useful with port 0). */
uint16_t lorad_api_server_port(const struct lorad_api_server *s);
/* Stops accepting (quiesce), ends open streams (SSE and raw) within 100 ms, makes req->gone true
 * for handlers still working, closes the connections and frees. Returns only after every handler, content reader and completion callback has returned
 * (libmicrohttpd joins the connection threads), so what they use (the store, the workers, the key
 * set) may be freed afterwards. Closes the socket it bound itself; an options.listen_fd stays open
 * (the caller's). NULL is fine. */
void lorad_api_server_stop(struct lorad_api_server *s);
