/* Whole files mapped read-only: the model loaders, the GGUF and safetensors readers and the
 * adapter reader all read their files this way. Errors name the path (param "model", the field
 * almost every mapped file is read for). */
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
