/* Reads SentencePiece's tokenizer.model (a ModelProto protobuf, parsed by hand: pieces = 1
 * {piece = 1, score = 2, type = 3}, trainer_spec = 2, normalizer_spec = 3, denormalizer_spec = 5)
 * and llama2.c's tokenizer.bin (int32 max_token_length, then per piece float score, int32 length,
 * bytes). Every length is checked against what is left of the buffer before it is used. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tok_internal.h"

struct pb {
    const uint8_t *p, *end;
};

static int pb_varint(struct pb *b, uint64_t *v) {
    uint64_t r = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (b->p >= b->end) return -1;
        uint8_t c = *b->p++;
        r |= (uint64_t)(c & 0x7F) << shift;
        if (c < 0x80) {
            *v = r;
            return 0;
        }
    }
    return -1;
}

/* One field: number, wire type, and for varints the value, for length-delimited the sub-buffer,
 * for fixed32 the raw 4 bytes. */
struct pb_field {
    uint32_t number, wire;
    uint64_t value;
    struct pb sub;
    uint32_t fixed32;
};

static int pb_next(struct pb *b, struct pb_field *f, const char **why) {
    uint64_t key;
    if (pb_varint(b, &key) < 0) return *why = "truncated field key", -1;
    f->number = (uint32_t)(key >> 3);
    f->wire = key & 7;
    switch (f->wire) {
    case 0:
        if (pb_varint(b, &f->value) < 0) return *why = "truncated varint", -1;
        return 0;
    case 1:
        if (b->end - b->p < 8) return *why = "truncated fixed64", -1;
        b->p += 8;
        return 0;
    case 2: {
        uint64_t n;
        if (pb_varint(b, &n) < 0) return *why = "truncated length", -1;
        if (n > (uint64_t)(b->end - b->p)) return *why = "length runs past the end of the file", -1;
        f->sub = (struct pb){b->p, b->p + n};
        b->p += n;
        return 0;
    }
    case 5:
        if (b->end - b->p < 4) return *why = "truncated fixed32", -1;
        memcpy(&f->fixed32, b->p, 4);
        b->p += 4;
        return 0;
    default:
        return *why = "unsupported wire type", -1;
    }
}

struct spm_spec {
    int model_type, byte_fallback, treat_ws_suffix;
    int64_t unk_id, bos_id, eos_id, pad_id;
    struct pb unk_surface;
    bool has_unk_surface;
    struct pb norm_name, charsmap, denorm_charsmap;
    int add_dummy_prefix, remove_extra_ws, escape_ws;
};

#define BAD(...) lorad_error_set(err, -EINVAL, name, __VA_ARGS__)

static int parse_trainer(struct pb b, struct spm_spec *s, const char *name, struct lorad_error *err) {
    struct pb_field f;
    const char *why = NULL;
    while (b.p < b.end) {
        if (pb_next(&b, &f, &why) < 0) return BAD("%s: trainer_spec: %s", name, why);
        if (f.wire == 0) {
            switch (f.number) {
            case 3: s->model_type = (int)f.value; break;
            case 24: s->treat_ws_suffix = f.value != 0; break;
            case 35: s->byte_fallback = f.value != 0; break;
            case 40: s->unk_id = (int32_t)f.value; break;
            case 41: s->bos_id = (int32_t)f.value; break;
            case 42: s->eos_id = (int32_t)f.value; break;
            case 43: s->pad_id = (int32_t)f.value; break;
            }
        } else if (f.wire == 2 && f.number == 44) {
            s->unk_surface = f.sub;
            s->has_unk_surface = true;
        }
    }
    return 0;
}

static int parse_normalizer(struct pb b, struct spm_spec *s, bool denorm, const char *name, struct lorad_error *err) {
    struct pb_field f;
    const char *why = NULL;
    while (b.p < b.end) {
        if (pb_next(&b, &f, &why) < 0) return BAD("%s: normalizer_spec: %s", name, why);
        if (denorm) {
            if (f.wire == 2 && f.number == 2) s->denorm_charsmap = f.sub;
            continue;
        }
        if (f.wire == 2 && f.number == 1) s->norm_name = f.sub;
        if (f.wire == 2 && f.number == 2) s->charsmap = f.sub;
        if (f.wire == 0 && f.number == 3) s->add_dummy_prefix = f.value != 0;
        if (f.wire == 0 && f.number == 4) s->remove_extra_ws = f.value != 0;
        if (f.wire == 0 && f.number == 5) s->escape_ws = f.value != 0;
    }
    return 0;
}

static int parse_piece(struct pb b, struct lorad_tokenizer *t, int id, const char *name, struct lorad_error *err) {
    struct pb_field f;
    const char *why = NULL;
    struct pb text = {0};
    float score = 0;
    int type = TOK_NORMAL;
    bool has_text = false;
    while (b.p < b.end) {
        if (pb_next(&b, &f, &why) < 0) return BAD("%s: piece %d: %s", name, id, why);
        if (f.number == 1 && f.wire == 2) text = f.sub, has_text = true;
        if (f.number == 2 && f.wire == 5) memcpy(&score, &f.fixed32, 4);
        if (f.number == 3 && f.wire == 0) {
            if (f.value < TOK_NORMAL || f.value > TOK_BYTE) return BAD("%s: piece %d has unknown type %llu", name, id,
                                                                         (unsigned long long)f.value);
            type = (int)f.value;
        }
    }
    if (!has_text) return BAD("%s: piece %d has no text", name, id);
    size_t len = (size_t)(text.end - text.p);
    if (len > LORAD_TOKENIZER_MAX_PIECE) return BAD("%s: piece %d is %zu bytes long (limit %d)", name, id, len,
                                                    LORAD_TOKENIZER_MAX_PIECE);
    if (memchr(text.p, '\0', len)) return BAD("%s: piece %d contains a NUL byte", name, id);
    return tok_set_piece(t, id, (const char *)text.p, len, score, type) < 0
               ? lorad_error_set(err, -ENOMEM, name, "%s: out of memory", name)
               : 0;
}

int tok_load_spm_model(struct lorad_tokenizer **ret, const uint8_t *data, size_t len, const char *name,
                       struct lorad_error *err) {
    struct spm_spec s = {.model_type = 1, .unk_id = 0, .bos_id = 1, .eos_id = 2, .pad_id = -1,
                         .add_dummy_prefix = 1, .remove_extra_ws = 1, .escape_ws = 1};
    struct pb b = {data, data + len};
    struct pb_field f;
    const char *why = NULL;
    int n_pieces = 0, rc;
    /* First pass: count pieces and read the specs, so the piece array is sized from a count that
     * the file's bytes actually back. */
    while (b.p < b.end) {
        if (pb_next(&b, &f, &why) < 0) return BAD("%s: not a SentencePiece model: %s at byte %zu", name, why,
                                                  (size_t)(b.p - data));
        if (f.number == 1 && f.wire == 2) {
            if (++n_pieces > LORAD_TOKENIZER_MAX_VOCAB) return BAD("%s: more than %d pieces", name,
                                                                   LORAD_TOKENIZER_MAX_VOCAB);
        } else if (f.number == 2 && f.wire == 2) {
            if ((rc = parse_trainer(f.sub, &s, name, err)) < 0) return rc;
        } else if ((f.number == 3 || f.number == 5) && f.wire == 2) {
            if ((rc = parse_normalizer(f.sub, &s, f.number == 5, name, err)) < 0) return rc;
        } else if (f.number < 1 || f.number > 5) {
            return BAD("%s: not a SentencePiece model: unexpected field %u", name, f.number);
        }
    }
    if (n_pieces == 0) return BAD("%s: no pieces (not a SentencePiece model?)", name);
    if (s.model_type != 2)
        return BAD("%s: model_type %d is not supported (only BPE = 2; unigram/word/char are not implemented)", name,
                   s.model_type);
    if (s.treat_ws_suffix) return BAD("%s: treat_whitespace_as_suffix is not supported", name);
    if (s.charsmap.end != s.charsmap.p || s.denorm_charsmap.end != s.denorm_charsmap.p) {
        int n = (int)(s.norm_name.end - s.norm_name.p);
        return BAD("%s: normalizer '%.*s' uses a precompiled charsmap (e.g. nmt_nfkc), which is not supported; "
                   "only the identity normalizer is", name, n > 0 ? n : 0, n > 0 ? (const char *)s.norm_name.p : "");
    }
    struct lorad_tokenizer *t;
    if ((rc = tok_alloc(&t, n_pieces)) < 0) return lorad_error_set(err, rc, name, "%s: out of memory", name);
    t->kind = LORAD_TOKENIZER_SPM_BPE;
    b = (struct pb){data, data + len};
    for (int id = 0; b.p < b.end;) {
        rc = pb_next(&b, &f, &why);
        assert(rc == 0); /* the first pass walked the same bytes */
        if (f.number == 1 && f.wire == 2 && (rc = parse_piece(f.sub, t, id++, name, err)) < 0) goto fail;
    }
    t->byte_fallback = s.byte_fallback;
    t->add_dummy_prefix = s.add_dummy_prefix;
    t->remove_extra_whitespaces = s.remove_extra_ws;
    t->escape_whitespaces = s.escape_ws;
    t->bos_id = (int32_t)s.bos_id;
    t->eos_id = (int32_t)s.eos_id;
    t->unk_id = (int32_t)s.unk_id;
    t->pad_id = (int32_t)s.pad_id;
    t->add_bos = true; /* Llama convention: BOS first, no EOS */
    if (s.has_unk_surface) {
        size_t n = (size_t)(s.unk_surface.end - s.unk_surface.p);
        if (!(t->unk_surface = strndup((const char *)s.unk_surface.p, n))) {
            rc = lorad_error_set(err, -ENOMEM, name, "%s: out of memory", name);
            goto fail;
        }
    }
    if (t->unk_id < 0 || t->pieces[t->unk_id >= t->n_vocab ? 0 : t->unk_id].type != TOK_UNKNOWN) {
        if (t->unk_id >= t->n_vocab) {
            rc = BAD("%s: unk id %d is outside the vocabulary of %d pieces", name, (int)t->unk_id, t->n_vocab);
            goto fail;
        }
    }
    if ((rc = tok_finish_spm(t, name, err)) < 0) goto fail;
    *ret = t;
    return 0;
fail:
    lorad_tokenizer_free(t);
    return rc;
}

int tok_load_llama2c_bin(struct lorad_tokenizer **ret, const uint8_t *data, size_t len, const char *name,
                         struct lorad_error *err) {
    if (len < 4) return BAD("%s: too short for a llama2.c tokenizer (%zu bytes)", name, len);
    int32_t max_len;
    memcpy(&max_len, data, 4);
    if (max_len <= 0 || max_len > LORAD_TOKENIZER_MAX_PIECE)
        return BAD("%s: max_token_length %d is not in 1..%d (not a llama2.c tokenizer?)", name, (int)max_len,
                   LORAD_TOKENIZER_MAX_PIECE);
    /* First pass: count and validate records, so the allocation follows the file's real size. */
    int n = 0;
    for (size_t off = 4; off < len; n++) {
        int32_t plen;
        if (len - off < 8) return BAD("%s: token %d: record header truncated at byte %zu", name, n, off);
        memcpy(&plen, data + off + 4, 4);
        if (plen < 0 || plen > max_len)
            return BAD("%s: token %d: length %d is not in 0..max_token_length %d (not a llama2.c tokenizer.bin?)", name, n,
                       (int)plen, (int)max_len);
        off += 8;
        if ((size_t)plen > len - off) return BAD("%s: token %d: %d bytes run past the end of the file", name, n, (int)plen);
        off += (size_t)plen;
        if (n + 1 > LORAD_TOKENIZER_MAX_VOCAB) return BAD("%s: more than %d tokens", name, LORAD_TOKENIZER_MAX_VOCAB);
    }
    if (n < 3) return BAD("%s: only %d tokens; ids 0, 1, 2 must be unk, bos, eos", name, n);
    struct lorad_tokenizer *t;
    int rc = tok_alloc(&t, n);
    if (rc < 0) return lorad_error_set(err, rc, name, "%s: out of memory", name);
    t->kind = LORAD_TOKENIZER_SPM_BPE;
    char *buf = malloc((size_t)max_len * 3 + 1);
    if (!buf) {
        rc = lorad_error_set(err, -ENOMEM, name, "%s: out of memory", name);
        goto fail;
    }
    size_t off = 4;
    int n_bytes = 0;
    for (int id = 0; id < n; id++) {
        float score;
        int32_t plen;
        memcpy(&score, data + off, 4);
        memcpy(&plen, data + off + 4, 4);
        const char *s = (const char *)data + off + 8;
        off += 8 + (size_t)plen;
        /* llama2.c's exporter wrote ▁ as a space and wrapped <s>, </s> in newlines. */
        size_t m = 0;
        for (int32_t i = 0; i < plen; i++) {
            if (s[i] == ' ') memcpy(buf + m, "\xE2\x96\x81", 3), m += 3;
            else buf[m++] = s[i];
        }
        if (memchr(buf, '\0', m)) {
            rc = BAD("%s: token %d contains a NUL byte", name, id);
            goto fail;
        }
        int type = TOK_NORMAL;
        buf[m] = '\0';
        if (id == 0) type = TOK_UNKNOWN;
        else if (id == 1 || id == 2) {
            type = TOK_CONTROL;
            if (m >= 2 && buf[0] == '\n' && buf[m - 1] == '\n') memmove(buf, buf + 1, m - 2), m -= 2;
        } else if (tok_byte_piece_value(buf, m) >= 0) {
            type = TOK_BYTE;
            n_bytes++;
        }
        if ((rc = tok_set_piece(t, id, buf, m, score, type)) < 0) {
            rc = lorad_error_set(err, rc, name, "%s: out of memory", name);
            goto fail;
        }
    }
    free(buf);
    buf = NULL;
    t->unk_id = 0;
    t->bos_id = 1;
    t->eos_id = 2;
    t->byte_fallback = n_bytes == 256;
    t->add_dummy_prefix = true;
    t->add_bos = true;
    if ((rc = tok_finish_spm(t, name, err)) < 0) goto fail;
    *ret = t;
    return 0;
fail:
    free(buf);
    lorad_tokenizer_free(t);
    return rc;
}
