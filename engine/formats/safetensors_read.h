/* Reading safetensors files: an 8-byte little-endian header length N, N bytes of JSON header
 * {"name":{"dtype","shape","data_offsets":[begin,end]}, "__metadata__":{str:str}}, then the data
 * section. The file is mapped read-only (MAP_SHARED) and validated as the spec requires: header
 * at most 100 MB, a JSON object without duplicate keys, known dtypes, shape x element size ==
 * end - begin, and the tensors, sorted by offset, tile the data section exactly (no gap, no
 * overlap, nothing after the last one). Tensor data pointers point into the mapping. */
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "error.h"

#define LORAD_ST_MAX_HEADER (100u * 1000u * 1000u)
#define LORAD_ST_MAX_DIMS 8

struct lorad_st_tensor {
    const char *name;  /* NUL-terminated, owned by the file */
    const char *dtype; /* safetensors name: "F32", "BF16", "F16", "I32", ... */
    int ndim;
    int64_t shape[LORAD_ST_MAX_DIMS];
    const void *data;  /* into the mapping; aligned only as the file happens to be */
    uint64_t nbytes;
};

struct lorad_st_file;

/* Opens and validates path. Returns 0 and *ret_file (owned by the caller, freed with
 * lorad_st_close), or -EINVAL/-errno with err naming the file and the problem. */
int lorad_st_open(const char *path, struct lorad_st_file **ret_file, struct lorad_error *err);
/* Like lorad_st_open for size bytes at data that the caller keeps alive (and unchanged) until
 * lorad_st_close, e.g. a member inside a mapped archive; name stands for the file in errors. */
int lorad_st_open_mem(const char *name, const void *data, size_t size, struct lorad_st_file **ret_file,
                      struct lorad_error *err);
/* Unmaps (when lorad_st_open mapped it) and frees; every pointer obtained from f dies with it. Safe on NULL. */
void lorad_st_close(struct lorad_st_file *f);

const char *lorad_st_path(const struct lorad_st_file *f);
size_t lorad_st_n_tensors(const struct lorad_st_file *f);
/* Tensors in header order; i < lorad_st_n_tensors(). */
const struct lorad_st_tensor *lorad_st_tensor_at(const struct lorad_st_file *f, size_t i);
/* The tensor called name, or NULL. */
const struct lorad_st_tensor *lorad_st_find(const struct lorad_st_file *f, const char *name);
/* The __metadata__ value for key, or NULL. Owned by f. */
const char *lorad_st_metadata(const struct lorad_st_file *f, const char *key);
