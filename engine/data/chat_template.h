/* Chat templates: turn a dataset record into an ordered list of segments, each either text or a
 * special token, and each marked trained or not. Tokenising the segments one by one and
 * concatenating (as torchtune does per message) gives the token ids and the loss mask.
 *
 * Templates (the formats their model cards document):
 *   llama2  <s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST] {assistant} </s><s>[INST] ...
 *   llama3  <|begin_of_text|><|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>...
 *   chatml  <|im_start|>{role}\n{content}<|im_end|>\n...
 *   none    <s>{content}{content}...</s>
 * Alpaca records use the Alpaca prompt; text and prompt/completion records use none. A preference
 * record renders as a messages record of its prompt and its selected output: the prompt up to the
 * assistant header (the generation prompt), then the output and the turn's end, trained.
 * Trained: assistant content and the end-of-turn token after it; with train_on_input, every
 * segment except the leading BOS. An assistant turn with weight 0 is never trained. */
#pragma once
#include <stdbool.h>
#include <stddef.h>

#include "dataset.h"
#include "data_format.h"

enum lorad_segment_kind {
    LORAD_SEGMENT_TEXT = 0, /* tokenise text without adding BOS/EOS or parsing special tokens */
    LORAD_SEGMENT_BOS,      /* the tokenizer's BOS id */
    LORAD_SEGMENT_EOS,      /* the tokenizer's EOS id */
    LORAD_SEGMENT_SPECIAL,  /* one special token named by text, e.g. "<|eot_id|>" */
};

struct lorad_segment {
    enum lorad_segment_kind kind;
    const char *text; /* TEXT: borrowed from the record or a static template string */
    size_t len;
    bool trainable;
};

#define LORAD_MAX_SEGMENTS (8 * LORAD_DATASET_MAX_TURNS + 16)

struct lorad_rendered {
    int n;
    struct lorad_segment seg[LORAD_MAX_SEGMENTS];
};

/* Picks a template for `auto` from the special tokens a tokenizer knows: llama3 when it has
 * "<|start_header_id|>", chatml when it has "<|im_start|>", else llama2. has_special(ctx, piece)
 * answers whether piece is a special token. */
enum lorad_chat_template lorad_chat_template_auto(bool (*has_special)(void *ctx, const char *piece), void *ctx);

/* Renders rec with template tmpl (not AUTO) into ret (caller-allocated; it is large, so heap).
 * Segments borrow the record's strings: keep rec alive while using ret. Returns 0, or -E2BIG when
 * the record needs more than LORAD_MAX_SEGMENTS segments. */
int lorad_chat_render(struct lorad_rendered *ret, const struct lorad_record *rec, enum lorad_chat_template tmpl,
                      bool train_on_input);
