/* Generating a continuation of a prompt with a base model and, optionally, a LoRA adapter applied
 * as PEFT does at inference (y = W x + scale * B A x, no dropout), through the model's KV cache:
 * the prompt runs once in chunks, then one token per step. `lorad generate` is a thin command
 * over this; the inference routes call the same functions. */
#pragma once
#include <stdbool.h>
#include <stdint.h>

#include "adapter_read.h"
#include "error.h"
#include "sampler.h"
#include "tokenizer.h"
#include "weights.h"

#define LORAD_GENERATE_PREFILL_CHUNK 512 /* prompt tokens per engine call: bounds the activation buffers */
#define LORAD_GENERATE_MAX_STOP_IDS 4

struct lorad_generator_options {
    int threads;       /* exactly this many compute */
    int max_total;     /* prompt + generated tokens the cache holds, <= LORAD_MAX_SEQ_LEN */
    int max_chunk;     /* most tokens one engine call takes: the longest prompt chunk */
    bool no_kv_cache;  /* the reference path: the whole sequence again for every token (max_chunk
                        * must then be max_total) */
};

/* The model (base weights, the adapter's LoRA or none) with a KV cache for one sequence. */
struct lorad_generator;

/* Builds a generator over w (borrowed; it must outlive the generator) and ad (NULL: the base
 * alone; copied in, so it may be freed after). Returns 0 and *ret, or -errno with err naming the
 * field ("threads", "adapter", ...). */
int lorad_generator_new(struct lorad_generator **ret, const struct lorad_base_weights *w,
                        const struct lorad_adapter *ad, const struct lorad_generator_options *opt,
                        struct lorad_error *err);
void lorad_generator_free(struct lorad_generator *g);

/* The ids that end generation for this model: its config's EOS and the tokenizer's (tok may be
 * NULL), and <|eot_id|> and <|im_end|> when the tokenizer has them; duplicates and ids outside
 * the vocabulary left out. Returns how many were written to ret. */
int lorad_generate_stop_ids(const struct lorad_llama_config *cfg, const struct lorad_tokenizer *tok,
                            int32_t ret[LORAD_GENERATE_MAX_STOP_IDS]);

struct lorad_generation {
    const struct lorad_sampling *sampling;
    int max_tokens;              /* >= 1; n_prompt + max_tokens <= the generator's max_total */
    const int32_t *stop;         /* (n_stop) end ids (included in the output when hit) */
    int n_stop;
    /* Called once per generated token, after it is appended: seq[0..n) is the prompt and what was
     * generated so far, logits (vocab) the raw next-token logits it was picked from, at_stop
     * whether it is an end id. A negative return stops generation with that code. May be NULL. */
    int (*on_token)(void *ctx, const int32_t *seq, int n, const float *logits, bool at_stop);
    void *ctx;
};

/* Generates after seq[0..n_prompt) into seq (room for n_prompt + max_tokens ids), from an empty
 * cache. Returns 0 with *ret_n_generated and *ret_at_stop (generation ended at an end id rather
 * than max_tokens), or -errno with err: -ERANGE when logits are not finite, on_token's code, the
 * engine's errors. */
int lorad_generate(struct lorad_generator *g, const struct lorad_generation *req, int32_t *seq, int n_prompt,
                   int *ret_n_generated, bool *ret_at_stop, struct lorad_error *err);
