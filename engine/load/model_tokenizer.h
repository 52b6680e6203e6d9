/* The tokenizer that goes with a base model: a GGUF's own vocabulary, the tokenizer file beside
 * an HF model's weights, or a file the caller names instead. */
#pragma once
#include "error.h"
#include "model_file.h"
#include "tokenizer.h"

/* Loads the tokenizer of mf, or the one at override_path when it is non-NULL. Returns 0 with
 * *ret (NULL when the model has none, as a llama2.c .bin; freed with lorad_tokenizer_free), or
 * -errno with err's param "tokenizer" (override_path) or "model": the file cannot be read, or the
 * tokenizer has more pieces than the model has embedding rows. */
int lorad_model_file_tokenizer(const struct lorad_model_file *mf, const char *override_path,
                               struct lorad_tokenizer **ret, struct lorad_error *err);
