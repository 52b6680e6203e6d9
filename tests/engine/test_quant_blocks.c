/* The engine's decoding of GGML's block formats (engine/weights/quant_blocks.c) against our numpy
 * decoder written from the format definitions (tests/reference/ggml_blocks_ref.py), on random
 * blocks: random quant bytes with random normal f16 scales. Also: a 32-aligned segment decodes to
 * the same values as the whole row, and lorad_tensor_value reads single elements. */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "weights.h"

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint32_t next(void) {
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return (uint32_t)(rng >> 32);
}
static uint16_t random_half(void) {
    float mag = (float)(0.001 + 2.0 * (next() % 10000) / 10000.0);
    return lorad_f32_to_f16(next() & 1 ? -mag : mag);
}
static void put_half(uint8_t *p, uint16_t h) { p[0] = (uint8_t)h; p[1] = (uint8_t)(h >> 8); }

/* Offsets of a block's f16 fields. */
static void set_scales(enum lorad_dtype dt, uint8_t *b) {
    switch (dt) {
    case LORAD_DTYPE_Q8_0: case LORAD_DTYPE_Q4_0: put_half(b, random_half()); break;
    case LORAD_DTYPE_Q4_K: put_half(b, random_half()); put_half(b + 2, random_half()); break;
    case LORAD_DTYPE_Q6_K: put_half(b + 208, random_half()); break;
    default: fail_msg("not a block dtype");
    }
}

static void check_dtype(enum lorad_dtype dt) {
    int64_t per = lorad_dtype_block_values(dt), bytes = lorad_dtype_block_bytes(dt), nb = 48, n = nb * per;
    assert_int_equal(lorad_dtype_row_bytes(dt, n), (size_t)(nb * bytes));
    uint8_t *blocks = malloc((size_t)(nb * bytes));
    for (int64_t i = 0; i < nb * bytes; i++) blocks[i] = (uint8_t)next();
    for (int64_t b = 0; b < nb; b++) set_scales(dt, blocks + b * bytes);
    float *all = malloc(sizeof(float) * (size_t)n), *seg = malloc(sizeof(float) * (size_t)n);
    lorad_row_segment_f32(all, dt, blocks, 0, n);
    for (int t = 0; t < 50; t++) {
        int64_t g0 = next() % (n / 32), g1 = g0 + 1 + next() % (n / 32 - g0);
        lorad_row_segment_f32(seg, dt, blocks, g0 * 32, (g1 - g0) * 32);
        assert_memory_equal(seg, all + g0 * 32, sizeof(float) * (size_t)((g1 - g0) * 32));
    }
    struct lorad_tensor t = {blocks, dt, 2, n / 2};
    for (int k = 0; k < 50; k++) {
        int64_t i = next() % n;
        float v = lorad_tensor_value(&t, i / (n / 2), i % (n / 2));
        assert_memory_equal(&v, &all[i], sizeof v);
    }
    char *dir = test_mkdtemp("quant");
    char *bp = test_path(dir, "blocks.bin"), *dp = test_path(dir, "decoded.f32");
    FILE *f = fopen(bp, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(blocks, 1, (size_t)(nb * bytes), f), (size_t)(nb * bytes));
    fclose(f);
    assert_non_null(f = fopen(dp, "wb"));
    assert_int_equal(fwrite(all, sizeof(float), (size_t)n, f), (size_t)n);
    fclose(f);
    char *argv[] = {LORAD_PYTHON, LORAD_SOURCE_DIR "/tests/reference/ggml_blocks_ref.py", "check",
                    (char *)lorad_dtype_name(dt), bp, dp, NULL};
    int rc = test_run(argv);
    if (rc != 0) fail_msg("%s: the reference decodes the blocks differently (files in %s)", lorad_dtype_name(dt), dir);
    test_rmtree(dir);
    free(dir); free(bp); free(dp); free(blocks); free(all); free(seg);
}

static void test_q8_0(void **state) { (void)state; check_dtype(LORAD_DTYPE_Q8_0); }
static void test_q4_0(void **state) { (void)state; check_dtype(LORAD_DTYPE_Q4_0); }
static void test_q4_k(void **state) { (void)state; check_dtype(LORAD_DTYPE_Q4_K); }
static void test_q6_k(void **state) { (void)state; check_dtype(LORAD_DTYPE_Q6_K); }

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_q8_0),
        cmocka_unit_test(test_q4_0),
        cmocka_unit_test(test_q4_k),
        cmocka_unit_test(test_q6_k),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
