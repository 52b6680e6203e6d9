/* GGUF (versions 2 and 3, little-endian) container parsing: header ("GGUF", version, tensor
 * count, KV count), metadata key/values of every type, tensor infos and the aligned data section.
 * All counts and lengths are checked against the bytes remaining in the file before anything is
 * allocated or read; nested arrays are refused. Nothing here knows about Llama: see load_gguf.h. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "map_file.h"

enum lorad_gguf_value_type {
    LORAD_GGUF_U8 = 0, LORAD_GGUF_I8 = 1, LORAD_GGUF_U16 = 2, LORAD_GGUF_I16 = 3,
    LORAD_GGUF_U32 = 4, LORAD_GGUF_I32 = 5, LORAD_GGUF_F32 = 6, LORAD_GGUF_BOOL = 7,
    LORAD_GGUF_STRING = 8, LORAD_GGUF_ARRAY = 9, LORAD_GGUF_U64 = 10, LORAD_GGUF_I64 = 11,
    LORAD_GGUF_F64 = 12,
};

/* ggml tensor types this parser can size (others are refused). */
enum lorad_ggml_type {
    LORAD_GGML_F32 = 0, LORAD_GGML_F16 = 1, LORAD_GGML_Q4_0 = 2, LORAD_GGML_Q4_1 = 3,
    LORAD_GGML_Q5_0 = 6, LORAD_GGML_Q5_1 = 7, LORAD_GGML_Q8_0 = 8, LORAD_GGML_Q8_1 = 9,
    LORAD_GGML_Q2_K = 10, LORAD_GGML_Q3_K = 11, LORAD_GGML_Q4_K = 12, LORAD_GGML_Q5_K = 13,
    LORAD_GGML_Q6_K = 14, LORAD_GGML_Q8_K = 15, LORAD_GGML_I8 = 24, LORAD_GGML_I16 = 25,
    LORAD_GGML_I32 = 26, LORAD_GGML_I64 = 27, LORAD_GGML_F64 = 28, LORAD_GGML_BF16 = 30,
};

#define LORAD_GGUF_MAX_DIMS 4
#define LORAD_GGUF_MAX_NAME 64     /* tensor names, per the GGUF spec */
#define LORAD_GGUF_MAX_KEY 65535   /* metadata keys */
#define LORAD_GGUF_DEFAULT_ALIGNMENT 32

struct lorad_gguf_kv {
    char *key;          /* NUL-terminated copy */
    uint32_t type;      /* enum lorad_gguf_value_type */
    uint32_t elem_type; /* for arrays */
    uint64_t n;         /* array length (1 for scalars) */
    const uint8_t *data; /* the value (or first element) inside the mapping; strings: u64 len + bytes */
};

struct lorad_gguf_tensor {
    char *name;         /* NUL-terminated copy */
    uint32_t n_dims;
    uint64_t ne[LORAD_GGUF_MAX_DIMS]; /* innermost first: ne[0] is the row length */
    uint32_t type;      /* enum lorad_ggml_type */
    uint64_t offset;    /* from the start of the data section */
    uint64_t nbytes;
    const void *data;   /* inside the mapping */
};

struct lorad_gguf {
    char *path;
    struct lorad_mapping map;
    uint32_t version;
    uint32_t alignment;
    uint64_t n_kv;
    struct lorad_gguf_kv *kvs;
    uint64_t n_tensors;
    struct lorad_gguf_tensor *tensors;
    uint64_t data_offset; /* file offset of the data section */
};

/* Maps and parses path. Returns 0 and *ret (freed with lorad_gguf_close), or -EINVAL naming the
 * file and what is wrong (wrong magic, unsupported version, truncation, counts beyond the file,
 * bad types, tensors out of bounds / misaligned / overlapping). */
int lorad_gguf_open(const char *path, struct lorad_gguf **ret, struct lorad_error *err);
void lorad_gguf_close(struct lorad_gguf *g);

/* Name of a ggml type ("Q8_0"), or NULL if unknown. */
const char *lorad_ggml_type_name(uint32_t type);

const struct lorad_gguf_kv *lorad_gguf_find_kv(const struct lorad_gguf *g, const char *key);
const struct lorad_gguf_tensor *lorad_gguf_find_tensor(const struct lorad_gguf *g, const char *name);

/* Typed getters: 0 on success, -ENOENT if key is absent (ret untouched), -EINVAL (err names
 * the file and key) if it has the wrong type or does not fit. Integers accept any integer type. */
int lorad_gguf_get_int(const struct lorad_gguf *g, const char *key, int64_t lo, int64_t hi, int64_t *ret,
                       struct lorad_error *err);
int lorad_gguf_get_float(const struct lorad_gguf *g, const char *key, double *ret, struct lorad_error *err);
int lorad_gguf_get_bool(const struct lorad_gguf *g, const char *key, bool *ret, struct lorad_error *err);
/* A string value: *ret_str points into the mapping (NOT NUL-terminated), *ret_len its length. */
int lorad_gguf_get_string(const struct lorad_gguf *g, const char *key, const char **ret_str, uint64_t *ret_len,
                          struct lorad_error *err);
