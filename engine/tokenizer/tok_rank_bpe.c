/* Rank-based BPE as HF tokenizers does it: the adjacent pair with the lowest merge rank merges
 * first (leftmost on ties), driven by a heap so long words stay O(n log n); and the two segment
 * encoders built on it: ▁-text (SentencePiece-style) with byte fallback, and byte-level (GPT-2
 * characters for bytes, words from the regex pre-tokenizer of tok_pretok.c). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "tok_internal.h"

struct rsym {
    int32_t id, prev, next;
};

struct rcand {
    int32_t rank, pos, merged;
};

static bool rbetter(const struct rcand *a, const struct rcand *b) {
    return a->rank != b->rank ? a->rank < b->rank : a->pos < b->pos;
}

struct rheap {
    struct rcand *v;
    size_t n, cap;
};

static int rpush(struct rheap *h, struct rcand c) {
    if (h->n == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 64;
        struct rcand *v = realloc(h->v, cap * sizeof *v);
        if (!v) return -ENOMEM;
        h->v = v;
        h->cap = cap;
    }
    size_t i = h->n++;
    while (i > 0 && rbetter(&c, &h->v[(i - 1) / 2])) {
        h->v[i] = h->v[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    h->v[i] = c;
    return 0;
}

static struct rcand rpop(struct rheap *h) {
    struct rcand top = h->v[0], last = h->v[--h->n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= h->n) break;
        if (c + 1 < h->n && rbetter(&h->v[c + 1], &h->v[c])) c++;
        if (!rbetter(&h->v[c], &last)) break;
        h->v[i] = h->v[c];
        i = c;
    }
    if (h->n) h->v[i] = last;
    return top;
}

static int consider(const struct lorad_tokenizer *t, const struct rsym *s, int32_t pos, struct rheap *h) {
    if (pos < 0 || s[pos].next < 0) return 0;
    const struct tok_pair_entry *e = tok_pair_map_get(&t->merges, s[pos].id, s[s[pos].next].id);
    return e ? rpush(h, (struct rcand){e->rank, pos, e->merged}) : 0;
}

int tok_rank_bpe_word(const struct lorad_tokenizer *t, const int32_t *syms, size_t n, struct tok_ids *out) {
    if (n == 0) return 0;
    struct rsym *s = malloc(n * sizeof *s);
    struct rheap h = {0};
    int rc = s ? 0 : -ENOMEM;
    for (size_t i = 0; rc == 0 && i < n; i++)
        s[i] = (struct rsym){syms[i], (int32_t)i - 1, i + 1 < n ? (int32_t)i + 1 : -1};
    for (size_t i = 0; rc == 0 && i + 1 < n; i++) rc = consider(t, s, (int32_t)i, &h);
    while (rc == 0 && h.n) {
        struct rcand c = rpop(&h);
        struct rsym *l = &s[c.pos];
        if (l->id < 0 || l->next < 0) continue;
        const struct tok_pair_entry *e = tok_pair_map_get(&t->merges, l->id, s[l->next].id);
        if (!e || e->merged != c.merged) continue; /* stale: a neighbour changed since */
        struct rsym *r = &s[l->next];
        l->id = c.merged;
        r->id = -1;
        l->next = r->next;
        if (r->next >= 0) s[r->next].prev = c.pos;
        rc = consider(t, s, l->prev, &h);
        if (rc == 0) rc = consider(t, s, c.pos, &h);
    }
    for (int32_t i = 0; rc == 0 && i >= 0; i = s[i].next) rc = tok_ids_push(out, s[i].id);
    free(h.v);
    free(s);
    return rc;
}

static const char kSpace[] = "\xE2\x96\x81";

/* One word (already ▁-escaped): whole-word shortcut, characters (or their bytes), then merges. */
static int encode_word(const struct lorad_tokenizer *t, const char *w, size_t len, struct tok_ids *out) {
    if (t->ignore_merges) {
        int32_t id = tok_str_map_get(t, w, len);
        if (id >= 0) return tok_ids_push(out, id);
    }
    struct tok_ids syms = {0};
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < len;) {
        uint32_t cp;
        size_t l = tok_utf8_decode(w + i, len - i, &cp);
        int32_t id = tok_str_map_get(t, w + i, l);
        if (id >= 0) {
            rc = tok_ids_push(&syms, id);
        } else if (t->byte_fallback) {
            for (size_t k = 0; rc == 0 && k < l; k++) rc = tok_ids_push(&syms, t->byte_ids[(unsigned char)w[i + k]]);
        } else if (t->unk_id >= 0) {
            rc = tok_ids_push(&syms, t->unk_id);
        }
        i += l;
    }
    if (rc == 0) rc = tok_rank_bpe_word(t, syms.v, syms.n, out);
    free(syms.v);
    return rc;
}

int tok_hf_spm_encode(const struct lorad_tokenizer *t, const char *text, size_t len, bool at_start,
                      struct tok_ids *out) {
    if (len == 0) return 0;
    char *buf = malloc(len * 3 + 4);
    if (!buf) return -ENOMEM;
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        if (text[i] == ' ') memcpy(buf + n, kSpace, 3), n += 3;
        else buf[n++] = text[i];
    }
    bool starts_ws = n >= 3 && memcmp(buf, kSpace, 3) == 0;
    bool prepend = t->prepend == TOK_PREPEND_ALWAYS || (t->prepend == TOK_PREPEND_FIRST && at_start);
    if (prepend && (t->prepend_unconditional || !starts_ws)) {
        memmove(buf + 3, buf, n);
        memcpy(buf, kSpace, 3);
        n += 3;
    }
    int rc = 0;
    if (!t->metaspace_split) {
        rc = encode_word(t, buf, n, out);
    } else {
        size_t start = 0;
        for (size_t i = 1; rc == 0 && i <= n; i++) {
            if (i == n || (n - i >= 3 && memcmp(buf + i, kSpace, 3) == 0)) {
                rc = encode_word(t, buf + start, i - start, out);
                start = i;
            }
        }
    }
    free(buf);
    return rc;
}

struct byte_level_ctx {
    const struct lorad_tokenizer *t;
    struct tok_ids *out;
    struct tok_ids syms;
    char *mapped; /* the pre-token in GPT-2's printable characters, 2 bytes a byte at most */
};

/* One pre-token: its bytes become the printable characters of the vocabulary, then the whole
 * word if ignore_merges finds it, else byte symbols merged by rank. A byte without a piece
 * becomes the unknown piece, or is dropped when there is none (as HF's BPE does). */
static int byte_level_word(void *ctx, const char *s, size_t len) {
    struct byte_level_ctx *c = ctx;
    const struct lorad_tokenizer *t = c->t;
    if (t->ignore_merges) {
        size_t n = 0;
        for (size_t i = 0; i < len; i++) n += tok_utf8_encode(tok_byte_to_unicode((uint8_t)s[i]), c->mapped + n);
        int32_t id = tok_str_map_get(t, c->mapped, n);
        if (id >= 0) return tok_ids_push(c->out, id);
    }
    c->syms.n = 0;
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < len; i++) {
        int32_t id = t->byte_ids[(unsigned char)s[i]];
        if (id < 0) id = t->unk_id;
        if (id >= 0) rc = tok_ids_push(&c->syms, id);
    }
    return rc < 0 ? rc : tok_rank_bpe_word(t, c->syms.v, c->syms.n, c->out);
}

/* Text as HF would see it: a Rust string (invalid UTF-8 already U+FFFD, as our contract says)
 * with add_prefix_space's space in front unless one is there. Returns a copy only when needed. */
static int byte_level_input(const struct lorad_tokenizer *t, const char *text, size_t len, char **ret_copy,
                            size_t *ret_len) {
    bool prefix = t->byte_level_prefix_space && text[0] != ' ';
    bool valid = true;
    for (size_t i = 0; i < len && valid;) {
        uint32_t cp;
        size_t l = tok_utf8_decode(text + i, len - i, &cp);
        valid = !(cp == 0xFFFD && l == 1 && (unsigned char)text[i] >= 0x80);
        i += l;
    }
    *ret_copy = NULL;
    if (!prefix && valid) return 0;
    char *copy = malloc(len * 3 + 2), *o = copy;
    if (!copy) return -ENOMEM;
    if (prefix) *o++ = ' ';
    for (size_t i = 0; i < len;) {
        uint32_t cp;
        size_t l = tok_utf8_decode(text + i, len - i, &cp);
        o += tok_utf8_encode(cp, o);
        i += l;
    }
    *ret_copy = copy;
    *ret_len = (size_t)(o - copy);
    return 0;
}

int tok_byte_level_encode(const struct lorad_tokenizer *t, const char *text, size_t len, struct tok_ids *out) {
    if (len == 0) return 0;
    char *copy;
    int rc = byte_level_input(t, text, len, &copy, &len);
    if (rc < 0) return rc;
    if (copy) text = copy;
    struct byte_level_ctx c = {.t = t, .out = out, .mapped = malloc(len * 2 + 1)};
    rc = c.mapped ? tok_pretokenize(t->pretok, t->split_digits, text, len, byte_level_word, &c) : -ENOMEM;
    free(c.mapped);
    free(c.syms.v);
    free(copy);
    return rc;
}
