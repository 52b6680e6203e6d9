/* llama2.c checkpoints: the real stories260K.bin loads with the facts published with it, q/k
 * move from Meta to HF order and back bit-exactly, and bad headers or sizes are refused. */
#include "testutil.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats_testutil.h"
#include "load_common.h"
#include "load_llama2c.h"
#include "model_file.h"

static void test_stories260k_facts(void **state) {
    (void)state;
    const char *path = test_shared_data("stories260K.bin");
    struct lorad_model_file *mf;
    struct lorad_error err = {0};
    if (lorad_model_file_open(path, &mf, &err) < 0) fail_msg("%s", err.message);
    const struct lorad_base_weights *w = &mf->weights;
    assert_string_equal(mf->format_name, "llama2c");
    assert_int_equal(w->cfg.dim, 64);
    assert_int_equal(w->cfg.hidden_dim, 172);
    assert_int_equal(w->cfg.n_layers, 5);
    assert_int_equal(w->cfg.n_heads, 8);
    assert_int_equal(w->cfg.n_kv_heads, 4);
    assert_int_equal(w->cfg.head_dim, 8);
    assert_int_equal(w->cfg.vocab_size, 512);
    assert_int_equal(w->cfg.max_seq_len, 512);
    assert_true(w->cfg.tie_embeddings);
    assert_true(w->lm_head.data == w->embed.data);
    assert_true(w->cfg.norm_eps == 1e-5f);
    assert_int_equal(w->cfg.bos_id, 1);
    /* 512*64 embeddings + 5 * (2*64*64 + 2*64*32 + 3*64*172 + 2*64) + 64: the "260K" of its name. */
    assert_true(lorad_llama_config_n_params(&w->cfg) == 260032);
    assert_int_equal(mf->n_dtypes, 1);
    assert_string_equal(mf->dtypes[0].name, "F32");
    assert_int_equal(mf->dtypes[0].count, 1 + 5 * 9 + 1);
    assert_int_equal(w->layers[4].w_down.rows, 64);
    assert_int_equal(w->layers[4].w_down.cols, 172);
    assert_int_equal(w->layers[0].wk.rows, 32);

    /* Raw Meta-layout wq/wk of layer 0 straight from the file. */
    size_t len;
    uint8_t *file = test_read_file(path, &len);
    assert_int_equal(len, 1056540);
    const float *p = (const float *)(file + 28) + 512 * 64 + 5 * 64;
    const float *wq_meta = p, *wk_meta = p + 5 * 64 * 64;
    const int hd = 8;
    /* HF row half*(hd/2)+i is Meta row 2i+half (per head): e.g. HF row 4 == Meta row 1. */
    const float *wq_hf = w->layers[0].wq.data;
    assert_memory_equal(wq_hf + 4 * 64, wq_meta + 1 * 64, 64 * 4);
    assert_memory_equal(wq_hf + 1 * 64, wq_meta + 2 * 64, 64 * 4);
    assert_memory_equal(wq_hf + (8 + 7) * 64, wq_meta + (8 + 7) * 64, 64 * 4); /* last row stays */
    /* The permutation really moves rows (the test would be vacuous otherwise)... */
    assert_memory_not_equal(wq_hf, wq_meta, 64 * 64 * 4);
    /* ...and HF -> Meta restores the file's bytes exactly, for q and k. */
    float *back = malloc(64 * 64 * 4);
    lorad_rope_permute_rows(back, wq_hf, 64, 64 * 4, hd, 0);
    assert_memory_equal(back, wq_meta, 64 * 64 * 4);
    lorad_rope_permute_rows(back, w->layers[0].wk.data, 32, 64 * 4, hd, 0);
    assert_memory_equal(back, wk_meta, 32 * 64 * 4);
    lorad_rope_permute_rows(back, wk_meta, 32, 64 * 4, hd, 1);
    assert_memory_equal(back, w->layers[0].wk.data, 32 * 64 * 4);
    /* v is not permuted: used in place from the mapping. */
    const float *wv_meta = wk_meta + 5 * 32 * 64;
    assert_memory_equal(w->layers[0].wv.data, wv_meta, 32 * 64 * 4);
    free(back);
    free(file);
    lorad_model_file_close(mf);
}

static void expect_header_error(const int32_t h[7], uint64_t file_size, const char *fault) {
    uint8_t raw[28];
    memcpy(raw, h, 28); /* little-endian host */
    struct lorad_llama_config cfg = {.dim = 777};
    struct lorad_error err = {0};
    assert_int_equal(lorad_llama2c_parse_header(raw, 28, file_size, "x.bin", &cfg, &err), -EINVAL);
    assert_int_equal(cfg.dim, 777);
    if (!strstr(err.message, "x.bin") || !strstr(err.message, fault)) fail_msg("expected \"%s\" in: %s", fault, err.message);
}

static void test_bad_headers(void **state) {
    (void)state;
    const uint64_t real = 1056540;
    struct lorad_llama_config cfg;
    struct lorad_error err = {0};
    int32_t ok[7] = {64, 172, 5, 8, 4, 512, 512};
    uint8_t raw[28];
    memcpy(raw, ok, 28);
    assert_int_equal(lorad_llama2c_parse_header(raw, 28, real, "x.bin", &cfg, &err), 0);
    expect_header_error(ok, real - 4, "implies 1056540 bytes but the file has 1056536");
    expect_header_error(ok, real + 4, "implies 1056540");
    int32_t untied[7] = {64, 172, 5, 8, 4, -512, 512};
    expect_header_error(untied, real, "implies 1187612"); /* + 512*64 floats of classifier */
    int32_t neg[7] = {-64, 172, 5, 8, 4, 512, 512};
    expect_header_error(neg, real, "hidden_size");
    int32_t huge[7] = {64, 172, 0x7fffffff, 8, 4, 512, 512};
    expect_header_error(huge, real, "num_hidden_layers");
    int32_t gqa[7] = {64, 172, 5, 8, 3, 512, 512};
    expect_header_error(gqa, real, "num_key_value_heads");
    int32_t odd[7] = {60, 172, 5, 8, 4, 512, 512};
    expect_header_error(odd, real, "");
    int32_t minvocab[7] = {64, 172, 5, 8, 4, INT32_MIN, 512};
    expect_header_error(minvocab, real, "vocab_size");
    assert_int_equal(lorad_llama2c_parse_header(raw, 20, real, "x.bin", &cfg, &err), -EINVAL);
}

static void test_truncated_and_unknown_files(void **state) {
    (void)state;
    char *dir = test_mkdtemp("l2c");
    size_t len;
    uint8_t *file = test_read_file(test_shared_data("stories260K.bin"), &len);
    char *path = test_path(dir, "cut.bin");
    size_t cuts[] = {0, 3, 27, 28, 1000, len - 1};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        test_write_file(path, file, cuts[i]);
        struct lorad_model_file *mf = NULL;
        struct lorad_error err = {0};
        assert_int_not_equal(lorad_model_file_open(path, &mf, &err), 0);
        assert_null(mf);
        assert_non_null(strstr(err.message, path));
        struct lorad_base_weights w = {0};
        assert_int_equal(lorad_load_llama2c(path, LORAD_LOAD_WEIGHTS, &w, &err), -EINVAL);
        assert_non_null(strstr(err.message, path));
    }
    /* Garbage of the right size is not a model either. */
    memset(file, 0xff, 28);
    test_write_file(path, file, len);
    struct lorad_model_file *mf = NULL;
    struct lorad_error err = {0};
    assert_int_equal(lorad_model_file_open(path, &mf, &err), -EINVAL);
    assert_non_null(strstr(err.message, "not a recognised model file"));
    char *missing = test_path(dir, "nope.bin");
    assert_int_equal(lorad_model_file_open(missing, &mf, &err), -ENOENT);
    assert_non_null(strstr(err.message, missing));
    free(missing);
    free(path);
    free(file);
    test_rmtree(dir);
    free(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stories260k_facts),
        cmocka_unit_test(test_bad_headers),
        cmocka_unit_test(test_truncated_and_unknown_files),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
