/* A float64 LlamaForCausalLM with LoRA, written from the maths (Hugging Face semantics) for the
 * gradient checks, and the float32 error bound those checks use.
 *
 * Why float64: a central difference of a float32 loss carries rounding of ~u32·|L|/h, which at a
 * useful step h is as large as the float32 gradient's own error, so such a check ends up tuned to
 * one kernel's rounding. Differences of this model's float64 loss are accurate to ~1e-9, so what a
 * check measures is the engine alone.
 *
 * It shares nothing with the engine's numerics: it reads the base weights through their views,
 * the LoRA tensors by their PEFT names from the engine's flat buffer (the published layout), and
 * draws dropout masks with the engine's counter RNG as docs/engine.md defines them (seed, counter,
 * layer + 1, module, element); every operation is a plain loop here. Slow and simple on purpose. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lora.h"
#include "model.h"
#include "weights.h"

struct f64_llama {
    const struct lorad_base_weights *w; /* borrowed */
    double scale;                        /* alpha / r, or alpha / sqrt(r) with rslora */
    int r;
    float dropout;                       /* 0: none */
    uint64_t seed, counter;              /* the dropout masks of micro-batch `counter` */
    double *params;                      /* (n_params) owned float64 copy of the LoRA buffer */
    size_t n_params;
    /* offsets of A (r, in) and B (out, r) into params, -1 when the module is not adapted; index
     * [n_layers][LORAD_LM_HEAD] for lm_head */
    int64_t off_a[LORAD_MAX_LAYERS + 1][LORAD_N_LORA_MODULES], off_b[LORAD_MAX_LAYERS + 1][LORAD_N_LORA_MODULES];
    /* DoRA: offsets of the magnitudes (out), -1 without; norms (n_params) holds, at the same
     * offsets, the row norms of W + scale B A at the parameters f64_llama_init copied */
    int64_t off_m[LORAD_MAX_LAYERS + 1][LORAD_N_LORA_MODULES];
    double *norms;
};

/* Copies m's LoRA parameters (by PEFT name) into a float64 model on w with lc's scale and
 * dropout; seed is the run's seed (dropout masks). 0, or -EINVAL for a name it cannot place. */
int f64_llama_init(struct f64_llama *f, struct lorad_model *m, const struct lorad_base_weights *w,
                   const struct lorad_lora_config *lc, uint64_t seed);
void f64_llama_free(struct f64_llama *f);

/* Sum of the token cross-entropies over labels != -100 of batch b (positions and seg_start
 * honoured as lorad_batch defines them), with dropout masks when f->dropout > 0. */
double f64_llama_loss_sum(const struct f64_llama *f, const struct lorad_batch *b);

/* The operations, for the kernel-level checks. Shapes as in engine/kernels/kernels.h; all float64. */
void f64_rmsnorm(double *out, const double *x, const double *w, double eps, int64_t N, int64_t C);
void f64_rope_inv_freq(double *inv_freq, const struct lorad_llama_config *cfg); /* (head_dim/2) */
void f64_rope(double *x, const int32_t *pos, const double *inv_freq, int64_t N, int n_heads, int head_dim);
void f64_attention(double *out, const double *q, const double *k, const double *v, const int32_t *seg, int B, int T,
                   int H, int KV, int hd);
double f64_silu(double x);
double f64_crossentropy_row(const double *logits, int32_t label, int64_t V); /* 0 for -100 */

/* ---- central differences and the float32 error bound ---- */

/* d f / d x[i] by central differences in double with Richardson extrapolation: D(h) and D(2h)
 * give (4 D(h) - D(2h)) / 3, whose error is O(h^4); *ret_err = |D(h) - D(2h)| is a generous
 * estimate of what is left (it is ~3x the O(h^2) error of D(h) alone). f reads x. */
double f64_central_difference(double (*f)(void *ctx, const double *x), void *ctx, double *x, int64_t i, double h,
                              double *ret_err);

/* Relative error bound of a float32 result that is the end of `stages` chained float32 stages
 * (products, norms, softmax), the longest of which sums n terms: stages * 6 n u (probabilistic
 * rounding-error analysis; the derivation is in f64_llama.c). Relative to the largest magnitude
 * among the compared values. */
double f32_chain_error_bound(int stages, int64_t n);
