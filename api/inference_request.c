/* Request bodies of the inference routes → struct lorad_api_infer_params (inference_request.h).
 *
 * null counts as absent for every optional field: the OpenAI SDKs and most clients send null for
 * what they leave unset. */
#include "inference_request.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dataset.h"
#include "llama_config.h"

#define MAX_MESSAGES (LORAD_DATASET_MAX_TURNS - 1) /* lorad_prompt_tokenize's limit */

/* The fields each route knows. Those that name a feature lorad lacks are in the list too: they are
 * accepted when they ask for nothing (null, false, 0, {}) and refused by name otherwise. */
static const char *const COMPLETION_FIELDS[] = {
    "model", "prompt", "max_tokens", "temperature", "top_p", "stop", "seed", "n", "stream", "stream_options",
    "logprobs", "echo", "user", "presence_penalty", "frequency_penalty", "best_of", "suffix", "logit_bias", NULL};
static const char *const CHAT_FIELDS[] = {
    "model", "messages", "max_completion_tokens", "max_tokens", "temperature", "top_p", "stop", "seed", "n",
    "stream", "stream_options", "logprobs", "top_logprobs", "user", "presence_penalty", "frequency_penalty",
    "response_format", "logit_bias", "tools", "tool_choice", "functions", "function_call", "parallel_tool_calls",
    NULL};

static bool listed(const char *const *names, const char *key) {
    for (; *names; names++)
        if (strcmp(*names, key) == 0) return true;
    return false;
}

/* The member key of body, NULL when absent or null. */
static const json_t *field(const json_t *body, const char *key) {
    const json_t *v = json_object_get(body, key);
    return v && !json_is_null(v) ? v : NULL;
}

/* An optional integer in [min, max]: 0 with *ret (untouched when absent), or -EINVAL naming key. */
static int opt_int(const json_t *body, const char *key, int64_t min, int64_t max, int64_t *ret,
                   struct lorad_error *err) {
    const json_t *v = field(body, key);
    if (!v) return 0;
    if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > max)
        return lorad_error_set(err, -EINVAL, key, "%s must be an integer between %lld and %lld", key, (long long)min,
                               (long long)max);
    *ret = json_integer_value(v);
    return 0;
}

/* An optional number in [min, max] (min excluded when open_min): 0 with *ret (untouched when
 * absent), or -EINVAL naming key. */
static int opt_number(const json_t *body, const char *key, double min, bool open_min, double max, double *ret,
                      struct lorad_error *err) {
    const json_t *v = field(body, key);
    if (!v) return 0;
    double x = json_number_value(v);
    if (!json_is_number(v) || x > max || x < min || (open_min && x == min))
        return lorad_error_set(err, -EINVAL, key, "%s must be a number %s %g and <= %g", key, open_min ? ">" : ">=",
                               min, max);
    *ret = x;
    return 0;
}

/* An optional boolean: 0 with *ret (untouched when absent), or -EINVAL naming key. */
static int opt_bool(const json_t *body, const char *key, bool *ret, struct lorad_error *err) {
    const json_t *v = field(body, key);
    if (!v) return 0;
    if (!json_is_boolean(v)) return lorad_error_set(err, -EINVAL, key, "%s must be true or false", key);
    *ret = json_is_true(v);
    return 0;
}

/* The fields every route shares that ask for something lorad does not do: accepted only when they
 * ask for nothing. */
static int check_unsupported(const json_t *body, struct lorad_error *err) {
    static const char *const penalties[] = {"presence_penalty", "frequency_penalty"};
    for (size_t i = 0; i < 2; i++) {
        const json_t *v = field(body, penalties[i]);
        if (v && !json_is_number(v))
            return lorad_error_set(err, -EINVAL, penalties[i], "%s must be a number", penalties[i]);
        if (v && json_number_value(v) != 0)
            return lorad_error_set(err, -EOPNOTSUPP, penalties[i], "%s is not supported (only 0)", penalties[i]);
    }
    const json_t *bias = field(body, "logit_bias");
    if (bias && !json_is_object(bias))
        return lorad_error_set(err, -EINVAL, "logit_bias", "logit_bias must be an object");
    if (bias && json_object_size(bias) > 0)
        return lorad_error_set(err, -EOPNOTSUPP, "logit_bias", "logit_bias is not supported");
    const json_t *user = field(body, "user");
    if (user && !json_is_string(user)) return lorad_error_set(err, -EINVAL, "user", "user must be a string");
    return 0;
}

/* stop: a string or a list of up to LORAD_INFER_MAX_STOP strings, each 1..MAX_STOP_BYTES bytes. */
static int parse_stop(const json_t *body, struct lorad_infer_request *req, struct lorad_error *err) {
    const json_t *v = field(body, "stop");
    if (!v) return 0;
    const json_t *one[1] = {v};
    size_t n = json_is_array(v) ? json_array_size(v) : 1;
    if (!json_is_array(v) && !json_is_string(v))
        return lorad_error_set(err, -EINVAL, "stop", "stop must be a string or a list of strings");
    if (n > LORAD_INFER_MAX_STOP)
        return lorad_error_set(err, -EINVAL, "stop", "stop has %zu strings; at most %d are allowed", n,
                               LORAD_INFER_MAX_STOP);
    for (size_t i = 0; i < n; i++) {
        const json_t *s = json_is_array(v) ? json_array_get(v, i) : one[0];
        if (!json_is_string(s)) return lorad_error_set(err, -EINVAL, "stop", "stop[%zu] must be a string", i);
        size_t len = json_string_length(s);
        if (len == 0) return lorad_error_set(err, -EINVAL, "stop", "stop strings must not be empty");
        if (len > LORAD_INFER_MAX_STOP_BYTES)
            return lorad_error_set(err, -EINVAL, "stop", "a stop string is %zu bytes; at most %d are allowed", len,
                                   LORAD_INFER_MAX_STOP_BYTES);
        req->stop[i] = json_string_value(s);
    }
    req->n_stop = (int)n;
    return 0;
}

/* stream and stream_options ({"include_usage": bool}, only with stream true, as OpenAI). */
static int parse_stream(const json_t *body, struct lorad_api_infer_params *p, struct lorad_error *err) {
    int r = opt_bool(body, "stream", &p->stream, err);
    if (r < 0) return r;
    const json_t *so = field(body, "stream_options");
    if (!so) return 0;
    if (!json_is_object(so))
        return lorad_error_set(err, -EINVAL, "stream_options", "stream_options must be an object");
    if (!p->stream)
        return lorad_error_set(err, -EINVAL, "stream_options", "stream_options is only allowed when stream is true");
    const char *key;
    const json_t *v;
    json_object_foreach((json_t *)so, key, v) {
        if (strcmp(key, "include_usage") != 0)
            return lorad_error_set(err, -EOPNOTSUPP, "stream_options", "unknown parameter stream_options.%.64s", key);
    }
    if ((r = opt_bool(so, "include_usage", &p->include_usage, err)) < 0)
        lorad_error_set(err, r, "stream_options.include_usage", "stream_options.include_usage must be true or false");
    return r;
}

/* The sampling fields both routes share: temperature, top_p, seed, n. */
static int parse_sampling(const json_t *body, struct lorad_api_infer_params *p, struct lorad_error *err) {
    struct lorad_sampling *s = &p->req.sampling;
    s->temperature = 1.0;
    s->top_p = 1.0;
    int64_t n = 1, seed = 0;
    int r;
    if ((r = opt_number(body, "temperature", 0, false, 2, &s->temperature, err)) < 0 ||
        (r = opt_number(body, "top_p", 0, true, 1, &s->top_p, err)) < 0 ||
        (r = opt_int(body, "n", 1, LORAD_INFER_MAX_CHOICES, &n, err)) < 0 ||
        (r = opt_int(body, "seed", INT64_MIN, INT64_MAX, &seed, err)) < 0)
        return r;
    /* Greedy decoding has no distribution to cut, and the sampler refuses a cut with it. */
    if (s->temperature == 0) s->top_p = 1.0;
    p->has_seed = field(body, "seed") != NULL;
    s->seed = (uint64_t)seed;
    p->req.n = (int)n;
    return 0;
}

/* prompt: a string or a list of 1..64 strings (token-id prompts are not supported). */
static int parse_prompt(const json_t *body, struct lorad_api_infer_params *p, struct lorad_error *err) {
    const json_t *v = field(body, "prompt");
    if (!v) return lorad_error_set(err, -EINVAL, "prompt", "prompt is required");
    if (json_is_string(v)) {
        p->prompts[0] = json_string_value(v);
        p->n_prompts = 1;
        return 0;
    }
    if (!json_is_array(v)) return lorad_error_set(err, -EINVAL, "prompt", "prompt must be a string or a list of strings");
    size_t n = json_array_size(v);
    if (n == 0) return lorad_error_set(err, -EINVAL, "prompt", "prompt must not be an empty list");
    if (n > LORAD_API_INFER_MAX_PROMPTS)
        return lorad_error_set(err, -EINVAL, "prompt", "prompt has %zu strings; at most %d are allowed", n,
                               LORAD_API_INFER_MAX_PROMPTS);
    for (size_t i = 0; i < n; i++) {
        const json_t *s = json_array_get(v, i);
        if (json_is_integer(s) || json_is_array(s))
            return lorad_error_set(err, -EOPNOTSUPP, "prompt", "prompts of token ids are not supported; send text");
        if (!json_is_string(s)) return lorad_error_set(err, -EINVAL, "prompt", "prompt[%zu] must be a string", i);
        p->prompts[i] = json_string_value(s);
    }
    p->n_prompts = (int)n;
    return 0;
}

/* The completions-only fields: prompt, max_tokens (default 16), logprobs (0..5), echo, best_of,
 * suffix. */
static int parse_completion(const json_t *body, struct lorad_api_infer_params *p, struct lorad_error *err) {
    int r = parse_prompt(body, p, err);
    if (r < 0) return r;
    int64_t max_tokens = LORAD_API_INFER_DEFAULT_MAX_TOKENS, logprobs = -1;
    if ((r = opt_int(body, "max_tokens", 1, LORAD_MAX_SEQ_LEN, &max_tokens, err)) < 0 ||
        (r = opt_int(body, "logprobs", 0, LORAD_API_INFER_MAX_COMPLETION_LOGPROBS, &logprobs, err)) < 0)
        return r;
    p->req.max_tokens = (int)max_tokens;
    p->req.logprobs = logprobs >= 0;
    p->req.top_logprobs = logprobs > 0 ? (int)logprobs : 0;
    bool echo = false;
    if ((r = opt_bool(body, "echo", &echo, err)) < 0) return r;
    if (echo) return lorad_error_set(err, -EOPNOTSUPP, "echo", "echo is not supported (only false)");
    const json_t *best_of = field(body, "best_of");
    if (best_of && !json_is_integer(best_of))
        return lorad_error_set(err, -EINVAL, "best_of", "best_of must be an integer");
    if (best_of && json_integer_value(best_of) != p->req.n)
        return lorad_error_set(err, -EOPNOTSUPP, "best_of", "best_of is not supported (only equal to n)");
    if (field(body, "suffix")) return lorad_error_set(err, -EOPNOTSUPP, "suffix", "suffix is not supported");
    return 0;
}

/* The text of a message's content: a string, or a non-empty list of {"type": "text", "text"} parts
 * joined with newlines (which the caller then owns: *ret_owned). */
static int message_content(const json_t *content, int i, const char **ret_text, char **ret_owned,
                           struct lorad_error *err) {
    char param[48];
    snprintf(param, sizeof param, "messages[%d].content", i);
    if (json_is_string(content)) {
        *ret_text = json_string_value(content);
        *ret_owned = NULL;
        return 0;
    }
    if (!json_is_array(content) || json_array_size(content) == 0)
        return lorad_error_set(err, -EINVAL, param, "%s must be a string or a non-empty list of text parts", param);
    size_t total = 0, j;
    const json_t *part;
    json_array_foreach(content, j, part) {
        const json_t *type = json_object_get(part, "type"), *text = json_object_get(part, "text");
        if (!json_is_object(part) || !json_is_string(type) || strcmp(json_string_value(type), "text") != 0)
            return lorad_error_set(err, -EOPNOTSUPP, param, "%s[%zu]: only parts of type \"text\" are supported", param,
                                   j);
        if (!json_is_string(text) || json_object_size(part) != 2)
            return lorad_error_set(err, -EINVAL, param, "%s[%zu] must be {\"type\": \"text\", \"text\": string}", param, j);
        total += json_string_length(text) + 1;
    }
    char *joined = malloc(total);
    if (!joined) return lorad_error_set(err, -ENOMEM, NULL, "out of memory");
    size_t at = 0;
    json_array_foreach(content, j, part) {
        const json_t *text = json_object_get(part, "text");
        if (j) joined[at++] = '\n';
        memcpy(joined + at, json_string_value(text), json_string_length(text));
        at += json_string_length(text);
    }
    joined[at] = '\0';
    *ret_text = joined;
    *ret_owned = joined;
    return 0;
}

/* messages: 1..MAX_MESSAGES {role, content[, name]}; developer is system (OpenAI's newer name). */
static int parse_messages(const json_t *body, struct lorad_api_infer_params *p, struct lorad_error *err) {
    const json_t *v = field(body, "messages");
    if (!json_is_array(v) || json_array_size(v) == 0)
        return lorad_error_set(err, -EINVAL, "messages", "messages must be a non-empty list of messages");
    size_t n = json_array_size(v);
    if (n > MAX_MESSAGES)
        return lorad_error_set(err, -EINVAL, "messages", "messages has %zu entries; at most %d are allowed", n,
                               MAX_MESSAGES);
    p->messages_buf = calloc(n, sizeof *p->messages_buf);
    p->texts = calloc(n, sizeof *p->texts);
    if (!p->messages_buf || !p->texts) return lorad_error_set(err, -ENOMEM, NULL, "out of memory");
    for (size_t i = 0; i < n; i++) {
        const json_t *m = json_array_get(v, i);
        char param[48];
        snprintf(param, sizeof param, "messages[%zu]", i);
        if (!json_is_object(m)) return lorad_error_set(err, -EINVAL, param, "%s must be an object", param);
        const char *key;
        const json_t *val;
        json_object_foreach((json_t *)m, key, val) {
            if (strcmp(key, "role") && strcmp(key, "content") && strcmp(key, "name")) {
                snprintf(param, sizeof param, "messages[%zu].%.24s", i, key);
                return lorad_error_set(err, -EOPNOTSUPP, param, "%s is not supported", param);
            }
        }
        const json_t *name = json_object_get(m, "name");
        if (name && !json_is_null(name) && !json_is_string(name)) {
            snprintf(param, sizeof param, "messages[%zu].name", i);
            return lorad_error_set(err, -EINVAL, param, "%s must be a string", param);
        }
        const char *role = json_string_value(json_object_get(m, "role"));
        static const struct { const char *given, *as; } ROLES[] = {
            {"system", "system"}, {"developer", "system"}, {"user", "user"}, {"assistant", "assistant"}};
        p->messages_buf[i].role = NULL;
        for (size_t k = 0; role && k < sizeof ROLES / sizeof ROLES[0]; k++)
            if (strcmp(role, ROLES[k].given) == 0) p->messages_buf[i].role = ROLES[k].as;
        if (!p->messages_buf[i].role) {
            bool tool = role && (strcmp(role, "tool") == 0 || strcmp(role, "function") == 0);
            snprintf(param, sizeof param, "messages[%zu].role", i);
            return lorad_error_set(err, tool ? -EOPNOTSUPP : -EINVAL, param,
                                   "%s must be system, developer, user or assistant%s", param,
                                   tool ? " (tool and function messages are not supported)" : "");
        }
        char *owned = NULL;
        int r = message_content(json_object_get(m, "content"), (int)i, &p->messages_buf[i].content, &owned, err);
        if (r < 0) return r;
        if (owned) p->texts[p->n_texts++] = owned;
    }
    p->req.messages = p->messages_buf;
    p->req.n_messages = (int)n;
    p->n_prompts = 1;
    return 0;
}

/* The chat-only fields: messages, max_completion_tokens / max_tokens (default: up to the
 * context), logprobs + top_logprobs, response_format, and the tool fields (refused). */
static int parse_chat(const json_t *body, struct lorad_api_infer_params *p, struct lorad_error *err) {
    static const char *const tool_fields[] = {"tools", "tool_choice", "functions", "function_call",
                                              "parallel_tool_calls"};
    for (size_t i = 0; i < sizeof tool_fields / sizeof tool_fields[0]; i++)
        if (field(body, tool_fields[i]))
            return lorad_error_set(err, -EOPNOTSUPP, tool_fields[i], "%s: tool and function calling is not supported",
                                   tool_fields[i]);
    int r = parse_messages(body, p, err);
    if (r < 0) return r;
    if (field(body, "max_completion_tokens") && field(body, "max_tokens"))
        return lorad_error_set(err, -EINVAL, "max_tokens",
                               "give max_completion_tokens or the deprecated max_tokens, not both");
    int64_t max_tokens = 0, top = -1;
    if ((r = opt_int(body, "max_completion_tokens", 1, LORAD_MAX_SEQ_LEN, &max_tokens, err)) < 0 ||
        (r = opt_int(body, "max_tokens", 1, LORAD_MAX_SEQ_LEN, &max_tokens, err)) < 0 ||
        (r = opt_bool(body, "logprobs", &p->req.logprobs, err)) < 0 ||
        (r = opt_int(body, "top_logprobs", 0, LORAD_INFER_MAX_TOP_LOGPROBS, &top, err)) < 0)
        return r;
    if (top >= 0 && !p->req.logprobs)
        return lorad_error_set(err, -EINVAL, "top_logprobs", "top_logprobs needs logprobs set to true");
    p->req.max_tokens = (int)max_tokens;
    p->req.top_logprobs = top > 0 ? (int)top : 0;
    const json_t *rf = field(body, "response_format");
    if (rf) {
        const char *type = json_string_value(json_object_get(rf, "type"));
        if (!json_is_object(rf) || !type)
            return lorad_error_set(err, -EINVAL, "response_format", "response_format must be {\"type\": \"text\"}");
        if (strcmp(type, "text") != 0 || json_object_size(rf) != 1)
            return lorad_error_set(err, -EOPNOTSUPP, "response_format",
                                   "response_format '%.32s' is not supported (only text)", type);
    }
    return 0;
}

int lorad_api_infer_parse(const json_t *body, enum lorad_api_infer_kind kind, struct lorad_api_infer_params *ret,
                          struct lorad_error *err) {
    /* Contract: body is borrowed and must outlive *ret, whose strings point into it; *ret is written
     * only on success and then owns messages_buf and texts (lorad_api_infer_params_clear). */
    if (!json_is_object(body)) return lorad_error_set(err, -EINVAL, NULL, "the body must be a JSON object");
    const char *key;
    const json_t *v;
    const char *const *known = kind == LORAD_API_INFER_CHAT ? CHAT_FIELDS : COMPLETION_FIELDS;
    json_object_foreach((json_t *)body, key, v) {
        if (!listed(known, key)) {
            char param[64];
            snprintf(param, sizeof param, "%.63s", key);
            return lorad_error_set(err, -EOPNOTSUPP, param, "unknown parameter '%.64s'", key);
        }
    }
    struct lorad_api_infer_params p = {.kind = kind};
    const json_t *model = field(body, "model");
    if (!json_is_string(model) || json_string_length(model) == 0)
        return lorad_error_set(err, -EINVAL, "model", "model must be the name of a model (see GET /v1/models)");
    if (json_string_length(model) >= LORAD_API_INFER_MODEL_MAX)
        return lorad_error_set(err, -EINVAL, "model", "model is longer than %d bytes", LORAD_API_INFER_MODEL_MAX - 1);
    p.model = json_string_value(model);
    int r;
    if ((r = check_unsupported(body, err)) < 0 || (r = parse_sampling(body, &p, err)) < 0 ||
        (r = parse_stop(body, &p.req, err)) < 0 || (r = parse_stream(body, &p, err)) < 0 ||
        (r = kind == LORAD_API_INFER_CHAT ? parse_chat(body, &p, err) : parse_completion(body, &p, err)) < 0) {
        lorad_api_infer_params_clear(&p);
        return r;
    }
    *ret = p;
    return 0;
}

void lorad_api_infer_params_clear(struct lorad_api_infer_params *p) {
    for (int i = 0; i < p->n_texts; i++) free(p->texts[i]);
    free(p->texts);
    free(p->messages_buf);
    memset(p, 0, sizeof *p);
}
