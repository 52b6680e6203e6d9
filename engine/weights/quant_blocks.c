#include "quant_blocks.h"

#include <assert.h>
#include <string.h>

#include "weights.h"

#define QK_K 256

static uint16_t u16le(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }

int64_t lorad_dtype_block_values(enum lorad_dtype dtype) {
    switch (dtype) {
    case LORAD_DTYPE_Q8_0: case LORAD_DTYPE_Q4_0: return 32;
    case LORAD_DTYPE_Q4_K: case LORAD_DTYPE_Q6_K: return QK_K;
    case LORAD_DTYPE_F32: case LORAD_DTYPE_BF16: case LORAD_DTYPE_F16: return 1;
    }
    return 1;
}

int64_t lorad_dtype_block_bytes(enum lorad_dtype dtype) {
    switch (dtype) {
    case LORAD_DTYPE_Q8_0: return 34;
    case LORAD_DTYPE_Q4_0: return 18;
    case LORAD_DTYPE_Q4_K: return 144;
    case LORAD_DTYPE_Q6_K: return 210;
    case LORAD_DTYPE_F32: case LORAD_DTYPE_BF16: case LORAD_DTYPE_F16: return lorad_dtype_size(dtype);
    }
    return 0;
}

size_t lorad_dtype_row_bytes(enum lorad_dtype dtype, int64_t cols) {
    return (size_t)(cols / lorad_dtype_block_values(dtype) * lorad_dtype_block_bytes(dtype));
}

/* dst (32) = group g of a Q4_K block b. */
static void q4_k_group(float *dst, const uint8_t *b, int g) {
    float d = lorad_f16_to_f32(u16le(b)), dmin = lorad_f16_to_f32(u16le(b + 2));
    const uint8_t *sc = b + 4, *qs = b + 16 + 32 * (g / 2);
    int s, m;
    if (g < 4) {
        s = sc[g] & 63;
        m = sc[g + 4] & 63;
    } else {
        s = (sc[g + 4] & 15) | ((sc[g - 4] >> 6) << 4);
        m = (sc[g + 4] >> 4) | ((sc[g] >> 6) << 4);
    }
    float ds = d * (float)s, dm = dmin * (float)m;
    int shift = (g & 1) ? 4 : 0;
    for (int l = 0; l < 32; l++) dst[l] = ds * (float)((qs[l] >> shift) & 15) - dm;
}

/* dst (32) = group g (values 32g .. 32g+31) of a Q6_K block b. */
static void q6_k_group(float *dst, const uint8_t *b, int g) {
    const uint8_t *ql = b, *qh = b + 128;
    const int8_t *scales = (const int8_t *)(b + 192);
    float d = lorad_f16_to_f32(u16le(b + 208));
    int h = g / 4, i = g % 4;
    ql += 64 * h;
    qh += 32 * h;
    for (int l = 0; l < 32; l++) {
        int lo = (ql[l + 32 * (i & 1)] >> (i >= 2 ? 4 : 0)) & 15;
        int hi = (qh[l] >> (2 * i)) & 3;
        dst[l] = d * (float)scales[8 * h + 2 * i + l / 16] * (float)((lo | hi << 4) - 32);
    }
}

/* dst (32) = group g of the row, where groups count from the row's start. */
static void group_f32(float *dst, enum lorad_dtype dt, const uint8_t *row, int64_t g) {
    switch (dt) {
    case LORAD_DTYPE_Q8_0: {
        const uint8_t *b = row + g * 34;
        float d = lorad_f16_to_f32(u16le(b));
        for (int j = 0; j < 32; j++) dst[j] = d * (float)(int8_t)b[2 + j];
        return;
    }
    case LORAD_DTYPE_Q4_0: {
        const uint8_t *b = row + g * 18;
        float d = lorad_f16_to_f32(u16le(b));
        for (int j = 0; j < 16; j++) {
            dst[j] = d * (float)((b[2 + j] & 15) - 8);
            dst[j + 16] = d * (float)((b[2 + j] >> 4) - 8);
        }
        return;
    }
    case LORAD_DTYPE_Q4_K: q4_k_group(dst, row + (g / 8) * 144, (int)(g % 8)); return;
    case LORAD_DTYPE_Q6_K: q6_k_group(dst, row + (g / 8) * 210, (int)(g % 8)); return;
    case LORAD_DTYPE_F32: case LORAD_DTYPE_BF16: case LORAD_DTYPE_F16: break;
    }
    assert(!"not a quantised dtype");
}

void lorad_row_segment_f32(float *dst, enum lorad_dtype dtype, const void *row, int64_t c0, int64_t n) {
    switch (dtype) {
    case LORAD_DTYPE_F32: memcpy(dst, (const float *)row + c0, (size_t)n * sizeof(float)); return;
    case LORAD_DTYPE_BF16:
        for (int64_t i = 0; i < n; i++) dst[i] = lorad_bf16_to_f32(((const uint16_t *)row)[c0 + i]);
        return;
    case LORAD_DTYPE_F16:
        for (int64_t i = 0; i < n; i++) dst[i] = lorad_f16_to_f32(((const uint16_t *)row)[c0 + i]);
        return;
    case LORAD_DTYPE_Q8_0: case LORAD_DTYPE_Q4_0: case LORAD_DTYPE_Q4_K: case LORAD_DTYPE_Q6_K: break;
    }
    assert(c0 % LORAD_QUANT_GROUP == 0 && n % LORAD_QUANT_GROUP == 0);
    for (int64_t g = c0 / LORAD_QUANT_GROUP; g < (c0 + n) / LORAD_QUANT_GROUP; g++, dst += LORAD_QUANT_GROUP)
        group_f32(dst, dtype, row, g);
}

float lorad_tensor_value(const struct lorad_tensor *t, int64_t row, int64_t col) {
    const char *r = (const char *)t->data + (size_t)row * lorad_dtype_row_bytes(t->dtype, t->cols);
    if (!lorad_dtype_is_quantised(t->dtype)) {
        float v;
        lorad_row_segment_f32(&v, t->dtype, r, col, 1);
        return v;
    }
    float g[LORAD_QUANT_GROUP];
    lorad_row_segment_f32(g, t->dtype, r, col / LORAD_QUANT_GROUP * LORAD_QUANT_GROUP, LORAD_QUANT_GROUP);
    return g[col % LORAD_QUANT_GROUP];
}
