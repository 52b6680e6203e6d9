/* The prompt becomes a record whose answer is a one-character placeholder, goes through the same
 * parsing, templating and tokenising as a dataset line (lorad_record_parse, lorad_sample_build),
 * and is cut where the answer's first trained token begins: whatever the template puts before
 * the answer stays, the answer goes. Answers already in the conversation are context, not
 * targets. */
#include "prompt.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dataset.h"

/* The record as one JSON line: {"prompt", "completion"} or {"messages": [..., assistant]}. NULL
 * when out of memory or a string is not UTF-8 (checked before, so the error can name it). */
static char *record_line(const struct lorad_prompt *p) {
    json_t *root;
    if (!p->messages) {
        root = json_pack("{s:s, s:s}", "prompt", p->text, "completion", "x");
    } else {
        json_t *msgs = json_array();
        root = msgs ? json_pack("{s:o}", "messages", msgs) : NULL;
        for (int i = 0; root && i <= p->n_messages; i++) {
            /* Earlier answers get weight 0, so the placeholder is the only trained turn and the cut
             * lands at its start, not at the first answer of a longer conversation. */
            const struct lorad_prompt_message *pm = i < p->n_messages ? &p->messages[i] : NULL;
            json_t *m = !pm ? json_pack("{s:s, s:s}", "role", "assistant", "content", "x")
                        : strcmp(pm->role, "assistant") == 0
                            ? json_pack("{s:s, s:s, s:i}", "role", pm->role, "content", pm->content, "weight", 0)
                            : json_pack("{s:s, s:s}", "role", pm->role, "content", pm->content);
            if (!m || json_array_append_new(msgs, m) < 0) {
                json_decref(root);
                root = NULL;
            }
        }
    }
    char *line = root ? json_dumps(root, JSON_COMPACT) : NULL;
    json_decref(root);
    return line;
}

/* Contract: p's strings are borrowed; the ids are the caller's on success, nothing on failure. */
int lorad_prompt_tokenize(int32_t **ret_ids, int *ret_n, const struct lorad_prompt *p, const struct lorad_encoder *enc,
                          int max_tokens, struct lorad_error *err) {
    bool chat = p->messages != NULL;
    const char *whole = chat ? "messages" : "prompt";
    if (max_tokens < 1) return lorad_error_set(err, -EINVAL, "max_tokens", "max_tokens must be >= 1");
    if (!chat && !p->text) return lorad_error_set(err, -EINVAL, "prompt", "the prompt is missing");
    if (chat && (p->n_messages < 1 || p->n_messages >= LORAD_DATASET_MAX_TURNS))
        return lorad_error_set(err, -EINVAL, "messages", "a conversation holds 1 to %d messages, got %d",
                               LORAD_DATASET_MAX_TURNS - 1, p->n_messages);
    /* json_pack refuses strings that are not UTF-8: checked first so the error names the string */
    if (!chat && !lorad_utf8_valid(p->text, strlen(p->text)))
        return lorad_error_set(err, -EINVAL, "prompt", "the prompt is not valid UTF-8");
    for (int i = 0; chat && i < p->n_messages; i++) {
        const struct lorad_prompt_message *m = &p->messages[i];
        const char *field = !m->role || !lorad_utf8_valid(m->role, strlen(m->role)) ? "role"
                            : !m->content || !lorad_utf8_valid(m->content, strlen(m->content)) ? "content"
                                                                                              : NULL;
        if (field) {
            char param[32];
            snprintf(param, sizeof param, "messages[%d].%s", i, field);
            return lorad_error_set(err, -EINVAL, param, "%s is missing or not valid UTF-8", param);
        }
    }
    char *line = record_line(p);
    if (!line) return lorad_error_set(err, -ENOMEM, whole, "out of memory building the prompt");
    struct lorad_record rec;
    enum lorad_dataset_problem problem;
    int rc = lorad_record_parse(line, strlen(line), chat ? LORAD_DATA_MESSAGES : LORAD_DATA_PROMPT_COMPLETION, &rec,
                                &problem, err);
    if (rc < 0) {
        free(line);
        if (!err->param[0]) snprintf(err->param, sizeof err->param, "%s", whole);
        return rc;
    }
    /* Every byte gives at most one token (byte fallback), plus the template's own tokens. Room for
     * one token more than max_tokens: a prompt that fills it all has no room left for the answer,
     * which is how a prompt that is too long shows. */
    size_t cap_z = strlen(line) + 256;
    int cap = cap_z > (size_t)max_tokens + 1 ? max_tokens + 1 : (int)cap_z;
    struct lorad_sample s = {.tokens = malloc((size_t)cap * sizeof(int32_t)), .train = malloc((size_t)cap)};
    if (!s.tokens || !s.train) rc = lorad_error_set(err, -ENOMEM, "", "out of memory");
    else rc = lorad_sample_build(&s, cap, &rec, chat ? p->tmpl : LORAD_TEMPLATE_NONE, false, enc, cap, &problem, err);
    lorad_record_clear(&rec);
    free(line);
    int n = 0;
    if (rc == -EINVAL && problem == LORAD_PROBLEM_EMPTY) {
        /* the placeholder answer always has a token: only the cap can have cut it off */
        rc = lorad_error_set(err, -E2BIG, whole, "the prompt is longer than %d tokens", max_tokens);
    } else if (rc == 0) {
        while (n < s.n && !s.train[n]) n++;
        int first = p->no_bos && n > 0 && s.tokens[0] == enc->bos_id ? 1 : 0;
        if (n - first > max_tokens)
            rc = lorad_error_set(err, -E2BIG, whole, "the prompt is longer than %d tokens", max_tokens);
        else if (n - first < 1)
            rc = lorad_error_set(err, -EINVAL, whole, "the prompt is empty after tokenising");
        else {
            memmove(s.tokens, s.tokens + first, (size_t)(n - first) * sizeof(int32_t));
            n -= first;
        }
    } else if (strcmp(err->param, "data.template") == 0) {
        snprintf(err->param, sizeof err->param, "%s", "template");
    } else if (!err->param[0]) {
        snprintf(err->param, sizeof err->param, "%s", whole);
    }
    free(s.train);
    if (rc < 0) {
        free(s.tokens);
        return rc;
    }
    *ret_ids = s.tokens;
    *ret_n = n;
    return 0;
}
