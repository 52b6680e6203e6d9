/* The tokenizer object: allocation, lookup tables, special-token splitting, encode dispatch,
 * decode, and the accessors of tokenizer.h. The model-specific encoders live in tok_spm_bpe.c
 * (SentencePiece scores) and tok_rank_bpe.c (HF merge ranks); loaders in tok_load_*.c. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tok_internal.h"

static uint32_t hash_bytes(const char *s, size_t len) {
    uint32_t h = 2166136261u; /* FNV-1a */
    for (size_t i = 0; i < len; i++) h = (h ^ (unsigned char)s[i]) * 16777619u;
    return h;
}

static uint32_t table_size_for(size_t n) {
    uint32_t size = 16;
    while (size < 2 * n) size <<= 1;
    return size;
}

int tok_alloc(struct lorad_tokenizer **ret, int n_vocab) {
    assert(n_vocab > 0 && n_vocab <= LORAD_TOKENIZER_MAX_VOCAB);
    struct lorad_tokenizer *t = calloc(1, sizeof *t);
    if (!t) return -ENOMEM;
    t->pieces = calloc((size_t)n_vocab, sizeof *t->pieces);
    if (!t->pieces) {
        free(t);
        return -ENOMEM;
    }
    t->n_vocab = n_vocab;
    t->bos_id = t->eos_id = t->unk_id = t->pad_id = -1;
    for (int b = 0; b < 256; b++) t->byte_ids[b] = -1;
    t->escape_whitespaces = true;
    *ret = t;
    return 0;
}

void lorad_tokenizer_free(struct lorad_tokenizer *t) {
    if (!t) return;
    for (int i = 0; i < t->n_vocab; i++) free(t->pieces[i].text);
    free(t->pieces);
    free(t->piece_ids.slots);
    free(t->merges.slots);
    free(t->added);
    free(t->unk_surface);
    free(t);
}

int tok_set_piece(struct lorad_tokenizer *t, int id, const char *s, size_t len, float score, int type) {
    assert(id >= 0 && id < t->n_vocab);
    char *copy = malloc(len + 1);
    if (!copy) return -ENOMEM;
    memcpy(copy, s, len);
    copy[len] = '\0';
    free(t->pieces[id].text);
    t->pieces[id] = (struct tok_piece){copy, (uint32_t)len, score, (uint8_t)type};
    return 0;
}

int tok_str_map_build(struct lorad_tokenizer *t) {
    uint32_t size = table_size_for((size_t)t->n_vocab);
    int32_t *slots = malloc(size * sizeof *slots);
    if (!slots) return -ENOMEM;
    for (uint32_t i = 0; i < size; i++) slots[i] = -1;
    for (int id = 0; id < t->n_vocab; id++) {
        const struct tok_piece *p = &t->pieces[id];
        uint32_t h = hash_bytes(p->text, p->len) & (size - 1);
        for (;; h = (h + 1) & (size - 1)) {
            if (slots[h] < 0) {
                slots[h] = id;
                break;
            }
            const struct tok_piece *q = &t->pieces[slots[h]];
            if (q->len == p->len && memcmp(q->text, p->text, p->len) == 0) break; /* first id wins */
        }
    }
    free(t->piece_ids.slots);
    t->piece_ids.slots = slots;
    t->piece_ids.mask = size - 1;
    return 0;
}

int32_t tok_str_map_get(const struct lorad_tokenizer *t, const char *s, size_t len) {
    const struct tok_str_map *m = &t->piece_ids;
    if (!m->slots) return -1;
    for (uint32_t h = hash_bytes(s, len) & m->mask;; h = (h + 1) & m->mask) {
        int32_t id = m->slots[h];
        if (id < 0) return -1;
        const struct tok_piece *p = &t->pieces[id];
        if (p->len == len && memcmp(p->text, s, len) == 0) return id;
    }
}

static uint64_t pair_key(int32_t left, int32_t right) {
    return (((uint64_t)(uint32_t)left << 32) | (uint32_t)right) + 1;
}

static uint32_t hash_u64(uint64_t k) {
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    return (uint32_t)k;
}

int tok_pair_map_init(struct tok_pair_map *m, size_t n) {
    uint32_t size = table_size_for(n);
    m->slots = calloc(size, sizeof *m->slots);
    if (!m->slots) return -ENOMEM;
    m->mask = size - 1;
    return 0;
}

/* Returns 1 when the pair was already present (the first rank is kept, as HF does). */
int tok_pair_map_put(struct tok_pair_map *m, int32_t left, int32_t right, int32_t rank, int32_t merged) {
    uint64_t key = pair_key(left, right);
    for (uint32_t h = hash_u64(key) & m->mask;; h = (h + 1) & m->mask) {
        if (m->slots[h].key == key) return 1;
        if (m->slots[h].key == 0) {
            m->slots[h] = (struct tok_pair_entry){key, rank, merged};
            return 0;
        }
    }
}

const struct tok_pair_entry *tok_pair_map_get(const struct tok_pair_map *m, int32_t left, int32_t right) {
    if (!m->slots) return NULL;
    uint64_t key = pair_key(left, right);
    for (uint32_t h = hash_u64(key) & m->mask;; h = (h + 1) & m->mask) {
        if (m->slots[h].key == key) return &m->slots[h];
        if (m->slots[h].key == 0) return NULL;
    }
}

void tok_map_byte_level_bytes(struct lorad_tokenizer *t) {
    for (int b = 0; b < 256; b++) {
        char c[4];
        t->byte_ids[b] = tok_str_map_get(t, c, tok_utf8_encode(tok_byte_to_unicode((uint8_t)b), c));
    }
}

int tok_add_merge(struct lorad_tokenizer *t, const char *left, size_t left_len, const char *right, size_t right_len,
                  int32_t rank) {
    assert(left_len <= LORAD_TOKENIZER_MAX_PIECE && right_len <= LORAD_TOKENIZER_MAX_PIECE);
    char both[2 * LORAD_TOKENIZER_MAX_PIECE];
    memcpy(both, left, left_len);
    memcpy(both + left_len, right, right_len);
    int32_t a = tok_str_map_get(t, left, left_len), b = tok_str_map_get(t, right, right_len);
    int32_t m = tok_str_map_get(t, both, left_len + right_len);
    if (a < 0 || b < 0 || m < 0) return -ENOENT;
    tok_pair_map_put(&t->merges, a, b, rank, m);
    return 0;
}

static int cmp_added_longest_first(const void *a, const void *b, void *ctx) {
    const struct lorad_tokenizer *t = ctx;
    uint32_t la = t->pieces[((const struct tok_added *)a)->id].len;
    uint32_t lb = t->pieces[((const struct tok_added *)b)->id].len;
    if (la != lb) return la > lb ? -1 : 1;
    return ((const struct tok_added *)a)->id - ((const struct tok_added *)b)->id;
}

void tok_sort_added(struct lorad_tokenizer *t) {
    if (t->n_added > 1) qsort_r(t->added, (size_t)t->n_added, sizeof *t->added, cmp_added_longest_first, t);
}

static int check_special_id(int32_t id, int n_vocab, const char *what, const char *name,
                            struct lorad_error *err) {
    if (id < -1 || id >= n_vocab)
        return lorad_error_set(err, -EINVAL, name, "%s: %s id %d is outside the vocabulary of %d pieces",
                               name, what, (int)id, n_vocab);
    return 0;
}

int tok_finish_spm(struct lorad_tokenizer *t, const char *name, struct lorad_error *err) {
    int rc = tok_str_map_build(t);
    if (rc < 0) return lorad_error_set(err, rc, name, "%s: out of memory building the vocabulary", name);
    int n_user = 0;
    for (int id = 0; id < t->n_vocab; id++) {
        const struct tok_piece *p = &t->pieces[id];
        if (p->type < TOK_NORMAL || p->type > TOK_BYTE)
            return lorad_error_set(err, -EINVAL, name, "%s: piece %d has unknown type %d", name, id, p->type);
        if (p->len == 0 && p->type != TOK_CONTROL && p->type != TOK_UNKNOWN)
            return lorad_error_set(err, -EINVAL, name, "%s: piece %d is empty", name, id);
        if (p->type == TOK_USER_DEFINED) n_user++;
        if (p->type == TOK_BYTE) {
            unsigned v;
            char tail;
            if (p->len != 6 || sscanf(p->text, "<0x%2X>%c", &v, &tail) != 1 || v > 255)
                return lorad_error_set(err, -EINVAL, name, "%s: byte piece %d is '%s', not <0xNN>", name, id, p->text);
            if (t->byte_ids[v] < 0) t->byte_ids[v] = id;
        }
        if (p->type == TOK_UNKNOWN && t->unk_id < 0) t->unk_id = id;
    }
    if (t->byte_fallback) {
        for (int b = 0; b < 256; b++)
            if (t->byte_ids[b] < 0)
                return lorad_error_set(err, -EINVAL, name, "%s: byte_fallback is on but piece <0x%02X> is missing",
                                       name, b);
    }
    if (n_user > 0) {
        t->added = calloc((size_t)n_user, sizeof *t->added);
        if (!t->added) return lorad_error_set(err, -ENOMEM, name, "%s: out of memory", name);
        for (int id = 0; id < t->n_vocab; id++)
            if (t->pieces[id].type == TOK_USER_DEFINED) t->added[t->n_added++] = (struct tok_added){.id = id};
        tok_sort_added(t);
    }
    if ((rc = check_special_id(t->bos_id, t->n_vocab, "bos", name, err)) < 0) return rc;
    if ((rc = check_special_id(t->eos_id, t->n_vocab, "eos", name, err)) < 0) return rc;
    if ((rc = check_special_id(t->unk_id, t->n_vocab, "unk", name, err)) < 0) return rc;
    if ((rc = check_special_id(t->pad_id, t->n_vocab, "pad", name, err)) < 0) return rc;
    if (!t->unk_surface && !(t->unk_surface = strdup(" \xE2\x81\x87 ")))
        return lorad_error_set(err, -ENOMEM, name, "%s: out of memory", name);
    return 0;
}

int tok_finish_byte_level(struct lorad_tokenizer *t, const char *name, struct lorad_error *err) {
    int rc = tok_str_map_build(t);
    if (rc < 0) return lorad_error_set(err, rc, name, "%s: out of memory building the vocabulary", name);
    int n_added = 0;
    for (int id = 0; id < t->n_vocab; id++) {
        int type = t->pieces[id].type;
        if (type < TOK_NORMAL || type > TOK_BYTE)
            return lorad_error_set(err, -EINVAL, name, "%s: piece %d has unknown type %d", name, id, type);
        if ((type == TOK_CONTROL || type == TOK_USER_DEFINED) && t->pieces[id].len) n_added++;
    }
    t->added = calloc((size_t)n_added + 1, sizeof *t->added);
    if (!t->added) return lorad_error_set(err, -ENOMEM, name, "%s: out of memory", name);
    for (int id = 0; id < t->n_vocab; id++) {
        int type = t->pieces[id].type;
        if ((type == TOK_CONTROL || type == TOK_USER_DEFINED) && t->pieces[id].len)
            t->added[t->n_added++] = (struct tok_added){.id = id, .special = type == TOK_CONTROL};
    }
    tok_sort_added(t);
    tok_map_byte_level_bytes(t);
    if ((rc = check_special_id(t->bos_id, t->n_vocab, "bos", name, err)) < 0) return rc;
    if ((rc = check_special_id(t->eos_id, t->n_vocab, "eos", name, err)) < 0) return rc;
    if ((rc = check_special_id(t->unk_id, t->n_vocab, "unk", name, err)) < 0) return rc;
    return check_special_id(t->pad_id, t->n_vocab, "pad", name, err);
}

int tok_ids_push(struct tok_ids *ids, int32_t id) {
    if (ids->n == ids->cap) {
        size_t cap = ids->cap ? ids->cap * 2 : 64;
        int32_t *v = realloc(ids->v, cap * sizeof *v);
        if (!v) return -ENOMEM;
        ids->v = v;
        ids->cap = cap;
    }
    ids->v[ids->n++] = id;
    return 0;
}

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
            unsigned v = 0;
            sscanf(p->text, "<0x%2X>", &v);
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
