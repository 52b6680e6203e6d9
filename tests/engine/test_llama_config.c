/* Config validation names the offending field; dtype conversions match IEEE 754 facts. */
#include "testutil.h"

#include <errno.h>
#include <math.h>
#include <string.h>

#include "llama_config.h"
#include "weights.h"

static struct lorad_llama_config tiny(void) {
    struct lorad_llama_config c;
    lorad_llama_config_defaults(&c);
    c.dim = 64; c.hidden_dim = 172; c.n_layers = 5; c.n_heads = 8; c.n_kv_heads = 4;
    c.head_dim = 8; c.vocab_size = 512; c.max_seq_len = 512;
    return c;
}

static void test_valid_config_passes(void **state) {
    (void)state;
    struct lorad_llama_config c = tiny();
    struct lorad_error err = {0};
    assert_int_equal(lorad_llama_config_validate(&c, &err), 0);
}

static void expect_invalid(struct lorad_llama_config c, const char *param) {
    struct lorad_error err = {0};
    assert_int_equal(lorad_llama_config_validate(&c, &err), -EINVAL);
    assert_string_equal(err.param, param);
    assert_non_null(strstr(err.message, param));
}

static void test_invalid_fields_are_named(void **state) {
    (void)state;
    struct lorad_llama_config c = tiny(); c.dim = 0; expect_invalid(c, "hidden_size");
    c = tiny(); c.hidden_dim = -3; expect_invalid(c, "intermediate_size");
    c = tiny(); c.n_layers = 0; expect_invalid(c, "num_hidden_layers");
    c = tiny(); c.n_kv_heads = 3; expect_invalid(c, "num_key_value_heads");
    c = tiny(); c.head_dim = 7; expect_invalid(c, "head_dim");
    c = tiny(); c.vocab_size = LORAD_MAX_VOCAB + 1; expect_invalid(c, "vocab_size");
    c = tiny(); c.norm_eps = NAN; expect_invalid(c, "rms_norm_eps");
    c = tiny(); c.rope_theta = -1; expect_invalid(c, "rope_theta");
    c = tiny(); c.rope_scaling.type = LORAD_ROPE_LLAMA3; c.rope_scaling.factor = 0.5f;
    expect_invalid(c, "rope_scaling.factor");
}

static void test_param_count_matches_formula(void **state) {
    (void)state;
    /* Llama-2-7B: 6,738,415,616 parameters as published with the model. */
    struct lorad_llama_config c;
    lorad_llama_config_defaults(&c);
    c.dim = 4096; c.hidden_dim = 11008; c.n_layers = 32; c.n_heads = 32; c.n_kv_heads = 32;
    c.head_dim = 128; c.vocab_size = 32000; c.max_seq_len = 4096;
    assert_true(lorad_llama_config_n_params(&c) == 6738415616LL);
}

static void test_half_precision_conversions(void **state) {
    (void)state;
    /* IEEE 754 binary16 facts. */
    assert_true(lorad_f16_to_f32(0x3c00) == 1.0f);
    assert_true(lorad_f16_to_f32(0xc000) == -2.0f);
    assert_true(lorad_f16_to_f32(0x7bff) == 65504.0f);
    assert_true(lorad_f16_to_f32(0x0001) == ldexpf(1.0f, -24));
    assert_true(isinf(lorad_f16_to_f32(0x7c00)));
    assert_int_equal(lorad_f32_to_f16(1.0f), 0x3c00);
    assert_int_equal(lorad_f32_to_f16(65504.0f), 0x7bff);
    assert_int_equal(lorad_f32_to_f16(ldexpf(1.0f, -24)), 0x0001);
    assert_int_equal(lorad_f32_to_f16(1e6f), 0x7c00);
    /* Every finite half survives a round trip through f32. */
    for (uint32_t h = 0; h < 0x10000; h++) {
        if ((h & 0x7c00) == 0x7c00) continue;
        assert_int_equal(lorad_f32_to_f16(lorad_f16_to_f32((uint16_t)h)), h);
    }
    /* bfloat16: top 16 bits of binary32, round to nearest even. */
    assert_int_equal(lorad_f32_to_bf16(1.0f), 0x3f80);
    assert_true(lorad_bf16_to_f32(0x3f80) == 1.0f);
    assert_int_equal(lorad_f32_to_bf16(1.0f + ldexpf(1.0f, -8)), 0x3f80);  /* tie -> even */
    assert_int_equal(lorad_f32_to_bf16(1.0f + 3 * ldexpf(1.0f, -8)), 0x3f82); /* tie -> even (up) */
    assert_int_equal(lorad_f32_to_bf16(1.0f + ldexpf(1.0f, -7)), 0x3f81);  /* exact */
}

static void test_weights_validate_names_missing_tensor(void **state) {
    (void)state;
    struct lorad_base_weights w = {0};
    w.cfg = tiny();
    struct lorad_error err = {0};
    assert_int_equal(lorad_base_weights_validate(&w, &err), -EINVAL);
    assert_string_equal(err.param, "model.embed_tokens.weight");
    assert_non_null(strstr(err.message, "[512, 64]"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_config_passes),
        cmocka_unit_test(test_invalid_fields_are_named),
        cmocka_unit_test(test_param_count_matches_formula),
        cmocka_unit_test(test_half_precision_conversions),
        cmocka_unit_test(test_weights_validate_names_missing_tensor),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
