#include "gguf.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const struct { uint32_t type; const char *name; uint32_t block; uint32_t bytes; } ggml_types[] = {
    {LORAD_GGML_F32, "F32", 1, 4},        {LORAD_GGML_F16, "F16", 1, 2},
    {LORAD_GGML_Q4_0, "Q4_0", 32, 18},    {LORAD_GGML_Q4_1, "Q4_1", 32, 20},
    {LORAD_GGML_Q5_0, "Q5_0", 32, 22},    {LORAD_GGML_Q5_1, "Q5_1", 32, 24},
    {LORAD_GGML_Q8_0, "Q8_0", 32, 34},    {LORAD_GGML_Q8_1, "Q8_1", 32, 36},
    {LORAD_GGML_Q2_K, "Q2_K", 256, 84},   {LORAD_GGML_Q3_K, "Q3_K", 256, 110},
    {LORAD_GGML_Q4_K, "Q4_K", 256, 144},  {LORAD_GGML_Q5_K, "Q5_K", 256, 176},
    {LORAD_GGML_Q6_K, "Q6_K", 256, 210},  {LORAD_GGML_Q8_K, "Q8_K", 256, 292},
    {LORAD_GGML_I8, "I8", 1, 1},          {LORAD_GGML_I16, "I16", 1, 2},
    {LORAD_GGML_I32, "I32", 1, 4},        {LORAD_GGML_I64, "I64", 1, 8},
    {LORAD_GGML_F64, "F64", 1, 8},        {LORAD_GGML_BF16, "BF16", 1, 2},
};

static int ggml_type_index(uint32_t type) {
    for (size_t i = 0; i < sizeof ggml_types / sizeof ggml_types[0]; i++)
        if (ggml_types[i].type == type) return (int)i;
    return -1;
}

const char *lorad_ggml_type_name(uint32_t type) {
    int i = ggml_type_index(type);
    return i < 0 ? NULL : ggml_types[i].name;
}

/* Size of one scalar value of a GGUF value type; 0 for string/array/unknown. */
static uint64_t scalar_size(uint32_t type) {
    switch (type) {
    case LORAD_GGUF_U8: case LORAD_GGUF_I8: case LORAD_GGUF_BOOL: return 1;
    case LORAD_GGUF_U16: case LORAD_GGUF_I16: return 2;
    case LORAD_GGUF_U32: case LORAD_GGUF_I32: case LORAD_GGUF_F32: return 4;
    case LORAD_GGUF_U64: case LORAD_GGUF_I64: case LORAD_GGUF_F64: return 8;
    }
    return 0;
}

/* A bounds-checked cursor over the mapping. */
struct cursor {
    const struct lorad_gguf *g;
    uint64_t pos;
    struct lorad_error *err;
};

static int trunc_err(struct cursor *c, const char *what) {
    return lorad_error_set(c->err, -EINVAL, "model", "%s: invalid GGUF file: truncated or lying length reading %s at byte %llu",
                           c->g->path, what, (unsigned long long)c->pos);
}

static uint64_t remaining(const struct cursor *c) { return c->g->map.size - c->pos; }

static int take(struct cursor *c, uint64_t n, const uint8_t **ret, const char *what) {
    if (n > remaining(c)) return trunc_err(c, what);
    *ret = c->g->map.data + c->pos;
    c->pos += n;
    return 0;
}

static uint64_t rd_le(const uint8_t *p, int n) {
    uint64_t v = 0;
    for (int i = 0; i < n; i++) v |= (uint64_t)p[i] << (8 * i);
    return v;
}

static int read_u32(struct cursor *c, uint32_t *v, const char *what) {
    const uint8_t *p = NULL;
    int r = take(c, 4, &p, what);
    if (r == 0) *v = (uint32_t)rd_le(p, 4);
    return r;
}

static int read_u64(struct cursor *c, uint64_t *v, const char *what) {
    const uint8_t *p = NULL;
    int r = take(c, 8, &p, what);
    if (r == 0) *v = rd_le(p, 8);
    return r;
}

/* A string: u64 length then bytes; the length is checked against the file before use. */
static int read_string(struct cursor *c, const uint8_t **ret, uint64_t *ret_len, const char *what) {
    uint64_t len = 0;
    int r = read_u64(c, &len, what);
    if (r == 0) r = take(c, len, ret, what);
    if (r == 0) *ret_len = len;
    return r;
}

static char *dup_n(const uint8_t *p, uint64_t n) {
    char *s = malloc((size_t)n + 1);
    if (s) {
        memcpy(s, p, (size_t)n);
        s[n] = '\0';
    }
    return s;
}

/* Skips one value of type; arrays may not nest. */
static int skip_value(struct cursor *c, uint32_t type, const char *key, int in_array) {
    const uint8_t *p;
    uint64_t n;
    if (type == LORAD_GGUF_STRING) return read_string(c, &p, &n, key);
    if (type == LORAD_GGUF_ARRAY) {
        if (in_array)
            return lorad_error_set(c->err, -EINVAL, "model", "%s: invalid GGUF file: nested arrays are not supported (key %s)",
                                   c->g->path, key);
        uint32_t et;
        int r;
        if ((r = read_u32(c, &et, key)) < 0 || (r = read_u64(c, &n, key)) < 0) return r;
        if (et == LORAD_GGUF_ARRAY)
            return lorad_error_set(c->err, -EINVAL, "model", "%s: invalid GGUF file: nested arrays are not supported (key %s)",
                                   c->g->path, key);
        uint64_t es = scalar_size(et);
        if (es) {
            if (n > remaining(c) / es) return trunc_err(c, key);
            c->pos += n * es;
            return 0;
        }
        if (et != LORAD_GGUF_STRING)
            return lorad_error_set(c->err, -EINVAL, "model", "%s: invalid GGUF file: unknown array element type %u (key %s)",
                                   c->g->path, et, key);
        if (n > remaining(c) / 8) return trunc_err(c, key); /* every string needs its 8-byte length */
        uint64_t len;
        for (uint64_t i = 0; i < n; i++)
            if ((r = read_string(c, &p, &len, key)) < 0) return r;
        return 0;
    }
    uint64_t es = scalar_size(type);
    if (!es)
        return lorad_error_set(c->err, -EINVAL, "model", "%s: invalid GGUF file: unknown value type %u (key %s)",
                               c->g->path, type, key);
    if (type == LORAD_GGUF_BOOL && c->pos < c->g->map.size && c->g->map.data[c->pos] > 1)
        return lorad_error_set(c->err, -EINVAL, "model", "%s: invalid GGUF file: bool value of %s is not 0 or 1",
                               c->g->path, key);
    return take(c, es, &p, key);
}

static int parse_kvs(struct lorad_gguf *g, struct cursor *c) {
    /* Every KV takes at least 8 (key length) + 4 (type) + 1 bytes. */
    if (g->n_kv > remaining(c) / 13)
        return lorad_error_set(c->err, -EINVAL, "model", "%s: invalid GGUF file: %llu metadata entries cannot fit in %llu bytes",
                               g->path, (unsigned long long)g->n_kv, (unsigned long long)remaining(c));
    g->kvs = calloc(g->n_kv ? g->n_kv : 1, sizeof *g->kvs);
    if (!g->kvs) return lorad_error_set(c->err, -ENOMEM, "model", "out of memory");
    for (uint64_t i = 0; i < g->n_kv; i++) {
        struct lorad_gguf_kv *kv = &g->kvs[i];
        const uint8_t *k;
        uint64_t klen = 0;
        int r = read_string(c, &k, &klen, "a metadata key");
        if (r < 0) return r;
        if (klen == 0 || klen > LORAD_GGUF_MAX_KEY || memchr(k, 0, (size_t)klen))
            return lorad_error_set(c->err, -EINVAL, "model", "%s: invalid GGUF file: bad metadata key of length %llu",
                                   g->path, (unsigned long long)klen);
        if (!(kv->key = dup_n(k, klen))) return lorad_error_set(c->err, -ENOMEM, "model", "out of memory");
        for (uint64_t j = 0; j < i; j++)
            if (strcmp(g->kvs[j].key, kv->key) == 0)
                return lorad_error_set(c->err, -EINVAL, "model", "%s: invalid GGUF file: duplicate key %s", g->path, kv->key);
        if ((r = read_u32(c, &kv->type, kv->key)) < 0) return r;
        uint64_t start = c->pos;
        kv->n = 1;
        if (kv->type == LORAD_GGUF_ARRAY) {
            if (remaining(c) >= 12) {
                kv->elem_type = (uint32_t)rd_le(g->map.data + c->pos, 4);
                kv->n = rd_le(g->map.data + c->pos + 4, 8);
            }
            start += 12;
        }
        if ((r = skip_value(c, kv->type, kv->key, 0)) < 0) return r;
        kv->data = g->map.data + start;
    }
    return 0;
}

static int tensor_err(struct lorad_gguf *g, struct lorad_error *err, const char *name, const char *what) {
    return lorad_error_set(err, -EINVAL, "model", "%s: invalid GGUF file: tensor %s: %s", g->path, name, what);
}

static int parse_tensor_infos(struct lorad_gguf *g, struct cursor *c) {
    /* Every tensor info takes at least 8 (name length) + 4 (n_dims) + 4 (type) + 8 (offset). */
    if (g->n_tensors > remaining(c) / 24)
        return lorad_error_set(c->err, -EINVAL, "model", "%s: invalid GGUF file: %llu tensors cannot fit in %llu bytes",
                               g->path, (unsigned long long)g->n_tensors, (unsigned long long)remaining(c));
    g->tensors = calloc(g->n_tensors ? g->n_tensors : 1, sizeof *g->tensors);
    if (!g->tensors) return lorad_error_set(c->err, -ENOMEM, "model", "out of memory");
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        struct lorad_gguf_tensor *t = &g->tensors[i];
        const uint8_t *nm;
        uint64_t nlen = 0;
        int r = read_string(c, &nm, &nlen, "a tensor name");
        if (r < 0) return r;
        if (nlen == 0 || nlen > LORAD_GGUF_MAX_NAME || memchr(nm, 0, (size_t)nlen))
            return lorad_error_set(c->err, -EINVAL, "model", "%s: invalid GGUF file: tensor name of length %llu (max %d)",
                                   g->path, (unsigned long long)nlen, LORAD_GGUF_MAX_NAME);
        if (!(t->name = dup_n(nm, nlen))) return lorad_error_set(c->err, -ENOMEM, "model", "out of memory");
        if ((r = read_u32(c, &t->n_dims, t->name)) < 0) return r;
        if (t->n_dims < 1 || t->n_dims > LORAD_GGUF_MAX_DIMS) return tensor_err(g, c->err, t->name, "n_dims not in 1..4");
        uint64_t count = 1;
        for (uint32_t d = 0; d < t->n_dims; d++) {
            if ((r = read_u64(c, &t->ne[d], t->name)) < 0) return r;
            if (t->ne[d] == 0 || __builtin_mul_overflow(count, t->ne[d], &count) || count > ((uint64_t)1 << 48))
                return tensor_err(g, c->err, t->name, "dimensions are zero or absurdly large");
        }
        for (uint32_t d = t->n_dims; d < LORAD_GGUF_MAX_DIMS; d++) t->ne[d] = 1;
        if ((r = read_u32(c, &t->type, t->name)) < 0 || (r = read_u64(c, &t->offset, t->name)) < 0) return r;
        int ti = ggml_type_index(t->type);
        if (ti < 0) {
            char what[64];
            snprintf(what, sizeof what, "unknown tensor type %u", t->type);
            return tensor_err(g, c->err, t->name, what);
        }
        if (t->ne[0] % ggml_types[ti].block) return tensor_err(g, c->err, t->name, "row length is not a multiple of the block size");
        t->nbytes = count / ggml_types[ti].block * ggml_types[ti].bytes;
        for (uint64_t j = 0; j < i; j++)
            if (strcmp(g->tensors[j].name, t->name) == 0) return tensor_err(g, c->err, t->name, "duplicate name");
    }
    return 0;
}

struct span { uint64_t begin, end; const char *name; };

static int cmp_span(const void *a, const void *b) {
    const struct span *x = a, *y = b;
    return x->begin < y->begin ? -1 : x->begin > y->begin;
}

static int place_tensors(struct lorad_gguf *g, struct cursor *c) {
    uint64_t a = g->alignment;
    uint64_t start = (c->pos + a - 1) / a * a;
    if (start > g->map.size)
        return lorad_error_set(c->err, -EINVAL, "model", "%s: invalid GGUF file: truncated before the tensor data", g->path);
    g->data_offset = start;
    uint64_t data_len = g->map.size - start;
    struct span *spans = calloc(g->n_tensors ? g->n_tensors : 1, sizeof *spans);
    if (!spans) return lorad_error_set(c->err, -ENOMEM, "model", "out of memory");
    int r = 0;
    for (uint64_t i = 0; i < g->n_tensors && r == 0; i++) {
        struct lorad_gguf_tensor *t = &g->tensors[i];
        if (t->offset % a) r = tensor_err(g, c->err, t->name, "offset is not aligned to general.alignment");
        else if (t->offset > data_len || t->nbytes > data_len - t->offset) {
            char what[160];
            snprintf(what, sizeof what, "data [%llu, +%llu) lies outside the %llu-byte data section",
                     (unsigned long long)t->offset, (unsigned long long)t->nbytes, (unsigned long long)data_len);
            r = tensor_err(g, c->err, t->name, what);
        }
        if (r < 0) break; /* never form a pointer outside the mapping */
        t->data = g->map.data + start + t->offset;
        spans[i] = (struct span){t->offset, t->offset + t->nbytes, t->name};
    }
    if (r == 0) {
        qsort(spans, g->n_tensors, sizeof *spans, cmp_span);
        for (uint64_t i = 1; i < g->n_tensors && r == 0; i++)
            if (spans[i].begin < spans[i - 1].end) r = tensor_err(g, c->err, spans[i].name, "data overlaps another tensor");
    }
    free(spans);
    return r;
}

static int parse(struct lorad_gguf *g, struct lorad_error *err) {
    struct cursor c = {g, 0, err};
    if (g->map.size < 4 || memcmp(g->map.data, "GGUF", 4) != 0)
        return lorad_error_set(err, -EINVAL, "model", "%s: not a GGUF file (wrong magic)", g->path);
    c.pos = 4;
    int r;
    if ((r = read_u32(&c, &g->version, "the version")) < 0) return r;
    if (g->version != 2 && g->version != 3)
        return lorad_error_set(err, -EINVAL, "model", "%s: GGUF version %u is not supported (2 or 3, little-endian)",
                               g->path, g->version);
    if ((r = read_u64(&c, &g->n_tensors, "the tensor count")) < 0) return r;
    if ((r = read_u64(&c, &g->n_kv, "the metadata count")) < 0) return r;
    if ((r = parse_kvs(g, &c)) < 0) return r;
    g->alignment = LORAD_GGUF_DEFAULT_ALIGNMENT;
    int64_t align;
    r = lorad_gguf_get_int(g, "general.alignment", 1, 1 << 20, &align, err);
    if (r == 0) {
        if (align & (align - 1))
            return lorad_error_set(err, -EINVAL, "model", "%s: general.alignment %lld is not a power of two", g->path,
                                   (long long)align);
        g->alignment = (uint32_t)align;
    } else if (r != -ENOENT) {
        return r;
    }
    if ((r = parse_tensor_infos(g, &c)) < 0) return r;
    return place_tensors(g, &c);
}

int lorad_gguf_open(const char *path, struct lorad_gguf **ret, struct lorad_error *err) {
    struct lorad_gguf *g = calloc(1, sizeof *g);
    if (!g || !(g->path = strdup(path))) {
        free(g);
        return lorad_error_set(err, -ENOMEM, "model", "out of memory");
    }
    int r = lorad_map_file(path, &g->map, err);
    if (r == 0) r = parse(g, err);
    if (r < 0) {
        lorad_gguf_close(g);
        return r;
    }
    *ret = g;
    return 0;
}

void lorad_gguf_close(struct lorad_gguf *g) {
    if (!g) return;
    for (uint64_t i = 0; g->kvs && i < g->n_kv; i++) free(g->kvs[i].key);
    for (uint64_t i = 0; g->tensors && i < g->n_tensors; i++) free(g->tensors[i].name);
    free(g->kvs);
    free(g->tensors);
    lorad_unmap(&g->map);
    free(g->path);
    free(g);
}

const struct lorad_gguf_kv *lorad_gguf_find_kv(const struct lorad_gguf *g, const char *key) {
    for (uint64_t i = 0; i < g->n_kv; i++)
        if (g->kvs[i].key && strcmp(g->kvs[i].key, key) == 0) return &g->kvs[i];
    return NULL;
}

const struct lorad_gguf_tensor *lorad_gguf_find_tensor(const struct lorad_gguf *g, const char *name) {
    for (uint64_t i = 0; i < g->n_tensors; i++)
        if (g->tensors[i].name && strcmp(g->tensors[i].name, name) == 0) return &g->tensors[i];
    return NULL;
}

static int wrong_type(const struct lorad_gguf *g, const char *key, const char *want, struct lorad_error *err) {
    return lorad_error_set(err, -EINVAL, key, "%s: GGUF key %s must be %s", g->path, key, want);
}

int lorad_gguf_get_int(const struct lorad_gguf *g, const char *key, int64_t lo, int64_t hi, int64_t *ret,
                       struct lorad_error *err) {
    const struct lorad_gguf_kv *kv = lorad_gguf_find_kv(g, key);
    if (!kv) return -ENOENT;
    const uint8_t *p = kv->data;
    int64_t v;
    switch (kv->type) {
    case LORAD_GGUF_U8: v = p[0]; break;
    case LORAD_GGUF_I8: v = (int8_t)p[0]; break;
    case LORAD_GGUF_U16: v = (uint16_t)rd_le(p, 2); break;
    case LORAD_GGUF_I16: v = (int16_t)rd_le(p, 2); break;
    case LORAD_GGUF_U32: v = (uint32_t)rd_le(p, 4); break;
    case LORAD_GGUF_I32: v = (int32_t)rd_le(p, 4); break;
    case LORAD_GGUF_I64: v = (int64_t)rd_le(p, 8); break;
    case LORAD_GGUF_U64:
        if (rd_le(p, 8) > INT64_MAX) return wrong_type(g, key, "an integer in range", err);
        v = (int64_t)rd_le(p, 8);
        break;
    default: return wrong_type(g, key, "an integer", err);
    }
    if (v < lo || v > hi)
        return lorad_error_set(err, -EINVAL, key, "%s: GGUF key %s = %lld is outside [%lld, %lld]", g->path, key,
                               (long long)v, (long long)lo, (long long)hi);
    *ret = v;
    return 0;
}

int lorad_gguf_get_float(const struct lorad_gguf *g, const char *key, double *ret, struct lorad_error *err) {
    const struct lorad_gguf_kv *kv = lorad_gguf_find_kv(g, key);
    if (!kv) return -ENOENT;
    if (kv->type == LORAD_GGUF_F32) {
        union { uint32_t u; float f; } v = {.u = (uint32_t)rd_le(kv->data, 4)};
        *ret = v.f;
        return 0;
    }
    if (kv->type == LORAD_GGUF_F64) {
        union { uint64_t u; double f; } v = {.u = rd_le(kv->data, 8)};
        *ret = v.f;
        return 0;
    }
    return wrong_type(g, key, "a float", err);
}

int lorad_gguf_get_bool(const struct lorad_gguf *g, const char *key, bool *ret, struct lorad_error *err) {
    const struct lorad_gguf_kv *kv = lorad_gguf_find_kv(g, key);
    if (!kv) return -ENOENT;
    if (kv->type != LORAD_GGUF_BOOL) return wrong_type(g, key, "a bool", err);
    *ret = kv->data[0] != 0;
    return 0;
}

int lorad_gguf_get_string(const struct lorad_gguf *g, const char *key, const char **ret_str, uint64_t *ret_len,
                          struct lorad_error *err) {
    const struct lorad_gguf_kv *kv = lorad_gguf_find_kv(g, key);
    if (!kv) return -ENOENT;
    if (kv->type != LORAD_GGUF_STRING) return wrong_type(g, key, "a string", err);
    *ret_len = rd_le(kv->data, 8);
    *ret_str = (const char *)kv->data + 8;
    return 0;
}
