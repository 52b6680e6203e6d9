/* The safetensors reader returns exactly what the lead's writer wrote (checked also by our own
 * Python parser), and refuses every malformed file with an error naming the file and the fault. */
#include "testutil.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats_testutil.h"
#include "safetensors_read.h"
#include "safetensors_write.h"
#include "weights.h"

static char *dir;

static int setup(void **state) {
    (void)state;
    dir = test_mkdtemp("st");
    return 0;
}

static int teardown(void **state) {
    (void)state;
    test_rmtree(dir);
    free(dir);
    return 0;
}

static char *write_sample(void) {
    char *path = test_path(dir, "sample.safetensors");
    float a[12], s = 42;
    uint16_t b[5];
    int32_t c[8];
    for (int i = 0; i < 12; i++) a[i] = (float)i * 0.25f - 1;
    for (int i = 0; i < 5; i++) b[i] = lorad_f32_to_bf16((float)i + 0.5f);
    for (int i = 0; i < 8; i++) c[i] = 7 * i - 5;
    struct lorad_st_writer *w;
    assert_int_equal(lorad_st_writer_new(&w, path), 0);
    assert_int_equal(lorad_st_writer_metadata(w, "format", "pt"), 0);
    assert_int_equal(lorad_st_writer_metadata(w, "note", "h\xc3\xa9llo"), 0);
    assert_int_equal(lorad_st_writer_add(w, "a", "F32", (int64_t[]){3, 4}, 2, a, sizeof a), 0);
    assert_int_equal(lorad_st_writer_add(w, "b", "BF16", (int64_t[]){5}, 1, b, sizeof b), 0);
    assert_int_equal(lorad_st_writer_add(w, "c", "I32", (int64_t[]){2, 2, 2}, 3, c, sizeof c), 0);
    /* shape must be non-NULL even for ndim 0: the writer memcpys it (UBSan flags NULL). */
    assert_int_equal(lorad_st_writer_add(w, "s", "F32", (int64_t[]){1}, 0, &s, sizeof s), 0);
    assert_int_equal(lorad_st_writer_add(w, "e", "F16", (int64_t[]){0}, 1, NULL, 0), 0);
    struct lorad_error err = {0};
    assert_int_equal(lorad_st_writer_finish(w, &err), 0);
    return path;
}

static void test_round_trip_through_reader_and_python(void **state) {
    (void)state;
    char *path = write_sample();
    struct lorad_st_file *f;
    struct lorad_error err = {0};
    assert_int_equal(lorad_st_open(path, &f, &err), 0);
    assert_int_equal(lorad_st_n_tensors(f), 5);
    assert_string_equal(lorad_st_metadata(f, "format"), "pt");
    assert_string_equal(lorad_st_metadata(f, "note"), "h\xc3\xa9llo");
    assert_null(lorad_st_metadata(f, "missing"));
    assert_null(lorad_st_find(f, "zzz"));
    const struct lorad_st_tensor *t = lorad_st_find(f, "a");
    assert_non_null(t);
    assert_string_equal(t->dtype, "F32");
    assert_int_equal(t->ndim, 2);
    assert_int_equal(t->shape[0], 3);
    assert_int_equal(t->shape[1], 4);
    for (int i = 0; i < 12; i++) {
        float v;
        memcpy(&v, (const char *)t->data + 4 * i, 4);
        assert_true(v == (float)i * 0.25f - 1);
    }
    t = lorad_st_find(f, "b");
    for (int i = 0; i < 5; i++) {
        uint16_t h;
        memcpy(&h, (const char *)t->data + 2 * i, 2);
        assert_true(lorad_bf16_to_f32(h) == (float)i + 0.5f);
    }
    t = lorad_st_find(f, "c");
    assert_int_equal(t->ndim, 3);
    for (int i = 0; i < 8; i++) {
        int32_t v;
        memcpy(&v, (const char *)t->data + 4 * i, 4);
        assert_int_equal(v, 7 * i - 5);
    }
    t = lorad_st_find(f, "s");
    assert_int_equal(t->ndim, 0);
    assert_int_equal(t->nbytes, 4);
    t = lorad_st_find(f, "e");
    assert_int_equal(t->nbytes, 0);
    assert_int_equal(t->shape[0], 0);
    lorad_st_close(f);
    char *argv[] = {LORAD_PYTHON, LORAD_SOURCE_DIR "/tests/formats/check_safetensors.py", path, NULL};
    assert_int_equal(test_run(argv), 0);
    free(path);
}

/* Writes an 8-byte length (hlen_field), the header text and data_len bytes of data. */
static char *write_raw(const char *name, uint64_t hlen_field, const char *header, size_t data_len) {
    char *path = test_path(dir, name);
    size_t hl = strlen(header), n = 8 + hl + data_len;
    uint8_t *buf = calloc(1, n);
    for (int i = 0; i < 8; i++) buf[i] = (uint8_t)(hlen_field >> (8 * i));
    memcpy(buf + 8, header, hl);
    test_write_file(path, buf, n);
    free(buf);
    return path;
}

static void expect_bad(const char *name, uint64_t hlen_field, const char *header, size_t data_len, const char *fault) {
    if (hlen_field == UINT64_MAX) hlen_field = strlen(header);
    char *path = write_raw(name, hlen_field, header, data_len);
    struct lorad_st_file *f = (void *)1;
    struct lorad_error err = {0};
    int r = lorad_st_open(path, &f, &err);
    if (r != -EINVAL) fail_msg("%s: expected -EINVAL, got %d (%s)", name, r, err.message);
    assert_true(f == (void *)1); /* output untouched on failure */
    if (!strstr(err.message, path)) fail_msg("%s: error does not name the file: %s", name, err.message);
    if (!strstr(err.message, fault)) fail_msg("%s: expected \"%s\" in: %s", name, fault, err.message);
    free(path);
}

static void test_malformed_files_are_refused(void **state) {
    (void)state;
    const uint64_t H = UINT64_MAX; /* "the real header length" */
    char *p = test_path(dir, "short");
    test_write_file(p, "\x05\0\0", 3);
    struct lorad_st_file *f;
    struct lorad_error err = {0};
    assert_int_equal(lorad_st_open(p, &f, &err), -EINVAL);
    assert_non_null(strstr(err.message, "8-byte"));
    free(p);
    expect_bad("huge_header", (uint64_t)1 << 62, "{}", 0, "100 MB");
    expect_bad("lying_header", 1000, "{}", 0, "only 2 bytes follow");
    expect_bad("array_header", H, "[1, 2]", 0, "'{'");
    expect_bad("bad_json", H, "{\"a\": ", 0, "JSON");
    expect_bad("unknown_dtype", H, "{\"a\":{\"dtype\":\"F7\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "unknown dtype \"F7\"");
    expect_bad("wrong_size", H, "{\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,20]}}", 20, "need 24");
    expect_bad("out_of_bounds", H, "{\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]}}", 16,
               "ends at byte 24 of a 16-byte");
    expect_bad("overlap", H,
               "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
               "\"b\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[8,24]}}", 24, "overlaps");
    expect_bad("gap", H,
               "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
               "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[16,24]}}", 24, "gap of 8 bytes");
    expect_bad("trailing", H, "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 16, "after the last");
    expect_bad("duplicate", H,
               "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
               "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, "duplicate");
    expect_bad("meta_not_string", H, "{\"__metadata__\":{\"k\":1}}", 0, "not a string");
    expect_bad("shape_overflow", H,
               "{\"a\":{\"dtype\":\"F32\",\"shape\":[1099511627776,1099511627776],\"data_offsets\":[0,4]}}", 4, "overflows");
    expect_bad("negative_offset", H, "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}", 4, "data_offsets");
    expect_bad("negative_dim", H, "{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4, "non-negative");
    expect_bad("no_offsets", H, "{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, "data_offsets");
}

static void test_every_truncation_is_refused(void **state) {
    (void)state;
    char *path = write_sample();
    size_t len;
    uint8_t *full = test_read_file(path, &len);
    char *cut = test_path(dir, "cut.safetensors");
    for (size_t n = 0; n < len; n++) {
        test_write_file(cut, full, n);
        struct lorad_st_file *f;
        struct lorad_error err = {0};
        int r = lorad_st_open(cut, &f, &err);
        if (r == 0) fail_msg("truncation to %zu of %zu bytes was accepted", n, len);
        assert_non_null(strstr(err.message, cut));
    }
    free(cut);
    free(full);
    free(path);
}

/* Seeded random corruption of the length field and header: a clean success or a clean error. */
static void test_random_corruptions_fail_cleanly(void **state) {
    (void)state;
    char *path = write_sample();
    size_t len;
    uint8_t *full = test_read_file(path, &len);
    uint8_t *copy = malloc(len);
    char *bad = test_path(dir, "fuzz.safetensors");
    uint32_t seed = 777;
    int failures = 0;
    for (int iter = 0; iter < 1500; iter++) {
        memcpy(copy, full, len);
        for (int k = 0; k < 1 + iter % 3; k++) {
            seed = seed * 1103515245u + 12345u;
            size_t at = (seed >> 8) % (len - 60); /* everything but the last tensor bytes */
            seed = seed * 1103515245u + 12345u;
            copy[at] ^= (uint8_t)(1u << ((seed >> 16) % 8));
        }
        test_write_file(bad, copy, len);
        struct lorad_st_file *f;
        struct lorad_error err = {0};
        if (lorad_st_open(bad, &f, &err) < 0) {
            failures++;
            assert_non_null(strstr(err.message, bad));
            continue;
        }
        for (size_t i = 0; i < lorad_st_n_tensors(f); i++) {
            const struct lorad_st_tensor *t = lorad_st_tensor_at(f, i);
            const uint8_t *p = t->data;
            volatile uint8_t sink = 0;
            for (uint64_t j = 0; j < t->nbytes; j++) sink ^= p[j]; /* ASan checks the view is inside the file */
            (void)sink;
        }
        lorad_st_close(f);
    }
    assert_true(failures > 100);
    free(bad);
    free(copy);
    free(full);
    free(path);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip_through_reader_and_python),
        cmocka_unit_test(test_malformed_files_are_refused),
        cmocka_unit_test(test_every_truncation_is_refused),
        cmocka_unit_test(test_random_corruptions_fail_cleanly),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
