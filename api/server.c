#include "server.h"

#include <errno.h>
#include <arpa/inet.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "api_keys.h"
#include "api_metrics.h"
#include "sha256.h"
#include "api_error.h"
#include "routes.h"

struct lorad_api_server {
    struct MHD_Daemon *mhd;
    struct lorad_api_server_options opt;
    atomic_bool stopping; /* read by SSE streams on their own threads so a stop does not wait for them */
};

/* Per-request state across MHD's access-handler calls. */
struct request_state {
    const struct lorad_api_route *route;
    struct lorad_route_params params;
    char *body;
    size_t body_len;
    bool too_large;
    unsigned status;
    char method[8];
    /* uploads */
    int upload_fd;
    struct MHD_PostProcessor *pp;
    char close_delim[80];   /* "\r\n--BOUNDARY--" of a multipart body; "" when not known */
    size_t close_matched;   /* bytes of close_delim (then its CRLF) matched at the end of the data so far */
    bool epilogue;          /* the close delimiter went by: the rest of the body is the epilogue */
    struct lorad_sha256 sha;
    struct lorad_api_upload up;
    bool upload_failed, saw_file;
    int upload_errno;       /* what failed the upload's write (ENOSPC: the disk is full), 0 if not a write */
    struct lorad_api_server *server;
    struct timespec started;
};

static int hex_value(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* MHD's percent-decoding of paths and query arguments, in place, except that "%00" stays as it
 * is: decoded, a NUL would cut the string every handler sees short ("/ui/index.html%00.png" would
 * read as "/ui/index.html"), so a client could make one name pass for another. Returns the new
 * length. */
static size_t unescape_keeping_nul(void *cls, struct MHD_Connection *c, char *s) {
    (void)cls, (void)c;
    char *out = s;
    for (const char *p = s; *p;) {
        int hi, lo;
        if (p[0] == '%' && (hi = hex_value(p[1])) >= 0 && (lo = hex_value(p[2])) >= 0 && (hi | lo) != 0) {
            *out++ = (char)(hi * 16 + lo);
            p += 3;
        } else {
            *out++ = *p++;
        }
    }
    *out = '\0';
    return (size_t)(out - s);
}

/* The dashboard's page headers (lorad_api_reply.page). The policy lets the page load only this
 * origin's own files and talk only to this origin's API, so an injected string can run nothing and
 * send nothing elsewhere; no inline script or style is allowed, which web/ is written for. The
 * files change with the binary, so the browser revalidates rather than caching a stale page. */
static void add_page_headers(struct MHD_Response *resp) {
    MHD_add_response_header(resp, "Content-Security-Policy",
                            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                            "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; "
                            "frame-ancestors 'none'");
    MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff");
    MHD_add_response_header(resp, "X-Frame-Options", "DENY");
    MHD_add_response_header(resp, "Referrer-Policy", "no-referrer");
    MHD_add_response_header(resp, "Cache-Control", "no-cache");
}

/* Sends body (stolen) as the JSON reply, with an Allow header when allow is set and Retry-After
 * when retry_after_s > 0. */
static enum MHD_Result send_json(struct request_state *st, struct MHD_Connection *c, unsigned status, json_t *body, const char *allow,
                                 unsigned retry_after_s) {
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    json_decref(body);
    if (!text) text = strdup("{\"error\":{\"message\":\"out of memory\",\"type\":\"server_error\",\"param\":null,\"code\":null}}");
    if (!text) return MHD_NO;
    struct MHD_Response *resp = MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE);
    if (!resp) {
        free(text);
        return MHD_NO;
    }
    MHD_add_response_header(resp, "Content-Type", "application/json");
    if (allow) MHD_add_response_header(resp, "Allow", allow);
    if (retry_after_s) {
        char ra[16];
        snprintf(ra, sizeof ra, "%u", retry_after_s);
        MHD_add_response_header(resp, "Retry-After", ra);
    }
    st->status = status;
    enum MHD_Result ret = MHD_queue_response(c, status, resp);
    MHD_destroy_response(resp);
    return ret;
}

/* The one error reply of the transport. */
static enum MHD_Result send_error(struct request_state *st, struct MHD_Connection *c, unsigned status, const char *message, const char *param,
                                  const char *code, const char *allow) {
    return send_json(st, c, status, lorad_api_error_body(status, message, param, code), allow, 0);
}

/* Bracket nesting of the raw text, outside strings: refuses too-deep input before jansson
 * recurses into it. */
static unsigned prescan_depth(const char *s, size_t n) {
    unsigned d = 0, max = 0;
    bool in_str = false;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (in_str) {
            if (ch == '\\') i++;
            else if (ch == '"') in_str = false;
        } else if (ch == '"') in_str = true;
        else if (ch == '{' || ch == '[') {
            if (++d > max) max = d;
        } else if ((ch == '}' || ch == ']') && d) d--;
    }
    return max;
}


static const char *req_query(const struct lorad_api_request *r, const char *name) {
    return MHD_lookup_connection_value(r->transport, MHD_GET_ARGUMENT_KIND, name);
}
static const char *req_header(const struct lorad_api_request *r, const char *name) {
    return MHD_lookup_connection_value(r->transport, MHD_HEADER_KIND, name);
}

/* The connection's socket, or -1 when MHD does not say. */
static int connection_fd(struct MHD_Connection *c) {
    const union MHD_ConnectionInfo *i = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    return i ? (int)i->connect_fd : -1;
}

/* Whether the client has closed its end (or shut it down for writing: an HTTP/1.1 client waiting
 * for its answer does neither). Never reads: only MHD reads the socket, and the bytes of a
 * pipelined request must stay for it. */
static bool client_hung_up(int fd) {
    if (fd < 0) return false;
    struct pollfd p = {.fd = fd, .events = POLLRDHUP};
    return poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL));
}

static bool req_gone(const struct lorad_api_request *r) {
    const struct request_state *st = r->transport_state;
    return atomic_load(&st->server->stopping) || client_hung_up(connection_fd(r->transport));
}

static enum MHD_Result send_file(struct request_state *st, struct MHD_Connection *c, const struct lorad_api_reply *rp);
static enum MHD_Result send_sse(struct lorad_api_server *s, struct request_state *st, struct MHD_Connection *c,
                                const struct lorad_api_reply *rp);
static enum MHD_Result send_stream(struct lorad_api_server *s, struct request_state *st, struct MHD_Connection *c,
                                   const struct lorad_api_reply *rp);

static void upload_write(struct lorad_api_server *s, struct request_state *st, const char *data, size_t n) {
    if (st->too_large || st->upload_failed) return;
    if (st->up.bytes + n > s->opt.max_upload_bytes) {
        st->too_large = true;
        return;
    }
    for (size_t off = 0; off < n;) {
        ssize_t w = write(st->upload_fd, data + off, n - off);
        if (w < 0) {
            if (errno == EINTR) continue;
            st->upload_failed = true;
            st->upload_errno = errno;
            return;
        }
        off += (size_t)w;
    }
    lorad_sha256_update(&st->sha, data, n);
    st->up.bytes += n;
}

static enum MHD_Result multipart_field(void *cls, enum MHD_ValueKind kind, const char *key, const char *filename,
                                       const char *content_type, const char *transfer_encoding, const char *data,
                                       uint64_t off, size_t size) {
    (void)kind, (void)content_type, (void)transfer_encoding, (void)off;
    struct request_state *st = cls;
    /* a part whose Content-Disposition has no name reaches here with key NULL (found by fuzz_http:
     * strcmp on it crashed the daemon); such a part is neither field, so it is skipped */
    if (!key) return MHD_YES;
    if (strcmp(key, "file") == 0) {
        st->saw_file = true;
        if (filename && !st->up.filename[0]) snprintf(st->up.filename, sizeof st->up.filename, "%s", filename);
        upload_write(st->server, st, data, size);
    } else if (strcmp(key, "purpose") == 0) {
        size_t used = strlen(st->up.purpose);
        if (used + size < sizeof st->up.purpose) {
            memcpy(st->up.purpose + used, data, size);
            st->up.purpose[used + size] = '\0';
        }
    }
    return MHD_YES;
}

/* The close delimiter of the multipart body whose Content-Type is ct, into out ("" when the
 * boundary is missing or longer than RFC 2046's 70 characters). */
static void multipart_close_delim(const char *ct, char *out, size_t cap) {
    out[0] = '\0';
    const char *b = strcasestr(ct, "boundary=");
    if (!b) return;
    b += 9;
    size_t n;
    if (*b == '"') {
        b++;
        n = strcspn(b, "\"");
    } else {
        n = strcspn(b, "; \t");
    }
    if (n == 0 || n > 70 || n + 7 >= cap) return;
    snprintf(out, cap, "\r\n--%.*s--", (int)n, b);
}

/* How many bytes of data come before the multipart epilogue. RFC 2046 5.1.1 lets a body go on after
 * its close delimiter (an epilogue the receiver ignores), and some clients send one: the OpenAI
 * Node SDK ends its bodies with "--BOUNDARY--\r\n\r\n". libmicrohttpd's post processor fails on
 * any byte after the delimiter's CRLF, so only the bytes up to there are fed to it. Matches the
 * delimiter across calls; no prefix of it recurs inside it ('\r' only starts it), so a mismatch
 * restarts at 0, or at 1 on a '\r'. */
static size_t multipart_body_len(struct request_state *st, const char *data, size_t n) {
    size_t plen = strlen(st->close_delim);
    if (!plen) return n;
    for (size_t i = 0; i < n; i++) {
        char ch = data[i];
        if (st->close_matched < plen) {
            if (ch == st->close_delim[st->close_matched]) st->close_matched++;
            else st->close_matched = ch == '\r' ? 1 : 0;
        } else if (st->close_matched == plen && ch == '\r') {
            st->close_matched++;
        } else if (st->close_matched == plen + 1 && ch == '\n') {
            st->epilogue = true;
            return i + 1;
        } else {
            st->epilogue = true;
            return i;
        }
    }
    return n;
}

static enum MHD_Result access_handler(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                      const char *version, const char *upload_data, size_t *upload_data_size,
                                      void **con_cls) {
    (void)version;
    struct lorad_api_server *s = cls;
    struct request_state *st = *con_cls;
    if (!st) {
        st = calloc(1, sizeof *st);
        if (!st) return MHD_NO;
        *con_cls = st;
        st->upload_fd = -1;
        st->server = s;
        clock_gettime(CLOCK_MONOTONIC, &st->started);
        snprintf(st->method, sizeof st->method, "%s", method);
        unsigned status = 0;
        char allow[64];
        st->route = lorad_api_route_lookup(method, url, &st->params, &status, allow, sizeof allow);
        if (!st->route)
            return status == 405 ? send_error(st, c, 405, "method not allowed on this path", NULL, "method_not_allowed", allow)
                                 : send_error(st, c, 404, "no such route", NULL, "not_found", NULL);
        if (!st->route->public_route) {
            unsigned verdict =
                lorad_api_keys_verdict(s->opt.keys, MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization"));
            if (verdict == 401) return send_error(st, c, 401, "missing bearer token (Authorization: Bearer KEY)", NULL, "missing_api_key", NULL);
            if (verdict == 403) return send_error(st, c, 403, "invalid API key", NULL, "invalid_api_key", NULL);
        }
        if (st->route->body == LORAD_BODY_UPLOAD) {
            const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length");
            if (cl && strtoull(cl, NULL, 10) > s->opt.max_upload_bytes)
                return send_error(st, c, 413, "upload larger than max_upload_bytes", "file", "file_too_large", NULL);
            const char *ct = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Type");
            if (ct && strncasecmp(ct, "multipart/form-data", 19) == 0) {
                st->pp = MHD_create_post_processor(c, 65536, multipart_field, st);
                multipart_close_delim(ct, st->close_delim, sizeof st->close_delim);
                if (!st->pp) return send_error(st, c, 400, "malformed multipart/form-data header", NULL, "invalid_multipart", NULL);
            } else {
                const char *fn = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "filename");
                if (!fn || !*fn)
                    return send_error(st, c, 400, "raw uploads need ?filename=; or send multipart/form-data", "filename", "missing_filename", NULL);
                const char *purpose = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "purpose");
                snprintf(st->up.filename, sizeof st->up.filename, "%s", fn);
                snprintf(st->up.purpose, sizeof st->up.purpose, "%s", purpose ? purpose : "fine-tune");
                st->saw_file = true;
            }
            snprintf(st->up.temp_path, sizeof st->up.temp_path, "%s/lorad-upload-XXXXXX",
                     s->opt.upload_dir ? s->opt.upload_dir : "/tmp");
            st->upload_fd = mkstemp(st->up.temp_path);
            if (st->upload_fd < 0) {
                st->up.temp_path[0] = '\0';
                return send_error(st, c, 503, "cannot create a temporary upload file", NULL, "upload_dir", NULL);
            }
            lorad_sha256_init(&st->sha);
        }
        if (st->route->body == LORAD_BODY_JSON) {
            const char *ct = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Type");
            if (!ct || strncasecmp(ct, "application/json", 16) != 0)
                return send_error(st, c, 415, "Content-Type must be application/json", NULL, "unsupported_media_type", NULL);
            const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length");
            if (cl && strtoull(cl, NULL, 10) > s->opt.max_request_body)
                return send_error(st, c, 413, "request body too large", NULL, "body_too_large", NULL);
        }
        return MHD_YES;
    }
    if (*upload_data_size) {
        if (st->route->body == LORAD_BODY_JSON && !st->too_large) {
            if (st->body_len + *upload_data_size > s->opt.max_request_body) {
                st->too_large = true;
                free(st->body);
                st->body = NULL;
            } else {
                char *nb = realloc(st->body, st->body_len + *upload_data_size + 1);
                if (!nb) return MHD_NO;
                st->body = nb;
                memcpy(st->body + st->body_len, upload_data, *upload_data_size);
                st->body_len += *upload_data_size;
            }
        }
        if (st->route->body == LORAD_BODY_UPLOAD) {
            if (st->pp) {
                size_t n = st->epilogue ? 0 : multipart_body_len(st, upload_data, *upload_data_size);
                if (n && MHD_post_process(st->pp, upload_data, n) != MHD_YES) st->upload_failed = true;
            } else {
                upload_write(s, st, upload_data, *upload_data_size);
            }
        }
        *upload_data_size = 0; /* bodies of other routes are ignored */
        return MHD_YES;
    }
    struct lorad_api_request req = {.app = s->opt.app, .method = method, .path = url,
                                    .route_template = st->route->path, .params = st->params,
                                    .query = req_query, .header = req_header, .gone = req_gone, .transport = c,
                                    .transport_state = st};
    json_t *body = NULL;
    if (st->route->body == LORAD_BODY_JSON) {
        if (st->too_large) return send_error(st, c, 413, "request body too large", NULL, "body_too_large", NULL);
        if (prescan_depth(st->body ? st->body : "", st->body_len) > s->opt.max_json_depth)
            return send_error(st, c, 400, "JSON nested too deeply", NULL, "json_too_deep", NULL);
        json_error_t jerr;
        body = json_loadb(st->body ? st->body : "", st->body_len, JSON_REJECT_DUPLICATES, &jerr);
        if (!body) {
            char msg[256];
            snprintf(msg, sizeof msg, "invalid JSON at line %d column %d: %s", jerr.line, jerr.column, jerr.text);
            return send_error(st, c, 400, msg, NULL, "invalid_json", NULL);
        }
        req.json_body = body;
    }
    if (st->route->body == LORAD_BODY_UPLOAD) {
        if (st->too_large) return send_error(st, c, 413, "upload larger than max_upload_bytes", "file", "file_too_large", NULL);
        if (st->upload_failed && (st->upload_errno == ENOSPC || st->upload_errno == EDQUOT))
            return send_error(st, c, 503, "cannot store the upload: no space left on the state directory's disk", NULL,
                              "disk_full", NULL);
        if (st->upload_failed || !st->saw_file)
            return send_error(st, c, 400, st->saw_file ? "upload could not be read or stored" : "multipart body has no 'file' field",
                              "file", "invalid_upload", NULL);
        if (fsync(st->upload_fd) < 0)
            return send_error(st, c, 503, "cannot store the upload", NULL,
                              errno == ENOSPC || errno == EDQUOT ? "disk_full" : NULL, NULL);
        uint8_t digest[32];
        lorad_sha256_final(&st->sha, digest);
        lorad_sha256_hex(digest, st->up.sha256_hex);
        req.upload = &st->up;
    }
    struct lorad_api_reply reply = {0};
    int r = st->route->handler(&req, &reply);
    json_decref(body);
    if (r < 0) {
        json_decref(reply.json);
        free(reply.text);
        if (reply.stream_next && reply.stream_free) reply.stream_free(reply.stream_ctx);
        return send_error(st, c, 500, "internal error", NULL, NULL, NULL);
    }
    if (reply.stream_next) {
        json_decref(reply.json);
        free(reply.text);
        return send_stream(s, st, c, &reply);
    }
    if (reply.next_event) {
        json_decref(reply.json);
        free(reply.text);
        return send_sse(s, st, c, &reply);
    }
    if (reply.has_file) {
        json_decref(reply.json);
        free(reply.text);
        return send_file(st, c, &reply);
    }
    if (reply.static_body) {
        json_decref(reply.json);
        free(reply.text);
        struct MHD_Response *resp =
            MHD_create_response_from_buffer(reply.static_len, (void *)reply.static_body, MHD_RESPMEM_PERSISTENT);
        if (!resp) return MHD_NO;
        MHD_add_response_header(resp, "Content-Type", reply.content_type ? reply.content_type : "application/octet-stream");
        if (reply.page) add_page_headers(resp);
        st->status = reply.status;
        enum MHD_Result ret = MHD_queue_response(c, reply.status, resp);
        MHD_destroy_response(resp);
        return ret;
    }
    if (reply.text) {
        struct MHD_Response *resp = MHD_create_response_from_buffer(reply.text_len, reply.text, MHD_RESPMEM_MUST_FREE);
        if (!resp) return MHD_NO;
        MHD_add_response_header(resp, "Content-Type", reply.content_type ? reply.content_type : "text/plain");
        st->status = reply.status;
        enum MHD_Result ret = MHD_queue_response(c, reply.status, resp);
        MHD_destroy_response(resp);
        return ret;
    }
    return send_json(st, c, reply.status ? reply.status : 200, reply.json, NULL, reply.retry_after_s);
}

/* Parses a single "bytes=" range against size. Returns 1 with [*first, *last] for a satisfiable
 * range, 0 when the header should be ignored (absent, malformed, multi-range), -1 when
 * unsatisfiable. */
static int parse_range(const char *h, uint64_t size, uint64_t *first, uint64_t *last) {
    if (!h || strncmp(h, "bytes=", 6) != 0 || strchr(h, ',')) return 0;
    const char *p = h + 6;
    char *end;
    if (*p == '-') {
        if (p[1] < '0' || p[1] > '9') return 0;
        unsigned long long n = strtoull(p + 1, &end, 10);
        if (*end) return 0;
        if (n == 0 || size == 0) return -1;
        *first = n >= size ? 0 : size - n;
        *last = size - 1;
        return 1;
    }
    if (*p < '0' || *p > '9') return 0;
    unsigned long long a = strtoull(p, &end, 10);
    if (*end != '-') return 0;
    unsigned long long b = size ? size - 1 : 0;
    if (end[1]) {
        if (end[1] < '0' || end[1] > '9') return 0;
        b = strtoull(end + 1, &end, 10);
        if (*end) return 0;
        if (b < a) return 0;
        if (b >= size) b = size - 1;
    }
    if (a >= size) return -1;
    *first = a;
    *last = b;
    return 1;
}

static enum MHD_Result send_file(struct request_state *st, struct MHD_Connection *c, const struct lorad_api_reply *rp) {
    uint64_t first = 0, last = rp->file_size ? rp->file_size - 1 : 0;
    int range = parse_range(MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Range"), rp->file_size, &first, &last);
    if (range < 0) {
        close(rp->file_fd);
        char cr[64];
        snprintf(cr, sizeof cr, "bytes */%llu", (unsigned long long)rp->file_size);
        json_t *b = lorad_api_error_body(416, "range not satisfiable", "Range", "range_not_satisfiable");
        char *text = b ? json_dumps(b, JSON_COMPACT) : NULL;
        json_decref(b);
        if (!text) return MHD_NO;
        struct MHD_Response *r = MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE);
        if (!r) {
            free(text);
            return MHD_NO;
        }
        MHD_add_response_header(r, "Content-Type", "application/json");
        MHD_add_response_header(r, "Content-Range", cr);
        st->status = 416;
        enum MHD_Result ret = MHD_queue_response(c, 416, r);
        MHD_destroy_response(r);
        return ret;
    }
    uint64_t len = rp->file_size ? last - first + 1 : 0;
    struct MHD_Response *r = MHD_create_response_from_fd_at_offset64(len, rp->file_fd, first);
    if (!r) {
        close(rp->file_fd);
        return MHD_NO;
    }
    MHD_add_response_header(r, "Content-Type", rp->content_type ? rp->content_type : "application/octet-stream");
    MHD_add_response_header(r, "Accept-Ranges", "bytes");
    if (rp->download_name) {
        char cd[512];
        snprintf(cd, sizeof cd, "attachment; filename=\"%s\"", rp->download_name);
        MHD_add_response_header(r, "Content-Disposition", cd);
    }
    unsigned status = 200;
    if (range > 0) {
        char cr[96];
        snprintf(cr, sizeof cr, "bytes %llu-%llu/%llu", (unsigned long long)first, (unsigned long long)last,
                 (unsigned long long)rp->file_size);
        MHD_add_response_header(r, "Content-Range", cr);
        status = 206;
    }
    st->status = status;
    enum MHD_Result ret = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ret;
}

/* The longest a stop or a client's hang-up waits to be noticed while a stream's source is silent. */
#define STREAM_SLICE_MS 100u

static double mono_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return 1e3 * (double)ts.tv_sec + 1e-6 * (double)ts.tv_nsec;
}

/* A stream on the wire: a source's bytes as they come, keepalives in between. Both reply kinds
 * (raw streams and SSE event sources, the latter through sse_source below) go out through it, so
 * both end at a stop or a hang-up alike. */
struct out_stream {
    struct lorad_api_server *server;
    lorad_api_stream_next_fn next;
    void *ctx;
    void (*ctx_free)(void *);
    int fd;        /* the connection's socket, watched for a hang-up while the source is silent */
    char *pending; /* bytes not yet handed to MHD */
    size_t pending_len, pending_off;
    bool done;
};

static void out_set_pending(struct out_stream *os, char *bytes) {
    free(os->pending);
    os->pending = bytes;
    os->pending_len = bytes ? strlen(bytes) : 0;
    os->pending_off = 0;
}

/* MHD content reader, run on the connection's own thread: it blocks in the source for at most a
 * slice at a time, so a stop or a hung-up client ends the stream within the slice (MHD then
 * destroys the response, whose free callback releases the source at once). A hang-up ends it as an
 * end of stream, not an error: the bytes have nowhere to go either way. */
static ssize_t out_read(void *cls, uint64_t pos, char *buf, size_t max) {
    (void)pos;
    struct out_stream *os = cls;
    unsigned keepalive_ms = os->server->opt.sse_keepalive_ms ? os->server->opt.sse_keepalive_ms : 15000;
    unsigned slice_ms = os->server->opt.sse_poll_ms && os->server->opt.sse_poll_ms < STREAM_SLICE_MS
                            ? os->server->opt.sse_poll_ms
                            : STREAM_SLICE_MS;
    double silent_since = mono_ms();
    while (os->pending_off == os->pending_len) {
        if (os->done || atomic_load(&os->server->stopping)) return MHD_CONTENT_READER_END_OF_STREAM;
        if (client_hung_up(os->fd)) return MHD_CONTENT_READER_END_OF_STREAM;
        char *bytes = NULL;
        int r = os->next(os->ctx, (int)slice_ms, &bytes);
        if (r == 1 && bytes && bytes[0]) {
            out_set_pending(os, bytes);
        } else if (r == 1 || r == 0) {
            free(bytes);
            if (mono_ms() - silent_since >= keepalive_ms) {
                out_set_pending(os, strdup(": keepalive\n\n"));
                if (!os->pending) return MHD_CONTENT_READER_END_WITH_ERROR;
            }
        } else {
            free(bytes);
            os->done = true;
            if (r < 0) return MHD_CONTENT_READER_END_WITH_ERROR;
        }
    }
    size_t n = os->pending_len - os->pending_off;
    if (n > max) n = max;
    memcpy(buf, os->pending + os->pending_off, n);
    os->pending_off += n;
    return (ssize_t)n;
}

static void out_free(void *cls) {
    struct out_stream *os = cls;
    if (os->ctx_free) os->ctx_free(os->ctx);
    free(os->pending);
    free(os);
}

/* Queues a stream reply of next/ctx; ctx_free(ctx) is called exactly once, also when this fails. */
static enum MHD_Result send_out_stream(struct lorad_api_server *s, struct request_state *st, struct MHD_Connection *c,
                                       unsigned status, const char *content_type, lorad_api_stream_next_fn next,
                                       void *ctx, void (*ctx_free)(void *)) {
    struct out_stream *os = calloc(1, sizeof *os);
    if (!os) {
        if (ctx_free) ctx_free(ctx);
        return MHD_NO;
    }
    *os = (struct out_stream){.server = s, .next = next, .ctx = ctx, .ctx_free = ctx_free, .fd = connection_fd(c)};
    struct MHD_Response *r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, out_read, os, out_free);
    if (!r) {
        out_free(os);
        return MHD_NO;
    }
    MHD_add_response_header(r, "Content-Type", content_type);
    MHD_add_response_header(r, "Cache-Control", "no-cache");
    st->status = status;
    enum MHD_Result ret = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ret;
}

/* An SSE event source (lorad_api_next_event_fn) as a stream source: "id: <seq>\ndata: <json>\n\n"
 * per event, the source polled every poll_ms while it has nothing, then "data: [DONE]". */
struct sse_source {
    lorad_api_next_event_fn next_event;
    void *ctx;
    void (*ctx_free)(void *);
    uint64_t after;
    unsigned poll_ms;
    double next_poll; /* monotonic ms: an empty poll waits poll_ms before the next */
    bool done;
};

static int sse_source_next(void *cls, int timeout_ms, char **ret_bytes) {
    struct sse_source *src = cls;
    if (src->done) return 2;
    double wait = src->next_poll - mono_ms();
    if (wait > 0) {
        usleep((useconds_t)((wait < timeout_ms ? wait : timeout_ms) * 1000));
        if (mono_ms() < src->next_poll) return 0;
    }
    uint64_t seq = 0;
    char *json = NULL;
    int r = src->next_event(src->ctx, src->after, &seq, &json);
    if (r == 0) {
        src->next_poll = mono_ms() + src->poll_ms;
        return 0;
    }
    char *text = NULL;
    if (r == 1) {
        if (asprintf(&text, "id: %llu\ndata: %s\n\n", (unsigned long long)seq, json ? json : "null") < 0) text = NULL;
        free(json);
        src->after = seq;
    } else if (r == 2) {
        src->done = true;
        text = strdup("data: [DONE]\n\n");
    } else {
        return r;
    }
    if (!text) return -ENOMEM;
    *ret_bytes = text;
    return 1;
}

static void sse_source_free(void *cls) {
    struct sse_source *src = cls;
    if (src->ctx_free) src->ctx_free(src->ctx);
    free(src);
}

static enum MHD_Result send_sse(struct lorad_api_server *s, struct request_state *st, struct MHD_Connection *c,
                                const struct lorad_api_reply *rp) {
    struct sse_source *src = calloc(1, sizeof *src);
    if (!src) {
        if (rp->sse_free) rp->sse_free(rp->sse_ctx);
        return MHD_NO;
    }
    *src = (struct sse_source){.next_event = rp->next_event, .ctx = rp->sse_ctx, .ctx_free = rp->sse_free,
                               .after = rp->sse_after_seq,
                               .poll_ms = s->opt.sse_poll_ms ? s->opt.sse_poll_ms : 250};
    const char *last = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Last-Event-ID");
    if (last && *last) {
        char *end;
        unsigned long long v = strtoull(last, &end, 10);
        if (*end == '\0') src->after = v;
    }
    return send_out_stream(s, st, c, 200, "text/event-stream", sse_source_next, src, sse_source_free);
}

static enum MHD_Result send_stream(struct lorad_api_server *s, struct request_state *st, struct MHD_Connection *c,
                                   const struct lorad_api_reply *rp) {
    return send_out_stream(s, st, c, rp->status ? rp->status : 200,
                           rp->content_type ? rp->content_type : "text/event-stream", rp->stream_next, rp->stream_ctx,
                           rp->stream_free);
}

static void request_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode t) {
    (void)cls, (void)c, (void)t;
    struct request_state *st = *con_cls;
    if (!st) return;
    if (st->status) {
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        double secs = (double)(now.tv_sec - st->started.tv_sec) + 1e-9 * (double)(now.tv_nsec - st->started.tv_nsec);
        lorad_api_metrics_observe(st->method, st->route ? st->route->path : NULL, st->status, secs);
    }
    if (st->pp) MHD_destroy_post_processor(st->pp);
    if (st->upload_fd >= 0) close(st->upload_fd);
    if (st->up.temp_path[0]) unlink(st->up.temp_path);
    free(st->body);
    free(st);
    *con_cls = NULL;
}

int lorad_api_server_start(const struct lorad_api_server_options *o, struct lorad_api_server **ret_server) {
    struct lorad_api_server *s = calloc(1, sizeof *s);
    if (!s) return -ENOMEM;
    s->opt = *o;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(o->port)};
    if (inet_pton(AF_INET, o->bind_address ? o->bind_address : "127.0.0.1", &sa.sin_addr) != 1) {
        free(s);
        return -EINVAL;
    }
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG;
    s->mhd = o->listen_fd >= 0
                 ? MHD_start_daemon(flags, 0, NULL, NULL, access_handler, s, MHD_OPTION_LISTEN_SOCKET, o->listen_fd,
                                    MHD_OPTION_CONNECTION_LIMIT, o->max_connections, MHD_OPTION_CONNECTION_TIMEOUT,
                                    o->connection_timeout_s, MHD_OPTION_NOTIFY_COMPLETED, request_completed, s,
                                    MHD_OPTION_UNESCAPE_CALLBACK, unescape_keeping_nul, NULL, MHD_OPTION_END)
                 : MHD_start_daemon(flags, o->port, NULL, NULL, access_handler, s, MHD_OPTION_SOCK_ADDR, &sa,
                                    MHD_OPTION_CONNECTION_LIMIT, o->max_connections, MHD_OPTION_CONNECTION_TIMEOUT,
                                    o->connection_timeout_s, MHD_OPTION_NOTIFY_COMPLETED, request_completed, s,
                                    MHD_OPTION_UNESCAPE_CALLBACK, unescape_keeping_nul, NULL, MHD_OPTION_END);
    if (!s->mhd) {
        free(s);
        return -EADDRINUSE;
    }
    *ret_server = s;
    return 0;
}

uint16_t lorad_api_server_port(const struct lorad_api_server *s) {
    const union MHD_DaemonInfo *i = MHD_get_daemon_info(s->mhd, MHD_DAEMON_INFO_BIND_PORT);
    return i ? i->port : 0;
}

void lorad_api_server_stop(struct lorad_api_server *s) {
    if (!s) return;
    atomic_store(&s->stopping, true);
    /* Quiesced, MHD leaves the listening socket open: a socket MHD bound itself is closed here, only
     * after MHD_stop_daemon, since its threads may poll it until then; a passed-in one is the caller's. */
    MHD_socket lfd = MHD_quiesce_daemon(s->mhd);
    MHD_stop_daemon(s->mhd);
    if (s->opt.listen_fd < 0 && lfd != MHD_INVALID_SOCKET) close(lfd);
    free(s);
}
