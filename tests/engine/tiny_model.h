/* Random tiny Llama base weights for the engine tests: every tensor in one f32 buffer (optionally
 * rounded to bf16-representable values), plus an optional BF16 twin of the matrices. */
#pragma once
#include <stdbool.h>
#include <stdint.h>

#include "llama_config.h"
#include "model.h"
#include "weights.h"

struct tiny_model {
    struct lorad_base_weights w; /* views into f32 (or bf16 for matrices when made with bf16) */
    float *f32;                  /* all tensors, f32 */
    uint16_t *bf16;              /* same layout, bf16 (when requested) */
    size_t n;
};

/* Small deterministic generator for test data (not the engine's rng). */
uint64_t tiny_rand(uint64_t *state);
double tiny_uniform(uint64_t *state); /* [0, 1) */
double tiny_normal(uint64_t *state);

/* Fills a random model for cfg. round_bf16 rounds every value to bf16. With bf16_matrices, the
 * projection matrices (and embeddings/lm_head) are BF16 views; norms/biases stay F32. */
void tiny_model_init(struct tiny_model *tm, const struct lorad_llama_config *cfg, uint64_t seed, bool round_bf16,
                     bool bf16_matrices);
void tiny_model_free(struct tiny_model *tm);

/* DoRA magnitudes where DoRA starts them for m's current A and B, each then times
 * (1 + frac * N(0, 1)) from state, so every scale m/n differs from 1. No-op without DoRA. */
void tiny_perturb_dora_magnitudes(struct lorad_model *m, double frac, uint64_t *state);

/* Calls fn for every base tensor with its HF name (lm_head skipped when tied). */
typedef void (*tiny_tensor_fn)(void *user, const char *name, const struct lorad_tensor *t);
void tiny_model_foreach(const struct tiny_model *tm, tiny_tensor_fn fn, void *user);

/* A tiny valid config: dim 36, hidden 52, vocab 97, 2 layers, 4 heads, 2 kv heads, head_dim 10. */
struct lorad_llama_config tiny_config(void);
