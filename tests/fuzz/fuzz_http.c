/* Whole HTTP requests against the real transport (libmicrohttpd plus lorad's request state: route
 * lookup, header limits, JSON depth prescan, the multipart upload scanner and its close-delimiter
 * matching), started once in this process on a loopback port. The input's first byte picks the
 * route and framing; the rest is the request body, sent as a multipart upload to /v1/files or as a
 * JSON body to the job and completion routes; the reply is read and dropped. Handlers are the
 * route table's own (not wired to a store, so 503 after the transport has done its part). */
#include <arpa/inet.h>
#include <stdbool.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/time.h>

#include "fuzz_common.h"
#include "server.h"

static struct lorad_api_server *server;
static uint16_t port;

static void start(void) {
    signal(SIGPIPE, SIG_IGN); /* as lorad serve does: a client gone mid-reply is not a crash */
    struct lorad_api_server_options o = {.bind_address = "127.0.0.1", .listen_fd = -1, .max_connections = 16,
                                         .connection_timeout_s = 5, .max_request_body = 1 << 20,
                                         .max_upload_bytes = 1 << 20, .max_json_depth = 64};
    if (lorad_api_server_start(&o, &server) != 0) abort();
    port = lorad_api_server_port(server);
}

static void send_all(int fd, const void *p, size_t n) {
    const char *c = p;
    while (n) {
        ssize_t w = send(fd, c, n, MSG_NOSIGNAL);
        if (w <= 0) return; /* the server may close early (413): not a finding */
        c += w, n -= (size_t)w;
    }
}

/* A connection to the server, retried while it is refused (its connection limit, a busy accept
 * queue), as a client would; aborts only when the server is gone. Closing it sends RST (linger 0),
 * which leaves no TIME_WAIT behind: thousands of inputs a second would otherwise use up the
 * ephemeral ports. */
static int connect_to_server(void) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    for (int tries = 0; tries < 200; tries++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0) abort();
        struct timeval tv = {2, 0};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        struct linger lg = {1, 0};
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0) return fd;
        close(fd);
        usleep(10000);
    }
    abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!server) start();
    if (size < 1) return 0;
    static const char *const paths[] = {"/v1/files", "/v1/fine_tuning/jobs", "/v1/chat/completions", "/v1/completions"};
    int route = data[0] & 3;
    bool chunked = data[0] & 4, boundary_quoted = data[0] & 8;
    data++, size--;
    int fd = connect_to_server();
    char head[512];
    const char *ctype = route == 0 ? (boundary_quoted ? "multipart/form-data; boundary=\"XyZ\"" : "multipart/form-data; boundary=XyZ")
                                   : "application/json";
    int n = chunked ? snprintf(head, sizeof head, "POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: %s\r\n"
                                                  "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n", paths[route], ctype)
                    : snprintf(head, sizeof head, "POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: %s\r\n"
                                                  "Content-Length: %zu\r\nConnection: close\r\n\r\n", paths[route], ctype, size);
    send_all(fd, head, (size_t)n);
    if (chunked) {
        /* the body in chunks of up to 97 bytes, so boundaries fall inside delimiters */
        for (size_t off = 0; off < size; off += 97) {
            size_t k = size - off < 97 ? size - off : 97;
            n = snprintf(head, sizeof head, "%zx\r\n", k);
            send_all(fd, head, (size_t)n);
            send_all(fd, data + off, k);
            send_all(fd, "\r\n", 2);
        }
        send_all(fd, "0\r\n\r\n", 5);
    } else {
        send_all(fd, data, size);
    }
    char buf[4096];
    while (recv(fd, buf, sizeof buf, 0) > 0) {
    }
    close(fd);
    return 0;
}
