/* One random model written by our spec-based Python writers as HF (F32, BF16, F16, sharded),
 * GGUF (F32, F16, BF16, Q8_0, Q4_0; Meta-permuted q/k) and llama2.c .bin (Meta layout) must load
 * into the same HF-layout tensors: exactly when lossless, within the rounding or quantisation
 * bound otherwise. load_model() is the one entry point, so a logits comparison can reuse it. */
#include "testutil.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats_testutil.h"
#include "model_file.h"

static char *dir;
static float *truth;
static size_t truth_n;
static char names[64][96];
static int n_names;

static int setup(void **state) {
    (void)state;
    dir = test_mkdtemp("fixtures");
    fmt_write_fixtures(dir);
    char *p = test_path(dir, "truth.f32");
    size_t len;
    truth = (float *)test_read_file(p, &len);
    truth_n = len / 4;
    free(p);
    p = test_path(dir, "truth_order.txt");
    FILE *f = fopen(p, "r");
    assert_non_null(f);
    free(p);
    while (n_names < 64 && fscanf(f, "%95s", names[n_names]) == 1) n_names++;
    fclose(f);
    return 0;
}

static int teardown(void **state) {
    (void)state;
    test_rmtree(dir);
    free(dir);
    free(truth);
    return 0;
}

/* Loads fixture name from the generated directory; the caller closes it. */
static struct lorad_model_file *load_model(const char *name) {
    char *p = test_path(dir, name);
    struct lorad_model_file *mf = NULL;
    struct lorad_error err = {0};
    int r = lorad_model_file_open(p, &mf, &err);
    if (r < 0) fail_msg("loading %s: %s", p, err.message);
    free(p);
    return mf;
}

enum tolerance { EXACT, BF16_RNE, F16_ROUND, Q8_0_BOUND, Q4_0_BOUND };

/* Checks every tensor of mf against the truth. Vectors (norms) are always stored F32 in GGUF. */
static void check_against_truth(const struct lorad_model_file *mf, enum tolerance tol) {
    const struct lorad_base_weights *w = &mf->weights;
    assert_int_equal(w->cfg.dim, 64);
    assert_int_equal(w->cfg.hidden_dim, 96);
    assert_int_equal(w->cfg.n_layers, 2);
    assert_int_equal(w->cfg.n_heads, 4);
    assert_int_equal(w->cfg.n_kv_heads, 2);
    assert_int_equal(w->cfg.head_dim, 16);
    assert_int_equal(w->cfg.vocab_size, 300);
    assert_int_equal(w->cfg.max_seq_len, 128);
    assert_false(w->cfg.tie_embeddings);
    assert_true(w->cfg.norm_eps == 1e-5f);
    assert_true(w->cfg.rope_theta == 10000.0f);
    int64_t off = 0;
    for (int k = 0; k < n_names; k++) {
        const struct lorad_tensor *t = fmt_hf_tensor(w, names[k]);
        if (!t) fail_msg("no tensor %s", names[k]);
        int64_t n = t->rows * t->cols;
        assert_true((size_t)(off + n) <= truth_n);
        enum tolerance eff = t->rows == 1 && tol != BF16_RNE && tol != F16_ROUND ? EXACT : tol;
        if (t->rows == 1 && tol == F16_ROUND && strcmp(mf->format_name, "gguf") == 0) eff = EXACT;
        if (t->rows == 1 && tol == BF16_RNE && strcmp(mf->format_name, "gguf") == 0) eff = EXACT;
        for (int64_t i = 0; i < n; i++) {
            float x = truth[off + i], y = fmt_tensor_get(t, i);
            int ok;
            switch (eff) {
            case EXACT: ok = x == y; break;
            case BF16_RNE:
                ok = t->dtype == LORAD_DTYPE_BF16 && ((const uint16_t *)t->data)[i] == lorad_f32_to_bf16(x);
                break;
            case F16_ROUND: ok = fabsf(x - y) <= fabsf(x) * 0x1p-11f + 0x1p-25f; break;
            default: {
                /* Block = the 32 consecutive values of this row containing i (rows move whole,
                 * so the block in HF order holds the same values as the stored block). */
                int64_t b0 = i / 32 * 32;
                float amax = 0;
                for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(truth[off + b0 + j]));
                float d = amax / (eff == Q8_0_BOUND ? 127.0f : 7.0f) * (1.0f + 0x1p-9f);
                ok = fabsf(x - y) <= d / 2 + 1e-7f;
            }
            }
            if (!ok) fail_msg("%s %s[%lld]: loaded %.9g, truth %.9g", mf->path, names[k], (long long)i, y, x);
        }
        off += n;
    }
    assert_int_equal((size_t)off, truth_n);
}

static int dtype_count(const struct lorad_model_file *mf, const char *name) {
    for (int i = 0; i < mf->n_dtypes; i++)
        if (strcmp(mf->dtypes[i].name, name) == 0) return mf->dtypes[i].count;
    return 0;
}

static void test_hf_f32_used_in_place(void **state) {
    (void)state;
    struct lorad_model_file *mf = load_model("hf_f32");
    assert_string_equal(mf->format_name, "hf");
    check_against_truth(mf, EXACT);
    assert_int_equal(mf->weights.cfg.bos_id, 1);
    assert_int_equal(mf->weights.cfg.eos_id, 2); /* first of the eos list */
    assert_int_equal(dtype_count(mf, "F32"), 2 * 9 + 3);
    assert_true(mf->owned_bytes == 0); /* every tensor points into the mapping */
    assert_true(mf->mapped_bytes == truth_n * 4);
    assert_null(mf->tokenizer_path);
    lorad_model_file_close(mf);
}

static void test_hf_bf16_sharded_f16(void **state) {
    (void)state;
    char *tok = test_path(dir, "hf_bf16/tokenizer.json");
    test_write_file(tok, "{}", 2);
    struct lorad_model_file *mf = load_model("hf_bf16");
    assert_string_equal(mf->tokenizer_path, tok);
    free(tok);
    check_against_truth(mf, BF16_RNE);
    assert_true(mf->owned_bytes == 0);
    assert_int_equal(mf->weights.embed.dtype, LORAD_DTYPE_BF16);
    lorad_model_file_close(mf);
    mf = load_model("hf_sharded");
    check_against_truth(mf, EXACT);
    assert_true(mf->owned_bytes == 0);
    lorad_model_file_close(mf);
    mf = load_model("hf_f16");
    check_against_truth(mf, F16_ROUND);
    assert_int_equal(mf->weights.embed.dtype, LORAD_DTYPE_F32); /* F16 converted at load */
    lorad_model_file_close(mf);
    /* A safetensors file given instead of its directory gets a hint. */
    char *p = test_path(dir, "hf_f16/model.safetensors");
    struct lorad_error err = {0};
    assert_int_equal(lorad_model_file_open(p, &mf, &err), -EINVAL);
    assert_non_null(strstr(err.message, "pass the directory"));
    free(p);
    mf = load_model("hf_f16");
    assert_true(mf->owned_bytes == truth_n * 4);
    lorad_model_file_close(mf);
}

static void check_gguf_vocab(const struct lorad_model_file *mf) {
    const struct lorad_vocab_arrays *v = &mf->vocab;
    assert_true(mf->has_vocab);
    assert_string_equal(v->model, "llama");
    assert_string_equal(v->pre, "default");
    assert_int_equal(v->n_tokens, 300);
    assert_string_equal(v->tokens[0], "<unk>");
    assert_string_equal(v->tokens[1], "<s>");
    assert_string_equal(v->tokens[3], "<0x00>");
    assert_string_equal(v->tokens[259], "\xe2\x96\x81w0");
    assert_true(v->scores[260] == -1.0f);
    assert_int_equal(v->token_types[0], 2);
    assert_int_equal(v->token_types[5], 6);
    assert_int_equal(v->n_merges, 2);
    assert_string_equal(v->merges[1], "w 1");
    assert_int_equal(v->bos_id, 1);
    assert_int_equal(v->eos_id, 2);
    assert_int_equal(v->unk_id, 0);
    assert_int_equal(v->pad_id, -1);
    assert_int_equal(v->add_bos, 1);
    assert_int_equal(v->add_eos, 0);
}

static void test_gguf_lossless(void **state) {
    (void)state;
    struct lorad_model_file *mf = load_model("gguf_f32.gguf");
    assert_string_equal(mf->format_name, "gguf");
    check_against_truth(mf, EXACT);
    check_gguf_vocab(mf);
    /* Only q and k (permuted) are copied; the rest is used in place. */
    size_t qk = 2 * (64 * 64 + 32 * 64) * 4;
    assert_true(mf->mapped_bytes == truth_n * 4 - qk);
    lorad_model_file_close(mf);
    mf = load_model("gguf_bf16.gguf");
    check_against_truth(mf, BF16_RNE);
    assert_int_equal(dtype_count(mf, "BF16"), 16);
    assert_int_equal(dtype_count(mf, "F32"), 5);
    lorad_model_file_close(mf);
    mf = load_model("gguf_f16.gguf");
    check_against_truth(mf, F16_ROUND);
    lorad_model_file_close(mf);
}

static void test_gguf_quantised_within_half_a_step(void **state) {
    (void)state;
    struct lorad_model_file *mf = load_model("gguf_q8_0.gguf");
    check_against_truth(mf, Q8_0_BOUND);
    assert_int_equal(dtype_count(mf, "Q8_0"), 16);
    assert_int_equal(dtype_count(mf, "F32"), 5);
    lorad_model_file_close(mf);
    mf = load_model("gguf_q4_0.gguf");
    check_against_truth(mf, Q4_0_BOUND);
    assert_int_equal(dtype_count(mf, "Q4_0"), 16);
    lorad_model_file_close(mf);
}

/* A Q4_K_M-style GGUF (Q4_K and Q6_K matrices, tests/formats/write_kquant_fixture.py) loads with
 * its matrices kept as stored: each element decodes to the truth our numpy decoder made of the
 * blocks (to within one float32 rounding per term), q/k rows in HF order, and only the permuted
 * q/k rows are copied; everything else stays in the mapping. */
static void test_gguf_k_quants_kept_as_stored(void **state) {
    (void)state;
    char *kdir = test_mkdtemp("kquant");
    char *argv[] = {LORAD_PYTHON, LORAD_SOURCE_DIR "/tests/formats/write_kquant_fixture.py", kdir, NULL};
    assert_int_equal(test_run(argv), 0);
    char *p = test_path(kdir, "truth.f32"), *q = test_path(kdir, "truth_order.txt"), *g = test_path(kdir, "gguf_q4_k_m.gguf");
    size_t len;
    float *kt = (float *)test_read_file(p, &len);
    char kn[64][96];
    int nk = 0;
    FILE *f = fopen(q, "r");
    assert_non_null(f);
    while (nk < 64 && fscanf(f, "%95s", kn[nk]) == 1) nk++;
    fclose(f);
    struct lorad_model_file *mf = NULL;
    struct lorad_error err = {0};
    if (lorad_model_file_open(g, &mf, &err) < 0) fail_msg("loading %s: %s", g, err.message);
    assert_int_equal(dtype_count(mf, "Q4_K"), 9);
    assert_int_equal(dtype_count(mf, "Q6_K"), 7);
    size_t off = 0, qk_bytes = 0;
    for (int k = 0; k < nk; k++) {
        const struct lorad_tensor *t = fmt_hf_tensor(&mf->weights, kn[k]);
        if (!t) fail_msg("no tensor %s", kn[k]);
        if (t->rows > 1) assert_true(t->dtype == LORAD_DTYPE_Q4_K || t->dtype == LORAD_DTYPE_Q6_K);
        if (strstr(kn[k], "q_proj") || strstr(kn[k], "k_proj")) qk_bytes += t->rows * lorad_dtype_row_bytes(t->dtype, t->cols);
        for (int64_t i = 0; i < t->rows * t->cols; i++) {
            float x = kt[off + (size_t)i], y = fmt_tensor_get(t, i);
            if (!(fabsf(x - y) <= fabsf(x) * 0x1p-22f + 1e-30f))
                fail_msg("%s[%lld]: loaded %.9g, truth %.9g", kn[k], (long long)i, y, x);
        }
        off += (size_t)(t->rows * t->cols);
    }
    assert_int_equal(off, len / 4);
    assert_true(mf->owned_bytes >= qk_bytes && mf->owned_bytes < qk_bytes + ((size_t)1 << 20)); /* + the vocabulary */
    lorad_model_file_close(mf);
    test_rmtree(kdir);
    free(kt); free(p); free(q); free(g); free(kdir);
}

static void test_llama2c_meta_layout(void **state) {
    (void)state;
    struct lorad_model_file *mf = load_model("model.bin");
    assert_string_equal(mf->format_name, "llama2c");
    check_against_truth(mf, EXACT);
    assert_false(mf->has_vocab);
    assert_true(mf->owned_bytes == 2 * (64 * 64 + 32 * 64) * 4); /* only permuted q/k copied */
    lorad_model_file_close(mf);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hf_f32_used_in_place),
        cmocka_unit_test(test_hf_bf16_sharded_f16),
        cmocka_unit_test(test_gguf_lossless),
        cmocka_unit_test(test_gguf_k_quants_kept_as_stored),
        cmocka_unit_test(test_gguf_quantised_within_half_a_step),
        cmocka_unit_test(test_llama2c_meta_layout),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
