/* Byte-level BPE against tests/reference/byte_bpe_ref.py (the real regexes through python's
 * `regex`, GPT-2's BPE loop): for a GPT-2-style, a Llama 3-style and a SmolLM-style
 * tokenizer.json trained by the script, every corpus string must encode to the reference ids
 * and decode to the reference text, and byte-level decoding must give back the input exactly.
 * The Llama 3 and SmolLM vocabularies also go through lorad_tokenizer_from_vocab as a GGUF
 * "gpt2" vocabulary would (pre "llama-bpe" / "smollm") and must give the same ids. */
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "corpus_reader.h"
#include "testutil.h"
#include "tokenizer.h"

static char *dir;

static int setup(void **state) {
    (void)state;
    dir = test_mkdtemp("bpe-ref");
    char *ref = test_path(LORAD_SOURCE_DIR, "tests/reference/byte_bpe_ref.py");
    char *argv[] = {LORAD_PYTHON, ref, "fixtures", dir, BPE_CORPUS_LINES, NULL};
    assert_int_equal(test_run(argv), 0);
    free(ref);
    return 0;
}

static int teardown(void **state) {
    (void)state;
    test_rmtree(dir);
    free(dir);
    return 0;
}

static bool has_special(const char *s) {
    static const char *const specials[] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>"};
    for (size_t i = 0; i < sizeof specials / sizeof specials[0]; i++)
        if (strstr(s, specials[i])) return true;
    return false;
}

/* Compares t with STYLE.expected over corpus.jsonl; lossless: decode(encode(x)) must be x. */
static void check_style(const struct lorad_tokenizer *t, const char *style, bool lossless) {
    char *corpus = test_path(dir, "corpus.jsonl");
    char name[64];
    snprintf(name, sizeof name, "%s.expected", style);
    char *expected = test_path(dir, name);
    struct corpus_reader r;
    corpus_reader_open(&r, corpus, expected);
    int bad = 0, n_lossless = 0;
    while (corpus_reader_next(&r, 0)) {
        json_error_t jerr;
        json_t *jd = r.after_tab ? json_loads(r.after_tab, JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr) : NULL;
        assert_non_null(jd);
        struct lorad_error err = {0};
        int32_t *got = NULL;
        size_t n_got = 0;
        char *back = NULL;
        size_t back_len = 0;
        assert_int_equal(lorad_tokenizer_encode(t, r.text, r.len, LORAD_TOKENIZER_DEFAULT, LORAD_TOKENIZER_DEFAULT,
                                                &got, &n_got, &err), 0);
        assert_int_equal(lorad_tokenizer_decode(t, got, n_got, &back, &back_len, &err), 0);
        bool same = n_got == r.n_ids && memcmp(got, r.ids, r.n_ids * sizeof *got) == 0;
        bool decode_same = back_len == json_string_length(jd) && memcmp(back, json_string_value(jd), back_len) == 0;
        bool check_lossless = lossless && !has_special(r.text);
        bool lossless_ok = !check_lossless || (back_len == r.len && memcmp(back, r.text, r.len) == 0);
        n_lossless += check_lossless;
        if ((!same || !decode_same || !lossless_ok) && ++bad <= 8) {
            fprintf(stderr, "%s line %d: %.200s", style, r.lineno, r.line);
            if (!same) corpus_print_ids("expected", r.ids, r.n_ids), corpus_print_ids("got     ", got, n_got);
            if (!decode_same || !lossless_ok) fprintf(stderr, "  decoded to %.200s\n", back);
        }
        free(got);
        free(back);
        json_decref(jd);
    }
    fprintf(stderr, "%s: %d strings (%d checked lossless), %d mismatches\n", style, r.lineno, n_lossless, bad);
    assert_true(r.lineno >= atoi(BPE_CORPUS_LINES)); /* the script writes 2 x that many, a few dropped */
    assert_int_equal(bad, 0);
    corpus_reader_close(&r);
    free(expected);
    free(corpus);
}

static struct lorad_tokenizer *load_style(const char *style) {
    char *path = test_path(dir, style);
    struct lorad_tokenizer *t = NULL;
    struct lorad_error err = {0};
    if (lorad_tokenizer_load(&t, path, &err) < 0) fprintf(stderr, "%s\n", err.message);
    assert_non_null(t);
    assert_int_equal(lorad_tokenizer_kind(t), LORAD_TOKENIZER_BYTE_LEVEL);
    free(path);
    return t;
}

static void test_gpt2_style(void **state) {
    (void)state;
    struct lorad_tokenizer *t = load_style("gpt2");
    assert_false(lorad_tokenizer_adds_bos(t));
    check_style(t, "gpt2", false); /* add_prefix_space puts a space the decoder keeps */
    lorad_tokenizer_free(t);
}

static void test_llama3_style(void **state) {
    (void)state;
    struct lorad_tokenizer *t = load_style("llama3");
    assert_true(lorad_tokenizer_adds_bos(t));
    assert_int_equal(lorad_tokenizer_bos_id(t), lorad_tokenizer_special_id(t, "<|begin_of_text|>"));
    check_style(t, "llama3", true);
    lorad_tokenizer_free(t);
}

static void test_smollm_style(void **state) {
    (void)state;
    struct lorad_tokenizer *t = load_style("smollm");
    check_style(t, "smollm", true);
    lorad_tokenizer_free(t);
}

/* The style's tokenizer.json as GGUF keys: tokens by id, specials as control, merges "a b". */
static void check_as_gguf(const char *style, const char *pre) {
    char name[64];
    snprintf(name, sizeof name, "%s/tokenizer.json", style);
    char *path = test_path(dir, name);
    json_error_t jerr;
    json_t *root = json_load_file(path, 0, &jerr);
    assert_non_null(root);
    json_t *model = json_object_get(root, "model"), *vocab = json_object_get(model, "vocab");
    json_t *merges = json_object_get(model, "merges");
    int n = (int)json_object_size(vocab), n_merges = (int)json_array_size(merges);
    const char **tokens = calloc((size_t)n, sizeof *tokens);
    int32_t *types = calloc((size_t)n, sizeof *types);
    char **merge_strs = calloc((size_t)n_merges, sizeof *merge_strs);
    assert_true(tokens && types && merge_strs);
    const char *key;
    json_t *v;
    json_object_foreach(vocab, key, v) {
        int id = (int)json_integer_value(v);
        assert_true(id >= 0 && id < n);
        tokens[id] = key;
        types[id] = 1;
    }
    size_t i;
    int bos = -1;
    json_array_foreach(json_object_get(root, "added_tokens"), i, v) {
        int id = (int)json_integer_value(json_object_get(v, "id"));
        types[id] = 3;
        if (strcmp(json_string_value(json_object_get(v, "content")), "<|begin_of_text|>") == 0) bos = id;
    }
    json_array_foreach(merges, i, v) {
        assert_int_equal(json_array_size(v), 2);
        assert_true(asprintf(&merge_strs[i], "%s %s", json_string_value(json_array_get(v, 0)),
                             json_string_value(json_array_get(v, 1))) > 0);
    }
    struct lorad_vocab_arrays arrays = {
        .model = "gpt2", .pre = pre, .n_tokens = n, .tokens = tokens, .token_types = types,
        .n_merges = n_merges, .merges = (const char *const *)merge_strs, .bos_id = bos, .eos_id = -1,
        .unk_id = -1, .pad_id = -1, .add_bos = -1, .add_eos = -1,
    };
    struct lorad_tokenizer *t = NULL;
    struct lorad_error err = {0};
    if (lorad_tokenizer_from_vocab(&t, &arrays, &err) < 0) fprintf(stderr, "%s\n", err.message);
    assert_non_null(t);
    json_decref(root); /* the tokenizer holds copies */
    for (int k = 0; k < n_merges; k++) free(merge_strs[k]);
    free(merge_strs);
    free(types);
    free(tokens);
    free(path);
    check_style(t, style, true);
    lorad_tokenizer_free(t);
}

static void test_gguf_llama_bpe(void **state) {
    (void)state;
    check_as_gguf("llama3", "llama-bpe");
}

static void test_gguf_smollm(void **state) {
    (void)state;
    check_as_gguf("smollm", "smollm");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gpt2_style),     cmocka_unit_test(test_llama3_style),
        cmocka_unit_test(test_smollm_style),   cmocka_unit_test(test_gguf_llama_bpe),
        cmocka_unit_test(test_gguf_smollm),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
