/* A LlamaForCausalLM (Hugging Face semantics) with LoRA adapters, trained on the CPU.
 *
 * The model borrows frozen base weights (F32 or BF16, mixed allowed; compute is f32), owns the
 * LoRA parameters and gradients as two flat buffers (see lora.h), and owns every activation
 * buffer, sized once at creation for (max_batch, max_seq); nothing is allocated per step.
 *
 * How a trainer drives it (torchtune normalisation):
 *   for each optimiser step:
 *     denom = sum over the step's micro-batches of lorad_count_labels(...)
 *     for each micro-batch: lorad_model_forward_backward(m, &batch, denom, &loss_sum, &correct, err)
 *         (gradients ACCUMULATE into lorad_model_grads(); loss of the step = sum(loss_sum)/denom)
 *     lorad_adamw_step(&opt, &ocfg, lorad_model_params(m,NULL), lorad_model_grads(m,NULL),
 *                      reduce_hook, user, &grad_norm, &lr)   (clips, updates, zeroes the grads)
 * Results are bit-identical for a fixed seed and thread count. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "batch.h"
#include "error.h"
#include "gemm.h"
#include "lora.h"
#include "weights.h"

struct lorad_run_options {
    int threads;                   /* exactly this many threads compute (caller + threads-1) */
    int max_batch;                 /* B of every batch passed later */
    int max_seq;                   /* T of every batch passed later; positions must be < max(max_seq, kv_cache_len) */
    bool activation_checkpointing; /* keep only layer inputs; recompute each block in backward */
    uint64_t seed;                 /* LoRA init and dropout masks */
    int64_t memory_limit_bytes;    /* > 0: refuse when engine buffers + base weights exceed it */
    int kv_cache_len;              /* > 0: tokens of KV cache for lorad_model_infer (batch 1) */
    enum lorad_compute_dtype compute_dtype; /* frozen-weight products (gemm.h); 0 = float32 */
};

#define LORAD_MAX_BATCH_TOKENS ((int64_t)1 << 24)

struct lorad_model;

/* Validates everything BEFORE allocating (errors name the field: "hidden_size", "lora.r",
 * "lora.target_modules", "threads", "max_batch", "max_seq", "memory_limit_bytes", ...), then
 * allocates all buffers and initialises the LoRA tensors from lc->init and opts->seed.
 * w is borrowed and must outlive the model. Returns 0, -EINVAL, -E2BIG (memory_limit_bytes too
 * small; err says how much is needed) or -ENOMEM (never aborts). */
int lorad_model_new(struct lorad_model **ret_model, const struct lorad_base_weights *w,
                    const struct lorad_lora_config *lc, const struct lorad_run_options *opts,
                    struct lorad_error *err);
void lorad_model_free(struct lorad_model *m);

/* The bytes lorad_model_new allocates for a config and options, by what they hold. */
struct lorad_model_memory {
    int64_t activations; /* activations and their gradients for max_batch x max_seq tokens, the
                          * LM head's logits chunk, the KV cache, RoPE tables, norms */
    int64_t lora;        /* the flat LoRA parameters and their gradients */
    int64_t scratch;     /* per-thread GEMM and attention scratch */
    int64_t total;
};

/* Fills *ret for these inputs without allocating (inputs assumed valid). */
void lorad_model_memory_of(struct lorad_model_memory *ret, const struct lorad_llama_config *cfg,
                           const struct lorad_lora_config *lc, const struct lorad_run_options *opts);

/* Number of labels != -100 in n (for the denominator). */
int64_t lorad_count_labels(const int32_t *labels, int64_t n);

/* Forward and backward of one micro-batch with dropout active. Gradients of
 * (sum of token CE) / denominator are ADDED into the grad buffer. *ret_loss_sum is the CE sum
 * over the batch's unmasked labels, *ret_correct how many argmaxes equal their label.
 * -EINVAL (err names input_ids/labels/positions/seg_start/denominator) on bad input. */
int lorad_model_forward_backward(struct lorad_model *m, const struct lorad_batch *b, int64_t denominator,
                                 double *ret_loss_sum, int64_t *ret_correct, struct lorad_error *err);

/* Forward only, no dropout, no gradients: CE sum, correct count and unmasked-label count. */
int lorad_model_eval(struct lorad_model *m, const struct lorad_batch *b, double *ret_loss_sum,
                     int64_t *ret_correct, int64_t *ret_tokens, struct lorad_error *err);

/* Called by lorad_model_forward_backward_rows between its forward and its backward pass with
 * each row's CE sum (B) (minus the row's log-probability of its labels, under the dropout masks
 * the backward uses); writes each row's weight (B). 0, or -errno to fail the call. */
typedef int (*lorad_row_weights_fn)(void *ctx, const double *row_loss, int B, double *ret_weights);

/* Forward and backward of one micro-batch with dropout active, for losses that are a function of
 * whole rows (DPO): the gradient of sum over rows of w_row * (the row's CE sum) is ADDED into the
 * grad buffer, where weights(ctx, ...) gives w from the forward's per-row CE sums. The head runs
 * twice (the weights need every row's loss before any gradient), an extra LM-head forward per
 * call. ret_row_loss (B) = the per-row CE sums the weights were computed from, ret_row_correct
 * (B; may be NULL) the per-row argmax hits; both written only on success. Advances the dropout
 * counter like lorad_model_forward_backward. -EINVAL on bad input (named as there), the
 * callback's error, or -ERANGE for a weight that is not finite. */
int lorad_model_forward_backward_rows(struct lorad_model *m, const struct lorad_batch *b, lorad_row_weights_fn weights,
                                      void *ctx, double *ret_row_loss, int64_t *ret_row_correct,
                                      struct lorad_error *err);

/* Forward only, no dropout, no gradients, with the adapter on or (use_adapter false) off, i.e. the
 * base model: per-row CE sums ret_row_loss (B) and argmax hits ret_row_correct (B; may be NULL),
 * written only on success. */
int lorad_model_eval_rows(struct lorad_model *m, const struct lorad_batch *b, bool use_adapter, double *ret_row_loss,
                          int64_t *ret_row_correct, struct lorad_error *err);

/* Inference for batch 1 with the KV cache, through the training forward's own kernels: appends
 * tokens (n) at positions cache_len.. and writes the logits (V) of the last one. Generation and
 * serving use engine/infer/decoder.h; this path stays as the independent forward the decoder's
 * tests compare with. use_adapter false runs the base model alone. -ENOSPC when the
 * cache is full, -EINVAL without a cache or for bad tokens. */
int lorad_model_infer(struct lorad_model *m, const int32_t *tokens, int n, bool use_adapter, float *ret_logits,
                      struct lorad_error *err);
void lorad_model_reset_cache(struct lorad_model *m);
int lorad_model_cache_len(const struct lorad_model *m);

/* The flat LoRA buffers (n floats each; *ret_n may be NULL). Owned by the model. */
float *lorad_model_params(struct lorad_model *m, size_t *ret_n);
float *lorad_model_grads(struct lorad_model *m, size_t *ret_n);
void lorad_model_zero_grads(struct lorad_model *m);

/* The LoRA tensor table (PEFT names, shapes, offsets into the flat buffers). */
int lorad_model_n_lora_tensors(const struct lorad_model *m);
const struct lorad_lora_tensor *lorad_model_lora_tensor(const struct lorad_model *m, int i);
/* Index of the tensor with this PEFT name (an optional "base_model.model." prefix is accepted),
 * or -ENOENT. */
int lorad_model_find_lora(const struct lorad_model *m, const char *name);
/* Copies data (rows, cols) into the named LoRA tensor (init_adapter). -ENOENT naming the tensor,
 * -EINVAL on a shape mismatch (message gives both shapes). */
int lorad_model_set_lora_tensor(struct lorad_model *m, const char *name, const float *data, int64_t rows,
                                int64_t cols, struct lorad_error *err);

/* With DoRA: sets every magnitude vector to the row norms of W + scale B A of the current A and
 * B, where PEFT starts it (at B = 0, the norms of W), so the adapter leaves the base unchanged.
 * lorad_model_new calls it; so does whoever installs A and B without magnitudes. No-op without
 * DoRA. */
void lorad_model_dora_reset_magnitudes(struct lorad_model *m);

/* For an init from the base (lc.init PiSSA or OLoRA, lorad_lora_init_from_base): computes every
 * adapted module's factors A0, B0 from its base weight (lora_init_decomp.h), sets A and B to them,
 * and keeps them frozen as the residual base W - scale B0 A0 that training fits, so that the model
 * starts from the base model's outputs (to rounding). lorad_model_new leaves such a model at
 * A = B = A0 = B0 = 0, the base model, until this call or a restore of lorad_model_init_factors():
 * the factorisations take seconds to minutes at real sizes, which a resumed run need not pay.
 * -EINVAL naming "lora.r" when r exceeds an adapted weight's smaller dimension, -ENOMEM, or
 * -ERANGE when a factorisation fails (err names the tensor); on failure the model is unchanged.
 * No-op (0) for the other inits. */
int lorad_model_init_from_base(struct lorad_model *m, struct lorad_error *err);

/* The frozen initial factors of an init from the base (n floats in the params layout: A0 where
 * each A is, B0 where each B is), or NULL (n = 0) for the other inits. Owned by the model; a
 * trainer saves them with its checkpoints and writes them back on resume. */
float *lorad_model_init_factors(struct lorad_model *m, size_t *ret_n);

/* out (out_features, in_features) = W + scale * B A of module (layer; -1 for lm_head), in f32;
 * minus scale B0 A0 for an init from the base; with DoRA each row then scaled by magnitude / its
 * norm; plain W when the module is not adapted. */
int lorad_model_merged_weight(const struct lorad_model *m, int layer, enum lorad_lora_module module, float *out,
                              struct lorad_error *err);

float lorad_model_lora_scale(const struct lorad_model *m);
const struct lorad_llama_config *lorad_model_config(const struct lorad_model *m);
/* Whether every linear weight of w (the seven per layer and the LM head) is stored in BF16: what
 * compute_dtype "auto" turns into bf16 compute for (lorad_compute_dtype_resolve's base_is_bf16).
 * Reads dtypes only, so a probed model file's weights do. */
bool lorad_base_linears_bf16(const struct lorad_base_weights *w);

/* The dtype the frozen-weight products compute in: opts->compute_dtype resolved (never AUTO). */
enum lorad_compute_dtype lorad_model_compute_dtype(const struct lorad_model *m);

/* Dropout masks are drawn from (seed, micro-batch counter, layer, module, element), the element
 * named by its row in the whole batch (lorad_batch.row0), its position and its column; the counter
 * advances on every forward_backward, and a trainer holding a share of the batch sets it so every
 * process draws the stream of the same micro-batch. Save/restore it with a checkpoint for exact
 * resume. */
uint64_t lorad_model_dropout_counter(const struct lorad_model *m);
void lorad_model_set_dropout_counter(struct lorad_model *m, uint64_t counter);
