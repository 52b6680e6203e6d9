/* /v1/files: uploads of training data, their validation report, listing, download and deletion.
 *
 * An upload is validated as a whole before it is stored (engine/data/dataset.h, format detected from
 * the first good line). Whatever the verdict, a non-empty upload is kept: a file whose every line
 * is a valid record is "processed"; a file with bad lines (or no record at all) is stored with
 * status "error", its validation report naming each bad line (the first 20) and status_details
 * summarising the first one. Keeping it lets the client read the report and download exactly what
 * the server saw; job creation should refuse an "error" file. An empty upload (0 bytes) is
 * refused with 400.
 *
 * Blobs live at files_dir/<file-id> (never a client string); the store records that path relative
 * to the state directory, as docs/store.md asks. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dataset.h"
#include "fsutil.h"
#include "handlers_internal.h"
#include "store.h"

#define FILES_PAGE_DEFAULT 20
#define FILES_PAGE_MAX_ASKED 1000 /* openapi's Limit; a page holds at most FILES_PAGE_MAX */
#define FILES_PAGE_MAX 100
#define FILES_PURPOSE_MAX 64

/* Adds status_details to a file object: null when processed, else one sentence from the
 * validation report (how many lines are bad, and the first one with its reason). */
static void file_add_status_details(json_t *file) {
    const char *status = json_string_value(json_object_get(file, "status"));
    json_t *v = json_object_get(file, "validation");
    if (!status || strcmp(status, "error") != 0 || !json_is_object(v)) {
        json_object_set_new(file, "status_details", json_null());
        return;
    }
    json_int_t invalid = json_integer_value(json_object_get(v, "invalid"));
    json_int_t lines = json_integer_value(json_object_get(v, "lines"));
    json_t *first = json_array_get(json_object_get(v, "bad_lines"), 0);
    char msg[512];
    if (first)
        snprintf(msg, sizeof msg, "%lld of %lld lines are invalid; first: line %lld (%s): %s", (long long)invalid,
                 (long long)lines, (long long)json_integer_value(json_object_get(first, "line")),
                 json_string_value(json_object_get(first, "problem")) ? json_string_value(json_object_get(first, "problem")) : "?",
                 json_string_value(json_object_get(first, "reason")) ? json_string_value(json_object_get(first, "reason")) : "");
    else
        snprintf(msg, sizeof msg, "the file has no training example (%lld lines, all blank)", (long long)lines);
    json_object_set_new(file, "status_details", json_string(msg));
}

/* POST /v1/files. The transport has streamed the body into upload->temp_path (fsynced). */
static int handle_create(const struct lorad_api_request *req, struct lorad_api_reply *ret_reply) {
    struct lorad_app *app = handler_app(req);
    const struct lorad_api_upload *up = req->upload;
    if (!app || !app->store || !app->files_dir) return handler_reply_not_ready(ret_reply);
    if (!up) return lorad_api_reply_error(ret_reply, 400, "no file in the request", "file", "invalid_upload");
    if (strcmp(up->purpose, "fine-tune") != 0) {
        char msg[160];
        snprintf(msg, sizeof msg, "purpose must be \"fine-tune\" (got \"%.64s\")", up->purpose);
        return lorad_api_reply_error(ret_reply, 400, msg, "purpose", "invalid_value");
    }
    if (up->bytes == 0) return lorad_api_reply_error(ret_reply, 400, "the uploaded file is empty", "file", "empty_file");

    struct lorad_error err = {0};
    struct lorad_dataset_report *rep = calloc(1, sizeof *rep); /* ~5 KiB: not on a connection's stack */
    if (!rep) return handler_reply_oom(ret_reply);
    int r = lorad_dataset_validate_file(up->temp_path, LORAD_DATA_AUTO, LORAD_DATASET_DEFAULT_MAX_LINE, rep, &err);
    if (r < 0) {
        free(rep);
        return lorad_api_reply_error(ret_reply, 500, "the upload could not be read back for validation", NULL,
                                     "internal_error");
    }
    bool ok = rep->n_invalid == 0 && rep->n_records > 0;
    json_t *report = lorad_dataset_report_json(rep);
    const char *format = rep->format == LORAD_DATA_AUTO ? NULL : lorad_data_format_name(rep->format);
    int64_t n_lines = rep->n_lines;
    free(rep);
    if (!report) return handler_reply_oom(ret_reply);

    char id[LORAD_STORE_ID_MAX], dest[4096], stored[4096];
    if ((r = lorad_store_new_id("file-", id)) < 0 ||
        snprintf(dest, sizeof dest, "%s/%s", app->files_dir, id) >= (int)sizeof dest ||
        snprintf(stored, sizeof stored, "%s", lorad_store_path_relative(app->state_dir, dest)) >= (int)sizeof stored) {
        json_decref(report);
        return lorad_api_reply_error(ret_reply, 500, "cannot name the stored file", NULL, "internal_error");
    }
    /* The blob must be durable under its final name before the row that points at it commits:
     * a crash in between leaves an orphan blob, never a row without its blob. */
    r = lorad_mkdir_p(app->files_dir);
    if (r == 0 && rename(up->temp_path, dest) < 0) r = -errno; /* EXDEV: upload_dir must share files_dir's filesystem */
    if (r == 0) r = lorad_fsync_parent_dir(dest);
    if (r < 0) {
        json_decref(report);
        unlink(dest);
        return lorad_api_reply_error(ret_reply, r == -ENOSPC ? 503 : 500, "cannot store the upload",
                                     NULL, r == -ENOSPC ? "disk_full" : "internal_error");
    }
    /* The transport cut the client's name at 255 bytes, possibly inside a UTF-8 sequence: drop
     * that partial character (at most 3 bytes) rather than refuse the name. */
    char filename[sizeof up->filename];
    snprintf(filename, sizeof filename, "%s", up->filename[0] ? up->filename : "upload.jsonl");
    for (int cut = 0; cut < 3 && !lorad_utf8_valid(filename, strlen(filename)); cut++)
        filename[strlen(filename) - 1] = '\0';
    struct lorad_store_file_new f = {.id = id, .filename = filename, .purpose = up->purpose,
                                     .bytes = (int64_t)up->bytes, .sha256 = up->sha256_hex,
                                     .line_count = n_lines, .format = format, .validation = report,
                                     .status = ok ? "processed" : "error", .path = stored};
    json_t *file = NULL;
    r = lorad_store_file_create(app->store, &f, &file, &err);
    json_decref(report);
    if (r < 0) {
        unlink(dest);
        return handler_reply_failure(ret_reply, r, &err, NULL);
    }
    file_add_status_details(file);
    return handler_reply_json(ret_reply, 200, file);
}

/* GET /v1/files?purpose&limit&after */
static int handle_list(const struct lorad_api_request *req, struct lorad_api_reply *ret_reply) {
    struct lorad_app *app = handler_app(req);
    if (!app || !app->store) return handler_reply_not_ready(ret_reply);
    int limit;
    const char *after;
    if (handler_page_args(req, "file-", FILES_PAGE_DEFAULT, FILES_PAGE_MAX_ASKED, &limit, &after, ret_reply) < 0) return 0;
    if (limit > FILES_PAGE_MAX) limit = FILES_PAGE_MAX; /* has_more tells the client to go on */
    const char *purpose = req->query(req, "purpose");
    if (purpose && (!*purpose || strlen(purpose) > FILES_PURPOSE_MAX))
        return lorad_api_reply_error(ret_reply, 400, "purpose must be 1..64 bytes", "purpose", "invalid_value");
    struct lorad_error err = {0};
    json_t *page = NULL;
    int r = lorad_store_file_list(app->store, purpose, after, limit, &page, &err);
    if (r < 0) return handler_reply_failure(ret_reply, r, &err, NULL);
    size_t i;
    json_t *f;
    json_array_foreach(json_object_get(page, "data"), i, f) file_add_status_details(f);
    return handler_reply_json(ret_reply, 200, page);
}

/* The file object the path names. Returns 0 with *ret_app and *ret_file (caller decrefs), or -1
 * with ret_reply filled (503 before the store is open, 404 for a malformed or unknown id). */
static int file_of_request(const struct lorad_api_request *req, struct lorad_api_reply *ret_reply,
                           struct lorad_app **ret_app, json_t **ret_file) {
    struct lorad_app *app = handler_app(req);
    if (!app || !app->store) {
        handler_reply_not_ready(ret_reply);
        return -1;
    }
    const char *id = handler_id_param(req, "file_id", "file-", ret_reply);
    if (!id) return -1;
    struct lorad_error err = {0};
    int r = lorad_store_file_get(app->store, id, ret_file, &err);
    if (r < 0) {
        handler_reply_failure(ret_reply, r, &err, NULL);
        return -1;
    }
    *ret_app = app;
    return 0;
}

/* GET /v1/files/{file_id} */
static int handle_get(const struct lorad_api_request *req, struct lorad_api_reply *ret_reply) {
    struct lorad_app *app;
    json_t *file;
    if (file_of_request(req, ret_reply, &app, &file) < 0) return 0;
    file_add_status_details(file);
    return handler_reply_json(ret_reply, 200, file);
}

/* A Content-Disposition-safe copy of a client's filename: printable ASCII without '"' and '\\'
 * (anything else becomes '_'), so no client byte can end the quoted string or the header. */
static void safe_download_name(const char *name, char *out, size_t cap) {
    size_t n = 0;
    for (const unsigned char *p = (const unsigned char *)name; *p && n + 1 < cap; p++)
        out[n++] = (*p < 0x20 || *p > 0x7e || *p == '"' || *p == '\\') ? '_' : (char)*p;
    out[n] = '\0';
    if (n == 0) snprintf(out, cap, "file");
}

static bool ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

/* GET /v1/files/{file_id}/content: the bytes as uploaded, under the original filename. */
static int handle_content(const struct lorad_api_request *req, struct lorad_api_reply *ret_reply) {
    struct lorad_app *app;
    json_t *file;
    if (file_of_request(req, ret_reply, &app, &file) < 0) return 0;
    struct lorad_error err = {0};
    char *stored = NULL;
    int r = lorad_store_file_path(app->store, json_string_value(json_object_get(file, "id")), &stored, &err);
    if (r < 0) {
        json_decref(file);
        return handler_reply_failure(ret_reply, r, &err, NULL);
    }
    char path[4096], name[256];
    const char *filename = json_string_value(json_object_get(file, "filename"));
    safe_download_name(filename ? filename : "", name, sizeof name);
    r = lorad_store_path_absolute(app->state_dir, stored, NULL, path, sizeof path);
    free(stored);
    json_decref(file);
    if (r < 0) return lorad_api_reply_error(ret_reply, 500, "stored path too long", NULL, "internal_error");
    return handler_reply_file(ret_reply, path, ends_with(name, ".jsonl") ? "application/jsonl" : "application/octet-stream",
                              name, "file_id");
}

/* DELETE /v1/files/{file_id}: 409 while a live job uses it; the blob goes with the row. */
static int handle_delete(const struct lorad_api_request *req, struct lorad_api_reply *ret_reply) {
    struct lorad_app *app = handler_app(req);
    if (!app || !app->store) return handler_reply_not_ready(ret_reply);
    const char *id = handler_id_param(req, "file_id", "file-", ret_reply);
    if (!id) return 0;
    struct lorad_error err = {0};
    char *stored = NULL;
    int r = lorad_store_file_delete(app->store, id, &stored, &err);
    if (r == -EBUSY && strcmp(err.param, "file_id") == 0)
        return lorad_api_reply_error(ret_reply, 409, err.message, "file_id", "file_in_use");
    if (r == -EBUSY) /* the database stayed locked past the busy timeout: try again later */
        return lorad_api_reply_error(ret_reply, 503, err.message, NULL, "busy");
    if (r < 0) return handler_reply_failure(ret_reply, r, &err, NULL);
    /* The row is gone, so the file no longer exists for clients; a blob that cannot be unlinked
     * is an orphan on disk, not an error of this request. */
    char path[4096];
    if (lorad_store_path_absolute(app->state_dir, stored, NULL, path, sizeof path) == 0) unlink(path);
    free(stored);
    return handler_reply_json(ret_reply, 200, json_pack("{s:s, s:s, s:b}", "id", id, "object", "file", "deleted", 1));
}

int lorad_api_install_file_routes(void) {
    static const struct {
        const char *method, *path;
        lorad_api_handler_fn fn;
    } routes[] = {
        {"POST", "/v1/files", handle_create},
        {"GET", "/v1/files", handle_list},
        {"GET", "/v1/files/{file_id}", handle_get},
        {"DELETE", "/v1/files/{file_id}", handle_delete},
        {"GET", "/v1/files/{file_id}/content", handle_content},
    };
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++) {
        int r = lorad_api_set_handler(routes[i].method, routes[i].path, routes[i].fn);
        if (r < 0) return r;
    }
    return 0;
}
