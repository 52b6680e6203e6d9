/* Writing safetensors files: 8-byte little-endian header length, a JSON header
 * {"name":{"dtype","shape","data_offsets":[begin,end]}, "__metadata__":{str:str}}, padded with
 * spaces to a multiple of 8, then the raw little-endian tensor bytes in header order.
 *
 * The writer borrows tensor data: each pointer passed to lorad_st_writer_add() must stay valid
 * until lorad_st_writer_finish(). The file appears atomically: it is written to PATH.tmp, fsynced,
 * and renamed over PATH, so a reader never sees a partial file. */
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "error.h"

struct lorad_st_writer;

/* Starts a writer for path. Returns 0 and *ret_writer, or -ENOMEM. */
int lorad_st_writer_new(struct lorad_st_writer **ret_writer, const char *path);

/* Adds a string pair to __metadata__. Both strings are copied. */
int lorad_st_writer_metadata(struct lorad_st_writer *w, const char *key, const char *value);

/* Adds a tensor. dtype is a safetensors dtype name ("F32","BF16","F16","I32","I64","U8", ...);
 * shape has ndim entries (ndim may be 0 for a scalar); nbytes must equal the product of the shape
 * times the element size. Names must be unique. data is borrowed (see above). */
int lorad_st_writer_add(struct lorad_st_writer *w, const char *name, const char *dtype,
                        const int64_t *shape, int ndim, const void *data, size_t nbytes);

/* Writes the file (temp + fsync + rename + fsync of the directory) and frees the writer, whether
 * it succeeds or not. Returns 0 or -errno with err saying which path failed. */
int lorad_st_writer_finish(struct lorad_st_writer *w, struct lorad_error *err);

/* Frees a writer without writing anything. Safe on NULL. */
void lorad_st_writer_free(struct lorad_st_writer *w);

/* Element size of a safetensors dtype name, or 0 for an unknown name. */
int lorad_st_dtype_size(const char *dtype);
