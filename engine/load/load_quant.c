#include "load_quant.h"

#include <assert.h>
#include <stdbool.h>
#include <errno.h>
#include <string.h>


/* The engine dtype a source encoding becomes. */
static enum lorad_dtype engine_dtype(enum lorad_src_type type) {
    switch (type) {
    case LORAD_SRC_F32: case LORAD_SRC_F16: return LORAD_DTYPE_F32;
    case LORAD_SRC_BF16: return LORAD_DTYPE_BF16;
    case LORAD_SRC_Q8_0: return LORAD_DTYPE_Q8_0;
    case LORAD_SRC_Q4_0: return LORAD_DTYPE_Q4_0;
    case LORAD_SRC_Q4_K: return LORAD_DTYPE_Q4_K;
    case LORAD_SRC_Q6_K: return LORAD_DTYPE_Q6_K;
    }
    return LORAD_DTYPE_F32;
}

size_t lorad_src_row_bytes(enum lorad_src_type type, int64_t cols) {
    if (type == LORAD_SRC_F16) return (size_t)cols * 2;
    return lorad_dtype_row_bytes(engine_dtype(type), cols);
}

const char *lorad_src_type_name(enum lorad_src_type type) {
    return type == LORAD_SRC_F16 ? "F16" : lorad_dtype_name(engine_dtype(type));
}

static void convert_row(void *dst, enum lorad_src_type type, const uint8_t *src, int64_t cols) {
    if (type == LORAD_SRC_F16) {
        lorad_row_segment_f32(dst, LORAD_DTYPE_F16, src, 0, cols);
        return;
    }
    memcpy(dst, src, lorad_src_row_bytes(type, cols)); /* kept in its own dtype */
}

int lorad_load_import(struct lorad_load_owner *o, struct lorad_tensor *dst, enum lorad_src_type type,
                      const void *src, int64_t rows, int64_t cols, int rope_head_dim) {
    enum lorad_dtype out = engine_dtype(type);
    bool blocks = lorad_dtype_is_quantised(out);
    size_t esize = blocks ? 1 : (size_t)lorad_dtype_size(out), src_row = lorad_src_row_bytes(type, cols);
    lorad_load_owner_note_dtype(o, lorad_src_type_name(type));
    if (type != LORAD_SRC_F16 && rope_head_dim == 0 && (uintptr_t)src % esize == 0) {
        *dst = (struct lorad_tensor){.data = src, .dtype = out, .rows = rows, .cols = cols};
        o->mapped_bytes += (size_t)rows * src_row;
        return 0;
    }
    size_t out_row = lorad_dtype_row_bytes(out, cols);
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
