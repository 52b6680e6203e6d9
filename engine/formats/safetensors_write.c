#include "safetensors_write.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fsutil.h"

struct st_entry {
    char *name;
    char dtype[8];
    int64_t shape[8];
    int ndim;
    const void *data;
    size_t nbytes;
};

struct lorad_st_writer {
    char *path;
    json_t *metadata;
    struct st_entry *entries;
    size_t n, cap;
};

int lorad_st_dtype_size(const char *dtype) {
    static const struct { const char *name; int size; } table[] = {
        {"F64", 8}, {"F32", 4}, {"F16", 2}, {"BF16", 2}, {"I64", 8}, {"I32", 4},
        {"I16", 2}, {"I8", 1},  {"U8", 1},  {"U16", 2},  {"U32", 4}, {"U64", 8}, {"BOOL", 1},
    };
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
        if (strcmp(table[i].name, dtype) == 0) return table[i].size;
    return 0;
}

int lorad_st_writer_new(struct lorad_st_writer **ret_writer, const char *path) {
    struct lorad_st_writer *w = calloc(1, sizeof *w);
    if (!w) return -ENOMEM;
    w->path = strdup(path);
    w->metadata = json_object();
    if (!w->path || !w->metadata) {
        lorad_st_writer_free(w);
        return -ENOMEM;
    }
    *ret_writer = w;
    return 0;
}

int lorad_st_writer_metadata(struct lorad_st_writer *w, const char *key, const char *value) {
    json_t *v = json_string(value);
    if (!v) return -EINVAL; /* not valid UTF-8 */
    return json_object_set_new(w->metadata, key, v) == 0 ? 0 : -ENOMEM;
}

int lorad_st_writer_add(struct lorad_st_writer *w, const char *name, const char *dtype,
                        const int64_t *shape, int ndim, const void *data, size_t nbytes) {
    int esize = lorad_st_dtype_size(dtype);
    if (esize == 0 || ndim < 0 || ndim > 8 || strcmp(name, "__metadata__") == 0) return -EINVAL;
    size_t count = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0) return -EINVAL;
        count *= (size_t)shape[i];
    }
    if (count * (size_t)esize != nbytes) return -EINVAL;
    for (size_t i = 0; i < w->n; i++)
        if (strcmp(w->entries[i].name, name) == 0) return -EEXIST;
    if (w->n == w->cap) {
        size_t cap = w->cap ? 2 * w->cap : 16;
        struct st_entry *e = realloc(w->entries, cap * sizeof *e);
        if (!e) return -ENOMEM;
        w->entries = e;
        w->cap = cap;
    }
    struct st_entry *e = &w->entries[w->n];
    memset(e, 0, sizeof *e);
    e->name = strdup(name);
    if (!e->name) return -ENOMEM;
    snprintf(e->dtype, sizeof e->dtype, "%s", dtype);
    if (ndim > 0) memcpy(e->shape, shape, (size_t)ndim * sizeof *shape);
    e->ndim = ndim;
    e->data = data;
    e->nbytes = nbytes;
    w->n++;
    return 0;
}

static char *build_header(struct lorad_st_writer *w, size_t *ret_len) {
    json_t *root = json_object();
    if (!root) return NULL;
    if (json_object_size(w->metadata) > 0) json_object_set(root, "__metadata__", w->metadata);
    size_t offset = 0;
    for (size_t i = 0; i < w->n; i++) {
        struct st_entry *e = &w->entries[i];
        json_t *shape = json_array();
        for (int d = 0; d < e->ndim; d++) json_array_append_new(shape, json_integer(e->shape[d]));
        json_t *t = json_pack("{s:s, s:o, s:[I,I]}", "dtype", e->dtype, "shape", shape, "data_offsets",
                              (json_int_t)offset, (json_int_t)(offset + e->nbytes));
        if (!t || json_object_set_new(root, e->name, t) < 0) {
            json_decref(root);
            return NULL;
        }
        offset += e->nbytes;
    }
    char *text = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(root);
    if (!text) return NULL;
    size_t len = strlen(text), padded = (len + 7) & ~(size_t)7;
    char *out = malloc(padded + 1);
    if (!out) {
        free(text);
        return NULL;
    }
    memcpy(out, text, len);
    memset(out + len, ' ', padded - len);
    out[padded] = '\0';
    free(text);
    *ret_len = padded;
    return out;
}

int lorad_st_writer_finish(struct lorad_st_writer *w, struct lorad_error *err) {
    size_t hlen = 0;
    char *header = build_header(w, &hlen);
    if (!header) {
        lorad_st_writer_free(w);
        return lorad_error_set(err, -ENOMEM, "", "out of memory building a safetensors header");
    }
    struct lorad_atomic_file out;
    int r = lorad_atomic_open(&out, w->path);
    if (r < 0) {
        r = lorad_error_set(err, r, "", "cannot create %s.tmp: %s", w->path, strerror(-r));
        goto out;
    }
    int fd = out.fd;
    uint8_t len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (uint8_t)((uint64_t)hlen >> (8 * i));
    r = lorad_write_all(fd, len8, 8);
    if (r == 0) r = lorad_write_all(fd, header, hlen);
    for (size_t i = 0; r == 0 && i < w->n; i++) r = lorad_write_all(fd, w->entries[i].data, w->entries[i].nbytes);
    if ((r = lorad_atomic_finish(&out, r)) < 0) {
        lorad_error_set(err, r, "", "cannot write %s: %s", w->path, strerror(-r));
    }
out:
    free(header);
    lorad_st_writer_free(w);
    return r;
}

void lorad_st_writer_free(struct lorad_st_writer *w) {
    if (!w) return;
    for (size_t i = 0; i < w->n; i++) free(w->entries[i].name);
    free(w->entries);
    json_decref(w->metadata);
    free(w->path);
    free(w);
}
