/* The models directory: each entry is a base model and its id is the entry's name — an HF
 * directory (holding config.json), a `.gguf` file or a llama2.c `.bin` file. Ids are matched
 * against the directory listing, so a client string never becomes a path by itself. */
#pragma once
#include <stddef.h>

#include "error.h"
#include "model_file.h" /* enum lorad_model_format */

#define LORAD_MODEL_ID_MAX 256

/* True iff id could name an entry: 1..255 bytes of [A-Za-z0-9._-], not starting with '.'. */
int lorad_model_id_valid(const char *id);

/* Calls fn(ctx, id, path, format) for each model entry, in name order; entries of other kinds
 * are skipped. fn returning non-zero stops the scan with that value. Returns 0, fn's value, or
 * -errno when the directory cannot be read. */
int lorad_model_dir_scan(const char *models_dir,
                         int (*fn)(void *ctx, const char *id, const char *path, enum lorad_model_format format),
                         void *ctx);

/* The path of model `id` in models_dir. Returns 0 and writes ret_path (cap bytes); -EINVAL
 * (param "model") when id is not a valid model name, -ENOENT (param "model") when there is no
 * such entry. */
int lorad_model_dir_resolve(const char *models_dir, const char *id, char *ret_path, size_t cap,
                            enum lorad_model_format *ret_format, struct lorad_error *err);
