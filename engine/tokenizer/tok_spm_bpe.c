/* SentencePiece BPE encoding: normalise (dummy prefix, spaces as ▁), split into characters and
 * user-defined pieces, then repeatedly merge the adjacent pair whose concatenation is the
 * highest-scoring piece (leftmost on ties) using a heap, so long words cost O(n log n). Pieces
 * that end unused are split back; unknown pieces become <0xNN> bytes with byte fallback. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "tok_internal.h"

static const char kSpace[] = "\xE2\x96\x81"; /* U+2581 */

/* Identity normalisation as SentencePiece does it without a charsmap. */
static int normalize(const struct lorad_tokenizer *t, const char *in, size_t len, char **ret, size_t *ret_len) {
    size_t i = 0;
    if (t->remove_extra_whitespaces)
        while (i < len && in[i] == ' ') i++;
    char *out = malloc((len - i) * 3 + 4);
    if (!out) return -ENOMEM;
    size_t n = 0;
    if (i == len) {
        *ret = out;
        *ret_len = 0;
        return 0;
    }
    const char *ws = t->escape_whitespaces ? kSpace : " ";
    size_t ws_len = strlen(ws);
    if (t->add_dummy_prefix) memcpy(out + n, ws, ws_len), n += ws_len;
    bool prev_space = t->remove_extra_whitespaces;
    while (i < len) {
        uint32_t cp;
        size_t l = tok_utf8_decode(in + i, len - i, &cp);
        if (cp == ' ') {
            if (!prev_space) memcpy(out + n, ws, ws_len), n += ws_len;
            prev_space = t->remove_extra_whitespaces;
        } else {
            n += cp == 0xFFFD && l == 1 ? (memcpy(out + n, "\xEF\xBF\xBD", 3), 3) : (memcpy(out + n, in + i, l), l);
            prev_space = false;
        }
        i += l;
    }
    if (t->remove_extra_whitespaces)
        while (n >= ws_len && memcmp(out + n - ws_len, ws, ws_len) == 0) n -= ws_len;
    *ret = out;
    *ret_len = n;
    return 0;
}

struct symbol {
    int32_t prev, next;
    uint32_t start, len; /* len 0 = merged away */
    bool freeze;
};

struct candidate {
    float score;
    int32_t left, right;
    uint32_t size;
};

struct heap {
    struct candidate *v;
    size_t n, cap;
};

static bool better(const struct candidate *a, const struct candidate *b) {
    if (a->score != b->score) return a->score > b->score;
    return a->left < b->left;
}

static int heap_push(struct heap *h, struct candidate c) {
    if (h->n == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 64;
        struct candidate *v = realloc(h->v, cap * sizeof *v);
        if (!v) return -ENOMEM;
        h->v = v;
        h->cap = cap;
    }
    size_t i = h->n++;
    while (i > 0 && better(&c, &h->v[(i - 1) / 2])) {
        h->v[i] = h->v[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    h->v[i] = c;
    return 0;
}

static struct candidate heap_pop(struct heap *h) {
    struct candidate top = h->v[0], last = h->v[--h->n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= h->n) break;
        if (c + 1 < h->n && better(&h->v[c + 1], &h->v[c])) c++;
        if (!better(&h->v[c], &last)) break;
        h->v[i] = h->v[c];
        i = c;
    }
    if (h->n) h->v[i] = last;
    return top;
}

/* Pieces that BPE may produce: normal, user-defined and unused (SentencePiece's pieces_ map). */
static int32_t mergeable_id(const struct lorad_tokenizer *t, const char *s, size_t len) {
    int32_t id = tok_str_map_get(t, s, len);
    if (id < 0) return -1;
    int type = t->pieces[id].type;
    return type == TOK_NORMAL || type == TOK_USER_DEFINED || type == TOK_UNUSED ? id : -1;
}

static int maybe_add_pair(const struct lorad_tokenizer *t, const char *text, const struct symbol *sym,
                          int32_t left, int32_t right, struct heap *h) {
    if (left < 0 || right < 0 || sym[left].freeze || sym[right].freeze) return 0;
    uint32_t size = sym[left].len + sym[right].len;
    int32_t id = mergeable_id(t, text + sym[left].start, size);
    if (id < 0) return 0;
    return heap_push(h, (struct candidate){t->pieces[id].score, left, right, size});
}

struct unused_merge {
    uint32_t start, len, left_len;
};

static int emit_piece(const struct lorad_tokenizer *t, const char *text, uint32_t start, uint32_t len,
                      const struct unused_merge *um, size_t n_um, struct tok_ids *out, int depth) {
    int32_t id = tok_str_map_get(t, text + start, len);
    if (id >= 0 && t->pieces[id].type == TOK_UNUSED && depth < 64) {
        for (size_t k = n_um; k-- > 0;) {
            if (um[k].len != len || memcmp(text + um[k].start, text + start, len) != 0) continue;
            int rc = emit_piece(t, text, start, um[k].left_len, um, n_um, out, depth + 1);
            if (rc < 0) return rc;
            return emit_piece(t, text, start + um[k].left_len, len - um[k].left_len, um, n_um, out, depth + 1);
        }
    }
    if (id >= 0 && t->pieces[id].type != TOK_UNKNOWN) return tok_ids_push(out, id);
    if (t->byte_fallback) {
        for (uint32_t i = 0; i < len; i++) {
            int rc = tok_ids_push(out, t->byte_ids[(unsigned char)text[start + i]]);
            if (rc < 0) return rc;
        }
        return 0;
    }
    return tok_ids_push(out, t->unk_id >= 0 ? t->unk_id : 0);
}

int tok_spm_encode(const struct lorad_tokenizer *t, const char *raw, size_t raw_len, struct tok_ids *out) {
    char *text = NULL;
    size_t len = 0;
    int rc = normalize(t, raw, raw_len, &text, &len);
    if (rc < 0) return rc;
    struct symbol *sym = malloc((len + 1) * sizeof *sym);
    struct heap h = {0};
    struct unused_merge *um = NULL;
    size_t n_um = 0, cap_um = 0;
    if (!sym) {
        rc = -ENOMEM;
        goto done;
    }
    int32_t n = 0;
    for (size_t i = 0; i < len;) {
        size_t l = 0;
        bool freeze = false;
        for (int k = 0; k < t->n_added; k++) { /* longest user-defined piece first */
            const struct tok_piece *p = &t->pieces[t->added[k].id];
            if (p->len <= len - i && memcmp(p->text, text + i, p->len) == 0) {
                l = p->len;
                freeze = true;
                break;
            }
        }
        if (!l) {
            uint32_t cp;
            l = tok_utf8_decode(text + i, len - i, &cp);
        }
        sym[n] = (struct symbol){n - 1, -1, (uint32_t)i, (uint32_t)l, freeze};
        if (n > 0) sym[n - 1].next = n;
        n++;
        i += l;
    }
    for (int32_t i = 1; i < n && rc == 0; i++) rc = maybe_add_pair(t, text, sym, i - 1, i, &h);
    while (rc == 0 && h.n) {
        struct candidate c = heap_pop(&h);
        struct symbol *l = &sym[c.left], *r = &sym[c.right];
        if (l->len == 0 || r->len == 0 || l->len + r->len != c.size || l->next != c.right) continue;
        int32_t id = mergeable_id(t, text + l->start, c.size);
        if (id >= 0 && t->pieces[id].type == TOK_UNUSED) {
            if (n_um == cap_um) {
                cap_um = cap_um ? cap_um * 2 : 16;
                struct unused_merge *v = realloc(um, cap_um * sizeof *v);
                if (!v) {
                    rc = -ENOMEM;
                    break;
                }
                um = v;
            }
            um[n_um++] = (struct unused_merge){l->start, c.size, l->len};
        }
        l->len = c.size;
        l->next = r->next;
        if (r->next >= 0) sym[r->next].prev = c.left;
        r->len = 0;
        rc = maybe_add_pair(t, text, sym, l->prev, c.left, &h);
        if (rc == 0) rc = maybe_add_pair(t, text, sym, c.left, l->next, &h);
    }
    for (int32_t i = n > 0 ? 0 : -1; rc == 0 && i >= 0; i = sym[i].next)
        rc = emit_piece(t, text, sym[i].start, sym[i].len, um, n_um, out, 0);
done:
    free(um);
    free(h.v);
    free(sym);
    free(text);
    return rc;
}
