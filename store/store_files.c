/* Uploaded files: metadata rows; the blobs themselves live under the state directory. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "store_internal.h"

#define FILE_COLUMNS \
    "id, bytes, created_at, filename, purpose, status, sha256, line_count, format, validation"

static json_t *file_from_row(struct store_row *row) {
    return json_pack("{s:o, s:s, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o}",
                     "id", store_col_text(row, 0), "object", "file", "bytes", store_col_int(row, 1),
                     "created_at", store_col_int(row, 2), "filename", store_col_text(row, 3),
                     "purpose", store_col_text(row, 4), "status", store_col_text(row, 5),
                     "sha256", store_col_text(row, 6), "line_count", store_col_int(row, 7),
                     "format", store_col_text(row, 8), "validation", store_col_json(row, 9));
}

static bool file_status_valid(const char *s) {
    return s && (!strcmp(s, "uploaded") || !strcmp(s, "processed") || !strcmp(s, "error"));
}

static int file_get_conn(struct store_conn *c, const char *id, json_t **ret_file,
                         struct lorad_error *err) {
    int r = 0;
    sqlite3_stmt *st = store_stmt(c, "SELECT " FILE_COLUMNS " FROM files WHERE id = ?1", &r, err);
    if (!st) return r;
    store_bind_text(c, st, 1, id);
    r = store_step(c, st, "cannot read file", err);
    if (r == 1) {
        r = store_row_object(st, file_from_row, "cannot read file", ret_file, err);
    } else if (r == 0) {
        r = lorad_error_set(err, -ENOENT, "file_id", "no such file: %s", id);
    }
    store_stmt_done(st);
    return r;
}

int lorad_store_file_create(struct lorad_store *s, const struct lorad_store_file_new *f,
                            json_t **ret_file, struct lorad_error *err) {
    if (!lorad_store_id_valid("file-", f->id))
        return lorad_error_set(err, -EINVAL, "id", "not a file id");
    if (!f->filename || strlen(f->filename) > 255)
        return lorad_error_set(err, -EINVAL, "filename", "filename must be 1..255 bytes");
    if (!f->purpose || !*f->purpose || strlen(f->purpose) > 64)
        return lorad_error_set(err, -EINVAL, "purpose", "purpose must be 1..64 bytes");
    if (f->bytes < 0) return lorad_error_set(err, -EINVAL, "bytes", "negative size");
    if (!f->sha256 || strlen(f->sha256) != 64)
        return lorad_error_set(err, -EINVAL, "sha256", "sha256 must be 64 hex digits");
    if (!file_status_valid(f->status))
        return lorad_error_set(err, -EINVAL, "status", "status must be uploaded|processed|error");
    if (!f->path || !*f->path || strlen(f->path) > 1024)
        return lorad_error_set(err, -EINVAL, "path", "path must be 1..1024 bytes");
    if (f->format && strlen(f->format) > 64)
        return lorad_error_set(err, -EINVAL, "format", "format longer than 64 bytes");
    int r = store_check_json_size(f->validation, STORE_SPEC_MAX, "validation", err);
    if (r == 0) r = store_check_utf8(f->filename, "filename", err);
    if (r == 0) r = store_check_utf8(f->purpose, "purpose", err);
    if (r == 0) r = store_check_utf8(f->format, "format", err);
    if (r == 0) r = store_check_utf8(f->path, "path", err);
    if (r < 0) return r;

    struct store_conn *c = NULL;
    r = store_acquire(s, &c, err);
    if (r < 0) return r;
    r = store_tx_begin(s, c, err);
    if (r < 0) goto out;
    sqlite3_stmt *st = store_stmt(c,
        "INSERT INTO files(id, filename, purpose, bytes, sha256, line_count, format, validation,"
        " status, path, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        &r, err);
    if (st) {
        store_bind_text(c, st, 1, f->id);
        store_bind_text(c, st, 2, f->filename);
        store_bind_text(c, st, 3, f->purpose);
        store_bind_int64(c, st, 4, f->bytes);
        store_bind_text(c, st, 5, f->sha256);
        store_bind_int64(c, st, 6, f->line_count);
        store_bind_text(c, st, 7, f->format);
        store_bind_json(c, st, 8, f->validation);
        store_bind_text(c, st, 9, f->status);
        store_bind_text(c, st, 10, f->path);
        store_bind_int64(c, st, 11, store_now());
        r = store_step(c, st, "cannot insert file", err);
        store_stmt_done(st);
        if (r == -EEXIST) lorad_error_set(err, r, "id", "file %s already exists", f->id);
    }
    r = store_tx_end(s, c, r, err);
    if (r == 0 && ret_file) r = file_get_conn(c, f->id, ret_file, err);
out:
    store_release(s, c);
    return r;
}

int lorad_store_file_get(struct lorad_store *s, const char *id, json_t **ret_file,
                         struct lorad_error *err) {
    struct store_conn *c = NULL;
    int r = store_acquire(s, &c, err);
    if (r < 0) return r;
    r = file_get_conn(c, id, ret_file, err);
    store_release(s, c);
    return r;
}

int lorad_store_file_path(struct lorad_store *s, const char *id, char **ret_path,
                          struct lorad_error *err) {
    struct store_conn *c = NULL;
    int r = store_acquire(s, &c, err);
    if (r < 0) return r;
    sqlite3_stmt *st = store_stmt(c, "SELECT path FROM files WHERE id = ?1", &r, err);
    if (st) {
        store_bind_text(c, st, 1, id);
        r = store_step(c, st, "cannot read file", err);
        if (r == 1) {
            char *p = store_col_strdup(st, 0);
            r = p ? 0 : lorad_error_set(err, -ENOMEM, "", "out of memory");
            if (p) *ret_path = p;
        } else if (r == 0) {
            r = lorad_error_set(err, -ENOENT, "file_id", "no such file: %s", id);
        }
        store_stmt_done(st);
    }
    store_release(s, c);
    return r;
}

int lorad_store_file_set_status(struct lorad_store *s, const char *id, const char *status,
                                const char *format, int64_t line_count, json_t *validation,
                                struct lorad_error *err) {
    if (!file_status_valid(status))
        return lorad_error_set(err, -EINVAL, "status", "status must be uploaded|processed|error");
    if (format && strlen(format) > 64)
        return lorad_error_set(err, -EINVAL, "format", "format longer than 64 bytes");
    int r = store_check_json_size(validation, STORE_SPEC_MAX, "validation", err);
    if (r == 0) r = store_check_utf8(format, "format", err);
    if (r < 0) return r;
    struct store_conn *c = NULL;
    r = store_acquire(s, &c, err);
    if (r < 0) return r;
    r = store_tx_begin(s, c, err);
    if (r < 0) goto out;
    sqlite3_stmt *st = store_stmt(c,
        "UPDATE files SET status = ?2, format = ?3, line_count = ?4, validation = ?5"
        " WHERE id = ?1", &r, err);
    if (st) {
        store_bind_text(c, st, 1, id);
        store_bind_text(c, st, 2, status);
        store_bind_text(c, st, 3, format);
        store_bind_int64(c, st, 4, line_count);
        store_bind_json(c, st, 5, validation);
        r = store_step(c, st, "cannot update file", err);
        store_stmt_done(st);
        if (r == 0 && sqlite3_changes(c->db) == 0)
            r = lorad_error_set(err, -ENOENT, "file_id", "no such file: %s", id);
    }
    r = store_tx_end(s, c, r, err);
out:
    store_release(s, c);
    return r;
}

int lorad_store_file_delete(struct lorad_store *s, const char *id, char **ret_path,
                            struct lorad_error *err) {
    struct store_conn *c = NULL;
    int r = store_acquire(s, &c, err);
    if (r < 0) return r;
    char *path = NULL;
    r = store_tx_begin(s, c, err);
    if (r < 0) goto out;
    /* The check and the delete share the write transaction, so no job can be created on the
     * file in between. */
    sqlite3_stmt *st = store_stmt(c,
        "SELECT id, status FROM jobs WHERE (training_file = ?1 OR validation_file = ?1)"
        " AND status IN ('validating_files','queued','running','paused') LIMIT 1", &r, err);
    if (!st) goto end;
    store_bind_text(c, st, 1, id);
    r = store_step(c, st, "cannot check file use", err);
    if (r == 1)
        r = lorad_error_set(err, -EBUSY, "file_id", "file %s is in use by %s job %s", id,
                            (const char *)sqlite3_column_text(st, 1),
                            (const char *)sqlite3_column_text(st, 0));
    store_stmt_done(st);
    if (r < 0) goto end;
    st = store_stmt(c, "DELETE FROM files WHERE id = ?1 RETURNING path", &r, err);
    if (!st) goto end;
    store_bind_text(c, st, 1, id);
    r = store_step(c, st, "cannot delete file", err);
    if (r == 1) {
        path = store_col_strdup(st, 0);
        r = path ? store_step(c, st, "cannot delete file", err)
                 : lorad_error_set(err, -ENOMEM, "", "out of memory");
    } else if (r == 0) {
        r = lorad_error_set(err, -ENOENT, "file_id", "no such file: %s", id);
    }
    store_stmt_done(st);
end:
    r = store_tx_end(s, c, r, err);
out:
    store_release(s, c);
    if (r == 0 && ret_path) *ret_path = path;
    else free(path);
    return r;
}

int lorad_store_file_list(struct lorad_store *s, const char *purpose, const char *after,
                          int limit, json_t **ret_page, struct lorad_error *err) {
    const struct store_list_query q = {
        .what = "file", .max_limit = 100, .filter = purpose,
        .key_sql = "SELECT pk FROM files WHERE id = ?1",
        .page_sql = "SELECT " FILE_COLUMNS " FROM files WHERE (?1 IS NULL OR purpose = ?1) AND pk < ?2"
                    " ORDER BY pk DESC LIMIT ?3",
        .from_row = file_from_row};
    return store_list(s, &q, after, limit, ret_page, err);
}
