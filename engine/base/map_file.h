/* Whole files mapped read-only: the model loaders, the GGUF and safetensors readers and the
 * adapter reader all read their files this way. Errors name the path (param "model", the field
 * almost every mapped file is read for). Also anonymous zeroed pages for buffers that come and go
 * with requests. */
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "error.h"

/* A whole file mapped PROT_READ, MAP_SHARED: jobs loading the same base share its pages. */
struct lorad_mapping {
    const uint8_t *data;
    size_t size;
};

/* Maps path read-only. An empty file is refused (-EINVAL) since no model format is empty.
 * Returns 0 and *ret_map, or -errno with err naming the path. Unmap with lorad_unmap(). */
int lorad_map_file(const char *path, struct lorad_mapping *ret_map, struct lorad_error *err);
void lorad_unmap(struct lorad_mapping *map);

/* bytes of zeroed private anonymous memory, or NULL when it cannot be mapped. For buffers of a
 * request's lifetime (KV caches): unmapped, they return to the kernel at once, where the heap
 * would keep them after glibc raises its mmap threshold to their size, and pages never touched
 * are never resident. Release with lorad_anon_free(p, bytes), bytes as given. */
void *lorad_anon_alloc(size_t bytes);
void lorad_anon_free(void *p, size_t bytes);
