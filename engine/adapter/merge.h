/* Merging a LoRA adapter into its base: W' = W + scale * B @ A for every adapted projection, as
 * PEFT's merge_and_unload does (scale = alpha / r, or alpha / sqrt(r) with rsLoRA), and for a
 * DoRA adapter each row of that then scaled to its magnitude, m_j / ||W'_j||; computed in f32 and
 * stored back in the base tensor's dtype (BF16 rounded to nearest even).
 *
 * A tied base whose lm_head is adapted cannot stay tied: the merged head differs from the
 * embeddings, so the merged model gets its own lm_head.weight and must be described with
 * tie_word_embeddings false (lorad_merge_unties_head says when). */
#pragma once
#include <stdbool.h>
#include <stdint.h>

#include "adapter_read.h"
#include "error.h"
#include "weights.h"

/* w (out, in) += scale * B (out, r) @ A (r, in), with OpenBLAS sgemm. */
void lorad_merge_matrix(float *w, const float *B, const float *A, float scale, int64_t out, int64_t in, int64_t r);
/* The same with plain loops (f32 accumulation in k order), the reference for tests. */
void lorad_merge_matrix_ref(float *w, const float *B, const float *A, float scale, int64_t out, int64_t in, int64_t r);

/* True when the base ties lm_head to the embeddings and the adapter changes lm_head. */
bool lorad_merge_unties_head(const struct lorad_base_weights *base, const struct lorad_adapter *adapter);

/* Writes the merged model as one HF-named safetensors file at path (atomically):
 * model.embed_tokens / model.layers.N.* / model.norm / lm_head weights (lm_head only when the base
 * is untied or lorad_merge_unties_head). With keep_dtype each tensor keeps its base dtype when it
 * is BF16 and is F32 otherwise; without, every tensor is F32. Tensors needing no conversion are
 * written straight from the base mapping; merged or converted ones stay in memory until the file
 * is written (2 bytes per such BF16 parameter, 4 per F32 one). adapter must have been loaded
 * against base->cfg (lorad_adapter_load validates the shapes). The base is only read. Returns 0 or
 * -errno with err naming the path. */
int lorad_merge_write_safetensors(const char *path, const struct lorad_base_weights *base,
                                  const struct lorad_adapter *adapter, bool keep_dtype, struct lorad_error *err);
