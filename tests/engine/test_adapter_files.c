/* Adapter writers: PEFT dir, GGUF LoRA and tar are read back by an independent Python reader
 * (tests/reference/check_adapter_files.py); the config reader round-trips and rejects bad files. */
#include "testutil.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapter.h"
#include "tar.h"

static void run_case(int n_heads, int n_kv, int head_dim, int dim, int hidden, int r, double alpha, bool rslora) {
    char *dir = test_mkdtemp("adapter");
    struct lorad_llama_config cfg;
    lorad_llama_config_defaults(&cfg);
    cfg.dim = dim; cfg.hidden_dim = hidden; cfg.n_layers = 2; cfg.n_heads = n_heads; cfg.n_kv_heads = n_kv;
    cfg.head_dim = head_dim; cfg.vocab_size = 50; cfg.max_seq_len = 64;
    struct lorad_adapter_meta meta = {.r = r, .alpha = alpha, .dropout = 0.05, .use_rslora = rslora, .n_targets = 4};
    strcpy(meta.targets[0], "q_proj"); strcpy(meta.targets[1], "k_proj");
    strcpy(meta.targets[2], "down_proj"); strcpy(meta.targets[3], "lm_head");
    strcpy(meta.base_model, "demo-model");

    struct { const char *module; int in, out; } mods[] = {
        {"self_attn.q_proj", dim, n_heads * head_dim}, {"self_attn.k_proj", dim, n_kv * head_dim},
        {"mlp.down_proj", hidden, dim}};
    struct lorad_adapter_tensor t[16];
    float *bufs[16];
    int n = 0;
    for (int l = 0; l < 2; l++)
        for (int m = 0; m < 3; m++)
            for (int ab = 0; ab < 2; ab++) {
                snprintf(t[n].name, sizeof t[n].name, "model.layers.%d.%s.lora_%c.weight", l, mods[m].module, ab ? 'B' : 'A');
                t[n].rows = ab ? mods[m].out : r;
                t[n].cols = ab ? r : mods[m].in;
                n++;
            }
    strcpy(t[n].name, "lm_head.lora_A.weight"); t[n].rows = r; t[n].cols = dim; n++;
    strcpy(t[n].name, "lm_head.lora_B.weight"); t[n].rows = 50; t[n].cols = r; n++;
    char *list_path = test_path(dir, "tensors.json");
    FILE *f = fopen(list_path, "w");
    fputs("[", f);
    for (int k = 0; k < n; k++) {
        int64_t count = t[k].rows * t[k].cols;
        bufs[k] = malloc((size_t)count * sizeof(float));
        for (int64_t i = 0; i < count; i++) bufs[k][i] = (float)sin(0.01 * (double)i + k);
        t[k].data = bufs[k];
        fprintf(f, "%s[\"%s\", %lld, %lld]", k ? ", " : "", t[k].name, (long long)t[k].rows, (long long)t[k].cols);
    }
    fputs("]\n", f);
    fclose(f);

    struct lorad_error err = {0};
    char *peft = test_path(dir, "peft"), *gguf = test_path(dir, "adapter.gguf"), *tar = test_path(dir, "adapter.tar");
    assert_int_equal(lorad_adapter_write_peft(peft, &meta, t, n, &err), 0);
    assert_int_equal(lorad_adapter_write_gguf(gguf, &meta, t, n, &cfg, &err), 0);
    const char *names[] = {"adapter_model.safetensors", "adapter_config.json"};
    assert_int_equal(lorad_tar_write(tar, peft, names, 2, "adapter", &err), 0);

    struct lorad_adapter_meta back;
    assert_int_equal(lorad_adapter_read_config(peft, &back, &err), 0);
    assert_int_equal(back.r, r);
    assert_float_equal(back.alpha, alpha, 0);
    assert_int_equal(back.use_rslora, rslora);
    assert_int_equal(back.n_targets, 4);
    assert_string_equal(back.targets[3], "lm_head");
    assert_string_equal(back.base_model, "demo-model");
    assert_float_equal(lorad_adapter_scale(&back), rslora ? alpha / sqrt(r) : alpha / r, 1e-12);

    char a[5][32];
    snprintf(a[0], 32, "%d", n_heads); snprintf(a[1], 32, "%d", n_kv); snprintf(a[2], 32, "%d", head_dim);
    snprintf(a[3], 32, "%d", r); snprintf(a[4], 32, "%g", alpha);
    char script[4096];
    snprintf(script, sizeof script, "%s/tests/reference/check_adapter_files.py", LORAD_SOURCE_DIR);
    char *argv[] = {LORAD_PYTHON, script, dir, a[0], a[1], a[2], a[3], a[4], rslora ? "1" : "0", NULL};
    assert_int_equal(test_run(argv), 0);

    for (int k = 0; k < n; k++) free(bufs[k]);
    free(list_path); free(peft); free(gguf); free(tar);
    test_rmtree(dir);
    free(dir);
}

static void test_adapter_formats_mha(void **state) { (void)state; run_case(4, 4, 8, 32, 40, 4, 8, false); }
static void test_adapter_formats_gqa_rslora(void **state) { (void)state; run_case(6, 2, 10, 36, 52, 3, 5, true); }

static void test_config_rejects(void **state) {
    (void)state;
    char *dir = test_mkdtemp("adapter");
    char *path = test_path(dir, "adapter_config.json");
    struct { const char *text, *param; } cases[] = {
        {"{\"peft_type\":\"PREFIX_TUNING\"}", "peft_type"},
        {"{\"peft_type\":\"LORA\",\"r\":0,\"lora_alpha\":1,\"target_modules\":[\"q_proj\"]}", "r"},
        {"{\"peft_type\":\"LORA\",\"r\":4,\"lora_alpha\":1,\"target_modules\":[\"q_proj\"],\"use_dora\":\"yes\"}", "use_dora"},
        {"{\"peft_type\":\"LORA\",\"r\":4,\"lora_alpha\":1,\"target_modules\":\"q_proj\"}", "target_modules"},
        {"{\"peft_type\":\"LORA\",\"r\":4,\"lora_alpha\":1,\"target_modules\":[\"q_proj\"],\"bias\":\"all\"}", "bias"},
        {"{not json", "adapter_config.json"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        FILE *f = fopen(path, "w");
        fputs(cases[i].text, f);
        fclose(f);
        struct lorad_adapter_meta m;
        struct lorad_error err = {0};
        assert_int_equal(lorad_adapter_read_config(dir, &m, &err), -EINVAL);
        assert_string_equal(err.param, cases[i].param);
        assert_non_null(strstr(err.message, "adapter_config.json"));
    }
    free(path);
    test_rmtree(dir);
    free(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_adapter_formats_mha),
        cmocka_unit_test(test_adapter_formats_gqa_rslora),
        cmocka_unit_test(test_config_rejects),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
