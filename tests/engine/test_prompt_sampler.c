/* The pieces generation is made of, each against its definition: a prompt is tokenised as the
 * chat template lays the conversation out (expected ids from the Llama 2 tokenizer alone, itself
 * checked against SentencePiece in tests/tokenizer), and the sampler draws with the probabilities
 * softmax(logits / T) restricted by top-k / top-p (frequencies within 5 standard deviations). */
#include "testutil.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "prompt.h"
#include "sampler.h"
#include "samples.h"
#include "tokenizer.h"

struct fixture {
    struct lorad_tokenizer *tok;
    struct lorad_encoder enc;
};

static int setup(void **state) {
    struct fixture *f = calloc(1, sizeof *f);
    struct lorad_error err = {0};
    if (lorad_tokenizer_load(&f->tok, test_shared_data("llama2-tokenizer.model"), &err) < 0) {
        fprintf(stderr, "%s\n", err.message);
        return -1;
    }
    lorad_encoder_from_tokenizer(&f->enc, f->tok, 32000);
    *state = f;
    return 0;
}

static int teardown(void **state) {
    struct fixture *f = *state;
    lorad_tokenizer_free(f->tok);
    free(f);
    return 0;
}

/* Appends the ids of text (no BOS/EOS) to out at *n. */
static void append_text(struct fixture *f, const char *text, int32_t *out, int *n, int cap) {
    int32_t *ids;
    size_t k;
    assert_int_equal(lorad_tokenizer_encode(f->tok, text, strlen(text), 0, 0, &ids, &k, NULL), 0);
    assert_true(*n + (int)k <= cap);
    memcpy(out + *n, ids, k * sizeof *ids);
    *n += (int)k;
    free(ids);
}

static void assert_ids(const int32_t *got, int n_got, const int32_t *want, int n_want) {
    assert_int_equal(n_got, n_want);
    assert_memory_equal(got, want, (size_t)n_want * sizeof *want);
}

static void test_text_prompt_is_bos_and_text(void **state) {
    struct fixture *f = *state;
    int32_t want[64];
    int n_want = 0;
    want[n_want++] = lorad_tokenizer_bos_id(f->tok);
    append_text(f, "Once upon a time", want, &n_want, 64);
    struct lorad_prompt p = {.text = "Once upon a time"};
    int32_t *ids;
    int n;
    struct lorad_error err = {0};
    assert_int_equal(lorad_prompt_tokenize(&ids, &n, &p, &f->enc, 64, &err), 0);
    assert_ids(ids, n, want, n_want);
    free(ids);
    p.no_bos = true;
    assert_int_equal(lorad_prompt_tokenize(&ids, &n, &p, &f->enc, 64, &err), 0);
    assert_ids(ids, n, want + 1, n_want - 1);
    free(ids);
}

/* A conversation with an answer in it: the earlier answer is context (closed by EOS, the next
 * exchange opening with BOS), and the prompt ends where the next answer would start. */
static void test_conversation_ends_where_the_next_answer_starts(void **state) {
    struct fixture *f = *state;
    int32_t want[128];
    int n_want = 0, bos = lorad_tokenizer_bos_id(f->tok), eos = lorad_tokenizer_eos_id(f->tok);
    /* Llama 2's layout, each piece tokenised on its own as a dataset line's are */
    const char *first[] = {"[INST] ", "<<SYS>>\n", "Be brief.", "\n<</SYS>>\n\n", "Hi", " [/INST] ", "Hello there", " "};
    const char *second[] = {"[INST] ", "And you?", " [/INST] "};
    want[n_want++] = bos;
    for (size_t i = 0; i < sizeof first / sizeof first[0]; i++) append_text(f, first[i], want, &n_want, 128);
    want[n_want++] = eos;
    want[n_want++] = bos;
    for (size_t i = 0; i < sizeof second / sizeof second[0]; i++) append_text(f, second[i], want, &n_want, 128);
    const struct lorad_prompt_message msgs[] = {
        {"system", "Be brief."}, {"user", "Hi"}, {"assistant", "Hello there"}, {"user", "And you?"}};
    struct lorad_prompt p = {.messages = msgs, .n_messages = 4, .tmpl = LORAD_TEMPLATE_LLAMA2};
    int32_t *ids;
    int n;
    struct lorad_error err = {0};
    int rc = lorad_prompt_tokenize(&ids, &n, &p, &f->enc, 128, &err);
    if (rc < 0) fprintf(stderr, "%s [%s]\n", err.message, err.param);
    assert_int_equal(rc, 0);
    assert_ids(ids, n, want, n_want);
    free(ids);
}

static void expect_error(struct fixture *f, const struct lorad_prompt *p, int max_tokens, int code, const char *param) {
    int32_t *ids = (int32_t *)&ids; /* must stay untouched */
    int n = -7;
    struct lorad_error err = {0};
    assert_int_equal(lorad_prompt_tokenize(&ids, &n, p, &f->enc, max_tokens, &err), code);
    assert_string_equal(err.param, param);
    assert_true(err.message[0] != '\0');
    assert_ptr_equal(ids, (int32_t *)&ids);
    assert_int_equal(n, -7);
}

static void test_bad_prompts_name_the_field(void **state) {
    struct fixture *f = *state;
    const struct lorad_prompt_message bad_role[] = {{"user", "Hi"}, {"robot", "beep"}};
    expect_error(f, &(struct lorad_prompt){.messages = bad_role, .n_messages = 2, .tmpl = LORAD_TEMPLATE_LLAMA2}, 64,
                 -EINVAL, "messages[1].role");
    const struct lorad_prompt_message bad_utf8[] = {{"user", "caf\xc3"}};
    expect_error(f, &(struct lorad_prompt){.messages = bad_utf8, .n_messages = 1, .tmpl = LORAD_TEMPLATE_LLAMA2}, 64,
                 -EINVAL, "messages[0].content");
    expect_error(f, &(struct lorad_prompt){.text = "\xff"}, 64, -EINVAL, "prompt");
    /* the Llama 2 tokenizer has no <|start_header_id|>: the Llama 3 template cannot be rendered */
    const struct lorad_prompt_message hi[] = {{"user", "Hi"}};
    expect_error(f, &(struct lorad_prompt){.messages = hi, .n_messages = 1, .tmpl = LORAD_TEMPLATE_LLAMA3}, 64,
                 -EINVAL, "template");
    /* BOS + "Once upon a time" is 5 ids: 4 do not hold it, 5 do */
    expect_error(f, &(struct lorad_prompt){.text = "Once upon a time"}, 4, -E2BIG, "prompt");
    int32_t *ids;
    int n;
    assert_int_equal(lorad_prompt_tokenize(&ids, &n, &(struct lorad_prompt){.text = "Once upon a time"}, &f->enc, 5, NULL), 0);
    assert_int_equal(n, 5);
    free(ids);
    expect_error(f, &(struct lorad_prompt){.messages = hi, .n_messages = 0}, 64, -EINVAL, "messages");
}

/* ---- the sampler ---------------------------------------------------------------------------- */

static struct lorad_sampler *sampler(const struct lorad_sampling *o, int vocab) {
    struct lorad_sampler *s = NULL;
    struct lorad_error err = {0};
    int rc = lorad_sampler_new(&s, o, vocab, &err);
    if (rc < 0) fprintf(stderr, "%s\n", err.message);
    assert_int_equal(rc, 0);
    return s;
}

static void test_greedy_is_the_first_largest(void **state) {
    (void)state;
    const float logits[] = {0.5f, 2.0f, -1.0f, 2.0f, 1.0f};
    struct lorad_sampler *s = sampler(&(struct lorad_sampling){.top_p = 1}, 5);
    for (int step = 0; step < 10; step++) assert_int_equal(lorad_sampler_pick(s, logits, step), 1);
    lorad_sampler_free(s);
    /* top_k 1 keeps only the largest (ties: the lower id), whatever the temperature */
    s = sampler(&(struct lorad_sampling){.temperature = 5, .top_k = 1, .top_p = 1, .seed = 3}, 5);
    for (int step = 0; step < 100; step++) assert_int_equal(lorad_sampler_pick(s, logits, step), 1);
    lorad_sampler_free(s);
}

/* Draws n tokens (one per step) and checks each frequency against p within 5 sigma. */
static void check_frequencies(const struct lorad_sampling *o, const float *logits, const double *p, int vocab) {
    enum { N = 20000 };
    struct lorad_sampler *s = sampler(o, vocab);
    int count[8] = {0};
    for (int step = 0; step < N; step++) {
        int32_t id = lorad_sampler_pick(s, logits, step);
        assert_true(id >= 0 && id < vocab);
        count[id]++;
    }
    for (int i = 0; i < vocab; i++) {
        double sigma = sqrt(N * p[i] * (1 - p[i]));
        if (p[i] == 0) assert_int_equal(count[i], 0);
        else if (fabs(count[i] - N * p[i]) > 5 * sigma + 1) fail_msg("token %d drawn %d times, expected %.0f +- %.0f", i, count[i], N * p[i], 5 * sigma);
    }
    /* the same seed and steps give the same tokens */
    struct lorad_sampler *t = sampler(o, vocab);
    for (int step = 0; step < 200; step++) assert_int_equal(lorad_sampler_pick(s, logits, step), lorad_sampler_pick(t, logits, step));
    lorad_sampler_free(t);
    lorad_sampler_free(s);
}

static void test_draws_follow_the_cut_softmax(void **state) {
    (void)state;
    const float logits[] = {logf(0.5f), logf(0.3f), logf(0.2f)};
    check_frequencies(&(struct lorad_sampling){.temperature = 1, .top_p = 1, .seed = 11}, logits,
                      (const double[]){0.5, 0.3, 0.2}, 3);
    /* T = 2 flattens: p_i proportional to sqrt(p_i) */
    double z = sqrt(0.5) + sqrt(0.3) + sqrt(0.2);
    check_frequencies(&(struct lorad_sampling){.temperature = 2, .top_p = 1, .seed = 12}, logits,
                      (const double[]){sqrt(0.5) / z, sqrt(0.3) / z, sqrt(0.2) / z}, 3);
    /* top_p 0.6: 0.5 does not reach it, 0.5 + 0.3 does; renormalised over the two */
    check_frequencies(&(struct lorad_sampling){.temperature = 1, .top_p = 0.6, .seed = 13}, logits,
                      (const double[]){0.5 / 0.8, 0.3 / 0.8, 0}, 3);
    /* top_k 2 keeps the same two */
    check_frequencies(&(struct lorad_sampling){.temperature = 1, .top_k = 2, .top_p = 1, .seed = 14}, logits,
                      (const double[]){0.5 / 0.8, 0.3 / 0.8, 0}, 3);
}

static void test_bad_sampling_names_the_field(void **state) {
    (void)state;
    const struct {
        struct lorad_sampling o;
        const char *param;
    } cases[] = {
        {{.temperature = -1, .top_p = 1}, "temperature"},
        {{.temperature = NAN, .top_p = 1}, "temperature"},
        {{.temperature = 1e6, .top_p = 1}, "temperature"},
        {{.temperature = 1, .top_k = -1, .top_p = 1}, "top_k"},
        {{.temperature = 1, .top_p = 0}, "top_p"},
        {{.temperature = 1, .top_p = 1.5}, "top_p"},
        {{.temperature = 0, .top_k = 5, .top_p = 1}, "top_k"},
        {{.temperature = 0, .top_p = 0.5}, "top_p"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct lorad_sampler *s = (struct lorad_sampler *)&s;
        struct lorad_error err = {0};
        assert_int_equal(lorad_sampler_new(&s, &cases[i].o, 10, &err), -EINVAL);
        assert_string_equal(err.param, cases[i].param);
        assert_ptr_equal(s, (struct lorad_sampler *)&s);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_text_prompt_is_bos_and_text),
        cmocka_unit_test(test_conversation_ends_where_the_next_answer_starts),
        cmocka_unit_test(test_bad_prompts_name_the_field),
        cmocka_unit_test(test_greedy_is_the_first_largest),
        cmocka_unit_test(test_draws_follow_the_cut_softmax),
        cmocka_unit_test(test_bad_sampling_names_the_field),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
