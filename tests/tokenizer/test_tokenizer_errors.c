/* Bad tokenizer files must fail with an error naming the file and the problem, never read out of
 * bounds (the sanitizer build runs this); plus hand-built models whose expected ids follow from
 * SentencePiece's rules, and the long-word performance bound. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "testutil.h"
#include "tok_internal.h"
#include "tokenizer.h"

static char *write_tmp(const char *dir, const char *name, const void *data, size_t len) {
    char *path = test_path(dir, name);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, len, f), len);
    fclose(f);
    return path;
}


/* Loading data must fail with a message that names the file and contains want. */
static void expect_load_error(const char *dir, const char *name, const void *data, size_t len, const char *want) {
    char *path = write_tmp(dir, name, data, len);
    struct lorad_tokenizer *t = NULL;
    struct lorad_error err = {0};
    int rc = lorad_tokenizer_load(&t, path, &err);
    if (rc == 0 || !strstr(err.message, path) || !strstr(err.message, want))
        fprintf(stderr, "%s: rc %d, message '%s', wanted '%s'\n", name, rc, err.message, want);
    assert_true(rc < 0);
    assert_null(t);
    assert_non_null(strstr(err.message, path));
    assert_non_null(strstr(err.message, want));
    free(path);
}

static void test_corrupt_model_files(void **state) {
    (void)state;
    char *dir = test_mkdtemp("tokerr");
    size_t len;
    unsigned char *model = test_read_file(test_shared_data("llama2-tokenizer.model"), &len);
    expect_load_error(dir, "truncated.model", model, len / 2, "past the end");
    static const unsigned char lying[] = {0x0A, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F, 0x0A, 0x01, 0x61};
    expect_load_error(dir, "lying.model", lying, sizeof lying, "past the end");
    static const unsigned char overlong_varint[] = {0x0A, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80};
    expect_load_error(dir, "varint.model", overlong_varint, sizeof overlong_varint, "truncated");
    /* One piece "a" then trainer_spec with model_type = 1 (unigram). */
    static const unsigned char unigram[] = {0x0A, 0x03, 0x0A, 0x01, 0x61, 0x12, 0x02, 0x18, 0x01};
    expect_load_error(dir, "unigram.model", unigram, sizeof unigram, "model_type 1");
    /* A BPE model whose normalizer has a precompiled charsmap. */
    static const unsigned char nfkc[] = {0x0A, 0x03, 0x0A, 0x01, 0x61, 0x12, 0x02, 0x18, 0x02,
                                         0x1A, 0x0D, 0x0A, 0x08, 'n', 'm', 't', '_', 'n', 'f', 'k', 'c', 0x12, 0x01, 0x00};
    expect_load_error(dir, "nfkc.model", nfkc, sizeof nfkc, "charsmap");
    /* A piece with an invalid type. */
    static const unsigned char bad_type[] = {0x0A, 0x05, 0x0A, 0x01, 0x61, 0x18, 0x09, 0x12, 0x02, 0x18, 0x02};
    expect_load_error(dir, "badtype.model", bad_type, sizeof bad_type, "type");
    free(model);
    test_rmtree(dir);
    free(dir);
}

static void test_corrupt_bin_files(void **state) {
    (void)state;
    char *dir = test_mkdtemp("tokerr");
    size_t len;
    unsigned char *bin = test_read_file(test_shared_data("llama2-tokenizer.bin"), &len);
    expect_load_error(dir, "truncated.bin", bin, len - 3, "truncated");
    unsigned char *copy = malloc(len);
    assert_non_null(copy);
    memcpy(copy, bin, len);
    int32_t huge = 0x7FFFFFF0;
    memcpy(copy + 4 + 4, &huge, 4); /* first token's length */
    expect_load_error(dir, "lying.bin", copy, len, "length");
    memcpy(copy, bin, len);
    int32_t bad_max = -5;
    memcpy(copy, &bad_max, 4);
    expect_load_error(dir, "badmax.bin", copy, len, "max_token_length");
    expect_load_error(dir, "text.bin", "hello world, not a tokenizer", 28, "max_token_length");
    expect_load_error(dir, "tokenizer.json", "{\"model\":{}}", 12, "not supported");
    static const char truncated_json[] = "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0";
    expect_load_error(dir, "truncated.json", truncated_json, sizeof truncated_json - 1, "line 1");
    /* Qwen2's regex (\p{N} unbounded, no space before letters) is not one we implement. */
    static const char other_regex[] = "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []},"
                                      " \"pre_tokenizer\": {\"type\": \"Sequence\", \"pretokenizers\": ["
                                      "{\"type\": \"Split\", \"pattern\": {\"Regex\": \"\\\\p{N}| ?[^\\\\s]+\"},"
                                      " \"behavior\": \"Isolated\", \"invert\": false},"
                                      " {\"type\": \"ByteLevel\", \"use_regex\": false}]}}";
    expect_load_error(dir, "qwen.json", other_regex, sizeof other_regex - 1, "Split regex '\\p{N}| ?[^\\s]+'");
    static const char byte_level_norm[] = "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []},"
                                          " \"normalizer\": {\"type\": \"NFC\"},"
                                          " \"pre_tokenizer\": {\"type\": \"ByteLevel\"}}";
    expect_load_error(dir, "blnorm.json", byte_level_norm, sizeof byte_level_norm - 1, "with a normalizer");
    static const char digits_grouped[] = "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []},"
                                         " \"pre_tokenizer\": {\"type\": \"Sequence\", \"pretokenizers\": ["
                                         "{\"type\": \"Digits\", \"individual_digits\": false},"
                                         " {\"type\": \"ByteLevel\"}]}}";
    expect_load_error(dir, "digits.json", digits_grouped, sizeof digits_grouped - 1, "individual_digits");
    static const char bad_merge[] = "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1},"
                                    " \"merges\": [\"a b\"]}, \"pre_tokenizer\": {\"type\": \"Metaspace\"}}";
    expect_load_error(dir, "badmerge.json", bad_merge, sizeof bad_merge - 1, "merges[0]");
    static const char holes[] = "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 5},"
                                " \"merges\": []}, \"pre_tokenizer\": {\"type\": \"Metaspace\"}}";
    expect_load_error(dir, "holes.json", holes, sizeof holes - 1, "dense");
    static const char huge_id[] = "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 99999999999},"
                                  " \"merges\": []}}";
    expect_load_error(dir, "hugeid.json", huge_id, sizeof huge_id - 1, "vocabulary size");
    free(copy);
    free(bin);
    test_rmtree(dir);
    free(dir);
}

static void test_decode_rejects_out_of_range_ids(void **state) {
    (void)state;
    struct lorad_tokenizer *t = NULL;
    struct lorad_error err = {0};
    assert_int_equal(lorad_tokenizer_load(&t, test_shared_data("llama2-tokenizer.model"), &err), 0);
    int32_t ids[] = {1, 15043, 32000};
    char *text = NULL;
    size_t n;
    assert_int_equal(lorad_tokenizer_decode(t, ids, 3, &text, &n, &err), -EINVAL);
    assert_null(text);
    assert_non_null(strstr(err.message, "32000"));
    int32_t neg[] = {-1};
    assert_int_equal(lorad_tokenizer_decode(t, neg, 1, &text, &n, &err), -EINVAL);
    assert_null(lorad_tokenizer_id_to_piece(t, 32000));
    assert_int_equal(lorad_tokenizer_vocab_size(t), 32000);
    assert_int_equal(lorad_tokenizer_bos_id(t), 1);
    assert_int_equal(lorad_tokenizer_eos_id(t), 2);
    assert_int_equal(lorad_tokenizer_pad_id(t), -1);
    assert_int_equal(lorad_tokenizer_special_id(t, "</s>"), 2);
    assert_int_equal(lorad_tokenizer_special_id(t, "[INST]"), -1);
    assert_int_equal(lorad_tokenizer_piece_to_id(t, "\xE2\x96\x81" "Hello"), 15043);
    lorad_tokenizer_free(t);
}

/* A 10,000-character word must encode in well under a second (heap-driven merges). */
static void test_long_word_is_fast(void **state) {
    (void)state;
    struct lorad_tokenizer *t = NULL;
    struct lorad_error err = {0};
    assert_int_equal(lorad_tokenizer_load(&t, test_shared_data("llama2-tokenizer.model"), &err), 0);
    size_t n = 10000;
    char *word = malloc(n);
    assert_non_null(word);
    for (size_t i = 0; i < n; i++) word[i] = "abcdefghij"[(i * 7 + i / 13) % 10];
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    int32_t *ids = NULL;
    size_t n_ids = 0;
    assert_int_equal(lorad_tokenizer_encode(t, word, n, 1, 0, &ids, &n_ids, &err), 0);
    clock_gettime(CLOCK_MONOTONIC, &b);
    double ms = (b.tv_sec - a.tv_sec) * 1e3 + (b.tv_nsec - a.tv_nsec) / 1e6;
    fprintf(stderr, "10k-char word: %zu ids in %.2f ms\n", n_ids, ms);
    assert_true(ms < 500);
    char *back = NULL;
    size_t back_len;
    assert_int_equal(lorad_tokenizer_decode(t, ids, n_ids, &back, &back_len, &err), 0);
    assert_int_equal(back_len, n);
    assert_memory_equal(back, word, n);
    free(back);
    free(ids);
    free(word);
    lorad_tokenizer_free(t);
}

/* GGUF-style arrays: user-defined pieces are whole units, control pieces never come from text,
 * unknown characters become <unk> without byte pieces. Expected ids follow SentencePiece's rules:
 * dummy prefix ▁, highest-score merge first. */
static void test_from_vocab_user_defined_and_unknown(void **state) {
    (void)state;
    const char *tokens[] = {"<unk>", "<s>", "</s>", "\xE2\x96\x81", "a", "b", "\xE2\x96\x81" "a", "ab", "<x>", "<", "x", ">"};
    float scores[] = {0, 0, 0, -1, -2, -3, -4, -5, 0, -6, -7, -8};
    int32_t types[] = {2, 3, 3, 1, 1, 1, 1, 1, 4, 1, 1, 1};
    struct lorad_vocab_arrays v = {.model = "llama", .n_tokens = 12, .tokens = tokens, .scores = scores,
                                   .token_types = types, .bos_id = 1, .eos_id = 2, .unk_id = 0, .pad_id = -1,
                                   .add_bos = -1, .add_eos = -1};
    struct lorad_tokenizer *t = NULL;
    struct lorad_error err = {0};
    assert_int_equal(lorad_tokenizer_from_vocab(&t, &v, &err), 0);
    int32_t *ids = NULL;
    size_t n = 0;
    /* "ab<x>z</s>" -> ▁a b <x> z(unknown) < / s > ; '/' and 's' unknown too. */
    assert_int_equal(lorad_tokenizer_encode(t, "ab<x>z</s>", 10, LORAD_TOKENIZER_DEFAULT, 1, &ids, &n, &err), 0);
    int32_t want[] = {1, 6, 5, 8, 0, 9, 0, 0, 11, 2};
    assert_int_equal(n, sizeof want / sizeof want[0]);
    assert_memory_equal(ids, want, sizeof want);
    free(ids);
    assert_int_equal(lorad_tokenizer_special_id(t, "<x>"), 8);
    lorad_tokenizer_free(t);

    v.model = "bert";
    assert_int_equal(lorad_tokenizer_from_vocab(&t, &v, &err), -ENOTSUP);
    v.model = "llama";
    v.bos_id = 99;
    assert_int_equal(lorad_tokenizer_from_vocab(&t, &v, &err), -EINVAL);
    assert_non_null(strstr(err.message, "bos"));
}

/* "<0xNN>" byte pieces: exactly two hex digits; a sign or a space is not one (sscanf's %X took
 * "<0x-6>" as 4294967290 and the loader indexed byte_ids with it: fuzz_tokenizer_json's find). */
static void test_byte_piece_spelling(void **state) {
    (void)state;
    assert_int_equal(tok_byte_piece_value("<0x00>", 6), 0);
    assert_int_equal(tok_byte_piece_value("<0xFF>", 6), 255);
    assert_int_equal(tok_byte_piece_value("<0x0a>", 6), 10);
    static const char *const bad[] = {"<0x-6>", "<0x+6>", "<0x 6>", "<0x6>", "<0x100>", "<0xG0>", "<0X41>", "[0x41]", ""};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (tok_byte_piece_value(bad[i], strlen(bad[i])) != -1) fail_msg("'%s' was taken for a byte piece", bad[i]);
    }
    assert_int_equal(tok_byte_piece_value("<0x41>x", 7), -1);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_byte_piece_spelling),
        cmocka_unit_test(test_corrupt_model_files),
        cmocka_unit_test(test_corrupt_bin_files),
        cmocka_unit_test(test_decode_rejects_out_of_range_ids),
        cmocka_unit_test(test_long_word_is_fast),
        cmocka_unit_test(test_from_vocab_user_defined_and_unknown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
