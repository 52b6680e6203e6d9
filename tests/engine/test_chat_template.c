/* Templates render exactly the formats their model cards document, and only the intended parts are
 * trained. Expected strings are written from the published formats. */
#include "testutil.h"

#include <stdlib.h>
#include <string.h>

#include "chat_template.h"

/* Renders to "all" (every segment; BOS as <s>, EOS as </s>) and "trained" (trained segments only). */
static void render(const char *line, enum lorad_chat_template t, bool tin, char *all, char *trained) {
    struct lorad_record rec;
    struct lorad_error err = {0};
    if (lorad_record_parse(line, strlen(line), LORAD_DATA_AUTO, &rec, NULL, &err) < 0) fail_msg("%s", err.message);
    struct lorad_rendered *r = malloc(sizeof *r);
    assert_int_equal(lorad_chat_render(r, &rec, t, tin), 0);
    all[0] = trained[0] = '\0';
    for (int i = 0; i < r->n; i++) {
        const struct lorad_segment *s = &r->seg[i];
        char piece[512];
        if (s->kind == LORAD_SEGMENT_BOS) strcpy(piece, "<s>");
        else if (s->kind == LORAD_SEGMENT_EOS) strcpy(piece, "</s>");
        else snprintf(piece, sizeof piece, "%.*s", (int)s->len, s->text);
        strcat(all, piece);
        if (s->trainable) strcat(trained, piece);
    }
    free(r);
    lorad_record_clear(&rec);
}

static const char *conv =
    "{\"messages\":[{\"role\":\"system\",\"content\":\"Be brief.\"},{\"role\":\"user\",\"content\":\"Hi\"},"
    "{\"role\":\"assistant\",\"content\":\"Hello.\",\"weight\":0},{\"role\":\"user\",\"content\":\"2+2?\"},"
    "{\"role\":\"assistant\",\"content\":\"4\"}]}";

static void test_llama2(void **state) {
    (void)state;
    char all[4096], trained[4096];
    render(conv, LORAD_TEMPLATE_LLAMA2, false, all, trained);
    assert_string_equal(all, "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello. </s>"
                             "<s>[INST] 2+2? [/INST] 4 </s>");
    assert_string_equal(trained, "4 </s>");
}

static void test_llama3(void **state) {
    (void)state;
    char all[4096], trained[4096];
    render(conv, LORAD_TEMPLATE_LLAMA3, false, all, trained);
    assert_string_equal(all,
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n2+2?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n4<|eot_id|>");
    assert_string_equal(trained, "4<|eot_id|>");
}

static void test_chatml(void **state) {
    (void)state;
    char all[4096], trained[4096];
    render(conv, LORAD_TEMPLATE_CHATML, false, all, trained);
    assert_string_equal(all, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                             "<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n"
                             "<|im_start|>assistant\n4<|im_end|>\n");
    assert_string_equal(trained, "4<|im_end|>");
}

static void test_train_on_input_keeps_weight_zero_masked(void **state) {
    (void)state;
    char all[4096], trained[4096];
    render(conv, LORAD_TEMPLATE_CHATML, true, all, trained);
    assert_null(strstr(trained, "Hello."));
    assert_non_null(strstr(trained, "2+2?"));
    assert_non_null(strstr(trained, "Be brief."));
    render(conv, LORAD_TEMPLATE_LLAMA2, true, all, trained);
    assert_null(strstr(trained, "<s>")); /* BOS is never a label */
    assert_null(strstr(trained, "Hello."));
}

static void test_other_formats(void **state) {
    (void)state;
    char all[4096], trained[4096];
    render("{\"prompt\":\"Q: 2+2\\nA:\",\"completion\":\" 4\"}", LORAD_TEMPLATE_LLAMA3, false, all, trained);
    assert_string_equal(all, "<s>Q: 2+2\nA: 4</s>");
    assert_string_equal(trained, " 4</s>");
    render("{\"text\":\"once upon a time\"}", LORAD_TEMPLATE_AUTO, false, all, trained);
    assert_string_equal(all, "<s>once upon a time</s>");
    assert_string_equal(trained, "once upon a time</s>");
    render("{\"instruction\":\"Add the numbers.\",\"input\":\"2 2\",\"output\":\"4\"}", LORAD_TEMPLATE_AUTO, false,
           all, trained);
    assert_string_equal(all, "<s>Below is an instruction that describes a task, paired with an input that provides "
                             "further context. Write a response that appropriately completes the request.\n\n"
                             "### Instruction:\nAdd the numbers.\n\n### Input:\n2 2\n\n### Response:\n4</s>");
    assert_string_equal(trained, "4</s>");
    render("{\"instruction\":\"Say hi.\",\"output\":\"hi\"}", LORAD_TEMPLATE_AUTO, false, all, trained);
    assert_string_equal(all, "<s>Below is an instruction that describes a task. Write a response that appropriately "
                             "completes the request.\n\n### Instruction:\nSay hi.\n\n### Response:\nhi</s>");
}

static bool has_llama3(void *ctx, const char *p) { (void)ctx; return strcmp(p, "<|start_header_id|>") == 0; }
static bool has_chatml(void *ctx, const char *p) { (void)ctx; return strcmp(p, "<|im_start|>") == 0; }
static bool has_none(void *ctx, const char *p) { (void)ctx; (void)p; return false; }

static void test_auto_pick(void **state) {
    (void)state;
    assert_int_equal(lorad_chat_template_auto(has_llama3, NULL), LORAD_TEMPLATE_LLAMA3);
    assert_int_equal(lorad_chat_template_auto(has_chatml, NULL), LORAD_TEMPLATE_CHATML);
    assert_int_equal(lorad_chat_template_auto(has_none, NULL), LORAD_TEMPLATE_LLAMA2);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_llama2),
        cmocka_unit_test(test_llama3),
        cmocka_unit_test(test_chatml),
        cmocka_unit_test(test_train_on_input_keeps_weight_zero_masked),
        cmocka_unit_test(test_other_formats),
        cmocka_unit_test(test_auto_pick),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
