/* Byte-level BPE on hand-built GGUF "gpt2" vocabularies, expected ids worked out by hand from the
 * GPT-2 byte map, the pre-tokenizer regexes and rank-ordered merges; plus the refusals. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"
#include "tokenizer.h"

/* GPT-2's map: printable Latin-1 stays, the rest (0..32, 127..160, 173) becomes U+0100 + n. */
static unsigned byte_char(unsigned b) {
    if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174) return b;
    return 256 + (b <= 32 ? b : b <= 160 ? 33 + b - 127 : 67);
}

static char *utf8(unsigned cp) {
    char *s = calloc(1, 4);
    assert_non_null(s);
    if (cp < 0x80) s[0] = (char)cp;
    else s[0] = (char)(0xC0 | (cp >> 6)), s[1] = (char)(0x80 | (cp & 0x3F));
    return s;
}

#define N_EXTRA 10
/* Id b < 256: the byte b's character; then these from 256 ("held" has no merge leading to it). */
static const char *const extra[N_EXTRA] = {"he", "ll", "hell", "\xC4\xA0w", "or", "<|endoftext|>",
                                           "<|begin_of_text|>", "Sa", "'S", "held"};
static const char *const merges[] = {"h e", "l l", "he ll", "\xC4\xA0 w", "o r", "S a", "' S"}; /* rank order */

static int build(struct lorad_tokenizer **t, const char *pre, int bos_id, int n_merges, const char *const *m,
                 struct lorad_error *err) {
    const char *tokens[256 + N_EXTRA];
    int32_t types[256 + N_EXTRA];
    char *owned[256];
    for (int b = 0; b < 256; b++) tokens[b] = owned[b] = utf8(byte_char((unsigned)b)), types[b] = 1;
    for (int k = 0; k < N_EXTRA; k++) tokens[256 + k] = extra[k], types[256 + k] = extra[k][0] == '<' ? 3 : 1;
    struct lorad_vocab_arrays v = {
        .model = "gpt2", .pre = pre, .n_tokens = 256 + N_EXTRA, .tokens = tokens, .token_types = types,
        .n_merges = n_merges, .merges = m, .bos_id = bos_id, .eos_id = 261, .unk_id = -1, .pad_id = -1,
        .add_bos = -1, .add_eos = -1,
    };
    int rc = lorad_tokenizer_from_vocab(t, &v, err);
    for (int b = 0; b < 256; b++) free(owned[b]);
    return rc;
}

static void expect_ids(const struct lorad_tokenizer *t, const char *text, const int32_t *want, size_t n_want) {
    struct lorad_error err = {0};
    int32_t *got = NULL;
    size_t n = 0;
    assert_int_equal(lorad_tokenizer_encode(t, text, strlen(text), LORAD_TOKENIZER_DEFAULT, LORAD_TOKENIZER_DEFAULT,
                                            &got, &n, &err), 0);
    if (n != n_want || memcmp(got, want, n * sizeof *got) != 0) {
        fprintf(stderr, "'%s':", text);
        for (size_t i = 0; i < n; i++) fprintf(stderr, " %d", (int)got[i]);
        fprintf(stderr, "\n");
    }
    assert_int_equal(n, n_want);
    assert_memory_equal(got, want, n * sizeof *got);
    free(got);
}

static void expect_decode(const struct lorad_tokenizer *t, const int32_t *ids, size_t n, const char *want) {
    struct lorad_error err = {0};
    char *text = NULL;
    size_t len = 0;
    assert_int_equal(lorad_tokenizer_decode(t, ids, n, &text, &len, &err), 0);
    assert_int_equal(len, strlen(want));
    assert_string_equal(text, want);
    free(text);
}

static void test_gpt2_merges_and_specials(void **state) {
    (void)state;
    struct lorad_tokenizer *t = NULL;
    struct lorad_error err = {0};
    assert_int_equal(build(&t, NULL, -1, 7, merges, &err), 0);
    assert_int_equal(lorad_tokenizer_kind(t), LORAD_TOKENIZER_BYTE_LEVEL);
    assert_false(lorad_tokenizer_adds_bos(t));
    /* "hello" -> h e l l o: he, ll, then he+ll = hell; " world" -> Ġw, or, l, d; "'s"; the special. */
    static const int32_t want[] = {258, 'o', 259, 260, 'l', 'd', '\'', 's', 261};
    expect_ids(t, "hello world's<|endoftext|>", want, 9);
    /* Of two spaces before a word the last joins it ("\s+(?!\S)"): a, Ġ, Ġb (no merge applies).
     * GPT-2's contractions are case-sensitive: "'Sa" is "'" then "Sa" (merged). */
    static const int32_t want2[] = {'a', ' ', ' ', 'b', '\'', 263};
    expect_ids(t, "a  b'Sa", want2, 6);
    /* Control tokens vanish; Ġ and Ċ become space and newline; a lone continuation byte is U+FFFD. */
    static const int32_t ids[] = {258, 'o', ' ', '\n', 261, 0x80};
    expect_decode(t, ids, 6, "hello \n\xEF\xBF\xBD");
    lorad_tokenizer_free(t);
}

static void test_llama_bpe_adds_bos(void **state) {
    (void)state;
    struct lorad_tokenizer *t = NULL;
    struct lorad_error err = {0};
    assert_int_equal(build(&t, "llama-bpe", 262, 7, merges, &err), 0);
    assert_true(lorad_tokenizer_adds_bos(t));
    /* ignore_merges: "held" is in the vocabulary, so it is taken whole though no merge leads to it;
     * the Llama 3 regex keeps at most three digits together and takes "'S" as a contraction
     * (case-insensitive), so "'Sa" is 'S + a, where GPT-2 gives ' + Sa. */
    static const int32_t want[] = {262, 265, '1', '2', '3', '4', 264, 'a'};
    expect_ids(t, "held1234'Sa", want, 8);
    lorad_tokenizer_free(t);
}

static void test_refusals(void **state) {
    (void)state;
    struct lorad_tokenizer *t = NULL;
    struct lorad_error err = {0};
    assert_int_equal(build(&t, "qwen2", -1, 5, merges, &err), -ENOTSUP);
    assert_null(t);
    assert_non_null(strstr(err.message, "tokenizer.ggml.pre 'qwen2'"));
    static const char *const missing[] = {"h e", "x yz"};
    assert_int_equal(build(&t, NULL, -1, 2, missing, &err), -EINVAL);
    assert_null(t);
    assert_non_null(strstr(err.message, "merge 1 'x' 'yz'"));
    static const char *const no_space[] = {"he"};
    assert_int_equal(build(&t, NULL, -1, 1, no_space, &err), -EINVAL);
    assert_non_null(strstr(err.message, "merge 0"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gpt2_merges_and_specials),
        cmocka_unit_test(test_llama_bpe_adds_bos),
        cmocka_unit_test(test_refusals),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
