/* The C tokenizers against python3-sentencepiece on a generated corpus of 6000 varied strings:
 * tokenizer.model and llama2.c tokenizer.bin must give sentencepiece's ids for every string,
 * decode like sentencepiece, and round-trip on exactly the strings sentencepiece does; an HF
 * tokenizer.json generated from the same pieces (merges by score, special added tokens) must give
 * the ids sentencepiece gives for the text between the special tokens. */
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "corpus_reader.h"
#include "testutil.h"
#include "tokenizer.h"

static char *dir, *corpus, *expected, *hf_dir;

static int setup(void **state) {
    (void)state;
    dir = test_mkdtemp("tokref");
    corpus = test_path(dir, "corpus.jsonl");
    expected = test_path(dir, "expected.txt");
    char *gen = test_path(LORAD_SOURCE_DIR, "tests/reference/tokenizer_corpus.py");
    char *ref = test_path(LORAD_SOURCE_DIR, "tests/reference/tokenizer_spm_ref.py");
    char *argv1[] = {LORAD_PYTHON, gen, corpus, "6000", NULL};
    assert_int_equal(test_run(argv1), 0);
    char *argv2[] = {LORAD_PYTHON, ref, (char *)test_shared_data("llama2-tokenizer.model"), corpus, expected, NULL};
    assert_int_equal(test_run(argv2), 0);
    hf_dir = test_path(dir, "hf");
    char *fix = test_path(LORAD_SOURCE_DIR, "tests/reference/tokenizer_hf_fixture.py");
    char *argv3[] = {LORAD_PYTHON, fix, (char *)test_shared_data("llama2-tokenizer.model"), corpus, hf_dir, NULL};
    assert_int_equal(test_run(argv3), 0);
    free(fix);
    free(gen);
    free(ref);
    return 0;
}

static int teardown(void **state) {
    (void)state;
    test_rmtree(dir);
    free(dir);
    free(corpus);
    free(expected);
    free(hf_dir);
    return 0;
}

static void check_file(const char *model) {
    struct lorad_tokenizer *t = NULL;
    struct lorad_error err = {0};
    assert_int_equal(lorad_tokenizer_load(&t, test_shared_data(model), &err), 0);
    struct corpus_reader r;
    corpus_reader_open(&r, corpus, expected);
    int bad = 0, round_trips = 0;
    while (corpus_reader_next(&r, 1)) { /* "R" or "-": whether sentencepiece round-trips */
        assert_non_null(r.after_tab);
        json_error_t jerr;
        json_t *jd = json_loads(r.after_tab, JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
        assert_non_null(jd);
        bool sp_round_trips = r.exp_head[0] == 'R';
        int32_t *got = NULL;
        size_t n_got = 0;
        assert_int_equal(lorad_tokenizer_encode(t, r.text, r.len, 0, 0, &got, &n_got, &err), 0);
        bool same = n_got == r.n_ids && memcmp(got, r.ids, r.n_ids * sizeof *got) == 0;
        char *back = NULL;
        size_t back_len = 0;
        assert_int_equal(lorad_tokenizer_decode(t, r.ids, r.n_ids, &back, &back_len, &err), 0);
        bool decode_same = back_len == json_string_length(jd) && memcmp(back, json_string_value(jd), back_len) == 0;
        bool we_round_trip = back_len == r.len && memcmp(back, r.text, r.len) == 0;
        round_trips += we_round_trip;
        if (!same || !decode_same || we_round_trip != sp_round_trips) {
            if (++bad <= 10) {
                fprintf(stderr, "%s line %d: %.200s\n", model, r.lineno, r.line);
                if (!same) corpus_print_ids("expected", r.ids, r.n_ids), corpus_print_ids("got     ", got, n_got);
                if (!decode_same) fprintf(stderr, "  decode differs: got %.200s\n", back);
                if (we_round_trip != sp_round_trips)
                    fprintf(stderr, "  round trip: sentencepiece %d, ours %d\n", sp_round_trips, we_round_trip);
            }
        }
        free(back);
        free(got);
        json_decref(jd);
    }
    fprintf(stderr, "%s: %d strings, %d round-trip, %d mismatches\n", model, r.lineno, round_trips, bad);
    assert_true(r.lineno >= 5000);
    assert_int_equal(bad, 0);
    corpus_reader_close(&r);
    lorad_tokenizer_free(t);
}

static void test_model_matches_sentencepiece(void **state) {
    (void)state;
    check_file("llama2-tokenizer.model");
}

static void test_llama2c_bin_matches_sentencepiece(void **state) {
    (void)state;
    check_file("llama2-tokenizer.bin");
}

/* HF tokenizer.json + tokenizer_config.json (directory form): ids with BOS from the config. */
static void test_hf_json_matches_sentencepiece(void **state) {
    (void)state;
    struct lorad_tokenizer *t = NULL;
    struct lorad_error err = {0};
    if (lorad_tokenizer_load(&t, hf_dir, &err) < 0) fprintf(stderr, "%s\n", err.message);
    assert_non_null(t);
    assert_int_equal(lorad_tokenizer_kind(t), LORAD_TOKENIZER_HF_SPM);
    assert_true(lorad_tokenizer_adds_bos(t));
    assert_int_equal(lorad_tokenizer_special_id(t, "</s>"), 2);
    char *exp_path = test_path(hf_dir, "expected.txt");
    struct corpus_reader r;
    corpus_reader_open(&r, corpus, exp_path);
    int bad = 0;
    while (corpus_reader_next(&r, 0)) {
        int32_t *got = NULL;
        size_t n_got = 0;
        assert_int_equal(lorad_tokenizer_encode(t, r.text, r.len, LORAD_TOKENIZER_DEFAULT, LORAD_TOKENIZER_DEFAULT,
                                                &got, &n_got, &err), 0);
        if (!(n_got == r.n_ids && memcmp(got, r.ids, r.n_ids * sizeof *got) == 0) && ++bad <= 10) {
            fprintf(stderr, "tokenizer.json line %d: %.200s\n", r.lineno, r.line);
            corpus_print_ids("expected", r.ids, r.n_ids);
            corpus_print_ids("got     ", got, n_got);
        }
        free(got);
    }
    fprintf(stderr, "tokenizer.json: %d strings, %d mismatches\n", r.lineno, bad);
    assert_true(r.lineno >= 5000);
    assert_int_equal(bad, 0);
    corpus_reader_close(&r);
    free(exp_path);
    lorad_tokenizer_free(t);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_model_matches_sentencepiece),
        cmocka_unit_test(test_llama2c_bin_matches_sentencepiece),
        cmocka_unit_test(test_hf_json_matches_sentencepiece),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
