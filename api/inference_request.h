/* The bodies of POST /v1/completions and POST /v1/chat/completions, checked and turned into the
 * engine's struct lorad_infer_request (engine/infer/infer_service.h).
 *
 * OpenAI's fields are accepted where lorad does what they ask, refused by name where it does not
 * (echo, penalties other than 0, tools, JSON response formats, ...), and any other field is refused
 * by name too: a client that asks for something is never silently given something else. Nothing
 * here touches the model: which model a name means, and whether the prompt fits its context, are
 * the handler's and the engine's business. */
#pragma once
#include <jansson.h>
#include <stdbool.h>

#include "error.h"
#include "infer_service.h"

#define LORAD_API_INFER_MAX_PROMPTS 64    /* strings in a completions prompt list */
#define LORAD_API_INFER_MODEL_MAX 512     /* bytes of a model name, NUL included */
#define LORAD_API_INFER_MAX_COMPLETION_LOGPROBS 5 /* legacy completions' logprobs, as OpenAI */
#define LORAD_API_INFER_DEFAULT_MAX_TOKENS 16     /* completions' max_tokens default, as OpenAI */

enum lorad_api_infer_kind {
    LORAD_API_INFER_COMPLETION, /* /v1/completions: prompt */
    LORAD_API_INFER_CHAT,       /* /v1/chat/completions: messages */
};

struct lorad_api_infer_params {
    enum lorad_api_infer_kind kind;
    const char *model;             /* as requested; borrowed from the body */
    /* Every field of the engine's request but base_path, adapter_path and tmpl (the model's), and
     * for completions prompt (one of prompts[]). For chat, messages point into messages_buf. */
    struct lorad_infer_request req;
    const char *prompts[LORAD_API_INFER_MAX_PROMPTS]; /* completions: each gets n choices; borrowed */
    int n_prompts;                 /* completions: 1..64; chat: 1 */
    bool has_seed;                 /* false: no seed was given, the caller picks one */
    bool stream;
    bool include_usage;            /* stream_options.include_usage */
    /* Owned: the chat messages, and the text of those whose content came as parts. */
    struct lorad_prompt_message *messages_buf;
    char **texts;
    int n_texts;
};

/* Checks body (borrowed; the result borrows its strings, so it must outlive *ret) as a request of
 * kind and fills *ret, which the caller releases with lorad_api_infer_params_clear(). Returns 0, or
 * with err naming the field in the client's spelling ("temperature", "stop", "messages[2].role",
 * "stream_options.include_usage", ...):
 *   -EINVAL      a missing, mistyped or out-of-range value, or a combination OpenAI refuses too
 *                (max_tokens with max_completion_tokens, top_logprobs without logprobs,
 *                stream_options without stream);
 *   -EOPNOTSUPP  a field lorad does not know or an OpenAI feature it does not provide (echo,
 *                non-zero penalties, best_of other than n, suffix, logit_bias, tools, ...);
 *   -ENOMEM.
 * *ret is written only on success. */
int lorad_api_infer_parse(const json_t *body, enum lorad_api_infer_kind kind, struct lorad_api_infer_params *ret,
                          struct lorad_error *err);

/* Frees what *p owns and zeroes it. Safe on a zeroed struct and twice. */
void lorad_api_infer_params_clear(struct lorad_api_infer_params *p);
