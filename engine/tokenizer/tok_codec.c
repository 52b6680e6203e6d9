/* Encoding and decoding with a loaded tokenizer: special-token splitting, dispatch to the
 * model-specific encoder (tok_spm_bpe.c for SentencePiece scores, tok_rank_bpe.c for HF merge
 * ranks), decode, and the accessors of tokenizer.h. The tables it reads are in tok_vocab.c. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <assert.h>
#include <string.h>

#include "tok_internal.h"

/* Length of the added token that matches text at pos (longest wins), or 0. */
static size_t match_added(const struct lorad_tokenizer *t, const char *text, size_t len, size_t pos,
                          const struct tok_added **ret) {
    for (int i = 0; i < t->n_added; i++) {
        const struct tok_piece *p = &t->pieces[t->added[i].id];
        if (p->len > 0 && p->len <= len - pos && p->text[0] == text[pos] &&
            memcmp(p->text, text + pos, p->len) == 0) {
            *ret = &t->added[i];
            return p->len;
        }
    }
    return 0;
}

static bool is_white_space_at(const char *s, size_t n, size_t *cp_len) {
    uint32_t cp;
    *cp_len = tok_utf8_decode(s, n, &cp);
    return tok_unicode_is_white_space(cp);
}

/* Length of the whitespace run that ends at end (scanning back from end to at least start). */
static size_t white_space_before(const char *text, size_t start, size_t end) {
    size_t p = end;
    while (p > start) {
        size_t q = p - 1;
        while (q > start && ((unsigned char)text[q] & 0xC0) == 0x80) q--;
        size_t l;
        if (!is_white_space_at(text + q, p - q, &l) || l != p - q) break;
        p = q;
    }
    return end - p;
}

static int encode_segment(const struct lorad_tokenizer *t, const char *text, size_t start, size_t end,
                          struct tok_ids *out) {
    if (end <= start) return 0;
    switch (t->kind) {
    case LORAD_TOKENIZER_SPM_BPE: return tok_spm_encode(t, text + start, end - start, out);
    case LORAD_TOKENIZER_HF_SPM: return tok_hf_spm_encode(t, text + start, end - start, start == 0, out);
    case LORAD_TOKENIZER_BYTE_LEVEL: return tok_byte_level_encode(t, text + start, end - start, out);
    }
    return -EINVAL;
}

/* HF splits the raw text at added tokens first (leftmost, longest), honouring lstrip/rstrip, and
 * runs the model on the pieces between them. SentencePiece's user-defined pieces are instead
 * matched inside tok_spm_encode, after the dummy prefix. */
static int encode_with_added(const struct lorad_tokenizer *t, const char *text, size_t len, struct tok_ids *out) {
    if (t->kind == LORAD_TOKENIZER_SPM_BPE || t->n_added == 0) return encode_segment(t, text, 0, len, out);
    bool first_byte[256] = {false};
    for (int i = 0; i < t->n_added; i++) {
        const struct tok_piece *p = &t->pieces[t->added[i].id];
        if (p->len) first_byte[(unsigned char)p->text[0]] = true;
    }
    size_t seg = 0, pos = 0;
    while (pos < len) {
        const struct tok_added *a = NULL;
        size_t m = first_byte[(unsigned char)text[pos]] ? match_added(t, text, len, pos, &a) : 0;
        if (!m) {
            pos++;
            continue;
        }
        size_t seg_end = pos, next = pos + m;
        if (a->lstrip) seg_end -= white_space_before(text, seg, pos);
        if (a->rstrip) {
            size_t l;
            while (next < len && is_white_space_at(text + next, len - next, &l)) next += l;
        }
        int rc = encode_segment(t, text, seg, seg_end, out);
        if (rc < 0 || (rc = tok_ids_push(out, a->id)) < 0) return rc;
        seg = pos = next;
    }
    return encode_segment(t, text, seg, len, out);
}

int lorad_tokenizer_encode(const struct lorad_tokenizer *t, const char *text, size_t len, int add_bos,
                           int add_eos, int32_t **ret_ids, size_t *ret_n, struct lorad_error *err) {
    if (len > LORAD_TOKENIZER_MAX_TEXT)
        return lorad_error_set(err, -E2BIG, "text", "text of %zu bytes exceeds the limit of %u bytes", len,
                               LORAD_TOKENIZER_MAX_TEXT);
    bool bos = add_bos == LORAD_TOKENIZER_DEFAULT ? t->add_bos : add_bos != 0;
    bool eos = add_eos == LORAD_TOKENIZER_DEFAULT ? t->add_eos : add_eos != 0;
    struct tok_ids out = {0};
    int rc = 0;
    if (bos && t->bos_id >= 0) rc = tok_ids_push(&out, t->bos_id);
    if (rc == 0) rc = encode_with_added(t, text, len, &out);
    if (rc == 0 && eos && t->eos_id >= 0) rc = tok_ids_push(&out, t->eos_id);
    if (rc == 0 && out.n == 0) rc = tok_ids_push(&out, 0), out.n = 0; /* a valid pointer even when empty */
    if (rc < 0) {
        free(out.v);
        return lorad_error_set(err, rc, "text", "encoding failed: %s", rc == -ENOMEM ? "out of memory" : "internal error");
    }
    *ret_ids = out.v;
    *ret_n = out.n;
    return 0;
}

struct tok_text {
    char *s;
    size_t n, cap;
};

static int text_append(struct tok_text *b, const char *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->n + n + 1) cap *= 2;
        char *p = realloc(b->s, cap);
        if (!p) return -ENOMEM;
        b->s = p;
        b->cap = cap;
    }
    memcpy(b->s + b->n, s, n);
    b->n += n;
    b->s[b->n] = '\0';
    return 0;
}

/* Bytes of consecutive byte pieces form UTF-8; bytes that are not part of a valid sequence
 * become U+FFFD each, as SentencePiece's decoder does. */
static int flush_bytes(struct tok_text *b, const char *bytes, size_t n) {
    size_t i = 0;
    while (i < n) {
        uint32_t cp;
        size_t l = tok_utf8_decode(bytes + i, n - i, &cp);
        int rc = l == 1 && (unsigned char)bytes[i] >= 0x80 ? text_append(b, "\xEF\xBF\xBD", 3)
                                                           : text_append(b, bytes + i, l);
        if (rc < 0) return rc;
        i += l;
    }
    return 0;
}

/* Appends piece with ▁ turned into space, dropping one leading ▁ when strip_first. */
static int append_unescaped(struct tok_text *b, const char *s, size_t n, bool strip_first) {
    static const char ws[] = "\xE2\x96\x81";
    size_t i = 0;
    if (strip_first && n >= 3 && memcmp(s, ws, 3) == 0) i = 3;
    while (i < n) {
        if (n - i >= 3 && memcmp(s + i, ws, 3) == 0) {
            if (text_append(b, " ", 1) < 0) return -ENOMEM;
            i += 3;
            continue;
        }
        size_t j = i + 1;
        while (j < n && !(n - j >= 3 && memcmp(s + j, ws, 3) == 0)) j++;
        if (text_append(b, s + i, j - i) < 0) return -ENOMEM;
        i = j;
    }
    return 0;
}

static bool is_special_added(const struct lorad_tokenizer *t, int32_t id) {
    for (int i = 0; i < t->n_added; i++)
        if (t->added[i].id == id) return t->added[i].special;
    return false;
}

static int decode_spm(const struct lorad_tokenizer *t, const int32_t *ids, size_t n, struct tok_text *b) {
    char bytes[256];
    size_t n_bytes = 0;
    bool first = t->kind == LORAD_TOKENIZER_SPM_BPE ? t->add_dummy_prefix : t->prepend != TOK_PREPEND_NEVER;
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        const struct tok_piece *p = &t->pieces[ids[i]];
        if (p->type == TOK_BYTE) {
            int v = tok_byte_piece_value(p->text, p->len);
            assert(v >= 0); /* the loaders give TOK_BYTE only to such pieces */
            if (n_bytes == sizeof bytes && (rc = flush_bytes(b, bytes, n_bytes)) < 0) break;
            if (n_bytes == sizeof bytes) n_bytes = 0;
            bytes[n_bytes++] = (char)v;
            first = false;
            continue;
        }
        if (n_bytes && (rc = flush_bytes(b, bytes, n_bytes)) < 0) break;
        n_bytes = 0;
        if (p->type == TOK_CONTROL || is_special_added(t, ids[i])) continue;
        if (p->type == TOK_UNKNOWN && t->kind == LORAD_TOKENIZER_SPM_BPE)
            rc = text_append(b, t->unk_surface, strlen(t->unk_surface));
        else
            rc = append_unescaped(b, p->text, p->len, first);
        first = false;
    }
    if (rc == 0 && n_bytes) rc = flush_bytes(b, bytes, n_bytes);
    return rc;
}

/* HF's ByteLevel decoder: a piece whose characters all map back to bytes gives those bytes, any
 * other piece its own text; the bytes of a run of pieces then form UTF-8, invalid bytes U+FFFD.
 * Special (control) tokens vanish, as for the SentencePiece kinds. */
static int decode_byte_level(const struct lorad_tokenizer *t, const int32_t *ids, size_t n, struct tok_text *b) {
    struct tok_text bytes = {0};
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        const struct tok_piece *p = &t->pieces[ids[i]];
        if (p->type == TOK_CONTROL) continue;
        size_t mark = bytes.n;
        for (size_t j = 0; j < p->len && rc == 0;) {
            uint32_t cp;
            j += tok_utf8_decode(p->text + j, p->len - j, &cp);
            int byte = tok_unicode_to_byte(cp);
            if (byte < 0) {
                bytes.n = mark;
                rc = text_append(&bytes, p->text, p->len);
                break;
            }
            rc = text_append(&bytes, &(char){(char)byte}, 1);
        }
    }
    if (rc == 0) rc = flush_bytes(b, bytes.s, bytes.n);
    free(bytes.s);
    return rc;
}

int lorad_tokenizer_decode(const struct lorad_tokenizer *t, const int32_t *ids, size_t n, char **ret_text,
                           size_t *ret_len, struct lorad_error *err) {
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= t->n_vocab)
            return lorad_error_set(err, -EINVAL, "ids", "token id %d at index %zu is outside the vocabulary of %d",
                                   (int)ids[i], i, t->n_vocab);
    struct tok_text b = {0};
    int rc = text_append(&b, "", 0);
    if (rc == 0) rc = t->kind == LORAD_TOKENIZER_BYTE_LEVEL ? decode_byte_level(t, ids, n, &b) : decode_spm(t, ids, n, &b);
    if (rc < 0) {
        free(b.s);
        return lorad_error_set(err, rc, "ids", "decoding failed: out of memory");
    }
    *ret_text = b.s;
    *ret_len = b.n;
    return 0;
}

const char *lorad_tokenizer_id_to_piece(const struct lorad_tokenizer *t, int32_t id) {
    if (id < 0 || id >= t->n_vocab) return NULL;
    return t->pieces[id].text;
}

int32_t lorad_tokenizer_piece_to_id(const struct lorad_tokenizer *t, const char *piece) {
    return tok_str_map_get(t, piece, strlen(piece));
}

int32_t lorad_tokenizer_special_id(const struct lorad_tokenizer *t, const char *text) {
    int32_t id = tok_str_map_get(t, text, strlen(text));
    if (id < 0) return -1;
    int type = t->pieces[id].type;
    if (type == TOK_CONTROL || type == TOK_UNKNOWN || type == TOK_USER_DEFINED) return id;
    for (int i = 0; i < t->n_added; i++)
        if (t->added[i].id == id) return id;
    return -1;
}

int lorad_tokenizer_vocab_size(const struct lorad_tokenizer *t) { return t->n_vocab; }
int32_t lorad_tokenizer_bos_id(const struct lorad_tokenizer *t) { return t->bos_id; }
int32_t lorad_tokenizer_eos_id(const struct lorad_tokenizer *t) { return t->eos_id; }
int32_t lorad_tokenizer_pad_id(const struct lorad_tokenizer *t) { return t->pad_id; }
int32_t lorad_tokenizer_unk_id(const struct lorad_tokenizer *t) { return t->unk_id; }
enum lorad_tokenizer_kind lorad_tokenizer_kind(const struct lorad_tokenizer *t) { return t->kind; }
int lorad_tokenizer_adds_bos(const struct lorad_tokenizer *t) { return t->add_bos && t->bos_id >= 0; }
int lorad_tokenizer_adds_eos(const struct lorad_tokenizer *t) { return t->add_eos && t->eos_id >= 0; }
