/* The tokenizer's tables: allocation, pieces and their string map, the merge-pair map, added
 * tokens, the checks that finish a loaded vocabulary, and the id list the encoders push to. The
 * loaders (tok_load*.c, tok_hf_json.c) fill these and the encoders (tok_spm_bpe.c,
 * tok_rank_bpe.c, tok_codec.c) read them; this file calls neither. */
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
            int v = tok_byte_piece_value(p->text, p->len);
            if (v < 0)
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

static int hex_digit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

int tok_byte_piece_value(const char *s, size_t len) {
    if (len != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>') return -1;
    int hi = hex_digit(s[3]), lo = hex_digit(s[4]);
    return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}
