/* Internals shared by the tok_*.c files: the tokenizer struct, its hash tables, and the loaders'
 * entry points. Not part of the public API (see tokenizer.h). */
#pragma once
#include <assert.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tokenizer.h"

/* SentencePiece piece types (sentencepiece_model.proto numbering, also GGUF token_type). */
enum tok_piece_type {
    TOK_NORMAL = 1,
    TOK_UNKNOWN = 2,
    TOK_CONTROL = 3,
    TOK_USER_DEFINED = 4,
    TOK_UNUSED = 5,
    TOK_BYTE = 6,
};

struct tok_piece {
    char *text;     /* NUL-terminated, points into the tokenizer's arena or own malloc */
    uint32_t len;
    float score;
    uint8_t type;   /* enum tok_piece_type */
};

/* String -> id, open addressing over ids (-1 empty); strings live in the pieces. */
struct tok_str_map {
    int32_t *slots;
    uint32_t mask;
};

/* (left id, right id) -> (rank, merged id) for rank-based BPE. */
struct tok_pair_entry {
    uint64_t key;   /* (left << 32 | right) + 1; 0 = empty */
    int32_t rank;
    int32_t merged;
};
struct tok_pair_map {
    struct tok_pair_entry *slots;
    uint32_t mask;
};

/* A token matched as a whole in raw text before the model runs (HF added tokens, SentencePiece
 * user-defined pieces). */
struct tok_added {
    int32_t id;
    bool special;
    bool lstrip, rstrip;
};

enum tok_pretok {
    TOK_PRETOK_NONE = 0,
    TOK_PRETOK_GPT2 = 1,    /* 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ */
    TOK_PRETOK_LLAMA3 = 2,  /* (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+ */
};

enum tok_prepend {
    TOK_PREPEND_NEVER = 0,
    TOK_PREPEND_ALWAYS = 1,
    TOK_PREPEND_FIRST = 2,
};

struct lorad_tokenizer {
    enum lorad_tokenizer_kind kind;
    int n_vocab;
    struct tok_piece *pieces;
    struct tok_str_map piece_ids;   /* every piece -> id (first id wins on duplicates) */
    int32_t bos_id, eos_id, unk_id, pad_id;
    bool add_bos, add_eos;
    int32_t byte_ids[256];          /* id of <0xNN> (SentencePiece kinds) or of the byte's GPT-2
                                     * character (BYTE_LEVEL), -1 when absent */
    bool byte_fallback;

    /* SentencePiece normalizer (LORAD_TOKENIZER_SPM_BPE). */
    bool add_dummy_prefix, remove_extra_whitespaces, escape_whitespaces;
    char *unk_surface;              /* what decode writes for the unknown piece */

    /* Whole-unit tokens matched in text first; sorted by descending length. */
    struct tok_added *added;
    int n_added;

    /* Rank-based BPE (HF_SPM, BYTE_LEVEL). */
    struct tok_pair_map merges;
    bool ignore_merges;
    enum tok_prepend prepend;       /* HF_SPM: where a ▁ is prepended */
    bool metaspace_split;           /* HF_SPM: split words at ▁ before BPE */
    bool prepend_unconditional;     /* HF_SPM: Prepend normalizer (always), not Metaspace (only if missing) */
    enum tok_pretok pretok;         /* BYTE_LEVEL */
    bool split_digits;              /* BYTE_LEVEL: each \p{N} its own pre-token first (SmolLM) */
    bool byte_level_prefix_space;   /* BYTE_LEVEL add_prefix_space */
};

/* Table helpers (tok_vocab.c). */
int tok_str_map_build(struct lorad_tokenizer *t);
int32_t tok_str_map_get(const struct lorad_tokenizer *t, const char *s, size_t len);
int tok_pair_map_init(struct tok_pair_map *m, size_t n);
int tok_pair_map_put(struct tok_pair_map *m, int32_t left, int32_t right, int32_t rank, int32_t merged);
const struct tok_pair_entry *tok_pair_map_get(const struct tok_pair_map *m, int32_t left, int32_t right);

/* Allocates t with n_vocab zeroed pieces and ids at -1. */
/* The byte a piece spelled exactly "<0xNN>" (two hex digits) stands for, or -1. One strict parser
 * for every loader: sscanf's %X also took a sign ("<0x-6>" read as 4294967290, an index far past
 * byte_ids; found by fuzz_tokenizer_json). */
int tok_byte_piece_value(const char *s, size_t len);
int tok_alloc(struct lorad_tokenizer **ret, int n_vocab);
/* Copies a piece string into piece id (the tokenizer owns the copy). */
int tok_set_piece(struct lorad_tokenizer *t, int id, const char *s, size_t len, float score, int type);
/* After pieces are set: builds the lookup table, byte ids, the added-token list from
 * user-defined pieces (SPM), validates special ids. name is the file for error messages. */
int tok_finish_spm(struct lorad_tokenizer *t, const char *name, struct lorad_error *err);
/* The same for a byte-level vocabulary whose pieces carry SentencePiece types (GGUF "gpt2"):
 * control and user-defined pieces become added tokens (control ones special). */
int tok_finish_byte_level(struct lorad_tokenizer *t, const char *name, struct lorad_error *err);
/* Byte-level kinds: points byte_ids at the pieces of the bytes' GPT-2 characters (after the
 * lookup table is built). */
void tok_map_byte_level_bytes(struct lorad_tokenizer *t);
/* Adds merge number rank of pieces left+right (which must exist, as must their concatenation).
 * Returns 0 or -ENOENT when a piece is missing; a repeated pair keeps its first rank. */
int tok_add_merge(struct lorad_tokenizer *t, const char *left, size_t left_len, const char *right, size_t right_len,
                  int32_t rank);
/* Sorts t->added by descending piece length so the longest match wins. */
void tok_sort_added(struct lorad_tokenizer *t);

/* Loaders. data/len is the whole file; name is its path for error messages. */
int tok_load_spm_model(struct lorad_tokenizer **ret, const uint8_t *data, size_t len, const char *name,
                       struct lorad_error *err);
int tok_load_llama2c_bin(struct lorad_tokenizer **ret, const uint8_t *data, size_t len, const char *name,
                         struct lorad_error *err);
/* config_json/config_len may be NULL (no tokenizer_config.json). */
int tok_load_hf_json(struct lorad_tokenizer **ret, const char *json, size_t len, const char *name,
                     const char *config_json, size_t config_len, const char *config_name,
                     struct lorad_error *err);

/* A growable id buffer used by the encoders. */
struct tok_ids {
    int32_t *v;
    size_t n, cap;
};
int tok_ids_push(struct tok_ids *ids, int32_t id);

/* Encoders of one text segment without special tokens (tok_spm_bpe.c, tok_rank_bpe.c). */
int tok_spm_encode(const struct lorad_tokenizer *t, const char *text, size_t len, struct tok_ids *out);
int tok_hf_spm_encode(const struct lorad_tokenizer *t, const char *text, size_t len, bool at_start,
                      struct tok_ids *out);
int tok_byte_level_encode(const struct lorad_tokenizer *t, const char *text, size_t len, struct tok_ids *out);
/* Rank-based BPE of one word given as initial symbol ids; appends the result to out. */
int tok_rank_bpe_word(const struct lorad_tokenizer *t, const int32_t *syms, size_t n, struct tok_ids *out);

/* Byte-level pre-tokenizer (tok_pretok.c): calls fn on each pre-token of text in order. */
typedef int (*tok_span_fn)(void *ctx, const char *s, size_t len);
int tok_pretokenize(enum tok_pretok pattern, bool split_digits, const char *text, size_t len,
                    tok_span_fn fn, void *ctx);

/* UTF-8 (tok_utf8.c). Decodes one code point at s (n > 0 bytes available) into *cp and returns
 * its length; an invalid or truncated sequence yields cp = U+FFFD and length 1. */
size_t tok_utf8_decode(const char *s, size_t n, uint32_t *cp);
/* Writes cp as UTF-8 into out (4 bytes room) and returns the length. */
size_t tok_utf8_encode(uint32_t cp, char *out);
/* GPT-2's byte <-> printable code point mapping. */
uint32_t tok_byte_to_unicode(uint8_t b);
int tok_unicode_to_byte(uint32_t cp); /* -1 when cp is not in the mapping */

/* Unicode classes of the pre-tokenizer regexes (tok_pretok.c over the generated
 * tok_unicode_table.c): \p{L}, \p{N}, and \s (the White_Space property). */
extern const uint32_t tok_unicode_letter_ranges[][2];
extern const size_t tok_unicode_letter_ranges_count;
extern const uint32_t tok_unicode_number_ranges[][2];
extern const size_t tok_unicode_number_ranges_count;
bool tok_unicode_is_letter(uint32_t cp);
bool tok_unicode_is_number(uint32_t cp);
bool tok_unicode_is_white_space(uint32_t cp);
