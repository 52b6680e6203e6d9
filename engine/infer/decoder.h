/* Incremental decoding of many sequences at once over one frozen base, each sequence with its own
 * KV cache and its own LoRA adapter or none (S-LoRA / Punica style): one step runs every
 * sequence's new tokens (a prompt chunk, or the one token just sampled) through the model together,
 * so each frozen weight is read once per step for all of them, and each adapter is applied unmerged,
 * y = W x + scale * B (A x), to the rows of the sequences that use it.
 *
 * Why a decoder beside the training model (model.h): training sizes every buffer for one fixed
 * (batch, seq) and owns one LoRA; serving mixes prompt chunks and single tokens from different
 * requests with different adapters in one product, and keeps per-sequence caches that outlive a
 * step. The numerics are the same Hugging Face LlamaForCausalLM; tests compare both against
 * PyTorch.
 *
 * The single tokens of decoding sequences go through lorad_gemm_xwt_small (engine/kernels/
 * gemm_small.h) together, a few rows at a time, so each weight row is streamed once for all of
 * them; each prompt chunk (n > 1) gets its own lorad_gemm_xwt over its rows. So what one item
 * computes never depends on which other items share its step.
 * The KV cache is bf16 when the base's linear weights are all bf16 (the base's own precision), else
 * f32; with a bf16 cache, keys (after RoPE) and values are rounded to bf16 at every position,
 * including the prompt chunk attending to itself, so a token's logits do not depend on how its
 * prompt was chunked. */
#pragma once
#include <stdbool.h>
#include <stdint.h>

#include "adapter_read.h"
#include "error.h"
#include "gemm.h"
#include "weights.h"

#define LORAD_DECODER_MAX_SEQS 256 /* sequences one step takes */

struct lorad_decoder_options {
    int threads;  /* exactly this many compute (caller + threads-1) */
    int max_rows; /* tokens one step takes over all its sequences, 1..LORAD_MAX_SEQ_LEN */
    int max_seqs; /* sequences one step takes, 1..LORAD_DECODER_MAX_SEQS */
    int max_pos;  /* positions a sequence may reach (RoPE tables), 1..LORAD_MAX_SEQ_LEN */
    enum lorad_compute_dtype compute_dtype; /* of the prompt products (decode rows are always f32);
                                             * lorad generate and the service ask for FLOAT32 so an
                                             * answer does not depend on the host's ISA */
};

struct lorad_decoder;

/* A decoder over w (borrowed; must outlive the decoder). Returns 0 and *ret, or -errno with err
 * naming the field ("threads", "max_rows", "max_seqs", "max_pos", "compute_dtype"). */
int lorad_decoder_new(struct lorad_decoder **ret, const struct lorad_base_weights *w,
                      const struct lorad_decoder_options *opt, struct lorad_error *err);
void lorad_decoder_free(struct lorad_decoder *d);
const struct lorad_llama_config *lorad_decoder_config(const struct lorad_decoder *d);
/* Bytes the decoder allocated (activations for max_rows, RoPE tables, scratch). */
int64_t lorad_decoder_bytes(const struct lorad_decoder *d);

/* An adapter laid out for unmerged application to a base: per (layer, module) the A (r, in) and
 * B (out, r) it carries, in f32, its PEFT scale and, for DoRA, each output's scale m / ||W + s B A||
 * (fixed for the adapter's life, so a step costs what a plain LoRA's does plus one multiply an
 * output). */
struct lorad_lora_weights;

/* Copies what ad carries (checked against base's config: modules, shapes) into a new
 * lorad_lora_weights; a DoRA adapter's scales are computed from base's weights. ad may be freed
 * after; base must be the one the decoder runs. Returns 0 and *ret, or -errno with err (param
 * "adapter"). */
int lorad_lora_weights_new(struct lorad_lora_weights **ret, const struct lorad_adapter *ad,
                           const struct lorad_base_weights *base, struct lorad_error *err);
void lorad_lora_weights_free(struct lorad_lora_weights *lw);
int64_t lorad_lora_weights_bytes(const struct lorad_lora_weights *lw);

/* The KV cache of one sequence: capacity tokens of keys and values for every layer. */
struct lorad_kv_cache;

int lorad_kv_cache_new(struct lorad_kv_cache **ret, const struct lorad_decoder *d, int capacity,
                       struct lorad_error *err);
void lorad_kv_cache_free(struct lorad_kv_cache *c);
int lorad_kv_cache_len(const struct lorad_kv_cache *c);
int lorad_kv_cache_capacity(const struct lorad_kv_cache *c);
void lorad_kv_cache_reset(struct lorad_kv_cache *c);
/* Bytes one cached token takes under d (all layers, keys and values). */
int64_t lorad_kv_cache_bytes_per_token(const struct lorad_decoder *d);

/* One sequence's part of a step. */
struct lorad_decode_item {
    struct lorad_kv_cache *cache;          /* tokens go to positions len(cache).. and stay cached */
    const struct lorad_lora_weights *lora; /* NULL: the base alone */
    const int32_t *tokens;                 /* (n) */
    int n;
    float *logits;                         /* (vocab): the next-token logits after the last of
                                            * tokens; NULL skips the LM head (a prompt chunk that
                                            * is not the last) */
};

/* Runs the items' tokens through the model together. Items must use distinct caches made for d.
 * An item's logits depend only on its tokens, cache and adapter, never on
 * the other items of the step, so batching never changes an answer. Returns 0, or -EINVAL (err names
 * "items", "tokens" or "lora") for a bad item: more than max_seqs items or max_rows tokens, an id
 * outside the vocabulary, a cache past its capacity or max_pos (-ENOSPC). Nothing is cached when
 * an item is refused. */
int lorad_decoder_step(struct lorad_decoder *d, struct lorad_decode_item *items, int n_items,
                       struct lorad_error *err);
