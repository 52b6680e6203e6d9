/* HF tokenizer.json with a BPE model: of the SentencePiece family (▁ for space, Prepend/Replace
 * normalizer or Metaspace pre-tokenizer, byte fallback), or byte-level (GPT-2, Llama 3, SmolLM:
 * ByteLevel pre-tokenizer alone or after a Split regex / Digits split, ByteLevel decoder); their
 * added tokens, and tokenizer_config.json (add_bos_token, add_eos_token, bos/eos tokens) or a
 * TemplateProcessing post-processor. Other normalizers, regexes and pre-tokenizers are refused
 * by name. */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tok_internal.h"

#define BAD(...) lorad_error_set(err, -EINVAL, name, __VA_ARGS__)
#define UNSUPPORTED(...) lorad_error_set(err, -ENOTSUP, name, __VA_ARGS__)

static const char kSpace[] = "\xE2\x96\x81";

static const char *type_of(json_t *o) {
    const char *s = json_string_value(json_object_get(o, "type"));
    return s ? s : "";
}

static bool is_byte_level(json_t *o) {
    if (!json_is_object(o)) return false;
    if (strcmp(type_of(o), "ByteLevel") == 0) return true;
    json_t *list = json_object_get(o, "pretokenizers");
    size_t i;
    json_t *x;
    json_array_foreach(list, i, x) if (is_byte_level(x)) return true;
    return false;
}

static bool is_replace_space(json_t *o) {
    json_t *pat = json_object_get(o, "pattern");
    const char *from = json_string_value(json_object_get(pat, "String"));
    const char *to = json_string_value(json_object_get(o, "content"));
    return strcmp(type_of(o), "Replace") == 0 && from && to && strcmp(from, " ") == 0 && strcmp(to, kSpace) == 0;
}

static bool is_prepend_space(json_t *o) {
    const char *p = json_string_value(json_object_get(o, "prepend"));
    return strcmp(type_of(o), "Prepend") == 0 && p && strcmp(p, kSpace) == 0;
}

static int read_normalizer(struct lorad_tokenizer *t, json_t *n, const char *name, struct lorad_error *err) {
    if (!n || json_is_null(n)) return 0;
    json_t *list = json_object_get(n, "normalizers");
    if (strcmp(type_of(n), "Sequence") != 0) list = NULL;
    size_t count = list ? json_array_size(list) : 1;
    bool replace = false;
    for (size_t i = 0; i < count; i++) {
        json_t *x = list ? json_array_get(list, i) : n;
        if (is_prepend_space(x)) {
            t->prepend = TOK_PREPEND_ALWAYS;
            t->prepend_unconditional = true;
        } else if (is_replace_space(x)) {
            replace = true;
        } else {
            return UNSUPPORTED("%s: normalizer '%s' is not supported (only Prepend(\"▁\") and Replace(\" \", \"▁\"))",
                               name, type_of(x));
        }
    }
    if (!replace) return UNSUPPORTED("%s: normalizer without Replace(\" \", \"▁\") is not supported", name);
    return 0;
}

static int read_pre_tokenizer(struct lorad_tokenizer *t, json_t *p, bool have_normalizer, const char *name,
                              struct lorad_error *err) {
    if (!p || json_is_null(p)) {
        if (!have_normalizer) return UNSUPPORTED("%s: neither a ▁ normalizer nor a Metaspace pre-tokenizer", name);
        return 0;
    }
    if (strcmp(type_of(p), "Metaspace") != 0)
        return UNSUPPORTED("%s: pre_tokenizer '%s' is not supported for SentencePiece-style BPE", name, type_of(p));
    const char *rep = json_string_value(json_object_get(p, "replacement"));
    if (rep && strcmp(rep, kSpace) != 0) return UNSUPPORTED("%s: Metaspace replacement '%s' is not ▁", name, rep);
    const char *scheme = json_string_value(json_object_get(p, "prepend_scheme"));
    json_t *aps = json_object_get(p, "add_prefix_space");
    if (scheme) {
        if (strcmp(scheme, "always") == 0) t->prepend = TOK_PREPEND_ALWAYS;
        else if (strcmp(scheme, "first") == 0) t->prepend = TOK_PREPEND_FIRST;
        else if (strcmp(scheme, "never") == 0) t->prepend = TOK_PREPEND_NEVER;
        else return UNSUPPORTED("%s: Metaspace prepend_scheme '%s' is not supported", name, scheme);
    } else {
        t->prepend = aps && json_is_false(aps) ? TOK_PREPEND_NEVER : TOK_PREPEND_ALWAYS;
    }
    json_t *split = json_object_get(p, "split");
    t->metaspace_split = !split || json_is_true(split);
    return 0;
}

/* The Split regexes we implement by hand (tok_pretok.c), as tokenizer.json spells them. */
static const char kGpt2Regex[] = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
static const char kLlama3Regex[] = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
                                   "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

static int read_split(struct lorad_tokenizer *t, json_t *x, const char *name, struct lorad_error *err) {
    const char *re = json_string_value(json_object_get(json_object_get(x, "pattern"), "Regex"));
    const char *behavior = json_string_value(json_object_get(x, "behavior"));
    if (!re) return UNSUPPORTED("%s: Split pre-tokenizer without a Regex pattern is not supported", name);
    if (json_is_true(json_object_get(x, "invert")) || !behavior || strcmp(behavior, "Isolated") != 0)
        return UNSUPPORTED("%s: Split pre-tokenizer other than behavior Isolated, invert false is not supported", name);
    if (strcmp(re, kGpt2Regex) == 0) t->pretok = TOK_PRETOK_GPT2;
    else if (strcmp(re, kLlama3Regex) == 0) t->pretok = TOK_PRETOK_LLAMA3;
    else return UNSUPPORTED("%s: Split regex '%s' is not supported (only the GPT-2 and Llama 3 patterns)", name, re);
    return 0;
}

/* ByteLevel alone, or a Sequence of [Digits(individual_digits)], [Split(regex)], ByteLevel in
 * that order: the order in which tok_pretokenize applies them. */
static int read_byte_level_pre_tokenizer(struct lorad_tokenizer *t, json_t *p, const char *name,
                                         struct lorad_error *err) {
    json_t *list = strcmp(type_of(p), "Sequence") == 0 ? json_object_get(p, "pretokenizers") : NULL;
    size_t count = list ? json_array_size(list) : 1;
    int stage = 0; /* 1 after Digits, 2 after Split, 3 after ByteLevel */
    for (size_t i = 0; i < count; i++) {
        json_t *x = list ? json_array_get(list, i) : p;
        const char *type = type_of(x);
        int rc = 0;
        if (strcmp(type, "Digits") == 0 && stage < 1) {
            if (!json_is_true(json_object_get(x, "individual_digits")))
                return UNSUPPORTED("%s: Digits pre-tokenizer without individual_digits is not supported", name);
            t->split_digits = true;
            stage = 1;
        } else if (strcmp(type, "Split") == 0 && stage < 2) {
            rc = read_split(t, x, name, err);
            stage = 2;
        } else if (strcmp(type, "ByteLevel") == 0 && stage < 3) {
            json_t *use_regex = json_object_get(x, "use_regex");
            if (!json_is_false(use_regex)) {
                if (stage == 2) return UNSUPPORTED("%s: ByteLevel use_regex after a Split is not supported", name);
                t->pretok = TOK_PRETOK_GPT2;
            }
            t->byte_level_prefix_space = json_is_true(json_object_get(x, "add_prefix_space"));
            stage = 3;
        } else {
            return UNSUPPORTED("%s: pre_tokenizer '%s' is not supported here for byte-level BPE (only [Digits], "
                               "[Split], ByteLevel in that order)", name, type);
        }
        if (rc < 0) return rc;
    }
    if (stage != 3) return UNSUPPORTED("%s: byte-level BPE needs a ByteLevel pre_tokenizer", name);
    if (t->split_digits && t->byte_level_prefix_space)
        return UNSUPPORTED("%s: ByteLevel add_prefix_space after a Digits split is not supported", name);
    return 0;
}

/* A token string from tokenizer_config.json: "..." or {"content": "..."}. */
static const char *config_token(json_t *cfg, const char *key) {
    json_t *v = json_object_get(cfg, key);
    if (json_is_object(v)) v = json_object_get(v, "content");
    return json_string_value(v);
}

/* TemplateProcessing "single" (alone or in a Sequence, as Llama 3 has it after ByteLevel):
 * special tokens before $A add BOS, after it add EOS. */
static void read_post_processor(struct lorad_tokenizer *t, json_t *pp) {
    size_t k;
    json_t *step;
    if (json_is_object(pp) && strcmp(type_of(pp), "Sequence") == 0)
        json_array_foreach(json_object_get(pp, "processors"), k, step) read_post_processor(t, step);
    if (!json_is_object(pp) || strcmp(type_of(pp), "TemplateProcessing") != 0) return;
    json_t *single = json_object_get(pp, "single");
    bool seen_a = false;
    size_t i;
    json_t *x;
    json_array_foreach(single, i, x) {
        if (json_object_get(x, "Sequence")) {
            seen_a = true;
            continue;
        }
        const char *tok = json_string_value(json_object_get(json_object_get(x, "SpecialToken"), "id"));
        if (!tok) continue;
        int32_t id = tok_str_map_get(t, tok, strlen(tok));
        if (id < 0) continue;
        if (!seen_a) t->bos_id = id, t->add_bos = true;
        else t->eos_id = id, t->add_eos = true;
    }
}

static int set_entry(struct lorad_tokenizer *t, int64_t id, const char *s, int type, const char *name,
                     struct lorad_error *err) {
    if (id < 0 || id >= t->n_vocab) return BAD("%s: token id %lld is out of range", name, (long long)id);
    size_t len = strlen(s);
    if (len > LORAD_TOKENIZER_MAX_PIECE) return BAD("%s: token %lld is longer than %d bytes", name, (long long)id,
                                                    LORAD_TOKENIZER_MAX_PIECE);
    return tok_set_piece(t, (int)id, s, len, 0.0f, type) < 0 ? lorad_error_set(err, -ENOMEM, name, "out of memory") : 0;
}

static int load(struct lorad_tokenizer **ret, json_t *root, json_t *cfg, const char *name, struct lorad_error *err) {
    json_t *model = json_object_get(root, "model");
    if (!json_is_object(model)) return BAD("%s: no \"model\" object", name);
    if (strcmp(type_of(model), "BPE") != 0)
        return UNSUPPORTED("%s: model type '%s' is not supported (only BPE)", name, type_of(model));
    json_t *decoder = json_object_get(root, "decoder");
    bool byte_level = is_byte_level(json_object_get(root, "pre_tokenizer")) || is_byte_level(decoder);
    json_t *dropout = json_object_get(model, "dropout");
    if (json_number_value(dropout) > 0) return UNSUPPORTED("%s: BPE dropout is not supported", name);
    const char *prefix = json_string_value(json_object_get(model, "continuing_subword_prefix"));
    const char *suffix = json_string_value(json_object_get(model, "end_of_word_suffix"));
    if ((prefix && *prefix) || (suffix && *suffix))
        return UNSUPPORTED("%s: continuing_subword_prefix / end_of_word_suffix are not supported", name);
    json_t *vocab = json_object_get(model, "vocab"), *merges = json_object_get(model, "merges");
    json_t *added = json_object_get(root, "added_tokens");
    if (!json_is_object(vocab) || !json_is_array(merges)) return BAD("%s: model.vocab or model.merges missing", name);
    /* The vocabulary size is the largest id + 1; ids are checked to be dense below. */
    int64_t max_id = -1;
    const char *key;
    json_t *v;
    json_object_foreach(vocab, key, v) {
        if (!json_is_integer(v)) return BAD("%s: vocab entry '%s' is not an integer id", name, key);
        if (json_integer_value(v) > max_id) max_id = json_integer_value(v);
    }
    size_t i;
    json_array_foreach(added, i, v) {
        int64_t id = json_integer_value(json_object_get(v, "id"));
        if (id > max_id) max_id = id;
    }
    if (max_id < 0 || max_id >= LORAD_TOKENIZER_MAX_VOCAB)
        return BAD("%s: vocabulary size %lld is not in 1..%d", name, (long long)max_id + 1, LORAD_TOKENIZER_MAX_VOCAB);
    struct lorad_tokenizer *t;
    int rc = tok_alloc(&t, (int)max_id + 1);
    if (rc < 0) return lorad_error_set(err, rc, name, "out of memory");
    t->kind = byte_level ? LORAD_TOKENIZER_BYTE_LEVEL : LORAD_TOKENIZER_HF_SPM;
    json_object_foreach(vocab, key, v) {
        int b = byte_level ? -1 : tok_byte_piece_value(key, strlen(key));
        int type = b >= 0 ? TOK_BYTE : TOK_NORMAL;
        if ((rc = set_entry(t, json_integer_value(v), key, type, name, err)) < 0) goto fail;
        if (type == TOK_BYTE) t->byte_ids[b] = (int32_t)json_integer_value(v);
    }
    t->added = calloc(json_array_size(added) + 1, sizeof *t->added);
    if (!t->added) {
        rc = lorad_error_set(err, -ENOMEM, name, "out of memory");
        goto fail;
    }
    json_array_foreach(added, i, v) {
        const char *content = json_string_value(json_object_get(v, "content"));
        json_t *jid = json_object_get(v, "id");
        if (!content || !*content || !json_is_integer(jid)) {
            rc = BAD("%s: added_tokens[%zu] needs a non-empty content and an integer id", name, i);
            goto fail;
        }
        bool special = json_is_true(json_object_get(v, "special"));
        if ((rc = set_entry(t, json_integer_value(jid), content, special ? TOK_CONTROL : TOK_USER_DEFINED, name, err)) < 0)
            goto fail;
        t->added[t->n_added++] = (struct tok_added){(int32_t)json_integer_value(jid), special,
                                                    json_is_true(json_object_get(v, "lstrip")),
                                                    json_is_true(json_object_get(v, "rstrip"))};
    }
    tok_sort_added(t);
    for (int id = 0; id < t->n_vocab; id++)
        if (!t->pieces[id].text) {
            rc = BAD("%s: id %d has no token (ids must be dense)", name, id);
            goto fail;
        }
    if ((rc = tok_str_map_build(t)) < 0) {
        rc = lorad_error_set(err, rc, name, "out of memory");
        goto fail;
    }
    t->byte_fallback = json_is_true(json_object_get(model, "byte_fallback"));
    t->ignore_merges = json_is_true(json_object_get(model, "ignore_merges"));
    for (int b = 0; t->byte_fallback && b < 256; b++)
        if (t->byte_ids[b] < 0) {
            rc = BAD("%s: byte_fallback is on but <0x%02X> is not in the vocabulary", name, b);
            goto fail;
        }
    const char *unk = json_string_value(json_object_get(model, "unk_token"));
    if (unk) t->unk_id = tok_str_map_get(t, unk, strlen(unk));
    json_t *normalizer = json_object_get(root, "normalizer");
    if (byte_level) {
        if ((normalizer && !json_is_null(normalizer)) || t->byte_fallback ||
            (decoder && !json_is_null(decoder) && strcmp(type_of(decoder), "ByteLevel") != 0)) {
            rc = UNSUPPORTED("%s: byte-level BPE with a normalizer, byte_fallback, or a decoder other than ByteLevel "
                             "is not supported", name);
            goto fail;
        }
        if ((rc = read_byte_level_pre_tokenizer(t, json_object_get(root, "pre_tokenizer"), name, err)) < 0) goto fail;
        tok_map_byte_level_bytes(t);
    } else {
        if ((rc = read_normalizer(t, normalizer, name, err)) < 0) goto fail;
        if ((rc = read_pre_tokenizer(t, json_object_get(root, "pre_tokenizer"), normalizer && !json_is_null(normalizer),
                                     name, err)) < 0)
            goto fail;
    }
    if ((rc = tok_pair_map_init(&t->merges, json_array_size(merges))) < 0) {
        rc = lorad_error_set(err, rc, name, "out of memory");
        goto fail;
    }
    json_array_foreach(merges, i, v) {
        const char *s = json_string_value(v);
        const char *l = NULL, *r = NULL;
        size_t ll = 0, rl = 0;
        if (s) {
            const char *sp = strchr(s, ' ');
            if (sp) l = s, ll = (size_t)(sp - s), r = sp + 1, rl = strlen(sp + 1);
        } else if (json_array_size(v) == 2) {
            l = json_string_value(json_array_get(v, 0));
            r = json_string_value(json_array_get(v, 1));
            ll = l ? strlen(l) : 0;
            rl = r ? strlen(r) : 0;
        }
        if (!l || !r || ll > LORAD_TOKENIZER_MAX_PIECE || rl > LORAD_TOKENIZER_MAX_PIECE) {
            rc = BAD("%s: merges[%zu] is not \"left right\" or [left, right]", name, i);
            goto fail;
        }
        if (tok_add_merge(t, l, ll, r, rl, (int32_t)i) < 0) {
            rc = BAD("%s: merges[%zu] '%.*s' '%.*s' uses a token missing from the vocabulary", name, i, (int)ll, l,
                     (int)rl, r);
            goto fail;
        }
    }
    read_post_processor(t, json_object_get(root, "post_processor"));
    if (cfg) {
        const char *bos = config_token(cfg, "bos_token"), *eos = config_token(cfg, "eos_token");
        const char *pad = config_token(cfg, "pad_token");
        if (bos) t->bos_id = tok_str_map_get(t, bos, strlen(bos));
        if (eos) t->eos_id = tok_str_map_get(t, eos, strlen(eos));
        if (pad) t->pad_id = tok_str_map_get(t, pad, strlen(pad));
        json_t *ab = json_object_get(cfg, "add_bos_token"), *ae = json_object_get(cfg, "add_eos_token");
        if (json_is_boolean(ab)) t->add_bos = json_is_true(ab);
        if (json_is_boolean(ae)) t->add_eos = json_is_true(ae);
    }
    *ret = t;
    return 0;
fail:
    lorad_tokenizer_free(t);
    return rc;
}

int tok_load_hf_json(struct lorad_tokenizer **ret, const char *json, size_t len, const char *name,
                     const char *config_json, size_t config_len, const char *config_name,
                     struct lorad_error *err) {
    json_error_t jerr;
    json_t *root = json_loadb(json, len, 0, &jerr);
    if (!root) return BAD("%s: line %d: %s", name, jerr.line, jerr.text);
    json_t *cfg = NULL;
    if (config_json) {
        cfg = json_loadb(config_json, config_len, 0, &jerr);
        if (!cfg) {
            json_decref(root);
            return lorad_error_set(err, -EINVAL, config_name, "%s: line %d: %s", config_name, jerr.line, jerr.text);
        }
    }
    int rc = load(ret, root, cfg, name, err);
    json_decref(cfg);
    json_decref(root);
    return rc;
}
