/* The request bodies of POST /v1/completions and /v1/chat/completions (api/inference_request.c):
 * what each field becomes in the engine's request, OpenAI's defaults, and that every bad body is
 * refused naming its field, with -EINVAL for a bad value and -EOPNOTSUPP for what lorad does not do.
 * The expected defaults are OpenAI's documented ones (max_tokens 16 for completions, temperature 1,
 * top_p 1, n 1), not values read back from our code. */
#include "testutil.h"

#include <errno.h>
#include <string.h>

#include "inference_request.h"

static int parse(const char *text, enum lorad_api_infer_kind kind, struct lorad_api_infer_params *ret,
                 struct lorad_error *err, json_t **ret_body) {
    json_error_t je;
    json_t *body = json_loads(text, JSON_REJECT_DUPLICATES, &je);
    if (!body) fprintf(stderr, "test body does not parse: %s: %s\n", text, je.text);
    assert_non_null(body);
    memset(err, 0, sizeof *err);
    int r = lorad_api_infer_parse(body, kind, ret, err);
    *ret_body = body;
    return r;
}

/* A body that must be refused with code r naming param. */
static void refused(const char *text, enum lorad_api_infer_kind kind, int want, const char *param) {
    struct lorad_api_infer_params p;
    memset(&p, 0x5a, sizeof p); /* untouched on failure: checked below */
    struct lorad_error err;
    json_t *body;
    int r = parse(text, kind, &p, &err, &body);
    if (r != want || strcmp(err.param, param ? param : "") != 0)
        fprintf(stderr, "body %s: got %d param '%s' (%s), want %d param '%s'\n", text, r, err.param, err.message, want,
                param ? param : "");
    assert_int_equal(r, want);
    assert_string_equal(err.param, param ? param : "");
    assert_true(err.message[0] != '\0');
    unsigned char *bytes = (unsigned char *)&p;
    for (size_t i = 0; i < sizeof p; i++) assert_int_equal(bytes[i], 0x5a);
    json_decref(body);
}

static void test_completion_defaults(void **state) {
    (void)state;
    struct lorad_api_infer_params p;
    struct lorad_error err;
    json_t *body;
    assert_int_equal(parse("{\"model\": \"m\", \"prompt\": \"Once upon\"}", LORAD_API_INFER_COMPLETION, &p, &err, &body), 0);
    assert_int_equal(p.kind, LORAD_API_INFER_COMPLETION);
    assert_string_equal(p.model, "m");
    assert_int_equal(p.n_prompts, 1);
    assert_string_equal(p.prompts[0], "Once upon");
    assert_null(p.req.messages);
    assert_int_equal(p.req.max_tokens, 16);
    assert_float_equal(p.req.sampling.temperature, 1.0, 0);
    assert_float_equal(p.req.sampling.top_p, 1.0, 0);
    assert_int_equal(p.req.sampling.top_k, 0);
    assert_int_equal(p.req.n, 1);
    assert_int_equal(p.req.n_stop, 0);
    assert_false(p.req.logprobs);
    assert_false(p.has_seed);
    assert_false(p.stream);
    assert_false(p.include_usage);
    lorad_api_infer_params_clear(&p);
    lorad_api_infer_params_clear(&p); /* twice is fine */
    json_decref(body);
}

static void test_completion_fields(void **state) {
    (void)state;
    struct lorad_api_infer_params p;
    struct lorad_error err;
    json_t *body;
    const char *text =
        "{\"model\": \"ft:demo:x:ftjob-AAAAAAAAAAAAAAAAAAAAAAAA\", \"prompt\": [\"a\", \"\", \"c\"], \"max_tokens\": 7,"
        " \"temperature\": 0.5, \"top_p\": 0.9, \"stop\": [\"\\n\", \"END\"], \"seed\": -3, \"n\": 2,"
        " \"stream\": true, \"stream_options\": {\"include_usage\": true}, \"logprobs\": 3, \"echo\": false,"
        " \"user\": \"u1\", \"presence_penalty\": 0, \"frequency_penalty\": 0.0, \"best_of\": 2, \"suffix\": null,"
        " \"logit_bias\": {}}";
    assert_int_equal(parse(text, LORAD_API_INFER_COMPLETION, &p, &err, &body), 0);
    assert_int_equal(p.n_prompts, 3);
    assert_string_equal(p.prompts[1], "");
    assert_string_equal(p.prompts[2], "c");
    assert_int_equal(p.req.max_tokens, 7);
    assert_float_equal(p.req.sampling.temperature, 0.5, 0);
    assert_float_equal(p.req.sampling.top_p, 0.9, 0);
    assert_int_equal(p.req.n_stop, 2);
    assert_string_equal(p.req.stop[0], "\n");
    assert_string_equal(p.req.stop[1], "END");
    assert_true(p.has_seed);
    assert_true(p.req.sampling.seed == (uint64_t)-3);
    assert_int_equal(p.req.n, 2);
    assert_true(p.stream && p.include_usage);
    assert_true(p.req.logprobs);
    assert_int_equal(p.req.top_logprobs, 3);
    lorad_api_infer_params_clear(&p);
    json_decref(body);

    /* A single stop string; logprobs 0 is the sampled token's alone; temperature 0 drops top_p
     * (greedy decoding has nothing to cut, and the sampler refuses a cut with it). */
    assert_int_equal(parse("{\"model\": \"m\", \"prompt\": \"x\", \"stop\": \"###\", \"logprobs\": 0, \"temperature\": 0,"
                           " \"top_p\": 0.5, \"max_tokens\": null, \"n\": null}",
                           LORAD_API_INFER_COMPLETION, &p, &err, &body),
                     0);
    assert_int_equal(p.req.n_stop, 1);
    assert_string_equal(p.req.stop[0], "###");
    assert_true(p.req.logprobs);
    assert_int_equal(p.req.top_logprobs, 0);
    assert_float_equal(p.req.sampling.temperature, 0, 0);
    assert_float_equal(p.req.sampling.top_p, 1.0, 0);
    assert_int_equal(p.req.max_tokens, 16); /* null is absent */
    assert_int_equal(p.req.n, 1);
    lorad_api_infer_params_clear(&p);
    json_decref(body);
}

static void test_completion_refusals(void **state) {
    (void)state;
    const enum lorad_api_infer_kind C = LORAD_API_INFER_COMPLETION;
    refused("[1, 2]", C, -EINVAL, NULL);
    refused("{\"prompt\": \"x\"}", C, -EINVAL, "model");
    refused("{\"model\": 5, \"prompt\": \"x\"}", C, -EINVAL, "model");
    refused("{\"model\": \"\", \"prompt\": \"x\"}", C, -EINVAL, "model");
    refused("{\"model\": \"m\"}", C, -EINVAL, "prompt");
    refused("{\"model\": \"m\", \"prompt\": 3}", C, -EINVAL, "prompt");
    refused("{\"model\": \"m\", \"prompt\": []}", C, -EINVAL, "prompt");
    refused("{\"model\": \"m\", \"prompt\": [\"a\", 2]}", C, -EOPNOTSUPP, "prompt"); /* token ids */
    refused("{\"model\": \"m\", \"prompt\": [[1, 2]]}", C, -EOPNOTSUPP, "prompt");
    refused("{\"model\": \"m\", \"prompt\": [\"a\", null]}", C, -EINVAL, "prompt");
    refused("{\"model\": \"m\", \"prompt\": \"x\", \"temperature\": 3}", C, -EINVAL, "temperature");
    refused("{\"model\": \"m\", \"prompt\": \"x\", \"temperature\": -0.1}", C, -EINVAL, "temperature");
    refused("{\"model\": \"m\", \"prompt\": \"x\", \"temperature\": \"hot\"}", C, -EINVAL, "temperature");
    refused("{\"model\": \"m\", \"prompt\": \"x\", \"top_p\": 0}", C, -EINVAL, "top_p");
    refused("{\"model\": \"m\", \"prompt\": \"x\", \"top_p\": 1.5}", C, -EINVAL, "top_p");
    refused("{\"model\": \"m\", \"prompt\": \"x\", \"n\": 0}", C, -EINVAL, "n");
    refused("{\"model\": \"m\", \"prompt\": \"x\", \"n\": 17}", C, -EINVAL, "n");
    refused("{\"model\": \"m\", \"prompt\": \"x\", \"n\": 2.0}", C, -EINVAL, "n");
    refused("{\"model\": \"m\", \"prompt\": \"x\", \"max_tokens\": 0}", C, -EINVAL, "max_tokens");
    refused("{\"model\": \"m\", \"prompt\": \"x\", \"max_tokens\": \"16\"}", C, -EINVAL, "max_tokens");
    refused("{\"model\": \"m\", \"prompt\": \"x\", \"seed\": 1.5}", C, -EINVAL, "seed");
    refused("{\"model\": \"m\", \"prompt\": \"x\", \"stop\": [\"a\", \"b\", \"c\", \"d\", \"e\"]}", C, -EINVAL, "stop");
    refused("{\"model\": \"m\", \"prompt\": \"x\", \"stop\": \"\"}", C, -EINVAL, "stop");
    refused("{\"model\": \"m\", \"prompt\": \"x\", \"stop\": [\"a\", 1]}", C, -EINVAL, "stop");
    refused("{\"model\": \"m\", \"prompt\": \"x\", \"stop\": 7}", C, -EINVAL, "stop");
    refused("{\"model\": \"m\", \"prompt\": \"x\", \"stream\": \"yes\"}", C, -EINVAL, "stream");
    refused("{\"model\": \"m\", \"prompt\": \"x\", \"stream_options\": {\"include_usage\": true}}", C, -EINVAL,
            "stream_options"); /* only with stream */
    refused("{\"model\": \"m\", \"prompt\": \"x\", \"stream\": true, \"stream_options\": {\"include_usage\": 1}}", C,
            -EINVAL, "stream_options.include_usage");
    refused("{\"model\": \"m\", \"prompt\": \"x\", \"stream\": true, \"stream_options\": {\"foo\": true}}", C,
            -EOPNOTSUPP, "stream_options");
    refused("{\"model\": \"m\", \"prompt\": \"x\", \"stream\": true, \"stream_options\": []}", C, -EINVAL,
            "stream_options");
    refused("{\"model\": \"m\", \"prompt\": \"x\", \"logprobs\": 6}", C, -EINVAL, "logprobs");
    refused("{\"model\": \"m\", \"prompt\": \"x\", \"logprobs\": true}", C, -EINVAL, "logprobs");
    refused("{\"model\": \"m\", \"prompt\": \"x\", \"echo\": true}", C, -EOPNOTSUPP, "echo");
    refused("{\"model\": \"m\", \"prompt\": \"x\", \"echo\": \"no\"}", C, -EINVAL, "echo");
    refused("{\"model\": \"m\", \"prompt\": \"x\", \"presence_penalty\": 0.5}", C, -EOPNOTSUPP, "presence_penalty");
    refused("{\"model\": \"m\", \"prompt\": \"x\", \"frequency_penalty\": -1}", C, -EOPNOTSUPP, "frequency_penalty");
    refused("{\"model\": \"m\", \"prompt\": \"x\", \"frequency_penalty\": \"0\"}", C, -EINVAL, "frequency_penalty");
    refused("{\"model\": \"m\", \"prompt\": \"x\", \"best_of\": 3}", C, -EOPNOTSUPP, "best_of");
    refused("{\"model\": \"m\", \"prompt\": \"x\", \"n\": 2, \"best_of\": 1}", C, -EOPNOTSUPP, "best_of");
    refused("{\"model\": \"m\", \"prompt\": \"x\", \"suffix\": \"end\"}", C, -EOPNOTSUPP, "suffix");
    refused("{\"model\": \"m\", \"prompt\": \"x\", \"logit_bias\": {\"50256\": -100}}", C, -EOPNOTSUPP, "logit_bias");
    refused("{\"model\": \"m\", \"prompt\": \"x\", \"logit_bias\": [1]}", C, -EINVAL, "logit_bias");
    refused("{\"model\": \"m\", \"prompt\": \"x\", \"user\": 5}", C, -EINVAL, "user");
    refused("{\"model\": \"m\", \"prompt\": \"x\", \"top_k\": 5}", C, -EOPNOTSUPP, "top_k"); /* unknown */
    refused("{\"model\": \"m\", \"prompt\": \"x\", \"messages\": []}", C, -EOPNOTSUPP, "messages"); /* chat's */
    refused("{\"model\": \"m\", \"prompt\": \"x\", \"top_logprobs\": 2}", C, -EOPNOTSUPP, "top_logprobs");
}

/* The limits on what a client controls: 64 prompts, 4 stop strings of 256 bytes, a model name. */
static void test_completion_limits(void **state) {
    (void)state;
    json_t *body = json_pack("{s:s, s:[]}", "model", "m", "prompt");
    for (int i = 0; i < LORAD_API_INFER_MAX_PROMPTS; i++) json_array_append_new(json_object_get(body, "prompt"), json_string("p"));
    struct lorad_api_infer_params p;
    struct lorad_error err = {0};
    assert_int_equal(lorad_api_infer_parse(body, LORAD_API_INFER_COMPLETION, &p, &err), 0);
    assert_int_equal(p.n_prompts, 64);
    lorad_api_infer_params_clear(&p);
    json_array_append_new(json_object_get(body, "prompt"), json_string("one too many"));
    assert_int_equal(lorad_api_infer_parse(body, LORAD_API_INFER_COMPLETION, &p, &err), -EINVAL);
    assert_string_equal(err.param, "prompt");
    json_decref(body);

    char stop[LORAD_INFER_MAX_STOP_BYTES + 2];
    memset(stop, 's', sizeof stop);
    stop[LORAD_INFER_MAX_STOP_BYTES] = '\0';
    body = json_pack("{s:s, s:s, s:[s]}", "model", "m", "prompt", "x", "stop", stop);
    assert_int_equal(lorad_api_infer_parse(body, LORAD_API_INFER_COMPLETION, &p, &err), 0);
    assert_int_equal((int)strlen(p.req.stop[0]), LORAD_INFER_MAX_STOP_BYTES);
    lorad_api_infer_params_clear(&p);
    json_decref(body);
    stop[LORAD_INFER_MAX_STOP_BYTES] = 's';
    stop[LORAD_INFER_MAX_STOP_BYTES + 1] = '\0';
    body = json_pack("{s:s, s:s, s:s}", "model", "m", "prompt", "x", "stop", stop);
    assert_int_equal(lorad_api_infer_parse(body, LORAD_API_INFER_COMPLETION, &p, &err), -EINVAL);
    assert_string_equal(err.param, "stop");
    json_decref(body);

    char model[LORAD_API_INFER_MODEL_MAX + 1];
    memset(model, 'm', sizeof model);
    model[LORAD_API_INFER_MODEL_MAX] = '\0';
    body = json_pack("{s:s, s:s}", "model", model, "prompt", "x");
    assert_int_equal(lorad_api_infer_parse(body, LORAD_API_INFER_COMPLETION, &p, &err), -EINVAL);
    assert_string_equal(err.param, "model");
    json_decref(body);
}

static void test_chat_fields(void **state) {
    (void)state;
    struct lorad_api_infer_params p;
    struct lorad_error err;
    json_t *body;
    const char *text =
        "{\"model\": \"demo\", \"messages\": ["
        "{\"role\": \"developer\", \"content\": \"Be brief.\"},"
        "{\"role\": \"user\", \"content\": [{\"type\": \"text\", \"text\": \"Hello\"}, {\"type\": \"text\", \"text\": \"there\"}], \"name\": \"ann\"},"
        "{\"role\": \"assistant\", \"content\": \"Hi.\"},"
        "{\"role\": \"user\", \"content\": \"Again\"}],"
        " \"max_completion_tokens\": 9, \"logprobs\": true, \"top_logprobs\": 4, \"response_format\": {\"type\": \"text\"},"
        " \"tools\": null, \"stream\": false, \"seed\": 11}";
    assert_int_equal(parse(text, LORAD_API_INFER_CHAT, &p, &err, &body), 0);
    assert_int_equal(p.kind, LORAD_API_INFER_CHAT);
    assert_null(p.req.prompt);
    assert_int_equal(p.n_prompts, 1);
    assert_int_equal(p.req.n_messages, 4);
    assert_string_equal(p.req.messages[0].role, "system"); /* developer is OpenAI's newer name for it */
    assert_string_equal(p.req.messages[0].content, "Be brief.");
    assert_string_equal(p.req.messages[1].role, "user");
    assert_string_equal(p.req.messages[1].content, "Hello\nthere");
    assert_string_equal(p.req.messages[2].role, "assistant");
    assert_string_equal(p.req.messages[3].content, "Again");
    assert_int_equal(p.req.max_tokens, 9);
    assert_true(p.req.logprobs);
    assert_int_equal(p.req.top_logprobs, 4);
    assert_true(p.has_seed);
    assert_true(p.req.sampling.seed == 11);
    lorad_api_infer_params_clear(&p);
    json_decref(body);

    /* The deprecated max_tokens alone; without either, up to the context (0); logprobs without
     * top_logprobs. */
    assert_int_equal(parse("{\"model\": \"d\", \"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"max_tokens\": 5}",
                           LORAD_API_INFER_CHAT, &p, &err, &body),
                     0);
    assert_int_equal(p.req.max_tokens, 5);
    lorad_api_infer_params_clear(&p);
    json_decref(body);
    assert_int_equal(parse("{\"model\": \"d\", \"messages\": [{\"role\": \"user\", \"content\": \"\"}], \"logprobs\": true}",
                           LORAD_API_INFER_CHAT, &p, &err, &body),
                     0);
    assert_int_equal(p.req.max_tokens, 0);
    assert_true(p.req.logprobs);
    assert_int_equal(p.req.top_logprobs, 0);
    lorad_api_infer_params_clear(&p);
    json_decref(body);
}

static void test_chat_refusals(void **state) {
    (void)state;
    const enum lorad_api_infer_kind K = LORAD_API_INFER_CHAT;
#define U "[{\"role\": \"user\", \"content\": \"x\"}]"
    refused("{\"model\": \"m\"}", K, -EINVAL, "messages");
    refused("{\"model\": \"m\", \"messages\": []}", K, -EINVAL, "messages");
    refused("{\"model\": \"m\", \"messages\": {\"role\": \"user\"}}", K, -EINVAL, "messages");
    refused("{\"model\": \"m\", \"messages\": [\"hi\"]}", K, -EINVAL, "messages[0]");
    refused("{\"model\": \"m\", \"messages\": [{\"role\": \"user\", \"content\": \"x\"}, {\"role\": \"robot\", \"content\": \"y\"}]}",
            K, -EINVAL, "messages[1].role");
    refused("{\"model\": \"m\", \"messages\": [{\"content\": \"y\"}]}", K, -EINVAL, "messages[0].role");
    refused("{\"model\": \"m\", \"messages\": [{\"role\": \"tool\", \"content\": \"y\", \"tool_call_id\": \"c\"}]}", K,
            -EOPNOTSUPP, "messages[0].tool_call_id");
    refused("{\"model\": \"m\", \"messages\": [{\"role\": \"tool\", \"content\": \"y\"}]}", K, -EOPNOTSUPP,
            "messages[0].role");
    refused("{\"model\": \"m\", \"messages\": [{\"role\": \"user\"}]}", K, -EINVAL, "messages[0].content");
    refused("{\"model\": \"m\", \"messages\": [{\"role\": \"user\", \"content\": null}]}", K, -EINVAL,
            "messages[0].content");
    refused("{\"model\": \"m\", \"messages\": [{\"role\": \"user\", \"content\": 3}]}", K, -EINVAL, "messages[0].content");
    refused("{\"model\": \"m\", \"messages\": [{\"role\": \"user\", \"content\": []}]}", K, -EINVAL, "messages[0].content");
    refused("{\"model\": \"m\", \"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"image_url\", \"image_url\": {\"url\": \"x\"}}]}]}",
            K, -EOPNOTSUPP, "messages[0].content");
    refused("{\"model\": \"m\", \"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"text\"}]}]}", K, -EINVAL,
            "messages[0].content");
    refused("{\"model\": \"m\", \"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"text\", \"text\": 1}]}]}", K,
            -EINVAL, "messages[0].content");
    refused("{\"model\": \"m\", \"messages\": [{\"role\": \"assistant\", \"content\": \"x\", \"tool_calls\": []}]}", K,
            -EOPNOTSUPP, "messages[0].tool_calls");
    refused("{\"model\": \"m\", \"messages\": [{\"role\": \"user\", \"content\": \"x\", \"name\": 1}]}", K, -EINVAL,
            "messages[0].name");
    refused("{\"model\": \"m\", \"messages\": " U ", \"max_tokens\": 5, \"max_completion_tokens\": 5}", K, -EINVAL,
            "max_tokens");
    refused("{\"model\": \"m\", \"messages\": " U ", \"max_completion_tokens\": 0}", K, -EINVAL, "max_completion_tokens");
    refused("{\"model\": \"m\", \"messages\": " U ", \"top_logprobs\": 2}", K, -EINVAL, "top_logprobs");
    refused("{\"model\": \"m\", \"messages\": " U ", \"logprobs\": false, \"top_logprobs\": 2}", K, -EINVAL, "top_logprobs");
    refused("{\"model\": \"m\", \"messages\": " U ", \"logprobs\": true, \"top_logprobs\": 21}", K, -EINVAL, "top_logprobs");
    refused("{\"model\": \"m\", \"messages\": " U ", \"logprobs\": 1}", K, -EINVAL, "logprobs");
    refused("{\"model\": \"m\", \"messages\": " U ", \"temperature\": 2.5}", K, -EINVAL, "temperature");
    refused("{\"model\": \"m\", \"messages\": " U ", \"stop\": [\"a\", \"b\", \"c\", \"d\", \"e\"]}", K, -EINVAL, "stop");
    refused("{\"model\": \"m\", \"messages\": " U ", \"n\": 0}", K, -EINVAL, "n");
    refused("{\"model\": \"m\", \"messages\": " U ", \"response_format\": {\"type\": \"json_object\"}}", K, -EOPNOTSUPP,
            "response_format");
    refused("{\"model\": \"m\", \"messages\": " U ", \"response_format\": \"text\"}", K, -EINVAL, "response_format");
    refused("{\"model\": \"m\", \"messages\": " U ", \"tools\": [{\"type\": \"function\"}]}", K, -EOPNOTSUPP, "tools");
    refused("{\"model\": \"m\", \"messages\": " U ", \"tool_choice\": \"auto\"}", K, -EOPNOTSUPP, "tool_choice");
    refused("{\"model\": \"m\", \"messages\": " U ", \"functions\": []}", K, -EOPNOTSUPP, "functions");
    refused("{\"model\": \"m\", \"messages\": " U ", \"presence_penalty\": 1}", K, -EOPNOTSUPP, "presence_penalty");
    refused("{\"model\": \"m\", \"messages\": " U ", \"echo\": false}", K, -EOPNOTSUPP, "echo"); /* completions' */
    refused("{\"model\": \"m\", \"messages\": " U ", \"prompt\": \"x\"}", K, -EOPNOTSUPP, "prompt");
    refused("{\"model\": \"m\", \"messages\": " U ", \"store\": true}", K, -EOPNOTSUPP, "store");
#undef U
}

/* 1023 messages are the most a prompt can render (a dataset record's turn limit, one left for the
 * answer); content parts are joined with newlines into text the params own. */
static void test_chat_limits(void **state) {
    (void)state;
    json_t *msgs = json_array();
    for (int i = 0; i < 1023; i++)
        json_array_append_new(msgs, json_pack("{s:s, s:[{s:s, s:s}]}", "role", i % 2 ? "assistant" : "user", "content",
                                              "type", "text", "text", "t"));
    json_t *body = json_pack("{s:s, s:o}", "model", "m", "messages", msgs);
    struct lorad_api_infer_params p;
    struct lorad_error err = {0};
    assert_int_equal(lorad_api_infer_parse(body, LORAD_API_INFER_CHAT, &p, &err), 0);
    assert_int_equal(p.req.n_messages, 1023);
    assert_string_equal(p.req.messages[1022].content, "t");
    assert_int_equal(p.n_texts, 1023);
    lorad_api_infer_params_clear(&p);
    json_array_append_new(msgs, json_pack("{s:s, s:s}", "role", "user", "content", "x"));
    assert_int_equal(lorad_api_infer_parse(body, LORAD_API_INFER_CHAT, &p, &err), -EINVAL);
    assert_string_equal(err.param, "messages");
    json_decref(body);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_completion_defaults), cmocka_unit_test(test_completion_fields),
        cmocka_unit_test(test_completion_refusals), cmocka_unit_test(test_completion_limits),
        cmocka_unit_test(test_chat_fields),         cmocka_unit_test(test_chat_refusals),
        cmocka_unit_test(test_chat_limits),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
