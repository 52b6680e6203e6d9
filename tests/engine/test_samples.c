/* From JSONL to batches with the real Llama 2 tokenizer: masking follows the format, epoch orders
 * are seeded permutations, packing keeps samples apart (positions restart, attention segments,
 * no label across a boundary), truncation is counted, the hold-out is the file's tail, and a
 * preference pair becomes two rows with only its outputs trained.
 * Expected values come from the tokenizer alone (itself checked against SentencePiece in
 * tests/tokenizer) and from the definitions, never from the pipeline under test. */
#include "testutil.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "samples.h"
#include "tokenizer.h"

struct fixture {
    char *dir;
    struct lorad_tokenizer *tok;
    struct lorad_encoder enc;
};

static int setup(void **state) {
    struct fixture *f = calloc(1, sizeof *f);
    f->dir = test_mkdtemp("samples");
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
    test_rmtree(f->dir);
    free(f->dir);
    free(f);
    return 0;
}

/* ids of text without BOS/EOS, as the tokenizer gives them. */
static int encode(struct fixture *f, const char *text, int32_t *out, int cap) {
    int32_t *ids;
    size_t n;
    assert_int_equal(lorad_tokenizer_encode(f->tok, text, strlen(text), 0, 0, &ids, &n, NULL), 0);
    assert_true(n <= (size_t)cap);
    memcpy(out, ids, n * sizeof *ids);
    free(ids);
    return (int)n;
}

static char *write_file(struct fixture *f, const char *name, const char *text) {
    char *path = test_path(f->dir, name);
    FILE *fp = fopen(path, "wb");
    assert_non_null(fp);
    fputs(text, fp);
    fclose(fp);
    return path;
}

static struct lorad_corpus *open_corpus(struct fixture *f, const char *path, bool train_on_input, int max_seq) {
    struct lorad_corpus_options o = {.format = LORAD_DATA_AUTO, .tmpl = LORAD_TEMPLATE_LLAMA2,
                                     .train_on_input = train_on_input, .max_seq_len = max_seq};
    struct lorad_corpus *c = NULL;
    struct lorad_dataset_report rep;
    struct lorad_error err = {0};
    int rc = lorad_corpus_open(&c, path, &o, &f->enc, &rep, &err);
    if (rc < 0) fprintf(stderr, "%s\n", err.message);
    assert_int_equal(rc, 0);
    return c;
}

static void test_prompt_completion_masks_the_prompt(void **state) {
    struct fixture *f = *state;
    char *path = write_file(f, "pc.jsonl", "{\"prompt\":\"What is the capital of France?\",\"completion\":\" Paris.\"}\n");
    for (int on_input = 0; on_input <= 1; on_input++) {
        struct lorad_corpus *c = open_corpus(f, path, on_input, 64);
        int32_t p[64], q[64];
        int np = encode(f, "What is the capital of France?", p, 64), nq = encode(f, " Paris.", q, 64);
        struct lorad_sample s = {.tokens = malloc(64 * sizeof(int32_t)), .train = malloc(64)};
        assert_int_equal(lorad_corpus_sample(c, 0, &s, NULL), 0);
        /* BOS + prompt + completion + EOS */
        assert_int_equal(s.n, 1 + np + nq + 1);
        assert_int_equal(s.tokens[0], lorad_tokenizer_bos_id(f->tok));
        assert_memory_equal(s.tokens + 1, p, (size_t)np * sizeof *p);
        assert_memory_equal(s.tokens + 1 + np, q, (size_t)nq * sizeof *q);
        assert_int_equal(s.tokens[s.n - 1], lorad_tokenizer_eos_id(f->tok));
        for (int i = 1; i < 1 + np; i++) assert_int_equal(s.train[i], on_input);
        for (int i = 1 + np; i < s.n; i++) assert_int_equal(s.train[i], 1);
        free(s.tokens);
        free(s.train);
        lorad_corpus_free(c);
    }
    free(path);
}

/* n text records; record i has i % 7 + 1 words, so lengths differ. */
static char *write_texts(struct fixture *f, const char *name, int n, int long_index, int long_words) {
    size_t cap = (size_t)n * 200 + (size_t)long_words * 8 + 64;
    char *text = calloc(1, cap), *at = text;
    for (int i = 0; i < n; i++) {
        at += sprintf(at, "{\"text\":\"record %d", i);
        int words = i == long_index ? long_words : i % 7 + 1;
        for (int w = 0; w < words; w++) at += sprintf(at, " apple");
        at += sprintf(at, "\"}\n");
    }
    char *path = write_file(f, name, text);
    free(text);
    return path;
}

static void test_epoch_orders_are_seeded_permutations(void **state) {
    struct fixture *f = *state;
    char *path = write_texts(f, "texts.jsonl", 40, -1, 0);
    struct lorad_corpus *c = open_corpus(f, path, false, 64);
    assert_int_equal(lorad_corpus_size(c), 40);
    struct lorad_epoch_plan a, a2, b, other;
    assert_int_equal(lorad_epoch_plan_build(&a, c, 42, 0, true, false, 64), 0);
    assert_int_equal(lorad_epoch_plan_build(&a2, c, 42, 0, true, false, 64), 0);
    assert_int_equal(lorad_epoch_plan_build(&b, c, 42, 1, true, false, 64), 0);
    assert_int_equal(lorad_epoch_plan_build(&other, c, 43, 0, true, false, 64), 0);
    assert_int_equal(a.n_rows, 40); /* one sample a row without packing */
    int seen[40] = {0};
    for (int i = 0; i < 40; i++) seen[a.order[i]]++;
    for (int i = 0; i < 40; i++) assert_int_equal(seen[i], 1);
    assert_memory_equal(a.order, a2.order, 40 * sizeof *a.order);
    /* 1/40! chance of a false failure. */
    assert_memory_not_equal(a.order, b.order, 40 * sizeof *a.order);
    assert_memory_not_equal(a.order, other.order, 40 * sizeof *a.order);
    lorad_epoch_plan_clear(&a);
    lorad_epoch_plan_clear(&a2);
    lorad_epoch_plan_clear(&b);
    lorad_epoch_plan_clear(&other);
    lorad_corpus_free(c);
    free(path);
}

static void test_packing_keeps_samples_apart(void **state) {
    struct fixture *f = *state;
    enum { N = 30, T = 48 };
    char *path = write_texts(f, "pack.jsonl", N, -1, 0);
    struct lorad_corpus *c = open_corpus(f, path, false, T);
    struct lorad_epoch_plan p;
    assert_int_equal(lorad_epoch_plan_build(&p, c, 7, 0, true, true, T), 0);
    assert_true(p.n_rows < N); /* short samples do share rows */
    int64_t total = 0;
    for (int i = 0; i < N; i++) total += lorad_corpus_sample_length(c, i);
    struct lorad_batch b;
    assert_int_equal(lorad_batch_alloc(&b, (int)p.n_rows, T), 0);
    assert_int_equal(lorad_batch_fill(&b, c, &p, 0, (int)p.n_rows, NULL), 0);
    assert_int_equal(b.n_tokens, total);
    int32_t bos = lorad_tokenizer_bos_id(f->tok), eos = lorad_tokenizer_eos_id(f->tok);
    int64_t samples = 0;
    for (int r = 0; r < b.B; r++) {
        const int32_t *tok = b.tokens + (size_t)r * b.T, *lab = b.labels + (size_t)r * b.T;
        const int32_t *pos = b.positions + (size_t)r * b.T, *seg = b.seg_start + (size_t)r * b.T;
        int used = 0;
        for (int64_t k = p.row_first[r]; k < p.row_first[r + 1]; k++) used += lorad_corpus_sample_length(c, p.order[k]);
        assert_true(used <= T);
        for (int t = 0; t < used; t++) {
            if (tok[t] == bos) {
                /* A sample starts: its position is 0 and its segment starts here. */
                samples++;
                assert_int_equal(pos[t], 0);
                assert_int_equal(seg[t], t);
            } else {
                assert_int_equal(pos[t], pos[t - 1] + 1);
                assert_int_equal(seg[t], seg[t - 1]);
            }
            /* The last token of a sample (EOS) predicts nothing: the next sample is not its future. */
            if (tok[t] == eos) assert_int_equal(lab[t], -100);
            else if (t + 1 < used) assert_int_equal(lab[t], tok[t + 1]); /* text: every next token trained */
        }
        for (int t = used; t < b.T; t++) assert_int_equal(lab[t], -100);
    }
    assert_int_equal(samples, N);
    lorad_batch_free(&b);
    lorad_epoch_plan_clear(&p);
    lorad_corpus_free(c);
    free(path);
}

static void test_truncation_is_counted(void **state) {
    struct fixture *f = *state;
    char *path = write_texts(f, "long.jsonl", 5, 2, 200);
    struct lorad_corpus *c = open_corpus(f, path, false, 32);
    assert_int_equal(lorad_corpus_truncated(c), 1);
    assert_int_equal(lorad_corpus_sample_length(c, 2), 32);
    lorad_corpus_free(c);
    free(path);
}

static void test_holdout_is_the_tail(void **state) {
    struct fixture *f = *state;
    char *path = write_texts(f, "hold.jsonl", 20, -1, 0);
    struct lorad_corpus *c = open_corpus(f, path, false, 64), *h = NULL;
    assert_int_equal(lorad_corpus_split_holdout(c, 4, &h, NULL), 0);
    assert_int_equal(lorad_corpus_size(c), 16);
    assert_int_equal(lorad_corpus_size(h), 4);
    struct lorad_sample s = {.tokens = malloc(64 * sizeof(int32_t)), .train = malloc(64)};
    for (int i = 0; i < 4; i++) {
        char text[256];
        int len = sprintf(text, "record %d", 16 + i);
        for (int w = 0; w < (16 + i) % 7 + 1; w++) len += sprintf(text + len, " apple");
        int32_t want[64];
        int n = encode(f, text, want, 64);
        assert_int_equal(lorad_corpus_sample(h, i, &s, NULL), 0);
        assert_int_equal(s.n, n + 2);
        assert_memory_equal(s.tokens + 1, want, (size_t)n * sizeof *want);
    }
    free(s.tokens);
    free(s.train);
    lorad_corpus_free(h);
    lorad_corpus_free(c);
    free(path);
}

/* The hold-out re-reads its records from the file: when the file has gone since it was indexed the
 * split fails with that error and the path (not -ENOMEM), and the training corpus keeps every
 * record. Sizes out of range are -EINVAL. */
static void test_holdout_errors_say_why(void **state) {
    struct fixture *f = *state;
    char *path = write_texts(f, "gone.jsonl", 10, -1, 0);
    struct lorad_corpus *c = open_corpus(f, path, false, 64), *h = NULL;
    struct lorad_error err = {0};
    assert_int_equal(lorad_corpus_split_holdout(c, 0, &h, &err), -EINVAL);
    assert_int_equal(lorad_corpus_split_holdout(c, 10, &h, &err), -EINVAL);
    assert_int_equal(unlink(path), 0);
    err = (struct lorad_error){0};
    assert_int_equal(lorad_corpus_split_holdout(c, 2, &h, &err), -ENOENT);
    assert_null(h);
    assert_non_null(strstr(err.message, path));
    assert_int_equal(lorad_corpus_size(c), 10);
    lorad_corpus_free(c);
    free(path);
}

/* Appends the ids of text (no BOS/EOS) to out at *n. */
static void append(struct fixture *f, const char *text, int32_t *out, int *n, int cap) {
    *n += encode(f, text, out + *n, cap - *n);
}

/* A preference record becomes two rows: the prompt in the llama2 template up to "[/INST] " (the
 * generation prompt), then the output as the template ends an assistant turn (" " and EOS), only
 * the output trained; a pair that does not fit is a bad line, never cut; pairs are not packed. */
static void test_preference_pairs(void **state) {
    struct fixture *f = *state;
    char *path = write_file(f, "pref.jsonl",
                            "{\"input\":{\"messages\":[{\"role\":\"system\",\"content\":\"Be brief.\"},"
                            "{\"role\":\"user\",\"content\":\"Capital of France?\"}]},"
                            "\"preferred_output\":[{\"role\":\"assistant\",\"content\":\"Paris.\"}],"
                            "\"non_preferred_output\":[{\"role\":\"assistant\",\"content\":\"I think it is Lyon.\"}]}\n");
    struct lorad_corpus *c = open_corpus(f, path, false, 64);
    assert_int_equal(lorad_corpus_rows_per_record(c), 2);
    assert_int_equal(lorad_corpus_size(c), 1);
    int32_t bos = lorad_tokenizer_bos_id(f->tok), eos = lorad_tokenizer_eos_id(f->tok);
    int32_t prompt[64];
    int np = 0;
    prompt[np++] = bos;
    append(f, "[INST] ", prompt, &np, 64);
    append(f, "<<SYS>>\n", prompt, &np, 64);
    append(f, "Be brief.", prompt, &np, 64);
    append(f, "\n<</SYS>>\n\n", prompt, &np, 64);
    append(f, "Capital of France?", prompt, &np, 64);
    append(f, " [/INST] ", prompt, &np, 64);
    const char *outputs[2] = {"Paris.", "I think it is Lyon."};
    int32_t want[2][64];
    int nw[2] = {0, 0};
    for (int k = 0; k < 2; k++) {
        append(f, outputs[k], want[k], &nw[k], 64);
        append(f, " ", want[k], &nw[k], 64);
        want[k][nw[k]++] = eos;
    }
    assert_int_equal(lorad_corpus_tokens(c), 2 * np + nw[0] + nw[1]);
    struct lorad_epoch_plan p;
    assert_int_equal(lorad_epoch_plan_build(&p, c, 1, 0, true, true, 64), -EINVAL); /* no packing of pairs */
    assert_int_equal(lorad_epoch_plan_build(&p, c, 1, 0, true, false, 64), 0);
    struct lorad_batch b;
    assert_int_equal(lorad_batch_alloc(&b, 2, 64), 0);
    assert_int_equal(lorad_batch_fill(&b, c, &p, 0, 1, NULL), 0);
    assert_int_equal(b.B, 2);
    assert_int_equal(b.T, np + (nw[0] > nw[1] ? nw[0] : nw[1]));
    assert_int_equal(b.n_labels, nw[0] + nw[1]);
    for (int k = 0; k < 2; k++) {
        const int32_t *tok = b.tokens + (size_t)k * b.T, *lab = b.labels + (size_t)k * b.T;
        assert_memory_equal(tok, prompt, (size_t)np * sizeof *prompt);
        assert_memory_equal(tok + np, want[k], (size_t)nw[k] * sizeof *want[k]);
        /* position t predicts t + 1: the last prompt token predicts the output's first */
        for (int t = 0; t < b.T; t++) {
            bool trained = t >= np - 1 && t < np + nw[k] - 1;
            assert_int_equal(lab[t], trained ? tok[t + 1] : -100);
        }
    }
    lorad_batch_free(&b);
    lorad_epoch_plan_clear(&p);
    lorad_corpus_free(c);

    /* max_seq_len that holds the preferred pair but not the other: that line is refused, named. */
    struct lorad_corpus_options o = {.format = LORAD_DATA_AUTO, .tmpl = LORAD_TEMPLATE_LLAMA2,
                                     .max_seq_len = np + nw[0]};
    struct lorad_dataset_report rep;
    struct lorad_error err = {0};
    c = NULL;
    assert_true(nw[1] > nw[0]);
    assert_int_equal(lorad_corpus_open(&c, path, &o, &f->enc, &rep, &err), -EINVAL);
    assert_null(c);
    assert_int_equal(rep.counts[LORAD_PROBLEM_TOO_MANY_TOKENS], 1);
    assert_int_equal(rep.bad[0].line, 1);
    assert_non_null(strstr(rep.bad[0].reason, "non_preferred_output"));
    assert_non_null(strstr(rep.bad[0].reason, "max_seq_len"));
    free(path);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_prompt_completion_masks_the_prompt),
        cmocka_unit_test(test_epoch_orders_are_seeded_permutations),
        cmocka_unit_test(test_packing_keeps_samples_apart),
        cmocka_unit_test(test_truncation_is_counted),
        cmocka_unit_test(test_holdout_is_the_tail),
        cmocka_unit_test(test_holdout_errors_say_why),
        cmocka_unit_test(test_preference_pairs),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
