/* The whole-model gradient check: the LoRA gradient the engine computed against float64 central
 * differences of the same loss (f64_llama.h), within a stated float32 error bound. Shared by the
 * model tests and by the test that shows the check fails when a backward term is wrong. */
#pragma once
#include <stdbool.h>
#include <stdint.h>

#include "f64_llama.h"
#include "lora.h"
#include "model.h"
#include "weights.h"

struct gradcheck_report {
    double worst;          /* max over probes of |analytic - reference| / tolerance: < 1 passes */
    char worst_what[320];  /* the probe that set it: tensor[index], both values, the tolerance */
    int probes;
    double max_abs_grad;   /* largest reference gradient seen (the probes saw real gradients) */
};

/* The float32 error bound (f32_chain_error_bound) of the loss or a LoRA gradient of a model with
 * config c on a batch of `tokens` tokens, relative to the scale of the compared values: the
 * deepest parameter's chain of stages and the longest sum along it. Two float32 runs that sum in
 * different orders (threads, kernels, packing) may differ by twice this. */
double gradcheck_model_bound(const struct lorad_llama_config *c, int64_t tokens, bool dora);

/* Probes every `stride`-th entry (and the first and last) of every LoRA tensor of m. The engine's
 * gradient is taken from m's grads as left by one forward_backward of b with `denominator` at
 * dropout counter `counter` (ignored when lc has no dropout); the reference differentiates
 * loss_sum / denominator of the float64 model. seed is the run's seed. 0, or -ENOMEM/-EINVAL. */
int gradcheck_model(struct gradcheck_report *ret_report, struct lorad_model *m, const struct lorad_base_weights *w,
                    const struct lorad_lora_config *lc, uint64_t seed, uint64_t counter, const struct lorad_batch *b,
                    int64_t denominator, int stride);

/* A loss of the float64 model f (its parameters are the ones being perturbed). */
typedef double (*gradcheck_loss_fn)(void *ctx, const struct f64_llama *f);

/* gradcheck_model for any loss: the engine's gradient in m's grads against the central
 * differences of loss(ctx, f), with the bound of a batch of `tokens` tokens. */
int gradcheck_model_loss(struct gradcheck_report *ret_report, struct lorad_model *m, const struct lorad_base_weights *w,
                         const struct lorad_lora_config *lc, uint64_t seed, uint64_t counter, gradcheck_loss_fn loss,
                         void *ctx, int64_t tokens, int stride);
