#include "dataset.h"

#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

static const char *const problem_names[LORAD_PROBLEM_COUNT] = {
    "invalid_json", "wrong_type", "unknown_role", "no_assistant_turn", "empty_after_templating",
    "line_too_long", "invalid_utf8", "longer_than_max_seq_len",
};

const char *lorad_dataset_problem_name(enum lorad_dataset_problem p) {
    return p < LORAD_PROBLEM_COUNT ? problem_names[p] : "unknown";
}

bool lorad_utf8_valid(const char *str, size_t len) {
    const unsigned char *s = (const unsigned char *)str, *end = s + len;
    while (s < end) {
        unsigned c = *s;
        if (c < 0x80) {
            s++;
            continue;
        }
        int n;
        unsigned cp, min;
        if ((c & 0xe0) == 0xc0) { n = 1; cp = c & 0x1f; min = 0x80; }
        else if ((c & 0xf0) == 0xe0) { n = 2; cp = c & 0x0f; min = 0x800; }
        else if ((c & 0xf8) == 0xf0) { n = 3; cp = c & 0x07; min = 0x10000; }
        else return false;
        if (end - s <= n) return false;
        for (int i = 1; i <= n; i++) {
            if ((s[i] & 0xc0) != 0x80) return false;
            cp = (cp << 6) | (s[i] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;
        s += n + 1;
    }
    return true;
}

/* ---- records ---------------------------------------------------------------------------- */

static int bad(enum lorad_dataset_problem *ret_problem, enum lorad_dataset_problem p, struct lorad_error *err,
               const char *param, const char *fmt, const char *detail) {
    *ret_problem = p;
    return lorad_error_set(err, -EINVAL, param, fmt, detail);
}

static enum lorad_data_format detect_format(const json_t *o) {
    if (json_object_get(o, "messages")) return LORAD_DATA_MESSAGES;
    if (json_object_get(o, "prompt") || json_object_get(o, "completion")) return LORAD_DATA_PROMPT_COMPLETION;
    /* before alpaca, whose "input" is a string */
    if (json_object_get(o, "preferred_output") || json_object_get(o, "non_preferred_output") ||
        json_is_object(json_object_get(o, "input")))
        return LORAD_DATA_PREFERENCE;
    if (json_object_get(o, "instruction") || json_object_get(o, "output")) return LORAD_DATA_ALPACA;
    if (json_object_get(o, "text")) return LORAD_DATA_TEXT;
    if (json_object_get(o, "input_ids")) return LORAD_DATA_TOKENS;
    return LORAD_DATA_AUTO;
}

static int add_turn(struct lorad_record *r, enum lorad_role role, const json_t *s, bool trainable) {
    if (r->n_turns == LORAD_DATASET_MAX_TURNS) return -E2BIG;
    r->turns[r->n_turns++] = (struct lorad_turn){role, json_string_value(s), json_string_length(s), trainable};
    return 0;
}

/* A required string field; returns it or NULL after setting the problem. */
static const json_t *string_field(const json_t *o, const char *key, bool required, enum lorad_dataset_problem *p,
                                  struct lorad_error *err, int *ret) {
    const json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) {
        if (required) *ret = bad(p, LORAD_PROBLEM_WRONG_TYPE, err, key, "missing key \"%s\"", key);
        return NULL;
    }
    if (!json_is_string(v)) {
        *ret = bad(p, LORAD_PROBLEM_WRONG_TYPE, err, key, "\"%s\" must be a string", key);
        return NULL;
    }
    return v;
}

static int check_keys(const json_t *o, const char *const *allowed, const char *prefix, enum lorad_dataset_problem *p,
                      struct lorad_error *err) {
    const char *key;
    const json_t *v;
    json_object_foreach((json_t *)o, key, v) {
        bool ok = false;
        for (int i = 0; allowed[i]; i++) ok |= strcmp(allowed[i], key) == 0;
        if (!ok) {
            char param[160];
            snprintf(param, sizeof param, "%s%.100s", prefix, key);
            return bad(p, LORAD_PROBLEM_WRONG_TYPE, err, param, "unexpected key \"%s\"", param);
        }
    }
    return 0;
}

/* The turns of the messages array at `where` ("messages", or "input.messages" of a preference
 * record). In a prompt nothing is trained, "weight" is not allowed and room is left for the output
 * turn. *ret_assistant says whether there is an assistant turn, *ret_trainable whether one of them
 * is trained and not empty. */
static int parse_turns(struct lorad_record *r, const json_t *msgs, const char *where, bool prompt,
                       enum lorad_dataset_problem *p, struct lorad_error *err, bool *ret_assistant,
                       bool *ret_trainable) {
    if (!json_is_array(msgs) || json_array_size(msgs) == 0)
        return bad(p, LORAD_PROBLEM_WRONG_TYPE, err, where, "\"%s\" must be a non-empty array", where);
    int max_turns = LORAD_DATASET_MAX_TURNS - prompt; /* a prompt leaves room for its output */
    if (json_array_size(msgs) > (size_t)max_turns) {
        *p = LORAD_PROBLEM_WRONG_TYPE;
        return lorad_error_set(err, -EINVAL, where, "\"%s\" has more than %d turns", where, max_turns);
    }
    size_t i;
    const json_t *m;
    bool assistant = false, trainable = false;
    json_array_foreach((json_t *)msgs, i, m) {
        char param[96];
        snprintf(param, sizeof param, "%s[%zu]", where, i);
        if (!json_is_object(m)) return bad(p, LORAD_PROBLEM_WRONG_TYPE, err, param, "%s must be an object", param);
        static const char *const allowed[] = {"role", "content", "weight", "name", NULL};
        static const char *const allowed_prompt[] = {"role", "content", "name", NULL};
        char prefix[96];
        snprintf(prefix, sizeof prefix, "%s[%zu].", where, i);
        int rc = check_keys(m, prompt ? allowed_prompt : allowed, prefix, p, err);
        if (rc < 0) return rc;
        const json_t *role = json_object_get(m, "role"), *content = json_object_get(m, "content");
        if (!json_is_string(role)) {
            snprintf(param, sizeof param, "%s[%zu].role", where, i);
            return bad(p, LORAD_PROBLEM_WRONG_TYPE, err, param, "%s must be a string", param);
        }
        if (!json_is_string(content)) {
            snprintf(param, sizeof param, "%s[%zu].content", where, i);
            return bad(p, LORAD_PROBLEM_WRONG_TYPE, err, param, "%s must be a string", param);
        }
        const char *rs = json_string_value(role);
        enum lorad_role rl;
        if (strcmp(rs, "system") == 0) rl = LORAD_ROLE_SYSTEM;
        else if (strcmp(rs, "user") == 0) rl = LORAD_ROLE_USER;
        else if (strcmp(rs, "assistant") == 0) rl = LORAD_ROLE_ASSISTANT;
        else {
            snprintf(param, sizeof param, "%s[%zu].role", where, i);
            *p = LORAD_PROBLEM_UNKNOWN_ROLE;
            return lorad_error_set(err, -EINVAL, param, "%s: unknown role \"%.64s\" (use system, user or assistant)",
                                   param, rs);
        }
        bool train = rl == LORAD_ROLE_ASSISTANT && !prompt;
        const json_t *w = json_object_get(m, "weight");
        if (w && !json_is_null(w)) {
            snprintf(param, sizeof param, "%s[%zu].weight", where, i);
            if (!json_is_integer(w) || (json_integer_value(w) != 0 && json_integer_value(w) != 1))
                return bad(p, LORAD_PROBLEM_WRONG_TYPE, err, param, "%s must be 0 or 1", param);
            if (rl != LORAD_ROLE_ASSISTANT)
                return bad(p, LORAD_PROBLEM_WRONG_TYPE, err, param, "%s is only allowed on assistant turns", param);
            train = json_integer_value(w) == 1;
        }
        assistant |= rl == LORAD_ROLE_ASSISTANT;
        trainable |= train && json_string_length(content) > 0;
        add_turn(r, rl, content, train);
    }
    *ret_assistant = assistant;
    *ret_trainable = trainable;
    return 0;
}

static int parse_messages(struct lorad_record *r, const json_t *msgs, enum lorad_dataset_problem *p,
                          struct lorad_error *err) {
    bool assistant, trainable;
    int rc = parse_turns(r, msgs, "messages", false, p, err, &assistant, &trainable);
    if (rc < 0) return rc;
    if (!assistant) return bad(p, LORAD_PROBLEM_NO_ASSISTANT, err, "messages", "%s has no assistant turn", "messages");
    if (!trainable)
        return bad(p, LORAD_PROBLEM_EMPTY, err, "messages", "%s: every assistant turn is empty or has weight 0",
                   "messages");
    return 0;
}

/* One output of a preference record: [{"role": "assistant", "content": "..."}], exactly one
 * message, as OpenAI's format has it. */
static int parse_output(struct lorad_turn *ret, const json_t *root, const char *key, enum lorad_dataset_problem *p,
                        struct lorad_error *err) {
    const json_t *v = json_object_get(root, key);
    if (!v) return bad(p, LORAD_PROBLEM_WRONG_TYPE, err, key, "missing key \"%s\"", key);
    if (!json_is_array(v) || json_array_size(v) != 1)
        return bad(p, LORAD_PROBLEM_WRONG_TYPE, err, key,
                   "\"%s\" must be an array of one message {\"role\": \"assistant\", \"content\": ...}", key);
    const json_t *m = json_array_get(v, 0);
    char param[64];
    snprintf(param, sizeof param, "%s[0]", key);
    if (!json_is_object(m)) return bad(p, LORAD_PROBLEM_WRONG_TYPE, err, param, "%s must be an object", param);
    static const char *const allowed[] = {"role", "content", NULL};
    char prefix[64];
    snprintf(prefix, sizeof prefix, "%s[0].", key);
    int rc = check_keys(m, allowed, prefix, p, err);
    if (rc < 0) return rc;
    const json_t *role = json_object_get(m, "role"), *content = json_object_get(m, "content");
    if (!json_is_string(role) || strcmp(json_string_value(role), "assistant") != 0) {
        snprintf(param, sizeof param, "%s[0].role", key);
        *p = json_is_string(role) ? LORAD_PROBLEM_UNKNOWN_ROLE : LORAD_PROBLEM_WRONG_TYPE;
        return lorad_error_set(err, -EINVAL, param, "%s must be \"assistant\"", param);
    }
    snprintf(param, sizeof param, "%s[0].content", key);
    if (!json_is_string(content)) return bad(p, LORAD_PROBLEM_WRONG_TYPE, err, param, "%s must be a string", param);
    if (json_string_length(content) == 0) return bad(p, LORAD_PROBLEM_EMPTY, err, param, "%s is empty", param);
    *ret = (struct lorad_turn){LORAD_ROLE_ASSISTANT, json_string_value(content), json_string_length(content), true};
    return 0;
}

/* {"input": {"messages", "tools"?, "parallel_tool_calls"?}, "preferred_output",
 * "non_preferred_output"}. The prompt must end with a user turn (the outputs answer it). Tool
 * definitions would have to be rendered into the prompt, which no template here does, so only an
 * empty list is accepted rather than silently dropped. */
static int parse_preference(struct lorad_record *r, const json_t *root, enum lorad_dataset_problem *p,
                            struct lorad_error *err) {
    static const char *const allowed[] = {"input", "preferred_output", "non_preferred_output", NULL};
    static const char *const allowed_input[] = {"messages", "tools", "parallel_tool_calls", NULL};
    int rc = check_keys(root, allowed, "", p, err);
    if (rc < 0) return rc;
    const json_t *input = json_object_get(root, "input");
    if (!json_is_object(input))
        return bad(p, LORAD_PROBLEM_WRONG_TYPE, err, "input", "\"%s\" must be an object {\"messages\": [...]}",
                   "input");
    if ((rc = check_keys(input, allowed_input, "input.", p, err)) < 0) return rc;
    const json_t *tools = json_object_get(input, "tools");
    if (tools && !json_is_null(tools) && !(json_is_array(tools) && json_array_size(tools) == 0))
        return bad(p, LORAD_PROBLEM_WRONG_TYPE, err, "input.tools",
                   "%s: tool definitions are not supported (no chat template here renders them); use [] or leave it out",
                   "input.tools");
    const json_t *ptc = json_object_get(input, "parallel_tool_calls");
    if (ptc && !json_is_null(ptc) && !json_is_boolean(ptc))
        return bad(p, LORAD_PROBLEM_WRONG_TYPE, err, "input.parallel_tool_calls", "%s must be true or false",
                   "input.parallel_tool_calls");
    const json_t *msgs = json_object_get(input, "messages");
    if (!msgs) return bad(p, LORAD_PROBLEM_WRONG_TYPE, err, "input.messages", "missing key \"%s\"", "input.messages");
    bool assistant, trainable;
    if ((rc = parse_turns(r, msgs, "input.messages", true, p, err, &assistant, &trainable)) < 0) return rc;
    if (r->turns[r->n_turns - 1].role != LORAD_ROLE_USER)
        return bad(p, LORAD_PROBLEM_WRONG_TYPE, err, "input.messages",
                   "%s must end with a user turn (the outputs answer it)", "input.messages");
    if ((rc = parse_output(&r->outputs[0], root, "preferred_output", p, err)) < 0 ||
        (rc = parse_output(&r->outputs[1], root, "non_preferred_output", p, err)) < 0)
        return rc;
    if (r->outputs[0].len == r->outputs[1].len && memcmp(r->outputs[0].text, r->outputs[1].text, r->outputs[0].len) == 0)
        return bad(p, LORAD_PROBLEM_EMPTY, err, "non_preferred_output",
                   "%s is the same as preferred_output: the pair teaches nothing", "non_preferred_output");
    r->n_prompt_turns = r->n_turns;
    lorad_record_select_output(r, 0);
    return 0;
}

void lorad_record_select_output(struct lorad_record *rec, int which) {
    assert(rec->format == LORAD_DATA_PREFERENCE && (which == 0 || which == 1));
    assert(rec->n_prompt_turns < LORAD_DATASET_MAX_TURNS);
    rec->turns[rec->n_prompt_turns] = rec->outputs[which];
    rec->n_turns = rec->n_prompt_turns + 1;
}

/* {"input_ids": [ids], "labels": [ids or -100]?}: labels, when given, are HF's (the same length,
 * -100 masks a position from the loss); the shift to next-token targets happens later. */
static int parse_token_ids(struct lorad_record *r, const json_t *root, enum lorad_dataset_problem *p,
                           struct lorad_error *err) {
    const json_t *ids = json_object_get(root, "input_ids"), *labels = json_object_get(root, "labels");
    if (!json_is_array(ids)) return bad(p, LORAD_PROBLEM_WRONG_TYPE, err, "input_ids", "%s", "\"input_ids\" must be an array of token ids");
    if (json_array_size(ids) == 0) return bad(p, LORAD_PROBLEM_EMPTY, err, "input_ids", "%s", "\"input_ids\" is empty");
    if (labels && (!json_is_array(labels) || json_array_size(labels) != json_array_size(ids)))
        return bad(p, LORAD_PROBLEM_WRONG_TYPE, err, "labels", "%s", "\"labels\" must be an array as long as \"input_ids\"");
    for (size_t i = 0; i < json_array_size(ids); i++) {
        const json_t *v = json_array_get(ids, i), *l = labels ? json_array_get(labels, i) : NULL;
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > INT32_MAX)
        {
            *p = LORAD_PROBLEM_WRONG_TYPE;
            return lorad_error_set(err, -EINVAL, "input_ids", "input_ids[%zu] is not a token id", i);
        }
        if (l && (!json_is_integer(l) || (json_integer_value(l) != -100 && json_integer_value(l) != json_integer_value(v))))
        {
            *p = LORAD_PROBLEM_WRONG_TYPE;
            return lorad_error_set(err, -EINVAL, "labels", "labels[%zu] must be -100 or equal input_ids[%zu]", i, i);
        }
    }
    r->input_ids = ids;
    r->labels = labels;
    return 0;
}

int lorad_record_parse(const char *line, size_t len, enum lorad_data_format format, struct lorad_record *ret_record,
                       enum lorad_dataset_problem *ret_problem, struct lorad_error *err) {
    enum lorad_dataset_problem p_local;
    enum lorad_dataset_problem *p = ret_problem ? ret_problem : &p_local;
    if (!lorad_utf8_valid(line, len))
        return bad(p, LORAD_PROBLEM_INVALID_UTF8, err, "", "%s", "the line is not valid UTF-8");
    json_error_t jerr;
    json_t *root = json_loadb(line, len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &jerr);
    if (!root) {
        *p = LORAD_PROBLEM_INVALID_JSON;
        return lorad_error_set(err, -EINVAL, "", "invalid JSON at column %d: %s", jerr.column, jerr.text);
    }
    struct lorad_record *r = calloc(1, sizeof *r);
    if (!r) {
        json_decref(root);
        return -ENOMEM;
    }
    r->root = root;
    int rc = 0;
    if (!json_is_object(root)) {
        rc = bad(p, LORAD_PROBLEM_WRONG_TYPE, err, "", "%s", "the line must be a JSON object");
        goto out;
    }
    enum lorad_data_format f = format == LORAD_DATA_AUTO ? detect_format(root) : format;
    r->format = f;
    switch (f) {
    case LORAD_DATA_AUTO:
        rc = bad(p, LORAD_PROBLEM_WRONG_TYPE, err, "", "%s",
                 "no known format: expected \"text\", \"prompt\"/\"completion\", \"instruction\"/\"output\", "
                 "\"messages\", \"input_ids\" or \"input\"/\"preferred_output\"/\"non_preferred_output\"");
        break;
    case LORAD_DATA_TEXT: {
        static const char *const allowed[] = {"text", NULL};
        const json_t *t = string_field(root, "text", true, p, err, &rc);
        if (rc == 0) rc = check_keys(root, allowed, "", p, err);
        if (rc == 0 && json_string_length(t) == 0) rc = bad(p, LORAD_PROBLEM_EMPTY, err, "text", "\"%s\" is empty", "text");
        if (rc == 0) add_turn(r, LORAD_ROLE_TEXT, t, true);
        break;
    }
    case LORAD_DATA_PROMPT_COMPLETION: {
        static const char *const allowed[] = {"prompt", "completion", NULL};
        const json_t *pr = string_field(root, "prompt", true, p, err, &rc);
        const json_t *co = rc == 0 ? string_field(root, "completion", true, p, err, &rc) : NULL;
        if (rc == 0) rc = check_keys(root, allowed, "", p, err);
        if (rc == 0 && json_string_length(co) == 0)
            rc = bad(p, LORAD_PROBLEM_EMPTY, err, "completion", "\"%s\" is empty", "completion");
        if (rc == 0) {
            add_turn(r, LORAD_ROLE_USER, pr, false);
            add_turn(r, LORAD_ROLE_ASSISTANT, co, true);
        }
        break;
    }
    case LORAD_DATA_ALPACA: {
        static const char *const allowed[] = {"instruction", "input", "output", NULL};
        const json_t *in = string_field(root, "instruction", true, p, err, &rc);
        const json_t *ip = rc == 0 ? string_field(root, "input", false, p, err, &rc) : NULL;
        const json_t *out = rc == 0 ? string_field(root, "output", true, p, err, &rc) : NULL;
        if (rc == 0) rc = check_keys(root, allowed, "", p, err);
        if (rc == 0 && json_string_length(out) == 0)
            rc = bad(p, LORAD_PROBLEM_EMPTY, err, "output", "\"%s\" is empty", "output");
        if (rc == 0) {
            r->instruction = json_string_value(in);
            r->instruction_len = json_string_length(in);
            r->input = ip ? json_string_value(ip) : "";
            r->input_len = ip ? json_string_length(ip) : 0;
            add_turn(r, LORAD_ROLE_ASSISTANT, out, true);
        }
        break;
    }
    case LORAD_DATA_TOKENS: {
        static const char *const allowed[] = {"input_ids", "labels", NULL};
        rc = check_keys(root, allowed, "", p, err);
        if (rc == 0) rc = parse_token_ids(r, root, p, err);
        break;
    }
    case LORAD_DATA_MESSAGES: {
        static const char *const allowed[] = {"messages", NULL};
        rc = check_keys(root, allowed, "", p, err);
        if (rc == 0) rc = parse_messages(r, json_object_get(root, "messages"), p, err);
        break;
    }
    case LORAD_DATA_PREFERENCE: rc = parse_preference(r, root, p, err); break;
    }
out:
    if (rc < 0) {
        json_decref(root);
        free(r);
        return rc;
    }
    *ret_record = *r;
    free(r);
    return 0;
}

void lorad_record_clear(struct lorad_record *rec) {
    json_decref(rec->root);
    rec->root = NULL;
    rec->n_turns = 0;
}

/* ---- line reader ------------------------------------------------------------------------ */

struct lorad_line_reader {
    FILE *f;
    char *buf;
    size_t cap, max_line;
    int64_t lineno;
    int64_t offset, next_offset;
};

int lorad_line_reader_open(struct lorad_line_reader **ret, const char *path, size_t max_line, struct lorad_error *err) {
    struct lorad_line_reader *r = calloc(1, sizeof *r);
    if (!r) return -ENOMEM;
    r->f = fopen(path, "rbe");
    if (!r->f) {
        int e = errno;
        free(r);
        return lorad_error_set(err, -e, "", "%s: %s", path, strerror(e));
    }
    r->max_line = max_line ? max_line : LORAD_DATASET_DEFAULT_MAX_LINE;
    r->cap = 4096;
    r->buf = malloc(r->cap);
    if (!r->buf) {
        lorad_line_reader_free(r);
        return -ENOMEM;
    }
    *ret = r;
    return 0;
}

int lorad_line_reader_next(struct lorad_line_reader *r, const char **ret_line, size_t *ret_len, int64_t *ret_lineno,
                           bool *ret_too_long) {
    size_t len = 0;
    bool too_long = false, any = false;
    int c;
    r->offset = r->next_offset;
    while ((c = getc_unlocked(r->f)) != EOF) {
        any = true;
        r->next_offset++;
        if (c == '\n') break;
        if (too_long) continue;
        if (len + 1 > r->max_line) {
            too_long = true;
            continue;
        }
        if (len + 1 >= r->cap) {
            size_t cap = r->cap * 2 > r->max_line + 1 ? r->max_line + 1 : r->cap * 2;
            char *b = realloc(r->buf, cap);
            if (!b) return -ENOMEM;
            r->buf = b;
            r->cap = cap;
        }
        r->buf[len++] = (char)c;
    }
    if (ferror(r->f)) return -EIO;
    if (!any) return 0;
    if (len > 0 && r->buf[len - 1] == '\r') len--;
    r->buf[len] = '\0';
    r->lineno++;
    *ret_line = r->buf;
    *ret_len = too_long ? 0 : len;
    *ret_lineno = r->lineno;
    *ret_too_long = too_long;
    return 1;
}

int lorad_line_reader_rewind(struct lorad_line_reader *r) {
    return lorad_line_reader_seek(r, 0, 0);
}

int64_t lorad_line_reader_offset(const struct lorad_line_reader *r) {
    return r->offset;
}

int lorad_line_reader_seek(struct lorad_line_reader *r, int64_t offset, int64_t lineno) {
    if (fseeko(r->f, offset, SEEK_SET) < 0) return -errno;
    r->offset = r->next_offset = offset;
    r->lineno = lineno;
    return 0;
}

void lorad_line_reader_free(struct lorad_line_reader *r) {
    if (!r) return;
    if (r->f) fclose(r->f);
    free(r->buf);
    free(r);
}

/* ---- validation ------------------------------------------------------------------------- */

static bool is_blank(const char *s, size_t len) {
    for (size_t i = 0; i < len; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r') return false;
    return true;
}

void lorad_dataset_report_bad(struct lorad_dataset_report *rep, int64_t line, enum lorad_dataset_problem p, const char *reason) {
    rep->n_invalid++;
    rep->counts[p]++;
    if (rep->n_bad < LORAD_DATASET_REPORT_LINES) {
        struct lorad_bad_line *b = &rep->bad[rep->n_bad++];
        b->line = line;
        b->problem = p;
        snprintf(b->reason, sizeof b->reason, "%.239s", reason);
    }
}

int lorad_dataset_validate_file(const char *path, enum lorad_data_format format, size_t max_line,
                                struct lorad_dataset_report *ret_report, struct lorad_error *err) {
    struct lorad_line_reader *rd;
    int r = lorad_line_reader_open(&rd, path, max_line, err);
    if (r < 0) return r;
    struct lorad_dataset_report *rep = calloc(1, sizeof *rep);
    if (!rep) {
        lorad_line_reader_free(rd);
        return -ENOMEM;
    }
    rep->format = format;
    const char *line;
    size_t len;
    int64_t lineno;
    bool too_long;
    while ((r = lorad_line_reader_next(rd, &line, &len, &lineno, &too_long)) == 1) {
        rep->n_lines++;
        if (too_long) {
            char reason[96];
            snprintf(reason, sizeof reason, "line is longer than %zu bytes", rd->max_line);
            lorad_dataset_report_bad(rep, lineno, LORAD_PROBLEM_LINE_TOO_LONG, reason);
            continue;
        }
        rep->bytes += (int64_t)len;
        if (is_blank(line, len)) {
            rep->n_blank++;
            continue;
        }
        struct lorad_record rec;
        enum lorad_dataset_problem p;
        struct lorad_error e = {0};
        if (lorad_record_parse(line, len, rep->format, &rec, &p, &e) < 0) {
            lorad_dataset_report_bad(rep, lineno, p, e.message);
            continue;
        }
        if (rep->format == LORAD_DATA_AUTO) rep->format = rec.format; /* the first good line decides */
        rep->n_records++;
        lorad_record_clear(&rec);
    }
    lorad_line_reader_free(rd);
    if (r < 0) {
        free(rep);
        return lorad_error_set(err, r, "", "%s: read error: %s", path, strerror(-r));
    }
    *ret_report = *rep;
    free(rep);
    return 0;
}

json_t *lorad_dataset_report_json(const struct lorad_dataset_report *rep) {
    json_t *problems = json_object(), *bad_lines = json_array();
    for (int i = 0; problems && i < LORAD_PROBLEM_COUNT; i++)
        json_object_set_new(problems, problem_names[i], json_integer(rep->counts[i]));
    for (int i = 0; bad_lines && i < rep->n_bad; i++)
        json_array_append_new(bad_lines, json_pack("{s:I, s:s, s:s}", "line", (json_int_t)rep->bad[i].line, "problem",
                                                   problem_names[rep->bad[i].problem], "reason", rep->bad[i].reason));
    if (!problems || !bad_lines) {
        json_decref(problems);
        json_decref(bad_lines);
        return NULL;
    }
    return json_pack("{s:s, s:I, s:I, s:I, s:I, s:I, s:o, s:o}", "format", lorad_data_format_name(rep->format),
                     "lines", (json_int_t)rep->n_lines, "records", (json_int_t)rep->n_records, "invalid",
                     (json_int_t)rep->n_invalid, "blank", (json_int_t)rep->n_blank, "bytes", (json_int_t)rep->bytes,
                     "problems", problems, "bad_lines", bad_lines);
}
