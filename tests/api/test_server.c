/* A real server on 127.0.0.1 port 0 and a raw socket client: 404, 405 + Allow, 401/403 with a
 * key file, 415, 413, 400 for bad and too-deep JSON, public /livez, idle-client timeout, SSE and
 * raw streams (keepalives, a hung-up client or a stop releasing the stream at once), Retry-After,
 * and req->gone. */
#include "testutil.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <time.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include "api_keys.h"
#include "routes.h"
#include "server.h"

static struct lorad_api_server *srv;
static struct lorad_api_keys *keys; /* borrowed by srv, as the daemon's listeners borrow its one */

/* Sends a raw request, returns the status and copies the whole response into out. */
static int http(const char *req, char *out, size_t cap) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(lorad_api_server_port(srv))};
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    size_t n = strlen(req);
    assert_int_equal(write(fd, req, n), (ssize_t)n);
    size_t got = 0;
    ssize_t r;
    while (got + 1 < cap && (r = read(fd, out + got, cap - 1 - got)) > 0) got += (size_t)r;
    out[got] = '\0';
    close(fd);
    int status = 0;
    assert_int_equal(sscanf(out, "HTTP/1.%*d %d", &status), 1);
    return status;
}

static char buf[65536];

static void test_routing_and_errors(void **state) {
    (void)state;
    assert_int_equal(http("GET /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", buf, sizeof buf), 200);
    assert_int_equal(http("GET /v1/nope HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k1\r\nConnection: close\r\n\r\n", buf, sizeof buf), 404);
    assert_non_null(strstr(buf, "\"type\":\"invalid_request_error\""));
    assert_int_equal(http("PUT /v1/files/file-1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", buf, sizeof buf), 405);
    assert_non_null(strcasestr(buf, "Allow: GET, DELETE"));
    assert_int_equal(http("GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", buf, sizeof buf), 401);
    assert_int_equal(http("GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k3\r\nConnection: close\r\n\r\n", buf, sizeof buf), 403);
    assert_null(strstr(buf, "k1"));
    assert_int_equal(http("GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k2\r\nConnection: close\r\n\r\n", buf, sizeof buf), 503);
    assert_non_null(strstr(buf, "not_wired"));
    assert_int_equal(http("GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k1\r\nConnection: close\r\n\r\n", buf, sizeof buf), 200);
    assert_non_null(strstr(buf, "# TYPE lorad_http_requests_total counter"));
    assert_non_null(strstr(buf, "lorad_http_requests_total{method=\"GET\",route=\"/v1/models\",status=\"403\"} 1\n"));
    assert_non_null(strstr(buf, "lorad_http_requests_total{method=\"any\",route=\"unmatched\",status=\"404\"} 1\n"));
    assert_non_null(strstr(buf, "lorad_http_request_duration_seconds_count{method=\"GET\",route=\"/livez\",status=\"200\"} 1\n"));
}

static void test_json_bodies(void **state) {
    (void)state;
    const char *h = "POST /v1/fine_tuning/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k1\r\nConnection: close\r\n";
    char req[8192];
    snprintf(req, sizeof req, "%sContent-Type: text/plain\r\nContent-Length: 2\r\n\r\n{}", h);
    assert_int_equal(http(req, buf, sizeof buf), 415);
    snprintf(req, sizeof req, "%sContent-Type: application/json\r\nContent-Length: 5000\r\n\r\n", h);
    assert_int_equal(http(req, buf, sizeof buf), 413);
    snprintf(req, sizeof req, "%sContent-Type: application/json\r\nContent-Length: 9\r\n\r\n{\"a\": 1,}", h);
    assert_int_equal(http(req, buf, sizeof buf), 400);
    assert_non_null(strstr(buf, "invalid JSON at line 1"));
    char deep[200] = "";
    for (int i = 0; i < 40; i++) strcat(deep, "[");
    for (int i = 0; i < 40; i++) strcat(deep, "]");
    snprintf(req, sizeof req, "%sContent-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s", h, strlen(deep), deep);
    assert_int_equal(http(req, buf, sizeof buf), 400);
    assert_non_null(strstr(buf, "too deeply"));
    snprintf(req, sizeof req, "%sContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}", h);
    assert_int_equal(http(req, buf, sizeof buf), 503); /* valid JSON reaches the (not wired) handler */
}

/* A client that connects and sends nothing is closed after connection_timeout_s, and others
 * are served meanwhile (thread per connection). */
static void test_idle_client_times_out(void **state) {
    (void)state;
    struct lorad_api_server *saved = srv, *quick;
    struct lorad_api_server_options o = {.bind_address = "127.0.0.1", .listen_fd = -1, .max_connections = 4,
                                         .connection_timeout_s = 1, .max_request_body = 1024, .max_json_depth = 8};
    assert_int_equal(lorad_api_server_start(&o, &quick), 0);
    srv = quick;
    int idle = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(lorad_api_server_port(srv))};
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    assert_int_equal(connect(idle, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(http("GET /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", buf, sizeof buf), 200);
    struct timeval tv = {.tv_sec = 5};
    setsockopt(idle, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    char c;
    assert_int_equal(read(idle, &c, 1), 0); /* closed by the server, not our 5 s receive timeout */
    close(idle);
    lorad_api_server_stop(quick);
    srv = saved;
}

static char file_path[] = "/tmp/lorad-dlXXXXXX";
static unsigned char file_bytes[10000];

static int handler_test_download(const struct lorad_api_request *req, struct lorad_api_reply *ret_reply) {
    (void)req;
    ret_reply->has_file = true;
    ret_reply->file_fd = open(file_path, O_RDONLY);
    ret_reply->file_size = sizeof file_bytes;
    ret_reply->status = 200;
    ret_reply->content_type = "application/x-tar";
    ret_reply->download_name = "adapter.tar";
    return ret_reply->file_fd < 0 ? -errno : 0;
}

/* Returns a pointer to the body after the blank line. */
static const char *body_of(const char *resp) {
    const char *b = strstr(resp, "\r\n\r\n");
    assert_non_null(b);
    return b + 4;
}

static void test_range_downloads(void **state) {
    (void)state;
    int fd = mkstemp(file_path);
    assert_true(fd >= 0);
    for (size_t i = 0; i < sizeof file_bytes; i++) file_bytes[i] = (unsigned char)(i * 7 + 3);
    assert_int_equal(write(fd, file_bytes, sizeof file_bytes), (ssize_t)sizeof file_bytes);
    close(fd);
    const char *route = "/v1/models/{model}/adapter.tar";
    assert_int_equal(lorad_api_set_handler("GET", route, handler_test_download), 0);
    const char *h = "GET /v1/models/m1/adapter.tar HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k1\r\nConnection: close\r\n";
    char req[512];
    static char big[20000];
    snprintf(req, sizeof req, "%s\r\n", h);
    assert_int_equal(http(req, big, sizeof big), 200);
    assert_non_null(strcasestr(big, "Content-Length: 10000\r\n"));
    assert_non_null(strcasestr(big, "Content-Disposition: attachment; filename=\"adapter.tar\""));
    assert_memory_equal(body_of(big), file_bytes, sizeof file_bytes);

    snprintf(req, sizeof req, "%sRange: bytes=100-199\r\n\r\n", h);
    assert_int_equal(http(req, big, sizeof big), 206);
    assert_non_null(strcasestr(big, "Content-Range: bytes 100-199/10000"));
    assert_memory_equal(body_of(big), file_bytes + 100, 100);

    snprintf(req, sizeof req, "%sRange: bytes=9990-\r\n\r\n", h);
    assert_int_equal(http(req, big, sizeof big), 206);
    assert_memory_equal(body_of(big), file_bytes + 9990, 10);

    snprintf(req, sizeof req, "%sRange: bytes=-5\r\n\r\n", h);
    assert_int_equal(http(req, big, sizeof big), 206);
    assert_non_null(strcasestr(big, "Content-Range: bytes 9995-9999/10000"));
    assert_memory_equal(body_of(big), file_bytes + 9995, 5);

    snprintf(req, sizeof req, "%sRange: bytes=10000-\r\n\r\n", h);
    assert_int_equal(http(req, big, sizeof big), 416);
    assert_non_null(strcasestr(big, "Content-Range: bytes */10000"));
    lorad_api_set_handler("GET", route, lorad_api_handler_not_wired);
    unlink(file_path);
}

/* Five events with seq 1..5; the first poll has nothing yet, so a keepalive goes out. The test
 * speaks HTTP/1.0 so the stream is not chunk-encoded and the framing can be read directly. */
static int fake_next_event(void *ctx, uint64_t after, uint64_t *ret_seq, char **ret_json) {
    int *polls = ctx;
    if ((*polls)++ < 2) return 0; /* with 10 ms polls and a 10 ms keepalive: one keepalive */
    if (after >= 5) return 2;
    *ret_seq = after + 1;
    return asprintf(ret_json, "{\"seq\":%llu}", (unsigned long long)(after + 1)) < 0 ? -ENOMEM : 1;
}

static int handler_test_sse(const struct lorad_api_request *req, struct lorad_api_reply *ret_reply) {
    (void)req;
    int *polls = calloc(1, sizeof *polls);
    if (!polls) return -ENOMEM;
    ret_reply->status = 200;
    ret_reply->next_event = fake_next_event;
    ret_reply->sse_ctx = polls;
    ret_reply->sse_free = free;
    return 0;
}

static void test_sse_stream(void **state) {
    (void)state;
    const char *route = "/v1/fine_tuning/jobs/{fine_tuning_job_id}/events";
    assert_int_equal(lorad_api_set_handler("GET", route, handler_test_sse), 0);
    const char *req = "GET /v1/fine_tuning/jobs/ftjob-1/events?stream=true HTTP/1.0\r\nHost: x\r\n"
                      "Authorization: Bearer k1\r\nLast-Event-ID: 2\r\nConnection: close\r\n\r\n";
    assert_int_equal(http(req, buf, sizeof buf), 200);
    assert_non_null(strcasestr(buf, "Content-Type: text/event-stream"));
    const char *k = strstr(buf, ": keepalive\n\n");
    const char *e3 = strstr(buf, "id: 3\ndata: {\"seq\":3}\n\n");
    const char *e5 = strstr(buf, "id: 5\ndata: {\"seq\":5}\n\n");
    const char *done = strstr(buf, "data: [DONE]\n\n");
    if (!(k && e3 && e5 && done)) fprintf(stderr, "%s\n", buf);
    assert_true(k && e3 && e5 && done);
    assert_true(k < e3 && e3 < e5 && e5 < done);
    assert_null(strstr(buf, "id: 2\n"));
    lorad_api_set_handler("GET", route, lorad_api_handler_not_wired);
}

/* ---- raw streams ------------------------------------------------------------------------------ */

struct fake_stream {
    int calls;
    bool endless;          /* after the first chunk, silence until the transport gives up */
    atomic_bool freed;
    struct timespec freed_at;
};
static struct fake_stream fake;

static double ms_since(const struct timespec *t0) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return 1e3 * (double)(now.tv_sec - t0->tv_sec) + 1e-6 * (double)(now.tv_nsec - t0->tv_nsec);
}

/* A chunk, then silence (the source waits its whole timeout each call), then [DONE] and the end;
 * or, endless, a chunk and then silence for ever. */
static int fake_stream_next(void *ctx, int timeout_ms, char **ret_bytes) {
    struct fake_stream *f = ctx;
    int call = f->calls++;
    if (call == 0) return (*ret_bytes = strdup("data: {\"a\":1}\n\n")) ? 1 : -ENOMEM;
    if (f->endless || call < 4) {
        usleep((useconds_t)timeout_ms * 1000u);
        return 0;
    }
    if (call == 4) return (*ret_bytes = strdup("data: [DONE]\n\n")) ? 1 : -ENOMEM;
    return 2;
}

static void fake_stream_free(void *ctx) {
    struct fake_stream *f = ctx;
    clock_gettime(CLOCK_MONOTONIC, &f->freed_at);
    atomic_store(&f->freed, true);
}

static int handler_test_stream(const struct lorad_api_request *req, struct lorad_api_reply *ret_reply) {
    (void)req;
    ret_reply->status = 200;
    ret_reply->stream_next = fake_stream_next;
    ret_reply->stream_ctx = &fake;
    ret_reply->stream_free = fake_stream_free;
    return 0;
}

static const char STREAM_REQ[] = "POST /v1/completions HTTP/1.0\r\nHost: x\r\nAuthorization: Bearer k1\r\n"
                                 "Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";

/* Bytes as the handler formatted them, keepalives in the silence, no id lines, free called once
 * the stream is over. HTTP/1.0, so the body is not chunk-encoded. */
static void test_raw_stream(void **state) {
    (void)state;
    memset(&fake, 0, sizeof fake);
    assert_int_equal(lorad_api_set_handler("POST", "/v1/completions", handler_test_stream), 0);
    assert_int_equal(http(STREAM_REQ, buf, sizeof buf), 200);
    assert_non_null(strcasestr(buf, "Content-Type: text/event-stream"));
    const char *a = strstr(buf, "data: {\"a\":1}\n\n"), *k = strstr(buf, ": keepalive\n\n");
    const char *done = strstr(buf, "data: [DONE]\n\n");
    if (!(a && k && done)) fprintf(stderr, "%s\n", buf);
    assert_true(a && k && done && a < k && k < done);
    assert_null(strstr(buf, "id:"));
    assert_true(done[strlen("data: [DONE]\n\n")] == '\0'); /* nothing after the source said 2 */
    for (int i = 0; i < 200 && !atomic_load(&fake.freed); i++) usleep(10000);
    assert_true(atomic_load(&fake.freed));
    assert_int_equal(fake.calls, 6);
    lorad_api_set_handler("POST", "/v1/completions", lorad_api_handler_not_wired);
}

/* A second server whose keepalives are a minute apart, so during the silence nothing is written
 * and only the transport's own watch can see the client go. */
static struct lorad_api_server *quiet_server(void) {
    struct lorad_api_server *s;
    struct lorad_api_server_options o = {.bind_address = "127.0.0.1", .listen_fd = -1, .max_connections = 4,
                                         .connection_timeout_s = 30, .max_request_body = 1024, .max_json_depth = 8,
                                         .sse_keepalive_ms = 60000};
    assert_int_equal(lorad_api_server_start(&o, &s), 0);
    return s;
}

/* A socket connected to s with req sent. */
static int send_request(struct lorad_api_server *s, const char *req) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(lorad_api_server_port(s))};
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(write(fd, req, strlen(req)), (ssize_t)strlen(req));
    return fd;
}

/* The quiet server with the endless fake stream on /v1/completions. */
static struct lorad_api_server *endless_stream_server(void) {
    memset(&fake, 0, sizeof fake);
    fake.endless = true;
    assert_int_equal(lorad_api_set_handler("POST", "/v1/completions", handler_test_stream), 0);
    return quiet_server();
}

/* Connects to s, sends req and reads until want has arrived. Returns the socket. */
static int open_until(struct lorad_api_server *s, const char *req, const char *want) {
    int fd = send_request(s, req);
    struct timeval tv = {.tv_sec = 5};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    size_t got = 0;
    buf[0] = '\0';
    while (!strstr(buf, want)) {
        ssize_t n = read(fd, buf + got, sizeof buf - 1 - got);
        assert_true(n > 0);
        got += (size_t)n;
        buf[got] = '\0';
    }
    return fd;
}

/* A client that hangs up while the source is silent releases the stream within the transport's
 * 100 ms watch, not at the next keepalive (a minute here) or never. */
static void test_raw_stream_hangup_frees_at_once(void **state) {
    (void)state;
    struct lorad_api_server *s = endless_stream_server();
    const char *req = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      "Content-Length: 2\r\n\r\n{}";
    int fd = open_until(s, req, "data: {\"a\":1}");
    usleep(300000); /* well into the silence */
    assert_false(atomic_load(&fake.freed));
    struct timespec closed;
    clock_gettime(CLOCK_MONOTONIC, &closed);
    close(fd);
    for (int i = 0; i < 300 && !atomic_load(&fake.freed); i++) usleep(10000);
    assert_true(atomic_load(&fake.freed));
    double ms = 1e3 * (double)(fake.freed_at.tv_sec - closed.tv_sec) + 1e-6 * (double)(fake.freed_at.tv_nsec - closed.tv_nsec);
    if (ms >= 1000) fprintf(stderr, "freed %.0f ms after the client closed\n", ms);
    assert_true(ms < 1000);
    lorad_api_server_stop(s);
    lorad_api_set_handler("POST", "/v1/completions", lorad_api_handler_not_wired);
}

/* Stopping the server ends an endless stream (stop returns, the source is released, the client
 * sees the end of the body). */
static void test_raw_stream_ends_at_stop(void **state) {
    (void)state;
    struct lorad_api_server *s = endless_stream_server();
    int fd = open_until(s, STREAM_REQ, "data: {\"a\":1}");
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    lorad_api_server_stop(s);
    assert_true(ms_since(&t0) < 2000);
    assert_true(atomic_load(&fake.freed));
    char c;
    ssize_t n;
    while ((n = read(fd, &c, 1)) > 0) {
    }
    assert_true(n == 0 || errno == ECONNRESET); /* the end of the body, not our 5 s timeout */
    close(fd);
    lorad_api_set_handler("POST", "/v1/completions", lorad_api_handler_not_wired);
}

/* A handler that waits for req->gone: the client hangs up right after its request. */
static atomic_bool gone_seen;
static int handler_test_gone(const struct lorad_api_request *req, struct lorad_api_reply *ret_reply) {
    for (int i = 0; i < 500 && !(req->gone && req->gone(req)); i++) usleep(10000);
    atomic_store(&gone_seen, req->gone && req->gone(req));
    return lorad_api_reply_error(ret_reply, 503, "abandoned", NULL, NULL);
}

static void test_request_gone(void **state) {
    (void)state;
    atomic_store(&gone_seen, false);
    assert_int_equal(lorad_api_set_handler("POST", "/v1/chat/completions", handler_test_gone), 0);
    int fd = send_request(srv, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k1\r\n"
                               "Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}");
    usleep(200000);
    assert_false(atomic_load(&gone_seen)); /* still connected: not gone */
    close(fd);
    for (int i = 0; i < 200 && !atomic_load(&gone_seen); i++) usleep(10000);
    assert_true(atomic_load(&gone_seen));
    lorad_api_set_handler("POST", "/v1/chat/completions", lorad_api_handler_not_wired);
}

/* Retry-After goes out with a JSON reply that sets retry_after_s. */
static int handler_test_retry(const struct lorad_api_request *req, struct lorad_api_reply *ret_reply) {
    (void)req;
    lorad_api_reply_error(ret_reply, 429, "busy", NULL, "rate_limit_exceeded");
    ret_reply->retry_after_s = 3;
    return 0;
}

static void test_retry_after(void **state) {
    (void)state;
    assert_int_equal(lorad_api_set_handler("POST", "/v1/completions", handler_test_retry), 0);
    assert_int_equal(http(STREAM_REQ, buf, sizeof buf), 429);
    assert_non_null(strcasestr(buf, "\r\nRetry-After: 3\r\n"));
    assert_non_null(strstr(buf, "\"type\":\"rate_limit_error\""));
    lorad_api_set_handler("POST", "/v1/completions", lorad_api_handler_not_wired);
    assert_int_equal(http(STREAM_REQ, buf, sizeof buf), 503);
    assert_null(strcasestr(buf, "Retry-After"));
}

static int handler_test_upload(const struct lorad_api_request *req, struct lorad_api_reply *ret_reply) {
    const struct lorad_api_upload *u = req->upload;
    if (!u) return -EINVAL;
    struct stat stb;
    if (stat(u->temp_path, &stb) < 0 || (uint64_t)stb.st_size != u->bytes) return -EIO;
    ret_reply->status = 200;
    ret_reply->json = json_pack("{s:s,s:I,s:s,s:s}", "sha256", u->sha256_hex, "bytes", (json_int_t)u->bytes,
                                "filename", u->filename, "purpose", u->purpose);
    return 0;
}

/* sha256sum of data, via the coreutils tool as the independent reference. */
static void reference_sha256(const char *data, size_t n, char hex[65]) {
    char path[] = "/tmp/lorad-refXXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, data, n), (ssize_t)n);
    close(fd);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "sha256sum %s", path);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    assert_int_equal(fscanf(p, "%64s", hex), 1);
    pclose(p);
    unlink(path);
}

static void test_uploads(void **state) {
    (void)state;
    assert_int_equal(lorad_api_set_handler("POST", "/v1/files", handler_test_upload), 0);
    static char data[3000], req[8192], expect[65], line[256];
    for (size_t i = 0; i < sizeof data; i++) data[i] = (char)('a' + i % 26);
    data[100] = '\n';
    reference_sha256(data, sizeof data, expect);

    int n = snprintf(req, sizeof req, "POST /v1/files?filename=train.jsonl HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k1\r\n"
                                     "Content-Type: application/octet-stream\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n", sizeof data);
    memcpy(req + n, data, sizeof data);
    req[n + sizeof data] = '\0';
    assert_int_equal(http(req, buf, sizeof buf), 200);
    snprintf(line, sizeof line, "\"sha256\":\"%s\"", expect);
    assert_non_null(strstr(buf, line));
    assert_non_null(strstr(buf, "\"bytes\":3000"));
    assert_non_null(strstr(buf, "\"filename\":\"train.jsonl\""));

    const char *bd = "XyZbOuNdArY";
    char head[512], tail[128];
    int hn = snprintf(head, sizeof head, "--%s\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nfine-tune\r\n"
                                         "--%s\r\nContent-Disposition: form-data; name=\"file\"; filename=\"mp.jsonl\"\r\n"
                                         "Content-Type: application/octet-stream\r\n\r\n", bd, bd);
    int tn = snprintf(tail, sizeof tail, "\r\n--%s--\r\n", bd);
    n = snprintf(req, sizeof req, "POST /v1/files HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k1\r\n"
                                  "Content-Type: multipart/form-data; boundary=%s\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n%s",
                 bd, (size_t)hn + sizeof data + (size_t)tn, head);
    memcpy(req + n, data, sizeof data);
    memcpy(req + n + sizeof data, tail, (size_t)tn + 1);
    assert_int_equal(http(req, buf, sizeof buf), 200);
    assert_non_null(strstr(buf, line));
    assert_non_null(strstr(buf, "\"filename\":\"mp.jsonl\""));
    assert_non_null(strstr(buf, "\"purpose\":\"fine-tune\""));

    /* An epilogue after the close delimiter (RFC 2046 5.1.1) is ignored: the OpenAI Node SDK ends
     * its bodies with "--BOUNDARY--\r\n\r\n", and text may follow too. */
    const char *epilogues[] = {"\r\n", "\r\nthe epilogue, ignored\r\n"};
    for (size_t e = 0; e < sizeof epilogues / sizeof epilogues[0]; e++) {
        tn = snprintf(tail, sizeof tail, "\r\n--%s--\r\n%s", bd, epilogues[e]);
        n = snprintf(req, sizeof req, "POST /v1/files HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k1\r\n"
                                      "Content-Type: multipart/form-data; boundary=\"%s\"\r\nContent-Length: %zu\r\n"
                                      "Connection: close\r\n\r\n%s",
                     bd, (size_t)hn + sizeof data + (size_t)tn, head);
        memcpy(req + n, data, sizeof data);
        memcpy(req + n + sizeof data, tail, (size_t)tn + 1);
        assert_int_equal(http(req, buf, sizeof buf), 200);
        assert_non_null(strstr(buf, line));
    }

    /* max_upload_bytes is 4096 in setup(): a 5000-byte declared body is refused. */
    snprintf(req, sizeof req, "POST /v1/files?filename=x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k1\r\n"
                              "Content-Length: 5000\r\nConnection: close\r\n\r\n");
    assert_int_equal(http(req, buf, sizeof buf), 413);
    lorad_api_set_handler("POST", "/v1/files", lorad_api_handler_not_wired);
}

static char key_path[] = "/tmp/lorad-keysXXXXXX";

/* SIGHUP path: new keys take effect, old ones stop working, a missing file keeps the old set. */
static void test_key_reload(void **state) {
    (void)state;
    FILE *f = fopen(key_path, "w");
    assert_non_null(f);
    fputs("fresh\n", f);
    fclose(f);
    assert_int_equal(lorad_api_keys_reload(keys, NULL), 0);
    assert_int_equal(http("GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k1\r\nConnection: close\r\n\r\n", buf, sizeof buf), 403);
    assert_int_equal(http("GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer fresh\r\nConnection: close\r\n\r\n", buf, sizeof buf), 200);
    unlink(key_path);
    assert_true(lorad_api_keys_reload(keys, NULL) < 0);
    assert_int_equal(http("GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer fresh\r\nConnection: close\r\n\r\n", buf, sizeof buf), 200);
}

/* SIGHUP with a changed api_key_file: another file's keys replace the old ones, "" turns auth
 * off, an unreadable file keeps what was there; a second server borrowing the same holder (a
 * second listener) sees each change too. Runs last: it leaves auth on with "other". */
static void test_key_file_switch(void **state) {
    (void)state;
    char other[] = "/tmp/lorad-keys2XXXXXX";
    int fd = mkstemp(other);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "other\n", 6), 6);
    close(fd);
    const char *get = "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    const char *get_other = "GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer other\r\nConnection: close\r\n\r\n";
    struct lorad_api_server *first = srv, *second = NULL;
    struct lorad_api_server_options o = {.bind_address = "127.0.0.1", .listen_fd = -1, .max_connections = 4,
                                         .connection_timeout_s = 5, .max_request_body = 1024, .max_json_depth = 8,
                                         .keys = keys};
    assert_int_equal(lorad_api_server_start(&o, &second), 0);
    struct lorad_api_server *both[] = {first, second};
    assert_int_equal(lorad_api_keys_use_file(keys, other, NULL), 0);
    for (int i = 0; i < 2; i++) {
        srv = both[i];
        assert_int_equal(http(get_other, buf, sizeof buf), 200);
        assert_int_equal(http(get, buf, sizeof buf), 401);
    }
    assert_int_equal(lorad_api_keys_use_file(keys, "", NULL), 0);
    for (int i = 0; i < 2; i++) {
        srv = both[i];
        assert_int_equal(http(get, buf, sizeof buf), 200);
    }
    assert_int_equal(lorad_api_keys_reload(keys, NULL), 0); /* no file: stays open */
    assert_int_equal(http(get, buf, sizeof buf), 200);
    assert_int_equal(lorad_api_keys_use_file(keys, other, NULL), 0);
    assert_int_equal(lorad_api_keys_use_file(keys, "/nonexistent/lorad-keys", NULL), -ENOENT);
    for (int i = 0; i < 2; i++) {
        srv = both[i];
        assert_int_equal(http(get_other, buf, sizeof buf), 200);
        assert_int_equal(http(get, buf, sizeof buf), 401);
    }
    assert_int_equal(lorad_api_keys_reload(keys, NULL), 0); /* still the file that worked */
    assert_int_equal(http(get_other, buf, sizeof buf), 200);
    srv = first;
    lorad_api_server_stop(second);
    unlink(other);
}

static int setup(void **state) {
    (void)state;
    char *path = key_path;
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    const char *text = "# comment\nk1\n  k2  \n";
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    assert_int_equal(lorad_api_keys_open(path, &keys, NULL), 0);
    struct lorad_api_server_options o = {.bind_address = "127.0.0.1", .port = 0, .listen_fd = -1,
                                         .max_connections = 8, .connection_timeout_s = 5,
                                         .max_request_body = 1024, .max_json_depth = 32, .keys = keys,
                                         .sse_poll_ms = 10, .sse_keepalive_ms = 10,
                                         .max_upload_bytes = 4096};
    int r = lorad_api_server_start(&o, &srv);
    assert_int_equal(r, 0);
    assert_true(lorad_api_server_port(srv) > 0);
    return 0;
}

static int teardown(void **state) {
    (void)state;
    lorad_api_server_stop(srv);
    lorad_api_keys_free(keys);
    return 0;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_routing_and_errors),
        cmocka_unit_test(test_json_bodies),
        cmocka_unit_test(test_idle_client_times_out),
        cmocka_unit_test(test_range_downloads),
        cmocka_unit_test(test_sse_stream),
        cmocka_unit_test(test_raw_stream),
        cmocka_unit_test(test_raw_stream_hangup_frees_at_once),
        cmocka_unit_test(test_raw_stream_ends_at_stop),
        cmocka_unit_test(test_request_gone),
        cmocka_unit_test(test_retry_after),
        cmocka_unit_test(test_uploads),
        cmocka_unit_test(test_key_reload),
        cmocka_unit_test(test_key_file_switch),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
