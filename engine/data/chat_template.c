#include "chat_template.h"

#include <errno.h>
#include <string.h>

static int push(struct lorad_rendered *r, enum lorad_segment_kind kind, const char *text, size_t len, bool train) {
    if (r->n == LORAD_MAX_SEGMENTS) return -E2BIG;
    if (kind == LORAD_SEGMENT_TEXT && len == 0) return 0;
    r->seg[r->n++] = (struct lorad_segment){kind, text, len, train};
    return 0;
}
#define PUSH_TEXT(r, s, train) push(r, LORAD_SEGMENT_TEXT, s, strlen(s), train)
#define PUSH_SPECIAL(r, s, train) push(r, LORAD_SEGMENT_SPECIAL, s, strlen(s), train)

enum lorad_chat_template lorad_chat_template_auto(bool (*has_special)(void *ctx, const char *piece), void *ctx) {
    if (has_special(ctx, "<|start_header_id|>")) return LORAD_TEMPLATE_LLAMA3;
    if (has_special(ctx, "<|im_start|>")) return LORAD_TEMPLATE_CHATML;
    return LORAD_TEMPLATE_LLAMA2;
}

static const char *role_name(enum lorad_role role) {
    switch (role) {
    case LORAD_ROLE_SYSTEM: return "system";
    case LORAD_ROLE_USER: return "user";
    case LORAD_ROLE_ASSISTANT: return "assistant";
    case LORAD_ROLE_TEXT: return "user";
    }
    return "user";
}

/* Whether a turn's own content is trained. */
static bool content_trained(const struct lorad_turn *t, bool train_on_input) {
    if (t->role == LORAD_ROLE_ASSISTANT) return t->trainable;
    return train_on_input || t->trainable;
}

static int render_llama3(struct lorad_rendered *r, const struct lorad_record *rec, bool tin) {
    int e = PUSH_SPECIAL(r, "<|begin_of_text|>", false);
    for (int i = 0; e == 0 && i < rec->n_turns; i++) {
        const struct lorad_turn *t = &rec->turns[i];
        bool train = content_trained(t, tin);
        bool header_train = tin && !(t->role == LORAD_ROLE_ASSISTANT && !t->trainable);
        e = PUSH_SPECIAL(r, "<|start_header_id|>", header_train);
        if (!e) e = PUSH_TEXT(r, role_name(t->role), header_train);
        if (!e) e = PUSH_SPECIAL(r, "<|end_header_id|>", header_train);
        if (!e) e = PUSH_TEXT(r, "\n\n", header_train);
        if (!e) e = push(r, LORAD_SEGMENT_TEXT, t->text, t->len, train);
        if (!e) e = PUSH_SPECIAL(r, "<|eot_id|>", train);
    }
    return e;
}

static int render_chatml(struct lorad_rendered *r, const struct lorad_record *rec, bool tin) {
    int e = 0;
    for (int i = 0; e == 0 && i < rec->n_turns; i++) {
        const struct lorad_turn *t = &rec->turns[i];
        bool train = content_trained(t, tin);
        bool header_train = tin && !(t->role == LORAD_ROLE_ASSISTANT && !t->trainable);
        e = PUSH_SPECIAL(r, "<|im_start|>", header_train);
        if (!e) e = PUSH_TEXT(r, role_name(t->role), header_train);
        if (!e) e = PUSH_TEXT(r, "\n", header_train);
        if (!e) e = push(r, LORAD_SEGMENT_TEXT, t->text, t->len, train);
        if (!e) e = PUSH_SPECIAL(r, "<|im_end|>", train);
        if (!e) e = PUSH_TEXT(r, "\n", header_train && train);
    }
    return e;
}

/* Llama 2 chat: each user turn opens "[INST] ", a leading system prompt is wrapped in <<SYS>> inside
 * the first user turn, and each assistant answer is " {answer} " closed by EOS; the next exchange
 * starts with BOS again. */
static int render_llama2(struct lorad_rendered *r, const struct lorad_record *rec, bool tin) {
    int e = 0, i = 0;
    const struct lorad_turn *system = NULL;
    if (rec->n_turns > 0 && rec->turns[0].role == LORAD_ROLE_SYSTEM) system = &rec->turns[i++];
    bool open_inst = false;
    for (; e == 0 && i < rec->n_turns; i++) {
        const struct lorad_turn *t = &rec->turns[i];
        bool train = content_trained(t, tin);
        if (t->role != LORAD_ROLE_ASSISTANT) {
            if (!open_inst) {
                e = push(r, LORAD_SEGMENT_BOS, NULL, 0, false);
                if (!e) e = PUSH_TEXT(r, "[INST] ", tin);
                if (!e && system) {
                    e = PUSH_TEXT(r, "<<SYS>>\n", tin);
                    if (!e) e = push(r, LORAD_SEGMENT_TEXT, system->text, system->len, tin);
                    if (!e) e = PUSH_TEXT(r, "\n<</SYS>>\n\n", tin);
                    system = NULL;
                }
                open_inst = true;
            } else {
                e = PUSH_TEXT(r, "\n\n", tin); /* consecutive user/system turns share one [INST] */
            }
            if (!e) e = push(r, LORAD_SEGMENT_TEXT, t->text, t->len, train);
        } else {
            if (!open_inst) { /* an assistant turn with no prompt before it */
                e = push(r, LORAD_SEGMENT_BOS, NULL, 0, false);
                if (!e) e = PUSH_TEXT(r, "[INST] ", tin);
            }
            if (!e) e = PUSH_TEXT(r, " [/INST] ", tin);
            if (!e) e = push(r, LORAD_SEGMENT_TEXT, t->text, t->len, train);
            if (!e) e = PUSH_TEXT(r, " ", train);
            if (!e) e = push(r, LORAD_SEGMENT_EOS, NULL, 0, train);
            open_inst = false;
        }
    }
    if (!e && open_inst) e = PUSH_TEXT(r, " [/INST]", tin);
    return e;
}

static int render_plain(struct lorad_rendered *r, const struct lorad_record *rec, bool tin) {
    int e = push(r, LORAD_SEGMENT_BOS, NULL, 0, false);
    bool last_trained = false;
    for (int i = 0; e == 0 && i < rec->n_turns; i++) {
        const struct lorad_turn *t = &rec->turns[i];
        last_trained = content_trained(t, tin);
        e = push(r, LORAD_SEGMENT_TEXT, t->text, t->len, last_trained);
    }
    if (!e) e = push(r, LORAD_SEGMENT_EOS, NULL, 0, last_trained);
    return e;
}

static const char alpaca_with_input[] =
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n### Instruction:\n";
static const char alpaca_without_input[] =
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n";

static int render_alpaca(struct lorad_rendered *r, const struct lorad_record *rec, bool tin) {
    bool with_input = rec->input_len > 0;
    int e = push(r, LORAD_SEGMENT_BOS, NULL, 0, false);
    if (!e) e = PUSH_TEXT(r, with_input ? alpaca_with_input : alpaca_without_input, tin);
    if (!e) e = push(r, LORAD_SEGMENT_TEXT, rec->instruction, rec->instruction_len, tin);
    if (!e && with_input) {
        e = PUSH_TEXT(r, "\n\n### Input:\n", tin);
        if (!e) e = push(r, LORAD_SEGMENT_TEXT, rec->input, rec->input_len, tin);
    }
    if (!e) e = PUSH_TEXT(r, "\n\n### Response:\n", tin);
    const struct lorad_turn *out = &rec->turns[0];
    if (!e) e = push(r, LORAD_SEGMENT_TEXT, out->text, out->len, true);
    if (!e) e = push(r, LORAD_SEGMENT_EOS, NULL, 0, true);
    return e;
}

int lorad_chat_render(struct lorad_rendered *ret, const struct lorad_record *rec, enum lorad_chat_template tmpl,
                      bool train_on_input) {
    ret->n = 0;
    switch (rec->format) {
    case LORAD_DATA_ALPACA: return render_alpaca(ret, rec, train_on_input);
    case LORAD_DATA_TEXT:
    case LORAD_DATA_PROMPT_COMPLETION: return render_plain(ret, rec, train_on_input);
    case LORAD_DATA_TOKENS: return -EINVAL; /* already tokens: nothing to render */
    case LORAD_DATA_MESSAGES:
    case LORAD_DATA_PREFERENCE: /* its prompt and the selected output, as a messages record */
    case LORAD_DATA_AUTO: break;
    }
    switch (tmpl) {
    case LORAD_TEMPLATE_LLAMA3: return render_llama3(ret, rec, train_on_input);
    case LORAD_TEMPLATE_CHATML: return render_chatml(ret, rec, train_on_input);
    case LORAD_TEMPLATE_NONE: return render_plain(ret, rec, train_on_input);
    case LORAD_TEMPLATE_LLAMA2:
    case LORAD_TEMPLATE_AUTO: return render_llama2(ret, rec, train_on_input);
    }
    return -EINVAL;
}
