/* config.json follows transformers' LlamaConfig semantics (defaults, eos lists, llama3 RoPE) and
 * an HF directory with a missing, misshapen or mistyped tensor fails naming it. */
#include "testutil.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "formats_testutil.h"
#include "load_hf.h"
#include "safetensors_write.h"

static char *root;

static int setup(void **state) {
    (void)state;
    root = test_mkdtemp("hf");
    return 0;
}

static int teardown(void **state) {
    (void)state;
    test_rmtree(root);
    free(root);
    return 0;
}

static int parse(const char *json, struct lorad_llama_config *cfg, struct lorad_error *err) {
    return lorad_hf_config_parse(json, strlen(json), "cfg/config.json", cfg, err);
}

#define BASE "\"model_type\":\"llama\",\"hidden_size\":64,\"intermediate_size\":128,\"num_hidden_layers\":2," \
             "\"num_attention_heads\":4,\"vocab_size\":100"

static void test_defaults_follow_llama_config(void **state) {
    (void)state;
    struct lorad_llama_config c;
    struct lorad_error err = {0};
    assert_int_equal(parse("{" BASE "}", &c, &err), 0);
    assert_int_equal(c.dim, 64);
    assert_int_equal(c.hidden_dim, 128);
    assert_int_equal(c.n_layers, 2);
    assert_int_equal(c.n_heads, 4);
    assert_int_equal(c.n_kv_heads, 4);  /* default: num_attention_heads */
    assert_int_equal(c.head_dim, 16);   /* default: hidden / heads */
    assert_int_equal(c.max_seq_len, 2048);
    assert_true(c.norm_eps == 1e-6f);
    assert_true(c.rope_theta == 10000.0f);
    assert_int_equal(c.rope_scaling.type, LORAD_ROPE_DEFAULT);
    assert_false(c.tie_embeddings);
    assert_false(c.attention_bias);
    assert_int_equal(c.bos_id, 1);
    assert_int_equal(c.eos_id, 2);
}

static void test_explicit_fields(void **state) {
    (void)state;
    struct lorad_llama_config c;
    struct lorad_error err = {0};
    assert_int_equal(parse("{" BASE ",\"num_key_value_heads\":2,\"head_dim\":32,\"rms_norm_eps\":1e-5,"
                           "\"rope_theta\":500000.0,\"tie_word_embeddings\":true,\"max_position_embeddings\":8192,"
                           "\"bos_token_id\":null,\"eos_token_id\":[7,8,9],"
                           "\"rope_scaling\":{\"rope_type\":\"llama3\",\"factor\":8.0,\"low_freq_factor\":1.0,"
                           "\"high_freq_factor\":4.0,\"original_max_position_embeddings\":8192}}", &c, &err), 0);
    assert_int_equal(c.n_kv_heads, 2);
    assert_int_equal(c.head_dim, 32);
    assert_true(c.norm_eps == 1e-5f);
    assert_true(c.rope_theta == 500000.0f);
    assert_true(c.tie_embeddings);
    assert_int_equal(c.max_seq_len, 8192);
    assert_int_equal(c.bos_id, -1);
    assert_int_equal(c.eos_id, 7);
    assert_int_equal(c.rope_scaling.type, LORAD_ROPE_LLAMA3);
    assert_true(c.rope_scaling.factor == 8.0f);
    assert_true(c.rope_scaling.low_freq_factor == 1.0f);
    assert_true(c.rope_scaling.high_freq_factor == 4.0f);
    assert_int_equal(c.rope_scaling.original_max_position_embeddings, 8192);
    /* transformers 5 spelling: rope_parameters carries rope_theta too. */
    assert_int_equal(parse("{" BASE ",\"rope_parameters\":{\"rope_type\":\"default\",\"rope_theta\":250000.0}}", &c, &err), 0);
    assert_true(c.rope_theta == 250000.0f);
    assert_int_equal(c.rope_scaling.type, LORAD_ROPE_DEFAULT);
    assert_int_equal(parse("{" BASE ",\"rope_scaling\":{\"type\":\"default\"}}", &c, &err), 0);
    assert_int_equal(parse("{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":64,\"intermediate_size\":128,"
                           "\"num_hidden_layers\":2,\"num_attention_heads\":4,\"vocab_size\":100}", &c, &err), 0);
    assert_int_equal(parse("{\"model_type\":\"qwen2\",\"hidden_size\":64,\"intermediate_size\":128,"
                           "\"num_hidden_layers\":2,\"num_attention_heads\":4,\"vocab_size\":100}", &c, &err), 0);
    assert_true(c.attention_bias);
}

static void expect_config_error(const char *json, const char *param, const char *fault) {
    struct lorad_llama_config c = {.dim = 12345};
    struct lorad_error err = {0};
    assert_int_equal(parse(json, &c, &err), -EINVAL);
    assert_int_equal(c.dim, 12345); /* untouched */
    if (!strstr(err.message, "cfg/config.json")) fail_msg("no file name in: %s", err.message);
    if (!strstr(err.message, fault)) fail_msg("expected \"%s\" in: %s", fault, err.message);
    if (param && strcmp(err.param, param) != 0) fail_msg("param %s, expected %s (%s)", err.param, param, err.message);
}

static void test_bad_configs_name_the_key(void **state) {
    (void)state;
    expect_config_error("{\"model_type\":\"llama\"", "config", "invalid JSON");
    expect_config_error("[1]", "config", "not a JSON object");
    expect_config_error("{\"model_type\":\"gpt2\"}", "model_type", "gpt2");
    expect_config_error("{\"model_type\":\"llama\",\"hidden_size\":64}", "intermediate_size", "missing");
    expect_config_error("{" BASE ",\"num_key_value_heads\":\"2\"}", "num_key_value_heads", "integer");
    expect_config_error("{\"model_type\":\"llama\",\"hidden_size\":9999999999999}", "hidden_size", "integer in");
    expect_config_error("{\"model_type\":\"llama\",\"hidden_size\":1e30}", "hidden_size", "integer");
    expect_config_error("{" BASE ",\"num_key_value_heads\":3}", "num_key_value_heads", "divide");
    expect_config_error("{" BASE ",\"rope_scaling\":{\"rope_type\":\"yarn\",\"factor\":4}}", "rope_scaling.rope_type", "yarn");
    expect_config_error("{" BASE ",\"rope_scaling\":{\"rope_type\":\"llama3\",\"factor\":8}}",
                        "original_max_position_embeddings", "missing");
    expect_config_error("{" BASE ",\"rope_scaling\":7}", "rope_scaling", "object");
    expect_config_error("{" BASE ",\"bos_token_id\":100}", "bos_token_id", "outside the vocabulary");
    expect_config_error("{" BASE ",\"eos_token_id\":[\"x\"]}", "eos_token_id", "token id");
    expect_config_error("{" BASE ",\"tie_word_embeddings\":1}", "tie_word_embeddings", "true or false");
    expect_config_error("{" BASE ",\"rms_norm_eps\":\"small\"}", "rms_norm_eps", "number");
    expect_config_error("{" BASE ",\"rms_norm_eps\":-1}", "rms_norm_eps", "rms_norm_eps");
}

/* A tiny HF directory: dim 32, hidden 64, 1 layer, 2 heads, 1 kv head, vocab 10. */
enum fault { NONE, OMIT, MISSHAPE, WRONG_DTYPE };

static char *make_dir(const char *name, const char *extra_config, const char *victim, enum fault fault) {
    char *d = test_path(root, name);
    assert_int_equal(mkdir(d, 0755), 0);
    char *cfg = test_path(d, "config.json");
    char text[1024];
    snprintf(text, sizeof text,
             "{\"model_type\":\"llama\",\"hidden_size\":32,\"intermediate_size\":64,\"num_hidden_layers\":1,"
             "\"num_attention_heads\":2,\"num_key_value_heads\":1,\"vocab_size\":10%s}", extra_config);
    test_write_file(cfg, text, strlen(text));
    free(cfg);
    static float zeros[64 * 64];
    static const struct { const char *name; int64_t rows, cols; } t[] = {
        {"model.embed_tokens.weight", 10, 32}, {"model.norm.weight", 0, 32}, {"lm_head.weight", 10, 32},
        {"model.layers.0.input_layernorm.weight", 0, 32},
        {"model.layers.0.self_attn.q_proj.weight", 32, 32}, {"model.layers.0.self_attn.k_proj.weight", 16, 32},
        {"model.layers.0.self_attn.v_proj.weight", 16, 32}, {"model.layers.0.self_attn.o_proj.weight", 32, 32},
        {"model.layers.0.post_attention_layernorm.weight", 0, 32},
        {"model.layers.0.mlp.gate_proj.weight", 64, 32}, {"model.layers.0.mlp.up_proj.weight", 64, 32},
        {"model.layers.0.mlp.down_proj.weight", 32, 64},
        {"model.layers.0.self_attn.q_proj.bias", 0, 32}, {"model.layers.0.self_attn.k_proj.bias", 0, 16},
        {"model.layers.0.self_attn.v_proj.bias", 0, 16},
    };
    char *st = test_path(d, "model.safetensors");
    struct lorad_st_writer *w;
    assert_int_equal(lorad_st_writer_new(&w, st), 0);
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        int hit = victim && strcmp(victim, t[i].name) == 0;
        if (hit && fault == OMIT) continue;
        int64_t shape[2] = {t[i].rows, t[i].cols};
        if (hit && fault == MISSHAPE) shape[1]--;
        int ndim = t[i].rows ? 2 : 1;
        const int64_t *sp = t[i].rows ? shape : shape + 1;
        size_t n = (size_t)(t[i].rows ? shape[0] : 1) * (size_t)shape[1];
        const char *dtype = hit && fault == WRONG_DTYPE ? "I32" : "F32";
        assert_int_equal(lorad_st_writer_add(w, t[i].name, dtype, sp, ndim, zeros, n * 4), 0);
    }
    struct lorad_error err = {0};
    assert_int_equal(lorad_st_writer_finish(w, &err), 0);
    free(st);
    return d;
}

static void expect_load_error(const char *dir, const char *fault1, const char *fault2) {
    struct lorad_base_weights w = {0};
    struct lorad_error err = {0};
    assert_int_not_equal(lorad_load_hf_dir(dir, LORAD_LOAD_WEIGHTS, &w, &err), 0);
    assert_null(w.owner);
    if (!strstr(err.message, fault1) || !strstr(err.message, fault2))
        fail_msg("expected \"%s\" and \"%s\" in: %s", fault1, fault2, err.message);
}

static void test_hf_dir_tensors(void **state) {
    (void)state;
    struct lorad_base_weights w = {0};
    struct lorad_error err = {0};
    char *d = make_dir("ok", "", NULL, NONE);
    assert_int_equal(lorad_load_hf_dir(d, LORAD_LOAD_WEIGHTS, &w, &err), 0);
    assert_true(w.lm_head.data != w.embed.data);
    assert_null(w.layers[0].bq.data);
    lorad_base_weights_release(&w);
    free(d);

    d = make_dir("tied", ",\"tie_word_embeddings\":true", "lm_head.weight", OMIT);
    assert_int_equal(lorad_load_hf_dir(d, LORAD_LOAD_WEIGHTS, &w, &err), 0);
    assert_true(w.lm_head.data == w.embed.data);
    lorad_base_weights_release(&w);
    free(d);

    d = make_dir("bias", ",\"attention_bias\":true", NULL, NONE);
    assert_int_equal(lorad_load_hf_dir(d, LORAD_LOAD_WEIGHTS, &w, &err), 0);
    assert_non_null(w.layers[0].bk.data);
    assert_int_equal(w.layers[0].bk.cols, 16);
    lorad_base_weights_release(&w);
    free(d);

    d = make_dir("untied_no_head", "", "lm_head.weight", OMIT);
    expect_load_error(d, "lm_head.weight", "tie_word_embeddings");
    free(d);
    d = make_dir("missing", "", "model.layers.0.mlp.up_proj.weight", OMIT);
    expect_load_error(d, "missing tensor model.layers.0.mlp.up_proj.weight", "[64, 32]");
    free(d);
    d = make_dir("misshapen", "", "model.layers.0.self_attn.k_proj.weight", MISSHAPE);
    expect_load_error(d, "model.layers.0.self_attn.k_proj.weight has shape [16, 31]", "expected [16, 32]");
    free(d);
    d = make_dir("misshapen_norm", "", "model.norm.weight", MISSHAPE);
    expect_load_error(d, "model.norm.weight has shape [31]", "expected [32]");
    free(d);
    d = make_dir("wrong_dtype", "", "model.layers.0.input_layernorm.weight", WRONG_DTYPE);
    expect_load_error(d, "model.safetensors", "dtype I32");
    free(d);
    d = make_dir("bias_missing", ",\"attention_bias\":true", "model.layers.0.self_attn.v_proj.bias", OMIT);
    expect_load_error(d, "model.layers.0.self_attn.v_proj.bias", "missing");
    free(d);
    d = test_path(root, "empty");
    assert_int_equal(mkdir(d, 0755), 0);
    expect_load_error(d, "config.json", "No such file");
    free(d);
}

/* Moves dir/model.safetensors to dir/shard and writes an index with the given weight_map text. */
static void expect_index_error(const char *name, const char *shard, const char *index, const char *fault) {
    char *d = make_dir(name, "", NULL, NONE);
    char *from = test_path(d, "model.safetensors"), *to = test_path(d, shard), *ix = test_path(d, "model.safetensors.index.json");
    assert_int_equal(rename(from, to), 0);
    test_write_file(ix, index, strlen(index));
    expect_load_error(d, fault, name);
    free(from);
    free(to);
    free(ix);
    free(d);
}

static void test_bad_index_files(void **state) {
    (void)state;
    expect_index_error("ix_json", "model-00001-of-00001.safetensors", "{\"weight_map\": ", "invalid JSON");
    expect_index_error("ix_nomap", "model-00001-of-00001.safetensors", "{\"metadata\":{}}", "weight_map");
    expect_index_error("ix_escape", "model-00001-of-00001.safetensors",
                       "{\"weight_map\":{\"model.norm.weight\":\"../ok/model.safetensors\"}}", "not a file name");
    expect_index_error("ix_absent", "model-00001-of-00001.safetensors",
                       "{\"weight_map\":{\"model.norm.weight\":\"model-00002-of-00002.safetensors\"}}", "No such file");
    expect_index_error("ix_incomplete", "model-00001-of-00001.safetensors",
                       "{\"weight_map\":{\"model.norm.weight\":\"model-00001-of-00001.safetensors\"}}",
                       "missing tensor model.embed_tokens.weight");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults_follow_llama_config),
        cmocka_unit_test(test_explicit_fields),
        cmocka_unit_test(test_bad_configs_name_the_key),
        cmocka_unit_test(test_hf_dir_tensors),
        cmocka_unit_test(test_bad_index_files),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
