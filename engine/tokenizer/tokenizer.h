/* Tokenizers for Llama-family models: SentencePiece BPE (tokenizer.model, llama2.c tokenizer.bin,
 * HF tokenizer.json with ▁ and byte fallback) and byte-level BPE (HF tokenizer.json of Llama 3 /
 * SmolLM / GPT-2 style), plus a vocabulary handed over in memory (GGUF tokenizer.ggml.*).
 *
 * Ids are meant to be identical to the reference implementations (python sentencepiece, HF
 * tokenizers); what a file asks for that we do not implement is refused at load time with an
 * error naming the file and the feature, never silently approximated.
 *
 * A loaded tokenizer is immutable and may be shared by threads. */
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "load_vocab.h"

struct lorad_tokenizer;

/* Limits on what callers may hand us; larger inputs are refused with -E2BIG. */
#define LORAD_TOKENIZER_MAX_TEXT (64u << 20)      /* bytes of text per encode call */
#define LORAD_TOKENIZER_MAX_FILE (512u << 20)     /* bytes of a tokenizer file */
#define LORAD_TOKENIZER_MAX_VOCAB (4 << 20)       /* pieces in a vocabulary */
#define LORAD_TOKENIZER_MAX_PIECE 4096            /* bytes of one piece */

enum lorad_tokenizer_kind {
    LORAD_TOKENIZER_SPM_BPE = 1,   /* SentencePiece BPE: scores decide merges, ▁ for space */
    LORAD_TOKENIZER_HF_SPM = 2,    /* HF BPE over ▁-text with merge ranks and byte fallback */
    LORAD_TOKENIZER_BYTE_LEVEL = 3 /* HF/GPT-2 byte-level BPE with a regex pre-tokenizer */
};

/* Loads a tokenizer from path: a tokenizer.model (SentencePiece protobuf), a tokenizer.json, a
 * llama2.c tokenizer.bin, or a directory holding one of them (tried in the order tokenizer.json,
 * tokenizer.model, tokenizer.bin) and optionally tokenizer_config.json. The format is detected
 * from the content, not the name. On success *ret is a new tokenizer the caller frees with
 * lorad_tokenizer_free(). Returns 0 or -errno with err naming the file and what is wrong. */
int lorad_tokenizer_load(struct lorad_tokenizer **ret, const char *path, struct lorad_error *err);

/* The vocabulary of a GGUF file (keys tokenizer.ggml.*), borrowed for the duration of the call:
 * struct lorad_vocab_arrays of load_vocab.h. model "llama" is SentencePiece BPE, "gpt2" byte-level
 * BPE; token_types use SentencePiece numbering (1 normal, 2 unknown, 3 control, 4 user-defined,
 * 5 unused, 6 byte); scores may be NULL for gpt2; -1 marks absent ids and unspecified add_bos/eos. */

/* Builds a tokenizer from in-memory arrays (copied; v may be freed afterwards). "llama" gives the
 * SentencePiece BPE (dummy prefix, ▁, byte fallback when <0xNN> pieces exist); "gpt2" gives
 * byte-level BPE whose pre-tokenizer follows v->pre ("llama-bpe"/"llama3" → Llama 3 regex,
 * "smollm" → digits split + GPT-2 regex, NULL/"default"/"gpt2" → GPT-2 regex; others refused). */
int lorad_tokenizer_from_vocab(struct lorad_tokenizer **ret, const struct lorad_vocab_arrays *v,
                               struct lorad_error *err);

/* Frees t (NULL is fine). */
void lorad_tokenizer_free(struct lorad_tokenizer *t);

/* add_bos / add_eos arguments of lorad_tokenizer_encode. */
#define LORAD_TOKENIZER_DEFAULT (-1) /* as the tokenizer's configuration says */

/* Encodes len bytes of UTF-8 text (invalid bytes become U+FFFD as SentencePiece does) into ids.
 * add_bos/add_eos: 0, 1 or LORAD_TOKENIZER_DEFAULT. Special (added) tokens written in the text
 * are recognised for the HF and GGUF-gpt2 forms; SentencePiece control pieces never come from
 * text. On success *ret_ids is a malloc'd array the caller frees and *ret_n its length.
 * Returns 0, -E2BIG when len > LORAD_TOKENIZER_MAX_TEXT, -ENOMEM. */
int lorad_tokenizer_encode(const struct lorad_tokenizer *t, const char *text, size_t len,
                           int add_bos, int add_eos, int32_t **ret_ids, size_t *ret_n,
                           struct lorad_error *err);

/* Decodes ids back to text (control pieces vanish, byte pieces become bytes, the dummy-prefix
 * space is dropped as SentencePiece does). On success *ret_text is a malloc'd NUL-terminated
 * string (the caller frees it) and *ret_len its length without the NUL. Returns -EINVAL (err
 * names the index) for an id outside [0, vocab size). */
int lorad_tokenizer_decode(const struct lorad_tokenizer *t, const int32_t *ids, size_t n,
                           char **ret_text, size_t *ret_len, struct lorad_error *err);

/* The piece string of id (owned by t), or NULL when id is out of range. */
const char *lorad_tokenizer_id_to_piece(const struct lorad_tokenizer *t, int32_t id);

/* The id of a piece string (exact vocabulary entry), or -1. */
int32_t lorad_tokenizer_piece_to_id(const struct lorad_tokenizer *t, const char *piece);

/* The id of a special/control/added token written as text (e.g. "<|begin_of_text|>", "</s>"),
 * or -1 when that string is not a special token of this tokenizer. */
int32_t lorad_tokenizer_special_id(const struct lorad_tokenizer *t, const char *text);

int lorad_tokenizer_vocab_size(const struct lorad_tokenizer *t);
int32_t lorad_tokenizer_bos_id(const struct lorad_tokenizer *t);  /* -1 when none */
int32_t lorad_tokenizer_eos_id(const struct lorad_tokenizer *t);  /* -1 when none */
int32_t lorad_tokenizer_pad_id(const struct lorad_tokenizer *t);  /* -1 when none */
int32_t lorad_tokenizer_unk_id(const struct lorad_tokenizer *t);  /* -1 when none */
enum lorad_tokenizer_kind lorad_tokenizer_kind(const struct lorad_tokenizer *t);
/* Whether encode with LORAD_TOKENIZER_DEFAULT adds BOS / EOS. */
int lorad_tokenizer_adds_bos(const struct lorad_tokenizer *t);
int lorad_tokenizer_adds_eos(const struct lorad_tokenizer *t);
