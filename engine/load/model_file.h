/* Opening a base model whatever its format: a Hugging Face directory (config.json +
 * safetensors), a GGUF file (magic "GGUF") or a llama2.c .bin (sane header and exact size). */
#pragma once
#include <stdbool.h>

#include "error.h"
#include "load_common.h"
#include "load_vocab.h"
#include "weights.h"

enum lorad_model_format {
    LORAD_FORMAT_HF_DIR,
    LORAD_FORMAT_GGUF,
    LORAD_FORMAT_LLAMA2C,
};

struct lorad_model_file {
    char *path;
    enum lorad_model_format format;
    const char *format_name;   /* "hf", "gguf", "llama2c" */
    struct lorad_base_weights weights; /* HF layout; owned by this handle */
    /* Source dtypes per tensor as stored in the file (before conversion), e.g. {"Q8_0", 14}. */
    const struct lorad_dtype_count *dtypes;
    int n_dtypes;
    size_t mapped_bytes;       /* tensor bytes used in place from shared mappings */
    size_t owned_bytes;        /* bytes of private buffers (converted tensors, vocabulary) */
    /* Tokenizer: GGUF carries its vocabulary (has_vocab); an HF dir has a file beside the
     * weights (tokenizer_path: tokenizer.model preferred, else tokenizer.json); llama2.c none. */
    int has_vocab;
    struct lorad_vocab_arrays vocab;
    char *tokenizer_path;      /* NULL when none was found */
    bool probed;               /* opened by lorad_model_file_probe: shapes and sizes only */
};

/* Detects the format of path and loads it. Returns 0 and *ret (close with
 * lorad_model_file_close), or -errno with err naming the file and the problem. */
int lorad_model_file_open(const char *path, struct lorad_model_file **ret, struct lorad_error *err);

/* Like lorad_model_file_open, but converts nothing: config, tensor shapes, dtypes, the vocabulary
 * and mapped_bytes/owned_bytes (the bytes the loaded model would hold) are as open would give
 * them, at the cost of reading the headers. The tensors' data must not be read (probed is true),
 * so the result sizes a job (lorad_train_memory_estimate) but cannot train or generate. */
int lorad_model_file_probe(const char *path, struct lorad_model_file **ret, struct lorad_error *err);

/* Releases the weights and everything behind them. Safe on NULL. */
void lorad_model_file_close(struct lorad_model_file *mf);

/* The name of a format ("hf", "gguf", "llama2c"). */
const char *lorad_model_format_name(enum lorad_model_format format);
