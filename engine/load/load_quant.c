#include "load_quant.h"

#include <assert.h>
#include <errno.h>
#include <string.h>

static uint16_t read_u16le(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }

size_t lorad_src_row_bytes(enum lorad_src_type type, int64_t cols) {
    switch (type) {
    case LORAD_SRC_F32: return (size_t)cols * 4;
    case LORAD_SRC_F16:
    case LORAD_SRC_BF16: return (size_t)cols * 2;
    case LORAD_SRC_Q8_0: return (size_t)(cols / LORAD_QK) * LORAD_Q8_0_BLOCK_BYTES;
    case LORAD_SRC_Q4_0: return (size_t)(cols / LORAD_QK) * LORAD_Q4_0_BLOCK_BYTES;
    }
    return 0;
}

const char *lorad_src_type_name(enum lorad_src_type type) {
    static const char *names[] = {"F32", "F16", "BF16", "Q8_0", "Q4_0"};
    return (unsigned)type < sizeof names / sizeof names[0] ? names[type] : "?";
}

void lorad_dequant_q8_0(float *dst, const void *src, int64_t n) {
    assert(n % LORAD_QK == 0);
    const uint8_t *b = src;
    for (int64_t i = 0; i < n; i += LORAD_QK, b += LORAD_Q8_0_BLOCK_BYTES) {
        float d = lorad_f16_to_f32(read_u16le(b));
        for (int j = 0; j < LORAD_QK; j++) dst[i + j] = d * (float)(int8_t)b[2 + j];
    }
}

void lorad_dequant_q4_0(float *dst, const void *src, int64_t n) {
    assert(n % LORAD_QK == 0);
    const uint8_t *b = src;
    for (int64_t i = 0; i < n; i += LORAD_QK, b += LORAD_Q4_0_BLOCK_BYTES) {
        float d = lorad_f16_to_f32(read_u16le(b));
        for (int j = 0; j < LORAD_QK / 2; j++) {
            dst[i + j] = d * (float)((b[2 + j] & 0x0f) - 8);
            dst[i + j + LORAD_QK / 2] = d * (float)((b[2 + j] >> 4) - 8);
        }
    }
}

static void convert_row(void *dst, enum lorad_src_type type, const uint8_t *src, int64_t cols) {
    switch (type) {
    case LORAD_SRC_F32: memcpy(dst, src, (size_t)cols * 4); break;
    case LORAD_SRC_BF16: memcpy(dst, src, (size_t)cols * 2); break;
    case LORAD_SRC_F16:
        for (int64_t c = 0; c < cols; c++) ((float *)dst)[c] = lorad_f16_to_f32(read_u16le(src + 2 * c));
        break;
    case LORAD_SRC_Q8_0: lorad_dequant_q8_0(dst, src, cols); break;
    case LORAD_SRC_Q4_0: lorad_dequant_q4_0(dst, src, cols); break;
    }
}

int lorad_load_import(struct lorad_load_owner *o, struct lorad_tensor *dst, enum lorad_src_type type,
                      const void *src, int64_t rows, int64_t cols, int rope_head_dim) {
    enum lorad_dtype out = type == LORAD_SRC_BF16 ? LORAD_DTYPE_BF16 : LORAD_DTYPE_F32;
    size_t esize = (size_t)lorad_dtype_size(out), src_row = lorad_src_row_bytes(type, cols);
    lorad_load_owner_note_dtype(o, lorad_src_type_name(type));
    if ((type == LORAD_SRC_F32 || type == LORAD_SRC_BF16) && rope_head_dim == 0 &&
        (uintptr_t)src % esize == 0) {
        *dst = (struct lorad_tensor){.data = src, .dtype = out, .rows = rows, .cols = cols};
        o->mapped_bytes += (size_t)rows * src_row;
        return 0;
    }
    size_t out_row = (size_t)cols * esize;
    if (o->mode == LORAD_LOAD_PROBE) {
        o->owned_bytes += (size_t)rows * out_row;
        *dst = (struct lorad_tensor){.data = src, .dtype = out, .rows = rows, .cols = cols};
        return 0;
    }
    uint8_t *buf = lorad_load_owner_alloc(o, (size_t)rows * out_row);
    if (!buf) return -ENOMEM;
    for (int64_t r = 0; r < rows; r++) {
        int64_t d = rope_head_dim ? lorad_rope_hf_row_of_meta_row(r, rope_head_dim) : r;
        convert_row(buf + (size_t)d * out_row, type, (const uint8_t *)src + (size_t)r * src_row, cols);
    }
    *dst = (struct lorad_tensor){.data = buf, .dtype = out, .rows = rows, .cols = cols};
    return 0;
}
