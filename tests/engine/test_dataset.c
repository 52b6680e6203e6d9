/* Dataset validation: every problem kind is detected on its line, counted, and reported with its
 * line number; formats are detected (OpenAI's preference format too); records carry the right
 * trainable turns. */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dataset.h"

static char *write_lines(const char *dir, const char *name, const char *text) {
    char *path = test_path(dir, name);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    return path;
}

static void test_messages_file_with_every_problem(void **state) {
    (void)state;
    char *dir = test_mkdtemp("dataset");
    char long_line[300];
    memset(long_line, 'x', sizeof long_line - 1);
    long_line[sizeof long_line - 1] = '\0';
    char *text = NULL;
    assert_true(asprintf(&text,
        "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"},{\"role\":\"assistant\",\"content\":\"yo\"}]}\n" /* 1 ok */
        "\n"                                                                                       /* 2 blank */
        "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}\n"                                  /* 3 invalid json */
        "{\"messages\":\"nope\"}\n"                                                                /* 4 wrong type */
        "{\"messages\":[{\"role\":\"wizard\",\"content\":\"a\"},{\"role\":\"assistant\",\"content\":\"b\"}]}\n" /* 5 role */
        "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}]}\n"                                 /* 6 no assistant */
        "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"},{\"role\":\"assistant\",\"content\":\"b\",\"weight\":0}]}\n" /* 7 empty */
        "{\"text\":\"%s\"}\n"                                                                      /* 8 too long */
        "{\"messages\":[{\"role\":\"user\",\"content\":\"\xc3\x28\"},{\"role\":\"assistant\",\"content\":\"b\"}]}\r\n" /* 9 utf8 */
        "{\"messages\":[{\"role\":\"system\",\"content\":\"s\"},{\"role\":\"user\",\"content\":\"u\"},"
        "{\"role\":\"assistant\",\"content\":\"a1\",\"weight\":0},{\"role\":\"user\",\"content\":\"u2\"},"
        "{\"role\":\"assistant\",\"content\":\"a2\"}]}\r\n"                                         /* 10 ok, CRLF */
        "{\"messages\":[{\"role\":\"user\",\"content\":5},{\"role\":\"assistant\",\"content\":\"b\"}]}\n", /* 11 type */
        long_line) > 0);
    char *path = write_lines(dir, "d.jsonl", text);
    struct lorad_dataset_report rep;
    struct lorad_error err = {0};
    assert_int_equal(lorad_dataset_validate_file(path, LORAD_DATA_AUTO, 256, &rep, &err), 0);
    assert_int_equal(rep.format, LORAD_DATA_MESSAGES);
    assert_int_equal(rep.n_lines, 11);
    assert_int_equal(rep.n_blank, 1);
    assert_int_equal(rep.n_records, 2);
    assert_int_equal(rep.n_invalid, 8);
    assert_int_equal(rep.counts[LORAD_PROBLEM_INVALID_JSON], 1);
    assert_int_equal(rep.counts[LORAD_PROBLEM_WRONG_TYPE], 2);
    assert_int_equal(rep.counts[LORAD_PROBLEM_UNKNOWN_ROLE], 1);
    assert_int_equal(rep.counts[LORAD_PROBLEM_NO_ASSISTANT], 1);
    assert_int_equal(rep.counts[LORAD_PROBLEM_EMPTY], 1);
    assert_int_equal(rep.counts[LORAD_PROBLEM_LINE_TOO_LONG], 1);
    assert_int_equal(rep.counts[LORAD_PROBLEM_INVALID_UTF8], 1);
    const int64_t want_lines[] = {3, 4, 5, 6, 7, 8, 9, 11};
    const enum lorad_dataset_problem want_problems[] = {
        LORAD_PROBLEM_INVALID_JSON, LORAD_PROBLEM_WRONG_TYPE, LORAD_PROBLEM_UNKNOWN_ROLE, LORAD_PROBLEM_NO_ASSISTANT,
        LORAD_PROBLEM_EMPTY, LORAD_PROBLEM_LINE_TOO_LONG, LORAD_PROBLEM_INVALID_UTF8, LORAD_PROBLEM_WRONG_TYPE};
    assert_int_equal(rep.n_bad, 8);
    for (int i = 0; i < 8; i++) {
        assert_int_equal(rep.bad[i].line, want_lines[i]);
        assert_int_equal(rep.bad[i].problem, want_problems[i]);
    }
    assert_non_null(strstr(rep.bad[2].reason, "wizard"));
    assert_non_null(strstr(rep.bad[7].reason, "messages[0].content"));

    json_t *j = lorad_dataset_report_json(&rep);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(j, "problems"), "unknown_role")), 1);
    assert_int_equal(json_array_size(json_object_get(j, "bad_lines")), 8);
    assert_string_equal(json_string_value(json_object_get(j, "format")), "messages");
    json_decref(j);
    free(text);
    free(path);
    test_rmtree(dir);
    free(dir);
}

static void test_report_keeps_first_twenty(void **state) {
    (void)state;
    char *dir = test_mkdtemp("dataset");
    char *path = test_path(dir, "bad.jsonl");
    FILE *f = fopen(path, "w");
    for (int i = 0; i < 50; i++) fprintf(f, "{\"text\": %d}\n", i);
    fclose(f);
    struct lorad_dataset_report rep;
    assert_int_equal(lorad_dataset_validate_file(path, LORAD_DATA_TEXT, 0, &rep, NULL), 0);
    assert_int_equal(rep.n_invalid, 50);
    assert_int_equal(rep.counts[LORAD_PROBLEM_WRONG_TYPE], 50);
    assert_int_equal(rep.n_bad, 20);
    assert_int_equal(rep.bad[19].line, 20);
    free(path);
    test_rmtree(dir);
    free(dir);
}

static void test_formats_and_turns(void **state) {
    (void)state;
    struct lorad_record r;
    enum lorad_dataset_problem p;
    const char *pc = "{\"prompt\":\"2+2=\",\"completion\":\"4\"}";
    assert_int_equal(lorad_record_parse(pc, strlen(pc), LORAD_DATA_AUTO, &r, &p, NULL), 0);
    assert_int_equal(r.format, LORAD_DATA_PROMPT_COMPLETION);
    assert_int_equal(r.n_turns, 2);
    assert_false(r.turns[0].trainable);
    assert_true(r.turns[1].trainable);
    assert_memory_equal(r.turns[1].text, "4", 1);
    lorad_record_clear(&r);

    const char *al = "{\"instruction\":\"Add\",\"input\":\"2 2\",\"output\":\"4\"}";
    assert_int_equal(lorad_record_parse(al, strlen(al), LORAD_DATA_AUTO, &r, &p, NULL), 0);
    assert_int_equal(r.format, LORAD_DATA_ALPACA);
    assert_int_equal(r.input_len, 3);
    lorad_record_clear(&r);

    const char *tx = "{\"text\":\"once upon a time\"}";
    assert_int_equal(lorad_record_parse(tx, strlen(tx), LORAD_DATA_AUTO, &r, &p, NULL), 0);
    assert_int_equal(r.format, LORAD_DATA_TEXT);
    assert_true(r.turns[0].trainable);
    lorad_record_clear(&r);

    /* A line of another format in a file of messages is a wrong-type line. */
    assert_true(lorad_record_parse(tx, strlen(tx), LORAD_DATA_MESSAGES, &r, &p, NULL) < 0);
    assert_int_equal(p, LORAD_PROBLEM_WRONG_TYPE);
    const char *extra = "{\"prompt\":\"a\",\"completion\":\"b\",\"label\":1}";
    struct lorad_error err = {0};
    assert_true(lorad_record_parse(extra, strlen(extra), LORAD_DATA_AUTO, &r, &p, &err) < 0);
    assert_string_equal(err.param, "label");
    const char *weight = "{\"messages\":[{\"role\":\"user\",\"content\":\"a\",\"weight\":1},"
                         "{\"role\":\"assistant\",\"content\":\"b\"}]}";
    assert_true(lorad_record_parse(weight, strlen(weight), LORAD_DATA_AUTO, &r, &p, &err) < 0);
    assert_string_equal(err.param, "messages[0].weight");
}

static void test_utf8_validator(void **state) {
    (void)state;
    assert_true(lorad_utf8_valid("h\xc3\xa9llo \xf0\x9f\x98\x80", 11));
    assert_false(lorad_utf8_valid("\xc0\xaf", 2));         /* overlong '/' */
    assert_false(lorad_utf8_valid("\xed\xa0\x80", 3));     /* surrogate U+D800 */
    assert_false(lorad_utf8_valid("\xf4\x90\x80\x80", 4)); /* U+110000 */
    assert_false(lorad_utf8_valid("\xe2\x82", 2));         /* truncated */
    assert_true(lorad_utf8_valid("\xf4\x8f\xbf\xbf", 4));  /* U+10FFFF */
}

/* OpenAI's DPO lines: the good ones parse into a prompt (nothing trained) and two outputs, and
 * each broken one is named with its line and the key at fault. */
static void test_preference_file(void **state) {
    (void)state;
    char *dir = test_mkdtemp("dataset-pref");
#define IN "\"input\":{\"messages\":[{\"role\":\"system\",\"content\":\"s\"},{\"role\":\"user\",\"content\":\"q\"}]}"
#define PO "\"preferred_output\":[{\"role\":\"assistant\",\"content\":\"good\"}]"
#define NPO "\"non_preferred_output\":[{\"role\":\"assistant\",\"content\":\"bad\"}]"
    const char *text =
        "{" IN "," PO "," NPO "}\n"                                                               /* 1 ok */
        "{\"input\":{\"messages\":[{\"role\":\"user\",\"content\":\"q\"}],\"tools\":[]}," PO "," NPO "}\n" /* 2 ok */
        "{" IN "," PO "}\n"                                                                       /* 3 missing npo */
        "{" IN "," PO ",\"non_preferred_output\":[{\"role\":\"user\",\"content\":\"x\"}]}\n" /* 4 role */
        "{\"input\":{\"messages\":[{\"role\":\"user\",\"content\":\"q\"},{\"role\":\"assistant\",\"content\":\"a\"}]},"
        PO "," NPO "}\n"                                                                          /* 5 ends with assistant */
        "{" IN "," PO ",\"non_preferred_output\":[{\"role\":\"assistant\",\"content\":\"good\"}]}\n" /* 6 same */
        "{" IN "," PO ",\"non_preferred_output\":[{\"role\":\"assistant\",\"content\":\"\"}]}\n" /* 7 empty */
        "{\"input\":{\"messages\":[{\"role\":\"user\",\"content\":\"q\"}],\"tools\":[{\"type\":\"function\"}]},"
        PO "," NPO "}\n"                                                                          /* 8 tools */
        "{" IN "," PO "," NPO ",\"extra\":1}\n"                                                  /* 9 unknown key */
        "{\"input\":{\"messages\":[{\"role\":\"user\",\"content\":\"q\",\"weight\":1}]}," PO "," NPO "}\n" /* 10 */
        "{" IN ",\"preferred_output\":[{\"role\":\"assistant\",\"content\":\"a\"},{\"role\":\"assistant\","
        "\"content\":\"b\"}]," NPO "}\n"                                                         /* 11 two messages */
        "{\"messages\":[{\"role\":\"user\",\"content\":\"q\"},{\"role\":\"assistant\",\"content\":\"a\"}]}\n"; /* 12 */
    char *path = write_lines(dir, "p.jsonl", text);
    struct lorad_dataset_report rep;
    struct lorad_error err = {0};
    assert_int_equal(lorad_dataset_validate_file(path, LORAD_DATA_AUTO, 0, &rep, &err), 0);
    assert_int_equal(rep.format, LORAD_DATA_PREFERENCE);
    assert_int_equal(rep.n_records, 2);
    assert_int_equal(rep.n_invalid, 10);
    const int64_t want_lines[] = {3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
    const char *const want_words[] = {"non_preferred_output", "non_preferred_output[0].role", "user turn",
                                      "same as preferred_output", "non_preferred_output[0].content", "input.tools",
                                      "extra", "input.messages[0].weight", "preferred_output", "messages"};
    const enum lorad_dataset_problem want_problems[] = {
        LORAD_PROBLEM_WRONG_TYPE, LORAD_PROBLEM_UNKNOWN_ROLE, LORAD_PROBLEM_WRONG_TYPE, LORAD_PROBLEM_EMPTY,
        LORAD_PROBLEM_EMPTY, LORAD_PROBLEM_WRONG_TYPE, LORAD_PROBLEM_WRONG_TYPE, LORAD_PROBLEM_WRONG_TYPE,
        LORAD_PROBLEM_WRONG_TYPE, LORAD_PROBLEM_WRONG_TYPE};
    for (int i = 0; i < 10; i++) {
        assert_int_equal(rep.bad[i].line, want_lines[i]);
        assert_int_equal(rep.bad[i].problem, want_problems[i]);
        if (!strstr(rep.bad[i].reason, want_words[i]))
            fail_msg("line %lld: reason '%s' does not name '%s'", (long long)rep.bad[i].line, rep.bad[i].reason,
                     want_words[i]);
    }

    /* The record: the prompt's turns untrained, then the selected output, trained. */
    const char *line = "{" IN "," PO "," NPO "}";
    struct lorad_record rec;
    enum lorad_dataset_problem p;
    assert_int_equal(lorad_record_parse(line, strlen(line), LORAD_DATA_AUTO, &rec, &p, &err), 0);
    assert_int_equal(rec.format, LORAD_DATA_PREFERENCE);
    assert_int_equal(rec.n_prompt_turns, 2);
    assert_int_equal(rec.n_turns, 3);
    assert_false(rec.turns[0].trainable);
    assert_false(rec.turns[1].trainable);
    assert_int_equal(rec.turns[2].role, LORAD_ROLE_ASSISTANT);
    assert_true(rec.turns[2].trainable);
    assert_memory_equal(rec.turns[2].text, "good", 4);
    lorad_record_select_output(&rec, 1);
    assert_int_equal(rec.n_turns, 3);
    assert_memory_equal(rec.turns[2].text, "bad", 3);
    lorad_record_clear(&rec);
#undef IN
#undef PO
#undef NPO
    free(path);
    test_rmtree(dir);
    free(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_messages_file_with_every_problem),
        cmocka_unit_test(test_report_keeps_first_twenty),
        cmocka_unit_test(test_formats_and_turns),
        cmocka_unit_test(test_utf8_validator),
        cmocka_unit_test(test_preference_file),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
