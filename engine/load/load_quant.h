/* Source encodings a loader can turn into an engine tensor (F32 or BF16), and the GGML block
 * formats it dequantises. Q8_0 block (34 bytes, 32 values): f16 scale d, then 32 int8 q;
 * x = d*q. Q4_0 block (18 bytes, 32 values): f16 scale d, then 16 bytes whose low nibbles are
 * values 0..15 and high nibbles values 16..31; x = d*(nibble - 8). */
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
};

#define LORAD_QK 32 /* values per Q8_0 / Q4_0 block */
#define LORAD_Q8_0_BLOCK_BYTES 34
#define LORAD_Q4_0_BLOCK_BYTES 18

/* Bytes of one row of cols values in type (cols a multiple of 32 for the block types). */
size_t lorad_src_row_bytes(enum lorad_src_type type, int64_t cols);
const char *lorad_src_type_name(enum lorad_src_type type);

/* Dequantise n values (n a multiple of 32) from blocks at src into dst. */
void lorad_dequant_q8_0(float *dst, const void *src, int64_t n);
void lorad_dequant_q4_0(float *dst, const void *src, int64_t n);

/* Makes *dst a (rows, cols) engine tensor from src, whose bytes the caller has bounds-checked
 * (rows * lorad_src_row_bytes(type, cols) bytes). F32/BF16 without permutation are used in place
 * when suitably aligned (src must then outlive the owner: attach its mapping to o); everything
 * else is converted row by row into an F32 (or, for BF16, BF16) buffer owned by o. With
 * rope_head_dim > 0 the rows are moved from Meta to HF RoPE layout. With o->mode PROBE nothing is
 * converted: the bytes a copy would take are counted and *dst points at src. Returns 0 or -ENOMEM. */
int lorad_load_import(struct lorad_load_owner *o, struct lorad_tensor *dst, enum lorad_src_type type,
                      const void *src, int64_t rows, int64_t cols, int rope_head_dim);
