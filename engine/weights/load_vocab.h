/* The vocabulary a model file carries in itself (GGUF "tokenizer.ggml.*" metadata), handed to the
 * tokenizer module's lorad_tokenizer_from_vocab(). The one definition both sides share. */
#pragma once
#include <stdint.h>

struct lorad_vocab_arrays {
    const char *model; const char *pre; int n_tokens; const char *const *tokens; const float *scores;
    const int32_t *token_types; int n_merges; const char *const *merges;
    int bos_id, eos_id, unk_id, pad_id; int add_bos, add_eos; /* -1 = unspecified */
};
