/* Re-decoding the whole sequence costs O(n) per token, which is small beside a forward pass, and
 * it is the only way to get the context-dependent pieces right without per-tokenizer rules. */
#include "tok_stream.h"

#include <assert.h>
#include <errno.h>
#include <stdlib.h>

/* Length of the longest prefix of s[0..n) that does not end inside a UTF-8 sequence. */
static size_t complete_utf8(const char *s, size_t n) {
    size_t i = n, back = 0;
    while (i > 0 && back < 4 && ((unsigned char)s[i - 1] & 0xC0) == 0x80) i--, back++;
    if (i == 0) return n;
    unsigned char lead = (unsigned char)s[i - 1];
    size_t want = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC0 ? 2 : 1;
    return back + 1 < want && lead >= 0xC0 ? i - 1 : n;
}

/* Contract: tok is borrowed and must outlive ts; ts owns its scratch. */
int lorad_text_stream_init(struct lorad_text_stream *ts, const struct lorad_tokenizer *tok, int cap) {
    *ts = (struct lorad_text_stream){.tok = tok, .cap = cap};
    ts->known = malloc((size_t)(cap > 0 ? cap : 1) * sizeof *ts->known);
    return ts->known ? 0 : -ENOMEM;
}

void lorad_text_stream_clear(struct lorad_text_stream *ts) {
    free(ts->known);
    free(ts->text);
    *ts = (struct lorad_text_stream){0};
}

int lorad_text_stream_next(struct lorad_text_stream *ts, const int32_t *seq, int n, bool final, const char **ret_new,
                           size_t *ret_len, struct lorad_error *err) {
    assert(n <= ts->cap);
    int vocab = lorad_tokenizer_vocab_size(ts->tok), m = 0;
    for (int i = 0; i < n; i++)
        if (seq[i] >= 0 && seq[i] < vocab) ts->known[m++] = seq[i];
    char *text;
    size_t len;
    int rc = lorad_tokenizer_decode(ts->tok, ts->known, (size_t)m, &text, &len, err);
    if (rc < 0) return rc;
    free(ts->text);
    ts->text = text;
    ts->text_len = len;
    size_t upto = final ? len : complete_utf8(text, len), from = ts->emitted;
    if (upto > ts->emitted) ts->emitted = upto;
    *ret_new = text + (from < upto ? from : upto);
    *ret_len = upto > from ? upto - from : 0;
    return 0;
}
