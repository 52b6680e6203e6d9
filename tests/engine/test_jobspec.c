/* The job spec: the documented example parses to exactly its values, defaults fill the rest,
 * OpenAI's method form (supervised and dpo) and "auto" work, the normalised spec echoes the method
 * as OpenAI's job object does, and every bad field is named. */
#include "testutil.h"

#include <errno.h>
#include <string.h>

#include "jobspec.h"

static int parse(const char *text, struct lorad_job_spec *s, struct lorad_error *err) {
    json_error_t jerr;
    json_t *body = json_loads(text, 0, &jerr);
    if (!body) fail_msg("bad test JSON: %s", jerr.text);
    int r = lorad_job_spec_parse(body, s, err);
    json_decref(body);
    return r;
}

static void expect_error(const char *text, const char *param) {
    struct lorad_job_spec s;
    struct lorad_error err = {0};
    int r = parse(text, &s, &err);
    if (r != -EINVAL || strcmp(err.param, param) != 0)
        fail_msg("%s: got r=%d param='%s' message='%s', want param '%s'", text, r, err.param, err.message, param);
}

/* The example from the issue, with non-default values everywhere to catch swapped fields. */
static const char *full_example =
    "{\"model\":\"m\",\"training_file\":\"t.jsonl\",\"validation_file\":\"v.jsonl\",\"seed\":7,\"suffix\":\"x-1\","
    "\"hyperparameters\":{\"n_epochs\":3,\"batch_size\":4,\"learning_rate\":1e-3,\"gradient_accumulation_steps\":2,"
    "\"max_steps\":100,\"max_seq_len\":256,\"lr_scheduler\":\"linear\",\"warmup_steps\":5,\"weight_decay\":0.1,"
    "\"max_grad_norm\":0.5,\"adam_beta1\":0.8,\"adam_beta2\":0.99,\"adam_epsilon\":1e-6,\"packing\":true,"
    "\"train_on_input\":true,\"eval_every_steps\":10,\"checkpoint_every_steps\":20,\"keep_checkpoints\":2,"
    "\"activation_checkpointing\":true,\"compute_dtype\":\"bfloat16\",\"threads\":2},"
    "\"lora\":{\"r\":4,\"alpha\":8,\"dropout\":0.05,\"target_modules\":[\"q_proj\",\"lm_head\"],\"use_rslora\":true,"
    "\"init\":\"gaussian\",\"init_adapter\":\"/a\"},"
    "\"data\":{\"format\":\"messages\",\"template\":\"chatml\"}}";

static void test_full_example(void **state) {
    (void)state;
    struct lorad_job_spec s;
    struct lorad_error err = {0};
    assert_int_equal(parse(full_example, &s, &err), 0);
    assert_string_equal(s.model, "m");
    assert_string_equal(s.training_file, "t.jsonl");
    assert_string_equal(s.validation_file, "v.jsonl");
    assert_int_equal(s.seed, 7);
    assert_string_equal(s.suffix, "x-1");
    assert_int_equal(s.hp.n_epochs, 3);
    assert_int_equal(s.hp.batch_size, 4);
    assert_float_equal(s.hp.learning_rate, 1e-3, 0);
    assert_int_equal(s.hp.gradient_accumulation_steps, 2);
    assert_int_equal(s.hp.max_steps, 100);
    assert_int_equal(s.hp.max_seq_len, 256);
    assert_int_equal(s.hp.lr_scheduler, LORAD_LR_LINEAR);
    assert_int_equal(s.hp.compute_dtype, LORAD_COMPUTE_BFLOAT16);
    assert_int_equal(s.hp.warmup_steps, 5);
    assert_float_equal(s.hp.weight_decay, 0.1, 0);
    assert_float_equal(s.hp.max_grad_norm, 0.5, 0);
    assert_float_equal(s.hp.adam_beta1, 0.8, 0);
    assert_float_equal(s.hp.adam_beta2, 0.99, 0);
    assert_float_equal(s.hp.adam_epsilon, 1e-6, 0);
    assert_true(s.hp.packing);
    assert_true(s.hp.train_on_input);
    assert_int_equal(s.hp.eval_every_steps, 10);
    assert_int_equal(s.hp.checkpoint_every_steps, 20);
    assert_int_equal(s.hp.keep_checkpoints, 2);
    assert_true(s.hp.activation_checkpointing);
    assert_int_equal(s.hp.threads, 2);
    assert_int_equal(s.lora.r, 4);
    assert_float_equal(s.lora.alpha, 8, 0);
    assert_float_equal(s.lora.dropout, 0.05, 0);
    assert_int_equal(s.lora.n_targets, 2);
    assert_string_equal(s.lora.targets[0], "q_proj");
    assert_string_equal(s.lora.targets[1], "lm_head");
    assert_true(s.lora.use_rslora);
    assert_int_equal(s.lora.init, LORAD_LORA_INIT_GAUSSIAN);
    assert_string_equal(s.lora.init_adapter, "/a");
    assert_int_equal(s.data_format, LORAD_DATA_MESSAGES);
    assert_int_equal(s.template, LORAD_TEMPLATE_CHATML);

    /* Normalised JSON parses back to the same spec. */
    json_t *j = lorad_job_spec_to_json(&s);
    assert_non_null(j);
    struct lorad_job_spec s2;
    assert_int_equal(lorad_job_spec_parse(j, &s2, &err), 0);
    assert_memory_equal(&s.hp, &s2.hp, sizeof s.hp);
    assert_memory_equal(&s.lora, &s2.lora, sizeof s.lora);
    json_decref(j);
    lorad_job_spec_clear(&s);
    lorad_job_spec_clear(&s2);
}

static void test_defaults_match_documentation(void **state) {
    (void)state;
    struct lorad_job_spec s;
    struct lorad_error err = {0};
    assert_int_equal(parse("{\"model\":\"m\",\"training_file\":\"t\"}", &s, &err), 0);
    /* The defaults written in the job spec example. */
    assert_int_equal(s.seed, 42);
    assert_int_equal(s.hp.n_epochs, 1);
    assert_int_equal(s.hp.batch_size, 2);
    assert_float_equal(s.hp.learning_rate, 3e-4, 0);
    assert_int_equal(s.hp.gradient_accumulation_steps, 1);
    assert_int_equal(s.hp.max_steps, 0);
    assert_int_equal(s.hp.max_seq_len, 512);
    assert_int_equal(s.hp.lr_scheduler, LORAD_LR_COSINE);
    assert_int_equal(s.hp.compute_dtype, LORAD_COMPUTE_AUTO);
    assert_int_equal(s.hp.warmup_steps, 0);
    assert_float_equal(s.hp.weight_decay, 0.01, 0);
    assert_float_equal(s.hp.max_grad_norm, 1.0, 0);
    assert_float_equal(s.hp.adam_beta1, 0.9, 0);
    assert_float_equal(s.hp.adam_beta2, 0.999, 0);
    assert_float_equal(s.hp.adam_epsilon, 1e-8, 0);
    assert_false(s.hp.packing);
    assert_false(s.hp.train_on_input);
    assert_int_equal(s.hp.keep_checkpoints, 3);
    assert_int_equal(s.hp.threads, 0);
    assert_int_equal(s.lora.r, 8);
    assert_float_equal(s.lora.alpha, 16, 0);
    assert_float_equal(s.lora.dropout, 0, 0);
    assert_int_equal(s.lora.n_targets, 2);
    assert_string_equal(s.lora.targets[0], "q_proj");
    assert_string_equal(s.lora.targets[1], "v_proj");
    assert_int_equal(s.lora.init, LORAD_LORA_INIT_KAIMING);
    assert_float_equal(s.lora.lr_ratio, 1.0, 0); /* plain LoRA unless LoRA+ is asked for */
    assert_string_equal(s.validation_file, "");
    assert_int_equal(s.data_format, LORAD_DATA_AUTO);
    assert_int_equal(s.template, LORAD_TEMPLATE_AUTO);
    lorad_job_spec_clear(&s);
}

static void test_openai_method_form_and_auto(void **state) {
    (void)state;
    struct lorad_job_spec s;
    struct lorad_error err = {0};
    assert_int_equal(parse("{\"model\":\"m\",\"training_file\":\"t\",\"method\":{\"type\":\"supervised\","
                           "\"supervised\":{\"hyperparameters\":{\"n_epochs\":4,\"batch_size\":\"auto\","
                           "\"learning_rate_multiplier\":2}}},\"lora\":{\"target_modules\":\"all-linear\"}}",
                           &s, &err),
                     0);
    assert_int_equal(s.hp.n_epochs, 4);
    assert_int_equal(s.hp.batch_size, 2);
    assert_float_equal(s.hp.learning_rate, 6e-4, 1e-15);
    assert_int_equal(s.lora.n_targets, 7);
    assert_string_equal(s.lora.targets[6], "down_proj");
    lorad_job_spec_clear(&s);
    /* null switches optional features off. */
    assert_int_equal(parse("{\"model\":\"m\",\"training_file\":\"t\",\"hyperparameters\":{\"max_grad_norm\":null,"
                           "\"max_steps\":null}}", &s, &err), 0);
    assert_float_equal(s.hp.max_grad_norm, 0, 0);
    lorad_job_spec_clear(&s);
    /* the inits from the base weights, by PEFT's names, echoed as given */
    const char *names[] = {"pissa", "olora"};
    enum lorad_lora_init want[] = {LORAD_LORA_INIT_PISSA, LORAD_LORA_INIT_OLORA};
    for (int i = 0; i < 2; i++) {
        char text[160];
        snprintf(text, sizeof text, "{\"model\":\"m\",\"training_file\":\"t\",\"lora\":{\"init\":\"%s\"}}", names[i]);
        assert_int_equal(parse(text, &s, &err), 0);
        assert_int_equal(s.lora.init, want[i]);
        json_t *j = lorad_job_spec_to_json(&s);
        assert_string_equal(json_string_value(json_object_get(json_object_get(j, "lora"), "init")), names[i]);
        json_decref(j);
        lorad_job_spec_clear(&s);
    }
}

static void test_errors_name_the_field(void **state) {
    (void)state;
    expect_error("{\"training_file\":\"t\"}", "model");
    expect_error("{\"model\":\"m\"}", "training_file");
    expect_error("{\"model\":\"m\",\"training_file\":\"t\",\"lora\":{\"lr_ratio\":0}}", "lora.lr_ratio");
    expect_error("{\"model\":\"m\",\"training_file\":\"t\",\"lora\":{\"lr_ratio\":1e5}}", "lora.lr_ratio");
    expect_error("{\"model\":\"m\",\"training_file\":\"t\",\"bogus\":1}", "bogus");
    expect_error("{\"model\":\"m\",\"training_file\":\"t\",\"hyperparameters\":{\"batch_sise\":1}}",
                 "hyperparameters.batch_sise");
    expect_error("{\"model\":\"m\",\"training_file\":\"t\",\"hyperparameters\":{\"batch_size\":0}}",
                 "hyperparameters.batch_size");
    expect_error("{\"model\":\"m\",\"training_file\":\"t\",\"hyperparameters\":{\"batch_size\":1.5}}",
                 "hyperparameters.batch_size");
    expect_error("{\"model\":\"m\",\"training_file\":\"t\",\"hyperparameters\":{\"learning_rate\":0}}",
                 "hyperparameters.learning_rate");
    expect_error("{\"model\":\"m\",\"training_file\":\"t\",\"hyperparameters\":{\"adam_beta2\":1}}",
                 "hyperparameters.adam_beta2");
    expect_error("{\"model\":\"m\",\"training_file\":\"t\",\"hyperparameters\":{\"lr_scheduler\":\"step\"}}",
                 "hyperparameters.lr_scheduler");
    expect_error("{\"model\":\"m\",\"training_file\":\"t\",\"hyperparameters\":{\"compute_dtype\":\"float16\"}}",
                 "hyperparameters.compute_dtype");
    expect_error("{\"model\":\"m\",\"training_file\":\"t\",\"hyperparameters\":{\"packing\":\"yes\"}}",
                 "hyperparameters.packing");
    expect_error("{\"model\":\"m\",\"training_file\":\"t\",\"hyperparameters\":{\"batch_size\":null}}",
                 "hyperparameters.batch_size");
    expect_error("{\"model\":\"m\",\"training_file\":\"t\",\"lora\":{\"r\":0}}", "lora.r");
    expect_error("{\"model\":\"m\",\"training_file\":\"t\",\"lora\":{\"rank\":4}}", "lora.rank");
    expect_error("{\"model\":\"m\",\"training_file\":\"t\",\"lora\":{\"target_modules\":[\"q_proj\",\"qkv\"]}}",
                 "lora.target_modules[1]");
    expect_error("{\"model\":\"m\",\"training_file\":\"t\",\"lora\":{\"target_modules\":[]}}", "lora.target_modules");
    expect_error("{\"model\":\"m\",\"training_file\":\"t\",\"lora\":{\"init\":\"svd\"}}", "lora.init");
    expect_error("{\"model\":\"m\",\"training_file\":\"t\",\"lora\":{\"init\":\"pissa\",\"use_dora\":true}}",
                 "lora.init");
    expect_error("{\"model\":\"m\",\"training_file\":\"t\",\"lora\":{\"init\":\"olora\",\"init_adapter\":\"/a\"}}",
                 "lora.init");
    expect_error("{\"model\":\"m\",\"training_file\":\"t\",\"data\":{\"template\":\"vicuna\"}}", "data.template");
    expect_error("{\"model\":\"m\",\"training_file\":\"t\",\"method\":{\"type\":\"reinforcement\"}}", "method.type");
    expect_error("{\"model\":\"m\",\"training_file\":\"t\",\"method\":{\"type\":\"supervised\",\"supervised\":"
                 "{\"hyperparameters\":{\"n_epochs\":0}}}}", "method.supervised.hyperparameters.n_epochs");
    expect_error("{\"model\":\"m\",\"training_file\":\"t\",\"hyperparameters\":{\"n_epochs\":2},\"method\":{\"type\":"
                 "\"supervised\",\"supervised\":{\"hyperparameters\":{\"n_epochs\":3}}}}",
                 "method.supervised.hyperparameters.n_epochs");
    expect_error("{\"model\":\"m\",\"training_file\":\"t\",\"seed\":-1}", "seed");
    expect_error("{\"model\":\"m\",\"training_file\":\"t\",\"suffix\":\"a/b\"}", "suffix");
    expect_error("{\"model\":\"\",\"training_file\":\"t\"}", "model");
    expect_error("[1]", "");
}

static json_t *method_hp(json_t *spec_json, const char *type) {
    json_t *method = json_object_get(spec_json, "method");
    assert_string_equal(json_string_value(json_object_get(method, "type")), type);
    json_t *hp = json_object_get(json_object_get(method, type), "hyperparameters");
    assert_true(json_is_object(hp));
    return hp;
}

/* OpenAI's DPO method: beta with its default, the shared hyperparameters inside the method, the
 * echo in the normalised spec (both for dpo and supervised) and its round trip. */
static void test_dpo_method(void **state) {
    (void)state;
    struct lorad_job_spec s, s2;
    struct lorad_error err = {0};
    assert_int_equal(parse("{\"model\":\"m\",\"training_file\":\"t\",\"method\":{\"type\":\"dpo\"}}", &s, &err), 0);
    assert_int_equal(s.method.type, LORAD_METHOD_DPO);
    assert_float_equal(s.method.beta, 0.1, 0);
    assert_int_equal(lorad_job_rows_per_example(&s), 2);
    lorad_job_spec_clear(&s);
    assert_int_equal(parse("{\"model\":\"m\",\"training_file\":\"t\",\"method\":{\"type\":\"dpo\",\"dpo\":"
                           "{\"hyperparameters\":{\"beta\":0.25,\"n_epochs\":2,\"batch_size\":3,"
                           "\"learning_rate_multiplier\":2}}},\"data\":{\"format\":\"preference\"}}",
                           &s, &err),
                     0);
    assert_int_equal(s.method.type, LORAD_METHOD_DPO);
    assert_float_equal(s.method.beta, 0.25, 0);
    assert_int_equal(s.hp.n_epochs, 2);
    assert_int_equal(s.hp.batch_size, 3);
    assert_float_equal(s.hp.learning_rate, 6e-4, 1e-15);
    assert_int_equal(s.data_format, LORAD_DATA_PREFERENCE);
    json_t *j = lorad_job_spec_to_json(&s);
    assert_non_null(j);
    json_t *hp = method_hp(j, "dpo");
    assert_float_equal(json_real_value(json_object_get(hp, "beta")), 0.25, 0);
    assert_int_equal(json_integer_value(json_object_get(hp, "n_epochs")), 2);
    assert_int_equal(json_integer_value(json_object_get(hp, "batch_size")), 3);
    assert_null(json_object_get(json_object_get(j, "hyperparameters"), "beta")); /* beta is DPO's alone */
    assert_int_equal(json_integer_value(json_object_get(json_object_get(j, "hyperparameters"), "batch_size")), 3);
    assert_int_equal(lorad_job_spec_parse(j, &s2, &err), 0);
    assert_memory_equal(&s.hp, &s2.hp, sizeof s.hp);
    assert_memory_equal(&s.method, &s2.method, sizeof s.method);
    json_decref(j);
    lorad_job_spec_clear(&s);
    lorad_job_spec_clear(&s2);

    /* The top-level hyperparameters (deprecated) still work beside the method, where they agree. */
    assert_int_equal(parse("{\"model\":\"m\",\"training_file\":\"t\",\"hyperparameters\":{\"n_epochs\":4,"
                           "\"max_seq_len\":64},\"method\":{\"type\":\"dpo\",\"dpo\":{\"hyperparameters\":"
                           "{\"beta\":\"auto\",\"n_epochs\":4,\"batch_size\":1}}},\"lora\":{\"r\":2}}",
                           &s, &err),
                     0);
    assert_int_equal(s.hp.n_epochs, 4);
    assert_int_equal(s.hp.max_seq_len, 64);
    assert_int_equal(s.hp.batch_size, 1);
    assert_float_equal(s.method.beta, 0.1, 0);
    assert_int_equal(s.lora.r, 2);
    lorad_job_spec_clear(&s);

    /* A supervised job echoes its method too, without beta. */
    assert_int_equal(parse("{\"model\":\"m\",\"training_file\":\"t\",\"hyperparameters\":{\"batch_size\":5}}", &s, &err), 0);
    assert_int_equal(s.method.type, LORAD_METHOD_SUPERVISED);
    assert_int_equal(lorad_job_rows_per_example(&s), 1);
    j = lorad_job_spec_to_json(&s);
    hp = method_hp(j, "supervised");
    assert_int_equal(json_integer_value(json_object_get(hp, "batch_size")), 5);
    assert_null(json_object_get(hp, "beta"));
    assert_int_equal(lorad_job_spec_parse(j, &s2, &err), 0);
    assert_memory_equal(&s.hp, &s2.hp, sizeof s.hp);
    assert_int_equal(s2.method.type, LORAD_METHOD_SUPERVISED);
    json_decref(j);
    lorad_job_spec_clear(&s);
    lorad_job_spec_clear(&s2);
}

static void test_dpo_errors_name_the_field(void **state) {
    (void)state;
#define DPO(hp) "{\"model\":\"m\",\"training_file\":\"t\",\"method\":{\"type\":\"dpo\",\"dpo\":{\"hyperparameters\":" hp "}}}"
    expect_error(DPO("{\"beta\":0}"), "method.dpo.hyperparameters.beta");
    expect_error(DPO("{\"beta\":10.5}"), "method.dpo.hyperparameters.beta");
    expect_error(DPO("{\"beta\":\"high\"}"), "method.dpo.hyperparameters.beta");
    expect_error(DPO("{\"beta\":null}"), "method.dpo.hyperparameters.beta");
    expect_error(DPO("{\"bta\":0.1}"), "method.dpo.hyperparameters.bta");
    expect_error(DPO("{\"batch_size\":0}"), "method.dpo.hyperparameters.batch_size");
    expect_error(DPO("{\"packing\":true}"), "method.dpo.hyperparameters.packing");
    expect_error(DPO("{\"train_on_input\":true}"), "method.dpo.hyperparameters.train_on_input");
    expect_error(DPO("[]"), "method.dpo.hyperparameters");
#undef DPO
    expect_error("{\"model\":\"m\",\"training_file\":\"t\",\"method\":{\"type\":\"dpo\"},"
                 "\"hyperparameters\":{\"packing\":true}}", "hyperparameters.packing");
    expect_error("{\"model\":\"m\",\"training_file\":\"t\",\"method\":{\"type\":\"dpo\"},"
                 "\"data\":{\"format\":\"messages\"}}", "data.format");
    expect_error("{\"model\":\"m\",\"training_file\":\"t\",\"data\":{\"format\":\"preference\"}}", "data.format");
    expect_error("{\"model\":\"m\",\"training_file\":\"t\",\"hyperparameters\":{\"beta\":0.2}}", "hyperparameters.beta");
    expect_error("{\"model\":\"m\",\"training_file\":\"t\",\"method\":{\"type\":\"supervised\",\"supervised\":"
                 "{\"hyperparameters\":{\"beta\":0.2}}}}", "method.supervised.hyperparameters.beta");
    expect_error("{\"model\":\"m\",\"training_file\":\"t\",\"method\":{\"type\":\"dpo\",\"supervised\":{}}}",
                 "method.supervised");
    expect_error("{\"model\":\"m\",\"training_file\":\"t\",\"method\":{\"type\":\"dpo\",\"dpo\":{\"beta\":1}}}",
                 "method.dpo.beta");
    expect_error("{\"model\":\"m\",\"training_file\":\"t\",\"method\":{\"type\":7}}", "method.type");
    expect_error("{\"model\":\"m\",\"training_file\":\"t\",\"method\":{\"dpo\":{}}}", "method.type");
    expect_error("{\"model\":\"m\",\"training_file\":\"t\",\"hyperparameters\":{\"batch_size\":2},\"method\":"
                 "{\"type\":\"dpo\",\"dpo\":{\"hyperparameters\":{\"batch_size\":4}}}}",
                 "method.dpo.hyperparameters.batch_size");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_full_example),
        cmocka_unit_test(test_defaults_match_documentation),
        cmocka_unit_test(test_openai_method_form_and_auto),
        cmocka_unit_test(test_errors_name_the_field),
        cmocka_unit_test(test_dpo_method),
        cmocka_unit_test(test_dpo_errors_name_the_field),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
