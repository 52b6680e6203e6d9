/* The vocabulary a model file carries in itself (GGUF "tokenizer.ggml.*" metadata), handed to the
 * tokenizer module's lorad_tokenizer_from_vocab(). This struct is the contract between the two;
 * the tokenizer helper declares the same definition, and the lead will keep just one of them. */
#pragma once
#include <stdint.h>

#ifndef LORAD_VOCAB_ARRAYS_DEFINED
#define LORAD_VOCAB_ARRAYS_DEFINED
struct lorad_vocab_arrays {
    const char *model; const char *pre; int n_tokens; const char *const *tokens; const float *scores;
    const int32_t *token_types; int n_merges; const char *const *merges;
    int bos_id, eos_id, unk_id, pad_id; int add_bos, add_eos; /* -1 = unspecified */
};
#endif
