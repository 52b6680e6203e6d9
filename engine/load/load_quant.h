/* Source encodings a loader can turn into an engine tensor: F32 and BF16 as they are, F16 widened
 * to F32, and GGML's block formats kept as stored (their layouts: engine/weights/quant_blocks.h). */
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "load_common.h"

enum lorad_src_type {
    LORAD_SRC_F32,
    LORAD_SRC_F16,
    LORAD_SRC_BF16,
    LORAD_SRC_Q8_0,
    LORAD_SRC_Q4_0,
    LORAD_SRC_Q4_K,
    LORAD_SRC_Q6_K,
};

#define LORAD_QK 32 /* values per Q8_0 / Q4_0 block */
#define LORAD_Q8_0_BLOCK_BYTES 34
#define LORAD_Q4_0_BLOCK_BYTES 18

/* Bytes of one row of cols values in type (cols a multiple of 32 for the block types). */
size_t lorad_src_row_bytes(enum lorad_src_type type, int64_t cols);
const char *lorad_src_type_name(enum lorad_src_type type);


/* Makes *dst a (rows, cols) engine tensor from src, whose bytes the caller has bounds-checked
 * (rows * lorad_src_row_bytes(type, cols) bytes). F32/BF16 without permutation (when suitably
 * aligned) and the block formats without permutation are used in place, so they stay as stored
 * and mapped (src must then outlive the owner: attach its mapping to o); permuted block-format
 * rows are copied as they are, in HF order, into a buffer owned by o; F16 (and permuted or
 * misaligned F32) becomes F32, and BF16 BF16, converted row by row into a buffer owned by o. With
 * rope_head_dim > 0 the rows are moved from Meta to HF RoPE layout. With o->mode PROBE nothing is
 * converted: the bytes a copy would take are counted and *dst points at src. Returns 0 or -ENOMEM. */
int lorad_load_import(struct lorad_load_owner *o, struct lorad_tensor *dst, enum lorad_src_type type,
                      const void *src, int64_t rows, int64_t cols, int rope_head_dim);
