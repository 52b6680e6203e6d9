/* GGML's block-quantised formats as frozen tensor dtypes (weights.h LORAD_DTYPE_Q*).
 *
 * A row of a quantised tensor is a run of blocks; values are decoded a 32-value group at a time,
 * so any 32-aligned segment of a row can be decoded without its neighbours. That is what lets the
 * GEMM kernels dequantise the part of a weight a tile needs while packing it, so a quantised base
 * stays quantised in memory. Formats (little-endian, f16 = IEEE half):
 *
 *   Q8_0  (34 bytes / 32 values):  f16 d, int8 q[32];                       x = d*q
 *   Q4_0  (18 bytes / 32 values):  f16 d, u8 qs[16]: value j low nibble of qs[j], value j+16 its
 *                                  high nibble;                              x = d*(q - 8)
 *   Q4_K (144 bytes / 256 values): f16 d, f16 dmin, u8 scales[12], u8 qs[128]. Eight groups of 32
 *                                  with 6-bit scale sc and min m: groups 0-3 take sc = scales[g] &
 *                                  63, m = scales[g+4] & 63; groups 4-7 sc = (scales[g+4] & 15) |
 *                                  (scales[g-4] >> 6) << 4, m = (scales[g+4] >> 4) | (scales[g] >> 6)
 *                                  << 4. Groups 2c and 2c+1 are the low and high nibbles of
 *                                  qs[32c .. 32c+31];                        x = d*sc*q - dmin*m
 *   Q6_K (210 bytes / 256 values): u8 ql[128], u8 qh[64], int8 scales[16], f16 d. Two halves of
 *                                  128; in half h (ql += 64h, qh += 32h) value 32i + l (i = 0..3,
 *                                  l = 0..31) has low 4 bits from ql[l + 32(i&1)] (low nibble for
 *                                  i < 2, high for i >= 2) and high 2 bits (qh[l] >> 2i) & 3; its
 *                                  scale is scales[8h + 2i + l/16];          x = d*scale*(q - 32)
 */
#pragma once
#include <stddef.h>
#include <stdint.h>

#define LORAD_QUANT_GROUP 32 /* values decoded together; segments start and end on these */

enum lorad_dtype;
struct lorad_tensor;

/* Values per block (1 for the plain dtypes) and bytes per block (the element size for them). */
int64_t lorad_dtype_block_values(enum lorad_dtype dtype);
int64_t lorad_dtype_block_bytes(enum lorad_dtype dtype);

/* Bytes of one row of cols values (cols a multiple of the block for quantised dtypes). */
size_t lorad_dtype_row_bytes(enum lorad_dtype dtype, int64_t cols);

/* dst (n) = values [c0, c0 + n) of the row at `row` as f32, for any dtype. For quantised
 * dtypes c0 and n are multiples of LORAD_QUANT_GROUP. */
void lorad_row_segment_f32(float *dst, enum lorad_dtype dtype, const void *row, int64_t c0, int64_t n);

/* Element (row, col) of a frozen tensor of any dtype as f32 (decodes its group: for tests and
 * one-off reads, not for loops over a tensor). */
float lorad_tensor_value(const struct lorad_tensor *t, int64_t row, int64_t col);
