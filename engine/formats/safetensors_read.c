#include "safetensors_read.h"

#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "map_file.h"
#include "safetensors_write.h"

struct lorad_st_file {
    char *path;
    struct lorad_mapping map;
    int owns_map; /* 0 for lorad_st_open_mem: the bytes belong to the caller */
    json_t *header; /* keeps tensor names, dtypes and metadata strings alive */
    json_t *metadata;
    struct lorad_st_tensor *tensors;
    size_t n_tensors;
};

static int bad(struct lorad_error *err, const char *path, const char *what, const char *name) {
    return lorad_error_set(err, -EINVAL, "model", "%s: invalid safetensors file: %s%s%s", path, what,
                           name ? " for tensor " : "", name ? name : "");
}

static int parse_u64(const json_t *v, uint64_t *ret) {
    if (!json_is_integer(v) || json_integer_value(v) < 0) return -EINVAL;
    *ret = (uint64_t)json_integer_value(v);
    return 0;
}

static int parse_tensor(struct lorad_st_file *f, const char *name, json_t *v, uint64_t data_len,
                        struct lorad_st_tensor *t, uint64_t offsets[2], struct lorad_error *err) {
    const char *p = f->path;
    if (!json_is_object(v)) return bad(err, p, "header entry is not an object", name);
    json_t *dtype = json_object_get(v, "dtype"), *shape = json_object_get(v, "shape");
    json_t *offs = json_object_get(v, "data_offsets");
    if (!json_is_string(dtype)) return bad(err, p, "missing string \"dtype\"", name);
    int esize = lorad_st_dtype_size(json_string_value(dtype));
    if (esize == 0)
        return lorad_error_set(err, -EINVAL, "model", "%s: invalid safetensors file: unknown dtype \"%s\" for tensor %s",
                               p, json_string_value(dtype), name);
    if (!json_is_array(shape) || json_array_size(shape) > LORAD_ST_MAX_DIMS)
        return bad(err, p, "\"shape\" must be an array of at most 8 sizes", name);
    if (!json_is_array(offs) || json_array_size(offs) != 2)
        return bad(err, p, "\"data_offsets\" must be [begin, end]", name);
    uint64_t count = 1;
    t->ndim = (int)json_array_size(shape);
    for (int d = 0; d < t->ndim; d++) {
        uint64_t n;
        if (parse_u64(json_array_get(shape, (size_t)d), &n) < 0)
            return bad(err, p, "shape entries must be non-negative integers", name);
        if (__builtin_mul_overflow(count, n, &count)) return bad(err, p, "shape overflows", name);
        t->shape[d] = (int64_t)n;
    }
    uint64_t nbytes;
    if (__builtin_mul_overflow(count, (uint64_t)esize, &nbytes)) return bad(err, p, "shape overflows", name);
    if (parse_u64(json_array_get(offs, 0), &offsets[0]) < 0 || parse_u64(json_array_get(offs, 1), &offsets[1]) < 0 ||
        offsets[0] > offsets[1])
        return bad(err, p, "data_offsets must be integers with 0 <= begin <= end", name);
    if (offsets[1] > data_len)
        return lorad_error_set(err, -EINVAL, "model",
                               "%s: invalid safetensors file: tensor %s ends at byte %llu of a %llu-byte data section",
                               p, name, (unsigned long long)offsets[1], (unsigned long long)data_len);
    if (offsets[1] - offsets[0] != nbytes)
        return lorad_error_set(err, -EINVAL, "model",
                               "%s: invalid safetensors file: tensor %s has %llu bytes but its shape and dtype need %llu",
                               p, name, (unsigned long long)(offsets[1] - offsets[0]), (unsigned long long)nbytes);
    t->name = name;
    t->dtype = json_string_value(dtype);
    t->nbytes = nbytes;
    return 0;
}

struct span { uint64_t begin, end; size_t index; };

static int cmp_span(const void *a, const void *b) {
    const struct span *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return 0;
}

static int parse_header(struct lorad_st_file *f, struct lorad_error *err) {
    const char *p = f->path;
    const uint8_t *m = f->map.data;
    if (f->map.size < 8) return bad(err, p, "shorter than the 8-byte header length", NULL);
    uint64_t hlen = 0;
    for (int i = 0; i < 8; i++) hlen |= (uint64_t)m[i] << (8 * i);
    if (hlen > LORAD_ST_MAX_HEADER)
        return lorad_error_set(err, -EINVAL, "model", "%s: invalid safetensors file: header length %llu exceeds the 100 MB limit",
                               p, (unsigned long long)hlen);
    if (hlen > f->map.size - 8)
        return lorad_error_set(err, -EINVAL, "model", "%s: invalid safetensors file: header length %llu but only %zu bytes follow",
                               p, (unsigned long long)hlen, f->map.size - 8);
    if (hlen < 2 || m[8] != '{') return bad(err, p, "header does not start with '{'", NULL);
    json_error_t jerr;
    f->header = json_loadb((const char *)m + 8, (size_t)hlen, JSON_REJECT_DUPLICATES, &jerr);
    if (!f->header)
        return lorad_error_set(err, -EINVAL, "model", "%s: invalid safetensors header JSON at byte %d: %s", p,
                               jerr.position, jerr.text);
    if (!json_is_object(f->header)) return bad(err, p, "header is not a JSON object", NULL);
    uint64_t data_len = f->map.size - 8 - hlen;
    size_t n = json_object_size(f->header);
    f->tensors = calloc(n ? n : 1, sizeof *f->tensors);
    struct span *spans = calloc(n ? n : 1, sizeof *spans);
    if (!f->tensors || !spans) {
        free(spans);
        return lorad_error_set(err, -ENOMEM, "model", "%s: out of memory", p);
    }
    int r = 0;
    const char *key;
    json_t *v;
    json_object_foreach(f->header, key, v) {
        if (strcmp(key, "__metadata__") == 0) {
            const char *mk;
            json_t *mv;
            if (!json_is_object(v)) { r = bad(err, p, "__metadata__ is not an object", NULL); break; }
            json_object_foreach(v, mk, mv) if (!json_is_string(mv)) {
                r = lorad_error_set(err, -EINVAL, "model", "%s: invalid safetensors file: __metadata__ value of \"%s\" is not a string", p, mk);
                break;
            }
            if (r < 0) break;
            f->metadata = v;
            continue;
        }
        uint64_t offsets[2];
        struct lorad_st_tensor *t = &f->tensors[f->n_tensors];
        if ((r = parse_tensor(f, key, v, data_len, t, offsets, err)) < 0) break;
        t->data = m + 8 + hlen + offsets[0];
        spans[f->n_tensors] = (struct span){offsets[0], offsets[1], f->n_tensors};
        f->n_tensors++;
    }
    if (r == 0) {
        /* The spec forbids holes: sorted by offset, the tensors cover [0, data_len) exactly. */
        qsort(spans, f->n_tensors, sizeof *spans, cmp_span);
        uint64_t pos = 0;
        for (size_t i = 0; i < f->n_tensors && r == 0; i++) {
            const char *name = f->tensors[spans[i].index].name;
            if (spans[i].begin > pos)
                r = lorad_error_set(err, -EINVAL, "model", "%s: invalid safetensors file: gap of %llu bytes before tensor %s",
                                    p, (unsigned long long)(spans[i].begin - pos), name);
            else if (spans[i].begin < pos)
                r = lorad_error_set(err, -EINVAL, "model", "%s: invalid safetensors file: tensor %s overlaps the previous tensor",
                                    p, name);
            pos = spans[i].end;
        }
        if (r == 0 && pos != data_len)
            r = lorad_error_set(err, -EINVAL, "model",
                                "%s: invalid safetensors file: %llu bytes after the last tensor are not covered by any tensor",
                                p, (unsigned long long)(data_len - pos));
    }
    free(spans);
    return r;
}

int lorad_st_open(const char *path, struct lorad_st_file **ret_file, struct lorad_error *err) {
    struct lorad_mapping m;
    int r = lorad_map_file(path, &m, err);
    if (r < 0) return r;
    struct lorad_st_file *f;
    if ((r = lorad_st_open_mem(path, m.data, m.size, &f, err)) < 0) {
        lorad_unmap(&m);
        return r;
    }
    f->owns_map = 1;
    *ret_file = f;
    return 0;
}

int lorad_st_open_mem(const char *name, const void *data, size_t size, struct lorad_st_file **ret_file,
                      struct lorad_error *err) {
    struct lorad_st_file *f = calloc(1, sizeof *f);
    if (!f || !(f->path = strdup(name))) {
        free(f);
        return lorad_error_set(err, -ENOMEM, "model", "out of memory opening %s", name);
    }
    f->map = (struct lorad_mapping){data, size};
    int r = parse_header(f, err);
    if (r < 0) {
        lorad_st_close(f);
        return r;
    }
    *ret_file = f;
    return 0;
}

void lorad_st_close(struct lorad_st_file *f) {
    if (!f) return;
    if (f->owns_map) lorad_unmap(&f->map);
    json_decref(f->header);
    free(f->tensors);
    free(f->path);
    free(f);
}

const char *lorad_st_path(const struct lorad_st_file *f) { return f->path; }
size_t lorad_st_n_tensors(const struct lorad_st_file *f) { return f->n_tensors; }

const struct lorad_st_tensor *lorad_st_tensor_at(const struct lorad_st_file *f, size_t i) {
    return i < f->n_tensors ? &f->tensors[i] : NULL;
}

const struct lorad_st_tensor *lorad_st_find(const struct lorad_st_file *f, const char *name) {
    for (size_t i = 0; i < f->n_tensors; i++)
        if (strcmp(f->tensors[i].name, name) == 0) return &f->tensors[i];
    return NULL;
}

const char *lorad_st_metadata(const struct lorad_st_file *f, const char *key) {
    return f->metadata ? json_string_value(json_object_get(f->metadata, key)) : NULL;
}
