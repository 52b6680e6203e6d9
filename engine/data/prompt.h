/* A prompt tokenised exactly as training tokenises a record, so an adapter sees at inference the
 * token layout it was trained on: a prompt/completion record's prompt (BOS + text, special-token
 * strings not parsed), or a chat record's conversation up to where the assistant's answer starts
 * (the chat template's header for that answer included). Used by `lorad generate` and by the
 * inference routes. */
#pragma once
#include <stdbool.h>
#include <stdint.h>

#include "chat_template.h"
#include "error.h"
#include "samples.h"

struct lorad_prompt_message {
    const char *role;    /* "system", "user" or "assistant" */
    const char *content; /* UTF-8 */
};

struct lorad_prompt {
    const char *text;                            /* the prompt/completion form; NULL for chat */
    const struct lorad_prompt_message *messages; /* the chat form: the conversation so far */
    int n_messages;                              /* 1..LORAD_DATASET_MAX_TURNS - 1 */
    enum lorad_chat_template tmpl;               /* chat form: not AUTO (resolve it first) */
    bool no_bos;                                 /* drop the BOS the record's layout starts with */
};

/* Tokenises p with enc into a malloc'd array of at most max_tokens ids (the caller frees it).
 * Returns 0 with *ret_ids and *ret_n >= 1 written, or -errno with err naming the field: "prompt",
 * "messages[i].role" / "messages[i].content" (as a dataset line names them), "template" when the
 * template cannot render the conversation (a special token the tokenizer lacks), -E2BIG when the
 * prompt needs more than max_tokens ids. */
int lorad_prompt_tokenize(int32_t **ret_ids, int *ret_n, const struct lorad_prompt *p, const struct lorad_encoder *enc,
                          int max_tokens, struct lorad_error *err);
