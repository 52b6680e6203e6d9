/* Decoding a growing sequence as a stream of text: each call decodes the whole sequence so far
 * and hands out only the bytes that are new, so pieces that only make sense in context
 * (SentencePiece's leading space, the bytes of one character split over tokens) come out right.
 * An incomplete UTF-8 character at the end is held back until it completes or the stream ends.
 * Ids the tokenizer does not know (a model whose embedding rows outnumber its vocabulary) give
 * no text. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "tokenizer.h"

struct lorad_text_stream {
    const struct lorad_tokenizer *tok; /* borrowed */
    int32_t *known;                    /* (cap) scratch: the ids the tokenizer can decode */
    int cap;
    size_t emitted;                    /* bytes of the decoded sequence already handed out */
    char *text;                        /* the last decode; owned */
    size_t text_len;                   /* its bytes */
};

/* A stream over sequences of at most cap ids. Returns 0 or -ENOMEM. */
int lorad_text_stream_init(struct lorad_text_stream *ts, const struct lorad_tokenizer *tok, int cap);
void lorad_text_stream_clear(struct lorad_text_stream *ts);

/* Decodes seq[0..n) (n <= cap) and points *ret_new at the bytes after those already handed out
 * (*ret_len of them, possibly 0; valid until the next call). With !final an incomplete character
 * at the end is held back. Returns 0 or -errno with err. */
int lorad_text_stream_next(struct lorad_text_stream *ts, const int32_t *seq, int n, bool final, const char **ret_new,
                           size_t *ret_len, struct lorad_error *err);
